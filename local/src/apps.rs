//! Serving the browser apps: the wallet PWA at `/wallet/` and the validator PWA at
//! `/validator/`, from one origin. The built bundles are compiled into the binary (committed in
//! `wallet/dist` and `validator/dist` with the hash of their sources, so no wasm toolchain is needed to run them).
//!
//! Every answer carries a Content-Security-Policy that lets the page talk only to its own
//! origin and to the cluster's services named in the manifest, and run its own wasm.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use ticketing_protocol::manifest::Manifest;

/// One file of a bundle.
struct Asset {
    name: &'static str,
    bytes: &'static [u8],
}

macro_rules! bundle {
    ($dir:literal: $($name:literal),* $(,)?) => {
        &[$(Asset { name: $name, bytes: include_bytes!(concat!("../../", $dir, "/", $name)) }),*]
    };
}

/// The wallet PWA as built (`scripts/wasm bundle wallet`).
const WALLET: &[Asset] = bundle!("wallet/dist":
    "index.html", "boot.js", "sw.js", "style.css", "manifest.webmanifest",
    "icon-192.png", "icon-512.png", "ticketing_wallet.js", "ticketing_wallet_bg.wasm",
    "SOURCE_HASH",
);

/// The validator PWA as built (`scripts/wasm bundle validator`).
const VALIDATOR: &[Asset] = bundle!("validator/dist":
    "index.html", "boot.js", "sw.js", "style.css", "manifest.webmanifest",
    "icon-192.png", "icon-512.png", "ticketing_validator.js", "ticketing_validator_bg.wasm",
    "SOURCE_HASH",
);

fn mime(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("webmanifest") => "application/manifest+json",
        Some("json") => "application/json",
        Some("png") => "image/png",
        _ => "text/plain; charset=utf-8",
    }
}

/// Origins (scheme://host:port) of the services the page calls.
fn service_origins(manifest: &Manifest) -> Vec<String> {
    let mut urls: Vec<&str> = manifest.nodes.iter().map(|n| n.url.as_str()).collect();
    urls.push(&manifest.payments.url);
    urls.push(&manifest.coordinator.url);
    let mut origins: Vec<String> = urls
        .into_iter()
        .filter_map(|u| {
            let (scheme, rest) = u.split_once("://")?;
            let host = rest.split('/').next()?;
            Some(format!("{scheme}://{host}"))
        })
        .collect();
    origins.sort();
    origins.dedup();
    origins
}

/// The policy of every page of the apps.
pub fn content_security_policy(manifest: &Manifest) -> String {
    format!(
        "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
         img-src 'self' data:; manifest-src 'self'; worker-src 'self'; \
         connect-src 'self' {}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        service_origins(manifest).join(" ")
    )
}

#[derive(Clone)]
struct Apps {
    manifest_json: std::sync::Arc<Vec<u8>>,
    csp: HeaderValue,
}

/// The router of the apps' origin: `/wallet/...`, and `/` redirecting to the wallet.
pub fn router(manifest: &Manifest) -> anyhow::Result<Router> {
    let apps = Apps {
        manifest_json: std::sync::Arc::new(serde_json::to_vec(manifest)?),
        csp: HeaderValue::from_str(&content_security_policy(manifest))?,
    };
    Ok(Router::new()
        .route("/", get(|| async { Redirect::to("/wallet/") }))
        .route("/wallet", get(|| async { Redirect::to("/wallet/") }))
        .route("/wallet/", get(wallet_index))
        .route("/wallet/{file}", get(wallet_file))
        .route("/validator", get(|| async { Redirect::to("/validator/") }))
        .route("/validator/", get(validator_index))
        .route("/validator/{file}", get(validator_file))
        .route("/health", get(|| async { "ok" }))
        .with_state(apps))
}

fn respond(apps: &Apps, name: &str, bytes: Vec<u8>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime(name)));
    headers.insert(header::CONTENT_SECURITY_POLICY, apps.csp.clone());
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The service worker decides what is cached; the browser asks again each time.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (StatusCode::OK, headers, bytes).into_response()
}

async fn wallet_index(State(apps): State<Apps>) -> Response {
    serve(&apps, WALLET, "index.html")
}

async fn wallet_file(State(apps): State<Apps>, Path(file): Path<String>) -> Response {
    serve(&apps, WALLET, &file)
}

async fn validator_index(State(apps): State<Apps>) -> Response {
    serve(&apps, VALIDATOR, "index.html")
}

async fn validator_file(State(apps): State<Apps>, Path(file): Path<String>) -> Response {
    serve(&apps, VALIDATOR, &file)
}

fn serve(apps: &Apps, bundle: &[Asset], file: &str) -> Response {
    if file == "manifest.json" {
        return respond(apps, "manifest.json", apps.manifest_json.to_vec());
    }
    match bundle.iter().find(|a| a.name == file) {
        Some(a) => respond(apps, a.name, a.bytes.to_vec()),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// The hash of the sources the embedded wallet was built from.
pub fn wallet_build() -> &'static str {
    build_of(WALLET)
}

/// The hash of the sources the embedded validator was built from.
pub fn validator_build() -> &'static str {
    build_of(VALIDATOR)
}

fn build_of(bundle: &[Asset]) -> &'static str {
    bundle
        .iter()
        .find(|a| a.name == "SOURCE_HASH")
        .and_then(|a| std::str::from_utf8(a.bytes).ok())
        .map_or("unknown", str::trim)
}
