//! The checks, as a pure function of what was read: no I/O here, so every rule is tested on
//! hand-made logs as well as on real services.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ticketing_crypto::keyset::KeysetId;
use ticketing_protocol::audit::ReceiptTotals;
use ticketing_protocol::issue::Blame;
use ticketing_protocol::log::{Checkpoint, GENESIS, LogEntry, NodeStatus};
use ticketing_protocol::manifest::{Manifest, NodeInfo};
use ticketing_protocol::receipt::Receipt;
use ticketing_protocol::{Digest32, Id16};

use crate::report::{
    EvidenceFinding, KeysetSummary, NodeSummary, Paid, Report, Violation, ViolationCode,
};
use crate::state::AuditState;

/// Everything read from one node.
#[derive(Debug, Clone)]
pub struct NodeLog {
    /// `GET /v1/info`.
    pub status: NodeStatus,
    /// Every entry, as served (`GET /v1/log`, all pages).
    pub entries: Vec<LogEntry>,
    /// The fresh checkpoint served with the last page.
    pub head: Checkpoint,
    /// `GET /v1/log/checkpoints`.
    pub stored: Vec<Checkpoint>,
}

/// What the audit read; `Err` holds why a source could not be read.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Per manifest node, in manifest order.
    pub nodes: Vec<Result<NodeLog, String>>,
    /// Distinct tickets redeemed per keyset, from the coordinator.
    pub redeemed: Result<HashMap<KeysetId, u64>, String>,
    /// The payments service's signed totals.
    pub totals: Result<ReceiptTotals, String>,
    /// Blame evidence handed to the auditor.
    pub evidence: Vec<Blame>,
}

/// One version of a receipt id, as some nodes logged it.
#[derive(Debug)]
struct Version {
    receipt: Receipt,
    /// Node -> the seq it logged this version at.
    nodes: BTreeMap<u16, u64>,
}

/// Run every check. Returns the report and the state to record: the head checkpoint of every
/// node found clean, the previous one for the others (a rewritten history stays reported).
pub fn audit(
    manifest: &Manifest,
    inputs: &Inputs,
    previous: &AuditState,
    now: u64,
) -> (Report, AuditState) {
    let mut violations = Vec::new();
    let mut next = previous.clone();
    let mut nodes = Vec::new();
    // receipt id -> the versions nodes logged (a renewal is the same version: `same_sale`)
    let mut versions: BTreeMap<Id16, Vec<Version>> = BTreeMap::new();

    for (info, read) in manifest.nodes.iter().zip(&inputs.nodes) {
        let index = info.index.get();
        let prev = previous.nodes.get(&index);
        let summary = match read {
            Err(why) => {
                violations.push(
                    Violation::new(
                        ViolationCode::NodeUnreachable,
                        format!("its log could not be read: {why}"),
                    )
                    .node(index),
                );
                NodeSummary {
                    index,
                    url: info.url.clone(),
                    reachable: false,
                    entries: 0,
                    head_seq: 0,
                    checkpoints: 0,
                    previous_seq: prev.map(|c| c.seq),
                    violations: 0,
                }
            }
            Ok(log) => {
                let valid = check_node(manifest, info, log, prev, &mut violations);
                for entry in valid {
                    let r = &entry.receipt.receipt;
                    let all = versions.entry(r.receipt_id).or_default();
                    match all.iter_mut().find(|v| v.receipt.same_sale(r)) {
                        Some(v) => {
                            v.nodes.insert(index, entry.seq);
                        }
                        None => all.push(Version {
                            receipt: r.clone(),
                            nodes: BTreeMap::from([(index, entry.seq)]),
                        }),
                    }
                }
                NodeSummary {
                    index,
                    url: info.url.clone(),
                    reachable: true,
                    entries: log.entries.len() as u64,
                    head_seq: log.head.seq,
                    checkpoints: log.stored.len() as u64,
                    previous_seq: prev.map(|c| c.seq),
                    violations: 0,
                }
            }
        };
        nodes.push(summary);
    }

    let receipts = agree(&versions, &mut violations);
    let keysets = check_keysets(manifest, inputs, &receipts, &mut violations);
    let evidence = check_evidence(manifest, &inputs.evidence, &mut violations);

    // A node's checkpoint is recorded only when nothing at all names it.
    for (info, read) in manifest.nodes.iter().zip(&inputs.nodes) {
        let index = info.index.get();
        if let Ok(log) = read
            && !violations.iter().any(|v| v.node == Some(index))
        {
            next.nodes.insert(index, log.head.clone());
        }
    }

    for n in &mut nodes {
        n.violations = violations
            .iter()
            .filter(|v| v.node == Some(n.index))
            .count() as u64;
    }
    let report = Report {
        manifest_digest: manifest.digest(),
        time: now,
        threshold: manifest.threshold,
        clean: violations.is_empty(),
        nodes,
        keysets,
        evidence,
        violations,
        admin_actions: Vec::new(),
    };
    (report, next)
}

/// One version per receipt id: the one most nodes logged (the first read on a tie); every node
/// that logged another version of the id is named. Returns receipt id -> (receipt, nodes).
fn agree(
    versions: &BTreeMap<Id16, Vec<Version>>,
    violations: &mut Vec<Violation>,
) -> BTreeMap<Id16, (Receipt, BTreeSet<u16>)> {
    let mut out = BTreeMap::new();
    for (id, all) in versions {
        let Some(best) = all
            .iter()
            .enumerate()
            .max_by_key(|(i, v)| (v.nodes.len(), std::cmp::Reverse(*i)))
            .map(|(i, _)| i)
        else {
            continue;
        };
        let Some(reference) = all.get(best) else {
            continue;
        };
        let majority: BTreeSet<u16> = reference.nodes.keys().copied().collect();
        for (i, other) in all.iter().enumerate() {
            if i == best {
                continue;
            }
            for (&node, &seq) in &other.nodes {
                violations.push(
                    Violation::new(
                        ViolationCode::DigestDisagreement,
                        format!(
                            "node {node} logged this receipt with other contents than node(s) {}",
                            join(&majority)
                        ),
                    )
                    .node(node)
                    .seq(seq)
                    .receipt(*id),
                );
            }
        }
        out.insert(*id, (reference.receipt.clone(), majority));
    }
    out
}

fn join(nodes: &BTreeSet<u16>) -> String {
    nodes
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One node's log on its own: identity, chain, checkpoints, history, receipts. Returns the
/// entries whose receipts count towards issuance (well signed, known keyset).
fn check_node<'a>(
    manifest: &Manifest,
    info: &NodeInfo,
    log: &'a NodeLog,
    previous: Option<&Checkpoint>,
    violations: &mut Vec<Violation>,
) -> Vec<&'a LogEntry> {
    let index = info.index.get();
    let mut found = |v: Violation| violations.push(v.node(index));

    if log.status.index != info.index || log.status.identity_key != info.identity_key {
        found(Violation::new(
            ViolationCode::ManifestMismatch,
            "the node answers with another index or identity key than the manifest lists",
        ));
    }
    if log.status.manifest_digest != manifest.digest() {
        found(Violation::new(
            ViolationCode::ManifestMismatch,
            format!(
                "the node serves manifest {}, the audit uses {}",
                log.status.manifest_digest,
                manifest.digest()
            ),
        ));
    }

    // The chain: seq 1, 2, 3... each pointing at the stored hash of the one before, each hash
    // matching its contents. Linking on the stored hash makes one edited row one violation.
    let mut hashes: BTreeMap<u64, Digest32> = BTreeMap::new();
    let mut expected = 1u64;
    let mut prev_hash = GENESIS;
    let mut seen_receipts: HashMap<Id16, u64> = HashMap::new();
    let mut valid = Vec::new();
    for e in &log.entries {
        if e.seq < expected {
            found(
                Violation::new(
                    ViolationCode::BrokenChain,
                    format!(
                        "entries out of order: seq {} after seq {}",
                        e.seq,
                        expected.saturating_sub(1)
                    ),
                )
                .seq(e.seq),
            );
            continue;
        }
        if e.seq > expected {
            let detail = if e.seq == expected.saturating_add(1) {
                format!("entry {expected} is missing")
            } else {
                format!(
                    "entries {expected} to {} are missing",
                    e.seq.saturating_sub(1)
                )
            };
            found(Violation::new(ViolationCode::MissingEntry, detail).seq(expected));
        } else if e.prev_hash != prev_hash {
            found(
                Violation::new(
                    ViolationCode::BrokenChain,
                    "the entry does not point at the hash of the entry before it",
                )
                .seq(e.seq),
            );
        }
        let mut counts = true;
        if !e.hash_is_valid() {
            found(
                Violation::new(
                    ViolationCode::EntryHashMismatch,
                    "the stored hash does not match the entry's contents (the row was edited)",
                )
                .seq(e.seq),
            );
            counts = false;
        }
        let r = &e.receipt.receipt;
        if e.receipt.verify(&manifest.payments.key).is_err() {
            found(
                Violation::new(
                    ViolationCode::ForgedReceipt,
                    "the logged receipt is not signed by the payments key",
                )
                .seq(e.seq)
                .receipt(r.receipt_id),
            );
            counts = false;
        } else if e.time >= r.expires_at {
            found(
                Violation::new(
                    ViolationCode::ExpiredReceipt,
                    format!(
                        "logged at {} after the receipt expired at {}",
                        e.time, r.expires_at
                    ),
                )
                .seq(e.seq)
                .receipt(r.receipt_id),
            );
        }
        if manifest.keyset(&r.keyset_id).is_none() {
            found(
                Violation::new(
                    ViolationCode::UnknownKeyset,
                    format!(
                        "the receipt is for keyset {}, not in the manifest",
                        r.keyset_id
                    ),
                )
                .seq(e.seq)
                .receipt(r.receipt_id),
            );
            counts = false;
        }
        if let Some(first) = seen_receipts.insert(r.receipt_id, e.seq) {
            found(
                Violation::new(
                    ViolationCode::DuplicateReceipt,
                    format!("the receipt was already logged at seq {first}"),
                )
                .seq(e.seq)
                .receipt(r.receipt_id),
            );
            counts = false;
        }
        if counts {
            valid.push(e);
        }
        hashes.insert(e.seq, e.hash);
        prev_hash = e.hash;
        expected = e.seq.saturating_add(1);
    }
    let hash_at = |seq: u64| {
        if seq == 0 {
            Some(GENESIS)
        } else {
            hashes.get(&seq).copied()
        }
    };

    // Checkpoints: the fresh one and every stored one must be signed by the node and match
    // the log it serves.
    let stored = log.stored.iter().map(|c| ("stored", c));
    for (what, cp) in std::iter::once(("current", &log.head)).chain(stored) {
        if cp.node != info.index || cp.verify(&info.identity_key).is_err() {
            found(
                Violation::new(
                    ViolationCode::BadCheckpointSignature,
                    format!(
                        "its {what} checkpoint at seq {} is not signed by the node",
                        cp.seq
                    ),
                )
                .seq(cp.seq),
            );
            continue;
        }
        match hash_at(cp.seq) {
            Some(h) if h == cp.head_hash => {}
            Some(h) => found(
                Violation::new(
                    ViolationCode::CheckpointMismatch,
                    format!(
                        "its {what} checkpoint signs head {} at seq {}, its log has {h}",
                        cp.head_hash, cp.seq
                    ),
                )
                .seq(cp.seq),
            ),
            None => found(
                Violation::new(
                    ViolationCode::CheckpointMismatch,
                    format!(
                        "its {what} checkpoint covers seq {}, its log has no such entry",
                        cp.seq
                    ),
                )
                .seq(cp.seq),
            ),
        }
    }

    // History: the log must still contain, unchanged, what the node signed last time.
    if let Some(p) = previous {
        match hash_at(p.seq) {
            Some(h) if h == p.head_hash => {}
            now => found(
                Violation::new(
                    ViolationCode::RewrittenHistory,
                    format!(
                        "at the last audit the node signed head {} at seq {} (checkpoint of {}); \
                         its log now {}",
                        p.head_hash,
                        p.seq,
                        p.time,
                        now.map_or_else(
                            || format!("ends at seq {}", expected.saturating_sub(1)),
                            |h| format!("has {h} there")
                        )
                    ),
                )
                .seq(p.seq),
            ),
        }
    }
    valid
}

fn check_keysets(
    manifest: &Manifest,
    inputs: &Inputs,
    receipts: &BTreeMap<Id16, (Receipt, BTreeSet<u16>)>,
    violations: &mut Vec<Violation>,
) -> Vec<KeysetSummary> {
    let threshold = usize::from(manifest.threshold);
    let totals = match &inputs.totals {
        Ok(t) if t.verify(&manifest.payments.key).is_ok() => Some(t),
        Ok(_) => {
            violations.push(Violation::new(
                ViolationCode::PaymentsUnavailable,
                "the receipt totals are not signed by the payments key",
            ));
            None
        }
        Err(why) => {
            violations.push(Violation::new(
                ViolationCode::PaymentsUnavailable,
                format!("the receipt totals could not be read: {why}"),
            ));
            None
        }
    };
    let redeemed = match &inputs.redeemed {
        Ok(r) => Some(r),
        Err(why) => {
            violations.push(Violation::new(
                ViolationCode::CoordinatorUnavailable,
                format!("the redemption counts could not be read: {why}"),
            ));
            None
        }
    };

    let mut out = Vec::new();
    for k in &manifest.keysets {
        let currency = manifest
            .product(&k.params.product)
            .map(|p| p.currency.clone())
            .unwrap_or_default();
        let mut s = KeysetSummary {
            keyset_id: k.id,
            product: k.params.product.clone(),
            currency,
            issued_receipts: 0,
            issued_tickets: 0,
            issued_amount: 0,
            partial_receipts: 0,
            paid: None,
            redeemed: redeemed.map(|r| r.get(&k.id).copied().unwrap_or(0)),
        };
        // Everything any node validly logged: payments must have signed at least that much.
        let (mut logged_receipts, mut logged_tickets, mut logged_amount) = (0u64, 0u64, 0u64);
        for (receipt, by) in receipts.values().filter(|(t, _)| t.keyset_id == k.id) {
            logged_receipts += 1;
            logged_tickets += u64::from(receipt.count);
            logged_amount = logged_amount.saturating_add(receipt.amount);
            if by.len() >= threshold {
                s.issued_receipts += 1;
                s.issued_tickets += u64::from(receipt.count);
                s.issued_amount = s.issued_amount.saturating_add(receipt.amount);
            } else {
                s.partial_receipts += 1;
            }
        }
        if let Some(redeemed) = s.redeemed
            && redeemed > s.issued_tickets
        {
            violations.push(
                Violation::new(
                    ViolationCode::OverRedeemed,
                    format!(
                        "{redeemed} distinct tickets redeemed, {} issued (receipts logged by at \
                         least {threshold} nodes)",
                        s.issued_tickets
                    ),
                )
                .keyset(k.id),
            );
        }
        if let Some(totals) = totals {
            let paid = totals.keyset(&k.id);
            s.paid = Some(Paid {
                receipts: paid.receipts,
                tickets: paid.tickets,
                amount: paid.amount,
            });
            let over = [
                ("receipts", logged_receipts, paid.receipts),
                ("tickets", logged_tickets, paid.tickets),
                ("amount", logged_amount, paid.amount),
            ];
            for (what, logged, paid) in over {
                if logged > paid {
                    violations.push(
                        Violation::new(
                            ViolationCode::TotalsMismatch,
                            format!(
                                "the nodes logged {what} {logged}, the payments service signed \
                                 {what} {paid}"
                            ),
                        )
                        .keyset(k.id),
                    );
                }
            }
        }
        out.push(s);
    }
    out
}

fn check_evidence(
    manifest: &Manifest,
    evidence: &[Blame],
    violations: &mut Vec<Violation>,
) -> Vec<EvidenceFinding> {
    evidence
        .iter()
        .map(|b| {
            let node = b.node.get();
            let receipt_id = b.response.receipt_id;
            match b.check(manifest) {
                Ok(m) => {
                    violations.push(
                        Violation::new(
                            ViolationCode::MisbehavingNode,
                            "the node signed partial signatures that do not verify against its \
                             key share (its own signed response proves it)",
                        )
                        .node(node)
                        .keyset(b.response.keyset_id)
                        .receipt(receipt_id),
                    );
                    EvidenceFinding {
                        node,
                        receipt_id,
                        upheld: true,
                        misbehaviour: Some(m),
                        reason: None,
                    }
                }
                Err(e) => EvidenceFinding {
                    node,
                    receipt_id,
                    upheld: false,
                    misbehaviour: None,
                    reason: Some(e.to_string()),
                },
            }
        })
        .collect()
}
