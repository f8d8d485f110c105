//! Purchases, read from the nodes' public issuance logs over HTTP (the coordinator never
//! depends on the node crate). A receipt becomes one `issued` event once at least t node logs
//! hold it with a payments signature that verifies and the same contents (so the same digest
//! of blinded points): one node alone cannot invent sales, and a node that logged other points
//! for the receipt id is outvoted.
//!
//! Logs are read incrementally (a cursor per node, in memory); an unreachable node is skipped
//! until the next pass. After a restart every log is read again from the start: the events'
//! `receipt_id UNIQUE` makes recording a purchase twice a no-op. Checking the logs' hash chains
//! and checkpoints is the auditor's job.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use ticketing_crypto::keyset::KeysetId;
use ticketing_protocol::Id16;
use ticketing_protocol::keys::VerifyKey;
use ticketing_protocol::log::{LogEntry, LogPage};
use ticketing_protocol::manifest::Manifest;
use ticketing_protocol::receipt::Receipt;
use tokio::sync::Mutex;

use crate::store::{Issuance, Partners, StoreError};

/// Entries asked for per page.
const PAGE: u32 = 5000;

/// What one pass over the node logs did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FollowReport {
    /// Nodes whose log could be read.
    pub nodes_reached: usize,
    /// New `issued` events recorded.
    pub recorded: u64,
    /// Log entries ignored because their receipt signature does not verify.
    pub bad_receipts: u64,
}

#[derive(Debug)]
pub(crate) struct IssuanceFollower {
    http: reqwest::Client,
    /// (share index, base URL) of every node.
    nodes: Vec<(u16, String)>,
    threshold: usize,
    payments_key: VerifyKey,
    /// Keyset -> product name.
    products: HashMap<KeysetId, String>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Next `after` per node.
    cursors: Vec<u64>,
    /// Nodes whose log could not be read at the last pass (said once, not every pass).
    unreachable: HashSet<u16>,
    /// Receipts not recorded yet: per receipt id, each distinct receipt body seen with the
    /// nodes that logged it.
    pending: HashMap<Id16, Pending>,
    /// Receipts seen so far (orders the events of one pass as the logs list them).
    seen: u64,
    /// Receipts recorded (or never attributable: a keyset not in our manifest).
    done: HashSet<Id16>,
}

#[derive(Debug, Default)]
struct Pending {
    /// Position of the first sighting.
    first_seen: u64,
    votes: Vec<Vote>,
}

#[derive(Debug)]
struct Vote {
    receipt: Receipt,
    nodes: BTreeSet<u16>,
}

impl State {
    /// Take in one node's entries; returns how many had a bad receipt signature.
    fn absorb(&mut self, node: u16, entries: &[LogEntry], payments_key: &VerifyKey) -> u64 {
        let mut bad = 0;
        for e in entries {
            let signed = &e.receipt;
            let id = signed.receipt.receipt_id;
            if self.done.contains(&id) {
                continue;
            }
            if signed.verify(payments_key).is_err() {
                bad += 1;
                continue;
            }
            let seen = &mut self.seen;
            let pending = self.pending.entry(id).or_insert_with(|| {
                *seen += 1;
                Pending {
                    first_seen: *seen,
                    votes: Vec::new(),
                }
            });
            let votes = &mut pending.votes;
            match votes
                .iter_mut()
                .find(|v| v.receipt.same_sale(&signed.receipt))
            {
                Some(v) => {
                    v.nodes.insert(node);
                }
                None => votes.push(Vote {
                    receipt: signed.receipt.clone(),
                    nodes: BTreeSet::from([node]),
                }),
            }
        }
        bad
    }

    /// Receipts that t nodes agree on, not recorded yet, in the order they were first seen
    /// (node 1's log order first).
    fn ripe(&self, threshold: usize) -> Vec<Receipt> {
        let mut ripe: Vec<(u64, Receipt)> = self
            .pending
            .values()
            .filter_map(|p| {
                p.votes
                    .iter()
                    .filter(|v| v.nodes.len() >= threshold)
                    .max_by_key(|v| v.nodes.len())
                    .map(|v| (p.first_seen, v.receipt.clone()))
            })
            .collect();
        ripe.sort_by_key(|(first_seen, _)| *first_seen);
        ripe.into_iter().map(|(_, r)| r).collect()
    }

    fn finish(&mut self, id: Id16) {
        self.pending.remove(&id);
        self.done.insert(id);
    }
}

impl IssuanceFollower {
    /// `node_urls`, when not empty, replace the manifest's URLs (in index order): how this
    /// coordinator reaches the nodes from where it runs.
    pub(crate) fn new(manifest: &Manifest, node_urls: &[String], timeout_ms: u64) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(timeout_ms))
            .build()
            .unwrap_or_default();
        Self {
            http,
            nodes: manifest
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let url = node_urls.get(i).unwrap_or(&n.url);
                    (n.index.get(), url.trim_end_matches('/').to_owned())
                })
                .collect(),
            threshold: usize::from(manifest.threshold).max(1),
            payments_key: manifest.payments.key,
            products: manifest
                .keysets
                .iter()
                .map(|k| (k.id, k.params.product.clone()))
                .collect(),
            state: Mutex::new(State {
                cursors: vec![0; manifest.nodes.len()],
                ..State::default()
            }),
        }
    }

    /// Read what is new in every reachable node's log and record every receipt that reached
    /// t logs as an `issued` event at time `now`. A store failure leaves those receipts pending
    /// for the next pass.
    pub(crate) async fn follow(
        &self,
        store: &dyn Partners,
        now: u64,
    ) -> Result<FollowReport, StoreError> {
        let mut state = self.state.lock().await;
        let mut report = FollowReport::default();
        for (i, (index, url)) in self.nodes.iter().enumerate() {
            let mut after = state.cursors.get(i).copied().unwrap_or(0);
            let mut ok = false;
            loop {
                let page = self
                    .http
                    .get(format!("{url}/v1/log"))
                    .query(&[("after", after), ("limit", u64::from(PAGE))])
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status);
                let Ok(page) = page else { break };
                let Ok(page) = page.json::<LogPage>().await else {
                    break;
                };
                ok = true;
                let Some(last) = page.entries.last().map(|e| e.seq) else {
                    break;
                };
                if last <= after {
                    // A node answering entries it was not asked for: stop, try next pass.
                    break;
                }
                report.bad_receipts += state.absorb(*index, &page.entries, &self.payments_key);
                after = last;
                if let Some(c) = state.cursors.get_mut(i) {
                    *c = after;
                }
            }
            let node = *index;
            if ok {
                report.nodes_reached += 1;
                if state.unreachable.remove(&node) {
                    tracing::info!(node, "node log readable again");
                }
            } else if state.unreachable.insert(node) {
                tracing::warn!(
                    node,
                    "node log could not be read; purchases it logged become issued events \
                     once t logs are read"
                );
            }
        }
        if report.bad_receipts > 0 {
            tracing::warn!(
                entries = report.bad_receipts,
                "node log entries with an invalid receipt signature ignored"
            );
        }
        let ripe = state.ripe(self.threshold);
        let mut issuances = Vec::with_capacity(ripe.len());
        for r in &ripe {
            match self.products.get(&r.keyset_id) {
                Some(product) => issuances.push(Issuance {
                    receipt_id: r.receipt_id,
                    keyset_id: r.keyset_id,
                    product: product.clone(),
                    tickets: r.count,
                    amount: r.amount,
                    currency: r.currency.clone(),
                    at: now,
                }),
                None => tracing::warn!(
                    keyset = %r.keyset_id,
                    "a logged receipt names a keyset not in the coordinator's manifest"
                ),
            }
        }
        report.recorded = store.record_issuances(&issuances).await?;
        for r in &ripe {
            state.finish(r.receipt_id);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use ticketing_protocol::Digest32;
    use ticketing_protocol::keys::SignKey;
    use ticketing_protocol::log::GENESIS;

    use super::*;

    fn receipt(id: u8, digest: u8) -> Receipt {
        Receipt {
            receipt_id: Id16([id; 16]),
            keyset_id: KeysetId([1; 8]),
            count: 2,
            digest: Digest32([digest; 32]),
            amount: 500,
            currency: "EUR".into(),
            issued_at: 10,
            expires_at: 20,
        }
    }

    fn entry(r: Receipt, key: &SignKey) -> LogEntry {
        LogEntry::new(1, 10, r.sign(key), GENESIS)
    }

    #[test]
    fn a_receipt_counts_once_t_nodes_agree_on_it() {
        let mut rng = rand::rng();
        let key = SignKey::generate(&mut rng);
        let forger = SignKey::generate(&mut rng);
        let pk = key.verify_key();
        let mut s = State::default();
        // Node 1 logs receipt 1; node 1 again (a repeat) does not make it two nodes.
        assert_eq!(s.absorb(1, &[entry(receipt(1, 1), &key)], &pk), 0);
        assert_eq!(s.absorb(1, &[entry(receipt(1, 1), &key)], &pk), 0);
        assert!(s.ripe(2).is_empty());
        // Node 2 logs the same id with another digest: no agreement yet.
        s.absorb(2, &[entry(receipt(1, 2), &key)], &pk);
        assert!(s.ripe(2).is_empty());
        // A forged receipt signature is ignored and counted.
        assert_eq!(s.absorb(3, &[entry(receipt(1, 1), &forger)], &pk), 1);
        assert!(s.ripe(2).is_empty());
        // Node 3 agrees with node 1: ripe, with node 1's digest.
        s.absorb(3, &[entry(receipt(1, 1), &key)], &pk);
        let ripe = s.ripe(2);
        assert_eq!(ripe, vec![receipt(1, 1)]);
        // Once recorded it is never offered again, even if more nodes log it.
        s.finish(ripe[0].receipt_id);
        s.absorb(2, &[entry(receipt(1, 1), &key)], &pk);
        assert!(s.ripe(2).is_empty());
    }

    #[test]
    fn a_renewed_receipt_is_the_same_sale() {
        // Node 1 logged the original; after it expired, payments renewed it (new expiry, new
        // signature) and node 2 logged the renewal. Two nodes hold the sale: it is issued.
        let key = SignKey::generate(&mut rand::rng());
        let pk = key.verify_key();
        let mut s = State::default();
        s.absorb(1, &[entry(receipt(4, 4), &key)], &pk);
        let mut renewed = receipt(4, 4);
        renewed.expires_at += 600;
        s.absorb(2, &[entry(renewed, &key)], &pk);
        assert_eq!(s.ripe(2).len(), 1);
    }

    #[test]
    fn ripe_receipts_come_in_the_order_first_seen() {
        let key = SignKey::generate(&mut rand::rng());
        let pk = key.verify_key();
        let mut s = State::default();
        let ids = [9u8, 3, 7, 1, 5];
        let entries: Vec<_> = ids.iter().map(|&i| entry(receipt(i, i), &key)).collect();
        s.absorb(1, &entries, &pk);
        let mut reversed = entries.clone();
        reversed.reverse();
        s.absorb(2, &reversed, &pk);
        let ripe: Vec<u8> = s.ripe(2).iter().map(|r| r.receipt_id.0[0]).collect();
        assert_eq!(ripe, ids);
    }
}
