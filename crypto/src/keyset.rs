//! Keysets: one threshold key per (product, validity window), dealt t-of-n with Feldman
//! commitments so every node can check its share and anyone can derive each node's key.

use std::fmt;
use std::num::NonZeroU16;

use blsful::inner_types::Scalar as PortableScalar;
use blsful::vsss_rs::{
    DefaultShare, IdentifierPrimeField, Share, ValueGroup, ValuePrimeField, feldman,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::backend::{
    Active, Backend, G2_BYTES, Portable, SCALAR_BYTES, g2_decode_nonidentity, random_nonzero_scalar,
};
use crate::{CryptoError, domain};

type B = Active;

/// A node's share index: its x-coordinate, 1..=n.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct ShareIndex(NonZeroU16);

impl ShareIndex {
    /// Index from a number; 0 is refused.
    pub fn new(i: u16) -> Result<Self, CryptoError> {
        NonZeroU16::new(i)
            .map(Self)
            .ok_or(CryptoError::InvalidShareIndex(0))
    }
    /// The index as a number.
    pub fn get(self) -> u16 {
        self.0.get()
    }
}

impl TryFrom<u16> for ShareIndex {
    type Error = CryptoError;
    fn try_from(i: u16) -> Result<Self, CryptoError> {
        Self::new(i)
    }
}

impl From<ShareIndex> for u16 {
    fn from(i: ShareIndex) -> u16 {
        i.get()
    }
}

impl fmt::Display for ShareIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a keyset is for: a fare product and the window its tickets are valid in
/// (unix seconds, `valid_from` inclusive, `valid_until` exclusive).
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysetParams {
    /// Product name, e.g. `single`, `day`.
    pub product: String,
    /// First second of validity.
    pub valid_from: u64,
    /// First second after validity.
    pub valid_until: u64,
}

/// First 8 bytes of SHA-256(tag || PK || len(product) || product || valid_from || valid_until).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeysetId(pub [u8; 8]);

impl KeysetId {
    /// Length in bytes.
    pub const LEN: usize = 8;

    /// Derive the id of a keyset from its group key and parameters.
    pub fn derive(public_key: &PublicKey, params: &KeysetParams) -> Self {
        let mut h = Sha256::new();
        h.update(domain::KEYSET_ID);
        h.update(public_key.to_bytes());
        // Length-prefixed so ("ab", t) and ("a", "b"||t) can never collide.
        h.update((params.product.len() as u64).to_be_bytes());
        h.update(params.product.as_bytes());
        h.update(params.valid_from.to_be_bytes());
        h.update(params.valid_until.to_be_bytes());
        let digest: [u8; 32] = h.finalize().into();
        // A 32-byte array always has a first 8-byte chunk.
        Self(digest.first_chunk::<8>().copied().unwrap_or_default())
    }

    /// Parse from 16 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, CryptoError> {
        let mut id = [0u8; 8];
        hex::decode_to_slice(s, &mut id).map_err(|_| CryptoError::Malformed {
            what: "keyset id",
            reason: "expected 16 hex characters",
        })?;
        Ok(Self(id))
    }
}

impl fmt::Display for KeysetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeysetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeysetId({self})")
    }
}

impl Serialize for KeysetId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for KeysetId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// A BLS public key in G2: a keyset's group key PK or a node's share PK_i. Decoded with
/// subgroup checks, identity refused, Miller-loop lines precomputed for repeated verification.
#[derive(Clone)]
pub struct PublicKey {
    pub(crate) point: <B as Backend>::G2,
    pub(crate) prepared: <B as Backend>::G2Prepared,
}

impl PublicKey {
    /// Size of the compressed encoding.
    pub const LEN: usize = G2_BYTES;

    pub(crate) fn from_point(point: <B as Backend>::G2) -> Self {
        Self {
            prepared: B::g2_prepare(&point),
            point,
        }
    }

    /// Decode a compressed G2 point: on curve, in the subgroup, not the identity.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: &[u8; G2_BYTES] = bytes
            .try_into()
            .map_err(|_| CryptoError::length("public key", G2_BYTES, bytes.len()))?;
        let point =
            g2_decode_nonidentity::<B>(arr).map_err(|reason| CryptoError::InvalidPoint {
                what: "public key",
                reason,
            })?;
        Ok(Self::from_point(point))
    }

    /// Compressed encoding.
    pub fn to_bytes(&self) -> [u8; G2_BYTES] {
        B::g2_encode(&self.point)
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.point == other.point
    }
}
impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.to_bytes()))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.to_bytes()))
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let bytes = hex::decode(s.as_ref()).map_err(serde::de::Error::custom)?;
        Self::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// A node's Shamir share `sk_i` of a keyset key. Redacted in Debug, zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKeyShare {
    #[zeroize(skip)]
    index: ShareIndex,
    scalar: [u8; SCALAR_BYTES],
}

impl SecretKeyShare {
    /// Rebuild from its index and big-endian scalar bytes (e.g. from a node's secret bundle).
    pub fn from_bytes(index: ShareIndex, bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; SCALAR_BYTES] = bytes
            .try_into()
            .map_err(|_| CryptoError::length("secret key share", SCALAR_BYTES, bytes.len()))?;
        let s = B::scalar_from_be(&arr).ok_or(CryptoError::Malformed {
            what: "secret key share",
            reason: "not a canonical scalar",
        })?;
        if B::scalar_is_zero(&s) {
            return Err(CryptoError::ZeroScalar);
        }
        Ok(Self { index, scalar: arr })
    }

    /// The node index this share belongs to.
    pub fn index(&self) -> ShareIndex {
        self.index
    }

    /// Big-endian scalar bytes, for writing the node's secret bundle (mode 0600).
    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; SCALAR_BYTES]> {
        zeroize::Zeroizing::new(self.scalar)
    }

    /// This share's public key `PK_i = sk_i * G2`.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_point(B::g2_mul_generator(&self.scalar()))
    }

    pub(crate) fn scalar(&self) -> <B as Backend>::Scalar {
        // Checked canonical and non-zero at construction; the fallback is unreachable.
        B::scalar_from_be(&self.scalar).unwrap_or_else(|| B::scalar_from_u64(0))
    }
}

impl fmt::Debug for SecretKeyShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A fingerprint of the public share is enough to tell shares apart in logs.
        let pk: [u8; 32] = Sha256::digest(self.public_key().to_bytes()).into();
        write!(
            f,
            "SecretKeyShare {{ index: {}, public: {}.., secret: <redacted> }}",
            self.index,
            hex::encode(pk.first_chunk::<4>().copied().unwrap_or_default())
        )
    }
}

/// Feldman commitments `C_k = a_k * G2` to the dealing polynomial (`C_0 = PK`). Public: they let
/// each node verify its share and anyone derive every `PK_i`.
#[derive(Clone, PartialEq, Eq)]
pub struct FeldmanCommitments {
    coefficients: Vec<<B as Backend>::G2>,
}

impl FeldmanCommitments {
    /// The threshold t (number of coefficients).
    pub fn threshold(&self) -> usize {
        self.coefficients.len()
    }

    /// The group public key `PK = C_0`.
    pub fn public_key(&self) -> Result<PublicKey, CryptoError> {
        self.coefficients
            .first()
            .map(|p| PublicKey::from_point(*p))
            .ok_or(CryptoError::InvalidThreshold {
                threshold: 0,
                nodes: 0,
            })
    }

    /// `PK_i = sum_k C_k * i^k`: node i's public key share.
    pub fn public_key_share(&self, index: ShareIndex) -> PublicKey {
        let x = B::scalar_from_u64(u64::from(index.get()));
        let mut powers = Vec::with_capacity(self.coefficients.len());
        let mut p = B::scalar_from_u64(1);
        for _ in &self.coefficients {
            powers.push(p);
            p = B::scalar_mul(&p, &x);
        }
        PublicKey::from_point(B::g2_lincomb(&self.coefficients, &powers))
    }

    /// Check a share against the commitments: `sk_i * G2 == PK_i`.
    pub fn verify_share(&self, share: &SecretKeyShare) -> Result<(), CryptoError> {
        if share.public_key() == self.public_key_share(share.index) {
            Ok(())
        } else {
            Err(CryptoError::ShareVerification(share.index.get()))
        }
    }

    /// Compressed encodings, `C_0` first.
    pub fn to_bytes(&self) -> Vec<[u8; G2_BYTES]> {
        self.coefficients.iter().map(B::g2_encode).collect()
    }

    /// Decode commitments (each checked, none the identity).
    pub fn from_bytes(points: &[[u8; G2_BYTES]]) -> Result<Self, CryptoError> {
        if points.is_empty() {
            return Err(CryptoError::InvalidThreshold {
                threshold: 0,
                nodes: 0,
            });
        }
        let coefficients = points
            .iter()
            .map(|b| {
                g2_decode_nonidentity::<B>(b).map_err(|reason| CryptoError::InvalidPoint {
                    what: "feldman commitment",
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { coefficients })
    }
}

impl fmt::Debug for FeldmanCommitments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeldmanCommitments")
            .field("threshold", &self.threshold())
            .finish_non_exhaustive()
    }
}

/// The output of the trusted dealer for one keyset.
#[derive(Debug)]
pub struct DealtKeyset {
    /// Public commitments (PK and the means to derive every PK_i).
    pub commitments: FeldmanCommitments,
    /// One share per node, index 1..=n in order.
    pub shares: Vec<SecretKeyShare>,
}

impl DealtKeyset {
    /// The group public key.
    pub fn public_key(&self) -> Result<PublicKey, CryptoError> {
        self.commitments.public_key()
    }
}

/// Deal a fresh keyset key t-of-n (trusted dealer, `ticketing setup`). The secret exists only
/// inside this call; every share is verified against the commitments before returning.
pub fn deal(
    threshold: usize,
    nodes: usize,
    rng: &mut impl rand_core::CryptoRng,
) -> Result<DealtKeyset, CryptoError> {
    if threshold < 1 || threshold > nodes || nodes > usize::from(u16::MAX) {
        return Err(CryptoError::InvalidThreshold { threshold, nodes });
    }
    let mut secret = random_nonzero_scalar::<Portable>(rng);
    let split = if threshold == 1 {
        // vsss-rs needs t >= 2; a degree-0 polynomial is every node holding sk.
        Ok((
            vec![secret; nodes],
            vec![<Portable as Backend>::g2_mul_generator(&secret)],
        ))
    } else {
        split_feldman(threshold, nodes, secret, rng)
    };
    // The whole key existed only for this call.
    secret.zeroize();
    let (mut shares, commitments) = split?;
    let result = verified_keyset(threshold, nodes, &shares, &commitments);
    shares.zeroize();
    result
}

fn verified_keyset(
    threshold: usize,
    nodes: usize,
    shares: &[PortableScalar],
    commitments: &[<Portable as Backend>::G2],
) -> Result<DealtKeyset, CryptoError> {
    let coefficients = commitments
        .iter()
        .map(|c| {
            B::g2_decode(&Portable::g2_encode(c)).map_err(|reason| CryptoError::InvalidPoint {
                what: "feldman commitment",
                reason,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let commitments = FeldmanCommitments { coefficients };

    let mut out = Vec::with_capacity(nodes);
    for (i, s) in shares.iter().enumerate() {
        let index = ShareIndex::new(
            u16::try_from(i + 1).map_err(|_| CryptoError::InvalidThreshold { threshold, nodes })?,
        )?;
        let mut bytes = Portable::scalar_to_be(s);
        let share = SecretKeyShare::from_bytes(index, &bytes);
        bytes.zeroize();
        let share = share?;
        commitments.verify_share(&share)?;
        out.push(share);
    }
    Ok(DealtKeyset {
        commitments,
        shares: out,
    })
}

type VsssShare =
    DefaultShare<IdentifierPrimeField<PortableScalar>, ValuePrimeField<PortableScalar>>;

/// Shamir split with Feldman verifiers via vsss-rs. Returns share values for x = 1..=n and the
/// commitments `[a_0 G2, .., a_{t-1} G2]` (vsss-rs puts the generator first; dropped here).
fn split_feldman(
    threshold: usize,
    nodes: usize,
    secret: PortableScalar,
    rng: &mut impl rand_core::CryptoRng,
) -> Result<(Vec<PortableScalar>, Vec<<Portable as Backend>::G2>), CryptoError> {
    let (shares, verifiers) = feldman::split_secret::<VsssShare, ValueGroup<_>>(
        threshold,
        nodes,
        &IdentifierPrimeField(secret),
        None,
        rng,
    )
    .map_err(|_| CryptoError::InvalidThreshold { threshold, nodes })?;
    let mut values = Vec::with_capacity(nodes);
    for (i, share) in shares.iter().enumerate() {
        // vsss-rs numbers participants 1..=n in order; the protocol depends on it, so check.
        let expected = PortableScalar::from(i as u64 + 1);
        if share.identifier().0 != expected {
            return Err(CryptoError::Malformed {
                what: "dealt share",
                reason: "unexpected participant identifier",
            });
        }
        values.push(share.value().0);
    }
    let commitments = verifiers.iter().skip(1).map(|v| v.0).collect();
    Ok((values, commitments))
}
