//! The `ticketing` binary as its users run it, one test binary:
//!
//! - `cli`: The `ticketing` binary as a user runs it: setup refusals and files, config example,
//!   and the wallet against a real cluster on loopback.
//! - `coordinator_kill`: Durability of the spent ledger: the real `ticketing coordinator` process
//!   is SIGKILLed in the middle of a concurrent redeem load and restarted on the same data
//!   directory; every scan that was answered `accepted` before the kill is in the ledger
//!   afterwards, a retry of it gets the same answer, and the ticket cannot be used again under a
//!   new scan id.
//! - `partner`: `ticketing partner add|list` and `ticketing validator register --auditor` as an
//!   operator runs them where the coordinator runs (its SQLite database and cluster in
//!   `data_dir`).
//! - `validator`: `ticketing validate` and `ticketing validator ...` as a conductor runs them,
//!   against a real cluster on loopback (payments, nodes and coordinator in this process; the
//!   cluster dealt by `ticketing setup` with a `single` that has no transfer window, so a second
//!   scan is `spent`).

// Test code: a panic is how a test fails, and fixtures index known-size data.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod cli;
mod coordinator_kill;
mod partner;
mod validator;
