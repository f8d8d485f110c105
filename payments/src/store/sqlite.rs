//! The SQLite backend (WAL, `synchronous = FULL`, via `ticketing_service::db::sqlite`).
//!
//! Every statement is atomic on its own and SQLite has one writer at a time, so the upserts
//! and compare-and-swap UPDATEs need no explicit transaction; the voucher checkout takes the
//! write lock up front (`BEGIN IMMEDIATE`).

use async_trait::async_trait;
use sqlx::SqlitePool;
use ticketing_protocol::receipt::SignedReceipt;
use ticketing_protocol::{Digest32, Id16};

use super::{
    CheckoutOutcome, KeysetTotals, NewVoucher, PaymentsStore, PendingReceipt, Reservation,
    STORED_COLUMNS, Stored, StoredRow, TotalsRow, VoucherInfo, VoucherPayment, claimed,
    is_unique_violation, not_issued, not_renewed, pending_row, receipt_row, stored_from_row,
    to_i64, totals_from_row, voucher_refusal,
};
use crate::PaymentsError;

/// Payments storage in a SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Open (creating if needed) the database at `url` and apply the migrations.
    pub async fn open(url: &str) -> Result<Self, PaymentsError> {
        let pool = ticketing_service::db::sqlite(url).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    async fn voucher_in<'e, E>(
        executor: E,
        hash: &Digest32,
    ) -> Result<Option<VoucherInfo>, PaymentsError>
    where
        E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
    {
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT product, used FROM vouchers WHERE hash = ?")
                .bind(hash.0.as_slice())
                .fetch_optional(executor)
                .await?;
        Ok(row.map(|(product, used)| VoucherInfo {
            product,
            used: used != 0,
        }))
    }
}

#[async_trait]
impl PaymentsStore for SqliteStore {
    async fn add_vouchers(&self, vouchers: &[NewVoucher]) -> Result<(), PaymentsError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for v in vouchers {
            sqlx::query("INSERT INTO vouchers (hash, product) VALUES (?, ?)")
                .bind(v.hash.0.as_slice())
                .bind(&v.product)
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        PaymentsError::DuplicateVoucher
                    } else {
                        e.into()
                    }
                })?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn voucher(&self, hash: &Digest32) -> Result<Option<VoucherInfo>, PaymentsError> {
        Self::voucher_in(&self.pool, hash).await
    }

    async fn stored(&self, digest: &Digest32) -> Result<Option<Stored>, PaymentsError> {
        let row: Option<StoredRow> = sqlx::query_as(&format!(
            "SELECT {STORED_COLUMNS} FROM receipts WHERE digest = ?"
        ))
        .bind(digest.0.as_slice())
        .fetch_optional(&self.pool)
        .await?;
        row.map(stored_from_row).transpose()
    }

    async fn checkout(
        &self,
        receipt: &SignedReceipt,
        voucher: Option<&VoucherPayment>,
    ) -> Result<CheckoutOutcome, PaymentsError> {
        let row = receipt_row(receipt)?;
        // IMMEDIATE: take the write lock up front, so concurrent checkouts queue on the busy
        // timeout instead of failing to upgrade a read snapshot.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let back: StoredRow = sqlx::query_as(&format!(
            "INSERT INTO receipts (receipt_id, keyset_id, count, digest, amount, currency, \
             state, issued_at, expires_at, signature) \
             VALUES (?, ?, ?, ?, ?, ?, 'issued', ?, ?, ?) \
             ON CONFLICT (digest) DO UPDATE SET digest = excluded.digest \
             RETURNING {STORED_COLUMNS}"
        ))
        .bind(row.0)
        .bind(row.1)
        .bind(row.2)
        .bind(row.3)
        .bind(row.4)
        .bind(row.5)
        .bind(row.6)
        .bind(row.7)
        .bind(row.8)
        .fetch_one(&mut *tx)
        .await?;
        if let Some(existing) = claimed(back, &receipt.receipt.receipt_id)? {
            tx.rollback().await?;
            return Ok(match existing {
                Stored::Issued(r) => CheckoutOutcome::Existing(r),
                Stored::Paying { .. } => CheckoutOutcome::Pending,
            });
        }
        if let Some(v) = voucher {
            let burned = sqlx::query(
                "UPDATE vouchers SET used = 1 WHERE hash = ? AND product = ? AND used = 0",
            )
            .bind(v.hash.0.as_slice())
            .bind(&v.product)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if burned != 1 {
                let found = Self::voucher_in(&mut *tx, &v.hash).await?;
                tx.rollback().await?;
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
        let back: StoredRow = sqlx::query_as(&format!(
            "INSERT INTO receipts (receipt_id, keyset_id, count, digest, amount, currency, \
             state, lease, reserved_at) \
             VALUES (?, ?, ?, ?, ?, ?, 'paying', ?, ?) \
             ON CONFLICT (digest) DO UPDATE SET digest = excluded.digest \
             RETURNING {STORED_COLUMNS}"
        ))
        .bind(row.0)
        .bind(row.1)
        .bind(row.2)
        .bind(row.3)
        .bind(row.4)
        .bind(row.5)
        .bind(lease.0.as_slice())
        .bind(to_i64(now, "time")?)
        .fetch_one(&self.pool)
        .await?;
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
        let changed = sqlx::query(
            "UPDATE receipts SET lease = ?, reserved_at = ? \
             WHERE digest = ? AND state = 'paying' AND lease = ?",
        )
        .bind(lease.0.as_slice())
        .bind(to_i64(now, "time")?)
        .bind(digest.0.as_slice())
        .bind(held.0.as_slice())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn release(&self, digest: &Digest32, lease: Id16) -> Result<bool, PaymentsError> {
        let deleted =
            sqlx::query("DELETE FROM receipts WHERE digest = ? AND state = 'paying' AND lease = ?")
                .bind(digest.0.as_slice())
                .bind(lease.0.as_slice())
                .execute(&self.pool)
                .await?
                .rows_affected();
        Ok(deleted == 1)
    }

    async fn issue(&self, receipt: &SignedReceipt) -> Result<CheckoutOutcome, PaymentsError> {
        let row = receipt_row(receipt)?;
        let changed = sqlx::query(
            "UPDATE receipts SET state = 'issued', lease = NULL, reserved_at = NULL, \
             issued_at = ?, expires_at = ?, signature = ? \
             WHERE digest = ? AND receipt_id = ? AND state = 'paying' \
             AND keyset_id = ? AND count = ? AND amount = ? AND currency = ?",
        )
        .bind(row.6)
        .bind(row.7)
        .bind(row.8)
        .bind(row.3)
        .bind(row.0)
        .bind(row.1)
        .bind(row.2)
        .bind(row.4)
        .bind(row.5)
        .execute(&self.pool)
        .await?
        .rows_affected();
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
        let row = receipt_row(renewed)?;
        let changed = sqlx::query(
            "UPDATE receipts SET expires_at = ?, signature = ? \
             WHERE digest = ? AND receipt_id = ? AND state = 'issued' AND expires_at = ? \
             AND keyset_id = ? AND count = ? AND amount = ? AND currency = ? AND issued_at = ?",
        )
        .bind(row.7)
        .bind(row.8)
        .bind(row.3)
        .bind(row.0)
        .bind(to_i64(previous_expires_at, "expires_at")?)
        .bind(row.1)
        .bind(row.2)
        .bind(row.4)
        .bind(row.5)
        .bind(row.6)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if changed == 1 {
            return Ok(renewed.clone());
        }
        not_renewed(self.stored(&renewed.receipt.digest).await?, renewed)
    }

    async fn totals(&self) -> Result<Vec<KeysetTotals>, PaymentsError> {
        let rows: Vec<TotalsRow> = sqlx::query_as(
            "SELECT keyset_id, COUNT(*), COALESCE(SUM(count), 0), COALESCE(SUM(amount), 0) \
             FROM receipts WHERE state = 'issued' GROUP BY keyset_id ORDER BY keyset_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(totals_from_row).collect()
    }
}
