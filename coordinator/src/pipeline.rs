//! The two stages every scan passes through, shared by all requests so concurrent requests are
//! verified and committed together:
//!
//! 1. **check**: parse, keyset, window, epoch, holder signature (`protocol::verify::screen`),
//!    then one batched BLS verification of every surviving ticket (`crypto::batch`), spread
//!    over the machine's cores on the blocking pool;
//! 2. **ledger**: one transaction for all scans waiting (`Ledger::record`): one fsync for
//!    many redemptions. SQLite has one writer task, Postgres several.
//!
//! Each request waits on a oneshot answered after its commit. A request that hangs up does not
//! cancel its scans: they complete, and a retry with the same scan ids gets the same answers.
//! A scan the check stage refuses for a reason that depends on the clock (stale epoch, window
//! ended, timestamp in the future) is looked up first: a retry of a scan answered before gets
//! that answer whenever it arrives (`Ledger::answered`).

use std::sync::Arc;

use ticketing_protocol::ErrorCode;
use ticketing_protocol::manifest::{Manifest, ProductKind};
use ticketing_protocol::redeem::{RedeemResponse, Scan, SyncResult, SyncStatus, Verdict};
use ticketing_protocol::verify;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::CoordinatorError;
use crate::store::{Fare, Mode, Outcome, Retry, ScanRecord, Store, Usage};

/// Scans checked together at most (bounds the latency a large batch adds to others).
const MAX_CHECK: usize = 2048;
/// Scans committed in one transaction at most.
const MAX_WRITE: usize = 4096;
/// Jobs waiting per stage before senders wait (backpressure).
const QUEUE: usize = 1024;

/// One request's scans.
#[derive(Debug)]
pub(crate) struct Request {
    scans: Vec<Scan>,
    device: i64,
    now: u64,
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Online,
    Offline {
        sharing_window: u64,
        prune_after: u64,
    },
}

impl Request {
    pub(crate) fn online(scans: Vec<Scan>, device: i64, now: u64) -> Self {
        Self {
            scans,
            device,
            now,
            kind: Kind::Online,
        }
    }

    pub(crate) fn offline(
        scans: Vec<Scan>,
        device: i64,
        now: u64,
        sharing_window: u64,
        prune_after: u64,
    ) -> Self {
        Self {
            scans,
            device,
            now,
            kind: Kind::Offline {
                sharing_window,
                prune_after,
            },
        }
    }
}

/// Answers, in request order.
#[derive(Debug)]
pub(crate) struct Results {
    scan_ids: Vec<ticketing_protocol::Id16>,
    outcomes: Vec<Result<Outcome, ErrorCode>>,
}

impl Results {
    pub(crate) fn into_online(self) -> Vec<RedeemResponse> {
        self.scan_ids
            .into_iter()
            .zip(self.outcomes)
            .map(|(scan_id, o)| RedeemResponse {
                scan_id,
                verdict: match o {
                    Ok(Outcome::Online(v)) => v,
                    Ok(Outcome::Offline(_)) => Verdict::Rejected {
                        code: ErrorCode::Internal,
                    },
                    Err(code) => Verdict::Rejected { code },
                },
            })
            .collect()
    }

    pub(crate) fn into_offline(self) -> Vec<SyncResult> {
        self.scan_ids
            .into_iter()
            .zip(self.outcomes)
            .map(|(scan_id, o)| SyncResult {
                scan_id,
                status: match o {
                    Ok(Outcome::Offline(s)) => s,
                    Ok(Outcome::Online(_)) => SyncStatus::Rejected {
                        code: ErrorCode::Internal,
                    },
                    Err(code) => SyncStatus::Rejected { code },
                },
            })
            .collect()
    }
}

type Reply = oneshot::Sender<Result<Results, crate::store::StoreError>>;

struct Job {
    request: Request,
    reply: Reply,
}

/// A job after the check stage: each scan is either answered (a refusal) or ready for the
/// ledger.
struct Checked {
    mode: Mode,
    scan_ids: Vec<ticketing_protocol::Id16>,
    slots: Vec<Result<ScanRecord, Refusal>>,
    reply: Reply,
}

/// A scan the check stage refused; `retry` when the reason depends on the clock, so a stored
/// answer to the same scan takes precedence.
struct Refusal {
    code: ErrorCode,
    retry: Option<Retry>,
}

impl From<ErrorCode> for Refusal {
    fn from(code: ErrorCode) -> Self {
        Self { code, retry: None }
    }
}

/// Codes a later retry of the same scan can get only because time has passed.
fn depends_on_time(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::StaleEpoch
            | ErrorCode::Expired
            | ErrorCode::NotYetValid
            | ErrorCode::FutureTimestamp
    )
}

/// Handle to the running stages.
#[derive(Debug, Clone)]
pub(crate) struct Pipeline {
    jobs: mpsc::Sender<Job>,
}

impl Pipeline {
    /// Start the check task and `writers` ledger tasks.
    pub(crate) fn start(manifest: Arc<Manifest>, store: &Arc<dyn Store>, writers: usize) -> Self {
        let (jobs, job_rx) = mpsc::channel(QUEUE);
        let (checked_tx, checked_rx) = mpsc::channel(QUEUE);
        tokio::spawn(check_stage(manifest, job_rx, checked_tx));
        let checked_rx = Arc::new(Mutex::new(checked_rx));
        for _ in 0..writers.max(1) {
            tokio::spawn(ledger_stage(store.clone(), checked_rx.clone()));
        }
        Self { jobs }
    }

    /// Run one request through both stages.
    pub(crate) async fn run(&self, request: Request) -> Result<Results, CoordinatorError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { request, reply })
            .await
            .map_err(|_| CoordinatorError::Internal("the check stage stopped".into()))?;
        match answer.await {
            Ok(Ok(results)) => Ok(results),
            // The ledger's own error, whichever it was: a database that is down is not a
            // corrupt row.
            Ok(Err(e)) => Err(CoordinatorError::Store(e)),
            Err(_) => Err(CoordinatorError::Internal(
                "the ledger stage stopped".into(),
            )),
        }
    }
}

async fn check_stage(
    manifest: Arc<Manifest>,
    mut jobs: mpsc::Receiver<Job>,
    out: mpsc::Sender<Checked>,
) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        let mut scans = batch.iter().map(|j| j.request.scans.len()).sum::<usize>();
        while scans < MAX_CHECK {
            match jobs.try_recv() {
                Ok(j) => {
                    scans += j.request.scans.len();
                    batch.push(j);
                }
                Err(_) => break,
            }
        }
        let m = manifest.clone();
        let checked = match tokio::task::spawn_blocking(move || check(&m, batch)).await {
            Ok(checked) => checked,
            Err(e) => {
                // The jobs (and their reply channels) are gone with the task: their requests
                // see "stage stopped" and nothing was recorded.
                tracing::error!(error = %e, "check task failed");
                continue;
            }
        };
        for c in checked {
            if out.send(c).await.is_err() {
                return;
            }
        }
    }
}

/// Everything but the ledger, for a batch of jobs (blocking: curve arithmetic).
fn check(manifest: &Manifest, jobs: Vec<Job>) -> Vec<Checked> {
    let mut out = Vec::with_capacity(jobs.len());
    // (job, slot) of each ticket awaiting its BLS check, and the ticket with its keyset key.
    let mut pending = Vec::new();
    let mut tickets = Vec::new();
    for (j, job) in jobs.into_iter().enumerate() {
        let Request {
            scans,
            device,
            now,
            kind,
        } = job.request;
        let mode = match kind {
            Kind::Online => Mode::Online,
            Kind::Offline { sharing_window, .. } => Mode::Offline { sharing_window },
        };
        let mut slots = Vec::with_capacity(scans.len());
        for (s, scan) in scans.iter().enumerate() {
            // Offline, the scan counts at the validator's time, but never later than now: a
            // clock running fast by up to the allowed skew is accepted at the coordinator's
            // time; further ahead, `future_timestamp`.
            let at = match kind {
                Kind::Online => now,
                Kind::Offline { .. } => scan.scanned_at.min(now),
            };
            let slot = screen(manifest, scan, at, now, kind).map_err(|code| Refusal {
                code,
                retry: depends_on_time(code)
                    .then(|| retry_of(scan, device))
                    .flatten(),
            });
            let slot = slot.map(|screened| {
                pending.push((j, s));
                tickets.push((screened.keyset.public_key.clone(), screened.ticket));
                ScanRecord {
                    scan_id: scan.scan_id,
                    keyset_id: screened.ticket.keyset_id,
                    serial: screened.serial,
                    epoch: screened.epoch,
                    at,
                    received: now,
                    device,
                    usage: screened.usage,
                    fare: screened.fare,
                }
            });
            slots.push(slot);
        }
        out.push(Checked {
            mode,
            scan_ids: scans.iter().map(|s| s.scan_id).collect(),
            slots,
            reply: job.reply,
        });
    }
    for bad in verify_parallel(&tickets) {
        if let Some(&(j, s)) = pending.get(bad)
            && let Some(slot) = out.get_mut(j).and_then(|c| c.slots.get_mut(s))
        {
            *slot = Err(ErrorCode::InvalidSignature.into());
        }
    }
    out
}

struct Screened {
    ticket: ticketing_crypto::ticket::Ticket,
    keyset: ticketing_protocol::manifest::KeysetInfo,
    serial: ticketing_crypto::ticket::Serial,
    epoch: u32,
    usage: Usage,
    fare: Fare,
}

fn screen(
    manifest: &Manifest,
    scan: &Scan,
    at: u64,
    now: u64,
    kind: Kind,
) -> Result<Screened, ErrorCode> {
    if matches!(kind, Kind::Offline { .. })
        && scan.scanned_at > now.saturating_add(manifest.clock_skew_seconds)
    {
        // Further ahead than any tolerated clock: the validator's clock is wrong (or the scan
        // is made up). The validator keeps it, with this code, for an operator.
        return Err(ErrorCode::FutureTimestamp);
    }
    let s = verify::screen(manifest, &scan.payload, at)?;
    if let Kind::Offline { prune_after, .. } = kind
        && s.keyset.params.valid_until.saturating_add(prune_after) <= now
    {
        // The keyset's ledger is gone: too late to reconcile.
        return Err(ErrorCode::Expired);
    }
    let usage = match s.kind {
        ProductKind::Single { transfer_minutes } => Usage::Single {
            transfer_seconds: verify::transfer_seconds(&s.presentation, transfer_minutes),
            window_end: s.keyset.params.valid_until,
        },
        ProductKind::Pass => Usage::Pass {
            valid_until: s.keyset.params.valid_until,
        },
    };
    let fare = crate::fare_of(manifest, &s.keyset.params.product);
    Ok(Screened {
        fare,
        ticket: s.presentation.ticket,
        keyset: s.keyset.clone(),
        serial: s.serial,
        epoch: s.presentation.epoch,
        usage,
    })
}

/// What a retry lookup needs of a scan: its ticket and epoch (`None` if it does not parse,
/// which no stored scan does).
fn retry_of(scan: &Scan, device: i64) -> Option<Retry> {
    let p = ticketing_crypto::presentation::Presentation::from_text(&scan.payload).ok()?;
    Some(Retry {
        device,
        scan_id: scan.scan_id,
        serial: p.ticket.serial(),
        epoch: p.epoch,
    })
}

/// Batch-verify on every core; returns the indices of invalid tickets.
fn verify_parallel(
    tickets: &[(
        ticketing_crypto::keyset::PublicKey,
        ticketing_crypto::ticket::Ticket,
    )],
) -> Vec<usize> {
    if tickets.is_empty() {
        return Vec::new();
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(tickets.len().div_ceil(16))
        .max(1);
    let chunk = tickets.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = tickets
            .chunks(chunk)
            .enumerate()
            .map(|(i, part)| {
                scope.spawn(move || {
                    let items: Vec<_> = part.iter().map(|(pk, t)| (pk, t)).collect();
                    ticketing_crypto::batch::verify_tickets(&items, &mut rand::rng())
                        .into_iter()
                        .map(|bad| bad + i * chunk)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            // A panicking verifier thread: treat its whole chunk as unverified (refused).
            .enumerate()
            .flat_map(|(i, h)| {
                h.join()
                    .unwrap_or_else(|_| (i * chunk..((i + 1) * chunk).min(tickets.len())).collect())
            })
            .collect()
    })
}

async fn ledger_stage(store: Arc<dyn Store>, input: Arc<Mutex<mpsc::Receiver<Checked>>>) {
    loop {
        let batch = {
            let mut rx = input.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut batch = vec![first];
            let mut scans = batch.first().map_or(0, |c| c.slots.len());
            while scans < MAX_WRITE {
                match rx.try_recv() {
                    Ok(c) => {
                        scans += c.slots.len();
                        batch.push(c);
                    }
                    Err(_) => break,
                }
            }
            batch
        };
        let (online, offline): (Vec<_>, Vec<_>) =
            batch.into_iter().partition(|c| c.mode == Mode::Online);
        commit(store.as_ref(), Mode::Online, online).await;
        // All offline jobs share the configured sharing window.
        if let Some(mode) = offline.first().map(|c| c.mode) {
            commit(store.as_ref(), mode, offline).await;
        }
    }
}

async fn commit(store: &dyn Store, mode: Mode, jobs: Vec<Checked>) {
    if jobs.is_empty() {
        return;
    }
    let records: Vec<ScanRecord> = jobs
        .iter()
        .flat_map(|c| c.slots.iter().filter_map(|s| s.as_ref().ok().cloned()))
        .collect();
    let retries: Vec<Retry> = jobs
        .iter()
        .flat_map(|c| {
            c.slots
                .iter()
                .filter_map(|s| s.as_ref().err().and_then(|r| r.retry.clone()))
        })
        .collect();
    let result = async {
        let recorded = if records.is_empty() {
            Vec::new()
        } else {
            store.record(mode, &records).await?
        };
        // After the commit: a late retry batched with its own original finds it recorded.
        let answered = if retries.is_empty() {
            Vec::new()
        } else {
            store.answered(mode, &retries).await?
        };
        Ok::<_, crate::store::StoreError>((recorded, answered))
    }
    .await;
    match result {
        Ok((outcomes, answered)) => {
            let mut outcomes = outcomes.into_iter();
            let mut answered = answered.into_iter();
            for job in jobs {
                let answers = job
                    .slots
                    .into_iter()
                    .map(|slot| match slot {
                        Ok(_) => outcomes.next().ok_or(ErrorCode::Internal),
                        Err(Refusal { code, retry: None }) => Err(code),
                        Err(Refusal {
                            code,
                            retry: Some(_),
                        }) => match answered.next() {
                            Some(Some(stored)) => Ok(stored),
                            Some(None) => Err(code),
                            None => Err(ErrorCode::Internal),
                        },
                    })
                    .collect();
                let _ = job.reply.send(Ok(Results {
                    scan_ids: job.scan_ids,
                    outcomes: answers,
                }));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, scans = records.len(), "ledger write failed");
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}
