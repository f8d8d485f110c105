//! Ops: registering validator devices, admins and auditors in the coordinator's database (run
//! where the coordinator runs). Kept apart from the conductor's validator, which only talks to
//! the coordinator over HTTP and never links its database code.

use anyhow::{Context, Result};
use ticketing_config::Settings;
use ticketing_protocol::redeem::TokenRole;
use zeroize::Zeroizing;

/// A registered device: its name and id.
#[derive(Debug)]
pub struct Registered {
    /// As given.
    pub name: String,
    /// The coordinator's id.
    pub id: String,
}

/// Register `name` with `role` (`replace`: revoke a live token of that name first); returns
/// its token (shown once) and the device.
pub async fn register(
    settings: &Settings,
    name: &str,
    role: TokenRole,
    replace: bool,
) -> Result<(Zeroizing<String>, Registered)> {
    let (token, device) = ticketing_coordinator::register(settings, name, role, replace)
        .await
        .context("registering the device in the coordinator's database")?;
    Ok((
        Zeroizing::new(token.expose().to_owned()),
        Registered {
            name: device.name,
            id: device.id.to_string(),
        },
    ))
}

/// `ticketing validator list`: every token registered, revoked ones included (never a token).
pub async fn list(settings: &Settings, as_json: bool) -> Result<()> {
    let devices = ticketing_coordinator::devices(settings)
        .await
        .context("reading the devices from the coordinator's database")?;
    if as_json {
        let rows: Vec<_> = devices
            .iter()
            .map(|d| {
                serde_json::json!({
                    "id": d.device.id,
                    "name": d.device.name,
                    "role": d.device.role.as_str(),
                    "created_at": d.created_at,
                    "revoked_at": d.revoked_at,
                })
            })
            .collect();
        outln!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if devices.is_empty() {
        outln!("no device tokens registered (`ticketing validator register --name NAME`)");
        return Ok(());
    }
    outln!(
        "{:<6} {:<24} {:<10} {:<21} status",
        "id",
        "name",
        "role",
        "registered"
    );
    for d in &devices {
        let status = d.revoked_at.map_or_else(
            || "live".to_owned(),
            |at| format!("revoked {}", crate::validator::utc(at)),
        );
        outln!(
            "{:<6} {:<24} {:<10} {:<21} {status}",
            d.device.id,
            d.device.name,
            d.device.role.as_str(),
            crate::validator::utc(d.created_at),
        );
    }
    Ok(())
}

/// `ticketing validator revoke NAME`: the live tokens of that name get 401 from now on.
pub async fn revoke(settings: &Settings, name: &str) -> Result<u64> {
    ticketing_coordinator::revoke_device(settings, name)
        .await
        .context("revoking the device token")
}
