//! Conductor validator PWA (Leptos, wasm32): scans the QR with the webcam (rqrr), verifies
//! offline against the manifest and Bloom filter, shows only VALID/INVALID and the expiry.
//!
//! Skeleton: filled in by the validator PWA issue.
