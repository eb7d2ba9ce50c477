//! Signed checkpoints: the ledger's Ed25519 signature over a partition's
//! `(position, hash)` at a moment. With the public key and an export, an
//! auditor proves no event up to `position` was changed, dropped, reordered
//! or inserted. Signing lives in the ledger (it holds the key); verifying
//! is pure and lives here.

use crate::canonical::{write_canonical_json, ChainHash};
use crate::time::Timestamp;
use ring::signature::{UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub partition: i16,
    pub position: i64,
    pub hash: ChainHash,
    pub signed_at: Timestamp,
    pub key_id: String,
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "checkpoint at position {position} is signed by key {key_id}, which is not the key given"
    )]
    UnknownKey { position: i64, key_id: String },
    #[error("checkpoint at position {position}: signature does not verify")]
    BadSignature { position: i64 },
}

impl Checkpoint {
    /// The bytes that are signed: canonical JSON of every field but the
    /// signature.
    pub fn signed_message(
        partition: i16,
        position: i64,
        hash: &ChainHash,
        signed_at: Timestamp,
        key_id: &str,
    ) -> Vec<u8> {
        let value = serde_json::json!({
            "partition": partition,
            "position": position,
            "hash": hash,
            "signed_at": signed_at,
            "key_id": key_id,
        });
        let mut out = Vec::with_capacity(192);
        write_canonical_json(&mut out, &value);
        out
    }

    /// Verifies the signature with an Ed25519 public key (32 raw bytes) whose
    /// id is `key_id`.
    pub fn verify(&self, key_id: &str, public_key: &[u8]) -> Result<(), CheckpointError> {
        if self.key_id != key_id {
            return Err(CheckpointError::UnknownKey {
                position: self.position,
                key_id: self.key_id.clone(),
            });
        }
        let message = Self::signed_message(
            self.partition,
            self.position,
            &self.hash,
            self.signed_at,
            &self.key_id,
        );
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&message, &self.signature)
            .map_err(|_| CheckpointError::BadSignature {
                position: self.position,
            })
    }
}

/// The id of an Ed25519 public key: the first 16 hex digits of its SHA-256.
pub fn key_id_of(public_key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    hex::encode(&digest.as_ref()[..8])
}

/// A pinned public key written `KEY_ID:BASE64URL` (as `GET /api/v1/keys`
/// lists them): the key id, and the raw 32-byte Ed25519 key. The id must be
/// the key's own ([`key_id_of`]), so a typo cannot pin one key under
/// another's name.
pub fn parse_pinned_key(text: &str) -> Result<(String, Vec<u8>), String> {
    use base64::Engine;
    let text = text.trim();
    let Some((id, encoded)) = text.split_once(':') else {
        return Err("a public key is written KEY_ID:BASE64URL".into());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|error| format!("public key {id}: not base64url: {error}"))?;
    if bytes.len() != 32 {
        return Err(format!(
            "public key {id}: {} bytes, an Ed25519 key has 32",
            bytes.len()
        ));
    }
    let actual = key_id_of(&bytes);
    if actual != id {
        return Err(format!("public key {id}: this key's id is {actual}"));
    }
    Ok((id.to_owned(), bytes))
}

/// `KEY_ID:BASE64URL` of a raw Ed25519 public key.
pub fn pinned_key_text(public_key: &[u8]) -> String {
    use base64::Engine;
    format!(
        "{}:{}",
        key_id_of(public_key),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public_key)
    )
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        hex::decode(text.as_ref()).map_err(serde::de::Error::custom)
    }
}
