//! Threshold blind BLS signatures for anonymous transit tickets.
//!
//! Everything here is a pure function over bytes and points: no IO, no clock, no global RNG
//! (callers pass an RNG and the current epoch), so the same code runs in the issuer nodes, the
//! coordinator, the CLI and, compiled to wasm32, in the passenger's and the conductor's browsers.
//!
//! The flow (see `docs/PROTOCOL.md` and `ARCHITECTURE.md`):
//!
//! 1. [`keyset::deal`] creates a keyset key, splits it t-of-n with Feldman commitments.
//! 2. The wallet [`issuance::blind`]s `H(m)` for a fresh [`ticket::HolderSecret`].
//! 3. Each node [`issuance::partial_sign`]s the checked [`issuance::BlindedPoint`].
//! 4. The wallet [`issuance::combine`]s t partials, [`issuance::unblind`]s, [`issuance::verify`]s;
//!    only on failure does it [`issuance::verify_partial`] each partial to blame a node.
//! 5. The ticket is shown as a [`presentation::Presentation`] re-signed by the holder key every
//!    epoch, and verified offline.
//!
//! Curve arithmetic goes through a [`backend::Backend`]: C `blst` (via `blstrs`) natively, pure
//! Rust (blsful's `blstrs_plus`) on wasm32. Both give the same bytes; the tests check it.

pub mod backend;
pub mod batch;
mod error;
pub mod issuance;
pub mod keyset;
pub mod presentation;
#[cfg(feature = "openapi")]
pub mod schema;
pub mod ticket;

pub use error::{CryptoError, PointError};

/// Domain-separation tags. Every hash input starts with one, so no byte string can be
/// reinterpreted as another kind of message.
pub mod domain {
    /// Hash-to-curve DST: the standard IETF proof-of-possession ciphersuite, so an unblinded
    /// ticket signature is an ordinary BLS signature (blst `min_sig` verifies it).
    pub const BLS_DST: &[u8] = b"BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_POP_";
    /// Prefix of the signed ticket message `m`.
    pub const TICKET: &[u8] = b"ticketing/v1/ticket";
    /// Prefix of the keyset id hash.
    pub const KEYSET_ID: &[u8] = b"ticketing/v1/keyset-id";
    /// Prefix of the ledger serial hash.
    pub const SERIAL: &[u8] = b"ticketing/v1/serial";
    /// Prefix of the message the holder key signs each epoch.
    pub const PRESENTATION: &[u8] = b"ticketing/v1/presentation";
}
