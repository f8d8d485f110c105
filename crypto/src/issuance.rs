//! Threshold blind issuance: blind, partial sign, combine, unblind, verify, blame.
//!
//! With `h = H(m)` the ticket message hashed to G1, the wallet sends `B = r*h`, node i returns
//! `S_i = sk_i*B`, the wallet combines `S = sum(l_i * S_i) = sk*B` and unblinds
//! `sigma = r^-1 * S = sk*h`: an ordinary BLS signature on `m` under the keyset key.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::backend::{
    Active, Backend, G1_BYTES, SCALAR_BYTES, g1_decode_nonidentity, random_nonzero_scalar,
};
use crate::keyset::{KeysetId, PublicKey, SecretKeyShare, ShareIndex};
use crate::ticket::HolderPublicKey;
use crate::{CryptoError, domain};

type B = Active;

/// The signed message `m = tag || keyset_id || holder_public_key`.
pub fn ticket_message(keyset_id: &KeysetId, holder: &HolderPublicKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain::TICKET.len() + KeysetId::LEN + HolderPublicKey::LEN);
    m.extend_from_slice(domain::TICKET);
    m.extend_from_slice(&keyset_id.0);
    m.extend_from_slice(holder.as_bytes());
    m
}

pub(crate) fn message_point<Bk: Backend>(keyset_id: &KeysetId, holder: &HolderPublicKey) -> Bk::G1 {
    Bk::hash_to_g1(&ticket_message(keyset_id, holder), domain::BLS_DST)
}

/// Decode a G1 point from outside into a typed value.
fn decode_g1(bytes: &[u8], what: &'static str) -> Result<<B as Backend>::G1, CryptoError> {
    let arr: &[u8; G1_BYTES] = bytes
        .try_into()
        .map_err(|_| CryptoError::length(what, G1_BYTES, bytes.len()))?;
    g1_decode_nonidentity::<B>(arr).map_err(|reason| CryptoError::InvalidPoint { what, reason })
}

macro_rules! g1_newtype {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq)]
        pub struct $name(pub(crate) <B as Backend>::G1);

        impl $name {
            /// Size of the compressed encoding.
            pub const LEN: usize = G1_BYTES;

            /// Decode: canonical, on curve, in the prime-order subgroup, not the identity.
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
                decode_g1(bytes, $what).map(Self)
            }

            /// Compressed encoding.
            pub fn to_bytes(&self) -> [u8; G1_BYTES] {
                B::g1_encode(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), hex::encode(self.to_bytes()))
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&hex::encode(self.to_bytes()))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                let bytes = hex::decode(s.as_ref()).map_err(serde::de::Error::custom)?;
                Self::from_bytes(&bytes).map_err(serde::de::Error::custom)
            }
        }
    };
}

g1_newtype!(
    /// A blinded message point `B = r*H(m)`: what the nodes sign. Uniformly random to them.
    BlindedPoint,
    "blinded point"
);
g1_newtype!(
    /// `sk*B` after combining, still blinded.
    BlindSignature,
    "blind signature"
);
g1_newtype!(
    /// The ticket's BLS signature `sigma = sk*H(m)`: a standard IETF BLS (min-sig, POP DST)
    /// signature on the ticket message.
    Signature,
    "signature"
);

/// A node's partial signature `S_i = sk_i*B`, tagged with the node's index.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PartialSignature {
    /// The signing node's share index.
    pub index: ShareIndex,
    pub(crate) point: <B as Backend>::G1,
}

impl PartialSignature {
    /// Decode a partial received from node `index`.
    pub fn from_bytes(index: ShareIndex, bytes: &[u8]) -> Result<Self, CryptoError> {
        Ok(Self {
            index,
            point: decode_g1(bytes, "partial signature")?,
        })
    }

    /// Compressed encoding of the point.
    pub fn to_bytes(&self) -> [u8; G1_BYTES] {
        B::g1_encode(&self.point)
    }
}

impl fmt::Debug for PartialSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PartialSignature({}, {})",
            self.index,
            hex::encode(self.to_bytes())
        )
    }
}

/// The wallet's blinding factor `r` for one ticket. Secret: redacted, zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct BlindingFactor([u8; SCALAR_BYTES]);

impl BlindingFactor {
    /// Rebuild from stored bytes (a wallet resuming an interrupted purchase).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; SCALAR_BYTES] = bytes
            .try_into()
            .map_err(|_| CryptoError::length("blinding factor", SCALAR_BYTES, bytes.len()))?;
        let s = B::scalar_from_be(&arr).ok_or(CryptoError::Malformed {
            what: "blinding factor",
            reason: "not a canonical scalar",
        })?;
        if B::scalar_is_zero(&s) {
            return Err(CryptoError::ZeroScalar);
        }
        Ok(Self(arr))
    }

    /// Big-endian bytes, for storing a pending purchase.
    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; SCALAR_BYTES]> {
        zeroize::Zeroizing::new(self.0)
    }

    fn scalar(&self) -> <B as Backend>::Scalar {
        // Canonical and non-zero by construction.
        B::scalar_from_be(&self.0).unwrap_or_else(|| B::scalar_from_u64(1))
    }
}

impl fmt::Debug for BlindingFactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindingFactor(<redacted>)")
    }
}

/// Wallet, step 1: blind the ticket message for `holder` under `keyset_id`.
pub fn blind(
    keyset_id: &KeysetId,
    holder: &HolderPublicKey,
    rng: &mut impl rand_core::CryptoRng,
) -> (BlindedPoint, BlindingFactor) {
    let r = random_nonzero_scalar::<B>(rng);
    let point = B::g1_mul(&message_point::<B>(keyset_id, holder), &r);
    (BlindedPoint(point), BlindingFactor(B::scalar_to_be(&r)))
}

/// Node: sign a blinded point with its share. The point type guarantees it was checked
/// (subgroup, not identity) when decoded.
pub fn partial_sign(share: &SecretKeyShare, point: &BlindedPoint) -> PartialSignature {
    PartialSignature {
        index: share.index(),
        point: B::g1_mul(&point.0, &share.scalar()),
    }
}

/// Lagrange coefficients at x = 0 for the given distinct non-zero x-coordinates.
pub(crate) fn lagrange_at_zero<Bk: Backend>(xs: &[u16]) -> Result<Vec<Bk::Scalar>, CryptoError> {
    let scalars: Vec<Bk::Scalar> = xs
        .iter()
        .map(|x| Bk::scalar_from_u64(u64::from(*x)))
        .collect();
    let mut out = Vec::with_capacity(xs.len());
    for (i, xi) in scalars.iter().enumerate() {
        let mut num = Bk::scalar_from_u64(1);
        let mut den = Bk::scalar_from_u64(1);
        for (j, xj) in scalars.iter().enumerate() {
            if i != j {
                num = Bk::scalar_mul(&num, xj);
                den = Bk::scalar_mul(&den, &Bk::scalar_sub(xj, xi));
            }
        }
        let inv = Bk::scalar_invert(&den).ok_or(CryptoError::DuplicateShareIndex(
            xs.get(i).copied().unwrap_or_default(),
        ))?;
        out.push(Bk::scalar_mul(&num, &inv));
    }
    Ok(out)
}

/// Check a set of indices for a combine: at least `threshold`, none repeated.
fn check_indices(threshold: usize, indices: &[u16]) -> Result<(), CryptoError> {
    if threshold == 0 {
        return Err(CryptoError::InvalidThreshold {
            threshold,
            nodes: indices.len(),
        });
    }
    if indices.len() < threshold {
        return Err(CryptoError::TooFewShares {
            need: threshold,
            got: indices.len(),
        });
    }
    let mut seen = indices.to_vec();
    seen.sort_unstable();
    if let Some(w) = seen.windows(2).find(|w| w.first() == w.get(1)) {
        return Err(CryptoError::DuplicateShareIndex(
            w.first().copied().unwrap_or_default(),
        ));
    }
    Ok(())
}

pub(crate) fn combine_points<Bk: Backend>(
    threshold: usize,
    indices: &[u16],
    points: &[Bk::G1],
) -> Result<Bk::G1, CryptoError> {
    check_indices(threshold, indices)?;
    if let Some((coefficients, common)) = small_lagrange(indices) {
        // sum(lambda_i * S_i) = (1/L) * sum(c_i * S_i) with small integers c_i = L * lambda_i:
        // a few doublings and additions, then one multiplication, instead of a t-point
        // multi-exponentiation over 255-bit scalars.
        let inverse = Bk::scalar_invert(&Bk::scalar_from_u64(common)).ok_or(
            CryptoError::InvalidThreshold {
                threshold,
                nodes: indices.len(),
            },
        )?;
        return Ok(Bk::g1_mul(
            &small_lincomb::<Bk>(points, &coefficients),
            &inverse,
        ));
    }
    let lambdas = lagrange_at_zero::<Bk>(indices)?;
    Ok(Bk::g1_lincomb(points, &lambdas))
}

/// The Lagrange coefficients at zero of distinct nonzero `xs` as `c_i / L` with integers
/// `c_i` and one common denominator `L` (the lcm of the products `prod_{j != i} (x_j - x_i)`),
/// when they fit in 64 bits, as they do for every cluster of a sane size (t = 3 of {1, 2, 3}:
/// 3, -3, 1 over 1). `None` when they do not: the caller falls back to field arithmetic.
fn small_lagrange(xs: &[u16]) -> Option<(Vec<i128>, u64)> {
    fn gcd(a: i128, b: i128) -> i128 {
        if b == 0 { a.abs() } else { gcd(b, a % b) }
    }
    let mut numerators = Vec::with_capacity(xs.len());
    let mut denominators = Vec::with_capacity(xs.len());
    for (i, xi) in xs.iter().enumerate() {
        let (mut num, mut den) = (1i128, 1i128);
        for (j, xj) in xs.iter().enumerate() {
            if i != j {
                num = num.checked_mul(i128::from(*xj))?;
                den = den.checked_mul(i128::from(*xj) - i128::from(*xi))?;
            }
        }
        if den == 0 {
            return None;
        }
        numerators.push(num);
        denominators.push(den);
    }
    let mut common: i128 = 1;
    for den in &denominators {
        common = (common / gcd(common, *den)).checked_mul(den.abs())?;
    }
    let coefficients = numerators
        .iter()
        .zip(&denominators)
        .map(|(num, den)| num.checked_mul(common / den))
        .collect::<Option<Vec<_>>>()?;
    let fits = |v: i128| v.unsigned_abs() <= u128::from(u64::MAX);
    if !coefficients.iter().all(|c| fits(*c)) {
        return None;
    }
    Some((coefficients, u64::try_from(common).ok()?))
}

/// `sum(c_i * p_i)` for small signed integers, by one shared double-and-add over their bits.
/// The points are public (partial signatures), so taking variable time is fine.
fn small_lincomb<Bk: Backend>(points: &[Bk::G1], coefficients: &[i128]) -> Bk::G1 {
    let signed: Vec<(Bk::G1, u128)> = points
        .iter()
        .zip(coefficients)
        .map(|(p, c)| {
            let p = if *c < 0 { Bk::g1_neg(p) } else { *p };
            (p, c.unsigned_abs())
        })
        .collect();
    let bits = signed
        .iter()
        .map(|(_, m)| 128 - m.leading_zeros())
        .max()
        .unwrap_or(0);
    let mut acc = Bk::g1_identity();
    for bit in (0..bits).rev() {
        acc = Bk::g1_double(&acc);
        for (p, m) in &signed {
            if (m >> bit) & 1 == 1 {
                acc = Bk::g1_add(&acc, p);
            }
        }
    }
    acc
}

/// Wallet, step 4: combine partials (at least `threshold`, distinct indices) into `sk*B`.
///
/// This cannot tell a wrong partial from a right one (the result is just wrong): always
/// [`verify`] after [`unblind`], and on failure [`verify_partial`] each to find the bad node.
pub fn combine(
    threshold: usize,
    partials: &[PartialSignature],
) -> Result<BlindSignature, CryptoError> {
    let indices: Vec<u16> = partials.iter().map(|p| p.index.get()).collect();
    let points: Vec<_> = partials.iter().map(|p| p.point).collect();
    combine_points::<B>(threshold, &indices, &points).map(BlindSignature)
}

/// Wallet, step 5: remove the blinding factor.
pub fn unblind(blind: &BlindSignature, r: &BlindingFactor) -> Signature {
    // r is non-zero by construction, so the inverse exists.
    let inv = B::scalar_invert(&r.scalar()).unwrap_or_else(|| B::scalar_from_u64(0));
    Signature(B::g1_mul(&blind.0, &inv))
}

pub(crate) fn verify_points<Bk: Backend>(
    public_key: &Bk::G2Prepared,
    message: &Bk::G1,
    signature: &Bk::G1,
) -> bool {
    // e(sigma, -G2) * e(H(m), PK) == 1  <=>  e(sigma, G2) == e(H(m), PK)
    !Bk::g1_is_identity(signature)
        && Bk::pairing_product_is_one(&[
            (signature, Bk::neg_g2_generator_prepared()),
            (message, public_key),
        ])
}

/// Verify a ticket signature: `e(sigma, G2) == e(H(m), PK)`.
pub fn verify(
    public_key: &PublicKey,
    keyset_id: &KeysetId,
    holder: &HolderPublicKey,
    signature: &Signature,
) -> Result<(), CryptoError> {
    let h = message_point::<B>(keyset_id, holder);
    if verify_points::<B>(&public_key.prepared, &h, &signature.0) {
        Ok(())
    } else {
        Err(CryptoError::InvalidSignature)
    }
}

/// Blame: check one partial against its node's key share, `e(S_i, G2) == e(B, PK_i)`.
/// Returns [`CryptoError::InvalidPartial`] naming the node on failure.
pub fn verify_partial(
    public_key_share: &PublicKey,
    blinded: &BlindedPoint,
    partial: &PartialSignature,
) -> Result<(), CryptoError> {
    if verify_points::<B>(&public_key_share.prepared, &blinded.0, &partial.point) {
        Ok(())
    } else {
        Err(CryptoError::InvalidPartial(partial.index.get()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests

    use super::*;

    /// The small-integer combine equals the field-arithmetic one on every index set tried,
    /// and index sets whose coefficients do not fit 64 bits take the field path.
    #[test]
    fn small_coefficients_combine_like_field_lagrange() {
        let points: Vec<_> = (0..12u8)
            .map(|i| B::hash_to_g1(&[i], b"test points"))
            .collect();
        let sets: [&[u16]; 7] = [
            &[1],
            &[1, 2, 3],
            &[5, 2, 4],
            &[1, 3, 4, 5, 9],
            &[2, 7, 11, 13, 17, 19, 23],
            &[100, 200, 300, 1000],
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        ];
        for xs in sets {
            assert!(small_lagrange(xs).is_some(), "{xs:?}");
            let p = &points[..xs.len()];
            let field = B::g1_lincomb(p, &lagrange_at_zero::<B>(xs).unwrap());
            assert_eq!(
                combine_points::<B>(xs.len(), xs, p).unwrap(),
                field,
                "{xs:?}"
            );
        }
        let large: Vec<u16> = (0..12).map(|i| 65535 - 3 * i).collect();
        assert!(small_lagrange(&large).is_none());
        let field = B::g1_lincomb(&points, &lagrange_at_zero::<B>(&large).unwrap());
        assert_eq!(combine_points::<B>(12, &large, &points).unwrap(), field);
    }
}
