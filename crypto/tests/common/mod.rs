//! Shared by the crypto integration tests.
#![allow(dead_code, unreachable_pub)]

use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use ticketing_crypto::issuance::{self, BlindedPoint, BlindingFactor, PartialSignature};
use ticketing_crypto::keyset::{self, DealtKeyset, KeysetId, KeysetParams};
use ticketing_crypto::ticket::{HolderSecret, Ticket};

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub fn params() -> KeysetParams {
    KeysetParams {
        product: "day".to_owned(),
        valid_from: 1_767_225_600,
        valid_until: 1_767_312_000,
    }
}

/// One dealt keyset and one blinded ticket request, all from a seed.
pub struct Setup {
    pub threshold: usize,
    pub keyset: DealtKeyset,
    pub keyset_id: KeysetId,
    pub holder: HolderSecret,
    pub blinded: BlindedPoint,
    pub factor: BlindingFactor,
    pub partials: Vec<PartialSignature>,
}

pub fn setup(seed: u64, threshold: usize, nodes: usize) -> Setup {
    let mut rng = rng(seed);
    let keyset = keyset::deal(threshold, nodes, &mut rng).unwrap();
    let keyset_id = KeysetId::derive(&keyset.public_key().unwrap(), &params());
    let holder = HolderSecret::generate(&mut rng);
    let (blinded, factor) = issuance::blind(&keyset_id, &holder.public_key(), &mut rng);
    let partials = keyset
        .shares
        .iter()
        .map(|s| issuance::partial_sign(s, &blinded))
        .collect();
    Setup {
        threshold,
        keyset,
        keyset_id,
        holder,
        blinded,
        factor,
        partials,
    }
}

impl Setup {
    pub fn ticket_from(
        &self,
        partials: &[PartialSignature],
    ) -> Result<Ticket, ticketing_crypto::CryptoError> {
        let blind = issuance::combine(self.threshold, partials)?;
        let signature = issuance::unblind(&blind, &self.factor);
        let ticket = Ticket {
            keyset_id: self.keyset_id,
            holder: self.holder.public_key(),
            signature,
        };
        ticket.verify(&self.keyset.public_key()?)?;
        Ok(ticket)
    }
}

/// All k-subsets of 0..n, in lexicographic order.
pub fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    fn go(start: usize, n: usize, k: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if cur.len() == k {
            out.push(cur.clone());
            return;
        }
        for i in start..n {
            cur.push(i);
            go(i + 1, n, k, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    go(0, n, k, &mut Vec::new(), &mut out);
    out
}
