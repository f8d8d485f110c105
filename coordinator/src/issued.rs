//! How many tickets were issued per keyset, read from the nodes' public issuance logs over
//! HTTP (the coordinator never depends on the node crate): a receipt counts once it appears in
//! the logs of at least t nodes. Logs are read incrementally (a cursor per node); an unreachable
//! node is skipped until the next refresh. Verifying the logs is the auditor's job.

use std::collections::HashMap;
use std::time::Duration;

use ticketing_crypto::keyset::KeysetId;
use ticketing_protocol::Id16;
use ticketing_protocol::log::LogPage;
use ticketing_protocol::manifest::Manifest;
use tokio::sync::Mutex;

/// Entries asked for per page.
const PAGE: u32 = 5000;

#[derive(Debug)]
pub(crate) struct IssuedCounter {
    http: reqwest::Client,
    nodes: Vec<String>,
    threshold: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Next `after` per node.
    cursors: Vec<u64>,
    /// Per receipt: keyset, ticket count, how many node logs hold it.
    receipts: HashMap<Id16, (KeysetId, u32, usize)>,
}

impl IssuedCounter {
    pub(crate) fn new(manifest: &Manifest, timeout_ms: u64) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(timeout_ms))
            .build()
            .unwrap_or_default();
        Self {
            http,
            nodes: manifest.nodes.iter().map(|n| n.url.clone()).collect(),
            threshold: usize::from(manifest.threshold),
            state: Mutex::new(State {
                cursors: vec![0; manifest.nodes.len()],
                receipts: HashMap::new(),
            }),
        }
    }

    /// Read what is new in every reachable node's log; tickets issued per keyset, or `None`
    /// when no node could be read at all.
    pub(crate) async fn refresh(&self) -> Option<HashMap<KeysetId, u64>> {
        let mut state = self.state.lock().await;
        let mut reached = 0;
        for (i, url) in self.nodes.iter().enumerate() {
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
                for e in &page.entries {
                    let r = &e.receipt.receipt;
                    state
                        .receipts
                        .entry(r.receipt_id)
                        .or_insert((r.keyset_id, r.count, 0))
                        .2 += 1;
                }
                after = last;
                if let Some(c) = state.cursors.get_mut(i) {
                    *c = after;
                }
            }
            if ok {
                reached += 1;
            }
        }
        if reached == 0 {
            return None;
        }
        let mut issued = HashMap::new();
        for (keyset, count, nodes) in state.receipts.values() {
            if *nodes >= self.threshold {
                *issued.entry(*keyset).or_insert(0) += u64::from(*count);
            }
        }
        Some(issued)
    }
}
