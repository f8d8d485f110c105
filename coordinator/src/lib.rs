//! Coordinator: the atomic spent ledger, online redemption, offline sync and reconciliation,
//! signed Bloom filter and deny-list publication, validator device authentication.
//!
//! Skeleton: filled in by the coordinator issue. Never depends on `node`.
