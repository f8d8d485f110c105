//! The spent ledger: each scan's answer decided by the rules below inside one transaction per
//! batch, the deny list, the filter's members, pruning and counts.
//!
//! The SQL is the same on both databases but for the filter query ([`listed_between`]):
//! the bytes aggregate and Postgres' working memory.

use std::collections::HashMap;

use async_trait::async_trait;
use ticketing_crypto::keyset::KeysetId;
use ticketing_crypto::ticket::Serial;
use ticketing_protocol::redeem::{DenyEntry, DenyReason, SyncStatus, Verdict};
use ticketing_protocol::{ErrorCode, Id16};
use ticketing_service::db::{Backend, Tx, query};

use super::partners::{NewEvent, insert_events};
use super::{SqlStore, StoreError, keyset_of, parse_reason, reason_str, serial_of, to_i64};

/// How a product is used, as the ledger needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// Spent at the first scan, which must fall inside the keyset's window; valid
    /// `transfer_seconds` more after it, past the window's end too
    /// (`protocol::verify::single_valid_until`).
    Single {
        /// Transfer window (0: none).
        transfer_seconds: u64,
        /// The keyset window's end: no first use at or after it.
        window_end: u64,
    },
    /// Valid until the keyset's window ends; each (serial, epoch) once.
    Pass {
        /// The keyset window's end.
        valid_until: u64,
    },
}

/// A scan that passed every cryptographic check, ready for the ledger. Its scan id is scoped
/// to its device and bound to its (serial, epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanRecord {
    /// Validator-chosen id.
    pub scan_id: Id16,
    /// Keyset of the ticket.
    pub keyset_id: KeysetId,
    /// The ticket's serial.
    pub serial: Serial,
    /// The presentation's epoch.
    pub epoch: u32,
    /// When it counts: the coordinator's clock online, the validator's scan time offline.
    pub at: u64,
    /// The coordinator's clock when it received the scan (`at` online).
    pub received: u64,
    /// The device that scanned.
    pub device: i64,
    /// Single or pass.
    pub usage: Usage,
    /// The product's fare (recorded in the event if the serial gets denied as a copy).
    pub fare: Fare,
}

/// A product's name and price as the manifest states them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fare {
    /// Product name.
    pub product: String,
    /// Price of one ticket, minor units.
    pub price: u64,
    /// ISO 4217 code.
    pub currency: String,
}

/// Online redemption or offline sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `POST /v1/redeem`: the validator waits for the verdict.
    Online,
    /// `POST /v1/sync`: the validator already let the passenger through.
    Offline {
        /// Scans of one pass by different devices closer than this are suspected sharing.
        sharing_window: u64,
    },
}

/// What the ledger made of one scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Online verdict (repeated verbatim for a retried scan id).
    Online(Verdict),
    /// Sync status (`AlreadySynced` for a scan id seen before).
    Offline(SyncStatus),
}

/// A scan refused before the ledger for a reason that depends on the time (a stale epoch, an
/// ended window, a timestamp in the future): if its (device, scan id) was answered before, for
/// the same ticket and epoch, the stored answer wins (a late retry of an accepted scan is
/// still accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// The device that scanned.
    pub device: i64,
    /// Its scan id.
    pub scan_id: Id16,
    /// The ticket's serial.
    pub serial: Serial,
    /// The presentation's epoch.
    pub epoch: u32,
}

/// Per-keyset counts for the stats endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerCounts {
    /// Distinct serials with an accepted scan.
    pub redeemed: u64,
    /// Accepted scans.
    pub scans: u64,
    /// Denied serials.
    pub denied: u64,
}

/// Flag counts for the stats endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlagCounts {
    /// Scans flagged as suspected sharing.
    pub suspected_sharing: u64,
    /// Scans recorded as duplicates.
    pub duplicates: u64,
}

/// The spent ledger and the deny list.
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Whether the database answers (`/health`).
    async fn ping(&self) -> Result<(), StoreError>;
    /// Apply the ledger rules to `scans` in one transaction; one outcome per scan, in order.
    async fn record(&self, mode: Mode, scans: &[ScanRecord]) -> Result<Vec<Outcome>, StoreError>;
    /// The stored answers of scans refused before the ledger ([`Retry`]), one per retry in
    /// order: the answer (as [`repeat_outcome`] gives it) when the device answered that scan id
    /// for the same ticket and epoch, `scan_id_reused` for another, `None` when it never did.
    async fn answered(
        &self,
        mode: Mode,
        retries: &[Retry],
    ) -> Result<Vec<Option<Outcome>>, StoreError>;
    /// Whether scan `scan_id` (of any device) is in the ledger, and if so whether it was
    /// accepted.
    async fn scan_accepted(&self, scan_id: &Id16) -> Result<Option<bool>, StoreError>;
    /// Put a serial on the deny list (idempotent; the first reason stays). A new entry also
    /// records its `revoked` event (valued at `fare`), in the same transaction. Returns whether
    /// the entry is new.
    async fn deny(
        &self,
        keyset_id: &KeysetId,
        serial: &Serial,
        reason: DenyReason,
        fare: &Fare,
        now: u64,
    ) -> Result<bool, StoreError>;
    /// The deny list.
    async fn deny_list(&self) -> Result<Vec<DenyEntry>, StoreError>;
    /// Singles of `keysets` whose use (first scan + transfer window) ended at or before `now`:
    /// the filter's members (a full rebuild).
    async fn spent(&self, keysets: &[KeysetId], now: u64) -> Result<Vec<Serial>, StoreError>;
    /// Singles of `keysets` listed for the filter in (`after`, `until`]: listed when their
    /// transfer window ended, or when the ledger learnt of them if that was later (an
    /// incremental update; repeats are harmless).
    async fn listed(
        &self,
        keysets: &[KeysetId],
        after: u64,
        until: u64,
    ) -> Result<Vec<Serial>, StoreError>;
    /// Delete every row of `keysets` (expired); returns the number of rows deleted.
    async fn prune(&self, keysets: &[KeysetId]) -> Result<u64, StoreError>;
    /// Counts for one keyset.
    async fn counts(&self, keyset_id: &KeysetId) -> Result<LedgerCounts, StoreError>;
    /// Flag counts over the whole ledger.
    async fn flags(&self) -> Result<FlagCounts, StoreError>;
}

/// Stored answers are JSON of the wire types.
fn encode_outcome(o: &Outcome) -> Result<String, StoreError> {
    match o {
        Outcome::Online(v) => serde_json::to_string(v),
        Outcome::Offline(s) => serde_json::to_string(s),
    }
    .map_err(|e| StoreError::Corrupt(format!("encode outcome: {e}")))
}

/// The refusal of a scan id this device used for another ticket or epoch.
fn reused(mode: Mode) -> Outcome {
    let code = ErrorCode::ScanIdReused;
    match mode {
        Mode::Online => Outcome::Online(Verdict::Rejected { code }),
        Mode::Offline { .. } => Outcome::Offline(SyncStatus::Rejected { code }),
    }
}

/// The answer to a scan id seen before, for the same ticket and epoch: the stored verdict
/// online; offline `AlreadySynced` for a scan that was recorded, and the stored refusal for one
/// that was refused (a validator that re-sends a refused scan must keep it refused, not be told
/// it is done).
pub fn repeat_outcome(mode: Mode, stored: &str) -> Result<Outcome, StoreError> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("stored outcome: {e}"));
    match mode {
        Mode::Offline { .. } => Ok(Outcome::Offline(
            match serde_json::from_str::<SyncStatus>(stored) {
                Ok(SyncStatus::Rejected { code }) => SyncStatus::Rejected { code },
                Ok(_) => SyncStatus::AlreadySynced,
                // First seen online: accepted is recorded; a refusal stays one.
                Err(_) => match serde_json::from_str::<Verdict>(stored).map_err(corrupt)? {
                    Verdict::Accepted { .. } => SyncStatus::AlreadySynced,
                    Verdict::Rejected { code } => SyncStatus::Rejected { code },
                },
            },
        )),
        Mode::Online => match serde_json::from_str::<Verdict>(stored) {
            Ok(v) => Ok(Outcome::Online(v)),
            // First seen through sync: it was accepted offline; online it is now spent.
            Err(_) => match serde_json::from_str::<SyncStatus>(stored).map_err(corrupt)? {
                SyncStatus::Rejected { code } => Ok(Outcome::Online(Verdict::Rejected { code })),
                _ => Ok(Outcome::Online(Verdict::Rejected {
                    code: ErrorCode::Spent,
                })),
            },
        },
    }
}

/// A scan id as the ledger keys it: scoped to its device.
type ScanKey = (i64, Id16);

/// A scan id with what it scanned: stored answers are reused only for the same content.
type RepeatKey = (i64, Id16, Serial, u32);

/// Attempts of one batch transaction (conflicting scan ids found late, Postgres deadlocks).
const ATTEMPTS: usize = 4;

/// What applying the rules to one scan decided, before its scan row is written.
struct Applied {
    outcome: Outcome,
    accepted: bool,
    flag: Option<&'static str>,
}

impl Applied {
    fn accepted(outcome: Outcome) -> Self {
        Self {
            outcome,
            accepted: true,
            flag: None,
        }
    }

    fn rejected(mode: Mode, code: ErrorCode) -> Self {
        Self {
            outcome: match mode {
                Mode::Online => Outcome::Online(Verdict::Rejected { code }),
                Mode::Offline { .. } => Outcome::Offline(SyncStatus::Rejected { code }),
            },
            accepted: false,
            flag: None,
        }
    }

    /// An offline scan that conflicts with the recorded use of its ticket: flagged as a copy.
    fn conflict(code: ErrorCode, first_scanned_at: u64) -> Self {
        Self {
            outcome: Outcome::Offline(SyncStatus::Conflict {
                code,
                first_scanned_at,
            }),
            accepted: false,
            flag: Some("duplicate"),
        }
    }
}

/// One attempt at a batch: `Ok(Err(scans))` when some scan ids turned out to be taken (rolled
/// back; the caller reads their stored answers and tries again).
async fn attempt(
    store: &SqlStore,
    mode: Mode,
    scans: &[ScanRecord],
    repeats: &HashMap<RepeatKey, Outcome>,
) -> Result<Result<Vec<Outcome>, Vec<Retry>>, StoreError> {
    let mut tx = store.db.begin_write().await?;
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
        // The same scan id twice in one batch: a repeat if it is the same ticket and epoch, a
        // reuse otherwise.
        if let Some(&i) = in_batch.get(&key) {
            let (first, first_scan) = outcomes
                .get(i)
                .zip(scans.get(i))
                .ok_or_else(|| StoreError::Corrupt("batch bookkeeping".into()))?;
            let again = if first_scan.serial == scan.serial && first_scan.epoch == scan.epoch {
                repeat_outcome(mode, &encode_outcome(first)?)?
            } else {
                reused(mode)
            };
            outcomes.push(again);
            continue;
        }
        let applied = apply(&mut tx, mode, scan, &mut events).await?;
        if !insert_scan(&mut tx, mode, scan, &applied).await? {
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
        // Dropped unfinished: rolled back.
        drop(tx);
        return Ok(Err(taken));
    }
    // Last, so the events lock (Postgres) is held only for the commit.
    insert_events(&mut tx, store.db.dialect(), &events).await?;
    tx.commit().await?;
    Ok(Ok(outcomes))
}

/// The scan's row with its answer; `false` when its (device, scan id) is taken.
async fn insert_scan(
    tx: &mut Tx<'_>,
    mode: Mode,
    scan: &ScanRecord,
    applied: &Applied,
) -> Result<bool, StoreError> {
    let inserted = query(
        "INSERT INTO scans (scan_id, keyset_id, serial, epoch, scanned_at, \
         device_id, offline, accepted, flag, outcome) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (device_id, scan_id) DO NOTHING",
    )
    .bind(scan.scan_id.0.as_slice())
    .bind(scan.keyset_id.0.as_slice())
    .bind(scan.serial.0.as_slice())
    .bind(scan.epoch)
    .bind(to_i64(scan.at)?)
    .bind(scan.device)
    .bind(matches!(mode, Mode::Offline { .. }))
    .bind(applied.accepted)
    .bind(applied.flag)
    .bind(encode_outcome(&applied.outcome)?)
    .execute(&mut *tx)
    .await?;
    Ok(inserted == 1)
}

/// The ledger rules for one scan (see the module docs).
async fn apply(
    tx: &mut Tx<'_>,
    mode: Mode,
    scan: &ScanRecord,
    events: &mut Vec<NewEvent>,
) -> Result<Applied, StoreError> {
    let denied = query("SELECT reason FROM deny WHERE serial = $1")
        .bind(scan.serial.0.as_slice())
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(row) = denied {
        let reason = parse_reason(row.text("reason")?)?;
        // Online, a denied serial is refused. A synced scan of a copied ticket still goes
        // through the rules, so each further copy is recorded as one.
        if mode == Mode::Online || reason == DenyReason::Revoked {
            return Ok(Applied::rejected(mode, ErrorCode::Revoked));
        }
    }
    match scan.usage {
        Usage::Single {
            transfer_seconds,
            window_end,
        } => apply_single(tx, mode, scan, transfer_seconds, window_end, events).await,
        Usage::Pass { valid_until } => apply_pass(tx, mode, scan, valid_until, events).await,
    }
}

/// Record the scan's (serial, epoch); `false` when it was used before.
async fn use_epoch(tx: &mut Tx<'_>, scan: &ScanRecord) -> Result<bool, StoreError> {
    let n = query(
        "INSERT INTO uses (serial, epoch, keyset_id) VALUES ($1, $2, $3) \
         ON CONFLICT (serial, epoch) DO NOTHING",
    )
    .bind(scan.serial.0.as_slice())
    .bind(scan.epoch)
    .bind(scan.keyset_id.0.as_slice())
    .execute(&mut *tx)
    .await?;
    Ok(n == 1)
}

/// Deny a serial inside `tx`; a new deny row queues its `revoked` event (no serial).
async fn deny_in(
    tx: &mut Tx<'_>,
    keyset_id: &KeysetId,
    serial: &Serial,
    reason: DenyReason,
    fare: &Fare,
    at: u64,
    events: &mut Vec<NewEvent>,
) -> Result<bool, StoreError> {
    let new = query(
        "INSERT INTO deny (serial, keyset_id, reason, denied_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (serial) DO NOTHING",
    )
    .bind(serial.0.as_slice())
    .bind(keyset_id.0.as_slice())
    .bind(reason_str(reason))
    .bind(to_i64(at)?)
    .execute(&mut *tx)
    .await?
        == 1;
    if new {
        events.push(NewEvent::revoked(*keyset_id, reason, fare, at));
    }
    Ok(new)
}

/// A copied ticket: its serial goes on the deny list (once; each copy found adds nothing).
async fn deny_copy(
    tx: &mut Tx<'_>,
    scan: &ScanRecord,
    events: &mut Vec<NewEvent>,
) -> Result<(), StoreError> {
    let reason = DenyReason::Duplicate;
    deny_in(
        tx,
        &scan.keyset_id,
        &scan.serial,
        reason,
        &scan.fare,
        scan.at,
        events,
    )
    .await?;
    Ok(())
}

/// A single ticket: spent at its first scan, valid `transfer` more; another scan inside
/// that is a transfer (each epoch once), later ones are refused online and flagged offline.
async fn apply_single(
    tx: &mut Tx<'_>,
    mode: Mode,
    scan: &ScanRecord,
    transfer: u64,
    window_end: u64,
    events: &mut Vec<NewEvent>,
) -> Result<Applied, StoreError> {
    if scan.at >= window_end {
        // After the window only a transfer of a first use inside it is valid
        // (`verify::single_valid_until`): without one, nothing is recorded.
        let known = query("SELECT 1 FROM tickets WHERE serial = $1")
            .bind(scan.serial.0.as_slice())
            .fetch_optional(&mut *tx)
            .await?;
        if known.is_none() {
            return Ok(Applied::rejected(mode, ErrorCode::Expired));
        }
    }
    if first_use(tx, scan, transfer).await? {
        use_epoch(tx, scan).await?;
        return Ok(Applied::accepted(match mode {
            Mode::Online => Outcome::Online(Verdict::Accepted {
                valid_until: scan.at.saturating_add(transfer),
            }),
            Mode::Offline { .. } => Outcome::Offline(SyncStatus::Recorded),
        }));
    }
    let row = query("SELECT first_at, until_at FROM tickets WHERE serial = $1")
        .bind(scan.serial.0.as_slice())
        .fetch_one(&mut *tx)
        .await?;
    let first_at = row.u64("first_at")?;
    // A ticket's transfer time is the least of its scans': one shown on paper (none) is spent
    // by that ride, whichever scan came first.
    let recorded = row.u64("until_at")?.saturating_sub(first_at);
    let transfer = transfer.min(recorded);
    match mode {
        Mode::Online => single_online_again(tx, scan, first_at, transfer).await,
        Mode::Offline { .. } => single_offline_again(tx, scan, first_at, transfer, events).await,
    }
}

/// The ticket's first use (`false`: it had one). It enters the filter when its transfer
/// window ends, or now if that is past.
async fn first_use(tx: &mut Tx<'_>, scan: &ScanRecord, transfer: u64) -> Result<bool, StoreError> {
    let until = scan.at.saturating_add(transfer);
    let listed = until.max(scan.received);
    let n = query(
        "INSERT INTO tickets (serial, keyset_id, first_scan_id, first_at, until_at, listed_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (serial) DO NOTHING",
    )
    .bind(scan.serial.0.as_slice())
    .bind(scan.keyset_id.0.as_slice())
    .bind(scan.scan_id.0.as_slice())
    .bind(to_i64(scan.at)?)
    .bind(to_i64(until)?)
    .bind(to_i64(listed)?)
    .execute(&mut *tx)
    .await?;
    Ok(n == 1)
}

/// Online, a single used before: a transfer inside its window (each epoch once), else spent.
async fn single_online_again(
    tx: &mut Tx<'_>,
    scan: &ScanRecord,
    first_at: u64,
    transfer: u64,
) -> Result<Applied, StoreError> {
    let until = first_at.saturating_add(transfer);
    if scan.at >= until {
        return Ok(Applied::rejected(Mode::Online, ErrorCode::Spent));
    }
    if use_epoch(tx, scan).await? {
        return Ok(Applied::accepted(Outcome::Online(Verdict::Accepted {
            valid_until: until,
        })));
    }
    Ok(Applied::rejected(Mode::Online, ErrorCode::ReplayedEpoch))
}

/// Offline, a single used before. The earliest scan wins: an offline scan older than the
/// recorded first use becomes the first use. A later scan inside the transfer window is a
/// transfer (each epoch once); any other is a copy: the serial is denied and the later scan
/// flagged.
async fn single_offline_again(
    tx: &mut Tx<'_>,
    scan: &ScanRecord,
    first_at: u64,
    transfer: u64,
    events: &mut Vec<NewEvent>,
) -> Result<Applied, StoreError> {
    let (winner_at, later_at) = if scan.at < first_at {
        let until = scan.at.saturating_add(transfer);
        query(
            "UPDATE tickets SET first_scan_id = $1, first_at = $2, until_at = $3, \
             listed_at = $5 WHERE serial = $4 AND first_at > $2",
        )
        .bind(scan.scan_id.0.as_slice())
        .bind(to_i64(scan.at)?)
        .bind(to_i64(until)?)
        .bind(scan.serial.0.as_slice())
        .bind(to_i64(until.max(scan.received))?)
        .execute(&mut *tx)
        .await?;
        (scan.at, first_at)
    } else {
        (first_at, scan.at)
    };
    let in_transfer = later_at < winner_at.saturating_add(transfer);
    if in_transfer && use_epoch(tx, scan).await? {
        return Ok(Applied::accepted(Outcome::Offline(SyncStatus::Recorded)));
    }
    deny_copy(tx, scan, events).await?;
    if scan.at < first_at {
        // This scan is the winner; the one recorded before is the copy.
        query("UPDATE scans SET flag = 'duplicate' WHERE serial = $1 AND scanned_at = $2")
            .bind(scan.serial.0.as_slice())
            .bind(to_i64(first_at)?)
            .execute(&mut *tx)
            .await?;
        return Ok(Applied::accepted(Outcome::Offline(SyncStatus::Recorded)));
    }
    let code = if in_transfer {
        ErrorCode::ReplayedEpoch
    } else {
        ErrorCode::Spent
    };
    Ok(Applied::conflict(code, winner_at))
}

/// A pass: valid until its window ends, each (serial, epoch) once. Offline, a replayed epoch
/// is a copy (denied), and scans by different devices within `sharing_window` are flagged as
/// suspected sharing.
async fn apply_pass(
    tx: &mut Tx<'_>,
    mode: Mode,
    scan: &ScanRecord,
    valid_until: u64,
    events: &mut Vec<NewEvent>,
) -> Result<Applied, StoreError> {
    let fresh = use_epoch(tx, scan).await?;
    let sharing_window = match mode {
        Mode::Online if fresh => {
            return Ok(Applied::accepted(Outcome::Online(Verdict::Accepted {
                valid_until,
            })));
        }
        Mode::Online => return Ok(Applied::rejected(mode, ErrorCode::ReplayedEpoch)),
        Mode::Offline { sharing_window } => sharing_window,
    };
    if !fresh {
        let first: Option<i64> = query(
            "SELECT MIN(scanned_at) AS first FROM scans \
             WHERE serial = $1 AND epoch = $2 AND accepted = $3",
        )
        .bind(scan.serial.0.as_slice())
        .bind(scan.epoch)
        .bind(true)
        .fetch_one(&mut *tx)
        .await?
        .get("first")?;
        deny_copy(tx, scan, events).await?;
        let first = first.map_or(Ok(scan.at), super::to_u64)?;
        return Ok(Applied::conflict(ErrorCode::ReplayedEpoch, first));
    }
    let near = query(
        "SELECT 1 FROM scans WHERE serial = $1 AND device_id <> $2 \
         AND accepted = $3 AND scanned_at >= $4 AND scanned_at <= $5 LIMIT 1",
    )
    .bind(scan.serial.0.as_slice())
    .bind(scan.device)
    .bind(true)
    .bind(to_i64(scan.at.saturating_sub(sharing_window))?)
    .bind(to_i64(scan.at.saturating_add(sharing_window))?)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(if near.is_some() {
        Applied {
            outcome: Outcome::Offline(SyncStatus::SuspectedSharing),
            accepted: true,
            flag: Some("suspected_sharing"),
        }
    } else {
        Applied::accepted(Outcome::Offline(SyncStatus::Recorded))
    })
}

impl SqlStore {
    /// The stored answer of one retry, checked against what it scanned.
    async fn stored_outcome(
        &self,
        mode: Mode,
        retry: &Retry,
    ) -> Result<Option<Outcome>, StoreError> {
        let row =
            query("SELECT outcome, serial, epoch FROM scans WHERE device_id = $1 AND scan_id = $2")
                .bind(retry.device)
                .bind(retry.scan_id.0.as_slice())
                .fetch_optional(&self.db)
                .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let same = serial_of(row.bytes("serial")?)? == retry.serial
            && row.get::<i64>("epoch")? == i64::from(retry.epoch);
        if !same {
            return Ok(Some(reused(mode)));
        }
        repeat_outcome(mode, row.text("outcome")?).map(Some)
    }

    /// Singles of `keysets` listed in (`after`, `until`] (from the start without `after`):
    /// one range of the `tickets_listed` index per keyset, read from the index alone, the
    /// serials of each `listed_at` concatenated into one value. A row per serial costs the
    /// driver about a microsecond each (1.2 s for a million on SQLite); a row per second
    /// listed costs a fraction of that.
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
        let backend = self.db.dialect().backend;
        let concat = match backend {
            Backend::Postgres => "string_agg(serial, ''::bytea)",
            // Bytes kept as they are (the database is UTF-8: no conversion).
            Backend::Sqlite => "CAST(group_concat(serial, '') AS BLOB)",
        };
        let sql = format!(
            "SELECT {concat} AS serials, count(*) AS n FROM tickets \
             WHERE keyset_id = $1 AND listed_at > $2 AND listed_at <= $3 \
             GROUP BY listed_at"
        );
        let mut tx = self.db.begin().await?;
        if backend == Backend::Postgres {
            // Postgres hashes the groups and holds every serial of the answer (32 bytes each)
            // until it is done; with the default 4 MB of work_mem that spills to disk (1M
            // serials: ~950 ms instead of ~640 ms). The coordinator holds them all in memory
            // anyway; past this limit Postgres spills, still correct.
            query("SET LOCAL work_mem = '256MB'")
                .execute(&mut tx)
                .await?;
        }
        let mut out = Vec::new();
        for k in keysets {
            let rows = query(sql.clone())
                .bind(k.0.as_slice())
                .bind(after)
                .bind(to_i64(until)?)
                .fetch_all(&mut tx)
                .await?;
            for row in &rows {
                let serials = row.bytes("serials")?;
                let n = row.u64("n")?;
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
impl Ledger for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        query("SELECT 1").execute(&self.db).await?;
        Ok(())
    }

    async fn record(&self, mode: Mode, scans: &[ScanRecord]) -> Result<Vec<Outcome>, StoreError> {
        let _guard = self.write_guard().await;
        let mut repeats = HashMap::new();
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match attempt(self, mode, scans, &repeats).await {
                Ok(Ok(outcomes)) => return Ok(outcomes),
                Ok(Err(taken)) => {
                    for retry in &taken {
                        let outcome = self.stored_outcome(mode, retry).await?.ok_or_else(|| {
                            StoreError::Corrupt("a taken scan id has no row".into())
                        })?;
                        let key = (retry.device, retry.scan_id, retry.serial, retry.epoch);
                        repeats.insert(key, outcome);
                    }
                }
                // Deadlock or serialization failure between concurrent batches (Postgres):
                // nothing was committed; try again.
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
        query("SELECT accepted FROM scans WHERE scan_id = $1 LIMIT 1")
            .bind(scan_id.0.as_slice())
            .fetch_optional(&self.db)
            .await?
            .map(|row| row.get::<bool>("accepted"))
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
        let mut tx = self.db.begin_write().await?;
        let mut events = Vec::new();
        let new = deny_in(&mut tx, keyset_id, serial, reason, fare, now, &mut events).await?;
        insert_events(&mut tx, self.db.dialect(), &events).await?;
        tx.commit().await?;
        Ok(new)
    }

    async fn deny_list(&self) -> Result<Vec<DenyEntry>, StoreError> {
        let rows = query("SELECT serial, keyset_id, reason, denied_at FROM deny ORDER BY serial")
            .fetch_all(&self.db)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(DenyEntry {
                    serial: serial_of(row.bytes("serial")?)?,
                    keyset_id: keyset_of(row.bytes("keyset_id")?)?,
                    reason: parse_reason(row.text("reason")?)?,
                    denied_at: row.u64("denied_at")?,
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
        for k in keysets {
            let mut tx = self.db.begin_write().await?;
            for table in [
                "DELETE FROM tickets WHERE keyset_id = $1",
                "DELETE FROM uses WHERE keyset_id = $1",
                "DELETE FROM scans WHERE keyset_id = $1",
                "DELETE FROM deny WHERE keyset_id = $1",
            ] {
                deleted += query(table).bind(k.0.as_slice()).execute(&mut tx).await?;
            }
            tx.commit().await?;
        }
        Ok(deleted)
    }

    async fn counts(&self, keyset_id: &KeysetId) -> Result<LedgerCounts, StoreError> {
        let row = query(
            "SELECT \
               (SELECT COUNT(DISTINCT serial) FROM scans WHERE keyset_id = $1 AND accepted = $2) \
                 AS redeemed, \
               (SELECT COUNT(*) FROM scans WHERE keyset_id = $1 AND accepted = $2) AS scans, \
               (SELECT COUNT(*) FROM deny WHERE keyset_id = $1) AS denied",
        )
        .bind(keyset_id.0.as_slice())
        .bind(true)
        .fetch_one(&self.db)
        .await?;
        Ok(LedgerCounts {
            redeemed: row.u64("redeemed")?,
            scans: row.u64("scans")?,
            denied: row.u64("denied")?,
        })
    }

    async fn flags(&self) -> Result<FlagCounts, StoreError> {
        let row = query(
            "SELECT \
               (SELECT COUNT(*) FROM scans WHERE flag = 'suspected_sharing') AS sharing, \
               (SELECT COUNT(*) FROM scans WHERE flag = 'duplicate') AS duplicates",
        )
        .fetch_one(&self.db)
        .await?;
        Ok(FlagCounts {
            suspected_sharing: row.u64("sharing")?,
            duplicates: row.u64("duplicates")?,
        })
    }
}
