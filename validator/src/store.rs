//! The browser's [`ValidatorStore`]: the validator core's state in IndexedDB, one record per
//! part (snapshot, seen set, queue, token, pinned digest), plus what the app keeps for the
//! conductor's diagnostics (manifest, last sync, refused scans).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use ticketing_client::ClientError;
use ticketing_client::clock::Measured;
use ticketing_client::idb::Db;
use ticketing_client::validator::{
    RefusedScan, SeenEntry, ValidatorStore, clear_refused, remember, seen_of, settle,
};
use ticketing_crypto::ticket::Serial;
use ticketing_protocol::publication::BloomSnapshot;
use ticketing_protocol::redeem::Scan;
use ticketing_protocol::{Digest32, ErrorCode, Id16};
use wasm_bindgen::JsValue;

const DB_NAME: &str = "ticketing-validator";
const DB_VERSION: u32 = 1;
const STORE: &str = "state";

fn err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Store(e.to_string())
}

fn parse<T: for<'de> Deserialize<'de> + Default>(v: Option<&str>) -> T {
    v.and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

fn json<T: Serialize>(v: &T) -> Option<String> {
    serde_json::to_string(v).ok()
}

/// What the conductor's diagnostics show about past syncs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SyncLog {
    /// Unix seconds of the last sync that reached the coordinator.
    pub(crate) last_sync: Option<u64>,
    /// Scans the coordinator refused, by reason, over this device's life.
    pub(crate) refused: Vec<(String, usize)>,
}

/// The validator database.
#[derive(Debug, Clone)]
pub(crate) struct IdbStore {
    db: Db,
}

impl IdbStore {
    pub(crate) async fn open() -> Result<Self, ClientError> {
        Ok(Self {
            db: Db::open(DB_NAME, DB_VERSION, &[STORE]).await.map_err(err)?,
        })
    }

    async fn get(&self, key: &str) -> Result<Option<String>, ClientError> {
        Ok(self.db.get(STORE, key).await.map_err(err)?.as_string())
    }

    async fn put(&self, key: &str, value: &str) -> Result<(), ClientError> {
        self.db
            .put(STORE, key, &JsValue::from_str(value))
            .await
            .map_err(err)
    }

    /// The registration: token, coordinator URL, manifest (JSON) and its pinned digest.
    pub(crate) async fn register(
        &self,
        token: &str,
        manifest_json: &str,
        digest: &Digest32,
    ) -> Result<(), ClientError> {
        let (token, manifest, digest) = (
            token.to_owned(),
            manifest_json.to_owned(),
            digest.to_string(),
        );
        self.db
            .update_strings(STORE, &["token", "manifest", "pin"], move |v| {
                v[0] = Some(token);
                v[1] = Some(manifest);
                v[2] = Some(digest);
            })
            .await
            .map_err(err)
    }

    /// The manifest stored at registration.
    pub(crate) async fn manifest_json(&self) -> Result<Option<String>, ClientError> {
        self.get("manifest").await
    }

    pub(crate) async fn sync_log(&self) -> SyncLog {
        parse(self.get("sync").await.ok().flatten().as_deref())
    }

    pub(crate) async fn note_sync(
        &self,
        at: u64,
        refused: &[(String, usize)],
    ) -> Result<(), ClientError> {
        let refused = refused.to_vec();
        self.db
            .update_strings(STORE, &["sync"], move |v| {
                let mut log: SyncLog = parse(v[0].as_deref());
                log.last_sync = Some(at);
                for (code, n) in refused {
                    match log.refused.iter_mut().find(|(c, _)| *c == code) {
                        Some(slot) => slot.1 += n,
                        None => log.refused.push((code, n)),
                    }
                }
                v[0] = json(&log);
            })
            .await
            .map_err(err)
    }
}

impl ValidatorStore for IdbStore {
    async fn snapshot(&self) -> Result<Option<BloomSnapshot>, ClientError> {
        Ok(self
            .get("snapshot")
            .await?
            .and_then(|s| serde_json::from_str(&s).ok()))
    }

    async fn save_snapshot(&self, snapshot: &BloomSnapshot) -> Result<(), ClientError> {
        let new = json(snapshot).ok_or_else(|| err("snapshot does not serialize"))?;
        let version = snapshot.version;
        self.db
            .update_strings(STORE, &["snapshot"], move |v| {
                #[derive(Deserialize)]
                struct Version {
                    version: u64,
                }
                let old = v[0]
                    .as_deref()
                    .and_then(|s| serde_json::from_str::<Version>(s).ok());
                if old.is_none_or(|o| o.version <= version) {
                    v[0] = Some(new);
                }
            })
            .await
            .map_err(err)
    }

    async fn seen(&self, serial: &Serial) -> Result<Vec<SeenEntry>, ClientError> {
        let seen: Vec<SeenEntry> = parse(self.get("seen").await?.as_deref());
        Ok(seen_of(&seen, serial))
    }

    async fn record(
        &self,
        entry: SeenEntry,
        queued: Option<Scan>,
        now: u64,
    ) -> Result<(), ClientError> {
        self.db
            .update_strings(STORE, &["seen", "queue"], move |v| {
                let mut seen: Vec<SeenEntry> = parse(v[0].as_deref());
                remember(&mut seen, entry, now);
                v[0] = json(&seen);
                if let Some(scan) = queued {
                    let mut queue: Vec<Scan> = parse(v[1].as_deref());
                    queue.push(scan);
                    v[1] = json(&queue);
                }
            })
            .await
            .map_err(err)
    }

    async fn queue(&self) -> Result<Vec<Scan>, ClientError> {
        Ok(parse(self.get("queue").await?.as_deref()))
    }

    async fn settle(
        &self,
        done: &HashSet<Id16>,
        refused: &[(Id16, ErrorCode)],
    ) -> Result<(), ClientError> {
        let (done, refused) = (done.clone(), refused.to_vec());
        self.db
            .update_strings(STORE, &["queue", "refused"], move |v| {
                let mut queue: Vec<Scan> = parse(v[0].as_deref());
                let mut held: Vec<RefusedScan> = parse(v[1].as_deref());
                settle(&mut queue, &mut held, &done, &refused);
                v[0] = json(&queue);
                v[1] = json(&held);
            })
            .await
            .map_err(err)
    }

    async fn refused(&self) -> Result<Vec<RefusedScan>, ClientError> {
        Ok(parse(self.get("refused").await?.as_deref()))
    }

    async fn clear_refused(&self, requeue: bool) -> Result<usize, ClientError> {
        self.db
            .update_strings(STORE, &["queue", "refused"], move |v| {
                let mut queue: Vec<Scan> = parse(v[0].as_deref());
                let mut held: Vec<RefusedScan> = parse(v[1].as_deref());
                let n = clear_refused(&mut queue, &mut held, requeue);
                v[0] = json(&queue);
                v[1] = json(&held);
                n
            })
            .await
            .map_err(err)
    }

    async fn clock(&self) -> Result<Option<Measured>, ClientError> {
        Ok(self
            .get("clock")
            .await?
            .and_then(|s| serde_json::from_str(&s).ok()))
    }

    async fn save_clock(&self, measured: Measured) -> Result<(), ClientError> {
        let text = json(&measured).ok_or_else(|| err("clock does not serialize"))?;
        self.put("clock", &text).await
    }

    async fn token(&self) -> Result<Option<String>, ClientError> {
        self.get("token").await
    }

    async fn pinned_manifest(&self) -> Result<Option<Digest32>, ClientError> {
        match self.get("pin").await? {
            Some(hex) => Digest32::from_hex(&hex).map(Some).map_err(err),
            None => Ok(None),
        }
    }

    async fn pin_manifest(&self, digest: Digest32) -> Result<(), ClientError> {
        self.put("pin", &digest.to_string()).await
    }
}
