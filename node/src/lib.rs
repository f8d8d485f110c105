//! Issuer node: holds one Shamir share per keyset, checks payment receipts and blinded points,
//! returns partial blind signatures, and appends every signing to a hash-chained, signed log.
//! Exposes `router()` + `serve(listener, shutdown)`.
//!
//! Skeleton: filled in by the nodes/payments issue. Never depends on `coordinator`.
