//! A ticket: keyset id, the holder's Ed25519 public key, and the BLS signature binding them.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::issuance::{self, Signature};
use crate::keyset::{KeysetId, PublicKey};
use crate::{CryptoError, domain};

/// A ticket's holder public key (Ed25519), decoded and checked to be a curve point.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HolderPublicKey(VerifyingKey);

impl HolderPublicKey {
    /// Size of the encoding.
    pub const LEN: usize = 32;

    /// Decode 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: &[u8; 32] = bytes
            .try_into()
            .map_err(|_| CryptoError::length("holder public key", Self::LEN, bytes.len()))?;
        let bad = |reason| CryptoError::Malformed {
            what: "holder public key",
            reason,
        };
        let key = VerifyingKey::from_bytes(arr).map_err(|_| bad("not an Ed25519 point"))?;
        // Decompression accepts y >= p and the sign bit set on x = 0: another encoding of a
        // point with a canonical one. Only the canonical encoding is a holder key, so every
        // verifier (and the serial, a hash of these bytes) sees one form per key.
        if key.to_edwards().compress().as_bytes() != arr {
            return Err(bad("not the canonical encoding of its point"));
        }
        if key.is_weak() {
            return Err(bad("a point of small order"));
        }
        Ok(Self(key))
    }

    /// The 32-byte encoding.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Verify a holder signature (strict: no malleable or small-order forms).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> Result<(), CryptoError> {
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        self.0
            .verify_strict(message, &sig)
            .map_err(|_| CryptoError::InvalidHolderSignature)
    }
}

impl fmt::Debug for HolderPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HolderPublicKey({})", hex::encode(self.as_bytes()))
    }
}

impl Serialize for HolderPublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.as_bytes()))
    }
}

impl<'de> Deserialize<'de> for HolderPublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let bytes = hex::decode(s.as_ref()).map_err(serde::de::Error::custom)?;
        Self::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// The holder's Ed25519 secret for one ticket (the CLI wallet's; the browser keeps a
/// non-extractable WebCrypto key instead). Redacted in Debug, zeroized on drop by dalek.
#[derive(Clone)]
pub struct HolderSecret(SigningKey);

impl HolderSecret {
    /// A fresh random holder key.
    pub fn generate(rng: &mut impl rand_core::CryptoRng) -> Self {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self(SigningKey::from_bytes(&seed))
    }

    /// From the 32-byte seed.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: &[u8; 32] = bytes
            .try_into()
            .map_err(|_| CryptoError::length("holder secret", 32, bytes.len()))?;
        Ok(Self(SigningKey::from_bytes(arr)))
    }

    /// The 32-byte seed, for the wallet's 0600 file.
    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.0.to_bytes())
    }

    /// The public half.
    pub fn public_key(&self) -> HolderPublicKey {
        HolderPublicKey(self.0.verifying_key())
    }

    /// Sign a message.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

impl fmt::Debug for HolderSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HolderSecret(<redacted>)")
    }
}

/// The ledger key of a ticket: SHA-256(tag || keyset_id || holder_public_key). Never logged
/// next to anything about a person.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Serial(#[serde(with = "hex::serde")] pub [u8; 32]);

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}

/// The public part of a ticket. The holder secret stays in the wallet.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// Which keyset (product and window) signed it.
    pub keyset_id: KeysetId,
    /// The holder key the signature binds.
    pub holder: HolderPublicKey,
    /// BLS signature on the ticket message.
    pub signature: Signature,
}

impl Ticket {
    /// The ledger key.
    pub fn serial(&self) -> Serial {
        serial(&self.keyset_id, &self.holder)
    }

    /// Check the BLS signature under the keyset's group key.
    pub fn verify(&self, public_key: &PublicKey) -> Result<(), CryptoError> {
        issuance::verify(public_key, &self.keyset_id, &self.holder, &self.signature)
    }
}

/// SHA-256(tag || keyset_id || holder_public_key).
pub fn serial(keyset_id: &KeysetId, holder: &HolderPublicKey) -> Serial {
    let mut h = Sha256::new();
    h.update(domain::SERIAL);
    h.update(keyset_id.0);
    h.update(holder.as_bytes());
    Serial(h.finalize().into())
}
