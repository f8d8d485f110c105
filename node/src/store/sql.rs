//! The node store on either database: the log's rules written once over
//! `ticketing_service::db` (SQLite and Postgres differ only in their migrations).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use ticketing_protocol::log::{Checkpoint, GENESIS, LogEntry};
use ticketing_protocol::receipt::SignedReceipt;
use ticketing_protocol::{Digest32, Id16};
use ticketing_service::db::{Conn, Database, Migrations, Query, Row, Tx, query};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{NodeStore, Recorded, StoreError, digest, entry_from_row, to_i64};

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

static MIGRATIONS: Migrations = Migrations {
    sqlite: &sqlx::migrate!("./migrations/sqlite"),
    postgres: &sqlx::migrate!("./migrations/postgres"),
};

/// The node's store on SQLite (the embedded default) or Postgres.
///
/// Appends go through one writer task that records every receipt waiting for it in one
/// transaction (group commit: one fsync for all of them), so concurrent purchases share the
/// cost of durability while the log stays one chain with gapless seqs.
#[derive(Debug, Clone)]
pub struct SqlStore {
    db: Database,
    /// `(seq, hash)` of the newest committed entry. Held by the writer while it commits a
    /// group, so readers never see a head the database does not have.
    head: Arc<Mutex<(u64, Digest32)>>,
    appends: mpsc::Sender<Append>,
    commits: Arc<AtomicU64>,
}

impl SqlStore {
    /// Connect (creating a SQLite file if needed), migrate and start the log writer.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let db = Database::open(url, &MIGRATIONS).await?;
        let head = Arc::new(Mutex::new(last_entry(&db).await?));
        let (appends, waiting) = mpsc::channel(4 * MAX_GROUP);
        let commits = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            db: db.clone(),
            conn: None,
            head: head.clone(),
            commits: commits.clone(),
        };
        tokio::spawn(writer.run(waiting));
        Ok(Self {
            db,
            head,
            appends,
            commits,
        })
    }

    /// The database, for tests that tamper with rows on purpose.
    pub fn database(&self) -> &Database {
        &self.db
    }
}

async fn last_entry(db: &Database) -> Result<(u64, Digest32), StoreError> {
    let row = query("SELECT seq, hash FROM log_entries ORDER BY seq DESC LIMIT 1")
        .fetch_optional(db)
        .await?;
    match row {
        None => Ok((0, GENESIS)),
        Some(row) => Ok((row.u64("seq")?, digest(row.bytes("hash")?)?)),
    }
}

/// A group's outcome: the new head, and each receipt's answer.
type Done = ((u64, Digest32), Vec<Result<Recorded, StoreError>>);

/// The log writer: takes every append waiting (at most [`MAX_GROUP`]), records them in one
/// transaction, answers each. It runs apart from the requests, so a request cancelled (the
/// wallet hung up after t answers) never stops an append half-way. It keeps one connection
/// of its own (taken again after a failure): no pool checkout and no liveness probe per group.
struct Writer {
    db: Database,
    conn: Option<Conn>,
    head: Arc<Mutex<(u64, Digest32)>>,
    commits: Arc<AtomicU64>,
}

impl Writer {
    async fn run(mut self, mut waiting: mpsc::Receiver<Append>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        while waiting.recv_many(&mut group, MAX_GROUP).await > 0 {
            gather(&mut waiting, &mut group).await;
            let results = self.append_group(&group).await;
            if results.iter().any(Result::is_ok) {
                self.commits.fetch_add(1, Ordering::Relaxed);
            }
            tracing::trace!(receipts = group.len(), "log group committed");
            for (append, result) in group.drain(..).zip(results) {
                let _ = append.reply.send(result);
            }
        }
    }

    async fn append_group(&mut self, group: &[Append]) -> Vec<Result<Recorded, StoreError>> {
        let head = self.head.clone();
        let mut head = head.lock().await;
        let failed = |e: StoreError| {
            let reason = e.to_string();
            group
                .iter()
                .map(|_| Err(StoreError::Unavailable(reason.clone())))
                .collect()
        };
        let (new_head, results) = match self.attempt(*head, group).await {
            Ok(done) => done,
            // Another writer took a seq (the constraint stopped a fork), or the database
            // hiccuped: nothing of the group was kept. Resynchronize and try once more.
            Err(StoreError::Unavailable(_) | StoreError::Refused(_)) => {
                match last_entry(&self.db).await {
                    Ok(h) => *head = h,
                    Err(e) => return failed(e),
                }
                match self.attempt(*head, group).await {
                    Ok(done) => done,
                    Err(e) => return failed(e),
                }
            }
            Err(e) => return failed(e),
        };
        *head = new_head;
        results
    }

    /// The group recorded atomically on the writer's connection: `Err` (nothing kept) on a
    /// database failure, after which the connection is dropped; a receipt that cannot be
    /// encoded fails alone.
    async fn attempt(
        &mut self,
        head: (u64, Digest32),
        group: &[Append],
    ) -> Result<Done, StoreError> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            none => none.insert(self.db.acquire().await?),
        };
        let done = match try_all_fresh(conn, head, group).await {
            Some(done) => Ok(done),
            None => try_one_by_one(conn, head, group).await,
        };
        if done.is_err() {
            // Whatever state the connection is in, the next attempt starts afresh.
            self.conn = None;
        }
        done
    }
}

/// The common case, every receipt of the group new: the entries are chained in memory and
/// written with one multi-row `INSERT`, which is atomic on its own (one round trip, one
/// commit). `None` when that does not hold (a repeat, a receipt that cannot be encoded, any
/// database error): the statement kept nothing, and the group goes one by one.
async fn try_all_fresh(
    conn: &mut Conn,
    mut head: (u64, Digest32),
    group: &[Append],
) -> Option<Done> {
    let mut insert = query(insert_rows(group.len())?);
    let mut entries = Vec::with_capacity(group.len());
    for append in group {
        let entry = LogEntry::new(head.0 + 1, append.time, append.receipt.clone(), head.1);
        let body = serde_json::to_string(&append.receipt).ok()?;
        insert = bind_entry(insert, &entry, body).ok()?;
        head = (entry.seq, entry.hash);
        entries.push(entry);
    }
    // A receipt seen before (the unique key on `receipt_id`) fails the statement, which keeps
    // none of its rows; the one-by-one path sorts it out.
    insert.execute(conn).await.ok()?;
    let results = entries
        .into_iter()
        .map(|entry| Ok(Recorded::Fresh(Box::new(entry))))
        .collect();
    Some((head, results))
}

/// The seven columns of one log entry, in `INSERT` order.
fn bind_entry(insert: Query, entry: &LogEntry, body: String) -> Result<Query, StoreError> {
    let r = &entry.receipt.receipt;
    Ok(insert
        .bind(to_i64(entry.seq)?)
        .bind(r.receipt_id.0.as_slice())
        .bind(r.digest.0.as_slice())
        .bind(to_i64(entry.time)?)
        .bind(body)
        .bind(entry.prev_hash.0.as_slice())
        .bind(entry.hash.0.as_slice()))
}

/// `INSERT` of `rows` log entries (1 to [`MAX_GROUP`]); each size built once and prepared
/// once on the writer's connection.
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
                format!(
                    "INSERT INTO log_entries (seq, receipt_id, digest, time, receipt, prev_hash, hash) VALUES {}",
                    values.join(", ")
                )
            })
            .collect()
    });
    texts.get(rows.checked_sub(1)?).map(String::as_str)
}

/// Each receipt in turn in one transaction, a repeat answered from its row.
async fn try_one_by_one(
    conn: &mut Conn,
    mut head: (u64, Digest32),
    group: &[Append],
) -> Result<Done, StoreError> {
    let mut tx = conn.begin_write().await?;
    let mut results = Vec::with_capacity(group.len());
    for append in group {
        match append_in(&mut tx, &mut head, &append.receipt, append.time).await {
            Err(e @ (StoreError::Unavailable(_) | StoreError::Refused(_))) => return Err(e),
            other => results.push(other),
        }
    }
    tx.commit().await?;
    Ok((head, results))
}

async fn append_in(
    tx: &mut Tx<'_>,
    head: &mut (u64, Digest32),
    receipt: &SignedReceipt,
    time: u64,
) -> Result<Recorded, StoreError> {
    let r = &receipt.receipt;
    let entry = LogEntry::new(head.0 + 1, time, receipt.clone(), head.1);
    let body = serde_json::to_string(receipt)
        .map_err(|e| StoreError::Corrupt(format!("encode receipt: {e}")))?;
    // A repeat of the receipt inserts nothing, and says so.
    let insert = query(
        "INSERT INTO log_entries (seq, receipt_id, digest, time, receipt, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (receipt_id) DO NOTHING",
    );
    if bind_entry(insert, &entry, body)?.execute(&mut *tx).await? == 1 {
        *head = (entry.seq, entry.hash);
        return Ok(Recorded::Fresh(Box::new(entry)));
    }
    let row = query("SELECT seq, digest FROM log_entries WHERE receipt_id = $1")
        .bind(r.receipt_id.0.as_slice())
        .fetch_one(&mut *tx)
        .await?;
    Ok(if row.bytes("digest")? == r.digest.0 {
        Recorded::Repeat {
            seq: row.u64("seq")?,
        }
    } else {
        Recorded::Conflict
    })
}

fn entry_of(row: &Row) -> Result<LogEntry, StoreError> {
    entry_from_row(
        row.get("seq")?,
        row.get("time")?,
        row.text("receipt")?,
        row.bytes("prev_hash")?,
        row.bytes("hash")?,
    )
}

#[async_trait]
impl NodeStore for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        query("SELECT 1").execute(&self.db).await?;
        Ok(())
    }

    async fn record(&self, receipt: &SignedReceipt, time: u64) -> Result<Recorded, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the log writer has stopped".into());
        self.appends
            .send(Append {
                receipt: receipt.clone(),
                time,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    async fn find(&self, receipt_id: &Id16) -> Result<Option<(u64, Digest32)>, StoreError> {
        let row = query("SELECT seq, digest FROM log_entries WHERE receipt_id = $1")
            .bind(receipt_id.0.as_slice())
            .fetch_optional(&self.db)
            .await?;
        row.map(|row| Ok((row.u64("seq")?, digest(row.bytes("digest")?)?)))
            .transpose()
    }

    async fn entries(&self, after: u64, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
        let rows = query(
            "SELECT seq, time, receipt, prev_hash, hash FROM log_entries \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(to_i64(after)?)
        .bind(limit)
        .fetch_all(&self.db)
        .await?;
        rows.iter().map(entry_of).collect()
    }

    async fn head(&self) -> Result<(u64, Digest32), StoreError> {
        Ok(*self.head.lock().await)
    }

    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let body = serde_json::to_string(checkpoint)
            .map_err(|e| StoreError::Corrupt(format!("encode checkpoint: {e}")))?;
        query("INSERT INTO checkpoints (seq, body) VALUES ($1, $2) ON CONFLICT (seq) DO NOTHING")
            .bind(to_i64(checkpoint.seq)?)
            .bind(body)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = query("SELECT body FROM checkpoints ORDER BY seq")
            .fetch_all(&self.db)
            .await?;
        rows.iter()
            .map(|row| {
                serde_json::from_str(row.text("body")?)
                    .map_err(|e| StoreError::Corrupt(format!("checkpoint: {e}")))
            })
            .collect()
    }
}
