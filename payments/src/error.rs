//! The crate's one error type and its mapping to wire errors.

use thiserror::Error;
use ticketing_crypto::keyset::KeysetId;
use ticketing_protocol::ErrorCode;
use ticketing_protocol::voucher::VoucherError;
use ticketing_service::ApiError;
use ticketing_service::db::StoreError;

use crate::card::{CardError, Decline};

/// Everything that can go wrong in the payments service, its store and its admin functions.
///
/// Display texts are safe to show and to log: they never contain a card number, a voucher
/// code or a digest (product names only when they come from the manifest).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PaymentsError {
    /// The product is not in the manifest.
    #[error("no product with that name; the products are: {known}")]
    UnknownProduct {
        /// The manifest's product names.
        known: String,
    },
    /// The keyset is not in the manifest.
    #[error("keyset {0} is not in the manifest")]
    UnknownKeyset(KeysetId),
    /// The keyset belongs to another product (a malformed request, not a window problem).
    #[error("keyset {keyset} is for product `{keyset_product}`, not `{requested}`")]
    KeysetWrongProduct {
        /// The keyset.
        keyset: KeysetId,
        /// Its product (from the manifest).
        keyset_product: String,
        /// The product requested (also from the manifest: unknown products fail earlier).
        requested: String,
    },
    /// The keyset is not on sale: its window has ended, or less than the product's minimum is
    /// left of it (the next window is on sale), or it lies further ahead.
    #[error(
        "keyset {0} is not on sale now: its window has ended, too little of it is left, or it \
         starts later; buy the keyset on sale (the manifest's current or next window)"
    )]
    KeysetEnded(KeysetId),
    /// A request field is out of range (detail says which and what would be accepted).
    #[error("{0}")]
    Malformed(String),
    /// The card number is not well-formed.
    #[error(transparent)]
    Card(#[from] CardError),
    /// The (stub) processor declined the card.
    #[error("card declined: {0}")]
    Declined(#[from] Decline),
    /// The voucher code was mistyped (caught by its check character or format).
    #[error("invalid voucher code: {0}")]
    VoucherTypo(#[from] VoucherError),
    /// A well-formed voucher code that was never issued.
    #[error("unknown voucher code")]
    UnknownVoucher,
    /// The voucher pays for another product.
    #[error("this voucher is for product `{0}`")]
    VoucherWrongProduct(String),
    /// The voucher was already used.
    #[error("this voucher was already used")]
    VoucherUsed,
    /// An operator voided the voucher.
    #[error("this voucher was voided by the operator")]
    VoucherVoided,
    /// A receipt for the same blinded points exists with another keyset or count.
    #[error("these blinded points were already paid for with another keyset or count")]
    DigestConflict,
    /// No issued receipt for these blinded points (`GET /v1/receipts/{digest}`; a card payment
    /// still in progress has none yet either).
    #[error("no receipt for these blinded points")]
    NoReceipt,
    /// Another attempt is paying for the same blinded points and did not finish within the
    /// wait; the client retries (its retry gets that attempt's receipt, nothing is paid twice).
    #[error("a payment for these blinded points is in progress; retry shortly")]
    PaymentInProgress,
    /// A card was charged but its reservation is gone (no receipt can be issued for it).
    #[error("the reservation of a charged payment is missing")]
    ReservationLost,
    /// The task running a card checkout failed (panicked).
    #[error("checkout task: {0}")]
    TaskFailed(String),
    /// `add_vouchers` was given a hash that is already stored.
    #[error("a voucher with this code already exists")]
    DuplicateVoucher,
    /// The receipt key does not match the manifest's payments key.
    #[error("the receipt key does not match the manifest's payments key")]
    KeyMismatch,
    /// The database URL names no supported backend.
    #[error("unsupported database URL (expected sqlite:, postgres:// or postgresql://)")]
    UnsupportedDatabase,
    /// The database failed (nothing of the operation was kept).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading the manifest or the key bundle failed.
    #[error(transparent)]
    Config(#[from] ticketing_config::ConfigError),
}

impl PaymentsError {
    /// The stable wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownProduct { .. } | Self::NoReceipt => ErrorCode::NotFound,
            Self::UnknownKeyset(_) => ErrorCode::UnknownKeyset,
            Self::KeysetEnded(_) => ErrorCode::KeysetNotActive,
            Self::KeysetWrongProduct { .. } | Self::Malformed(_) | Self::Card(_) => {
                ErrorCode::Malformed
            }
            Self::Declined(_) => ErrorCode::CardDeclined,
            Self::VoucherTypo(_)
            | Self::UnknownVoucher
            | Self::VoucherWrongProduct(_)
            | Self::VoucherVoided => ErrorCode::InvalidVoucher,
            Self::VoucherUsed => ErrorCode::VoucherUsed,
            Self::DigestConflict => ErrorCode::ReceiptReused,
            Self::PaymentInProgress => ErrorCode::Unavailable,
            Self::Store(StoreError::Unavailable(_)) => ErrorCode::Unavailable,
            Self::DuplicateVoucher
            | Self::ReservationLost
            | Self::TaskFailed(_)
            | Self::KeyMismatch
            | Self::UnsupportedDatabase
            | Self::Store(_)
            | Self::Config(_) => ErrorCode::Internal,
        }
    }

    /// Whether this is the server's fault (logged as an error, detail hidden from clients).
    /// A payment in progress is not: it is the expected answer to a concurrent retry.
    pub fn is_internal(&self) -> bool {
        !matches!(self, Self::PaymentInProgress)
            && matches!(self.code(), ErrorCode::Internal | ErrorCode::Unavailable)
    }
}

/// The one place payments errors become wire errors.
impl From<PaymentsError> for ApiError {
    fn from(e: PaymentsError) -> Self {
        let code = e.code();
        if !e.is_internal() {
            return Self::new(code, e.to_string());
        }
        match code {
            ErrorCode::Unavailable => Self::new(code, "database unavailable; retry later"),
            _ => Self::new(code, "internal error"),
        }
    }
}
