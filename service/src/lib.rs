//! HTTP plumbing shared by the node, payments and coordinator services, so each of them is
//! only its own handlers: the error body with stable codes and their HTTP statuses, a JSON
//! extractor whose rejections use those codes, body limits, CORS for the PWAs, tracing that
//! records no client address, Prometheus metrics, and `serve(listener, router, shutdown)`.
//!
//! `node` and `coordinator` both depend on this crate and never on each other.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, extract::DefaultBodyLimit};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use ticketing_config::HttpSettings;
use ticketing_protocol::{ErrorBody, ErrorCode};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub mod db;
pub mod limit;
pub mod openapi;
#[cfg(feature = "test-support")]
pub mod test_support;

pub use openapi::{Api, Route};

/// An error answer: a stable code, a human detail, and the HTTP status the code maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError(pub ErrorBody);

impl ApiError {
    /// Build from a code and a detail (never personal data).
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self(ErrorBody::new(code, detail))
    }

    /// The HTTP status for the code.
    pub fn status(&self) -> StatusCode {
        status_for(self.0.code)
    }
}

/// The HTTP status each stable code is served with.
pub fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Malformed | ErrorCode::DigestMismatch | ErrorCode::DuplicatePoint => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::CardDeclined => StatusCode::PAYMENT_REQUIRED,
        ErrorCode::InvalidReceipt | ErrorCode::ReceiptExpired => StatusCode::FORBIDDEN,
        ErrorCode::NotFound | ErrorCode::UnknownKeyset => StatusCode::NOT_FOUND,
        ErrorCode::ReceiptReused
        | ErrorCode::VoucherUsed
        | ErrorCode::Spent
        | ErrorCode::ReplayedEpoch
        | ErrorCode::ScanIdReused
        | ErrorCode::NameTaken => StatusCode::CONFLICT,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::KeysetNotActive
        | ErrorCode::InvalidVoucher
        | ErrorCode::InvalidSignature
        | ErrorCode::Expired
        | ErrorCode::NotYetValid
        | ErrorCode::StaleEpoch
        | ErrorCode::FutureTimestamp
        | ErrorCode::Revoked => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.0.code;
        let mut response = (self.status(), axum::Json(self.0)).into_response();
        // For the metrics layer: refusals are counted by their stable code.
        response.extensions_mut().insert(code);
        response
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0.code, self.0.detail)
    }
}

impl std::error::Error for ApiError {}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(
                ErrorCode::PayloadTooLarge,
                "request body exceeds the size limit",
            )
        } else {
            Self::new(ErrorCode::Malformed, r.body_text())
        }
    }
}

/// `axum::Json` whose rejections are [`ApiError`]s with stable codes.
#[derive(Debug, Clone, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        Self::new(ErrorCode::Malformed, r.body_text())
    }
}

/// `axum::extract::Query` whose rejections are [`ApiError`]s with stable codes.
#[derive(Debug, Clone, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// Per-route request counts and latencies, plus whatever the service registers itself.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    requests: Family<RouteLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    refusals: Family<RefusalLabels, Counter>,
    resident: Gauge,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    route: String,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    status: u16,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    /// A registry with the HTTP metrics, names prefixed by `service` (e.g. `ticketing_node`).
    pub fn new(service: &str) -> Self {
        let mut registry = Registry::with_prefix(service);
        let requests = Family::<RouteLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route and status",
            latency.clone(),
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "http_refusals",
            "Error answers by route and stable error code",
            refusals.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("build_info", "The running version (always 1)", build);
        let started: Gauge = Gauge::default();
        started.set(i64::try_from(now()).unwrap_or(i64::MAX));
        registry.register(
            "process_start_time_seconds",
            "Unix time the process started",
            started,
        );
        let resident = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the process (Linux)",
            resident.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            requests,
            latency,
            refusals,
            resident,
        }
    }

    /// Register a service-specific counter.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        let c = Counter::default();
        if let Ok(mut r) = self.registry.lock() {
            r.register(name, help, c.clone());
        }
        c
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        if let Some(bytes) = resident_bytes() {
            self.resident.set(bytes);
        }
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        }
        out
    }
}

async fn track(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    // The route template (`/v1/log`), never the raw URI: no ids or query strings in labels.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().clone();
    let start = Instant::now();
    let response = next.run(req).await;
    let elapsed = start.elapsed();
    let labels = RouteLabels {
        route: route.clone(),
        status: response.status().as_u16(),
    };
    metrics.requests.get_or_create(&labels).inc();
    if let Some(code) = response.extensions().get::<ErrorCode>() {
        metrics
            .refusals
            .get_or_create(&RefusalLabels {
                route: route.clone(),
                code: code.as_str().to_owned(),
            })
            .inc();
    }
    metrics
        .latency
        .get_or_create(&labels)
        .observe(elapsed.as_secs_f64());
    // No client address, no headers, no body: method, route, status and time only.
    tracing::debug!(%method, %route, status = labels.status, ms = elapsed.as_millis(), "request");
    response
}

fn metrics_response(metrics: &Metrics) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

async fn fallback() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

/// The answer to a client over its limit: 429 `rate_limited` with `Retry-After`.
pub fn rate_limited(retry_after: u64) -> Response {
    let mut response = ApiError::new(
        ErrorCode::RateLimited,
        format!("too many requests from this client; retry in {retry_after} s"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// The client address of a request (see [`limit::client_of`]).
pub fn client_ip(req: &Request, trust_forwarded_for: bool) -> Option<std::net::IpAddr> {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    limit::client_of(req.headers(), peer, trust_forwarded_for)
}

/// Paths every service serves for its operators.
const UNLIMITED: [&str; 3] = ["/health", "/metrics", "/openapi.json"];

async fn limit_requests(
    State((limiter, rate, trust)): State<(limit::Limiter, limit::Rate, bool)>,
    req: Request,
    next: Next,
) -> Response {
    // Probes and scrapers are not clients: their paths are never limited.
    if UNLIMITED.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    if let Some(ip) = client_ip(&req, trust)
        && let Err(wait) = limiter.take("requests", rate, ip)
    {
        return rate_limited(wait);
    }
    next.run(req).await
}

/// Resident set size from `/proc/self/statm` (Linux; `None` elsewhere).
fn resident_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(4096))
}

/// What `/health` asks before answering: `Err(reason)` makes it 503 (e.g. the database does
/// not answer). The reason is logged; the answer says only what is down.
pub type HealthCheck = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync,
>;

async fn health(check: HealthCheck) -> Response {
    match check().await {
        Ok(()) => "ok".into_response(),
        Err(reason) => {
            tracing::warn!(%reason, "health check failed");
            ApiError::new(ErrorCode::Unavailable, "the database does not answer").into_response()
        }
    }
}

/// Wrap a service's routes with `/health` (asking `health`), `/metrics`, `/openapi.json`
/// (the description of all of them), the body limit, CORS, request metrics and a JSON 404.
pub fn finish(
    api: Api,
    http: &HttpSettings,
    metrics: Metrics,
    health_check: HealthCheck,
) -> Router {
    let origins: Vec<HeaderValue> = http
        .cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
        .collect();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::IF_NONE_MATCH,
        ])
        // `Date`: the browser apps estimate their clock's offset to the cluster from it.
        .expose_headers([header::ETAG, header::DATE]);
    let limits = (
        limit::Limiter::default(),
        limit::Rate::per_minute(http.requests_per_minute),
        http.trust_forwarded_for,
    );
    let document = Arc::new(std::sync::OnceLock::<serde_json::Value>::new());
    let served = document.clone();
    let mut api = api
        .route(
            "/health",
            Route::get("Whether the service and its database answer", move || {
                health(health_check.clone())
            })
            .describe(|op, _| {
                op.response_other("200", Some("text/plain"), "`ok`");
                op.response_other("503", Some("application/json"), "`unavailable`");
            }),
        )
        .route(
            "/openapi.json",
            Route::get("This document", move || {
                let doc = served.get().cloned().unwrap_or_default();
                async move { axum::Json(doc).into_response() }
            })
            .describe(|op, _| op.response_other("200", Some("application/json"), "OpenAPI 3.1")),
        );
    // With a separate metrics address, the public one does not serve them.
    if http.metrics_listen.is_none() {
        let m = metrics.clone();
        api = api.route(
            "/metrics",
            Route::get("Prometheus metrics", move || {
                let response = metrics_response(&m);
                async move { response }
            })
            .describe(|op, _| {
                op.response_other("200", Some("application/openmetrics-text"), "OpenMetrics");
            }),
        );
    }
    let (router, doc) = api.into_parts();
    let _ = document.set(doc);
    router
        .layer(middleware::from_fn_with_state(limits, limit_requests))
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(metrics, track))
        .layer(DefaultBodyLimit::max(http.body_limit_bytes))
        .layer(cors)
}

/// `/metrics` alone, for `http.metrics_listen`.
pub fn metrics_router(metrics: Metrics) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || async move { metrics_response(&metrics) }),
        )
        .fallback(fallback)
}

/// Serve `router` on `listener` until `shutdown` resolves, then finish in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Requests run on tasks of their own: each is put in the span `serve` runs in (the
    // service's name), so every line a service logs says which one it is.
    let span = tracing::Span::current();
    let router = router.layer(middleware::from_fn(
        move |request: axum::extract::Request, next: middleware::Next| {
            let span = span.clone();
            async move { tracing::Instrument::instrument(next.run(request), span).await }
        },
    ));
    // The peer address reaches the rate limits (in memory only; never logged).
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Install the global tracing subscriber (first call wins): to stderr, without process ids or
/// client addresses; `RUST_LOG` (when set) instead of the configured filter; colours only when
/// stderr is a terminal; one JSON object per line with `format = "json"`.
pub fn init_tracing(log: &ticketing_config::LogSettings) {
    use std::io::IsTerminal;
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| log.filter.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // axum logs each accepted connection with the peer address at trace level: never wanted.
    let filter = match "axum::serve=off".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match log.format {
        ticketing_config::LogFormat::Json => builder.json().flatten_event(true).try_init(),
        ticketing_config::LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

/// Current unix time in seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
