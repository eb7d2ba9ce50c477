//! Public keys for verifying seat tokens and checkpoints offline.

use crate::state::AppState;
use axum::extract::State;
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct PublicKey {
    pub key_id: String,
    /// Always `Ed25519`.
    pub algorithm: String,
    /// base64url (no padding) of the raw 32-byte public key.
    pub public_key: String,
    /// `ledger`: signs checkpoints of the log; `token`: signs seat tokens.
    /// A client verifying a seat token accepts only a `token` key.
    #[schema(pattern = "^(ledger|token)$")]
    pub purpose: &'static str,
    /// `active`: signs now; `retired`: signed before a rotation (what it
    /// signed still verifies, a seat token until it expires).
    #[schema(pattern = "^(active|retired)$")]
    pub status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Keys {
    pub keys: Vec<PublicKey>,
}

/// Ed25519 public keys (by `key_id` and purpose) of seat tokens and
/// checkpoints, active and retired.
#[utoipa::path(get, path = "/api/v1/keys", tag = "keys", responses((status = 200, body = Keys)))]
pub async fn keys(State(state): State<AppState>) -> Json<Keys> {
    Json(Keys {
        keys: state
            .keys
            .listed
            .iter()
            .map(|key| PublicKey {
                key_id: key.key_id.clone(),
                algorithm: "Ed25519".into(),
                public_key: URL_SAFE_NO_PAD.encode(&key.public_key),
                purpose: key.purpose.as_str(),
                status: if key.active { "active" } else { "retired" },
            })
            .collect(),
    })
}
