//! Batch verification of ticket signatures: it must say exactly what one `Ticket::verify` per
//! item says, across keysets, for every kind and position of bad item.

use crate::common;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use proptest::prelude::*;
use rand::rngs::ChaCha20Rng;
use rand::seq::SliceRandom;
use ticketing_crypto::backend::{Active, Backend};
use ticketing_crypto::batch::verify_tickets;
use ticketing_crypto::domain::BLS_DST;
use ticketing_crypto::issuance::{self, PartialSignature, Signature};
use ticketing_crypto::keyset::{self, DealtKeyset, KeysetId, KeysetParams, PublicKey, ShareIndex};
use ticketing_crypto::ticket::{HolderSecret, Ticket};

type G1 = <Active as Backend>::G1;

/// Tickets issued the real way: blind, t partial signatures, combine, unblind.
struct Pool {
    keys: [PublicKey; 2],
    /// 64 tickets; `tickets[i]` is under `keys[owner[i]]` (a shuffled mix of both keysets).
    tickets: Vec<Ticket>,
    owner: Vec<usize>,
    /// Valid tickets not in the batch, one per keyset, to take signatures and holders from.
    spare: [Ticket; 2],
}

const N: usize = 64;

fn issue(
    keyset: &DealtKeyset,
    keyset_id: KeysetId,
    threshold: usize,
    rng: &mut ChaCha20Rng,
) -> Ticket {
    let holder = HolderSecret::generate(rng).public_key();
    let (blinded, factor) = issuance::blind(&keyset_id, &holder, rng);
    // A random t-subset of the nodes signs.
    let mut nodes: Vec<_> = keyset.shares.iter().collect();
    nodes.shuffle(rng);
    let partials: Vec<_> = nodes[..threshold]
        .iter()
        .map(|s| issuance::partial_sign(s, &blinded))
        .collect();
    let signature = issuance::unblind(&issuance::combine(threshold, &partials).unwrap(), &factor);
    Ticket {
        keyset_id,
        holder,
        signature,
    }
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut rng = common::rng(0xba7c4);
        let dealt = [
            keyset::deal(3, 5, &mut rng).unwrap(),
            keyset::deal(2, 3, &mut rng).unwrap(),
        ];
        let thresholds = [3, 2];
        let keys = [
            dealt[0].public_key().unwrap(),
            dealt[1].public_key().unwrap(),
        ];
        let ids = [
            KeysetId::derive(&keys[0], &common::params()),
            KeysetId::derive(
                &keys[1],
                &KeysetParams {
                    product: "single".to_owned(),
                    ..common::params()
                },
            ),
        ];
        let mut owner: Vec<usize> = (0..N).map(|i| i % 2).collect();
        owner.shuffle(&mut rng);
        let tickets: Vec<Ticket> = owner
            .iter()
            .map(|&k| issue(&dealt[k], ids[k], thresholds[k], &mut rng))
            .collect();
        let spare = [0, 1].map(|k| issue(&dealt[k], ids[k], thresholds[k], &mut rng));
        for (t, &k) in tickets.iter().zip(&owner) {
            t.verify(&keys[k]).unwrap();
        }
        Pool {
            keys,
            tickets,
            owner,
            spare,
        }
    })
}

impl Pool {
    /// The valid batch: each ticket with its own keyset's key.
    fn items(&self) -> (Vec<&PublicKey>, Vec<Ticket>) {
        let keys = self.owner.iter().map(|&k| &self.keys[k]).collect();
        (keys, self.tickets.clone())
    }
}

fn batch(keys: &[&PublicKey], tickets: &[Ticket], seed: u64) -> Vec<usize> {
    let items: Vec<(&PublicKey, &Ticket)> = keys.iter().copied().zip(tickets).collect();
    verify_tickets(&items, &mut common::rng(seed))
}

/// The reference: one ordinary verify per item.
fn singly(keys: &[&PublicKey], tickets: &[Ticket]) -> Vec<usize> {
    keys.iter()
        .zip(tickets)
        .enumerate()
        .filter(|(_, (k, t))| t.verify(k).is_err())
        .map(|(i, _)| i)
        .collect()
}

/// Ways to make item `i` invalid while every field still decodes.
#[derive(Debug, Clone, Copy)]
enum Corruption {
    /// Another valid ticket's signature (same keyset, different holder).
    ForeignSignature,
    /// Verified under the other keyset's key.
    WrongKey,
    /// The signature moved to another holder key.
    OtherHolder,
    /// The keyset id relabeled.
    OtherKeysetId,
}

const CORRUPTIONS: [Corruption; 4] = [
    Corruption::ForeignSignature,
    Corruption::WrongKey,
    Corruption::OtherHolder,
    Corruption::OtherKeysetId,
];

fn corrupt<'p>(
    p: &'p Pool,
    keys: &mut [&'p PublicKey],
    tickets: &mut [Ticket],
    i: usize,
    how: Corruption,
) {
    let own = p.owner[i];
    match how {
        Corruption::ForeignSignature => tickets[i].signature = p.spare[own].signature,
        Corruption::WrongKey => keys[i] = &p.keys[1 - own],
        Corruption::OtherHolder => tickets[i].holder = p.spare[own].holder,
        Corruption::OtherKeysetId => tickets[i].keyset_id = p.spare[1 - own].keyset_id,
    }
}

fn g1(s: &Signature) -> G1 {
    Active::g1_decode(&s.to_bytes()).unwrap()
}

fn signature(p: &G1) -> Signature {
    Signature::from_bytes(&Active::g1_encode(p)).unwrap()
}

#[test]
fn sixty_four_valid_tickets_across_two_keysets_pass() {
    let p = pool();
    let (keys, tickets) = p.items();
    assert!(p.owner.contains(&0) && p.owner.contains(&1));
    for seed in 0..4 {
        assert_eq!(batch(&keys, &tickets, seed), Vec::<usize>::new());
    }
    assert!(singly(&keys, &tickets).is_empty());
}

#[test]
fn an_empty_batch_is_empty() {
    assert_eq!(
        verify_tickets(&[], &mut common::rng(1)),
        Vec::<usize>::new()
    );
}

#[test]
fn a_batch_of_one_is_a_single_verify() {
    let p = pool();
    let (keys, tickets) = p.items();
    assert!(batch(&keys[..1], &tickets[..1], 1).is_empty());
    for how in CORRUPTIONS {
        let (mut keys, mut tickets) = p.items();
        corrupt(p, &mut keys, &mut tickets, 0, how);
        assert!(tickets[0].verify(keys[0]).is_err(), "{how:?}");
        assert_eq!(batch(&keys[..1], &tickets[..1], 2), vec![0], "{how:?}");
    }
}

/// Swapping two signatures under the same key leaves both unweighted sums (of signatures and
/// of message points) unchanged: only random weights catch it.
#[test]
fn swapped_signatures_are_both_reported() {
    let p = pool();
    let same: Vec<usize> = (0..N).filter(|&i| p.owner[i] == 0).collect();
    let (i, j) = (same[3], same[17]);
    let other = (0..N).find(|&k| p.owner[k] == 1 && k > i).unwrap();
    for (a, b) in [(i, j), (i, other)] {
        let (keys, mut tickets) = p.items();
        let (sa, sb) = (tickets[a].signature, tickets[b].signature);
        tickets[a].signature = sb;
        tickets[b].signature = sa;
        let mut expected = vec![a, b];
        expected.sort_unstable();
        for seed in 0..4 {
            assert_eq!(batch(&keys, &tickets, seed), expected);
        }
        assert_eq!(singly(&keys, &tickets), expected);
    }
}

/// `sigma_i + D` and `sigma_j - D`: both invalid, yet their sum is the valid sum. An unweighted
/// aggregate check passes this batch (checked here, so the test means something); the batch
/// verify must not.
#[test]
fn compensating_signatures_are_both_reported() {
    let p = pool();
    let same: Vec<usize> = (0..N).filter(|&i| p.owner[i] == 1).collect();
    let (i, j) = (same[0], same[same.len() - 1]);
    let (keys, mut tickets) = p.items();
    let d = g1(&p.spare[0].signature);
    let one = Active::scalar_from_u64(1);
    let minus_one = Active::scalar_sub(&Active::scalar_from_u64(0), &one);
    tickets[i].signature = signature(&Active::g1_lincomb(
        &[g1(&tickets[i].signature), d],
        &[one, one],
    ));
    tickets[j].signature = signature(&Active::g1_lincomb(
        &[g1(&tickets[j].signature), d],
        &[one, minus_one],
    ));

    // The naive aggregate: e(sum sigma, -G2) * e(sum H(m), PK) == 1 over keyset 1's tickets.
    let sigmas: Vec<G1> = same.iter().map(|&k| g1(&tickets[k].signature)).collect();
    let hashes: Vec<G1> = same
        .iter()
        .map(|&k| {
            let m = issuance::ticket_message(&tickets[k].keyset_id, &tickets[k].holder);
            Active::hash_to_g1(&m, BLS_DST)
        })
        .collect();
    let ones = vec![one; same.len()];
    let pk = Active::g2_prepare(&Active::g2_decode(&p.keys[1].to_bytes()).unwrap());
    assert!(Active::pairing_product_is_one(&[
        (
            &Active::g1_lincomb(&sigmas, &ones),
            Active::neg_g2_generator_prepared()
        ),
        (&Active::g1_lincomb(&hashes, &ones), &pk),
    ]));

    for seed in 0..4 {
        assert_eq!(batch(&keys, &tickets, seed), vec![i, j]);
    }
    assert_eq!(singly(&keys, &tickets), vec![i, j]);
}

#[test]
fn a_ticket_under_the_wrong_keysets_key_is_reported() {
    let p = pool();
    for i in [0, 1, 31, 32, N - 1] {
        let (mut keys, mut tickets) = p.items();
        corrupt(p, &mut keys, &mut tickets, i, Corruption::WrongKey);
        assert_eq!(batch(&keys, &tickets, i as u64), vec![i]);
        assert_eq!(singly(&keys, &tickets), vec![i]);
    }
}

/// The identity is refused by the decoder, but `combine` + `unblind` can produce it (two
/// partials `X` at index 1 and `2X` at index 2 combine to `2X - 2X`). Single verify refuses it;
/// so must the batch, where it would otherwise add nothing to the signature sum.
#[test]
fn an_identity_signature_is_reported() {
    let p = pool();
    let (keys, mut tickets) = p.items();
    let x = g1(&tickets[5].signature);
    let two_x = Active::g1_mul(&x, &Active::scalar_from_u64(2));
    let partials = [
        PartialSignature::from_bytes(ShareIndex::new(1).unwrap(), &Active::g1_encode(&x)).unwrap(),
        PartialSignature::from_bytes(ShareIndex::new(2).unwrap(), &Active::g1_encode(&two_x))
            .unwrap(),
    ];
    let (_, factor) = issuance::blind(
        &tickets[5].keyset_id,
        &tickets[5].holder,
        &mut common::rng(3),
    );
    let zero = issuance::unblind(&issuance::combine(2, &partials).unwrap(), &factor);
    let mut identity = [0u8; 48];
    identity[0] = 0xc0;
    assert_eq!(zero.to_bytes(), identity);

    tickets[5].signature = zero;
    assert!(tickets[5].verify(keys[5]).is_err());
    assert_eq!(batch(&keys, &tickets, 4), vec![5]);
    assert_eq!(batch(&keys[5..6], &tickets[5..6], 5), vec![0]);
    // With another bad item elsewhere, both are found.
    let mut keys = keys;
    corrupt(p, &mut keys, &mut tickets, 40, Corruption::WrongKey);
    assert_eq!(batch(&keys, &tickets, 6), vec![5, 40]);
}

#[test]
fn every_item_bad_reports_every_index() {
    let p = pool();
    let (mut keys, mut tickets) = p.items();
    for i in 0..N {
        corrupt(p, &mut keys, &mut tickets, i, CORRUPTIONS[i % 4]);
    }
    let all: Vec<usize> = (0..N).collect();
    assert_eq!(batch(&keys, &tickets, 7), all);
    assert_eq!(singly(&keys, &tickets), all);
}

/// Keys are grouped by value, not by reference: equal keys decoded separately, repeated
/// tickets, and a batch mixing both still pass, and a bad item among them is still found.
#[test]
fn equal_keys_from_distinct_objects_and_repeated_items() {
    let p = pool();
    let copies: Vec<PublicKey> = p
        .owner
        .iter()
        .map(|&k| PublicKey::from_bytes(&p.keys[k].to_bytes()).unwrap())
        .collect();
    let mut keys: Vec<&PublicKey> = copies.iter().collect();
    let mut tickets = p.tickets.clone();
    // Every ticket twice more, through the shared keys.
    for (t, &k) in p.tickets.iter().zip(&p.owner) {
        for _ in 0..2 {
            keys.push(&p.keys[k]);
            tickets.push(*t);
        }
    }
    assert!(batch(&keys, &tickets, 8).is_empty());
    tickets[100].holder = p.spare[0].holder;
    assert_eq!(batch(&keys, &tickets, 9), vec![100]);
    assert_eq!(singly(&keys, &tickets), vec![100]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Several bad items of any kind at random positions: exactly those are reported, in input
    /// order, exactly as one single verify per item reports them.
    #[test]
    fn random_corruptions_match_single_verify(
        bad in proptest::collection::btree_map(0..N, 0..CORRUPTIONS.len(), 0..=9),
        len in 1..=N,
        seed in any::<u64>(),
    ) {
        let p = pool();
        let (mut keys, mut tickets) = p.items();
        let bad: BTreeMap<usize, usize> = bad.into_iter().filter(|(i, _)| *i < len).collect();
        for (&i, &how) in &bad {
            corrupt(p, &mut keys, &mut tickets, i, CORRUPTIONS[how]);
        }
        let (keys, tickets) = (&keys[..len], &tickets[..len]);
        let expected: Vec<usize> = bad.keys().copied().collect();
        let reported = batch(keys, tickets, seed);
        prop_assert_eq!(&reported, &expected);
        prop_assert_eq!(singly(keys, tickets), expected);
    }
}
