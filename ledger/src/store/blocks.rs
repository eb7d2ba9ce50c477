//! Compacted events (docs/design.md §3, "Compact storage"): the older part
//! of a partition's log, kept as blocks of consecutive events instead of
//! one row per event.
//!
//! A block holds events `first_position..=last_position` as one
//! zstd-compressed body: one JSON line per event with every envelope field
//! but `partition`, `position`, `prev_hash` and `hash`. Those four follow
//! from the block: positions count up from `first_position`, the first
//! event's `prev_hash` is stored with the block, and each hash is
//! recomputed from the canonical bytes as the block is read, each event's
//! hash being the next one's `prev_hash`. The recomputed last hash must equal
//! the block's stored `last_hash`, so a block whose body was altered is
//! refused as a whole, naming its range, instead of being read as other
//! events (`verify` reports it the same way).
//!
//! Readers find a block by position (its primary key) or through its keys
//! (`event_block_keys`): a stream's (with the last stream version the block
//! holds of it), an organization's and a granted session's (each with the
//! last position the block holds of it). A key is the first 8 bytes of
//! SHA-256 of its text, so two texts may share one; a reader decodes the
//! block and keeps only the events it asked for, so a shared key costs a
//! read, never a wrong answer.

use super::StoreError;
use seatledger_schema::{
    canonical_bytes, chain_hash, ChainHash, Metadata, RecordedEvent, Timestamp,
};
use seatledger_schema::{OrgId, SessionId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The first byte of every block body: how the rest is encoded.
const FORMAT_ZSTD_JSON_LINES: u8 = 1;
/// zstd level: 3 (zstd's default) compresses a block of heartbeats to
/// within a few percent of level 9 at a fraction of the time.
const ZSTD_LEVEL: i32 = 3;
/// A block body never decompresses to more than this (a block of 10,000
/// events of 64 KiB each would not reach it): a body claiming more is
/// refused rather than allocated.
const DECODED_MAX: usize = 1 << 30;

/// One event of a block: the envelope without what the block implies.
#[derive(Serialize, Deserialize)]
struct Line<S, P, M> {
    event_id: Uuid,
    event_type: S,
    metadata: M,
    occurred_at: Timestamp,
    payload: P,
    recorded_at: Timestamp,
    schema_version: i32,
    stream_id: S,
    stream_version: i64,
    org_id: OrgId,
}

/// A block as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub(crate) struct BlockRow {
    pub partition: i16,
    pub first_position: i64,
    pub last_position: i64,
    pub prev_hash: Vec<u8>,
    pub last_hash: Vec<u8>,
    pub body: Vec<u8>,
}

/// A block ready to store, with its keys.
#[derive(Debug)]
pub(crate) struct EncodedBlock {
    pub row: BlockRow,
    /// `(key, upto)`: see the module documentation.
    pub keys: Vec<(i64, i64)>,
}

/// The key of a text (see the module documentation).
pub(crate) fn key_of(text: &str) -> i64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    i64::from_be_bytes(first)
}

pub(crate) fn stream_key(stream_id: &str) -> i64 {
    key_of(&format!("stream:{stream_id}"))
}

pub(crate) fn org_key(org_id: OrgId) -> i64 {
    key_of(&format!("org:{org_id}"))
}

pub(crate) fn session_key(session_id: SessionId) -> i64 {
    key_of(&format!("session:{session_id}"))
}

/// Appends `event` to `out` as one line of a block (or of an archive
/// file): the envelope without partition, position and hashes, then `\n`.
pub fn write_line(out: &mut Vec<u8>, event: &RecordedEvent) -> Result<(), serde_json::Error> {
    let line = Line {
        event_id: event.event_id,
        event_type: event.event_type.as_str(),
        metadata: &event.metadata,
        occurred_at: event.occurred_at,
        payload: &event.payload,
        recorded_at: event.recorded_at,
        schema_version: event.schema_version,
        stream_id: event.stream_id.as_str(),
        stream_version: event.stream_version,
        org_id: event.org_id,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.push(b'\n');
    Ok(())
}

/// Reads lines written by [`write_line`] back into events, giving each
/// its position (counting up) and both hashes (recomputed from its
/// canonical bytes and the previous event's hash).
pub struct Relinker {
    partition: i16,
    next_position: i64,
    prev_hash: ChainHash,
}

impl Relinker {
    /// Lines that follow the event at `after` whose hash is `prev_hash`.
    pub fn new(partition: i16, after: i64, prev_hash: ChainHash) -> Relinker {
        Relinker {
            partition,
            next_position: after.saturating_add(1),
            prev_hash,
        }
    }

    /// The event of the next line, as `P` and `M`.
    pub fn next<P, M>(&mut self, text: &[u8]) -> Result<RecordedEvent<P, M>, String>
    where
        P: serde::de::DeserializeOwned,
        M: serde::de::DeserializeOwned,
    {
        let position = self.next_position;
        let at = |e: serde_json::Error| format!("the event at position {position}: {e}");
        let parsed: Line<String, serde_json::Value, Metadata> =
            serde_json::from_slice(text).map_err(at)?;
        let prev_hash = self.prev_hash;
        let hashed = recorded(parsed, self.partition, position, prev_hash, prev_hash);
        let hash = chain_hash(&prev_hash, &canonical_bytes(&hashed));
        let wanted: Line<String, P, M> = serde_json::from_slice(text).map_err(at)?;
        self.next_position = position.saturating_add(1);
        self.prev_hash = hash;
        Ok(recorded(wanted, self.partition, position, prev_hash, hash))
    }

    /// The position and hash of the last event read.
    pub fn head(&self) -> (i64, ChainHash) {
        (self.next_position - 1, self.prev_hash)
    }
}

/// Encodes `events` (consecutive positions of one partition, at least one)
/// as a block.
pub(crate) fn encode(events: &[RecordedEvent]) -> Result<EncodedBlock, StoreError> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Err(StoreError::Corrupt("a block of no events".into()));
    };
    let mut lines = Vec::with_capacity(events.len() * 400);
    let mut keys: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
    for event in events {
        write_line(&mut lines, event)
            .map_err(|e| StoreError::Corrupt(format!("encoding a block: {e}")))?;
        let mut upto = |key: i64, value: i64| {
            let entry = keys.entry(key).or_insert(value);
            *entry = (*entry).max(value);
        };
        upto(stream_key(&event.stream_id), event.stream_version);
        upto(org_key(event.org_id), event.position);
        if let Some(touch) = event.seat_touch() {
            if touch.kind == seatledger_schema::SeatTouchKind::Acquired {
                upto(session_key(touch.session_id), event.position);
            }
        }
    }
    let mut body = vec![FORMAT_ZSTD_JSON_LINES];
    let compressed = zstd::bulk::compress(&lines, ZSTD_LEVEL)
        .map_err(|e| StoreError::Corrupt(format!("compressing a block: {e}")))?;
    body.extend_from_slice(&compressed);
    let mut keys: Vec<(i64, i64)> = keys.into_iter().collect();
    keys.sort_unstable();
    Ok(EncodedBlock {
        row: BlockRow {
            partition: first.partition,
            first_position: first.position,
            last_position: last.position,
            prev_hash: first.prev_hash.as_bytes().to_vec(),
            last_hash: last.hash.as_bytes().to_vec(),
            body,
        },
        keys,
    })
}

impl BlockRow {
    fn corrupt(&self, what: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt(format!(
            "the block of positions {}..={} of partition {}: {what}",
            self.first_position, self.last_position, self.partition
        ))
    }

    /// The events of the block, each with its position and both hashes,
    /// payload and metadata decoded as `P` and `M`. Fails if the block was
    /// altered (its recomputed last hash differs from the stored one).
    pub(crate) fn decode<P, M>(&self) -> Result<Vec<RecordedEvent<P, M>>, StoreError>
    where
        P: serde::de::DeserializeOwned,
        M: serde::de::DeserializeOwned,
    {
        let lines = self.lines()?;
        let expected = self
            .last_position
            .checked_sub(self.first_position)
            .and_then(|span| usize::try_from(span).ok())
            .and_then(|span| span.checked_add(1))
            .ok_or_else(|| self.corrupt("its range is empty or impossible"))?;
        let prev_hash = ChainHash::from_slice(&self.prev_hash)
            .ok_or_else(|| self.corrupt("prev_hash is not 32 bytes"))?;
        let mut relinker = Relinker::new(self.partition, self.first_position - 1, prev_hash);
        let mut events = Vec::with_capacity(expected);
        let lines = lines.strip_suffix(b"\n").unwrap_or(&lines);
        for (index, text) in lines.split(|b| *b == b'\n').enumerate() {
            if index == expected {
                return Err(self.corrupt("it holds more events than its range"));
            }
            events.push(relinker.next(text).map_err(|e| self.corrupt(e))?);
        }
        let prev_hash = relinker.head().1;
        if events.len() != expected {
            return Err(self.corrupt(format!(
                "it holds {} events, its range {expected}",
                events.len()
            )));
        }
        if prev_hash.as_bytes().as_slice() != self.last_hash.as_slice() {
            return Err(self.corrupt(
                "its events do not hash to its recorded last hash (altered after it was written)",
            ));
        }
        Ok(events)
    }

    fn lines(&self) -> Result<Vec<u8>, StoreError> {
        match self.body.split_first() {
            Some((&FORMAT_ZSTD_JSON_LINES, compressed)) => {
                let size = zstd::zstd_safe::get_frame_content_size(compressed)
                    .ok()
                    .flatten()
                    .ok_or_else(|| self.corrupt("its body is not a zstd frame with a size"))?;
                let size = usize::try_from(size)
                    .ok()
                    .filter(|size| *size <= DECODED_MAX)
                    .ok_or_else(|| self.corrupt("its body claims an impossible size"))?;
                zstd::bulk::decompress(compressed, size).map_err(|e| self.corrupt(e))
            }
            Some((format, _)) => Err(self.corrupt(format!("unknown body format {format}"))),
            None => Err(self.corrupt("empty body")),
        }
    }
}

fn recorded<P, M>(
    line: Line<String, P, M>,
    partition: i16,
    position: i64,
    prev_hash: ChainHash,
    hash: ChainHash,
) -> RecordedEvent<P, M> {
    RecordedEvent {
        partition,
        position,
        event_id: line.event_id,
        stream_id: line.stream_id,
        stream_version: line.stream_version,
        org_id: line.org_id,
        event_type: line.event_type,
        schema_version: line.schema_version,
        payload: line.payload,
        metadata: line.metadata,
        occurred_at: line.occurred_at,
        recorded_at: line.recorded_at,
        prev_hash,
        hash,
    }
}

#[cfg(test)]
mod tests;
