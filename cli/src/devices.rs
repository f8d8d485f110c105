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

/// Register `name` with `role`; returns its token (shown once) and the device.
pub async fn register(
    settings: &Settings,
    name: &str,
    role: TokenRole,
) -> Result<(Zeroizing<String>, Registered)> {
    let (token, device) = ticketing_coordinator::register(settings, name, role)
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
