//! The passenger's command-line wallet: the wallet core (`ticketing_client::wallet`) over a
//! JSON file (mode 0600) of tickets with their holder secrets, and of purchases paid but not
//! yet issued (so nothing paid is ever lost). This module only parses arguments, keeps the
//! file and prints.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ticketing_client::wallet::{
    Finished, PayOutcome, Recovered, SoftwareKeys, StoredTicket, TicketStatus, Wallet, WalletData,
    WalletStore, status as ticket_status,
};
use ticketing_client::{Client, ClientError};
use ticketing_config::Settings;
use ticketing_config::cluster::{manifest_path, read_manifest, write_private};
use ticketing_protocol::ErrorCode;
use ticketing_protocol::manifest::{Manifest, ManifestError};
use ticketing_protocol::receipt::PaymentMethod;
use ticketing_protocol::voucher::VoucherCode;

/// Wallet subcommands.
#[derive(Debug, Subcommand)]
pub enum WalletCommand {
    /// Buy tickets with a test card or a cash voucher.
    Buy(BuyArgs),
    /// Finish purchases that were paid but could not reach enough nodes.
    Retry(WalletFile),
    /// List the tickets.
    List(WalletFile),
    /// Show a ticket's rotating QR code (terminal, and PNG with --png).
    Show(ShowArgs),
    /// Write a single ticket for paper: a PDF page (or a PNG of the code alone) with a static
    /// QR code for passengers without a phone. It is accepted once, as one ride without
    /// transfers: a printed code cannot rotate, so whoever shows a copy first rides.
    Print(PrintArgs),
    /// Print the blame evidence this wallet kept (nodes caught signing wrong partials) as
    /// JSON, for `ticketing audit --evidence FILE`. It holds no ticket or secret.
    Evidence(WalletFile),
    /// Trust the manifest as it is now. A wallet pins the manifest it is first used with and
    /// refuses another (`manifest_mismatch`); run this when the operator published a new one.
    Pin(WalletFile),
}

/// Where the wallet lives.
#[derive(Debug, Args)]
pub struct WalletFile {
    /// Wallet file; default `<data_dir>/wallet.json`.
    #[arg(long)]
    wallet: Option<PathBuf>,
    /// Manifest; default `<data_dir>/manifest.json`.
    #[arg(long)]
    manifest: Option<PathBuf>,
}

/// `wallet buy`.
#[derive(Debug, Args)]
pub struct BuyArgs {
    #[command(flatten)]
    file: WalletFile,
    /// Product, e.g. `single`, `day`.
    #[arg(long)]
    product: String,
    /// How many tickets.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Pay with this test card (4242 4242 4242 4242 succeeds; see the README).
    #[arg(long, conflicts_with = "voucher", required_unless_present = "voucher")]
    card: Option<String>,
    /// Pay with a cash voucher code (XXXX-XXXX-XXXX-XXXX).
    #[arg(long)]
    voucher: Option<String>,
}

/// `wallet show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    file: WalletFile,
    /// Ticket number from `wallet list` (1 = first).
    #[arg(default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    number: u32,
    /// Also write the QR code as a PNG image.
    #[arg(long)]
    png: Option<PathBuf>,
    /// Print only the payload text (for scripts and `ticketing validate`).
    #[arg(long)]
    payload_only: bool,
}

/// `wallet print`.
#[derive(Debug, Args)]
pub struct PrintArgs {
    #[command(flatten)]
    file: WalletFile,
    /// Ticket number from `wallet list` (1 = first).
    #[arg(default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    number: u32,
    /// Where to write it: `*.pdf` (an A4 page with the code and its rules) or `*.png` (the
    /// code alone). The file is as good as the ticket: it is written with mode 0600.
    #[arg(long)]
    out: PathBuf,
}

/// The CLI wallet's store: a JSON file of [`WalletData`], written atomically with mode 0600,
/// changed under an exclusive lock so two wallet commands running at once cannot overwrite
/// each other's purchases.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// The wallet file at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    fn read(&self) -> Result<WalletData> {
        let path = &self.path;
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a wallet file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(WalletData::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn locked_update<T>(&self, change: impl FnOnce(&mut WalletData) -> T) -> Result<T> {
        let path = &self.path;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let lock_path = path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("locking {}", lock_path.display()))?;
        let mut wallet = self.read()?;
        let out = change(&mut wallet);
        write_private(path, &serde_json::to_vec_pretty(&wallet)?)?;
        drop(lock);
        Ok(out)
    }
}

fn store_error(e: &anyhow::Error) -> ClientError {
    ClientError::Store(format!("{e:#}"))
}

impl WalletStore for FileStore {
    async fn load(&self) -> Result<WalletData, ClientError> {
        self.read().map_err(|e| store_error(&e))
    }

    async fn update<T>(&self, change: impl FnOnce(&mut WalletData) -> T) -> Result<T, ClientError> {
        self.locked_update(change).map_err(|e| store_error(&e))
    }
}

type CliWallet = Wallet<FileStore, SoftwareKeys>;

fn paths(settings: &Settings, f: &WalletFile) -> (PathBuf, PathBuf) {
    (
        f.wallet
            .clone()
            .unwrap_or_else(|| settings.data_dir.join("wallet.json")),
        f.manifest
            .clone()
            .unwrap_or_else(|| manifest_path(&settings.data_dir)),
    )
}

fn client(settings: &Settings, manifest: Manifest) -> Result<Client> {
    Ok(Client::new(
        manifest,
        Duration::from_millis(settings.http.request_timeout_ms),
    )?)
}

/// The wallet at `file`, bound to the manifest it pinned.
async fn open(settings: &Settings, file: &WalletFile) -> Result<CliWallet> {
    let (wallet_path, manifest_file) = paths(settings, file);
    let client = client(settings, read_manifest(&manifest_file)?)?;
    Wallet::open(client, FileStore::new(wallet_path), SoftwareKeys)
        .await
        .map_err(|e| match e {
            ClientError::Manifest(m @ ManifestError::Mismatch { .. }) => anyhow::anyhow!(
                "{m} ({}); if the operator published this manifest, trust it with \
                 `ticketing wallet pin --manifest {}`",
                ErrorCode::ManifestMismatch,
                manifest_file.display()
            ),
            other => other.into(),
        })
}

/// Run a wallet subcommand.
pub async fn run(settings: &Settings, cmd: WalletCommand) -> Result<ExitCode> {
    match cmd {
        WalletCommand::Buy(args) => buy(settings, args).await,
        WalletCommand::Retry(f) => retry(settings, &f).await,
        WalletCommand::List(f) => list(settings, &f).await,
        WalletCommand::Show(args) => show(settings, &args).await,
        WalletCommand::Print(args) => print(settings, &args).await,
        WalletCommand::Evidence(f) => evidence(settings, &f).await,
        WalletCommand::Pin(f) => pin(settings, &f).await,
    }
}

async fn pin(settings: &Settings, file: &WalletFile) -> Result<ExitCode> {
    let (wallet_path, manifest_file) = paths(settings, file);
    let manifest = read_manifest(&manifest_file)?;
    let before = CliWallet::pin(&FileStore::new(wallet_path), &manifest).await?;
    let now = manifest.digest();
    match before {
        Some(old) if old == now => outln!("the wallet already trusts manifest {now}"),
        Some(old) => outln!("the wallet now trusts manifest {now} (was {old})"),
        None => outln!("the wallet now trusts manifest {now}"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn evidence(settings: &Settings, file: &WalletFile) -> Result<ExitCode> {
    let (wallet_path, _) = paths(settings, file);
    let data = FileStore::new(wallet_path).load().await?;
    outln!("{}", serde_json::to_string_pretty(&data.evidence)?);
    if data.evidence.is_empty() {
        eprintln!("no evidence: no node was caught signing wrong partials");
    }
    Ok(ExitCode::SUCCESS)
}

async fn buy(settings: &Settings, args: BuyArgs) -> Result<ExitCode> {
    let payment = match (&args.card, &args.voucher) {
        (Some(card), None) => PaymentMethod::Card {
            number: card.clone(),
        },
        (None, Some(code)) => {
            // Typos are caught here, before any request.
            let code = VoucherCode::parse(code).context("voucher code")?;
            PaymentMethod::Voucher {
                code: code.to_string(),
            }
        }
        _ => bail!("pay with exactly one of --card or --voucher"),
    };
    let most = ticketing_config::MAX_TICKETS_PER_REQUEST;
    if !(1..=most).contains(&args.count) {
        bail!(
            "--count must be between 1 and {most} (the payments service's own limit, usually \
             50, may be lower)"
        );
    }
    let wallet = open(settings, &args.file).await?;
    let mut rng = rand::rng();
    let now = wallet.now().await?;
    // What is sold, said before paying: near a window's end that is the next window.
    let keyset = wallet.client().keyset_on_sale(&args.product, now)?;
    let price = wallet
        .client()
        .manifest()
        .product(&args.product)
        .map(|p| format!("{}.{:02} {}", p.price / 100, p.price % 100, p.currency))
        .unwrap_or_default();
    eprintln!(
        "buying {} {} ticket(s) at {price} each, valid from {} until {}",
        args.count,
        args.product,
        crate::validator::utc(keyset.params.valid_from),
        crate::validator::utc(keyset.params.valid_until),
    );
    // Stored before paying: if the answer to the payment is lost, `wallet retry` finds the
    // receipt by the points' digest and nothing paid is lost.
    let digest = wallet
        .prepare(&args.product, args.count, now, &mut rng)
        .await?;
    match wallet.pay(&digest, payment).await? {
        PayOutcome::Paid => {}
        PayOutcome::Refused(body) if body.code == ErrorCode::Unavailable => {
            // Never taken (no connection, or rate-limited): nothing was paid.
            bail!("the payment was not made: {}", body.detail);
        }
        PayOutcome::Refused(body) => {
            // A definite refusal: nothing was paid, the purchase is forgotten.
            bail!("payment refused: {} ({})", body.detail, body.code);
        }
        PayOutcome::Unknown(e) => {
            eprintln!("error: payment: {e}");
            eprintln!(
                "the payment may or may not have gone through; the purchase is kept: run `ticketing wallet retry`"
            );
            return Ok(ExitCode::from(2));
        }
    }
    finish(&wallet).await
}

async fn retry(settings: &Settings, f: &WalletFile) -> Result<ExitCode> {
    let wallet = open(settings, f).await?;
    if wallet.data().await?.purchases.is_empty() {
        outln!("no purchase is waiting");
        return Ok(ExitCode::SUCCESS);
    }
    for found in wallet.recover_receipts().await? {
        match found {
            Recovered::NeverPaid { product } => {
                outln!("a {product} purchase was never paid; removed");
            }
            Recovered::Unknown { error, .. } => {
                eprintln!("warning: could not ask the payments service: {error}");
            }
            Recovered::Paid { .. } | Recovered::Unchanged => {}
        }
    }
    finish(&wallet).await
}

/// Complete every paid purchase; keep the ones that still cannot reach t nodes.
async fn finish(wallet: &CliWallet) -> Result<ExitCode> {
    let mut code = ExitCode::SUCCESS;
    for finished in wallet.complete_all(&mut |_| {}).await? {
        match finished {
            Finished::AwaitingPayment { product } => {
                eprintln!(
                    "a {product} purchase awaits confirmation of its payment: run `ticketing wallet retry`"
                );
                code = ExitCode::from(2);
            }
            Finished::Bought(done) => {
                for node in &done.blamed {
                    eprintln!(
                        "warning: node {node} signed wrong partials; its signed answer is kept in the wallet as evidence"
                    );
                }
                outln!("bought {} {} ticket(s)", done.tickets, done.product);
            }
            Finished::NotEnoughNodes { error, .. } => {
                eprintln!("error: {error}");
                eprintln!(
                    "the purchase is paid and kept in the wallet; run `ticketing wallet retry` later"
                );
                code = ExitCode::from(2);
            }
            Finished::Failed { error, .. } => {
                eprintln!("error: {error}");
                code = ExitCode::FAILURE;
            }
        }
    }
    Ok(code)
}

async fn list(settings: &Settings, f: &WalletFile) -> Result<ExitCode> {
    let (wallet_path, manifest_file) = paths(settings, f);
    if !wallet_path.exists() {
        outln!(
            "no wallet at {} yet: buy a ticket to make one (ticketing wallet buy --product day \
             --card 4242424242424242)",
            wallet_path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let data = FileStore::new(wallet_path).load().await?;
    let manifest = read_manifest(&manifest_file).ok();
    let now = ticketing_client::clock::cluster_now(data.clock);
    for (i, t) in data.tickets.iter().enumerate() {
        let state = match &manifest {
            Some(m) => match ticket_status(m, t, now) {
                TicketStatus::Active => "valid",
                TicketStatus::Upcoming => "not yet valid",
                other => other.as_str(),
            },
            None if now >= t.valid_until => "expired",
            None if now < t.valid_from => "not yet valid",
            None => "valid",
        };
        let until = manifest.as_ref().map_or(t.valid_until, |m| {
            ticketing_client::wallet::valid_until(m, t)
        });
        outln!(
            "{:>3}  {:<8} {:<13} until {}",
            i + 1,
            t.product,
            state,
            crate::validator::utc(until)
        );
    }
    // Paid ones and ones whose payment outcome is still unknown alike.
    let waiting = data.purchases.len();
    if waiting > 0 {
        outln!("{waiting} purchase(s) waiting: run `ticketing wallet retry`");
    }
    if data.tickets.is_empty() && waiting == 0 {
        outln!("no tickets yet: ticketing wallet buy --product day --card 4242424242424242");
    }
    Ok(ExitCode::SUCCESS)
}

/// Ticket `number` of `wallet` (1 = first, as `wallet list` numbers them) and its index.
async fn numbered(wallet: &CliWallet, number: u32) -> Result<(usize, StoredTicket)> {
    let data = wallet.data().await?;
    let index = usize::try_from(number.saturating_sub(1)).unwrap_or(usize::MAX);
    match data.tickets.get(index) {
        Some(stored) => Ok((index, stored.clone())),
        None => bail!(
            "no ticket number {number} (the wallet has {})",
            data.tickets.len()
        ),
    }
}

async fn print(settings: &Settings, args: &PrintArgs) -> Result<ExitCode> {
    let pdf = match args.out.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("pdf") => true,
        Some(e) if e.eq_ignore_ascii_case("png") => false,
        _ => bail!("--out must end in .pdf or .png, got {}", args.out.display()),
    };
    let wallet = open(settings, &args.file).await?;
    let (index, stored) = numbered(&wallet, args.number).await?;
    let text = wallet.print(index).await?.to_text();
    let code = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M)
        .context("rendering the QR code")?;
    let bytes = if pdf {
        let page = crate::paper::Page {
            product: &stored.product,
            valid_from: crate::validator::utc(stored.valid_from),
            valid_until: crate::validator::utc(stored.valid_until),
        };
        crate::paper::pdf(&code, &page)
    } else {
        crate::paper::png(&code)?
    };
    write_private(&args.out, &bytes)?;
    outln!(
        "{}: a printed {} ticket, first use between {} and {}; accepted once, no transfers \
         (keep it like cash: a copy rides in its place)",
        args.out.display(),
        stored.product,
        crate::validator::utc(stored.valid_from),
        crate::validator::utc(stored.valid_until),
    );
    Ok(ExitCode::SUCCESS)
}

async fn show(settings: &Settings, args: &ShowArgs) -> Result<ExitCode> {
    let wallet = open(settings, &args.file).await?;
    let (index, stored) = numbered(&wallet, args.number).await?;
    let rotation = wallet.client().manifest().rotation_seconds;
    let text = wallet.present(index, wallet.now().await?).await?.to_text();
    if args.payload_only {
        outln!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let code = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M)
        .context("rendering the QR code")?;
    let art = code
        .render::<qrcode::render::unicode::Dense1x2>()
        .quiet_zone(true)
        .build();
    outln!("{art}");
    let until = ticketing_client::wallet::valid_until(wallet.client().manifest(), &stored);
    outln!(
        "{} ticket, valid until {} (this code is good for about {rotation} s; a picture of it \
         goes stale within about two minutes)",
        stored.product,
        crate::validator::utc(until)
    );
    outln!("payload: {text}");
    if let Some(png) = &args.png {
        let image = code
            .render::<image::Luma<u8>>()
            .min_dimensions(400, 400)
            .build();
        image
            .save(png)
            .with_context(|| format!("writing {}", png.display()))?;
        outln!("PNG: {}", png.display());
    }
    Ok(ExitCode::SUCCESS)
}
