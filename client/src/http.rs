//! The one HTTP layer of every client (wallet, validator, auditor), native and wasm32, with one
//! classification of failures:
//!
//! - [`ClientError::Unreachable`]: no answer at all (connection refused, timeout, the answer
//!   broke off). Retry later; a validator decides offline.
//! - [`ClientError::Unavailable`]: an answer that says "not now" (5xx, 408, 429) or one that
//!   does not parse. Retry later, like unreachable.
//! - [`ClientError::Refused`]: any other 4xx, with its stable [`ErrorCode`]. A definite answer
//!   that retrying will not change.
//!
//! [`ClientError::is_temporary`] tells the first two from the third.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, ETAG, IF_NONE_MATCH};
use serde::Serialize;
use serde::de::DeserializeOwned;
use ticketing_protocol::{ErrorBody, ErrorCode};

use crate::ClientError;
use crate::clock::{ClockOffset, device_ms};

/// An HTTP client with a per-request timeout (native; browsers apply their own fetch limits).
/// Every answer's `Date` updates the shared estimate of this device's clock offset
/// ([`Http::clock`]).
#[derive(Debug, Clone)]
pub struct Http {
    inner: reqwest::Client,
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    timeout: Duration,
    clock: ClockOffset,
}

/// What a conditional GET found.
#[derive(Debug)]
pub enum Conditional<T> {
    /// 304: the version held is current.
    NotModified,
    /// A new body, with its ETag (quotes and `W/` removed) if the server sent one.
    Fresh {
        /// The body.
        body: T,
        /// The entity tag.
        etag: Option<String>,
    },
}

impl Http {
    /// A client whose requests give up after `timeout` (native only).
    pub fn new(timeout: Duration) -> Result<Self, ClientError> {
        let builder = reqwest::Client::builder();
        #[cfg(not(target_arch = "wasm32"))]
        let builder = builder.timeout(timeout).connect_timeout(timeout);
        let inner = builder.build().map_err(|e| ClientError::Unreachable {
            service: "http client".into(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            inner,
            timeout,
            clock: ClockOffset::default(),
        })
    }

    /// The offset of this device's clock to the services', from the latest answer's `Date`.
    pub fn clock(&self) -> &ClockOffset {
        &self.clock
    }

    /// `GET url?query` as JSON.
    pub async fn get<R: DeserializeOwned>(
        &self,
        service: &str,
        url: &str,
        query: &[(&str, u64)],
        token: Option<&str>,
    ) -> Result<R, ClientError> {
        let request = with_token(self.limit(self.inner.get(url)).query(query), token);
        let (_, bytes) = self.send(service, request).await?;
        parse(service, &bytes)
    }

    async fn send(
        &self,
        service: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        let response = self.answer(service, request).await?;
        let status = response.status();
        let bytes = read(service, response).await?;
        Ok((status, bytes))
    }

    /// Send, and note the answer's `Date`.
    async fn answer(
        &self,
        service: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let sent = device_ms();
        let response = request.send().await.map_err(|e| unreachable(service, e))?;
        if let Some(date) = response
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
        {
            self.clock.observe(date, sent, device_ms());
        }
        Ok(response)
    }

    /// The browser's fetch has no timeout of its own: each request gets one (an
    /// `AbortController` under reqwest); natively the client's applies.
    fn limit(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        #[cfg(target_arch = "wasm32")]
        let request = request.timeout(self.timeout);
        request
    }

    /// `GET url` as raw bytes (for bodies whose digest is checked, e.g. the manifest).
    pub async fn get_bytes(&self, service: &str, url: &str) -> Result<Vec<u8>, ClientError> {
        let (_, bytes) = self.send(service, self.limit(self.inner.get(url))).await?;
        Ok(bytes)
    }

    /// `POST url` with a JSON body, JSON answer.
    pub async fn post<Q: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        service: &str,
        url: &str,
        body: &Q,
        token: Option<&str>,
    ) -> Result<R, ClientError> {
        let request = with_token(self.limit(self.inner.post(url)).json(body), token);
        let (_, bytes) = self.send(service, request).await?;
        parse(service, &bytes)
    }

    /// `GET url` with `If-None-Match: "<etag>"` when one is held; the JSON answer parsed.
    pub async fn get_conditional<R: DeserializeOwned>(
        &self,
        service: &str,
        url: &str,
        if_none_match: Option<&str>,
    ) -> Result<Conditional<R>, ClientError> {
        Ok(
            match self
                .get_conditional_bytes(service, url, if_none_match, "application/json")
                .await?
            {
                Conditional::NotModified => Conditional::NotModified,
                Conditional::Fresh { body, etag } => Conditional::Fresh {
                    body: parse(service, &body)?,
                    etag,
                },
            },
        )
    }

    /// `GET url` asking for `accept`, with `If-None-Match: "<etag>"` when one is held; the
    /// answer's bytes as they came (decompressed).
    pub async fn get_conditional_bytes(
        &self,
        service: &str,
        url: &str,
        if_none_match: Option<&str>,
        accept: &str,
    ) -> Result<Conditional<Vec<u8>>, ClientError> {
        let mut request = self.limit(self.inner.get(url)).header(ACCEPT, accept);
        if let Some(tag) = if_none_match {
            request = request.header(IF_NONE_MATCH, format!("\"{tag}\""));
        }
        let response = self.answer(service, request).await?;
        if response.status() == StatusCode::NOT_MODIFIED {
            return Ok(Conditional::NotModified);
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
        Ok(Conditional::Fresh {
            body: read(service, response).await?,
            etag,
        })
    }
}

fn with_token(request: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => request.header(AUTHORIZATION, format!("Bearer {t}")),
        None => request,
    }
}

/// The body of a successful answer, or the error it stands for.
async fn read(service: &str, response: reqwest::Response) -> Result<Vec<u8>, ClientError> {
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| unreachable(service, e))?
        .to_vec();
    if status.is_success() {
        return Ok(bytes);
    }
    Err(classify(service, status, &bytes))
}

/// A non-2xx answer as an error: temporary statuses are [`ClientError::Unavailable`], the rest
/// [`ClientError::Refused`] with the body's code (or one derived from the status).
pub(crate) fn classify(service: &str, status: StatusCode, bytes: &[u8]) -> ClientError {
    let body = serde_json::from_slice::<ErrorBody>(bytes).ok();
    if status == StatusCode::TOO_MANY_REQUESTS {
        // The rate limit answers before the request is looked at.
        return ClientError::NotTaken {
            service: service.to_owned(),
            reason: match body {
                Some(b) => format!("too many requests: {} ({})", b.detail, b.code),
                None => "too many requests (HTTP 429)".to_owned(),
            },
        };
    }
    if temporary(status) {
        return ClientError::Unavailable {
            service: service.to_owned(),
            reason: match body {
                Some(b) => format!("HTTP {status}: {} ({})", b.detail, b.code),
                None => format!("HTTP {status}"),
            },
        };
    }
    // Only the service's own error body is a definite answer: a bare 404 may come from a proxy
    // between deployments, and a wallet must not conclude "never paid" from it.
    let body = match (body, status) {
        (Some(body), _) => body,
        (None, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
            ErrorBody::new(ErrorCode::Unauthorized, format!("HTTP {status}"))
        }
        (None, StatusCode::PAYLOAD_TOO_LARGE) => {
            ErrorBody::new(ErrorCode::PayloadTooLarge, format!("HTTP {status}"))
        }
        (None, _) => {
            return ClientError::Unavailable {
                service: service.to_owned(),
                reason: format!("HTTP {status} without the service's error body"),
            };
        }
    };
    ClientError::Refused {
        service: service.to_owned(),
        body,
    }
}

fn parse<R: DeserializeOwned>(service: &str, bytes: &[u8]) -> Result<R, ClientError> {
    serde_json::from_slice(bytes).map_err(|e| ClientError::Unavailable {
        service: service.to_owned(),
        reason: format!("bad answer: {e}"),
    })
}

/// Whether a failed answer is worth retrying later (the service is down or overloaded).
fn temporary(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

fn unreachable(service: &str, e: reqwest::Error) -> ClientError {
    if is_connect(&e) && !e.is_timeout() {
        // No connection: the request was never sent.
        return ClientError::NotTaken {
            service: service.to_owned(),
            reason: format!("no connection: {}", e.without_url()),
        };
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    ClientError::Unreachable {
        service: service.to_owned(),
        // Without the URL: it is the manifest's public address, and noise in a message.
        reason: format!("{kind}: {}", e.without_url()),
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn is_connect(e: &reqwest::Error) -> bool {
    e.is_connect()
}

// The browser's fetch does not tell connection failures apart.
#[cfg(target_arch = "wasm32")]
fn is_connect(_: &reqwest::Error) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_statuses_are_unavailable_and_the_rest_refused_with_a_code() {
        for status in [
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::REQUEST_TIMEOUT,
        ] {
            let e = classify("node 1", status, b"");
            assert!(
                matches!(e, ClientError::Unavailable { .. }),
                "{status}: {e:?}"
            );
            assert!(e.is_temporary());
        }
        // A rate limit answers before the request is acted on: temporary, and certainly not
        // taken (a payment was not charged).
        let e = classify("payments", StatusCode::TOO_MANY_REQUESTS, b"");
        assert!(matches!(e, ClientError::NotTaken { .. }), "{e:?}");
        assert!(e.is_temporary());
        let body = br#"{"code":"card_declined","detail":"declined"}"#;
        let e = classify("payments", StatusCode::PAYMENT_REQUIRED, body);
        assert_eq!(e.code(), Some(ErrorCode::CardDeclined));
        assert!(!e.is_temporary());
        let e = classify("coordinator", StatusCode::UNAUTHORIZED, b"not json");
        assert_eq!(e.code(), Some(ErrorCode::Unauthorized));
        // Without the service's body an answer is not definite: a proxy's bare 404 is not
        // "never paid".
        let e = classify("payments", StatusCode::NOT_FOUND, b"<html>404</html>");
        assert!(matches!(e, ClientError::Unavailable { .. }), "{e:?}");
        let body = br#"{"code":"not_found","detail":"no receipt"}"#;
        let e = classify("payments", StatusCode::NOT_FOUND, body);
        assert_eq!(e.code(), Some(ErrorCode::NotFound));
        // A 5xx with a body keeps its reason, still temporary.
        let body = br#"{"code":"unavailable","detail":"database down"}"#;
        let e = classify("coordinator", StatusCode::SERVICE_UNAVAILABLE, body);
        assert!(e.to_string().contains("database down"), "{e}");
        assert!(e.is_temporary());
    }
}
