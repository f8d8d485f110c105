//! The rules of `check::audit` on hand-made logs: the cases a real cluster cannot produce on
//! its own (a payments service that signs two versions of a receipt, a node answering for the
//! wrong manifest, a totals signature from the wrong key...). The tampering of real databases
//! is in tests/tests/audit.rs.

// Test code: a panic is how a test fails, and fixtures index known-size data.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use std::collections::HashMap;

use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use ticketing_audit::check::{Inputs, NodeLog, audit};
use ticketing_audit::{AuditState, Report, ViolationCode};
use ticketing_config::cluster::{Cluster, SetupSpec, generate};
use ticketing_config::products::ProductsFile;
use ticketing_protocol::audit::{KeysetTotals, ReceiptTotals};
use ticketing_protocol::keys::SignKey;
use ticketing_protocol::log::{Checkpoint, GENESIS, LogEntry, NodeKeyset, NodeStatus};
use ticketing_protocol::receipt::{Receipt, SignedReceipt};
use ticketing_protocol::{Digest32, Id16};

const NOW: u64 = 1_800_000_000;

fn cluster() -> Cluster {
    let spec = SetupSpec {
        node_urls: (1..=3).map(|i| format!("http://node{i}.test")).collect(),
        threshold: 2,
        payments_url: "http://payments.test".into(),
        coordinator_url: "http://coordinator.test".into(),
        products: ProductsFile::builtin(),
        horizon_days: 1,
        rotation_seconds: 30,
        clock_skew_seconds: 60,
        now: NOW,
    };
    generate(&spec, &mut ChaCha20Rng::seed_from_u64(7), &mut |_, _| {}).unwrap()
}

/// A world: the cluster, what each node logged, the totals payments signed.
struct World {
    cluster: Cluster,
    logs: Vec<Vec<LogEntry>>,
    redeemed: HashMap<ticketing_crypto::keyset::KeysetId, u64>,
    extra: Vec<ticketing_protocol::issue::Blame>,
}

impl World {
    fn new() -> Self {
        Self {
            cluster: cluster(),
            logs: vec![Vec::new(); 3],
            redeemed: HashMap::new(),
            extra: Vec::new(),
        }
    }

    fn receipt(&self, count: u32, amount: u64) -> SignedReceipt {
        let keyset = &self.cluster.manifest.keysets[0];
        let mut digest = [0u8; 32];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut digest);
        Receipt {
            receipt_id: Id16::random(&mut rand::rng()),
            keyset_id: keyset.id,
            count,
            digest: Digest32(digest),
            amount,
            currency: "EUR".into(),
            issued_at: NOW,
            expires_at: NOW + 600,
        }
        .sign(&self.cluster.payments.sign_key().unwrap())
    }

    /// Append `receipt` to the logs of `nodes` (1-based), correctly chained.
    fn log(&mut self, receipt: &SignedReceipt, nodes: &[usize]) {
        for &n in nodes {
            let log = &mut self.logs[n - 1];
            let prev = log.last().map_or(GENESIS, |e| e.hash);
            let seq = log.len() as u64 + 1;
            log.push(LogEntry::new(seq, NOW + seq, receipt.clone(), prev));
        }
    }

    fn node_log(&self, n: usize) -> NodeLog {
        let bundle = &self.cluster.nodes[n - 1];
        let key = bundle.identity().unwrap();
        let entries = self.logs[n - 1].clone();
        let (seq, head) = entries.last().map_or((0, GENESIS), |e| (e.seq, e.hash));
        let index = self.cluster.manifest.nodes[n - 1].index;
        NodeLog {
            status: NodeStatus {
                index,
                identity_key: key.verify_key(),
                manifest_digest: self.cluster.manifest.digest(),
                keysets: Vec::<NodeKeyset>::new(),
            },
            entries,
            head: Checkpoint::unsigned(index, seq, head, NOW + 100).sign(&key),
            stored: Vec::new(),
        }
    }

    /// Totals equal to what all the receipts in the logs add up to.
    fn fair_totals(&self) -> ReceiptTotals {
        let mut seen = HashMap::new();
        for e in self.logs.iter().flatten() {
            seen.insert(e.receipt.receipt.receipt_id, e.receipt.receipt.clone());
        }
        let keyset_id = self.cluster.manifest.keysets[0].id;
        let totals = KeysetTotals {
            keyset_id,
            receipts: seen.len() as u64,
            tickets: seen.values().map(|r| u64::from(r.count)).sum(),
            amount: seen.values().map(|r| r.amount).sum(),
        };
        ReceiptTotals::sign(
            NOW,
            vec![totals],
            &self.cluster.payments.sign_key().unwrap(),
        )
    }

    fn inputs(&self) -> Inputs {
        Inputs {
            nodes: (1..=3).map(|n| Ok(self.node_log(n))).collect(),
            redeemed: Ok(self.redeemed.clone()),
            totals: Ok(self.fair_totals()),
            evidence: self.extra.clone(),
        }
    }

    fn run(&self, inputs: &Inputs) -> Report {
        audit(
            &self.cluster.manifest,
            inputs,
            &AuditState::default(),
            NOW + 200,
        )
        .0
    }
}

fn has(report: &Report, code: ViolationCode, node: Option<u16>) -> bool {
    report
        .violations
        .iter()
        .any(|v| v.code == code && v.node == node)
}

fn sales() -> World {
    let mut w = World::new();
    let a = w.receipt(2, 500);
    let b = w.receipt(1, 250);
    w.log(&a, &[1, 2, 3]);
    w.log(&b, &[1, 2]);
    w
}

#[test]
fn agreeing_logs_are_clean_and_add_up() {
    let w = sales();
    let report = w.run(&w.inputs());
    assert!(report.clean, "{}", report.render());
    let k = &report.keysets[0];
    assert_eq!(
        (k.issued_receipts, k.issued_tickets, k.issued_amount),
        (2, 3, 750)
    );
    assert_eq!(k.partial_receipts, 0);
}

#[test]
fn a_receipt_below_the_threshold_is_not_issued() {
    let mut w = sales();
    let c = w.receipt(4, 1000);
    w.log(&c, &[3]);
    let report = w.run(&w.inputs());
    assert!(report.clean, "{}", report.render());
    assert_eq!(report.keysets[0].issued_tickets, 3);
    assert_eq!(report.keysets[0].partial_receipts, 1);
}

#[test]
fn two_versions_of_one_receipt_are_a_disagreement() {
    let mut w = sales();
    // Payments signs a second receipt with the same id for other points; node 3 logs it.
    let first = w.logs[0][0].receipt.clone();
    let mut other = first.receipt.clone();
    other.digest = Digest32([9; 32]);
    let other = other.sign(&w.cluster.payments.sign_key().unwrap());
    w.logs[2].clear();
    w.log(&other, &[3]);
    let report = w.run(&w.inputs());
    assert!(has(&report, ViolationCode::DigestDisagreement, Some(3)));
}

#[test]
fn the_majority_version_counts_and_the_odd_node_is_named() {
    let mut w = sales();
    // Node 1 (read first) logged another version of the first sale than nodes 2 and 3.
    let first = w.logs[1][0].receipt.clone();
    let mut other = first.receipt.clone();
    other.digest = Digest32([9; 32]);
    let other = other.sign(&w.cluster.payments.sign_key().unwrap());
    let second = w.logs[0][1].receipt.clone();
    w.logs[0].clear();
    w.log(&other, &[1]);
    w.log(&second, &[1]);
    let (report, state) = audit(
        &w.cluster.manifest,
        &w.inputs(),
        &AuditState::default(),
        NOW,
    );
    assert!(has(&report, ViolationCode::DigestDisagreement, Some(1)));
    assert!(!has(&report, ViolationCode::DigestDisagreement, Some(2)));
    assert!(!has(&report, ViolationCode::DigestDisagreement, Some(3)));
    assert_eq!(report.keysets[0].issued_tickets, 3, "{}", report.render());
    assert_eq!(state.nodes.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
}

#[test]
fn a_renewed_receipt_is_the_same_sale() {
    let mut w = sales();
    // Node 3 logged the second sale after payments renewed it (new expiry and signature).
    let mut renewed = w.logs[0][1].receipt.receipt.clone();
    renewed.expires_at += 600;
    let renewed = renewed.sign(&w.cluster.payments.sign_key().unwrap());
    w.log(&renewed, &[3]);
    let report = w.run(&w.inputs());
    assert!(report.clean, "{}", report.render());
    assert_eq!(report.keysets[0].issued_tickets, 3);
}

#[test]
fn duplicate_expired_and_unknown_keyset_entries_are_named() {
    let mut w = sales();
    let again = w.logs[0][0].receipt.clone();
    w.log(&again, &[1]);
    let mut late = w.receipt(1, 250);
    late.receipt.expires_at = NOW;
    let late = late.receipt.sign(&w.cluster.payments.sign_key().unwrap());
    w.log(&late, &[2]);
    let mut stray = w.receipt(1, 250).receipt;
    stray.keyset_id = ticketing_crypto::keyset::KeysetId([0xee; 8]);
    let stray = stray.sign(&w.cluster.payments.sign_key().unwrap());
    w.log(&stray, &[3]);
    let mut inputs = w.inputs();
    inputs.totals = Ok(w.fair_totals());
    let report = w.run(&inputs);
    assert!(has(&report, ViolationCode::DuplicateReceipt, Some(1)));
    assert!(has(&report, ViolationCode::ExpiredReceipt, Some(2)));
    assert!(has(&report, ViolationCode::UnknownKeyset, Some(3)));
}

#[test]
fn checkpoints_must_be_signed_by_the_node_and_match_its_log() {
    let w = sales();
    let mut inputs = w.inputs();
    let stranger = SignKey::generate(&mut rand::rng());
    let Ok(log) = &mut inputs.nodes[0] else {
        unreachable!()
    };
    log.head = log.head.clone().sign(&stranger);
    let Ok(log) = &mut inputs.nodes[1] else {
        unreachable!()
    };
    let key = w.cluster.nodes[1].identity().unwrap();
    log.stored
        .push(Checkpoint::unsigned(log.head.node, 1, Digest32([1; 32]), NOW).sign(&key));
    let report = w.run(&inputs);
    assert!(has(&report, ViolationCode::BadCheckpointSignature, Some(1)));
    assert!(has(&report, ViolationCode::CheckpointMismatch, Some(2)));
}

#[test]
fn a_node_serving_another_manifest_is_named() {
    let w = sales();
    let mut inputs = w.inputs();
    if let Ok(log) = &mut inputs.nodes[2] {
        log.status.manifest_digest = Digest32([3; 32]);
    }
    let report = w.run(&inputs);
    assert!(has(&report, ViolationCode::ManifestMismatch, Some(3)));
}

#[test]
fn totals_below_the_logs_or_badly_signed_are_violations() {
    let w = sales();
    let keyset_id = w.cluster.manifest.keysets[0].id;
    let mut inputs = w.inputs();
    // Payments claims one receipt fewer than the nodes logged.
    let short = KeysetTotals {
        keyset_id,
        receipts: 1,
        tickets: 2,
        amount: 500,
    };
    inputs.totals = Ok(ReceiptTotals::sign(
        NOW,
        vec![short],
        &w.cluster.payments.sign_key().unwrap(),
    ));
    let report = w.run(&inputs);
    let mismatches = report
        .violations
        .iter()
        .filter(|v| v.code == ViolationCode::TotalsMismatch)
        .count();
    assert_eq!(mismatches, 3, "{}", report.render());

    // More paid than logged (a purchase still going on) is fine.
    let mut generous = inputs.clone();
    generous.totals = Ok(ReceiptTotals::sign(
        NOW,
        vec![KeysetTotals {
            keyset_id,
            receipts: 9,
            tickets: 9,
            amount: 9999,
        }],
        &w.cluster.payments.sign_key().unwrap(),
    ));
    assert!(w.run(&generous).clean);

    // Signed by someone else.
    inputs.totals = Ok(ReceiptTotals::sign(
        NOW,
        Vec::new(),
        &SignKey::generate(&mut rand::rng()),
    ));
    assert!(has(
        &w.run(&inputs),
        ViolationCode::PaymentsUnavailable,
        None
    ));
}

#[test]
fn unreadable_sources_are_violations_not_silence() {
    let w = sales();
    let mut inputs = w.inputs();
    inputs.nodes[1] = Err("connection refused".into());
    inputs.redeemed = Err("no token".into());
    inputs.totals = Err("timeout".into());
    let (report, state) = audit(
        &w.cluster.manifest,
        &inputs,
        &AuditState::default(),
        NOW + 200,
    );
    assert!(has(&report, ViolationCode::NodeUnreachable, Some(2)));
    assert!(has(&report, ViolationCode::CoordinatorUnavailable, None));
    assert!(has(&report, ViolationCode::PaymentsUnavailable, None));
    // Nodes 1 and 3 were read and clean: their checkpoints are recorded; node 2's is not.
    assert_eq!(state.nodes.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
}

#[test]
fn redeeming_more_than_issued_is_named_per_keyset() {
    let mut w = sales();
    let keyset_id = w.cluster.manifest.keysets[0].id;
    w.redeemed.insert(keyset_id, 3);
    assert!(w.run(&w.inputs()).clean);
    w.redeemed.insert(keyset_id, 4);
    let report = w.run(&w.inputs());
    let v = report
        .violations
        .iter()
        .find(|v| v.code == ViolationCode::OverRedeemed)
        .unwrap();
    assert_eq!(v.keyset_id, Some(keyset_id));
}

#[test]
fn a_state_file_not_signed_by_the_nodes_is_refused() {
    let w = sales();
    let mut state = AuditState::default();
    let index = w.cluster.manifest.nodes[0].index;
    let forged = Checkpoint::unsigned(index, 1, Digest32([5; 32]), NOW)
        .sign(&SignKey::generate(&mut rand::rng()));
    state.nodes.insert(1, forged);
    assert!(state.verify(&w.cluster.manifest).is_err());
    // Signed by the node, it is accepted, and a log that does not extend it is named.
    let key = w.cluster.nodes[0].identity().unwrap();
    let genuine = Checkpoint::unsigned(index, 1, Digest32([5; 32]), NOW).sign(&key);
    state.nodes.insert(1, genuine);
    state.verify(&w.cluster.manifest).unwrap();
    let (report, _) = audit(&w.cluster.manifest, &w.inputs(), &state, NOW + 200);
    assert!(has(&report, ViolationCode::RewrittenHistory, Some(1)));
}

/// An outage is not fraud: with node logs missing, a redemption counts against what the
/// missing nodes could have logged; with t or more missing nothing is concluded; a count
/// beyond even that bound is still named.
#[test]
fn missing_logs_do_not_make_redemptions_look_over_issued() {
    let mut w = sales();
    let keyset_id = w.cluster.manifest.keysets[0].id;
    // a (2 tickets) is in logs 1-3, b (1 ticket) in logs 1-2: 3 issued at t = 2.
    w.redeemed.insert(keyset_id, 3);
    let over_keyset = |report: &Report| {
        report
            .violations
            .iter()
            .any(|v| v.code == ViolationCode::OverRedeemed && v.keyset_id == Some(keyset_id))
    };

    // Node 2 down: b is seen in one log only, below t, but node 2 may hold it.
    let mut one_down = w.inputs();
    one_down.nodes[1] = Err("connection refused".into());
    let report = w.run(&one_down);
    assert!(has(&report, ViolationCode::NodeUnreachable, Some(2)));
    assert!(!over_keyset(&report), "{}", report.render());

    // Nodes 1 and 2 down (t of 3): nothing about issuance can be concluded.
    let mut two_down = w.inputs();
    two_down.nodes[0] = Err("connection refused".into());
    two_down.nodes[1] = Err("connection refused".into());
    two_down.redeemed = Ok(HashMap::from([(keyset_id, 1000)]));
    let report = w.run(&two_down);
    assert!(!over_keyset(&report), "{}", report.render());

    // One node down and more redeemed than every receipt seen: still over-redeemed.
    one_down.redeemed = Ok(HashMap::from([(keyset_id, 4)]));
    let report = w.run(&one_down);
    assert!(over_keyset(&report), "{}", report.render());
}
