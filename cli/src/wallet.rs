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
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// A purchase in progress, with its holder secrets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredPurchase {
    /// Blinded, maybe not yet paid.
    pub prepared: PreparedPurchase,
    /// The receipt, once paid.
    pub pending: Option<PendingPurchase>,
    /// Holder secret seeds (hex), in order.
    pub holder_secrets: Vec<String>,
}

/// The wallet file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Wallet {
    /// Tickets.
    pub tickets: Vec<StoredTicket>,
    /// Purchases not finished.
    pub purchases: Vec<StoredPurchase>,
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

    /// Write with mode 0600.
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let bytes = serde_json::to_vec_pretty(self)?;
        write_private(path, &bytes)?;
        Ok(())
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
    }
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

    // Saved before paying: a crash after payment can pay again with the same points and get
    // the same receipt back.
    let mut wallet = Wallet::load(&wallet_path)?;
    wallet.purchases.push(StoredPurchase {
        prepared: prepared.clone(),
        pending: None,
        holder_secrets: secrets
            .iter()
            .map(|s| hex::encode(s.to_bytes().as_ref()))
            .collect(),
    });
    wallet.save(&wallet_path)?;
    let at = wallet.purchases.len() - 1;

    let pending = match client.checkout(&prepared, payment).await {
        Ok(p) => p,
        Err(e) => {
            // Not paid: forget the purchase.
            wallet.purchases.remove(at);
            wallet.save(&wallet_path)?;
            return Err(e).context("payment");
        }
    };
    if let Some(p) = wallet.purchases.get_mut(at) {
        p.pending = Some(pending);
    }
    wallet.save(&wallet_path)?;
    finish(&client, &mut wallet, &wallet_path).await
}

async fn retry(settings: &Settings, f: &WalletFile) -> Result<ExitCode> {
    let (wallet_path, manifest_file) = paths(settings, f);
    let client = client(settings, read_manifest(&manifest_file)?)?;
    let mut wallet = Wallet::load(&wallet_path)?;
    if wallet.purchases.iter().all(|p| p.pending.is_none()) {
        println!("no paid purchase is waiting");
        return Ok(ExitCode::SUCCESS);
    }
    finish(&client, &mut wallet, &wallet_path).await
}

/// Complete every paid purchase; keep the ones that still cannot reach t nodes.
async fn finish(client: &Client, wallet: &mut Wallet, path: &Path) -> Result<ExitCode> {
    let mut code = ExitCode::SUCCESS;
    let mut keep = Vec::new();
    for purchase in std::mem::take(&mut wallet.purchases) {
        let Some(pending) = &purchase.pending else {
            // Prepared but never confirmed paid: dropped (the payment failed or never happened).
            continue;
        };
        match client.complete(pending).await {
            Ok(done) => {
                let keyset = client.manifest().keyset(&purchase.prepared.keyset_id);
                for (ticket, secret) in done.tickets.iter().zip(&purchase.holder_secrets) {
                    wallet.tickets.push(StoredTicket {
                        product: purchase.prepared.product.clone(),
                        valid_from: keyset.map_or(0, |k| k.params.valid_from),
                        valid_until: keyset.map_or(0, |k| k.params.valid_until),
                        ticket: *ticket,
                        holder_secret: secret.clone(),
                    });
                }
                for b in &done.blamed {
                    eprintln!(
                        "warning: node {} signed wrong partials; evidence kept in the log",
                        b.node
                    );
                    tracing::warn!(evidence = %serde_json::to_string(b).unwrap_or_default(), "blame");
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
                keep.push(purchase);
                code = ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("error: {e}");
                keep.push(purchase);
                code = ExitCode::FAILURE;
            }
        }
    }
    wallet.purchases = keep;
    wallet.save(path)?;
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
    let waiting = wallet
        .purchases
        .iter()
        .filter(|p| p.pending.is_some())
        .count();
    if waiting > 0 {
        println!("{waiting} paid purchase(s) waiting: run `ticketing wallet retry`");
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
