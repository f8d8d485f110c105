//! Filter updates: what changed between two snapshots of one filter, so a validator holding
//! version `v` fetches kilobytes instead of the whole bitmap.
//!
//! Between full rebuilds the coordinator only ever adds serials to one filter (same seed,
//! same size), so two versions differ in few bytes of their encoding. A [`BloomDelta`] carries
//! those bytes as a sparse XOR (offset gaps as LEB128 varints, one byte of XOR each), the new
//! snapshot's header and deny list, and the new snapshot's own signature. It needs no
//! signature of its own: applied to the right base it yields exactly the signed snapshot, and
//! applied to anything else the snapshot's signature fails. It also names its base (version
//! and SHA-256 of the base filter), so a mismatch is refused before any work.

use sha2::{Digest, Sha256};
use ticketing_crypto::keyset::KeysetId;
use ticketing_crypto::ticket::Serial;

use super::{BloomSnapshot, Reader, malformed, put_len};
use crate::ProtocolError;
use crate::keys::Sig;

/// First bytes of the binary form of a delta.
pub const DELTA_MAGIC: &[u8; 8] = b"TKDELT1\0";

/// The changes from the snapshot `from_version` to the snapshot `version` (see the module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BloomDelta {
    /// The version this applies to.
    pub from_version: u64,
    /// SHA-256 of that version's filter bytes.
    pub from_digest: [u8; 32],
    /// The new snapshot's version.
    pub version: u64,
    /// The new snapshot's build time.
    pub built_at: u64,
    /// The new snapshot's keysets.
    pub keysets: Vec<KeysetId>,
    /// The new snapshot's deny list, whole (it is exact and short).
    pub deny: Vec<Serial>,
    /// The new snapshot's signature.
    pub signature: Sig,
    /// Length of the filter's bytes (both versions).
    pub filter_len: u32,
    /// (offset, XOR) of every byte that differs, offsets strictly increasing.
    changes: Vec<(u32, u8)>,
}

impl BloomDelta {
    /// The delta from `base` to `next`, given the bytes that changed since `base` as
    /// (offset, byte in `base`) in any order, repeats allowed (the first of an offset wins:
    /// pass them oldest first). `None` when the filters differ in length (a rebuild).
    pub fn from_changes(
        base_version: u64,
        base_digest: [u8; 32],
        next: &BloomSnapshot,
        changed: impl IntoIterator<Item = (u32, u8)>,
    ) -> Option<Self> {
        let filter_len = u32::try_from(next.filter.len()).ok()?;
        let mut first: Vec<(u32, usize, u8)> = changed
            .into_iter()
            .enumerate()
            .map(|(i, (off, old))| (off, i, old))
            .collect();
        first.sort_unstable();
        first.dedup_by_key(|c| c.0);
        let mut changes = Vec::with_capacity(first.len());
        for (off, _, old) in first {
            let now = *next.filter.get(off as usize)?;
            if now != old {
                changes.push((off, now ^ old));
            }
        }
        Some(Self {
            from_version: base_version,
            from_digest: base_digest,
            version: next.version,
            built_at: next.built_at,
            keysets: next.keysets.clone(),
            deny: next.deny.clone(),
            signature: next.signature,
            filter_len,
            changes,
        })
    }

    /// The delta between two snapshots held whole (tests, tools). `None` when their filters
    /// differ in length.
    pub fn between(base: &BloomSnapshot, next: &BloomSnapshot) -> Option<Self> {
        if base.filter.len() != next.filter.len() {
            return None;
        }
        let changed = base
            .filter
            .iter()
            .zip(&next.filter)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, _))| (u32::try_from(i).unwrap_or(u32::MAX), *a));
        Self::from_changes(
            base.version,
            Sha256::digest(&base.filter).into(),
            next,
            changed,
        )
    }

    /// How many bytes of the filter change.
    pub fn changed_bytes(&self) -> usize {
        self.changes.len()
    }

    /// The new snapshot, from `base` (the caller then verifies its signature). Refused when
    /// `base` is not the version this delta starts from.
    pub fn apply(&self, base: &BloomSnapshot) -> Result<BloomSnapshot, ProtocolError> {
        let digest: [u8; 32] = Sha256::digest(&base.filter).into();
        if base.version != self.from_version
            || base.filter.len() != self.filter_len as usize
            || digest != self.from_digest
        {
            return Err(ProtocolError::DeltaBase {
                held: base.version,
                from: self.from_version,
            });
        }
        let mut filter = base.filter.clone();
        for &(off, xor) in &self.changes {
            // In range: checked when decoded and when built.
            if let Some(b) = filter.get_mut(off as usize) {
                *b ^= xor;
            }
        }
        Ok(BloomSnapshot {
            version: self.version,
            built_at: self.built_at,
            keysets: self.keysets.clone(),
            filter,
            deny: self.deny.clone(),
            signature: self.signature,
        })
    }

    /// The binary form (`application/vnd.ticketing.bloom-delta`): magic, base version and
    /// digest, new version and build time, keysets, filter length, the changes (count, then
    /// per change the gap from the previous offset as a LEB128 varint and the XOR byte), the
    /// deny list, the signature. Integers big-endian, lists prefixed with their length (u32).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + 2 * self.changes.len() + 32 * self.deny.len());
        out.extend_from_slice(DELTA_MAGIC);
        out.extend_from_slice(&self.from_version.to_be_bytes());
        out.extend_from_slice(&self.from_digest);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.built_at.to_be_bytes());
        put_len(&mut out, self.keysets.len());
        for k in &self.keysets {
            out.extend_from_slice(&k.0);
        }
        out.extend_from_slice(&self.filter_len.to_be_bytes());
        put_len(&mut out, self.changes.len());
        let mut next = 0u32;
        for &(off, xor) in &self.changes {
            put_varint(&mut out, off - next);
            out.push(xor);
            next = off + 1;
        }
        put_len(&mut out, self.deny.len());
        for s in &self.deny {
            out.extend_from_slice(&s.0);
        }
        out.extend_from_slice(&self.signature.0);
        out
    }

    /// Decode [`Self::to_bytes`]: every length against what is left, every offset inside the
    /// filter and after the one before, no trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let bad = |reason: &str| malformed_delta(reason);
        let mut r = Reader(bytes);
        if r.take(DELTA_MAGIC.len()).map_err(|_| bad("truncated"))? != DELTA_MAGIC {
            return Err(bad("not a delta (magic)"));
        }
        let head = |r: &mut Reader<'_>| -> Result<_, ProtocolError> {
            let from_version = r.u64()?;
            let from_digest: [u8; 32] = r.take(32)?.try_into().map_err(|_| malformed("digest"))?;
            let version = r.u64()?;
            let built_at = r.u64()?;
            let keysets = r
                .list(8)?
                .map(|b| b.try_into().map(KeysetId))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| malformed("keyset id"))?;
            Ok((from_version, from_digest, version, built_at, keysets))
        };
        let (from_version, from_digest, version, built_at, keysets) =
            head(&mut r).map_err(|_| bad("truncated header"))?;
        let filter_len = r.u32().map_err(|_| bad("truncated"))?;
        let count = r.u32().map_err(|_| bad("truncated"))? as usize;
        // Each change takes at least two bytes: a count beyond that is a lie.
        if count > r.0.len() / 2 {
            return Err(bad("more changes than bytes"));
        }
        let mut changes = Vec::with_capacity(count);
        let mut next = 0u64;
        for _ in 0..count {
            let off = next + u64::from(take_varint(&mut r)?);
            let xor = byte(&mut r)?;
            if off >= u64::from(filter_len) {
                return Err(bad("change outside the filter"));
            }
            let off = u32::try_from(off).map_err(|_| bad("change outside the filter"))?;
            changes.push((off, xor));
            next = u64::from(off) + 1;
        }
        let deny = r
            .list(32)
            .map_err(|_| bad("truncated deny list"))?
            .map(|b| b.try_into().map(Serial))
            .collect::<Result<_, _>>()
            .map_err(|_| bad("serial"))?;
        let signature = Sig(r
            .take(64)
            .map_err(|_| bad("truncated"))?
            .try_into()
            .map_err(|_| bad("signature"))?);
        if !r.0.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Self {
            from_version,
            from_digest,
            version,
            built_at,
            keysets,
            deny,
            signature,
            filter_len,
            changes,
        })
    }
}

fn malformed_delta(reason: &str) -> ProtocolError {
    ProtocolError::Malformed {
        what: "bloom delta",
        reason: reason.to_owned(),
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let [low, ..] = (v & 0x7f).to_le_bytes();
        v >>= 7;
        if v == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

fn byte(r: &mut Reader<'_>) -> Result<u8, ProtocolError> {
    match r.take(1) {
        Ok([b]) => Ok(*b),
        _ => Err(malformed_delta("truncated")),
    }
}

fn take_varint(r: &mut Reader<'_>) -> Result<u32, ProtocolError> {
    let mut v = 0u32;
    for shift in (0..35).step_by(7) {
        let b = byte(r)?;
        let part = u32::from(b & 0x7f);
        if shift == 28 && part > 0x0f {
            return Err(malformed_delta("varint overflows"));
        }
        v |= part << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(malformed_delta("varint too long"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

    use super::*;
    use crate::keys::SignKey;
    use crate::publication::SerialFilter;

    fn key() -> SignKey {
        use rand::SeedableRng;
        SignKey::generate(&mut rand::rngs::ChaCha20Rng::seed_from_u64(6))
    }

    fn serials(range: std::ops::Range<u32>) -> Vec<Serial> {
        range
            .map(|i| {
                let mut s = [0u8; 32];
                s[..4].copy_from_slice(&i.to_be_bytes());
                Serial(s)
            })
            .collect()
    }

    fn snapshot(
        key: &SignKey,
        version: u64,
        members: &[Serial],
        deny: Vec<Serial>,
    ) -> BloomSnapshot {
        let filter = SerialFilter::build(
            members.iter(),
            5000,
            0.001,
            &crate::publication::tests::seed(4),
        )
        .unwrap();
        BloomSnapshot {
            version,
            built_at: 1_700_000_000 + version,
            keysets: vec![KeysetId([1; 8])],
            filter: filter.to_bytes(),
            deny,
            signature: Sig([0; 64]),
        }
        .sign(key)
    }

    #[test]
    fn a_delta_turns_the_base_into_the_signed_next_version() {
        let key = key();
        let old = serials(0..1000);
        let mut new = old.clone();
        new.extend(serials(1000..1100));
        let base = snapshot(&key, 3, &old, vec![]);
        let next = snapshot(&key, 4, &new, vec![Serial([7; 32])]);
        let delta = BloomDelta::between(&base, &next).unwrap();
        assert!(delta.changed_bytes() > 0 && delta.changed_bytes() <= 100 * 10);
        let bytes = delta.to_bytes();
        assert!(
            bytes.len() < next.to_bytes().len() / 4,
            "{} bytes",
            bytes.len()
        );
        let back = BloomDelta::from_bytes(&bytes).unwrap();
        assert_eq!(back, delta);
        let applied = back.apply(&base).unwrap();
        assert_eq!(applied, next);
        applied.verify(&key.verify_key()).unwrap();
    }

    #[test]
    fn a_delta_applies_only_to_its_base() {
        let key = key();
        let a = snapshot(&key, 1, &serials(0..10), vec![]);
        let b = snapshot(&key, 2, &serials(0..20), vec![]);
        let c = snapshot(&key, 3, &serials(0..30), vec![]);
        let delta = BloomDelta::between(&b, &c).unwrap();
        assert_eq!(
            delta.apply(&a),
            Err(ProtocolError::DeltaBase { held: 1, from: 2 })
        );
        // Same version number, other content: the digest tells.
        let mut forged = b.clone();
        forged.filter[40] ^= 1;
        assert!(matches!(
            delta.apply(&forged),
            Err(ProtocolError::DeltaBase { .. })
        ));
        // A tampered change yields a snapshot whose signature fails.
        let mut bytes = delta.to_bytes();
        let at = bytes.len() - 64 - 4 - 1;
        bytes[at] ^= 0x10;
        let tampered = BloomDelta::from_bytes(&bytes).unwrap().apply(&b).unwrap();
        assert!(tampered.verify(&key.verify_key()).is_err());
    }

    #[test]
    fn changes_given_as_old_bytes_match_the_diff() {
        let key = key();
        let v1 = snapshot(&key, 1, &serials(0..100), vec![]);
        let v2 = snapshot(&key, 2, &serials(0..200), vec![]);
        let v3 = snapshot(&key, 3, &serials(0..300), vec![]);
        let step = |a: &BloomSnapshot, b: &BloomSnapshot| -> Vec<(u32, u8)> {
            (0..a.filter.len())
                .filter(|&i| a.filter[i] != b.filter[i])
                .map(|i| (u32::try_from(i).unwrap(), a.filter[i]))
                .collect()
        };
        let changed = step(&v1, &v2).into_iter().chain(step(&v2, &v3));
        let delta =
            BloomDelta::from_changes(1, Sha256::digest(&v1.filter).into(), &v3, changed).unwrap();
        assert_eq!(delta, BloomDelta::between(&v1, &v3).unwrap());
        assert_eq!(delta.apply(&v1).unwrap(), v3);
    }

    #[test]
    fn bad_deltas_are_refused() {
        let key = key();
        let b = snapshot(&key, 2, &serials(0..20), vec![Serial([1; 32])]);
        let c = snapshot(&key, 3, &serials(0..40), vec![Serial([1; 32])]);
        let bytes = BloomDelta::between(&b, &c).unwrap().to_bytes();
        for cut in [0, 7, 8, 40, 70, bytes.len() - 65, bytes.len() - 1] {
            assert!(
                BloomDelta::from_bytes(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(BloomDelta::from_bytes(&longer).is_err());
        // A filter length that puts the changes outside it.
        let mut short = bytes.clone();
        let at = 8 + 8 + 32 + 8 + 8 + 4 + 8;
        short[at..at + 4].copy_from_slice(&1u32.to_be_bytes());
        assert!(BloomDelta::from_bytes(&short).is_err());
        // A change count beyond the bytes.
        let mut count = bytes.clone();
        count[at + 4..at + 8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(BloomDelta::from_bytes(&count).is_err());
        // A snapshot is not a delta.
        assert!(BloomDelta::from_bytes(&c.to_bytes()).is_err());
    }

    #[test]
    fn varints_round_trip_at_their_edges() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u32::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut r = Reader(&out);
            assert_eq!(take_varint(&mut r).unwrap(), v);
            assert!(r.0.is_empty());
        }
        let mut r = Reader(&[0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(take_varint(&mut r).is_err());
        let mut r = Reader(&[0x80]);
        assert!(take_varint(&mut r).is_err());
    }
}
