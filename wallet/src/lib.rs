//! Passenger wallet PWA (Leptos, wasm32): buys tickets through `client`, keeps holder keys as
//! non-extractable WebCrypto keys, shows the rotating QR.
//!
//! Skeleton: filled in by the wallet PWA issue.
