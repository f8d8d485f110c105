//! The conductor's validator PWA (Leptos CSR, wasm32) on the validator core
//! (`ticketing_client::validator`): registers from a code, scans with the camera (rqrr in wasm),
//! a picture or a pasted payload, verifies offline, redeems online or queues in IndexedDB and
//! syncs by itself, and shows one full-screen verdict, nothing about the passenger.
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
