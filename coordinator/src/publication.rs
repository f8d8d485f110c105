//! The signed Bloom snapshot: spent singles (after their transfer window) and denied serials
//! of keysets still valid, in a filter sized from the configured capacity and false-positive
//! rate, plus the exact deny list, signed with the coordinator's publication key.
//!
//! Passes are not in the filter: they are used many times; their replays are caught per
//! (serial, epoch). A single inside its transfer window is not in it yet either (a transfer is
//! a legitimate second scan); it enters at the first rebuild after the window ends.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};
use ticketing_config::CoordinatorSettings;
use ticketing_crypto::ticket::Serial;
use ticketing_protocol::keys::{Sig, SignKey};
use ticketing_protocol::manifest::Manifest;
use ticketing_protocol::publication::{BloomSnapshot, SerialFilter};

use crate::CoordinatorError;
use crate::store::LedgerStore;

/// A published snapshot: both of its forms are encoded once and served as they are (ETag =
/// version).
#[derive(Debug)]
pub struct Published {
    /// Version (ETag).
    pub version: u64,
    /// The snapshot.
    pub snapshot: BloomSnapshot,
    /// Its JSON (also what the database keeps).
    pub body: String,
    /// Its binary form (`application/octet-stream`, what validators fetch).
    pub bytes: axum::body::Bytes,
    /// SHA-256 of what it covers; equal content is not republished.
    fingerprint: [u8; 32],
}

impl Published {
    pub(crate) fn new(version: u64, snapshot: BloomSnapshot, body: String) -> Self {
        // A snapshot loaded from the database: its content is not known here, so the next
        // rebuild publishes a new version once (cheap, and versions only ever grow).
        Self {
            version,
            bytes: snapshot.to_bytes().into(),
            snapshot,
            body,
            fingerprint: [0; 32],
        }
    }

    /// The ETag header value.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }
}

/// Build the next snapshot at `now`, or `None` when its content equals `current`'s.
pub(crate) async fn build(
    manifest: &Manifest,
    store: &dyn LedgerStore,
    settings: &CoordinatorSettings,
    key: &SignKey,
    current: Option<&Published>,
    now: u64,
) -> Result<Option<Published>, CoordinatorError> {
    let keysets: Vec<_> = manifest
        .keysets
        .iter()
        .filter(|k| k.params.valid_until > now)
        .map(|k| k.id)
        .collect();
    let deny: BTreeSet<Serial> = store
        .deny_list()
        .await?
        .into_iter()
        .filter(|d| keysets.contains(&d.keyset_id))
        .map(|d| d.serial)
        .collect();
    let mut members: BTreeSet<Serial> = store.spent(&keysets, now).await?.into_iter().collect();
    members.extend(deny.iter().copied());

    let mut h = Sha256::new();
    for k in &keysets {
        h.update(k.0);
    }
    h.update(b"|spent");
    for s in &members {
        h.update(s.0);
    }
    h.update(b"|deny");
    for s in &deny {
        h.update(s.0);
    }
    let fingerprint: [u8; 32] = h.finalize().into();
    if current.is_some_and(|c| c.fingerprint == fingerprint) {
        return Ok(None);
    }

    let mut seed = [0u8; 32];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut seed);
    let filter = SerialFilter::build(
        members.iter(),
        settings.bloom_capacity as usize,
        settings.bloom_fp_rate,
        &seed,
    )?;
    let version = current.map_or(1, |c| c.version + 1);
    let snapshot = BloomSnapshot {
        version,
        built_at: now,
        keysets,
        filter: filter.to_bytes(),
        deny: deny.into_iter().collect(),
        signature: Sig([0; 64]),
    }
    .sign(key);
    let body = serde_json::to_string(&snapshot)
        .map_err(|e| CoordinatorError::Internal(format!("encode snapshot: {e}")))?;
    Ok(Some(Published {
        version,
        bytes: snapshot.to_bytes().into(),
        snapshot,
        body,
        fingerprint,
    }))
}
