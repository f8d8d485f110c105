//! The one implementation of "talk to the cluster", native and wasm32: buy (query all nodes
//! concurrently, combine the first t partials, blame a bad node), redeem, sync, audit fetches.
//!
//! Skeleton: filled in by the nodes/payments issue. Depends on `crypto` and `protocol` only.
