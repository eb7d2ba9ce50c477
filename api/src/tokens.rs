//! Signed seat tokens (`signed_license`): base64url of the canonical JSON
//! of the seat's claims, its Ed25519 signature (over those canonical bytes)
//! and the key id listed at `/api/v1/keys`. A client verifies it offline.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use seatledger_ledger::SigningKey;
use seatledger_schema::canonical::write_canonical_json;
use seatledger_schema::Timestamp;
use seatledger_schema::{LicenseId, OrgId, SessionId, UserId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatClaims {
    pub license_id: LicenseId,
    pub session_id: SessionId,
    pub org_id: OrgId,
    pub user_id: UserId,
    pub hardware_id: String,
    pub seats_total: u32,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SignedLicense {
    /// base64url (no padding) of the canonical JSON claims: `license_id`,
    /// `session_id`, `org_id`, `user_id`, `hardware_id`, `seats_total`,
    /// `issued_at`, `expires_at`.
    pub payload: String,
    /// base64url Ed25519 signature over the decoded payload bytes.
    pub signature: String,
    pub key_id: String,
}

pub fn canonical_claims(claims: &SeatClaims) -> Vec<u8> {
    let value = serde_json::to_value(claims).unwrap_or_default();
    let mut out = Vec::with_capacity(320);
    write_canonical_json(&mut out, &value);
    out
}

pub fn sign(signer: &SigningKey, claims: &SeatClaims) -> SignedLicense {
    let bytes = canonical_claims(claims);
    SignedLicense {
        payload: URL_SAFE_NO_PAD.encode(&bytes),
        signature: URL_SAFE_NO_PAD.encode(signer.sign(&bytes)),
        key_id: signer.key_id().to_owned(),
    }
}
