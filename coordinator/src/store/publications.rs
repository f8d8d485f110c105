//! Published snapshots (only the newest is kept), the steps deltas are built from, and the
//! leases that let one of several coordinators publish.

use async_trait::async_trait;
use ticketing_protocol::Id16;
use ticketing_service::db::query;

use super::{SqlStore, StoreError, to_i64};

/// What one published version changed in the filter's encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationStep {
    /// The version.
    pub version: u64,
    /// A new filter starts here (no changes; deltas start from it).
    pub fresh: bool,
    /// SHA-256 of the filter's bytes at this version.
    pub digest: [u8; 32],
    /// (offset, byte before) of every byte changed.
    pub changes: Vec<(u32, u8)>,
}

impl PublicationStep {
    /// The stored form of `changes`: offset (u32) and byte before, big-endian, 5 bytes each.
    pub fn changes_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 * self.changes.len());
        for (off, old) in &self.changes {
            out.extend_from_slice(&off.to_be_bytes());
            out.push(*old);
        }
        out
    }

    /// Decode [`Self::changes_bytes`].
    pub fn changes_from(bytes: &[u8]) -> Result<Vec<(u32, u8)>, StoreError> {
        if !bytes.len().is_multiple_of(5) {
            return Err(StoreError::Corrupt("publication step: length".into()));
        }
        Ok(bytes
            .chunks_exact(5)
            .map(|c| match c {
                [a, b, d, e, old] => (u32::from_be_bytes([*a, *b, *d, *e]), *old),
                _ => (0, 0),
            })
            .collect())
    }
}

/// Snapshots, steps and leases.
#[async_trait]
pub trait Publications: Send + Sync + 'static {
    /// Keep a published snapshot (JSON) under its version with what it changed, forgetting
    /// older snapshots and the steps before `keep_from`, in one transaction. `false` (nothing
    /// written) when another coordinator published this version first.
    async fn save_publication(
        &self,
        version: u64,
        body: &str,
        step: &PublicationStep,
        keep_from: u64,
    ) -> Result<bool, StoreError>;
    /// The newest published snapshot.
    async fn latest_publication(&self) -> Result<Option<(u64, String)>, StoreError>;
    /// The steps kept, oldest first.
    async fn publication_steps(&self) -> Result<Vec<PublicationStep>, StoreError>;
    /// Take or renew the lease `name` for `holder` until `until`, if it is free, lapsed by
    /// `now`, or already `holder`'s. Whether `holder` holds it.
    async fn lease(
        &self,
        name: &str,
        holder: &Id16,
        now: u64,
        until: u64,
    ) -> Result<bool, StoreError>;
}

#[async_trait]
impl Publications for SqlStore {
    async fn save_publication(
        &self,
        version: u64,
        body: &str,
        step: &PublicationStep,
        keep_from: u64,
    ) -> Result<bool, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.db.begin_write().await?;
        let stored = query(
            "INSERT INTO publications (version, body) VALUES ($1, $2) \
             ON CONFLICT (version) DO NOTHING",
        )
        .bind(to_i64(version)?)
        .bind(body)
        .execute(&mut tx)
        .await?
            == 1;
        if !stored {
            return Ok(false);
        }
        query(
            "INSERT INTO publication_steps (version, fresh, digest, changes) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(to_i64(step.version)?)
        .bind(i64::from(step.fresh))
        .bind(step.digest.as_slice())
        .bind(step.changes_bytes())
        .execute(&mut tx)
        .await?;
        // Only the newest is served; older ones are history nobody reads.
        query("DELETE FROM publications WHERE version < $1")
            .bind(to_i64(version)?)
            .execute(&mut tx)
            .await?;
        query("DELETE FROM publication_steps WHERE version < $1")
            .bind(to_i64(keep_from)?)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn latest_publication(&self) -> Result<Option<(u64, String)>, StoreError> {
        query("SELECT version, body FROM publications ORDER BY version DESC LIMIT 1")
            .fetch_optional(&self.db)
            .await?
            .map(|row| Ok((row.u64("version")?, row.get("body")?)))
            .transpose()
    }

    async fn publication_steps(&self) -> Result<Vec<PublicationStep>, StoreError> {
        let rows =
            query("SELECT version, fresh, digest, changes FROM publication_steps ORDER BY version")
                .fetch_all(&self.db)
                .await?;
        rows.iter()
            .map(|row| {
                Ok(PublicationStep {
                    version: row.u64("version")?,
                    fresh: row.get::<i64>("fresh")? != 0,
                    digest: row
                        .bytes("digest")?
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("publication step digest".into()))?,
                    changes: PublicationStep::changes_from(row.bytes("changes")?)?,
                })
            })
            .collect()
    }

    async fn lease(
        &self,
        name: &str,
        holder: &Id16,
        now: u64,
        until: u64,
    ) -> Result<bool, StoreError> {
        let _guard = self.write_guard().await;
        let changed = query(
            "INSERT INTO leases (name, holder, until_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             until_at = excluded.until_at \
             WHERE leases.until_at <= $4 OR leases.holder = excluded.holder",
        )
        .bind(name)
        .bind(holder.0.as_slice())
        .bind(to_i64(until)?)
        .bind(to_i64(now)?)
        .execute(&self.db)
        .await?;
        Ok(changed == 1)
    }
}
