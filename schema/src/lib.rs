//! seatledger-schema: the event catalogue, the envelope every event is stored
//! in, the canonical byte encoding and the SHA-256 hash chain, and the limits
//! shared by every crate.
//!
//! This crate does no I/O. The canonical encoding of a given
//! `schema_version` must never change: auditors' exports depend on it.
#![forbid(unsafe_code)]

pub mod canonical;
pub mod checkpoint;
pub mod envelope;
pub mod event;
pub mod hash;
pub mod ids;
pub mod limits;
pub mod secret;
#[cfg(feature = "sqlx")]
pub mod sql;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;

pub use canonical::{canonical_bytes, chain_hash, verify_chain, ChainError, ChainHash};
pub use checkpoint::{key_id_of, parse_pinned_key, pinned_key_text, Checkpoint, CheckpointError};
pub use envelope::{Metadata, RawRecordedEvent, RecordedEvent, SeatTouch, SeatTouchKind};
pub use event::*;
pub use ids::{LicenseId, OrgId, SessionId, StreamId, TokenId, UserId};
pub use secret::{ApiToken, LicenseKey, Password};
pub use time::{Timestamp, TimestampError};
