//! The coordinator's signed Bloom filter and deny list.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ticketing_crypto::keyset::KeysetId;
use ticketing_crypto::ticket::Serial;

use crate::keys::{Sig, SignKey, VerifyKey};
use crate::{ProtocolError, domain, put_bytes};

/// A versioned, signed snapshot of spent and denied serials of still-valid keysets.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
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

/// Most hash functions a decoded filter may ask for (optimal k for any sane rate is < 30).
const MAX_HASHES: u32 = 64;

/// A Bloom filter over serials (bloomfilter crate, SipHash with a per-build seed).
pub struct SerialFilter(bloomfilter::Bloom<[u8]>);

impl std::fmt::Debug for SerialFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialFilter")
            .field("bits", &self.0.len())
            .field("hashes", &self.0.number_of_hash_functions())
            .finish()
    }
}

impl SerialFilter {
    /// Build a filter holding `serials`, sized for `max(capacity, serials.len())` items at
    /// false-positive rate `fp_rate` (in (0, 1); checked by the configuration).
    pub fn build<'a>(
        serials: impl ExactSizeIterator<Item = &'a Serial>,
        capacity: usize,
        fp_rate: f64,
        seed: &[u8; 32],
    ) -> Result<Self, ProtocolError> {
        let bad = |reason: &str| ProtocolError::Malformed {
            what: "bloom parameters",
            reason: reason.to_owned(),
        };
        if !(fp_rate > 0.0 && fp_rate < 1.0) {
            return Err(bad("the false-positive rate must be in (0, 1)"));
        }
        let items = capacity.max(serials.len()).max(1);
        let mut bloom =
            bloomfilter::Bloom::new_for_fp_rate_with_seed(items, fp_rate, seed).map_err(bad)?;
        for s in serials {
            bloom.set(s.0.as_slice());
        }
        Ok(Self(bloom))
    }

    /// Whether `serial` may be in the set (false positives at the configured rate, no false
    /// negatives).
    pub fn contains(&self, serial: &Serial) -> bool {
        self.0.check(serial.0.as_slice())
    }

    /// Base64 of the crate's serialization, as carried in [`BloomSnapshot::filter`].
    pub fn to_base64(&self) -> String {
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            self.0.as_slice(),
        )
    }

    /// Decode [`BloomSnapshot::filter`], refusing shapes the crate would misbehave on.
    pub fn from_base64(text: &str) -> Result<Self, ProtocolError> {
        let bad = |reason: &str| ProtocolError::Malformed {
            what: "bloom filter",
            reason: reason.to_owned(),
        };
        let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text)
            .map_err(|_| bad("not base64"))?;
        let bloom = bloomfilter::Bloom::from_slice(&bytes).map_err(bad)?;
        // Not `is_empty()`: the crate means "no bit set" by it (a filter of nothing spent).
        #[allow(clippy::len_zero)]
        if bloom.len() == 0 {
            return Err(bad("empty bitmap"));
        }
        if bloom.number_of_hash_functions() > MAX_HASHES {
            return Err(bad("too many hash functions"));
        }
        Ok(Self(bloom))
    }

    /// Size of the bitmap in bits.
    pub fn bits(&self) -> u64 {
        self.0.len()
    }
}

impl BloomSnapshot {
    /// The decoded filter (call [`Self::verify`] first).
    pub fn decode_filter(&self) -> Result<SerialFilter, ProtocolError> {
        SerialFilter::from_base64(&self.filter)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

    use super::*;

    #[test]
    fn filters_round_trip_empty_or_not() {
        let none: Vec<Serial> = Vec::new();
        let empty = SerialFilter::build(none.iter(), 1000, 0.001, &[1; 32]).unwrap();
        let decoded = SerialFilter::from_base64(&empty.to_base64()).unwrap();
        assert!(!decoded.contains(&Serial([5; 32])));

        let some: Vec<Serial> = (0..100u8).map(|i| Serial([i; 32])).collect();
        let full = SerialFilter::build(some.iter(), 10, 0.001, &[2; 32]).unwrap();
        let decoded = SerialFilter::from_base64(&full.to_base64()).unwrap();
        assert!(some.iter().all(|s| decoded.contains(s)));
        // Sized for the 100 items, not the configured 10.
        let misses = (100..=255u8)
            .filter(|i| decoded.contains(&Serial([*i; 32])))
            .count();
        assert!(misses < 5, "{misses} false positives of 156");
    }

    #[test]
    fn bad_filters_are_refused() {
        assert!(SerialFilter::from_base64("not base64!").is_err());
        assert!(SerialFilter::from_base64("").is_err());
        assert!(SerialFilter::from_base64("AAAA").is_err());
    }
}
