//! The coordinator's signed Bloom filter and deny list.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ticketing_crypto::keyset::KeysetId;
use ticketing_crypto::ticket::Serial;

use crate::keys::{Sig, SignKey, VerifyKey};
use crate::{ProtocolError, domain, put_bytes};

/// A versioned, signed snapshot of spent and denied serials of still-valid keysets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BloomSnapshot {
    /// Increases with every rebuild; served as the ETag.
    pub version: u64,
    /// Unix seconds.
    pub built_at: u64,
    /// Keysets whose serials the filter covers.
    pub keysets: Vec<KeysetId>,
    /// The filter's own serialization (bloomfilter crate), base64.
    pub filter: String,
    /// Serials denied outright (conflicts, revocations): exact, no false positives.
    pub deny: Vec<Serial>,
    /// Ed25519 signature of the coordinator publication key over [`Self::signing_bytes`].
    pub signature: Sig,
}

impl BloomSnapshot {
    /// The bytes the publication key signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(domain::SNAPSHOT);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.built_at.to_be_bytes());
        out.extend_from_slice(
            &u32::try_from(self.keysets.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        for k in &self.keysets {
            out.extend_from_slice(&k.0);
        }
        put_bytes(&mut out, &Sha256::digest(self.filter.as_bytes()));
        out.extend_from_slice(
            &u32::try_from(self.deny.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        for s in &self.deny {
            out.extend_from_slice(&s.0);
        }
        out
    }

    /// Sign (coordinator).
    pub fn sign(mut self, key: &SignKey) -> Self {
        self.signature = key.sign(&self.signing_bytes());
        self
    }

    /// Verify under the manifest's coordinator key (validators).
    pub fn verify(&self, key: &VerifyKey) -> Result<(), ProtocolError> {
        key.verify("bloom snapshot", &self.signing_bytes(), &self.signature)
    }
}
