//! The payments store on either database: the rules written once over
//! `ticketing_service::db`. SQLite and Postgres differ only in their migrations (column
//! types) and the statement that opens a write transaction.
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

use async_trait::async_trait;
use ticketing_protocol::receipt::SignedReceipt;
use ticketing_protocol::{Digest32, Id16};
use ticketing_service::db::{Database, Executor, Migrations, Query, query};

use super::{
    CheckoutOutcome, KeysetTotals, NewVoucher, PaymentsStore, PendingReceipt, Reservation,
    STORED_COLUMNS, Stored, StoredRow, TotalsRow, VoucherInfo, VoucherPayment, VoucherRow, claimed,
    not_issued, not_renewed, pending_row, receipt_row, stored_from_row, to_i64, totals_from_row,
    voucher_refusal,
};
use crate::PaymentsError;

static MIGRATIONS: Migrations = Migrations {
    sqlite: &sqlx::migrate!("./migrations/sqlite"),
    postgres: &sqlx::migrate!("./migrations/postgres"),
};

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

async fn voucher_in<'e>(
    on: impl Executor<'e>,
    hash: &Digest32,
) -> Result<Option<VoucherInfo>, PaymentsError> {
    let row = query("SELECT product, used, voided_at FROM vouchers WHERE hash = $1")
        .bind(hash.0.as_slice())
        .fetch_optional(on)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let (product, used, voided): (String, bool, Option<i64>) = row.decode()?;
    Ok(Some(VoucherInfo {
        product,
        used,
        voided: voided.is_some(),
    }))
}

fn voucher_row(
    row: (Vec<u8>, String, i64, bool, Option<i64>),
) -> Result<VoucherRow, PaymentsError> {
    let (hash, product, created_at, used, voided_at) = row;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| PaymentsError::Corrupt("voucher hash"))?;
    Ok(VoucherRow {
        hash: Digest32(hash),
        product,
        created_at: u64::try_from(created_at)
            .map_err(|_| PaymentsError::Corrupt("voucher time"))?,
        used,
        voided_at: voided_at
            .map(u64::try_from)
            .transpose()
            .map_err(|_| PaymentsError::Corrupt("voucher time"))?,
    })
}

/// `query` with the six values every receipt row has ([`PendingRow`](super::PendingRow)),
/// as `$1` to `$6` in `INSERT` order.
fn with_pending(
    query: Query,
    (id, keyset, count, digest, amount, currency): super::PendingRow,
) -> Query {
    query
        .bind(id)
        .bind(keyset)
        .bind(count)
        .bind(digest)
        .bind(amount)
        .bind(currency)
}

#[async_trait]
impl PaymentsStore for SqlStore {
    async fn ping(&self) -> Result<(), PaymentsError> {
        query("SELECT 1").execute(&self.db).await?;
        Ok(())
    }

    async fn vouchers(&self) -> Result<Vec<VoucherRow>, PaymentsError> {
        let rows = query(
            "SELECT hash, product, created_at, used, voided_at FROM vouchers \
             ORDER BY created_at, hash",
        )
        .fetch_all(&self.db)
        .await?;
        rows.iter().map(|row| voucher_row(row.decode()?)).collect()
    }

    async fn void_voucher(&self, hash: &Digest32, now: u64) -> Result<u64, PaymentsError> {
        Ok(
            query("UPDATE vouchers SET used = TRUE, voided_at = $1 WHERE hash = $2 AND NOT used")
                .bind(i64::try_from(now).unwrap_or(i64::MAX))
                .bind(hash.0.as_slice())
                .execute(&self.db)
                .await?,
        )
    }

    async fn add_vouchers(&self, vouchers: &[NewVoucher]) -> Result<(), PaymentsError> {
        let mut tx = self.db.begin_write().await?;
        for v in vouchers {
            let added = query(
                "INSERT INTO vouchers (hash, product, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (hash) DO NOTHING",
            )
            .bind(v.hash.0.as_slice())
            .bind(&v.product)
            .bind(i64::try_from(v.created_at).unwrap_or(i64::MAX))
            .execute(&mut tx)
            .await?;
            if added == 0 {
                // Dropping the transaction rolls back the vouchers added before this one.
                return Err(PaymentsError::DuplicateVoucher);
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn voucher(&self, hash: &Digest32) -> Result<Option<VoucherInfo>, PaymentsError> {
        voucher_in(&self.db, hash).await
    }

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
            let burned = query(
                "UPDATE vouchers SET used = TRUE \
                 WHERE hash = $1 AND product = $2 AND NOT used",
            )
            .bind(v.hash.0.as_slice())
            .bind(&v.product)
            .execute(&mut tx)
            .await?;
            if burned != 1 {
                let found = voucher_in(&mut tx, &v.hash).await?;
                return Err(voucher_refusal(found, &v.product));
            }
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
