use thiserror::Error;

/// Why a curve point was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PointError {
    /// Not a valid compressed encoding of a point on the curve.
    #[error("not a valid compressed point on the curve")]
    Encoding,
    /// On the curve but outside the prime-order subgroup (signing it would leak the key share).
    #[error("point is not in the prime-order subgroup")]
    NotInSubgroup,
    /// The point at infinity.
    #[error("point is the identity")]
    Identity,
}

/// Everything that can go wrong in this crate. Each outcome a caller may act on is a variant.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CryptoError {
    /// A G1 or G2 point from outside was refused.
    #[error("invalid {what}: {reason}")]
    InvalidPoint {
        /// Which value held the point.
        what: &'static str,
        /// Why it was refused.
        reason: PointError,
    },
    /// A byte string had the wrong length.
    #[error("invalid {what}: expected {expected} bytes, got {got}")]
    WrongLength {
        /// Which value.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// Bytes that are not a canonical value of their type.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which value.
        what: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// A presentation payload with a version this code does not speak.
    #[error("unsupported presentation version {0}")]
    UnsupportedVersion(u8),
    /// Threshold parameters outside 1 <= t <= n <= 65535.
    #[error("invalid threshold {threshold} of {nodes}: need 1 <= t <= n")]
    InvalidThreshold {
        /// t
        threshold: usize,
        /// n
        nodes: usize,
    },
    /// Share index 0 or too large.
    #[error("invalid share index {0}: indices are 1..=n")]
    InvalidShareIndex(u32),
    /// Fewer partial signatures than the threshold: combining would silently give a wrong result.
    #[error("need {need} shares to combine, got {got}")]
    TooFewShares {
        /// Threshold.
        need: usize,
        /// Shares given.
        got: usize,
    },
    /// The same share index twice in one combine.
    #[error("share index {0} appears more than once")]
    DuplicateShareIndex(u16),
    /// A secret share does not match the Feldman commitments.
    #[error("share {0} does not match the keyset commitments")]
    ShareVerification(u16),
    /// A partial signature does not verify against its node's public key share.
    #[error("partial signature from node {0} is invalid")]
    InvalidPartial(u16),
    /// The ticket's BLS signature does not verify.
    #[error("ticket signature is invalid")]
    InvalidSignature,
    /// The holder's Ed25519 signature over the epoch does not verify.
    #[error("holder signature is invalid")]
    InvalidHolderSignature,
    /// The presentation's epoch is outside the accepted window around the verifier's clock.
    #[error("presentation epoch {epoch} is outside the window around {now}")]
    StaleEpoch {
        /// Epoch in the payload.
        epoch: u32,
        /// Verifier's epoch.
        now: u32,
    },
    /// A zero scalar where a non-zero one is required (e.g. a blinding factor).
    #[error("zero scalar")]
    ZeroScalar,
}

impl CryptoError {
    pub(crate) fn length(what: &'static str, expected: usize, got: usize) -> Self {
        Self::WrongLength {
            what,
            expected,
            got,
        }
    }
}
