//! Key custody behind a small trait (cf. cdk's `Signatory`): the HTTP layer asks for
//! signatures and never sees a share or the identity key.

use std::collections::HashMap;

use ticketing_crypto::issuance::{self, BlindedPoint, PartialSignature};
use ticketing_crypto::keyset::{KeysetId, SecretKeyShare, ShareIndex};
use ticketing_protocol::keys::{Sig, SignKey, VerifyKey};

/// What a node's keys can do.
pub trait Signatory: Send + Sync + std::fmt::Debug + 'static {
    /// This node's share index.
    fn index(&self) -> ShareIndex;
    /// The identity public key.
    fn identity(&self) -> VerifyKey;
    /// Keysets this node holds a share of.
    fn keysets(&self) -> Vec<KeysetId>;
    /// `sk_i * B_j` for each point; `None` if the keyset is not held.
    fn sign_points(
        &self,
        keyset: &KeysetId,
        points: &[BlindedPoint],
    ) -> Option<Vec<PartialSignature>>;
    /// Sign a message with the identity key (issue responses, checkpoints).
    fn sign_message(&self, message: &[u8]) -> Sig;
}

/// Shares and identity key held in process memory (zeroized on drop by their types).
#[derive(Debug)]
pub struct LocalSignatory {
    index: ShareIndex,
    identity: SignKey,
    shares: HashMap<KeysetId, SecretKeyShare>,
}

impl LocalSignatory {
    /// From already verified shares.
    pub fn new(
        index: ShareIndex,
        identity: SignKey,
        shares: impl IntoIterator<Item = (KeysetId, SecretKeyShare)>,
    ) -> Self {
        Self {
            index,
            identity,
            shares: shares.into_iter().collect(),
        }
    }
}

impl Signatory for LocalSignatory {
    fn index(&self) -> ShareIndex {
        self.index
    }

    fn identity(&self) -> VerifyKey {
        self.identity.verify_key()
    }

    fn keysets(&self) -> Vec<KeysetId> {
        let mut ids: Vec<_> = self.shares.keys().copied().collect();
        ids.sort();
        ids
    }

    fn sign_points(
        &self,
        keyset: &KeysetId,
        points: &[BlindedPoint],
    ) -> Option<Vec<PartialSignature>> {
        let share = self.shares.get(keyset)?;
        Some(
            points
                .iter()
                .map(|p| issuance::partial_sign(share, p))
                .collect(),
        )
    }

    fn sign_message(&self, message: &[u8]) -> Sig {
        self.identity.sign(message)
    }
}
