//! The validator PWA's speed in headless Chromium, printed (no assertion): the rqrr decode of a
//! 640x480 camera frame holding a ticket's QR (in wasm, on the page's thread), and offline
//! scan-to-verdict over 20 scans (a pasted code to the verdict painted: the whole offline
//! decision, BLS included, plus the IndexedDB writes and the paint). Run: `cargo bench -p
//! ticketing-tests --bench validator_pwa`.

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
use ticketing_client::wallet::{MemoryStore, SoftwareKeys, Wallet};
use ticketing_coordinator::TokenRole;
use ticketing_protocol::receipt::PaymentMethod;
use ticketing_protocol::redeem::Registration;

const SCANS: usize = 20;
const FRAMES: usize = 20;
const SECS: Duration = Duration::from_secs(20);

fn report(what: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((ms.len() as f64 - 1.0) * p).round() as usize;
        ms[i]
    };
    println!(
        "{what}: n={} p50={:.1} ms p95={:.1} ms min={:.1} ms max={:.1} ms",
        ms.len(),
        at(0.5),
        at(0.95),
        ms[0],
        ms[ms.len() - 1]
    );
}

async fn mark(b: &browser::Browser, name: &str) -> Option<f64> {
    b.js(
        &format!("return document.body.dataset.{name} || ''"),
        json!([]),
    )
    .await
    .unwrap()
    .as_str()
    .and_then(|s| s.parse().ok())
}

#[tokio::main]
async fn main() {
    if browser::available().is_none() {
        return;
    }
    let mut c = common::start(common::Db::Sqlite, 5, 3).await.unwrap();
    let manifest = c.cluster.cluster.manifest.clone();
    let wallet = Wallet::open(c.client(), MemoryStore::default(), SoftwareKeys)
        .await
        .unwrap();
    let card = PaymentMethod::Card {
        number: "4242424242424242".into(),
    };
    let count = u32::try_from(SCANS + 1).unwrap();
    let (_, _, done) = wallet
        .buy(
            "single",
            count,
            card,
            ticketing_service::now(),
            &mut rand::rng(),
            &mut |_| {},
        )
        .await
        .unwrap();
    done.unwrap().unwrap();
    let first = wallet
        .present(0, ticketing_service::now())
        .await
        .unwrap()
        .to_text();
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("camera.y4m");
    std::fs::write(&video, browser::qr_video(&first)).unwrap();
    let code = Registration {
        manifest_digest: manifest.digest(),
        token: common::token(&c, "bench", TokenRole::Validator).await,
        coordinator_url: manifest.coordinator.url.clone(),
    }
    .to_text();
    let b = browser::Browser::with_camera(&video).await.unwrap();
    b.goto(&c.cluster.validator_url().unwrap()).await.unwrap();
    b.wait(
        "registration",
        "return document.querySelector('#registration')",
        SECS,
    )
    .await
    .unwrap();
    b.type_into("#registration", &code).await.unwrap();
    b.click("#register").await.unwrap();
    b.wait(
        "the first verdict",
        "return document.querySelector('#verdict')",
        SECS,
    )
    .await
    .unwrap();
    // Frames keep being decoded while the code stays in view (it is not decided again).
    b.wait(
        "the next scan",
        "return !document.querySelector('#verdict')",
        SECS,
    )
    .await
    .unwrap();
    let mut decode = Vec::new();
    for _ in 0..FRAMES {
        tokio::time::sleep(Duration::from_millis(160)).await;
        decode.push(mark(&b, "lastDecodeMs").await.unwrap());
    }
    c.stop_coordinator().await.unwrap();
    let mut verdict = Vec::new();
    for i in 1..=SCANS {
        let payload = wallet
            .present(i, ticketing_service::now())
            .await
            .unwrap()
            .to_text();
        b.js("delete document.body.dataset.lastVerdictMs", json!([]))
            .await
            .unwrap();
        b.js(
            "const t = document.querySelector('#payload'); t.value = arguments[0]; \
             t.dispatchEvent(new Event('input', {bubbles: true})); \
             document.querySelector('#check').click();",
            json!([payload]),
        )
        .await
        .unwrap();
        let seen = b
            .wait(
                "the verdict",
                "const v = document.querySelector('#verdict'); \
                 const m = document.body.dataset.lastVerdictMs; \
                 return v && m ? JSON.stringify([v.innerText, m]) : ''",
                SECS,
            )
            .await
            .unwrap();
        let (text, ms): (String, String) = serde_json::from_str(seen.as_str().unwrap()).unwrap();
        assert!(text.contains("VALID"), "{text}");
        verdict.push(ms.parse().unwrap());
        b.click("#verdict").await.unwrap();
    }
    report(
        "rqrr decode of a 640x480 frame with a ticket QR (wasm)",
        decode,
    );
    report("offline scan to verdict painted (pasted code)", verdict);
    b.close().await;
    c.cluster.stop().await.unwrap();
}
