//! The payments service's integration tests, one binary:
//!
//! - `http`: The payments service over real HTTP (127.0.0.1:0, reqwest): card and voucher
//!   checkouts, idempotent retries (concurrent ones, abandoned and hung-up card payments), receipt
//!   lookup and renewal, every refusal with its stable code, body limits, and no card number in
//!   the database. The cases that touch storage run on SQLite and on Postgres.
//! - `logs`: What the payments service logs, captured at TRACE for every target: outcomes, never a
//!   card number, a voucher code or a digest (not even the one in a lookup's URL).
//! - `store`: The storage conformance suite: every case runs against SQLite (a temp file) and
//!   Postgres (a fresh database on `TICKETING_TEST_POSTGRES_URL`; skipped with a note when unset,
//!   an error when `TICKETING_REQUIRE_POSTGRES=1`).

// Test code: a panic is how a test fails, and fixtures index known-size data.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
mod http;
mod logs;
mod store;
