use ticketing_protocol::ErrorCode;
use ticketing_service::ApiError;

use crate::store::StoreError;

/// Everything a node can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The receipt's signature does not verify under the manifest's payments key.
    #[error("the receipt is not signed by the payments service")]
    InvalidReceipt,
    /// The receipt has expired.
    #[error("the receipt expired at {0}")]
    ReceiptExpired(u64),
    /// The keyset is unknown to the manifest or to this node.
    #[error("keyset {0} is not held by this node")]
    UnknownKeyset(String),
    /// The receipt was issued when its keyset was not on sale (`Manifest::sellable`).
    #[error("keyset {0} was not on sale when the receipt was issued")]
    KeysetNotActive(String),
    /// The same blinded point appears twice in the request.
    #[error("blinded point {0} appears twice; each ticket needs its own")]
    DuplicatePoint(usize),
    /// The points do not match the receipt.
    #[error("{0}")]
    DigestMismatch(String),
    /// Too many points in one request.
    #[error("{got} points in one request, at most {max} allowed")]
    TooManyPoints {
        /// Given.
        got: usize,
        /// Limit.
        max: u32,
    },
    /// The receipt was already honoured for other points.
    #[error("this receipt was already used for other blinded points")]
    ReceiptReused,
    /// Storage failed; nothing was signed. (Not `#[from]`: the message already carries the
    /// store's, which a source would repeat in every printed chain.)
    #[error("storage: {0}")]
    Store(StoreError),
    /// Loading the node failed (startup only).
    #[error(transparent)]
    Config(#[from] ticketing_config::ConfigError),
    /// A background task failed.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let code = match &e {
            NodeError::InvalidReceipt => ErrorCode::InvalidReceipt,
            NodeError::ReceiptExpired(_) => ErrorCode::ReceiptExpired,
            NodeError::UnknownKeyset(_) => ErrorCode::UnknownKeyset,
            NodeError::KeysetNotActive(_) => ErrorCode::KeysetNotActive,
            NodeError::DigestMismatch(_) => ErrorCode::DigestMismatch,
            NodeError::DuplicatePoint(_) => ErrorCode::DuplicatePoint,
            NodeError::TooManyPoints { .. } => ErrorCode::Malformed,
            NodeError::ReceiptReused => ErrorCode::ReceiptReused,
            NodeError::Store(_) => ErrorCode::Unavailable,
            NodeError::Config(_) | NodeError::Internal(_) => ErrorCode::Internal,
        };
        if matches!(code, ErrorCode::Unavailable | ErrorCode::Internal) {
            tracing::error!(error = %e, "request failed");
            return ApiError::new(code, "the node could not complete the request; retry");
        }
        ApiError::new(code, e.to_string())
    }
}

impl axum::response::IntoResponse for NodeError {
    fn into_response(self) -> axum::response::Response {
        ApiError::from(self).into_response()
    }
}

impl From<StoreError> for NodeError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}
