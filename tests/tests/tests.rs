//! End-to-end tests, one binary (ripgrep-style table of contents):
//!
//! - `wasm_flow`: the crypto flow (deal, blind, partial sign, combine, unblind, verify,
//!   present) runs inside wasm32 under Node.js; its bytes equal the native run's, and the
//!   `blst` crate verifies the wasm-made ticket.

mod wasm_flow;
