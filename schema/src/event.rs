//! The event catalogue (DESIGN §2). Events are facts in the past tense; their
//! payloads are what is hashed and kept forever, so they carry ids, not
//! secrets, and names/emails only in the two registration events.

use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The payload schema version every event type is written with today.
pub const CURRENT_SCHEMA_VERSION: i32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// Owners and admins manage licenses and users.
    pub fn is_admin(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    Client,
    Suspended,
    Revoked,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenialReason {
    NoSeats,
    Expired,
    Suspended,
    Revoked,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrganizationRegistered {
    pub org_id: Uuid,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRegistered {
    pub user_id: Uuid,
    pub email: String,
    pub full_name: String,
    pub role: Role,
}

fn default_heartbeat_ttl_s() -> u32 {
    crate::limits::HEARTBEAT_TTL_S_DEFAULT
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseIssued {
    pub license_id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub seats: u32,
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    #[serde(default = "default_heartbeat_ttl_s")]
    pub heartbeat_ttl_s: u32,
    #[serde(default)]
    pub max_overage_percent: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseSeatsChanged {
    pub seats: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseRenewed {
    pub expires_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseStatusChanged {
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatAcquired {
    pub session_id: Uuid,
    /// Fencing token: strictly increases per license with every grant.
    pub generation: u64,
    pub user_id: Uuid,
    pub hardware_id: String,
    pub expires_at: Timestamp,
    pub overage: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatHeartbeat {
    pub session_id: Uuid,
    pub expires_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatReleased {
    pub session_id: Uuid,
    pub reason: ReleaseReason,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatExpired {
    pub session_id: Uuid,
    pub last_heartbeat_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatDenied {
    pub user_id: Uuid,
    pub hardware_id: String,
    pub reason: DenialReason,
}

/// Every event seatledger records. Serialized adjacently tagged, which is
/// exactly the `(event_type, payload)` pair the log stores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload")]
pub enum Event {
    OrganizationRegistered(OrganizationRegistered),
    UserRegistered(UserRegistered),
    LicenseIssued(LicenseIssued),
    LicenseSeatsChanged(LicenseSeatsChanged),
    LicenseRenewed(LicenseRenewed),
    LicenseSuspended(LicenseStatusChanged),
    LicenseReinstated(LicenseStatusChanged),
    LicenseRevoked(LicenseStatusChanged),
    SeatAcquired(SeatAcquired),
    SeatHeartbeat(SeatHeartbeat),
    SeatReleased(SeatReleased),
    SeatExpired(SeatExpired),
    SeatDenied(SeatDenied),
}

#[derive(Debug, thiserror::Error)]
#[error("cannot decode {event_type} (schema version {schema_version}): {source}")]
pub struct DecodeError {
    pub event_type: String,
    pub schema_version: i32,
    #[source]
    pub source: serde_json::Error,
}

impl Event {
    pub const TYPES: [&'static str; 13] = [
        "OrganizationRegistered",
        "UserRegistered",
        "LicenseIssued",
        "LicenseSeatsChanged",
        "LicenseRenewed",
        "LicenseSuspended",
        "LicenseReinstated",
        "LicenseRevoked",
        "SeatAcquired",
        "SeatHeartbeat",
        "SeatReleased",
        "SeatExpired",
        "SeatDenied",
    ];

    pub fn event_type(&self) -> &'static str {
        match self {
            Event::OrganizationRegistered(_) => "OrganizationRegistered",
            Event::UserRegistered(_) => "UserRegistered",
            Event::LicenseIssued(_) => "LicenseIssued",
            Event::LicenseSeatsChanged(_) => "LicenseSeatsChanged",
            Event::LicenseRenewed(_) => "LicenseRenewed",
            Event::LicenseSuspended(_) => "LicenseSuspended",
            Event::LicenseReinstated(_) => "LicenseReinstated",
            Event::LicenseRevoked(_) => "LicenseRevoked",
            Event::SeatAcquired(_) => "SeatAcquired",
            Event::SeatHeartbeat(_) => "SeatHeartbeat",
            Event::SeatReleased(_) => "SeatReleased",
            Event::SeatExpired(_) => "SeatExpired",
            Event::SeatDenied(_) => "SeatDenied",
        }
    }

    /// The payload schema version this event is written with.
    pub fn schema_version(&self) -> i32 {
        CURRENT_SCHEMA_VERSION
    }

    /// The payload as JSON, as stored in the log.
    pub fn payload(&self) -> serde_json::Value {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut map)) => map.remove("payload").unwrap_or_default(),
            // Every variant is a struct of plain fields: serialization to a
            // JSON object cannot fail.
            _ => unreachable!("event serializes to an object"),
        }
    }

    /// Decodes a stored `(event_type, schema_version, payload)`.
    pub fn decode(
        event_type: &str,
        schema_version: i32,
        payload: &serde_json::Value,
    ) -> Result<Event, DecodeError> {
        let tagged = serde_json::json!({ "event_type": event_type, "payload": payload });
        serde_json::from_value(tagged).map_err(|source| DecodeError {
            event_type: event_type.to_owned(),
            schema_version,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_and_decode_round_trip() {
        let event = Event::SeatAcquired(SeatAcquired {
            session_id: Uuid::nil(),
            generation: 7,
            user_id: Uuid::nil(),
            hardware_id: "machine-1".into(),
            expires_at: Timestamp::from_micros(1),
            overage: false,
        });
        let payload = event.payload();
        assert_eq!(payload["generation"], 7);
        let back = Event::decode(event.event_type(), 1, &payload).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn license_issued_defaults_apply_when_fields_are_absent() {
        let payload = serde_json::json!({
            "license_id": Uuid::nil(), "org_id": Uuid::nil(), "name": "ide", "seats": 3
        });
        let Event::LicenseIssued(issued) = Event::decode("LicenseIssued", 1, &payload).unwrap()
        else {
            panic!("wrong variant");
        };
        assert_eq!(issued.heartbeat_ttl_s, 360);
        assert_eq!(issued.max_overage_percent, 0);
        assert_eq!(issued.expires_at, None);
    }

    #[test]
    fn every_type_name_matches_its_variant() {
        for name in Event::TYPES {
            // A known type may fail on its payload's fields, never on its name.
            if let Err(err) = Event::decode(name, 1, &serde_json::json!({})) {
                assert!(
                    !err.source.to_string().contains("unknown variant"),
                    "{name}: {err}"
                );
            }
        }
        let unknown = Event::decode("Nope", 1, &serde_json::json!({})).unwrap_err();
        assert!(unknown.source.to_string().contains("unknown variant"));
    }
}
