use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Stable error codes on the wire. Apps match on these; the `detail` text is for humans.
/// Renaming a variant is a breaking change: the serde names are the contract.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The body or a field could not be parsed (includes invalid points).
    Malformed,
    /// The body exceeds the size limit.
    PayloadTooLarge,
    /// Missing or wrong credentials (device token, admin token, partner token).
    Unauthorized,
    /// The requested resource does not exist.
    NotFound,
    /// The keyset id is not in the manifest.
    UnknownKeyset,
    /// The keyset is outside its issuance window.
    KeysetNotActive,
    /// The receipt's signature does not verify under the payments key.
    InvalidReceipt,
    /// The receipt has expired.
    ReceiptExpired,
    /// The receipt was already used for other blinded points.
    ReceiptReused,
    /// The blinded points do not match the receipt's digest or count.
    DigestMismatch,
    /// The test card was declined.
    CardDeclined,
    /// The voucher code is unknown, mistyped or for another product.
    InvalidVoucher,
    /// The voucher was already used.
    VoucherUsed,
    /// The ticket was already used (single) or the serial is denied.
    Spent,
    /// The ticket's BLS signature or the holder signature does not verify.
    InvalidSignature,
    /// The keyset's validity window has ended.
    Expired,
    /// The keyset's validity window has not started.
    NotYetValid,
    /// The presentation's epoch is too far from the verifier's clock (a screenshot).
    StaleEpoch,
    /// This (serial, epoch) was already scanned.
    ReplayedEpoch,
    /// A printed (static) code of a product that cannot be printed: only singles can.
    NotPrintable,
    /// The ticket was revoked by an operator.
    Revoked,
    /// The server failed; nothing was recorded.
    Internal,
    /// A dependency (database, another service) is unavailable; retry later.
    Unavailable,
    /// The manifest is not the one this wallet or validator pinned (by digest).
    ManifestMismatch,
    /// This device already used the scan id for another ticket or epoch.
    ScanIdReused,
    /// A synced scan's time is further in the future than the allowed clock skew.
    FutureTimestamp,
    /// The same blinded point appears twice in one checkout or issue request.
    DuplicatePoint,
    /// A device token of that name exists (register with `--replace` to replace it).
    NameTaken,
    /// Too many requests from this client; retry after the `Retry-After` seconds.
    RateLimited,
}

impl ErrorCode {
    /// The wire name, e.g. `stale_epoch`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::UnknownKeyset => "unknown_keyset",
            Self::KeysetNotActive => "keyset_not_active",
            Self::InvalidReceipt => "invalid_receipt",
            Self::ReceiptExpired => "receipt_expired",
            Self::ReceiptReused => "receipt_reused",
            Self::DigestMismatch => "digest_mismatch",
            Self::CardDeclined => "card_declined",
            Self::InvalidVoucher => "invalid_voucher",
            Self::VoucherUsed => "voucher_used",
            Self::Spent => "spent",
            Self::InvalidSignature => "invalid_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::StaleEpoch => "stale_epoch",
            Self::ReplayedEpoch => "replayed_epoch",
            Self::NotPrintable => "not_printable",
            Self::Revoked => "revoked",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
            Self::ManifestMismatch => "manifest_mismatch",
            Self::ScanIdReused => "scan_id_reused",
            Self::FutureTimestamp => "future_timestamp",
            Self::DuplicatePoint => "duplicate_point",
            Self::NameTaken => "name_taken",
            Self::RateLimited => "rate_limited",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of every error response: `{"code": "...", "detail": "..."}`.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable explanation; never contains personal data.
    pub detail: String,
}

impl ErrorBody {
    /// Build an error body.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

/// Errors from checking wire objects.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// A signature over a wire object did not verify.
    #[error("invalid {0} signature")]
    InvalidSignature(&'static str),
    /// A field could not be decoded.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which field.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A filter update starts from another version than the one held.
    #[error("the filter update applies to version {from}, not to the version {held} held")]
    DeltaBase {
        /// The version held.
        held: u64,
        /// The version the update starts from.
        from: u64,
    },
    /// A cryptographic value was refused.
    #[error(transparent)]
    Crypto(#[from] ticketing_crypto::CryptoError),
}
