//! The wallet core and the validator core (`ticketing_client::{wallet, validator}`) against
//! their in-memory stores and a real 3-of-5 cluster on loopback: the one implementation the
//! CLI and the browser apps share.

use std::collections::HashSet;
use std::time::Duration;

use ticketing_client::validator::{self, Mode, Note, Outcome, Validator, ValidatorStore};
use ticketing_client::wallet::{
    self, Finished, HolderKeys, MemoryStore, PayOutcome, Recovered, SoftwareKeys, TicketStatus,
    Wallet, WalletStore,
};
use ticketing_client::{Client, ClientError, Http, NodeEvent};
use ticketing_coordinator::TokenRole;
use ticketing_protocol::ErrorCode;
use ticketing_protocol::receipt::PaymentMethod;

use crate::common::{self, Db, TestCluster, card};

fn now() -> u64 {
    ticketing_service::now()
}

async fn wallet(c: &TestCluster, store: MemoryStore) -> Wallet<MemoryStore, SoftwareKeys> {
    Wallet::open(c.client(), store, SoftwareKeys).await.unwrap()
}

/// The store of a wallet that "crashed": what it had written survives, nothing else.
async fn reopen(
    c: &TestCluster,
    w: Wallet<MemoryStore, SoftwareKeys>,
) -> Wallet<MemoryStore, SoftwareKeys> {
    let data = w.data().await.unwrap();
    drop(w);
    wallet(c, MemoryStore::new(data)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purchase_interrupted_at_each_step_is_resumed() {
    let mut c = common::start(Db::Sqlite, 5, 3).await.unwrap();
    let rng = &mut rand::rng();

    // 1. Stored, then the process died before paying: the payments service has no receipt,
    //    so the purchase is dropped on resume, nothing is charged.
    let w = wallet(&c, MemoryStore::default()).await;
    w.prepare("single", 2, now(), rng).await.unwrap();
    assert_eq!(w.data().await.unwrap().purchases.len(), 1);
    let w = reopen(&c, w).await;
    let found = w.recover_receipts().await.unwrap();
    assert!(matches!(&found[..], [Recovered::NeverPaid { product }] if product == "single"));
    assert!(w.data().await.unwrap().purchases.is_empty());

    // 2. Paid, but the answer was lost (the wallet never stored the receipt): the receipt is
    //    found by digest and the purchase completes.
    let digest = w.prepare("single", 1, now(), rng).await.unwrap();
    let prepared = w.data().await.unwrap().purchases[0].prepared.clone();
    c.client().checkout(&prepared, card()).await.unwrap();
    let w = reopen(&c, w).await;
    assert!(w.data().await.unwrap().purchases[0].pending.is_none());
    let found = w.recover_receipts().await.unwrap();
    assert!(matches!(&found[..], [Recovered::Paid { .. }]), "{found:?}");
    let finished = w.complete_all(&mut |_| {}).await.unwrap();
    assert!(
        matches!(&finished[..], [Finished::Bought(done)] if done.tickets == 1),
        "{finished:?}"
    );
    assert_eq!(w.data().await.unwrap().tickets.len(), 1);
    // Completing a purchase that is gone is an error, not a second set of tickets.
    assert!(w.complete(&digest, &mut |_| {}).await.is_err());

    // 3. Paid and stored, but only 2 of the 3 nodes needed answer: kept, nodes named; the
    //    same receipt completes once they are back.
    for i in [1, 2, 3] {
        c.stop_node(i).await.unwrap();
    }
    let digest = w.prepare("day", 1, now(), rng).await.unwrap();
    assert!(matches!(
        w.pay(&digest, card()).await.unwrap(),
        PayOutcome::Paid
    ));
    let mut events = Vec::new();
    let e = w
        .complete(&digest, &mut |e| events.push(e))
        .await
        .unwrap_err();
    let ClientError::NotEnoughNodes {
        needed, failures, ..
    } = &e
    else {
        panic!("{e}");
    };
    assert_eq!(*needed, 3);
    let failed: Vec<u16> = failures.iter().map(|f| f.node).collect();
    assert_eq!(failed, [1, 2, 3]);
    // Progress named every node: asked all five, two answered, three failed.
    assert_eq!(
        events.first(),
        Some(&NodeEvent::Asked {
            nodes: vec![1, 2, 3, 4, 5]
        })
    );
    let answered: HashSet<u16> = events
        .iter()
        .filter_map(|e| match e {
            NodeEvent::Answered { node } => Some(*node),
            _ => None,
        })
        .collect();
    assert_eq!(answered, HashSet::from([4, 5]));
    let w = reopen(&c, w).await;
    assert!(w.data().await.unwrap().purchases[0].pending.is_some());
    for i in [1, 2, 3] {
        c.start_node(i).await.unwrap();
    }
    let finished = w.complete_all(&mut |_| {}).await.unwrap();
    assert!(
        matches!(&finished[..], [Finished::Bought(_)]),
        "{finished:?}"
    );

    // 4. The nodes signed but the wallet died before storing the tickets: the kept receipt
    //    completes again to the same ticket (nodes answer a recorded receipt the same way).
    let digest = w.prepare("single", 1, now(), rng).await.unwrap();
    assert!(matches!(
        w.pay(&digest, card()).await.unwrap(),
        PayOutcome::Paid
    ));
    let pending = w.data().await.unwrap().purchases[0]
        .pending
        .clone()
        .unwrap();
    let signed_then = c.client().complete(&pending).await.unwrap().tickets;
    let w = reopen(&c, w).await;
    let finished = w.complete_all(&mut |_| {}).await.unwrap();
    assert!(matches!(&finished[..], [Finished::Bought(_)]));
    let data = w.data().await.unwrap();
    assert_eq!(data.tickets.last().unwrap().ticket, signed_then[0]);
    assert!(data.purchases.is_empty());
    assert_eq!(data.tickets.len(), 3);

    // A declined card is a definite refusal: nothing kept.
    let (_, paid, completed) = w
        .buy(
            "single",
            1,
            PaymentMethod::Card {
                number: "4000 0000 0000 0002".into(),
            },
            now(),
            rng,
            &mut |_| {},
        )
        .await
        .unwrap();
    assert!(
        matches!(&paid, PayOutcome::Refused(body) if body.code == ErrorCode::CardDeclined),
        "{paid:?}"
    );
    assert!(completed.is_none());
    assert!(w.data().await.unwrap().purchases.is_empty());

    // Payments not listening: the request was never sent, so nothing was charged; the
    // purchase is not kept as "maybe paid".
    c.stop_payments().await.unwrap();
    let digest = w.prepare("single", 1, now(), rng).await.unwrap();
    let paid = w.pay(&digest, card()).await.unwrap();
    assert!(
        matches!(&paid, PayOutcome::Refused(body) if body.code == ErrorCode::Unavailable
            && body.detail.contains("nothing was charged")),
        "{paid:?}"
    );
    assert!(w.data().await.unwrap().purchases.is_empty());
    c.start_payments().await.unwrap();

    // Every stored ticket presents a payload the validators' checks accept.
    let manifest = &c.cluster.cluster.manifest;
    for i in 0..3 {
        let text = w.present(i, now()).await.unwrap().to_text();
        ticketing_protocol::verify::check(manifest, &text, now()).unwrap();
    }
    c.cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ticket_status_follows_the_window_and_a_singles_first_showing() {
    let c = common::start(Db::Sqlite, 3, 2).await.unwrap();
    let w = wallet(&c, MemoryStore::default()).await;
    let (_, _, done) = w
        .buy("single", 1, card(), now(), &mut rand::rng(), &mut |_| {})
        .await
        .unwrap();
    done.unwrap().unwrap();
    let manifest = c.cluster.cluster.manifest.clone();
    let ticket = w.data().await.unwrap().tickets[0].clone();
    let transfer = match manifest.product("single").unwrap().kind {
        ticketing_protocol::manifest::ProductKind::Single { transfer_minutes } => {
            u64::from(transfer_minutes) * 60
        }
        ticketing_protocol::manifest::ProductKind::Pass => panic!("single is a pass"),
    };
    let status = |t: &wallet::StoredTicket, at| wallet::status(&manifest, t, at);
    assert_eq!(
        status(&ticket, ticket.valid_from - 1),
        TicketStatus::Upcoming
    );
    assert_eq!(status(&ticket, ticket.valid_from), TicketStatus::Active);
    assert_eq!(status(&ticket, ticket.valid_until), TicketStatus::Expired);
    // Never shown: active to the end of its window.
    assert_eq!(
        status(&ticket, ticket.valid_until - 1),
        TicketStatus::Active
    );
    // Shown now: used up once the transfer time and the grace are over.
    let shown_at = now();
    w.present(0, shown_at).await.unwrap();
    let shown = w.data().await.unwrap().tickets[0].clone();
    assert_eq!(shown.first_shown, Some(shown_at));
    let over = shown_at + transfer + wallet::USED_UP_GRACE_SECONDS;
    assert_eq!(status(&shown, over - 1), TicketStatus::Active);
    assert_eq!(status(&shown, over), TicketStatus::UsedUp);
    // A second showing does not move the first.
    w.present(0, shown_at + 5).await.unwrap();
    assert_eq!(
        w.data().await.unwrap().tickets[0].first_shown,
        Some(shown_at)
    );
    // Too recent to check against the spent list: nothing is asked, nothing changes.
    assert_eq!(w.settle_shown(now()).await.unwrap(), 0);

    // Opening a code is not a ride: two singles shown long ago (as far as the wallet is
    // concerned), neither scanned; one of them revoked. Against the coordinator's signed
    // list, the one absent from it is unused again; the revoked one stays used up.
    let (_, _, done) = w
        .buy("single", 2, card(), now(), &mut rand::rng(), &mut |_| {})
        .await
        .unwrap();
    done.unwrap().unwrap();
    let long_ago =
        now() - transfer - wallet::USED_UP_GRACE_SECONDS - wallet::SETTLE_MARGIN_SECONDS - 60;
    for i in [1, 2] {
        w.present(i, long_ago).await.unwrap();
    }
    let tickets = w.data().await.unwrap().tickets;
    assert_eq!(status(&tickets[1], now()), TicketStatus::UsedUp);
    let admin = common::token(&c, "ops", TokenRole::Admin).await;
    let revoke = serde_json::json!({
        "keyset_id": tickets[2].ticket.keyset_id,
        "serial": tickets[2].ticket.serial(),
    });
    common::admin_post(&c, &admin, "/v1/admin/revoke", revoke).await;
    common::admin_post(&c, &admin, "/v1/admin/bloom/rebuild", serde_json::json!({})).await;
    assert_eq!(w.settle_shown(now()).await.unwrap(), 1);
    let tickets = w.data().await.unwrap().tickets;
    assert_eq!(tickets[1].first_shown, None);
    assert_eq!(status(&tickets[1], now()), TicketStatus::Active);
    assert_eq!(tickets[2].first_shown, Some(long_ago));
    assert_eq!(status(&tickets[2], now()), TicketStatus::UsedUp);
    c.cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wallets_and_validators_refuse_a_manifest_other_than_the_pinned_one() {
    let c = common::start(Db::Sqlite, 3, 2).await.unwrap();
    let store = MemoryStore::default();
    let w = wallet(&c, store).await;
    let store = MemoryStore::new(w.data().await.unwrap());
    let mut other = c.cluster.cluster.manifest.clone();
    other.version += 1;
    let client = Client::new(other.clone(), Duration::from_secs(5)).unwrap();
    let e = Wallet::open(client.clone(), store, SoftwareKeys)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ManifestMismatch), "{e}");
    // The passenger can trust the new one explicitly.
    let store = MemoryStore::new(w.data().await.unwrap());
    Wallet::<_, SoftwareKeys>::pin(&store, &other)
        .await
        .unwrap();
    Wallet::open(client, store, SoftwareKeys).await.unwrap();

    // The manifest fetched from the coordinator is checked against a pin too.
    let http = Http::new(Duration::from_secs(5)).unwrap();
    let url = &c.cluster.cluster.manifest.coordinator.url;
    let pinned = c.cluster.cluster.manifest.digest();
    let fetched = ticketing_client::fetch_manifest(&http, url, Some(&pinned))
        .await
        .unwrap();
    assert_eq!(fetched, c.cluster.cluster.manifest);
    let e = ticketing_client::fetch_manifest(&http, url, Some(&other.digest()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ManifestMismatch), "{e}");

    let vstore = validator::MemoryStore::default();
    vstore.pin_manifest(other.digest()).await.unwrap();
    let e = Validator::open(c.cluster.cluster.manifest.clone(), vstore, http)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ManifestMismatch), "{e}");
    c.cluster.stop().await.unwrap();
}

/// A wallet with `n` singles bought through the core.
async fn singles(c: &TestCluster, n: u32) -> Wallet<MemoryStore, SoftwareKeys> {
    let w = wallet(c, MemoryStore::default()).await;
    let (_, _, done) = w
        .buy("single", n, card(), now(), &mut rand::rng(), &mut |_| {})
        .await
        .unwrap();
    done.unwrap().unwrap();
    w
}

fn scan_id() -> ticketing_protocol::Id16 {
    ticketing_protocol::Id16::random(&mut rand::rng())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scan_is_decided_offline_queued_synced_and_resynced() {
    let mut c = common::start(Db::Sqlite, 3, 2).await.unwrap();
    let w = singles(&c, 3).await;
    let manifest = c.cluster.cluster.manifest.clone();
    let token = common::token(&c, "gate-1", TokenRole::Validator).await;
    let http = Http::new(Duration::from_secs(5)).unwrap();
    let gate = Validator::open(
        manifest.clone(),
        validator::MemoryStore::with_token(Some(token.clone())),
        http.clone(),
    )
    .await
    .unwrap();

    // Online: accepted once; the same code again is a replay on this device; the snapshot
    // was fetched in the same round trip.
    let first = w.present(0, now()).await.unwrap().to_text();
    let d = gate.validate(&first, now(), false, scan_id()).await;
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
    assert!(gate.store().snapshot().await.unwrap().is_some());
    let d = gate.validate(&first, now(), false, scan_id()).await;
    assert!(
        matches!(
            d.outcome,
            Ok(Outcome::Invalid {
                code: ErrorCode::ReplayedEpoch,
                ..
            })
        ),
        "{d:?}"
    );
    // A tampered payload never reaches the coordinator.
    let mut tampered = first.clone().into_bytes();
    tampered[100] = if tampered[100] == b'0' { b'1' } else { b'0' };
    let d = gate
        .validate(
            &String::from_utf8(tampered).unwrap(),
            now(),
            false,
            scan_id(),
        )
        .await;
    assert!(
        matches!(
            d.outcome,
            Ok(Outcome::Invalid {
                mode: Mode::Offline,
                ..
            })
        ),
        "{d:?}"
    );

    // Offline by choice: valid, queued.
    let shown_second = now();
    let second = w.present(1, shown_second).await.unwrap().to_text();
    let d = gate.validate(&second, now(), true, scan_id()).await;
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
    assert_eq!(gate.store().queue().await.unwrap().len(), 1);

    // The coordinator goes away: decided offline, with a note saying so, queued.
    c.stop_coordinator().await.unwrap();
    let third = w.present(2, now()).await.unwrap().to_text();
    let d = gate.validate(&third, now(), false, scan_id()).await;
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
    assert!(
        d.notes
            .iter()
            .any(|n| matches!(n, Note::DecidingOffline(_))),
        "{:?}",
        d.notes
    );
    let queued = gate.store().queue().await.unwrap();
    assert_eq!(queued.len(), 2);
    // Sync while it is away: nothing lost.
    let (report, failure) = gate.sync().await;
    assert!(failure.is_some());
    assert_eq!(report.remaining, 2);
    assert_eq!(gate.store().queue().await.unwrap().len(), 2);

    // Back: both recorded, the queue is empty.
    c.start_coordinator().await.unwrap();
    let (report, failure) = gate.sync().await;
    assert!(failure.is_none(), "{failure:?}");
    assert_eq!((report.sent, report.recorded, report.remaining), (2, 2, 0));
    assert!(gate.store().queue().await.unwrap().is_empty());
    let (report, failure) = gate.sync().await;
    assert!(failure.is_none());
    assert_eq!(report.sent, 0);

    // A re-sync of the same scans (the answer of a sync was lost): already synced, no double.
    let again = validator::MemoryStore::with_token(Some(token));
    for s in &queued {
        again
            .record(
                validator::SeenEntry {
                    serial: ticketing_crypto::presentation::Presentation::from_text(&s.payload)
                        .unwrap()
                        .ticket
                        .serial(),
                    epoch: 0,
                    until: u64::MAX,
                    at: s.scanned_at,
                    refused: None,
                },
                Some(s.clone()),
                now(),
            )
            .await
            .unwrap();
    }
    let resync = Validator::open(manifest, again, http).await.unwrap();
    let (report, failure) = resync.sync().await;
    assert!(failure.is_none());
    assert_eq!((report.sent, report.already_synced), (2, 2));

    // The second ticket, now used, is refused online elsewhere: a copy of the synced scan's
    // code (same epoch) is `replayed_epoch`. (A code of a later epoch would be a transfer,
    // valid for 90 minutes; presenting at `now()` made this test depend on whether the steps
    // above crossed a 30 s epoch boundary.)
    let copy = w.present(1, shown_second).await.unwrap().to_text();
    let other = Validator::open(
        c.cluster.cluster.manifest.clone(),
        validator::MemoryStore::with_token(Some(
            common::token(&c, "gate-2", TokenRole::Validator).await,
        )),
        Http::new(Duration::from_secs(5)).unwrap(),
    )
    .await
    .unwrap();
    let d = other.validate(&copy, now(), false, scan_id()).await;
    assert!(
        matches!(
            d.outcome,
            Ok(Outcome::Invalid {
                code: ErrorCode::ReplayedEpoch,
                mode: Mode::Online
            })
        ),
        "{d:?}"
    );
    c.cluster.stop().await.unwrap();
}

/// A QR code as a greyscale frame: `scale` pixels per module, a 4-module quiet zone.
fn frame(text: &str, scale: usize) -> (usize, Vec<u8>) {
    let code =
        qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M).unwrap();
    let modules = code.width();
    let colors = code.to_colors();
    let size = (modules + 8) * scale;
    let mut luma = vec![255u8; size * size];
    for (i, c) in colors.iter().enumerate() {
        if *c == qrcode::Color::Dark {
            let (mx, my) = (i % modules + 4, i / modules + 4);
            for y in my * scale..(my + 1) * scale {
                for x in mx * scale..(mx + 1) * scale {
                    luma[y * size + x] = 0;
                }
            }
        }
    }
    (size, luma)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_camera_frame_decodes_to_a_payload_that_verifies() {
    let c = common::start(Db::Sqlite, 3, 2).await.unwrap();
    let w = singles(&c, 1).await;
    let text = w.present(0, now()).await.unwrap().to_text();
    let (size, luma) = frame(&text, 4);
    let read = validator::decode_qr(size, size, &luma).unwrap();
    assert_eq!(read, text);
    ticketing_protocol::verify::check(&c.cluster.cluster.manifest, &read, now()).unwrap();
    // A blank frame, a short buffer and a zero size are "no code", never a panic.
    assert_eq!(
        validator::decode_qr(size, size, &vec![255; size * size]),
        None
    );
    assert_eq!(validator::decode_qr(size, size, &luma[..10]), None);
    assert_eq!(validator::decode_qr(0, 0, &[]), None);
    c.cluster.stop().await.unwrap();
}

#[tokio::test]
async fn software_keys_sign_what_the_holder_key_verifies() {
    let keys = SoftwareKeys;
    let (public, key) = keys.generate(&mut rand::rng()).await.unwrap();
    let sig = keys.sign(&key, b"epoch message").await.unwrap();
    public.verify(b"epoch message", &sig).unwrap();
    // The stored form is redacted in Debug.
    assert_eq!(format!("{key:?}"), "Secret(<redacted>)");
    let store = MemoryStore::default();
    assert!(store.load().await.unwrap().tickets.is_empty());
}
