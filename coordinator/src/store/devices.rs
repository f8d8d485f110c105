//! Validator and admin tokens (stored only hashed), and the access audit trail.

use async_trait::async_trait;
use ticketing_protocol::redeem::AdminAction;
use ticketing_service::db::{Row, query};

use super::{SqlStore, StoreError, to_i64};

/// What a token may do (the wire type, shared with validators).
pub use ticketing_protocol::redeem::TokenRole as Role;

/// A device as `ticketing validator list` shows it (never its token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device.
    pub device: Device,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds, if revoked.
    pub revoked_at: Option<u64>,
}

/// A validator device or an admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Row id (recorded with each scan).
    pub id: i64,
    /// Name given at registration, e.g. `laptop-01`.
    pub name: String,
    /// What the token may do.
    pub role: Role,
}

/// Tokens and the audit trail.
#[async_trait]
pub trait Devices: Send + Sync + 'static {
    /// Register a token (by its hash) under `name`. A live token of that name is refused
    /// ([`StoreError::Taken`]) unless `replace`, which revokes it in the same transaction.
    async fn add_device(
        &self,
        token_hash: &[u8; 32],
        name: &str,
        role: Role,
        now: u64,
        replace: bool,
    ) -> Result<Device, StoreError>;
    /// The live (not revoked) device a token hash belongs to.
    async fn device(&self, token_hash: &[u8; 32]) -> Result<Option<Device>, StoreError>;
    /// Every device, revoked ones included, by name.
    async fn devices(&self) -> Result<Vec<DeviceInfo>, StoreError>;
    /// Revoke the live tokens named `name` at `now`; returns how many were revoked.
    async fn revoke_device(&self, name: &str, now: u64) -> Result<u64, StoreError>;
    /// Append to the access audit trail.
    async fn record_action(
        &self,
        at: u64,
        actor: &str,
        action: &str,
        detail: &str,
    ) -> Result<(), StoreError>;
    /// Trail entries with `id > after`, oldest first, at most `limit`.
    async fn actions(&self, after: u64, limit: u32) -> Result<Vec<AdminAction>, StoreError>;
}

/// A stored role name back to its role.
fn parse_role(s: &str) -> Result<Role, StoreError> {
    Role::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown role {s:?}")))
}

/// A `devices` row's `id`, `name` and `role`.
fn device_of(row: &Row) -> Result<Device, StoreError> {
    Ok(Device {
        id: row.get("id")?,
        name: row.get("name")?,
        role: parse_role(row.text("role")?)?,
    })
}

#[async_trait]
impl Devices for SqlStore {
    async fn add_device(
        &self,
        token_hash: &[u8; 32],
        name: &str,
        role: Role,
        now: u64,
        replace: bool,
    ) -> Result<Device, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.db.begin_write().await?;
        let live = query("SELECT id FROM devices WHERE name = $1 AND revoked_at IS NULL")
            .bind(name)
            .fetch_optional(&mut tx)
            .await?;
        if live.is_some() {
            if !replace {
                return Err(StoreError::Taken(name.to_owned()));
            }
            query("UPDATE devices SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL")
                .bind(to_i64(now)?)
                .bind(name)
                .execute(&mut tx)
                .await?;
        }
        let row = query(
            "INSERT INTO devices (token_hash, name, role, created_at) VALUES ($1, $2, $3, $4) \
             RETURNING id",
        )
        .bind(token_hash)
        .bind(name)
        .bind(role.as_str())
        .bind(to_i64(now)?)
        .fetch_one(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(Device {
            id: row.get("id")?,
            name: name.to_owned(),
            role,
        })
    }

    async fn device(&self, token_hash: &[u8; 32]) -> Result<Option<Device>, StoreError> {
        query("SELECT id, name, role FROM devices WHERE token_hash = $1 AND revoked_at IS NULL")
            .bind(token_hash)
            .fetch_optional(&self.db)
            .await?
            .as_ref()
            .map(device_of)
            .transpose()
    }

    async fn devices(&self) -> Result<Vec<DeviceInfo>, StoreError> {
        let rows =
            query("SELECT id, name, role, created_at, revoked_at FROM devices ORDER BY name, id")
                .fetch_all(&self.db)
                .await?;
        rows.iter()
            .map(|row| {
                Ok(DeviceInfo {
                    device: device_of(row)?,
                    created_at: row.u64("created_at")?,
                    revoked_at: row
                        .get::<Option<i64>>("revoked_at")?
                        .map(super::to_u64)
                        .transpose()?,
                })
            })
            .collect()
    }

    async fn revoke_device(&self, name: &str, now: u64) -> Result<u64, StoreError> {
        let _guard = self.write_guard().await;
        query("UPDATE devices SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL")
            .bind(to_i64(now)?)
            .bind(name)
            .execute(&self.db)
            .await
    }

    async fn record_action(
        &self,
        at: u64,
        actor: &str,
        action: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        query("INSERT INTO admin_actions (at, actor, action, detail) VALUES ($1, $2, $3, $4)")
            .bind(to_i64(at)?)
            .bind(actor)
            .bind(action)
            .bind(detail)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    async fn actions(&self, after: u64, limit: u32) -> Result<Vec<AdminAction>, StoreError> {
        let rows = query(
            "SELECT id, at, actor, action, detail FROM admin_actions WHERE id > $1 \
             ORDER BY id LIMIT $2",
        )
        .bind(to_i64(after)?)
        .bind(limit)
        .fetch_all(&self.db)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AdminAction {
                    id: row.u64("id")?,
                    at: row.u64("at")?,
                    actor: row.get("actor")?,
                    action: row.get("action")?,
                    detail: row.get("detail")?,
                })
            })
            .collect()
    }
}
