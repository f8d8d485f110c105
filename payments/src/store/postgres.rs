//! The Postgres backend.
//!
//! Read committed is enough: the receipt INSERT waits on a concurrent insert of the same digest
//! and then does nothing, and the voucher UPDATE waits on a concurrent burn and then re-checks
//! `used = false`, so of several checkouts with one voucher exactly one flips it.

use async_trait::async_trait;
use sqlx::PgPool;
use ticketing_protocol::Digest32;
use ticketing_protocol::receipt::SignedReceipt;

use super::{
    CheckoutOutcome, KeysetTotals, NewVoucher, PaymentsStore, RECEIPT_COLUMNS, ReceiptRow,
    TotalsRow, VoucherInfo, VoucherPayment, is_unique_violation, receipt_from_row, receipt_row,
    totals_from_row, voucher_refusal,
};
use crate::PaymentsError;

/// Payments storage in a Postgres database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connect to `url` and apply the migrations.
    pub async fn open(url: &str) -> Result<Self, PaymentsError> {
        let pool = ticketing_service::db::postgres(url).await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }

    async fn voucher_in<'e, E>(
        executor: E,
        hash: &Digest32,
    ) -> Result<Option<VoucherInfo>, PaymentsError>
    where
        E: sqlx::Executor<'e, Database = sqlx::Postgres>,
    {
        let row: Option<(String, bool)> =
            sqlx::query_as("SELECT product, used FROM vouchers WHERE hash = $1")
                .bind(hash.0.as_slice())
                .fetch_optional(executor)
                .await?;
        Ok(row.map(|(product, used)| VoucherInfo { product, used }))
    }

    async fn receipt_in<'e, E>(
        executor: E,
        digest: &Digest32,
    ) -> Result<Option<SignedReceipt>, PaymentsError>
    where
        E: sqlx::Executor<'e, Database = sqlx::Postgres>,
    {
        let row: Option<ReceiptRow> = sqlx::query_as(&format!(
            "SELECT {RECEIPT_COLUMNS} FROM receipts WHERE digest = $1"
        ))
        .bind(digest.0.as_slice())
        .fetch_optional(executor)
        .await?;
        row.map(receipt_from_row).transpose()
    }
}

#[async_trait]
impl PaymentsStore for PostgresStore {
    async fn add_vouchers(&self, vouchers: &[NewVoucher]) -> Result<(), PaymentsError> {
        let mut tx = self.pool.begin().await?;
        for v in vouchers {
            sqlx::query("INSERT INTO vouchers (hash, product) VALUES ($1, $2)")
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

    async fn receipt_by_digest(
        &self,
        digest: &Digest32,
    ) -> Result<Option<SignedReceipt>, PaymentsError> {
        Self::receipt_in(&self.pool, digest).await
    }

    async fn checkout(
        &self,
        receipt: &SignedReceipt,
        voucher: Option<&VoucherPayment>,
    ) -> Result<CheckoutOutcome, PaymentsError> {
        let row = receipt_row(receipt)?;
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO receipts ({RECEIPT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (digest) DO NOTHING"
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
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            // The conflicting row is committed (the INSERT waited for it), so this statement's
            // fresh snapshot sees it.
            let existing = Self::receipt_in(&mut *tx, &receipt.receipt.digest).await?;
            tx.rollback().await?;
            return existing
                .map(CheckoutOutcome::Existing)
                .ok_or(PaymentsError::Corrupt(
                    "receipt (digest conflict without a row)",
                ));
        }
        if let Some(v) = voucher {
            let burned = sqlx::query(
                "UPDATE vouchers SET used = TRUE WHERE hash = $1 AND product = $2 AND NOT used",
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

    async fn totals(&self) -> Result<Vec<KeysetTotals>, PaymentsError> {
        let rows: Vec<TotalsRow> = sqlx::query_as(
            "SELECT keyset_id, COUNT(*), COALESCE(SUM(count), 0)::BIGINT, \
             COALESCE(SUM(amount), 0)::BIGINT \
             FROM receipts GROUP BY keyset_id ORDER BY keyset_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(totals_from_row).collect()
    }
}
