//! Reading the sources over HTTP: the nodes' public logs, the coordinator's redemption counts
//! (an auditor or admin token), the payments service's signed totals.
//!
//! Order matters for the invariants between sources read at different moments: redemptions
//! are read first, then the logs, then the payments totals. Every ticket redeemed before the
//! first read was issued before it, and every receipt logged before the second was paid before
//! the third, so sales going on during the audit never look like violations.

use std::collections::HashMap;
use std::time::Duration;

use ticketing_crypto::keyset::KeysetId;
use ticketing_protocol::audit::ReceiptTotals;
use ticketing_protocol::log::{Checkpoint, LogEntry, LogPage, NodeStatus};
use ticketing_protocol::manifest::{Manifest, NodeInfo};
use ticketing_protocol::redeem::Stats;

use ticketing_client::{ClientError, Http};

use crate::check::NodeLog;

/// Entries asked for per page.
const PAGE: u32 = 5000;
/// Appends racing the last page are re-read at most this many times.
const MAX_CATCH_UP: usize = 10;
/// More entries than this in one log are refused rather than held in memory.
const MAX_ENTRIES: usize = 20_000_000;

/// An HTTP reader of the audit's sources, on the clients' one HTTP layer (so a 5xx, a refusal
/// and an unreachable node are told apart the same way everywhere).
#[derive(Debug, Clone)]
pub struct Fetcher {
    http: Http,
}

impl Fetcher {
    /// A reader whose requests give up after `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, ClientError> {
        Ok(Self {
            http: Http::new(timeout)?,
        })
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        service: &str,
        url: String,
        query: &[(&str, u64)],
        token: Option<&str>,
    ) -> Result<T, ClientError> {
        self.http.get(service, &url, query, token).await
    }

    /// Everything one node serves: its status, its whole log, a fresh checkpoint covering it,
    /// and its stored checkpoints.
    pub async fn node(&self, node: &NodeInfo) -> Result<NodeLog, ClientError> {
        let base = node.url.trim_end_matches('/');
        let service = format!("node {}", node.index);
        let service = service.as_str();
        let invalid = |reason: String| ClientError::Unavailable {
            service: service.to_owned(),
            reason,
        };
        let status: NodeStatus = self
            .get(service, format!("{base}/v1/info"), &[], None)
            .await?;
        // Stored checkpoints first: any checkpoint stored after this read (sales go on) then
        // covers entries the paging below still reads, never entries it has not seen.
        let stored: Vec<Checkpoint> = self
            .get(service, format!("{base}/v1/log/checkpoints"), &[], None)
            .await?;
        let mut entries: Vec<LogEntry> = Vec::new();
        let mut catch_up = 0;
        let head = loop {
            let after = entries.last().map_or(0, |e| e.seq);
            let page: LogPage = self
                .get(
                    service,
                    format!("{base}/v1/log"),
                    &[("after", after), ("limit", u64::from(PAGE))],
                    None,
                )
                .await?;
            // Each page must move forward, or a node could keep the auditor reading forever.
            let mut last = after;
            for e in &page.entries {
                if e.seq <= last {
                    return Err(invalid(format!(
                        "asked for entries after seq {after}, the node served seq {} after {last}",
                        e.seq
                    )));
                }
                last = e.seq;
            }
            let empty = page.entries.is_empty();
            entries.extend(page.entries);
            if entries.len() > MAX_ENTRIES {
                return Err(invalid(format!(
                    "the log has more than {MAX_ENTRIES} entries"
                )));
            }
            if empty {
                if page.checkpoint.seq <= last {
                    break page.checkpoint;
                }
                // An entry was appended between this page's query and its checkpoint.
                catch_up += 1;
                if catch_up > MAX_CATCH_UP {
                    return Err(invalid(format!(
                        "the node signs a head at seq {} but serves no entry after seq {last}",
                        page.checkpoint.seq
                    )));
                }
            }
        };
        Ok(NodeLog {
            status,
            entries,
            head,
            stored,
        })
    }

    /// Every node of the manifest, concurrently, in manifest order.
    pub async fn nodes(&self, manifest: &Manifest) -> Vec<Result<NodeLog, ClientError>> {
        futures::future::join_all(manifest.nodes.iter().map(|n| self.node(n))).await
    }

    /// Distinct tickets redeemed per keyset (`GET /v1/admin/stats` with an auditor token).
    pub async fn redeemed(
        &self,
        manifest: &Manifest,
        token: &str,
    ) -> Result<HashMap<KeysetId, u64>, ClientError> {
        let base = manifest.coordinator.url.trim_end_matches('/');
        let stats: Stats = self
            .get(
                "coordinator",
                format!("{base}/v1/admin/stats"),
                &[],
                Some(token),
            )
            .await?;
        Ok(stats
            .keysets
            .into_iter()
            .map(|k| (k.keyset_id, k.redeemed))
            .collect())
    }

    /// The coordinator's access audit trail after entry `after` (`GET /v1/admin/actions`, an
    /// auditor token), oldest first, every page.
    pub async fn actions(
        &self,
        manifest: &Manifest,
        token: &str,
        mut after: u64,
    ) -> Result<Vec<ticketing_protocol::redeem::AdminAction>, ClientError> {
        let base = manifest.coordinator.url.trim_end_matches('/');
        let mut all = Vec::new();
        loop {
            let page: ticketing_protocol::redeem::AdminActions = self
                .get(
                    "coordinator",
                    format!("{base}/v1/admin/actions"),
                    &[("after", after), ("limit", 1000)],
                    Some(token),
                )
                .await?;
            let Some(last) = page.actions.last().map(|a| a.id) else {
                return Ok(all);
            };
            if last <= after {
                return Ok(all);
            }
            after = last;
            all.extend(page.actions);
        }
    }

    /// The payments service's signed receipt totals.
    pub async fn totals(&self, manifest: &Manifest) -> Result<ReceiptTotals, ClientError> {
        let base = manifest.payments.url.trim_end_matches('/');
        self.get("payments", format!("{base}/v1/audit/totals"), &[], None)
            .await
    }
}
