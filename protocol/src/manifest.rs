//! The public manifest: the trust root of wallets, validators and auditors. Clients should
//! pin its digest.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ticketing_crypto::keyset::{FeldmanCommitments, KeysetId, KeysetParams, PublicKey, ShareIndex};

use crate::keys::VerifyKey;
use crate::{Digest32, ProtocolError};

/// Why a manifest is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// It does not parse or fails [`Manifest::validate`].
    #[error("the manifest is invalid: {0}")]
    Invalid(ProtocolError),
    /// It is valid but not the pinned one (`manifest_mismatch`).
    #[error(
        "the manifest (digest {found}) is not the one pinned (digest {pinned}): \
         the cluster's published manifest changed or this is another cluster"
    )]
    Mismatch {
        /// The digest pinned.
        pinned: Digest32,
        /// The digest of the manifest found.
        found: Digest32,
    },
}

impl ManifestError {
    /// The stable code: `manifest_mismatch` or `malformed`.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            Self::Invalid(_) => crate::ErrorCode::Malformed,
            Self::Mismatch { .. } => crate::ErrorCode::ManifestMismatch,
        }
    }
}

/// Everything a client needs to buy, show, verify and audit tickets.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Increases with every published change (e.g. `ticketing keys extend`).
    pub version: u64,
    /// Number of nodes n.
    pub nodes_total: u16,
    /// Threshold t.
    pub threshold: u16,
    /// Seconds per presentation epoch (default 30).
    pub rotation_seconds: u64,
    /// How far a wallet's or validator's clock may be from the cluster's and still be accepted
    /// (default [`DEFAULT_CLOCK_SKEW_SECONDS`]; not serialized at the default, so manifests
    /// made before the field existed keep their digest).
    #[serde(
        default = "default_clock_skew",
        skip_serializing_if = "is_default_clock_skew"
    )]
    pub clock_skew_seconds: u64,
    /// Issuer nodes.
    pub nodes: Vec<NodeInfo>,
    /// Keysets, past, current and future.
    pub keysets: Vec<KeysetInfo>,
    /// Fare products.
    pub products: Vec<Product>,
    /// The coordinator.
    pub coordinator: ServiceInfo,
    /// The payments service.
    pub payments: ServiceInfo,
}

/// The clock skew every verifier tolerates unless the manifest says otherwise.
pub const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 60;

fn default_clock_skew() -> u64 {
    DEFAULT_CLOCK_SKEW_SECONDS
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if signature
fn is_default_clock_skew(v: &u64) -> bool {
    *v == DEFAULT_CLOCK_SKEW_SECONDS
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if signature
fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// One issuer node.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Share index (x-coordinate), 1..=n.
    pub index: ShareIndex,
    /// Base URL.
    pub url: String,
    /// Ed25519 identity key: signs issue responses and log checkpoints.
    pub identity_key: VerifyKey,
}

/// A service and the key it signs with.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Base URL.
    pub url: String,
    /// Ed25519 key (receipts for payments, snapshots for the coordinator).
    pub key: VerifyKey,
}

/// How a product is used at the gate.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ProductKind {
    /// Spent at the first accepted scan, optionally valid for a transfer window after it.
    Single {
        /// Minutes the ticket stays valid after its first scan (0: none).
        transfer_minutes: u32,
    },
    /// Valid for any number of scans inside its keyset window; each (serial, epoch) once.
    Pass,
}

/// A fare product.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Name, e.g. `single`, `day`.
    pub name: String,
    /// How it is used.
    #[serde(flatten)]
    pub kind: ProductKind,
    /// Price in minor units (cents).
    pub price: u64,
    /// ISO 4217 code.
    pub currency: String,
    /// A window is sold while at least this many minutes of it remain; after that the next
    /// window is sold ([`Manifest::on_sale`]). 0 (the default, not serialized): until its end.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_remaining_minutes: u32,
}

impl Product {
    /// [`Product::min_remaining_minutes`] in seconds.
    pub fn min_remaining_seconds(&self) -> u64 {
        u64::from(self.min_remaining_minutes) * 60
    }

    /// For singles, the transfer time in seconds (0 for passes).
    pub fn transfer_seconds(&self) -> u64 {
        match self.kind {
            ProductKind::Single { transfer_minutes } => u64::from(transfer_minutes) * 60,
            ProductKind::Pass => 0,
        }
    }
}

/// A keyset's public data.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysetInfo {
    /// Keyset id (derived from the key and parameters; checked by [`KeysetInfo::check_id`]).
    pub id: KeysetId,
    /// Product and validity window.
    #[serde(flatten)]
    pub params: KeysetParams,
    /// Group public key PK.
    pub public_key: PublicKey,
    /// PK_i for every node, in index order.
    pub public_key_shares: Vec<PublicKeyShareInfo>,
    /// The dealer's Feldman commitments `C_0 = PK, C_1, .., C_{t-1}`: anyone can check that
    /// every PK_i lies on the same degree t-1 polynomial ([`KeysetInfo::check_commitments`]).
    pub commitments: Vec<PublicKey>,
}

/// A node's public key share of one keyset.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyShareInfo {
    /// Node index.
    pub index: ShareIndex,
    /// PK_i.
    pub public_key: PublicKey,
}

impl KeysetInfo {
    /// Whether the id matches the key and parameters.
    pub fn check_id(&self) -> bool {
        KeysetId::derive(&self.public_key, &self.params) == self.id
    }

    /// Check the commitments: t of them, `C_0 == PK`, and every listed PK_i equal to
    /// `sum_k C_k * i^k`. A manifest failing this has shares that do not combine to PK.
    pub fn check_commitments(&self, threshold: u16) -> Result<(), ProtocolError> {
        let bad = |reason: &str| ProtocolError::Malformed {
            what: "keyset commitments",
            reason: format!("keyset {}: {reason}", self.id),
        };
        if self.commitments.len() != usize::from(threshold) {
            return Err(bad("there must be exactly t commitments"));
        }
        if self.commitments.first() != Some(&self.public_key) {
            return Err(bad("the first commitment is not the keyset key"));
        }
        let points: Vec<_> = self.commitments.iter().map(PublicKey::to_bytes).collect();
        let commitments = FeldmanCommitments::from_bytes(&points)?;
        for share in &self.public_key_shares {
            if commitments.public_key_share(share.index) != share.public_key {
                return Err(bad(&format!(
                    "PK_{} does not match the commitments",
                    share.index
                )));
            }
        }
        Ok(())
    }

    /// PK_i of node `index`.
    pub fn public_key_share(&self, index: ShareIndex) -> Option<&PublicKey> {
        self.public_key_shares
            .iter()
            .find(|s| s.index == index)
            .map(|s| &s.public_key)
    }

    /// Whether `unix_seconds` falls inside the validity window.
    pub fn is_valid_at(&self, unix_seconds: u64) -> bool {
        self.params.valid_from <= unix_seconds && unix_seconds < self.params.valid_until
    }
}

impl Manifest {
    /// SHA-256 over the tag and the manifest's JSON. The JSON is produced from the typed value
    /// (fixed field order, no whitespace), so parsing and re-serializing gives the same digest.
    pub fn digest(&self) -> Digest32 {
        let mut h = Sha256::new();
        h.update(crate::domain::MANIFEST);
        // Serializing plain structs of strings and numbers cannot fail.
        h.update(serde_json::to_vec(self).unwrap_or_default());
        Digest32(h.finalize().into())
    }

    /// The checks every reader of a manifest runs before trusting it: the threshold fits the
    /// nodes, each node index appears once, every keyset id matches its key and window, and
    /// every PK_i matches the published Feldman commitments (`C_0 = PK`), so any t partials
    /// combine under PK. Products of keysets must be listed.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let bad = |reason: String| ProtocolError::Malformed {
            what: "manifest",
            reason,
        };
        if self.threshold == 0 || self.threshold > self.nodes_total {
            return Err(bad(format!(
                "threshold {} does not fit {} nodes",
                self.threshold, self.nodes_total
            )));
        }
        if self.nodes.len() != usize::from(self.nodes_total) {
            return Err(bad(format!(
                "{} nodes listed, nodes_total is {}",
                self.nodes.len(),
                self.nodes_total
            )));
        }
        let mut indices: Vec<_> = self.nodes.iter().map(|n| n.index).collect();
        indices.sort_unstable();
        indices.dedup();
        if indices.len() != self.nodes.len() {
            return Err(bad("a node index is listed twice".into()));
        }
        for k in &self.keysets {
            if !k.check_id() {
                return Err(bad(format!(
                    "keyset {} does not match its key and window",
                    k.id
                )));
            }
            k.check_commitments(self.threshold)?;
            if self.product(&k.params.product).is_none() {
                return Err(bad(format!(
                    "keyset {} is of product `{}`, which is not listed",
                    k.id, k.params.product
                )));
            }
        }
        Ok(())
    }

    /// Parse a manifest and check it against a pinned digest when one is given: another
    /// manifest is refused with [`ManifestError::Mismatch`]. Without a pin it is
    /// [`validate`](Self::validate)d. With a matching pin the commitment checks are not run
    /// again: a digest is only pinned for a manifest that passed them (on this device, or by
    /// the operator whose code carried the digest), and they cost seconds in a phone's wasm
    /// (every PK_i against the commitments, for every keyset). Parsing still checks every point.
    pub fn parse_pinned(bytes: &[u8], pinned: Option<&Digest32>) -> Result<Self, ManifestError> {
        let manifest: Self = serde_json::from_slice(bytes).map_err(|e| {
            ManifestError::Invalid(ProtocolError::Malformed {
                what: "manifest",
                reason: e.to_string(),
            })
        })?;
        match pinned {
            Some(_) => manifest.check_pin(pinned)?,
            None => manifest.validate().map_err(ManifestError::Invalid)?,
        }
        Ok(manifest)
    }

    /// `Ok` when no digest is pinned or the digest is this manifest's.
    pub fn check_pin(&self, pinned: Option<&Digest32>) -> Result<(), ManifestError> {
        match pinned {
            Some(p) if *p != self.digest() => Err(ManifestError::Mismatch {
                pinned: *p,
                found: self.digest(),
            }),
            _ => Ok(()),
        }
    }

    /// A keyset by id.
    pub fn keyset(&self, id: &KeysetId) -> Option<&KeysetInfo> {
        self.keysets.iter().find(|k| &k.id == id)
    }

    /// A product by name.
    pub fn product(&self, name: &str) -> Option<&Product> {
        self.products.iter().find(|p| p.name == name)
    }

    /// The product names, for messages about an unknown one: `single, day, week`.
    pub fn product_names(&self) -> String {
        self.products
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The keyset of `product` on sale at `now`: the one whose window holds
    /// `now + min_remaining` (so a window with less than the product's minimum left is no
    /// longer sold and the next one is, ahead of its start). `None` when that window's keyset
    /// is not published (yet). The wallet picks with it; the payments service refuses any
    /// other keyset; nodes check it at the receipt's `issued_at`.
    pub fn on_sale(&self, product: &str, now: u64) -> Option<&KeysetInfo> {
        let p = self.product(product)?;
        let at = now.saturating_add(p.min_remaining_seconds());
        self.keysets
            .iter()
            .filter(|k| k.params.product == product && k.is_valid_at(at))
            .min_by_key(|k| k.params.valid_until)
    }

    /// Whether `keyset` may be sold at `now` ([`Manifest::on_sale`]'s rule for one keyset).
    pub fn sellable(&self, keyset: &KeysetInfo, now: u64) -> bool {
        self.product(&keyset.params.product).is_some_and(|p| {
            keyset.is_valid_at(now.saturating_add(p.min_remaining_seconds()))
                && now < keyset.params.valid_until
        })
    }
}
