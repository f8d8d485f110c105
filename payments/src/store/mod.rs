//! Storage: voucher hashes and receipts, behind [`PaymentsStore`], implemented once over
//! either database ([`SqlStore`]; migrations under `payments/migrations/<backend>/`). One
//! conformance suite (`payments/tests/store.rs`) runs on both.
//!
//! Every digest has at most one row in `receipts` (`UNIQUE (digest)`), and every write that
//! claims a digest is a single upsert (`INSERT .. ON CONFLICT (digest) DO UPDATE SET digest =
//! excluded.digest RETURNING ..`): it either inserts the caller's row or returns the row that is
//! already there, atomically, on both backends. Never check-then-insert.
//!
//! - A card checkout first [`reserves`](PaymentsStore::reserve) the digest (state `paying`,
//!   with a random lease token), then charges the card (the digest is the processor's
//!   idempotency key), then [`issues`](PaymentsStore::issue) the signed receipt (state
//!   `issued`). A declined card [`releases`](PaymentsStore::release) the reservation; a retry
//!   may [`take over`](PaymentsStore::take_over) a reservation whose attempt died
//!   (compare-and-swap on the lease token).
//! - A voucher checkout is one transaction: the upsert (state `issued`), then a conditional
//!   `UPDATE vouchers .. WHERE used = false`. A digest that is already there returns the stored
//!   row and burns nothing; a voucher the UPDATE did not flip rolls everything back.
//! - An expired receipt is [`renewed`](PaymentsStore::renew) in place: same id and body, new
//!   expiry and signature (compare-and-swap on the old expiry).

use std::sync::Arc;

use async_trait::async_trait;
use ticketing_crypto::keyset::KeysetId;
use ticketing_protocol::keys::Sig;
use ticketing_protocol::receipt::{Receipt, SignedReceipt};
use ticketing_protocol::{Digest32, Id16};
use ticketing_service::db::backend_of;

use crate::PaymentsError;

mod sql;

pub use sql::SqlStore;

/// A voucher to store: the hash of its code and the product it pays for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVoucher {
    /// [`ticketing_protocol::voucher::VoucherCode::hash`].
    pub hash: Digest32,
    /// Product name (checked against the manifest by the caller).
    pub product: String,
    /// Unix seconds.
    pub created_at: u64,
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
    /// Whether it was used (or voided).
    pub used: bool,
    /// Whether an operator voided it.
    pub voided: bool,
}

/// A stored voucher as `ticketing voucher list` shows it (the code itself is not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoucherRow {
    /// Its hash (the first hex digits name it for `voucher void`).
    pub hash: Digest32,
    /// The product it pays for.
    pub product: String,
    /// Unix seconds (0 for vouchers made before it was kept).
    pub created_at: u64,
    /// Used for a purchase.
    pub used: bool,
    /// Unix seconds, if voided.
    pub voided_at: Option<u64>,
}

/// What [`PaymentsStore::checkout`] and [`PaymentsStore::issue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckoutOutcome {
    /// The receipt was stored (and the voucher, if any, burned).
    Issued(SignedReceipt),
    /// A receipt for the same digest already existed; it is returned unchanged and nothing
    /// else happened (no voucher burned).
    Existing(SignedReceipt),
    /// A card payment holds the digest (reserved, not yet issued); nothing happened. Ask again
    /// shortly.
    Pending,
}

impl CheckoutOutcome {
    /// The receipt, if there is one.
    pub fn receipt(&self) -> Option<&SignedReceipt> {
        match self {
            Self::Issued(r) | Self::Existing(r) => Some(r),
            Self::Pending => None,
        }
    }
}

/// A card payment's receipt-to-be: everything but the times and the signature, fixed when the
/// digest is reserved, before the card is charged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingReceipt {
    /// The receipt id it will be issued with.
    pub receipt_id: Id16,
    /// The keyset paid for.
    pub keyset_id: KeysetId,
    /// Number of tickets.
    pub count: u32,
    /// Digest of the blinded points.
    pub digest: Digest32,
    /// Amount charged, minor units.
    pub amount: u64,
    /// ISO 4217 code.
    pub currency: String,
}

impl PendingReceipt {
    /// The receipt body, issued at `issued_at` and valid until `expires_at`.
    pub fn into_receipt(self, issued_at: u64, expires_at: u64) -> Receipt {
        Receipt {
            receipt_id: self.receipt_id,
            keyset_id: self.keyset_id,
            count: self.count,
            digest: self.digest,
            amount: self.amount,
            currency: self.currency,
            issued_at,
            expires_at,
        }
    }
}

/// What is stored for a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// A card payment reserved it and has not issued the receipt (yet).
    Paying {
        /// The receipt-to-be.
        pending: PendingReceipt,
        /// The token of the attempt holding the reservation.
        lease: Id16,
        /// When that attempt took it (unix seconds).
        reserved_at: u64,
    },
    /// The signed receipt.
    Issued(SignedReceipt),
}

/// What [`PaymentsStore::reserve`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The digest was free: it is now reserved for the caller's pending receipt and lease.
    Reserved,
    /// The digest already had a row (reserved by another attempt, or issued); it is returned
    /// unchanged.
    Existing(Stored),
}

/// Receipt totals of one keyset, for audits (the wire type auditors read).
pub use ticketing_protocol::audit::KeysetTotals;

/// The payments service's storage.
#[async_trait]
pub trait PaymentsStore: Send + Sync + std::fmt::Debug {
    /// Whether the database answers (`/health`).
    async fn ping(&self) -> Result<(), PaymentsError>;
    /// Store new vouchers, all or none. A hash that already exists fails the whole batch with
    /// [`PaymentsError::DuplicateVoucher`].
    async fn add_vouchers(&self, vouchers: &[NewVoucher]) -> Result<(), PaymentsError>;

    /// Every stored voucher, oldest first.
    async fn vouchers(&self) -> Result<Vec<VoucherRow>, PaymentsError>;
    /// Void the unused vouchers whose hash is `hash` (used ones stay as they are); returns
    /// how many were voided.
    async fn void_voucher(&self, hash: &Digest32, now: u64) -> Result<u64, PaymentsError>;
    /// A stored voucher's product and state.
    async fn voucher(&self, hash: &Digest32) -> Result<Option<VoucherInfo>, PaymentsError>;

    /// What is stored for `digest`, if anything.
    async fn stored(&self, digest: &Digest32) -> Result<Option<Stored>, PaymentsError>;

    /// The issued receipt for `digest`, if any (a reservation in progress is not one).
    async fn receipt_by_digest(
        &self,
        digest: &Digest32,
    ) -> Result<Option<SignedReceipt>, PaymentsError> {
        Ok(match self.stored(digest).await? {
            Some(Stored::Issued(r)) => Some(r),
            Some(Stored::Paying { .. }) | None => None,
        })
    }

    /// Atomically: if `receipt`'s digest has a row, return it ([`CheckoutOutcome::Existing`],
    /// or [`CheckoutOutcome::Pending`] for a card reservation) and change nothing; otherwise
    /// burn `voucher` (if given: it must exist, be for its product and unused, else
    /// [`PaymentsError::UnknownVoucher`], [`PaymentsError::VoucherWrongProduct`] or
    /// [`PaymentsError::VoucherUsed`] and nothing is stored) and store `receipt`
    /// ([`CheckoutOutcome::Issued`]).
    async fn checkout(
        &self,
        receipt: &SignedReceipt,
        voucher: Option<&VoucherPayment>,
    ) -> Result<CheckoutOutcome, PaymentsError>;

    /// Atomically: reserve `pending.digest` for `pending` under `lease`, taken at `now`
    /// ([`Reservation::Reserved`]), or, if the digest already has a row, return it unchanged
    /// ([`Reservation::Existing`]). Done before charging a card.
    async fn reserve(
        &self,
        pending: &PendingReceipt,
        lease: Id16,
        now: u64,
    ) -> Result<Reservation, PaymentsError>;

    /// Take over `digest`'s reservation if it is still held under `held`: it is then held
    /// under `lease` since `now`, and `true` is returned. `false` (nothing changed) if someone
    /// else took it over, released or issued it first.
    async fn take_over(
        &self,
        digest: &Digest32,
        held: Id16,
        lease: Id16,
        now: u64,
    ) -> Result<bool, PaymentsError>;

    /// Delete `digest`'s reservation if it is still held under `lease` (the card was
    /// declined: nothing was charged, the digest is free again). `false` if it was not.
    async fn release(&self, digest: &Digest32, lease: Id16) -> Result<bool, PaymentsError>;

    /// Turn the reservation of `receipt`'s digest into the issued `receipt` (whose body must
    /// be the reserved pending receipt's): [`CheckoutOutcome::Issued`]. If another attempt
    /// issued it first, that receipt: [`CheckoutOutcome::Existing`]. No reservation with that
    /// receipt id and body: [`PaymentsError::ReservationLost`].
    async fn issue(&self, receipt: &SignedReceipt) -> Result<CheckoutOutcome, PaymentsError>;

    /// Replace the issued receipt for `renewed`'s digest by `renewed` (same id and body but
    /// `expires_at`, new signature) if its stored expiry is still `previous_expires_at`.
    /// Returns the receipt stored afterwards: `renewed`, or the one a concurrent renewal
    /// stored first. No issued receipt with that id and body: [`PaymentsError::NoReceipt`].
    async fn renew(
        &self,
        renewed: &SignedReceipt,
        previous_expires_at: u64,
    ) -> Result<SignedReceipt, PaymentsError>;

    /// Receipt totals per keyset, ordered by keyset id.
    async fn totals(&self) -> Result<Vec<KeysetTotals>, PaymentsError>;
}

/// Open the store a database URL names (`sqlite:...` or `postgres://...`) and apply its
/// migrations.
pub async fn open_store(url: &str) -> Result<Arc<dyn PaymentsStore>, PaymentsError> {
    match backend_of(url) {
        Some(_) => Ok(Arc::new(SqlStore::open(url).await?)),
        None => Err(PaymentsError::UnsupportedDatabase),
    }
}

/// A receipt's values as both backends bind them: receipt_id, keyset_id, count, digest,
/// amount, currency (the columns a pending and an issued receipt share, in `INSERT` order).
type PendingRow = (Vec<u8>, Vec<u8>, i64, Vec<u8>, i64, String);

/// An issued receipt's values: the [`PendingRow`], then issued_at, expires_at, signature.
type ReceiptRow = (PendingRow, i64, i64, Vec<u8>);

/// A stored row as both backends read it, in [`STORED_COLUMNS`] order.
type StoredRow = (
    Vec<u8>,
    Vec<u8>,
    i64,
    Vec<u8>,
    i64,
    String,
    String,
    Option<Vec<u8>>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<Vec<u8>>,
);

/// Column list matching [`StoredRow`].
const STORED_COLUMNS: &str = "receipt_id, keyset_id, count, digest, amount, currency, state, \
     lease, reserved_at, issued_at, expires_at, signature";

fn to_i64(v: u64, what: &'static str) -> Result<i64, PaymentsError> {
    i64::try_from(v).map_err(|_| PaymentsError::Malformed(format!("{what} is too large")))
}

fn to_u64(v: i64, what: &'static str) -> Result<u64, PaymentsError> {
    u64::try_from(v).map_err(|_| PaymentsError::Corrupt(what))
}

fn array<const N: usize>(v: &[u8], what: &'static str) -> Result<[u8; N], PaymentsError> {
    v.try_into().map_err(|_| PaymentsError::Corrupt(what))
}

/// The values to bind for an issued receipt, in [`ReceiptRow`] order.
fn receipt_row(r: &SignedReceipt) -> Result<ReceiptRow, PaymentsError> {
    let b = &r.receipt;
    Ok((
        (
            b.receipt_id.0.to_vec(),
            b.keyset_id.0.to_vec(),
            i64::from(b.count),
            b.digest.0.to_vec(),
            to_i64(b.amount, "amount")?,
            b.currency.clone(),
        ),
        to_i64(b.issued_at, "issued_at")?,
        to_i64(b.expires_at, "expires_at")?,
        r.signature.0.to_vec(),
    ))
}

/// The values to bind for a pending receipt, in [`PendingRow`] order.
fn pending_row(p: &PendingReceipt) -> Result<PendingRow, PaymentsError> {
    Ok((
        p.receipt_id.0.to_vec(),
        p.keyset_id.0.to_vec(),
        i64::from(p.count),
        p.digest.0.to_vec(),
        to_i64(p.amount, "amount")?,
        p.currency.clone(),
    ))
}

fn stored_from_row(row: StoredRow) -> Result<Stored, PaymentsError> {
    let (
        receipt_id,
        keyset_id,
        count,
        digest,
        amount,
        currency,
        state,
        lease,
        reserved_at,
        issued_at,
        expires_at,
        signature,
    ) = row;
    let pending = PendingReceipt {
        receipt_id: Id16(array(&receipt_id, "receipt id")?),
        keyset_id: KeysetId(array(&keyset_id, "keyset id")?),
        count: u32::try_from(count).map_err(|_| PaymentsError::Corrupt("count"))?,
        digest: Digest32(array(&digest, "digest")?),
        amount: to_u64(amount, "amount")?,
        currency,
    };
    match (
        state.as_str(),
        lease,
        reserved_at,
        issued_at,
        expires_at,
        signature,
    ) {
        ("paying", Some(lease), Some(reserved_at), None, None, None) => Ok(Stored::Paying {
            pending,
            lease: Id16(array(&lease, "lease")?),
            reserved_at: to_u64(reserved_at, "reserved_at")?,
        }),
        ("issued", None, None, Some(issued_at), Some(expires_at), Some(signature)) => {
            Ok(Stored::Issued(SignedReceipt {
                receipt: pending.into_receipt(
                    to_u64(issued_at, "issued_at")?,
                    to_u64(expires_at, "expires_at")?,
                ),
                signature: Sig(array(&signature, "signature")?),
            }))
        }
        _ => Err(PaymentsError::Corrupt("receipt state")),
    }
}

/// What an upsert's returned row means for the caller that proposed `receipt_id`.
fn claimed(row: StoredRow, receipt_id: &Id16) -> Result<Option<Stored>, PaymentsError> {
    let stored = stored_from_row(row)?;
    let id = match &stored {
        Stored::Paying { pending, .. } => pending.receipt_id,
        Stored::Issued(r) => r.receipt.receipt_id,
    };
    Ok((id != *receipt_id).then_some(stored))
}

/// After an `issue` UPDATE changed nothing: what is there instead.
fn not_issued(
    found: Option<Stored>,
    receipt: &SignedReceipt,
) -> Result<CheckoutOutcome, PaymentsError> {
    match found {
        Some(Stored::Issued(r)) if r.receipt.receipt_id == receipt.receipt.receipt_id => {
            Ok(CheckoutOutcome::Existing(r))
        }
        _ => Err(PaymentsError::ReservationLost),
    }
}

/// After a `renew` UPDATE changed nothing: the receipt stored instead, if it is the same
/// receipt (same id and body, whatever its expiry).
fn not_renewed(
    found: Option<Stored>,
    renewed: &SignedReceipt,
) -> Result<SignedReceipt, PaymentsError> {
    match found {
        Some(Stored::Issued(r))
            if Receipt {
                expires_at: renewed.receipt.expires_at,
                ..r.receipt.clone()
            } == renewed.receipt =>
        {
            Ok(r)
        }
        _ => Err(PaymentsError::NoReceipt),
    }
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
        Some(v) if v.voided => PaymentsError::VoucherVoided,
        Some(_) => PaymentsError::VoucherUsed,
    }
}
