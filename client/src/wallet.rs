//! The wallet core: one implementation of a passenger's purchases and tickets, used by the CLI
//! wallet (a locked 0600 file) and the browser wallet (IndexedDB, WebCrypto keys). It has no
//! file system, clock or terminal: storage is a [`WalletStore`], holder keys are
//! [`HolderKeys`], the time is passed in, and what happened is returned, never printed.
//!
//! A purchase is a small state machine, each step stored before the next one starts, so that
//! nothing paid is ever lost whatever the moment a process dies or a tab closes:
//!
//! 1. [`Wallet::prepare`]: holder keys made, points blinded, the purchase **stored** (not paid).
//! 2. [`Wallet::pay`]: checkout at the payments service; the receipt is stored. A definite
//!    refusal (declined card, used voucher) forgets the purchase; an unknown outcome keeps it.
//! 3. [`Wallet::complete`]: all nodes asked, the first t good answers combined; the tickets and
//!    any blame evidence are stored and the purchase removed in one update.
//!
//! [`Wallet::recover_receipts`] asks the payments service for the receipt of every kept
//! purchase by its digest (which only this wallet knows), and [`Wallet::complete_all`] finishes
//! every paid one: together they resume whatever was interrupted.

use serde::{Deserialize, Serialize};
use ticketing_crypto::presentation::{PRINTED_EPOCH, Presentation, epoch_at, presentation_message};
use ticketing_crypto::ticket::{HolderPublicKey, HolderSecret, Ticket};
use ticketing_protocol::manifest::{Manifest, ProductKind};
use ticketing_protocol::receipt::{PaymentMethod, blinded_digest};
use ticketing_protocol::{Digest32, ErrorBody, ErrorCode};
use zeroize::Zeroizing;

use crate::{
    Blame, Client, ClientError, NodeEvent, NodeFailure, PendingPurchase, PreparedPurchase,
};

/// A holder secret in its stored form (hex). Redacted in Debug, zeroized on drop.
#[derive(Clone)]
pub struct SecretHex(Zeroizing<String>);

impl Serialize for SecretHex {
    fn serialize<Ser: serde::Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretHex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Self(Zeroizing::new(s)))
    }
}

impl SecretHex {
    /// The stored form of a secret.
    pub fn of(secret: &HolderSecret) -> Self {
        Self(Zeroizing::new(hex::encode(secret.to_bytes().as_ref())))
    }

    /// The secret back.
    pub fn secret(&self) -> Result<HolderSecret, ClientError> {
        let bytes = Zeroizing::new(
            hex::decode(self.0.as_str())
                .map_err(|e| ClientError::HolderKey(format!("stored secret: {e}")))?,
        );
        HolderSecret::from_bytes(&bytes)
            .map_err(|e| ClientError::HolderKey(format!("stored secret: {e}")))
    }
}

impl std::fmt::Debug for SecretHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a ticket's holder key lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HolderKeyRef {
    /// The secret itself (the CLI's file; browsers without WebCrypto Ed25519).
    Secret(SecretHex),
    /// A key the device holds and will not export (a WebCrypto `CryptoKey` in IndexedDB), by
    /// its id in the device's key store.
    Device {
        /// Id in the key store.
        device_key: String,
    },
}

/// Makes and uses holder keys. The CLI and browsers without WebCrypto Ed25519 use
/// [`SoftwareKeys`]; the browser wallet plugs in non-extractable WebCrypto keys.
#[allow(async_fn_in_trait)]
pub trait HolderKeys {
    /// A fresh key pair: its public key and where its secret is kept.
    async fn generate<R: rand_core::CryptoRng>(
        &self,
        rng: &mut R,
    ) -> Result<(HolderPublicKey, HolderKeyRef), ClientError>;

    /// Ed25519 signature of `message` by the key behind `key`.
    async fn sign(&self, key: &HolderKeyRef, message: &[u8]) -> Result<[u8; 64], ClientError>;

    /// Forget a key that will never hold a ticket (its purchase was refused).
    async fn forget(&self, key: &HolderKeyRef) -> Result<(), ClientError> {
        let _ = key;
        Ok(())
    }

    /// Whether keys are locked to this device (cannot be copied out).
    fn device_bound(&self) -> bool {
        false
    }
}

/// Holder secrets kept in the wallet's own storage.
#[derive(Debug, Clone, Copy, Default)]
pub struct SoftwareKeys;

impl HolderKeys for SoftwareKeys {
    async fn generate<R: rand_core::CryptoRng>(
        &self,
        rng: &mut R,
    ) -> Result<(HolderPublicKey, HolderKeyRef), ClientError> {
        let secret = HolderSecret::generate(rng);
        Ok((
            secret.public_key(),
            HolderKeyRef::Secret(SecretHex::of(&secret)),
        ))
    }

    async fn sign(&self, key: &HolderKeyRef, message: &[u8]) -> Result<[u8; 64], ClientError> {
        match key {
            HolderKeyRef::Secret(s) => Ok(s.secret()?.sign(message)),
            HolderKeyRef::Device { .. } => Err(ClientError::HolderKey(
                "this ticket's key is held by another key store".into(),
            )),
        }
    }
}

/// A ticket in the wallet.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredTicket {
    /// Product name.
    pub product: String,
    /// Keyset window start.
    pub valid_from: u64,
    /// Keyset window end.
    pub valid_until: u64,
    /// The ticket.
    pub ticket: Ticket,
    /// Its holder key.
    #[serde(rename = "holder_key", alias = "holder_secret")]
    pub key: HolderKeyRef,
    /// When this wallet first showed it (unix seconds): a single is used up a while after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_shown: Option<u64>,
}

impl std::fmt::Debug for StoredTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredTicket")
            .field("product", &self.product)
            .field("valid_until", &self.valid_until)
            .finish_non_exhaustive()
    }
}

/// A purchase in progress, with its holder keys. `pending` is `None` until the receipt is
/// known: a purchase whose payment outcome is unknown is kept, never dropped.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredPurchase {
    /// Blinded, maybe not yet paid.
    pub prepared: PreparedPurchase,
    /// The receipt, once paid.
    pub pending: Option<PendingPurchase>,
    /// Holder keys, in order.
    #[serde(rename = "holder_keys", alias = "holder_secrets")]
    pub keys: Vec<HolderKeyRef>,
}

impl std::fmt::Debug for StoredPurchase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredPurchase")
            .field("product", &self.prepared.product)
            .field("paid", &self.pending.is_some())
            .finish_non_exhaustive()
    }
}

impl StoredPurchase {
    /// The digest of its blinded points: the purchase's id here and at the payments service.
    pub fn digest(&self) -> Digest32 {
        blinded_digest(&self.prepared.blinded)
    }
}

/// Everything a wallet stores.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct WalletData {
    /// Tickets, in purchase order.
    pub tickets: Vec<StoredTicket>,
    /// Purchases not finished.
    pub purchases: Vec<StoredPurchase>,
    /// Signed answers of nodes caught signing wrong partials, for the auditors.
    #[serde(default)]
    pub evidence: Vec<Blame>,
    /// Digest of the manifest this wallet trusts (pinned at first use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<Digest32>,
    /// This device's clock offset to the cluster, from the `Date` of the services' last
    /// answers: presentations are signed for the cluster's epoch, offline too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<crate::clock::Measured>,
}

impl WalletData {
    fn purchase_mut(&mut self, digest: &Digest32) -> Option<&mut StoredPurchase> {
        self.purchases.iter_mut().find(|p| p.digest() == *digest)
    }

    fn remove_purchase(&mut self, digest: &Digest32) -> Option<StoredPurchase> {
        let i = self.purchases.iter().position(|p| p.digest() == *digest)?;
        Some(self.purchases.remove(i))
    }
}

/// Where a wallet keeps its [`WalletData`]: a locked file (CLI), IndexedDB (browser), memory
/// (tests). `update` must be atomic: concurrent wallets on one store never lose a write.
#[allow(async_fn_in_trait)]
pub trait WalletStore {
    /// The wallet as stored (empty if nothing is).
    async fn load(&self) -> Result<WalletData, ClientError>;

    /// Load, change and save as one step; returns what `change` returned.
    async fn update<T>(&self, change: impl FnOnce(&mut WalletData) -> T) -> Result<T, ClientError>;
}

/// A wallet in memory (tests, and a page that has no storage).
#[derive(Debug, Default)]
pub struct MemoryStore(std::sync::Mutex<WalletData>);

impl MemoryStore {
    /// A store holding `data`.
    pub fn new(data: WalletData) -> Self {
        Self(std::sync::Mutex::new(data))
    }
}

impl WalletStore for MemoryStore {
    async fn load(&self) -> Result<WalletData, ClientError> {
        self.0
            .lock()
            .map(|d| d.clone())
            .map_err(|_| ClientError::Store("poisoned".into()))
    }

    async fn update<T>(&self, change: impl FnOnce(&mut WalletData) -> T) -> Result<T, ClientError> {
        let mut data = self
            .0
            .lock()
            .map_err(|_| ClientError::Store("poisoned".into()))?;
        Ok(change(&mut data))
    }
}

/// What [`Wallet::pay`] found out.
#[derive(Debug)]
pub enum PayOutcome {
    /// Paid: the receipt is stored; [`Wallet::complete`] next.
    Paid,
    /// A definite refusal after which nothing was charged (declined card, invalid or used
    /// voucher...): the purchase and its keys are forgotten.
    Refused(ErrorBody),
    /// The outcome is unknown (the payments service did not answer, or answered nonsense): the
    /// purchase is kept; [`Wallet::recover_receipts`] later finds out.
    Unknown(ClientError),
}

/// Refusals after which the payments service guarantees nothing was charged.
pub fn not_charged(code: ErrorCode) -> bool {
    use ErrorCode as C;
    matches!(
        code,
        C::CardDeclined
            | C::InvalidVoucher
            | C::VoucherUsed
            | C::Malformed
            | C::NotFound
            | C::UnknownKeyset
            | C::KeysetNotActive
            | C::PayloadTooLarge
            | C::DuplicatePoint
    )
}

/// A purchase turned into tickets.
#[derive(Debug, Clone)]
pub struct Completed {
    /// Product name.
    pub product: String,
    /// How many tickets were stored.
    pub tickets: usize,
    /// Nodes caught signing wrong partials (their evidence is stored).
    pub blamed: Vec<u16>,
    /// Nodes that failed but were not needed.
    pub failures: Vec<NodeFailure>,
}

/// What [`Wallet::recover_receipts`] learnt about one kept purchase.
#[derive(Debug)]
pub enum Recovered {
    /// The payments service has its receipt (now stored, renewed if it had expired).
    Paid {
        /// Product name.
        product: String,
    },
    /// It was never paid: removed.
    NeverPaid {
        /// Product name.
        product: String,
    },
    /// Already paid, the payments service has nothing newer.
    Unchanged,
    /// The payments service could not be asked: kept as it was.
    Unknown {
        /// Product name.
        product: String,
        /// Why.
        error: ClientError,
    },
}

/// What [`Wallet::complete_all`] did with one kept purchase.
#[derive(Debug)]
pub enum Finished {
    /// Tickets stored.
    Bought(Completed),
    /// Its payment outcome is still unknown: kept.
    AwaitingPayment {
        /// Product name.
        product: String,
    },
    /// Paid, but fewer than t nodes answered correctly: kept, retry with the same receipt.
    NotEnoughNodes {
        /// Product name.
        product: String,
        /// The error (names the nodes).
        error: ClientError,
    },
    /// Another failure: kept.
    Failed {
        /// Product name.
        product: String,
        /// The error.
        error: ClientError,
    },
}

/// Where a ticket is in its life, at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    /// Its window has not started.
    Upcoming,
    /// Usable now.
    Active,
    /// A single shown here long enough ago that its first use (and transfer time) is over.
    UsedUp,
    /// Its window has ended.
    Expired,
}

impl TicketStatus {
    /// The word a passenger reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upcoming => "upcoming",
            Self::Active => "active",
            Self::UsedUp => "used up",
            Self::Expired => "expired",
        }
    }
}

/// After its first showing, a single counts as used up once its transfer time plus this grace
/// has passed (a first scan that failed can be tried again within it).
pub const USED_UP_GRACE_SECONDS: u64 = 600;

/// How long after a shown single's transfer time the coordinator's spent list must have been
/// built before this wallet trusts its absence there (the list is updated in the background).
pub const SETTLE_MARGIN_SECONDS: u64 = 300;

/// The status of `ticket` at unix time `now` under `manifest`. A single first shown inside
/// its window stays active for its transfer time after that showing, past the window's end
/// too (`verify::single_valid_until`, the rule the coordinator and validators apply).
pub fn status(manifest: &Manifest, ticket: &StoredTicket, now: u64) -> TicketStatus {
    if now < ticket.valid_from {
        return TicketStatus::Upcoming;
    }
    let kind = manifest.product(&ticket.product).map(|p| p.kind);
    if let (Some(ProductKind::Single { transfer_minutes }), Some(shown)) =
        (kind, ticket.first_shown)
    {
        let transfer = u64::from(transfer_minutes).saturating_mul(60);
        let until = ticketing_protocol::verify::single_valid_until(
            ticket.valid_from,
            ticket.valid_until,
            transfer,
            shown,
        );
        if until.is_some_and(|until| now < until) {
            return TicketStatus::Active;
        }
        if now
            >= shown
                .saturating_add(transfer)
                .saturating_add(USED_UP_GRACE_SECONDS)
        {
            return TicketStatus::UsedUp;
        }
    }
    if now >= ticket.valid_until {
        return TicketStatus::Expired;
    }
    TicketStatus::Active
}

/// Until when `ticket` is valid as far as this wallet knows: its window's end, or for
/// a single first shown inside the window, the end of its transfer time when that is later.
pub fn valid_until(manifest: &Manifest, ticket: &StoredTicket) -> u64 {
    let transfer = manifest
        .product(&ticket.product)
        .map_or(0, ticketing_protocol::manifest::Product::transfer_seconds);
    ticket
        .first_shown
        .and_then(|shown| {
            ticketing_protocol::verify::single_valid_until(
                ticket.valid_from,
                ticket.valid_until,
                transfer,
                shown,
            )
        })
        .map_or(ticket.valid_until, |u| u.max(ticket.valid_until))
}

/// A wallet: a client bound to a pinned manifest, a store and a key store.
#[derive(Debug)]
pub struct Wallet<S, K> {
    client: Client,
    store: S,
    keys: K,
}

impl<S: WalletStore, K: HolderKeys> Wallet<S, K> {
    /// Open a wallet on `store`. The first manifest a wallet is opened with is pinned (its
    /// digest stored); a later, different one is refused with `manifest_mismatch` until the
    /// passenger pins it ([`Wallet::pin`]).
    pub async fn open(client: Client, store: S, keys: K) -> Result<Self, ClientError> {
        let digest = client.manifest().digest();
        let pinned = store
            .update(|d| *d.manifest_digest.get_or_insert(digest))
            .await?;
        client.manifest().check_pin(Some(&pinned))?;
        Ok(Self {
            client,
            store,
            keys,
        })
    }

    /// Trust `manifest` from now on (the operator published a new one). Returns the digest
    /// pinned before, if any.
    pub async fn pin(store: &S, manifest: &Manifest) -> Result<Option<Digest32>, ClientError> {
        manifest.validate().map_err(|e| {
            ClientError::Manifest(ticketing_protocol::manifest::ManifestError::Invalid(e))
        })?;
        let digest = manifest.digest();
        store.update(|d| d.manifest_digest.replace(digest)).await
    }

    /// The client (and through it the pinned manifest).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The key store.
    pub fn keys(&self) -> &K {
        &self.keys
    }

    /// Step 1: make `count` holder keys, blind them for `product`'s keyset valid at `now`, and
    /// store the purchase before anything is paid. Returns its digest (its id).
    pub async fn prepare<R: rand_core::CryptoRng>(
        &self,
        product: &str,
        count: u32,
        now: u64,
        rng: &mut R,
    ) -> Result<Digest32, ClientError> {
        if count == 0 {
            return Err(ClientError::BadReceipt(
                "a purchase needs at least 1 ticket".into(),
            ));
        }
        // Checked before any key is made.
        self.client.keyset_on_sale(product, now)?;
        let mut holders = Vec::new();
        let mut keys = Vec::new();
        for _ in 0..count {
            let (public, key) = self.keys.generate(rng).await?;
            holders.push(public);
            keys.push(key);
        }
        let prepared = self.client.prepare(product, &holders, now, rng)?;
        let stored = StoredPurchase {
            prepared,
            pending: None,
            keys,
        };
        let digest = stored.digest();
        self.store.update(|d| d.purchases.push(stored)).await?;
        Ok(digest)
    }

    /// Step 2: pay for the stored purchase `digest`. See [`PayOutcome`]. `Err` only when the
    /// purchase is not in the store or the store fails.
    pub async fn pay(
        &self,
        digest: &Digest32,
        payment: PaymentMethod,
    ) -> Result<PayOutcome, ClientError> {
        let purchase = self.purchase(digest).await?;
        let answer = self.client.checkout(&purchase.prepared, payment).await;
        self.note_clock().await?;
        match answer {
            Ok(pending) => {
                // Paid: the receipt is kept whatever happened to the record meanwhile (another
                // wallet on this store may have judged it never paid and removed it).
                self.store
                    .update(|d| match d.purchase_mut(digest) {
                        Some(p) => p.pending = Some(pending),
                        None => d.purchases.push(StoredPurchase {
                            pending: Some(pending),
                            ..purchase
                        }),
                    })
                    .await?;
                Ok(PayOutcome::Paid)
            }
            Err(ClientError::Refused { body, .. }) if not_charged(body.code) => {
                let removed = self.store.update(|d| d.remove_purchase(digest)).await?;
                for key in removed.iter().flat_map(|p| &p.keys) {
                    // A key that lingers holds nothing of value; the refusal is what counts.
                    let _ = self.keys.forget(key).await;
                }
                Ok(PayOutcome::Refused(body))
            }
            Err(e @ ClientError::NotTaken { .. }) => {
                // Certainly not acted on: nothing was charged; the purchase is forgotten like
                // after a refusal, and buying again starts afresh.
                let removed = self.store.update(|d| d.remove_purchase(digest)).await?;
                for key in removed.iter().flat_map(|p| &p.keys) {
                    let _ = self.keys.forget(key).await;
                }
                Ok(PayOutcome::Refused(ErrorBody::new(
                    ErrorCode::Unavailable,
                    format!("{e}; nothing was charged, try again shortly"),
                )))
            }
            Err(e) => Ok(PayOutcome::Unknown(e)),
        }
    }

    /// Step 3: turn the paid purchase `digest` into tickets (all nodes asked, `progress` told
    /// about each). On success the tickets and any evidence are stored and the purchase removed
    /// in one update; on failure the purchase is kept, ready for another try.
    pub async fn complete(
        &self,
        digest: &Digest32,
        progress: &mut dyn FnMut(NodeEvent),
    ) -> Result<Completed, ClientError> {
        let purchase = self.purchase(digest).await?;
        let Some(pending) = &purchase.pending else {
            return Err(ClientError::BadReceipt(
                "this purchase has no receipt yet".into(),
            ));
        };
        let done = self.client.complete_with(pending, progress).await;
        self.note_clock().await?;
        let done = done?;
        let keyset = self.client.manifest().keyset(&purchase.prepared.keyset_id);
        let (valid_from, valid_until) =
            keyset.map_or((0, 0), |k| (k.params.valid_from, k.params.valid_until));
        let tickets: Vec<StoredTicket> = done
            .tickets
            .iter()
            .zip(&purchase.keys)
            .map(|(ticket, key)| StoredTicket {
                product: purchase.prepared.product.clone(),
                valid_from,
                valid_until,
                ticket: *ticket,
                key: key.clone(),
                first_shown: None,
            })
            .collect();
        let count = tickets.len();
        let blamed_nodes = done.blamed.iter().map(|b| b.node.get()).collect();
        let blamed = done.blamed;
        self.store
            .update(|d| {
                if d.remove_purchase(digest).is_some() {
                    d.tickets.extend(tickets);
                    d.evidence.extend(blamed);
                }
            })
            .await?;
        Ok(Completed {
            product: purchase.prepared.product,
            tickets: count,
            blamed: blamed_nodes,
            failures: done.failures,
        })
    }

    /// [`prepare`](Self::prepare), [`pay`](Self::pay) and, when paid,
    /// [`complete`](Self::complete). Returns the digest and what paying found; the completion's
    /// result when it was reached.
    pub async fn buy<R: rand_core::CryptoRng>(
        &self,
        product: &str,
        count: u32,
        payment: PaymentMethod,
        now: u64,
        rng: &mut R,
        progress: &mut dyn FnMut(NodeEvent),
    ) -> Result<(Digest32, PayOutcome, Option<Result<Completed, ClientError>>), ClientError> {
        let digest = self.prepare(product, count, now, rng).await?;
        let paid = self.pay(&digest, payment).await?;
        let completed = match paid {
            PayOutcome::Paid => Some(self.complete(&digest, progress).await),
            _ => None,
        };
        Ok((digest, paid, completed))
    }

    /// Ask the payments service for the receipt of every kept purchase: it confirms payments
    /// whose answer was lost (or shows they never happened) and renews receipts that expired
    /// while the nodes were away.
    pub async fn recover_receipts(&self) -> Result<Vec<Recovered>, ClientError> {
        let purchases = self.store.load().await?.purchases;
        let mut out = Vec::with_capacity(purchases.len());
        for p in purchases {
            let digest = p.digest();
            let product = p.prepared.product.clone();
            let found = match self.client.find_receipt(&p.prepared).await {
                Ok(Some(pending)) => {
                    self.store
                        .update(|d| {
                            if let Some(p) = d.purchase_mut(&digest) {
                                p.pending = Some(pending);
                            }
                        })
                        .await?;
                    Recovered::Paid { product }
                }
                Ok(None) if p.pending.is_none() => {
                    // Removed only if it is still unpaid now (checked in the update: another
                    // wallet on this store may have stored its receipt meanwhile). Its keys are
                    // kept: a payment racing this check may still bring the purchase back.
                    let removed = self
                        .store
                        .update(|d| {
                            let unpaid =
                                d.purchase_mut(&digest).is_some_and(|q| q.pending.is_none());
                            unpaid && d.remove_purchase(&digest).is_some()
                        })
                        .await?;
                    if removed {
                        Recovered::NeverPaid { product }
                    } else {
                        Recovered::Unchanged
                    }
                }
                Ok(None) => Recovered::Unchanged,
                Err(error) => Recovered::Unknown { product, error },
            };
            out.push(found);
        }
        Ok(out)
    }

    /// Complete every kept purchase that is paid; report each.
    pub async fn complete_all(
        &self,
        progress: &mut dyn FnMut(NodeEvent),
    ) -> Result<Vec<Finished>, ClientError> {
        let purchases = self.store.load().await?.purchases;
        let mut out = Vec::with_capacity(purchases.len());
        for p in purchases {
            let product = p.prepared.product.clone();
            if p.pending.is_none() {
                out.push(Finished::AwaitingPayment { product });
                continue;
            }
            out.push(match self.complete(&p.digest(), progress).await {
                Ok(done) => Finished::Bought(done),
                Err(error @ ClientError::NotEnoughNodes { .. }) => {
                    Finished::NotEnoughNodes { product, error }
                }
                Err(error) => Finished::Failed { product, error },
            });
        }
        Ok(out)
    }

    /// Everything stored.
    pub async fn data(&self) -> Result<WalletData, ClientError> {
        self.store.load().await
    }

    /// The status of every ticket at `now`.
    pub async fn tickets(
        &self,
        now: u64,
    ) -> Result<Vec<(StoredTicket, TicketStatus)>, ClientError> {
        let manifest = self.client.manifest();
        Ok(self
            .store
            .load()
            .await?
            .tickets
            .into_iter()
            .map(|t| {
                let s = status(manifest, &t, now);
                (t, s)
            })
            .collect())
    }

    /// Singles this wallet showed but that were never used: opening a ticket's code is not a
    /// ride. For every single shown long enough ago that its use would be on the
    /// coordinator's public spent list by now, fetch that list (signed; every wallet fetches
    /// the same bytes, so nothing ties a passenger to a serial) and, where the serial is
    /// certainly absent, forget the showing: the ticket is unused again. Returns how many.
    /// A scan made offline and not yet synced is not on the list either; such a ticket shows
    /// as unused until the sync, and the ledger still refuses a second ride.
    pub async fn settle_shown(&self, now: u64) -> Result<usize, ClientError> {
        let manifest = self.client.manifest();
        let due = |t: &StoredTicket| match (
            manifest.product(&t.product).map(|p| p.kind),
            t.first_shown,
        ) {
            (Some(ProductKind::Single { transfer_minutes }), Some(shown)) => {
                let transfer = u64::from(transfer_minutes).saturating_mul(60);
                Some(
                    shown
                        .saturating_add(transfer)
                        .saturating_add(SETTLE_MARGIN_SECONDS),
                )
                .filter(|&listed_by| listed_by <= now)
            }
            _ => None,
        };
        let data = self.data().await?;
        if !data.tickets.iter().any(|t| due(t).is_some()) {
            return Ok(0);
        }
        let coordinator = crate::coordinator::CoordinatorClient::with_http(
            self.client.http().clone(),
            &manifest.coordinator.url,
            None,
        );
        let Some(raw) = coordinator.bloom(None).await? else {
            return Ok(0);
        };
        let mut notes = Vec::new();
        let list = crate::validator::Snapshot::check(raw, manifest, &mut notes).map_err(|e| {
            ClientError::Unavailable {
                service: "coordinator".into(),
                reason: format!("its spent list does not verify ({e}); nothing changed"),
            }
        })?;
        let unused: Vec<_> = data
            .tickets
            .iter()
            .filter(|t| {
                due(t).is_some_and(|listed_by| list.raw.built_at >= listed_by)
                    && list.raw.keysets.contains(&t.ticket.keyset_id)
                    && !list.may_contain(&t.ticket.serial())
            })
            .map(|t| t.ticket.serial())
            .collect();
        if unused.is_empty() {
            return Ok(0);
        }
        self.store
            .update(|d| {
                for t in &mut d.tickets {
                    if unused.contains(&t.ticket.serial()) {
                        t.first_shown = None;
                    }
                }
            })
            .await?;
        Ok(unused.len())
    }

    /// Show ticket number `index` (0-based) for the epoch of `now`: the holder key signs it.
    /// The first showing is recorded (a single is used up some time after it).
    pub async fn present(&self, index: usize, now: u64) -> Result<Presentation, ClientError> {
        let ticket = self.ticket(index).await?;
        let presentation = present(&self.keys, &ticket, self.client.manifest(), now).await?;
        if ticket.first_shown.is_none() {
            let id = ticket.ticket.serial();
            self.store
                .update(|d| {
                    if let Some(t) = d.tickets.iter_mut().find(|t| t.ticket.serial() == id) {
                        t.first_shown.get_or_insert(now);
                    }
                })
                .await?;
        }
        Ok(presentation)
    }

    /// The static code of ticket number `index` (0-based) for paper: signed for
    /// [`PRINTED_EPOCH`], accepted once, as a ride without transfers. Only singles can be
    /// printed (`not_printable`): a pass is ridden many times, and a copy of a code that does
    /// not rotate would ride with it.
    pub async fn print(&self, index: usize) -> Result<Presentation, ClientError> {
        let ticket = self.ticket(index).await?;
        let manifest = self.client.manifest();
        if !matches!(
            manifest.product(&ticket.product).map(|p| p.kind),
            Some(ProductKind::Single { .. })
        ) {
            return Err(ClientError::Refused {
                service: "wallet".into(),
                body: ErrorBody::new(
                    ErrorCode::NotPrintable,
                    format!(
                        "a {} ticket cannot be printed: only singles can (a code on paper \
                         cannot rotate, so it is accepted once)",
                        ticket.product
                    ),
                ),
            });
        }
        sign_epoch(&self.keys, &ticket, PRINTED_EPOCH).await
    }

    /// Ticket number `index` (0-based) as stored.
    async fn ticket(&self, index: usize) -> Result<StoredTicket, ClientError> {
        self.store
            .load()
            .await?
            .tickets
            .get(index)
            .cloned()
            .ok_or_else(|| ClientError::Store(format!("no ticket number {}", index + 1)))
    }

    /// Keep the clock offset the services' last answer measured.
    async fn note_clock(&self) -> Result<(), ClientError> {
        if let Some(m) = self.client.http().clock().get() {
            self.store.update(|d| d.clock = Some(m)).await?;
        }
        Ok(())
    }

    /// Unix seconds by the cluster's clock as far as this wallet knows it: the device's clock
    /// corrected by the offset last measured (by this process, else the one stored).
    pub async fn now(&self) -> Result<u64, ClientError> {
        let measured = match self.client.http().clock().get() {
            Some(m) => Some(m),
            None => self.store.load().await?.clock,
        };
        Ok(crate::clock::cluster_now(measured))
    }

    async fn purchase(&self, digest: &Digest32) -> Result<StoredPurchase, ClientError> {
        self.store
            .load()
            .await?
            .purchases
            .into_iter()
            .find(|p| p.digest() == *digest)
            .ok_or_else(|| ClientError::Store(format!("no purchase {digest}")))
    }
}

/// Sign `ticket` for the epoch of `now` with its holder key (the one implementation of making
/// a presentation; the wallet's own [`Wallet::present`] also records the first showing).
pub async fn present<K: HolderKeys>(
    keys: &K,
    ticket: &StoredTicket,
    manifest: &Manifest,
    now: u64,
) -> Result<Presentation, ClientError> {
    sign_epoch(keys, ticket, epoch_at(now, manifest.rotation_seconds)).await
}

/// The holder key's signature of `ticket` for `epoch`, checked before it is shown.
async fn sign_epoch<K: HolderKeys>(
    keys: &K,
    ticket: &StoredTicket,
    epoch: u32,
) -> Result<Presentation, ClientError> {
    let message = presentation_message(&ticket.ticket.keyset_id, &ticket.ticket.holder, epoch);
    let signature = keys.sign(&ticket.key, &message).await?;
    let presentation = Presentation::from_parts(ticket.ticket, epoch, signature);
    // A key store that signs with the wrong key would make a QR every validator refuses.
    ticket
        .ticket
        .holder
        .verify(&message, &presentation.holder_signature)
        .map_err(|_| ClientError::HolderKey("the holder key signed wrongly".into()))?;
    Ok(presentation)
}
