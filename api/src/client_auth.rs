//! Who acquires a seat: an API token (`Authorization: Bearer …`), or the
//! license key alone (`Authorization: License <key>`), for client apps that
//! carry no organization credential. The license's `client_auth` says
//! which it accepts; the appender checks it (`client_auth_not_allowed`).

use crate::auth::{credential, secret_hash, Principal, TokenLicenses};
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use seatledger_schema::{LicenseId, OrgId};

/// The caller of an acquire.
pub enum AcquireCaller {
    Token(Principal, TokenLicenses),
    /// The license the presented key opens.
    LicenseKey {
        license_id: LicenseId,
        org_id: OrgId,
        key_hash: [u8; 32],
    },
}

impl AcquireCaller {
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            AcquireCaller::Token(principal, _) => Some(principal),
            AcquireCaller::LicenseKey { .. } => None,
        }
    }
}

/// Unknown and malformed keys answer alike: nothing tells a guesser
/// whether a key exists.
fn unknown_key() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "unknown license key",
    )
}

impl FromRequestParts<AppState> for AcquireCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(key) = credential(parts, "License") else {
            let principal = Principal::from_request_parts(parts, state).await?;
            let licenses = TokenLicenses::from_request_parts(parts, state).await?;
            return Ok(AcquireCaller::Token(principal, licenses));
        };
        if key.is_empty() || key.len() > 200 {
            return Err(unknown_key());
        }
        let key_hash = secret_hash(key);
        if let Err(seconds) = state.seat_limits.check(&key_hash) {
            return Err(ApiError::too_many_requests(
                seconds,
                "too many seat operations with this license key: see --rate-limit-seat-ops-per-s"
                    .to_owned(),
            ));
        }
        let found = match state.caches.license_keys.get(&key_hash) {
            Some(found) => Some(found),
            None => {
                let found = state.directory.license_by_key(&key_hash).await?;
                if let Some(found) = found {
                    state.caches.license_keys.insert(key_hash, found);
                }
                found
            }
        };
        let (license_id, org_id) = found.ok_or_else(unknown_key)?;
        tracing::Span::current().record("org_id", tracing::field::display(org_id));
        Ok(AcquireCaller::LicenseKey {
            license_id,
            org_id,
            key_hash,
        })
    }
}
