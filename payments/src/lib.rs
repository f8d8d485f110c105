//! Payments: turns a test-card payment or a cash voucher into an Ed25519-signed receipt bound
//! to the digest of the blinded points. Stores no card number and no voucher code.
//!
//! - [`card`]: the [`card::Processor`] trait, the test-mode [`card::StubProcessor`]
//!   (documented test numbers, idempotent per receipt digest) and the self-redacting
//!   [`card::CardNumber`].
//! - [`store`]: the [`PaymentsStore`] trait with SQLite and Postgres backends: voucher hashes,
//!   receipts (nothing about the payer), card reservations, atomic idempotent checkout,
//!   renewal, totals per keyset.
//! - [`service`]: the [`Payments`] state, [`router`] and [`serve`] for `POST /v1/checkout`
//!   and `GET /v1/receipts/{digest}`.
//! - [`vouchers`]: creating voucher codes for `ticketing voucher create`.
//!
//! Checkout is idempotent per digest: a wallet whose connection dropped retries with the same
//! blinded points and gets the same receipt, without paying or burning a voucher twice. A card
//! payment reserves the digest before charging and charges with the digest as idempotency key
//! (see [`service`]). An expired receipt comes back renewed (same receipt id, fresh expiry).
//! Logs carry product, count and outcome only.

pub mod card;
mod error;
pub mod service;
pub mod store;
pub mod vouchers;

pub use error::PaymentsError;
pub use service::{Payments, router, serve};
pub use store::{PaymentsStore, open_store};
pub use vouchers::{
    Voided, create_vouchers, create_vouchers_with, generate_vouchers, list_vouchers_with,
    void_vouchers_with, voucher_id,
};
