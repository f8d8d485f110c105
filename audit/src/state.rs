//! The auditor's memory between runs: the newest checkpoint each node signed at the last clean
//! audit of it. A later log must extend it; a node that rewrites its history is caught even if
//! it re-signs a consistent new chain, and its own signed checkpoint is the proof.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use ticketing_protocol::log::Checkpoint;
use ticketing_protocol::manifest::Manifest;

use crate::AuditError;

/// `--state FILE`: per node index, the checkpoint recorded by the last audit that found that
/// node clean.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditState {
    /// Node index -> checkpoint.
    pub nodes: BTreeMap<u16, Checkpoint>,
    /// The last admin action shown: the next audit shows the ones after it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub admin_actions_seen: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if signature
fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl AuditState {
    /// Read a state file; a missing file is an empty state (the first audit).
    pub fn load(path: &Path) -> Result<Self, AuditError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(AuditError::Io(path.display().to_string(), e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            AuditError::State(format!("{} is not an audit state: {e}", path.display()))
        })
    }

    /// Check that every recorded checkpoint is signed by the node it names under the manifest,
    /// so a corrupted or edited state file cannot make an honest node look guilty.
    pub fn verify(&self, manifest: &Manifest) -> Result<(), AuditError> {
        for (index, cp) in &self.nodes {
            let node = manifest
                .nodes
                .iter()
                .find(|n| n.index.get() == *index)
                .ok_or_else(|| AuditError::State(format!("node {index} is not in the manifest")))?;
            if cp.node != node.index || cp.verify(&node.identity_key).is_err() {
                return Err(AuditError::State(format!(
                    "the checkpoint recorded for node {index} is not signed by that node"
                )));
            }
        }
        Ok(())
    }

    /// Write atomically (a temporary file renamed over the old one).
    pub fn save(&self, path: &Path) -> Result<(), AuditError> {
        let io = |e| AuditError::Io(path.display().to_string(), e);
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| AuditError::State(format!("encode state: {e}")))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}
