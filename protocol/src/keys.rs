//! Ed25519 keys and signatures as they appear on the wire (identity keys of nodes, the
//! payments receipt key, the coordinator publication key).

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::ProtocolError;

/// An Ed25519 public key, hex on the wire, checked to be a curve point when parsed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifyKey(VerifyingKey);

impl VerifyKey {
    /// Decode 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let arr: &[u8; 32] = bytes.try_into().map_err(|_| ProtocolError::Malformed {
            what: "ed25519 public key",
            reason: format!("expected 32 bytes, got {}", bytes.len()),
        })?;
        VerifyingKey::from_bytes(arr)
            .map(Self)
            .map_err(|_| ProtocolError::Malformed {
                what: "ed25519 public key",
                reason: "not a curve point".to_owned(),
            })
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Strict verification (no malleable or small-order forms).
    pub fn verify(
        &self,
        what: &'static str,
        message: &[u8],
        signature: &Sig,
    ) -> Result<(), ProtocolError> {
        self.0
            .verify_strict(message, &ed25519_dalek::Signature::from_bytes(&signature.0))
            .map_err(|_| ProtocolError::InvalidSignature(what))
    }
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyKey({})", hex::encode(self.as_bytes()))
    }
}

impl Serialize for VerifyKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.as_bytes()))
    }
}

impl<'de> Deserialize<'de> for VerifyKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let bytes = hex::decode(s.as_ref()).map_err(serde::de::Error::custom)?;
        Self::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// An Ed25519 signature, hex on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sig(#[serde(with = "hex::serde")] pub [u8; 64]);

#[cfg(feature = "openapi")]
ticketing_crypto::hex_schema!(Sig, "Ed25519Signature", 64, "An Ed25519 signature.");
#[cfg(feature = "openapi")]
ticketing_crypto::hex_schema!(VerifyKey, "Ed25519PublicKey", 32, "An Ed25519 public key.");

impl fmt::Debug for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sig({})", hex::encode(self.0))
    }
}

/// An Ed25519 signing key held by a service (receipt key, node identity, publication key).
/// Redacted in Debug, zeroized on drop (by dalek).
#[derive(Clone)]
pub struct SignKey(SigningKey);

impl SignKey {
    /// A fresh key.
    pub fn generate(rng: &mut impl rand_core::CryptoRng) -> Self {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self(SigningKey::from_bytes(&seed))
    }

    /// From the 32-byte seed (a service's secret file).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let arr: &[u8; 32] = bytes.try_into().map_err(|_| ProtocolError::Malformed {
            what: "ed25519 secret key",
            reason: format!("expected 32 bytes, got {}", bytes.len()),
        })?;
        Ok(Self(SigningKey::from_bytes(arr)))
    }

    /// The seed, for writing the secret file (0600).
    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.0.to_bytes())
    }

    /// The public half.
    pub fn verify_key(&self) -> VerifyKey {
        VerifyKey(self.0.verifying_key())
    }

    /// Sign a message.
    pub fn sign(&self, message: &[u8]) -> Sig {
        Sig(self.0.sign(message).to_bytes())
    }
}

impl fmt::Debug for SignKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignKey({:?}, <redacted>)", self.verify_key())
    }
}
