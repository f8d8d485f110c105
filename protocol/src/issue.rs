//! The issuance exchange between a wallet and each node.

use serde::{Deserialize, Serialize};
use ticketing_crypto::issuance::{BlindedPoint, PartialSignature};
use ticketing_crypto::keyset::{KeysetId, ShareIndex};

use crate::keys::{Sig, SignKey, VerifyKey};
use crate::receipt::SignedReceipt;
use crate::{Digest32, Id16, ProtocolError, domain};

/// `POST /v1/issue` on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueRequest {
    /// The payment receipt covering exactly these points.
    pub receipt: SignedReceipt,
    /// The blinded points, each a checked G1 point.
    pub blinded: Vec<BlindedPoint>,
}

/// A G1 point as hex, decoded by the receiver (who knows which node sent it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct G1Hex(#[serde(with = "hex::serde")] pub [u8; 48]);

/// A node's answer: its partial signatures, signed with its identity key so a wrong answer is
/// evidence against the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueResponse {
    /// The answering node.
    pub node: ShareIndex,
    /// Echo of the receipt id.
    pub receipt_id: Id16,
    /// Echo of the keyset.
    pub keyset_id: KeysetId,
    /// Echo of the receipt digest.
    pub digest: Digest32,
    /// `S_ij = sk_i * B_j`, in request order.
    pub partials: Vec<G1Hex>,
    /// Ed25519 signature by the node identity key over [`IssueResponse::signing_bytes`].
    pub signature: Sig,
}

impl IssueResponse {
    /// Build and sign a response.
    pub fn sign(
        key: &SignKey,
        node: ShareIndex,
        receipt_id: Id16,
        keyset_id: KeysetId,
        digest: Digest32,
        partials: &[PartialSignature],
    ) -> Self {
        let mut r = Self {
            node,
            receipt_id,
            keyset_id,
            digest,
            partials: partials.iter().map(|p| G1Hex(p.to_bytes())).collect(),
            signature: Sig([0; 64]),
        };
        r.signature = key.sign(&r.signing_bytes());
        r
    }

    /// The bytes the node's identity key signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 48 * self.partials.len());
        out.extend_from_slice(domain::ISSUE_RESPONSE);
        out.extend_from_slice(&self.node.get().to_be_bytes());
        out.extend_from_slice(&self.receipt_id.0);
        out.extend_from_slice(&self.keyset_id.0);
        out.extend_from_slice(&self.digest.0);
        out.extend_from_slice(
            &u32::try_from(self.partials.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        for p in &self.partials {
            out.extend_from_slice(&p.0);
        }
        out
    }

    /// Check the node's signature.
    pub fn verify(&self, identity_key: &VerifyKey) -> Result<(), ProtocolError> {
        identity_key.verify("issue response", &self.signing_bytes(), &self.signature)
    }

    /// Decode the partials as this node's (each point checked).
    pub fn partial_signatures(&self) -> Result<Vec<PartialSignature>, ProtocolError> {
        self.partials
            .iter()
            .map(|p| PartialSignature::from_bytes(self.node, &p.0).map_err(ProtocolError::from))
            .collect()
    }
}
