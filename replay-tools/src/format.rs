//! The export file's lines (see [`crate::export`] for the format): the
//! types both the writer and the readers of export files use.

use seatledger_schema::OrgId;
use seatledger_schema::{Checkpoint, RecordedEvent};
use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "seatledger-export";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub format_version: u32,
    pub partition: i16,
    /// The key of the last checkpoint in the file (none without any).
    pub key_id: Option<String>,
    /// Whether the events are a chain (consecutive positions, linked).
    pub chain: bool,
    /// The organization of a per-organization export.
    pub org_id: Option<OrgId>,
    pub from_position: i64,
    pub to_position: i64,
    /// Whether `stream` and `snapshot` lines are included (whole log only).
    pub streams: bool,
    /// What the file is, in a sentence.
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRow {
    pub stream_id: String,
    pub version: i64,
    pub snapshot_version: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRow {
    pub stream_id: String,
    pub version: i64,
    pub state: serde_json::Value,
}

/// One line of an export.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    Header(Header),
    Stream(StreamRow),
    Event(RecordedEvent),
    Snapshot(SnapshotRow),
    Checkpoint(Checkpoint),
}
