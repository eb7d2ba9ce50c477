//! Export and import of the log as JSON Lines, and `verify` of an export
//! file: an auditor without database access checks the same things
//! `verify` checks on the store.
//!
//! Format (version [`FORMAT_VERSION`]), one JSON object per line:
//! - `{"header": {...}}` first: format and version, partition, the key id
//!   of the checkpoints, whether the file is a chain, the organization (a
//!   per-organization export), the position range, whether the `streams`
//!   rows and snapshots are included;
//! - `{"stream": {stream_id, version, snapshot_version}}` for every stream,
//!   before any event (only in a whole-log export);
//! - `{"event": {...}}`: the envelope, as `GET /api/v1/events` items, in
//!   position order;
//! - `{"snapshot": {stream_id, version, state}}` right after the event at
//!   which its stream reaches the snapshot's version (whole-log exports);
//! - `{"checkpoint": {...}}` right after the event at its position (in a
//!   per-organization export: after the last exported event before it).
//!
//! Lines are serialized the same way whatever the store (struct fields in
//! declaration order, JSON maps such as payloads and snapshots with sorted
//! keys), so PostgreSQL → export → SQLite → export is byte-identical.
//!
//! A per-organization export is not a chain (the other organizations'
//! events are missing): its header says so, and its events are verified
//! one by one (each hash against its content and `prev_hash`), not linked.
//!
//! Reading and writing stream line by line: memory holds one batch of
//! events and, like `verify`, the state of streams whose snapshot is still
//! ahead.

use crate::events::EventStream;
pub use crate::format::{Header, Line, SnapshotRow, StreamRow, FORMAT, FORMAT_VERSION};
use crate::read::VERIFY_BATCH;
use crate::verify::{check_snapshot, DueSnapshot, Trust, Verified, Verifier, VerifyError};
use seatledger_ledger::{ImportError, ImportExtras, Store, StoreError};
use seatledger_schema::OrgId;
use seatledger_schema::{Checkpoint, RecordedEvent};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};

/// Events verified per batch when reading a file.
const FILE_BATCH: usize = 10_000;
/// Events imported per transaction.
const IMPORT_BATCH: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: not a line of a seatledger export: {error}")]
    Malformed { line: u64, error: String },
    #[error("line {line}: {what}")]
    OutOfPlace { line: u64, what: String },
    #[error("not a seatledger export (format {format} version {version})")]
    Format { format: String, version: u32 },
    #[error("{0}")]
    Verify(#[from] VerifyError),
    #[error("the file ends at position {last}, its header says {to}: events are missing")]
    Truncated { last: i64, to: i64 },
    #[error("import: {0}")]
    Import(#[from] ImportError),
    #[error("import needs {0}")]
    NotImportable(&'static str),
}

/// What to export.
#[derive(Clone, Debug, Default)]
pub struct ExportRange {
    pub org: Option<OrgId>,
    pub from_position: Option<i64>,
    pub to_position: Option<i64>,
    /// Where the archive files of pruned segments are, when the range
    /// reaches into them.
    pub archive: Option<std::path::PathBuf>,
}

fn write_line(out: &mut (impl Write + ?Sized), line: &Line) -> Result<(), ExportError> {
    serde_json::to_writer(&mut *out, line).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    Ok(())
}

fn describe(org: Option<OrgId>, whole: bool, from: i64, to: i64) -> String {
    match (org, whole) {
        (Some(org), _) => format!(
            "the events of organization {org} in positions {from}..={to}: not a chain (other organizations' events are left out); each event's hash verifies alone"
        ),
        (None, true) => "the whole log: a chain from position 1, with streams and snapshots".into(),
        (None, false) => format!("positions {from}..={to} of the log: a chain from the first event's prev_hash"),
    }
}

/// A whole log's stream rows; the version each stream's snapshot is at.
async fn write_streams(
    store: &Store,
    partition: i16,
    out: &mut impl Write,
) -> Result<HashMap<String, i64>, ExportError> {
    let mut snapshot_versions = HashMap::new();
    let mut streams: Vec<_> = store
        .stream_versions_of(partition)
        .await?
        .into_iter()
        .collect();
    streams.sort();
    for (stream_id, (version, snapshot_version)) in streams {
        if let Some(snapshot_version) = snapshot_version {
            snapshot_versions.insert(stream_id.clone(), snapshot_version);
        }
        write_line(
            out,
            &Line::Stream(StreamRow {
                stream_id,
                version,
                snapshot_version,
            }),
        )?;
    }
    Ok(snapshot_versions)
}

/// One event, with the checkpoints before and at it and the snapshot
/// taken at it.
async fn write_event(
    store: &Store,
    out: &mut impl Write,
    event: RecordedEvent,
    checkpoints: &mut BTreeMap<i64, Checkpoint>,
    snapshot_versions: &HashMap<String, i64>,
) -> Result<(), ExportError> {
    let position = event.position;
    while let Some(entry) = checkpoints.first_entry().filter(|e| *e.key() < position) {
        write_line(out, &Line::Checkpoint(entry.remove()))?;
    }
    let due = snapshot_versions.get(&event.stream_id) == Some(&event.stream_version);
    let stream_id = due.then(|| event.stream_id.clone());
    write_line(out, &Line::Event(event))?;
    // One snapshot in memory at a time: a license with many leases has a
    // large one, and many may fall in one batch.
    if let Some(stream_id) = stream_id {
        if let Some((version, state)) = store.stream_snapshot(&stream_id).await? {
            let row = SnapshotRow {
                stream_id,
                version,
                state,
            };
            write_line(out, &Line::Snapshot(row))?;
        }
    }
    if let Some(checkpoint) = checkpoints.remove(&position) {
        write_line(out, &Line::Checkpoint(checkpoint))?;
    }
    Ok(())
}

/// One organization's next events after `after`, from its index.
async fn org_batch(
    store: &Store,
    org: OrgId,
    partition: i16,
    after: i64,
    to: i64,
) -> Result<Option<Vec<RecordedEvent>>, ExportError> {
    let mut batch = store
        .read_org_after(org, partition, after, VERIFY_BATCH)
        .await?;
    batch.retain(|event| event.position <= to);
    Ok((!batch.is_empty()).then_some(batch))
}

/// The signed checkpoints at positions `from..=to`, by position.
async fn checkpoints_in(
    store: &Store,
    partition: i16,
    from: i64,
    to: i64,
) -> Result<BTreeMap<i64, Checkpoint>, ExportError> {
    Ok(store
        .checkpoints(partition)
        .await?
        .into_iter()
        .filter(|checkpoint| (from..=to).contains(&checkpoint.position))
        .map(|checkpoint| (checkpoint.position, checkpoint))
        .collect())
}

/// Writes partition `partition` of `store` (or the range and organization
/// asked for) to `out`; `progress` is called with each position reached.
/// Returns the header written and the number of events.
pub async fn export(
    store: &Store,
    partition: i16,
    range: ExportRange,
    out: &mut impl Write,
    mut progress: impl FnMut(i64),
) -> Result<(Header, i64), ExportError> {
    let (head, _) = store.head(partition).await?;
    let from = range.from_position.unwrap_or(1).max(1);
    let to = range.to_position.unwrap_or(head).min(head);
    let whole = range.org.is_none() && from == 1 && to == head;
    let mut checkpoints = checkpoints_in(store, partition, from, to).await?;
    let header = Header {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        partition,
        key_id: checkpoints.values().last().map(|c| c.key_id.clone()),
        chain: range.org.is_none(),
        org_id: range.org,
        from_position: from,
        to_position: to,
        streams: whole,
        description: describe(range.org, whole, from, to),
    };
    write_line(out, &Line::Header(header.clone()))?;
    let snapshot_versions = if whole {
        write_streams(store, partition, out).await?
    } else {
        HashMap::new()
    };
    let mut events = 0i64;
    let mut after = from - 1;
    // One organization's events come from its index in the store; where
    // they reach into pruned segments, from the whole log, filtered.
    let mut reader = match (range.org, &range.archive) {
        (None, archive) | (Some(_), archive @ Some(_)) => Some(
            EventStream::from_log(store, partition, archive.as_deref(), from - 1, Some(to))
                .await?
                .0,
        ),
        (Some(_), None) => None,
    };
    loop {
        let batch = match (&mut reader, range.org) {
            (Some(reader), org) => reader.next().await?.map(|mut batch| {
                batch.retain(|event| org.is_none_or(|org| event.org_id == org));
                batch
            }),
            (None, Some(org)) => org_batch(store, org, partition, after, to).await?,
            (None, None) => None,
        };
        let Some(batch) = batch else { break };
        let Some(last) = batch.last().map(|event| event.position) else {
            continue;
        };
        after = last;
        for event in batch {
            write_event(store, out, event, &mut checkpoints, &snapshot_versions).await?;
            events += 1;
        }
        progress(last);
    }
    for (_, checkpoint) in std::mem::take(&mut checkpoints) {
        write_line(out, &Line::Checkpoint(checkpoint))?;
    }
    out.flush()?;
    Ok((header, events))
}

/// What reading an export did.
#[derive(Debug)]
pub struct FileVerified {
    pub header: Header,
    pub verified: Verified,
    /// Events imported (0 when only verifying).
    pub imported: i64,
}

/// Verifies an export file with the ledger's public key `key`
/// (`(key_id, raw Ed25519 key)`): everything `verify` checks on a store,
/// and that the file holds every position its header promises.
pub async fn verify_file(
    input: impl BufRead,
    key: impl Into<Trust>,
) -> Result<FileVerified, ExportError> {
    read_export(input, key.into(), None, &mut |_, _| {}).await
}

/// [`verify_file`], calling `progress` with the position reached and the
/// last position the header promises.
pub async fn verify_file_with_progress(
    input: impl BufRead,
    key: impl Into<Trust>,
    progress: &mut dyn FnMut(i64, i64),
) -> Result<FileVerified, ExportError> {
    read_export(input, key.into(), None, progress).await
}

/// Imports an export of a whole log into `store`, which must be empty,
/// verifying as it goes (the same checks as [`verify_file`]): events are
/// written in transactions of [`IMPORT_BATCH`], each only after it
/// verified, with the checkpoints and snapshots they carry. On a failure,
/// the store holds the verified positions before it, and the error says
/// which position failed.
pub async fn import(
    input: impl BufRead,
    key: impl Into<Trust>,
    store: &Store,
    progress: &mut dyn FnMut(i64, i64),
) -> Result<FileVerified, ExportError> {
    read_export(input, key.into(), Some(store), progress).await
}

/// The verifier of an export: a whole log's (one with stream rows) is
/// checked to its end (witnessed heads past it, its unsigned tail).
fn new_verifier(
    trust: &Trust,
    header: &Header,
    from_start: bool,
    streams: Option<&HashMap<String, (i64, Option<i64>)>>,
) -> Verifier {
    let verifier = Verifier::new(trust, header.chain, from_start, streams);
    if header.streams {
        verifier.whole_log()
    } else {
        verifier
    }
}

/// Events read and not yet verified, and verified ones not yet imported.
struct Pending {
    unverified: Vec<RecordedEvent>,
    due: Vec<DueSnapshot>,
    import: Option<ImportChunk>,
}

#[derive(Default)]
struct ImportChunk {
    events: Vec<RecordedEvent>,
    extras: ImportExtras,
}

async fn read_export(
    input: impl BufRead,
    trust: Trust,
    store: Option<&Store>,
    progress: &mut dyn FnMut(i64, i64),
) -> Result<FileVerified, ExportError> {
    let mut lines = Lines {
        lines: input.lines(),
        number: 0,
    };
    let header = read_header(&mut lines, store).await?;
    let mut reading = Reading {
        streams: header.streams.then(HashMap::new),
        from_start: header.chain && header.from_position == 1,
        header,
        trust,
        verifier: None,
        pending: Pending {
            unverified: Vec::new(),
            due: Vec::new(),
            import: store.map(|_| ImportChunk::default()),
        },
        imported: 0,
    };
    loop {
        let next = lines.next()?;
        let is_event = matches!(next, Some((_, Line::Event(_))));
        if !is_event || reading.pending.unverified.len() >= FILE_BATCH {
            reading.verify_pending(progress).await?;
        }
        if let Some(store) = store {
            reading.import(store, is_event, next.is_none()).await?;
        }
        let Some((line, next)) = next else { break };
        reading.take(line, next)?;
    }
    reading.finish()
}

/// An export's lines, parsed, with their numbers.
struct Lines<R> {
    lines: std::io::Lines<R>,
    number: u64,
}

impl<R: BufRead> Lines<R> {
    fn next(&mut self) -> Result<Option<(u64, Line)>, ExportError> {
        let Some(text) = self.lines.next().transpose()? else {
            return Ok(None);
        };
        self.number += 1;
        serde_json::from_str(&text)
            .map(|line| Some((self.number, line)))
            .map_err(|error| ExportError::Malformed {
                line: self.number,
                error: error.to_string(),
            })
    }
}

/// The first line, checked; with a `store` to import into, also that the
/// export is of a whole log and the store is empty.
async fn read_header<R: BufRead>(
    lines: &mut Lines<R>,
    store: Option<&Store>,
) -> Result<Header, ExportError> {
    let header = match lines.next()? {
        Some((_, Line::Header(header))) => header,
        Some((line, _)) => {
            return Err(ExportError::OutOfPlace {
                line,
                what: "the first line must be the header".into(),
            })
        }
        None => {
            return Err(ExportError::Malformed {
                line: 1,
                error: "the file is empty".into(),
            })
        }
    };
    if header.format != FORMAT || header.format_version != FORMAT_VERSION {
        return Err(ExportError::Format {
            format: header.format,
            version: header.format_version,
        });
    }
    if let Some(store) = store {
        if !(header.chain && header.streams) {
            return Err(ExportError::NotImportable(
                "an export of a whole log (this one is a range or one organization's)",
            ));
        }
        if store.head(header.partition).await?.0 != 0 {
            return Err(ExportError::NotImportable("an empty store"));
        }
    }
    Ok(header)
}

/// An export being read: its stream rows, the verifier once events began,
/// and what waits to be verified or imported.
struct Reading {
    header: Header,
    trust: Trust,
    streams: Option<HashMap<String, (i64, Option<i64>)>>,
    from_start: bool,
    verifier: Option<Verifier>,
    pending: Pending,
    imported: i64,
}

impl Reading {
    fn verifier(&mut self) -> &mut Verifier {
        self.verifier.get_or_insert_with(|| {
            new_verifier(
                &self.trust,
                &self.header,
                self.from_start,
                self.streams.as_ref(),
            )
        })
    }

    async fn verify_pending(
        &mut self,
        progress: &mut dyn FnMut(i64, i64),
    ) -> Result<(), ExportError> {
        let Some(verifier) = self.verifier.as_mut() else {
            return Ok(());
        };
        let batch = std::mem::take(&mut self.pending.unverified);
        if let Some(chunk) = self.pending.import.as_mut() {
            chunk.events.extend(batch.iter().cloned());
        }
        self.pending
            .due
            .extend(verifier.events(batch, &HashMap::new()).await?);
        progress(verifier.position(), self.header.to_position);
        Ok(())
    }

    /// Imports at an event boundary, so a chunk carries the snapshots and
    /// checkpoints that follow its last event.
    async fn import(
        &mut self,
        store: &Store,
        is_event: bool,
        at_end: bool,
    ) -> Result<(), ExportError> {
        let Some(chunk) = self.pending.import.as_mut() else {
            return Ok(());
        };
        if (is_event && chunk.events.len() >= IMPORT_BATCH) || at_end {
            let chunk = std::mem::take(chunk);
            if !chunk.events.is_empty() {
                store
                    .import_with(self.header.partition, &chunk.events, &chunk.extras)
                    .await?;
                self.imported += chunk.events.len() as i64;
            }
        }
        Ok(())
    }

    /// Takes line number `line`.
    fn take(&mut self, line: u64, next: Line) -> Result<(), ExportError> {
        match next {
            Line::Header(_) => {
                return Err(ExportError::OutOfPlace {
                    line,
                    what: "a second header".into(),
                })
            }
            Line::Stream(row) => {
                let Some(streams) = self.streams.as_mut().filter(|_| self.verifier.is_none())
                else {
                    return Err(ExportError::OutOfPlace {
                        line,
                        what: format!(
                            "stream {} where no stream row belongs (after events, or in an export without streams)",
                            row.stream_id
                        ),
                    });
                };
                streams.insert(row.stream_id, (row.version, row.snapshot_version));
            }
            Line::Event(event) => {
                if event.partition != self.header.partition {
                    return Err(ExportError::OutOfPlace {
                        line,
                        what: format!("event at position {} of another partition", event.position),
                    });
                }
                self.verifier();
                self.pending.unverified.push(event);
            }
            Line::Checkpoint(checkpoint) => {
                self.verifier().checkpoint(&checkpoint)?;
                if let Some(chunk) = self.pending.import.as_mut() {
                    chunk.extras.checkpoints.push(checkpoint);
                }
            }
            Line::Snapshot(row) => self.snapshot(row)?,
        }
        Ok(())
    }

    /// A snapshot row must be one the verified events made due.
    fn snapshot(&mut self, row: SnapshotRow) -> Result<(), ExportError> {
        let Some(index) = self
            .pending
            .due
            .iter()
            .position(|due| due.stream_id == row.stream_id)
        else {
            return Err(VerifyError::SnapshotMismatch {
                stream_id: row.stream_id,
                version: row.version,
            }
            .into());
        };
        let due = self.pending.due.remove(index);
        let state = match self.pending.import {
            Some(_) => Some(serde_json::to_string(&row.state).map_err(std::io::Error::from)?),
            None => None,
        };
        check_snapshot(due, Some((row.version, row.state)))?;
        if let (Some(chunk), Some(state)) = (self.pending.import.as_mut(), state) {
            chunk
                .extras
                .snapshots
                .push((row.stream_id, row.version, state));
        }
        Ok(())
    }

    fn finish(mut self) -> Result<FileVerified, ExportError> {
        if let Some(due) = self.pending.due.first() {
            // A stream reached its snapshot's version and no snapshot followed.
            return Err(VerifyError::SnapshotMismatch {
                stream_id: due.stream_id.clone(),
                version: due.version,
            }
            .into());
        }
        let verifier = match self.verifier.take() {
            Some(verifier) => verifier,
            None => new_verifier(
                &self.trust,
                &self.header,
                self.from_start,
                self.streams.as_ref(),
            ),
        };
        let last = verifier.position();
        let header = self.header;
        if header.chain && last != header.to_position || !header.chain && last > header.to_position
        {
            return Err(ExportError::Truncated {
                last,
                to: header.to_position,
            });
        }
        let verified = verifier.finish(self.streams.as_ref())?;
        Ok(FileVerified {
            header,
            verified,
            imported: self.imported,
        })
    }
}
