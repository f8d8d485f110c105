//! End-to-end tests, one binary (ripgrep-style table of contents):
//!
//! - `audit`: the auditor against a real 2-of-3 cluster, on SQLite and on real Postgres: a
//!   clean cluster audits clean (and a later audit extends the recorded checkpoints); an
//!   edited log row, a dropped row, a history rewritten after a recorded checkpoint, an entry
//!   with a forged receipt, a ledger redeeming more than was issued, and a byzantine node's
//!   signed wrong answer handed in by a wallet are each detected and named.
//! - `cores`: the wallet core and the validator core on their in-memory stores against a
//!   3-of-5 cluster: a purchase interrupted at every step (before paying, payment answer lost,
//!   fewer than t nodes, nodes signed but tickets not stored) resumes to its tickets; a declined
//!   card keeps nothing; ticket status over a window and a single's first showing; a manifest
//!   other than the pinned one is refused (`manifest_mismatch`); a scan decided online, as a
//!   replay, offline by choice and with the coordinator down, queued, synced, re-synced; a
//!   camera frame decodes to a payload that verifies.
//! - `edges`: the system at its edges, as an attacker or an unlucky passenger meets it: a
//!   scan id reused for another ticket is `scan_id_reused` (and scoped per device); a retry of
//!   an answered scan gets its answer however late; wallet clocks off by up to 60 s accepted
//!   at every position of the epoch; clock offsets measured from `Date` and corrected for; a
//!   validator's scans from a fast clock recorded, ones from the future refused with their own
//!   code and kept on the device; singles transfer past their window's end (coordinator,
//!   validator core and wallet alike); repeated blinded points refused; device tokens
//!   replaced, listed and revoked (401 at once).
//! - `issuance`: payments + a 3-of-5 cluster over HTTP on 127.0.0.1:0, on SQLite and on real
//!   Postgres: a purchase end to end; two nodes down still buys 100 of 100; three down names
//!   the unreachable nodes and the same receipt works once they return; a byzantine node is
//!   blamed with its signed response and the purchase still succeeds; forged, expired and
//!   reused receipts, malformed points, unknown keysets and oversized bodies get 4xx with
//!   stable codes; the logs of whole purchases hold neither card numbers nor serials.
//! - `openapi`: each service's `/openapi.json` against the service: every operation listed
//!   is called (with real purchases, scans and every kind of token) and answers as its
//!   documented schema says, none is the fallback's 404, every `$ref` resolves, and every
//!   `/v1/` path the clients, CLI and auditor call is documented.
//! - `partner_feed`: the partner feed, webhooks and auditor tokens against real issuer nodes on
//!   loopback, on SQLite and on Postgres: the coordinator follows the nodes' public logs over
//!   HTTP, a real axum receiver checks every webhook signature, backoff driven by an explicit
//!   clock, and the served background loops deliver.
//! - `redemption`: the coordinator over HTTP, on SQLite and on real Postgres: 1,000 concurrent
//!   redeems of one ticket accept exactly one; every rejection code (stale screenshot, forged
//!   and tampered payloads, unknown keyset, replayed epoch, revoked); 401 without a device or
//!   admin token; the same offline sync twice records once; conflicting offline scans are
//!   flagged and denied; the signed Bloom snapshot and its ETag; issued-versus-redeemed stats;
//!   a validator holding the previous snapshot gets a delta (the client core applies it, and
//!   falls back to the whole snapshot when what it holds is not the delta's base).
//! - `scale_out`: two coordinators on one Postgres: 1,000 concurrent redeems of one ticket split
//!   across both accept one; copies synced to both at once are each recorded and denied once;
//!   only the lease holder publishes, the other serves its snapshot and deltas, and takes over
//!   when the holder stops.
//! - `validator_pwa`: the validator PWA in headless Chromium with a fake camera fed a .y4m of
//!   a wallet's QR made at test time: registration by the pasted code (a mistyped one refused)
//!   and, on a second device, by the camera; a ticket scanned from the camera and accepted
//!   online; a replay, a forgery and a stale code refused; one accepted offline with the
//!   coordinator down, queued in IndexedDB and synced by the button; a revoked ticket refused
//!   offline after a filter refresh; a picked picture decided; with everything stopped the page
//!   starts from its service worker and decides offline.
//! - `wallet_pwa`: the wallet PWA in headless Chromium over WebDriver (`browser`), against a
//!   3-of-5 cluster and the apps server: buy with a test card and a voucher (typo caught as
//!   typed, reuse refused), a declined card, the QR read from a screenshot accepted by the CLI
//!   validator, fewer than t nodes named and the paid purchase kept across a reload and
//!   retried, then everything stopped: the page reloads from its service worker and the QR
//!   still renders and rotates; a browser without WebCrypto Ed25519 says so and still works; a
//!   byzantine node is named and its evidence exported checks out; a new deployment of the
//!   shell is offered as an update and runs once accepted. Screenshots in
//!   `target/pwa-screenshots/`.
//! - `wasm_flow`: the crypto flow (deal, blind, partial sign, combine, unblind, verify,
//!   present) runs inside wasm32 under Node.js; its bytes equal the native run's, and the
//!   `blst` crate verifies the wasm-made ticket.

// Test code: a panic is how a test fails, and fixtures index known-size data.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    unreachable_pub
)]

mod audit;
mod browser;
mod common;
mod cores;
mod edges;
mod issuance;
mod openapi;
mod partner_feed;
mod redemption;
mod scale_out;
mod validator_pwa;
mod wallet_pwa;
mod wasm_flow;
