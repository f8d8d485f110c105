//! The two sqlx backends of the ledger, generated from one definition: the SQL is the same
//! (`$n` placeholders, which both drivers read); the pool type, the connect function, the
//! transaction start and the migrations (column types) differ. Still a macro: moving the
//! ledger onto `ticketing_service::db` as the node and payments stores are is ADR-0020's
//! next step.
//!
//! SQLite has one writer at a time: its transactions start `IMMEDIATE` (the write lock is
//! taken up front, so a transaction never fails half-way on a lock upgrade) and writers queue
//! on an in-process mutex instead of spinning on the busy timeout. Postgres runs transactions
//! concurrently under READ COMMITTED; `INSERT .. ON CONFLICT DO NOTHING` waits for a
//! concurrent inserter of the same key and then sees its row, and a deadlock between two
//! batches is retried.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::Row;
use ticketing_crypto::keyset::KeysetId;
use ticketing_crypto::ticket::Serial;
use ticketing_protocol::ErrorCode;
use ticketing_protocol::Id16;
use ticketing_protocol::redeem::{AdminAction, DenyEntry, DenyReason, SyncStatus, Verdict};
use tokio::sync::Mutex;

use ticketing_protocol::partner::{EventKind, PartnerEvent, ProductTotals};

use super::{
    Device, DeviceInfo, Fare, FlagCounts, Issuance, LedgerCounts, LedgerStore, Mode, NewEvent,
    Outcome, Partner, PublicationStep, Retry, Role, ScanRecord, StoreError, Usage, Webhook,
    encode_outcome, id16_of, keyset_of, parse_reason, parse_role, reason_str, repeat_outcome,
    reused, serial_of, to_i64, to_u64,
};

/// A scan id as the ledger keys it: scoped to its device.
type ScanKey = (i64, Id16);

/// A scan id with what it scanned: stored answers are reused only for the same content.
type RepeatKey = (i64, Id16, Serial, u32);

/// `SELECT` of a partner row, then the rest of the query.
macro_rules! select_partner {
    ($rest:literal) => {
        concat!(
            "SELECT id, name, webhook_url, webhook_cursor, webhook_attempts, webhook_next_at, ",
            "webhook_delivered, webhook_skipped, created_at FROM partners ",
            $rest
        )
    };
}

/// Attempts of one batch transaction (conflicting scan ids found late, Postgres deadlocks).
const ATTEMPTS: usize = 4;

/// What applying the rules to one scan decided, before its scan row is written.
struct Applied {
    outcome: Outcome,
    accepted: bool,
    flag: Option<&'static str>,
}

/// The statement that serializes event appends across connections (see `insert_events`):
/// a transaction-scoped advisory lock on Postgres (any constant key, used for nothing else);
/// none on SQLite, whose writers are one at a time already.
fn events_lock(dialect: ticketing_service::db::Dialect) -> Option<&'static str> {
    dialect
        .is_postgres()
        .then_some("SELECT pg_advisory_xact_lock(7460150)")
}

macro_rules! sql_store {
    ($name:ident, $db:ty, $pool:ty, $connect:path, $migrations:literal, $dialect:expr,
     $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone)]
        pub struct $name {
            pool: $pool,
            /// Serializes this process's write transactions (SQLite only).
            writer: Arc<Mutex<()>>,
        }

        impl $name {
            /// Connect (creating a SQLite file if needed) and migrate.
            pub async fn open(url: &str) -> Result<Self, StoreError> {
                let pool = $connect(url).await?;
                sqlx::migrate!($migrations).run(&pool).await?;
                Ok(Self {
                    pool,
                    writer: Arc::new(Mutex::new(())),
                })
            }

            /// What this backend's SQL differs in.
            const DIALECT: ticketing_service::db::Dialect = $dialect;

            /// The pool, for tests that inspect rows.
            pub fn pool(&self) -> &$pool {
                &self.pool
            }

            async fn write_guard(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
                if Self::DIALECT.one_writer {
                    Some(self.writer.lock().await)
                } else {
                    None
                }
            }

            /// One attempt: `Ok(Err(scans))` when some scan ids turned out to be taken (rolled
            /// back; the caller reads their stored answers and tries again).
            async fn attempt(
                &self,
                mode: Mode,
                scans: &[ScanRecord],
                repeats: &HashMap<RepeatKey, Outcome>,
            ) -> Result<Result<Vec<Outcome>, Vec<Retry>>, StoreError> {
                let mut tx = self.pool.begin_with(Self::DIALECT.begin_write).await?;
                let mut events = Vec::new();
                let mut outcomes: Vec<Outcome> = Vec::with_capacity(scans.len());
                let mut in_batch: HashMap<ScanKey, usize> = HashMap::new();
                let mut taken = Vec::new();
                for scan in scans {
                    let key = (scan.device, scan.scan_id);
                    if let Some(o) = repeats.get(&(scan.device, scan.scan_id, scan.serial, scan.epoch)) {
                        outcomes.push(o.clone());
                        continue;
                    }
                    // The same scan id twice in one batch: a repeat if it is the same ticket
                    // and epoch, a reuse otherwise.
                    if let Some(&i) = in_batch.get(&key) {
                        let (first, first_scan) = outcomes
                            .get(i)
                            .cloned()
                            .zip(scans.get(i))
                            .ok_or_else(|| StoreError::Corrupt("batch bookkeeping".into()))?;
                        outcomes.push(
                            if first_scan.serial == scan.serial && first_scan.epoch == scan.epoch {
                                repeat_outcome(mode, &encode_outcome(&first)?)?
                            } else {
                                reused(mode)
                            },
                        );
                        continue;
                    }
                    let applied = Self::apply(&mut tx, mode, scan, &mut events).await?;
                    let inserted = sqlx::query("INSERT INTO scans (scan_id, keyset_id, serial, epoch, scanned_at, \
                         device_id, offline, accepted, flag, outcome) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                         ON CONFLICT (device_id, scan_id) DO NOTHING")
                    .bind(scan.scan_id.0.as_slice())
                    .bind(scan.keyset_id.0.as_slice())
                    .bind(scan.serial.0.as_slice())
                    .bind(i64::from(scan.epoch))
                    .bind(to_i64(scan.at)?)
                    .bind(scan.device)
                    .bind(matches!(mode, Mode::Offline { .. }))
                    .bind(applied.accepted)
                    .bind(applied.flag)
                    .bind(encode_outcome(&applied.outcome)?)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if inserted == 0 {
                        taken.push(Retry {
                            device: scan.device,
                            scan_id: scan.scan_id,
                            serial: scan.serial,
                            epoch: scan.epoch,
                        });
                    }
                    in_batch.insert(key, outcomes.len());
                    outcomes.push(applied.outcome);
                }
                if !taken.is_empty() {
                    tx.rollback().await?;
                    return Ok(Err(taken));
                }
                // Last, so the events lock (Postgres) is held only for the commit.
                Self::insert_events(&mut tx, &events).await?;
                tx.commit().await?;
                Ok(Ok(outcomes))
            }

            /// Append events (the feed) inside `tx`; returns how many were new (a purchase
            /// already recorded is skipped by `receipt_id UNIQUE`). On Postgres an advisory lock
            /// held until the commit serializes event writers, so ids become visible in order.
            async fn insert_events(
                tx: &mut sqlx::Transaction<'_, $db>,
                events: &[NewEvent],
            ) -> Result<u64, StoreError> {
                if events.is_empty() {
                    return Ok(0);
                }
                if let Some(lock) = events_lock(Self::DIALECT) {
                    sqlx::query(lock).execute(&mut **tx).await?;
                }
                let mut inserted = 0;
                for e in events {
                    inserted += sqlx::query("INSERT INTO events (kind, reason, event_time, keyset_id, product, tickets, \
                         amount, currency, receipt_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                         ON CONFLICT (receipt_id) DO NOTHING")
                    .bind(e.kind)
                    .bind(e.reason)
                    .bind(to_i64(e.at)?)
                    .bind(e.keyset_id.0.as_slice())
                    .bind(&e.product)
                    .bind(i64::from(e.tickets))
                    .bind(to_i64(e.amount)?)
                    .bind(&e.currency)
                    .bind(e.receipt_id.as_ref().map(|r| r.0.to_vec()))
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                }
                Ok(inserted)
            }

            async fn products_of(&self, partner: &[u8]) -> Result<Vec<String>, StoreError> {
                let rows = sqlx::query("SELECT product FROM partner_products WHERE partner_id = $1 ORDER BY product")
                .bind(partner)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| r.try_get::<String, _>("product").map_err(StoreError::from))
                    .collect()
            }

            async fn partner_of(&self, row: &<$db as sqlx::Database>::Row) -> Result<Partner, StoreError> {
                let id: &[u8] = row.try_get("id")?;
                let url: Option<String> = row.try_get("webhook_url")?;
                let webhook = match url {
                    None => None,
                    Some(url) => Some(Webhook {
                        url,
                        cursor: to_u64(row.try_get("webhook_cursor")?)?,
                        attempts: u32::try_from(row.try_get::<i64, _>("webhook_attempts")?)
                            .map_err(|_| StoreError::Corrupt("webhook attempts".into()))?,
                        next_at: to_u64(row.try_get("webhook_next_at")?)?,
                        delivered: to_u64(row.try_get("webhook_delivered")?)?,
                        skipped: to_u64(row.try_get("webhook_skipped")?)?,
                    }),
                };
                Ok(Partner {
                    id: id16_of(id)?,
                    name: row.try_get("name")?,
                    products: self.products_of(id).await?,
                    webhook,
                    created_at: to_u64(row.try_get("created_at")?)?,
                })
            }

            /// The ledger rules for one scan (see the crate docs).
            async fn apply(
                tx: &mut sqlx::Transaction<'_, $db>,
                mode: Mode,
                scan: &ScanRecord,
                events: &mut Vec<NewEvent>,
            ) -> Result<Applied, StoreError> {
                let serial = scan.serial.0.as_slice();
                let rejected = |code| Applied {
                    outcome: match mode {
                        Mode::Online => Outcome::Online(Verdict::Rejected { code }),
                        Mode::Offline { .. } => Outcome::Offline(SyncStatus::Rejected { code }),
                    },
                    accepted: false,
                    flag: None,
                };
                let denied = sqlx::query("SELECT reason FROM deny WHERE serial = $1")
                    .bind(serial)
                    .fetch_optional(&mut **tx)
                    .await?;
                if let Some(row) = denied {
                    let reason = parse_reason(row.try_get::<&str, _>("reason")?)?;
                    // Online, a denied serial is refused. A synced scan of a copied ticket
                    // still goes through the rules, so each further copy is recorded as one.
                    if mode == Mode::Online || reason == DenyReason::Revoked {
                        return Ok(rejected(ErrorCode::Revoked));
                    }
                }
                match scan.usage {
                    Usage::Single {
                        transfer_seconds,
                        window_end,
                    } => {
                        Self::apply_single(tx, mode, scan, transfer_seconds, window_end, events)
                            .await
                    }
                    Usage::Pass { valid_until } => {
                        Self::apply_pass(tx, mode, scan, valid_until, events).await
                    }
                }
            }

            async fn use_epoch(
                tx: &mut sqlx::Transaction<'_, $db>,
                scan: &ScanRecord,
            ) -> Result<bool, StoreError> {
                let n = sqlx::query("INSERT INTO uses (serial, epoch, keyset_id) VALUES ($1, $2, $3) \
                     ON CONFLICT (serial, epoch) DO NOTHING")
                .bind(scan.serial.0.as_slice())
                .bind(i64::from(scan.epoch))
                .bind(scan.keyset_id.0.as_slice())
                .execute(&mut **tx)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            /// Deny a serial inside `tx`; a new deny row queues its `revoked` event (no serial).
            async fn deny_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                keyset_id: &KeysetId,
                serial: &Serial,
                reason: DenyReason,
                fare: &Fare,
                at: u64,
                events: &mut Vec<NewEvent>,
            ) -> Result<bool, StoreError> {
                let new = sqlx::query("INSERT INTO deny (serial, keyset_id, reason, denied_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (serial) DO NOTHING")
                .bind(serial.0.as_slice())
                .bind(keyset_id.0.as_slice())
                .bind(reason_str(reason))
                .bind(to_i64(at)?)
                .execute(&mut **tx)
                .await?
                .rows_affected()
                    == 1;
                if new {
                    events.push(NewEvent::revoked(*keyset_id, reason, fare, at));
                }
                Ok(new)
            }

            async fn apply_single(
                tx: &mut sqlx::Transaction<'_, $db>,
                mode: Mode,
                scan: &ScanRecord,
                transfer: u64,
                window_end: u64,
                events: &mut Vec<NewEvent>,
            ) -> Result<Applied, StoreError> {
                let accepted = |outcome| Applied {
                    outcome,
                    accepted: true,
                    flag: None,
                };
                if scan.at >= window_end {
                    // After the window only a transfer of a first use inside it is valid
                    // (`verify::single_valid_until`): without one, nothing is recorded.
                    let known = sqlx::query("SELECT 1 FROM tickets WHERE serial = $1")
                        .bind(scan.serial.0.as_slice())
                        .fetch_optional(&mut **tx)
                        .await?;
                    if known.is_none() {
                        return Ok(Applied {
                            outcome: match mode {
                                Mode::Online => Outcome::Online(Verdict::Rejected {
                                    code: ErrorCode::Expired,
                                }),
                                Mode::Offline { .. } => Outcome::Offline(SyncStatus::Rejected {
                                    code: ErrorCode::Expired,
                                }),
                            },
                            accepted: false,
                            flag: None,
                        });
                    }
                }
                let until = scan.at.saturating_add(transfer);
                // It enters the filter when its transfer window ends, or now if that is past.
                let listed = until.max(scan.received);
                let first = sqlx::query("INSERT INTO tickets (serial, keyset_id, first_scan_id, first_at, until_at, listed_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (serial) DO NOTHING")
                .bind(scan.serial.0.as_slice())
                .bind(scan.keyset_id.0.as_slice())
                .bind(scan.scan_id.0.as_slice())
                .bind(to_i64(scan.at)?)
                .bind(to_i64(until)?)
                .bind(to_i64(listed)?)
                .execute(&mut **tx)
                .await?
                .rows_affected()
                    == 1;
                if first {
                    Self::use_epoch(tx, scan).await?;
                    return Ok(accepted(match mode {
                        Mode::Online => Outcome::Online(Verdict::Accepted { valid_until: until }),
                        Mode::Offline { .. } => Outcome::Offline(SyncStatus::Recorded),
                    }));
                }
                let row = sqlx::query("SELECT first_at, until_at FROM tickets WHERE serial = $1")
                .bind(scan.serial.0.as_slice())
                .fetch_one(&mut **tx)
                .await?;
                let first_at = to_u64(row.try_get("first_at")?)?;
                // A ticket's transfer time is the least of its scans': one shown on paper
                // (none) is spent by that ride, whichever scan came first.
                let recorded = to_u64(row.try_get("until_at")?)?.saturating_sub(first_at);
                let transfer = transfer.min(recorded);
                let until = scan.at.saturating_add(transfer);
                match mode {
                    Mode::Online => {
                        if scan.at < first_at.saturating_add(transfer) {
                            if Self::use_epoch(tx, scan).await? {
                                return Ok(accepted(Outcome::Online(Verdict::Accepted {
                                    valid_until: first_at.saturating_add(transfer),
                                })));
                            }
                            return Ok(Applied {
                                outcome: Outcome::Online(Verdict::Rejected {
                                    code: ErrorCode::ReplayedEpoch,
                                }),
                                accepted: false,
                                flag: None,
                            });
                        }
                        Ok(Applied {
                            outcome: Outcome::Online(Verdict::Rejected {
                                code: ErrorCode::Spent,
                            }),
                            accepted: false,
                            flag: None,
                        })
                    }
                    Mode::Offline { .. } => {
                        // Earliest scan wins: an offline scan older than the recorded first
                        // use becomes the first use.
                        let (winner_at, later_at) = if scan.at < first_at {
                            sqlx::query("UPDATE tickets SET first_scan_id = $1, first_at = $2, until_at = $3, \
                                 listed_at = $5 WHERE serial = $4 AND first_at > $2")
                            .bind(scan.scan_id.0.as_slice())
                            .bind(to_i64(scan.at)?)
                            .bind(to_i64(until)?)
                            .bind(scan.serial.0.as_slice())
                            .bind(to_i64(until.max(scan.received))?)
                            .execute(&mut **tx)
                            .await?;
                            (scan.at, first_at)
                        } else {
                            (first_at, scan.at)
                        };
                        let in_transfer = later_at < winner_at.saturating_add(transfer);
                        if in_transfer && Self::use_epoch(tx, scan).await? {
                            return Ok(accepted(Outcome::Offline(SyncStatus::Recorded)));
                        }
                        Self::deny_in(
                            tx,
                            &scan.keyset_id,
                            &scan.serial,
                            DenyReason::Duplicate,
                            &scan.fare,
                            scan.at,
                            events,
                        )
                        .await?;
                        if scan.at < first_at {
                            // This scan is the winner; the one recorded before is the copy.
                            sqlx::query("UPDATE scans SET flag = 'duplicate' WHERE serial = $1 AND scanned_at = $2")
                            .bind(scan.serial.0.as_slice())
                            .bind(to_i64(first_at)?)
                            .execute(&mut **tx)
                            .await?;
                            return Ok(accepted(Outcome::Offline(SyncStatus::Recorded)));
                        }
                        let code = if in_transfer {
                            ErrorCode::ReplayedEpoch
                        } else {
                            ErrorCode::Spent
                        };
                        Ok(Applied {
                            outcome: Outcome::Offline(SyncStatus::Conflict {
                                code,
                                first_scanned_at: winner_at,
                            }),
                            accepted: false,
                            flag: Some("duplicate"),
                        })
                    }
                }
            }

            async fn apply_pass(
                tx: &mut sqlx::Transaction<'_, $db>,
                mode: Mode,
                scan: &ScanRecord,
                valid_until: u64,
                events: &mut Vec<NewEvent>,
            ) -> Result<Applied, StoreError> {
                let fresh = Self::use_epoch(tx, scan).await?;
                match mode {
                    Mode::Online => Ok(if fresh {
                        Applied {
                            outcome: Outcome::Online(Verdict::Accepted { valid_until }),
                            accepted: true,
                            flag: None,
                        }
                    } else {
                        Applied {
                            outcome: Outcome::Online(Verdict::Rejected {
                                code: ErrorCode::ReplayedEpoch,
                            }),
                            accepted: false,
                            flag: None,
                        }
                    }),
                    Mode::Offline { sharing_window } => {
                        if !fresh {
                            let row = sqlx::query("SELECT MIN(scanned_at) AS first FROM scans \
                                 WHERE serial = $1 AND epoch = $2 AND accepted = $3")
                            .bind(scan.serial.0.as_slice())
                            .bind(i64::from(scan.epoch))
                            .bind(true)
                            .fetch_one(&mut **tx)
                            .await?;
                            let first: Option<i64> = row.try_get("first")?;
                            Self::deny_in(
                            tx,
                            &scan.keyset_id,
                            &scan.serial,
                            DenyReason::Duplicate,
                            &scan.fare,
                            scan.at,
                            events,
                        )
                        .await?;
                            return Ok(Applied {
                                outcome: Outcome::Offline(SyncStatus::Conflict {
                                    code: ErrorCode::ReplayedEpoch,
                                    first_scanned_at: first.map_or(Ok(scan.at), to_u64)?,
                                }),
                                accepted: false,
                                flag: Some("duplicate"),
                            });
                        }
                        let near = sqlx::query("SELECT 1 FROM scans WHERE serial = $1 AND device_id <> $2 \
                             AND accepted = $3 AND scanned_at >= $4 AND scanned_at <= $5 LIMIT 1")
                        .bind(scan.serial.0.as_slice())
                        .bind(scan.device)
                        .bind(true)
                        .bind(to_i64(scan.at.saturating_sub(sharing_window))?)
                        .bind(to_i64(scan.at.saturating_add(sharing_window))?)
                        .fetch_optional(&mut **tx)
                        .await?;
                        Ok(if near.is_some() {
                            Applied {
                                outcome: Outcome::Offline(SyncStatus::SuspectedSharing),
                                accepted: true,
                                flag: Some("suspected_sharing"),
                            }
                        } else {
                            Applied {
                                outcome: Outcome::Offline(SyncStatus::Recorded),
                                accepted: true,
                                flag: None,
                            }
                        })
                    }
                }
            }

            /// The stored answer of one retry, checked against what it scanned.
            async fn stored_outcome(&self, mode: Mode, retry: &Retry) -> Result<Option<Outcome>, StoreError> {
                let row = sqlx::query("SELECT outcome, serial, epoch FROM scans WHERE device_id = $1 AND scan_id = $2")
                .bind(retry.device)
                .bind(retry.scan_id.0.as_slice())
                .fetch_optional(&self.pool)
                .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let same = serial_of(row.try_get::<&[u8], _>("serial")?)? == retry.serial
                    && row.try_get::<i64, _>("epoch")? == i64::from(retry.epoch);
                if !same {
                    return Ok(Some(reused(mode)));
                }
                repeat_outcome(mode, row.try_get("outcome")?).map(Some)
            }

            async fn stored_outcomes(
                &self,
                mode: Mode,
                taken: &[Retry],
                repeats: &mut HashMap<RepeatKey, Outcome>,
            ) -> Result<(), StoreError> {
                for retry in taken {
                    let outcome = self.stored_outcome(mode, retry).await?.ok_or_else(|| {
                        StoreError::Corrupt("a taken scan id has no row".into())
                    })?;
                    repeats.insert((retry.device, retry.scan_id, retry.serial, retry.epoch), outcome);
                }
                Ok(())
            }

            fn keyset_list(keysets: &[KeysetId]) -> Vec<Vec<u8>> {
                keysets.iter().map(|k| k.0.to_vec()).collect()
            }

            /// Singles of `keysets` listed in (`after`, `until`] (from the start without
            /// `after`): one range of the `tickets_listed` index per keyset, read from the
            /// index alone, the serials of each `listed_at` concatenated into one value. A row
            /// per serial costs the driver about a microsecond each (1.2 s for a million on
            /// SQLite); a row per second listed costs a fraction of that.
            async fn listed_between(
                &self,
                keysets: &[KeysetId],
                after: Option<u64>,
                until: u64,
            ) -> Result<Vec<Serial>, StoreError> {
                let after = match after {
                    Some(a) => to_i64(a)?,
                    None => i64::MIN,
                };
                let concat = if Self::DIALECT.is_postgres() {
                    "string_agg(serial, ''::bytea)"
                } else {
                    // Bytes kept as they are (the database is UTF-8: no conversion).
                    "CAST(group_concat(serial, '') AS BLOB)"
                };
                let sql = format!(
                    "SELECT {concat} AS serials, count(*) AS n FROM tickets \
                     WHERE keyset_id = $1 AND listed_at > $2 AND listed_at <= $3 \
                     GROUP BY listed_at"
                );
                let mut tx = self.pool.begin().await?;
                if Self::DIALECT.is_postgres() {
                    // Postgres hashes the groups and holds every serial of the answer (32 bytes
                    // each) until it is done; with the default 4 MB of work_mem that spills to
                    // disk (1M serials: ~950 ms instead of ~640 ms). The coordinator holds them
                    // all in memory anyway; past this limit Postgres spills, still correct.
                    sqlx::query("SET LOCAL work_mem = '256MB'").execute(&mut *tx).await?;
                }
                let mut out = Vec::new();
                for k in Self::keyset_list(keysets) {
                    let rows = sqlx::query(&sql)
                        .bind(k)
                        .bind(after)
                        .bind(to_i64(until)?)
                        .fetch_all(&mut *tx)
                        .await?;
                    for row in &rows {
                        let serials: &[u8] = row.try_get("serials")?;
                        let n = to_u64(row.try_get("n")?)?;
                        if serials.len() as u64 != n.saturating_mul(32) {
                            return Err(StoreError::Corrupt(format!(
                                "{} bytes for {n} serials",
                                serials.len()
                            )));
                        }
                        out.reserve(serials.len() / 32);
                        for s in serials.chunks_exact(32) {
                            out.push(serial_of(s)?);
                        }
                    }
                }
                tx.commit().await?;
                Ok(out)
            }
        }

        #[async_trait]
        impl LedgerStore for $name {
            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn record(&self, mode: Mode, scans: &[ScanRecord]) -> Result<Vec<Outcome>, StoreError> {
                let _guard = self.write_guard().await;
                let mut repeats = HashMap::new();
                let mut last = None;
                for _ in 0..ATTEMPTS {
                    match self.attempt(mode, scans, &repeats).await {
                        Ok(Ok(outcomes)) => return Ok(outcomes),
                        Ok(Err(taken)) => self.stored_outcomes(mode, &taken, &mut repeats).await?,
                        // Deadlock or serialization failure between concurrent batches
                        // (Postgres): nothing was committed; try again.
                        Err(StoreError::Unavailable(e)) => last = Some(e),
                        Err(other) => return Err(other),
                    }
                }
                Err(last.map_or_else(
                    || StoreError::Corrupt("scan ids kept changing under the batch".into()),
                    StoreError::Unavailable,
                ))
            }

            async fn answered(
                &self,
                mode: Mode,
                retries: &[Retry],
            ) -> Result<Vec<Option<Outcome>>, StoreError> {
                let mut out = Vec::with_capacity(retries.len());
                for retry in retries {
                    out.push(self.stored_outcome(mode, retry).await?);
                }
                Ok(out)
            }

            async fn scan_accepted(&self, scan_id: &Id16) -> Result<Option<bool>, StoreError> {
                let row = sqlx::query("SELECT accepted FROM scans WHERE scan_id = $1 LIMIT 1")
                    .bind(scan_id.0.as_slice())
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|row| row.try_get::<bool, _>("accepted").map_err(StoreError::from))
                    .transpose()
            }

            async fn deny(
                &self,
                keyset_id: &KeysetId,
                serial: &Serial,
                reason: DenyReason,
                fare: &Fare,
                now: u64,
            ) -> Result<bool, StoreError> {
                let _guard = self.write_guard().await;
                let mut tx = self.pool.begin_with(Self::DIALECT.begin_write).await?;
                let mut events = Vec::new();
                let new =
                    Self::deny_in(&mut tx, keyset_id, serial, reason, fare, now, &mut events).await?;
                Self::insert_events(&mut tx, &events).await?;
                tx.commit().await?;
                Ok(new)
            }

            async fn record_issuances(&self, issuances: &[Issuance]) -> Result<u64, StoreError> {
                if issuances.is_empty() {
                    return Ok(0);
                }
                let _guard = self.write_guard().await;
                let mut tx = self.pool.begin_with(Self::DIALECT.begin_write).await?;
                let events: Vec<NewEvent> = issuances.iter().map(NewEvent::issued).collect();
                let inserted = Self::insert_events(&mut tx, &events).await?;
                tx.commit().await?;
                Ok(inserted)
            }

            async fn issued(&self, keyset_id: &KeysetId) -> Result<u64, StoreError> {
                let row = sqlx::query("SELECT CAST(COALESCE(SUM(tickets), 0) AS BIGINT) AS issued FROM events \
                     WHERE keyset_id = $1 AND kind = 'issued'")
                .bind(keyset_id.0.as_slice())
                .fetch_one(&self.pool)
                .await?;
                to_u64(row.try_get("issued")?)
            }

            async fn add_partner(&self, partner: &Partner, token_hash: &[u8; 32]) -> Result<(), StoreError> {
                let _guard = self.write_guard().await;
                let mut tx = self.pool.begin_with(Self::DIALECT.begin_write).await?;
                sqlx::query("INSERT INTO partners (id, name, token_hash, webhook_url, created_at) \
                     VALUES ($1, $2, $3, $4, $5)")
                .bind(partner.id.0.as_slice())
                .bind(&partner.name)
                .bind(token_hash.as_slice())
                .bind(partner.webhook.as_ref().map(|w| w.url.clone()))
                .bind(to_i64(partner.created_at)?)
                .execute(&mut *tx)
                .await?;
                for product in &partner.products {
                    sqlx::query("INSERT INTO partner_products (partner_id, product) VALUES ($1, $2) \
                         ON CONFLICT (partner_id, product) DO NOTHING")
                    .bind(partner.id.0.as_slice())
                    .bind(product)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn partner(&self, token_hash: &[u8; 32]) -> Result<Option<Partner>, StoreError> {
                let row = sqlx::query(select_partner!("WHERE token_hash = $1"))
                    .bind(token_hash.as_slice())
                    .fetch_optional(&self.pool)
                    .await?;
                match row {
                    Some(row) => Ok(Some(self.partner_of(&row).await?)),
                    None => Ok(None),
                }
            }

            async fn partners(&self) -> Result<Vec<Partner>, StoreError> {
                let rows = sqlx::query(select_partner!("ORDER BY name"))
                    .fetch_all(&self.pool)
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    out.push(self.partner_of(row).await?);
                }
                Ok(out)
            }

            async fn partner_events(
                &self,
                partner: &Id16,
                after: u64,
                limit: u32,
            ) -> Result<Vec<PartnerEvent>, StoreError> {
                let rows = sqlx::query("SELECT e.id, e.kind, e.reason, e.event_time, e.keyset_id, e.product, e.tickets, \
                     e.amount, e.currency, e.receipt_id FROM events e \
                     JOIN partner_products p ON p.product = e.product \
                     WHERE p.partner_id = $1 AND e.id > $2 ORDER BY e.id LIMIT $3")
                .bind(partner.0.as_slice())
                .bind(to_i64(after)?)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        let kind = match row.try_get::<&str, _>("kind")? {
                            "issued" => EventKind::Issued {
                                receipt_id: id16_of(
                                    row.try_get::<Option<&[u8]>, _>("receipt_id")?
                                        .unwrap_or_default(),
                                )?,
                            },
                            "revoked" => EventKind::Revoked {
                                reason: parse_reason(
                                    row.try_get::<Option<&str>, _>("reason")?.unwrap_or_default(),
                                )?,
                            },
                            other => {
                                return Err(StoreError::Corrupt(format!(
                                    "unknown event kind {other:?}"
                                )));
                            }
                        };
                        Ok(PartnerEvent {
                            id: to_u64(row.try_get("id")?)?,
                            time: to_u64(row.try_get("event_time")?)?,
                            keyset_id: keyset_of(row.try_get::<&[u8], _>("keyset_id")?)?,
                            product: row.try_get("product")?,
                            tickets: u32::try_from(row.try_get::<i64, _>("tickets")?)
                                .map_err(|_| StoreError::Corrupt("event tickets".into()))?,
                            amount: to_u64(row.try_get("amount")?)?,
                            currency: row.try_get("currency")?,
                            kind,
                        })
                    })
                    .collect()
            }

            async fn partner_totals(&self, partner: &Id16) -> Result<Vec<ProductTotals>, StoreError> {
                let rows = sqlx::query("SELECT e.product, e.currency, e.kind, \
                     CAST(SUM(e.tickets) AS BIGINT) AS tickets, CAST(SUM(e.amount) AS BIGINT) AS amount \
                     FROM events e JOIN partner_products p ON p.product = e.product \
                     WHERE p.partner_id = $1 GROUP BY e.product, e.currency, e.kind \
                     ORDER BY e.product, e.currency")
                .bind(partner.0.as_slice())
                .fetch_all(&self.pool)
                .await?;
                let mut totals: Vec<ProductTotals> = Vec::new();
                for row in &rows {
                    let product: String = row.try_get("product")?;
                    let currency: String = row.try_get("currency")?;
                    let tickets = to_u64(row.try_get("tickets")?)?;
                    let amount = to_u64(row.try_get("amount")?)?;
                    let i = match totals
                        .iter()
                        .position(|t| t.product == product && t.currency == currency)
                    {
                        Some(i) => i,
                        None => {
                            totals.push(ProductTotals {
                                product,
                                currency,
                                issued_tickets: 0,
                                issued_amount: 0,
                                revoked_tickets: 0,
                                revoked_amount: 0,
                            });
                            totals.len() - 1
                        }
                    };
                    let Some(t) = totals.get_mut(i) else { continue };
                    match row.try_get::<&str, _>("kind")? {
                        "issued" => {
                            t.issued_tickets = tickets;
                            t.issued_amount = amount;
                        }
                        _ => {
                            t.revoked_tickets = tickets;
                            t.revoked_amount = amount;
                        }
                    }
                }
                Ok(totals)
            }

            async fn webhook_done(
                &self,
                partner: &Id16,
                event_id: u64,
                delivered: bool,
            ) -> Result<(), StoreError> {
                let _guard = self.write_guard().await;
                let column = if delivered {
                    "UPDATE partners SET webhook_cursor = $2, webhook_attempts = 0, webhook_next_at = 0, \
                     webhook_delivered = webhook_delivered + 1 WHERE id = $1 AND webhook_cursor < $2"
                } else {
                    "UPDATE partners SET webhook_cursor = $2, webhook_attempts = 0, webhook_next_at = 0, \
                     webhook_skipped = webhook_skipped + 1 WHERE id = $1 AND webhook_cursor < $2"
                };
                sqlx::query(column)
                    .bind(partner.0.as_slice())
                    .bind(to_i64(event_id)?)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn webhook_failed(
                &self,
                partner: &Id16,
                attempts: u32,
                next_at: u64,
            ) -> Result<(), StoreError> {
                let _guard = self.write_guard().await;
                sqlx::query("UPDATE partners SET webhook_attempts = $2, webhook_next_at = $3 WHERE id = $1")
                .bind(partner.0.as_slice())
                .bind(i64::from(attempts))
                .bind(to_i64(next_at)?)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn deny_list(&self) -> Result<Vec<DenyEntry>, StoreError> {
                let rows = sqlx::query("SELECT serial, keyset_id, reason, denied_at FROM deny ORDER BY serial")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok(DenyEntry {
                            serial: serial_of(row.try_get::<&[u8], _>("serial")?)?,
                            keyset_id: keyset_of(row.try_get::<&[u8], _>("keyset_id")?)?,
                            reason: parse_reason(row.try_get::<&str, _>("reason")?)?,
                            denied_at: to_u64(row.try_get("denied_at")?)?,
                        })
                    })
                    .collect()
            }

            async fn spent(&self, keysets: &[KeysetId], now: u64) -> Result<Vec<Serial>, StoreError> {
                self.listed_between(keysets, None, now).await
            }

            async fn listed(
                &self,
                keysets: &[KeysetId],
                after: u64,
                until: u64,
            ) -> Result<Vec<Serial>, StoreError> {
                self.listed_between(keysets, Some(after), until).await
            }

            async fn prune(&self, keysets: &[KeysetId]) -> Result<u64, StoreError> {
                let _guard = self.write_guard().await;
                let mut deleted = 0;
                for k in Self::keyset_list(keysets) {
                    let mut tx = self.pool.begin_with(Self::DIALECT.begin_write).await?;
                    for table in [
                        "DELETE FROM tickets WHERE keyset_id = $1",
                        "DELETE FROM uses WHERE keyset_id = $1",
                        "DELETE FROM scans WHERE keyset_id = $1",
                        "DELETE FROM deny WHERE keyset_id = $1",
                    ] {
                        deleted += sqlx::query(table)
                            .bind(k.as_slice())
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                    }
                    tx.commit().await?;
                }
                Ok(deleted)
            }

            async fn counts(&self, keyset_id: &KeysetId) -> Result<LedgerCounts, StoreError> {
                let row = sqlx::query("SELECT \
                       (SELECT COUNT(DISTINCT serial) FROM scans WHERE keyset_id = $1 AND accepted = $2) AS redeemed, \
                       (SELECT COUNT(*) FROM scans WHERE keyset_id = $1 AND accepted = $2) AS scans, \
                       (SELECT COUNT(*) FROM deny WHERE keyset_id = $1) AS denied")
                .bind(keyset_id.0.as_slice())
                .bind(true)
                .fetch_one(&self.pool)
                .await?;
                Ok(LedgerCounts {
                    redeemed: to_u64(row.try_get("redeemed")?)?,
                    scans: to_u64(row.try_get("scans")?)?,
                    denied: to_u64(row.try_get("denied")?)?,
                })
            }

            async fn flags(&self) -> Result<FlagCounts, StoreError> {
                let row = sqlx::query(
                    "SELECT \
                       (SELECT COUNT(*) FROM scans WHERE flag = 'suspected_sharing') AS sharing, \
                       (SELECT COUNT(*) FROM scans WHERE flag = 'duplicate') AS duplicates",
                )
                .fetch_one(&self.pool)
                .await?;
                Ok(FlagCounts {
                    suspected_sharing: to_u64(row.try_get("sharing")?)?,
                    duplicates: to_u64(row.try_get("duplicates")?)?,
                })
            }

            async fn add_device(
                &self,
                token_hash: &[u8; 32],
                name: &str,
                role: Role,
                now: u64,
                replace: bool,
            ) -> Result<Device, StoreError> {
                let _guard = self.write_guard().await;
                let mut tx = self.pool.begin_with(Self::DIALECT.begin_write).await?;
                let live = sqlx::query("SELECT id FROM devices WHERE name = $1 AND revoked_at IS NULL")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
                if live.is_some() {
                    if !replace {
                        return Err(StoreError::Taken(name.to_owned()));
                    }
                    sqlx::query("UPDATE devices SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL")
                    .bind(to_i64(now)?)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                }
                let row = sqlx::query("INSERT INTO devices (token_hash, name, role, created_at) VALUES ($1, $2, $3, $4) \
                     RETURNING id")
                .bind(token_hash.as_slice())
                .bind(name)
                .bind(role.as_str())
                .bind(to_i64(now)?)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Device {
                    id: row.try_get("id")?,
                    name: name.to_owned(),
                    role,
                })
            }

            async fn device(&self, token_hash: &[u8; 32]) -> Result<Option<Device>, StoreError> {
                let row = sqlx::query("SELECT id, name, role FROM devices WHERE token_hash = $1 AND revoked_at IS NULL")
                .bind(token_hash.as_slice())
                .fetch_optional(&self.pool)
                .await?;
                row.map(|row| {
                    Ok(Device {
                        id: row.try_get("id")?,
                        name: row.try_get("name")?,
                        role: parse_role(row.try_get::<&str, _>("role")?)?,
                    })
                })
                .transpose()
            }

            async fn devices(&self) -> Result<Vec<DeviceInfo>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id, name, role, created_at, revoked_at FROM devices ORDER BY name, id",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(DeviceInfo {
                            device: Device {
                                id: row.try_get("id")?,
                                name: row.try_get("name")?,
                                role: parse_role(row.try_get::<&str, _>("role")?)?,
                            },
                            created_at: to_u64(row.try_get("created_at")?)?,
                            revoked_at: row
                                .try_get::<Option<i64>, _>("revoked_at")?
                                .map(to_u64)
                                .transpose()?,
                        })
                    })
                    .collect()
            }

            async fn revoke_device(&self, name: &str, now: u64) -> Result<u64, StoreError> {
                let _guard = self.write_guard().await;
                Ok(sqlx::query("UPDATE devices SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL")
                .bind(to_i64(now)?)
                .bind(name)
                .execute(&self.pool)
                .await?
                .rows_affected())
            }

            async fn record_action(
                &self,
                at: u64,
                actor: &str,
                action: &str,
                detail: &str,
            ) -> Result<(), StoreError> {
                let _guard = self.write_guard().await;
                sqlx::query("INSERT INTO admin_actions (at, actor, action, detail) VALUES ($1, $2, $3, $4)")
                .bind(to_i64(at)?)
                .bind(actor)
                .bind(action)
                .bind(detail)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn actions(&self, after: u64, limit: u32) -> Result<Vec<AdminAction>, StoreError> {
                let rows = sqlx::query("SELECT id, at, actor, action, detail FROM admin_actions WHERE id > $1 \
                     ORDER BY id LIMIT $2")
                .bind(to_i64(after)?)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(AdminAction {
                            id: to_u64(row.try_get("id")?)?,
                            at: to_u64(row.try_get("at")?)?,
                            actor: row.try_get("actor")?,
                            action: row.try_get("action")?,
                            detail: row.try_get("detail")?,
                        })
                    })
                    .collect()
            }

            async fn save_publication(
                &self,
                version: u64,
                body: &str,
                step: &PublicationStep,
                keep_from: u64,
            ) -> Result<bool, StoreError> {
                let _guard = self.write_guard().await;
                let mut tx = self.pool.begin_with(Self::DIALECT.begin_write).await?;
                let stored = sqlx::query("INSERT INTO publications (version, body) VALUES ($1, $2) \
                     ON CONFLICT (version) DO NOTHING")
                .bind(to_i64(version)?)
                .bind(body)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if !stored {
                    return Ok(false);
                }
                sqlx::query("INSERT INTO publication_steps (version, fresh, digest, changes) \
                     VALUES ($1, $2, $3, $4)")
                .bind(to_i64(step.version)?)
                .bind(i64::from(step.fresh))
                .bind(step.digest.as_slice())
                .bind(step.changes_bytes())
                .execute(&mut *tx)
                .await?;
                // Only the newest is served; older ones are history nobody reads.
                sqlx::query("DELETE FROM publications WHERE version < $1")
                    .bind(to_i64(version)?)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM publication_steps WHERE version < $1")
                    .bind(to_i64(keep_from)?)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn publication_steps(&self) -> Result<Vec<PublicationStep>, StoreError> {
                let rows = sqlx::query(
                    "SELECT version, fresh, digest, changes FROM publication_steps ORDER BY version",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        let digest: &[u8] = row.try_get("digest")?;
                        Ok(PublicationStep {
                            version: to_u64(row.try_get("version")?)?,
                            fresh: row.try_get::<i64, _>("fresh")? != 0,
                            digest: digest
                                .try_into()
                                .map_err(|_| StoreError::Corrupt("publication step digest".into()))?,
                            changes: PublicationStep::changes_from(row.try_get("changes")?)?,
                        })
                    })
                    .collect()
            }

            async fn lease(
                &self,
                name: &str,
                holder: &Id16,
                now: u64,
                until: u64,
            ) -> Result<bool, StoreError> {
                let _guard = self.write_guard().await;
                let held = sqlx::query("INSERT INTO leases (name, holder, until_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                     until_at = excluded.until_at \
                     WHERE leases.until_at <= $4 OR leases.holder = excluded.holder")
                .bind(name)
                .bind(holder.0.as_slice())
                .bind(to_i64(until)?)
                .bind(to_i64(now)?)
                .execute(&self.pool)
                .await?
                .rows_affected()
                    == 1;
                Ok(held)
            }

            async fn latest_publication(&self) -> Result<Option<(u64, String)>, StoreError> {
                let row = sqlx::query("SELECT version, body FROM publications ORDER BY version DESC LIMIT 1")
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|row| Ok((to_u64(row.try_get("version")?)?, row.try_get("body")?)))
                    .transpose()
            }
        }
    };
}

sql_store!(
    SqliteStore,
    sqlx::Sqlite,
    sqlx::SqlitePool,
    ticketing_service::db::sqlite,
    "./migrations/sqlite",
    ticketing_service::db::Dialect::SQLITE,
    "SQLite ledger (the embedded default)."
);
sql_store!(
    PostgresStore,
    sqlx::Postgres,
    sqlx::PgPool,
    ticketing_service::db::postgres,
    "./migrations/postgres",
    ticketing_service::db::Dialect::POSTGRES,
    "Postgres ledger."
);
