//! The `ticketing` command. Thin: every subcommand parses its arguments and calls a library
//! crate; the modules here only compose services (`demo`, `bench`) and keep the CLI wallet's
//! file.

// Printing results is what a command-line tool is for.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, FromArgMatches, Parser, Subcommand};
use ticketing_config::Settings;

/// Write to standard output. When the reader has gone (`ticketing wallet list | head -1`) the
/// command stops quietly with exit 0, as Unix tools do, instead of panicking; another write
/// error (a full disk behind a redirect) is reported once, exit 2.
#[doc(hidden)]
pub fn write_out(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to standard output: {e}");
        std::process::exit(2);
    }
}

/// `println!` through [`write_out`].
macro_rules! outln {
    () => {
        $crate::write_out(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::write_out(format_args!($($arg)*), true)
    };
}

/// `print!` through [`write_out`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_out(format_args!($($arg)*), false)
    };
}

pub mod audit;
pub mod bench;
pub mod demo;
pub mod devices;
mod paper;
pub mod partner;
pub mod revoke;
mod setup;
pub mod validator;
pub mod wallet;

/// The environment every command reads, shown under each command's `--help`.
const ENV_HELP: &str = "\
Environment:
  TICKETING_CONFIG           configuration file (as --config)
  TICKETING_DATA_DIR         the cluster's directory (default ./ticketing-data)
  TICKETING_<SECTION>__<KEY> any setting, e.g. TICKETING_DEMO__BASE_PORT=7700,
                             TICKETING_LOG__FORMAT=json (`ticketing config example` lists them)
  RUST_LOG                   log filter of the services (instead of log.filter)
  TICKETING_VALIDATOR_TOKEN  the validator's device token (validate, validator sync/status)
  TICKETING_AUDIT_TOKEN      the auditor's coordinator token (audit)
  TICKETING_ADMIN_TOKEN      an admin token (revoke)";

/// Anonymous public-transit tickets issued by a threshold cluster.
#[derive(Debug, Parser)]
#[command(name = "ticketing", version, about, after_help = ENV_HELP, propagate_version = true)]
struct Cli {
    /// Configuration file (TOML); default `./ticketing.toml` when there is one. `TICKETING_*`
    /// variables override it.
    #[arg(long, global = true, env = "TICKETING_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole cluster on this machine (payments + n nodes, SQLite), setting it up first
    /// if needed, and print where everything is.
    Demo(DemoArgs),
    /// Deal a new cluster: keysets per product window, node bundles, the public manifest.
    Setup(setup::SetupArgs),
    /// Manage keysets of an existing cluster.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run one issuer node.
    Node(NodeArgs),
    /// Run the payments service.
    Payments,
    /// Run the coordinator (spent ledger, redemption, sync, Bloom publication).
    Coordinator,
    /// Check a ticket's QR code (image or payload text), offline against the cached manifest
    /// and Bloom filter, then redeem it online or queue it. Exit 0 VALID, 1 INVALID, 3 check
    /// manually (maybe spent, coordinator unreachable), 2 error.
    Validate(validator::ValidateArgs),
    /// Validator devices: register a token, sync offline scans.
    #[command(subcommand)]
    Validator(validator::ValidatorCommand),
    /// Partners (transit operators owning products): add one, list them.
    #[command(subcommand)]
    Partner(partner::PartnerCommand),
    /// Cash vouchers.
    #[command(subcommand)]
    Voucher(VoucherCommand),
    /// The passenger's command-line wallet.
    #[command(subcommand)]
    Wallet(wallet::WalletCommand),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Audit the cluster: every node's issuance log and checkpoints, receipts, issued versus
    /// redeemed and paid, blame evidence. Exit 0 clean, 1 violations, 2 error.
    Audit(audit::AuditArgs),
    /// Revoke a ticket (a refund, a reported theft) by its QR: online scans answer `revoked`
    /// at once, offline ones after the devices' next refresh. Needs an admin token.
    Revoke(revoke::RevokeArgs),
    /// Ask a service whether it is up: exit 0 when URL answers 200 within 3 s, else 1 (for
    /// container health checks; the image has no curl).
    Health {
        /// The service's health URL.
        #[arg(default_value = "http://127.0.0.1:8080/health")]
        url: String,
    },
    /// Print a shell completion script: `ticketing completions bash > /etc/bash_completion.d/ticketing`,
    /// `ticketing completions zsh > ~/.zfunc/_ticketing`, `ticketing completions fish >
    /// ~/.config/fish/completions/ticketing.fish`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// `ticketing demo`: where and how (each flag overrides the configuration's `demo.*`).
#[derive(Debug, Args)]
struct DemoArgs {
    /// First port: payments on it, the coordinator on +1, the apps on +2, node i on +10+i
    /// (`demo.base_port`, default 7600).
    #[arg(long)]
    base_port: Option<u16>,
    /// The cluster's directory (`data_dir`, default `./ticketing-data`).
    #[arg(long, env = "TICKETING_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Number of nodes n for a new cluster (`demo.nodes`).
    #[arg(long)]
    nodes: Option<u16>,
    /// Threshold t for a new cluster (`demo.threshold`).
    #[arg(long)]
    threshold: Option<u16>,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Add keysets for future windows (rotation ahead of use); issued ones are untouched.
    Extend(setup::ExtendArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print a commented example configuration (every value is the default).
    Example,
}

#[derive(Debug, Args)]
struct NodeArgs {
    /// Which node (share index); default from the configuration (`node.index`).
    #[arg(long)]
    index: Option<u16>,
}

#[derive(Debug, Subcommand)]
enum VoucherCommand {
    /// Create cash vouchers for a product; prints one code per line.
    Create {
        /// Product name, e.g. `single`.
        #[arg(long)]
        product: String,
        /// How many (each pays for one ticket).
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// List the vouchers: id (the start of its hash; codes are not kept), product, created,
    /// state.
    List {
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Void unused vouchers (a lost or leaked batch): by id from `voucher list`, or by code.
    Void {
        /// Voucher ids (8+ hex digits) or codes.
        #[arg(required = true)]
        vouchers: Vec<String>,
    },
}

async fn health(url: &str) -> ExitCode {
    let answer = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()
    {
        Ok(client) => client.get(url).send().await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(r) if r.status() == reqwest::StatusCode::OK => {
            outln!("ok");
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("{url}: {}", r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The command tree, with the environment help under every subcommand's `--help`.
fn command() -> clap::Command {
    fn with_env(c: clap::Command) -> clap::Command {
        c.after_help(ENV_HELP).mut_subcommands(with_env)
    }
    with_env(<Cli as clap::CommandFactory>::command())
}

/// Parse the command line and run it. Errors are printed with their causes; exit code 1.
pub fn main() -> ExitCode {
    let cli = match Cli::from_arg_matches_mut(&mut command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Run one command line (`args` without the program name) with `settings` instead of the ones
/// the environment would give: the CLI in process, for tests.
pub async fn run_with(settings: &Settings, args: &[&str]) -> Result<ExitCode> {
    let mut matches =
        command().try_get_matches_from(std::iter::once("ticketing").chain(args.iter().copied()))?;
    let cli = Cli::from_arg_matches_mut(&mut matches)?;
    dispatch(cli, &|| Ok(settings.clone())).await
}

/// The configuration file used when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG: &str = "ticketing.toml";

async fn run(cli: Cli) -> Result<ExitCode> {
    let config = cli.config.clone().or_else(|| {
        let default = PathBuf::from(DEFAULT_CONFIG);
        default.is_file().then_some(default)
    });
    dispatch(cli, &move || {
        Settings::load(config.as_deref()).context("loading the configuration")
    })
    .await
}

async fn dispatch(cli: Cli, settings: &dyn Fn() -> Result<Settings>) -> Result<ExitCode> {
    match cli.command {
        Command::Config(ConfigCommand::Example) => {
            out!("{}", ticketing_config::EXAMPLE);
        }
        Command::Setup(args) => setup::setup(&settings()?, &args)?,
        Command::Keys(KeysCommand::Extend(args)) => setup::extend(&settings()?, &args)?,
        Command::Demo(args) => run_demo(settings()?, args).await?,
        Command::Node(args) => run_node(settings()?, &args).await?,
        Command::Payments => demo::run_payments(&traced(settings()?)).await?,
        Command::Coordinator => demo::run_coordinator(&traced(settings()?)).await?,
        Command::Validate(args) => return Ok(validator::validate(&settings()?, &args).await),
        Command::Validator(cmd) => return validator::run(&settings()?, cmd).await,
        Command::Partner(cmd) => return partner::run(&settings()?, cmd).await,
        Command::Voucher(cmd) => return voucher(&settings()?, cmd).await,
        Command::Wallet(cmd) => return wallet::run(&settings()?, cmd).await,
        Command::Bench(cmd) => bench::run(&settings()?, cmd).await?,
        Command::Audit(args) => return Ok(audit::audit(&settings()?, &args).await),
        Command::Revoke(args) => return revoke::revoke(&settings()?, &args).await,
        Command::Health { url } => return Ok(health(&url).await),
        Command::Completions { shell } => completions(shell),
    }
    Ok(ExitCode::SUCCESS)
}

/// `settings` after starting tracing with its `log` settings.
fn traced(settings: Settings) -> Settings {
    ticketing_service::init_tracing(&settings.log);
    settings
}

/// `ticketing demo`: the flags over the configuration, checked, then the demo.
async fn run_demo(mut s: Settings, args: DemoArgs) -> Result<()> {
    if let Some(port) = args.base_port {
        s.demo.base_port = port;
    }
    if let Some(dir) = args.data_dir {
        s.data_dir = dir;
    }
    if let Some(n) = args.nodes {
        s.demo.nodes = n;
    }
    if let Some(t) = args.threshold {
        s.demo.threshold = t;
    }
    s.validate().context("checking the demo's settings")?;
    ticketing_service::init_tracing(&s.log);
    demo::run(&s).await
}

/// `ticketing node`: tracing started, then the node `--index` names (or `node.index`).
async fn run_node(s: Settings, args: &NodeArgs) -> Result<()> {
    let mut s = traced(s);
    if let Some(i) = args.index {
        s.node.index = i;
    }
    demo::run_node(&s).await
}

/// `ticketing voucher …`.
async fn voucher(settings: &Settings, cmd: VoucherCommand) -> Result<ExitCode> {
    match cmd {
        VoucherCommand::List { json } => list_vouchers(settings, json).await?,
        VoucherCommand::Void { vouchers } => void_vouchers(settings, &vouchers).await?,
        VoucherCommand::Create { product, count } => {
            return create_vouchers(settings, &product, count).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ticketing voucher list`: a table, or one JSON array with `--json`.
async fn list_vouchers(settings: &Settings, json: bool) -> Result<()> {
    let rows = ticketing_payments::list_vouchers_with(settings)
        .await
        .context("listing vouchers")?;
    let state = |v: &ticketing_payments::store::VoucherRow| match (v.voided_at, v.used) {
        (Some(_), _) => "voided",
        (None, true) => "used",
        (None, false) => "unused",
    };
    if json {
        let rows: Vec<_> = rows
            .iter()
            .map(|v| {
                serde_json::json!({
                    "id": ticketing_payments::voucher_id(&v.hash),
                    "product": v.product,
                    "created_at": v.created_at,
                    "state": state(v),
                    "voided_at": v.voided_at,
                })
            })
            .collect();
        outln!("{}", serde_json::Value::Array(rows));
    } else if rows.is_empty() {
        outln!("no vouchers (ticketing voucher create --product single --count 10)");
    } else {
        outln!("{:<13} {:<10} {:<21} state", "id", "product", "created");
        for v in &rows {
            outln!(
                "{:<13} {:<10} {:<21} {}",
                ticketing_payments::voucher_id(&v.hash),
                v.product,
                ticketing_protocol::when::utc(v.created_at),
                state(v)
            );
        }
    }
    Ok(())
}

/// `ticketing voucher void`: one line per voucher, voided or left as it was.
async fn void_vouchers(settings: &Settings, vouchers: &[String]) -> Result<()> {
    let done = ticketing_payments::void_vouchers_with(settings, vouchers, ticketing_service::now())
        .await
        .context("voiding vouchers")?;
    for d in done {
        match d {
            ticketing_payments::Voided::Voided(id) => outln!("{id} voided"),
            ticketing_payments::Voided::AlreadyUsed(id) => {
                outln!("{id} was already used or voided: unchanged");
            }
        }
    }
    Ok(())
}

/// `ticketing voucher create`: one code per line; exit 2 when they cannot all be written.
async fn create_vouchers(settings: &Settings, product: &str, count: u32) -> Result<ExitCode> {
    let codes = ticketing_payments::vouchers::create_vouchers_with(settings, product, count)
        .await
        .context("creating vouchers")?;
    // The codes exist only here (the store keeps hashes): if the reader goes away,
    // say which vouchers were not printed, so they can be voided.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for (i, code) in codes.iter().enumerate() {
        if let Err(e) = writeln!(out, "{code}").and_then(|()| out.flush()) {
            let lost: Vec<String> = codes
                .get(i..)
                .unwrap_or_default()
                .iter()
                .map(|c| ticketing_payments::voucher_id(&c.hash()))
                .collect();
            eprintln!(
                "error: writing the codes: {e}; {} voucher(s) were stored but not \
                 printed: void them with `ticketing voucher void {}`",
                lost.len(),
                lost.join(" ")
            );
            return Ok(ExitCode::from(2));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ticketing completions SHELL`: the completion script on standard output.
fn completions(shell: clap_complete::Shell) {
    let mut command = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "ticketing", &mut script);
    out!("{}", String::from_utf8_lossy(&script));
}
