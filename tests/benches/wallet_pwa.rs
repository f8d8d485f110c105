//! The wallet PWA's speed in headless Chromium, printed (no assertion): purchase to ticket
//! over 20 purchases against a 3-of-5 cluster on loopback (submit to tickets stored, measured
//! by the page), and the time from navigation to the stored tickets on screen with the
//! cluster stopped (served by the service worker). Run: `cargo bench -p ticketing-tests --bench
//! wallet_pwa`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    unreachable_pub,
    dead_code,
    unused_macros,
    unused_imports
)]

#[path = "../tests/browser.rs"]
mod browser;
#[path = "../tests/common.rs"]
mod common;

use std::time::Duration;

use serde_json::json;

const PURCHASES: usize = 20;
const OFFLINE_LOADS: usize = 10;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{what}: n={} p50={:.1} ms p95={:.1} ms min={:.1} ms max={:.1} ms",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.95),
        ms[0],
        ms[ms.len() - 1]
    );
}

async fn body_mark(b: &browser::Browser, name: &str) -> Option<f64> {
    let v = b
        .js(
            &format!("return document.body.dataset.{name} || ''"),
            json!([]),
        )
        .await
        .unwrap();
    v.as_str().and_then(|s| s.parse().ok())
}

#[tokio::main]
async fn main() {
    if browser::available().is_none() {
        return;
    }
    let c = common::start(common::Db::Sqlite, 5, 3).await.unwrap();
    let url = c.cluster.wallet_url().unwrap();
    let b = browser::Browser::start(&[]).await.unwrap();
    b.goto(&url).await.unwrap();
    b.wait(
        "the wallet",
        "return document.querySelector('#empty')",
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let mut purchase = Vec::new();
    for i in 0..PURCHASES {
        b.click("nav button:nth-child(2)").await.unwrap();
        b.wait(
            "the form",
            "return document.querySelector('#buy')",
            Duration::from_secs(20),
        )
        .await
        .unwrap();
        b.js("delete document.body.dataset.lastPurchaseMs", json!([]))
            .await
            .unwrap();
        b.click("#buy").await.unwrap();
        b.wait(
            "the purchase",
            &format!(
                "return document.querySelectorAll('#tickets li').length == {}",
                i + 1
            ),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        purchase.push(body_mark(&b, "lastPurchaseMs").await.unwrap());
    }
    b.wait(
        "the service worker",
        "return navigator.serviceWorker.controller !== null",
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    c.cluster.stop().await.unwrap();
    let mut first = Vec::new();
    for _ in 0..OFFLINE_LOADS {
        b.reload().await.unwrap();
        b.wait(
            "the tickets offline",
            "return document.body.dataset.firstTicketsMs",
            Duration::from_secs(20),
        )
        .await
        .unwrap();
        first.push(body_mark(&b, "firstTicketsMs").await.unwrap());
    }
    report("purchase to ticket (browser, 3-of-5 on loopback)", purchase);
    report(
        &format!("first render of {PURCHASES} stored tickets, offline, from navigation"),
        first,
    );
    b.close().await;
}
