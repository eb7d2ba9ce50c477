//! `RecordedEvent`: an event as the log holds it, with its position, stream
//! coordinates, tenant, timestamps and its link in the hash chain.

use crate::canonical::ChainHash;
use crate::event::{DecodeError, Event};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who caused an event and in answer to what. Never secrets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub actor: Option<String>,
    pub correlation_id: Option<String>,
    pub request_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub partition: i16,
    pub position: i64,
    pub event_id: Uuid,
    pub stream_id: String,
    pub stream_version: i64,
    pub tenant_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: serde_json::Value,
    pub metadata: Metadata,
    pub occurred_at: Timestamp,
    pub recorded_at: Timestamp,
    pub prev_hash: ChainHash,
    pub hash: ChainHash,
}

impl RecordedEvent {
    /// The typed event this record carries.
    pub fn event(&self) -> Result<Event, DecodeError> {
        Event::decode(&self.event_type, self.schema_version, &self.payload)
    }
}
