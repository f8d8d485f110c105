//! The node's storage: the issuance log (which doubles as the set of honoured receipts) and
//! its checkpoints. One trait, one implementation over either database ([`SqlStore`]), one
//! conformance suite (`tests/store.rs`) run on both.

use async_trait::async_trait;
use ticketing_protocol::log::{Checkpoint, LogEntry};
use ticketing_protocol::receipt::SignedReceipt;
use ticketing_protocol::{Digest32, Id16};

mod sql;

pub use sql::SqlStore;

/// Storage failures (shared by every store). None of them means "recorded": the caller
/// answers `unavailable` and the wallet retries with the same receipt.
pub use ticketing_service::db::StoreError;
pub(crate) use ticketing_service::db::{to_i64, to_u64};

/// What recording a receipt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// First use: appended as this entry.
    Fresh(Box<LogEntry>),
    /// The same receipt (same digest) was recorded before at `seq`: a retry; sign again.
    Repeat {
        /// The earlier entry.
        seq: u64,
    },
    /// The receipt id was recorded with another digest: refuse.
    Conflict,
}

/// The node's storage.
#[async_trait]
pub trait NodeStore: Send + Sync + 'static {
    /// Whether the database answers (`/health`).
    async fn ping(&self) -> Result<(), StoreError>;
    /// Atomically: if `receipt` was never recorded, append a log entry for it at the head.
    /// Durable when it returns. Concurrent calls may share one transaction.
    async fn record(&self, receipt: &SignedReceipt, time: u64) -> Result<Recorded, StoreError>;
    /// Transactions that recorded receipts since the store was opened (with the number of
    /// receipts: how well concurrent appends share their commits).
    fn commits(&self) -> u64;
    /// `(seq, digest)` of the entry recording `receipt_id`, if any.
    async fn find(&self, receipt_id: &Id16) -> Result<Option<(u64, Digest32)>, StoreError>;
    /// Entries with `seq > after`, ascending, at most `limit`.
    async fn entries(&self, after: u64, limit: u32) -> Result<Vec<LogEntry>, StoreError>;
    /// `(seq, hash)` of the newest entry; `(0, GENESIS)` when empty.
    async fn head(&self) -> Result<(u64, Digest32), StoreError>;
    /// Keep a signed checkpoint (idempotent per seq).
    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError>;
    /// Stored checkpoints, ascending by seq.
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError>;
}

/// Open the store a database URL names, running its migrations.
pub async fn open(url: &str) -> Result<Box<dyn NodeStore>, StoreError> {
    Ok(Box::new(SqlStore::open(url).await?))
}

pub(crate) fn digest(bytes: &[u8]) -> Result<Digest32, StoreError> {
    bytes
        .try_into()
        .map(Digest32)
        .map_err(|_| StoreError::Corrupt("hash is not 32 bytes".into()))
}

pub(crate) fn entry_from_row(
    seq: i64,
    time: i64,
    receipt: &str,
    prev_hash: &[u8],
    hash: &[u8],
) -> Result<LogEntry, StoreError> {
    Ok(LogEntry {
        seq: to_u64(seq)?,
        time: to_u64(time)?,
        receipt: serde_json::from_str(receipt)
            .map_err(|e| StoreError::Corrupt(format!("receipt of entry {seq}: {e}")))?,
        prev_hash: digest(prev_hash)?,
        hash: digest(hash)?,
    })
}
