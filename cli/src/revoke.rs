//! `ticketing revoke`: an operator denies a ticket (a refund, a reported theft) through the
//! coordinator's admin API. The ticket is named by what the passenger can show: its QR (a
//! picture or the pasted text); the serial is read from it and never printed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{ArgGroup, Args};
use ticketing_client::Http;
use ticketing_config::Settings;
use ticketing_config::cluster::{manifest_path, read_manifest};
use ticketing_crypto::presentation::Presentation;
use ticketing_protocol::redeem::RevokeRequest;

/// Environment variable holding the admin token (`ticketing validator register --admin`).
pub const ADMIN_TOKEN_ENV: &str = "TICKETING_ADMIN_TOKEN";

/// `ticketing revoke`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("ticket").required(true).args(["payload", "image"])))]
pub struct RevokeArgs {
    /// The ticket's QR text (any showing of it: the serial is the same in every epoch).
    #[arg(allow_hyphen_values = true)]
    payload: Option<String>,
    /// A picture of the ticket's QR code.
    #[arg(long)]
    image: Option<PathBuf>,
    /// An admin token (`ticketing validator register --name ops --admin`).
    #[arg(long, env = ADMIN_TOKEN_ENV, hide_env_values = true)]
    admin_token: String,
}

/// Deny the ticket: from now on online scans answer `revoked`, and offline ones too once the
/// devices refresh their spent list. The action is recorded in the coordinator's audit trail
/// under the admin token's name.
pub async fn revoke(settings: &Settings, args: &RevokeArgs) -> Result<ExitCode> {
    let manifest = read_manifest(&manifest_path(&settings.data_dir))?;
    let text = match (&args.payload, &args.image) {
        (Some(text), _) => text.trim().to_owned(),
        (None, Some(path)) => crate::validator::read_qr(path)?,
        (None, None) => bail!("give the ticket's QR text or --image"),
    };
    let presentation =
        Presentation::from_text(&text).map_err(|e| anyhow!("that is not a ticket's QR: {e}"))?;
    let ticket = presentation.ticket;
    let keyset = manifest.keyset(&ticket.keyset_id).ok_or_else(|| {
        anyhow!(
            "the ticket's keyset {} is not in this cluster's manifest",
            ticket.keyset_id
        )
    })?;
    let http = Http::new(Duration::from_millis(settings.http.request_timeout_ms))?;
    let url = format!("{}/v1/admin/revoke", manifest.coordinator.url);
    let _: serde_json::Value = http
        .post(
            "coordinator",
            &url,
            &RevokeRequest {
                keyset_id: ticket.keyset_id,
                serial: ticket.serial(),
            },
            Some(args.admin_token.trim()),
        )
        .await
        .context("revoking the ticket")?;
    outln!(
        "revoked a {} ticket: refused online from now on, offline once devices refresh their \
         spent list",
        keyset.params.product
    );
    Ok(ExitCode::SUCCESS)
}
