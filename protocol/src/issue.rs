//! The issuance exchange between a wallet and each node.

use serde::{Deserialize, Serialize};
use ticketing_crypto::issuance::{self, BlindedPoint, PartialSignature};
use ticketing_crypto::keyset::{KeysetId, ShareIndex};

use crate::keys::{Sig, SignKey, VerifyKey};
use crate::manifest::Manifest;
use crate::receipt::{SignedReceipt, blinded_digest};
use crate::{Digest32, Id16, ProtocolError, domain};

/// `POST /v1/issue` on every node.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
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

#[cfg(feature = "openapi")]
ticketing_crypto::hex_schema!(
    G1Hex,
    "G1Point",
    48,
    "A G1 point (compressed), decoded by the receiver."
);

/// A node's answer: its partial signatures, signed with its identity key so a wrong answer is
/// evidence against the node.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
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

/// Evidence that a node signed wrong partials: its own signed response and the points it was
/// asked to sign. Anyone holding the manifest can check it ([`Blame::check`]); the wallet keeps
/// it and hands it to the auditors. It says nothing about the passenger: the points are
/// uniformly random and the response names only the node, the receipt and the keyset.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blame {
    /// The node.
    pub node: ShareIndex,
    /// Its signed response.
    pub response: IssueResponse,
    /// The points it was asked to sign.
    pub blinded: Vec<BlindedPoint>,
}

/// What a node provably did wrong, established by [`Blame::check`].
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Misbehaviour {
    /// Partials (by position) that fail `e(S_ij, G2) == e(B_j, PK_i)`.
    WrongPartials {
        /// Positions of the wrong partials.
        positions: Vec<usize>,
    },
    /// A partial that is not a valid G1 point of the subgroup.
    InvalidPoint {
        /// Its position.
        position: usize,
    },
    /// A signed answer with another number of partials than points asked for.
    WrongCount {
        /// Points asked for.
        asked: usize,
        /// Partials answered.
        answered: usize,
    },
}

impl Blame {
    /// Check the evidence against the manifest. `Ok` names what the node did wrong; `Err`
    /// means the evidence does not hold (not signed by that node, points that are not the ones
    /// the node signed for, or a response that is correct after all).
    pub fn check(&self, manifest: &Manifest) -> Result<Misbehaviour, ProtocolError> {
        let refused = |reason: String| ProtocolError::Malformed {
            what: "blame evidence",
            reason,
        };
        let r = &self.response;
        if r.node != self.node {
            return Err(refused(format!(
                "the evidence names node {} but the response is from node {}",
                self.node, r.node
            )));
        }
        let info = manifest
            .nodes
            .iter()
            .find(|n| n.index == self.node)
            .ok_or_else(|| refused(format!("node {} is not in the manifest", self.node)))?;
        r.verify(&info.identity_key)?;
        if blinded_digest(&self.blinded) != r.digest {
            return Err(refused(
                "the points are not the ones the node's signed digest covers".into(),
            ));
        }
        let keyset = manifest
            .keyset(&r.keyset_id)
            .ok_or_else(|| refused(format!("keyset {} is not in the manifest", r.keyset_id)))?;
        let pk = keyset.public_key_share(self.node).ok_or_else(|| {
            refused(format!(
                "the manifest has no PK_{} for keyset {}",
                self.node, keyset.id
            ))
        })?;
        if r.partials.len() != self.blinded.len() {
            return Ok(Misbehaviour::WrongCount {
                asked: self.blinded.len(),
                answered: r.partials.len(),
            });
        }
        let mut positions = Vec::new();
        for (position, (hex, point)) in r.partials.iter().zip(&self.blinded).enumerate() {
            let Ok(partial) = PartialSignature::from_bytes(self.node, &hex.0) else {
                return Ok(Misbehaviour::InvalidPoint { position });
            };
            if issuance::verify_partial(pk, point, &partial).is_err() {
                positions.push(position);
            }
        }
        if positions.is_empty() {
            return Err(refused(
                "every partial in the response is correct: the node did nothing wrong".into(),
            ));
        }
        Ok(Misbehaviour::WrongPartials { positions })
    }
}
