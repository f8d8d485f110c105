//! The two sqlx backends of the node store, generated from one definition: the SQL is the same,
//! only the pool type, the connect function, the placeholder sigil (`$1` for Postgres, `?1` for
//! SQLite) and the migrations (column types) differ.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::Row;
use ticketing_protocol::log::{Checkpoint, GENESIS, LogEntry};
use ticketing_protocol::receipt::SignedReceipt;
use ticketing_protocol::{Digest32, Id16};
use tokio::sync::Mutex;

use super::{NodeStore, Recorded, StoreError, digest, entry_from_row, to_i64, to_u64};

macro_rules! sql_store {
    ($name:ident, $pool:ty, $connect:path, $migrations:literal, $sigil:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone)]
        pub struct $name {
            pool: $pool,
            /// `(seq, hash)` of the newest entry. The lock serializes appends in this process; the
            /// database constraints catch any other writer.
            head: Arc<Mutex<(u64, Digest32)>>,
        }

        impl $name {
            /// Connect (creating a SQLite file if needed) and migrate.
            pub async fn open(url: &str) -> Result<Self, StoreError> {
                let pool = $connect(url).await?;
                sqlx::migrate!($migrations).run(&pool).await?;
                let head = Arc::new(Mutex::new(Self::last_entry(&pool).await?));
                Ok(Self { pool, head })
            }

            async fn last_entry(pool: &$pool) -> Result<(u64, Digest32), StoreError> {
                let row = sqlx::query("SELECT seq, hash FROM log_entries ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(pool)
                    .await?;
                match row {
                    None => Ok((0, GENESIS)),
                    Some(row) => Ok((
                        to_u64(row.try_get("seq")?)?,
                        digest(row.try_get::<&[u8], _>("hash")?)?,
                    )),
                }
            }

            /// The SQL below is written with `$n` placeholders; this backend's form.
            fn sql(text: &'static str) -> std::borrow::Cow<'static, str> {
                ticketing_service::db::placeholders(text, $sigil)
            }

            /// The pool, for tests that tamper with rows on purpose.
            pub fn pool(&self) -> &$pool {
                &self.pool
            }
        }

        impl $name {
            async fn append(&self, receipt: &SignedReceipt, time: u64) -> Result<Recorded, StoreError> {
                let mut head = self.head.lock().await;
                match self.try_append(&mut head, receipt, time).await {
                    // Another writer took this seq (the constraint stopped a fork): resynchronize and
                    // try once more.
                    Err(StoreError::Database(_)) => {
                        *head = Self::last_entry(&self.pool).await?;
                        self.try_append(&mut head, receipt, time).await
                    }
                    other => other,
                }
            }

            async fn try_append(
                &self,
                head: &mut (u64, Digest32),
                receipt: &SignedReceipt,
                time: u64,
            ) -> Result<Recorded, StoreError> {
                let r = &receipt.receipt;
                let entry = LogEntry::new(head.0 + 1, time, receipt.clone(), head.1);
                let body = serde_json::to_string(receipt)
                    .map_err(|e| StoreError::Corrupt(format!("encode receipt: {e}")))?;
                // One statement, atomic on its own: a repeat of the receipt inserts nothing.
                let done = sqlx::query(&Self::sql("INSERT INTO log_entries (seq, receipt_id, digest, time, receipt, prev_hash, hash) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (receipt_id) DO NOTHING"))
                .bind(to_i64(entry.seq)?)
                .bind(r.receipt_id.0.as_slice())
                .bind(r.digest.0.as_slice())
                .bind(to_i64(time)?)
                .bind(body)
                .bind(entry.prev_hash.0.as_slice())
                .bind(entry.hash.0.as_slice())
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 1 {
                    *head = (entry.seq, entry.hash);
                    return Ok(Recorded::Fresh(Box::new(entry)));
                }
                let row = sqlx::query(&Self::sql("SELECT seq, digest FROM log_entries WHERE receipt_id = $1"))
                    .bind(r.receipt_id.0.as_slice())
                    .fetch_one(&self.pool)
                    .await?;
                let old: &[u8] = row.try_get("digest")?;
                Ok(if old == r.digest.0 {
                    Recorded::Repeat {
                        seq: to_u64(row.try_get("seq")?)?,
                    }
                } else {
                    Recorded::Conflict
                })
            }
        }

        #[async_trait]
        impl NodeStore for $name {
            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn record(&self, receipt: &SignedReceipt, time: u64) -> Result<Recorded, StoreError> {
                // In its own task: a cancelled request (the wallet hung up after t answers) must not
                // stop an append between the INSERT and the head update.
                let (store, receipt) = (self.clone(), receipt.clone());
                tokio::spawn(async move { store.append(&receipt, time).await })
                    .await
                    .map_err(|e| StoreError::Corrupt(format!("append task: {e}")))?
            }

            async fn find(&self, receipt_id: &Id16) -> Result<Option<(u64, Digest32)>, StoreError> {
                let row = sqlx::query(&Self::sql("SELECT seq, digest FROM log_entries WHERE receipt_id = $1"))
                    .bind(receipt_id.0.as_slice())
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|row| {
                    Ok((
                        to_u64(row.try_get("seq")?)?,
                        digest(row.try_get::<&[u8], _>("digest")?)?,
                    ))
                })
                .transpose()
            }

            async fn entries(&self, after: u64, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
                let rows = sqlx::query(&Self::sql("SELECT seq, time, receipt, prev_hash, hash FROM log_entries \
                     WHERE seq > $1 ORDER BY seq LIMIT $2"))
                .bind(to_i64(after)?)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        entry_from_row(
                            row.try_get("seq")?,
                            row.try_get("time")?,
                            row.try_get::<&str, _>("receipt")?,
                            row.try_get::<&[u8], _>("prev_hash")?,
                            row.try_get::<&[u8], _>("hash")?,
                        )
                    })
                    .collect()
            }

            async fn head(&self) -> Result<(u64, Digest32), StoreError> {
                Ok(*self.head.lock().await)
            }

            async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
                let body = serde_json::to_string(checkpoint)
                    .map_err(|e| StoreError::Corrupt(format!("encode checkpoint: {e}")))?;
                sqlx::query(&Self::sql("INSERT INTO checkpoints (seq, body) VALUES ($1, $2) ON CONFLICT (seq) DO NOTHING"))
                .bind(to_i64(checkpoint.seq)?)
                .bind(body)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
                let rows = sqlx::query("SELECT body FROM checkpoints ORDER BY seq")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        let body: &str = row.try_get("body")?;
                        serde_json::from_str(body)
                            .map_err(|e| StoreError::Corrupt(format!("checkpoint: {e}")))
                    })
                    .collect()
            }
        }
    };
}

sql_store!(
    SqliteStore,
    sqlx::SqlitePool,
    ticketing_service::db::sqlite,
    "./migrations/sqlite",
    "?",
    "SQLite store (the embedded default)."
);
sql_store!(
    PostgresStore,
    sqlx::PgPool,
    ticketing_service::db::postgres,
    "./migrations/postgres",
    "$",
    "Postgres store."
);
