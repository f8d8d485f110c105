//! `/health` asks the service's database, and refusals are counted by their stable code.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ticketing_config::HttpSettings;
use ticketing_protocol::ErrorCode;
use ticketing_service::{Api, ApiError, HealthCheck, Json, Metrics, Route};

#[tokio::test]
async fn health_reports_the_database_and_metrics_count_refusals_by_code() {
    let database_up = Arc::new(AtomicBool::new(true));
    let up = database_up.clone();
    let health: HealthCheck = Arc::new(move || {
        let up = up.load(Ordering::SeqCst);
        Box::pin(async move {
            if up {
                Ok(())
            } else {
                Err("connection refused".into())
            }
        })
    });
    let routes = Api::new("test").route(
        "/v1/thing",
        Route::get("Always refused", || async {
            Err::<Json<String>, _>(ApiError::new(ErrorCode::Malformed, "no"))
        }),
    );
    let router = ticketing_service::finish(
        routes,
        &HttpSettings::default(),
        Metrics::new("ticketing_test"),
        health,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(ticketing_service::serve(
        listener,
        router,
        std::future::pending(),
    ));
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{base}{path}")).send();

    assert_eq!(get("/health").await.unwrap().status(), 200);
    database_up.store(false, Ordering::SeqCst);
    let down = get("/health").await.unwrap();
    assert_eq!(down.status(), 503);
    let body: serde_json::Value = down.json().await.unwrap();
    assert_eq!(body["code"], "unavailable");
    // The reason is logged, not told: the answer names only what is down.
    assert!(!body.to_string().contains("connection refused"), "{body}");

    for _ in 0..2 {
        assert_eq!(get("/v1/thing").await.unwrap().status(), 400);
    }
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(
            r#"ticketing_test_http_refusals_total{route="/v1/thing",code="malformed"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("ticketing_test_build_info{version="),
        "{metrics}"
    );
    assert!(
        metrics.contains("ticketing_test_process_start_time_seconds"),
        "{metrics}"
    );
}

/// With `http.metrics_listen`, the service's own address does not serve `/metrics`; the
/// metrics router does.
#[tokio::test]
async fn metrics_can_move_to_their_own_address() {
    let http_settings = HttpSettings {
        metrics_listen: Some("127.0.0.1:9".parse().unwrap()),
        ..HttpSettings::default()
    };
    let metrics = Metrics::new("ticketing_test");
    let health: HealthCheck = Arc::new(|| Box::pin(async { Ok(()) }));
    let main = ticketing_service::finish(Api::new("test"), &http_settings, metrics.clone(), health);
    let separate = ticketing_service::metrics_router(metrics);
    let mut urls = Vec::new();
    for router in [main, separate] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}/metrics", listener.local_addr().unwrap()));
        tokio::spawn(ticketing_service::serve(
            listener,
            router,
            std::future::pending(),
        ));
    }
    let http = reqwest::Client::new();
    assert_eq!(http.get(&urls[0]).send().await.unwrap().status(), 404);
    let r = http.get(&urls[1]).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("ticketing_test_build_info")
    );
}
