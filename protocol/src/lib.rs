//! Wire types shared by every side of the system: the public manifest, payment receipts, the
//! issuance exchange, redemption and offline sync, the Bloom/deny-list snapshot, and the error
//! body with its stable codes.
//!
//! Everything is JSON (serde) with binary values as lowercase hex (base64 for the Bloom bits).
//! Values that carry curve points use the checked types from `ticketing-crypto`, so a body that
//! deserializes holds only valid points ("parse, don't validate"). Signed objects sign a fixed
//! binary encoding with a domain tag (`signing_bytes`), never their JSON.

pub mod audit;
mod error;
mod ids;
pub mod issue;
pub mod keys;
pub mod log;
pub mod manifest;
pub mod partner;
pub mod publication;
pub mod receipt;
pub mod redeem;
pub mod verify;
pub mod voucher;
pub mod when;

pub use error::{ErrorBody, ErrorCode, ProtocolError};
pub use ids::{Digest32, Id16};

/// Domain tags for the signed binary encodings.
pub mod domain {
    /// Payment receipt.
    pub const RECEIPT: &[u8] = b"ticketing/v1/receipt";
    /// Digest of the blinded points a receipt pays for.
    pub const BLINDED_DIGEST: &[u8] = b"ticketing/v1/blinded-points";
    /// A node's signed issue response (blame evidence).
    pub const ISSUE_RESPONSE: &[u8] = b"ticketing/v1/issue-response";
    /// The coordinator's Bloom/deny-list snapshot.
    pub const SNAPSHOT: &[u8] = b"ticketing/v2/bloom-snapshot";
    /// Prefix of the signed bytes of a snapshot made before the filter went on the wire as
    /// bytes (it signed a hash of the filter's base64): still accepted from a validator's cache.
    pub const SNAPSHOT_V1: &[u8] = b"ticketing/v1/bloom-snapshot";
    /// The manifest digest.
    pub const MANIFEST: &[u8] = b"ticketing/v1/manifest";
    /// The payments service's receipt totals for auditors.
    pub const RECEIPT_TOTALS: &[u8] = b"ticketing/v1/payments-totals";
}

/// Append a length-prefixed byte string (u32 big-endian length) to a signing encoding.
pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}
