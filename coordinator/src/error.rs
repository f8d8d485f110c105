use ticketing_protocol::ErrorCode;
use ticketing_service::ApiError;

use crate::store::StoreError;

/// Everything the coordinator can refuse or fail at. Verdicts on scans are not errors: they
/// are answers ([`ticketing_protocol::redeem::Verdict`]); these are failures of a request.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// A request refused with a stable code.
    #[error("{1}")]
    Refused(ErrorCode, String),
    /// Storage failed; nothing was recorded.
    #[error("storage: {0}")]
    Store(StoreError),
    /// Loading the coordinator failed (startup only).
    #[error(transparent)]
    Config(#[from] ticketing_config::ConfigError),
    /// A background task failed.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<StoreError> for CoordinatorError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Taken(name) => Self::Refused(
                ErrorCode::NameTaken,
                format!(
                    "a device named `{name}` is registered; pass --replace to revoke its token and issue a new one"
                ),
            ),
            other => Self::Store(other),
        }
    }
}

impl From<CoordinatorError> for ApiError {
    fn from(e: CoordinatorError) -> Self {
        let code = match &e {
            CoordinatorError::Refused(code, _) => *code,
            CoordinatorError::Store(_) => ErrorCode::Unavailable,
            CoordinatorError::Config(_) | CoordinatorError::Internal(_) => ErrorCode::Internal,
        };
        if matches!(code, ErrorCode::Unavailable | ErrorCode::Internal) {
            tracing::error!(error = %e, "request failed");
            return ApiError::new(
                code,
                "the coordinator could not complete the request; nothing was recorded; retry",
            );
        }
        ApiError::new(code, e.to_string())
    }
}

impl axum::response::IntoResponse for CoordinatorError {
    fn into_response(self) -> axum::response::Response {
        ApiError::from(self).into_response()
    }
}
