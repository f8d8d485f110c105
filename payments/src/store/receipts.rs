//! Receipts: at most one row per digest of blinded points (`UNIQUE (digest)`), and every write
//! that claims a digest is a single upsert (`INSERT .. ON CONFLICT (digest) DO UPDATE SET
//! digest = excluded.digest RETURNING ..`): it either inserts the caller's row or returns the
//! row that is already there, atomically, on both backends. Never check-then-insert.
//!
//! - A card checkout first [`reserves`](Receipts::reserve) the digest (state `paying`, with a
//!   random lease token), then charges the card (the digest is the processor's idempotency
//!   key), then [`issues`](Receipts::issue) the signed receipt (state `issued`). A declined
//!   card [`releases`](Receipts::release) the reservation; a retry may
//!   [`take over`](Receipts::take_over) a reservation whose attempt died (compare-and-swap on
//!   the lease token).
//! - A voucher checkout is one transaction: the upsert (state `issued`), then a conditional
//!   `UPDATE vouchers .. WHERE used = false`. A digest that is already there returns the stored
//!   row and burns nothing; a voucher the UPDATE did not flip rolls everything back.
//! - An expired receipt is [`renewed`](Receipts::renew) in place: same id and body, new expiry
//!   and signature (compare-and-swap on the old expiry).

use async_trait::async_trait;
use ticketing_crypto::keyset::KeysetId;
use ticketing_protocol::keys::Sig;
use ticketing_protocol::receipt::{Receipt, SignedReceipt};
use ticketing_protocol::{Digest32, Id16};
use ticketing_service::db::{Query, query, to_u64};

use super::vouchers::{VoucherPayment, burn};
use super::{SqlStore, array, corrupt};
use crate::PaymentsError;

/// What [`Receipts::checkout`] and [`Receipts::issue`] did.
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

/// What [`Receipts::reserve`] did.
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

/// Card reservations and issued receipts, one per digest.
#[async_trait]
pub trait Receipts: Send + Sync {
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

#[async_trait]
impl Receipts for SqlStore {
    async fn stored(&self, digest: &Digest32) -> Result<Option<Stored>, PaymentsError> {
        let row = query(format!(
            "SELECT {STORED_COLUMNS} FROM receipts WHERE digest = $1"
        ))
        .bind(digest.0.as_slice())
        .fetch_optional(&self.db)
        .await?;
        row.map(|row| stored_from_row(row.decode::<StoredRow>()?))
            .transpose()
    }

    async fn checkout(
        &self,
        receipt: &SignedReceipt,
        voucher: Option<&VoucherPayment>,
    ) -> Result<CheckoutOutcome, PaymentsError> {
        let row = receipt_row(receipt)?;
        // SQLite takes the write lock up front; on Postgres the upsert locks the digest's row
        // (new or existing) until the transaction ends.
        let mut tx = self.db.begin_write().await?;
        let upsert = query(format!(
            "INSERT INTO receipts (receipt_id, keyset_id, count, digest, amount, currency, \
             state, issued_at, expires_at, signature) \
             VALUES ($1, $2, $3, $4, $5, $6, 'issued', $7, $8, $9) \
             ON CONFLICT (digest) DO UPDATE SET digest = EXCLUDED.digest \
             RETURNING {STORED_COLUMNS}"
        ));
        let back: StoredRow = with_pending(upsert, row.0)
            .bind(row.1)
            .bind(row.2)
            .bind(row.3)
            .fetch_one(&mut tx)
            .await?
            .decode()?;
        if let Some(existing) = claimed(back, &receipt.receipt.receipt_id)? {
            // Dropped: rolled back.
            drop(tx);
            return Ok(match existing {
                Stored::Issued(r) => CheckoutOutcome::Existing(r),
                Stored::Paying { .. } => CheckoutOutcome::Pending,
            });
        }
        if let Some(v) = voucher {
            burn(&mut tx, v).await?;
        }
        tx.commit().await?;
        Ok(CheckoutOutcome::Issued(receipt.clone()))
    }

    async fn reserve(
        &self,
        pending: &PendingReceipt,
        lease: Id16,
        now: u64,
    ) -> Result<Reservation, PaymentsError> {
        let row = pending_row(pending)?;
        let upsert = query(format!(
            "INSERT INTO receipts (receipt_id, keyset_id, count, digest, amount, currency, \
             state, lease, reserved_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'paying', $7, $8) \
             ON CONFLICT (digest) DO UPDATE SET digest = EXCLUDED.digest \
             RETURNING {STORED_COLUMNS}"
        ));
        let back: StoredRow = with_pending(upsert, row)
            .bind(lease.0.as_slice())
            .bind(to_i64(now, "time")?)
            .fetch_one(&self.db)
            .await?
            .decode()?;
        Ok(match claimed(back, &pending.receipt_id)? {
            None => Reservation::Reserved,
            Some(existing) => Reservation::Existing(existing),
        })
    }

    async fn take_over(
        &self,
        digest: &Digest32,
        held: Id16,
        lease: Id16,
        now: u64,
    ) -> Result<bool, PaymentsError> {
        let changed = query(
            "UPDATE receipts SET lease = $1, reserved_at = $2 \
             WHERE digest = $3 AND state = 'paying' AND lease = $4",
        )
        .bind(lease.0.as_slice())
        .bind(to_i64(now, "time")?)
        .bind(digest.0.as_slice())
        .bind(held.0.as_slice())
        .execute(&self.db)
        .await?;
        Ok(changed == 1)
    }

    async fn release(&self, digest: &Digest32, lease: Id16) -> Result<bool, PaymentsError> {
        let deleted =
            query("DELETE FROM receipts WHERE digest = $1 AND state = 'paying' AND lease = $2")
                .bind(digest.0.as_slice())
                .bind(lease.0.as_slice())
                .execute(&self.db)
                .await?;
        Ok(deleted == 1)
    }

    async fn issue(&self, receipt: &SignedReceipt) -> Result<CheckoutOutcome, PaymentsError> {
        let ((id, keyset, count, digest, amount, currency), issued_at, expires_at, sig) =
            receipt_row(receipt)?;
        let changed = query(
            "UPDATE receipts SET state = 'issued', lease = NULL, reserved_at = NULL, \
             issued_at = $1, expires_at = $2, signature = $3 \
             WHERE digest = $4 AND receipt_id = $5 AND state = 'paying' \
             AND keyset_id = $6 AND count = $7 AND amount = $8 AND currency = $9",
        )
        .bind(issued_at)
        .bind(expires_at)
        .bind(sig)
        .bind(digest)
        .bind(id)
        .bind(keyset)
        .bind(count)
        .bind(amount)
        .bind(currency)
        .execute(&self.db)
        .await?;
        if changed == 1 {
            return Ok(CheckoutOutcome::Issued(receipt.clone()));
        }
        not_issued(self.stored(&receipt.receipt.digest).await?, receipt)
    }

    async fn renew(
        &self,
        renewed: &SignedReceipt,
        previous_expires_at: u64,
    ) -> Result<SignedReceipt, PaymentsError> {
        let ((id, keyset, count, digest, amount, currency), issued_at, expires_at, sig) =
            receipt_row(renewed)?;
        let changed = query(
            "UPDATE receipts SET expires_at = $1, signature = $2 \
             WHERE digest = $3 AND receipt_id = $4 AND state = 'issued' \
             AND expires_at = $5 AND keyset_id = $6 AND count = $7 AND amount = $8 \
             AND currency = $9 AND issued_at = $10",
        )
        .bind(expires_at)
        .bind(sig)
        .bind(digest)
        .bind(id)
        .bind(to_i64(previous_expires_at, "expires_at")?)
        .bind(keyset)
        .bind(count)
        .bind(amount)
        .bind(currency)
        .bind(issued_at)
        .execute(&self.db)
        .await?;
        if changed == 1 {
            return Ok(renewed.clone());
        }
        not_renewed(self.stored(&renewed.receipt.digest).await?, renewed)
    }

    async fn totals(&self) -> Result<Vec<KeysetTotals>, PaymentsError> {
        // CAST: Postgres sums BIGINTs to NUMERIC; SQLite's integer sum is unchanged.
        let rows = query(
            "SELECT keyset_id, COUNT(*), CAST(COALESCE(SUM(count), 0) AS BIGINT), \
             CAST(COALESCE(SUM(amount), 0) AS BIGINT) \
             FROM receipts WHERE state = 'issued' GROUP BY keyset_id ORDER BY keyset_id",
        )
        .fetch_all(&self.db)
        .await?;
        rows.iter()
            .map(|row| totals_from_row(row.decode::<TotalsRow>()?))
            .collect()
    }
}

/// `query` with the six values every receipt row has ([`PendingRow`]),
/// as `$1` to `$6` in `INSERT` order.
fn with_pending(query: Query, (id, keyset, count, digest, amount, currency): PendingRow) -> Query {
    query
        .bind(id)
        .bind(keyset)
        .bind(count)
        .bind(digest)
        .bind(amount)
        .bind(currency)
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

/// A value of a receipt for a signed 64-bit column; one beyond its range is refused as
/// malformed (nothing is stored).
fn to_i64(v: u64, what: &'static str) -> Result<i64, PaymentsError> {
    i64::try_from(v).map_err(|_| PaymentsError::Malformed(format!("{what} is too large")))
}

/// The values to bind for an issued receipt, in [`ReceiptRow`] order.
fn receipt_row(r: &SignedReceipt) -> Result<ReceiptRow, PaymentsError> {
    let b = &r.receipt;
    Ok((
        shared_row(
            &b.receipt_id,
            &b.keyset_id,
            b.count,
            &b.digest,
            b.amount,
            &b.currency,
        )?,
        to_i64(b.issued_at, "issued_at")?,
        to_i64(b.expires_at, "expires_at")?,
        r.signature.0.to_vec(),
    ))
}

/// The values to bind for a pending receipt, in [`PendingRow`] order.
fn pending_row(p: &PendingReceipt) -> Result<PendingRow, PaymentsError> {
    shared_row(
        &p.receipt_id,
        &p.keyset_id,
        p.count,
        &p.digest,
        p.amount,
        &p.currency,
    )
}

/// The six columns a pending and an issued receipt share, in [`PendingRow`] order.
fn shared_row(
    receipt_id: &Id16,
    keyset_id: &KeysetId,
    count: u32,
    digest: &Digest32,
    amount: u64,
    currency: &str,
) -> Result<PendingRow, PaymentsError> {
    Ok((
        receipt_id.0.to_vec(),
        keyset_id.0.to_vec(),
        i64::from(count),
        digest.0.to_vec(),
        to_i64(amount, "amount")?,
        currency.to_owned(),
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
        count: u32::try_from(count).map_err(|_| corrupt("count"))?,
        digest: Digest32(array(&digest, "digest")?),
        amount: to_u64(amount)?,
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
            reserved_at: to_u64(reserved_at)?,
        }),
        ("issued", None, None, Some(issued_at), Some(expires_at), Some(signature)) => {
            Ok(Stored::Issued(SignedReceipt {
                receipt: pending.into_receipt(to_u64(issued_at)?, to_u64(expires_at)?),
                signature: Sig(array(&signature, "signature")?),
            }))
        }
        _ => Err(corrupt("receipt state")),
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
        receipts: to_u64(receipts)?,
        tickets: to_u64(tickets)?,
        amount: to_u64(amount)?,
    })
}
