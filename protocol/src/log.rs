//! A node's issuance log as served to auditors: hash-chained entries, signed checkpoints.
//!
//! `hash_n = SHA-256(tag || seq || time || receipt || prev_hash)`, `prev_hash` of the first
//! entry is all zeros. A checkpoint signs `(node, seq, head_hash, time)` with the node's
//! identity key; a later checkpoint must extend an earlier one (same hashes up to its seq).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ticketing_crypto::keyset::{KeysetId, PublicKey, ShareIndex};

use crate::keys::{Sig, SignKey, VerifyKey};
use crate::receipt::SignedReceipt;
use crate::{Digest32, ProtocolError, put_bytes};

/// Domain tag of entry hashes.
pub const ENTRY_TAG: &[u8] = b"ticketing/v1/log-entry";
/// Domain tag of checkpoints.
pub const CHECKPOINT_TAG: &[u8] = b"ticketing/v1/log-checkpoint";
/// `prev_hash` of the first entry.
pub const GENESIS: Digest32 = Digest32([0; 32]);

/// One signing: which receipt the node honoured, chained to the entry before.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// 1, 2, 3, ... without gaps.
    pub seq: u64,
    /// Unix seconds when the node signed.
    pub time: u64,
    /// The receipt, with the payments signature, so auditors can check it.
    pub receipt: SignedReceipt,
    /// Hash of the previous entry ([`GENESIS`] for seq 1).
    pub prev_hash: Digest32,
    /// This entry's hash.
    pub hash: Digest32,
}

impl LogEntry {
    /// Build an entry with its hash.
    pub fn new(seq: u64, time: u64, receipt: SignedReceipt, prev_hash: Digest32) -> Self {
        let hash = Self::compute_hash(seq, time, &receipt, &prev_hash);
        Self {
            seq,
            time,
            receipt,
            prev_hash,
            hash,
        }
    }

    /// The chained hash of an entry's contents.
    pub fn compute_hash(
        seq: u64,
        time: u64,
        receipt: &SignedReceipt,
        prev_hash: &Digest32,
    ) -> Digest32 {
        let mut h = Sha256::new();
        h.update(ENTRY_TAG);
        h.update(seq.to_be_bytes());
        h.update(time.to_be_bytes());
        let mut r = Vec::new();
        put_bytes(&mut r, &receipt.receipt.signing_bytes());
        h.update(r);
        h.update(receipt.signature.0);
        h.update(prev_hash.0);
        Digest32(h.finalize().into())
    }

    /// Whether the stored hash matches the contents.
    pub fn hash_is_valid(&self) -> bool {
        Self::compute_hash(self.seq, self.time, &self.receipt, &self.prev_hash) == self.hash
    }
}

/// A node's signed statement of its log head.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The node.
    pub node: ShareIndex,
    /// Number of entries covered.
    pub seq: u64,
    /// Hash of entry `seq` ([`GENESIS`] when empty).
    pub head_hash: Digest32,
    /// Unix seconds.
    pub time: u64,
    /// Ed25519 signature by the node identity key.
    pub signature: Sig,
}

impl Checkpoint {
    /// An unsigned checkpoint (sign it with [`Checkpoint::sign`] or a signatory).
    pub fn unsigned(node: ShareIndex, seq: u64, head_hash: Digest32, time: u64) -> Self {
        Self {
            node,
            seq,
            head_hash,
            time,
            signature: Sig([0; 64]),
        }
    }

    /// The bytes the identity key signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(80);
        out.extend_from_slice(CHECKPOINT_TAG);
        out.extend_from_slice(&self.node.get().to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.head_hash.0);
        out.extend_from_slice(&self.time.to_be_bytes());
        out
    }

    /// Sign with the node's identity key.
    pub fn sign(mut self, key: &SignKey) -> Self {
        self.signature = key.sign(&self.signing_bytes());
        self
    }

    /// Check the signature under the node's identity key.
    pub fn verify(&self, identity_key: &VerifyKey) -> Result<(), ProtocolError> {
        identity_key.verify("checkpoint", &self.signing_bytes(), &self.signature)
    }
}

/// `GET /v1/log?after=SEQ&limit=N` answer.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPage {
    /// Entries with `seq > after`, ascending, at most `limit`.
    pub entries: Vec<LogEntry>,
    /// A fresh checkpoint of the current head.
    pub checkpoint: Checkpoint,
}

/// `GET /v1/info` on a node.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's index.
    pub index: ShareIndex,
    /// Its identity key.
    pub identity_key: VerifyKey,
    /// Digest of the manifest it serves under.
    pub manifest_digest: Digest32,
    /// PK_i per keyset it holds.
    pub keysets: Vec<NodeKeyset>,
}

/// One keyset a node holds.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeKeyset {
    /// Keyset id.
    pub id: KeysetId,
    /// This node's PK_i.
    pub public_key_share: PublicKey,
}
