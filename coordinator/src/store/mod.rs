//! The coordinator's storage: the spent ledger, scans with their answers, the deny list,
//! device tokens, published snapshots, and the partner feed (events, partners, webhook
//! delivery state). One trait, a SQLite and a Postgres backend generated
//! from one definition (`backends.rs`), one conformance suite (`tests/store.rs`) run on both.
//!
//! Ledger rules live here because they are constraints: a single ticket's first use is a
//! primary key, a (serial, epoch) is a primary key, a scan id is a primary key. A batch of
//! scans is one transaction; an answer leaves this module only after its commit.
//!
//! A serial entering the deny list writes its `revoked` event (product, price, no serial) in
//! the same transaction, only when the deny row is new; a purchase's `issued` event is unique
//! on its receipt id. Event ids are the feed's cursor and become visible in increasing order
//! (SQLite: one writer; Postgres: event writers take an advisory lock held to their commit).

use async_trait::async_trait;
use ticketing_crypto::keyset::KeysetId;
use ticketing_crypto::ticket::Serial;
use ticketing_protocol::Id16;
use ticketing_protocol::partner::{PartnerEvent, ProductTotals};
use ticketing_protocol::redeem::{AdminAction, DenyEntry, DenyReason, SyncStatus, Verdict};

mod backends;

pub use backends::{PostgresStore, SqliteStore};

/// Storage failures (shared by every store). None of them means "recorded": the caller
/// answers `unavailable`, except [`StoreError::Taken`]: a live device token of that name
/// exists (nothing was changed), answered `name_taken`.
pub use ticketing_service::db::StoreError;
pub(crate) use ticketing_service::db::{to_i64, to_u64};

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

/// How a product is used, as the ledger needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// Spent at the first scan, which must fall inside the keyset's window; valid
    /// `transfer_seconds` more after it, past the window's end too
    /// (`protocol::verify::single_valid_until`).
    Single {
        /// Transfer window (0: none).
        transfer_seconds: u64,
        /// The keyset window's end: no first use at or after it.
        window_end: u64,
    },
    /// Valid until the keyset's window ends; each (serial, epoch) once.
    Pass {
        /// The keyset window's end.
        valid_until: u64,
    },
}

/// A scan that passed every cryptographic check, ready for the ledger. Its scan id is scoped
/// to its device and bound to its (serial, epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanRecord {
    /// Validator-chosen id.
    pub scan_id: Id16,
    /// Keyset of the ticket.
    pub keyset_id: KeysetId,
    /// The ticket's serial.
    pub serial: Serial,
    /// The presentation's epoch.
    pub epoch: u32,
    /// When it counts: the coordinator's clock online, the validator's scan time offline.
    pub at: u64,
    /// The coordinator's clock when it received the scan (`at` online).
    pub received: u64,
    /// The device that scanned.
    pub device: i64,
    /// Single or pass.
    pub usage: Usage,
    /// The product's fare (recorded in the event if the serial gets denied as a copy).
    pub fare: Fare,
}

/// A product's name and price as the manifest states them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fare {
    /// Product name.
    pub product: String,
    /// Price of one ticket, minor units.
    pub price: u64,
    /// ISO 4217 code.
    pub currency: String,
}

/// A purchase seen in at least t node logs, to record as an `issued` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuance {
    /// The receipt's id (the event is unique on it).
    pub receipt_id: Id16,
    /// Keyset paid for.
    pub keyset_id: KeysetId,
    /// The keyset's product.
    pub product: String,
    /// Tickets (the receipt's count).
    pub tickets: u32,
    /// Amount paid, minor units.
    pub amount: u64,
    /// ISO 4217 code.
    pub currency: String,
    /// When the coordinator saw it reach t logs.
    pub at: u64,
}

/// An event row to insert.
#[derive(Debug, Clone)]
pub(crate) struct NewEvent {
    pub(crate) kind: &'static str,
    pub(crate) reason: Option<&'static str>,
    pub(crate) at: u64,
    pub(crate) keyset_id: KeysetId,
    pub(crate) product: String,
    pub(crate) tickets: u32,
    pub(crate) amount: u64,
    pub(crate) currency: String,
    pub(crate) receipt_id: Option<Id16>,
}

impl NewEvent {
    pub(crate) fn issued(i: &Issuance) -> Self {
        Self {
            kind: "issued",
            reason: None,
            at: i.at,
            keyset_id: i.keyset_id,
            product: i.product.clone(),
            tickets: i.tickets,
            amount: i.amount,
            currency: i.currency.clone(),
            receipt_id: Some(i.receipt_id),
        }
    }

    /// One denied ticket, valued at the product's price. Deliberately without the serial.
    pub(crate) fn revoked(keyset_id: KeysetId, reason: DenyReason, fare: &Fare, at: u64) -> Self {
        Self {
            kind: "revoked",
            reason: Some(reason_str(reason)),
            at,
            keyset_id,
            product: fare.product.clone(),
            tickets: 1,
            amount: fare.price,
            currency: fare.currency.clone(),
            receipt_id: None,
        }
    }
}

/// A partner (a transit operator owning some products). Its token is stored only hashed; its
/// webhook secret is derived from the coordinator's key, never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partner {
    /// Random id (the webhook secret is derived from it).
    pub id: Id16,
    /// Unique name, e.g. `metro`.
    pub name: String,
    /// Manifest product names it owns.
    pub products: Vec<String>,
    /// Its webhook, if any, with the delivery state.
    pub webhook: Option<Webhook>,
    /// Unix seconds.
    pub created_at: u64,
}

/// A partner's webhook and where its delivery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `http(s)://...` receiving one POST per event.
    pub url: String,
    /// The last event id delivered (or skipped); the next delivery is the first event after it.
    pub cursor: u64,
    /// Failed attempts at the next event.
    pub attempts: u32,
    /// Unix seconds when the next attempt is due (0: now).
    pub next_at: u64,
    /// Events delivered (answered 2xx).
    pub delivered: u64,
    /// Events given up after the maximum number of attempts.
    pub skipped: u64,
}

/// Online redemption or offline sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `POST /v1/redeem`: the validator waits for the verdict.
    Online,
    /// `POST /v1/sync`: the validator already let the passenger through.
    Offline {
        /// Scans of one pass by different devices closer than this are suspected sharing.
        sharing_window: u64,
    },
}

/// What the ledger made of one scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Online verdict (repeated verbatim for a retried scan id).
    Online(Verdict),
    /// Sync status (`AlreadySynced` for a scan id seen before).
    Offline(SyncStatus),
}

/// A scan refused before the ledger for a reason that depends on the time (a stale epoch, an
/// ended window, a timestamp in the future): if its (device, scan id) was answered before, for
/// the same ticket and epoch, the stored answer wins (a late retry of an accepted scan is
/// still accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// The device that scanned.
    pub device: i64,
    /// Its scan id.
    pub scan_id: Id16,
    /// The ticket's serial.
    pub serial: Serial,
    /// The presentation's epoch.
    pub epoch: u32,
}

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

/// What a token may do (the wire type, shared with validators).
pub use ticketing_protocol::redeem::TokenRole as Role;

/// A stored role name back to its role.
pub(crate) fn parse_role(s: &str) -> Result<Role, StoreError> {
    Role::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown role {s:?}")))
}

/// Per-keyset counts for the stats endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerCounts {
    /// Distinct serials with an accepted scan.
    pub redeemed: u64,
    /// Accepted scans.
    pub scans: u64,
    /// Denied serials.
    pub denied: u64,
}

/// Flag counts for the stats endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlagCounts {
    /// Scans flagged as suspected sharing.
    pub suspected_sharing: u64,
    /// Scans recorded as duplicates.
    pub duplicates: u64,
}

/// The coordinator's storage.
#[async_trait]
pub trait LedgerStore: Send + Sync + 'static {
    /// Whether the database answers (`/health`).
    async fn ping(&self) -> Result<(), StoreError>;
    /// Apply the ledger rules to `scans` in one transaction; one outcome per scan, in order.
    async fn record(&self, mode: Mode, scans: &[ScanRecord]) -> Result<Vec<Outcome>, StoreError>;
    /// The stored answers of scans refused before the ledger ([`Retry`]), one per retry in
    /// order: the answer (as [`repeat_outcome`] gives it) when the device answered that scan id
    /// for the same ticket and epoch, `scan_id_reused` for another, `None` when it never did.
    async fn answered(
        &self,
        mode: Mode,
        retries: &[Retry],
    ) -> Result<Vec<Option<Outcome>>, StoreError>;
    /// Whether scan `scan_id` (of any device) is in the ledger, and if so whether it was
    /// accepted.
    async fn scan_accepted(&self, scan_id: &Id16) -> Result<Option<bool>, StoreError>;
    /// Put a serial on the deny list (idempotent; the first reason stays). A new entry also
    /// records its `revoked` event (valued at `fare`), in the same transaction. Returns whether
    /// the entry is new.
    async fn deny(
        &self,
        keyset_id: &KeysetId,
        serial: &Serial,
        reason: DenyReason,
        fare: &Fare,
        now: u64,
    ) -> Result<bool, StoreError>;
    /// Record purchases as `issued` events in one transaction; a receipt already recorded is
    /// skipped. Returns how many were new.
    async fn record_issuances(&self, issuances: &[Issuance]) -> Result<u64, StoreError>;
    /// Tickets of `keyset_id` recorded as issued.
    async fn issued(&self, keyset_id: &KeysetId) -> Result<u64, StoreError>;
    /// Add a partner (by its token's hash); its name and token must be new.
    async fn add_partner(&self, partner: &Partner, token_hash: &[u8; 32])
    -> Result<(), StoreError>;
    /// The partner a token hash belongs to.
    async fn partner(&self, token_hash: &[u8; 32]) -> Result<Option<Partner>, StoreError>;
    /// Every partner, by name.
    async fn partners(&self) -> Result<Vec<Partner>, StoreError>;
    /// Events of the partner's products with `id > after`, ascending, at most `limit`.
    async fn partner_events(
        &self,
        partner: &Id16,
        after: u64,
        limit: u32,
    ) -> Result<Vec<PartnerEvent>, StoreError>;
    /// Totals over every event of the partner's products, per product and currency.
    async fn partner_totals(&self, partner: &Id16) -> Result<Vec<ProductTotals>, StoreError>;
    /// The partner's webhook is done with event `event_id` (delivered, or skipped after too
    /// many attempts): its cursor moves there (never backwards) and its attempts reset.
    async fn webhook_done(
        &self,
        partner: &Id16,
        event_id: u64,
        delivered: bool,
    ) -> Result<(), StoreError>;
    /// A delivery failed: `attempts` so far at the next event, due again at `next_at`.
    async fn webhook_failed(
        &self,
        partner: &Id16,
        attempts: u32,
        next_at: u64,
    ) -> Result<(), StoreError>;
    /// The deny list.
    async fn deny_list(&self) -> Result<Vec<DenyEntry>, StoreError>;
    /// Singles of `keysets` whose use (first scan + transfer window) ended at or before `now`:
    /// the filter's members (a full rebuild).
    async fn spent(&self, keysets: &[KeysetId], now: u64) -> Result<Vec<Serial>, StoreError>;
    /// Singles of `keysets` listed for the filter in (`after`, `until`]: listed when their
    /// transfer window ended, or when the ledger learnt of them if that was later (an
    /// incremental update; repeats are harmless).
    async fn listed(
        &self,
        keysets: &[KeysetId],
        after: u64,
        until: u64,
    ) -> Result<Vec<Serial>, StoreError>;
    /// Delete every row of `keysets` (expired); returns the number of rows deleted.
    async fn prune(&self, keysets: &[KeysetId]) -> Result<u64, StoreError>;
    /// Counts for one keyset.
    async fn counts(&self, keyset_id: &KeysetId) -> Result<LedgerCounts, StoreError>;
    /// Flag counts over the whole ledger.
    async fn flags(&self) -> Result<FlagCounts, StoreError>;
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

/// Open the store a database URL names, running its migrations.
pub async fn open(url: &str) -> Result<Box<dyn LedgerStore>, StoreError> {
    match ticketing_service::db::backend_of(url) {
        Some(ticketing_service::db::Backend::Postgres) => {
            Ok(Box::new(PostgresStore::open(url).await?))
        }
        _ => Ok(Box::new(SqliteStore::open(url).await?)),
    }
}

pub(crate) fn serial_of(bytes: &[u8]) -> Result<Serial, StoreError> {
    bytes
        .try_into()
        .map(Serial)
        .map_err(|_| StoreError::Corrupt("serial is not 32 bytes".into()))
}

pub(crate) fn id16_of(bytes: &[u8]) -> Result<Id16, StoreError> {
    bytes
        .try_into()
        .map(Id16)
        .map_err(|_| StoreError::Corrupt("id is not 16 bytes".into()))
}

pub(crate) fn keyset_of(bytes: &[u8]) -> Result<KeysetId, StoreError> {
    bytes
        .try_into()
        .map(KeysetId)
        .map_err(|_| StoreError::Corrupt("keyset id is not 8 bytes".into()))
}

pub(crate) fn reason_str(r: DenyReason) -> &'static str {
    match r {
        DenyReason::Revoked => "revoked",
        DenyReason::Duplicate => "duplicate",
    }
}

pub(crate) fn parse_reason(s: &str) -> Result<DenyReason, StoreError> {
    match s {
        "revoked" => Ok(DenyReason::Revoked),
        "duplicate" => Ok(DenyReason::Duplicate),
        other => Err(StoreError::Corrupt(format!(
            "unknown deny reason {other:?}"
        ))),
    }
}

/// Stored answers are JSON of the wire types.
pub(crate) fn encode_outcome(o: &Outcome) -> Result<String, StoreError> {
    match o {
        Outcome::Online(v) => serde_json::to_string(v),
        Outcome::Offline(s) => serde_json::to_string(s),
    }
    .map_err(|e| StoreError::Corrupt(format!("encode outcome: {e}")))
}

/// The refusal of a scan id this device used for another ticket or epoch.
pub(crate) fn reused(mode: Mode) -> Outcome {
    let code = ticketing_protocol::ErrorCode::ScanIdReused;
    match mode {
        Mode::Online => Outcome::Online(Verdict::Rejected { code }),
        Mode::Offline { .. } => Outcome::Offline(SyncStatus::Rejected { code }),
    }
}

/// The answer to a scan id seen before, for the same ticket and epoch: the stored verdict
/// online; offline `AlreadySynced` for a scan that was recorded, and the stored refusal for one
/// that was refused (a validator that re-sends a refused scan must keep it refused, not be told
/// it is done).
pub fn repeat_outcome(mode: Mode, stored: &str) -> Result<Outcome, StoreError> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("stored outcome: {e}"));
    match mode {
        Mode::Offline { .. } => Ok(Outcome::Offline(
            match serde_json::from_str::<SyncStatus>(stored) {
                Ok(SyncStatus::Rejected { code }) => SyncStatus::Rejected { code },
                Ok(_) => SyncStatus::AlreadySynced,
                // First seen online: accepted is recorded; a refusal stays one.
                Err(_) => match serde_json::from_str::<Verdict>(stored).map_err(corrupt)? {
                    Verdict::Accepted { .. } => SyncStatus::AlreadySynced,
                    Verdict::Rejected { code } => SyncStatus::Rejected { code },
                },
            },
        )),
        Mode::Online => match serde_json::from_str::<Verdict>(stored) {
            Ok(v) => Ok(Outcome::Online(v)),
            // First seen through sync: it was accepted offline; online it is now spent.
            Err(_) => match serde_json::from_str::<SyncStatus>(stored).map_err(corrupt)? {
                SyncStatus::Rejected { code } => Ok(Outcome::Online(Verdict::Rejected { code })),
                _ => Ok(Outcome::Online(Verdict::Rejected {
                    code: ticketing_protocol::ErrorCode::Spent,
                })),
            },
        },
    }
}
