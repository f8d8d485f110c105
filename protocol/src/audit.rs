//! What the payments service tells auditors: how many receipts, tickets and money it signed
//! per keyset, signed with its receipt key so an audit report can carry it as evidence.

use serde::{Deserialize, Serialize};
use ticketing_crypto::keyset::KeysetId;

use crate::keys::{Sig, SignKey, VerifyKey};
use crate::{ProtocolError, domain};

/// Receipt totals of one keyset.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysetTotals {
    /// The keyset.
    pub keyset_id: KeysetId,
    /// Number of receipts signed.
    pub receipts: u64,
    /// Sum of their ticket counts.
    pub tickets: u64,
    /// Sum of their amounts (minor units; one keyset is one product, so one currency).
    pub amount: u64,
}

/// `GET /v1/audit/totals` on the payments service.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptTotals {
    /// Unix seconds when the totals were read.
    pub time: u64,
    /// Per keyset, ordered by keyset id; keysets without receipts are absent.
    pub keysets: Vec<KeysetTotals>,
    /// Ed25519 signature by the payments key over [`ReceiptTotals::signing_bytes`].
    pub signature: Sig,
}

impl ReceiptTotals {
    /// Build and sign.
    pub fn sign(time: u64, keysets: Vec<KeysetTotals>, key: &SignKey) -> Self {
        let mut totals = Self {
            time,
            keysets,
            signature: Sig([0; 64]),
        };
        totals.signature = key.sign(&totals.signing_bytes());
        totals
    }

    /// The bytes the payments key signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 32 * self.keysets.len());
        out.extend_from_slice(domain::RECEIPT_TOTALS);
        out.extend_from_slice(&self.time.to_be_bytes());
        let n = u32::try_from(self.keysets.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        for k in &self.keysets {
            out.extend_from_slice(&k.keyset_id.0);
            out.extend_from_slice(&k.receipts.to_be_bytes());
            out.extend_from_slice(&k.tickets.to_be_bytes());
            out.extend_from_slice(&k.amount.to_be_bytes());
        }
        out
    }

    /// Check the signature under the manifest's payments key.
    pub fn verify(&self, payments_key: &VerifyKey) -> Result<(), ProtocolError> {
        payments_key.verify("receipt totals", &self.signing_bytes(), &self.signature)
    }

    /// The totals of one keyset (zero when it has no receipts).
    pub fn keyset(&self, id: &KeysetId) -> KeysetTotals {
        self.keysets
            .iter()
            .find(|k| &k.keyset_id == id)
            .copied()
            .unwrap_or(KeysetTotals {
                keyset_id: *id,
                receipts: 0,
                tickets: 0,
                amount: 0,
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use rand::SeedableRng;
    use rand::rngs::ChaCha20Rng;

    use super::*;

    #[test]
    fn totals_signature_covers_every_figure() {
        let key = SignKey::generate(&mut ChaCha20Rng::seed_from_u64(1));
        let keyset_id = KeysetId([7; 8]);
        let totals = ReceiptTotals::sign(
            10,
            vec![KeysetTotals {
                keyset_id,
                receipts: 2,
                tickets: 5,
                amount: 1250,
            }],
            &key,
        );
        totals.verify(&key.verify_key()).unwrap();
        let mut more = totals.clone();
        if let Some(k) = more.keysets.first_mut() {
            k.tickets = 6;
        }
        assert!(more.verify(&key.verify_key()).is_err());
        assert_eq!(totals.keyset(&KeysetId([1; 8])).tickets, 0);
        assert_eq!(totals.keyset(&keyset_id).amount, 1250);
    }
}
