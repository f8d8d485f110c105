//! The threshold properties: any t combine to the same ticket, t-1 never, bad partials blamed.

use crate::common;

use common::{setup, subsets};
use ticketing_crypto::CryptoError;
use ticketing_crypto::issuance::{self, PartialSignature};
use ticketing_crypto::keyset::{self, SecretKeyShare, ShareIndex};

fn every_t_subset_gives_the_same_signature(t: usize, n: usize) {
    let s = setup(11 + n as u64, t, n);
    let subsets = subsets(n, t);
    assert_eq!(subsets.len(), binomial(n, t));
    let mut first = None;
    for subset in &subsets {
        let partials: Vec<_> = subset.iter().map(|&i| s.partials[i]).collect();
        let ticket = s
            .ticket_from(&partials)
            .unwrap_or_else(|e| panic!("{subset:?}: {e}"));
        match first {
            None => first = Some(ticket.signature),
            Some(sig) => assert_eq!(sig, ticket.signature, "subset {subset:?} disagrees"),
        }
    }
}

fn binomial(n: usize, k: usize) -> usize {
    (0..k).fold(1, |acc, i| acc * (n - i) / (i + 1))
}

#[test]
fn every_3_subset_of_5_gives_the_same_signature() {
    every_t_subset_gives_the_same_signature(3, 5);
}

#[test]
fn every_5_subset_of_9_gives_the_same_signature() {
    every_t_subset_gives_the_same_signature(5, 9);
}

#[test]
fn more_than_t_partials_also_combine() {
    let s = setup(3, 3, 5);
    let all = s.ticket_from(&s.partials).unwrap();
    let three = s.ticket_from(&s.partials[..3]).unwrap();
    assert_eq!(all.signature, three.signature);
}

#[test]
fn t_minus_one_shares_are_refused() {
    for (t, n) in [(3, 5), (5, 9), (2, 2)] {
        let s = setup(5, t, n);
        for subset in subsets(n, t - 1) {
            let partials: Vec<_> = subset.iter().map(|&i| s.partials[i]).collect();
            assert_eq!(
                issuance::combine(t, &partials),
                Err(CryptoError::TooFewShares {
                    need: t,
                    got: t - 1
                })
            );
        }
    }
}

#[test]
fn duplicate_indices_are_refused() {
    let s = setup(6, 3, 5);
    let partials = [s.partials[0], s.partials[1], s.partials[1]];
    assert_eq!(
        issuance::combine(3, &partials),
        Err(CryptoError::DuplicateShareIndex(2))
    );
}

#[test]
fn a_corrupted_partial_is_caught_and_its_node_named() {
    let s = setup(7, 3, 5);
    // Node 2 answers with a partial signed by node 4's share: a valid point, wrong value.
    let mut partials = s.partials[..3].to_vec();
    let wrong = issuance::partial_sign(&s.keyset.shares[3], &s.blinded);
    partials[1] =
        PartialSignature::from_bytes(ShareIndex::new(2).unwrap(), &wrong.to_bytes()).unwrap();

    // The optimistic path: combine, unblind, verify once. It fails...
    assert_eq!(s.ticket_from(&partials), Err(CryptoError::InvalidSignature));
    // ...so the wallet checks each partial and finds node 2.
    let blamed: Vec<_> = partials
        .iter()
        .filter_map(|p| {
            let pk_i = s.keyset.commitments.public_key_share(p.index);
            issuance::verify_partial(&pk_i, &s.blinded, p).err()
        })
        .collect();
    assert_eq!(blamed, vec![CryptoError::InvalidPartial(2)]);
    // Dropping it and using node 5 instead succeeds.
    let good = [partials[0], partials[2], s.partials[4]];
    assert!(s.ticket_from(&good).is_ok());
}

#[test]
fn every_share_verifies_against_the_commitments_and_a_wrong_one_does_not() {
    let s = setup(8, 3, 5);
    for share in &s.keyset.shares {
        s.keyset.commitments.verify_share(share).unwrap();
        assert_eq!(
            share.public_key(),
            s.keyset.commitments.public_key_share(share.index())
        );
    }
    // Share 1's value presented as index 2.
    let forged = SecretKeyShare::from_bytes(
        ShareIndex::new(2).unwrap(),
        s.keyset.shares[0].to_bytes().as_ref(),
    )
    .unwrap();
    assert_eq!(
        s.keyset.commitments.verify_share(&forged),
        Err(CryptoError::ShareVerification(2))
    );
}

#[test]
fn invalid_thresholds_are_refused() {
    let mut rng = common::rng(1);
    for (t, n) in [(0, 5), (6, 5), (0, 0)] {
        assert_eq!(
            keyset::deal(t, n, &mut rng).unwrap_err(),
            CryptoError::InvalidThreshold {
                threshold: t,
                nodes: n
            }
        );
    }
    // 1-of-1 is a degenerate but valid cluster.
    let s = setup(2, 1, 1);
    assert!(s.ticket_from(&s.partials).is_ok());
}

#[test]
fn the_ticket_is_bound_to_its_keyset_and_holder() {
    let s = setup(9, 3, 5);
    let ticket = s.ticket_from(&s.partials[..3]).unwrap();
    let pk = s.keyset.public_key().unwrap();
    let other = setup(10, 3, 5);
    // Another keyset's key, another holder, another keyset id: all refused.
    assert_eq!(
        ticket.verify(&other.keyset.public_key().unwrap()),
        Err(CryptoError::InvalidSignature)
    );
    let mut moved = ticket;
    moved.holder = other.holder.public_key();
    assert_eq!(moved.verify(&pk), Err(CryptoError::InvalidSignature));
    let mut relabeled = ticket;
    relabeled.keyset_id = other.keyset_id;
    assert_eq!(relabeled.verify(&pk), Err(CryptoError::InvalidSignature));
}

/// The unblinded ticket is a standard IETF BLS signature: the `blst` crate's min_sig verifies
/// it with the POP DST, both from its own API and against our encodings.
#[test]
fn unblinded_tickets_verify_with_blst_min_sig() {
    const DST: &[u8] = b"BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_POP_";
    for seed in 0..8 {
        let s = setup(100 + seed, 3, 5);
        let ticket = s.ticket_from(&s.partials[1..4]).unwrap();
        let pk = blst::min_sig::PublicKey::key_validate(&s.keyset.public_key().unwrap().to_bytes())
            .unwrap();
        let sig =
            blst::min_sig::Signature::sig_validate(&ticket.signature.to_bytes(), true).unwrap();
        let msg = issuance::ticket_message(&ticket.keyset_id, &ticket.holder);
        assert_eq!(
            sig.verify(true, &msg, DST, &[], &pk, true),
            blst::BLST_ERROR::BLST_SUCCESS
        );
        // And a wrong message fails there too, so the check above is not vacuous.
        let mut wrong = msg.clone();
        wrong[msg.len() - 1] ^= 1;
        assert_ne!(
            sig.verify(true, &wrong, DST, &[], &pk, true),
            blst::BLST_ERROR::BLST_SUCCESS
        );
    }
}

/// And the other way: a signature blst makes with a key verifies under our API.
#[test]
fn blst_signatures_verify_with_our_api() {
    const DST: &[u8] = b"BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_POP_";
    let s = setup(12, 3, 5);
    let sk = blst::min_sig::SecretKey::key_gen(&[7u8; 32], &[]).unwrap();
    let pk = ticketing_crypto::keyset::PublicKey::from_bytes(&sk.sk_to_pk().to_bytes()).unwrap();
    let holder = s.holder.public_key();
    let msg = issuance::ticket_message(&s.keyset_id, &holder);
    let sig = sk.sign(&msg, DST, &[]);
    let sig = issuance::Signature::from_bytes(&sig.to_bytes()).unwrap();
    issuance::verify(&pk, &s.keyset_id, &holder, &sig).unwrap();
}
