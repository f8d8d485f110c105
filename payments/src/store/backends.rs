//! The two sqlx backends of the payments store, generated from one definition (as in the node
//! crate): the SQL is the same, written once with `$n` placeholders. Only the pool type, the
//! connect function, the migrations (column types), the placeholder sigil (`$1` for Postgres,
//! `?1` for SQLite) and the statement that opens a transaction differ.
//!
//! The SQL sticks to what both dialects read the same way: `used = TRUE` / `NOT used` on the
//! SQLite `INTEGER CHECK (used IN (0, 1))` column is `used = 1` / `used = 0`, and
//! `CAST(.. AS BIGINT)` keeps Postgres' `SUM(bigint)` (a `numeric`) an `i64` and is a no-op on
//! SQLite's integer sums.
//!
//! SQLite (WAL, `synchronous = FULL`, via `ticketing_service::db::sqlite`): every statement is
//! atomic on its own and SQLite has one writer at a time, so the upserts and compare-and-swap
//! UPDATEs need no explicit transaction; the transactions (voucher checkout, adding vouchers)
//! take the write lock up front (`BEGIN IMMEDIATE`).
//!
//! Postgres: read committed is enough: an upsert on a digest waits for a concurrent writer of
//! the same digest and then either inserts or returns the committed row (Postgres guarantees one
//! of the two for `ON CONFLICT DO UPDATE`, never an error or nothing); the compare-and-swap
//! UPDATEs re-check their condition on the newest row version after waiting; and the voucher
//! UPDATE waits on a concurrent burn and then re-checks `used = false`, so of several checkouts
//! with one voucher exactly one flips it.

use std::borrow::Cow;

use async_trait::async_trait;
use ticketing_protocol::receipt::SignedReceipt;
use ticketing_protocol::{Digest32, Id16};

use super::{
    CheckoutOutcome, KeysetTotals, NewVoucher, PaymentsStore, PendingReceipt, Reservation,
    STORED_COLUMNS, Stored, StoredRow, TotalsRow, VoucherInfo, VoucherPayment, VoucherRow, claimed,
    is_unique_violation, not_issued, not_renewed, pending_row, receipt_row, stored_from_row,
    to_i64, totals_from_row, voucher_refusal,
};
use crate::PaymentsError;

macro_rules! sql_store {
    (
        $(#[$meta:meta])*
        $name:ident {
            pool: $pool:ty,
            database: $db:ty,
            connect: $connect:path,
            migrations: $migrations:literal,
            dialect: $dialect:expr,
            open_doc: $open_doc:literal $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        pub struct $name {
            pool: $pool,
        }

        impl $name {
            #[doc = $open_doc]
            pub async fn open(url: &str) -> Result<Self, PaymentsError> {
                let pool = $connect(url).await?;
                sqlx::migrate!($migrations).run(&pool).await?;
                Ok(Self { pool })
            }

            /// What this backend's SQL differs in.
            const DIALECT: ticketing_service::db::Dialect = $dialect;

            /// The SQL below is written with `$n` placeholders; this backend's form.
            fn sql(text: &str) -> Cow<'_, str> {
                Self::DIALECT.sql(text)
            }

            /// A transaction that will write, opened with this backend's statement for it.
            async fn begin(&self) -> Result<sqlx::Transaction<'static, $db>, sqlx::Error> {
                self.pool.begin_with(Self::DIALECT.begin_write).await
            }

            async fn voucher_in<'e, E>(
                executor: E,
                hash: &Digest32,
            ) -> Result<Option<VoucherInfo>, PaymentsError>
            where
                E: sqlx::Executor<'e, Database = $db>,
            {
                let row: Option<(String, bool, Option<i64>)> = sqlx::query_as(&Self::sql(
                    "SELECT product, used, voided_at FROM vouchers WHERE hash = $1",
                ))
                .bind(hash.0.as_slice())
                .fetch_optional(executor)
                .await?;
                Ok(row.map(|(product, used, voided)| VoucherInfo {
                    product,
                    used,
                    voided: voided.is_some(),
                }))
            }
        }

        #[async_trait]
        impl PaymentsStore for $name {
            async fn ping(&self) -> Result<(), PaymentsError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn vouchers(&self) -> Result<Vec<VoucherRow>, PaymentsError> {
                let rows: Vec<(Vec<u8>, String, i64, bool, Option<i64>)> = sqlx::query_as(
                    "SELECT hash, product, created_at, used, voided_at FROM vouchers \
                     ORDER BY created_at, hash",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|(hash, product, created_at, used, voided_at)| {
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
                    })
                    .collect()
            }

            async fn void_voucher(&self, hash: &Digest32, now: u64) -> Result<u64, PaymentsError> {
                Ok(sqlx::query(&Self::sql(
                    "UPDATE vouchers SET used = TRUE, voided_at = $1 WHERE hash = $2 AND NOT used",
                ))
                .bind(i64::try_from(now).unwrap_or(i64::MAX))
                .bind(hash.0.as_slice())
                .execute(&self.pool)
                .await?
                .rows_affected())
            }

            async fn add_vouchers(&self, vouchers: &[NewVoucher]) -> Result<(), PaymentsError> {
                let mut tx = self.begin().await?;
                for v in vouchers {
                    sqlx::query(&Self::sql(
                        "INSERT INTO vouchers (hash, product, created_at) VALUES ($1, $2, $3)",
                    ))
                        .bind(v.hash.0.as_slice())
                        .bind(&v.product)
                        .bind(i64::try_from(v.created_at).unwrap_or(i64::MAX))
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
                let row: Option<StoredRow> = sqlx::query_as(&Self::sql(&format!(
                    "SELECT {STORED_COLUMNS} FROM receipts WHERE digest = $1"
                )))
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
                // See `begin` at the invocations: SQLite takes the write lock up front; on
                // Postgres the upsert locks the digest's row (new or existing) until the
                // transaction ends.
                let mut tx = self.begin().await?;
                let back: StoredRow = sqlx::query_as(&Self::sql(&format!(
                    "INSERT INTO receipts (receipt_id, keyset_id, count, digest, amount, currency, \
                     state, issued_at, expires_at, signature) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'issued', $7, $8, $9) \
                     ON CONFLICT (digest) DO UPDATE SET digest = EXCLUDED.digest \
                     RETURNING {STORED_COLUMNS}"
                )))
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
                    let burned = sqlx::query(&Self::sql(
                        "UPDATE vouchers SET used = TRUE \
                         WHERE hash = $1 AND product = $2 AND NOT used",
                    ))
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
                let back: StoredRow = sqlx::query_as(&Self::sql(&format!(
                    "INSERT INTO receipts (receipt_id, keyset_id, count, digest, amount, currency, \
                     state, lease, reserved_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'paying', $7, $8) \
                     ON CONFLICT (digest) DO UPDATE SET digest = EXCLUDED.digest \
                     RETURNING {STORED_COLUMNS}"
                )))
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
                let changed = sqlx::query(&Self::sql(
                    "UPDATE receipts SET lease = $1, reserved_at = $2 \
                     WHERE digest = $3 AND state = 'paying' AND lease = $4",
                ))
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
                let deleted = sqlx::query(&Self::sql(
                    "DELETE FROM receipts WHERE digest = $1 AND state = 'paying' AND lease = $2",
                ))
                .bind(digest.0.as_slice())
                .bind(lease.0.as_slice())
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(deleted == 1)
            }

            async fn issue(
                &self,
                receipt: &SignedReceipt,
            ) -> Result<CheckoutOutcome, PaymentsError> {
                let row = receipt_row(receipt)?;
                let changed = sqlx::query(&Self::sql(
                    "UPDATE receipts SET state = 'issued', lease = NULL, reserved_at = NULL, \
                     issued_at = $1, expires_at = $2, signature = $3 \
                     WHERE digest = $4 AND receipt_id = $5 AND state = 'paying' \
                     AND keyset_id = $6 AND count = $7 AND amount = $8 AND currency = $9",
                ))
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
                let changed = sqlx::query(&Self::sql(
                    "UPDATE receipts SET expires_at = $1, signature = $2 \
                     WHERE digest = $3 AND receipt_id = $4 AND state = 'issued' \
                     AND expires_at = $5 AND keyset_id = $6 AND count = $7 AND amount = $8 \
                     AND currency = $9 AND issued_at = $10",
                ))
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
                // CAST: Postgres sums BIGINTs to NUMERIC; SQLite's integer sum is unchanged.
                let rows: Vec<TotalsRow> = sqlx::query_as(
                    "SELECT keyset_id, COUNT(*), CAST(COALESCE(SUM(count), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(amount), 0) AS BIGINT) \
                     FROM receipts WHERE state = 'issued' GROUP BY keyset_id ORDER BY keyset_id",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(totals_from_row).collect()
            }
        }
    };
}

sql_store! {
    /// Payments storage in a SQLite database.
    SqliteStore {
        pool: sqlx::SqlitePool,
        database: sqlx::Sqlite,
        connect: ticketing_service::db::sqlite,
        migrations: "./migrations/sqlite",
        dialect: ticketing_service::db::Dialect::SQLITE,
        open_doc: "Open (creating if needed) the database at `url` and apply the migrations.",
    }
}

sql_store! {
    /// Payments storage in a Postgres database.
    PostgresStore {
        pool: sqlx::PgPool,
        database: sqlx::Postgres,
        connect: ticketing_service::db::postgres,
        migrations: "./migrations/postgres",
        // Postgres' plain `BEGIN` (read committed): row locks taken by the upsert and the
        // voucher UPDATE serialize the writers that matter.
        dialect: ticketing_service::db::Dialect::POSTGRES,
        open_doc: "Connect to `url` and apply the migrations.",
    }
}
