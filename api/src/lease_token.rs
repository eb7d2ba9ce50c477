//! Lease tokens: a per-lease secret that acquire answers, and that
//! authorizes the heartbeats and the release of that one lease
//! (`Authorization: Lease <lease_token>`) and nothing else. A client app
//! can then keep its seat without holding an organization's credential
//! between calls, and a token that leaks costs at most that one lease.
//!
//! The token is `sll_` + base64url(session id ‖ HMAC-SHA-256 of the
//! session id under a key derived from the ledger's private key). Nothing
//! is stored: every replica that shares the ledger key checks it, an
//! idempotent replay of the acquire answers the same token, and a new
//! ledger key (docs/operating.md, "Keys") ends the tokens of the leases
//! live at the time (their holders heartbeat with their API token, or
//! acquire again).

use crate::auth::{credential, secret_hash, Principal, TokenLicenses};
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use base64::Engine;
use seatledger_ledger::keys::SigningKey;
use seatledger_schema::SessionId;

pub const LEASE_TOKEN_PREFIX: &str = "sll_";

/// The derivation label: a lease token is no other derived secret.
const LABEL: &str = "lease-token";

/// The token of the lease `session_id`.
pub fn lease_token(key: &SigningKey, session_id: SessionId) -> String {
    let mac = key.derive(LABEL, &[session_id.as_bytes()]);
    let mut bytes = [0u8; 48];
    bytes[..16].copy_from_slice(session_id.as_bytes());
    bytes[16..].copy_from_slice(&mac);
    format!(
        "{LEASE_TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The lease `token` is the token of, if it is one this ledger key made.
/// Compares in constant time.
pub fn lease_of_token(key: &SigningKey, token: &str) -> Option<SessionId> {
    let encoded = token.strip_prefix(LEASE_TOKEN_PREFIX)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()?;
    let bytes: [u8; 48] = bytes.try_into().ok()?;
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[..16]);
    let session_id = SessionId::from_uuid(uuid::Uuid::from_bytes(id));
    let mac = key.derive(LABEL, &[session_id.as_bytes()]);
    let differs = mac
        .iter()
        .zip(&bytes[16..])
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    (differs == 0).then_some(session_id)
}

/// Who calls a heartbeat or a release: a bearer token's principal, or the
/// bearer of a lease's own token.
pub enum SeatCaller {
    Token(Principal, TokenLicenses),
    /// The lease the presented lease token is the token of.
    Lease(SessionId),
}

impl SeatCaller {
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            SeatCaller::Token(principal, _) => Some(principal),
            SeatCaller::Lease(_) => None,
        }
    }
}

impl FromRequestParts<AppState> for SeatCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = credential(parts, "Lease") else {
            let principal = Principal::from_request_parts(parts, state).await?;
            let licenses = TokenLicenses::from_request_parts(parts, state).await?;
            return Ok(SeatCaller::Token(principal, licenses));
        };
        let session_id = lease_of_token(&state.keys.ledger, token).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "not a lease token of this server: use the `lease_token` your acquire answered",
            )
        })?;
        if let Err(seconds) = state.seat_limits.check(&secret_hash(token)) {
            return Err(ApiError::too_many_requests(
                seconds,
                "too many seat operations with this lease token: see --rate-limit-seat-ops-per-s"
                    .to_owned(),
            ));
        }
        Ok(SeatCaller::Lease(session_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_token_names_its_lease_and_nothing_else_passes() {
        let key = SigningKey::generate().unwrap();
        let other_key = SigningKey::generate().unwrap();
        let session = SessionId::now_v7();
        let token = lease_token(&key, session);
        assert!(token.starts_with(LEASE_TOKEN_PREFIX));
        assert_eq!(token, lease_token(&key, session), "deterministic");
        assert_eq!(lease_of_token(&key, &token), Some(session));
        assert_eq!(lease_of_token(&other_key, &token), None);
        // Another session's id with this session's MAC, and a flipped
        // character anywhere, are refused.
        let mut forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&token[LEASE_TOKEN_PREFIX.len()..])
            .unwrap();
        forged[0] ^= 1;
        let forged = format!(
            "{LEASE_TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&forged)
        );
        assert_eq!(lease_of_token(&key, &forged), None);
        for at in LEASE_TOKEN_PREFIX.len()..token.len() {
            let mut flipped = token.clone().into_bytes();
            flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
            let flipped = String::from_utf8(flipped).unwrap();
            assert_eq!(lease_of_token(&key, &flipped), None, "at {at}");
        }
        for bad in ["", "sll_", "slt_abc", "sll_!!!!", &token[..token.len() - 1]] {
            assert_eq!(lease_of_token(&key, bad), None, "{bad:?}");
        }
    }
}
