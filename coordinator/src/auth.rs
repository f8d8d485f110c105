//! Bearer tokens for validator devices, admins, auditors and partners. A token is 32 random
//! bytes shown once (hex, with a prefix naming its role: `tkv_` validator, `tka_` admin, `tkr_`
//! auditor (read-only), `tkp_` partner); the database keeps only its SHA-256, so a leaked
//! database grants nothing. Partner tokens live in their own table: they open the partner feed
//! and nothing else, and device tokens do not open it.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use ticketing_protocol::ErrorCode;
use ticketing_service::ApiError;
use zeroize::Zeroizing;

use crate::Coordinator;
use crate::store::{Device, Partner, Role};

/// A freshly made token. Shown once; redacted in Debug; zeroized on drop.
pub struct Token(Zeroizing<String>);

impl Token {
    /// A new random token for `role`.
    pub fn generate(role: Role) -> Self {
        Self::with_prefix(role.token_prefix())
    }

    /// A new random partner token (`tkp_`).
    pub fn partner() -> Self {
        Self::with_prefix("tkp_")
    }

    fn with_prefix(prefix: &str) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::Rng::fill_bytes(&mut rand::rng(), bytes.as_mut_slice());
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

/// A request authenticated as a validator device (or an admin; not an auditor).
#[derive(Debug, Clone)]
pub struct Validator(pub Device);

/// A request authenticated as an admin.
#[derive(Debug, Clone)]
pub struct Admin(pub Device);

/// A request authenticated as an admin or an auditor (read-only endpoints).
#[derive(Debug, Clone)]
pub struct Reader(pub Device);

/// A request authenticated as a partner (`tkp_` token).
#[derive(Debug, Clone)]
pub struct PartnerAuth(pub Partner);

fn unauthorized(detail: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, detail)
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing `Authorization: Bearer <token>`"))?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("expected `Authorization: Bearer <token>`"))
}

async fn authenticate(parts: &Parts, coordinator: &Coordinator) -> Result<Device, ApiError> {
    let token = bearer(parts)?;
    coordinator
        .device(&token_hash(token))
        .await?
        .ok_or_else(|| unauthorized("unknown token"))
}

/// An authenticated device whose role is one of `allowed`; `refusal` says what is needed.
async fn authorize(
    parts: &Parts,
    coordinator: &Coordinator,
    allowed: &[Role],
    refusal: &str,
) -> Result<Device, ApiError> {
    let device = authenticate(parts, coordinator).await?;
    if allowed.contains(&device.role) {
        Ok(device)
    } else {
        Err(unauthorized(refusal))
    }
}

impl FromRequestParts<Coordinator> for Validator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Coordinator,
    ) -> Result<Self, Self::Rejection> {
        let allowed = [Role::Validator, Role::Admin];
        authorize(parts, state, &allowed, "an auditor token is read-only")
            .await
            .map(Self)
    }
}

impl FromRequestParts<Coordinator> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Coordinator,
    ) -> Result<Self, Self::Rejection> {
        let allowed = [Role::Admin, Role::Auditor];
        authorize(
            parts,
            state,
            &allowed,
            "this endpoint needs an admin or an auditor token",
        )
        .await
        .map(Self)
    }
}

impl FromRequestParts<Coordinator> for PartnerAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Coordinator,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        state
            .store()
            .partner(&token_hash(token))
            .await
            .map_err(crate::CoordinatorError::from)?
            .map(Self)
            .ok_or_else(|| unauthorized("unknown partner token"))
    }
}

impl FromRequestParts<Coordinator> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Coordinator,
    ) -> Result<Self, Self::Rejection> {
        authorize(
            parts,
            state,
            &[Role::Admin],
            "this endpoint needs an admin token",
        )
        .await
        .map(Self)
    }
}

/// The tokens each extractor needs, in the services' OpenAPI description.
mod described {
    use schemars::SchemaGenerator;
    use ticketing_service::openapi::{Input, Operation};

    impl Input for super::Validator {
        fn describe(op: &mut Operation, _: &mut SchemaGenerator) {
            op.bearer("a validator device token (or an admin token)");
        }
    }

    impl Input for super::Admin {
        fn describe(op: &mut Operation, _: &mut SchemaGenerator) {
            op.bearer("an admin token");
        }
    }

    impl Input for super::Reader {
        fn describe(op: &mut Operation, _: &mut SchemaGenerator) {
            op.bearer("an admin or an auditor token");
        }
    }

    impl Input for super::PartnerAuth {
        fn describe(op: &mut Operation, _: &mut SchemaGenerator) {
            op.bearer("a partner feed token (`tkp_...`)");
        }
    }
}
