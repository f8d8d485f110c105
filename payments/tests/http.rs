//! The payments service over real HTTP (127.0.0.1:0, reqwest): card and voucher checkouts,
//! idempotent retries (concurrent ones, abandoned and hung-up card payments), receipt lookup
//! and renewal, every refusal with its stable code, body limits, and no card number in the
//! database. The cases that touch storage run on SQLite and on Postgres.

use crate::common;

use std::sync::Arc;

use async_trait::async_trait;
use common::{DAY, Server, assert_error, card_body, current_keyset, ended_keyset, voucher_body};
use ticketing_config::Settings;
use ticketing_crypto::keyset::KeysetId;
use ticketing_payments::card::{
    CardNumber, DECLINED, Decline, INSUFFICIENT_FUNDS, Processor, SUCCEEDS, StubProcessor,
};
use ticketing_payments::service::RESERVATION_LEASE_SECONDS;
use ticketing_payments::store::{KeysetTotals, PendingReceipt, Reservation, open_store};
use ticketing_payments::{Payments, PaymentsError, create_vouchers, create_vouchers_with};
use ticketing_protocol::receipt::SignedReceipt;
use ticketing_protocol::voucher::{VoucherCode, VoucherError};
use ticketing_protocol::{Digest32, Id16};
use ticketing_service::test_support::TestDatabases;
use tokio::sync::Notify;

fn receipt(body: &serde_json::Value) -> SignedReceipt {
    serde_json::from_value(body.clone()).unwrap()
}

#[tokio::test]
async fn a_card_checkout_returns_a_receipt_that_verifies_and_binds_the_digest() {
    let mut s = Server::start(1).await;
    let ks = current_keyset(s.manifest(), "single");
    let d = s.digest(&ks, 3);
    let answer = s.checkout(&card_body("single", &ks, 3, &d, SUCCEEDS)).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    let r = receipt(&answer.1);
    r.verify(&s.manifest().payments.key).unwrap();
    assert_eq!(r.receipt.digest, d);
    assert_eq!(r.receipt.keyset_id, ks);
    assert_eq!(r.receipt.count, 3);
    assert_eq!(
        (r.receipt.amount, r.receipt.currency.as_str()),
        (750, "EUR")
    );
    let now = ticketing_service::now();
    assert!(r.receipt.issued_at <= now && now - r.receipt.issued_at < 60);
    // `issued_at` is when the sale was made, `expires_at` counts from when the receipt was
    // signed: the same second, or a later one on a slow machine.
    let ttl = s.settings.payments.receipt_ttl_seconds;
    assert!(
        (r.receipt.issued_at + ttl..=now + ttl).contains(&r.receipt.expires_at),
        "expires_at {} for issued_at {} and a {ttl} s validity",
        r.receipt.expires_at,
        r.receipt.issued_at
    );
    // The signature covers the digest: the receipt cannot be moved to other points.
    let mut moved = r.clone();
    moved.receipt.digest = s.digest(&ks, 3);
    assert!(moved.verify(&s.manifest().payments.key).is_err());
    // Nothing about the payer in the answer (the card number in either form; a bare "4242"
    // turns up by chance in the receipt's hex).
    let text = answer.1.to_string();
    assert!(!text.contains(SUCCEEDS) && !text.contains("4242424242424242"));

    assert_eq!(
        s.payments.store().totals().await.unwrap(),
        vec![KeysetTotals {
            keyset_id: ks,
            receipts: 1,
            tickets: 3,
            amount: 750
        }]
    );
    // The same figures over HTTP, signed with the receipt key.
    let totals: ticketing_protocol::audit::ReceiptTotals = s
        .client
        .get(format!("{}/v1/audit/totals", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    totals.verify(&s.manifest().payments.key).unwrap();
    assert_eq!(totals.keyset(&ks).tickets, 3);
    assert_eq!(totals.keyset(&ks).amount, 750);
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("ticketing_payments_receipts_issued_total 1"),
        "{metrics}"
    );
    s.stop().await;
}

#[tokio::test]
async fn declined_and_malformed_cards_are_refused_and_store_nothing() {
    let mut s = Server::start(2).await;
    let ks = current_keyset(s.manifest(), "day");
    for (number, detail) in [
        (DECLINED, "the card was declined"),
        (INSUFFICIENT_FUNDS, "insufficient funds"),
        ("4111 1111 1111 1111", "not a test card"),
    ] {
        let d = s.digest(&ks, 1);
        let answer = s.checkout(&card_body("day", &ks, 1, &d, number)).await;
        let got = assert_error(&answer, 402, "card_declined");
        assert!(got.contains(detail), "{got}");
    }
    for number in [
        "4242 4242 4242 4241",
        "4242",
        "card",
        "4242 4242 4242 4242 4242",
    ] {
        let d = s.digest(&ks, 1);
        let answer = s.checkout(&card_body("day", &ks, 1, &d, number)).await;
        let got = assert_error(&answer, 400, "malformed");
        assert!(!got.contains("4242"), "{got}");
    }
    assert_eq!(s.payments.store().totals().await.unwrap(), vec![]);
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("ticketing_payments_card_declines_total 3"),
        "{metrics}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_card_retry_with_the_same_digest_gets_the_same_receipt_without_paying_twice() {
    let mut s = Server::start(3).await;
    let ks = current_keyset(s.manifest(), "single");
    let d = s.digest(&ks, 2);
    let first = s.checkout(&card_body("single", &ks, 2, &d, SUCCEEDS)).await;
    assert_eq!(first.0, 200);
    // Even a retry whose card would now be declined gets the paid-for receipt.
    for number in [SUCCEEDS, DECLINED] {
        let again = s.checkout(&card_body("single", &ks, 2, &d, number)).await;
        assert_eq!(again, first);
    }
    // The same points under other terms: refused.
    let other = s.checkout(&card_body("single", &ks, 3, &d, SUCCEEDS)).await;
    assert_error(&other, 409, "receipt_reused");
    let totals = s.payments.store().totals().await.unwrap();
    assert_eq!((totals[0].receipts, totals[0].amount), (1, 500));
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("ticketing_payments_receipts_replayed_total 2"),
        "{metrics}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_voucher_pays_once_and_a_retry_gets_the_same_receipt() {
    let mut s = Server::start(4).await;
    let ks = current_keyset(s.manifest(), "single");
    let codes = create_vouchers(s.payments.store().as_ref(), s.manifest(), "single", 2)
        .await
        .unwrap();
    let code = &codes[0];
    let d = s.digest(&ks, 1);
    // Typed in lower case without hyphens: still the same code.
    let typed = code.as_str().to_lowercase();
    let first = s
        .checkout(&voucher_body("single", &ks, 1, &d, &typed))
        .await;
    assert_eq!(first.0, 200, "{}", first.1);
    let r = receipt(&first.1);
    r.verify(&s.manifest().payments.key).unwrap();
    assert_eq!((r.receipt.count, r.receipt.amount), (1, 250));
    assert_eq!(r.receipt.digest, d);

    // The same voucher for other points: used.
    let d2 = s.digest(&ks, 1);
    let again = s
        .checkout(&voucher_body("single", &ks, 1, &d2, &code.to_string()))
        .await;
    assert_error(&again, 409, "voucher_used");

    // The wallet's retry for the original points: the same receipt, voucher not charged again.
    let retry = s
        .checkout(&voucher_body("single", &ks, 1, &d, &code.to_string()))
        .await;
    assert_eq!(retry, first);
    let store = s.payments.store();
    assert_eq!(
        store.totals().await.unwrap(),
        vec![KeysetTotals {
            keyset_id: ks,
            receipts: 1,
            tickets: 1,
            amount: 250
        }]
    );
    assert!(store.voucher(&code.hash()).await.unwrap().unwrap().used);
    assert!(!store.voucher(&codes[1].hash()).await.unwrap().unwrap().used);
    s.stop().await;
}

#[tokio::test]
async fn mistyped_unknown_and_other_product_vouchers_are_invalid() {
    let mut s = Server::start(5).await;
    let single = current_keyset(s.manifest(), "single");
    let day = current_keyset(s.manifest(), "day");
    let store = Arc::clone(s.payments.store());
    let codes = create_vouchers(store.as_ref(), s.manifest(), "day", 1)
        .await
        .unwrap();
    let code = codes[0].to_string();

    // One character off: the wallet's own parse catches it before any request...
    let mut chars: Vec<char> = code.chars().collect();
    chars[2] = if chars[2] == 'A' { 'B' } else { 'A' };
    let typo: String = chars.into_iter().collect();
    assert_eq!(VoucherCode::parse(&typo), Err(VoucherError::CheckFailed));
    // ...and so does the service.
    let d = s.digest(&day, 1);
    let answer = s.checkout(&voucher_body("day", &day, 1, &d, &typo)).await;
    let detail = assert_error(&answer, 422, "invalid_voucher");
    assert!(detail.contains("mistyped"), "{detail}");
    assert!(!detail.contains(&typo), "{detail}");

    let answer = s
        .checkout(&voucher_body("day", &day, 1, &d, "ABCD-EFGH-JKMN-PQRU"))
        .await;
    let detail = assert_error(&answer, 422, "invalid_voucher");
    assert!(detail.contains("`U` (character 19)"), "{detail}");

    // Well-formed but never issued.
    let unknown = VoucherCode::generate(&mut rand::rng()).to_string();
    let answer = s
        .checkout(&voucher_body("day", &day, 1, &d, &unknown))
        .await;
    assert_error(&answer, 422, "invalid_voucher");

    // A day voucher for a single ticket.
    let ds = s.digest(&single, 1);
    let answer = s
        .checkout(&voucher_body("single", &single, 1, &ds, &code))
        .await;
    let detail = assert_error(&answer, 422, "invalid_voucher");
    assert!(detail.contains("`day`"), "{detail}");

    // A voucher pays for exactly one ticket.
    let d3 = s.digest(&day, 3);
    let answer = s.checkout(&voucher_body("day", &day, 3, &d3, &code)).await;
    let detail = assert_error(&answer, 400, "malformed");
    assert!(detail.contains("exactly one ticket"), "{detail}");

    // None of that used the voucher up.
    assert!(!store.voucher(&codes[0].hash()).await.unwrap().unwrap().used);
    let answer = s.checkout(&voucher_body("day", &day, 1, &d, &code)).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(receipt(&answer.1).receipt.amount, 700);
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("ticketing_payments_voucher_refusals_total 4"),
        "{metrics}"
    );
    s.stop().await;
}

#[tokio::test]
async fn products_keysets_and_counts_are_checked() {
    let mut s = Server::start(6).await;
    let single = current_keyset(s.manifest(), "single");
    let day = current_keyset(s.manifest(), "day");
    let d = s.digest(&single, 1);

    let unknown = KeysetId([0xee; 8]);
    let answer = s
        .checkout(&card_body("single", &unknown, 1, &d, SUCCEEDS))
        .await;
    assert_error(&answer, 404, "unknown_keyset");

    let answer = s
        .checkout(&card_body("platinum", &single, 1, &d, SUCCEEDS))
        .await;
    assert_error(&answer, 404, "not_found");

    // Another product's keyset is a malformed request, not a window problem.
    let answer = s
        .checkout(&card_body("single", &day, 1, &d, SUCCEEDS))
        .await;
    let detail = assert_error(&answer, 400, "malformed");
    assert_eq!(
        detail,
        format!("keyset {day} is for product `day`, not `single`")
    );

    let ended = ended_keyset(s.manifest(), "single");
    let answer = s
        .checkout(&card_body("single", &ended, 1, &d, SUCCEEDS))
        .await;
    let detail = assert_error(&answer, 422, "keyset_not_active");
    assert!(detail.contains("ended"), "{detail}");

    // Nor a window further ahead than the next one: the day after tomorrow is not on sale.
    let now = ticketing_service::now();
    let later = s
        .manifest()
        .keysets
        .iter()
        .find(|k| k.params.product == "day" && k.params.valid_from > now + DAY)
        .unwrap()
        .id;
    let answer = s.checkout(&card_body("day", &later, 1, &d, SUCCEEDS)).await;
    let detail = assert_error(&answer, 422, "keyset_not_active");
    assert!(detail.contains("not on sale"), "{detail}");

    let max = s.settings.payments.max_tickets_per_checkout;
    for count in [0, max + 1, u32::MAX] {
        let answer = s
            .checkout(&card_body("single", &single, count, &d, SUCCEEDS))
            .await;
        let detail = assert_error(&answer, 400, "malformed");
        assert!(detail.contains(&format!("between 1 and {max}")), "{detail}");
    }
    let answer = s
        .checkout(&card_body("single", &single, max, &d, SUCCEEDS))
        .await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    s.stop().await;
}

#[tokio::test]
async fn oversized_and_malformed_bodies_get_stable_codes() {
    let mut s = Server::start(7).await;
    let ks = current_keyset(s.manifest(), "single");
    let d = s.digest(&ks, 1);
    let limit = s.settings.http.body_limit_bytes;
    let mut big = card_body("single", &ks, 1, &d, SUCCEEDS);
    big["product"] = "x".repeat(limit + 1).into();
    let answer = s.checkout(&big).await;
    assert_error(&answer, 413, "payload_too_large");

    for bytes in [
        b"{not json".to_vec(),
        b"{}".to_vec(),
        b"[]".to_vec(),
        br#"{"product":"single","keyset_id":"zz","count":1,"digest":"00","payment":{"method":"card","number":"1"}}"#.to_vec(),
        br#"{"product":"single","keyset_id":"0000000000000000","count":1,"digest":"00","payment":{"method":"cash"}}"#.to_vec(),
    ] {
        let answer = s.checkout_raw(bytes).await;
        assert_error(&answer, 400, "malformed");
    }
    // Unknown routes answer JSON too.
    let resp = s
        .client
        .get(format!("{}/v1/nothing", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["code"],
        "not_found"
    );
    s.stop().await;
}

#[tokio::test]
async fn no_card_number_or_voucher_code_reaches_the_database() {
    let mut s = Server::start(8).await;
    let ks = current_keyset(s.manifest(), "single");
    for number in [
        SUCCEEDS,
        DECLINED,
        INSUFFICIENT_FUNDS,
        "4111-1111-1111-1111",
    ] {
        for count in [1, 2] {
            let d = s.digest(&ks, count);
            let _ = s
                .checkout(&card_body("single", &ks, count, &d, number))
                .await;
        }
    }
    let codes = create_vouchers(s.payments.store().as_ref(), s.manifest(), "single", 3)
        .await
        .unwrap();
    for code in &codes[..2] {
        let d = s.digest(&ks, 1);
        let answer = s
            .checkout(&voucher_body("single", &ks, 1, &d, &code.to_string()))
            .await;
        assert_eq!(answer.0, 200);
    }
    assert_eq!(s.payments.store().totals().await.unwrap()[0].receipts, 4);

    // Every file of the database (main file, WAL, shared memory), as bytes.
    let mut bytes = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(s.dir.path()).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
        files += 1;
    }
    assert!(files >= 1 && bytes.len() > 4096);
    let mut needles: Vec<String> = Vec::new();
    for n in [
        SUCCEEDS,
        DECLINED,
        INSUFFICIENT_FUNDS,
        "4111 1111 1111 1111",
    ] {
        needles.push(n.replace(' ', ""));
        needles.push(n.to_owned());
        needles.push(n.replace(' ', "-"));
    }
    for c in &codes {
        needles.push(c.to_string());
        needles.push(c.as_str().to_owned());
    }
    for needle in &needles {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "`{needle}` found in the database files"
        );
    }
    // The hash is what is there.
    let hash = codes[0].hash().0;
    assert!(bytes.windows(32).any(|w| w == hash));
    s.stop().await;
}

#[tokio::test]
async fn the_service_loads_from_a_cluster_directory_and_checks_its_key() {
    let cluster = common::test_cluster(9);
    let dir = tempfile::tempdir().unwrap();
    cluster.write(dir.path(), false).unwrap();
    let settings = Settings {
        data_dir: dir.path().to_owned(),
        ..Settings::default()
    };

    // `ticketing voucher create` then `ticketing payments`, from the same directory.
    let codes = create_vouchers_with(&settings, "week", 1).await.unwrap();
    let err = create_vouchers_with(&settings, "platinum", 1)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PaymentsError::UnknownProduct { known } if known == "single, day, week"),
        "{err:?}"
    );
    assert!(err.to_string().contains("single, day, week"), "{err}");
    let err = create_vouchers_with(&settings, "week", 0)
        .await
        .unwrap_err();
    assert!(matches!(err, PaymentsError::Malformed(_)), "{err:?}");

    let payments = Payments::load(&settings).await.unwrap();
    let mut s = Server::serve(payments, cluster, settings, dir, 9).await;
    let ks = current_keyset(s.manifest(), "week");
    let d = s.digest(&ks, 1);
    let answer = s
        .checkout(&voucher_body("week", &ks, 1, &d, &codes[0].to_string()))
        .await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(receipt(&answer.1).receipt.amount, 2500);

    // A receipt key that is not the manifest's is refused at startup.
    let other = ticketing_protocol::keys::SignKey::generate(&mut rand::rng());
    let store = open_store("sqlite::memory:").await.unwrap();
    let err = Payments::new(s.manifest().clone(), other, store, &s.settings).unwrap_err();
    assert!(matches!(err, PaymentsError::KeyMismatch), "{err:?}");
    s.stop().await;
}

#[tokio::test]
async fn concurrent_http_checkouts_with_one_voucher_issue_one_receipt() {
    let mut s = Server::start(10).await;
    let ks = current_keyset(s.manifest(), "single");
    let codes = create_vouchers(s.payments.store().as_ref(), s.manifest(), "single", 1)
        .await
        .unwrap();
    let code = codes[0].to_string();
    let digests: Vec<Digest32> = (0..20).map(|_| s.digest(&ks, 1)).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for d in digests {
        let body = voucher_body("single", &ks, 1, &d, &code);
        let client = s.client.clone();
        let url = format!("{}/v1/checkout", s.url);
        tasks.spawn(async move {
            let resp = client.post(url).json(&body).send().await.unwrap();
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap();
            (status, body)
        });
    }
    let mut statuses = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (status, body) = r.unwrap();
        if status != 200 {
            assert_eq!(body["code"], "voucher_used", "{body}");
        }
        statuses.push(status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses[0], 200);
    assert_eq!(statuses.iter().filter(|&&st| st == 200).count(), 1);
    assert_eq!(statuses.iter().filter(|&&st| st == 409).count(), 19);
    s.stop().await;
}

#[tokio::test]
async fn the_service_runs_on_postgres_too() {
    let Some(url) = ticketing_service::db::fresh_test_postgres("pay_http")
        .await
        .unwrap()
    else {
        return;
    };
    let mut s = Server::start_on(11, url).await;
    let ks = current_keyset(s.manifest(), "single");
    let d = s.digest(&ks, 2);
    let card = s.checkout(&card_body("single", &ks, 2, &d, SUCCEEDS)).await;
    assert_eq!(card.0, 200, "{}", card.1);
    assert_eq!(
        s.checkout(&card_body("single", &ks, 2, &d, SUCCEEDS)).await,
        card
    );
    let codes = create_vouchers(s.payments.store().as_ref(), s.manifest(), "single", 1)
        .await
        .unwrap();
    let dv = s.digest(&ks, 1);
    let body = voucher_body("single", &ks, 1, &dv, &codes[0].to_string());
    let first = s.checkout(&body).await;
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(s.checkout(&body).await, first);
    let d2 = s.digest(&ks, 1);
    let again = s
        .checkout(&voucher_body("single", &ks, 1, &d2, &codes[0].to_string()))
        .await;
    assert_error(&again, 409, "voucher_used");
    let totals = s.payments.store().totals().await.unwrap();
    assert_eq!(
        (totals[0].receipts, totals[0].tickets, totals[0].amount),
        (2, 3, 750)
    );
    s.stop().await;
}

/// A server seeded with `seed`, its store on the case's database.
async fn server(dbs: &TestDatabases, seed: u64) -> Option<Server> {
    Some(Server::start_on(seed, dbs.url("payments").await?).await)
}

ticketing_service::on_both_databases!(
    server;
    concurrent_card_retries_of_one_digest_charge_once(30),
    a_declined_card_frees_the_points_for_another_card(31),
    a_payment_in_progress_makes_a_retry_wait_then_answer_unavailable(32),
    an_abandoned_card_payment_is_taken_over_without_charging_twice(33),
    receipts_are_looked_up_by_digest_and_renewed_when_expired(34),
    a_checkout_retry_renews_an_expired_receipt_without_paying(35),
);

async fn concurrent_card_retries_of_one_digest_charge_once(mut s: Server) {
    let ks = current_keyset(s.manifest(), "single");
    let d = s.digest(&ks, 2);
    let body = card_body("single", &ks, 2, &d, SUCCEEDS);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let client = s.client.clone();
        let url = format!("{}/v1/checkout", s.url);
        let body = body.clone();
        tasks.spawn(async move {
            let resp = client.post(url).json(&body).send().await.unwrap();
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap();
            (status, body)
        });
    }
    let mut receipts = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (status, body) = r.unwrap();
        match status {
            200 => receipts.push(receipt(&body)),
            // Allowed (a retry that outwaited the first payment), never anything else.
            _ => assert_eq!(
                (status, &body["code"]),
                (503, &"unavailable".into()),
                "{body}"
            ),
        }
    }
    assert!(!receipts.is_empty());
    assert!(receipts.iter().all(|r| r == &receipts[0]));
    receipts[0].verify(&s.manifest().payments.key).unwrap();
    // A later retry gets the same receipt too.
    let again = s.checkout(&body).await;
    assert_eq!(receipt(&again.1), receipts[0]);
    assert_eq!(s.charges(), 1);
    let charge = s.stub.as_ref().unwrap().charge_for(&d).unwrap();
    assert_eq!(charge.amount, 500);
    let totals = s.payments.store().totals().await.unwrap();
    assert_eq!((totals[0].receipts, totals[0].amount), (1, 500));
    s.stop().await;
}

async fn a_declined_card_frees_the_points_for_another_card(mut s: Server) {
    let ks = current_keyset(s.manifest(), "day");
    let d = s.digest(&ks, 1);
    let declined = s.checkout(&card_body("day", &ks, 1, &d, DECLINED)).await;
    assert_error(&declined, 402, "card_declined");
    assert_eq!(s.payments.store().stored(&d).await.unwrap(), None);
    assert_eq!(s.charges(), 0);
    let paid = s.checkout(&card_body("day", &ks, 1, &d, SUCCEEDS)).await;
    assert_eq!(paid.0, 200, "{}", paid.1);
    assert_eq!(s.charges(), 1);
    // Now paid for: even the declined card gets the receipt, without a charge.
    let again = s.checkout(&card_body("day", &ks, 1, &d, DECLINED)).await;
    assert_eq!(again, paid);
    assert_eq!(s.charges(), 1);
    s.stop().await;
}

fn pending(keyset: KeysetId, count: u32, digest: Digest32, amount: u64) -> PendingReceipt {
    PendingReceipt {
        receipt_id: Id16::random(&mut rand::rng()),
        keyset_id: keyset,
        count,
        digest,
        amount,
        currency: "EUR".into(),
    }
}

async fn a_payment_in_progress_makes_a_retry_wait_then_answer_unavailable(mut s: Server) {
    let ks = current_keyset(s.manifest(), "single");
    let d = s.digest(&ks, 1);
    // Another attempt (another payments process, say) holds the points and is alive.
    let store = Arc::clone(s.payments.store());
    let lease = Id16::random(&mut rand::rng());
    let p = pending(ks, 1, d, 250);
    let now = ticketing_service::now();
    assert_eq!(
        store.reserve(&p, lease, now).await.unwrap(),
        Reservation::Reserved
    );
    let answer = s.checkout(&card_body("single", &ks, 1, &d, SUCCEEDS)).await;
    let detail = assert_error(&answer, 503, "unavailable");
    assert!(detail.contains("in progress"), "{detail}");
    // A voucher for the same points waits for the card payment too, and burns nothing.
    let codes = create_vouchers(store.as_ref(), s.manifest(), "single", 1)
        .await
        .unwrap();
    let answer = s
        .checkout(&voucher_body("single", &ks, 1, &d, &codes[0].to_string()))
        .await;
    assert_error(&answer, 503, "unavailable");
    assert!(!store.voucher(&codes[0].hash()).await.unwrap().unwrap().used);
    // The lookup has no receipt to show yet, and says the payment is in progress (the wallet
    // must not conclude it never happened).
    assert_error(&s.lookup(&d.to_string()).await, 503, "unavailable");
    // Other points under other terms are a conflict, not a wait.
    let other = s.checkout(&card_body("single", &ks, 2, &d, SUCCEEDS)).await;
    assert_error(&other, 409, "receipt_reused");
    assert_eq!(s.charges(), 0);
    // The other attempt gives up (its card was declined): the retry pays.
    assert!(store.release(&d, lease).await.unwrap());
    let answer = s.checkout(&card_body("single", &ks, 1, &d, SUCCEEDS)).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(s.charges(), 1);
    s.stop().await;
}

async fn an_abandoned_card_payment_is_taken_over_without_charging_twice(mut s: Server) {
    let ks = current_keyset(s.manifest(), "single");
    let store = Arc::clone(s.payments.store());
    let stub = Arc::clone(s.stub.as_ref().unwrap());
    let card = CardNumber::parse(SUCCEEDS).unwrap();
    let long_ago = ticketing_service::now() - RESERVATION_LEASE_SECONDS - 1;

    // An attempt reserved, charged, and died before issuing the receipt.
    let d = s.digest(&ks, 3);
    let p = pending(ks, 3, d, 750);
    let lease = Id16::random(&mut rand::rng());
    store.reserve(&p, lease, long_ago).await.unwrap();
    stub.charge(&card, 750, "EUR", &d).await.unwrap();
    assert_eq!(s.charges(), 1);
    let answer = s.checkout(&card_body("single", &ks, 3, &d, SUCCEEDS)).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    let r = receipt(&answer.1);
    r.verify(&s.manifest().payments.key).unwrap();
    // The reserved receipt, issued; the second charge was the first one.
    assert_eq!(r.receipt.receipt_id, p.receipt_id);
    assert_eq!((r.receipt.count, r.receipt.amount), (3, 750));
    assert_eq!(s.charges(), 1);
    assert_eq!(store.receipt_by_digest(&d).await.unwrap(), Some(r));
    // The dead attempt's lease is worthless now.
    assert!(!store.release(&d, lease).await.unwrap());

    // An attempt that died before charging: the retry charges, once.
    let d2 = s.digest(&ks, 1);
    store
        .reserve(&pending(ks, 1, d2, 250), lease, long_ago)
        .await
        .unwrap();
    let answer = s
        .checkout(&card_body("single", &ks, 1, &d2, SUCCEEDS))
        .await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(s.charges(), 2);
    let totals = s.payments.store().totals().await.unwrap();
    assert_eq!((totals[0].receipts, totals[0].amount), (2, 1000));
    s.stop().await;
}

async fn receipts_are_looked_up_by_digest_and_renewed_when_expired(mut s: Server) {
    let ks = current_keyset(s.manifest(), "single");
    let key = s.manifest().payments.key;
    let ttl = s.settings.payments.receipt_ttl_seconds;

    // Nothing for unknown points; the answer does not echo them.
    let unknown = s.digest(&ks, 1);
    let answer = s.lookup(&unknown.to_string()).await;
    let detail = assert_error(&answer, 404, "not_found");
    assert!(!detail.contains(&unknown.to_string()[..8]), "{detail}");
    for bad in [
        "abc".to_owned(),
        "0".repeat(63),
        "0".repeat(65),
        "g".repeat(64),
        format!("{unknown}00"),
    ] {
        let answer = s.lookup(&bad).await;
        let detail = assert_error(&answer, 400, "malformed");
        assert!(detail.contains("64 hexadecimal"), "{detail}");
    }

    // A fresh receipt comes back as it is, in either case of hex.
    let d = s.digest(&ks, 2);
    let paid = s.checkout(&card_body("single", &ks, 2, &d, SUCCEEDS)).await;
    assert_eq!(paid.0, 200, "{}", paid.1);
    assert_eq!(s.lookup(&d.to_string()).await, paid);
    assert_eq!(s.lookup(&d.to_string().to_uppercase()).await, paid);

    // An expired one is re-signed with a fresh expiry and otherwise unchanged.
    let d2 = s.digest(&ks, 2);
    let old = s.plant_expired(&ks, 2, &d2, 500, 5).await;
    let before = ticketing_service::now();
    let answer = s.lookup(&d2.to_string()).await;
    let after = ticketing_service::now();
    assert_eq!(answer.0, 200, "{}", answer.1);
    let renewed = receipt(&answer.1);
    renewed.verify(&key).unwrap();
    assert_ne!(renewed, old);
    assert!(before + ttl <= renewed.receipt.expires_at);
    assert!(renewed.receipt.expires_at <= after + ttl);
    let mut same = renewed.receipt.clone();
    same.expires_at = old.receipt.expires_at;
    assert_eq!(same, old.receipt);
    // Stored in place: the next lookup and the totals see one receipt, not renewed again.
    assert_eq!(
        s.payments.store().receipt_by_digest(&d2).await.unwrap(),
        Some(renewed.clone())
    );
    assert_eq!(receipt(&s.lookup(&d2.to_string()).await.1), renewed);
    let totals = s.payments.store().totals().await.unwrap();
    assert_eq!((totals[0].receipts, totals[0].tickets), (2, 4));
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("ticketing_payments_receipts_renewed_total 1"),
        "{metrics}"
    );
    assert_eq!(s.charges(), 1);
    s.stop().await;
}

async fn a_checkout_retry_renews_an_expired_receipt_without_paying(mut s: Server) {
    let ks = current_keyset(s.manifest(), "single");
    let key = s.manifest().payments.key;
    let now = ticketing_service::now();

    // By card: the receipt comes back renewed, the card is not charged.
    let d = s.digest(&ks, 2);
    let old = s.plant_expired(&ks, 2, &d, 500, 60).await;
    let answer = s.checkout(&card_body("single", &ks, 2, &d, SUCCEEDS)).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    let renewed = receipt(&answer.1);
    renewed.verify(&key).unwrap();
    assert_eq!(renewed.receipt.receipt_id, old.receipt.receipt_id);
    assert_eq!(renewed.receipt.issued_at, old.receipt.issued_at);
    assert!(renewed.receipt.expires_at > now);
    assert_eq!(s.charges(), 0);
    assert_eq!(s.lookup(&d.to_string()).await, answer);

    // By voucher: the same, and the voucher is not burned.
    let codes = create_vouchers(s.payments.store().as_ref(), s.manifest(), "single", 1)
        .await
        .unwrap();
    let d2 = s.digest(&ks, 1);
    let old = s.plant_expired(&ks, 1, &d2, 250, 60).await;
    let answer = s
        .checkout(&voucher_body("single", &ks, 1, &d2, &codes[0].to_string()))
        .await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    let renewed = receipt(&answer.1);
    renewed.verify(&key).unwrap();
    assert_eq!(renewed.receipt.receipt_id, old.receipt.receipt_id);
    assert!(renewed.receipt.expires_at > now);
    let store = Arc::clone(s.payments.store());
    assert!(!store.voucher(&codes[0].hash()).await.unwrap().unwrap().used);

    // Other terms for the expired points are still a conflict (and renew nothing).
    let d3 = s.digest(&ks, 1);
    let old = s.plant_expired(&ks, 1, &d3, 250, 60).await;
    let other = s
        .checkout(&card_body("single", &ks, 2, &d3, SUCCEEDS))
        .await;
    assert_error(&other, 409, "receipt_reused");
    assert_eq!(store.receipt_by_digest(&d3).await.unwrap(), Some(old));
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("ticketing_payments_receipts_renewed_total 2"),
        "{metrics}"
    );
    s.stop().await;
}

/// The stub, but each charge waits until the test lets it go.
#[derive(Debug, Default)]
struct GatedProcessor {
    stub: StubProcessor,
    entered: Notify,
    release: Notify,
}

#[async_trait]
impl Processor for GatedProcessor {
    async fn charge(
        &self,
        card: &CardNumber,
        amount: u64,
        currency: &str,
        idempotency_key: &Digest32,
    ) -> Result<(), Decline> {
        self.entered.notify_one();
        self.release.notified().await;
        self.stub
            .charge(card, amount, currency, idempotency_key)
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wallet_hanging_up_mid_payment_does_not_leave_a_charge_without_a_receipt() {
    let gate = Arc::new(GatedProcessor::default());
    let mut s = Server::start_with(36, String::new(), gate.clone()).await;
    let ks = current_keyset(s.manifest(), "single");
    let d = s.digest(&ks, 1);
    let body = card_body("single", &ks, 1, &d, SUCCEEDS);
    let request = {
        let (client, url, body) = (
            s.client.clone(),
            format!("{}/v1/checkout", s.url),
            body.clone(),
        );
        tokio::spawn(async move { client.post(url).json(&body).send().await })
    };
    // The charge is under way; the wallet hangs up (its connection closes).
    gate.entered.notified().await;
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
    gate.release.notify_one();
    // The retry gets the receipt of the one charge (waiting for it if need be).
    let answer = s.checkout(&body).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(gate.stub.charges(), 1);
    assert_eq!(
        s.payments.store().receipt_by_digest(&d).await.unwrap(),
        Some(receipt(&answer.1))
    );
    s.stop().await;
}

/// Rate limits per client, in memory: checkouts per minute, refused voucher codes per hour
/// (after which the client's checkouts wait), requests per minute on every route but `/health`;
/// each answered 429 `rate_limited` with `Retry-After`.
#[tokio::test]
async fn clients_over_their_limits_get_429_with_retry_after() {
    let stub = || Arc::new(StubProcessor::new());
    let retry_after = |r: &reqwest::Response| {
        r.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };

    // Checkouts: 3 a minute.
    let mut s = Server::start_configured(41, String::new(), stub(), |c| {
        c.http.requests_per_minute = 0;
        c.payments.checkouts_per_minute = 3;
        c.payments.voucher_failures_per_hour = 0;
    })
    .await;
    let ks = current_keyset(s.manifest(), "single");
    for _ in 0..3 {
        let d = s.digest(&ks, 1);
        let (status, body) = s.checkout(&card_body("single", &ks, 1, &d, SUCCEEDS)).await;
        assert_eq!(status, 200, "{body}");
    }
    let d = s.digest(&ks, 1);
    let over = reqwest::Client::new()
        .post(format!("{}/v1/checkout", s.url))
        .json(&card_body("single", &ks, 1, &d, SUCCEEDS))
        .send()
        .await
        .unwrap();
    assert_eq!(over.status(), 429);
    let wait = retry_after(&over).unwrap();
    assert!((1..=20).contains(&wait), "{wait}");
    let body: serde_json::Value = over.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    s.stop().await;

    // Refused voucher codes: 2 an hour, then every checkout of that client waits.
    let mut s = Server::start_configured(42, String::new(), stub(), |c| {
        c.http.requests_per_minute = 0;
        c.payments.checkouts_per_minute = 0;
        c.payments.voucher_failures_per_hour = 2;
    })
    .await;
    let ks = current_keyset(s.manifest(), "single");
    for _ in 0..2 {
        let guess = VoucherCode::generate(&mut rand::rng()).to_string();
        let d = s.digest(&ks, 1);
        let answer = s
            .checkout(&voucher_body("single", &ks, 1, &d, &guess))
            .await;
        assert_error(&answer, 422, "invalid_voucher");
    }
    let d = s.digest(&ks, 1);
    let answer = s.checkout(&card_body("single", &ks, 1, &d, SUCCEEDS)).await;
    assert_error(&answer, 429, "rate_limited");
    s.stop().await;

    // Every route: 5 requests a minute; /health is never limited.
    let s = Server::start_configured(43, String::new(), stub(), |c| {
        c.http.requests_per_minute = 5;
    })
    .await;
    let http = reqwest::Client::new();
    let digest = "00".repeat(32);
    for _ in 0..5 {
        let r = http
            .get(format!("{}/v1/receipts/{digest}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    let r = http
        .get(format!("{}/v1/receipts/{digest}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(retry_after(&r).is_some());
    for _ in 0..10 {
        let r = http.get(format!("{}/health", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    s.stop().await;
}
