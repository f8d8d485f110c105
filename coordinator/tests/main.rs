//! The coordinator's integration tests, one binary:
//!
//! - `store`: One conformance suite for the ledger, run against SQLite and against a real Postgres
//!   (`TICKETING_TEST_POSTGRES_URL`; `.ci/run` starts one and sets `TICKETING_REQUIRE_POSTGRES=1`
//!   so the Postgres half cannot be skipped there).

// Test code: a panic is how a test fails, and fixtures index known-size data.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod store;
