//! Authentication: opaque bearer tokens and license keys drawn from ring's
//! `SystemRandom`, shown once and stored as SHA-256; passwords hashed with
//! argon2id. A missing or unknown token is 401; another org's resources
//! answer 404 elsewhere (never 403, never a hint they exist).

use crate::error::ApiError;
use crate::state::AppState;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use base64::Engine;
use ring::rand::SecureRandom;
use seatledger_schema::LicenseId;
use seatledger_schema::Password;
use std::sync::OnceLock;

pub use crate::directory::{Principal, TokenGrant};

/// Password hashes computed at once. Each argon2id run holds 19 MiB, so
/// unbounded concurrent logins would be a memory-exhaustion vector; excess
/// requests wait their turn.
pub const PASSWORD_HASHING_CONCURRENCY: usize = 2;
static PASSWORD_HASHING: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(PASSWORD_HASHING_CONCURRENCY);

async fn hashing_permit() -> Result<tokio::sync::SemaphorePermit<'static>, ApiError> {
    PASSWORD_HASHING
        .acquire()
        .await
        .map_err(|e| ApiError::internal(&e))
}

pub const TOKEN_PREFIX: &str = "slt_";
pub const LICENSE_KEY_PREFIX: &str = "slk_";
const SECRET_BYTES: usize = 32;

/// A fresh random secret: `prefix` + base64url of 32 random bytes.
pub fn random_secret(prefix: &str) -> Result<String, ApiError> {
    let mut bytes = [0u8; SECRET_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "no randomness available",
            )
        })?;
    Ok(secret_from_bytes(prefix, &bytes))
}

pub fn secret_from_bytes(prefix: &str, bytes: &[u8]) -> String {
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What is stored for a token or key.
pub fn secret_hash(secret: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn argon2() -> Argon2<'static> {
    // argon2id, version 0x13, m = 19 MiB, t = 2, p = 1 (OWASP's baseline).
    Argon2::default()
}

pub async fn hash_password(password: Password) -> Result<String, ApiError> {
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "no randomness available",
            )
        })?;
    let _permit = hashing_permit().await?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::encode_b64(&salt).map_err(|e| ApiError::internal(&e))?;
        argon2()
            .hash_password(password.expose().as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| ApiError::internal(&e))
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
}

/// Verifies `password` against a stored hash, or against a dummy hash when
/// there is no user, so that unknown emails take as long as wrong passwords.
pub async fn verify_password(password: Password, stored: Option<String>) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let stored = stored.unwrap_or_else(|| {
        DUMMY
            .get_or_init(|| {
                let salt = SaltString::encode_b64(b"seatledger-dummy")
                    .unwrap_or_else(|_| unreachable!("valid salt"));
                argon2()
                    .hash_password(b"not a password", &salt)
                    .map(|h| h.to_string())
                    .unwrap_or_default()
            })
            .clone()
    });
    let Ok(_permit) = hashing_permit().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || match PasswordHash::new(&stored) {
        Ok(parsed) => argon2()
            .verify_password(password.expose().as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    })
    .await
    .unwrap_or(false)
}

/// The credential of an `Authorization: <scheme> <credential>` header,
/// trimmed, if the header uses `scheme`. A bare `<scheme>` (an empty
/// credential, its space trimmed in transit) counts as that scheme.
pub fn credential<'a>(parts: &'a Parts, scheme: &str) -> Option<&'a str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix(scheme))
        .filter(|rest| rest.is_empty() || rest.starts_with(' '))
        .map(str::trim)
}

fn unauthorized(detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("an Authorization: Bearer token is required"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty() && token.len() <= 200)
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let hash = secret_hash(token);
        let grant = match state.caches.tokens.get(&hash) {
            Some(entry) => entry,
            None => {
                let entry = state
                    .directory
                    .principal_by_token(&hash)
                    .await
                    .map_err(ApiError::from)?
                    .ok_or_else(|| unauthorized("unknown or revoked token"))?;
                state.caches.tokens.insert(hash, entry.clone());
                entry
            }
        };
        let TokenGrant {
            principal,
            issued_at,
            expires_at,
            licenses,
        } = grant;
        if state.clock.now() >= expires_at {
            state.caches.tokens.remove(&hash);
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "token_expired",
                format!("the token expired at {expires_at}: log in again"),
            ));
        }
        let seat_route = is_seat_route(parts);
        if principal.client.is_some() && !seat_route {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a client token (scope `seats`) may only acquire, heartbeat and release seats",
            ));
        }
        if seat_route {
            if let Err(seconds) = state.seat_limits.check(&hash) {
                return Err(ApiError::too_many_requests(
                    seconds,
                    "too many seat operations with this token: see --rate-limit-seat-ops-per-s"
                        .to_owned(),
                ));
            }
        }
        // The request's log line says whose request it was.
        tracing::Span::current().record("org_id", tracing::field::display(principal.org_id));
        parts.extensions.insert(CallingToken {
            hash,
            issued_at,
            expires_at,
        });
        parts.extensions.insert(TokenLicenses(licenses));
        Ok(principal)
    }
}

/// The seat routes: the only ones a client token (scope `seats`) may call
/// (every other route refuses it, so a route added later is closed to
/// client tokens until listed here), and the ones
/// `--rate-limit-seat-ops-per-s` limits per token.
pub const SEAT_ROUTES: [&str; 3] = [
    "/api/v1/licenses/acquire",
    "/api/v1/licenses/heartbeat",
    "/api/v1/licenses/release",
];

fn is_seat_route(parts: &Parts) -> bool {
    parts
        .extensions
        .get::<axum::extract::MatchedPath>()
        .is_some_and(|path| SEAT_ROUTES.contains(&path.as_str()))
}

/// The licenses a client token is limited to (`None`: any of its org's);
/// set by the `Principal` extractor.
#[derive(Clone, Debug, Default)]
pub struct TokenLicenses(pub Option<std::sync::Arc<[LicenseId]>>);

/// Read after the `Principal` extractor (declare it first); missing, the
/// request fails rather than run unlimited.
impl FromRequestParts<AppState> for TokenLicenses {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<TokenLicenses>()
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "TokenLicenses read before Principal",
                )
            })
    }
}

impl TokenLicenses {
    pub fn allows(&self, license_id: LicenseId) -> bool {
        self.0.as_ref().is_none_or(|ids| ids.contains(&license_id))
    }
}

/// The token a request authenticated with (set by the `Principal`
/// extractor), for logout and refresh.
#[derive(Clone, Copy, Debug)]
pub struct CallingToken {
    pub hash: [u8; 32],
    pub issued_at: seatledger_schema::Timestamp,
    pub expires_at: seatledger_schema::Timestamp,
}

/// A principal allowed to administer its org (owner or admin).
pub struct Admin(pub Principal);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        if !principal.role.is_admin() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this needs an owner or admin of the organization",
            ));
        }
        Ok(Admin(principal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_random_and_hashed() {
        let a = random_secret(TOKEN_PREFIX).unwrap();
        let b = random_secret(TOKEN_PREFIX).unwrap();
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
        assert_eq!(secret_hash(&a), secret_hash(&a));
        assert_ne!(secret_hash(&a), secret_hash(&b));
    }

    #[tokio::test]
    async fn passwords_verify_only_with_the_right_password() {
        let hash = hash_password(Password::new("correct horse")).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(Password::new("correct horse"), Some(hash.clone())).await);
        assert!(!verify_password(Password::new("wrong"), Some(hash)).await);
        assert!(!verify_password(Password::new("anything"), None).await);
    }
}
