//! The payments service over real HTTP (127.0.0.1:0, reqwest): card and voucher checkouts,
//! idempotent retries, every refusal with its stable code, body limits, and no card number in
//! the database.

// Test code: a panic is how a test fails, and fixtures index known-size data.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;

use common::{Server, assert_error, card_body, current_keyset, ended_keyset, voucher_body};
use ticketing_config::Settings;
use ticketing_crypto::keyset::KeysetId;
use ticketing_payments::card::{DECLINED, INSUFFICIENT_FUNDS, SUCCEEDS};
use ticketing_payments::store::{KeysetTotals, open_store};
use ticketing_payments::{Payments, PaymentsError, create_vouchers, create_vouchers_with};
use ticketing_protocol::Digest32;
use ticketing_protocol::receipt::SignedReceipt;
use ticketing_protocol::voucher::{VoucherCode, VoucherError};

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
    assert_eq!(
        r.receipt.expires_at - r.receipt.issued_at,
        s.settings.payments.receipt_ttl_seconds
    );
    // The signature covers the digest: the receipt cannot be moved to other points.
    let mut moved = r.clone();
    moved.receipt.digest = s.digest(&ks, 3);
    assert!(moved.verify(&s.manifest().payments.key).is_err());
    // Nothing about the payer in the answer.
    assert!(!answer.1.to_string().contains("4242"));

    assert_eq!(
        s.payments.store().totals().await.unwrap(),
        vec![KeysetTotals {
            keyset_id: ks,
            receipts: 1,
            tickets: 3,
            amount: 750
        }]
    );
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

    let answer = s
        .checkout(&card_body("single", &day, 1, &d, SUCCEEDS))
        .await;
    let detail = assert_error(&answer, 422, "keyset_not_active");
    assert!(detail.contains("`day`"), "{detail}");

    let ended = ended_keyset(s.manifest(), "single");
    let answer = s
        .checkout(&card_body("single", &ended, 1, &d, SUCCEEDS))
        .await;
    let detail = assert_error(&answer, 422, "keyset_not_active");
    assert!(detail.contains("ended"), "{detail}");

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
    assert!(matches!(err, PaymentsError::UnknownProduct), "{err:?}");
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
