//! Wire types: JSON round trips, the stable error code names, signed objects that fail when
//! tampered with, and decoders that never panic.

// Test code: a panic is how a test fails, and fixtures index known-size data.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use ticketing_crypto::issuance::{self, BlindedPoint};
use ticketing_crypto::keyset::{self, KeysetId, KeysetParams, ShareIndex};
use ticketing_crypto::ticket::HolderSecret;
use ticketing_protocol::issue::{IssueRequest, IssueResponse};
use ticketing_protocol::keys::SignKey;
use ticketing_protocol::manifest::*;
use ticketing_protocol::publication::BloomSnapshot;
use ticketing_protocol::receipt::*;
use ticketing_protocol::redeem::*;
use ticketing_protocol::{Digest32, ErrorBody, ErrorCode, Id16, ProtocolError};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) -> String {
    let json = serde_json::to_string(v).unwrap();
    let back: T = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, v, "{json}");
    json
}

struct Fixture {
    rng: ChaCha20Rng,
    manifest: Manifest,
    blinded: Vec<BlindedPoint>,
    payments: SignKey,
    node_key: SignKey,
    keyset: keyset::DealtKeyset,
}

fn fixture() -> Fixture {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let keyset = keyset::deal(2, 3, &mut rng).unwrap();
    let params = KeysetParams {
        product: "single".into(),
        valid_from: 100,
        valid_until: 200,
    };
    let pk = keyset.public_key().unwrap();
    let id = KeysetId::derive(&pk, &params);
    let payments = SignKey::generate(&mut rng);
    let node_key = SignKey::generate(&mut rng);
    let coordinator = SignKey::generate(&mut rng);
    let manifest = Manifest {
        version: 1,
        nodes_total: 3,
        threshold: 2,
        rotation_seconds: 30,
        clock_skew_seconds: 60,
        nodes: (1..=3)
            .map(|i| NodeInfo {
                index: ShareIndex::new(i).unwrap(),
                url: format!("http://127.0.0.1:80{i:02}"),
                identity_key: node_key.verify_key(),
            })
            .collect(),
        keysets: vec![KeysetInfo {
            id,
            params,
            public_key: pk,
            public_key_shares: keyset
                .shares
                .iter()
                .map(|s| PublicKeyShareInfo {
                    index: s.index(),
                    public_key: s.public_key(),
                })
                .collect(),
            commitments: keyset
                .commitments
                .to_bytes()
                .iter()
                .map(|c| ticketing_crypto::keyset::PublicKey::from_bytes(c).unwrap())
                .collect(),
        }],
        products: vec![
            Product {
                name: "single".into(),
                kind: ProductKind::Single {
                    transfer_minutes: 90,
                },
                price: 250,
                currency: "EUR".into(),
                min_remaining_minutes: 0,
            },
            Product {
                name: "day".into(),
                kind: ProductKind::Pass,
                price: 700,
                currency: "EUR".into(),
                min_remaining_minutes: 0,
            },
        ],
        coordinator: ServiceInfo {
            url: "http://127.0.0.1:8100".into(),
            key: coordinator.verify_key(),
        },
        payments: ServiceInfo {
            url: "http://127.0.0.1:8200".into(),
            key: payments.verify_key(),
        },
    };
    let blinded = (0..3)
        .map(|_| {
            let h = HolderSecret::generate(&mut rng).public_key();
            issuance::blind(&id, &h, &mut rng).0
        })
        .collect();
    Fixture {
        rng,
        manifest,
        blinded,
        payments,
        node_key,
        keyset,
    }
}

#[test]
fn manifest_round_trips_and_its_digest_is_stable() {
    let f = fixture();
    let json = round_trip(&f.manifest);
    let back: Manifest = serde_json::from_str(&json).unwrap();
    assert_eq!(back.digest(), f.manifest.digest());
    assert!(back.keysets[0].check_id());
    back.keysets[0].check_commitments(2).unwrap();
    assert!(back.keysets[0].check_commitments(3).is_err());
    let mut changed = f.manifest.clone();
    changed.nodes[0].url = "http://evil.example".into();
    assert_ne!(changed.digest(), f.manifest.digest());
    // A keyset whose id does not match its key is detectable.
    let mut relabeled = f.manifest.keysets[0].clone();
    relabeled.params.valid_until += 1;
    assert!(!relabeled.check_id());
}

#[test]
fn receipts_verify_and_tampering_is_caught() {
    let mut f = fixture();
    let receipt = Receipt {
        receipt_id: Id16::random(&mut f.rng),
        keyset_id: f.manifest.keysets[0].id,
        count: 3,
        digest: blinded_digest(&f.blinded),
        amount: 750,
        currency: "EUR".into(),
        issued_at: 150,
        expires_at: 450,
    }
    .sign(&f.payments);
    round_trip(&receipt);
    receipt.verify(&f.manifest.payments.key).unwrap();
    let mut more = receipt.clone();
    more.receipt.count = 4;
    assert_eq!(
        more.verify(&f.manifest.payments.key),
        Err(ProtocolError::InvalidSignature("receipt"))
    );
    // Signed by someone else.
    assert!(receipt.verify(&f.manifest.coordinator.key).is_err());
    // The digest depends on the points and their order.
    let mut swapped = f.blinded.clone();
    swapped.swap(0, 1);
    assert_ne!(blinded_digest(&swapped), receipt.receipt.digest);

    let req = IssueRequest {
        receipt,
        blinded: f.blinded.clone(),
    };
    round_trip(&req);
    let checkout = CheckoutRequest {
        product: "single".into(),
        keyset_id: f.manifest.keysets[0].id,
        count: 3,
        digest: blinded_digest(&f.blinded),
        payment: PaymentMethod::Voucher {
            code: "ABCD-EFGH-JKMN-PQR5".into(),
        },
    };
    let json = round_trip(&checkout);
    assert!(json.contains(r#""method":"voucher""#), "{json}");
}

#[test]
fn issue_responses_are_signed_evidence() {
    let mut f = fixture();
    let share = &f.keyset.shares[1];
    let partials: Vec<_> = f
        .blinded
        .iter()
        .map(|b| issuance::partial_sign(share, b))
        .collect();
    let id = Id16::random(&mut f.rng);
    let resp = IssueResponse::sign(
        &f.node_key,
        share.index(),
        id,
        f.manifest.keysets[0].id,
        blinded_digest(&f.blinded),
        &partials,
    );
    round_trip(&resp);
    resp.verify(&f.manifest.nodes[1].identity_key).unwrap();
    assert_eq!(resp.partial_signatures().unwrap(), partials);
    let mut forged = resp.clone();
    forged.partials.swap(0, 1);
    assert!(forged.verify(&f.manifest.nodes[1].identity_key).is_err());
}

#[test]
fn redeem_sync_and_snapshot_round_trip() {
    let mut f = fixture();
    let scan = Scan {
        scan_id: Id16::random(&mut f.rng),
        payload: "NCFOXN".into(),
        scanned_at: 1000,
    };
    round_trip(&RedeemBatch {
        scans: vec![scan.clone()],
    });
    let ok = RedeemResponse {
        scan_id: scan.scan_id,
        verdict: Verdict::Accepted { valid_until: 2000 },
    };
    let json = round_trip(&ok);
    assert!(json.contains(r#""verdict":"accepted""#), "{json}");
    let no = RedeemResponse {
        scan_id: scan.scan_id,
        verdict: Verdict::Rejected {
            code: ErrorCode::StaleEpoch,
        },
    };
    let json = round_trip(&no);
    assert!(json.contains(r#""code":"stale_epoch""#), "{json}");
    round_trip(&SyncRequest {
        scans: vec![scan.clone()],
    });
    round_trip(&SyncResponse {
        results: vec![
            SyncResult {
                scan_id: scan.scan_id,
                status: SyncStatus::Recorded,
            },
            SyncResult {
                scan_id: scan.scan_id,
                status: SyncStatus::AlreadySynced,
            },
            SyncResult {
                scan_id: scan.scan_id,
                status: SyncStatus::Conflict {
                    code: ErrorCode::Spent,
                    first_scanned_at: 900,
                },
            },
            SyncResult {
                scan_id: scan.scan_id,
                status: SyncStatus::SuspectedSharing,
            },
            SyncResult {
                scan_id: scan.scan_id,
                status: SyncStatus::Rejected {
                    code: ErrorCode::InvalidSignature,
                },
            },
        ],
    });

    let key = SignKey::generate(&mut f.rng);
    let snap = BloomSnapshot {
        version: 7,
        built_at: 1000,
        keysets: vec![f.manifest.keysets[0].id],
        filter: "AAEC".into(),
        deny: vec![ticketing_crypto::ticket::Serial([9; 32])],
        signature: ticketing_protocol::keys::Sig([0; 64]),
    }
    .sign(&key);
    round_trip(&snap);
    snap.verify(&key.verify_key()).unwrap();
    let mut older = snap.clone();
    older.deny.clear();
    assert!(older.verify(&key.verify_key()).is_err());
}

/// The wire names are the contract with apps; they must not drift.
#[test]
fn error_codes_have_stable_names() {
    let codes = [
        (ErrorCode::Malformed, "malformed"),
        (ErrorCode::PayloadTooLarge, "payload_too_large"),
        (ErrorCode::Unauthorized, "unauthorized"),
        (ErrorCode::NotFound, "not_found"),
        (ErrorCode::UnknownKeyset, "unknown_keyset"),
        (ErrorCode::KeysetNotActive, "keyset_not_active"),
        (ErrorCode::InvalidReceipt, "invalid_receipt"),
        (ErrorCode::ReceiptExpired, "receipt_expired"),
        (ErrorCode::ReceiptReused, "receipt_reused"),
        (ErrorCode::DigestMismatch, "digest_mismatch"),
        (ErrorCode::CardDeclined, "card_declined"),
        (ErrorCode::InvalidVoucher, "invalid_voucher"),
        (ErrorCode::VoucherUsed, "voucher_used"),
        (ErrorCode::Spent, "spent"),
        (ErrorCode::InvalidSignature, "invalid_signature"),
        (ErrorCode::Expired, "expired"),
        (ErrorCode::NotYetValid, "not_yet_valid"),
        (ErrorCode::StaleEpoch, "stale_epoch"),
        (ErrorCode::ReplayedEpoch, "replayed_epoch"),
        (ErrorCode::NotPrintable, "not_printable"),
        (ErrorCode::Revoked, "revoked"),
        (ErrorCode::Internal, "internal"),
        (ErrorCode::Unavailable, "unavailable"),
        (ErrorCode::ManifestMismatch, "manifest_mismatch"),
        (ErrorCode::ScanIdReused, "scan_id_reused"),
        (ErrorCode::FutureTimestamp, "future_timestamp"),
        (ErrorCode::DuplicatePoint, "duplicate_point"),
        (ErrorCode::NameTaken, "name_taken"),
        (ErrorCode::RateLimited, "rate_limited"),
    ];
    for (code, name) in codes {
        assert_eq!(code.as_str(), name);
        assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{name}\""));
        let body = ErrorBody::new(code, "x");
        assert_eq!(
            round_trip(&body),
            format!(r#"{{"code":"{name}","detail":"x"}}"#)
        );
    }
}

#[test]
fn an_invalid_point_in_a_body_is_refused_at_parse_time() {
    let f = fixture();
    let mut v = serde_json::to_value(IssueRequest {
        receipt: Receipt {
            receipt_id: Id16([1; 16]),
            keyset_id: f.manifest.keysets[0].id,
            count: 1,
            digest: Digest32([0; 32]),
            amount: 1,
            currency: "EUR".into(),
            issued_at: 0,
            expires_at: 1,
        }
        .sign(&f.payments),
        blinded: vec![f.blinded[0]],
    })
    .unwrap();
    let mut identity = String::from("c0");
    identity.push_str(&"00".repeat(47));
    v["blinded"][0] = serde_json::Value::String(identity);
    let err = serde_json::from_value::<IssueRequest>(v)
        .unwrap_err()
        .to_string();
    assert!(err.contains("identity"), "{err}");
}

proptest! {
    #[test]
    fn json_decoders_never_panic(s in ".{0,400}") {
        let _ = serde_json::from_str::<Manifest>(&s);
        let _ = serde_json::from_str::<SignedReceipt>(&s);
        let _ = serde_json::from_str::<IssueRequest>(&s);
        let _ = serde_json::from_str::<IssueResponse>(&s);
        let _ = serde_json::from_str::<RedeemBatch>(&s);
        let _ = serde_json::from_str::<SyncRequest>(&s);
        let _ = serde_json::from_str::<BloomSnapshot>(&s);
        let _ = serde_json::from_str::<ErrorBody>(&s);
        let _ = Id16::from_hex(&s);
    }

    #[test]
    fn hex_fields_with_random_content_are_refused_or_accepted_without_panic(b in proptest::collection::vec(any::<u8>(), 0..120)) {
        let h = hex::encode(&b);
        let _ = serde_json::from_str::<IssueRequest>(&format!(r#"{{"receipt":{{}},"blinded":["{h}"]}}"#));
        let _ = serde_json::from_str::<ticketing_protocol::keys::VerifyKey>(&format!("\"{h}\""));
        let _ = serde_json::from_str::<KeysetInfo>(&format!(r#"{{"id":"{h}","product":"x","valid_from":0,"valid_until":1,"public_key":"{h}","public_key_shares":[]}}"#));
    }
}
