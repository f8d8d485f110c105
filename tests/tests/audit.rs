//! The auditor against a real cluster (payments, coordinator, three 2-of-3 nodes over HTTP on
//! 127.0.0.1:0), on SQLite and on real Postgres. Each test damages one thing on purpose in a
//! node's database (or the ledger) and checks that the audit names it; a clean cluster audits
//! clean.

use std::time::Duration;

use ticketing_audit::{AuditState, Options, Report, ViolationCode};
use ticketing_coordinator::TokenRole;
use ticketing_coordinator::store::{Mode, ScanRecord, Usage};
use ticketing_crypto::keyset::ShareIndex;
use ticketing_crypto::ticket::Serial;
use ticketing_node::Node;
use ticketing_node::signatory::LocalSignatory;
use ticketing_node::store::{NodeStore, SqlStore};
use ticketing_protocol::Id16;
use ticketing_protocol::keys::SignKey;
use ticketing_protocol::log::{LogEntry, LogPage};
use ticketing_protocol::receipt::SignedReceipt;

use crate::common::{TestCluster, buy, token};

/// Run the auditor as `ticketing audit` does, with an auditor token.
async fn audit(c: &TestCluster, state: &AuditState) -> (Report, AuditState) {
    audit_with(c, state, Vec::new()).await
}

async fn audit_with(
    c: &TestCluster,
    state: &AuditState,
    evidence: Vec<ticketing_protocol::issue::Blame>,
) -> (Report, AuditState) {
    let options = Options {
        // A token per audit, as separate auditors would hold (a name is registered once).
        coordinator_token: Some(
            token(
                c,
                &format!(
                    "auditor-{}",
                    ticketing_protocol::Id16::random(&mut rand::rng())
                ),
                TokenRole::Auditor,
            )
            .await,
        ),
        timeout: Duration::from_secs(10),
        evidence,
    };
    ticketing_audit::run(
        &c.cluster.cluster.manifest,
        &options,
        state,
        ticketing_service::now(),
    )
    .await
    .unwrap()
}

fn codes(report: &Report) -> Vec<(ViolationCode, Option<u16>, Option<u64>)> {
    report
        .violations
        .iter()
        .map(|v| (v.code, v.node, v.seq))
        .collect()
}

fn assert_found(report: &Report, code: ViolationCode, node: Option<u16>, seq: Option<u64>) {
    assert!(!report.clean);
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.code == code && v.node == node && (seq.is_none() || v.seq == seq)),
        "expected {code} at node {node:?} seq {seq:?}:\n{}",
        report.render()
    );
}

/// Two sales (2 tickets, then 1), then wait until all three nodes logged both: the wallet
/// stops listening after t answers, the third node finishes on its own.
async fn two_sales(c: &TestCluster) {
    buy(c, "single", 2).await;
    buy(c, "single", 1).await;
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for node in &c.cluster.cluster.manifest.nodes {
        loop {
            let page: LogPage = http
                .get(format!("{}/v1/log", node.url))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if page.checkpoint.seq == 2 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {} never logged both sales",
                node.index
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A node's database, opened directly, as someone with access to it would.
struct Db(SqlStore);

/// A value bound into tampering SQL.
enum Bind {
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

impl Db {
    /// Stop node `index` and open its database.
    async fn open(c: &mut TestCluster, index: u16) -> Self {
        c.stop_node(index).await.unwrap();
        let url = c.node_settings[usize::from(index) - 1].node_database_url(index);
        Self(SqlStore::open(&url).await.unwrap())
    }

    fn store(&self) -> &dyn NodeStore {
        &self.0
    }

    /// Run one statement written with `$n` placeholders.
    async fn exec(&self, sql: &str, binds: &[Bind]) {
        let mut q = ticketing_service::db::query(sql.to_owned());
        for b in binds {
            q = match b {
                Bind::Int(v) => q.bind(*v),
                Bind::Text(v) => q.bind(v.as_str()),
                Bind::Bytes(v) => q.bind(v.as_slice()),
            };
        }
        q.execute(self.0.database()).await.unwrap();
    }

    async fn insert(&self, e: &LogEntry) {
        let r = &e.receipt.receipt;
        self.exec(
            "INSERT INTO log_entries (seq, receipt_id, digest, time, receipt, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                Bind::Int(i64::try_from(e.seq).unwrap()),
                Bind::Bytes(r.receipt_id.0.to_vec()),
                Bind::Bytes(r.digest.0.to_vec()),
                Bind::Int(i64::try_from(e.time).unwrap()),
                Bind::Text(serde_json::to_string(&e.receipt).unwrap()),
                Bind::Bytes(e.prev_hash.0.to_vec()),
                Bind::Bytes(e.hash.0.to_vec()),
            ],
        )
        .await;
    }

    /// Close the database and start the node again (it reloads its head from the database).
    async fn close(self, c: &mut TestCluster, index: u16) {
        drop(self);
        c.start_node(index).await.unwrap();
    }
}

pub(crate) async fn a_clean_cluster_audits_clean(c: TestCluster) {
    two_sales(&c).await;
    let (report, state) = audit(&c, &AuditState::default()).await;
    assert!(report.clean, "{}", report.render());
    assert!(report.render().contains("CLEAN"));
    let single = report
        .keysets
        .iter()
        .find(|k| k.product == "single" && k.issued_tickets > 0)
        .unwrap();
    assert_eq!(single.issued_receipts, 2);
    assert_eq!(single.issued_tickets, 3);
    assert_eq!(single.paid.unwrap().tickets, 3);
    assert_eq!(single.issued_amount, single.paid.unwrap().amount);
    assert_eq!(single.redeemed, Some(0));
    assert_eq!(state.nodes.len(), 3);
    assert!(state.nodes.values().all(|cp| cp.seq == 2));

    // More sales, then an audit against the recorded state: the logs extend it.
    buy(&c, "day", 1).await;
    let (report, next) = audit(&c, &state).await;
    assert!(report.clean, "{}", report.render());
    assert!(next.nodes.values().any(|cp| cp.seq >= 3));
    // The JSON form carries the same verdict.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["clean"], true);
    assert_eq!(json["violations"].as_array().unwrap().len(), 0);
    c.cluster.stop().await.unwrap();
}

pub(crate) async fn an_edited_log_row_is_named(mut c: TestCluster) {
    two_sales(&c).await;
    let db = Db::open(&mut c, 2).await;
    let entry = db.store().entries(0, 1).await.unwrap().remove(0);
    // Someone lowers the amount of the first sale in node 2's log.
    let mut receipt: SignedReceipt = entry.receipt.clone();
    receipt.receipt.amount = 1;
    db.exec(
        "UPDATE log_entries SET receipt = $1 WHERE seq = $2",
        &[
            Bind::Text(serde_json::to_string(&receipt).unwrap()),
            Bind::Int(1),
        ],
    )
    .await;
    db.close(&mut c, 2).await;

    let (report, state) = audit(&c, &AuditState::default()).await;
    assert_found(&report, ViolationCode::EntryHashMismatch, Some(2), Some(1));
    // The edited receipt no longer carries the payments signature either.
    assert_found(&report, ViolationCode::ForgedReceipt, Some(2), Some(1));
    assert!(
        report.violations.iter().all(|v| v.node == Some(2)),
        "only node 2 is at fault: {:?}",
        codes(&report)
    );
    // A node with violations keeps no new checkpoint in the state; the others do.
    assert!(!state.nodes.contains_key(&2));
    assert!(state.nodes.contains_key(&1) && state.nodes.contains_key(&3));
    c.cluster.stop().await.unwrap();
}

pub(crate) async fn a_dropped_log_row_is_named(mut c: TestCluster) {
    two_sales(&c).await;
    let db = Db::open(&mut c, 3).await;
    db.exec("DELETE FROM log_entries WHERE seq = $1", &[Bind::Int(1)])
        .await;
    db.close(&mut c, 3).await;

    let (report, _) = audit(&c, &AuditState::default()).await;
    assert_found(&report, ViolationCode::MissingEntry, Some(3), Some(1));
    c.cluster.stop().await.unwrap();
}

pub(crate) async fn a_fork_after_a_checkpoint_is_named(mut c: TestCluster) {
    two_sales(&c).await;
    let (report, state) = audit(&c, &AuditState::default()).await;
    assert!(report.clean, "{}", report.render());
    assert_eq!(state.nodes[&1].seq, 2);

    // Node 1's operator rewrites history without the first sale: a consistent new chain,
    // old checkpoints deleted, fresh ones signed by the node as it serves the log.
    let db = Db::open(&mut c, 1).await;
    let old = db.store().entries(0, 10).await.unwrap();
    db.exec("DELETE FROM log_entries", &[]).await;
    db.exec("DELETE FROM checkpoints", &[]).await;
    let forked = LogEntry::new(
        1,
        old[1].time,
        old[1].receipt.clone(),
        ticketing_protocol::log::GENESIS,
    );
    db.insert(&forked).await;
    db.close(&mut c, 1).await;

    // Without memory of the earlier checkpoint the new chain looks fine ...
    let (blind, _) = audit(&c, &AuditState::default()).await;
    assert!(blind.clean, "{}", blind.render());
    // ... with it, the rewrite is named, with the node's own signed checkpoint as proof.
    let (report, next) = audit(&c, &state).await;
    assert_found(&report, ViolationCode::RewrittenHistory, Some(1), Some(2));
    assert_eq!(codes(&report).len(), 1, "{}", report.render());
    // The state keeps the old checkpoint for node 1, so the next audit reports it again.
    assert_eq!(next.nodes[&1], state.nodes[&1]);
    let (again, _) = audit(&c, &next).await;
    assert_found(&again, ViolationCode::RewrittenHistory, Some(1), Some(2));
    c.cluster.stop().await.unwrap();
}

pub(crate) async fn an_entry_with_a_forged_receipt_is_named(mut c: TestCluster) {
    two_sales(&c).await;
    let db = Db::open(&mut c, 1).await;
    let head = db.store().entries(1, 10).await.unwrap().remove(0);
    // A receipt for 50 tickets signed by a key that is not the payments key, appended at the
    // head with a correct hash chain.
    let mut receipt = head.receipt.receipt.clone();
    receipt.receipt_id = Id16::random(&mut rand::rng());
    receipt.count = 50;
    let forged = receipt.sign(&SignKey::generate(&mut rand::rng()));
    let entry = LogEntry::new(3, head.time, forged, head.hash);
    db.insert(&entry).await;
    db.close(&mut c, 1).await;

    let (report, _) = audit(&c, &AuditState::default()).await;
    assert_found(&report, ViolationCode::ForgedReceipt, Some(1), Some(3));
    // The forged receipt counts for nothing: still 3 tickets issued, no totals mismatch.
    let single = report
        .keysets
        .iter()
        .find(|k| k.issued_tickets > 0)
        .unwrap();
    assert_eq!(single.issued_tickets, 3);
    assert!(
        !report
            .violations
            .iter()
            .any(|v| v.code == ViolationCode::TotalsMismatch)
    );
    c.cluster.stop().await.unwrap();
}

pub(crate) async fn redeeming_more_than_issued_is_named(c: TestCluster) {
    two_sales(&c).await;
    // A test ledger that records four redemptions of tickets no node issued (as if minted with
    // a stolen key) on top of the three sold.
    let keyset = c
        .cluster
        .cluster
        .manifest
        .keysets
        .iter()
        .find(|k| k.params.product == "single" && k.is_valid_at(ticketing_service::now()))
        .unwrap()
        .id;
    let ledger = ticketing_coordinator::store::open(&c.cluster.settings.coordinator_database_url())
        .await
        .unwrap();
    let now = ticketing_service::now();
    let scans: Vec<ScanRecord> = (0..4u8)
        .map(|i| ScanRecord {
            scan_id: Id16::random(&mut rand::rng()),
            keyset_id: keyset,
            serial: Serial([i; 32]),
            epoch: 1,
            at: now,
            received: now,
            device: 1,
            usage: Usage::Single {
                transfer_seconds: 0,
                window_end: u64::MAX,
            },
            fare: Default::default(),
        })
        .collect();
    ledger.record(Mode::Online, &scans).await.unwrap();

    let (report, _) = audit(&c, &AuditState::default()).await;
    assert_found(&report, ViolationCode::OverRedeemed, None, None);
    let v = report
        .violations
        .iter()
        .find(|v| v.code == ViolationCode::OverRedeemed)
        .unwrap();
    assert_eq!(v.keyset_id, Some(keyset));
    assert!(
        v.detail.contains("4 distinct tickets redeemed, 3 issued"),
        "{}",
        v.detail
    );
    c.cluster.stop().await.unwrap();
}

pub(crate) async fn blame_evidence_names_the_node(mut c: TestCluster) {
    // Node 2 signs with node 3's share under its own identity: valid points, wrong values.
    let cl = c.cluster.cluster.clone();
    let signatory = LocalSignatory::new(
        ShareIndex::new(2).unwrap(),
        cl.nodes[1].identity().unwrap(),
        cl.nodes[2].verified_shares(&cl.manifest).unwrap(),
    );
    let url = c.node_settings[1].node_database_url(2);
    let store = ticketing_node::store::open(&url).await.unwrap();
    let bad = Node::new(cl.manifest.clone(), Box::new(signatory), store, &c.settings);
    c.replace_node(2, bad).await.unwrap();

    let client = c.client();
    let mut evidence = Vec::new();
    for _ in 0..20 {
        let holder = ticketing_crypto::ticket::HolderSecret::generate(&mut rand::rng());
        let p = client
            .buy(
                "single",
                &[holder.public_key()],
                ticketing_protocol::receipt::PaymentMethod::Card {
                    number: "4242424242424242".into(),
                },
                ticketing_service::now(),
                &mut rand::rng(),
            )
            .await
            .unwrap();
        evidence.extend(p.blamed);
        if !evidence.is_empty() {
            break;
        }
    }
    assert!(
        !evidence.is_empty(),
        "node 2 never answered among the first two"
    );
    let doctored = {
        // The same evidence with a partial swapped for another: no longer signed by node 2.
        let mut e = evidence[0].clone();
        e.response.partials[0].0[47] ^= 1;
        e
    };

    let (report, _) = audit_with(
        &c,
        &AuditState::default(),
        vec![evidence[0].clone(), doctored],
    )
    .await;
    assert_found(&report, ViolationCode::MisbehavingNode, Some(2), None);
    assert_eq!(report.evidence.len(), 2);
    assert!(report.evidence[0].upheld);
    assert!(
        !report.evidence[1].upheld,
        "a doctored response must be dismissed"
    );
    assert!(
        report
            .violations
            .iter()
            .all(|v| v.code == ViolationCode::MisbehavingNode && v.node == Some(2)),
        "{}",
        report.render()
    );
    c.cluster.stop().await.unwrap();
}

use crate::common::cluster;

ticketing_service::on_both_databases!(
    cluster(3, 2);
    a_clean_cluster_audits_clean,
    an_edited_log_row_is_named,
    a_dropped_log_row_is_named,
    a_fork_after_a_checkpoint_is_named,
    an_entry_with_a_forged_receipt_is_named,
    redeeming_more_than_issued_is_named,
    blame_evidence_names_the_node,
);
