//! Talking to the coordinator (validators): the signed Bloom/deny-list snapshot, online
//! redemption and the sync of scans accepted offline.
//!
//! Errors split the way a validator must act on them: [`ClientError::Unreachable`] (no
//! connection, timeout, 5xx, 408/429, or an answer that does not parse) means "decide offline
//! and queue the scan, retry later"; [`ClientError::Refused`] (any other 4xx, with its stable
//! code, e.g. `unauthorized`) is a definite answer that retrying will not change.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, ETAG, IF_NONE_MATCH};
use serde::{Deserialize, Serialize};
use ticketing_protocol::publication::BloomSnapshot;
use ticketing_protocol::redeem::{
    RedeemBatch, RedeemBatchResponse, RedeemResponse, Scan, SyncRequest, SyncResponse,
};
use ticketing_protocol::{ErrorBody, ErrorCode};

use crate::{ClientError, without_url};

const SERVICE: &str = "coordinator";

/// A client of one coordinator, optionally authenticated with a device (or admin) token.
#[derive(Clone)]
pub struct CoordinatorClient {
    http: reqwest::Client,
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
        let builder = reqwest::Client::builder();
        #[cfg(not(target_arch = "wasm32"))]
        let builder = builder.timeout(timeout).connect_timeout(timeout);
        #[cfg(target_arch = "wasm32")]
        let _ = timeout;
        let http = builder.build().map_err(|e| ClientError::Unreachable {
            service: "http client".into(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            token: token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()),
        })
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /v1/bloom`. With `if_none_match` (the version held), `Ok(None)` means that version
    /// is still current (304). The snapshot is returned as received: the caller must check
    /// its signature ([`BloomSnapshot::verify`] under the manifest's coordinator key).
    pub async fn bloom(
        &self,
        if_none_match: Option<u64>,
    ) -> Result<Option<BloomSnapshot>, ClientError> {
        let mut request = self.http.get(format!("{}/v1/bloom", self.base));
        if let Some(version) = if_none_match {
            request = request.header(IF_NONE_MATCH, format!("\"{version}\""));
        }
        let response = request
            .send()
            .await
            .map_err(|e| unreachable(without_url(e)))?;
        if response.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.trim()
                    .trim_start_matches("W/")
                    .trim_matches('"')
                    .to_owned()
            });
        let snapshot: BloomSnapshot = read(response).await?;
        if let Some(tag) = etag
            && tag != snapshot.version.to_string()
        {
            return Err(unreachable(format!(
                "bad answer: ETag {tag} does not match snapshot version {}",
                snapshot.version
            )));
        }
        Ok(Some(snapshot))
    }

    /// `POST /v1/redeem`: the coordinator's verdict on one scan (safe to retry with the same
    /// scan id).
    pub async fn redeem(&self, scan: &Scan) -> Result<RedeemResponse, ClientError> {
        let answer: RedeemResponse = self.post("/v1/redeem", scan).await?;
        if answer.scan_id != scan.scan_id {
            return Err(unreachable("bad answer: about another scan".into()));
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
            return Err(unreachable(
                "bad answer: results do not match the scans".into(),
            ));
        }
        Ok(answer.results)
    }

    /// `POST /v1/sync`: push scans accepted offline (at most the coordinator's
    /// `max_scans_per_request`, 1000 by default). Idempotent per scan id.
    pub async fn sync(&self, scans: Vec<Scan>) -> Result<SyncResponse, ClientError> {
        self.post("/v1/sync", &SyncRequest { scans }).await
    }

    async fn post<Q: Serialize + ?Sized, R: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: &Q,
    ) -> Result<R, ClientError> {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = request
            .send()
            .await
            .map_err(|e| unreachable(without_url(e)))?;
        read(response).await
    }
}

fn unreachable(reason: String) -> ClientError {
    ClientError::Unreachable {
        service: SERVICE.to_owned(),
        reason,
    }
}

/// Whether a failed answer is worth retrying later (the coordinator is down or overloaded).
fn temporary(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

async fn read<R: for<'de> Deserialize<'de>>(response: reqwest::Response) -> Result<R, ClientError> {
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| unreachable(without_url(e)))?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| unreachable(format!("bad answer: {e}")));
    }
    let body = serde_json::from_slice::<ErrorBody>(&bytes).ok();
    if temporary(status) {
        return Err(unreachable(match body {
            Some(b) => format!("HTTP {status}: {} ({})", b.detail, b.code),
            None => format!("HTTP {status}"),
        }));
    }
    Err(ClientError::Refused {
        service: SERVICE.to_owned(),
        body: body.unwrap_or_else(|| {
            let code = match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ErrorCode::Unauthorized,
                StatusCode::NOT_FOUND => ErrorCode::NotFound,
                StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
                _ => ErrorCode::Malformed,
            };
            ErrorBody::new(code, format!("HTTP {status}"))
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_statuses_are_the_retryable_ones() {
        assert!(temporary(StatusCode::SERVICE_UNAVAILABLE));
        assert!(temporary(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(temporary(StatusCode::TOO_MANY_REQUESTS));
        assert!(!temporary(StatusCode::UNAUTHORIZED));
        assert!(!temporary(StatusCode::BAD_REQUEST));
    }

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
