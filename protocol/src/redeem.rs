//! Redemption (online) and offline sync between validators and the coordinator.

use serde::{Deserialize, Serialize};

use ticketing_crypto::keyset::KeysetId;
use ticketing_crypto::ticket::Serial;

use crate::{ErrorCode, Id16};

/// One scan of a presentation.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedeemBatch {
    /// Scans in any order.
    pub scans: Vec<Scan>,
}

/// The coordinator's verdict on one scan.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedeemResponse {
    /// Echo.
    pub scan_id: Id16,
    /// The verdict.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// `POST /v1/sync`: scans a validator accepted while offline.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// Queued scans.
    pub scans: Vec<Scan>,
}

/// What the coordinator made of one synced scan.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResult {
    /// Echo.
    pub scan_id: Id16,
    /// Outcome.
    #[serde(flatten)]
    pub status: SyncStatus,
}

/// Answer to a sync.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    /// One result per scan, in request order.
    pub results: Vec<SyncResult>,
}

/// Answer to `POST /v1/redeem/batch`.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedeemBatchResponse {
    /// One answer per scan, in request order.
    pub results: Vec<RedeemResponse>,
}

/// `POST /v1/admin/revoke` (admin token): deny a serial, e.g. after a refund.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeRequest {
    /// The ticket's keyset (the entry is pruned with it).
    pub keyset_id: KeysetId,
    /// The ticket's serial.
    pub serial: Serial,
}

/// Answer of `POST /v1/admin/revoke`.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// Always true: the serial is on the deny list (it may have been already).
    pub revoked: bool,
}

/// Answer of `POST /v1/admin/bloom/rebuild`.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebuilt {
    /// The version of the snapshot now published.
    pub version: u64,
}

/// Why a serial is on the deny list.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// An operator revoked it.
    Revoked,
    /// Offline scans conflicted (a copied ticket).
    Duplicate,
}

/// One deny-list entry, as `GET /v1/admin/deny` lists them.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenyEntry {
    /// Keyset.
    pub keyset_id: KeysetId,
    /// Serial.
    pub serial: Serial,
    /// Why.
    pub reason: DenyReason,
    /// Unix seconds.
    pub denied_at: u64,
}

/// Aggregate counts for one keyset (`GET /v1/admin/stats`). Counts only: no serial, device or
/// time of an individual scan.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysetStats {
    /// Keyset.
    pub keyset_id: KeysetId,
    /// Product name.
    pub product: String,
    /// Window start.
    pub valid_from: u64,
    /// Window end.
    pub valid_until: u64,
    /// Tickets covered by receipts that at least t nodes logged (`None`: nodes unreachable).
    pub issued: Option<u64>,
    /// Distinct tickets redeemed at least once.
    pub redeemed: u64,
    /// Accepted scans (a pass counts once per epoch, a transfer once more).
    pub scans: u64,
    /// Serials on the deny list.
    pub denied: u64,
}

/// Answer to `GET /v1/admin/stats`.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Per keyset, manifest order.
    pub keysets: Vec<KeysetStats>,
    /// Scans flagged as suspected sharing.
    pub suspected_sharing: u64,
    /// Offline scans recorded as duplicates.
    pub duplicates: u64,
}

/// One entry of the access audit trail (`GET /v1/admin/actions`, admin or auditor token).
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminAction {
    /// Increasing; the cursor of `?after=`.
    pub id: u64,
    /// Unix seconds.
    pub at: u64,
    /// Who: the acting token's name, or `cli` for an ops command run on the coordinator's
    /// database. Never an address.
    pub actor: String,
    /// What, e.g. `device_registered`, `device_revoked`, `ticket_revoked`, `partner_added`,
    /// `filter_rebuilt`.
    pub action: String,
    /// The object, e.g. a device's name and role, a keyset (never a serial).
    pub detail: String,
}

/// Answer to `GET /v1/admin/actions`.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminActions {
    /// Oldest first, after the cursor.
    pub actions: Vec<AdminAction>,
}

/// What a coordinator token may do. Tokens carry their role in a prefix (`tkv_`, `tka_`,
/// `tkr_`) so a device, an operator and a test can tell them apart at a glance.
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    /// Redeem and sync.
    Validator,
    /// Everything, including revocation and stats.
    Admin,
    /// Read-only: stats. Cannot redeem, sync, revoke or rebuild.
    Auditor,
}

impl TokenRole {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validator => "validator",
            Self::Admin => "admin",
            Self::Auditor => "auditor",
        }
    }

    /// The inverse of [`TokenRole::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "validator" => Some(Self::Validator),
            "admin" => Some(Self::Admin),
            "auditor" => Some(Self::Auditor),
            _ => None,
        }
    }

    /// The prefix of this role's tokens.
    pub fn token_prefix(self) -> &'static str {
        match self {
            Self::Validator => "tkv_",
            Self::Admin => "tka_",
            Self::Auditor => "tkr_",
        }
    }
}

/// What a conductor's device needs to start: the coordinator, its device token and the
/// digest of the manifest to trust. `ticketing validator register --qr` prints it as text and
/// as a QR code; the validator app reads either. Text form: `TKR1:<digest>:<token>:<url>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Registration {
    /// The manifest digest to pin.
    pub manifest_digest: crate::Digest32,
    /// The device token (a secret).
    pub token: String,
    /// The coordinator's base URL.
    pub coordinator_url: String,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("manifest_digest", &self.manifest_digest)
            .field("token", &"<redacted>")
            .field("coordinator_url", &self.coordinator_url)
            .finish()
    }
}

impl Registration {
    /// Prefix of the text form.
    pub const PREFIX: &'static str = "TKR1";

    /// The text form.
    pub fn to_text(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            Self::PREFIX,
            self.manifest_digest,
            self.token,
            self.coordinator_url
        )
    }

    /// Parse the text form (surrounding whitespace ignored).
    pub fn from_text(text: &str) -> Result<Self, crate::ProtocolError> {
        let bad = |reason: &str| crate::ProtocolError::Malformed {
            what: "registration code",
            reason: reason.to_owned(),
        };
        let mut parts = text.trim().splitn(4, ':');
        if parts.next() != Some(Self::PREFIX) {
            return Err(bad("it does not start with TKR1:"));
        }
        let digest = parts.next().ok_or_else(|| bad("no manifest digest"))?;
        let manifest_digest = crate::Digest32::from_hex(digest)?;
        let token = parts.next().ok_or_else(|| bad("no device token"))?;
        if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("the device token is empty or not one word"));
        }
        let url = parts.next().ok_or_else(|| bad("no coordinator URL"))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(bad("the coordinator URL is not http(s)"));
        }
        Ok(Self {
            manifest_digest,
            token: token.to_owned(),
            coordinator_url: url.trim_end_matches('/').to_owned(),
        })
    }
}

#[cfg(test)]
mod registration_tests {
    use super::*;

    #[test]
    fn a_registration_code_round_trips_and_bad_ones_are_refused() {
        let r = Registration {
            manifest_digest: crate::Digest32([7; 32]),
            token: "tkv_abc".into(),
            coordinator_url: "http://127.0.0.1:7601".into(),
        };
        let text = r.to_text();
        assert_eq!(
            Registration::from_text(&format!(" {text}\n")).ok(),
            Some(r.clone())
        );
        assert!(!format!("{r:?}").contains("tkv_abc"));
        for bad in [
            "",
            "TKR2:00:tkv:http://x",
            &text.replace("tkv_abc", ""),
            &text.replace("http://", "ftp://"),
            &text.replace("0707", "zz07"),
        ] {
            assert!(Registration::from_text(bad).is_err(), "{bad}");
        }
    }
}
