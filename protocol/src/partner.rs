//! The partner feed and webhooks: what a transit operator sharing the cluster learns about the
//! products it owns. Events are aggregates of one purchase or one denied ticket: a serial, a
//! holder key, a validator device or anything about a passenger never appears.
//!
//! `GET /v1/partner/feed?after=N&limit=M` (coordinator, `Authorization: Bearer tkp_...`)
//! answers a [`PartnerFeed`]: the partner's events with `id > after`, ascending.
//!
//! Webhooks follow Stripe's signing scheme. Each event is POSTed on its own, as the JSON of a
//! [`PartnerEvent`], with the headers
//!
//! ```text
//! Ticketing-Event-Id: 42
//! Ticketing-Signature: t=1767225600,v1=5f0c...e1
//! ```
//!
//! where `v1` is the lowercase hex of `HMAC-SHA256(key = the secret exactly as printed,
//! "whsec_..." as ASCII, message = "<t>." || the body bytes)`. A receiver recomputes it over
//! the raw body, compares in constant time ([`verify_webhook`] does all of it), refuses a `t`
//! too far from its own clock (a replayed request), and deduplicates on `Ticketing-Event-Id`:
//! delivery is at least once (a 2xx lost on the way back means the event comes again).

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use ticketing_crypto::keyset::KeysetId;

use crate::redeem::DenyReason;
use crate::{Id16, ProtocolError};

/// Header carrying the event id of a webhook delivery (the receiver's deduplication key).
pub const EVENT_ID_HEADER: &str = "Ticketing-Event-Id";
/// Header carrying the webhook signature, `t=<unix seconds>,v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "Ticketing-Signature";
/// Prefix of a webhook secret as shown to the partner.
pub const WEBHOOK_SECRET_PREFIX: &str = "whsec_";
/// Domain tag of the webhook secret derivation (coordinator side).
pub const WEBHOOK_SECRET_TAG: &[u8] = b"ticketing/v1/webhook-secret";
/// Events per feed page when `limit` is not given.
pub const FEED_DEFAULT_LIMIT: u32 = 500;
/// The largest page; larger `limit`s are served as this.
pub const FEED_MAX_LIMIT: u32 = 5000;

/// One thing that happened to a partner's product.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerEvent {
    /// Increasing with every event of the cluster (the feed cursor); gaps are normal.
    pub id: u64,
    /// Unix seconds: when the coordinator saw the purchase in t node logs, or when the ticket
    /// was denied.
    pub time: u64,
    /// The keyset (product x validity window).
    pub keyset_id: KeysetId,
    /// The product's name in the manifest.
    pub product: String,
    /// Number of tickets (1 for a denied ticket).
    pub tickets: u32,
    /// Minor units: the receipt's amount, or the product's price for a denied ticket.
    pub amount: u64,
    /// ISO 4217 code.
    pub currency: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What an event records.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum EventKind {
    /// Tickets were paid for and issued (a receipt found in at least t node logs).
    Issued {
        /// The payments service's receipt id.
        receipt_id: Id16,
    },
    /// A ticket was put on the deny list.
    Revoked {
        /// `revoked` by an operator (e.g. a refund) or `duplicate` (a copied ticket).
        reason: DenyReason,
    },
}

/// Query of `GET /v1/partner/feed`.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedQuery {
    /// Only events with a larger id (default 0: from the start).
    pub after: Option<u64>,
    /// At most this many events (default [`FEED_DEFAULT_LIMIT`], at most [`FEED_MAX_LIMIT`]).
    pub limit: Option<u32>,
}

/// Answer of `GET /v1/partner/feed`.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerFeed {
    /// The partner's name.
    pub partner: String,
    /// Events of the partner's products with `id > after`, ascending.
    pub events: Vec<PartnerEvent>,
    /// The `after` of the next page: the last id returned, or `after` when there was none.
    pub next_after: u64,
    /// Running totals over every event of the partner's products (not just this page).
    pub totals: Vec<ProductTotals>,
}

/// Totals of one product in one currency.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductTotals {
    /// Product name.
    pub product: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Tickets issued.
    pub issued_tickets: u64,
    /// Amount paid for them, minor units.
    pub issued_amount: u64,
    /// Tickets denied (revoked or copied).
    pub revoked_tickets: u64,
    /// Their price, minor units.
    pub revoked_amount: u64,
}

fn mac(secret: &str, t: u64, body: &[u8]) -> hmac::Hmac<Sha256> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| <hmac::Hmac<Sha256> as KeyInit>::new(&Default::default()));
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Ticketing-Signature` value for `body` sent at unix time `t`.
pub fn sign_webhook(secret: &str, t: u64, body: &[u8]) -> String {
    let tag = mac(secret, t, body).finalize().into_bytes();
    format!("t={t},v1={}", hex::encode(tag))
}

/// Check a `Ticketing-Signature` header against the raw `body`: some `v1` must be the HMAC
/// under `secret` (compared in constant time) and `t` within `tolerance` seconds of `now`.
/// Returns `t`.
pub fn verify_webhook(
    secret: &str,
    header: &str,
    body: &[u8],
    now: u64,
    tolerance: u64,
) -> Result<u64, ProtocolError> {
    let malformed = |reason: &str| ProtocolError::Malformed {
        what: "webhook signature header",
        reason: reason.to_owned(),
    };
    let mut t = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<u64>().map_err(|_| malformed("bad t"))?),
            Some(("v1", v)) => candidates.push(v),
            // Other schemes (a future v2) are skipped, as Stripe's receivers do.
            _ => {}
        }
    }
    let t = t.ok_or_else(|| malformed("no t"))?;
    if t.abs_diff(now) > tolerance {
        return Err(malformed(
            "t is outside the tolerance (a replay or a wrong clock)",
        ));
    }
    let valid = candidates
        .iter()
        .any(|v| hex::decode(v).is_ok_and(|tag| mac(secret, t, body).verify_slice(&tag).is_ok()));
    if valid {
        Ok(t)
    } else {
        Err(ProtocolError::InvalidSignature("webhook"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn signatures_verify_and_tampering_is_refused() {
        let body = br#"{"id":1}"#;
        let header = sign_webhook(SECRET, 1_000, body);
        assert!(header.starts_with("t=1000,v1="));
        assert_eq!(verify_webhook(SECRET, &header, body, 1_010, 300), Ok(1_000));
        // Another body, another secret, another time, a stale time: refused.
        assert!(verify_webhook(SECRET, &header, br#"{"id":2}"#, 1_000, 300).is_err());
        let other = SECRET.replace("ff", "fe");
        assert!(verify_webhook(&other, &header, body, 1_000, 300).is_err());
        let moved = header.replace("t=1000", "t=1001");
        assert!(verify_webhook(SECRET, &moved, body, 1_000, 300).is_err());
        assert!(verify_webhook(SECRET, &header, body, 2_000, 300).is_err());
        // Garbage never panics.
        for h in ["", "t=", "v1=zz", "t=1000,v1=zz", "t=x,v1=00", ",,,="] {
            assert!(verify_webhook(SECRET, h, body, 1_000, 300).is_err(), "{h}");
        }
        // An extra unknown scheme and a second, wrong v1 do not hide the right one.
        let extra = format!("{header},v0=abc,v1=00");
        assert_eq!(verify_webhook(SECRET, &extra, body, 1_000, 300), Ok(1_000));
    }

    #[test]
    fn the_mac_is_hmac_sha256_over_t_dot_body() {
        // Computed independently: Python's hmac.new(b"whsec_test", b'1700000000.{"id":1}',
        // hashlib.sha256).hexdigest().
        assert_eq!(
            sign_webhook("whsec_test", 1_700_000_000, br#"{"id":1}"#),
            "t=1700000000,v1=2f441ba4b3b2d50d28a9ab9d9fd8880376ecd1eb5d0435401553f5d8d0a5dcf8"
        );
    }

    #[test]
    fn events_have_a_flat_json_form_without_serials() {
        let e = PartnerEvent {
            id: 7,
            time: 1_700_000_000,
            keyset_id: KeysetId([1; 8]),
            product: "single".into(),
            tickets: 1,
            amount: 250,
            currency: "EUR".into(),
            kind: EventKind::Revoked {
                reason: DenyReason::Duplicate,
            },
        };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["kind"], "revoked");
        assert_eq!(json["reason"], "duplicate");
        assert_eq!(json["amount"], 250);
        assert_eq!(json.as_object().map(serde_json::Map::len), Some(9));
        let back: PartnerEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
        let issued = EventKind::Issued {
            receipt_id: Id16([2; 16]),
        };
        let json = serde_json::to_value(PartnerEvent { kind: issued, ..e }).unwrap();
        assert_eq!(json["kind"], "issued");
        assert_eq!(json["receipt_id"], "02".repeat(16));
    }
}
