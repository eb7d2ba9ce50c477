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
}

#[derive(Serialize, ToSchema)]
pub struct Keys {
    pub keys: Vec<PublicKey>,
}

/// Ed25519 public keys (by `key_id`) of seat tokens and checkpoints.
#[utoipa::path(get, path = "/api/v1/keys", tag = "keys", responses((status = 200, body = Keys)))]
pub async fn keys(State(state): State<AppState>) -> Json<Keys> {
    Json(Keys {
        keys: vec![PublicKey {
            key_id: state.signer.key_id().to_owned(),
            algorithm: "Ed25519".into(),
            public_key: URL_SAFE_NO_PAD.encode(state.signer.public_key()),
        }],
    })
}
