//! Pure-Rust backend: blsful 4.1's inner types (`blstrs_plus`). Runs on every target.

use std::sync::OnceLock;

use blsful::inner_types::{
    Curve, Field, G1Affine, G1Projective, G2Affine, G2Prepared, G2Projective, Group,
    MillerLoopResult, Scalar, multi_miller_loop,
};
use blsful::{Bls12381G1Impl, HashToPoint};

use super::{Backend, G1_BYTES, G2_BYTES, SCALAR_BYTES};
use crate::PointError;

/// Pure-Rust BLS12-381 (blsful / `blstrs_plus`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Portable;

impl Backend for Portable {
    const NAME: &'static str = "portable (blsful/blstrs_plus, pure Rust)";
    type Scalar = Scalar;
    type G1 = G1Projective;
    type G2 = G2Projective;
    type G2Prepared = G2Prepared;

    fn scalar_from_be(bytes: &[u8; SCALAR_BYTES]) -> Option<Scalar> {
        Option::from(Scalar::from_be_bytes(bytes))
    }
    fn scalar_to_be(s: &Scalar) -> [u8; SCALAR_BYTES] {
        s.to_be_bytes()
    }
    fn scalar_from_u64(v: u64) -> Scalar {
        Scalar::from(v)
    }
    fn scalar_add(a: &Scalar, b: &Scalar) -> Scalar {
        a + b
    }
    fn scalar_mul(a: &Scalar, b: &Scalar) -> Scalar {
        a * b
    }
    fn scalar_sub(a: &Scalar, b: &Scalar) -> Scalar {
        a - b
    }
    fn scalar_invert(a: &Scalar) -> Option<Scalar> {
        Option::from(a.invert())
    }
    fn scalar_is_zero(a: &Scalar) -> bool {
        bool::from(a.is_zero())
    }

    fn hash_to_g1(msg: &[u8], dst: &[u8]) -> G1Projective {
        <Bls12381G1Impl as HashToPoint>::hash_to_point(msg, dst)
    }
    fn g1_decode(bytes: &[u8; G1_BYTES]) -> Result<G1Projective, PointError> {
        let p: Option<G1Affine> = G1Affine::from_compressed_unchecked(bytes).into();
        let p = p.ok_or(PointError::Encoding)?;
        if !bool::from(p.is_on_curve()) {
            return Err(PointError::Encoding);
        }
        if !bool::from(p.is_torsion_free()) {
            return Err(PointError::NotInSubgroup);
        }
        Ok(G1Projective::from(p))
    }
    fn g1_encode(p: &G1Projective) -> [u8; G1_BYTES] {
        p.to_affine().to_compressed()
    }
    fn g1_is_identity(p: &G1Projective) -> bool {
        bool::from(p.is_identity())
    }
    fn g1_mul(p: &G1Projective, s: &Scalar) -> G1Projective {
        p * s
    }
    fn g1_add(a: &G1Projective, b: &G1Projective) -> G1Projective {
        a + b
    }
    fn g1_neg(p: &G1Projective) -> G1Projective {
        -p
    }
    fn g1_double(p: &G1Projective) -> G1Projective {
        p.double()
    }
    fn g1_identity() -> G1Projective {
        G1Projective::identity()
    }
    fn g1_lincomb(points: &[G1Projective], scalars: &[Scalar]) -> G1Projective {
        G1Projective::sum_of_products(points, scalars)
    }

    fn g2_decode(bytes: &[u8; G2_BYTES]) -> Result<G2Projective, PointError> {
        let p: Option<G2Affine> = G2Affine::from_compressed_unchecked(bytes).into();
        let p = p.ok_or(PointError::Encoding)?;
        if !bool::from(p.is_on_curve()) {
            return Err(PointError::Encoding);
        }
        if !bool::from(p.is_torsion_free()) {
            return Err(PointError::NotInSubgroup);
        }
        Ok(G2Projective::from(p))
    }
    fn g2_encode(p: &G2Projective) -> [u8; G2_BYTES] {
        p.to_affine().to_compressed()
    }
    fn g2_is_identity(p: &G2Projective) -> bool {
        bool::from(p.is_identity())
    }
    fn g2_mul_generator(s: &Scalar) -> G2Projective {
        G2Projective::GENERATOR * s
    }
    fn g2_lincomb(points: &[G2Projective], scalars: &[Scalar]) -> G2Projective {
        G2Projective::sum_of_products(points, scalars)
    }
    fn g2_prepare(p: &G2Projective) -> G2Prepared {
        G2Prepared::from(p.to_affine())
    }
    fn neg_g2_generator_prepared() -> &'static G2Prepared {
        static NEG_G2: OnceLock<G2Prepared> = OnceLock::new();
        NEG_G2.get_or_init(|| G2Prepared::from(-G2Affine::generator()))
    }

    fn pairing_product_is_one(terms: &[(&G1Projective, &G2Prepared)]) -> bool {
        let affine: Vec<G1Affine> = terms.iter().map(|(p, _)| p.to_affine()).collect();
        let pairs: Vec<(&G1Affine, &G2Prepared)> =
            affine.iter().zip(terms.iter().map(|(_, q)| *q)).collect();
        let ml: MillerLoopResult = multi_miller_loop(&pairs);
        bool::from(ml.final_exponentiation().is_identity())
    }
}
