//! The coordinator's storage, split by concern, each a trait with its rules written once over
//! `ticketing_service::db` (SQLite and Postgres differ in their migrations and in the two
//! places [`ledger`] names):
//!
//! - [`Ledger`]: the spent ledger, scans with their answers, the deny list, the filter's
//!   members, pruning and counts;
//! - [`Partners`]: the partner feed (events), partners and their webhooks' delivery state;
//! - [`Devices`]: validator and admin tokens, and the access audit trail;
//! - [`Publications`]: published snapshots, the steps deltas are built from, and leases.
//!
//! [`SqlStore`] implements all four; [`Store`] is the four together, what the service holds.
//! One conformance suite (`tests/store.rs`) runs on both databases.
//!
//! Ledger rules live here because they are constraints: a single ticket's first use is a
//! primary key, a (serial, epoch) is a primary key, a scan id is a primary key. A batch of
//! scans is one transaction; an answer leaves this module only after its commit.
//!
//! A serial entering the deny list writes its `revoked` event (product, price, no serial) in
//! the same transaction, only when the deny row is new; a purchase's `issued` event is unique
//! on its receipt id. Event ids are the feed's cursor and become visible in increasing order
//! (SQLite: one writer; Postgres: event writers take an advisory lock held to their commit).
//!
//! SQLite has one writer at a time: its write transactions start `IMMEDIATE` (the write lock
//! is taken up front, so a transaction never fails half-way on a lock upgrade) and writers
//! queue on an in-process mutex instead of spinning on the busy timeout. Postgres runs
//! transactions concurrently under READ COMMITTED; `INSERT .. ON CONFLICT DO NOTHING` waits for
//! a concurrent inserter of the same key and then sees its row, and a deadlock between two
//! batches is retried.

use std::sync::Arc;

use ticketing_crypto::keyset::KeysetId;
use ticketing_crypto::ticket::Serial;
use ticketing_protocol::Id16;
use ticketing_protocol::redeem::DenyReason;
use ticketing_service::db::{Database, Migrations};
use tokio::sync::{Mutex, MutexGuard};

mod devices;
mod ledger;
mod partners;
mod publications;

pub use devices::{Device, DeviceInfo, Devices, Role};
pub use ledger::{
    Fare, FlagCounts, Ledger, LedgerCounts, Mode, Outcome, Retry, ScanRecord, Usage, repeat_outcome,
};
pub use partners::{Issuance, Partner, Partners, Webhook};
pub use publications::{PublicationStep, Publications};

/// Storage failures (shared by every store). None of them means "recorded": the caller
/// answers `unavailable`, except [`StoreError::Taken`]: a live device token of that name
/// exists (nothing was changed), answered `name_taken`.
pub use ticketing_service::db::StoreError;
pub(crate) use ticketing_service::db::{to_i64, to_u64};

/// Everything the coordinator stores: the four concerns over one database.
pub trait Store: Ledger + Partners + Devices + Publications {}

impl<T: Ledger + Partners + Devices + Publications> Store for T {}

static MIGRATIONS: Migrations = Migrations {
    sqlite: &sqlx::migrate!("./migrations/sqlite"),
    postgres: &sqlx::migrate!("./migrations/postgres"),
};

/// The coordinator's store on SQLite (the embedded default) or Postgres.
#[derive(Debug, Clone)]
pub struct SqlStore {
    db: Database,
    /// Serializes this process's write transactions (SQLite only).
    writer: Arc<Mutex<()>>,
}

impl SqlStore {
    /// Connect (creating a SQLite file if needed) and migrate.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            db: Database::open(url, &MIGRATIONS).await?,
            writer: Arc::new(Mutex::new(())),
        })
    }

    /// The database, for tests that inspect rows.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Held by every write on a database with one writer at a time (SQLite).
    async fn write_guard(&self) -> Option<MutexGuard<'_, ()>> {
        if self.db.dialect().one_writer {
            Some(self.writer.lock().await)
        } else {
            None
        }
    }
}

/// Open the store a database URL names, running its migrations.
pub async fn open(url: &str) -> Result<Box<dyn Store>, StoreError> {
    Ok(Box::new(SqlStore::open(url).await?))
}

pub(crate) fn serial_of(bytes: &[u8]) -> Result<Serial, StoreError> {
    bytes
        .try_into()
        .map(Serial)
        .map_err(|_| StoreError::Corrupt("serial is not 32 bytes".into()))
}

pub(crate) fn id16_of(bytes: &[u8]) -> Result<Id16, StoreError> {
    bytes
        .try_into()
        .map(Id16)
        .map_err(|_| StoreError::Corrupt("id is not 16 bytes".into()))
}

pub(crate) fn keyset_of(bytes: &[u8]) -> Result<KeysetId, StoreError> {
    bytes
        .try_into()
        .map(KeysetId)
        .map_err(|_| StoreError::Corrupt("keyset id is not 8 bytes".into()))
}

pub(crate) fn reason_str(r: DenyReason) -> &'static str {
    match r {
        DenyReason::Revoked => "revoked",
        DenyReason::Duplicate => "duplicate",
    }
}

pub(crate) fn parse_reason(s: &str) -> Result<DenyReason, StoreError> {
    match s {
        "revoked" => Ok(DenyReason::Revoked),
        "duplicate" => Ok(DenyReason::Duplicate),
        other => Err(StoreError::Corrupt(format!(
            "unknown deny reason {other:?}"
        ))),
    }
}
