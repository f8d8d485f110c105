//! The auditor (`ticketing audit`): reads what the cluster publishes and checks that it adds
//! up, trusting nothing but the manifest and its own memory of earlier checkpoints.
//!
//! - Every node's issuance log: the hash chain, every checkpoint's signature and its match
//!   with the log, that the log still extends the checkpoint recorded by the previous audit
//!   ([`AuditState`]), that every entry carries a receipt signed by the payments key.
//! - Across nodes: the same receipt id has the same contents everywhere.
//! - Per keyset: distinct tickets redeemed (coordinator) <= tickets issued (receipts logged by
//!   at least t nodes); what the nodes logged <= what the payments service signed.
//! - Blame evidence from wallets ([`Blame`]): a node's own signed wrong answer.
//!
//! Everything is read over HTTP ([`Fetcher`]); the checks are a pure function
//! ([`check::audit`]) of what was read. Findings are [`Violation`]s with stable codes, never
//! errors: [`AuditError`] means the audit could not run at all.

pub mod check;
mod error;
pub mod fetch;
pub mod report;
mod state;

use std::path::Path;
use std::time::Duration;

pub use check::{Inputs, NodeLog};
pub use error::AuditError;
pub use fetch::Fetcher;
pub use report::{Report, Violation, ViolationCode};
pub use state::AuditState;
use ticketing_protocol::issue::Blame;
use ticketing_protocol::manifest::Manifest;

/// How to run an audit.
#[derive(Clone, Default)]
pub struct Options {
    /// An auditor (or admin) token for the coordinator's redemption counts.
    pub coordinator_token: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Blame evidence to check.
    pub evidence: Vec<Blame>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field(
                "coordinator_token",
                &self.coordinator_token.as_ref().map(|_| "<redacted>"),
            )
            .field("timeout", &self.timeout)
            .field("evidence", &self.evidence.len())
            .finish()
    }
}

/// The reason given when no coordinator token was passed (the redemption counts need one;
/// how to get one is the caller's to say).
pub const NO_TOKEN: &str = "no coordinator token was given";

/// Read every source and check it against `previous` (verified first: a state file that is
/// not signed by the nodes it names is refused). Returns the report and the state to keep.
pub async fn run(
    manifest: &Manifest,
    options: &Options,
    previous: &AuditState,
    now: u64,
) -> Result<(Report, AuditState), AuditError> {
    previous.verify(manifest)?;
    let fetcher = Fetcher::new(options.timeout)
        .map_err(|e| AuditError::State(format!("HTTP client: {e}")))?;
    // Redemptions, then logs, then payments (see `fetch`): a sale during the audit cannot
    // look like a violation.
    let redeemed = match options.coordinator_token.as_deref() {
        Some(token) => fetcher
            .redeemed(manifest, token)
            .await
            .map_err(|e| e.to_string()),
        None => Err(NO_TOKEN.to_owned()),
    };
    let nodes = fetcher
        .nodes(manifest)
        .await
        .into_iter()
        .map(|r| r.map_err(|e| e.to_string()))
        .collect();
    let totals = fetcher.totals(manifest).await.map_err(|e| e.to_string());
    let inputs = Inputs {
        nodes,
        redeemed,
        totals,
        evidence: options.evidence.clone(),
    };
    let (mut report, mut next) = check::audit(manifest, &inputs, previous, now);
    next.admin_actions_seen = previous.admin_actions_seen;
    if let Some(token) = options.coordinator_token.as_deref() {
        // The trail since the last audit is shown, not judged (a coordinator that cannot be
        // read was reported with the counts).
        if let Ok(actions) = fetcher
            .actions(manifest, token, previous.admin_actions_seen)
            .await
        {
            if let Some(last) = actions.last() {
                next.admin_actions_seen = last.id;
            }
            report.admin_actions = actions;
        }
    }
    Ok((report, next))
}

/// Read blame evidence: a JSON array of [`Blame`] (what `ticketing wallet evidence` prints) or
/// a single one.
pub fn read_evidence(path: &Path) -> Result<Vec<Blame>, AuditError> {
    let bytes = std::fs::read(path).map_err(|e| AuditError::Io(path.display().to_string(), e))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| AuditError::Evidence(format!("{} is not JSON: {e}", path.display())))?;
    let parsed = if value.is_array() {
        serde_json::from_value(value)
    } else {
        serde_json::from_value(value).map(|b| vec![b])
    };
    parsed.map_err(|e| {
        AuditError::Evidence(format!(
            "{} is not blame evidence (a node's signed response and the points): {e}",
            path.display()
        ))
    })
}
