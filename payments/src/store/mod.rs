//! Storage of the payments service, split by concern and written once over either database
//! (`ticketing_service::db`; migrations under `payments/migrations/<backend>/`):
//!
//! - [`Vouchers`]: the hashes of cash voucher codes (the codes themselves are not kept), added
//!   in batches, voided, burned by a checkout;
//! - [`Receipts`]: one row per digest of blinded points, a card payment's reservation or the
//!   signed receipt, and the totals auditors read.
//!
//! [`SqlStore`] implements both on SQLite and on Postgres; [`PaymentsStore`] is the pair, as
//! the service holds it. One conformance suite (`payments/tests/store.rs`) runs on both
//! databases.
//!
//! The SQL sticks to what both dialects read the same way: `used = TRUE` / `NOT used` on the
//! SQLite `INTEGER CHECK (used IN (0, 1))` column is `used = 1` / `used = 0`, and
//! `CAST(.. AS BIGINT)` keeps Postgres' `SUM(bigint)` (a `numeric`) an `i64` and is a no-op on
//! SQLite's integer sums.
//!
//! SQLite (WAL, `synchronous = FULL`): every statement is atomic on its own and SQLite has one
//! writer at a time, so the upserts and compare-and-swap UPDATEs need no explicit transaction;
//! the transactions (voucher checkout, adding vouchers) take the write lock up front
//! (`BEGIN IMMEDIATE`).
//!
//! Postgres: read committed is enough: an upsert on a digest waits for a concurrent writer of
//! the same digest and then either inserts or returns the committed row (Postgres guarantees one
//! of the two for `ON CONFLICT DO UPDATE`, never an error or nothing); the compare-and-swap
//! UPDATEs re-check their condition on the newest row version after waiting; and the voucher
//! UPDATE waits on a concurrent burn and then re-checks `used = false`, so of several checkouts
//! with one voucher exactly one flips it.

use std::sync::Arc;

use async_trait::async_trait;
use ticketing_service::db::{Database, Migrations, StoreError, backend_of, query};

use crate::PaymentsError;

mod receipts;
mod vouchers;

pub use receipts::{CheckoutOutcome, KeysetTotals, PendingReceipt, Receipts, Reservation, Stored};
pub use vouchers::{NewVoucher, VoucherInfo, VoucherPayment, VoucherRow, Vouchers};

static MIGRATIONS: Migrations = Migrations {
    sqlite: &sqlx::migrate!("./migrations/sqlite"),
    postgres: &sqlx::migrate!("./migrations/postgres"),
};

/// The payments service's storage: its vouchers and its receipts, and whether the database
/// answers.
#[async_trait]
pub trait PaymentsStore: Vouchers + Receipts + std::fmt::Debug {
    /// Whether the database answers (`/health`).
    async fn ping(&self) -> Result<(), PaymentsError>;
}

/// Payments storage on SQLite or Postgres.
#[derive(Debug, Clone)]
pub struct SqlStore {
    db: Database,
}

impl SqlStore {
    /// Open (creating a SQLite file if needed) the database at `url` and apply the migrations.
    pub async fn open(url: &str) -> Result<Self, PaymentsError> {
        Ok(Self {
            db: Database::open(url, &MIGRATIONS).await?,
        })
    }
}

#[async_trait]
impl PaymentsStore for SqlStore {
    async fn ping(&self) -> Result<(), PaymentsError> {
        query("SELECT 1").execute(&self.db).await?;
        Ok(())
    }
}

/// Open the store a database URL names (`sqlite:...` or `postgres://...`) and apply its
/// migrations.
pub async fn open_store(url: &str) -> Result<Arc<dyn PaymentsStore>, PaymentsError> {
    match backend_of(url) {
        Some(_) => Ok(Arc::new(SqlStore::open(url).await?)),
        None => Err(PaymentsError::UnsupportedDatabase),
    }
}

/// A stored column that does not read back as what it holds.
fn corrupt(what: &str) -> PaymentsError {
    StoreError::Corrupt(format!("stored {what}")).into()
}

/// A bytes column of fixed length.
fn array<const N: usize>(v: &[u8], what: &str) -> Result<[u8; N], PaymentsError> {
    v.try_into().map_err(|_| corrupt(what))
}
