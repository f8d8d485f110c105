//! Talking to the coordinator (validators): the signed Bloom/deny-list snapshot, online
//! redemption and the sync of scans accepted offline.
//!
//! Errors split the way a validator must act on them ([`crate::http`]): a temporary one
//! ([`ClientError::is_temporary`]: no connection, timeout, 5xx, 408/429, or an answer that does
//! not parse) means "decide offline and queue the scan, retry later"; [`ClientError::Refused`]
//! (any other 4xx, with its stable code, e.g. `unauthorized`) is a definite answer that
//! retrying will not change.

use std::time::Duration;

use ticketing_protocol::publication::{BloomDelta, BloomSnapshot, DELTA_MAGIC};
use ticketing_protocol::redeem::{
    RedeemBatch, RedeemBatchResponse, RedeemResponse, Scan, SyncRequest, SyncResponse,
};

use crate::ClientError;
use crate::http::{Conditional, Http};

const SERVICE: &str = "coordinator";
/// The binary snapshot, or a delta from the one held.
const ACCEPT: &str = "application/vnd.ticketing.bloom-delta, application/octet-stream";

/// A client of one coordinator, optionally authenticated with a device (or admin) token.
#[derive(Clone)]
pub struct CoordinatorClient {
    http: Http,
    base: String,
    token: Option<String>,
}

impl std::fmt::Debug for CoordinatorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl CoordinatorClient {
    /// A client for the coordinator at `base_url` (e.g. the manifest's `coordinator.url`),
    /// sending `token` as `Authorization: Bearer` on redeem and sync, with a per-request
    /// timeout (native; browsers use their own fetch limits).
    pub fn new(
        base_url: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Ok(Self::with_http(Http::new(timeout)?, base_url, token))
    }

    /// The same over an existing HTTP layer.
    pub fn with_http(http: Http, base_url: &str, token: Option<String>) -> Self {
        Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            token: token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()),
        }
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /v1/bloom`. With the snapshot `held`, `Ok(None)` means it is still current (304),
    /// and the answer may be a delta from it (applied here; when it does not apply, the whole
    /// snapshot is fetched). The snapshot is returned unverified: the caller must check its
    /// signature ([`BloomSnapshot::verify`] under the manifest's coordinator key), which is
    /// also what proves a delta was applied to the right base.
    pub async fn bloom(
        &self,
        held: Option<&BloomSnapshot>,
    ) -> Result<Option<BloomSnapshot>, ClientError> {
        let base = format!("{}/v1/bloom", self.base);
        let tag = held.map(|h| h.version.to_string());
        let url = held.map_or(base.clone(), |h| format!("{base}?since={}", h.version));
        let Some((body, etag)) = self.fetch_bloom(&url, tag.as_deref()).await? else {
            return Ok(None);
        };
        let (snapshot, etag) = if body.starts_with(DELTA_MAGIC) {
            let delta = BloomDelta::from_bytes(&body).map_err(|e| bad_answer(&e.to_string()))?;
            match held.map(|h| delta.apply(h)) {
                Some(Ok(next)) => (next, etag),
                // Not onto what is held (or nothing held): take the whole snapshot.
                _ => match self.fetch_bloom(&base, None).await? {
                    Some((body, etag)) => (decode_snapshot(&body)?, etag),
                    None => return Err(bad_answer("304 to a request without an ETag")),
                },
            }
        } else {
            (decode_snapshot(&body)?, etag)
        };
        if let Some(tag) = etag
            && tag != snapshot.version.to_string()
        {
            return Err(bad_answer(&format!(
                "ETag {tag} does not match snapshot version {}",
                snapshot.version
            )));
        }
        Ok(Some(snapshot))
    }

    /// The body and ETag of `GET url`, `None` on 304.
    async fn fetch_bloom(
        &self,
        url: &str,
        if_none_match: Option<&str>,
    ) -> Result<Option<(Vec<u8>, Option<String>)>, ClientError> {
        Ok(
            match self
                .http
                .get_conditional_bytes(SERVICE, url, if_none_match, ACCEPT)
                .await?
            {
                Conditional::NotModified => None,
                Conditional::Fresh { body, etag } => Some((body, etag)),
            },
        )
    }

    /// `POST /v1/redeem`: the coordinator's verdict on one scan (safe to retry with the same
    /// scan id).
    pub async fn redeem(&self, scan: &Scan) -> Result<RedeemResponse, ClientError> {
        let answer: RedeemResponse = self.post("/v1/redeem", scan).await?;
        if answer.scan_id != scan.scan_id {
            return Err(bad_answer("about another scan"));
        }
        Ok(answer)
    }

    /// `POST /v1/redeem/batch`: one verdict per scan, in request order.
    pub async fn redeem_batch(&self, scans: Vec<Scan>) -> Result<Vec<RedeemResponse>, ClientError> {
        let ids: Vec<_> = scans.iter().map(|s| s.scan_id).collect();
        let answer: RedeemBatchResponse = self
            .post("/v1/redeem/batch", &RedeemBatch { scans })
            .await?;
        if !answer.results.iter().map(|r| r.scan_id).eq(ids) {
            return Err(bad_answer("results do not match the scans"));
        }
        Ok(answer.results)
    }

    /// `POST /v1/sync`: push scans accepted offline (at most the coordinator's
    /// `max_scans_per_request`, 1000 by default). Idempotent per scan id.
    pub async fn sync(&self, scans: Vec<Scan>) -> Result<SyncResponse, ClientError> {
        self.post("/v1/sync", &SyncRequest { scans }).await
    }

    async fn post<Q: serde::Serialize + ?Sized, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Q,
    ) -> Result<R, ClientError> {
        let url = format!("{}{path}", self.base);
        self.http
            .post(SERVICE, &url, body, self.token.as_deref())
            .await
    }
}

fn decode_snapshot(body: &[u8]) -> Result<BloomSnapshot, ClientError> {
    BloomSnapshot::from_bytes(body).map_err(|e| bad_answer(&format!("snapshot: {e}")))
}

fn bad_answer(reason: &str) -> ClientError {
    ClientError::Unavailable {
        service: SERVICE.to_owned(),
        reason: format!("bad answer: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_token() {
        let c = CoordinatorClient::new(
            "http://127.0.0.1:1/",
            Some("tkv_secret".into()),
            Duration::from_secs(1),
        );
        let Ok(c) = c else {
            return;
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("tkv_secret"), "{shown}");
        assert_eq!(c.base_url(), "http://127.0.0.1:1");
    }
}
