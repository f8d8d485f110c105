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

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::{ArgGroup, Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::json;
use ticketing_client::clock::Measured;
use ticketing_client::validator::{
    Decision, Failure, Mode, Note, Outcome, RefusedScan, SeenEntry, SyncFailure, SyncReport,
    Validator, ValidatorStore, clear_refused, decode_qr, remember, seen_of, settle,
};
use ticketing_client::{ClientError, Http};
use ticketing_config::Settings;
use ticketing_config::cluster::{manifest_path, read_manifest, write_private};
use ticketing_crypto::presentation::Presentation;
use ticketing_crypto::ticket::Serial;
use ticketing_protocol::redeem::{Scan, TokenRole};
use ticketing_protocol::{Digest32, ErrorCode, Id16};

/// Environment variable holding the device token (else `<dir>/token`).
pub const TOKEN_ENV: &str = "TICKETING_VALIDATOR_TOKEN";

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
        /// Also print a registration code for the validator app (coordinator URL, token,
        /// manifest digest) as text and as a QR code in the terminal.
        #[arg(long, conflicts_with_all = ["admin", "auditor"])]
        qr: bool,
        /// Write the registration QR code as a PNG image too (implies --qr).
        #[arg(long, conflicts_with_all = ["admin", "auditor"])]
        png: Option<PathBuf>,
        /// If a live token has this name, revoke it and issue a new one (a lost or replaced
        /// device). Without it, an existing name is refused.
        #[arg(long)]
        replace: bool,
    },
    /// List the registered device, admin and auditor tokens (names, roles, dates; never a
    /// token). An ops command, like `register`.
    List {
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Revoke the token of a device: from its next request on, the coordinator answers 401.
    Revoke {
        /// The device's name (see `ticketing validator list`).
        name: String,
    },
    /// This device's state: scans queued for sync, scans the coordinator refused (kept until
    /// cleared), the clock offset to the coordinator, the spent list's version.
    Status(StatusArgs),
    /// Push the scans accepted offline to the coordinator. Exit 0 when the queue is empty
    /// afterwards, 1 if the coordinator reported conflicts or rejections, 2 if it could not
    /// be reached (the queue is kept).
    Sync(SyncArgs),
}

/// `ticketing validator status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Drop the refused scans (after reading them).
    #[arg(long, conflicts_with = "retry_refused")]
    clear_refused: bool,
    /// Put the refused scans back in the queue for the next sync (e.g. after fixing the clock).
    #[arg(long)]
    retry_refused: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
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

#[derive(Debug, Default, Serialize, Deserialize)]
struct Seen {
    entries: Vec<SeenEntry>,
}

impl Seen {
    fn of(&self, serial: &Serial) -> Vec<SeenEntry> {
        seen_of(&self.entries, serial)
    }

    #[cfg(test)]
    fn contains(&self, serial: &Serial, epoch: u32) -> bool {
        ticketing_client::validator::seen_in(&self.entries, serial, epoch)
    }
}

/// `queue.json`: scans owed to the ledger, and those the coordinator refused (kept for an
/// operator, with the reason).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Queue {
    scans: Vec<Scan>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    refused: Vec<RefusedScan>,
}

/// The validator's state directory: the [`ValidatorStore`] of the CLI.
#[derive(Debug)]
pub struct State {
    dir: PathBuf,
}

impl State {
    /// `dir`, else `<data_dir>/validator`.
    pub fn new(settings: &Settings, dir: Option<&Path>) -> Self {
        Self {
            dir: dir.map_or_else(|| settings.data_dir.join("validator"), Path::to_owned),
        }
    }

    /// A file in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Create the directory (mode 0700).
    pub fn create(&self) -> Result<()> {
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
    fn read_token(&self) -> Result<Option<String>> {
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

    fn read_snapshot(&self) -> Option<ticketing_protocol::publication::BloomSnapshot> {
        let path = self.path("bloom.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                eprintln!("warning: reading {}: {e}; ignored", path.display());
                return None;
            }
        };
        match serde_json::from_slice(&bytes) {
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

    fn write_snapshot(
        &self,
        snapshot: &ticketing_protocol::publication::BloomSnapshot,
    ) -> Result<()> {
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

    fn write_record(&self, entry: SeenEntry, queued: Option<Scan>, now: u64) -> Result<()> {
        let _lock = self.lock()?;
        let mut seen = self.load_seen();
        remember(&mut seen.entries, entry, now);
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

    /// Change the queue file under the lock.
    fn update_queue<T>(&self, change: impl FnOnce(&mut Queue) -> T) -> Result<T> {
        let _lock = self.lock()?;
        let mut queue = self.load_queue()?;
        let out = change(&mut queue);
        write_private(
            &self.path("queue.json"),
            &serde_json::to_vec_pretty(&queue)?,
        )?;
        Ok(out)
    }

    fn read_clock(&self) -> Option<Measured> {
        let bytes = std::fs::read(self.path("clock.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn read_pin(&self) -> Result<Option<Digest32>> {
        let path = self.path("manifest.digest");
        match std::fs::read_to_string(&path) {
            Ok(text) => Digest32::from_hex(text.trim())
                .map(Some)
                .with_context(|| format!("{} is not a manifest digest", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

fn store_error(e: &anyhow::Error) -> ClientError {
    ClientError::Store(format!("{e:#}"))
}

impl ValidatorStore for State {
    async fn snapshot(
        &self,
    ) -> Result<Option<ticketing_protocol::publication::BloomSnapshot>, ClientError> {
        Ok(self.read_snapshot())
    }

    async fn save_snapshot(
        &self,
        snapshot: &ticketing_protocol::publication::BloomSnapshot,
    ) -> Result<(), ClientError> {
        self.write_snapshot(snapshot).map_err(|e| store_error(&e))
    }

    async fn seen(&self, serial: &Serial) -> Result<Vec<SeenEntry>, ClientError> {
        Ok(self.load_seen().of(serial))
    }

    async fn record(
        &self,
        entry: SeenEntry,
        queued: Option<Scan>,
        now: u64,
    ) -> Result<(), ClientError> {
        self.write_record(entry, queued, now)
            .map_err(|e| store_error(&e))
    }

    async fn queue(&self) -> Result<Vec<Scan>, ClientError> {
        let _lock = self.lock().map_err(|e| store_error(&e))?;
        self.load_queue()
            .map(|q| q.scans)
            .map_err(|e| store_error(&e))
    }

    async fn settle(
        &self,
        done: &HashSet<Id16>,
        refused: &[(Id16, ErrorCode)],
    ) -> Result<(), ClientError> {
        self.update_queue(|q| settle(&mut q.scans, &mut q.refused, done, refused))
            .map_err(|e| store_error(&e))
    }

    async fn refused(&self) -> Result<Vec<RefusedScan>, ClientError> {
        let _lock = self.lock().map_err(|e| store_error(&e))?;
        self.load_queue()
            .map(|q| q.refused)
            .map_err(|e| store_error(&e))
    }

    async fn clear_refused(&self, requeue: bool) -> Result<usize, ClientError> {
        self.update_queue(|q| clear_refused(&mut q.scans, &mut q.refused, requeue))
            .map_err(|e| store_error(&e))
    }

    async fn clock(&self) -> Result<Option<Measured>, ClientError> {
        Ok(self.read_clock())
    }

    async fn save_clock(&self, measured: Measured) -> Result<(), ClientError> {
        (|| {
            self.create()?;
            write_private(&self.path("clock.json"), &serde_json::to_vec(&measured)?)?;
            Ok(())
        })()
        .map_err(|e: anyhow::Error| store_error(&e))
    }

    async fn token(&self) -> Result<Option<String>, ClientError> {
        self.read_token().map_err(|e| store_error(&e))
    }

    async fn pinned_manifest(&self) -> Result<Option<Digest32>, ClientError> {
        self.read_pin().map_err(|e| store_error(&e))
    }

    async fn pin_manifest(&self, digest: Digest32) -> Result<(), ClientError> {
        (|| {
            self.create()?;
            write_private(
                &self.path("manifest.digest"),
                format!("{digest}\n").as_bytes(),
            )?;
            Ok(())
        })()
        .map_err(|e: anyhow::Error| store_error(&e))
    }
}

// ---------------------------------------------------------------------------------------------
// validate

fn exit_code(outcome: &Outcome) -> ExitCode {
    ExitCode::from(match outcome {
        Outcome::Valid { .. } => EXIT_VALID,
        Outcome::Invalid { .. } => EXIT_INVALID,
        Outcome::CheckManually => EXIT_CHECK,
    })
}

/// `printed`: the code was a printed ticket's (it rides once: no time left to show).
fn print_outcome(outcome: &Outcome, printed: bool, as_json: bool) {
    let line = match (outcome, as_json) {
        (Outcome::Valid { valid_until, mode }, true) => json!({
            "verdict": "valid",
            "valid_until": valid_until,
            "mode": mode.as_str(),
            "queued": *mode == Mode::Offline,
        })
        .to_string(),
        (Outcome::Valid { valid_until, mode }, false) => format!(
            "VALID {} ({})",
            if printed {
                "(printed: this ride only)".to_owned()
            } else {
                format!("until {}", utc(*valid_until))
            },
            match mode {
                Mode::Online => "online",
                Mode::Offline => "offline, queued for sync",
            }
        ),
        (Outcome::Invalid { code, mode }, true) => {
            json!({ "verdict": "invalid", "code": code.as_str(), "mode": mode.as_str() })
                .to_string()
        }
        (Outcome::Invalid { code, .. }, false) => format!("INVALID: {code}"),
        (Outcome::CheckManually, true) => json!({
            "verdict": "check_manually",
            "reason": "possibly_spent",
            "mode": "offline",
        })
        .to_string(),
        (Outcome::CheckManually, false) => "CHECK MANUALLY (possibly spent)".to_owned(),
    };
    outln!("{line}");
}

fn print_notes(notes: &[Note]) {
    for note in notes {
        match note {
            Note::DecidingOffline(_) => eprintln!("{note}"),
            _ => eprintln!("warning: {note}"),
        }
    }
}

const REGISTER_HINT: &str = "run `ticketing validator register --name NAME --save` where the coordinator runs (or set TICKETING_VALIDATOR_TOKEN)";

/// Run `ticketing validate`; never fails: errors are printed and exit 2.
pub async fn validate(settings: &Settings, args: &ValidateArgs) -> ExitCode {
    let failed = |code: &str, message: String| {
        eprintln!("error: {message}");
        if args.json {
            outln!(
                "{}",
                json!({ "verdict": "error", "code": code, "detail": message })
            );
        }
        ExitCode::from(EXIT_ERROR)
    };
    let state = State::new(settings, args.state.dir.as_deref());
    let token_path = state.path("token");
    let (Decision { outcome, notes }, printed) = match decide(settings, args, state).await {
        Ok(d) => d,
        Err(e) => return failed("error", format!("{e:#}")),
    };
    print_notes(&notes);
    match outcome {
        Ok(outcome) => {
            print_outcome(&outcome, printed, args.json);
            exit_code(&outcome)
        }
        Err(Failure::Unauthorized) => failed(
            "unauthorized",
            format!("the coordinator refused this device's token: {REGISTER_HINT}"),
        ),
        Err(Failure::NoToken) => failed(
            "error",
            format!(
                "no device token in {} or {TOKEN_ENV}: {REGISTER_HINT}; or decide with --offline",
                token_path.display()
            ),
        ),
        Err(other) => failed("error", other.to_string()),
    }
}

async fn validator(
    settings: &Settings,
    state_args: &StateArgs,
    state: State,
) -> Result<Validator<State>> {
    let manifest_file = state_args
        .manifest
        .clone()
        .unwrap_or_else(|| manifest_path(&settings.data_dir));
    let manifest = read_manifest(&manifest_file)
        .with_context(|| format!("reading the manifest {}", manifest_file.display()))?;
    let http = Http::new(Duration::from_millis(settings.http.request_timeout_ms))?;
    let pin_file = state.path("manifest.digest");
    Validator::open(manifest, state, http)
        .await
        .map_err(|e| match e {
            ClientError::Manifest(m)
                if m.code() == ticketing_protocol::ErrorCode::ManifestMismatch =>
            {
                anyhow!(
                    "{m} ({}); if the operator published this manifest, delete {} to trust it",
                    m.code(),
                    pin_file.display()
                )
            }
            other => other.into(),
        })
}

/// The decision, and whether the code was a printed ticket's.
async fn decide(
    settings: &Settings,
    args: &ValidateArgs,
    state: State,
) -> Result<(Decision, bool)> {
    let validator = validator(settings, &args.state, state).await?;
    let payload = match (&args.payload, &args.image) {
        (Some(text), _) => text.trim_matches(['\n', '\r', '\t']).to_owned(),
        (None, Some(image)) => read_qr(image)?,
        (None, None) => return Err(anyhow!("give the payload text or --image FILE")),
    };
    let scan_id = Id16::random(&mut rand::rng());
    let printed = Presentation::from_text(&payload).is_ok_and(|p| p.is_printed());
    let decision = validator
        .validate(&payload, validator.now().await, args.offline, scan_id)
        .await;
    Ok((decision, printed))
}

/// The text of the first decodable QR code in a PNG or JPEG picture.
pub(crate) fn read_qr(path: &Path) -> Result<String> {
    let picture = image::ImageReader::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("reading {}", path.display()))?
        .decode()
        .with_context(|| format!("{} is not a readable PNG or JPEG image", path.display()))?
        .to_luma8();
    let width = usize::try_from(picture.width())?;
    let height = usize::try_from(picture.height())?;
    decode_qr(width, height, picture.as_raw())
        .ok_or_else(|| anyhow!("no readable QR code in {}", path.display()))
}

/// `2026-11-21 18:00 UTC`.
pub(crate) fn utc(unix: u64) -> String {
    ticketing_protocol::when::utc(unix)
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
            qr,
            png,
            replace,
        } => {
            let code = qr || png.is_some();
            let role = if admin {
                TokenRole::Admin
            } else if auditor {
                TokenRole::Auditor
            } else {
                TokenRole::Validator
            };
            register(settings, &name, role, save, dir.as_deref(), replace)
                .await
                .and_then(|(exit, token)| {
                    if code {
                        print_registration(settings, &token, png.as_deref())?;
                    }
                    Ok(exit)
                })
        }
        ValidatorCommand::Sync(args) => sync(settings, &args).await,
        ValidatorCommand::List { json } => crate::devices::list(settings, json)
            .await
            .map(|()| ExitCode::SUCCESS),
        ValidatorCommand::Revoke { name } => {
            crate::devices::revoke(settings, &name).await.map(|n| {
                eprintln!(
                    "revoked {n} token(s) named `{name}`: the coordinator refuses them from now on"
                );
                ExitCode::SUCCESS
            })
        }
        ValidatorCommand::Status(args) => status(settings, &args).await,
    };
    Ok(result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(EXIT_ERROR)
    }))
}

/// Print the registration code of `token` for the validator app, as text and a terminal QR.
fn print_registration(settings: &Settings, token: &str, png: Option<&Path>) -> Result<()> {
    let manifest = read_manifest(&manifest_path(&settings.data_dir))?;
    let code = ticketing_protocol::redeem::Registration {
        manifest_digest: manifest.digest(),
        token: token.to_owned(),
        coordinator_url: manifest.coordinator.url.clone(),
    }
    .to_text();
    let qr = qrcode::QrCode::with_error_correction_level(code.as_bytes(), qrcode::EcLevel::M)
        .context("rendering the QR code")?;
    outln!(
        "{}",
        qr.render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build()
    );
    outln!(
        "registration code (scan the QR or paste this into the validator app; it holds the token):"
    );
    outln!("{code}");
    if let Some(path) = png {
        // It holds the device token: written like the other secrets (0600, never world-readable).
        let mut png_bytes = Vec::new();
        qr.render::<image::Luma<u8>>()
            .min_dimensions(400, 400)
            .build()
            .write_to(
                &mut std::io::Cursor::new(&mut png_bytes),
                image::ImageFormat::Png,
            )
            .context("encoding the registration QR")?;
        ticketing_config::cluster::write_private(path, &png_bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("registration QR written to {}", path.display());
    }
    Ok(())
}

async fn register(
    settings: &Settings,
    name: &str,
    role: TokenRole,
    save: bool,
    dir: Option<&Path>,
    replace: bool,
) -> Result<(ExitCode, zeroize::Zeroizing<String>)> {
    let (token, device) = crate::devices::register(settings, name, role, replace).await?;
    let kind = role.as_str();
    if save {
        let state = State::new(settings, dir);
        state.create()?;
        let path = state.path("token");
        write_private(&path, format!("{}\n", token.as_str()).as_bytes())?;
        eprintln!(
            "registered {kind} `{}` (device {}); token saved to {} (mode 0600)",
            device.name,
            device.id,
            path.display()
        );
    } else {
        // Where a token of this role is used, so the advice fits it.
        let use_it = match role {
            TokenRole::Validator => format!("give it to the device (file <dir>/token, mode 0600, or {TOKEN_ENV})"),
            TokenRole::Admin => "keep it for admin commands (TICKETING_ADMIN_TOKEN, e.g. `ticketing revoke`)".to_owned(),
            TokenRole::Auditor => "give it to the auditor (`ticketing audit --coordinator-token`, or TICKETING_AUDIT_TOKEN)".to_owned(),
        };
        eprintln!(
            "registered {kind} `{}` (device {}); the token below is shown once: {use_it}",
            device.name, device.id
        );
    }
    outln!("{}", &*token);
    Ok((ExitCode::SUCCESS, token))
}

fn print_report(report: &SyncReport, error: Option<&str>, as_json: bool) {
    let remaining = report.remaining;
    if as_json {
        let conflicts: Vec<_> = report
            .conflicts
            .iter()
            .map(|(code, at, first)| {
                json!({ "code": code.as_str(), "scanned_at": at, "first_scanned_at": first })
            })
            .collect();
        outln!(
            "{}",
            json!({
                "sent": report.sent,
                "recorded": report.recorded,
                "already_synced": report.already_synced,
                "conflicts": conflicts,
                "suspected_sharing": report.suspected_sharing,
                "rejected": report.rejected,
                "retry_later": report.retry_later,
                "remaining": remaining,
                "refused_kept": report.refused,
                "error": error,
            })
        );
        return;
    }
    outln!("sent {} scan(s)", report.sent);
    outln!("recorded {}", report.recorded);
    outln!("already synced {}", report.already_synced);
    outln!("conflicts {}", report.conflicts.len());
    outln!("suspected sharing {}", report.suspected_sharing);
    let codes: Vec<String> = report
        .rejected
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect();
    if codes.is_empty() {
        outln!("rejected 0");
    } else {
        outln!(
            "rejected {} ({})",
            report.rejected_total(),
            codes.join(", ")
        );
    }
    for (code, at, first) in &report.conflicts {
        outln!(
            "conflict: {code} (scanned {}, first used {})",
            utc(*at),
            utc(*first)
        );
    }
    if report.retry_later > 0 {
        outln!(
            "{} scan(s) refused for now (coordinator unavailable): still queued",
            report.retry_later
        );
    }
    if remaining > 0 {
        outln!("{remaining} scan(s) still queued");
    }
    if report.refused > 0 {
        outln!(
            "{} refused scan(s) kept on this device: see `ticketing validator status`",
            report.refused
        );
    }
}

async fn status(settings: &Settings, args: &StatusArgs) -> Result<ExitCode> {
    let state = State::new(settings, args.state.dir.as_deref());
    let validator = validator(settings, &args.state, state).await?;
    let store = validator.store();
    let cleared = if args.clear_refused || args.retry_refused {
        Some(store.clear_refused(args.retry_refused).await?)
    } else {
        None
    };
    let queued = store.queue().await?;
    let refused = store.refused().await?;
    let clock = validator.clock_offset().await;
    let mut notes = Vec::new();
    let snapshot = validator.snapshot(&mut notes).await?.map(|s| s.raw.version);
    if args.json {
        let refused: Vec<_> = refused
            .iter()
            .map(|r| json!({ "code": r.code.as_str(), "scanned_at": r.scan.scanned_at }))
            .collect();
        outln!(
            "{}",
            json!({
                "queued": queued.len(),
                "refused": refused,
                "cleared": cleared,
                "requeued": args.retry_refused,
                "clock_offset_seconds": clock.map(|m| m.offset),
                "clock_measured_at": clock.map(|m| m.at),
                "snapshot_version": snapshot,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(n) = cleared {
        if args.retry_refused {
            outln!("{n} refused scan(s) put back in the queue");
        } else {
            outln!("{n} refused scan(s) cleared");
        }
    }
    outln!("queued for sync: {}", queued.len());
    outln!("refused by the coordinator (kept): {}", refused.len());
    for r in &refused {
        outln!("  {} (scanned {})", r.code, utc(r.scan.scanned_at));
    }
    match clock {
        Some(m) => outln!(
            "clock: {:+} s to the coordinator (measured {}){}",
            m.offset,
            utc(m.at),
            if m.offset == 0 { "" } else { ", corrected for" }
        ),
        None => outln!("clock: offset to the coordinator not measured yet (run once online)"),
    }
    match snapshot {
        Some(v) => outln!("spent list: version {v}"),
        None => outln!("spent list: none cached yet"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn sync(settings: &Settings, args: &SyncArgs) -> Result<ExitCode> {
    let state = State::new(settings, args.state.dir.as_deref());
    let token_path = state.path("token");
    let validator = validator(settings, &args.state, state).await?;
    let (report, failure) = validator.sync().await;
    if report.sent == 0 && report.remaining == 0 && failure.is_none() {
        if args.json {
            print_report(&report, None, true);
        } else {
            outln!("nothing to sync");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let failure = match failure {
        None => None,
        Some(SyncFailure::NoToken) => {
            return Err(anyhow!(
                "no device token in {} or {TOKEN_ENV}: {REGISTER_HINT}",
                token_path.display()
            ));
        }
        // Nothing sent and nothing left: the queue itself could not be read.
        Some(SyncFailure::Other(e)) if report.sent == 0 && report.remaining == 0 => {
            return Err(e.into());
        }
        Some(SyncFailure::Unauthorized) => Some(format!(
            "the coordinator refused this device's token: {REGISTER_HINT}"
        )),
        Some(SyncFailure::Other(e)) => Some(e.to_string()),
    };
    print_report(&report, failure.as_deref(), args.json);
    if let Some(reason) = &failure {
        eprintln!("error: coordinator: {reason}; the unsent scans stay queued");
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    if !report.conflicts.is_empty() || report.rejected_total() > 0 {
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    if report.remaining > 0 {
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
            at: 40,
            refused: None,
        };
        state.write_record(entry(1, 100), None, 50).unwrap();
        state.write_record(entry(2, 1000), None, 50).unwrap();
        assert!(state.load_seen().contains(&Serial([1; 32]), 7));
        assert!(!state.load_seen().contains(&Serial([1; 32]), 8));
        state.write_record(entry(3, 1000), None, 200).unwrap();
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
