//! The event catalogue (docs/design.md §2). Events are facts in the past tense; their
//! payloads are what is hashed and kept forever, so they carry ids, not
//! secrets, and names/emails only in the two registration events.

use crate::ids::{LicenseId, OrgId, SessionId, TokenId, UserId};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

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
    /// An owner or admin released another user's lease; the
    /// acting user is the event's `metadata.actor`.
    Admin,
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
    pub org_id: OrgId,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRegistered {
    pub user_id: UserId,
    pub email: String,
    pub full_name: String,
    pub role: Role,
}

/// An owner or admin changed a user's role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRoleChanged {
    pub user_id: UserId,
    pub role: Role,
}

/// An owner or admin deactivated a user: their tokens are revoked, login is
/// refused, and their live leases are released (reason `admin`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDeactivated {
    pub user_id: UserId,
}

/// Which credentials may acquire a license's seats: an organization's API
/// token (`token`, the default, and what every license issued before the
/// policy existed has), the license key alone (`license_key`,
/// `Authorization: License <key>`), or either (`both`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    Token,
    LicenseKey,
    Both,
}

impl ClientAuth {
    pub fn is_token(&self) -> bool {
        *self == ClientAuth::Token
    }

    pub fn allows_token(self) -> bool {
        self != ClientAuth::LicenseKey
    }

    pub fn allows_license_key(self) -> bool {
        self != ClientAuth::Token
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Token => "token",
            ClientAuth::LicenseKey => "license_key",
            ClientAuth::Both => "both",
        }
    }

    pub fn parse(text: &str) -> Option<ClientAuth> {
        [ClientAuth::Token, ClientAuth::LicenseKey, ClientAuth::Both]
            .into_iter()
            .find(|policy| policy.as_str() == text)
    }
}

fn default_heartbeat_ttl_s() -> u32 {
    crate::limits::HEARTBEAT_TTL_S_DEFAULT
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseIssued {
    pub license_id: LicenseId,
    pub org_id: OrgId,
    pub name: String,
    pub seats: u32,
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    #[serde(default = "default_heartbeat_ttl_s")]
    pub heartbeat_ttl_s: u32,
    #[serde(default)]
    pub max_overage_percent: u32,
    /// Absent (so encoded and hashed as before) when `token`.
    #[serde(default, skip_serializing_if = "ClientAuth::is_token")]
    pub client_auth: ClientAuth,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseSeatsChanged {
    pub seats: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseRenewed {
    pub expires_at: Option<Timestamp>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseStatusChanged {
    #[serde(default)]
    pub reason: Option<String>,
    /// On a suspension or revocation: this event itself ends every lease of
    /// the license (live ones as released, stale ones as expired at their
    /// `expires_at`), instead of one `SeatReleased`/`SeatExpired` per lease
    /// after it. Absent (false) in events written before it existed, which
    /// are followed by those per-lease events; omitted when false, so they
    /// encode and hash exactly as before.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ends_leases: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatAcquired {
    pub session_id: SessionId,
    /// Fencing token: strictly increases per license with every grant.
    pub generation: u64,
    pub user_id: UserId,
    pub hardware_id: String,
    pub expires_at: Timestamp,
    pub overage: bool,
    /// Set when a client token acquired the lease (`user_id` is then that
    /// token's id). Absent from events before client tokens and from leases of
    /// users, so those encode and hash as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<TokenId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatHeartbeat {
    pub session_id: SessionId,
    pub expires_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatReleased {
    pub session_id: SessionId,
    pub reason: ReleaseReason,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatExpired {
    pub session_id: SessionId,
    pub last_heartbeat_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatDenied {
    pub user_id: UserId,
    pub hardware_id: String,
    pub reason: DenialReason,
}

/// A sealed segment of the log left the live database for an archive
/// file (`seatledger admin prune`): recorded on the log's own stream
/// (`log-{partition}`, tenant nil) so an auditor sees what left, when, and
/// as which file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPruned {
    pub partition: i16,
    pub segment: i64,
    pub first_position: i64,
    pub last_position: i64,
    /// SHA-256 of the archive file, lowercase hex.
    pub archive_sha256: String,
    /// The archive file's name.
    pub archive_file: String,
}

/// Every event seatledger records. Serialized adjacently tagged, which is
/// exactly the `(event_type, payload)` pair the log stores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload")]
pub enum Event {
    OrganizationRegistered(OrganizationRegistered),
    UserRegistered(UserRegistered),
    UserRoleChanged(UserRoleChanged),
    UserDeactivated(UserDeactivated),
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
    LogPruned(LogPruned),
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
    pub const TYPES: [&'static str; 16] = [
        "OrganizationRegistered",
        "UserRegistered",
        "UserRoleChanged",
        "UserDeactivated",
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
        "LogPruned",
    ];

    pub fn event_type(&self) -> &'static str {
        match self {
            Event::OrganizationRegistered(_) => "OrganizationRegistered",
            Event::UserRegistered(_) => "UserRegistered",
            Event::UserRoleChanged(_) => "UserRoleChanged",
            Event::UserDeactivated(_) => "UserDeactivated",
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
            Event::LogPruned(_) => "LogPruned",
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
    ///
    /// Schema version 1 has one legacy reading: versions before the
    /// timestamp range check could store an instant outside
    /// [`Timestamp::MIN`, `Timestamp::MAX`] in a wider text form
    /// (`+10000-01-01T…Z`, a year `-0001`). A payload that fails to decode
    /// only because of such a timestamp is read with each `*_at` field
    /// clamped to the nearest end of the range (see
    /// [`Timestamp::parse_legacy`]), so the history stays readable without
    /// editing it. The stored payload, and so the hash chain, is untouched.
    pub fn decode(
        event_type: &str,
        schema_version: i32,
        payload: &serde_json::Value,
    ) -> Result<Event, DecodeError> {
        let strict = Event::decode_exactly(event_type, schema_version, payload);
        match strict {
            Err(error) if schema_version == 1 => match legacy_timestamps_clamped(payload) {
                Some(clamped) => {
                    Event::decode_exactly(event_type, schema_version, &clamped).map_err(|_| error)
                }
                None => Err(error),
            },
            other => other,
        }
    }

    fn decode_exactly(
        event_type: &str,
        schema_version: i32,
        payload: &serde_json::Value,
    ) -> Result<Event, DecodeError> {
        // The adjacently tagged form `{"event_type": …, "payload": …}`,
        // read from borrowed parts: building it as a `Value` would clone
        // the payload of every event every follower decodes.
        let event_type_value = serde_json::Value::String(event_type.to_owned());
        let tagged = serde::de::value::MapDeserializer::<_, serde_json::Error>::new(
            [("event_type", &event_type_value), ("payload", payload)].into_iter(),
        );
        Event::deserialize(tagged).map_err(|source| DecodeError {
            event_type: event_type.to_owned(),
            schema_version,
            source,
        })
    }
}

/// `payload` with every `*_at` string field that only the legacy reading
/// accepts replaced by its clamped canonical text; `None` when there is
/// none (nothing to retry).
fn legacy_timestamps_clamped(payload: &serde_json::Value) -> Option<serde_json::Value> {
    let serde_json::Value::Object(fields) = payload else {
        return None;
    };
    let mut clamped = fields.clone();
    let mut changed = false;
    for (name, value) in clamped.iter_mut() {
        let Some(text) = value.as_str() else { continue };
        if !name.ends_with("_at") || Timestamp::parse(text).is_ok() {
            continue;
        }
        if let Ok(timestamp) = Timestamp::parse_legacy(text) {
            *value = serde_json::Value::String(timestamp.to_string());
            changed = true;
        }
    }
    changed.then_some(serde_json::Value::Object(clamped))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status change written before `ends_leases` existed decodes with it
    /// false and encodes to the same payload (so it hashes as before); one
    /// that ends the leases round-trips with the flag.
    #[test]
    fn a_status_change_without_ends_leases_encodes_as_before() {
        for event_type in ["LicenseSuspended", "LicenseRevoked", "LicenseReinstated"] {
            let old = serde_json::json!({"reason": "fraud"});
            let event = Event::decode(event_type, 1, &old).unwrap();
            assert_eq!(event.payload(), old, "{event_type}");
        }
        let ending = Event::LicenseRevoked(LicenseStatusChanged {
            reason: None,
            ends_leases: true,
        });
        assert_eq!(ending.payload()["ends_leases"], true);
        let decoded = Event::decode("LicenseRevoked", ending.schema_version(), &ending.payload());
        assert_eq!(decoded.unwrap(), ending);
    }

    #[test]
    fn payload_and_decode_round_trip() {
        let event = Event::SeatAcquired(SeatAcquired {
            token_id: None,
            session_id: SessionId::nil(),
            generation: 7,
            user_id: UserId::nil(),
            hardware_id: "machine-1".into(),
            expires_at: Timestamp::from_micros_saturating(1),
            overage: false,
        });
        let payload = event.payload();
        assert_eq!(payload["generation"], 7);
        let back = Event::decode(event.event_type(), 1, &payload).unwrap();
        assert_eq!(back, event);
    }

    proptest::proptest! {
        /// `token_id` round-trips through the payload; absent,
        /// the payload has no such key, so events of before keep their
        /// bytes and hashes.
        #[test]
        fn seat_acquired_with_or_without_a_token_round_trips(
            token in proptest::option::of(proptest::prelude::any::<u128>()),
            generation in proptest::prelude::any::<u64>(),
            overage in proptest::prelude::any::<bool>(),
        ) {
            let event = Event::SeatAcquired(SeatAcquired {
                token_id: token.map(TokenId::from_u128),
                session_id: SessionId::from_u128(1),
                generation,
                user_id: UserId::from_u128(2),
                hardware_id: "machine-1".into(),
                expires_at: Timestamp::from_micros_saturating(1),
                overage,
            });
            let payload = event.payload();
            proptest::prop_assert_eq!(payload.get("token_id").is_some(), token.is_some());
            let back = Event::decode(event.event_type(), 1, &payload).unwrap();
            proptest::prop_assert_eq!(&back, &event);
            proptest::prop_assert_eq!(back.payload(), payload);
        }
    }

    /// Every release reason, `admin` included, encodes to its
    /// snake_case name and decodes back; the reasons of before keep their
    /// bytes (so their hashes).
    #[test]
    fn every_release_reason_round_trips() {
        for (reason, name) in [
            (ReleaseReason::Client, "client"),
            (ReleaseReason::Suspended, "suspended"),
            (ReleaseReason::Revoked, "revoked"),
            (ReleaseReason::Admin, "admin"),
        ] {
            let event = Event::SeatReleased(SeatReleased {
                session_id: SessionId::nil(),
                reason,
            });
            let payload = event.payload();
            assert_eq!(payload["reason"], name);
            assert_eq!(Event::decode("SeatReleased", 1, &payload).unwrap(), event);
        }
    }

    #[test]
    fn license_issued_defaults_apply_when_fields_are_absent() {
        let payload = serde_json::json!({
            "license_id": LicenseId::nil(), "org_id": OrgId::nil(), "name": "ide", "seats": 3
        });
        let Event::LicenseIssued(issued) = Event::decode("LicenseIssued", 1, &payload).unwrap()
        else {
            panic!("wrong variant");
        };
        assert_eq!(issued.heartbeat_ttl_s, 360);
        assert_eq!(issued.max_overage_percent, 0);
        assert_eq!(issued.expires_at, None);
    }

    /// The event an out-of-range timestamp wrote before the range check: it reads
    /// back with its expiry clamped to the end of the range.
    #[test]
    fn legacy_out_of_range_expiries_decode_clamped() {
        let payload = serde_json::json!({
            "license_id": LicenseId::nil(), "org_id": OrgId::nil(), "name": "ide", "seats": 3,
            "expires_at": "+10000-01-01T23:58:59.000000Z"
        });
        let Event::LicenseIssued(issued) = Event::decode("LicenseIssued", 1, &payload).unwrap()
        else {
            panic!("wrong variant");
        };
        assert_eq!(issued.expires_at, Some(Timestamp::MAX));
        let renewed = serde_json::json!({"expires_at": "-0001-12-31T00:01:00.000000Z"});
        assert_eq!(
            Event::decode("LicenseRenewed", 1, &renewed).unwrap(),
            Event::LicenseRenewed(LicenseRenewed {
                expires_at: Some(Timestamp::MIN)
            })
        );
        // Only timestamps are read leniently, and only in schema version 1.
        assert!(Event::decode("LicenseRenewed", 2, &renewed).is_err());
        let garbage = serde_json::json!({"expires_at": "+10000-01-01T23:58:59Z", "seats": -1});
        assert!(Event::decode("LicenseIssued", 1, &garbage).is_err());
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
