//! The public manifest: the trust root of wallets, validators and auditors. Clients should
//! pin its digest.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ticketing_crypto::keyset::{FeldmanCommitments, KeysetId, KeysetParams, PublicKey, ShareIndex};

use crate::keys::VerifyKey;
use crate::{Digest32, ProtocolError};

/// Everything a client needs to buy, show, verify and audit tickets.
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

/// One issuer node.
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Base URL.
    pub url: String,
    /// Ed25519 key (receipts for payments, snapshots for the coordinator).
    pub key: VerifyKey,
}

/// How a product is used at the gate.
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
}

/// A keyset's public data.
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

    /// A keyset by id.
    pub fn keyset(&self, id: &KeysetId) -> Option<&KeysetInfo> {
        self.keysets.iter().find(|k| &k.id == id)
    }

    /// A product by name.
    pub fn product(&self, name: &str) -> Option<&Product> {
        self.products.iter().find(|p| p.name == name)
    }
}
