//! The coordinator's signed Bloom filter and deny list.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ticketing_crypto::keyset::KeysetId;
use ticketing_crypto::ticket::Serial;

use crate::keys::{Sig, SignKey, VerifyKey};
use crate::{ProtocolError, domain, put_bytes};

mod delta;
pub use delta::{BloomDelta, DELTA_MAGIC};

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
    /// The filter's own serialization (bloomfilter crate); base64 in JSON.
    #[serde(with = "base64_bytes")]
    #[cfg_attr(feature = "openapi", schemars(with = "String"))]
    pub filter: Vec<u8>,
    /// Serials denied outright (conflicts, revocations): exact, no false positives.
    pub deny: Vec<Serial>,
    /// Ed25519 signature of the coordinator publication key over [`Self::signing_bytes`].
    pub signature: Sig,
}

/// The filter's bytes as base64 in JSON (stored snapshots and the JSON form of `/v1/bloom`).
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// First bytes of the binary form of a snapshot (`application/octet-stream`).
const SNAPSHOT_MAGIC: &[u8; 8] = b"TKSNAP1\0";

impl BloomSnapshot {
    /// The bytes the publication key signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        self.signing_bytes_with(domain::SNAPSHOT, &Sha256::digest(&self.filter))
    }

    /// What a snapshot signed before the binary form signed: the hash of the base64 text.
    fn legacy_signing_bytes(&self) -> Vec<u8> {
        let text = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &self.filter);
        self.signing_bytes_with(domain::SNAPSHOT_V1, &Sha256::digest(text.as_bytes()))
    }

    fn signing_bytes_with(&self, domain: &[u8], filter_digest: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(domain);
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
        put_bytes(&mut out, filter_digest);
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

    /// Verify under the manifest's coordinator key (validators). A snapshot signed the way
    /// coordinators signed before the binary form (cached by a validator across an upgrade)
    /// verifies too: same content, an older encoding of what was signed.
    pub fn verify(&self, key: &VerifyKey) -> Result<(), ProtocolError> {
        key.verify("bloom snapshot", &self.signing_bytes(), &self.signature)
            .or_else(|e| {
                key.verify(
                    "bloom snapshot",
                    &self.legacy_signing_bytes(),
                    &self.signature,
                )
                .map_err(|_| e)
            })
    }

    /// The binary form served as `application/octet-stream`: magic, version, build time,
    /// keysets, the filter's bytes, the deny list and the signature, integers big-endian and
    /// lists prefixed with their length (u32). 1M serials at 0.1 % are 1.8 MB of filter.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + self.filter.len() + 32 * self.deny.len());
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.built_at.to_be_bytes());
        put_len(&mut out, self.keysets.len());
        for k in &self.keysets {
            out.extend_from_slice(&k.0);
        }
        put_bytes(&mut out, &self.filter);
        put_len(&mut out, self.deny.len());
        for s in &self.deny {
            out.extend_from_slice(&s.0);
        }
        out.extend_from_slice(&self.signature.0);
        out
    }

    /// Decode [`Self::to_bytes`]; every length is checked against what is left, and trailing
    /// bytes are refused. (The signature is checked by [`Self::verify`].)
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader(bytes);
        if r.take(SNAPSHOT_MAGIC.len())? != SNAPSHOT_MAGIC {
            return Err(malformed("not a snapshot (magic)"));
        }
        let version = r.u64()?;
        let built_at = r.u64()?;
        let keysets = r
            .list(8)?
            .map(|b| b.try_into().map(KeysetId))
            .collect::<Result<_, _>>()
            .map_err(|_| malformed("keyset id"))?;
        let n = r.u32()? as usize;
        let filter = r.take(n)?.to_vec();
        let deny = r
            .list(32)?
            .map(|b| b.try_into().map(Serial))
            .collect::<Result<_, _>>()
            .map_err(|_| malformed("serial"))?;
        let signature = Sig(r.take(64)?.try_into().map_err(|_| malformed("signature"))?);
        if !r.0.is_empty() {
            return Err(malformed("trailing bytes"));
        }
        Ok(Self {
            version,
            built_at,
            keysets,
            filter,
            deny,
            signature,
        })
    }
}

fn malformed(reason: &str) -> ProtocolError {
    ProtocolError::Malformed {
        what: "bloom snapshot",
        reason: reason.to_owned(),
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

/// A cursor over untrusted bytes: every read checks what is left.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if n > self.0.len() {
            return Err(malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        let b: [u8; 4] = self
            .take(4)?
            .try_into()
            .map_err(|_| malformed("truncated"))?;
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, ProtocolError> {
        let b: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| malformed("truncated"))?;
        Ok(u64::from_be_bytes(b))
    }

    /// A length-prefixed list of `size`-byte items.
    fn list(&mut self, size: usize) -> Result<impl Iterator<Item = &'a [u8]>, ProtocolError> {
        let n = self.u32()? as usize;
        let all = self.take(n.checked_mul(size).ok_or_else(|| malformed("length"))?)?;
        Ok(all.chunks_exact(size))
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
    /// false-positive rate `fp_rate` (in (0, 1); checked by the configuration), hashing with
    /// `seed` (random: its two halves key the two hash functions).
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
        // The crate keys its two hash functions with the seed's halves: equal halves make
        // every probe a multiple of one hash (a 0.1 % filter answered 2.3 % in a test).
        if seed[..16] == seed[16..] {
            return Err(bad("the seed's halves must differ"));
        }
        let items = capacity.max(serials.len()).max(1);
        let mut bloom =
            bloomfilter::Bloom::new_for_fp_rate_with_seed(items, fp_rate, seed).map_err(bad)?;
        for s in serials {
            bloom.set(s.0.as_slice());
        }
        Ok(Self(bloom))
    }

    /// Add `serial` (between full rebuilds the coordinator only ever adds).
    pub fn insert(&mut self, serial: &Serial) {
        self.0.set(serial.0.as_slice());
    }

    /// The false-positive rate at its present fill, (bits set / bits)^k: it passes the
    /// configured rate once the filter holds more than it was sized for.
    pub fn fp_rate_now(&self) -> f64 {
        let set: u64 = self
            .0
            .as_slice()
            .iter()
            .map(|b| u64::from(b.count_ones()))
            .sum();
        // The crate's header is a few bytes of the slice: an overestimate by a hair.
        let share = (set as f64 / self.0.len() as f64).min(1.0);
        share.powi(i32::try_from(self.0.number_of_hash_functions()).unwrap_or(i32::MAX))
    }

    /// Whether `serial` may be in the set (false positives at the configured rate, no false
    /// negatives).
    pub fn contains(&self, serial: &Serial) -> bool {
        self.0.check(serial.0.as_slice())
    }

    /// The crate's serialization, as carried in [`BloomSnapshot::filter`].
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.as_slice().to_vec()
    }

    /// Decode [`BloomSnapshot::filter`], refusing shapes the crate would misbehave on.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let bad = |reason: &str| ProtocolError::Malformed {
            what: "bloom filter",
            reason: reason.to_owned(),
        };
        let bloom = bloomfilter::Bloom::from_slice(bytes).map_err(bad)?;
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
        SerialFilter::from_bytes(&self.filter)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

    use super::*;

    /// A seed with distinct halves (as a random one has).
    pub(crate) fn seed(n: u8) -> [u8; 32] {
        std::array::from_fn(|i| u8::try_from(i).unwrap().wrapping_mul(37).wrapping_add(n))
    }

    #[test]
    fn filters_round_trip_empty_or_not() {
        let none: Vec<Serial> = Vec::new();
        let empty = SerialFilter::build(none.iter(), 1000, 0.001, &seed(1)).unwrap();
        let decoded = SerialFilter::from_bytes(&empty.to_bytes()).unwrap();
        assert!(!decoded.contains(&Serial([5; 32])));

        let some: Vec<Serial> = (0..100u8).map(|i| Serial([i; 32])).collect();
        let full = SerialFilter::build(some.iter(), 10, 0.001, &seed(2)).unwrap();
        let decoded = SerialFilter::from_bytes(&full.to_bytes()).unwrap();
        assert!(some.iter().all(|s| decoded.contains(s)));
        // Sized for the 100 items, not the configured 10.
        let misses = (100..=255u8)
            .filter(|i| decoded.contains(&Serial([*i; 32])))
            .count();
        assert!(misses < 3, "{misses} false positives of 156");
    }

    #[test]
    fn a_filter_grows_by_insertion_and_knows_when_it_is_full() {
        let none: Vec<Serial> = Vec::new();
        let mut f = SerialFilter::build(none.iter(), 10_000, 0.001, &seed(1)).unwrap();
        assert!(f.fp_rate_now() < 1e-9);
        let serial = |i: u32| {
            let mut s = [0u8; 32];
            s[..4].copy_from_slice(&i.to_be_bytes());
            Serial(s)
        };
        for i in 0..9_000 {
            f.insert(&serial(i));
        }
        assert!(f.fp_rate_now() < 0.001, "{} at 90 %", f.fp_rate_now());
        for i in 9_000..12_000 {
            f.insert(&serial(i));
        }
        assert!(f.fp_rate_now() > 0.001, "{} at 120 %", f.fp_rate_now());
        let back = SerialFilter::from_bytes(&f.to_bytes()).unwrap();
        assert!((0..12_000).all(|i| back.contains(&serial(i))));
    }

    #[test]
    fn bad_filters_are_refused() {
        let none: Vec<Serial> = Vec::new();
        assert!(SerialFilter::build(none.iter(), 10, 0.001, &[1; 32]).is_err());
        assert!(SerialFilter::from_bytes(b"").is_err());
        assert!(SerialFilter::from_bytes(&[0, 0, 0]).is_err());
    }

    fn snapshot(key: &SignKey) -> BloomSnapshot {
        let spent: Vec<Serial> = (0..50u8).map(|i| Serial([i; 32])).collect();
        let filter = SerialFilter::build(spent.iter(), 1000, 0.001, &seed(3)).unwrap();
        BloomSnapshot {
            version: 7,
            built_at: 1_700_000_000,
            keysets: vec![KeysetId([1; 8]), KeysetId([2; 8])],
            filter: filter.to_bytes(),
            deny: vec![Serial([9; 32]), Serial([10; 32])],
            signature: Sig([0; 64]),
        }
        .sign(key)
    }

    fn key() -> SignKey {
        use rand::SeedableRng;
        SignKey::generate(&mut rand::rngs::ChaCha20Rng::seed_from_u64(5))
    }

    #[test]
    fn the_binary_form_round_trips_and_still_verifies() {
        let key = key();
        let s = snapshot(&key);
        let bytes = s.to_bytes();
        // Header, two keysets, the filter, two serials, the signature: nothing else.
        assert_eq!(
            bytes.len(),
            8 + 16 + 4 + 16 + 4 + s.filter.len() + 4 + 64 + 64
        );
        let back = BloomSnapshot::from_bytes(&bytes).unwrap();
        assert_eq!(back, s);
        back.verify(&key.verify_key()).unwrap();
        assert!(back.decode_filter().unwrap().contains(&Serial([49; 32])));
        // The JSON form is the same snapshot.
        let json: BloomSnapshot =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(json, s);
    }

    #[test]
    fn bad_binary_snapshots_are_refused() {
        let s = snapshot(&key());
        let bytes = s.to_bytes();
        for cut in [0, 7, 8, 20, bytes.len() - 65, bytes.len() - 1] {
            assert!(
                BloomSnapshot::from_bytes(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(BloomSnapshot::from_bytes(&longer).is_err());
        let mut magic = bytes.clone();
        magic[0] ^= 1;
        assert!(BloomSnapshot::from_bytes(&magic).is_err());
        // A count claiming more items than there are bytes.
        let mut count = bytes.clone();
        count[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(BloomSnapshot::from_bytes(&count).is_err());
        // One flipped filter bit: decodes, but the signature no longer holds.
        let mut flipped = bytes;
        flipped[60] ^= 1;
        let tampered = BloomSnapshot::from_bytes(&flipped).unwrap();
        assert!(tampered.verify(&key().verify_key()).is_err());
    }

    #[test]
    fn a_snapshot_signed_the_old_way_still_verifies() {
        let key = key();
        let mut s = snapshot(&key);
        s.signature = key.sign(&s.legacy_signing_bytes());
        s.verify(&key.verify_key()).unwrap();
        s.version += 1;
        assert!(s.verify(&key.verify_key()).is_err());
    }
}
