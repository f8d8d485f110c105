//! Passenger wallet PWA (Leptos CSR, wasm32): buys tickets through the wallet core
//! (`ticketing_client::wallet`), keeps each holder key as a non-extractable WebCrypto Ed25519
//! key in IndexedDB with the ticket, shows the rotating QR. No account, nothing personal.
//!
//! The page is a thin shell over the core: [`store`] implements the core's storage and key
//! traits for the browser, [`app`] renders the screens (tickets, buy, show) and runs the
//! purchase state machine, which stores each step before the next.
#![cfg(target_arch = "wasm32")]

// The component macro generates items the lint cannot see are used.
#[allow(unreachable_pub)]
mod app;
mod store;

use wasm_bindgen::prelude::*;

/// Entry point, called by `boot.js` once the module is instantiated.
#[wasm_bindgen(start)]
pub fn start() {
    leptos::mount::mount_to_body(app::App);
}
