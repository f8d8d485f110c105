//! The audit report: what was read, what it adds up to, and every violation with a stable code.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use ticketing_crypto::keyset::KeysetId;
use ticketing_protocol::issue::Misbehaviour;
use ticketing_protocol::{Digest32, Id16};

/// What went wrong, as a stable snake_case code (the JSON report's `code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationCode {
    /// A node's log could not be read: nothing about it could be checked.
    NodeUnreachable,
    /// A node serves another identity key or another manifest than the auditor's.
    ManifestMismatch,
    /// An entry's stored hash does not match its contents (a row was edited).
    EntryHashMismatch,
    /// An entry does not point at the hash of the entry before it.
    BrokenChain,
    /// Sequence numbers skip: entries were removed.
    MissingEntry,
    /// A checkpoint is not signed by the node's identity key.
    BadCheckpointSignature,
    /// A checkpoint the node signed does not match its own log.
    CheckpointMismatch,
    /// The log no longer extends the checkpoint the auditor recorded last time.
    RewrittenHistory,
    /// A logged receipt is not signed by the payments key.
    ForgedReceipt,
    /// A node logged a receipt after the receipt's expiry.
    ExpiredReceipt,
    /// One log holds the same receipt twice.
    DuplicateReceipt,
    /// A logged receipt names a keyset the manifest does not have.
    UnknownKeyset,
    /// Nodes logged different contents (digest, keyset, count, amount) for one receipt id.
    DigestDisagreement,
    /// More distinct tickets of a keyset were redeemed than the nodes issued.
    OverRedeemed,
    /// The nodes logged more receipts, tickets or money for a keyset than payments signed.
    TotalsMismatch,
    /// The coordinator's redemption counts could not be read.
    CoordinatorUnavailable,
    /// The payments service's totals could not be read or are not signed by its key.
    PaymentsUnavailable,
    /// Blame evidence proves a node signed wrong partials.
    MisbehavingNode,
}

impl ViolationCode {
    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NodeUnreachable => "node_unreachable",
            Self::ManifestMismatch => "manifest_mismatch",
            Self::EntryHashMismatch => "entry_hash_mismatch",
            Self::BrokenChain => "broken_chain",
            Self::MissingEntry => "missing_entry",
            Self::BadCheckpointSignature => "bad_checkpoint_signature",
            Self::CheckpointMismatch => "checkpoint_mismatch",
            Self::RewrittenHistory => "rewritten_history",
            Self::ForgedReceipt => "forged_receipt",
            Self::ExpiredReceipt => "expired_receipt",
            Self::DuplicateReceipt => "duplicate_receipt",
            Self::UnknownKeyset => "unknown_keyset",
            Self::DigestDisagreement => "digest_disagreement",
            Self::OverRedeemed => "over_redeemed",
            Self::TotalsMismatch => "totals_mismatch",
            Self::CoordinatorUnavailable => "coordinator_unavailable",
            Self::PaymentsUnavailable => "payments_unavailable",
            Self::MisbehavingNode => "misbehaving_node",
        }
    }
}

impl std::fmt::Display for ViolationCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One violation: its code, where it was found, and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Stable code.
    pub code: ViolationCode,
    /// The node it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u16>,
    /// The keyset it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyset_id: Option<KeysetId>,
    /// The log entry it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The receipt it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_id: Option<Id16>,
    /// What was found.
    pub detail: String,
}

impl Violation {
    /// A violation with only a code and a detail; add the location with the builders.
    pub fn new(code: ViolationCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            node: None,
            keyset_id: None,
            seq: None,
            receipt_id: None,
            detail: detail.into(),
        }
    }

    /// Name the node.
    #[must_use]
    pub fn node(mut self, node: u16) -> Self {
        self.node = Some(node);
        self
    }

    /// Name the keyset.
    #[must_use]
    pub fn keyset(mut self, keyset_id: KeysetId) -> Self {
        self.keyset_id = Some(keyset_id);
        self
    }

    /// Name the log entry.
    #[must_use]
    pub fn seq(mut self, seq: u64) -> Self {
        self.seq = Some(seq);
        self
    }

    /// Name the receipt.
    #[must_use]
    pub fn receipt(mut self, receipt_id: Id16) -> Self {
        self.receipt_id = Some(receipt_id);
        self
    }
}

/// What was read from one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// Node index.
    pub index: u16,
    /// Its URL from the manifest.
    pub url: String,
    /// Whether its log could be read.
    pub reachable: bool,
    /// Entries read.
    pub entries: u64,
    /// Sequence number of the newest checkpoint it signed.
    pub head_seq: u64,
    /// Its stored checkpoints.
    pub checkpoints: u64,
    /// The checkpoint recorded by the previous audit (state file), if any.
    pub previous_seq: Option<u64>,
    /// Violations naming this node.
    pub violations: u64,
}

/// Issued, paid and redeemed figures of one keyset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysetSummary {
    /// The keyset.
    pub keyset_id: KeysetId,
    /// Its product.
    pub product: String,
    /// The product's currency.
    pub currency: String,
    /// Receipts validly logged by at least t nodes: issued.
    pub issued_receipts: u64,
    /// Tickets of those receipts.
    pub issued_tickets: u64,
    /// Amount of those receipts (minor units).
    pub issued_amount: u64,
    /// Receipts validly logged by at least one node but fewer than t (a purchase that has not
    /// completed yet, or nodes that lost entries).
    pub partial_receipts: u64,
    /// The payments service's figures (`None`: not read).
    pub paid: Option<Paid>,
    /// Distinct tickets redeemed, from the coordinator (`None`: not read).
    pub redeemed: Option<u64>,
}

/// The payments service's totals of one keyset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paid {
    /// Receipts signed.
    pub receipts: u64,
    /// Tickets paid for.
    pub tickets: u64,
    /// Amount (minor units).
    pub amount: u64,
}

/// What checking one piece of blame evidence found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceFinding {
    /// The node the evidence names.
    pub node: u16,
    /// The receipt of the purchase.
    pub receipt_id: Id16,
    /// Whether the evidence holds.
    pub upheld: bool,
    /// What the node did wrong, when upheld.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misbehaviour: Option<Misbehaviour>,
    /// Why it was dismissed, when not upheld.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The whole report (`ticketing audit --json` prints it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Digest of the manifest audited against.
    pub manifest_digest: Digest32,
    /// Unix seconds of the audit.
    pub time: u64,
    /// The cluster's threshold t.
    pub threshold: u16,
    /// `true` when there is no violation.
    pub clean: bool,
    /// Per node, index order.
    pub nodes: Vec<NodeSummary>,
    /// Per keyset, manifest order.
    pub keysets: Vec<KeysetSummary>,
    /// Blame evidence handed in.
    pub evidence: Vec<EvidenceFinding>,
    /// Every violation found.
    pub violations: Vec<Violation>,
    /// The coordinator's access audit trail (admin actions: who, what, when), oldest first;
    /// empty when it could not be read (no auditor token).
    #[serde(default)]
    pub admin_actions: Vec<ticketing_protocol::redeem::AdminAction>,
}

impl Report {
    /// Whether nothing could be read: every node unreachable (the audit could not run, as
    /// opposed to finding violations).
    pub fn nothing_read(&self) -> bool {
        !self.nodes.is_empty() && self.nodes.iter().all(|n| !n.reachable)
    }

    /// The report as text tables for a terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_header(&mut out);
        self.render_nodes(&mut out);
        self.render_keysets(&mut out);
        self.render_evidence(&mut out);
        self.render_admin_actions(&mut out);
        self.render_violations(&mut out);
        out
    }

    /// Writes the title line: manifest, time, threshold.
    fn render_header(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "audit of manifest {} at {} (threshold {})\n",
            self.manifest_digest,
            ticketing_protocol::when::utc(self.time),
            self.threshold
        );
    }

    /// Writes the per-node table.
    fn render_nodes(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "{:<5} {:>9} {:>9} {:>11} {:>9} {:>10}  url",
            "node", "entries", "head", "checkpoints", "previous", "violations"
        );
        for n in &self.nodes {
            let dash = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
            if n.reachable {
                let _ = writeln!(
                    out,
                    "{:<5} {:>9} {:>9} {:>11} {:>9} {:>10}  {}",
                    n.index,
                    n.entries,
                    n.head_seq,
                    n.checkpoints,
                    dash(n.previous_seq),
                    n.violations,
                    n.url
                );
            } else {
                let _ = writeln!(
                    out,
                    "{:<5} {:>9} {:>9} {:>11} {:>9} {:>10}  {}",
                    n.index,
                    "-",
                    "-",
                    "-",
                    dash(n.previous_seq),
                    n.violations,
                    n.url
                );
            }
        }
    }

    /// Writes the per-keyset table of the keysets with activity, and how many were left out.
    fn render_keysets(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n{:<16} {:<8} {:>8} {:>8} {:>12} {:>8} {:>8} {:>12} {:>9}",
            "keyset",
            "product",
            "issued",
            "partial",
            "issued amt",
            "paid",
            "redeemed",
            "paid amt",
            "currency"
        );
        let active = |k: &&KeysetSummary| {
            k.issued_receipts + k.partial_receipts > 0
                || k.redeemed.is_some_and(|r| r > 0)
                || k.paid.is_some_and(|p| p.receipts > 0)
        };
        let quiet = self.keysets.len() - self.keysets.iter().filter(active).count();
        for k in self.keysets.iter().filter(active) {
            let opt = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
            let _ = writeln!(
                out,
                "{:<16} {:<8} {:>8} {:>8} {:>12} {:>8} {:>8} {:>12} {:>9}",
                k.keyset_id.to_string(),
                k.product,
                k.issued_tickets,
                k.partial_receipts,
                k.issued_amount,
                opt(k.paid.map(|p| p.tickets)),
                opt(k.redeemed),
                opt(k.paid.map(|p| p.amount)),
                k.currency
            );
        }
        if quiet > 0 {
            let _ = writeln!(
                out,
                "({quiet} keyset(s) with nothing issued, paid or redeemed not shown; --json lists all)"
            );
        }
    }

    /// Writes the verdict on each piece of blame evidence, if any was handed in.
    fn render_evidence(&self, out: &mut String) {
        if self.evidence.is_empty() {
            return;
        }
        let _ = writeln!(out, "\nblame evidence");
        for e in &self.evidence {
            let verdict = if e.upheld {
                "UPHELD: signed wrong partials".to_owned()
            } else {
                format!(
                    "dismissed: {}",
                    e.reason.as_deref().unwrap_or("does not hold")
                )
            };
            let _ = writeln!(out, "  node {} receipt {}: {verdict}", e.node, e.receipt_id);
        }
    }

    /// Writes the coordinator's admin actions since the last audit, if there are any.
    fn render_admin_actions(&self, out: &mut String) {
        if self.admin_actions.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "\nadmin actions since the last audit ({}, oldest first):",
            self.admin_actions.len()
        );
        for a in &self.admin_actions {
            let _ = writeln!(
                out,
                "  {}  {:<16} {:<18} {}",
                ticketing_protocol::when::utc(a.at),
                a.actor,
                a.action,
                a.detail
            );
        }
    }

    /// Writes the verdict: clean, or every violation with where it was found.
    fn render_violations(&self, out: &mut String) {
        if self.clean {
            let _ = writeln!(out, "\nCLEAN: no violation");
            return;
        }
        let _ = writeln!(out, "\n{} VIOLATION(S)", self.violations.len());
        for v in &self.violations {
            let at = location(v);
            let _ = writeln!(out, "  {}{at}: {}", v.code, v.detail);
        }
    }
}

/// Where a violation was found, as ` [node 1, keyset .., seq .., receipt ..]` (empty if nowhere).
fn location(v: &Violation) -> String {
    let mut at = Vec::new();
    if let Some(n) = v.node {
        at.push(format!("node {n}"));
    }
    if let Some(k) = v.keyset_id {
        at.push(format!("keyset {k}"));
    }
    if let Some(s) = v.seq {
        at.push(format!("seq {s}"));
    }
    if let Some(r) = v.receipt_id {
        at.push(format!("receipt {r}"));
    }
    if at.is_empty() {
        String::new()
    } else {
        format!(" [{}]", at.join(", "))
    }
}
