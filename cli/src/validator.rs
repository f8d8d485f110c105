//! The conductor's command-line validator: `ticketing validate`, `ticketing validator ...`.
//!
//! `validate` runs every offline check of a presentation against the manifest (parse, keyset,
//! window, epoch, holder signature, BLS), then the local ones against the state directory
//! (default `<data_dir>/validator`):
//!
//! - `bloom.json`: the coordinator's last signed Bloom/deny-list snapshot (verified under the
//!   manifest's coordinator key whenever it is read);
//! - `seen.json`: (serial, epoch) pairs this device accepted, until their keyset ends;
//! - `queue.json`: scans accepted offline, waiting for `ticketing validator sync`;
//! - `token`: the device token (or `TICKETING_VALIDATOR_TOKEN`).
//!
//! Online, the coordinator has the last word (`POST /v1/redeem`); when it cannot be reached,
//! the scan is decided offline: "check manually" if the Bloom filter may hold the serial, else
//! valid and queued. Output names only the verdict and the expiry, never the serial or keys.
//! Every file is written atomically with mode 0600, under a lock for concurrent commands.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::{ArgGroup, Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::json;
use ticketing_client::{ClientError, CoordinatorClient};
use ticketing_config::Settings;
use ticketing_config::cluster::{manifest_path, read_manifest, write_private};
use ticketing_coordinator::TokenRole;
use ticketing_crypto::ticket::Serial;
use ticketing_protocol::ErrorCode;
use ticketing_protocol::Id16;
use ticketing_protocol::manifest::{Manifest, ProductKind};
use ticketing_protocol::publication::{BloomSnapshot, SerialFilter};
use ticketing_protocol::redeem::{Scan, SyncStatus, Verdict as CoordinatorVerdict};
use ticketing_protocol::verify::{self, Screened};

/// Environment variable holding the device token (else `<dir>/token`).
pub const TOKEN_ENV: &str = "TICKETING_VALIDATOR_TOKEN";

/// Most scans per `POST /v1/sync` (the coordinator's default `max_scans_per_request`).
const SYNC_CHUNK: usize = 1000;

const EXIT_VALID: u8 = 0;
const EXIT_INVALID: u8 = 1;
const EXIT_ERROR: u8 = 2;
const EXIT_CHECK: u8 = 3;

/// Where the validator keeps its state, and the manifest it trusts.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// Validator state directory (snapshot, seen scans, offline queue, token); default
    /// `<data_dir>/validator`.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Manifest; default `<data_dir>/manifest.json`.
    #[arg(long)]
    manifest: Option<PathBuf>,
}

/// `ticketing validate`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("input").required(true).args(["payload", "image"])))]
pub struct ValidateArgs {
    /// The QR code's payload text (e.g. from `ticketing wallet show --payload-only`).
    /// Base45 text may start with `-`: it is a payload, not an option.
    #[arg(allow_hyphen_values = true)]
    payload: Option<String>,
    /// A picture of the QR code (PNG or JPEG).
    #[arg(long)]
    image: Option<PathBuf>,
    #[command(flatten)]
    state: StateArgs,
    /// Decide offline without contacting the coordinator (accepted scans are queued).
    #[arg(long)]
    offline: bool,
    /// Print the verdict as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `ticketing validator ...`.
#[derive(Debug, Subcommand)]
pub enum ValidatorCommand {
    /// Register a validator device (or an admin, or an auditor) in the coordinator's database
    /// and print its token, once. An ops command: run it where the coordinator runs.
    Register {
        /// Device name, e.g. `bus-42-front`.
        #[arg(long)]
        name: String,
        /// Make an admin token instead (revocation, stats).
        #[arg(long, conflicts_with = "auditor")]
        admin: bool,
        /// Make a read-only auditor token instead (stats; `ticketing audit`).
        #[arg(long)]
        auditor: bool,
        /// Also write the token to `<dir>/token` (mode 0600) for `ticketing validate`.
        #[arg(long)]
        save: bool,
        /// Validator state directory; default `<data_dir>/validator`.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Push the scans accepted offline to the coordinator. Exit 0 when the queue is empty
    /// afterwards, 1 if the coordinator reported conflicts or rejections, 2 if it could not
    /// be reached (the queue is kept).
    Sync(SyncArgs),
}

/// `ticketing validator sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

// ---------------------------------------------------------------------------------------------
// State files

/// One (serial, epoch) this device accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SeenEntry {
    serial: Serial,
    epoch: u32,
    /// End of the ticket's keyset window: the entry is useless afterwards.
    until: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Seen {
    entries: Vec<SeenEntry>,
}

impl Seen {
    fn contains(&self, serial: &Serial, epoch: u32) -> bool {
        self.entries
            .iter()
            .any(|e| e.epoch == epoch && e.serial == *serial)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Queue {
    scans: Vec<Scan>,
}

/// The validator's state directory.
#[derive(Debug)]
struct State {
    dir: PathBuf,
}

impl State {
    fn new(settings: &Settings, dir: Option<&Path>) -> Self {
        Self {
            dir: dir.map_or_else(|| settings.data_dir.join("validator"), Path::to_owned),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn create(&self) -> Result<()> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))
    }

    /// An exclusive lock on the state directory, held until the file is dropped.
    fn lock(&self) -> Result<std::fs::File> {
        self.create()?;
        let path = self.path("state.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(file)
    }

    /// The device token: `TICKETING_VALIDATOR_TOKEN`, else `<dir>/token`.
    fn token(&self) -> Result<Option<String>> {
        if let Ok(t) = std::env::var(TOKEN_ENV)
            && !t.trim().is_empty()
        {
            return Ok(Some(t.trim().to_owned()));
        }
        let path = self.path("token");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes)
                    .map_err(|_| anyhow!("{} is not a token file", path.display()))?;
                let token = text.trim();
                Ok((!token.is_empty()).then(|| token.to_owned()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The cached snapshot, if there is one whose signature verifies.
    fn snapshot(&self, manifest: &Manifest) -> Option<Snapshot> {
        let path = self.path("bloom.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                eprintln!("warning: reading {}: {e}; ignored", path.display());
                return None;
            }
        };
        let checked = serde_json::from_slice::<BloomSnapshot>(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|s| Snapshot::check(s, manifest));
        match checked {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!(
                    "warning: the cached spent list {} is unusable ({e}); it will be fetched again",
                    path.display()
                );
                None
            }
        }
    }

    /// Store a verified snapshot unless a newer one is already stored.
    fn save_snapshot(&self, snapshot: &BloomSnapshot) -> Result<()> {
        let _lock = self.lock()?;
        let path = self.path("bloom.json");
        #[derive(Deserialize)]
        struct Version {
            version: u64,
        }
        let stored = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Version>(&b).ok());
        if stored.is_some_and(|s| s.version > snapshot.version) {
            return Ok(());
        }
        write_private(&path, &serde_json::to_vec(snapshot)?)?;
        Ok(())
    }

    fn load_seen(&self) -> Seen {
        let path = self.path("seen.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                // Only a replay cache: the coordinator keeps the real ledger.
                eprintln!(
                    "warning: {} is unreadable ({e}); starting afresh",
                    path.display()
                );
                Seen::default()
            }),
            Err(_) => Seen::default(),
        }
    }

    fn load_queue(&self) -> Result<Queue> {
        let path = self.path("queue.json");
        match std::fs::read(&path) {
            // Never dropped silently: these scans are owed to the ledger.
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a scan queue", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Queue::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Record an accepted scan: mark (serial, epoch) seen, queue the scan if it was accepted
    /// offline, and forget entries of keysets that ended.
    fn record(&self, entry: SeenEntry, queued: Option<Scan>, now: u64) -> Result<()> {
        let _lock = self.lock()?;
        let mut seen = self.load_seen();
        seen.entries.retain(|e| e.until > now);
        if !seen.contains(&entry.serial, entry.epoch) {
            seen.entries.push(entry);
        }
        if let Some(scan) = queued {
            let mut queue = self.load_queue()?;
            queue.scans.push(scan);
            write_private(
                &self.path("queue.json"),
                &serde_json::to_vec_pretty(&queue)?,
            )?;
        }
        write_private(&self.path("seen.json"), &serde_json::to_vec(&seen)?)?;
        Ok(())
    }

    /// Remove answered scans from the queue.
    fn dequeue(&self, answered: &HashSet<Id16>) -> Result<()> {
        let _lock = self.lock()?;
        let mut queue = self.load_queue()?;
        queue.scans.retain(|s| !answered.contains(&s.scan_id));
        write_private(
            &self.path("queue.json"),
            &serde_json::to_vec_pretty(&queue)?,
        )?;
        Ok(())
    }
}

/// A snapshot whose signature verified, with its decoded filter.
struct Snapshot {
    raw: BloomSnapshot,
    filter: Option<SerialFilter>,
}

impl Snapshot {
    /// Verify the signature. A signed snapshot whose filter does not decode is kept for its
    /// exact deny list, and then "may contain" every serial (offline: check manually).
    fn check(raw: BloomSnapshot, manifest: &Manifest) -> Result<Self, String> {
        raw.verify(&manifest.coordinator.key)
            .map_err(|e| e.to_string())?;
        let filter = raw
            .decode_filter()
            .map_err(|e| {
                eprintln!(
                    "warning: the spent list's filter does not decode ({e}); offline scans need a manual check"
                );
            })
            .ok();
        Ok(Self { raw, filter })
    }

    fn denies(&self, serial: &Serial) -> bool {
        self.raw.deny.contains(serial)
    }

    fn may_contain(&self, serial: &Serial) -> bool {
        self.denies(serial) || self.filter.as_ref().is_none_or(|f| f.contains(serial))
    }
}

// ---------------------------------------------------------------------------------------------
// validate

/// How a verdict was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Online,
    Offline,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
        }
    }
}

/// What the conductor is told.
#[derive(Debug)]
enum Outcome {
    Valid { valid_until: u64, mode: Mode },
    Invalid { code: ErrorCode, mode: Mode },
    CheckManually,
}

impl Outcome {
    fn exit(&self) -> ExitCode {
        ExitCode::from(match self {
            Self::Valid { .. } => EXIT_VALID,
            Self::Invalid { .. } => EXIT_INVALID,
            Self::CheckManually => EXIT_CHECK,
        })
    }

    fn print(&self, as_json: bool) {
        let line = match (self, as_json) {
            (Self::Valid { valid_until, mode }, true) => json!({
                "verdict": "valid",
                "valid_until": valid_until,
                "mode": mode.as_str(),
                "queued": *mode == Mode::Offline,
            })
            .to_string(),
            (Self::Valid { valid_until, mode }, false) => format!(
                "VALID until {} ({})",
                utc(*valid_until),
                match mode {
                    Mode::Online => "online",
                    Mode::Offline => "offline, queued for sync",
                }
            ),
            (Self::Invalid { code, mode }, true) => {
                json!({ "verdict": "invalid", "code": code.as_str(), "mode": mode.as_str() })
                    .to_string()
            }
            (Self::Invalid { code, .. }, false) => format!("INVALID: {code}"),
            (Self::CheckManually, true) => json!({
                "verdict": "check_manually",
                "reason": "possibly_spent",
                "mode": "offline",
            })
            .to_string(),
            (Self::CheckManually, false) => "CHECK MANUALLY (possibly spent)".to_owned(),
        };
        println!("{line}");
    }
}

/// Why `validate` could not give a verdict (exit 2).
#[derive(Debug)]
enum Failure {
    /// The coordinator does not know the device token.
    Unauthorized,
    /// Anything else.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e)
    }
}

const REGISTER_HINT: &str = "run `ticketing validator register --name NAME --save` where the coordinator runs (or set TICKETING_VALIDATOR_TOKEN)";

/// Run `ticketing validate`; never fails: errors are printed and exit 2.
pub async fn validate(settings: &Settings, args: &ValidateArgs) -> ExitCode {
    match decide(settings, args).await {
        Ok(outcome) => {
            outcome.print(args.json);
            outcome.exit()
        }
        Err(failure) => {
            let (code, message) = match failure {
                Failure::Unauthorized => (
                    "unauthorized",
                    format!("the coordinator refused this device's token: {REGISTER_HINT}"),
                ),
                Failure::Other(e) => ("error", format!("{e:#}")),
            };
            eprintln!("error: {message}");
            if args.json {
                println!(
                    "{}",
                    json!({ "verdict": "error", "code": code, "detail": message })
                );
            }
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn decide(settings: &Settings, args: &ValidateArgs) -> Result<Outcome, Failure> {
    let manifest_file = args
        .state
        .manifest
        .clone()
        .unwrap_or_else(|| manifest_path(&settings.data_dir));
    let manifest = read_manifest(&manifest_file)
        .with_context(|| format!("reading the manifest {}", manifest_file.display()))?;
    let payload = match (&args.payload, &args.image) {
        (Some(text), _) => text.trim().to_owned(),
        (None, Some(image)) => read_qr(image)?,
        (None, None) => return Err(anyhow!("give the payload text or --image FILE").into()),
    };
    let now = ticketing_service::now();

    // Everything a ticket can be checked on by itself, BLS included.
    let screened = match verify::check(&manifest, &payload, now) {
        Ok(s) => s,
        Err(code) => {
            return Ok(Outcome::Invalid {
                code,
                mode: Mode::Offline,
            });
        }
    };
    let state = State::new(settings, args.state.dir.as_deref());
    let cached = state.snapshot(&manifest);
    if let Some(outcome) = local_checks(&state, cached.as_ref(), &screened) {
        return Ok(outcome);
    }
    let scan = Scan {
        scan_id: Id16::random(&mut rand::rng()),
        payload,
        scanned_at: now,
    };
    if args.offline {
        return offline(&state, cached.as_ref(), &screened, scan, now);
    }

    let Some(token) = state.token()? else {
        return Err(anyhow!(
            "no device token in {} or {TOKEN_ENV}: {REGISTER_HINT}; or decide with --offline",
            state.path("token").display()
        )
        .into());
    };
    let client = CoordinatorClient::new(
        &manifest.coordinator.url,
        Some(token),
        Duration::from_millis(settings.http.request_timeout_ms),
    )
    .map_err(anyhow::Error::from)?;
    // Both at once: the conductor waits for one round trip, not two.
    let cached_version = cached.as_ref().map(|s| s.raw.version);
    let (fresh, answer) = futures::join!(client.bloom(cached_version), client.redeem(&scan));
    let snapshot = match fresh {
        Ok(Some(raw)) => match Snapshot::check(raw, &manifest) {
            Ok(s) => {
                if let Err(e) = state.save_snapshot(&s.raw) {
                    eprintln!("warning: could not store the spent list: {e:#}");
                }
                Some(s)
            }
            Err(e) => {
                eprintln!("warning: the coordinator's spent list does not verify ({e}); ignored");
                cached
            }
        },
        Ok(None) => cached,
        Err(e) => {
            // When the coordinator is down altogether, the redeem below says so once.
            if !matches!(e, ClientError::Unreachable { .. }) || answer.is_ok() {
                eprintln!("warning: could not refresh the spent list: {e}");
            }
            cached
        }
    };

    match answer {
        Ok(response) => match response.verdict {
            CoordinatorVerdict::Accepted { valid_until } => {
                state.record(seen_entry(&screened), None, now)?;
                Ok(Outcome::Valid {
                    valid_until,
                    mode: Mode::Online,
                })
            }
            CoordinatorVerdict::Rejected { code } => Ok(Outcome::Invalid {
                code,
                mode: Mode::Online,
            }),
        },
        Err(ClientError::Refused { body, .. }) if body.code == ErrorCode::Unauthorized => {
            Err(Failure::Unauthorized)
        }
        Err(ClientError::Unreachable { reason, .. }) => {
            eprintln!("coordinator unreachable ({reason}): deciding offline");
            // The freshest snapshot may deny it outright now.
            if let Some(outcome) = local_checks(&state, snapshot.as_ref(), &screened) {
                return Ok(outcome);
            }
            offline(&state, snapshot.as_ref(), &screened, scan, now)
        }
        Err(e) => Err(anyhow!("the coordinator refused the scan: {e}").into()),
    }
}

/// The checks against this device's state: the exact deny list, then (serial, epoch) seen.
fn local_checks(state: &State, snapshot: Option<&Snapshot>, s: &Screened<'_>) -> Option<Outcome> {
    if snapshot.is_some_and(|snap| snap.denies(&s.serial)) {
        return Some(Outcome::Invalid {
            code: ErrorCode::Revoked,
            mode: Mode::Offline,
        });
    }
    if state.load_seen().contains(&s.serial, s.presentation.epoch) {
        return Some(Outcome::Invalid {
            code: ErrorCode::ReplayedEpoch,
            mode: Mode::Offline,
        });
    }
    None
}

/// Decide without the coordinator: maybe spent => check manually; else valid, queued.
fn offline(
    state: &State,
    snapshot: Option<&Snapshot>,
    s: &Screened<'_>,
    scan: Scan,
    now: u64,
) -> Result<Outcome, Failure> {
    match snapshot {
        Some(snap) if snap.may_contain(&s.serial) => return Ok(Outcome::CheckManually),
        Some(_) => {}
        None => eprintln!(
            "warning: no spent list cached yet (run once online); accepting on the ticket's own checks"
        ),
    }
    let valid_until = match s.kind {
        ProductKind::Single { transfer_minutes } => {
            now.saturating_add(u64::from(transfer_minutes).saturating_mul(60))
        }
        ProductKind::Pass => s.keyset.params.valid_until,
    };
    state.record(seen_entry(s), Some(scan), now)?;
    Ok(Outcome::Valid {
        valid_until,
        mode: Mode::Offline,
    })
}

fn seen_entry(s: &Screened<'_>) -> SeenEntry {
    SeenEntry {
        serial: s.serial,
        epoch: s.presentation.epoch,
        until: s.keyset.params.valid_until,
    }
}

/// The text of the first decodable QR code in a PNG or JPEG picture.
fn read_qr(path: &Path) -> Result<String> {
    let picture = image::ImageReader::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("reading {}", path.display()))?
        .decode()
        .with_context(|| format!("{} is not a readable PNG or JPEG image", path.display()))?
        .to_luma8();
    let width = usize::try_from(picture.width())?;
    let height = usize::try_from(picture.height())?;
    let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| {
        u32::try_from(x)
            .ok()
            .zip(u32::try_from(y).ok())
            .and_then(|(x, y)| picture.get_pixel_checked(x, y))
            .map_or(u8::MAX, |p| p.0[0])
    });
    prepared
        .detect_grids()
        .into_iter()
        .find_map(|grid| grid.decode().ok().map(|(_, text)| text))
        .map(|text| text.trim().to_owned())
        .ok_or_else(|| anyhow!("no readable QR code in {}", path.display()))
}

/// `2026-11-21 18:00 UTC`.
fn utc(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .map_or_else(
            || unix.to_string(),
            |t| {
                format!(
                    "{:04}-{:02}-{:02} {:02}:{:02} UTC",
                    t.year(),
                    u8::from(t.month()),
                    t.day(),
                    t.hour(),
                    t.minute()
                )
            },
        )
}

// ---------------------------------------------------------------------------------------------
// validator register / sync

/// Run a `ticketing validator` subcommand. Errors are printed; exit 2.
pub async fn run(settings: &Settings, cmd: ValidatorCommand) -> Result<ExitCode> {
    let result = match cmd {
        ValidatorCommand::Register {
            name,
            admin,
            auditor,
            save,
            dir,
        } => {
            let role = if admin {
                TokenRole::Admin
            } else if auditor {
                TokenRole::Auditor
            } else {
                TokenRole::Validator
            };
            register(settings, &name, role, save, dir.as_deref()).await
        }
        ValidatorCommand::Sync(args) => sync(settings, &args).await,
    };
    Ok(result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(EXIT_ERROR)
    }))
}

async fn register(
    settings: &Settings,
    name: &str,
    role: TokenRole,
    save: bool,
    dir: Option<&Path>,
) -> Result<ExitCode> {
    let (token, device) = ticketing_coordinator::register(settings, name, role)
        .await
        .context("registering the device in the coordinator's database")?;
    let kind = match role {
        TokenRole::Admin => "admin",
        TokenRole::Auditor => "auditor",
        TokenRole::Validator => "validator",
    };
    if save {
        let state = State::new(settings, dir);
        state.create()?;
        let path = state.path("token");
        write_private(&path, format!("{}\n", token.expose()).as_bytes())?;
        eprintln!(
            "registered {kind} `{}` (device {}); token saved to {} (mode 0600)",
            device.name,
            device.id,
            path.display()
        );
    } else {
        eprintln!(
            "registered {kind} `{}` (device {}); the token below is shown once: give it to the device \
             (file <dir>/token, mode 0600, or {TOKEN_ENV})",
            device.name, device.id
        );
    }
    println!("{}", token.expose());
    Ok(ExitCode::SUCCESS)
}

/// What the coordinator made of the queue.
#[derive(Debug, Default)]
struct SyncReport {
    sent: usize,
    recorded: usize,
    already_synced: usize,
    suspected_sharing: usize,
    /// (code, our scan time, the winning scan's time), one per conflicting scan.
    conflicts: Vec<(ErrorCode, u64, u64)>,
    rejected: BTreeMap<&'static str, usize>,
}

impl SyncReport {
    fn rejected_total(&self) -> usize {
        self.rejected.values().sum()
    }

    fn print(&self, remaining: usize, error: Option<&str>, as_json: bool) {
        if as_json {
            let conflicts: Vec<_> = self
                .conflicts
                .iter()
                .map(|(code, at, first)| {
                    json!({ "code": code.as_str(), "scanned_at": at, "first_scanned_at": first })
                })
                .collect();
            println!(
                "{}",
                json!({
                    "sent": self.sent,
                    "recorded": self.recorded,
                    "already_synced": self.already_synced,
                    "conflicts": conflicts,
                    "suspected_sharing": self.suspected_sharing,
                    "rejected": self.rejected,
                    "remaining": remaining,
                    "error": error,
                })
            );
            return;
        }
        println!("sent {} scan(s)", self.sent);
        println!("recorded {}", self.recorded);
        println!("already synced {}", self.already_synced);
        println!("conflicts {}", self.conflicts.len());
        println!("suspected sharing {}", self.suspected_sharing);
        let codes: Vec<String> = self
            .rejected
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect();
        if codes.is_empty() {
            println!("rejected 0");
        } else {
            println!("rejected {} ({})", self.rejected_total(), codes.join(", "));
        }
        for (code, at, first) in &self.conflicts {
            println!(
                "conflict: {code} (scanned {}, first used {})",
                utc(*at),
                utc(*first)
            );
        }
        if remaining > 0 {
            println!("{remaining} scan(s) still queued");
        }
    }
}

async fn sync(settings: &Settings, args: &SyncArgs) -> Result<ExitCode> {
    let manifest_file = args
        .state
        .manifest
        .clone()
        .unwrap_or_else(|| manifest_path(&settings.data_dir));
    let manifest = read_manifest(&manifest_file)
        .with_context(|| format!("reading the manifest {}", manifest_file.display()))?;
    let state = State::new(settings, args.state.dir.as_deref());
    let queued = {
        let _lock = state.lock()?;
        state.load_queue()?.scans
    };
    if queued.is_empty() {
        if args.json {
            SyncReport::default().print(0, None, true);
        } else {
            println!("nothing to sync");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let token = state.token()?.ok_or_else(|| {
        anyhow!(
            "no device token in {} or {TOKEN_ENV}: {REGISTER_HINT}",
            state.path("token").display()
        )
    })?;
    let client = CoordinatorClient::new(
        &manifest.coordinator.url,
        Some(token),
        Duration::from_millis(settings.http.request_timeout_ms),
    )?;

    let mut report = SyncReport::default();
    let mut pending: HashSet<Id16> = queued.iter().map(|s| s.scan_id).collect();
    let mut failure: Option<String> = None;
    for chunk in queued.chunks(SYNC_CHUNK) {
        let at: BTreeMap<Id16, u64> = chunk.iter().map(|s| (s.scan_id, s.scanned_at)).collect();
        let response = match client.sync(chunk.to_vec()).await {
            Ok(r) => r,
            Err(ClientError::Refused { body, .. }) if body.code == ErrorCode::Unauthorized => {
                failure = Some(format!(
                    "the coordinator refused this device's token: {REGISTER_HINT}"
                ));
                break;
            }
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        };
        report.sent = report.sent.saturating_add(chunk.len());
        let mut answered = HashSet::new();
        for result in response.results {
            let Some(scanned_at) = at.get(&result.scan_id) else {
                continue;
            };
            if !answered.insert(result.scan_id) {
                continue;
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
        state.dequeue(&answered)?;
        pending.retain(|id| !answered.contains(id));
    }

    report.print(pending.len(), failure.as_deref(), args.json);
    if let Some(reason) = &failure {
        eprintln!("error: coordinator: {reason}; the unsent scans stay queued");
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    if !report.conflicts.is_empty() || report.rejected_total() > 0 {
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    if !pending.is_empty() {
        eprintln!("error: the coordinator did not answer every scan; the rest stay queued");
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct ValidateCli {
        #[command(flatten)]
        args: ValidateArgs,
    }

    #[test]
    fn a_payload_starting_with_a_hyphen_is_a_payload() {
        // `-` is a Base45 character, so about one payload in 45 starts with it.
        let cli =
            <ValidateCli as clap::Parser>::try_parse_from(["validate", "-5ABC%*+", "--offline"])
                .unwrap();
        assert_eq!(cli.args.payload.as_deref(), Some("-5ABC%*+"));
        assert!(cli.args.offline);
    }

    #[test]
    fn times_print_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_795_284_000), "2026-11-21 18:00 UTC");
    }

    #[test]
    fn seen_entries_expire_with_their_keyset() {
        let dir = tempfile::tempdir().unwrap();
        let state = State {
            dir: dir.path().join("v"),
        };
        let entry = |b: u8, until| SeenEntry {
            serial: Serial([b; 32]),
            epoch: 7,
            until,
        };
        state.record(entry(1, 100), None, 50).unwrap();
        state.record(entry(2, 1000), None, 50).unwrap();
        assert!(state.load_seen().contains(&Serial([1; 32]), 7));
        assert!(!state.load_seen().contains(&Serial([1; 32]), 8));
        state.record(entry(3, 1000), None, 200).unwrap();
        let seen = state.load_seen();
        assert!(!seen.contains(&Serial([1; 32]), 7));
        assert!(seen.contains(&Serial([2; 32]), 7));
        assert!(seen.contains(&Serial([3; 32]), 7));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(state.path("seen.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
