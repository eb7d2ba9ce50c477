//! `RecordedEvent`: an event as the log holds it, with its position, stream
//! coordinates, tenant, timestamps and its link in the hash chain.

use crate::canonical::ChainHash;
use crate::event::{DecodeError, Event};
use crate::time::Timestamp;
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
    pub tenant_id: Uuid,
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
