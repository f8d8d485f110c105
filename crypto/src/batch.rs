//! Batch verification of ticket signatures: a coordinator checking many tickets at once pays
//! one hash per ticket and one pairing check per batch, instead of a pairing check each.
//!
//! # Method: small-exponent batch test
//!
//! A ticket `i` under key `PK_i` is valid iff `e(sigma_i, G2) == e(H(m_i), PK_i)`. Draw an
//! independent random weight `r_i` per ticket, group the tickets by key (`k` ranges over the
//! distinct keys; several keysets may be mixed in one batch) and check
//!
//! ```text
//! prod_k e(sum_{i in k} r_i H(m_i), PK_k) * e(sum_i r_i sigma_i, -G2) == 1
//! ```
//!
//! with one multi-Miller loop and one final exponentiation. The sums are multi-scalar
//! multiplications ([`Backend::g1_lincomb`]).
//!
//! # Soundness
//!
//! The weights are uniform in `[1, 2^128)`. Every point is in the prime-order subgroups (a
//! decoded [`Signature`](crate::issuance::Signature) and a [`PublicKey`] are subgroup-checked,
//! `H(m)` is so by construction), so the left side equals `e(g1, g2)^(sum_i r_i d_i)` with
//! `d_i = 0` exactly for the valid tickets. If some `d_j != 0`, then for any fixed other weights
//! at most one value of `r_j` makes the sum vanish mod q: a batch holding an invalid ticket
//! passes with probability at most `1 / (2^128 - 1)`. Fixed weights (e.g. all 1) would not
//! do: swapping two signatures under one key leaves both sums unchanged.
//!
//! When the batch fails, the culprits are found by bisection with the same weights: the halves'
//! products multiply to the whole's, so when the left half passes the right half must fail and
//! is not checked as a whole. A single item is always decided by the ordinary 2-pairing verify,
//! so a valid ticket is never reported; an invalid one is missed with probability at most
//! `c / (2^128 - 1)` for the `c <= 2n` checks made. A signature that is the identity is refused
//! up front, as [`issuance::verify`](crate::issuance::verify) refuses it.
//!
//! 128-bit weights instead of full 255-bit scalars: 2^-128 matches the curve's security level,
//! they are cheaper to draw, and they make the MSMs cheaper: blst's Pippenger skips the all-zero
//! windows, about 40% less per point from 32 points up (measured with the native backend).
//!
//! # Cost
//!
//! `n` single verifies cost `n * (H + 2 ML + FE)`: a hash to G1, two Miller loops and one final
//! exponentiation each. A passing batch of `n` tickets under `k` distinct keys costs
//! `n * H + MSM(n signatures) + k MSMs (n message points in all) + (k + 1) ML + FE`,
//! so per ticket it tends to `H + 2 * MSM_n / n`, and the RFC 9380 hash to G1 becomes the largest
//! per-ticket cost. Figures with the native backend on a 2-core VM: `H` ~ 57 µs, a single
//! verify ~ 700 µs, MSM per point (128-bit weights) ~ 25 µs at 32 points, 18 at 64, 11 at 256
//! (blst spreads MSMs of 32 points or more over the cores), 3 ML + FE ~ 0.8 ms. Measured with
//! two keysets mixed (`batch_verify/*` in `crypto/benches/crypto.rs`): about 150 to 170 µs per
//! ticket at n = 64 and 80 to 100 µs at n = 256, i.e. about 4x and 8x less than single verifies.
//! Below 32 points blst's MSM costs about a full scalar multiplication per point whatever the
//! weights, so batches of a few tickets per key gain little.
//!
//! One invalid ticket among `n` costs the batch check plus at most `2 log2 n` pairing checks of
//! halving size (the left half at each level, the right one too when the culprit is on the
//! left; at size 1 a single verify): `O(log n)` final exponentiations, `O(n)` MSM points, but
//! the small sub-checks pay the small-MSM rate above: for n = 64 about 3 to 4x a clean batch,
//! still somewhat less than 64 single verifies. `b` invalid tickets cost `O(b log n)` checks, so
//! batching stops paying when a sizeable share of the batch is invalid; the answer stays exact
//! (every report is confirmed by a single verify).
//!
//! Keys are grouped by identity of the `&PublicKey` first and point equality second, `O(n * k)`
//! comparisons: meant for a handful of keysets per batch.

use crate::backend::{Active, Backend, SCALAR_BYTES};
use crate::issuance::{message_point, verify_points};
use crate::keyset::PublicKey;
use crate::ticket::Ticket;

type B = Active;

/// Verify the BLS ticket signatures of many `(keyset key, ticket)` pairs at once.
///
/// Returns the indices into `items`, ascending, of the tickets whose signature is invalid under
/// the paired key; empty when all are valid (and for an empty batch). The result equals what
/// [`Ticket::verify`] on each item would say, except that an invalid ticket can be missed with
/// probability at most about `2n / 2^128` (see the [module docs](self)); a valid ticket is never
/// reported. `rng` draws the secret batch weights: it must be a real CSPRNG, unpredictable to
/// whoever made the tickets.
pub fn verify_tickets(
    items: &[(&PublicKey, &Ticket)],
    rng: &mut impl rand_core::CryptoRng,
) -> Vec<usize> {
    let entries = items.iter().map(|(public_key, ticket)| Entry::<'_, B> {
        key: &public_key.point,
        prepared: &public_key.prepared,
        message: message_point::<B>(&ticket.keyset_id, &ticket.holder),
        signature: ticket.signature.0,
    });
    find_invalid::<B>(entries, rng).invalid
}

/// One signature to check: `e(signature, G2) == e(message, key)`.
pub(crate) struct Entry<'k, Bk: Backend> {
    /// The key, for grouping.
    pub(crate) key: &'k Bk::G2,
    /// The same key, prepared for the Miller loop.
    pub(crate) prepared: &'k Bk::G2Prepared,
    /// `H(m)`.
    pub(crate) message: Bk::G1,
    /// The signature on `m`.
    pub(crate) signature: Bk::G1,
}

/// What a batch verification found.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Indices of the invalid entries, ascending.
    pub(crate) invalid: Vec<usize>,
    /// Pairing checks made (batch and single), each with one final exponentiation.
    pub(crate) pairing_checks: usize,
}

/// The batch verification over any backend: see the module docs.
pub(crate) fn find_invalid<'k, Bk: Backend>(
    entries: impl IntoIterator<Item = Entry<'k, Bk>>,
    rng: &mut impl rand_core::CryptoRng,
) -> Outcome {
    let mut outcome = Outcome {
        invalid: Vec::new(),
        pairing_checks: 0,
    };
    let entries = entries.into_iter();
    // Distinct keys; an entry's group is its key's position here.
    let mut keys: Vec<(&Bk::G2, &Bk::G2Prepared)> = Vec::new();
    let mut slots: Vec<Slot<Bk>> = Vec::with_capacity(entries.size_hint().0);
    for (index, entry) in entries.enumerate() {
        if Bk::g1_is_identity(&entry.signature) {
            outcome.invalid.push(index);
            continue;
        }
        let group = keys
            .iter()
            .position(|(k, _)| std::ptr::eq(*k, entry.key))
            .or_else(|| keys.iter().position(|(k, _)| **k == *entry.key))
            .unwrap_or_else(|| {
                keys.push((entry.key, entry.prepared));
                keys.len() - 1
            });
        slots.push(Slot {
            group,
            index,
            message: entry.message,
            signature: entry.signature,
        });
    }
    // Sorted by key, every contiguous range of the batch is a few contiguous runs of one key
    // each: the bisection below then needs no further grouping or copying.
    slots.sort_unstable_by_key(|s| (s.group, s.index));
    let ids: Vec<(usize, usize)> = slots.iter().map(|s| (s.group, s.index)).collect();
    let messages: Vec<Bk::G1> = slots.iter().map(|s| s.message).collect();
    let signatures: Vec<Bk::G1> = slots.iter().map(|s| s.signature).collect();
    drop(slots);
    let weights: Vec<Bk::Scalar> = ids.iter().map(|_| weight::<Bk>(rng)).collect();
    let all = Span::<Bk> {
        ids: &ids,
        messages: &messages,
        signatures: &signatures,
        weights: &weights,
    };
    search(all, false, &keys, &mut outcome);
    outcome.invalid.sort_unstable();
    outcome
}

struct Slot<Bk: Backend> {
    group: usize,
    index: usize,
    message: Bk::G1,
    signature: Bk::G1,
}

/// A uniformly random weight in `[1, 2^128)`.
fn weight<Bk: Backend>(rng: &mut impl rand_core::CryptoRng) -> Bk::Scalar {
    loop {
        let mut be = [0u8; SCALAR_BYTES];
        if let Some(low) = be.last_chunk_mut::<16>() {
            rng.fill_bytes(low);
        }
        // Below 2^128, so always canonical; zero has probability 2^-128.
        if let Some(s) = Bk::scalar_from_be(&be)
            && !Bk::scalar_is_zero(&s)
        {
            return s;
        }
    }
}

/// A contiguous range of the key-sorted batch: four parallel slices of equal length.
struct Span<'s, Bk: Backend> {
    /// (group, input index)
    ids: &'s [(usize, usize)],
    messages: &'s [Bk::G1],
    signatures: &'s [Bk::G1],
    weights: &'s [Bk::Scalar],
}

impl<Bk: Backend> Clone for Span<'_, Bk> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<Bk: Backend> Copy for Span<'_, Bk> {}

impl<Bk: Backend> Span<'_, Bk> {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn split_at(self, mid: usize) -> Option<(Self, Self)> {
        let (ids_l, ids_r) = self.ids.split_at_checked(mid)?;
        let (msg_l, msg_r) = self.messages.split_at_checked(mid)?;
        let (sig_l, sig_r) = self.signatures.split_at_checked(mid)?;
        let (w_l, w_r) = self.weights.split_at_checked(mid)?;
        Some((
            Self {
                ids: ids_l,
                messages: msg_l,
                signatures: sig_l,
                weights: w_l,
            },
            Self {
                ids: ids_r,
                messages: msg_r,
                signatures: sig_r,
                weights: w_r,
            },
        ))
    }
}

/// Append the input indices of the invalid entries of `span` to `outcome`; `known_bad` when
/// the span is already known to fail its batch check. Returns whether it found any.
fn search<Bk: Backend>(
    span: Span<'_, Bk>,
    known_bad: bool,
    keys: &[(&Bk::G2, &Bk::G2Prepared)],
    outcome: &mut Outcome,
) -> bool {
    if span.len() <= 1 {
        return verify_singly(span, keys, outcome);
    }
    if !known_bad {
        outcome.pairing_checks += 1;
        if batch_holds(span, keys) {
            return false;
        }
    }
    let Some((left, right)) = span.split_at(span.len() / 2) else {
        // Unreachable (the slices have equal lengths); stay exact anyway.
        return verify_singly(span, keys, outcome);
    };
    let left_bad = search(left, false, keys, outcome);
    // Same weights, so the span's product is the product of its halves': if the left half
    // holds, the right one fails and need not be checked as a whole.
    let right_bad = search(right, !left_bad, keys, outcome);
    left_bad || right_bad
}

/// The ordinary 2-pairing verify of each entry of `span` (used at size 1).
fn verify_singly<Bk: Backend>(
    span: Span<'_, Bk>,
    keys: &[(&Bk::G2, &Bk::G2Prepared)],
    outcome: &mut Outcome,
) -> bool {
    let mut found = false;
    let items = span.ids.iter().zip(span.messages).zip(span.signatures);
    for ((&(group, index), message), signature) in items {
        outcome.pairing_checks += 1;
        let valid = keys
            .get(group)
            .is_some_and(|(_, prepared)| verify_points::<Bk>(prepared, message, signature));
        if !valid {
            outcome.invalid.push(index);
            found = true;
        }
    }
    found
}

/// The weighted batch equation over `span`, one multi-Miller loop and one final exponentiation.
fn batch_holds<Bk: Backend>(span: Span<'_, Bk>, keys: &[(&Bk::G2, &Bk::G2Prepared)]) -> bool {
    if span.len() == 0 {
        return true;
    }
    let signature_sum = Bk::g1_lincomb(span.signatures, span.weights);
    // One message sum per run of a key (the span is sorted by key).
    let mut message_sums: Vec<(Bk::G1, usize)> = Vec::new();
    let (mut messages, mut weights) = (span.messages, span.weights);
    for run in span.ids.chunk_by(|a, b| a.0 == b.0) {
        let (Some((m, m_rest)), Some((w, w_rest)), Some(&(group, _))) = (
            messages.split_at_checked(run.len()),
            weights.split_at_checked(run.len()),
            run.first(),
        ) else {
            return false;
        };
        message_sums.push((Bk::g1_lincomb(m, w), group));
        (messages, weights) = (m_rest, w_rest);
    }
    let mut terms: Vec<(&Bk::G1, &Bk::G2Prepared)> = Vec::with_capacity(message_sums.len() + 1);
    terms.push((&signature_sum, Bk::neg_g2_generator_prepared()));
    for (sum, group) in &message_sums {
        let Some((_, prepared)) = keys.get(*group) else {
            return false;
        };
        terms.push((sum, *prepared));
    }
    Bk::pairing_product_is_one(&terms)
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    //! The generic core on raw points, on both backends: exact answers, the identity refused,
    //! and the bisection's cost (pairing checks), which the public API does not show.

    use rand::SeedableRng;
    use rand::rngs::ChaCha20Rng;

    use super::*;
    use crate::backend::{Native, Portable, random_nonzero_scalar};
    use crate::domain::BLS_DST;

    /// `n` (message, signature) pairs under two keys (even i: key 0, odd i: key 1), all valid.
    struct Fixture<Bk: Backend> {
        keys: [(Bk::G2, Bk::G2Prepared); 2],
        messages: Vec<Bk::G1>,
        signatures: Vec<Bk::G1>,
    }

    fn fixture<Bk: Backend>(n: usize, seed: u64) -> Fixture<Bk> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let sks = [
            random_nonzero_scalar::<Bk>(&mut rng),
            random_nonzero_scalar::<Bk>(&mut rng),
        ];
        let keys = sks.map(|sk| {
            let pk = Bk::g2_mul_generator(&sk);
            (pk, Bk::g2_prepare(&pk))
        });
        let messages: Vec<_> = (0..n)
            .map(|i| Bk::hash_to_g1(format!("message {i}").as_bytes(), BLS_DST))
            .collect();
        let signatures = messages
            .iter()
            .zip(sks.iter().cycle())
            .map(|(h, sk)| Bk::g1_mul(h, sk))
            .collect();
        Fixture {
            keys,
            messages,
            signatures,
        }
    }

    fn run<Bk: Backend>(f: &Fixture<Bk>, seed: u64) -> Outcome {
        let entries = f
            .messages
            .iter()
            .zip(&f.signatures)
            .zip(f.keys.iter().cycle())
            .map(|((m, s), (key, prepared))| Entry::<Bk> {
                key,
                prepared,
                message: *m,
                signature: *s,
            });
        find_invalid::<Bk>(entries, &mut ChaCha20Rng::seed_from_u64(seed))
    }

    #[test]
    fn one_bad_among_64_costs_a_logarithmic_number_of_checks() {
        let mut f = fixture::<Native>(64, 1);
        let clean = run(&f, 0);
        assert!(clean.invalid.is_empty());
        assert_eq!(clean.pairing_checks, 1);
        let mut worst = 0;
        for bad in 0..64 {
            let good = f.signatures[bad];
            f.signatures[bad] = Native::g1_mul(&good, &Native::scalar_from_u64(2));
            let outcome = run(&f, bad as u64);
            assert_eq!(outcome.invalid, vec![bad]);
            // Whole batch, then per level (32, 16, 8, 4, 2, 1) the left half and, only when
            // the culprit is there, the right half too: at most 1 + 2 * log2(64).
            assert!(outcome.pairing_checks <= 13, "{bad}: {outcome:?}");
            worst = worst.max(outcome.pairing_checks);
            f.signatures[bad] = good;
        }
        assert_eq!(worst, 13);
    }

    #[test]
    fn an_identity_signature_is_refused_without_a_pairing() {
        let mut f = fixture::<Native>(4, 2);
        // sigma = O satisfies e(O, G2) == e(H(m), PK) for no valid key, and single verify
        // refuses it outright; the batch must too.
        f.signatures[2] = Native::g1_mul(&f.signatures[2], &Native::scalar_from_u64(0));
        let outcome = run(&f, 0);
        assert_eq!(outcome.invalid, vec![2]);
        assert_eq!(outcome.pairing_checks, 1);
    }

    #[test]
    fn both_backends_find_the_same_culprits() {
        let mut native = fixture::<Native>(8, 3);
        let mut portable = fixture::<Portable>(8, 3);
        // A compensating pair (sum of signatures unchanged) and a swap across keys.
        native.signatures.swap(1, 3);
        portable.signatures.swap(1, 3);
        native.signatures.swap(4, 7);
        portable.signatures.swap(4, 7);
        assert_eq!(run(&native, 9).invalid, vec![1, 3, 4, 7]);
        assert_eq!(run(&portable, 9).invalid, vec![1, 3, 4, 7]);
    }

    #[test]
    fn weights_are_non_zero_and_below_2_pow_128() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        for _ in 0..256 {
            let w = weight::<Native>(&mut rng);
            assert!(!Native::scalar_is_zero(&w));
            let be = Native::scalar_to_be(&w);
            assert_eq!(be[..16], [0u8; 16]);
        }
    }
}
