//! Curve arithmetic behind one small trait, so the protocol code is written once.
//!
//! [`Portable`] is pure Rust (blsful 4.1's inner types, `blstrs_plus`) and builds everywhere,
//! wasm32 included. [`Native`] wraps the C `blst` library through `blstrs` (safe API, no
//! `unsafe` in this workspace) and is several times faster; it does not build for wasm32.
//! [`Active`] is `Native` where available, else `Portable`. Both produce the same bytes for the
//! same inputs; `tests/backends.rs` checks this operation by operation. ADR-0001 has the figures.

mod portable;
pub use portable::Portable;

#[cfg(not(target_arch = "wasm32"))]
mod native;
#[cfg(not(target_arch = "wasm32"))]
pub use native::Native;

/// The backend the public API uses on this target.
#[cfg(not(target_arch = "wasm32"))]
pub type Active = Native;
/// The backend the public API uses on this target.
#[cfg(target_arch = "wasm32")]
pub type Active = Portable;

use crate::PointError;

/// Compressed G1 size (signatures, blinded points, partials).
pub const G1_BYTES: usize = 48;
/// Compressed G2 size (public keys, commitments).
pub const G2_BYTES: usize = 96;
/// Scalar size, big-endian.
pub const SCALAR_BYTES: usize = 32;

/// The operations the protocol needs from BLS12-381. Implementations must agree byte for byte.
///
/// Decoders check everything: canonical encoding, on curve, in the prime-order subgroup. The
/// identity is reported separately so callers choose whether to accept it.
pub trait Backend: 'static {
    /// Name for reports and benchmarks.
    const NAME: &'static str;
    /// Scalar field element.
    type Scalar: Copy + PartialEq + Send + Sync + core::fmt::Debug;
    /// G1 point (projective).
    type G1: Copy + PartialEq + Send + Sync + core::fmt::Debug;
    /// G2 point (projective).
    type G2: Copy + PartialEq + Send + Sync + core::fmt::Debug;
    /// A G2 point with its Miller-loop lines precomputed (for keys used many times).
    type G2Prepared: Clone + Send + Sync + core::fmt::Debug;

    /// Canonical big-endian decoding; `None` if not reduced.
    fn scalar_from_be(bytes: &[u8; SCALAR_BYTES]) -> Option<Self::Scalar>;
    /// Canonical big-endian encoding.
    fn scalar_to_be(s: &Self::Scalar) -> [u8; SCALAR_BYTES];
    /// Small integer.
    fn scalar_from_u64(v: u64) -> Self::Scalar;
    /// a + b
    fn scalar_add(a: &Self::Scalar, b: &Self::Scalar) -> Self::Scalar;
    /// a * b
    fn scalar_mul(a: &Self::Scalar, b: &Self::Scalar) -> Self::Scalar;
    /// a - b
    fn scalar_sub(a: &Self::Scalar, b: &Self::Scalar) -> Self::Scalar;
    /// 1/a, `None` for zero.
    fn scalar_invert(a: &Self::Scalar) -> Option<Self::Scalar>;
    /// a == 0
    fn scalar_is_zero(a: &Self::Scalar) -> bool;

    /// RFC 9380 hash to G1 with the given DST.
    fn hash_to_g1(msg: &[u8], dst: &[u8]) -> Self::G1;
    /// Checked decoding of a compressed G1 point (identity allowed here).
    fn g1_decode(bytes: &[u8; G1_BYTES]) -> Result<Self::G1, PointError>;
    /// Compressed encoding.
    fn g1_encode(p: &Self::G1) -> [u8; G1_BYTES];
    /// p == O
    fn g1_is_identity(p: &Self::G1) -> bool;
    /// s * p
    fn g1_mul(p: &Self::G1, s: &Self::Scalar) -> Self::G1;
    /// a + b
    fn g1_add(a: &Self::G1, b: &Self::G1) -> Self::G1;
    /// -p
    fn g1_neg(p: &Self::G1) -> Self::G1;
    /// 2p
    fn g1_double(p: &Self::G1) -> Self::G1;
    /// O
    fn g1_identity() -> Self::G1;
    /// sum(s_i * p_i); slices of equal length.
    fn g1_lincomb(points: &[Self::G1], scalars: &[Self::Scalar]) -> Self::G1;

    /// Checked decoding of a compressed G2 point (identity allowed here).
    fn g2_decode(bytes: &[u8; G2_BYTES]) -> Result<Self::G2, PointError>;
    /// Compressed encoding.
    fn g2_encode(p: &Self::G2) -> [u8; G2_BYTES];
    /// p == O
    fn g2_is_identity(p: &Self::G2) -> bool;
    /// s * G2 generator
    fn g2_mul_generator(s: &Self::Scalar) -> Self::G2;
    /// sum(s_i * p_i); slices of equal length.
    fn g2_lincomb(points: &[Self::G2], scalars: &[Self::Scalar]) -> Self::G2;
    /// Precompute the Miller-loop lines of a G2 point.
    fn g2_prepare(p: &Self::G2) -> Self::G2Prepared;
    /// The negated G2 generator, prepared (cached by the implementation).
    fn neg_g2_generator_prepared() -> &'static Self::G2Prepared;

    /// `prod e(g1_i, g2_i) == 1`, with one shared final exponentiation.
    fn pairing_product_is_one(terms: &[(&Self::G1, &Self::G2Prepared)]) -> bool;
}

/// Decode a G1 point from outside: checked, and the identity refused.
pub(crate) fn g1_decode_nonidentity<B: Backend>(
    bytes: &[u8; G1_BYTES],
) -> Result<B::G1, PointError> {
    let p = B::g1_decode(bytes)?;
    if B::g1_is_identity(&p) {
        return Err(PointError::Identity);
    }
    Ok(p)
}

/// Decode a G2 point from outside: checked, and the identity refused.
pub(crate) fn g2_decode_nonidentity<B: Backend>(
    bytes: &[u8; G2_BYTES],
) -> Result<B::G2, PointError> {
    let p = B::g2_decode(bytes)?;
    if B::g2_is_identity(&p) {
        return Err(PointError::Identity);
    }
    Ok(p)
}

/// A uniformly random non-zero scalar.
pub(crate) fn random_nonzero_scalar<B: Backend>(rng: &mut impl rand_core::CryptoRng) -> B::Scalar {
    loop {
        let mut wide = [0u8; 64];
        rng.fill_bytes(&mut wide);
        let s = scalar_from_wide::<B>(&wide);
        zeroize::Zeroize::zeroize(&mut wide);
        if !B::scalar_is_zero(&s) {
            return s;
        }
    }
}

/// Reduce 64 uniform bytes, read as a little-endian integer, modulo r (negligible bias).
/// Written over the trait so both backends agree by construction.
pub(crate) fn scalar_from_wide<B: Backend>(bytes: &[u8; 64]) -> B::Scalar {
    let two_64 = B::scalar_from_u64(1 << 32);
    let two_64 = B::scalar_mul(&two_64, &two_64);
    let mut acc = B::scalar_from_u64(0);
    // Horner over 64-bit limbs, most significant first.
    for chunk in bytes.rchunks_exact(8) {
        let mut limb = [0u8; 8];
        limb.copy_from_slice(chunk);
        acc = B::scalar_add(
            &B::scalar_mul(&acc, &two_64),
            &B::scalar_from_u64(u64::from_le_bytes(limb)),
        );
    }
    acc
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
