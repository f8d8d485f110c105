//! Why an audit could not run at all. Findings about the cluster are not errors: they are
//! [`crate::Violation`]s in the report.

/// The audit could not run.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The state file is unreadable or does not verify.
    #[error("audit state: {0}")]
    State(String),
    /// An evidence file is not blame evidence.
    #[error("evidence: {0}")]
    Evidence(String),
}
