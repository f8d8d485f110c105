//! The storage conformance suite: every case runs against SQLite (a temp file) and Postgres (a
//! fresh database on `TICKETING_TEST_POSTGRES_URL`; skipped with a note when unset, an error
//! when `TICKETING_REQUIRE_POSTGRES=1`).

use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use ticketing_crypto::keyset::KeysetId;
use ticketing_payments::PaymentsError;
use ticketing_payments::store::{
    CheckoutOutcome, KeysetTotals, NewVoucher, PaymentsStore, PendingReceipt, Reservation, Stored,
    VoucherInfo, VoucherPayment, open_store,
};
use ticketing_protocol::keys::SignKey;
use ticketing_protocol::receipt::{Receipt, SignedReceipt};
use ticketing_protocol::voucher::VoucherCode;
use ticketing_protocol::{Digest32, Id16};
use ticketing_service::test_support::TestDatabases;

/// The URL of a fresh database for the case.
async fn url(dbs: &TestDatabases) -> Option<String> {
    dbs.url("payments").await
}

ticketing_service::on_both_databases!(
    url;
    vouchers_are_added_all_or_none,
    vouchers_are_listed_and_voided,
    receipts_are_stored_and_totalled_per_keyset,
    a_repeated_digest_returns_the_stored_receipt,
    a_voucher_burns_once_and_only_for_its_product,
    concurrent_checkouts_with_one_voucher_burn_it_once,
    concurrent_retries_of_one_digest_store_one_receipt,
    extreme_values_round_trip_or_are_refused,
    reopening_keeps_the_data,
    a_card_reservation_holds_the_digest_until_issued,
    a_reservation_is_released_or_taken_over_only_under_its_lease,
    concurrent_reservations_of_one_digest_reserve_once,
    concurrent_take_overs_of_one_reservation_succeed_once,
    issuing_needs_the_reserved_receipt,
    renewal_replaces_only_expiry_and_signature,
    concurrent_renewals_store_one_receipt,
);

const KS_A: KeysetId = KeysetId([1; 8]);
const KS_B: KeysetId = KeysetId([2; 8]);
/// A fixed clock for reservations and receipts.
const T0: u64 = 1_795_266_000;

struct Maker {
    rng: ChaCha20Rng,
    key: SignKey,
}

impl Maker {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let key = SignKey::generate(&mut rng);
        Self { rng, key }
    }

    fn digest(&mut self) -> Digest32 {
        Digest32(Id16::random(&mut self.rng).0.repeat(2).try_into().unwrap())
    }

    fn receipt(
        &mut self,
        keyset_id: KeysetId,
        count: u32,
        digest: Digest32,
        amount: u64,
    ) -> SignedReceipt {
        Receipt {
            receipt_id: Id16::random(&mut self.rng),
            keyset_id,
            count,
            digest,
            amount,
            currency: "EUR".into(),
            issued_at: 1_795_266_000,
            expires_at: 1_795_266_600,
        }
        .sign(&self.key)
    }

    fn pending(
        &mut self,
        keyset_id: KeysetId,
        count: u32,
        digest: Digest32,
        amount: u64,
    ) -> PendingReceipt {
        PendingReceipt {
            receipt_id: Id16::random(&mut self.rng),
            keyset_id,
            count,
            digest,
            amount,
            currency: "EUR".into(),
        }
    }

    fn lease(&mut self) -> Id16 {
        Id16::random(&mut self.rng)
    }

    /// `pending` issued at [`T0`], signed.
    fn issued(&self, pending: &PendingReceipt) -> SignedReceipt {
        pending.clone().into_receipt(T0, T0 + 600).sign(&self.key)
    }

    fn voucher(&mut self, product: &str) -> (VoucherCode, NewVoucher) {
        let code = VoucherCode::generate(&mut self.rng);
        let row = NewVoucher {
            hash: code.hash(),
            product: product.into(),
            created_at: T0,
        };
        (code, row)
    }
}

fn pay(code: &VoucherCode, product: &str) -> VoucherPayment {
    VoucherPayment {
        hash: code.hash(),
        product: product.into(),
    }
}

async fn open(url: &str) -> Arc<dyn PaymentsStore> {
    open_store(url).await.unwrap()
}

async fn vouchers_are_added_all_or_none(url: String) {
    let url = url.as_str();
    let store = open(url).await;
    let mut m = Maker::new(1);
    let (a, row_a) = m.voucher("single");
    let (b, row_b) = m.voucher("day");
    store.add_vouchers(&[row_a.clone(), row_b]).await.unwrap();
    assert_eq!(
        store.voucher(&a.hash()).await.unwrap(),
        Some(VoucherInfo {
            product: "single".into(),
            used: false,
            voided: false,
        })
    );
    assert_eq!(
        store.voucher(&b.hash()).await.unwrap().unwrap().product,
        "day"
    );
    // A batch with one existing hash stores nothing.
    let (c, row_c) = m.voucher("single");
    let err = store.add_vouchers(&[row_c, row_a]).await.unwrap_err();
    assert!(matches!(err, PaymentsError::DuplicateVoucher), "{err:?}");
    assert_eq!(store.voucher(&c.hash()).await.unwrap(), None);
    store.add_vouchers(&[]).await.unwrap();
}

/// Vouchers are listed (never their codes: only hashes are kept) and an unused one can be
/// voided, after which checkout refuses it; a used one stays used.
async fn vouchers_are_listed_and_voided(url: String) {
    let url = url.as_str();
    let store = open(url).await;
    let mut m = Maker::new(9);
    let (a, row_a) = m.voucher("single");
    let (b, row_b) = m.voucher("day");
    store.add_vouchers(&[row_a, row_b]).await.unwrap();
    let listed = store.vouchers().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|v| v.created_at == T0 && !v.used && v.voided_at.is_none())
    );
    // Used: cannot be voided.
    let d = m.digest();
    let r = m.receipt(KS_A, 1, d, 250);
    store.checkout(&r, Some(&pay(&a, "single"))).await.unwrap();
    assert_eq!(store.void_voucher(&a.hash(), T0 + 5).await.unwrap(), 0);
    // Unused: voided once, then refused as voided.
    assert_eq!(store.void_voucher(&b.hash(), T0 + 5).await.unwrap(), 1);
    assert_eq!(store.void_voucher(&b.hash(), T0 + 6).await.unwrap(), 0);
    let d = m.digest();
    let r = m.receipt(KS_A, 1, d, 700);
    let err = store.checkout(&r, Some(&pay(&b, "day"))).await.unwrap_err();
    assert!(matches!(err, PaymentsError::VoucherVoided), "{err:?}");
    assert_eq!(err.code(), ticketing_protocol::ErrorCode::InvalidVoucher);
    let listed = store.vouchers().await.unwrap();
    let state = |h: ticketing_protocol::Digest32| {
        listed
            .iter()
            .find(|v| v.hash == h)
            .map(|v| (v.used, v.voided_at))
            .unwrap()
    };
    assert_eq!(state(a.hash()), (true, None));
    assert_eq!(state(b.hash()), (true, Some(T0 + 5)));
}

async fn receipts_are_stored_and_totalled_per_keyset(url: String) {
    let url = url.as_str();
    let store = open(url).await;
    let mut m = Maker::new(2);
    assert_eq!(store.totals().await.unwrap(), vec![]);
    let mut stored = Vec::new();
    for (ks, count, amount) in [(KS_B, 3, 750), (KS_A, 1, 250), (KS_B, 2, 500)] {
        let d = m.digest();
        let r = m.receipt(ks, count, d, amount);
        assert_eq!(
            store.checkout(&r, None).await.unwrap(),
            CheckoutOutcome::Issued(r.clone())
        );
        stored.push(r);
    }
    for r in &stored {
        let back = store
            .receipt_by_digest(&r.receipt.digest)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&back, r);
        back.verify(&m.key.verify_key()).unwrap();
    }
    assert_eq!(store.receipt_by_digest(&m.digest()).await.unwrap(), None);
    assert_eq!(
        store.totals().await.unwrap(),
        vec![
            KeysetTotals {
                keyset_id: KS_A,
                receipts: 1,
                tickets: 1,
                amount: 250
            },
            KeysetTotals {
                keyset_id: KS_B,
                receipts: 2,
                tickets: 5,
                amount: 1250
            },
        ]
    );
}

async fn a_repeated_digest_returns_the_stored_receipt(url: String) {
    let url = url.as_str();
    let store = open(url).await;
    let mut m = Maker::new(3);
    let d = m.digest();
    let first = m.receipt(KS_A, 2, d, 500);
    let second = m.receipt(KS_A, 2, d, 500);
    assert_ne!(first, second);
    store.checkout(&first, None).await.unwrap();
    assert_eq!(
        store.checkout(&second, None).await.unwrap(),
        CheckoutOutcome::Existing(first.clone())
    );
    // Even with a voucher attached, a known digest burns nothing.
    let (v, row) = m.voucher("single");
    store.add_vouchers(&[row]).await.unwrap();
    assert_eq!(
        store
            .checkout(&second, Some(&pay(&v, "single")))
            .await
            .unwrap(),
        CheckoutOutcome::Existing(first)
    );
    assert!(!store.voucher(&v.hash()).await.unwrap().unwrap().used);
    assert_eq!(store.totals().await.unwrap()[0].receipts, 1);
}

async fn a_voucher_burns_once_and_only_for_its_product(url: String) {
    let url = url.as_str();
    let store = open(url).await;
    let mut m = Maker::new(4);
    let (v, row) = m.voucher("single");
    store.add_vouchers(&[row]).await.unwrap();

    // Wrong product: refused, nothing stored, voucher intact.
    let d = m.digest();
    let r = m.receipt(KS_A, 1, d, 700);
    let err = store.checkout(&r, Some(&pay(&v, "day"))).await.unwrap_err();
    assert!(
        matches!(&err, PaymentsError::VoucherWrongProduct(p) if p == "single"),
        "{err:?}"
    );
    assert_eq!(store.receipt_by_digest(&d).await.unwrap(), None);

    // Unknown voucher.
    let unknown = VoucherCode::generate(&mut m.rng);
    let err = store
        .checkout(&r, Some(&pay(&unknown, "single")))
        .await
        .unwrap_err();
    assert!(matches!(err, PaymentsError::UnknownVoucher), "{err:?}");
    assert_eq!(store.receipt_by_digest(&d).await.unwrap(), None);

    // The right product: burned.
    let r = m.receipt(KS_A, 1, d, 250);
    assert_eq!(
        store.checkout(&r, Some(&pay(&v, "single"))).await.unwrap(),
        CheckoutOutcome::Issued(r.clone())
    );
    assert!(store.voucher(&v.hash()).await.unwrap().unwrap().used);

    // Again for other points: used, nothing stored.
    let d2 = m.digest();
    let r2 = m.receipt(KS_A, 1, d2, 250);
    let err = store
        .checkout(&r2, Some(&pay(&v, "single")))
        .await
        .unwrap_err();
    assert!(matches!(err, PaymentsError::VoucherUsed), "{err:?}");
    assert_eq!(store.receipt_by_digest(&d2).await.unwrap(), None);

    // A retry of the paid-for points gets the original receipt.
    let retry = m.receipt(KS_A, 1, d, 250);
    assert_eq!(
        store
            .checkout(&retry, Some(&pay(&v, "single")))
            .await
            .unwrap(),
        CheckoutOutcome::Existing(r)
    );
    assert_eq!(store.totals().await.unwrap()[0].receipts, 1);
}

async fn concurrent_checkouts_with_one_voucher_burn_it_once(url: String) {
    let url = url.as_str();
    let store = open(url).await;
    let mut m = Maker::new(5);
    let (v, row) = m.voucher("single");
    store.add_vouchers(&[row]).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let d = m.digest();
        let r = m.receipt(KS_A, 1, d, 250);
        let store = Arc::clone(&store);
        let p = pay(&v, "single");
        tasks.spawn(async move { store.checkout(&r, Some(&p)).await });
    }
    let (mut issued, mut used) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(CheckoutOutcome::Issued(_)) => issued += 1,
            Err(PaymentsError::VoucherUsed) => used += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((issued, used), (1, 19));
    let totals = store.totals().await.unwrap();
    assert_eq!((totals[0].receipts, totals[0].tickets), (1, 1));
}

async fn concurrent_retries_of_one_digest_store_one_receipt(url: String) {
    let url = url.as_str();
    let store = open(url).await;
    let mut m = Maker::new(6);
    let (v, row) = m.voucher("single");
    store.add_vouchers(&[row]).await.unwrap();
    let d = m.digest();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        // Each retry signs a fresh receipt (new id); only one may be stored.
        let r = m.receipt(KS_A, 1, d, 250);
        let store = Arc::clone(&store);
        let p = pay(&v, "single");
        tasks.spawn(async move { store.checkout(&r, Some(&p)).await });
    }
    let mut issued = Vec::new();
    let mut existing = Vec::new();
    while let Some(result) = tasks.join_next().await {
        match result.unwrap().unwrap() {
            CheckoutOutcome::Issued(r) => issued.push(r),
            CheckoutOutcome::Existing(r) => existing.push(r),
            CheckoutOutcome::Pending => panic!("no card payment here"),
        }
    }
    assert_eq!(issued.len(), 1);
    assert_eq!(existing.len(), 9);
    assert!(existing.iter().all(|r| r == &issued[0]));
    assert_eq!(
        store.receipt_by_digest(&d).await.unwrap().as_ref(),
        Some(&issued[0])
    );
    assert_eq!(store.totals().await.unwrap()[0].receipts, 1);
}

async fn extreme_values_round_trip_or_are_refused(url: String) {
    let url = url.as_str();
    let store = open(url).await;
    let mut m = Maker::new(7);
    let d = m.digest();
    let mut r = m.receipt(KS_A, u32::MAX, d, i64::MAX as u64);
    r.receipt.issued_at = 0;
    r.receipt.expires_at = i64::MAX as u64;
    r.receipt.currency = "X".repeat(300);
    let r = r.receipt.sign(&m.key);
    store.checkout(&r, None).await.unwrap();
    assert_eq!(store.receipt_by_digest(&d).await.unwrap(), Some(r));
    // Beyond the database's signed 64-bit range: a typed error, nothing stored.
    let d2 = m.digest();
    let too_big = m.receipt(KS_A, 1, d2, u64::MAX);
    let err = store.checkout(&too_big, None).await.unwrap_err();
    assert!(matches!(err, PaymentsError::Malformed(_)), "{err:?}");
    assert_eq!(store.receipt_by_digest(&d2).await.unwrap(), None);
}

async fn reopening_keeps_the_data(url: String) {
    let url = url.as_str();
    let mut m = Maker::new(8);
    let d = m.digest();
    let r = m.receipt(KS_B, 4, d, 1000);
    let (v, row) = m.voucher("week");
    {
        let store = open(url).await;
        store.add_vouchers(&[row]).await.unwrap();
        store.checkout(&r, None).await.unwrap();
    }
    // Migrations run again as a no-op.
    let store = open(url).await;
    assert_eq!(store.receipt_by_digest(&d).await.unwrap(), Some(r));
    assert_eq!(
        store.voucher(&v.hash()).await.unwrap().unwrap().product,
        "week"
    );
}

async fn a_card_reservation_holds_the_digest_until_issued(url: String) {
    let url = url.as_str();
    let store = open(url).await;
    let mut m = Maker::new(9);
    let d = m.digest();
    let p = m.pending(KS_A, 2, d, 500);
    let lease = m.lease();
    assert_eq!(
        store.reserve(&p, lease, T0).await.unwrap(),
        Reservation::Reserved
    );
    let paying = Stored::Paying {
        pending: p.clone(),
        lease,
        reserved_at: T0,
    };
    assert_eq!(store.stored(&d).await.unwrap(), Some(paying.clone()));
    // Not a receipt yet: no lookup, no totals.
    assert_eq!(store.receipt_by_digest(&d).await.unwrap(), None);
    assert_eq!(store.totals().await.unwrap(), vec![]);

    // A second attempt (other id, other lease) gets the reservation back, unchanged.
    let other = m.pending(KS_A, 2, d, 500);
    let other_lease = m.lease();
    assert_eq!(
        store.reserve(&other, other_lease, T0 + 1).await.unwrap(),
        Reservation::Existing(paying.clone())
    );
    // A voucher checkout of the same points: pending, the voucher untouched.
    let (v, row) = m.voucher("single");
    store.add_vouchers(&[row]).await.unwrap();
    let by_voucher = m.receipt(KS_A, 2, d, 500);
    assert_eq!(
        store
            .checkout(&by_voucher, Some(&pay(&v, "single")))
            .await
            .unwrap(),
        CheckoutOutcome::Pending
    );
    assert!(!store.voucher(&v.hash()).await.unwrap().unwrap().used);
    assert_eq!(store.stored(&d).await.unwrap(), Some(paying));

    // Issued: now it is the receipt, everywhere.
    let r = m.issued(&p);
    assert_eq!(
        store.issue(&r).await.unwrap(),
        CheckoutOutcome::Issued(r.clone())
    );
    assert_eq!(store.receipt_by_digest(&d).await.unwrap(), Some(r.clone()));
    assert_eq!(
        store.reserve(&other, other_lease, T0 + 2).await.unwrap(),
        Reservation::Existing(Stored::Issued(r.clone()))
    );
    // Issuing again (a concurrent taker-over) gets the receipt stored first.
    let late = p.clone().into_receipt(T0 + 5, T0 + 605).sign(&m.key);
    assert_eq!(
        store.issue(&late).await.unwrap(),
        CheckoutOutcome::Existing(r.clone())
    );
    // An issued receipt is no reservation: no release, no take-over.
    assert!(!store.release(&d, lease).await.unwrap());
    assert!(!store.take_over(&d, lease, m.lease(), T0).await.unwrap());
    assert_eq!(
        store.checkout(&by_voucher, None).await.unwrap(),
        CheckoutOutcome::Existing(r)
    );
    assert_eq!(
        store.totals().await.unwrap(),
        vec![KeysetTotals {
            keyset_id: KS_A,
            receipts: 1,
            tickets: 2,
            amount: 500
        }]
    );
}

async fn a_reservation_is_released_or_taken_over_only_under_its_lease(url: String) {
    let url = url.as_str();
    let store = open(url).await;
    let mut m = Maker::new(10);
    let d = m.digest();
    let p = m.pending(KS_B, 1, d, 700);
    let (first, second, stranger) = (m.lease(), m.lease(), m.lease());
    store.reserve(&p, first, T0).await.unwrap();

    assert!(!store.release(&d, stranger).await.unwrap());
    assert!(
        !store
            .take_over(&d, stranger, second, T0 + 99)
            .await
            .unwrap()
    );
    assert!(store.take_over(&d, first, second, T0 + 99).await.unwrap());
    assert_eq!(
        store.stored(&d).await.unwrap(),
        Some(Stored::Paying {
            pending: p.clone(),
            lease: second,
            reserved_at: T0 + 99
        })
    );
    // The first attempt's lease no longer counts.
    assert!(!store.release(&d, first).await.unwrap());
    assert!(
        !store
            .take_over(&d, first, stranger, T0 + 100)
            .await
            .unwrap()
    );
    assert!(
        !store
            .take_over(&m.digest(), second, stranger, T0)
            .await
            .unwrap()
    );

    // Released (declined): the digest is free again, for any terms.
    assert!(store.release(&d, second).await.unwrap());
    assert_eq!(store.stored(&d).await.unwrap(), None);
    assert!(!store.release(&d, second).await.unwrap());
    let again = m.pending(KS_A, 3, d, 750);
    assert_eq!(
        store.reserve(&again, first, T0 + 200).await.unwrap(),
        Reservation::Reserved
    );
}

async fn concurrent_reservations_of_one_digest_reserve_once(url: String) {
    let url = url.as_str();
    let store = open(url).await;
    let mut m = Maker::new(11);
    let d = m.digest();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let p = m.pending(KS_A, 1, d, 250);
        let lease = m.lease();
        let store = Arc::clone(&store);
        tasks.spawn(async move { (p.clone(), lease, store.reserve(&p, lease, T0).await) });
    }
    let mut winners = Vec::new();
    let mut seen = Vec::new();
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            (p, lease, Ok(Reservation::Reserved)) => winners.push((p, lease)),
            (_, _, Ok(Reservation::Existing(stored))) => seen.push(stored),
            (_, _, other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((winners.len(), seen.len()), (1, 19));
    let (p, lease) = winners.pop().unwrap();
    let expected = Stored::Paying {
        pending: p,
        lease,
        reserved_at: T0,
    };
    assert!(seen.iter().all(|s| s == &expected));
    assert_eq!(store.stored(&d).await.unwrap(), Some(expected));
}

async fn concurrent_take_overs_of_one_reservation_succeed_once(url: String) {
    let url = url.as_str();
    let store = open(url).await;
    let mut m = Maker::new(12);
    let d = m.digest();
    let p = m.pending(KS_A, 1, d, 250);
    let held = m.lease();
    store.reserve(&p, held, T0).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let lease = m.lease();
        let store = Arc::clone(&store);
        tasks.spawn(async move { (lease, store.take_over(&d, held, lease, T0 + 61).await) });
    }
    let mut winners = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let (lease, took) = result.unwrap();
        if took.unwrap() {
            winners.push(lease);
        }
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(
        store.stored(&d).await.unwrap(),
        Some(Stored::Paying {
            pending: p,
            lease: winners[0],
            reserved_at: T0 + 61
        })
    );
}

async fn issuing_needs_the_reserved_receipt(url: String) {
    let url = url.as_str();
    let store = open(url).await;
    let mut m = Maker::new(13);
    // Nothing reserved.
    let d = m.digest();
    let p = m.pending(KS_A, 1, d, 250);
    let err = store.issue(&m.issued(&p)).await.unwrap_err();
    assert!(matches!(err, PaymentsError::ReservationLost), "{err:?}");
    assert_eq!(store.stored(&p.digest).await.unwrap(), None);

    // Reserved, but the signed body differs (amount, receipt id): refused, still reserved.
    let lease = m.lease();
    store.reserve(&p, lease, T0).await.unwrap();
    let mut dearer = p.clone();
    dearer.amount = 2500;
    let mut renamed = p.clone();
    renamed.receipt_id = Id16::random(&mut m.rng);
    for wrong in [dearer, renamed] {
        let err = store.issue(&m.issued(&wrong)).await.unwrap_err();
        assert!(matches!(err, PaymentsError::ReservationLost), "{err:?}");
    }
    assert!(matches!(
        store.stored(&p.digest).await.unwrap(),
        Some(Stored::Paying { .. })
    ));
    assert_eq!(store.totals().await.unwrap(), vec![]);
    let r = m.issued(&p);
    assert_eq!(store.issue(&r).await.unwrap(), CheckoutOutcome::Issued(r));
}

async fn renewal_replaces_only_expiry_and_signature(url: String) {
    let url = url.as_str();
    let store = open(url).await;
    let mut m = Maker::new(14);
    let d = m.digest();
    let r = m.receipt(KS_B, 2, d, 1400);
    store.checkout(&r, None).await.unwrap();

    let renew_to = |base: &SignedReceipt, expires_at: u64, key: &SignKey| {
        let mut body = base.receipt.clone();
        body.expires_at = expires_at;
        body.sign(key)
    };
    let renewed = renew_to(&r, T0 + 5000, &m.key);
    assert_eq!(
        store.renew(&renewed, r.receipt.expires_at).await.unwrap(),
        renewed
    );
    assert_eq!(
        store.receipt_by_digest(&d).await.unwrap(),
        Some(renewed.clone())
    );
    renewed.verify(&m.key.verify_key()).unwrap();

    // A renewal from the old expiry lost the race: it gets the stored one, changes nothing.
    let late = renew_to(&r, T0 + 6000, &m.key);
    assert_eq!(
        store.renew(&late, r.receipt.expires_at).await.unwrap(),
        renewed
    );
    // A renewal that changes anything but the expiry is refused, nothing changes.
    let mut cheaper = renewed.receipt.clone();
    cheaper.amount = 1;
    cheaper.expires_at = T0 + 7000;
    let err = store
        .renew(&cheaper.sign(&m.key), renewed.receipt.expires_at)
        .await
        .unwrap_err();
    assert!(matches!(err, PaymentsError::NoReceipt), "{err:?}");
    // Nothing to renew for unknown points or a reservation.
    let d_unknown = m.digest();
    let unknown = m.receipt(KS_B, 1, d_unknown, 700);
    let err = store
        .renew(&unknown, unknown.receipt.expires_at)
        .await
        .unwrap_err();
    assert!(matches!(err, PaymentsError::NoReceipt), "{err:?}");
    let d_paying = m.digest();
    let p = m.pending(KS_B, 1, d_paying, 700);
    store.reserve(&p, m.lease(), T0).await.unwrap();
    let err = store.renew(&m.issued(&p), T0 + 600).await.unwrap_err();
    assert!(matches!(err, PaymentsError::NoReceipt), "{err:?}");
    assert_eq!(store.receipt_by_digest(&d).await.unwrap(), Some(renewed));
    assert_eq!(store.totals().await.unwrap()[0].receipts, 1);
}

async fn concurrent_renewals_store_one_receipt(url: String) {
    let url = url.as_str();
    let store = open(url).await;
    let mut m = Maker::new(15);
    let d = m.digest();
    let r = m.receipt(KS_A, 1, d, 250);
    store.checkout(&r, None).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10 {
        let mut body = r.receipt.clone();
        body.expires_at = T0 + 10_000 + i;
        let renewed = body.sign(&m.key);
        let (store, previous) = (Arc::clone(&store), r.receipt.expires_at);
        tasks.spawn(async move { store.renew(&renewed, previous).await });
    }
    let mut answers = Vec::new();
    while let Some(result) = tasks.join_next().await {
        answers.push(result.unwrap().unwrap());
    }
    let stored = store.receipt_by_digest(&d).await.unwrap().unwrap();
    assert_ne!(stored, r);
    assert!(answers.iter().all(|a| a == &stored));
}

#[tokio::test]
async fn unsupported_urls_are_refused() {
    let err = open_store("mysql://localhost/x").await.unwrap_err();
    assert!(matches!(err, PaymentsError::UnsupportedDatabase), "{err:?}");
}
