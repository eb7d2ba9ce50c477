//! `RecordedEvent`: an event as the log holds it, with its position, stream
//! coordinates, tenant, timestamps and its link in the hash chain.

use crate::event::{DecodeError, Event};
use crate::hash::ChainHash;
use crate::ids::OrgId;
use crate::time::Timestamp;
use crate::SessionId;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// Who caused an event and in answer to what. Never secrets.
///
/// Every field is covered by the event hash (`canonical`), and nothing
/// else may be stored: a stored key outside these fails to decode, so
/// `verify` and every follower refuse the event instead of passing on
/// something no hash vouches for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub actor: Option<String>,
    pub correlation_id: Option<String>,
    pub request_id: Option<String>,
}

/// An event as the log holds it. `P` and `M` are how its payload and
/// metadata are held: parsed (the default, what followers decode), or as
/// the stored JSON text ([`RawRecordedEvent`]) for a reader that only
/// passes the envelope on (the NATS publisher) and need not build a tree it
/// would serialize straight back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent<P = serde_json::Value, M = Metadata> {
    pub partition: i16,
    pub position: i64,
    pub event_id: Uuid,
    pub stream_id: String,
    pub stream_version: i64,
    /// The organization the event belongs to (nil for the log's own
    /// events); `tenant_id` on the wire and in the hashed bytes.
    #[serde(rename = "tenant_id")]
    pub org_id: OrgId,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: P,
    pub metadata: M,
    pub occurred_at: Timestamp,
    pub recorded_at: Timestamp,
    pub prev_hash: ChainHash,
    pub hash: ChainHash,
}

/// An event whose payload is the stored JSON text: it serializes to the
/// same envelope as [`RecordedEvent`] (the same fields in the same order,
/// the payload's members as the store keeps them). Its metadata is decoded
/// (three short fields), so only the hashed fields are passed on.
pub type RawRecordedEvent = RecordedEvent<Box<RawValue>, Metadata>;

impl RecordedEvent {
    /// The typed event this record carries.
    pub fn event(&self) -> Result<Event, DecodeError> {
        Event::decode(&self.event_type, self.schema_version, &self.payload)
    }

    /// The prune this record reports, if it is a `LogPruned` (decoded only
    /// then: verify asks of every event).
    pub fn log_pruned(&self) -> Option<crate::event::LogPruned> {
        if self.event_type != "LogPruned" {
            return None;
        }
        match self.event().ok()? {
            Event::LogPruned(pruned) => Some(pruned),
            _ => None,
        }
    }

    /// The seat this record granted or extended, if it is a `SeatAcquired`
    /// or a `SeatHeartbeat`: read from the type and the session id alone,
    /// without decoding the whole payload (the appender and every seat
    /// answer ask).
    pub fn seat_touch(&self) -> Option<SeatTouch> {
        let kind = match self.event_type.as_str() {
            "SeatAcquired" => SeatTouchKind::Acquired,
            "SeatHeartbeat" => SeatTouchKind::Heartbeat,
            _ => return None,
        };
        let session_id = self.payload.get("session_id")?.as_str()?.parse().ok()?;
        Some(SeatTouch {
            kind,
            session_id,
            at: self.recorded_at,
        })
    }
}

/// A seat an event granted or extended (see [`RecordedEvent::seat_touch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeatTouch {
    pub kind: SeatTouchKind,
    pub session_id: SessionId,
    /// When the event was recorded: a seat token's `issued_at`.
    pub at: Timestamp,
}

/// Whether a seat was granted anew or an existing lease extended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeatTouchKind {
    Acquired,
    Heartbeat,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(event_type: &str, payload: serde_json::Value) -> RecordedEvent {
        RecordedEvent {
            partition: 0,
            position: 7,
            event_id: Uuid::from_u128(1),
            stream_id: "license-x".into(),
            stream_version: 3,
            org_id: OrgId::from_u128(2),
            event_type: event_type.into(),
            schema_version: 1,
            payload,
            metadata: Metadata::default(),
            occurred_at: Timestamp::UNIX_EPOCH,
            recorded_at: Timestamp::from_micros_saturating(5),
            prev_hash: ChainHash::GENESIS,
            hash: ChainHash::GENESIS,
        }
    }

    /// Acquires and heartbeats name their session and kind; other seat
    /// events and a payload without a session id are no seat touch.
    #[test]
    fn seat_touches_are_read_from_acquires_and_heartbeats_only() {
        let session = Uuid::from_u128(9);
        let payload = serde_json::json!({ "session_id": session.to_string() });
        let acquired = record("SeatAcquired", payload.clone())
            .seat_touch()
            .unwrap();
        assert_eq!(acquired.kind, SeatTouchKind::Acquired);
        assert_eq!(acquired.session_id, SessionId::from(session));
        assert_eq!(acquired.at, Timestamp::from_micros_saturating(5));
        let heartbeat = record("SeatHeartbeat", payload.clone())
            .seat_touch()
            .unwrap();
        assert_eq!(heartbeat.kind, SeatTouchKind::Heartbeat);
        assert_eq!(record("SeatReleased", payload).seat_touch(), None);
        assert_eq!(
            record("SeatAcquired", serde_json::json!({})).seat_touch(),
            None
        );
    }

    /// Metadata outside the hashed fields is refused, so no reader (verify,
    /// the followers, the NATS publisher) passes on what no hash covers.
    #[test]
    fn metadata_holds_only_the_hashed_fields() {
        let hashed = r#"{"actor":"u","correlation_id":null,"request_id":"r"}"#;
        let metadata: Metadata = serde_json::from_str(hashed).unwrap();
        assert_eq!(serde_json::to_string(&metadata).unwrap(), hashed);
        let extra = r#"{"actor":"u","correlation_id":null,"request_id":"r","note":"x"}"#;
        let error = serde_json::from_str::<Metadata>(extra).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `note`"),
            "{error}"
        );
    }
}
