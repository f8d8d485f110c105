//! Bearer tokens for validator devices and admins. A token is 32 random bytes shown once (hex,
//! with a prefix naming its role); the database keeps only its SHA-256, so a leaked database
//! grants nothing.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use ticketing_protocol::ErrorCode;
use ticketing_service::ApiError;
use zeroize::Zeroizing;

use crate::Coordinator;
use crate::store::{Device, Role};

/// A freshly made token. Shown once; redacted in Debug; zeroized on drop.
pub struct Token(Zeroizing<String>);

impl Token {
    /// A new random token for `role`.
    pub fn generate(role: Role) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::Rng::fill_bytes(&mut rand::rng(), bytes.as_mut_slice());
        let prefix = match role {
            Role::Validator => "tkv_",
            Role::Admin => "tka_",
        };
        Self(Zeroizing::new(format!("{prefix}{}", hex::encode(*bytes))))
    }

    /// The text to hand to the device (or the admin).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What the database stores for a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// A request authenticated as a validator device (or an admin).
#[derive(Debug, Clone)]
pub struct Validator(pub Device);

/// A request authenticated as an admin.
#[derive(Debug, Clone)]
pub struct Admin(pub Device);

fn unauthorized(detail: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, detail)
}

async fn authenticate(parts: &Parts, coordinator: &Coordinator) -> Result<Device, ApiError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing `Authorization: Bearer <token>`"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("expected `Authorization: Bearer <token>`"))?;
    coordinator
        .device(&token_hash(token))
        .await?
        .ok_or_else(|| unauthorized("unknown token"))
}

impl FromRequestParts<Coordinator> for Validator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Coordinator,
    ) -> Result<Self, Self::Rejection> {
        authenticate(parts, state).await.map(Self)
    }
}

impl FromRequestParts<Coordinator> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Coordinator,
    ) -> Result<Self, Self::Rejection> {
        let device = authenticate(parts, state).await?;
        if device.role != Role::Admin {
            return Err(unauthorized("this endpoint needs an admin token"));
        }
        Ok(Self(device))
    }
}
