//! What callers submit and are answered.

use crate::domain::{Command, Lease, LicenseView, Rejection};
use crate::store::StoreError;
use seatledger_schema::OrgId;
use seatledger_schema::{Metadata, RecordedEvent, SeatTouch};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::oneshot;

/// A command with who asks and how to recognise a retry.
#[derive(Clone, Debug)]
pub struct Submission {
    pub org_id: OrgId,
    pub command: Command,
    /// The client's idempotency key, if any.
    pub command_id: Option<String>,
    /// Identifies the request behind `command_id` (see `request_hash`): the
    /// same key with a different hash is `idempotency_key_reused`.
    pub request_hash: [u8; 32],
    pub metadata: Metadata,
}

impl Submission {
    /// A submission without an idempotency key.
    pub fn new(org_id: OrgId, command: Command) -> Self {
        Submission {
            org_id,
            command,
            command_id: None,
            request_hash: [0; 32],
            metadata: Metadata::default(),
        }
    }

    pub fn with_command_id(
        mut self,
        command_id: impl Into<String>,
        request_hash: [u8; 32],
    ) -> Self {
        self.command_id = Some(command_id.into());
        self.request_hash = request_hash;
        self
    }

    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}

/// SHA-256 over length-prefixed parts: what identifies a request for
/// idempotency (for HTTP: method, path and body).
pub fn request_hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    let mut out = [0; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// What a command did: its events (possibly none), its rejection if it was
/// refused, and the license as it stands after it (for license commands).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub events: Vec<RecordedEvent>,
    pub rejection: Option<Rejection>,
    pub license: Option<LicenseView>,
    /// The lease the command granted or extended (acquire, heartbeat), as
    /// it stands after the command.
    pub lease: Option<Lease>,
    /// True when this is the recorded result of an earlier identical
    /// request with the same idempotency key.
    #[serde(skip)]
    pub replayed: bool,
}

impl CommandResult {
    pub(super) fn rejected(rejection: Rejection) -> Self {
        CommandResult {
            events: Vec::new(),
            rejection: Some(rejection),
            license: None,
            lease: None,
            replayed: false,
        }
    }

    /// The seat this command granted or extended (the latest, if several):
    /// what an acquire or heartbeat answers with.
    pub fn seat_touch(&self) -> Option<SeatTouch> {
        self.events.iter().rev().find_map(RecordedEvent::seat_touch)
    }

    pub fn is_accepted(&self) -> bool {
        self.rejection.is_none()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// The command's stream cannot be loaded (a corrupt snapshot, an
    /// undecodable event): the command fails alone; the stream is logged
    /// once and tried again later (see `UnreadableStreams`).
    #[error("stream {stream_id} cannot be read")]
    StreamUnreadable { stream_id: String },
    /// The decider produced an event that would not decode to itself (a
    /// bug): the command fails alone and nothing of it is written.
    #[error("a {event_type} event of this command would not decode to itself")]
    Unencodable { event_type: &'static str },
    #[error("the appender has shut down")]
    ShutDown,
}

impl AppendError {
    pub fn is_unavailable(&self) -> bool {
        match self {
            AppendError::Store(error) => error.is_unavailable(),
            AppendError::ShutDown => true,
            AppendError::StreamUnreadable { .. } | AppendError::Unencodable { .. } => false,
        }
    }
}

pub(super) struct Job {
    pub(super) submission: Submission,
    pub(super) reply: oneshot::Sender<Result<CommandResult, AppendError>>,
}

/// What a caller is answered: its command's result, or why it could not be
/// decided.
pub(super) type Reply = Result<CommandResult, AppendError>;
