//! Partner webhooks: each event of a partner's products is POSTed to its webhook URL, one
//! request per event, in id order, signed like Stripe's (`protocol::partner` documents the
//! scheme).
//!
//! The partner's cursor (stored) moves past an event only after a 2xx answer, so an event is
//! delivered at least once; a 2xx lost on the way back makes it come again, which receivers
//! handle by deduplicating on `Ticketing-Event-Id`. A failure (an error status, a timeout, a
//! refused connection, a redirect) is retried with exponential backoff (1 s, doubling, at most
//! 5 min); after `coordinator.webhook_max_attempts` the event is skipped (counted, logged
//! without the URL or the secret) and the partner can still read it from the feed.
//!
//! The secret is never stored: `HMAC-SHA256(key = the coordinator's signing key, tag ||
//! partner id)`, shown as `whsec_<hex>`, so a leaked database does not leak it and
//! `ticketing partner add` can print it once without keeping it.

use std::fmt;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use prometheus_client::metrics::counter::Counter;
use sha2::Sha256;
use ticketing_protocol::Id16;
use ticketing_protocol::keys::SignKey;
use ticketing_protocol::partner::{
    EVENT_ID_HEADER, PartnerEvent, SIGNATURE_HEADER, WEBHOOK_SECRET_PREFIX, WEBHOOK_SECRET_TAG,
    sign_webhook,
};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::CoordinatorError;
use crate::store::{Partner, Partners};

/// First retry delay, in seconds; it doubles with every failed attempt.
const BACKOFF_START: u64 = 1;
/// Longest retry delay, in seconds.
const BACKOFF_CAP: u64 = 300;
/// Events delivered to one partner in one pass at most (the next pass continues).
const PER_PASS: u32 = 500;

/// A partner's webhook signing secret, `whsec_<64 hex>`. Redacted in Debug; zeroized on drop.
pub struct WebhookSecret(Zeroizing<String>);

impl WebhookSecret {
    /// The secret of partner `id` under the coordinator's signing key.
    pub fn derive(key: &SignKey, id: &Id16) -> Self {
        let bytes = key.to_bytes();
        // HMAC accepts keys of any length: this cannot fail.
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(bytes.as_slice())
            .unwrap_or_else(|_| <hmac::Hmac<Sha256> as KeyInit>::new(&Default::default()));
        mac.update(WEBHOOK_SECRET_TAG);
        mac.update(&id.0);
        let tag = Zeroizing::new(mac.finalize().into_bytes());
        // Hex into a buffer we wipe (32 bytes are exactly 64 digits, so this cannot fail).
        let mut digits = Zeroizing::new([0u8; 64]);
        let _ = hex::encode_to_slice(tag.as_slice(), digits.as_mut_slice());
        let mut text = Zeroizing::new(String::with_capacity(6 + 64));
        text.push_str(WEBHOOK_SECRET_PREFIX);
        text.push_str(std::str::from_utf8(digits.as_slice()).unwrap_or_default());
        Self(text)
    }

    /// The text to give the partner (and the HMAC key of every signature).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// What one delivery pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Events answered with a 2xx.
    pub delivered: u64,
    /// Attempts that failed (to be retried, or given up).
    pub failed: u64,
    /// Events given up after the maximum number of attempts.
    pub skipped: u64,
}

impl std::ops::AddAssign for DeliveryReport {
    fn add_assign(&mut self, o: Self) {
        self.delivered += o.delivered;
        self.failed += o.failed;
        self.skipped += o.skipped;
    }
}

/// Delay before attempt `failed + 1` after `failed` failures (1 s, 2 s, 4 s, ... at most 5 min).
pub fn backoff(failed: u32) -> u64 {
    let doublings = failed.saturating_sub(1).min(32);
    BACKOFF_START
        .saturating_mul(1u64 << doublings)
        .min(BACKOFF_CAP)
}

#[derive(Debug)]
pub(crate) struct Deliverer {
    http: reqwest::Client,
    max_attempts: u32,
    /// One pass at a time (the periodic loop and a direct call must not send twice).
    pass: Mutex<()>,
    pub(crate) delivered: Counter,
    pub(crate) failed: Counter,
    pub(crate) skipped: Counter,
}

impl Deliverer {
    pub(crate) fn new(
        timeout_ms: u64,
        max_attempts: u32,
        delivered: Counter,
        failed: Counter,
        skipped: Counter,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(timeout_ms))
            // A redirect is a failure: the event goes only where the operator said.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            http,
            max_attempts: max_attempts.max(1),
            pass: Mutex::new(()),
            delivered,
            failed,
            skipped,
        }
    }

    /// One pass: for every partner with a webhook whose next attempt is due at `now`, send
    /// its events after the cursor in order until one fails (or [`PER_PASS`] went out).
    pub(crate) async fn run(
        &self,
        store: &dyn Partners,
        key: &SignKey,
        now: u64,
    ) -> Result<DeliveryReport, CoordinatorError> {
        let _pass = self.pass.lock().await;
        let partners = store.partners().await?;
        let due = partners
            .iter()
            .filter(|p| p.webhook.as_ref().is_some_and(|w| w.next_at <= now));
        let results =
            futures::future::join_all(due.map(|p| self.partner(store, key, p, now))).await;
        let mut report = DeliveryReport::default();
        for r in results {
            report += r?;
        }
        Ok(report)
    }

    async fn partner(
        &self,
        store: &dyn Partners,
        key: &SignKey,
        partner: &Partner,
        now: u64,
    ) -> Result<DeliveryReport, CoordinatorError> {
        let mut report = DeliveryReport::default();
        let Some(webhook) = &partner.webhook else {
            return Ok(report);
        };
        let events = store
            .partner_events(&partner.id, webhook.cursor, PER_PASS)
            .await?;
        if events.is_empty() {
            return Ok(report);
        }
        let secret = WebhookSecret::derive(key, &partner.id);
        let mut attempts = webhook.attempts;
        let started = std::time::Instant::now();
        for event in &events {
            // Each request is signed with the time it is sent: a pass over many events to a
            // slow receiver must not carry stale timestamps that receivers refuse.
            let sent_at = now.saturating_add(started.elapsed().as_secs());
            let sent = self.send(&webhook.url, &secret, event, sent_at).await;
            if sent.is_ok() {
                store.webhook_done(&partner.id, event.id, true).await?;
                self.delivered.inc();
                report.delivered += 1;
                attempts = 0;
                continue;
            }
            attempts = attempts.saturating_add(1);
            self.failed.inc();
            report.failed += 1;
            if attempts >= self.max_attempts {
                store.webhook_done(&partner.id, event.id, false).await?;
                self.skipped.inc();
                report.skipped += 1;
                tracing::warn!(
                    partner = %partner.name,
                    event = event.id,
                    attempts,
                    "webhook delivery given up; the event stays in the partner's feed"
                );
                // The next event is due at the next pass (not at once: the receiver is down).
                store
                    .webhook_failed(&partner.id, 0, now.saturating_add(BACKOFF_START))
                    .await?;
                break;
            }
            store
                .webhook_failed(&partner.id, attempts, now.saturating_add(backoff(attempts)))
                .await?;
            tracing::warn!(
                partner = %partner.name,
                event = event.id,
                attempts,
                reason = sent.err().unwrap_or_default(),
                retry_in_s = backoff(attempts),
                "webhook delivery failed; retrying later"
            );
            break;
        }
        Ok(report)
    }

    /// POST one event; `Err(why)` unless the receiver answered 2xx (the reason carries no
    /// URL: it is the partner's, and in the log already by name).
    async fn send(
        &self,
        url: &str,
        secret: &WebhookSecret,
        event: &PartnerEvent,
        now: u64,
    ) -> Result<(), String> {
        let body = serde_json::to_vec(event).map_err(|e| format!("encoding the event: {e}"))?;
        let signature = sign_webhook(secret.expose(), now, &body);
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_ID_HEADER, event.id.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await;
        match response {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("HTTP {}", r.status())),
            Err(e) if e.is_timeout() => Err("timed out".into()),
            Err(e) => Err(format!("no answer: {}", e.without_url())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_up_to_five_minutes() {
        let delays: Vec<u64> = (1..=12).map(backoff).collect();
        assert_eq!(
            delays,
            vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
        );
        assert_eq!(backoff(u32::MAX), 300);
    }

    #[test]
    fn secrets_are_per_partner_per_key_and_redacted() {
        let mut rng = rand::rng();
        let key = SignKey::generate(&mut rng);
        let other = SignKey::generate(&mut rng);
        let a = WebhookSecret::derive(&key, &Id16([1; 16]));
        assert!(a.expose().starts_with("whsec_"));
        assert_eq!(a.expose().len(), 6 + 64);
        assert_eq!(
            a.expose(),
            WebhookSecret::derive(&key, &Id16([1; 16])).expose()
        );
        assert_ne!(
            a.expose(),
            WebhookSecret::derive(&key, &Id16([2; 16])).expose()
        );
        assert_ne!(
            a.expose(),
            WebhookSecret::derive(&other, &Id16([1; 16])).expose()
        );
        assert_eq!(format!("{a:?}"), "WebhookSecret(<redacted>)");
    }
}
