//! Redemption (online) and offline sync between validators and the coordinator.

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, Id16};

/// One scan of a presentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scan {
    /// Chosen by the validator; makes retries and sync idempotent.
    pub scan_id: Id16,
    /// The presentation's QR text (Base45).
    pub payload: String,
    /// Validator clock, unix seconds.
    pub scanned_at: u64,
}

/// `POST /v1/redeem` (one scan) — the batch form is [`RedeemBatch`].
pub type RedeemRequest = Scan;

/// `POST /v1/redeem/batch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedeemBatch {
    /// Scans in any order.
    pub scans: Vec<Scan>,
}

/// The coordinator's verdict on one scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum Verdict {
    /// Valid: let the passenger through.
    Accepted {
        /// Unix seconds until which the ticket stays valid (window end or transfer end).
        valid_until: u64,
    },
    /// Not valid, with the stable reason.
    Rejected {
        /// `spent`, `invalid_signature`, `expired`, `not_yet_valid`, `stale_epoch`,
        /// `replayed_epoch`, `revoked`, `unknown_keyset` or `malformed`.
        code: ErrorCode,
    },
}

/// Answer to one scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedeemResponse {
    /// Echo.
    pub scan_id: Id16,
    /// The verdict.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// `POST /v1/sync`: scans a validator accepted while offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// Queued scans.
    pub scans: Vec<Scan>,
}

/// What the coordinator made of one synced scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum SyncStatus {
    /// Recorded as the first use (or a valid pass use).
    Recorded,
    /// This scan id was already synced: nothing changed.
    AlreadySynced,
    /// An earlier scan of the same ticket won; this one is recorded as a duplicate and the
    /// serial is now denied.
    Conflict {
        /// Why, e.g. `spent`.
        code: ErrorCode,
        /// When the winning scan happened.
        first_scanned_at: u64,
    },
    /// A pass seen by validators at overlapping times: flagged as suspected sharing.
    SuspectedSharing,
    /// The scan itself is invalid (e.g. a bad signature).
    Rejected {
        /// Why.
        code: ErrorCode,
    },
}

/// Result for one synced scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResult {
    /// Echo.
    pub scan_id: Id16,
    /// Outcome.
    #[serde(flatten)]
    pub status: SyncStatus,
}

/// Answer to a sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    /// One result per scan, in request order.
    pub results: Vec<SyncResult>,
}
