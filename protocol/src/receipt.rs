//! Payment receipts: the payments service's signed statement that k tickets of a keyset were
//! paid for, bound to the digest of the blinded points (and nothing about the payer).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ticketing_crypto::issuance::BlindedPoint;
use ticketing_crypto::keyset::KeysetId;

use crate::keys::{Sig, SignKey, VerifyKey};
use crate::{Digest32, Id16, ProtocolError, domain, put_bytes};

/// D = SHA-256(tag || B_1 || ... || B_k).
pub fn blinded_digest(points: &[BlindedPoint]) -> Digest32 {
    let mut h = Sha256::new();
    h.update(domain::BLINDED_DIGEST);
    for p in points {
        h.update(p.to_bytes());
    }
    Digest32(h.finalize().into())
}

/// The index of the first point that repeats an earlier one, if any. Each ticket needs its own
/// blinded point: the payments service and every node refuse a repeat (`duplicate_point`)
/// rather than charge for, or sign, the same ticket twice.
pub fn first_duplicate(points: &[BlindedPoint]) -> Option<usize> {
    let mut seen = std::collections::HashSet::with_capacity(points.len());
    points.iter().position(|p| !seen.insert(p.to_bytes()))
}

/// The receipt body.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Random id chosen by the payments service.
    pub receipt_id: Id16,
    /// The keyset paid for.
    pub keyset_id: KeysetId,
    /// Number of tickets.
    pub count: u32,
    /// Digest of the blinded points ([`blinded_digest`]).
    pub digest: Digest32,
    /// Amount paid, minor units.
    pub amount: u64,
    /// ISO 4217 code.
    pub currency: String,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds after which nodes refuse it.
    pub expires_at: u64,
}

impl Receipt {
    /// The bytes the payments key signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(domain::RECEIPT);
        out.extend_from_slice(&self.receipt_id.0);
        out.extend_from_slice(&self.keyset_id.0);
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.digest.0);
        out.extend_from_slice(&self.amount.to_be_bytes());
        put_bytes(&mut out, self.currency.as_bytes());
        out.extend_from_slice(&self.issued_at.to_be_bytes());
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        out
    }

    /// Whether `other` is this sale: the same id, keyset, count, digest, amount and currency.
    /// A renewal changes only `expires_at` (and the signature), so nodes that logged the
    /// original and nodes that logged a renewal agree on the sale.
    pub fn same_sale(&self, other: &Self) -> bool {
        self.receipt_id == other.receipt_id
            && self.keyset_id == other.keyset_id
            && self.count == other.count
            && self.digest == other.digest
            && self.amount == other.amount
            && self.currency == other.currency
    }

    /// Sign with the payments key.
    pub fn sign(self, key: &SignKey) -> SignedReceipt {
        let signature = key.sign(&self.signing_bytes());
        SignedReceipt {
            receipt: self,
            signature,
        }
    }
}

/// A receipt with the payments service's signature.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReceipt {
    /// The body.
    #[serde(flatten)]
    pub receipt: Receipt,
    /// Ed25519 signature over [`Receipt::signing_bytes`].
    pub signature: Sig,
}

impl SignedReceipt {
    /// Check the signature under the manifest's payments key.
    pub fn verify(&self, payments_key: &VerifyKey) -> Result<(), ProtocolError> {
        payments_key.verify("receipt", &self.receipt.signing_bytes(), &self.signature)
    }
}

/// How the passenger pays. Debug shows the method only: no card number or voucher code.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum PaymentMethod {
    /// A test card number (stub processor; documented numbers succeed or decline).
    Card {
        /// Card number as typed. Never stored or logged.
        number: String,
    },
    /// A cash voucher code `XXXX-XXXX-XXXX-XXXX`.
    Voucher {
        /// The code.
        code: String,
    },
}

impl std::fmt::Debug for PaymentMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Card { .. } => f.write_str("Card(<redacted>)"),
            Self::Voucher { .. } => f.write_str("Voucher(<redacted>)"),
        }
    }
}

/// `POST /v1/checkout` on the payments service.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutRequest {
    /// Product name.
    pub product: String,
    /// Keyset to issue under.
    pub keyset_id: KeysetId,
    /// Number of tickets.
    pub count: u32,
    /// [`blinded_digest`] of the points the wallet will send to the nodes.
    pub digest: Digest32,
    /// Payment.
    pub payment: PaymentMethod,
}
