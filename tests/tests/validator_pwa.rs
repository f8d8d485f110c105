//! The validator PWA in headless Chromium with a fake camera (a .y4m video of a wallet's QR,
//! made at test time since the code rotates), against a real 3-of-5 cluster: registration by
//! pasting the code `ticketing validator register --qr` prints, a ticket scanned from the
//! camera (rqrr in wasm) and accepted online, the same code again refused as a replay, a
//! forged one and a two-minute-old one refused, one accepted offline while the coordinator is
//! down, queued in IndexedDB and synced by the button once it is back, a scan the coordinator
//! refuses at sync kept with its reason until cleared, a revoked ticket refused
//! offline after the spent list was refreshed, a picked picture decided; then a second device
//! registered through its camera, everything stopped (the apps server too), the page reloaded
//! from its service worker: a fresh ticket VALID offline.
//! Screenshots in `target/pwa-screenshots/`.

use std::time::Duration;

use serde_json::json;
use ticketing_client::wallet::{MemoryStore, SoftwareKeys, Wallet};
use ticketing_coordinator::TokenRole;
use ticketing_protocol::receipt::PaymentMethod;
use ticketing_protocol::redeem::Registration;

use crate::browser::{self, Browser, qr_png, qr_video};
use crate::common::{self, Db};

const SECS: Duration = Duration::from_secs(20);

async fn verdict(b: &Browser) -> String {
    let v = b
        .wait(
            "a verdict",
            "const v = document.querySelector('#verdict'); return v && v.innerText",
            SECS,
        )
        .await
        .unwrap();
    v.as_str().unwrap().to_owned()
}

async fn next_scan(b: &Browser) {
    b.wait(
        "the verdict to clear",
        "return !document.querySelector('#verdict')",
        SECS,
    )
    .await
    .unwrap();
}

async fn paste(b: &Browser, payload: &str) {
    b.js(
        "const t = document.querySelector('#payload'); t.value = arguments[0]; \
         t.dispatchEvent(new Event('input', {bubbles: true}));",
        json!([payload]),
    )
    .await
    .unwrap();
    b.click("#check").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_validator_scans_decides_offline_queues_and_syncs_in_a_real_browser() {
    if browser::available().is_none() {
        return;
    }
    let mut c = common::start(Db::Sqlite, 5, 3).await.unwrap();
    let manifest = c.cluster.cluster.manifest.clone();
    // A passenger's wallet (the core) with three singles.
    let wallet = Wallet::open(c.client(), MemoryStore::default(), SoftwareKeys)
        .await
        .unwrap();
    let card = PaymentMethod::Card {
        number: "4242424242424242".into(),
    };
    let (_, _, done) = wallet
        .buy(
            "single",
            5,
            card,
            ticketing_service::now(),
            &mut rand::rng(),
            &mut |_| {},
        )
        .await
        .unwrap();
    done.unwrap().unwrap();
    let shown = wallet
        .present(0, ticketing_service::now())
        .await
        .unwrap()
        .to_text();
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("camera.y4m");
    std::fs::write(&video, qr_video(&shown)).unwrap();
    let code = Registration {
        manifest_digest: manifest.digest(),
        token: common::token(&c, "bus-1", TokenRole::Validator).await,
        coordinator_url: manifest.coordinator.url.clone(),
    }
    .to_text();

    let b = Browser::with_camera(&video).await.unwrap();
    b.goto(&c.cluster.validator_url().unwrap()).await.unwrap();
    b.wait(
        "the registration form",
        "return document.querySelector('#registration')",
        SECS,
    )
    .await
    .unwrap();
    b.screenshot("validator-1-register").await.unwrap();
    // A mistyped code is refused plainly.
    b.type_into("#registration", "TKR1:nonsense").await.unwrap();
    b.click("#register").await.unwrap();
    b.wait("the error", "return document.querySelector('#error')", SECS)
        .await
        .unwrap();
    b.type_into("#registration", &code).await.unwrap();
    b.click("#register").await.unwrap();

    // The camera shows the wallet's QR: scanned, redeemed online, one full-screen verdict.
    let v = verdict(&b).await;
    assert!(
        v.contains("VALID") && v.contains("single, expires in"),
        "{v}"
    );
    assert!(!v.contains(&shown), "the verdict shows the payload");
    b.screenshot("validator-2-valid-from-camera").await.unwrap();
    next_scan(&b).await;
    b.screenshot("validator-3-scanner").await.unwrap();
    let decode = b
        .js(
            "return document.querySelector('#decode').innerText",
            json!([]),
        )
        .await
        .unwrap();
    eprintln!("frame decode in wasm (640x480): {decode}");

    // The same code pasted: this device has seen it.
    paste(&b, &shown).await;
    let v = verdict(&b).await;
    assert!(
        v.contains("INVALID") && v.contains("already scanned"),
        "{v}"
    );
    b.screenshot("validator-4-replayed").await.unwrap();
    next_scan(&b).await;

    // A forged one: refused without asking anyone.
    let mut forged = shown.clone().into_bytes();
    forged[120] = if forged[120] == b'0' { b'1' } else { b'0' };
    paste(&b, &String::from_utf8(forged).unwrap()).await;
    let v = verdict(&b).await;
    assert!(v.contains("INVALID"), "{v}");
    next_scan(&b).await;

    // A screenshot two minutes old: refused.
    let stale = wallet
        .present(2, ticketing_service::now() - 120)
        .await
        .unwrap()
        .to_text();
    paste(&b, &stale).await;
    let v = verdict(&b).await;
    assert!(v.contains("INVALID") && v.contains("Old code"), "{v}");
    b.screenshot("validator-5-stale").await.unwrap();
    next_scan(&b).await;

    // The coordinator is down: decided offline, queued.
    c.stop_coordinator().await.unwrap();
    let second = wallet
        .present(1, ticketing_service::now())
        .await
        .unwrap()
        .to_text();
    paste(&b, &second).await;
    let v = verdict(&b).await;
    assert!(v.contains("VALID") && v.contains("offline"), "{v}");
    b.screenshot("validator-6-valid-offline").await.unwrap();
    next_scan(&b).await;
    b.wait(
        "one scan queued",
        "return document.querySelector('#queued').innerText == '1'",
        SECS,
    )
    .await
    .unwrap();

    // Back online: the sync button sends the queue.
    c.start_coordinator().await.unwrap();
    b.click("#sync").await.unwrap();
    b.wait(
        "the sync report",
        "return document.querySelector('#queued').innerText == '0' && \
         document.querySelector('#sync-report').innerText.includes('recorded 1')",
        SECS,
    )
    .await
    .unwrap();
    let text = b.text().await.unwrap();
    assert!(text.contains("s ago"), "no last sync: {text}");
    b.screenshot("validator-7-synced").await.unwrap();
    // An operator revokes ticket 3; after the device refreshes its spent list (the sync
    // button does), the ticket is refused offline too.
    let revoked = wallet.data().await.unwrap().tickets[2].ticket;
    let admin = common::token(&c, "ops", TokenRole::Admin).await;
    let http = reqwest::Client::new();
    for (path, body) in [
        (
            "/v1/admin/revoke",
            json!({ "keyset_id": revoked.keyset_id, "serial": revoked.serial() }),
        ),
        ("/v1/admin/bloom/rebuild", json!({})),
    ] {
        let status = http
            .post(format!("{}{path}", manifest.coordinator.url))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success(), "{path}: {status}");
    }
    let before = b
        .js(
            "return document.querySelector('#filter').innerText",
            json!([]),
        )
        .await
        .unwrap();
    b.click("#sync").await.unwrap();
    b.wait(
        "a newer spent list",
        &format!("return document.querySelector('#filter').innerText != {before}"),
        SECS,
    )
    .await
    .unwrap();
    c.stop_coordinator().await.unwrap();
    let third = wallet
        .present(2, ticketing_service::now())
        .await
        .unwrap()
        .to_text();
    paste(&b, &third).await;
    let v = verdict(&b).await;
    assert!(v.contains("INVALID") && v.contains("Revoked"), "{v}");
    b.screenshot("validator-8-revoked-offline").await.unwrap();
    next_scan(&b).await;

    // No camera at hand: a picture of the code, picked from a file, still offline.
    let picture = dir.path().join("ticket.png");
    qr_png(
        &wallet
            .present(3, ticketing_service::now())
            .await
            .unwrap()
            .to_text(),
        &picture,
    );
    b.type_into("#picture", picture.to_str().unwrap())
        .await
        .unwrap();
    let v = verdict(&b).await;
    assert!(v.contains("VALID") && v.contains("offline"), "{v}");
    next_scan(&b).await;

    // That ticket is revoked before the device syncs: the coordinator refuses the scan, and
    // the device keeps it, with the reason, until the conductor clears it.
    c.start_coordinator().await.unwrap();
    let pictured = wallet.data().await.unwrap().tickets[3].ticket;
    let status = http
        .post(format!("{}/v1/admin/revoke", manifest.coordinator.url))
        .bearer_auth(&admin)
        .json(&json!({ "keyset_id": pictured.keyset_id, "serial": pictured.serial() }))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    b.click("#sync").await.unwrap();
    b.wait(
        "a refused scan kept",
        "return document.querySelector('#held').innerText.startsWith('1') && \
         document.querySelector('#queued').innerText == '0'",
        SECS,
    )
    .await
    .unwrap();
    b.js(
        "document.querySelector('#diag-h').scrollIntoView()",
        json!([]),
    )
    .await
    .unwrap();
    b.screenshot("validator-8b-refused-kept").await.unwrap();
    b.click("#clear-refused").await.unwrap();
    b.wait(
        "the refused scan cleared",
        "return document.querySelector('#held').innerText.startsWith('0')",
        SECS,
    )
    .await
    .unwrap();
    c.stop_coordinator().await.unwrap();

    // Nothing about the passenger anywhere on the page.
    let page = b
        .js("return document.documentElement.outerHTML", json!([]))
        .await
        .unwrap();
    assert!(!page.as_str().unwrap().contains(&second));
    b.close().await;

    // Another device registers by showing its camera the registration QR.
    c.start_coordinator().await.unwrap();
    let code = Registration {
        manifest_digest: manifest.digest(),
        token: common::token(&c, "bus-2", TokenRole::Validator).await,
        coordinator_url: manifest.coordinator.url.clone(),
    }
    .to_text();
    let video = dir.path().join("registration.y4m");
    std::fs::write(&video, qr_video(&code)).unwrap();
    let b = Browser::with_camera(&video).await.unwrap();
    b.goto(&c.cluster.validator_url().unwrap()).await.unwrap();
    b.wait(
        "the scanner after a camera registration",
        "return document.querySelector('#diag-h')",
        SECS,
    )
    .await
    .unwrap();
    b.screenshot("validator-9-registered-by-camera")
        .await
        .unwrap();
    // "Register again" goes back to registration (the camera's hint says what to show it);
    // the camera, still seeing the code, registers the device again.
    b.click("#register-again").await.unwrap();
    b.wait(
        "registration again",
        "return document.querySelector('#register') && document.body.innerText.includes('at the registration code')",
        SECS,
    )
    .await
    .unwrap();
    b.screenshot("validator-9b-register-again").await.unwrap();
    b.wait(
        "the scanner after registering again",
        "return document.querySelector('#diag-h')",
        SECS,
    )
    .await
    .unwrap();

    // Everything stops, the apps server too: the app shell comes from the service worker, the
    // manifest, token and spent list from IndexedDB, and a ticket is still decided (offline).
    b.wait(
        "the service worker",
        "return navigator.serviceWorker.controller !== null",
        SECS,
    )
    .await
    .unwrap();
    c.cluster.stop().await.unwrap();
    b.reload().await.unwrap();
    b.wait(
        "the scanner offline",
        "return document.querySelector('#diag-h')",
        SECS,
    )
    .await
    .unwrap();
    let last = wallet
        .present(4, ticketing_service::now())
        .await
        .unwrap()
        .to_text();
    paste(&b, &last).await;
    let v = verdict(&b).await;
    assert!(v.contains("VALID") && v.contains("offline"), "{v}");
    b.screenshot("validator-10-offline-start").await.unwrap();
    b.close().await;
}
