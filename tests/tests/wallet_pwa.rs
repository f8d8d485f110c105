//! The wallet PWA in headless Chromium (WebDriver), against a real 3-of-5 cluster on loopback
//! and the apps server that `ticketing demo` runs: buy with a test card and with a voucher
//! (typo caught as typed), a declined card, the QR read from a screenshot verified by the CLI
//! validator, fewer than t nodes named and the paid purchase kept across a reload and retried,
//! then the whole cluster and the apps server stopped: the page reloads from its service worker
//! and the QR still renders and rotates. Screenshots of every screen go to
//! `target/pwa-screenshots/`.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use crate::browser::{self, Browser};
use crate::common::{self, Db};

const SECS: Duration = Duration::from_secs(20);

async fn tickets(b: &Browser) -> u64 {
    b.js(
        "return document.querySelectorAll('#tickets li, #history li').length",
        json!([]),
    )
    .await
    .unwrap()
    .as_u64()
    .unwrap()
}

async fn wait_tickets(b: &Browser, n: u64) {
    b.wait(
        &format!("{n} ticket(s)"),
        &format!("return document.querySelectorAll('#tickets li').length == {n}"),
        SECS,
    )
    .await
    .unwrap();
}

async fn open_buy(b: &Browser) {
    b.click("nav button:nth-child(2)").await.unwrap();
    b.wait(
        "the buy form",
        "return document.querySelector('#buy')",
        SECS,
    )
    .await
    .unwrap();
}

/// The epoch the shown QR was signed for.
async fn shown_epoch(b: &Browser) -> String {
    b.wait(
        "a QR code",
        "const q = document.querySelector('#qr'); return q && q.querySelector('svg') && q.dataset.epoch",
        SECS,
    )
    .await
    .unwrap()
    .as_str()
    .unwrap()
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wallet_buys_holds_and_shows_tickets_in_a_real_browser() {
    if browser::available().is_none() {
        return;
    }
    let mut c = common::start(Db::Sqlite, 5, 3).await.unwrap();
    let url = c.cluster.wallet_url().unwrap();
    let b = Browser::start(&[]).await.unwrap();
    b.goto(&url).await.unwrap();
    b.wait(
        "the empty wallet",
        "return document.querySelector('#empty')",
        SECS,
    )
    .await
    .unwrap();
    let text = b.text().await.unwrap();
    assert!(text.contains("live on this device only"), "{text}");
    assert!(text.contains("locked to this browser"), "{text}");
    b.screenshot("wallet-1-empty").await.unwrap();

    // Buy with the test card: products and the validity shown before paying.
    open_buy(&b).await;
    let text = b.text().await.unwrap();
    assert!(
        text.contains("2.50 EUR") && text.contains("Valid from"),
        "{text}"
    );
    b.screenshot("wallet-2-buy").await.unwrap();
    b.click("#buy").await.unwrap();
    wait_tickets(&b, 1).await;
    assert!(
        b.text()
            .await
            .unwrap()
            .contains("1 single ticket(s) bought")
    );
    b.screenshot("wallet-3-bought").await.unwrap();

    // A voucher: a typo is caught as typed, the right code pays.
    let code = ticketing_payments::vouchers::create_vouchers_with(&c.cluster.settings, "day", 1)
        .await
        .unwrap()
        .remove(0)
        .to_string();
    open_buy(&b).await;
    b.click("#product-day").await.unwrap();
    b.click("#pay-voucher").await.unwrap();
    let mut typo: Vec<char> = code.chars().collect();
    typo[2] = if typo[2] == 'A' { 'B' } else { 'A' };
    b.type_into("#voucher", &typo.into_iter().collect::<String>())
        .await
        .unwrap();
    b.wait(
        "the typo warning",
        "return document.querySelector('#voucher-check.warn')",
        SECS,
    )
    .await
    .unwrap();
    b.screenshot("wallet-4-voucher-typo").await.unwrap();
    b.type_into("#voucher", &code).await.unwrap();
    b.wait(
        "the code accepted as typed",
        "return document.querySelector('#voucher-check').innerText.includes('well-formed')",
        SECS,
    )
    .await
    .unwrap();
    b.click("#buy").await.unwrap();
    wait_tickets(&b, 2).await;
    // The same voucher again: used.
    open_buy(&b).await;
    b.click("#product-day").await.unwrap();
    b.click("#pay-voucher").await.unwrap();
    b.type_into("#voucher", &code).await.unwrap();
    b.click("#buy").await.unwrap();
    b.wait(
        "the used voucher",
        "return document.querySelector('#banner.error')",
        SECS,
    )
    .await
    .unwrap();
    let text = b.text().await.unwrap();
    assert!(text.contains("already used"), "{text}");

    // A declined card: said plainly, nothing kept.
    b.click("#pay-card").await.unwrap();
    b.type_into("#card", "4000 0000 0000 0002").await.unwrap();
    b.click("#buy").await.unwrap();
    b.wait(
        "the declined card",
        "return document.querySelector('#banner.error') && document.querySelector('#banner').innerText.includes('declined')",
        SECS,
    )
    .await
    .unwrap();
    b.screenshot("wallet-5-declined").await.unwrap();

    // Show the single: the QR in a screenshot verifies with the CLI validator.
    b.click("nav button:nth-child(1)").await.unwrap();
    wait_tickets(&b, 2).await;
    b.click("#tickets li:nth-child(1) button").await.unwrap();
    shown_epoch(&b).await;
    let png = b.screenshot("wallet-6-show").await.unwrap();
    // The same screen on a laptop.
    b.resize(1280, 800).await.unwrap();
    b.screenshot("wallet-6-show-laptop").await.unwrap();
    b.resize(412, 915).await.unwrap();
    let payload = browser::qr_in(&png).unwrap();
    assert_eq!(
        validate(&c, &payload).await,
        ExitCode::SUCCESS,
        "the CLI validator refused {payload}"
    );
    let text = b.text().await.unwrap();
    assert!(
        text.contains("New code in") && text.to_lowercase().contains("single ticket"),
        "{text}"
    );

    // Fewer than t nodes: paid, kept, the nodes named; a reload resumes; Retry completes.
    for i in [1, 2, 3] {
        c.stop_node(i).await.unwrap();
    }
    b.click("nav button:nth-child(1)").await.unwrap();
    open_buy(&b).await;
    b.click("#buy").await.unwrap();
    b.wait(
        "the nodes-down message",
        "return document.querySelector('#banner.error') && document.querySelector('#banner').innerText.includes('node 1')",
        SECS,
    )
    .await
    .unwrap();
    let text = b.text().await.unwrap();
    for n in ["node 1", "node 2", "node 3"] {
        assert!(text.contains(n), "{n} not named: {text}");
    }
    assert!(text.contains("kept on this device"), "{text}");
    b.screenshot("wallet-7-nodes-down").await.unwrap();
    b.reload().await.unwrap();
    b.wait(
        "the waiting purchase",
        "return document.querySelector('#waiting') && document.querySelector('#banner button')",
        SECS,
    )
    .await
    .unwrap();
    b.screenshot("wallet-8-waiting").await.unwrap();
    for i in [1, 2, 3] {
        c.start_node(i).await.unwrap();
    }
    b.click("#banner button").await.unwrap();
    wait_tickets(&b, 3).await;
    assert!(b.text().await.unwrap().contains("Resumed: 1 single"));

    // Offline: everything stopped, the app shell comes from the service worker, the tickets
    // from IndexedDB, and the QR still renders and rotates.
    b.wait(
        "the service worker",
        "return navigator.serviceWorker.controller !== null",
        SECS,
    )
    .await
    .unwrap();
    c.cluster.stop().await.unwrap();
    b.reload().await.unwrap();
    wait_tickets(&b, 3).await;
    assert_eq!(tickets(&b).await, 3);
    b.screenshot("wallet-9-offline").await.unwrap();
    b.click("#tickets li:nth-child(1) button").await.unwrap();
    let first = shown_epoch(&b).await;
    let png = b.screenshot("wallet-10-offline-show").await.unwrap();
    let before = browser::qr_in(&png).unwrap();
    b.wait(
        "the next rotation",
        &format!("return document.querySelector('#qr').dataset.epoch != '{first}'"),
        Duration::from_secs(45),
    )
    .await
    .unwrap();
    // The new code is painted a moment after the epoch changes: poll the screen for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let now = browser::qr_in(&b.screenshot("wallet-11-rotated").await.unwrap()).unwrap();
        if now != before || std::time::Instant::now() > deadline {
            break now;
        }
    };
    assert_ne!(before, after, "the QR did not change with the epoch");
    b.close().await;
}

/// Chromium before 137, Firefox before 129, Safari before 17: no WebCrypto Ed25519. Simulated
/// by a script run before the page's own that refuses to make Ed25519 keys, as such browsers do.
const NO_ED25519: &str = "
  const generate = crypto.subtle.generateKey.bind(crypto.subtle);
  crypto.subtle.generateKey = (alg, ...rest) => {
    const name = typeof alg === 'string' ? alg : alg && alg.name;
    if (String(name).toLowerCase() === 'ed25519')
      return Promise.reject(new DOMException('Unrecognized name.', 'NotSupportedError'));
    return generate(alg, ...rest);
  };";

async fn validate(c: &crate::common::TestCluster, payload: &str) -> ExitCode {
    let gate = c.cluster.settings.data_dir.join("gate");
    if !gate.join("token").exists() {
        let token = common::token(c, "gate", ticketing_coordinator::TokenRole::Validator).await;
        std::fs::create_dir_all(&gate).unwrap();
        std::fs::write(gate.join("token"), token).unwrap();
    }
    ticketing_cli::run_with(
        &c.cluster.settings,
        &["validate", payload, "--dir", gate.to_str().unwrap()],
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_webcrypto_ed25519_the_wallet_says_so_and_still_works() {
    if browser::available().is_none() {
        return;
    }
    let c = common::start(Db::Sqlite, 3, 2).await.unwrap();
    let b = Browser::start(&[]).await.unwrap();
    b.before_each_page(NO_ED25519).await.unwrap();
    b.goto(&c.cluster.wallet_url().unwrap()).await.unwrap();
    let warning = b
        .wait(
            "the key warning",
            "const w = document.querySelector('#key-lock.warn'); return w && w.innerText",
            SECS,
        )
        .await
        .unwrap();
    assert!(
        warning.as_str().unwrap().contains("cannot lock"),
        "{warning}"
    );
    b.screenshot("wallet-12-software-keys").await.unwrap();
    open_buy(&b).await;
    b.click("#buy").await.unwrap();
    wait_tickets(&b, 1).await;
    b.click("#tickets li:nth-child(1) button").await.unwrap();
    shown_epoch(&b).await;
    let payload = browser::qr_in(&b.screenshot("wallet-13-software-show").await.unwrap()).unwrap();
    assert_eq!(validate(&c, &payload).await, ExitCode::SUCCESS, "{payload}");

    // Offline at purchase: said before anything is stored or paid.
    b.click("nav button:nth-child(1)").await.unwrap();
    b.js(
        "window.__online = Object.getOwnPropertyDescriptor(Navigator.prototype, 'onLine'); \
         Object.defineProperty(navigator, 'onLine', { get: () => false, configurable: true }); \
         window.dispatchEvent(new Event('offline'));",
        json!([]),
    )
    .await
    .unwrap();
    open_buy(&b).await;
    b.click("#buy").await.unwrap();
    b.wait(
        "the offline message",
        "const e = document.querySelector('#banner.error'); return e && e.innerText.includes('offline')",
        SECS,
    )
    .await
    .unwrap();
    b.screenshot("wallet-16-offline-purchase").await.unwrap();
    assert_eq!(tickets(&b).await, 0, "the buy form is shown, not the list");
    b.click("nav button:nth-child(1)").await.unwrap();
    wait_tickets(&b, 1).await;

    // A ticket past its window moves to the history (its stored window moved into the past).
    b.js_async(
        "const done = arguments[0]; \
         const open = indexedDB.open('ticketing-wallet'); \
         open.onsuccess = () => { \
           const tx = open.result.transaction('wallet', 'readwrite'); \
           const os = tx.objectStore('wallet'); const get = os.get('data'); \
           get.onsuccess = () => { const d = JSON.parse(get.result); \
             d.tickets[0].valid_from = 1000; d.tickets[0].valid_until = 2000; \
             os.put(JSON.stringify(d), 'data'); }; \
           tx.oncomplete = () => done('ok'); tx.onerror = () => done('error'); };",
    )
    .await
    .unwrap();
    b.reload().await.unwrap();
    b.wait(
        "the history",
        "const h = document.querySelector('#history'); return h && h.innerText.includes('EXPIRED')",
        SECS,
    )
    .await
    .unwrap();
    b.screenshot("wallet-18-history").await.unwrap();

    // The wallet pinned another manifest (the cluster's keys changed under it): refused
    // plainly, the tickets untouched.
    b.js_async(
        "const done = arguments[0]; \
         const open = indexedDB.open('ticketing-wallet'); \
         open.onsuccess = () => { \
           const db = open.result; const tx = db.transaction('wallet', 'readwrite'); \
           const os = tx.objectStore('wallet'); const get = os.get('data'); \
           get.onsuccess = () => { const d = JSON.parse(get.result); \
             d.manifest_digest = '00'.repeat(32); os.put(JSON.stringify(d), 'data'); }; \
           tx.oncomplete = () => done('ok'); tx.onerror = () => done('error'); };",
    )
    .await
    .unwrap();
    b.reload().await.unwrap();
    let error = b
        .wait(
            "the mismatch",
            "const e = document.querySelector('#boot-error'); return e && e.innerText",
            SECS,
        )
        .await
        .unwrap();
    assert!(
        error.as_str().unwrap().contains("manifest_mismatch"),
        "{error}"
    );
    b.screenshot("wallet-17-manifest-mismatch").await.unwrap();
    b.close().await;
    c.cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_byzantine_node_is_named_and_its_evidence_saved_for_the_auditors() {
    use ticketing_crypto::keyset::ShareIndex;
    use ticketing_node::Node;
    use ticketing_node::signatory::LocalSignatory;

    if browser::available().is_none() {
        return;
    }
    let mut c = common::start(Db::Sqlite, 5, 3).await.unwrap();
    // Node 2 signs with node 4's share under its own identity; node 5 is down, so node 2 is
    // among the first three answers about 3 purchases in 4.
    let cl = c.cluster.cluster.clone();
    let signatory = LocalSignatory::new(
        ShareIndex::new(2).unwrap(),
        cl.nodes[1].identity().unwrap(),
        cl.nodes[3].verified_shares(&cl.manifest).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = ticketing_node::store::open(&format!("sqlite://{}/bad.db", dir.path().display()))
        .await
        .unwrap();
    let bad = Node::new(cl.manifest.clone(), Box::new(signatory), store, &c.settings);
    c.replace_node(2, bad).await.unwrap();
    c.stop_node(5).await.unwrap();

    let b = Browser::start(&[]).await.unwrap();
    b.goto(&c.cluster.wallet_url().unwrap()).await.unwrap();
    b.wait(
        "the wallet",
        "return document.querySelector('#empty')",
        SECS,
    )
    .await
    .unwrap();
    let mut bought = 0;
    for _ in 0..12 {
        open_buy(&b).await;
        b.click("#buy").await.unwrap();
        bought += 1;
        wait_tickets(&b, bought).await;
        if b.text()
            .await
            .unwrap()
            .contains("Node 2 signed wrong answers")
        {
            break;
        }
    }
    let text = b.text().await.unwrap();
    assert!(
        text.contains("Node 2 signed wrong answers"),
        "never blamed: {text}"
    );
    b.screenshot("wallet-14-blamed").await.unwrap();
    let href = b
        .wait(
            "the evidence link",
            "const a = document.querySelector('#evidence a'); return a && a.href",
            SECS,
        )
        .await
        .unwrap();
    let json = href
        .as_str()
        .unwrap()
        .strip_prefix("data:application/json,")
        .unwrap()
        .to_owned();
    let json = b
        .js("return decodeURIComponent(arguments[0])", json!([json]))
        .await
        .unwrap();
    let evidence: Vec<ticketing_protocol::issue::Blame> =
        serde_json::from_str(json.as_str().unwrap()).unwrap();
    assert!(!evidence.is_empty());
    for e in &evidence {
        assert_eq!(e.node.get(), 2, "an honest node was blamed");
        e.check(&cl.manifest).unwrap();
    }
    b.close().await;
    c.cluster.stop().await.unwrap();
}

/// The service worker's update path, on the wallet's own shell files: a page controlled by
/// build A sees build B deployed, offers "Update now", and runs B once the passenger accepts.
/// The files are served from `wallet/dist` by a small server of the test's, whose `sw.js`
/// changes build when told (as a deployment does).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_deployment_is_offered_as_an_update() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::extract::{Path, State};
    use axum::http::header;
    use axum::response::IntoResponse;

    if browser::available().is_none() {
        return;
    }
    let dist = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../wallet/dist");
    let build = std::fs::read_to_string(dist.join("SOURCE_HASH")).unwrap();
    let build = build.trim().to_owned();
    let deployed = Arc::new(AtomicBool::new(false));
    type Served = (std::path::PathBuf, String, Arc<AtomicBool>);
    async fn file(
        State((dist, build, deployed)): State<Served>,
        Path(name): Path<String>,
    ) -> axum::response::Response {
        let name = if name.is_empty() {
            "index.html".to_owned()
        } else {
            name
        };
        let Ok(mut bytes) = std::fs::read(dist.join(&name)) else {
            return (axum::http::StatusCode::NOT_FOUND, "").into_response();
        };
        if name == "sw.js" && deployed.load(Ordering::SeqCst) {
            let text = String::from_utf8(bytes)
                .unwrap()
                .replace(&build, "next-build");
            bytes = text.into_bytes();
        }
        let mime = match name.rsplit('.').next() {
            Some("js") => "text/javascript",
            Some("wasm") => "application/wasm",
            Some("html") => "text/html",
            Some("css") => "text/css",
            _ => "application/octet-stream",
        };
        (
            [
                (header::CONTENT_TYPE, mime),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response()
    }
    let app = axum::Router::new()
        .route(
            "/wallet/",
            axum::routing::get(|s| file(s, Path(String::new()))),
        )
        .route("/wallet/{name}", axum::routing::get(file))
        .with_state((dist, build.clone(), deployed.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/wallet/", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let b = Browser::start(&[]).await.unwrap();
    b.goto(&url).await.unwrap();
    b.wait(
        "build A in control",
        "return navigator.serviceWorker.controller !== null",
        SECS,
    )
    .await
    .unwrap();
    let caches = "const done = arguments[0]; caches.keys().then((k) => done(k.join(',')));";
    deployed.store(true, Ordering::SeqCst);
    // The app looks for a new version whenever it comes back to the foreground; a reload too.
    b.reload().await.unwrap();
    b.wait(
        "the update offer",
        "const u = document.querySelector('.update'); return u && u.innerText.includes('new version')",
        SECS,
    )
    .await
    .unwrap();
    b.screenshot("wallet-15-update-offered").await.unwrap();
    b.click(".update button").await.unwrap();
    b.wait(
        "build B in control",
        "return !document.querySelector('.update') && navigator.serviceWorker.controller !== null",
        SECS,
    )
    .await
    .unwrap();
    let keys = b.js_async(caches).await.unwrap();
    assert!(
        keys.as_str()
            .unwrap()
            .contains("ticketing-wallet-next-build"),
        "{keys}"
    );
    assert!(
        !keys.as_str().unwrap().contains(&build),
        "the old cache was kept: {keys}"
    );
    b.close().await;
    server.abort();
}
