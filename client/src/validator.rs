//! The validator core: one implementation of the conductor's decision, used by the CLI
//! validator (files in a state directory) and the browser validator (IndexedDB). No file
//! system, clock or terminal: storage is a [`ValidatorStore`], the time is passed in, and what
//! happened is returned (with [`Note`]s for the conductor's log), never printed.
//!
//! A scan runs every offline check of the presentation against the manifest (parse, keyset,
//! window, epoch, holder signature, BLS: [`ticketing_protocol::verify::check`]), then the local
//! ones: the exact deny list of the last signed snapshot and this device's (serial, epoch) seen
//! set. Online, the coordinator has the last word (`POST /v1/redeem`), and the snapshot is
//! refreshed in the same round trip; when the coordinator cannot be reached (a temporary
//! failure), the scan is decided offline: "check manually" if the Bloom filter may hold the
//! serial, else valid and queued for [`Validator::sync`]. Nothing but the verdict and the
//! expiry comes out: never the serial or a key.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use ticketing_crypto::presentation::PRINTED_EPOCH;
use ticketing_crypto::ticket::Serial;
use ticketing_protocol::manifest::{Manifest, ProductKind};
use ticketing_protocol::publication::{BloomSnapshot, SerialFilter};
use ticketing_protocol::redeem::{Scan, SyncStatus, Verdict as CoordinatorVerdict};
use ticketing_protocol::verify::{self, Screened};
use ticketing_protocol::{Digest32, ErrorCode, Id16};

use crate::clock::Measured;
use crate::{ClientError, CoordinatorClient, Http};

/// Most scans per `POST /v1/sync` (the coordinator's default `max_scans_per_request`).
pub const SYNC_CHUNK: usize = 1000;

/// One (serial, epoch) this device accepted, or (with `refused`) a ticket the coordinator
/// refused for good when this device asked online.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenEntry {
    /// The ticket's serial.
    pub serial: Serial,
    /// The epoch shown.
    pub epoch: u32,
    /// When the ticket can no longer be valid (its keyset window's end; for a single, plus its
    /// transfer time): the entry is useless afterwards.
    pub until: u64,
    /// When this device accepted it (unix seconds; 0 in entries written before it was kept).
    #[serde(default)]
    pub at: u64,
    /// Set when the coordinator refused the ticket for good (`revoked`, `spent`): this device
    /// refuses it from then on, offline too, without waiting for the next spent list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<ErrorCode>,
}

/// The seen set's rules, for every store: the entries that hold `serial`...
pub fn seen_of(seen: &[SeenEntry], serial: &Serial) -> Vec<SeenEntry> {
    seen.iter()
        .filter(|e| e.serial == *serial)
        .cloned()
        .collect()
}

/// ...whether it holds (serial, epoch)...
pub fn seen_in(seen: &[SeenEntry], serial: &Serial, epoch: u32) -> bool {
    seen.iter().any(|e| e.epoch == epoch && e.serial == *serial)
}

/// ...and adding an entry: entries of keysets that ended before `now` are forgotten, an entry
/// is held once.
pub fn remember(seen: &mut Vec<SeenEntry>, entry: SeenEntry, now: u64) {
    seen.retain(|e| e.until > now);
    if !seen_in(seen, &entry.serial, entry.epoch) {
        seen.push(entry);
    }
}

/// Where a validator keeps its state: files (CLI), IndexedDB (browser), memory (tests).
/// Every method is atomic on its own.
#[allow(async_fn_in_trait)]
pub trait ValidatorStore {
    /// The last snapshot stored, as stored (the core verifies it).
    async fn snapshot(&self) -> Result<Option<BloomSnapshot>, ClientError>;
    /// Store a verified snapshot unless a newer one is already stored.
    async fn save_snapshot(&self, snapshot: &BloomSnapshot) -> Result<(), ClientError>;
    /// This device's seen entries of `serial` (empty: never accepted here).
    async fn seen(&self, serial: &Serial) -> Result<Vec<SeenEntry>, ClientError>;
    /// Record an accepted scan: mark (serial, epoch) seen, queue `queued` (a scan accepted
    /// offline), and forget entries of keysets that ended before `now`.
    async fn record(
        &self,
        entry: SeenEntry,
        queued: Option<Scan>,
        now: u64,
    ) -> Result<(), ClientError>;
    /// Scans accepted offline, oldest first.
    async fn queue(&self) -> Result<Vec<Scan>, ClientError>;
    /// Settle a sync's answers: `done` scans leave the queue; `refused` ones move from the
    /// queue to the refused list with the coordinator's code, kept until an operator clears
    /// them ([`ValidatorStore::clear_refused`]). One atomic update.
    async fn settle(
        &self,
        done: &HashSet<Id16>,
        refused: &[(Id16, ErrorCode)],
    ) -> Result<(), ClientError>;
    /// Scans the coordinator refused at sync, oldest first.
    async fn refused(&self) -> Result<Vec<RefusedScan>, ClientError>;
    /// Empty the refused list (an operator has read it); with `requeue` its scans go back to
    /// the queue to be sent again (e.g. after the device's clock was fixed). Returns how many.
    async fn clear_refused(&self, requeue: bool) -> Result<usize, ClientError>;
    /// The last clock offset measured against the coordinator.
    async fn clock(&self) -> Result<Option<Measured>, ClientError>;
    /// Keep a clock offset measurement.
    async fn save_clock(&self, measured: Measured) -> Result<(), ClientError>;
    /// The device token, if the device is registered.
    async fn token(&self) -> Result<Option<String>, ClientError>;
    /// The manifest digest this device trusts.
    async fn pinned_manifest(&self) -> Result<Option<Digest32>, ClientError>;
    /// Trust this manifest digest from now on.
    async fn pin_manifest(&self, digest: Digest32) -> Result<(), ClientError>;
}

/// A scan accepted offline that the coordinator refused at sync: kept, with the reason, until
/// an operator clears it (it is a passenger let through on this device's word).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedScan {
    /// The scan as queued.
    pub scan: Scan,
    /// The coordinator's code, e.g. `future_timestamp`.
    pub code: ErrorCode,
}

/// Whether a sync refusal says "not now" (the scan stays queued for the next sync) rather than
/// a verdict on the scan.
pub fn refusal_is_temporary(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Unavailable | ErrorCode::Internal)
}

/// A snapshot whose signature verified, with its decoded filter.
#[derive(Debug)]
pub struct Snapshot {
    /// As signed.
    pub raw: BloomSnapshot,
    filter: Option<SerialFilter>,
}

impl Snapshot {
    /// Verify the signature under the manifest's coordinator key. A signed snapshot whose
    /// filter does not decode is kept for its exact deny list, and then "may contain" every
    /// serial (offline: check manually); the note says so.
    pub fn check(
        raw: BloomSnapshot,
        manifest: &Manifest,
        notes: &mut Vec<Note>,
    ) -> Result<Self, String> {
        raw.verify(&manifest.coordinator.key)
            .map_err(|e| e.to_string())?;
        let filter = raw
            .decode_filter()
            .map_err(|e| notes.push(Note::FilterUndecodable(e.to_string())))
            .ok();
        Ok(Self { raw, filter })
    }

    /// Whether the exact deny list holds `serial`.
    pub fn denies(&self, serial: &Serial) -> bool {
        self.raw.deny.contains(serial)
    }

    /// Whether `serial` may be spent (deny list, or the Bloom filter says maybe).
    pub fn may_contain(&self, serial: &Serial) -> bool {
        self.denies(serial) || self.filter.as_ref().is_none_or(|f| f.contains(serial))
    }
}

/// How a verdict was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The coordinator answered.
    Online,
    /// Decided on this device.
    Offline,
}

impl Mode {
    /// `online` / `offline`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
        }
    }
}

/// What the conductor is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Let the passenger through; the ticket is valid until then. Offline: queued for sync.
    Valid {
        /// Unix seconds.
        valid_until: u64,
        /// How it was decided.
        mode: Mode,
    },
    /// Refuse, with the stable reason.
    Invalid {
        /// Why.
        code: ErrorCode,
        /// How it was decided.
        mode: Mode,
    },
    /// Offline and the filter says "maybe spent": the conductor decides.
    CheckManually,
}

/// Why no verdict could be given.
#[derive(Debug)]
pub enum Failure {
    /// The device has no token (register it, or decide offline).
    NoToken,
    /// The coordinator does not know the device token.
    Unauthorized,
    /// The coordinator refused the scan for another reason (a definite answer).
    Refused(ClientError),
    /// The device's storage failed.
    Store(ClientError),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoToken => f.write_str("this device has no token"),
            Self::Unauthorized => f.write_str("the coordinator refused this device's token"),
            Self::Refused(e) => write!(f, "the coordinator refused the scan: {e}"),
            Self::Store(e) => write!(f, "{e}"),
        }
    }
}

/// Something the conductor's log should say (never about the passenger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The cached snapshot does not verify or parse; it will be fetched again.
    CachedSnapshotUnusable(String),
    /// A signed snapshot's filter does not decode: offline scans need a manual check.
    FilterUndecodable(String),
    /// The coordinator's fresh snapshot does not verify; ignored.
    FreshSnapshotRejected(String),
    /// The fresh snapshot could not be stored.
    SnapshotNotStored(String),
    /// The snapshot could not be refreshed.
    RefreshFailed(String),
    /// The coordinator is unreachable: the scan is decided offline.
    DecidingOffline(String),
    /// No snapshot yet: an offline scan is accepted on the ticket's own checks.
    NoSnapshot,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CachedSnapshotUnusable(e) => {
                write!(
                    f,
                    "the cached spent list is unusable ({e}); it will be fetched again"
                )
            }
            Self::FilterUndecodable(e) => write!(
                f,
                "the spent list's filter does not decode ({e}); offline scans need a manual check"
            ),
            Self::FreshSnapshotRejected(e) => {
                write!(
                    f,
                    "the coordinator's spent list does not verify ({e}); ignored"
                )
            }
            Self::SnapshotNotStored(e) => write!(f, "could not store the spent list: {e}"),
            Self::RefreshFailed(e) => write!(f, "could not refresh the spent list: {e}"),
            Self::DecidingOffline(e) => {
                write!(f, "coordinator unreachable ({e}): deciding offline")
            }
            Self::NoSnapshot => f.write_str(
                "no spent list cached yet (run once online); accepting on the ticket's own checks",
            ),
        }
    }
}

/// A verdict (or why there is none) and the notes made on the way.
#[derive(Debug)]
pub struct Decision {
    /// The verdict.
    pub outcome: Result<Outcome, Failure>,
    /// For the conductor's log.
    pub notes: Vec<Note>,
}

/// What the coordinator made of the queue.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Scans sent.
    pub sent: usize,
    /// Recorded now.
    pub recorded: usize,
    /// Recorded before (a retried sync).
    pub already_synced: usize,
    /// Flagged: the same pass seen by two devices within the sharing window.
    pub suspected_sharing: usize,
    /// (code, our scan time, the winning scan's time), one per conflicting scan.
    pub conflicts: Vec<(ErrorCode, u64, u64)>,
    /// Rejections by code (each such scan is now on the refused list).
    pub rejected: BTreeMap<&'static str, usize>,
    /// Refused for now (`unavailable`, `internal`): still queued for the next sync.
    pub retry_later: usize,
    /// Scans still queued afterwards.
    pub remaining: usize,
    /// Scans on the refused list afterwards (this sync's and earlier ones), kept until an
    /// operator clears them.
    pub refused: usize,
}

impl SyncReport {
    /// Rejections in all.
    pub fn rejected_total(&self) -> usize {
        self.rejected.values().sum()
    }
}

/// Why a sync stopped early (the unsent scans stay queued).
#[derive(Debug)]
pub enum SyncFailure {
    /// The device has no token.
    NoToken,
    /// The coordinator refused the device's token.
    Unauthorized,
    /// Anything else (coordinator unreachable, refused, storage).
    Other(ClientError),
}

impl std::fmt::Display for SyncFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoToken => f.write_str("this device has no token"),
            Self::Unauthorized => f.write_str("the coordinator refused this device's token"),
            Self::Other(e) => write!(f, "{e}"),
        }
    }
}

/// A validator: a pinned manifest, a store and the HTTP layer.
#[derive(Debug)]
pub struct Validator<S> {
    manifest: Manifest,
    store: S,
    http: Http,
}

impl<S: ValidatorStore> Validator<S> {
    /// A validator on `store` trusting `manifest`. The first manifest is pinned; a later,
    /// different one is refused with `manifest_mismatch`.
    pub async fn open(manifest: Manifest, store: S, http: Http) -> Result<Self, ClientError> {
        match store.pinned_manifest().await? {
            // Validated when it was pinned (see `Manifest::parse_pinned`).
            Some(pinned) => manifest.check_pin(Some(&pinned))?,
            None => {
                manifest.validate().map_err(|e| {
                    ClientError::Manifest(ticketing_protocol::manifest::ManifestError::Invalid(e))
                })?;
                store.pin_manifest(manifest.digest()).await?;
            }
        }
        Ok(Self {
            manifest,
            store,
            http,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The stored snapshot, if it verifies.
    pub async fn snapshot(&self, notes: &mut Vec<Note>) -> Result<Option<Snapshot>, ClientError> {
        let Some(raw) = self.store.snapshot().await? else {
            return Ok(None);
        };
        Ok(match Snapshot::check(raw, &self.manifest, notes) {
            Ok(s) => Some(s),
            Err(e) => {
                notes.push(Note::CachedSnapshotUnusable(e));
                None
            }
        })
    }

    fn coordinator(&self, token: Option<String>) -> CoordinatorClient {
        CoordinatorClient::with_http(self.http.clone(), &self.manifest.coordinator.url, token)
    }

    /// Decide on the scan of `payload` at unix time `now`, with `scan_id` (fresh per scan: it
    /// makes retries idempotent). `offline` decides without contacting the coordinator.
    pub async fn validate(
        &self,
        payload: &str,
        now: u64,
        offline: bool,
        scan_id: Id16,
    ) -> Decision {
        let mut notes = Vec::new();
        let outcome = self
            .decide(
                // Line breaks only: in the unframed text of earlier wallets a space is data
                // (`Presentation::from_text` trims the framed form itself).
                payload.trim_matches(['\n', '\r', '\t']),
                now,
                offline,
                scan_id,
                &mut notes,
            )
            .await;
        Decision { outcome, notes }
    }

    async fn decide(
        &self,
        payload: &str,
        now: u64,
        offline: bool,
        scan_id: Id16,
        notes: &mut Vec<Note>,
    ) -> Result<Outcome, Failure> {
        // Everything a ticket can be checked on by itself, BLS included.
        let screened = match verify::check(&self.manifest, payload, now) {
            Ok(s) => s,
            Err(code) => {
                return Ok(Outcome::Invalid {
                    code,
                    mode: Mode::Offline,
                });
            }
        };
        let cached = self.snapshot(notes).await.map_err(Failure::Store)?;
        if let Some(outcome) = self.local_checks(cached.as_ref(), &screened).await? {
            return Ok(outcome);
        }
        let scan = Scan {
            scan_id,
            payload: payload.to_owned(),
            scanned_at: now,
        };
        if offline {
            return self
                .offline(cached.as_ref(), &screened, scan, now, notes)
                .await;
        }
        let Some(token) = self.store.token().await.map_err(Failure::Store)? else {
            return Err(Failure::NoToken);
        };
        let client = self.coordinator(Some(token));
        // Both at once: the conductor waits for one round trip, not two.
        let held = cached.as_ref().map(|s| &s.raw);
        let (fresh, answer) = futures::join!(client.bloom(held), client.redeem(&scan));
        self.note_clock().await;
        let snapshot = self.take_fresh(fresh, cached, answer.is_ok(), notes).await;

        match answer {
            Ok(response) => match response.verdict {
                CoordinatorVerdict::Accepted { valid_until } => {
                    // For a single, the coordinator's answer tells the true first use (on any
                    // device): it is what this device's later offline decisions start from.
                    let first_use = match screened.kind {
                        ProductKind::Single { transfer_minutes } => valid_until
                            .saturating_sub(u64::from(transfer_minutes).saturating_mul(60))
                            .min(now),
                        ProductKind::Pass => now,
                    };
                    self.store
                        .record(seen_entry(&screened, first_use), None, now)
                        .await
                        .map_err(Failure::Store)?;
                    Ok(Outcome::Valid {
                        valid_until,
                        mode: Mode::Online,
                    })
                }
                CoordinatorVerdict::Rejected { code } => {
                    if matches!(code, ErrorCode::Revoked | ErrorCode::Spent) {
                        let refused = SeenEntry {
                            refused: Some(code),
                            ..seen_entry(&screened, now)
                        };
                        self.store
                            .record(refused, None, now)
                            .await
                            .map_err(Failure::Store)?;
                    }
                    Ok(Outcome::Invalid {
                        code,
                        mode: Mode::Online,
                    })
                }
            },
            Err(e) if e.code() == Some(ErrorCode::Unauthorized) => Err(Failure::Unauthorized),
            Err(e) if e.is_temporary() => {
                notes.push(Note::DecidingOffline(reason(&e)));
                // The freshest snapshot may deny it outright now.
                if let Some(outcome) = self.local_checks(snapshot.as_ref(), &screened).await? {
                    return Ok(outcome);
                }
                self.offline(snapshot.as_ref(), &screened, scan, now, notes)
                    .await
            }
            Err(e) => Err(Failure::Refused(e)),
        }
    }

    /// Keep a freshly fetched snapshot if it verifies (and store it), else the cached one.
    async fn take_fresh(
        &self,
        fresh: Result<Option<BloomSnapshot>, ClientError>,
        cached: Option<Snapshot>,
        redeem_answered: bool,
        notes: &mut Vec<Note>,
    ) -> Option<Snapshot> {
        match fresh {
            Ok(Some(raw)) => match Snapshot::check(raw, &self.manifest, notes) {
                Ok(s) => {
                    if let Err(e) = self.store.save_snapshot(&s.raw).await {
                        notes.push(Note::SnapshotNotStored(e.to_string()));
                    }
                    Some(s)
                }
                Err(e) => {
                    notes.push(Note::FreshSnapshotRejected(e));
                    cached
                }
            },
            Ok(None) => cached,
            Err(e) => {
                // When the coordinator is down altogether, the redeem says so once.
                if !e.is_temporary() || redeem_answered {
                    notes.push(Note::RefreshFailed(e.to_string()));
                }
                cached
            }
        }
    }

    /// Fetch the snapshot now (when online between scans). Returns its version.
    pub async fn refresh(&self) -> Result<(Option<u64>, Vec<Note>), ClientError> {
        let mut notes = Vec::new();
        let cached = self.snapshot(&mut notes).await?;
        let fresh = self
            .coordinator(None)
            .bloom(cached.as_ref().map(|s| &s.raw))
            .await;
        self.note_clock().await;
        if let Err(e) = &fresh
            && e.is_temporary()
        {
            return Err(ClientError::Unreachable {
                service: "coordinator".into(),
                reason: reason(e),
            });
        }
        let snapshot = self.take_fresh(fresh, cached, true, &mut notes).await;
        Ok((snapshot.map(|s| s.raw.version), notes))
    }

    /// The checks against this device's state: the exact deny list, then (serial, epoch) seen.
    async fn local_checks(
        &self,
        snapshot: Option<&Snapshot>,
        s: &Screened<'_>,
    ) -> Result<Option<Outcome>, Failure> {
        if snapshot.is_some_and(|snap| snap.denies(&s.serial)) {
            return Ok(Some(Outcome::Invalid {
                code: ErrorCode::Revoked,
                mode: Mode::Offline,
            }));
        }
        let seen = self.store.seen(&s.serial).await.map_err(Failure::Store)?;
        if let Some(code) = seen.iter().find_map(|e| e.refused) {
            return Ok(Some(Outcome::Invalid {
                code,
                mode: Mode::Offline,
            }));
        }
        if seen.iter().any(|e| e.epoch == s.presentation.epoch) {
            return Ok(Some(Outcome::Invalid {
                // Paper has no transfer time: the coordinator says spent, and so does this.
                code: if s.presentation.is_printed() {
                    ErrorCode::Spent
                } else {
                    ErrorCode::ReplayedEpoch
                },
                mode: Mode::Offline,
            }));
        }
        Ok(None)
    }

    /// Decide without the coordinator: maybe spent => check manually; else valid, queued.
    async fn offline(
        &self,
        snapshot: Option<&Snapshot>,
        s: &Screened<'_>,
        scan: Scan,
        now: u64,
        notes: &mut Vec<Note>,
    ) -> Result<Outcome, Failure> {
        match snapshot {
            Some(snap) if snap.may_contain(&s.serial) => return Ok(Outcome::CheckManually),
            Some(_) => {}
            None => notes.push(Note::NoSnapshot),
        }
        let valid_until = match s.kind {
            ProductKind::Single { transfer_minutes } => {
                let seen = self.store.seen(&s.serial).await.map_err(Failure::Store)?;
                // No transfer on or after paper: a ticket once shown printed is spent by that
                // ride (`verify::transfer_seconds`).
                let transfer = if seen.iter().any(|e| e.epoch == PRINTED_EPOCH) {
                    0
                } else {
                    verify::transfer_seconds(&s.presentation, transfer_minutes)
                };
                // The first showing this device accepted, if any, decides by the one rule for
                // singles (entries of older versions carry only the epoch: its start).
                let rotation = self.manifest.rotation_seconds.max(1);
                let first = seen
                    .iter()
                    .map(|e| {
                        if e.at > 0 {
                            e.at
                        } else {
                            u64::from(e.epoch).saturating_mul(rotation)
                        }
                    })
                    .min();
                let first_here = first.is_none();
                let first = match first {
                    Some(first) => first.max(s.keyset.params.valid_from).min(now),
                    // After the window only a known first use makes a transfer.
                    None if s.after_end => {
                        return Ok(Outcome::Invalid {
                            code: ErrorCode::Expired,
                            mode: Mode::Offline,
                        });
                    }
                    None => now,
                };
                match verify::single_valid_until(
                    s.keyset.params.valid_from,
                    s.keyset.params.valid_until,
                    transfer,
                    first,
                ) {
                    // This scan is the first use (valid for it even without a transfer
                    // time), or a transfer within the time after the first.
                    Some(until) if first_here || until > now => until,
                    _ => {
                        return Ok(Outcome::Invalid {
                            code: ErrorCode::Spent,
                            mode: Mode::Offline,
                        });
                    }
                }
            }
            ProductKind::Pass => s.keyset.params.valid_until,
        };
        self.store
            .record(seen_entry(s, now), Some(scan), now)
            .await
            .map_err(Failure::Store)?;
        Ok(Outcome::Valid {
            valid_until,
            mode: Mode::Offline,
        })
    }

    /// Keep the clock offset the last answer measured.
    async fn note_clock(&self) {
        if let Some(m) = self.http.clock().get()
            && let Err(e) = self.store.save_clock(m).await
        {
            // Not worth failing a scan over: the next answer measures again.
            let _ = e;
        }
    }

    /// This device's clock offset to the coordinator: measured by this process, else the last
    /// one stored.
    pub async fn clock_offset(&self) -> Option<Measured> {
        match self.http.clock().get() {
            Some(m) => Some(m),
            None => self.store.clock().await.ok().flatten(),
        }
    }

    /// Unix seconds by the coordinator's clock as far as this device knows it (its own clock
    /// corrected by [`Validator::clock_offset`]).
    pub async fn now(&self) -> u64 {
        crate::clock::cluster_now(self.clock_offset().await)
    }

    /// Push the queue to the coordinator in chunks of [`SYNC_CHUNK`]; answered scans leave the
    /// queue after each chunk, refused ones move to the refused list (with the coordinator's
    /// code; [`ValidatorStore::refused`]), temporary refusals stay queued. Returns the report
    /// and, if it stopped early, why.
    pub async fn sync(&self) -> (SyncReport, Option<SyncFailure>) {
        let mut report = SyncReport::default();
        let queued = match self.store.queue().await {
            Ok(q) => q,
            Err(e) => return (report, Some(SyncFailure::Other(e))),
        };
        if queued.is_empty() {
            report.refused = self.store.refused().await.map_or(0, |r| r.len());
            return (report, None);
        }
        let token = match self.store.token().await {
            Ok(Some(t)) => t,
            Ok(None) => {
                report.remaining = queued.len();
                return (report, Some(SyncFailure::NoToken));
            }
            Err(e) => return (report, Some(SyncFailure::Other(e))),
        };
        let client = self.coordinator(Some(token));
        let mut pending: HashSet<Id16> = queued.iter().map(|s| s.scan_id).collect();
        let mut failure = None;
        for chunk in queued.chunks(SYNC_CHUNK) {
            let at: BTreeMap<Id16, u64> = chunk.iter().map(|s| (s.scan_id, s.scanned_at)).collect();
            let response = client.sync(chunk.to_vec()).await;
            self.note_clock().await;
            let response = match response {
                Ok(r) => r,
                Err(e) if e.code() == Some(ErrorCode::Unauthorized) => {
                    failure = Some(SyncFailure::Unauthorized);
                    break;
                }
                Err(e) => {
                    failure = Some(SyncFailure::Other(e));
                    break;
                }
            };
            report.sent = report.sent.saturating_add(chunk.len());
            let mut answered = HashSet::new();
            let mut done = HashSet::new();
            let mut refused = Vec::new();
            for result in response.results {
                let Some(scanned_at) = at.get(&result.scan_id) else {
                    continue;
                };
                if !answered.insert(result.scan_id) {
                    continue;
                }
                match &result.status {
                    SyncStatus::Rejected { code } if refusal_is_temporary(*code) => {
                        report.retry_later += 1;
                        continue;
                    }
                    SyncStatus::Rejected { code } => refused.push((result.scan_id, *code)),
                    _ => {
                        done.insert(result.scan_id);
                    }
                }
                match result.status {
                    SyncStatus::Recorded => report.recorded += 1,
                    SyncStatus::AlreadySynced => report.already_synced += 1,
                    SyncStatus::SuspectedSharing => report.suspected_sharing += 1,
                    SyncStatus::Conflict {
                        code,
                        first_scanned_at,
                    } => report.conflicts.push((code, *scanned_at, first_scanned_at)),
                    SyncStatus::Rejected { code } => {
                        *report.rejected.entry(code.as_str()).or_default() += 1;
                    }
                }
            }
            if let Err(e) = self.store.settle(&done, &refused).await {
                failure = Some(SyncFailure::Other(e));
                break;
            }
            pending.retain(|id| !done.contains(id) && !refused.iter().any(|(r, _)| r == id));
        }
        report.remaining = pending.len();
        report.refused = self.store.refused().await.map_or(0, |r| r.len());
        (report, failure)
    }
}

fn reason(e: &ClientError) -> String {
    match e {
        ClientError::Unreachable { reason, .. }
        | ClientError::NotTaken { reason, .. }
        | ClientError::Unavailable { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

fn seen_entry(s: &Screened<'_>, now: u64) -> SeenEntry {
    let transfer = match s.kind {
        ProductKind::Single { transfer_minutes } => u64::from(transfer_minutes) * 60,
        ProductKind::Pass => 0,
    };
    SeenEntry {
        serial: s.serial,
        epoch: s.presentation.epoch,
        until: s.keyset.params.valid_until.saturating_add(transfer),
        at: now,
        refused: None,
    }
}

/// The text of the first decodable QR code in a greyscale picture (`luma`: `width * height`
/// bytes, row by row), e.g. a camera frame. `None` if there is none or `luma` is too short.
pub fn decode_qr(width: usize, height: usize, luma: &[u8]) -> Option<String> {
    if width == 0 || height == 0 || luma.len() < width.checked_mul(height)? {
        return None;
    }
    let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| {
        y.checked_mul(width)
            .and_then(|row| row.checked_add(x))
            .and_then(|i| luma.get(i))
            .copied()
            .unwrap_or(u8::MAX)
    });
    prepared
        .detect_grids()
        .into_iter()
        .find_map(|grid| grid.decode().ok().map(|(_, text)| text))
        .map(|text| text.trim_matches(['\n', '\r', '\t']).to_owned())
}

/// The queue's rules, for every store: settle a sync's answers (see
/// [`ValidatorStore::settle`])...
pub fn settle(
    queue: &mut Vec<Scan>,
    held: &mut Vec<RefusedScan>,
    done: &HashSet<Id16>,
    refused: &[(Id16, ErrorCode)],
) {
    let mut kept = Vec::with_capacity(queue.len());
    for scan in queue.drain(..) {
        if done.contains(&scan.scan_id) {
            continue;
        }
        match refused.iter().find(|(id, _)| *id == scan.scan_id) {
            Some((_, code)) => held.push(RefusedScan { scan, code: *code }),
            None => kept.push(scan),
        }
    }
    *queue = kept;
}

/// ...and clear the refused list, optionally back into the queue.
pub fn clear_refused(queue: &mut Vec<Scan>, held: &mut Vec<RefusedScan>, requeue: bool) -> usize {
    let n = held.len();
    for r in held.drain(..) {
        if requeue && !queue.iter().any(|q| q.scan_id == r.scan.scan_id) {
            queue.push(r.scan);
        }
    }
    // Oldest first, as they were scanned: a single's first use must reach the ledger before
    // its transfers.
    queue.sort_by_key(|q| q.scanned_at);
    n
}

/// Seen entries and a queue in memory (tests; a page without storage).
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: std::sync::Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    snapshot: Option<BloomSnapshot>,
    seen: Vec<SeenEntry>,
    queue: Vec<Scan>,
    refused: Vec<RefusedScan>,
    clock: Option<Measured>,
    token: Option<String>,
    pinned: Option<Digest32>,
}

impl MemoryStore {
    /// A store with a device token.
    pub fn with_token(token: Option<String>) -> Self {
        let store = Self::default();
        if let Ok(mut s) = store.inner.lock() {
            s.token = token;
        }
        store
    }

    fn with<T>(&self, f: impl FnOnce(&mut MemoryState) -> T) -> Result<T, ClientError> {
        self.inner
            .lock()
            .map(|mut s| f(&mut s))
            .map_err(|_| ClientError::Store("poisoned".into()))
    }
}

impl ValidatorStore for MemoryStore {
    async fn snapshot(&self) -> Result<Option<BloomSnapshot>, ClientError> {
        self.with(|s| s.snapshot.clone())
    }

    async fn save_snapshot(&self, snapshot: &BloomSnapshot) -> Result<(), ClientError> {
        self.with(|s| {
            if s.snapshot
                .as_ref()
                .is_none_or(|old| old.version <= snapshot.version)
            {
                s.snapshot = Some(snapshot.clone());
            }
        })
    }

    async fn seen(&self, serial: &Serial) -> Result<Vec<SeenEntry>, ClientError> {
        self.with(|s| seen_of(&s.seen, serial))
    }

    async fn record(
        &self,
        entry: SeenEntry,
        queued: Option<Scan>,
        now: u64,
    ) -> Result<(), ClientError> {
        self.with(|s| {
            remember(&mut s.seen, entry, now);
            s.queue.extend(queued);
        })
    }

    async fn queue(&self) -> Result<Vec<Scan>, ClientError> {
        self.with(|s| s.queue.clone())
    }

    async fn settle(
        &self,
        done: &HashSet<Id16>,
        refused: &[(Id16, ErrorCode)],
    ) -> Result<(), ClientError> {
        self.with(|s| settle(&mut s.queue, &mut s.refused, done, refused))
    }

    async fn refused(&self) -> Result<Vec<RefusedScan>, ClientError> {
        self.with(|s| s.refused.clone())
    }

    async fn clear_refused(&self, requeue: bool) -> Result<usize, ClientError> {
        self.with(|s| clear_refused(&mut s.queue, &mut s.refused, requeue))
    }

    async fn clock(&self) -> Result<Option<Measured>, ClientError> {
        self.with(|s| s.clock)
    }

    async fn save_clock(&self, measured: Measured) -> Result<(), ClientError> {
        self.with(|s| s.clock = Some(measured))
    }

    async fn token(&self) -> Result<Option<String>, ClientError> {
        self.with(|s| s.token.clone())
    }

    async fn pinned_manifest(&self) -> Result<Option<Digest32>, ClientError> {
        self.with(|s| s.pinned)
    }

    async fn pin_manifest(&self, digest: Digest32) -> Result<(), ClientError> {
        self.with(|s| s.pinned = Some(digest))
    }
}
