//! `ticketing audit`: read the cluster over HTTP, check it (`ticketing-audit`), print the
//! report. Exit 0 clean, 1 violations, 2 the audit could not run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use ticketing_audit::{AuditState, Options};
use ticketing_config::Settings;
use ticketing_config::cluster;

/// `ticketing audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The manifest to audit against; default `<data_dir>/manifest.json`.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Where to remember each node's newest checkpoint between audits; the next audit checks
    /// that every log still extends it.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Blame evidence from a wallet (`ticketing wallet evidence > FILE`); repeatable.
    #[arg(long)]
    evidence: Vec<PathBuf>,
    /// Auditor token for the coordinator's redemption counts; default: the token file
    /// `<data_dir>/auditor/token` if there is one (`ticketing demo` writes it).
    #[arg(long, env = "TICKETING_AUDIT_TOKEN", hide_env_values = true)]
    coordinator_token: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Per-request timeout, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

/// Where `ticketing demo` keeps an auditor token for this machine.
pub fn auditor_token_path(settings: &Settings) -> PathBuf {
    settings.data_dir.join("auditor").join("token")
}

/// Run the audit; errors are printed here (exit 2) so that 1 always means "violations".
pub async fn audit(settings: &Settings, args: &AuditArgs) -> ExitCode {
    match try_audit(settings, args).await {
        Ok(Verdict::Clean) => ExitCode::SUCCESS,
        Ok(Verdict::Violations) => ExitCode::from(1),
        Ok(Verdict::NothingRead) => {
            eprintln!(
                "error: no node could be read (see the table above); the audit could not run: \
                 check the manifest's URLs and that the services are up"
            );
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn read_token(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

enum Verdict {
    Clean,
    Violations,
    NothingRead,
}

async fn try_audit(settings: &Settings, args: &AuditArgs) -> Result<Verdict> {
    let manifest_file = args
        .manifest
        .clone()
        .unwrap_or_else(|| cluster::manifest_path(&settings.data_dir));
    let manifest = cluster::read_manifest(&manifest_file)
        .with_context(|| format!("reading the manifest {}", manifest_file.display()))?;
    let previous = match &args.state {
        Some(path) => AuditState::load(path)?,
        None => AuditState::default(),
    };
    let mut evidence = Vec::new();
    for path in &args.evidence {
        evidence.extend(ticketing_audit::read_evidence(path)?);
    }
    let coordinator_token = match &args.coordinator_token {
        Some(t) => Some(t.trim().to_owned()),
        None => read_token(&auditor_token_path(settings))?,
    };
    let no_token = coordinator_token.is_none();
    let options = Options {
        coordinator_token,
        timeout: Duration::from_millis(args.timeout_ms),
        evidence,
    };
    let (report, next) =
        ticketing_audit::run(&manifest, &options, &previous, ticketing_service::now()).await?;
    if let Some(path) = &args.state {
        next.save(path)?;
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", report.render());
    }
    if no_token {
        eprintln!(
            "note: the redemption counts need the coordinator's auditor token: pass \
             --coordinator-token or set TICKETING_AUDIT_TOKEN (`ticketing validator register \
             --auditor` makes one)"
        );
    }
    Ok(if report.nothing_read() {
        Verdict::NothingRead
    } else if report.clean {
        Verdict::Clean
    } else {
        Verdict::Violations
    })
}
