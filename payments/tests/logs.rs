//! What the payments service logs, captured at TRACE for every target: outcomes, never a card
//! number, a voucher code or a digest (not even the one in a lookup's URL). (The capturing subscriber is global: the other modules of this binary log into it too, and none of them may log those either.)

use crate::common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{Server, card_body, current_keyset, voucher_body};
use ticketing_payments::card::{DECLINED, SUCCEEDS};
use ticketing_payments::create_vouchers;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_carry_outcomes_but_no_card_numbers_codes_or_digests() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let mut s = Server::start(21).await;
    let ks = current_keyset(s.manifest(), "single");
    let codes = create_vouchers(s.payments.store().as_ref(), s.manifest(), "single", 1)
        .await
        .unwrap();
    let code = codes[0].to_string();
    let mut digests = Vec::new();
    for (number, status) in [
        (SUCCEEDS, 200),
        (DECLINED, 402),
        ("4242 4242 4242 4241", 400),
    ] {
        let d = s.digest(&ks, 2);
        let answer = s.checkout(&card_body("single", &ks, 2, &d, number)).await;
        assert_eq!(answer.0, status, "{}", answer.1);
        digests.push(d);
    }
    for _ in 0..2 {
        let d = s.digest(&ks, 1);
        let _ = s.checkout(&voucher_body("single", &ks, 1, &d, &code)).await;
        digests.push(d);
    }
    // Lookups: a paid digest, an unknown one, an expired receipt (renewed).
    assert_eq!(s.lookup(&digests[0].to_string()).await.0, 200);
    let unknown = s.digest(&ks, 1);
    assert_eq!(s.lookup(&unknown.to_string()).await.0, 404);
    digests.push(unknown);
    let expired = s.digest(&ks, 1);
    s.plant_expired(&ks, 1, &expired, 250, 5).await;
    assert_eq!(s.lookup(&expired.to_string()).await.0, 200);
    digests.push(expired);
    // A product name that is not in the manifest is attacker-chosen text: not logged either.
    let d = s.digest(&ks, 1);
    let _ = s
        .checkout(&card_body("4242424242424242", &ks, 1, &d, SUCCEEDS))
        .await;
    s.stop().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for expected in [
        "outcome=\"issued\"",
        "outcome=\"card_declined\"",
        "outcome=\"voucher_used\"",
        "outcome=\"malformed\"",
        "outcome=\"not_found\"",
        "outcome=\"found\"",
        "outcome=\"renewed\"",
        "receipt lookup",
        "vouchers created",
    ] {
        assert!(logs.contains(expected), "missing {expected} in:\n{logs}");
    }
    let mut needles = vec![
        "4242424242424242".to_owned(),
        "4242 4242".to_owned(),
        "4000000000000002".to_owned(),
        "4000 0000".to_owned(),
        code.clone(),
        codes[0].as_str().to_owned(),
    ];
    needles.extend(digests.iter().map(ToString::to_string));
    for needle in &needles {
        assert!(
            !logs.contains(needle.as_str()),
            "`{needle}` logged:\n{logs}"
        );
    }
}
