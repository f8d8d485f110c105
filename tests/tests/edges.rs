//! The edges of the system, each as an attacker or an unlucky passenger meets it: scan ids
//! reused with other content, late retries, clocks off by up to a minute, offline scans the
//! coordinator refuses, singles at their window's end, repeated blinded points, device tokens
//! replaced and revoked. Real clusters on loopback; where the time matters, a second
//! `Coordinator` on the same database is driven with an injected clock.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use ticketing_client::Http;
use ticketing_client::clock::Measured;
use ticketing_client::validator::{self, Mode, Outcome, Validator, ValidatorStore};
use ticketing_client::wallet::{self, MemoryStore, SoftwareKeys, TicketStatus, Wallet};
use ticketing_coordinator::store::Device;
use ticketing_coordinator::{Coordinator, TokenRole};
use ticketing_crypto::presentation::{Presentation, epoch_at};
use ticketing_crypto::ticket::{HolderSecret, Ticket};
use ticketing_protocol::redeem::{Scan, SyncStatus, Verdict};
use ticketing_protocol::{ErrorCode, Id16};

use crate::common::{self, Db, TestCluster, buy, card, token};

fn now() -> u64 {
    ticketing_service::now()
}

fn id() -> Id16 {
    Id16::random(&mut rand::rng())
}

/// The QR text a wallet whose clock reads `at` shows.
fn show(c: &TestCluster, t: &(Ticket, HolderSecret), at: u64) -> String {
    let epoch = epoch_at(at, c.cluster.cluster.manifest.rotation_seconds);
    Presentation::sign(&t.0, &t.1, epoch).to_text()
}

fn scan(scan_id: Id16, payload: &str, scanned_at: u64) -> Scan {
    Scan {
        scan_id,
        payload: payload.to_owned(),
        scanned_at,
    }
}

/// A second coordinator on the cluster's database, to drive with any clock, and a device.
async fn coordinator(c: &TestCluster, device: &str) -> (Coordinator, Device) {
    let coordinator = Coordinator::open(&c.cluster.settings, &c.cluster.settings.data_dir)
        .await
        .unwrap();
    let (_, device) =
        ticketing_coordinator::register(&c.cluster.settings, device, TokenRole::Validator, false)
            .await
            .unwrap();
    (coordinator, device)
}

async fn redeem_at(co: &Coordinator, device: &Device, s: &Scan, at: u64) -> Verdict {
    let mut answers = co.redeem(vec![s.clone()], device, at).await.unwrap();
    assert_eq!(answers.len(), 1);
    answers.pop().unwrap().verdict
}

fn accepted(v: &Verdict) -> Option<u64> {
    match v {
        Verdict::Accepted { valid_until } => Some(*valid_until),
        Verdict::Rejected { .. } => None,
    }
}

fn rejected(code: ErrorCode) -> Verdict {
    Verdict::Rejected { code }
}

/// `POST path` on the coordinator with a device token; the JSON answer (status 200 asserted).
async fn post(c: &TestCluster, token: &str, path: &str, body: &Value) -> Value {
    let url = format!("{}{path}", c.cluster.coordinator.as_ref().unwrap().url);
    let resp = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The verdict of `POST /v1/redeem`: `accepted` or the rejection code.
async fn redeem(c: &TestCluster, token: &str, scan_id: Id16, payload: &str) -> String {
    let body = json!({ "scan_id": scan_id, "payload": payload, "scanned_at": now() });
    let answer = post(c, token, "/v1/redeem", &body).await;
    match answer["verdict"].as_str().unwrap() {
        "accepted" => "accepted".to_owned(),
        _ => answer["code"].as_str().unwrap().to_owned(),
    }
}

/// The status of one scan synced with `POST /v1/sync`: e.g. `recorded`, or the code.
async fn sync_one(c: &TestCluster, token: &str, scan_id: Id16, payload: &str) -> String {
    let body =
        json!({ "scans": [{ "scan_id": scan_id, "payload": payload, "scanned_at": now() }] });
    let answer = post(c, token, "/v1/sync", &body).await;
    let result = &answer["results"][0];
    match result["status"].as_str().unwrap() {
        "rejected" => result["code"].as_str().unwrap().to_owned(),
        other => other.to_owned(),
    }
}

/// A scan id answers only for what it scanned, and only on its device: reused for an unspent
/// ticket it used to come back `accepted` with no ledger row (and `already_synced` at sync).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scan_id_is_bound_to_its_ticket_and_scoped_to_its_device() {
    let c = common::start(Db::Sqlite, 3, 2).await.unwrap();
    let t = buy(&c, "single", 3).await;
    let gate1 = token(&c, "gate-1", TokenRole::Validator).await;
    let gate2 = token(&c, "gate-2", TokenRole::Validator).await;
    let at = now();
    let (a, b, d) = (
        show(&c, &t[0], at),
        show(&c, &t[1], at),
        show(&c, &t[2], at),
    );
    let used = id();
    assert_eq!(redeem(&c, &gate1, used, &a).await, "accepted");
    // The same id with another, unspent ticket: refused, online and at sync...
    assert_eq!(redeem(&c, &gate1, used, &b).await, "scan_id_reused");
    assert_eq!(sync_one(&c, &gate1, used, &b).await, "scan_id_reused");
    // ...and that ticket was not touched: its own first scan is accepted.
    assert_eq!(redeem(&c, &gate1, id(), &b).await, "accepted");
    // Another device picking the same id makes another scan.
    assert_eq!(redeem(&c, &gate2, used, &d).await, "accepted");
    // A real retry (same id, same payload) still gets the stored answer, on each device.
    assert_eq!(redeem(&c, &gate1, used, &a).await, "accepted");
    assert_eq!(redeem(&c, &gate2, used, &d).await, "accepted");
    assert_eq!(sync_one(&c, &gate1, used, &a).await, "already_synced");
    c.cluster.stop().await.unwrap();
}

/// A retry of an answered scan gets the stored answer whenever it arrives: 100 s later it used
/// to be `stale_epoch` while the ledger said accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_gets_the_stored_answer_whenever_it_arrives() {
    let c = common::start(Db::Sqlite, 3, 2).await.unwrap();
    let t = buy(&c, "single", 1).await;
    let (co, device) = coordinator(&c, "gate-late").await;
    let at = now();
    let first = scan(id(), &show(&c, &t[0], at), at);
    let answer = redeem_at(&co, &device, &first, at).await;
    assert!(accepted(&answer).is_some(), "{answer:?}");
    let end = c
        .cluster
        .cluster
        .manifest
        .keyset(&t[0].0.keyset_id)
        .unwrap()
        .params
        .valid_until;
    // Stale by then, past the window's end, a day after it: the stored answer each time.
    for later in [at + 100, at + 3600, end + 86_400] {
        assert_eq!(
            redeem_at(&co, &device, &first, later).await,
            answer,
            "{later}"
        );
    }
    let synced = co
        .sync(vec![first.clone()], &device, at + 100)
        .await
        .unwrap();
    assert_eq!(synced[0].status, SyncStatus::AlreadySynced);
    // A new scan of the same picture 100 s later is what it is: a stale screenshot.
    let replay = scan(id(), &first.payload, at + 100);
    assert_eq!(
        redeem_at(&co, &device, &replay, at + 100).await,
        rejected(ErrorCode::StaleEpoch)
    );
}

/// A wallet clock off by up to the manifest's skew (60 s) is accepted wherever in the 30 s
/// epoch the scan falls (±45 s used to fail about half the time); 91 s off is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clocks_off_by_up_to_a_minute_are_accepted_wherever_the_scan_falls() {
    let c = common::start(Db::Sqlite, 3, 2).await.unwrap();
    let manifest = &c.cluster.cluster.manifest;
    assert_eq!(manifest.clock_skew_seconds, 60);
    let rotation = manifest.rotation_seconds;
    let tickets = buy(&c, "single", 14).await;
    let (co, device) = coordinator(&c, "gate-skew").await;
    // An epoch start a little ahead, inside the single's window.
    let base = (now() / rotation + 2) * rotation;
    let mut t = tickets.iter();
    for offset in [-60i64, -45, 45, 60] {
        for position in [0, 15, 29] {
            let at = base + position;
            let wallet_clock = at.saturating_add_signed(offset);
            let s = scan(id(), &show(&c, t.next().unwrap(), wallet_clock), at);
            let v = redeem_at(&co, &device, &s, at).await;
            assert!(
                accepted(&v).is_some(),
                "offset {offset} s at {position} s: {v:?}"
            );
        }
    }
    for offset in [-91i64, 91] {
        let s = scan(
            id(),
            &show(&c, t.next().unwrap(), base.saturating_add_signed(offset)),
            base,
        );
        assert_eq!(
            redeem_at(&co, &device, &s, base).await,
            rejected(ErrorCode::StaleEpoch)
        );
    }
}

/// Wallets and validators measure their clock's offset from the `Date` of the services'
/// answers, keep it, and correct their time with it; the validator reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wallets_and_validators_measure_their_clock_offset_and_correct_for_it() {
    // A service whose clock runs 45 s ahead of this machine's.
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async {
            (
                [(
                    axum::http::header::DATE,
                    ticketing_protocol::when::http_date(now() + 45),
                )],
                axum::Json(json!({})),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = Http::new(Duration::from_secs(5)).unwrap();
    assert_eq!(http.clock().get(), None);
    let _: Value = http.get("fast", &url, &[], None).await.unwrap();
    let measured = http.clock().get().unwrap();
    assert!((44..=46).contains(&measured.offset), "{measured:?}");

    let c = common::start(Db::Sqlite, 3, 2).await.unwrap();
    // The validator core corrects its clock by the offset it keeps...
    let store = validator::MemoryStore::with_token(Some(
        token(&c, "gate-clock", TokenRole::Validator).await,
    ));
    store.save_clock(measured).await.unwrap();
    let gate = Validator::open(
        c.cluster.cluster.manifest.clone(),
        store,
        Http::new(Duration::from_secs(5)).unwrap(),
    )
    .await
    .unwrap();
    let corrected = gate.now().await;
    assert!(corrected.abs_diff(now() + 45) <= 2, "{corrected}");
    // ...and measures it again on every answer of the coordinator (this machine's: 0 s).
    let t = buy(&c, "single", 1).await;
    let d = gate
        .validate(&show(&c, &t[0], now()), now(), false, id())
        .await;
    assert!(
        matches!(
            d.outcome,
            Ok(Outcome::Valid {
                mode: Mode::Online,
                ..
            })
        ),
        "{d:?}"
    );
    let kept = gate.store().clock().await.unwrap().unwrap();
    assert_eq!(kept.offset, 0);
    assert_eq!(gate.clock_offset().await.map(|m| m.offset), Some(0));

    // The wallet core likewise: the offset is stored with the wallet and used when offline.
    let data = wallet::WalletData {
        clock: Some(Measured {
            offset: -45,
            at: now(),
        }),
        ..Default::default()
    };
    let w = Wallet::open(c.client(), MemoryStore::new(data), SoftwareKeys)
        .await
        .unwrap();
    assert!(w.now().await.unwrap().abs_diff(now() - 45) <= 2);
    // A purchase measures it against the cluster and stores it.
    let digest = w
        .prepare("single", 1, now(), &mut rand::rng())
        .await
        .unwrap();
    let card = card();
    w.pay(&digest, card).await.unwrap();
    assert_eq!(w.data().await.unwrap().clock.map(|m| m.offset), Some(0));
    assert!(w.now().await.unwrap().abs_diff(now()) <= 2);
    c.cluster.stop().await.unwrap();
}

/// A validator whose clock runs 45 s fast used to get `malformed` at sync and drop the scan
/// (the ticket was then accepted afresh elsewhere). Now a bounded future skew is recorded, a
/// timestamp further ahead is `future_timestamp`, and a refused scan stays on the device with
/// its reason until an operator clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_scans_are_never_lost() {
    let c = common::start(Db::Sqlite, 3, 2).await.unwrap();
    let t = buy(&c, "single", 2).await;
    let gate = Validator::open(
        c.cluster.cluster.manifest.clone(),
        validator::MemoryStore::with_token(Some(
            token(&c, "gate-fast", TokenRole::Validator).await,
        )),
        Http::new(Duration::from_secs(5)).unwrap(),
    )
    .await
    .unwrap();
    let at = now();
    // 45 s fast, the wallet right: accepted offline, recorded at sync.
    let d = gate
        .validate(&show(&c, &t[0], at), at + 45, true, id())
        .await;
    assert!(
        matches!(
            d.outcome,
            Ok(Outcome::Valid {
                mode: Mode::Offline,
                ..
            })
        ),
        "{d:?}"
    );
    let (report, failure) = gate.sync().await;
    assert!(failure.is_none(), "{failure:?}");
    assert_eq!(
        (report.recorded, report.rejected_total(), report.remaining),
        (1, 0, 0)
    );
    // Wallet and validator both 5 min ahead: they agree, so the gate lets the passenger
    // through; the coordinator cannot record a scan from the future.
    let ahead = id();
    let d = gate
        .validate(&show(&c, &t[1], at + 300), at + 300, true, ahead)
        .await;
    assert!(matches!(d.outcome, Ok(Outcome::Valid { .. })), "{d:?}");
    let (report, failure) = gate.sync().await;
    assert!(failure.is_none(), "{failure:?}");
    assert_eq!(
        report.rejected.get("future_timestamp"),
        Some(&1),
        "{report:?}"
    );
    assert_eq!((report.remaining, report.refused), (0, 1));
    let refused = gate.store().refused().await.unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(
        (refused[0].scan.scan_id, refused[0].code),
        (ahead, ErrorCode::FutureTimestamp)
    );
    assert!(gate.store().queue().await.unwrap().is_empty());
    // Sent again (the operator asks): still refused, still kept.
    assert_eq!(gate.store().clear_refused(true).await.unwrap(), 1);
    assert_eq!(gate.store().queue().await.unwrap().len(), 1);
    let (report, _) = gate.sync().await;
    assert_eq!(report.refused, 1);
    // Cleared by the operator: gone.
    assert_eq!(gate.store().clear_refused(false).await.unwrap(), 1);
    assert!(gate.store().refused().await.unwrap().is_empty());
    assert!(gate.store().queue().await.unwrap().is_empty());
    c.cluster.stop().await.unwrap();
}

/// One rule for singles at the window's end, alike in the coordinator, the validator core and
/// the wallet: first used 4 min before the end, a single is valid 86 min past it, and so it is
/// 5 s after the end (it used to say `expired`); one never used cannot start after the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_first_used_before_its_window_ends_transfers_past_the_end() {
    let c = common::start(Db::Sqlite, 3, 2).await.unwrap();
    let manifest = c.cluster.cluster.manifest.clone();
    let t = buy(&c, "single", 3).await;
    let end = manifest
        .keyset(&t[0].0.keyset_id)
        .unwrap()
        .params
        .valid_until;
    let transfer = 90 * 60;
    let first = end - 240;
    let (co, device) = coordinator(&c, "gate-end").await;

    let v = redeem_at(
        &co,
        &device,
        &scan(id(), &show(&c, &t[0], first), first),
        first,
    )
    .await;
    assert_eq!(accepted(&v), Some(first + transfer));
    let v = redeem_at(
        &co,
        &device,
        &scan(id(), &show(&c, &t[0], end + 5), end + 5),
        end + 5,
    )
    .await;
    assert_eq!(accepted(&v), Some(first + transfer), "{v:?}");
    let v = redeem_at(
        &co,
        &device,
        &scan(id(), &show(&c, &t[1], end + 5), end + 5),
        end + 5,
    )
    .await;
    assert_eq!(v, rejected(ErrorCode::Expired));

    // The validator core, offline, on what this device saw.
    let gate = Validator::open(
        manifest.clone(),
        validator::MemoryStore::default(),
        Http::new(Duration::from_secs(5)).unwrap(),
    )
    .await
    .unwrap();
    let valid = |d: validator::Decision| match d.outcome {
        Ok(Outcome::Valid { valid_until, .. }) => Some(valid_until),
        _ => None,
    };
    let d = gate
        .validate(&show(&c, &t[2], first), first, true, id())
        .await;
    assert_eq!(valid(d), Some(first + transfer));
    let d = gate
        .validate(&show(&c, &t[2], end + 5), end + 5, true, id())
        .await;
    assert_eq!(valid(d), Some(first + transfer));
    let d = gate
        .validate(&show(&c, &t[1], end + 5), end + 5, true, id())
        .await;
    assert!(
        matches!(
            d.outcome,
            Ok(Outcome::Invalid {
                code: ErrorCode::Expired,
                ..
            })
        ),
        "{d:?}"
    );
    // After the transfer time, no longer.
    let late = first + transfer + 30;
    let d = gate
        .validate(&show(&c, &t[2], late), late, true, id())
        .await;
    assert!(matches!(d.outcome, Ok(Outcome::Invalid { .. })), "{d:?}");

    // The wallet's status says the same.
    let w = Wallet::open(c.client(), MemoryStore::default(), SoftwareKeys)
        .await
        .unwrap();
    let digest = w
        .prepare("single", 2, now(), &mut rand::rng())
        .await
        .unwrap();
    let card = card();
    w.pay(&digest, card).await.unwrap();
    w.complete(&digest, &mut |_| {}).await.unwrap();
    w.present(0, first).await.unwrap();
    let data = w.data().await.unwrap();
    let (shown, unshown) = (&data.tickets[0], &data.tickets[1]);
    assert_eq!(
        wallet::status(&manifest, shown, end + 5),
        TicketStatus::Active
    );
    assert_eq!(wallet::valid_until(&manifest, shown), first + transfer);
    assert_eq!(
        wallet::status(&manifest, unshown, end + 5),
        TicketStatus::Expired
    );
    assert_eq!(
        wallet::status(&manifest, shown, first + transfer + 601),
        TicketStatus::UsedUp
    );
    c.cluster.stop().await.unwrap();
}

/// Each ticket needs its own blinded point: the wallet core refuses repeated points before
/// paying, and a node given a receipt for them answers `duplicate_point` (it used to sign the
/// same point twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_blinded_points_are_refused() {
    let c = common::start(Db::Sqlite, 3, 2).await.unwrap();
    let client = c.client();
    let holders: Vec<_> = (0..2)
        .map(|_| HolderSecret::generate(&mut rand::rng()).public_key())
        .collect();
    let mut prepared = client
        .prepare("single", &holders, now(), &mut rand::rng())
        .unwrap();
    prepared.blinded[1] = prepared.blinded[0];
    let card = card();
    let refused = client.checkout(&prepared, card.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::DuplicatePoint), "{refused}");
    assert!(wallet::not_charged(ErrorCode::DuplicatePoint));

    // Paid anyway by a client that does not check: the node refuses to sign.
    let request = json!({
        "product": "single",
        "keyset_id": prepared.keyset_id,
        "count": 2,
        "digest": ticketing_protocol::receipt::blinded_digest(&prepared.blinded),
        "payment": { "method": "card", "number": "4242424242424242" },
    });
    let http = reqwest::Client::new();
    let payments = &c.cluster.cluster.manifest.payments.url;
    let receipt: Value = http
        .post(format!("{payments}/v1/checkout"))
        .json(&request)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let node = &c.cluster.cluster.manifest.nodes[0].url;
    let answer = http
        .post(format!("{node}/v1/issue"))
        .json(&json!({ "receipt": receipt, "blinded": prepared.blinded }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "duplicate_point", "{body}");
    c.cluster.stop().await.unwrap();
}

/// Device tokens: a name is registered once unless replacing is asked for (the old token is
/// then revoked); a revoked token gets 401 at once; the list shows every token's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_tokens_are_listed_replaced_and_revoked_at_once() {
    let c = common::start(Db::Sqlite, 3, 2).await.unwrap();
    let settings = &c.cluster.settings;
    let t = buy(&c, "single", 1).await;
    let payload = show(&c, &t[0], now());
    let url = format!("{}/v1/redeem", c.cluster.coordinator.as_ref().unwrap().url);
    let status = |token: String| {
        let url = url.clone();
        let body = json!({ "scan_id": id(), "payload": payload, "scanned_at": now() });
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let (old, _) = ticketing_coordinator::register(settings, "bus-7", TokenRole::Validator, false)
        .await
        .unwrap();
    let old = old.expose().to_owned();
    assert_eq!(status(old.clone()).await, StatusCode::OK);
    let taken = ticketing_coordinator::register(settings, "bus-7", TokenRole::Validator, false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            taken,
            ticketing_coordinator::CoordinatorError::Refused(ErrorCode::NameTaken, _)
        ),
        "{taken}"
    );
    assert_eq!(status(old.clone()).await, StatusCode::OK);
    let (new, _) = ticketing_coordinator::register(settings, "bus-7", TokenRole::Validator, true)
        .await
        .unwrap();
    let new = new.expose().to_owned();
    assert_eq!(status(old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(new.clone()).await, StatusCode::OK);
    assert_eq!(
        ticketing_coordinator::revoke_device(settings, "bus-7")
            .await
            .unwrap(),
        1
    );
    assert_eq!(status(new).await, StatusCode::UNAUTHORIZED);
    let missing = ticketing_coordinator::revoke_device(settings, "bus-7").await;
    assert!(
        matches!(
            missing,
            Err(ticketing_coordinator::CoordinatorError::Refused(
                ErrorCode::NotFound,
                _
            ))
        ),
        "{missing:?}"
    );
    let listed: Vec<_> = ticketing_coordinator::devices(settings)
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.device.name == "bus-7")
        .map(|d| d.revoked_at.is_some())
        .collect();
    assert_eq!(listed, vec![true, true]);
    c.cluster.stop().await.unwrap();
}

/// The access audit trail: every admin action (device registered, replaced, revoked; ticket
/// revoked; partner added; filter rebuilt) with the acting token's name (or `cli`) and the time,
/// never an address; auditors read it, and `ticketing audit` shows what is new since the last
/// audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_actions_are_kept_with_who_and_when_and_auditors_read_them() {
    let c = common::start(Db::Sqlite, 3, 2).await.unwrap();
    let settings = &c.cluster.settings;
    let before = ticketing_coordinator::actions(settings, 0, 1000)
        .await
        .unwrap()
        .len();
    let admin = token(&c, "ops-anna", TokenRole::Admin).await;
    let auditor = token(&c, "books", TokenRole::Auditor).await;
    ticketing_coordinator::register(settings, "gate-9", TokenRole::Validator, false)
        .await
        .unwrap();
    ticketing_coordinator::revoke_device(settings, "gate-9")
        .await
        .unwrap();
    ticketing_coordinator::partner::add_partner(settings, "metro", &["single".to_owned()], None)
        .await
        .unwrap();
    let t = buy(&c, "single", 1).await;
    let base = &c.cluster.coordinator.as_ref().unwrap().url;
    let http = reqwest::Client::new();
    let revoke = json!({ "keyset_id": t[0].0.keyset_id, "serial": t[0].0.serial() });
    common::admin_post(&c, &admin, "/v1/admin/revoke", revoke).await;
    common::admin_post(&c, &admin, "/v1/admin/bloom/rebuild", json!({})).await;
    // Auditors (and admins) read it; a device token does not.
    let device = token(&c, "gate-10", TokenRole::Validator).await;
    let read = |token: String| {
        let http = http.clone();
        let url = format!("{base}/v1/admin/actions");
        async move { http.get(url).bearer_auth(token).send().await.unwrap() }
    };
    assert_eq!(read(device).await.status(), StatusCode::UNAUTHORIZED);
    let page: ticketing_protocol::redeem::AdminActions =
        read(auditor.clone()).await.json().await.unwrap();
    let trail: Vec<(String, String)> = page.actions[before..]
        .iter()
        .map(|a| (a.actor.clone(), a.action.clone()))
        .collect();
    let want = [
        ("cli", "device_registered"), // ops-anna
        ("cli", "device_registered"), // books
        ("cli", "device_registered"), // gate-9
        ("cli", "device_revoked"),
        ("cli", "partner_added"),
        ("ops-anna", "ticket_revoked"),
        ("ops-anna", "filter_rebuilt"),
        ("cli", "device_registered"), // gate-10
    ];
    assert_eq!(
        trail,
        want.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect::<Vec<_>>()
    );
    let text = serde_json::to_string(&page).unwrap();
    assert!(
        !text.contains("127.0.0.1"),
        "an address in the trail: {text}"
    );
    assert!(
        !text.contains(&t[0].0.serial().to_string()),
        "a serial in the trail"
    );
    assert!(page.actions.iter().all(|a| a.at.abs_diff(now()) < 120));

    // The audit shows the trail, then only what is new.
    let options = ticketing_audit::Options {
        coordinator_token: Some(auditor),
        timeout: Duration::from_secs(10),
        evidence: Vec::new(),
    };
    let manifest = &c.cluster.cluster.manifest;
    let (report, state) = ticketing_audit::run(
        manifest,
        &options,
        &ticketing_audit::AuditState::default(),
        now(),
    )
    .await
    .unwrap();
    assert_eq!(report.admin_actions.len(), page.actions.len());
    assert!(
        report.render().contains("ticket_revoked"),
        "{}",
        report.render()
    );
    let (again, _) = ticketing_audit::run(manifest, &options, &state, now())
        .await
        .unwrap();
    assert!(again.admin_actions.is_empty(), "{:?}", again.admin_actions);
    c.cluster.stop().await.unwrap();
}

/// `ticketing revoke` takes the ticket's QR (what a passenger can show at a desk) and an admin
/// token; the ticket is refused at once, and a device token is not enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_revokes_a_ticket_by_its_qr() {
    let c = common::start(Db::Sqlite, 3, 2).await.unwrap();
    let t = buy(&c, "single", 1).await;
    let shown = show(&c, &t[0], now());
    let settings = &c.cluster.settings;
    let device = token(&c, "gate-r", TokenRole::Validator).await;
    let refused =
        ticketing_cli::run_with(settings, &["revoke", &shown, "--admin-token", &device]).await;
    assert!(refused.is_err(), "a device token revoked a ticket");
    let admin = token(&c, "desk-1", TokenRole::Admin).await;
    let code = ticketing_cli::run_with(settings, &["revoke", &shown, "--admin-token", &admin])
        .await
        .unwrap();
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    assert_eq!(
        redeem(&c, &device, id(), &show(&c, &t[0], now())).await,
        "revoked"
    );
    let trail = ticketing_coordinator::actions(settings, 0, 1000)
        .await
        .unwrap();
    assert!(
        trail
            .iter()
            .any(|a| a.actor == "desk-1" && a.action == "ticket_revoked"),
        "{trail:?}"
    );
    c.cluster.stop().await.unwrap();
}
