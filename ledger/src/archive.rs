//! Archive files: one sealed segment of a partition's log as one
//! self-verifying, zstd-compressed file (docs/design.md §3, "Segments,
//! archives and pruning").
//!
//! Format (version [`FORMAT_VERSION`]): a zstd stream of JSON lines:
//! - `{"header": {...}}`: partition, segment, position range, the hash
//!   before the first event and the last event's hash, and how many
//!   checkpoint and snapshot lines follow;
//! - `{"checkpoint": {...}}` for the checkpoint that ends the previous
//!   segment (none for the first), every checkpoint inside the segment,
//!   and the one that ends it;
//! - `{"snapshot": {stream_id, version, state}}` for every stream of the
//!   partition that has events before the segment: its state just before
//!   the segment's first event, so a replay (or `verify
//!   --since-checkpoint`) can start there without the files before;
//! - then one line per event, as in a block: the envelope without
//!   `partition`, `position`, `prev_hash` and `hash`, which follow from the
//!   header and are recomputed as the file is read. Dropping them is what
//!   takes a heartbeat under 40 bytes: a hash is 32 random bytes, which no
//!   compressor shrinks.
//!
//! Reading a file checks it whole: every line in its place, the events'
//! count, their recomputed last hash against the header, and every
//! checkpoint's hash against the chain.

use crate::domain::StreamState;
use crate::{Relinker, Segment, Store, StoreError};
use seatledger_schema::{ChainHash, Checkpoint, RecordedEvent};
use seatledger_schema::{OrgId, SessionId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "seatledger-archive";
pub const FORMAT_VERSION: u32 = 1;
/// zstd level of archive files: measured on heartbeat traffic, level 12
/// with long-distance matching is within 2% of level 19 at a fifth of its
/// time (BENCHMARKS.md, "Archives").
const ZSTD_LEVEL: i32 = 12;
/// zstd window: 2^27 bytes (128 MiB), the most a decoder accepts without
/// being told to: a session's id repeats within it all day.
const ZSTD_WINDOW_LOG: u32 = 27;
/// Events read from the store, and handed to a reader, at a time.
const BATCH: i64 = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveHeader {
    pub format: String,
    pub format_version: u32,
    pub partition: i16,
    pub segment: i64,
    pub first_position: i64,
    pub last_position: i64,
    /// The hash of the event before the first (genesis for the first
    /// segment).
    pub prev_hash: ChainHash,
    pub last_hash: ChainHash,
    pub checkpoints: usize,
    pub snapshots: usize,
    pub description: String,
}

/// A stream's state at the start of the file (as `snapshot` lines of an
/// export).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRow {
    pub stream_id: String,
    pub version: i64,
    pub state: serde_json::Value,
}

/// Checks a checkpoint's signature (an auditor's trusted keys).
pub type CheckSignature<'a> = &'a dyn Fn(&Checkpoint) -> Result<(), String>;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum HeadLine {
    Header(ArchiveHeader),
    Checkpoint(Checkpoint),
    Snapshot(SnapshotRow),
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("{0}")]
    Missing(String),
}

/// What a file holds besides its events, with the SHA-256 of its bytes.
#[derive(Clone, Debug)]
pub struct Archive {
    pub header: ArchiveHeader,
    pub checkpoints: Vec<Checkpoint>,
    pub snapshots: Vec<SnapshotRow>,
    pub sha256: [u8; 32],
    pub bytes: u64,
}

impl Archive {
    /// The checkpoint that ends the segment.
    pub fn closing_checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoints
            .iter()
            .find(|c| c.position == self.header.last_position)
    }
}

/// The file name of a segment's archive.
pub fn file_name(partition: i16, segment: i64) -> String {
    format!("seatledger-p{partition}-s{segment:08}.archive")
}

/// The archive files of `partition` in `dir`, by segment.
pub fn files_in(dir: &Path, partition: i16) -> Result<BTreeMap<i64, PathBuf>, ArchiveError> {
    let io = |error| ArchiveError::Io {
        path: dir.to_owned(),
        error,
    };
    let prefix = format!("seatledger-p{partition}-s");
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(segment) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".archive"))
            .and_then(|digits| digits.parse::<i64>().ok())
        else {
            continue;
        };
        found.insert(segment, entry.path());
    }
    Ok(found)
}

/// Stream states as a replay evolves them, by stream id: `(version, state)`.
pub type States = BTreeMap<String, (i64, StreamState)>;

fn fold(states: &mut States, events: &[RecordedEvent]) -> Result<(), String> {
    for event in events {
        let decoded = event
            .event()
            .map_err(|e| format!("the event at position {}: {e}", event.position))?;
        let entry = states.entry(event.stream_id.clone()).or_default();
        entry.0 = event.stream_version;
        entry.1 = crate::domain::evolve(std::mem::take(&mut entry.1), &decoded);
    }
    Ok(())
}

fn snapshots_of(states: &States) -> Result<Vec<SnapshotRow>, String> {
    states
        .iter()
        .map(|(stream_id, (version, state))| {
            Ok(SnapshotRow {
                stream_id: stream_id.clone(),
                version: *version,
                state: serde_json::to_value(state).map_err(|e| e.to_string())?,
            })
        })
        .collect()
}

/// The states snapshot lines hold.
fn states_of_rows(snapshots: &[SnapshotRow]) -> Result<States, String> {
    snapshots
        .iter()
        .map(|row| {
            let state: StreamState = serde_json::from_value(row.state.clone())
                .map_err(|e| format!("the snapshot of {}: {e}", row.stream_id))?;
            Ok((row.stream_id.clone(), (row.version, state)))
        })
        .collect()
}

/// Counts and hashes what goes through it.
struct Hashing<R> {
    inner: R,
    digest: ring::digest::Context,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.digest.update(&buf[..read]);
        self.bytes += read as u64;
        Ok(read)
    }
}

/// Reads and checks the archive at `path` whole, handing its events to
/// `on_events` in batches (in order). Checkpoint signatures are checked
/// when `trust` is given.
pub fn read_archive(
    path: &Path,
    trust: Option<CheckSignature<'_>>,
    on_events: impl FnMut(&[RecordedEvent]) -> Result<(), String>,
) -> Result<Archive, ArchiveError> {
    read_archive_from(path, trust, |_| Ok(()), on_events)
}

/// The states at the end of the archive at `path`: its snapshots evolved
/// by its events (the file checked whole on the way).
pub fn states_after(
    path: &Path,
    trust: Option<CheckSignature<'_>>,
) -> Result<(Archive, States), ArchiveError> {
    let mut states = States::new();
    let states_cell = std::cell::RefCell::new(&mut states);
    let archive = read_archive_from(
        path,
        trust,
        |snapshots| {
            **states_cell.borrow_mut() = states_of_rows(snapshots)?;
            Ok(())
        },
        |events| fold(&mut states_cell.borrow_mut(), events),
    )?;
    Ok((archive, states))
}

/// [`read_archive`], handing the snapshots to `on_snapshots` before any
/// event.
pub fn read_archive_from(
    path: &Path,
    trust: Option<CheckSignature<'_>>,
    on_snapshots: impl FnOnce(&[SnapshotRow]) -> Result<(), String>,
    mut on_events: impl FnMut(&[RecordedEvent]) -> Result<(), String>,
) -> Result<Archive, ArchiveError> {
    read_owned(path, trust, on_snapshots, |batch| {
        on_events(&batch)?;
        Ok(Ok(batch))
    })
}

/// [`read_archive_from`], handing each batch over; `on_events` hands the
/// vector back (to be reused) or keeps it (`Ok(Err(()))`: a new one is
/// allocated).
fn read_owned(
    path: &Path,
    trust: Option<CheckSignature<'_>>,
    on_snapshots: impl FnOnce(&[SnapshotRow]) -> Result<(), String>,
    on_events: impl FnMut(Vec<RecordedEvent>) -> Result<Result<Vec<RecordedEvent>, ()>, String>,
) -> Result<Archive, ArchiveError> {
    let io = |error| ArchiveError::Io {
        path: path.to_owned(),
        error,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut hashing = Hashing {
        inner: file,
        digest: ring::digest::Context::new(&ring::digest::SHA256),
        bytes: 0,
    };
    let mut lines = ArchiveLines {
        path,
        lines: BufReader::with_capacity(
            1 << 20,
            zstd::stream::read::Decoder::new(&mut hashing).map_err(io)?,
        ),
        text: Vec::with_capacity(4096),
    };
    let (header, checkpoints, snapshots) = lines.head()?;
    let wanted =
        check_checkpoints(&header, &checkpoints, trust).map_err(|what| lines.invalid(what))?;
    // The states are handed over once the checkpoints checked out.
    on_snapshots(&snapshots).map_err(|what| lines.invalid(what))?;
    lines.events(&header, &wanted, on_events)?;
    drop(lines);
    // The rest of the file, if any, is hashed too.
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(io)?;
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(hashing.digest.finish().as_ref());
    Ok(Archive {
        header,
        checkpoints,
        snapshots,
        sha256,
        bytes: hashing.bytes,
    })
}

/// The checkpoints a file carries must lie in its range, be signed by a
/// trusted key (when `trust` is given), continue the previous file's last
/// hash, and include one at its last position. By position.
fn check_checkpoints<'a>(
    header: &ArchiveHeader,
    checkpoints: &'a [Checkpoint],
    trust: Option<CheckSignature<'_>>,
) -> Result<BTreeMap<i64, &'a Checkpoint>, String> {
    let mut wanted = BTreeMap::new();
    for checkpoint in checkpoints {
        if checkpoint.partition != header.partition
            || checkpoint.position < header.first_position - 1
            || checkpoint.position > header.last_position
        {
            return Err(format!(
                "the checkpoint at position {} is outside the file",
                checkpoint.position
            ));
        }
        if let Some(trust) = trust {
            trust(checkpoint)?;
        }
        if checkpoint.position == header.first_position - 1 && checkpoint.hash != header.prev_hash {
            return Err(format!(
                "the checkpoint at position {} signs {}, the file starts after {}",
                checkpoint.position, checkpoint.hash, header.prev_hash
            ));
        }
        wanted.insert(checkpoint.position, checkpoint);
    }
    if !wanted.contains_key(&header.last_position) {
        return Err(format!(
            "no signed checkpoint at its last position {}",
            header.last_position
        ));
    }
    Ok(wanted)
}

/// An archive's decompressed lines.
struct ArchiveLines<'p, R> {
    path: &'p Path,
    lines: BufReader<R>,
    text: Vec<u8>,
}

impl<R: std::io::Read> ArchiveLines<'_, R> {
    fn invalid(&self, what: String) -> ArchiveError {
        ArchiveError::Invalid {
            path: self.path.to_owned(),
            what,
        }
    }

    /// The next line into `text`; false at the end.
    fn next(&mut self) -> Result<bool, ArchiveError> {
        self.text.clear();
        let read = self
            .lines
            .read_until(b'\n', &mut self.text)
            .map_err(|error| {
                self.invalid(format!(
                    "not a complete zstd stream (a partial file?): {error}"
                ))
            })?;
        if self.text.last() == Some(&b'\n') {
            self.text.pop();
        }
        Ok(read > 0)
    }

    /// The next line, which must be a header, checkpoint or snapshot line.
    fn head_line(&mut self, missing: &str) -> Result<HeadLine, ArchiveError> {
        if !self.next()? {
            return Err(self.invalid(missing.into()));
        }
        serde_json::from_slice(&self.text)
            .map_err(|e| self.invalid(format!("a malformed line: {e}")))
    }

    /// The header, then the checkpoints and snapshots it announces.
    fn head(&mut self) -> Result<(ArchiveHeader, Vec<Checkpoint>, Vec<SnapshotRow>), ArchiveError> {
        let HeadLine::Header(header) = self.head_line("empty")? else {
            return Err(self.invalid("it does not start with a header".into()));
        };
        if header.format != FORMAT || header.format_version != FORMAT_VERSION {
            return Err(self.invalid(format!(
                "not a seatledger archive (format {} version {})",
                header.format, header.format_version
            )));
        }
        if header.first_position < 1 || header.last_position < header.first_position {
            return Err(self.invalid("its header's range is impossible".into()));
        }
        let mut checkpoints = Vec::with_capacity(header.checkpoints.min(1 << 16));
        for _ in 0..header.checkpoints {
            match self.head_line("it ends among its checkpoints")? {
                HeadLine::Checkpoint(checkpoint) => checkpoints.push(checkpoint),
                _ => return Err(self.invalid("a line out of place among the checkpoints".into())),
            }
        }
        let mut snapshots = Vec::with_capacity(header.snapshots.min(1 << 16));
        for _ in 0..header.snapshots {
            match self.head_line("it ends among its snapshots")? {
                HeadLine::Snapshot(snapshot) => snapshots.push(snapshot),
                _ => return Err(self.invalid("a line out of place among the snapshots".into())),
            }
        }
        Ok((header, checkpoints, snapshots))
    }

    /// The events, relinked into a chain from the header's previous hash,
    /// checked against the signed checkpoints and handed to `on_events` in
    /// batches (a batch it hands back is reused).
    fn events(
        &mut self,
        header: &ArchiveHeader,
        wanted: &BTreeMap<i64, &Checkpoint>,
        mut on_events: impl FnMut(Vec<RecordedEvent>) -> Result<Result<Vec<RecordedEvent>, ()>, String>,
    ) -> Result<(), ArchiveError> {
        let mut relinker = Relinker::new(
            header.partition,
            header.first_position - 1,
            header.prev_hash,
        );
        let mut batch: Vec<RecordedEvent> = Vec::with_capacity(BATCH as usize);
        let expected = header.last_position - header.first_position + 1;
        let mut read = 0i64;
        while self.next()? {
            if read == expected {
                return Err(self.invalid(format!(
                    "it holds more events than its range {}..={}",
                    header.first_position, header.last_position
                )));
            }
            let event: RecordedEvent = relinker
                .next(&self.text)
                .map_err(|what| self.invalid(what))?;
            read += 1;
            if let Some(checkpoint) = wanted.get(&event.position) {
                if checkpoint.hash != event.hash {
                    return Err(self.invalid(format!(
                        "the checkpoint at position {} signs {}, the events hash to {}",
                        event.position, checkpoint.hash, event.hash
                    )));
                }
            }
            batch.push(event);
            if batch.len() == BATCH as usize {
                let full = std::mem::take(&mut batch);
                batch = match on_events(full).map_err(|what| self.invalid(what))? {
                    Ok(mut back) => {
                        back.clear();
                        back
                    }
                    Err(()) => Vec::with_capacity(BATCH as usize),
                };
            }
        }
        if !batch.is_empty() {
            // The last batch: whether it comes back does not matter.
            let _kept = on_events(batch).map_err(|what| self.invalid(what))?;
        }
        if read != expected {
            return Err(self.invalid(format!(
                "it holds {read} events, its range {expected}: events are missing"
            )));
        }
        if relinker.head().1 != header.last_hash {
            return Err(self.invalid(
                "its events do not hash to its header's last hash (altered after it was written)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Checks a checkpoint's signature, shareable with a reading thread.
pub type SharedCheck = std::sync::Arc<dyn Fn(&Checkpoint) -> Result<(), String> + Send + Sync>;

enum FeedItem {
    Snapshots(Vec<SnapshotRow>),
    Events(Vec<RecordedEvent>),
}

/// An archive file read on a blocking thread of its own and handed over
/// batch by batch: the pull form of [`read_archive_from`] for async
/// readers. Its checks are the same; those that need the whole file (the
/// count, the last hash, trailing bytes) fail at the end, as
/// [`Feed::next`] returns the error instead of `None`, so a caller must
/// read to the end before trusting what it got.
pub struct Feed {
    path: PathBuf,
    items: tokio::sync::mpsc::Receiver<FeedItem>,
    reading: Option<tokio::task::JoinHandle<Result<Archive, ArchiveError>>>,
    snapshots: Option<Vec<SnapshotRow>>,
    archive: Option<Archive>,
}

impl Feed {
    /// Starts reading the archive at `path`; checkpoint signatures are
    /// checked with `trust` when given.
    pub fn open(path: PathBuf, trust: Option<SharedCheck>) -> Feed {
        let (send, items) = tokio::sync::mpsc::channel(2);
        let reading = tokio::task::spawn_blocking({
            let path = path.clone();
            move || {
                let stopped = || "its reader stopped".to_owned();
                let check = trust.as_deref().map(|check| check as CheckSignature<'_>);
                read_owned(
                    &path,
                    check,
                    |snapshots| {
                        send.blocking_send(FeedItem::Snapshots(snapshots.to_vec()))
                            .map_err(|_| stopped())
                    },
                    |batch| {
                        send.blocking_send(FeedItem::Events(batch))
                            .map_err(|_| stopped())?;
                        Ok(Err(()))
                    },
                )
            }
        });
        Feed {
            path,
            items,
            reading: Some(reading),
            snapshots: None,
            archive: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The streams' states at the file's start (its snapshot lines). Call
    /// it before the first [`Feed::next`].
    pub async fn snapshots(&mut self) -> Result<Vec<SnapshotRow>, ArchiveError> {
        match self.items.recv().await {
            Some(FeedItem::Snapshots(rows)) => Ok(rows),
            Some(FeedItem::Events(_)) => Err(ArchiveError::Invalid {
                path: self.path.clone(),
                what: "its snapshots were asked for after its events".into(),
            }),
            None => {
                self.finish().await?;
                Ok(self.snapshots.take().unwrap_or_default())
            }
        }
    }

    /// The next batch of events, or `None` once the whole file read and
    /// checked out ([`Feed::archive`] then holds what it was).
    pub async fn next(&mut self) -> Result<Option<Vec<RecordedEvent>>, ArchiveError> {
        loop {
            match self.items.recv().await {
                Some(FeedItem::Events(batch)) => return Ok(Some(batch)),
                Some(FeedItem::Snapshots(rows)) => self.snapshots = Some(rows),
                None => {
                    self.finish().await?;
                    return Ok(None);
                }
            }
        }
    }

    async fn finish(&mut self) -> Result<(), ArchiveError> {
        if let Some(reading) = self.reading.take() {
            let archive = reading.await.map_err(|error| ArchiveError::Invalid {
                path: self.path.clone(),
                what: format!("its reader failed: {error}"),
            })??;
            self.archive = Some(archive);
        }
        Ok(())
    }

    /// What the file held besides its events, once read to the end.
    pub fn archive(&self) -> Option<&Archive> {
        self.archive.as_ref()
    }
}

/// The checkpoints of `partition` in `(after, through]`, from the store.
async fn checkpoints_between(
    store: &Store,
    partition: i16,
    after: i64,
    through: i64,
) -> Result<Vec<Checkpoint>, StoreError> {
    let mut found = Vec::new();
    let mut cursor = after;
    while cursor < through {
        // Positions are unique, so (cursor, through] holds at most
        // `through - cursor` checkpoints: no need to ask for more.
        let limit = (through - cursor).min(1_000);
        let page = store.signed_checkpoints(partition, cursor, limit).await?;
        let Some(last) = page.last() else { break };
        cursor = last.position;
        let done = cursor >= through || (page.len() as i64) < limit;
        found.extend(page.into_iter().filter(|c| c.position <= through));
        if done {
            break;
        }
    }
    Ok(found)
}

/// What `archive` wrote.
#[derive(Clone, Debug)]
pub struct Written {
    pub path: PathBuf,
    pub archive: Archive,
}

/// The events of segment `segment` read from `store`, written to `dir` as
/// an archive file that starts from `states` (which it then evolves to
/// the segment's end): to a temporary name, fsynced, read back and checked
/// against the store's boundary checkpoints, then renamed.
async fn write_segment(
    store: &Store,
    dir: &Path,
    segment: &Segment,
    states: &mut States,
) -> Result<Written, ArchiveError> {
    let (first, last) = match segment.last_position {
        Some(last) => (segment.first_position, last),
        None => {
            return Err(ArchiveError::Missing(format!(
                "segment {} is not sealed",
                segment.segment
            )))
        }
    };
    let partition = segment.partition;
    let file = SegmentFile {
        path: dir.join(file_name(partition, segment.segment)),
        temp: dir.join(format!(
            ".{}.partial",
            file_name(partition, segment.segment)
        )),
    };
    let (header, checkpoints, closing) = file.head(store, segment, (first, last)).await?;
    let prev_hash = header.prev_hash;
    let snapshots = snapshots_of(states).map_err(|what| file.invalid(what))?;
    let mut encoder = file.encoder()?;
    let mut out = Vec::with_capacity(1 << 20);
    let head = std::iter::once(HeadLine::Header(ArchiveHeader {
        snapshots: snapshots.len(),
        ..header
    }))
    .chain(checkpoints.into_iter().map(HeadLine::Checkpoint))
    .chain(snapshots.into_iter().map(HeadLine::Snapshot));
    for line in head {
        serde_json::to_writer(&mut out, &line).map_err(|e| file.invalid(e.to_string()))?;
        out.push(b'\n');
    }
    encoder.write_all(&out).map_err(file.io(&file.temp))?;
    let mut after = first - 1;
    while after < last {
        let events = store
            .read_range(partition, after, (after + BATCH).min(last))
            .await?;
        let Some(last_read) = events.last() else {
            return Err(file.invalid(format!("the store holds no events after position {after}")));
        };
        after = last_read.position;
        out.clear();
        for event in &events {
            crate::write_line(&mut out, event).map_err(|e| file.invalid(e.to_string()))?;
        }
        encoder.write_all(&out).map_err(file.io(&file.temp))?;
        fold(states, &events).map_err(|what| file.invalid(what))?;
    }
    file.finish(encoder, dir, &closing, prev_hash)
}

/// An archive file being written: its name, and the partial file it is
/// written to first.
struct SegmentFile {
    path: PathBuf,
    temp: PathBuf,
}

impl SegmentFile {
    fn invalid(&self, what: String) -> ArchiveError {
        ArchiveError::Invalid {
            path: self.path.clone(),
            what,
        }
    }

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> ArchiveError {
        let path = path.to_owned();
        move |error| ArchiveError::Io {
            path: path.clone(),
            error,
        }
    }

    /// The header (its snapshot count left 0), the checkpoints from the
    /// one before the segment to its end, and the closing checkpoint.
    async fn head(
        &self,
        store: &Store,
        segment: &Segment,
        (first, last): (i64, i64),
    ) -> Result<(ArchiveHeader, Vec<Checkpoint>, Checkpoint), ArchiveError> {
        let partition = segment.partition;
        let checkpoints = checkpoints_between(store, partition, (first - 2).max(0), last).await?;
        let opening = checkpoints.iter().find(|c| c.position == first - 1);
        let prev_hash = match (first, opening) {
            (1, _) => ChainHash::GENESIS,
            (_, Some(checkpoint)) => checkpoint.hash,
            (_, None) => {
                return Err(self.invalid(format!(
                    "no checkpoint ends the segment before (at position {})",
                    first - 1
                )))
            }
        };
        let Some(closing) = checkpoints.iter().find(|c| c.position == last).cloned() else {
            return Err(self.invalid(format!("no checkpoint at its end, position {last}")));
        };
        let header = ArchiveHeader {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            partition,
            segment: segment.segment,
            first_position: first,
            last_position: last,
            prev_hash,
            last_hash: closing.hash,
            checkpoints: checkpoints.len(),
            snapshots: 0,
            description: format!(
                "segment {} of partition {partition} of a seatledger log: positions {first}..={last}",
                segment.segment
            ),
        };
        Ok((header, checkpoints, closing))
    }

    fn encoder(
        &self,
    ) -> Result<
        zstd::stream::write::Encoder<'static, std::io::BufWriter<std::fs::File>>,
        ArchiveError,
    > {
        let file = std::fs::File::create(&self.temp).map_err(self.io(&self.temp))?;
        let mut encoder = zstd::stream::write::Encoder::new(
            std::io::BufWriter::with_capacity(1 << 20, file),
            ZSTD_LEVEL,
        )
        .map_err(self.io(&self.temp))?;
        encoder
            .long_distance_matching(true)
            .and_then(|_| encoder.window_log(ZSTD_WINDOW_LOG))
            .map_err(self.io(&self.temp))?;
        Ok(encoder)
    }

    /// Flushes and syncs the partial file, reads it back whole, and only
    /// then gives it its name (and syncs the directory).
    fn finish(
        self,
        encoder: zstd::stream::write::Encoder<'static, std::io::BufWriter<std::fs::File>>,
        dir: &Path,
        closing: &Checkpoint,
        prev_hash: ChainHash,
    ) -> Result<Written, ArchiveError> {
        let writer = encoder.finish().map_err(self.io(&self.temp))?;
        let file = writer.into_inner().map_err(|e| ArchiveError::Io {
            path: self.temp.clone(),
            error: e.into_error(),
        })?;
        file.sync_all().map_err(self.io(&self.temp))?;
        drop(file);
        let archive = read_archive(&self.temp, None, |_| Ok(()))?;
        if archive.closing_checkpoint() != Some(closing) || archive.header.prev_hash != prev_hash {
            return Err(self.invalid(
                "the file read back does not match the store's boundary checkpoints".into(),
            ));
        }
        std::fs::rename(&self.temp, &self.path).map_err(self.io(&self.path))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io(dir))?;
        Ok(Written {
            path: self.path,
            archive,
        })
    }
}

/// The states just before segment `segment` starts: from the archive of
/// the segment before (its snapshots evolved by its events), else by
/// replaying the store from the start.
async fn states_before(
    store: &Store,
    dir: &Path,
    segments: &[Segment],
    index: usize,
    files: &BTreeMap<i64, PathBuf>,
) -> Result<States, ArchiveError> {
    let Some(previous) = index.checked_sub(1).map(|i| &segments[i]) else {
        return Ok(States::new());
    };
    if let Some(path) = files.get(&previous.segment) {
        return Ok(states_after(path, None)?.1);
    }
    if previous.is_pruned() {
        return Err(ArchiveError::Missing(format!(
            "segment {} was pruned and its archive {} is not in {}",
            previous.segment,
            file_name(previous.partition, previous.segment),
            dir.display()
        )));
    }
    let through = segments[index].first_position - 1;
    let mut states = States::new();
    let mut after = 0;
    while after < through {
        let events = store
            .read_range(
                segments[index].partition,
                after,
                (after + BATCH).min(through),
            )
            .await?;
        let Some(last) = events.last() else { break };
        after = last.position;
        fold(&mut states, &events).map_err(ArchiveError::Missing)?;
    }
    Ok(states)
}

/// Writes every sealed segment of `partition` that has no archive file in
/// `dir` yet, oldest first; calls `on_written` after each.
pub async fn archive(
    store: &Store,
    partition: i16,
    dir: &Path,
    mut on_written: impl FnMut(&Written),
) -> Result<Vec<Written>, ArchiveError> {
    std::fs::create_dir_all(dir).map_err(|error| ArchiveError::Io {
        path: dir.to_owned(),
        error,
    })?;
    let segments = store.segments(partition).await?;
    let files = files_in(dir, partition)?;
    let Some(start) = segments
        .iter()
        .position(|s| s.is_sealed() && !files.contains_key(&s.segment))
    else {
        return Ok(Vec::new());
    };
    let mut states = states_before(store, dir, &segments, start, &files).await?;
    let mut written = Vec::new();
    for segment in &segments[start..] {
        if !segment.is_sealed() {
            break;
        }
        if let Some(path) = files.get(&segment.segment) {
            states = states_after(path, None)?.1;
            continue;
        }
        if segment.is_pruned() {
            return Err(ArchiveError::Missing(format!(
                "segment {} was pruned and its archive is not in {}",
                segment.segment,
                dir.display()
            )));
        }
        let done = write_segment(store, dir, segment, &mut states).await?;
        on_written(&done);
        written.push(done);
    }
    Ok(written)
}

/// A segment `prune` removed.
#[derive(Clone, Debug)]
pub struct Pruned {
    pub segment: i64,
    pub first_position: i64,
    pub last_position: i64,
    pub path: PathBuf,
    pub sha256: [u8; 32],
    /// Where the `LogPruned` event was recorded.
    pub recorded_at_position: i64,
}

/// A segment whose archive checked out, ready to prune.
struct Checked {
    segment: Segment,
    last: i64,
    path: PathBuf,
    archive: Archive,
    /// Sessions granted in the segment: `(session, license stream, tenant)`.
    granted: Vec<crate::store::PrunedSession>,
}

/// Whether `archive` closes with the database's signed checkpoint at
/// `last` and continues the one before the segment: what is wrong, if
/// anything.
async fn check_boundaries(
    store: &Store,
    segment: &Segment,
    last: i64,
    archive: &Archive,
) -> Result<Option<String>, ArchiveError> {
    let live = checkpoints_between(store, segment.partition, last - 1, last).await?;
    let live_closing = live.iter().find(|c| c.position == last);
    if live_closing.is_none() || archive.closing_checkpoint() != live_closing {
        return Ok(Some(format!(
            "its closing checkpoint is not the database's signed checkpoint at position {last}"
        )));
    }
    if segment.first_position > 1 {
        let opening = checkpoints_between(
            store,
            segment.partition,
            segment.first_position - 2,
            segment.first_position - 1,
        )
        .await?;
        if opening.last().map(|c| c.hash) != Some(archive.header.prev_hash) {
            return Ok(Some(format!(
                "it does not continue the database's checkpoint at position {}",
                segment.first_position - 1
            )));
        }
    }
    Ok(None)
}

/// Checks the archive of `segment` in `dir` against the store: the file
/// verifies whole and its boundary checkpoints are the store's, to the
/// signature.
async fn check_archive(
    store: &Store,
    dir: &Path,
    segment: &Segment,
    trust: Option<CheckSignature<'_>>,
) -> Result<Checked, ArchiveError> {
    let path = dir.join(file_name(segment.partition, segment.segment));
    let Some(last) = segment.last_position else {
        return Err(ArchiveError::Missing(format!(
            "segment {} is not sealed",
            segment.segment
        )));
    };
    if !path.exists() {
        return Err(ArchiveError::Missing(format!(
            "segment {} (positions {}..={last}) has no archive {}: run seatledger-replay archive first",
            segment.segment,
            segment.first_position,
            path.display()
        )));
    }
    let mut granted = Vec::new();
    let archive = read_archive(&path, trust, |events| {
        for event in events {
            if let Some(touch) = event.seat_touch() {
                if touch.kind == seatledger_schema::SeatTouchKind::Acquired {
                    granted.push((touch.session_id, event.stream_id.clone(), event.org_id));
                }
            }
        }
        Ok(())
    })?;
    let invalid = |what: String| ArchiveError::Invalid {
        path: path.clone(),
        what,
    };
    let header = &archive.header;
    if header.partition != segment.partition
        || header.segment != segment.segment
        || header.first_position != segment.first_position
        || header.last_position != last
    {
        return Err(invalid(format!(
            "it holds segment {} (positions {}..={}), the database's segment {} is positions {}..={last}",
            header.segment,
            header.first_position,
            header.last_position,
            segment.segment,
            segment.first_position
        )));
    }
    check_boundaries(store, segment, last, &archive)
        .await?
        .map_or(Ok(()), |what| Err(invalid(what)))?;
    Ok(Checked {
        segment: segment.clone(),
        last,
        path,
        archive,
        granted,
    })
}

/// Gives every stream of the partition whose events before `cut` are not
/// all behind its snapshot a snapshot of its state now, so it loads
/// without them.
async fn snapshot_at_cut(store: &Store, partition: i16, cut: i64) -> Result<(), ArchiveError> {
    for (stream_id, (version, snapshot)) in store.stream_versions_of(partition).await? {
        let after = snapshot.unwrap_or(0);
        if after >= version {
            continue;
        }
        let next = store.read_stream_range(&stream_id, after, after + 1).await;
        let needs = match next {
            Ok(events) => events.first().is_none_or(|event| event.position <= cut),
            // Already gone: a snapshot cannot be made any more.
            Err(error) => return Err(error.into()),
        };
        if !needs {
            continue;
        }
        let (version, state) = store.stream_state(&stream_id).await?;
        let text = serde_json::to_string(&state)
            .map_err(|e| ArchiveError::Missing(format!("the state of {stream_id}: {e}")))?;
        store.store_snapshot(&stream_id, version, &text).await?;
    }
    Ok(())
}

/// The sessions to keep for the session lookup: those granted in the
/// segment and those kept by an earlier prune, while their lease lives. A
/// kept session that has ended is forgotten, so the table stays as small
/// as the leases that outlive their grant's segment. (Kept, forgotten.)
async fn sessions_at_cut(
    store: &Store,
    granted: Vec<crate::store::PrunedSession>,
) -> Result<(Vec<crate::store::PrunedSession>, Vec<SessionId>), ArchiveError> {
    let kept = store.pruned_sessions().await?;
    let earlier = kept.len();
    let mut live = Vec::new();
    let mut forget = Vec::new();
    let mut states: BTreeMap<String, Option<crate::domain::LicenseState>> = BTreeMap::new();
    for (index, (session_id, stream_id, org_id)) in kept.into_iter().chain(granted).enumerate() {
        if !states.contains_key(&stream_id) {
            let state = match store.stream_state(&stream_id).await?.1 {
                StreamState::License(license) => Some(license),
                _ => None,
            };
            states.insert(stream_id.clone(), state);
        }
        let holds = states
            .get(&stream_id)
            .and_then(Option::as_ref)
            .is_some_and(|license| license.lease(session_id).is_some());
        match (holds, index < earlier) {
            (true, false) => live.push((session_id, stream_id, org_id)),
            (false, true) => forget.push(session_id),
            (true, true) | (false, false) => {}
        }
    }
    Ok((live, forget))
}

/// Records the prune of a checked segment as a `LogPruned` event, keyed so
/// a rerun finds it and a different file is refused.
async fn record_prune(
    appender: &crate::Appender,
    partition: i16,
    item: &Checked,
) -> Result<crate::CommandResult, ArchiveError> {
    let event = seatledger_schema::LogPruned {
        partition,
        segment: item.segment.segment,
        first_position: item.segment.first_position,
        last_position: item.last,
        archive_sha256: hex_of(&item.archive.sha256),
        archive_file: item
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned(),
    };
    let mut submission =
        crate::Submission::new(OrgId::nil(), crate::domain::Command::RecordPrune(event));
    submission.command_id = Some(format!("prune-{partition}-{}", item.segment.segment));
    submission.request_hash = item.archive.sha256;
    submission.metadata.actor = Some("admin-cli".into());
    let recorded = appender.submit(submission).await.map_err(|e| {
        ArchiveError::Missing(format!("recording the prune in the log failed: {e}"))
    })?;
    if let Some(rejection) = recorded.rejection {
        return Err(ArchiveError::Missing(format!(
            "recording the prune of segment {} was refused ({rejection:?}): it was recorded before with another archive",
            item.segment.segment
        )));
    }
    Ok(recorded)
}

/// Prunes every sealed segment of `partition` that ends at or before
/// `before_position` and is not pruned yet, oldest first: each one's
/// archive in `dir` must verify and match the store's boundary checkpoints
/// (all of them are checked before anything is dropped); then streams get
/// the snapshots they need, the prune is recorded in the log (a
/// `LogPruned` event, through `appender`), and the segment's blocks are
/// dropped. Returns what was pruned.
pub async fn prune(
    store: &Store,
    appender: &crate::Appender,
    partition: i16,
    dir: &Path,
    before_position: i64,
    trust: Option<CheckSignature<'_>>,
    mut on_pruned: impl FnMut(&Pruned),
) -> Result<Vec<Pruned>, ArchiveError> {
    let segments = store.segments(partition).await?;
    let mut checked = Vec::new();
    for segment in &segments {
        match segment.last_position {
            Some(last) if last <= before_position => {}
            _ => break,
        }
        if segment.is_pruned() {
            continue;
        }
        checked.push(check_archive(store, dir, segment, trust).await?);
    }
    let mut done = Vec::new();
    for mut item in checked {
        snapshot_at_cut(store, partition, item.last).await?;
        let (live, forget) = sessions_at_cut(store, std::mem::take(&mut item.granted)).await?;
        let recorded = record_prune(appender, partition, &item).await?;
        let recorded_at_position = recorded.events.first().map_or(0, |e| e.position);
        store
            .prune_segment(
                partition,
                crate::store::SegmentPrune {
                    segment: item.segment.segment,
                    archive_sha256: &item.archive.sha256,
                    sessions: &live,
                    forget: &forget,
                },
                seatledger_schema::Timestamp::now(),
            )
            .await?;
        let pruned = Pruned {
            segment: item.segment.segment,
            first_position: item.segment.first_position,
            last_position: item.last,
            path: item.path,
            sha256: item.archive.sha256,
            recorded_at_position,
        };
        on_pruned(&pruned);
        done.push(pruned);
    }
    Ok(done)
}

/// Lowercase hex of `bytes`.
pub fn hex_of(bytes: &[u8]) -> String {
    hex::encode(bytes)
}
