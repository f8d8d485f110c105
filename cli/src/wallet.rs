//! The passenger's command-line wallet: a JSON file (mode 0600) of tickets with their holder
//! secrets, and of purchases paid but not yet issued (so nothing paid is ever lost).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use ticketing_client::{Client, ClientError, PendingPurchase, PreparedPurchase};
use ticketing_config::Settings;
use ticketing_config::cluster::{manifest_path, read_manifest, write_private};
use ticketing_crypto::presentation::{Presentation, epoch_at};
use ticketing_crypto::ticket::{HolderSecret, Ticket};
use ticketing_protocol::manifest::Manifest;
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
    /// Print the blame evidence this wallet kept (nodes caught signing wrong partials) as
    /// JSON, for `ticketing audit --evidence FILE`. It holds no ticket or secret.
    Evidence(WalletFile),
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
    #[arg(default_value_t = 1)]
    number: usize,
    /// Also write the QR code as a PNG image.
    #[arg(long)]
    png: Option<PathBuf>,
    /// Print only the payload text (for scripts and `ticketing validate`).
    #[arg(long)]
    payload_only: bool,
}

/// A ticket in the wallet.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredTicket {
    /// Product name.
    pub product: String,
    /// Keyset window start.
    pub valid_from: u64,
    /// Keyset window end.
    pub valid_until: u64,
    /// The ticket.
    pub ticket: Ticket,
    /// Holder secret seed (hex).
    pub holder_secret: String,
}

impl std::fmt::Debug for StoredTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredTicket")
            .field("product", &self.product)
            .field("valid_until", &self.valid_until)
            .finish_non_exhaustive()
    }
}

/// A purchase in progress, with its holder secrets. `pending` is `None` until the receipt is
/// known: a purchase whose payment outcome is unknown is kept, never dropped, and `wallet
/// retry` asks the payments service for its receipt by digest.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredPurchase {
    /// Blinded, maybe not yet paid.
    pub prepared: PreparedPurchase,
    /// The receipt, once paid.
    pub pending: Option<PendingPurchase>,
    /// Holder secret seeds (hex), in order.
    pub holder_secrets: Vec<String>,
}

impl std::fmt::Debug for StoredPurchase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredPurchase")
            .field("product", &self.prepared.product)
            .field("paid", &self.pending.is_some())
            .finish_non_exhaustive()
    }
}

impl StoredPurchase {
    fn digest(&self) -> ticketing_protocol::Digest32 {
        ticketing_protocol::receipt::blinded_digest(&self.prepared.blinded)
    }
}

/// The wallet file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Wallet {
    /// Tickets.
    pub tickets: Vec<StoredTicket>,
    /// Purchases not finished.
    pub purchases: Vec<StoredPurchase>,
    /// Signed answers of nodes caught signing wrong partials, for the auditors.
    #[serde(default)]
    pub evidence: Vec<ticketing_client::Blame>,
}

impl Wallet {
    /// Read, or an empty wallet if the file does not exist.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a wallet file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Write with mode 0600, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        write_private(path, &bytes)?;
        Ok(())
    }

    /// Load, change and save under an exclusive lock, so two wallet commands running at once
    /// cannot overwrite each other's purchases.
    pub fn update<T>(path: &Path, change: impl FnOnce(&mut Self) -> T) -> Result<T> {
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
        let mut wallet = Self::load(path)?;
        let out = change(&mut wallet);
        wallet.save(path)?;
        drop(lock);
        Ok(out)
    }
}

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

/// Run a wallet subcommand.
pub async fn run(settings: &Settings, cmd: WalletCommand) -> Result<ExitCode> {
    match cmd {
        WalletCommand::Buy(args) => buy(settings, args).await,
        WalletCommand::Retry(f) => retry(settings, &f).await,
        WalletCommand::List(f) => list(settings, &f),
        WalletCommand::Show(args) => show(settings, &args),
        WalletCommand::Evidence(f) => evidence(settings, &f),
    }
}

fn evidence(settings: &Settings, file: &WalletFile) -> Result<ExitCode> {
    let (wallet_path, _) = paths(settings, file);
    let wallet = Wallet::load(&wallet_path)?;
    println!("{}", serde_json::to_string_pretty(&wallet.evidence)?);
    if wallet.evidence.is_empty() {
        eprintln!("no evidence: no node was caught signing wrong partials");
    }
    Ok(ExitCode::SUCCESS)
}

async fn buy(settings: &Settings, args: BuyArgs) -> Result<ExitCode> {
    let (wallet_path, manifest_file) = paths(settings, &args.file);
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
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let manifest = read_manifest(&manifest_file)?;
    let client = client(settings, manifest)?;
    let mut rng = rand::rng();
    let secrets: Vec<HolderSecret> = (0..args.count)
        .map(|_| HolderSecret::generate(&mut rng))
        .collect();
    let holders: Vec<_> = secrets.iter().map(HolderSecret::public_key).collect();
    let prepared = client.prepare(&args.product, &holders, ticketing_service::now(), &mut rng)?;

    // Saved before paying: if the answer to the payment is lost, `wallet retry` finds the
    // receipt by the points' digest and nothing paid is lost.
    let stored = StoredPurchase {
        prepared: prepared.clone(),
        pending: None,
        holder_secrets: secrets
            .iter()
            .map(|s| hex::encode(s.to_bytes().as_ref()))
            .collect(),
    };
    let digest = stored.digest();
    Wallet::update(&wallet_path, |w| w.purchases.push(stored))?;

    match client.checkout(&prepared, payment).await {
        Ok(pending) => {
            Wallet::update(&wallet_path, |w| {
                if let Some(p) = w.purchases.iter_mut().find(|p| p.digest() == digest) {
                    p.pending = Some(pending);
                }
            })?;
        }
        Err(ClientError::Refused { body, .. }) if not_charged(body.code) => {
            // A definite refusal: nothing was paid, forget the purchase.
            Wallet::update(&wallet_path, |w| {
                w.purchases.retain(|p| p.digest() != digest);
            })?;
            bail!("payment refused: {} ({})", body.detail, body.code);
        }
        Err(e) => {
            eprintln!("error: payment: {e}");
            eprintln!(
                "the payment may or may not have gone through; the purchase is kept: run `ticketing wallet retry`"
            );
            return Ok(ExitCode::from(2));
        }
    }
    finish(&client, &wallet_path).await
}

/// Refusals after which the payments service guarantees nothing was charged.
fn not_charged(code: ticketing_protocol::ErrorCode) -> bool {
    use ticketing_protocol::ErrorCode as C;
    matches!(
        code,
        C::CardDeclined
            | C::InvalidVoucher
            | C::VoucherUsed
            | C::Malformed
            | C::NotFound
            | C::UnknownKeyset
            | C::KeysetNotActive
            | C::PayloadTooLarge
    )
}

async fn retry(settings: &Settings, f: &WalletFile) -> Result<ExitCode> {
    let (wallet_path, manifest_file) = paths(settings, f);
    let client = client(settings, read_manifest(&manifest_file)?)?;
    let purchases = Wallet::load(&wallet_path)?.purchases;
    if purchases.is_empty() {
        println!("no purchase is waiting");
        return Ok(ExitCode::SUCCESS);
    }
    // Ask payments for each purchase's receipt: it confirms unknown payments (or shows they
    // never happened) and renews receipts that expired while the nodes were away.
    for p in purchases {
        let digest = p.digest();
        match client.find_receipt(&p.prepared).await {
            Ok(Some(pending)) => Wallet::update(&wallet_path, |w| {
                if let Some(p) = w.purchases.iter_mut().find(|p| p.digest() == digest) {
                    p.pending = Some(pending);
                }
            })?,
            Ok(None) if p.pending.is_none() => {
                println!("a {} purchase was never paid; removed", p.prepared.product);
                Wallet::update(&wallet_path, |w| {
                    w.purchases.retain(|p| p.digest() != digest);
                })?;
            }
            Ok(None) => {}
            Err(e) => eprintln!("warning: could not ask the payments service: {e}"),
        }
    }
    finish(&client, &wallet_path).await
}

/// Complete every paid purchase; keep the ones that still cannot reach t nodes.
async fn finish(client: &Client, path: &Path) -> Result<ExitCode> {
    let mut code = ExitCode::SUCCESS;
    let purchases = Wallet::load(path)?.purchases;
    for purchase in purchases {
        let Some(pending) = &purchase.pending else {
            eprintln!(
                "a {} purchase awaits confirmation of its payment: run `ticketing wallet retry`",
                purchase.prepared.product
            );
            code = ExitCode::from(2);
            continue;
        };
        let digest = purchase.digest();
        match client.complete(pending).await {
            Ok(done) => {
                let keyset = client.manifest().keyset(&purchase.prepared.keyset_id);
                let tickets: Vec<StoredTicket> = done
                    .tickets
                    .iter()
                    .zip(&purchase.holder_secrets)
                    .map(|(ticket, secret)| StoredTicket {
                        product: purchase.prepared.product.clone(),
                        valid_from: keyset.map_or(0, |k| k.params.valid_from),
                        valid_until: keyset.map_or(0, |k| k.params.valid_until),
                        ticket: *ticket,
                        holder_secret: secret.clone(),
                    })
                    .collect();
                let blamed = done.blamed.clone();
                Wallet::update(path, |w| {
                    w.purchases.retain(|p| p.digest() != digest);
                    w.tickets.extend(tickets);
                    w.evidence.extend(blamed);
                })?;
                for b in &done.blamed {
                    eprintln!(
                        "warning: node {} signed wrong partials; its signed answer is kept in the wallet as evidence",
                        b.node
                    );
                }
                println!(
                    "bought {} {} ticket(s)",
                    done.tickets.len(),
                    purchase.prepared.product
                );
            }
            Err(e @ ClientError::NotEnoughNodes { .. }) => {
                eprintln!("error: {e}");
                eprintln!(
                    "the purchase is paid and kept in the wallet; run `ticketing wallet retry` later"
                );
                code = ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("error: {e}");
                code = ExitCode::FAILURE;
            }
        }
    }
    Ok(code)
}

fn list(settings: &Settings, f: &WalletFile) -> Result<ExitCode> {
    let (wallet_path, _) = paths(settings, f);
    let wallet = Wallet::load(&wallet_path)?;
    let now = ticketing_service::now();
    for (i, t) in wallet.tickets.iter().enumerate() {
        let state = if now >= t.valid_until {
            "expired"
        } else if now < t.valid_from {
            "not yet valid"
        } else {
            "valid"
        };
        println!(
            "{:>3}  {:<8} {:<13} until {}",
            i + 1,
            t.product,
            state,
            t.valid_until
        );
    }
    // Paid ones and ones whose payment outcome is still unknown alike.
    let waiting = wallet.purchases.len();
    if waiting > 0 {
        println!("{waiting} purchase(s) waiting: run `ticketing wallet retry`");
    }
    if wallet.tickets.is_empty() && waiting == 0 {
        println!("no tickets yet: ticketing wallet buy --product day --card 4242424242424242");
    }
    Ok(ExitCode::SUCCESS)
}

fn show(settings: &Settings, args: &ShowArgs) -> Result<ExitCode> {
    let (wallet_path, manifest_file) = paths(settings, &args.file);
    let wallet = Wallet::load(&wallet_path)?;
    let Some(stored) = wallet.tickets.get(args.number.saturating_sub(1)) else {
        bail!(
            "no ticket number {} (the wallet has {})",
            args.number,
            wallet.tickets.len()
        );
    };
    let rotation = read_manifest(&manifest_file).map_or(30, |m| m.rotation_seconds);
    let secret =
        HolderSecret::from_bytes(&hex::decode(&stored.holder_secret).context("holder secret")?)?;
    let epoch = epoch_at(ticketing_service::now(), rotation);
    let text = Presentation::sign(&stored.ticket, &secret, epoch).to_text();
    if args.payload_only {
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let code = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M)
        .context("rendering the QR code")?;
    let art = code
        .render::<qrcode::render::unicode::Dense1x2>()
        .quiet_zone(true)
        .build();
    println!("{art}");
    println!(
        "{} ticket, valid until {} (this code is good for about {rotation} s)",
        stored.product, stored.valid_until
    );
    println!("payload: {text}");
    if let Some(png) = &args.png {
        let image = code
            .render::<image::Luma<u8>>()
            .min_dimensions(400, 400)
            .build();
        image
            .save(png)
            .with_context(|| format!("writing {}", png.display()))?;
        println!("PNG: {}", png.display());
    }
    Ok(ExitCode::SUCCESS)
}
