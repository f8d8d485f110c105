//! The checks, as a pure function of what was read: no I/O here, so every rule is tested on
//! hand-made logs as well as on real services.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ticketing_crypto::keyset::KeysetId;
use ticketing_protocol::audit::ReceiptTotals;
use ticketing_protocol::issue::Blame;
use ticketing_protocol::log::{Checkpoint, GENESIS, LogEntry, NodeStatus};
use ticketing_protocol::manifest::{KeysetInfo, Manifest, NodeInfo};
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

/// Receipt id -> the versions nodes logged (a renewal is the same version: `same_sale`).
type Versions = BTreeMap<Id16, Vec<Version>>;

/// Receipt id -> the version that counts and the nodes that logged it.
type Agreed = BTreeMap<Id16, (Receipt, BTreeSet<u16>)>;

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
    let mut versions: Versions = BTreeMap::new();

    let mut nodes = Vec::new();
    for (info, read) in manifest.nodes.iter().zip(&inputs.nodes) {
        let prev = previous.nodes.get(&info.index.get());
        nodes.push(read_node(
            manifest,
            info,
            read,
            prev,
            &mut versions,
            &mut violations,
        ));
    }

    let receipts = agree(&versions, &mut violations);
    let keysets = check_keysets(manifest, inputs, &receipts, &mut violations);
    let evidence = check_evidence(manifest, &inputs.evidence, &mut violations);

    record_clean_heads(manifest, inputs, &violations, &mut next);
    count_node_violations(&mut nodes, &violations);
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

/// Checks what was read from one node (or names it unreachable), adds its valid entries to
/// `versions` and summarises it (violations not yet counted).
fn read_node(
    manifest: &Manifest,
    info: &NodeInfo,
    read: &Result<NodeLog, String>,
    prev: Option<&Checkpoint>,
    versions: &mut Versions,
    violations: &mut Vec<Violation>,
) -> NodeSummary {
    let index = info.index.get();
    match read {
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
            let valid = check_node(manifest, info, log, prev, violations);
            add_versions(versions, index, &valid);
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
    }
}

/// Records which version of each receipt node `index` logged at which seq.
fn add_versions(versions: &mut Versions, index: u16, valid: &[&LogEntry]) {
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
}

/// Records the head checkpoint of every node read that no violation names.
fn record_clean_heads(
    manifest: &Manifest,
    inputs: &Inputs,
    violations: &[Violation],
    next: &mut AuditState,
) {
    // A node's checkpoint is recorded only when nothing at all names it.
    for (info, read) in manifest.nodes.iter().zip(&inputs.nodes) {
        let index = info.index.get();
        if let Ok(log) = read
            && !violations.iter().any(|v| v.node == Some(index))
        {
            next.nodes.insert(index, log.head.clone());
        }
    }
}

/// Fills in each node summary's count of the violations naming it.
fn count_node_violations(nodes: &mut [NodeSummary], violations: &[Violation]) {
    for n in nodes {
        n.violations = violations
            .iter()
            .filter(|v| v.node == Some(n.index))
            .count() as u64;
    }
}

/// One version per receipt id: the one most nodes logged (the first read on a tie); every node
/// that logged another version of the id is named. Returns receipt id -> (receipt, nodes).
fn agree(versions: &Versions, violations: &mut Vec<Violation>) -> Agreed {
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

/// The node indices, comma separated.
fn join(nodes: &BTreeSet<u16>) -> String {
    nodes
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Collects the violations found in one node's log, each naming that node.
struct NodeFindings<'v> {
    index: u16,
    violations: &'v mut Vec<Violation>,
}

impl NodeFindings<'_> {
    /// Records `v` as found at this node.
    fn found(&mut self, v: Violation) {
        self.violations.push(v.node(self.index));
    }
}

/// What walking a node's entries established.
struct Chain<'a> {
    /// Seq -> stored hash of every entry walked.
    hashes: BTreeMap<u64, Digest32>,
    /// The entries whose receipts count towards issuance.
    valid: Vec<&'a LogEntry>,
    /// The seq after the last entry walked (1 for an empty log).
    expected: u64,
}

impl Chain<'_> {
    /// The log's hash at `seq`: [`GENESIS`] at 0, `None` when there is no such entry.
    fn hash_at(&self, seq: u64) -> Option<Digest32> {
        if seq == 0 {
            Some(GENESIS)
        } else {
            self.hashes.get(&seq).copied()
        }
    }
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
    let mut out = NodeFindings {
        index: info.index.get(),
        violations,
    };
    check_identity(manifest, info, log, &mut out);
    let chain = walk_entries(manifest, log, &mut out);
    check_checkpoints(info, log, &chain, &mut out);
    check_history(previous, &chain, &mut out);
    chain.valid
}

/// Checks that the node answers with the manifest's index, identity key and manifest.
fn check_identity(manifest: &Manifest, info: &NodeInfo, log: &NodeLog, out: &mut NodeFindings) {
    if log.status.index != info.index || log.status.identity_key != info.identity_key {
        out.found(Violation::new(
            ViolationCode::ManifestMismatch,
            "the node answers with another index or identity key than the manifest lists",
        ));
    }
    if log.status.manifest_digest != manifest.digest() {
        out.found(Violation::new(
            ViolationCode::ManifestMismatch,
            format!(
                "the node serves manifest {}, the audit uses {}",
                log.status.manifest_digest,
                manifest.digest()
            ),
        ));
    }
}

/// Walks the chain: seq 1, 2, 3... each pointing at the stored hash of the one before, each
/// hash matching its contents, each receipt sound.
fn walk_entries<'a>(manifest: &Manifest, log: &'a NodeLog, out: &mut NodeFindings) -> Chain<'a> {
    // Linking on the stored hash makes one edited row one violation.
    let mut chain = Chain {
        hashes: BTreeMap::new(),
        valid: Vec::new(),
        expected: 1,
    };
    let mut prev_hash = GENESIS;
    let mut seen_receipts: HashMap<Id16, u64> = HashMap::new();
    for e in &log.entries {
        if !check_link(e, chain.expected, prev_hash, out) {
            continue;
        }
        if check_entry(manifest, e, &mut seen_receipts, out) {
            chain.valid.push(e);
        }
        chain.hashes.insert(e.seq, e.hash);
        prev_hash = e.hash;
        chain.expected = e.seq.saturating_add(1);
    }
    chain
}

/// Checks where `e` sits in the chain (order, gaps, link to the entry before). Returns `false`
/// for an entry out of order, which is skipped.
fn check_link(e: &LogEntry, expected: u64, prev_hash: Digest32, out: &mut NodeFindings) -> bool {
    if e.seq < expected {
        out.found(
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
        return false;
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
        out.found(Violation::new(ViolationCode::MissingEntry, detail).seq(expected));
    } else if e.prev_hash != prev_hash {
        out.found(
            Violation::new(
                ViolationCode::BrokenChain,
                "the entry does not point at the hash of the entry before it",
            )
            .seq(e.seq),
        );
    }
    true
}

/// Checks one entry's hash and receipt (signature, expiry, keyset, not logged before). Returns
/// whether its receipt counts towards issuance.
fn check_entry(
    manifest: &Manifest,
    e: &LogEntry,
    seen_receipts: &mut HashMap<Id16, u64>,
    out: &mut NodeFindings,
) -> bool {
    let mut counts = true;
    if !e.hash_is_valid() {
        out.found(
            Violation::new(
                ViolationCode::EntryHashMismatch,
                "the stored hash does not match the entry's contents (the row was edited)",
            )
            .seq(e.seq),
        );
        counts = false;
    }
    if !check_receipt_signature(manifest, e, out) {
        counts = false;
    }
    let r = &e.receipt.receipt;
    if manifest.keyset(&r.keyset_id).is_none() {
        out.found(
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
        out.found(
            Violation::new(
                ViolationCode::DuplicateReceipt,
                format!("the receipt was already logged at seq {first}"),
            )
            .seq(e.seq)
            .receipt(r.receipt_id),
        );
        counts = false;
    }
    counts
}

/// Checks that the logged receipt is signed by the payments key and was logged before it
/// expired. Returns `false` for a forged receipt (an expired one still counts).
fn check_receipt_signature(manifest: &Manifest, e: &LogEntry, out: &mut NodeFindings) -> bool {
    let r = &e.receipt.receipt;
    if e.receipt.verify(&manifest.payments.key).is_err() {
        out.found(
            Violation::new(
                ViolationCode::ForgedReceipt,
                "the logged receipt is not signed by the payments key",
            )
            .seq(e.seq)
            .receipt(r.receipt_id),
        );
        return false;
    }
    if e.time >= r.expires_at {
        out.found(
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
    true
}

/// Checks that the fresh checkpoint and every stored one are signed by the node and match the
/// log it serves.
fn check_checkpoints(info: &NodeInfo, log: &NodeLog, chain: &Chain, out: &mut NodeFindings) {
    let stored = log.stored.iter().map(|c| ("stored", c));
    for (what, cp) in std::iter::once(("current", &log.head)).chain(stored) {
        check_checkpoint(info, what, cp, chain, out);
    }
}

/// Checks that one checkpoint (`what`: current or stored) is signed by the node and signs the
/// hash its log has at that seq.
fn check_checkpoint(
    info: &NodeInfo,
    what: &str,
    cp: &Checkpoint,
    chain: &Chain,
    out: &mut NodeFindings,
) {
    if cp.node != info.index || cp.verify(&info.identity_key).is_err() {
        out.found(
            Violation::new(
                ViolationCode::BadCheckpointSignature,
                format!(
                    "its {what} checkpoint at seq {} is not signed by the node",
                    cp.seq
                ),
            )
            .seq(cp.seq),
        );
        return;
    }
    match chain.hash_at(cp.seq) {
        Some(h) if h == cp.head_hash => {}
        Some(h) => out.found(
            Violation::new(
                ViolationCode::CheckpointMismatch,
                format!(
                    "its {what} checkpoint signs head {} at seq {}, its log has {h}",
                    cp.head_hash, cp.seq
                ),
            )
            .seq(cp.seq),
        ),
        None => out.found(
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

/// Checks that the log still contains, unchanged, what the node signed at the last audit.
fn check_history(previous: Option<&Checkpoint>, chain: &Chain, out: &mut NodeFindings) {
    let Some(p) = previous else {
        return;
    };
    match chain.hash_at(p.seq) {
        Some(h) if h == p.head_hash => {}
        now => out.found(
            Violation::new(
                ViolationCode::RewrittenHistory,
                format!(
                    "at the last audit the node signed head {} at seq {} (checkpoint of {}); \
                     its log now {}",
                    p.head_hash,
                    p.seq,
                    p.time,
                    now.map_or_else(
                        || format!("ends at seq {}", chain.expected.saturating_sub(1)),
                        |h| format!("has {h} there")
                    )
                ),
            )
            .seq(p.seq),
        ),
    }
}

/// What the nodes validly logged for one keyset, by any number of nodes.
#[derive(Debug, Default)]
struct Logged {
    receipts: u64,
    tickets: u64,
    amount: u64,
    /// Tickets of the receipts that may have been issued: logged by at least t nodes once the
    /// nodes whose logs could not be read are counted as having logged every receipt seen.
    /// `None` when t or more logs could not be read (any number could have been issued).
    possible_tickets: Option<u64>,
}

/// Per keyset: issued (logged by at least t nodes) against redeemed and against what payments
/// signed; an unreadable or badly signed source is a violation.
fn check_keysets(
    manifest: &Manifest,
    inputs: &Inputs,
    receipts: &Agreed,
    violations: &mut Vec<Violation>,
) -> Vec<KeysetSummary> {
    let threshold = usize::from(manifest.threshold);
    let totals = verified_totals(manifest, inputs, violations);
    let redeemed = readable_redeemed(inputs, violations);
    // A node that could not be read is already a violation; what it may have logged must not
    // make the readable ones look like they issued too little.
    let unread = inputs.nodes.iter().filter(|n| n.is_err()).count();

    let mut out = Vec::new();
    for k in &manifest.keysets {
        let (mut s, logged) = tally_keyset(manifest, k, receipts, threshold, unread, redeemed);
        check_redeemed(&s, k.id, threshold, unread, &logged, violations);
        if let Some(totals) = totals {
            check_paid(&mut s, k.id, totals, &logged, violations);
        }
        out.push(s);
    }
    out
}

/// The payments totals when they were read and are signed by the payments key.
fn verified_totals<'a>(
    manifest: &Manifest,
    inputs: &'a Inputs,
    violations: &mut Vec<Violation>,
) -> Option<&'a ReceiptTotals> {
    match &inputs.totals {
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
    }
}

/// The coordinator's redemption counts when they could be read.
fn readable_redeemed<'a>(
    inputs: &'a Inputs,
    violations: &mut Vec<Violation>,
) -> Option<&'a HashMap<KeysetId, u64>> {
    match &inputs.redeemed {
        Ok(r) => Some(r),
        Err(why) => {
            violations.push(Violation::new(
                ViolationCode::CoordinatorUnavailable,
                format!("the redemption counts could not be read: {why}"),
            ));
            None
        }
    }
}

/// Tallies one keyset's receipts: the summary (issued, partial, redeemed; not yet paid) and
/// everything any node validly logged.
fn tally_keyset(
    manifest: &Manifest,
    k: &KeysetInfo,
    receipts: &Agreed,
    threshold: usize,
    unread: usize,
    redeemed: Option<&HashMap<KeysetId, u64>>,
) -> (KeysetSummary, Logged) {
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
    let mut logged = Logged {
        possible_tickets: (unread < threshold).then_some(0),
        ..Logged::default()
    };
    for (receipt, by) in receipts.values().filter(|(t, _)| t.keyset_id == k.id) {
        logged.receipts += 1;
        logged.tickets += u64::from(receipt.count);
        logged.amount = logged.amount.saturating_add(receipt.amount);
        if let Some(possible) = logged.possible_tickets.as_mut()
            && by.len() + unread >= threshold
        {
            *possible += u64::from(receipt.count);
        }
        if by.len() >= threshold {
            s.issued_receipts += 1;
            s.issued_tickets += u64::from(receipt.count);
            s.issued_amount = s.issued_amount.saturating_add(receipt.amount);
        } else {
            s.partial_receipts += 1;
        }
    }
    (s, logged)
}

/// Checks that no more distinct tickets of the keyset were redeemed than issued. With `unread`
/// node logs missing, only more than could have been issued is a violation (with t or more
/// missing, nothing can be concluded: the unreachable nodes are the violations then).
fn check_redeemed(
    s: &KeysetSummary,
    keyset_id: KeysetId,
    threshold: usize,
    unread: usize,
    logged: &Logged,
    violations: &mut Vec<Violation>,
) {
    let (Some(redeemed), Some(possible)) = (s.redeemed, logged.possible_tickets) else {
        return;
    };
    if redeemed <= possible {
        return;
    }
    let issued = if unread == 0 {
        format!(
            "{} issued (receipts logged by at least {threshold} nodes)",
            s.issued_tickets
        )
    } else {
        format!(
            "at most {possible} issued even if the {unread} node(s) that could not be read \
             logged every receipt seen"
        )
    };
    violations.push(
        Violation::new(
            ViolationCode::OverRedeemed,
            format!("{redeemed} distinct tickets redeemed, {issued}"),
        )
        .keyset(keyset_id),
    );
}

/// Records what payments signed for the keyset and checks the nodes logged no more receipts,
/// tickets or money than that.
fn check_paid(
    s: &mut KeysetSummary,
    keyset_id: KeysetId,
    totals: &ReceiptTotals,
    logged: &Logged,
    violations: &mut Vec<Violation>,
) {
    let paid = totals.keyset(&keyset_id);
    s.paid = Some(Paid {
        receipts: paid.receipts,
        tickets: paid.tickets,
        amount: paid.amount,
    });
    let over = [
        ("receipts", logged.receipts, paid.receipts),
        ("tickets", logged.tickets, paid.tickets),
        ("amount", logged.amount, paid.amount),
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
                .keyset(keyset_id),
            );
        }
    }
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
