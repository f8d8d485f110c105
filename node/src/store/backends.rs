//! The two sqlx backends of the node store, generated from one definition: the SQL is the same,
//! only the pool type, the connect function, the placeholder sigil (`$1` for Postgres, `?1` for
//! SQLite) and the migrations (column types) differ.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use sqlx::Row;
use ticketing_protocol::log::{Checkpoint, GENESIS, LogEntry};
use ticketing_protocol::receipt::SignedReceipt;
use ticketing_protocol::{Digest32, Id16};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{NodeStore, Recorded, StoreError, digest, entry_from_row, to_i64, to_u64};

/// Most receipts one group records: one multi-row `INSERT` of up to 448 parameters, and 64
/// prepared statements on the writer's connection (sqlx caches 100 per connection).
const MAX_GROUP: usize = 64;

/// Scheduler turns the writer yields for more appends once several are waiting.
const GATHER_TURNS: usize = 4;

/// A receipt waiting for the log writer, and where its answer goes.
struct Append {
    receipt: SignedReceipt,
    time: u64,
    reply: oneshot::Sender<Result<Recorded, StoreError>>,
}

/// Under load (more than one append was waiting), let the requests already on the
/// runtime reach the writer before it commits: yield while each turn brings more,
/// at most a few turns. No timer, so an idle node commits a lone append at once.
async fn gather(waiting: &mut mpsc::Receiver<Append>, group: &mut Vec<Append>) {
    if group.len() < 2 {
        return;
    }
    for _ in 0..GATHER_TURNS {
        let before = group.len();
        tokio::task::yield_now().await;
        while group.len() < MAX_GROUP {
            match waiting.try_recv() {
                Ok(append) => group.push(append),
                Err(_) => break,
            }
        }
        if group.len() == before || group.len() >= MAX_GROUP {
            return;
        }
    }
}

macro_rules! sql_store {
    ($name:ident, $pool:ty, $connect:path, $migrations:literal, $dialect:expr, $doc:literal) => {
        #[doc = $doc]
        ///
        /// Appends go through one writer task that records every receipt waiting for it in one
        /// transaction (group commit: one fsync for all of them), so concurrent purchases share
        /// the cost of durability while the log stays one chain with gapless seqs.
        #[derive(Debug, Clone)]
        pub struct $name {
            pool: $pool,
            /// `(seq, hash)` of the newest committed entry. Held by the writer while it commits
            /// a group, so readers never see a head the database does not have.
            head: Arc<Mutex<(u64, Digest32)>>,
            appends: mpsc::Sender<Append>,
            commits: Arc<AtomicU64>,
        }

        impl $name {
            /// Connect (creating a SQLite file if needed), migrate and start the log writer.
            pub async fn open(url: &str) -> Result<Self, StoreError> {
                let pool = $connect(url).await?;
                sqlx::migrate!($migrations).run(&pool).await?;
                let head = Arc::new(Mutex::new(Self::last_entry(&pool).await?));
                let (appends, waiting) = mpsc::channel(4 * MAX_GROUP);
                let commits = Arc::new(AtomicU64::new(0));
                tokio::spawn(Self::write_loop(
                    pool.clone(),
                    head.clone(),
                    commits.clone(),
                    waiting,
                ));
                Ok(Self {
                    pool,
                    head,
                    appends,
                    commits,
                })
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

            /// What this backend's SQL differs in.
            const DIALECT: ticketing_service::db::Dialect = $dialect;

            /// The SQL below is written with `$n` placeholders; this backend's form.
            fn sql(text: &'static str) -> std::borrow::Cow<'static, str> {
                Self::DIALECT.sql(text)
            }

            /// The pool, for tests that tamper with rows on purpose.
            pub fn pool(&self) -> &$pool {
                &self.pool
            }
        }

        impl $name {
            /// The log writer: takes every append waiting (at most [`MAX_GROUP`]), records them
            /// in one transaction, answers each. It runs apart from the requests, so a request
            /// cancelled (the wallet hung up after t answers) never stops an append half-way.
            /// It keeps one connection of its own (taken again after a failure): no pool
            /// checkout and no liveness probe per group.
            async fn write_loop(
                pool: $pool,
                head: Arc<Mutex<(u64, Digest32)>>,
                commits: Arc<AtomicU64>,
                mut waiting: mpsc::Receiver<Append>,
            ) {
                let mut group = Vec::with_capacity(MAX_GROUP);
                let mut conn = None;
                while waiting.recv_many(&mut group, MAX_GROUP).await > 0 {
                    gather(&mut waiting, &mut group).await;
                    let results = Self::append_group(&pool, &mut conn, &head, &group).await;
                    if results.iter().any(Result::is_ok) {
                        commits.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::trace!(receipts = group.len(), "log group committed");
                    for (append, result) in group.drain(..).zip(results) {
                        let _ = append.reply.send(result);
                    }
                }
            }

            async fn append_group(
                pool: &$pool,
                conn: &mut Option<sqlx::pool::PoolConnection<<$pool as PoolDatabase>::Db>>,
                head: &Mutex<(u64, Digest32)>,
                group: &[Append],
            ) -> Vec<Result<Recorded, StoreError>> {
                let mut head = head.lock().await;
                let failed = |e: StoreError| {
                    let reason = e.to_string();
                    group
                        .iter()
                        .map(|_| Err(StoreError::Unavailable(reason.clone())))
                        .collect()
                };
                let attempt = async |conn: &mut Option<_>, head: (u64, Digest32)| {
                    if conn.is_none() {
                        *conn = Some(pool.acquire().await?);
                    }
                    let Some(c) = conn.as_mut() else {
                        return Err(StoreError::Unavailable("no connection".into()));
                    };
                    let done = Self::try_group(c, head, group).await;
                    if done.is_err() {
                        // Whatever state the connection is in, the next attempt starts afresh.
                        *conn = None;
                    }
                    done
                };
                let (new_head, results) = match attempt(conn, *head).await {
                    Ok(done) => done,
                    // Another writer took a seq (the constraint stopped a fork), or the database
                    // hiccuped: nothing of the group was kept. Resynchronize and try once more.
                    Err(StoreError::Unavailable(_)) => {
                        match Self::last_entry(pool).await {
                            Ok(h) => *head = h,
                            Err(e) => return failed(e),
                        }
                        match attempt(conn, *head).await {
                            Ok(done) => done,
                            Err(e) => return failed(e),
                        }
                    }
                    Err(e) => return failed(e),
                };
                *head = new_head;
                results
            }

            /// The group recorded atomically: `Err` (nothing kept) on a database failure; a
            /// receipt that cannot be encoded fails alone.
            async fn try_group(
                conn: &mut <<$pool as PoolDatabase>::Db as sqlx::Database>::Connection,
                head: (u64, Digest32),
                group: &[Append],
            ) -> Result<((u64, Digest32), Vec<Result<Recorded, StoreError>>), StoreError> {
                if let Some(done) = Self::try_all_fresh(conn, head, group).await {
                    return Ok(done);
                }
                Self::try_one_by_one(conn, head, group).await
            }

            /// The common case, every receipt of the group new: the entries are chained in
            /// memory and written with one multi-row `INSERT`, which is atomic on its own (one
            /// round trip, one commit). `None` when that does not hold (a repeat, a receipt that
            /// cannot be encoded, any database error): the statement kept nothing, and the
            /// group goes one by one.
            async fn try_all_fresh(
                conn: &mut <<$pool as PoolDatabase>::Db as sqlx::Database>::Connection,
                mut head: (u64, Digest32),
                group: &[Append],
            ) -> Option<((u64, Digest32), Vec<Result<Recorded, StoreError>>)> {
                let mut rows = Vec::with_capacity(group.len());
                for append in group {
                    let entry = LogEntry::new(head.0 + 1, append.time, append.receipt.clone(), head.1);
                    let body = serde_json::to_string(&append.receipt).ok()?;
                    let (seq, time) = (to_i64(entry.seq).ok()?, to_i64(append.time).ok()?);
                    head = (entry.seq, entry.hash);
                    rows.push((entry, body, seq, time));
                }
                let mut query = sqlx::query(Self::insert_rows(rows.len())?);
                for (entry, body, seq, time) in &rows {
                    let r = &entry.receipt.receipt;
                    query = query
                        .bind(*seq)
                        .bind(r.receipt_id.0.as_slice())
                        .bind(r.digest.0.as_slice())
                        .bind(*time)
                        .bind(body.as_str())
                        .bind(entry.prev_hash.0.as_slice())
                        .bind(entry.hash.0.as_slice());
                }
                // A receipt seen before (the unique key on `receipt_id`) fails the statement,
                // which keeps none of its rows; the one-by-one path sorts it out.
                query.execute(&mut *conn).await.ok()?;
                let results = rows
                    .into_iter()
                    .map(|(entry, ..)| Ok(Recorded::Fresh(Box::new(entry))))
                    .collect();
                Some((head, results))
            }

            /// `INSERT` of `rows` log entries (1 to [`MAX_GROUP`]), this backend's
            /// placeholders; each size built once and prepared once on the writer's connection.
            fn insert_rows(rows: usize) -> Option<&'static str> {
                static TEXTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
                let texts = TEXTS.get_or_init(|| {
                    (1..=MAX_GROUP)
                        .map(|size| {
                            let values: Vec<String> = (0..size)
                                .map(|row| {
                                    let cols: Vec<String> =
                                        (1..=7).map(|c| format!("${}", row * 7 + c)).collect();
                                    format!("({})", cols.join(", "))
                                })
                                .collect();
                            let text = format!(
                                "INSERT INTO log_entries (seq, receipt_id, digest, time, receipt, prev_hash, hash) VALUES {}",
                                values.join(", ")
                            );
                            Self::DIALECT.sql(&text).into_owned()
                        })
                        .collect()
                });
                texts.get(rows.checked_sub(1)?).map(String::as_str)
            }

            /// Each receipt in turn in one transaction, a repeat answered from its row.
            async fn try_one_by_one(
                conn: &mut <<$pool as PoolDatabase>::Db as sqlx::Database>::Connection,
                mut head: (u64, Digest32),
                group: &[Append],
            ) -> Result<((u64, Digest32), Vec<Result<Recorded, StoreError>>), StoreError> {
                let mut tx = sqlx::Connection::begin(conn).await?;
                let mut results = Vec::with_capacity(group.len());
                for append in group {
                    match Self::append_in(&mut tx, &mut head, &append.receipt, append.time).await {
                        Err(StoreError::Unavailable(e)) => return Err(StoreError::Unavailable(e)),
                        other => results.push(other),
                    }
                }
                tx.commit().await?;
                Ok((head, results))
            }

            async fn append_in(
                tx: &mut sqlx::Transaction<'_, <$pool as PoolDatabase>::Db>,
                head: &mut (u64, Digest32),
                receipt: &SignedReceipt,
                time: u64,
            ) -> Result<Recorded, StoreError> {
                let r = &receipt.receipt;
                let entry = LogEntry::new(head.0 + 1, time, receipt.clone(), head.1);
                let body = serde_json::to_string(receipt)
                    .map_err(|e| StoreError::Corrupt(format!("encode receipt: {e}")))?;
                let (seq, time) = (to_i64(entry.seq)?, to_i64(time)?);
                // A repeat of the receipt inserts nothing, and says so.
                let done = sqlx::query(&Self::sql("INSERT INTO log_entries (seq, receipt_id, digest, time, receipt, prev_hash, hash) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (receipt_id) DO NOTHING"))
                .bind(seq)
                .bind(r.receipt_id.0.as_slice())
                .bind(r.digest.0.as_slice())
                .bind(time)
                .bind(body)
                .bind(entry.prev_hash.0.as_slice())
                .bind(entry.hash.0.as_slice())
                .execute(&mut **tx)
                .await?;
                if done.rows_affected() == 1 {
                    *head = (entry.seq, entry.hash);
                    return Ok(Recorded::Fresh(Box::new(entry)));
                }
                let row = sqlx::query(&Self::sql("SELECT seq, digest FROM log_entries WHERE receipt_id = $1"))
                    .bind(r.receipt_id.0.as_slice())
                    .fetch_one(&mut **tx)
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
                let (reply, answer) = oneshot::channel();
                let stopped = || StoreError::Unavailable("the log writer has stopped".into());
                self.appends
                    .send(Append { receipt: receipt.clone(), time, reply })
                    .await
                    .map_err(|_| stopped())?;
                answer.await.map_err(|_| stopped())?
            }

            fn commits(&self) -> u64 {
                self.commits.load(Ordering::Relaxed)
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

/// The database type of a pool, so one definition can name each backend's transaction.
trait PoolDatabase {
    type Db: sqlx::Database;
}

impl<D: sqlx::Database> PoolDatabase for sqlx::Pool<D> {
    type Db = D;
}

sql_store!(
    SqliteStore,
    sqlx::SqlitePool,
    ticketing_service::db::sqlite,
    "./migrations/sqlite",
    ticketing_service::db::Dialect::SQLITE,
    "SQLite store (the embedded default)."
);
sql_store!(
    PostgresStore,
    sqlx::PgPool,
    ticketing_service::db::postgres,
    "./migrations/postgres",
    ticketing_service::db::Dialect::POSTGRES,
    "Postgres store."
);
