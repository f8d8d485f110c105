//! Storage: voucher hashes and signed receipts, behind [`PaymentsStore`] with a SQLite and a
//! Postgres backend (sqlx, migrations under `payments/migrations/<backend>/`). One conformance
//! suite (`payments/tests/store.rs`) runs against both.
//!
//! Checkout is one transaction that writes first: insert the receipt (`ON CONFLICT (digest) DO
//! NOTHING`), then, for a voucher, a conditional `UPDATE ... WHERE used = false`. A digest that
//! is already there returns the stored receipt (idempotent retries); a voucher that the UPDATE
//! did not flip rolls everything back. Never check-then-insert.

use std::sync::Arc;

use async_trait::async_trait;
use ticketing_crypto::keyset::KeysetId;
use ticketing_protocol::keys::Sig;
use ticketing_protocol::receipt::{Receipt, SignedReceipt};
use ticketing_protocol::{Digest32, Id16};
use ticketing_service::db::{Backend, backend_of};

use crate::PaymentsError;

mod postgres;
mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// A voucher to store: the hash of its code and the product it pays for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVoucher {
    /// [`ticketing_protocol::voucher::VoucherCode::hash`].
    pub hash: Digest32,
    /// Product name (checked against the manifest by the caller).
    pub product: String,
}

/// A voucher that pays for a checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoucherPayment {
    /// Hash of the code.
    pub hash: Digest32,
    /// The product being bought; the voucher must be for it.
    pub product: String,
}

/// A stored voucher's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoucherInfo {
    /// The product it pays for.
    pub product: String,
    /// Whether it was used.
    pub used: bool,
}

/// What [`PaymentsStore::checkout`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckoutOutcome {
    /// The receipt was stored (and the voucher, if any, burned).
    Issued(SignedReceipt),
    /// A receipt for the same digest already existed; it is returned unchanged and nothing
    /// else happened (no voucher burned).
    Existing(SignedReceipt),
}

impl CheckoutOutcome {
    /// The receipt either way.
    pub fn receipt(&self) -> &SignedReceipt {
        match self {
            Self::Issued(r) | Self::Existing(r) => r,
        }
    }
}

/// Receipt totals of one keyset, for audits (issued tickets must not exceed paid tickets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeysetTotals {
    /// The keyset.
    pub keyset_id: KeysetId,
    /// Number of receipts.
    pub receipts: u64,
    /// Sum of their ticket counts.
    pub tickets: u64,
    /// Sum of their amounts (minor units; a keyset has one product, so one currency).
    pub amount: u64,
}

/// The payments service's storage.
#[async_trait]
pub trait PaymentsStore: Send + Sync + std::fmt::Debug {
    /// Store new vouchers, all or none. A hash that already exists fails the whole batch with
    /// [`PaymentsError::DuplicateVoucher`].
    async fn add_vouchers(&self, vouchers: &[NewVoucher]) -> Result<(), PaymentsError>;

    /// A stored voucher's product and state.
    async fn voucher(&self, hash: &Digest32) -> Result<Option<VoucherInfo>, PaymentsError>;

    /// The receipt stored for `digest`, if any.
    async fn receipt_by_digest(
        &self,
        digest: &Digest32,
    ) -> Result<Option<SignedReceipt>, PaymentsError>;

    /// Atomically: if a receipt for `receipt`'s digest exists, return it
    /// ([`CheckoutOutcome::Existing`]); otherwise burn `voucher` (if given: it must exist, be
    /// for its product and unused, else [`PaymentsError::UnknownVoucher`],
    /// [`PaymentsError::VoucherWrongProduct`] or [`PaymentsError::VoucherUsed`] and nothing is
    /// stored) and store `receipt` ([`CheckoutOutcome::Issued`]).
    async fn checkout(
        &self,
        receipt: &SignedReceipt,
        voucher: Option<&VoucherPayment>,
    ) -> Result<CheckoutOutcome, PaymentsError>;

    /// Receipt totals per keyset, ordered by keyset id.
    async fn totals(&self) -> Result<Vec<KeysetTotals>, PaymentsError>;
}

/// Open the store a database URL names (`sqlite:...` or `postgres://...`) and apply its
/// migrations.
pub async fn open_store(url: &str) -> Result<Arc<dyn PaymentsStore>, PaymentsError> {
    match backend_of(url) {
        Some(Backend::Sqlite) => Ok(Arc::new(SqliteStore::open(url).await?)),
        Some(Backend::Postgres) => Ok(Arc::new(PostgresStore::open(url).await?)),
        None => Err(PaymentsError::UnsupportedDatabase),
    }
}

/// A receipt as both backends store it: receipt_id, keyset_id, count, digest, amount,
/// currency, issued_at, expires_at, signature.
type ReceiptRow = (
    Vec<u8>,
    Vec<u8>,
    i64,
    Vec<u8>,
    i64,
    String,
    i64,
    i64,
    Vec<u8>,
);

/// Column list matching [`ReceiptRow`].
const RECEIPT_COLUMNS: &str =
    "receipt_id, keyset_id, count, digest, amount, currency, issued_at, expires_at, signature";

fn to_i64(v: u64, what: &'static str) -> Result<i64, PaymentsError> {
    i64::try_from(v).map_err(|_| PaymentsError::Malformed(format!("{what} is too large")))
}

fn to_u64(v: i64, what: &'static str) -> Result<u64, PaymentsError> {
    u64::try_from(v).map_err(|_| PaymentsError::Corrupt(what))
}

fn array<const N: usize>(v: &[u8], what: &'static str) -> Result<[u8; N], PaymentsError> {
    v.try_into().map_err(|_| PaymentsError::Corrupt(what))
}

/// The values to bind for a receipt, in [`RECEIPT_COLUMNS`] order.
fn receipt_row(r: &SignedReceipt) -> Result<ReceiptRow, PaymentsError> {
    let b = &r.receipt;
    Ok((
        b.receipt_id.0.to_vec(),
        b.keyset_id.0.to_vec(),
        i64::from(b.count),
        b.digest.0.to_vec(),
        to_i64(b.amount, "amount")?,
        b.currency.clone(),
        to_i64(b.issued_at, "issued_at")?,
        to_i64(b.expires_at, "expires_at")?,
        r.signature.0.to_vec(),
    ))
}

fn receipt_from_row(row: ReceiptRow) -> Result<SignedReceipt, PaymentsError> {
    let (receipt_id, keyset_id, count, digest, amount, currency, issued_at, expires_at, sig) = row;
    Ok(SignedReceipt {
        receipt: Receipt {
            receipt_id: Id16(array(&receipt_id, "receipt id")?),
            keyset_id: KeysetId(array(&keyset_id, "keyset id")?),
            count: u32::try_from(count).map_err(|_| PaymentsError::Corrupt("count"))?,
            digest: Digest32(array(&digest, "digest")?),
            amount: to_u64(amount, "amount")?,
            currency,
            issued_at: to_u64(issued_at, "issued_at")?,
            expires_at: to_u64(expires_at, "expires_at")?,
        },
        signature: Sig(array(&sig, "signature")?),
    })
}

/// Totals row: keyset_id, receipts, tickets, amount.
type TotalsRow = (Vec<u8>, i64, i64, i64);

fn totals_from_row(row: TotalsRow) -> Result<KeysetTotals, PaymentsError> {
    let (keyset_id, receipts, tickets, amount) = row;
    Ok(KeysetTotals {
        keyset_id: KeysetId(array(&keyset_id, "keyset id")?),
        receipts: to_u64(receipts, "receipt count")?,
        tickets: to_u64(tickets, "ticket count")?,
        amount: to_u64(amount, "amount")?,
    })
}

/// Why a voucher UPDATE flipped nothing, from the row it read back (`None`: no such voucher).
fn voucher_refusal(found: Option<VoucherInfo>, product: &str) -> PaymentsError {
    match found {
        None => PaymentsError::UnknownVoucher,
        Some(v) if v.product != product => PaymentsError::VoucherWrongProduct(v.product),
        Some(_) => PaymentsError::VoucherUsed,
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(sqlx::error::DatabaseError::is_unique_violation)
}
