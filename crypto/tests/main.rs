//! The crypto crate's integration tests, one binary:
//!
//! - `batch`: Batch verification of ticket signatures: it must say exactly what one
//!   `Ticket::verify` per item says, across keysets, for every kind and position of bad item.
//! - `decoders`: Every decoder fed arbitrary bytes returns a typed error or a value; it never
//!   panics.
//! - `presentation`: The rotating QR payload: encoding, freshness, tampering, and that it really
//!   fits a QR code.
//! - `threshold`: The threshold properties: any t combine to the same ticket, t-1 never, bad
//!   partials blamed.
//! - `vectors`: Known-answer vectors: everything derived from a seeded RNG, compared against
//!   `tests/vectors/kat.json`. A change in any byte (encoding, hashing, domain tags, share
//!   numbering) fails here. After an intended change, regenerate with `TICKETING_BLESS=1 cargo
//!   test -p ticketing-crypto --test vectors` and review the diff.

// Test code: a panic is how a test fails, and fixtures index known-size data.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

mod batch;
mod common;
mod decoders;
mod presentation;
mod threshold;
mod vectors;
