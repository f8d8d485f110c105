//! The native and portable backends must agree byte for byte on every operation the protocol
//! uses: the browser (portable) and the nodes (native) exchange these bytes.

use proptest::prelude::*;

use super::*;
use crate::issuance::{combine_points, lagrange_at_zero, verify_points};

type N = Native;
type P = Portable;

fn scalar_pair(wide: &[u8; 64]) -> (<N as Backend>::Scalar, <P as Backend>::Scalar) {
    (scalar_from_wide::<N>(wide), scalar_from_wide::<P>(wide))
}

fn wide(seed: u8) -> [u8; 64] {
    let mut w = [0u8; 64];
    for (b, i) in w.iter_mut().zip(0u8..) {
        *b = seed.wrapping_mul(31).wrapping_add(i).wrapping_mul(197);
    }
    w
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn scalars_agree(w in proptest::array::uniform32(any::<u8>()), v in proptest::array::uniform32(any::<u8>())) {
        let mut x = [0u8; 64];
        x[..32].copy_from_slice(&w);
        x[32..].copy_from_slice(&v);
        let (n, p) = scalar_pair(&x);
        prop_assert_eq!(N::scalar_to_be(&n), P::scalar_to_be(&p));
        prop_assert_eq!(
            N::scalar_invert(&n).map(|s| N::scalar_to_be(&s)),
            P::scalar_invert(&p).map(|s| P::scalar_to_be(&s))
        );
    }

    #[test]
    fn hash_to_g1_agrees(msg in proptest::collection::vec(any::<u8>(), 0..80)) {
        let n = N::g1_encode(&N::hash_to_g1(&msg, crate::domain::BLS_DST));
        let p = P::g1_encode(&P::hash_to_g1(&msg, crate::domain::BLS_DST));
        prop_assert_eq!(n, p);
    }

    #[test]
    fn g1_mul_and_decode_agree(msg in proptest::collection::vec(any::<u8>(), 0..40), seed in any::<u8>()) {
        let (sn, sp) = scalar_pair(&wide(seed));
        let pn = N::g1_mul(&N::hash_to_g1(&msg, b"test"), &sn);
        let pp = P::g1_mul(&P::hash_to_g1(&msg, b"test"), &sp);
        let bytes = N::g1_encode(&pn);
        prop_assert_eq!(bytes, P::g1_encode(&pp));
        prop_assert_eq!(N::g1_decode(&bytes).map(|p| N::g1_encode(&p)), Ok(bytes));
        prop_assert_eq!(P::g1_decode(&bytes).map(|p| P::g1_encode(&p)), Ok(bytes));
    }
}

#[test]
fn g2_generator_multiples_and_lincomb_agree() {
    let mut n_points = Vec::new();
    let mut p_points = Vec::new();
    let mut n_scalars = Vec::new();
    let mut p_scalars = Vec::new();
    for seed in 0..4 {
        let (sn, sp) = scalar_pair(&wide(seed));
        let gn = N::g2_mul_generator(&sn);
        let gp = P::g2_mul_generator(&sp);
        assert_eq!(N::g2_encode(&gn), P::g2_encode(&gp));
        let bytes = N::g2_encode(&gn);
        assert_eq!(P::g2_decode(&bytes).map(|p| P::g2_encode(&p)), Ok(bytes));
        n_points.push(gn);
        p_points.push(gp);
        let (tn, tp) = scalar_pair(&wide(seed + 100));
        n_scalars.push(tn);
        p_scalars.push(tp);
    }
    assert_eq!(
        N::g2_encode(&N::g2_lincomb(&n_points, &n_scalars)),
        P::g2_encode(&P::g2_lincomb(&p_points, &p_scalars))
    );
}

#[test]
fn lagrange_combine_and_pairing_agree() {
    let xs = [1u16, 3, 4, 7];
    let ln: Vec<_> = lagrange_at_zero::<N>(&xs)
        .unwrap()
        .iter()
        .map(N::scalar_to_be)
        .collect();
    let lp: Vec<_> = lagrange_at_zero::<P>(&xs)
        .unwrap()
        .iter()
        .map(P::scalar_to_be)
        .collect();
    assert_eq!(ln, lp);

    let n_points: Vec<_> = (0..4u8).map(|i| N::hash_to_g1(&[i], b"pts")).collect();
    let p_points: Vec<_> = (0..4u8).map(|i| P::hash_to_g1(&[i], b"pts")).collect();
    let cn = combine_points::<N>(4, &xs, &n_points).unwrap();
    let cp = combine_points::<P>(4, &xs, &p_points).unwrap();
    assert_eq!(N::g1_encode(&cn), P::g1_encode(&cp));

    // A signature made with one backend verifies with the other, and a wrong one fails in both.
    let (skn, skp) = scalar_pair(&wide(42));
    let pkn = N::g2_prepare(&N::g2_mul_generator(&skn));
    let pkp = P::g2_prepare(&P::g2_mul_generator(&skp));
    let hn = N::hash_to_g1(b"m", b"dst");
    let hp = P::hash_to_g1(b"m", b"dst");
    let sig = N::g1_encode(&N::g1_mul(&hn, &skn));
    let sig_p = P::g1_decode(&sig).unwrap();
    let sig_n = N::g1_decode(&sig).unwrap();
    assert!(verify_points::<P>(&pkp, &hp, &sig_p));
    assert!(verify_points::<N>(&pkn, &hn, &sig_n));
    assert!(!verify_points::<P>(
        &pkp,
        &P::hash_to_g1(b"x", b"dst"),
        &sig_p
    ));
    assert!(!verify_points::<N>(
        &pkn,
        &N::hash_to_g1(b"x", b"dst"),
        &sig_n
    ));
}

/// An on-curve G1 point outside the prime-order subgroup: almost every x with a y works, as the
/// cofactor is large. Found by search so the test does not depend on a magic constant.
pub(crate) fn non_subgroup_g1() -> Option<[u8; G1_BYTES]> {
    use blsful::inner_types::G1Affine;
    for x in 1u8..=255 {
        let mut b = [0u8; G1_BYTES];
        b[0] = 0x80; // compressed flag
        b[G1_BYTES - 1] = x;
        let p: Option<G1Affine> = G1Affine::from_compressed_unchecked(&b).into();
        if let Some(p) = p
            && bool::from(p.is_on_curve())
            && !bool::from(p.is_torsion_free())
        {
            return Some(b);
        }
    }
    None
}

pub(crate) fn non_subgroup_g2() -> Option<[u8; G2_BYTES]> {
    use blsful::inner_types::G2Affine;
    for x in 1u8..=255 {
        let mut b = [0u8; G2_BYTES];
        b[0] = 0x80;
        b[G2_BYTES - 1] = x; // c0 = x, c1 = 0
        let p: Option<G2Affine> = G2Affine::from_compressed_unchecked(&b).into();
        if let Some(p) = p
            && bool::from(p.is_on_curve())
            && !bool::from(p.is_torsion_free())
        {
            return Some(b);
        }
    }
    None
}

#[test]
fn both_backends_refuse_points_outside_the_subgroup_and_bad_encodings() {
    let g1 = non_subgroup_g1().unwrap();
    assert_eq!(N::g1_decode(&g1), Err(PointError::NotInSubgroup));
    assert_eq!(P::g1_decode(&g1), Err(PointError::NotInSubgroup));
    let g2 = non_subgroup_g2().unwrap();
    assert_eq!(N::g2_decode(&g2), Err(PointError::NotInSubgroup));
    assert_eq!(P::g2_decode(&g2), Err(PointError::NotInSubgroup));

    let mut identity1 = [0u8; G1_BYTES];
    identity1[0] = 0xc0;
    assert_eq!(
        g1_decode_nonidentity::<N>(&identity1),
        Err(PointError::Identity)
    );
    assert_eq!(
        g1_decode_nonidentity::<P>(&identity1),
        Err(PointError::Identity)
    );
    let mut identity2 = [0u8; G2_BYTES];
    identity2[0] = 0xc0;
    assert_eq!(
        g2_decode_nonidentity::<N>(&identity2),
        Err(PointError::Identity)
    );
    assert_eq!(
        g2_decode_nonidentity::<P>(&identity2),
        Err(PointError::Identity)
    );

    // No compression flag, or x >= p: not a valid encoding.
    assert_eq!(N::g1_decode(&[0u8; G1_BYTES]), Err(PointError::Encoding));
    assert_eq!(P::g1_decode(&[0u8; G1_BYTES]), Err(PointError::Encoding));
    let too_big = [0x9fu8; G1_BYTES];
    assert_eq!(N::g1_decode(&too_big), Err(PointError::Encoding));
    assert_eq!(P::g1_decode(&too_big), Err(PointError::Encoding));
}

#[test]
fn the_public_types_refuse_non_subgroup_and_identity_points() {
    use crate::CryptoError;
    use crate::issuance::{BlindedPoint, PartialSignature, Signature};
    use crate::keyset::{PublicKey, ShareIndex};

    let g1 = non_subgroup_g1().unwrap();
    let mut id1 = [0u8; G1_BYTES];
    id1[0] = 0xc0;
    let g2 = non_subgroup_g2().unwrap();
    let mut id2 = [0u8; G2_BYTES];
    id2[0] = 0xc0;
    let refused = |what, reason| Err::<(), _>(CryptoError::InvalidPoint { what, reason });

    // The node's first line of defence: a non-subgroup point would leak its share.
    assert_eq!(
        BlindedPoint::from_bytes(&g1).map(|_| ()),
        refused("blinded point", PointError::NotInSubgroup)
    );
    assert_eq!(
        BlindedPoint::from_bytes(&id1).map(|_| ()),
        refused("blinded point", PointError::Identity)
    );
    assert_eq!(
        Signature::from_bytes(&g1).map(|_| ()),
        refused("signature", PointError::NotInSubgroup)
    );
    assert_eq!(
        Signature::from_bytes(&id1).map(|_| ()),
        refused("signature", PointError::Identity)
    );
    let i = ShareIndex::new(1).unwrap();
    assert_eq!(
        PartialSignature::from_bytes(i, &g1).map(|_| ()),
        refused("partial signature", PointError::NotInSubgroup)
    );
    assert_eq!(
        PublicKey::from_bytes(&g2).map(|_| ()),
        refused("public key", PointError::NotInSubgroup)
    );
    assert_eq!(
        PublicKey::from_bytes(&id2).map(|_| ()),
        refused("public key", PointError::Identity)
    );
    assert_eq!(
        BlindedPoint::from_bytes(&g1[..47]).map(|_| ()),
        Err(CryptoError::WrongLength {
            what: "blinded point",
            expected: 48,
            got: 47
        })
    );
}
