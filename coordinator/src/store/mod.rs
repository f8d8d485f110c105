//! The coordinator's storage: the spent ledger, scans with their answers, the deny list,
//! device tokens and published snapshots. One trait, a SQLite and a Postgres backend generated
//! from one definition (`backends.rs`), one conformance suite (`tests/store.rs`) run on both.
//!
//! Ledger rules live here because they are constraints: a single ticket's first use is a
//! primary key, a (serial, epoch) is a primary key, a scan id is a primary key. A batch of
//! scans is one transaction; an answer leaves this module only after its commit.

use async_trait::async_trait;
use ticketing_crypto::keyset::KeysetId;
use ticketing_crypto::ticket::Serial;
use ticketing_protocol::redeem::{DenyEntry, DenyReason, SyncStatus, Verdict};
use ticketing_protocol::{Id16, ProtocolError};

mod backends;

pub use backends::{PostgresStore, SqliteStore};

/// Storage failures. None of them means "recorded": the caller answers `unavailable`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused the operation.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row does not decode (tampering or a bug): reported, never papered over.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl From<ProtocolError> for StoreError {
    fn from(e: ProtocolError) -> Self {
        Self::Corrupt(e.to_string())
    }
}

/// How a product is used, as the ledger needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// Spent at the first scan; valid `transfer_seconds` more after it.
    Single {
        /// Transfer window (0: none).
        transfer_seconds: u64,
    },
    /// Valid until the keyset's window ends; each (serial, epoch) once.
    Pass {
        /// The keyset window's end.
        valid_until: u64,
    },
}

/// A scan that passed every cryptographic check, ready for the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanRecord {
    /// Validator-chosen id.
    pub scan_id: Id16,
    /// Keyset of the ticket.
    pub keyset_id: KeysetId,
    /// The ticket's serial.
    pub serial: Serial,
    /// The presentation's epoch.
    pub epoch: u32,
    /// When it counts: the coordinator's clock online, the validator's scan time offline.
    pub at: u64,
    /// The device that scanned.
    pub device: i64,
    /// Single or pass.
    pub usage: Usage,
}

/// Online redemption or offline sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `POST /v1/redeem`: the validator waits for the verdict.
    Online,
    /// `POST /v1/sync`: the validator already let the passenger through.
    Offline {
        /// Scans of one pass by different devices closer than this are suspected sharing.
        sharing_window: u64,
    },
}

/// What the ledger made of one scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Online verdict (repeated verbatim for a retried scan id).
    Online(Verdict),
    /// Sync status (`AlreadySynced` for a scan id seen before).
    Offline(SyncStatus),
}

/// A validator device or an admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Row id (recorded with each scan).
    pub id: i64,
    /// Name given at registration, e.g. `laptop-01`.
    pub name: String,
    /// What the token may do.
    pub role: Role,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Redeem and sync.
    Validator,
    /// Everything, including revocation and stats.
    Admin,
}

impl Role {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Validator => "validator",
            Self::Admin => "admin",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "validator" => Ok(Self::Validator),
            "admin" => Ok(Self::Admin),
            other => Err(StoreError::Corrupt(format!("unknown role {other:?}"))),
        }
    }
}

/// Per-keyset counts for the stats endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerCounts {
    /// Distinct serials with an accepted scan.
    pub redeemed: u64,
    /// Accepted scans.
    pub scans: u64,
    /// Denied serials.
    pub denied: u64,
}

/// Flag counts for the stats endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlagCounts {
    /// Scans flagged as suspected sharing.
    pub suspected_sharing: u64,
    /// Scans recorded as duplicates.
    pub duplicates: u64,
}

/// The coordinator's storage.
#[async_trait]
pub trait LedgerStore: Send + Sync + 'static {
    /// Apply the ledger rules to `scans` in one transaction; one outcome per scan, in order.
    async fn record(&self, mode: Mode, scans: &[ScanRecord]) -> Result<Vec<Outcome>, StoreError>;
    /// Whether scan `scan_id` is in the ledger, and if so whether it was accepted.
    async fn scan_accepted(&self, scan_id: &Id16) -> Result<Option<bool>, StoreError>;
    /// Put a serial on the deny list (idempotent; the first reason stays).
    async fn deny(
        &self,
        keyset_id: &KeysetId,
        serial: &Serial,
        reason: DenyReason,
        now: u64,
    ) -> Result<(), StoreError>;
    /// The deny list.
    async fn deny_list(&self) -> Result<Vec<DenyEntry>, StoreError>;
    /// Singles of `keysets` whose use (first scan + transfer window) ended at or before `now`.
    async fn spent(&self, keysets: &[KeysetId], now: u64) -> Result<Vec<Serial>, StoreError>;
    /// Delete every row of `keysets` (expired); returns the number of rows deleted.
    async fn prune(&self, keysets: &[KeysetId]) -> Result<u64, StoreError>;
    /// Counts for one keyset.
    async fn counts(&self, keyset_id: &KeysetId) -> Result<LedgerCounts, StoreError>;
    /// Flag counts over the whole ledger.
    async fn flags(&self) -> Result<FlagCounts, StoreError>;
    /// Register a token (by its hash).
    async fn add_device(
        &self,
        token_hash: &[u8; 32],
        name: &str,
        role: Role,
        now: u64,
    ) -> Result<Device, StoreError>;
    /// The device a token hash belongs to.
    async fn device(&self, token_hash: &[u8; 32]) -> Result<Option<Device>, StoreError>;
    /// Keep a published snapshot (JSON) under its version.
    async fn save_publication(&self, version: u64, body: &str) -> Result<(), StoreError>;
    /// The newest published snapshot.
    async fn latest_publication(&self) -> Result<Option<(u64, String)>, StoreError>;
}

/// Open the store a database URL names, running its migrations.
pub async fn open(url: &str) -> Result<Box<dyn LedgerStore>, StoreError> {
    match ticketing_service::db::backend_of(url) {
        Some(ticketing_service::db::Backend::Postgres) => {
            Ok(Box::new(PostgresStore::open(url).await?))
        }
        _ => Ok(Box::new(SqliteStore::open(url).await?)),
    }
}

pub(crate) fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{v} does not fit the database")))
}

pub(crate) fn to_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative value {v}")))
}

pub(crate) fn serial_of(bytes: &[u8]) -> Result<Serial, StoreError> {
    bytes
        .try_into()
        .map(Serial)
        .map_err(|_| StoreError::Corrupt("serial is not 32 bytes".into()))
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

/// Stored answers are JSON of the wire types.
pub(crate) fn encode_outcome(o: &Outcome) -> Result<String, StoreError> {
    match o {
        Outcome::Online(v) => serde_json::to_string(v),
        Outcome::Offline(s) => serde_json::to_string(s),
    }
    .map_err(|e| StoreError::Corrupt(format!("encode outcome: {e}")))
}

/// The answer to a scan id seen before: the stored verdict online; `AlreadySynced` offline
/// (whatever the first answer was, nothing changes).
pub(crate) fn repeat_outcome(mode: Mode, stored: &str) -> Result<Outcome, StoreError> {
    match mode {
        Mode::Offline { .. } => Ok(Outcome::Offline(SyncStatus::AlreadySynced)),
        Mode::Online => match serde_json::from_str::<Verdict>(stored) {
            Ok(v) => Ok(Outcome::Online(v)),
            // First seen through sync: it was accepted offline; online it is now spent.
            Err(_) => match serde_json::from_str::<SyncStatus>(stored) {
                Ok(_) => Ok(Outcome::Online(Verdict::Rejected {
                    code: ticketing_protocol::ErrorCode::Spent,
                })),
                Err(e) => Err(StoreError::Corrupt(format!("stored outcome: {e}"))),
            },
        },
    }
}
