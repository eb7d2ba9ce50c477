//! `RecordedEvent`: an event as the log holds it, with its position, stream
//! coordinates, tenant, timestamps and its link in the hash chain.

use crate::canonical::ChainHash;
use crate::event::{DecodeError, Event};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// Who caused an event and in answer to what. Never secrets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// An event whose payload and metadata are the stored JSON text: it
/// serializes to the same envelope as [`RecordedEvent`] (the same fields
/// in the same order, each object's members as the store keeps them).
pub type RawRecordedEvent = RecordedEvent<Box<RawValue>, Box<RawValue>>;

impl RecordedEvent {
    /// The typed event this record carries.
    pub fn event(&self) -> Result<Event, DecodeError> {
        Event::decode(&self.event_type, self.schema_version, &self.payload)
    }
}
