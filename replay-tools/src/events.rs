//! Where the tools read events from: the store (in bounded position
//! ranges, read ahead), the archive files of its pruned segments followed
//! by the store, or an export file (line by line). Either way the caller
//! sees batches in position order and memory holds a few batches.
//! Reading an export file does not verify it: `verify --from-file` does.
//! Archive files are checked as they are read (each file whole, its
//! SHA-256 against the one the prune recorded, and the chain's links
//! where one file or the store takes over from another).

use crate::format::{Header, Line, FORMAT, FORMAT_VERSION};
use crate::read::LogReader;
use seatledger_ledger::archive::{self, Archive, Feed, SharedCheck, SnapshotRow};
use seatledger_ledger::{Segment, Store, StoreError};
use seatledger_schema::{ChainHash, RecordedEvent};
use std::collections::VecDeque;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// Events per batch read from a file.
const FILE_BATCH: usize = 10_000;

/// Batches of events in position order.
pub struct EventStream {
    source: Source,
    /// An archive file (of a segment not pruned yet) that starts just
    /// after the first position asked for: its states are the starting
    /// states.
    start_file: Option<PathBuf>,
    /// Called with the last position of each batch (a progress bar).
    progress: Option<Box<dyn FnMut(i64) + Send>>,
}

enum Source {
    Log(LogReader),
    Archived(Box<Archived>),
    File(FileEvents),
}

/// An archive file read to its end, and the pruned segment it stands for.
#[derive(Clone, Debug)]
pub struct ReadArchive {
    pub segment: Segment,
    pub path: PathBuf,
    pub archive: Archive,
}

/// Pruned segments read from their archive files, then the store.
struct Archived {
    store: Store,
    partition: i16,
    /// Pruned segments still to read, oldest first, with their files.
    files: VecDeque<(Segment, PathBuf)>,
    feed: Option<(Segment, Feed)>,
    /// Checks the files' checkpoint signatures (verify).
    trust: Option<SharedCheck>,
    /// Events at or before `after` are skipped, and the stream ends after
    /// `through`.
    after: i64,
    through: i64,
    /// Where the store takes over (the last pruned position).
    pruned_through: i64,
    tail: Option<LogReader>,
    /// The last position and hash handed over.
    last: Option<(i64, ChainHash)>,
    read: Vec<ReadArchive>,
}

fn archive_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Archive(error.to_string())
}

impl Archived {
    async fn next(&mut self) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        loop {
            if self.feed.is_none() {
                if let Some((segment, path)) = self.files.pop_front() {
                    let feed = Feed::open(path, self.trust.clone());
                    self.feed = Some((segment, feed));
                }
            }
            let batch = match &mut self.feed {
                Some((segment, feed)) => match feed.next().await.map_err(archive_error)? {
                    Some(batch) => batch,
                    None => {
                        let segment = segment.clone();
                        self.finish_file(segment)?;
                        continue;
                    }
                },
                None => {
                    if self.tail.is_none() && self.pruned_through < self.through {
                        let after = self.pruned_through.max(self.after);
                        self.tail = Some(LogReader::range(
                            &self.store,
                            self.partition,
                            after,
                            self.through,
                        ));
                    }
                    match &mut self.tail {
                        Some(tail) => match tail.next().await? {
                            Some(batch) => batch,
                            None => return Ok(None),
                        },
                        None => return Ok(None),
                    }
                }
            };
            let (after, through) = (self.after, self.through);
            let batch: Vec<RecordedEvent> = batch
                .into_iter()
                .filter(|event| event.position > after && event.position <= through)
                .collect();
            let Some(first) = batch.first() else {
                continue;
            };
            if let Some((position, hash)) = self.last {
                if first.position != position + 1 || first.prev_hash != hash {
                    return Err(archive_error(format!(
                        "the event at position {} does not follow position {position} (hash {hash}) where the archive files hand over",
                        first.position
                    )));
                }
            }
            self.last = batch.last().map(|event| (event.position, event.hash));
            return Ok(Some(batch));
        }
    }

    /// A file read to its end: it must be the archive the prune of
    /// `segment` recorded.
    fn finish_file(&mut self, segment: Segment) -> Result<(), StoreError> {
        let Some((_, feed)) = self.feed.take() else {
            return Ok(());
        };
        let path = feed.path().to_owned();
        let Some(archive) = feed.archive().cloned() else {
            return Err(archive_error(format!("{}: not read whole", path.display())));
        };
        let header = &archive.header;
        if header.partition != segment.partition
            || header.segment != segment.segment
            || header.first_position != segment.first_position
            || Some(header.last_position) != segment.last_position
        {
            return Err(archive_error(format!(
                "{}: it holds segment {} (positions {}..={}), not the pruned segment {} (positions {}..={})",
                path.display(),
                header.segment,
                header.first_position,
                header.last_position,
                segment.segment,
                segment.first_position,
                segment.last_position.unwrap_or_default(),
            )));
        }
        if let Some(recorded) = &segment.archive_sha256 {
            if recorded.as_slice() != archive.sha256.as_slice() {
                return Err(archive_error(format!(
                    "{}: its SHA-256 is {}, the prune of segment {} recorded {}: not the file that was pruned",
                    path.display(),
                    archive::hex_of(&archive.sha256),
                    segment.segment,
                    archive::hex_of(recorded),
                )));
            }
        }
        self.read.push(ReadArchive {
            segment,
            path,
            archive,
        });
        Ok(())
    }
}

/// The events of an export file.
pub struct FileEvents {
    lines: std::io::Lines<Box<dyn BufRead + Send>>,
    line: u64,
    through: i64,
    done: bool,
}

fn corrupt(line: u64, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("export file, line {line}: {what}"))
}

impl EventStream {
    /// Positions `1..=through` (the head without it) of `partition` of
    /// `store`, and the head.
    pub async fn from_store(
        store: &Store,
        partition: i16,
        through: Option<i64>,
    ) -> Result<(EventStream, i64), StoreError> {
        EventStream::from_log(store, partition, None, 0, through).await
    }

    /// Positions `after + 1..=through` (the head without it) of
    /// `partition`, and the head: those of pruned segments from their
    /// archive files in `archive`, the rest from the store. Without
    /// `archive`, fails with [`StoreError::Pruned`] when some of them were
    /// pruned.
    pub async fn from_log(
        store: &Store,
        partition: i16,
        archive: Option<&Path>,
        after: i64,
        through: Option<i64>,
    ) -> Result<(EventStream, i64), StoreError> {
        let (head, _) = store.head(partition).await?;
        let through = through.unwrap_or(head).min(head);
        let segments = store.segments(partition).await?;
        let start_file = match archive {
            Some(dir) => {
                let found = archive::files_in(dir, partition).map_err(archive_error)?;
                segments
                    .iter()
                    .find(|segment| segment.first_position == after + 1)
                    .and_then(|segment| found.get(&segment.segment).cloned())
            }
            None => None,
        };
        let pruned: Vec<Segment> = segments.into_iter().filter(Segment::is_pruned).collect();
        let pruned_through = pruned
            .last()
            .and_then(|segment| segment.last_position)
            .unwrap_or(0);
        let source = if after >= pruned_through || after >= through {
            Source::Log(LogReader::range(store, partition, after, through))
        } else {
            let Some(dir) = archive else {
                return Err(StoreError::Pruned {
                    partition,
                    pruned_through,
                });
            };
            let files = archive_files(dir, partition, pruned, after, through)?;
            Source::Archived(Box::new(Archived {
                store: store.clone(),
                partition,
                files,
                feed: None,
                trust: None,
                after,
                through,
                pruned_through,
                tail: None,
                last: None,
                read: Vec::new(),
            }))
        };
        Ok((
            EventStream {
                source,
                start_file,
                progress: None,
            },
            head,
        ))
    }

    /// Checks the checkpoint signatures of the archive files read with
    /// `check` (before the first batch).
    pub fn check_signatures(mut self, check: SharedCheck) -> EventStream {
        if let Source::Archived(archived) = &mut self.source {
            archived.trust = Some(check);
        }
        self
    }

    /// The streams' states just before the first event, when they are
    /// known: when the first event is the first of an archive file, its
    /// snapshot lines (before the first batch). The file's checkpoint
    /// signatures are checked first with `check` (a file of a pruned
    /// segment is then read whole as the stream goes on; one of a segment
    /// still in the database only for its states).
    pub async fn starting_states(
        &mut self,
        check: Option<SharedCheck>,
    ) -> Result<Option<Vec<SnapshotRow>>, StoreError> {
        let Source::Archived(archived) = &mut self.source else {
            let Some(path) = self.start_file.clone() else {
                return Ok(None);
            };
            let mut feed = Feed::open(path, check);
            return Ok(Some(feed.snapshots().await.map_err(archive_error)?));
        };
        let starts_file = archived
            .files
            .front()
            .is_some_and(|(segment, _)| segment.first_position == archived.after + 1);
        if archived.feed.is_some() || !starts_file {
            return Ok(None);
        }
        let Some((segment, path)) = archived.files.pop_front() else {
            return Ok(None);
        };
        let mut feed = Feed::open(path, check.or_else(|| archived.trust.clone()));
        let rows = feed.snapshots().await.map_err(archive_error)?;
        archived.feed = Some((segment, feed));
        Ok(Some(rows))
    }

    /// The archive files read to their end so far.
    pub fn archives_read(&self) -> &[ReadArchive] {
        match &self.source {
            Source::Archived(archived) => &archived.read,
            _ => &[],
        }
    }

    /// The events of an export (up to position `through` when given), and
    /// its header.
    pub fn from_file(
        input: Box<dyn BufRead + Send>,
        through: Option<i64>,
    ) -> Result<(EventStream, Header), StoreError> {
        let mut lines = input.lines();
        let first = lines
            .next()
            .transpose()
            .map_err(|e| corrupt(1, e))?
            .ok_or_else(|| corrupt(1, "the file is empty"))?;
        let header = match serde_json::from_str(&first) {
            Ok(Line::Header(header))
                if header.format == FORMAT && header.format_version == FORMAT_VERSION =>
            {
                header
            }
            Ok(_) => return Err(corrupt(1, "not the header of a seatledger export")),
            Err(error) => return Err(corrupt(1, error)),
        };
        let events = FileEvents {
            lines,
            line: 1,
            through: through.unwrap_or(i64::MAX),
            done: false,
        };
        let stream = EventStream {
            source: Source::File(events),
            start_file: None,
            progress: None,
        };
        Ok((stream, header))
    }

    /// Calls `progress` with the last position of each batch read.
    pub fn with_progress(mut self, progress: impl FnMut(i64) + Send + 'static) -> EventStream {
        self.progress = Some(Box::new(progress));
        self
    }

    /// The next batch, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        let batch = match &mut self.source {
            Source::Log(reader) => reader.next().await?,
            Source::Archived(archived) => archived.next().await?,
            Source::File(file) => file.next_batch()?,
        };
        if let (Some(progress), Some(last)) = (
            self.progress.as_mut(),
            batch.as_ref().and_then(|batch| batch.last()),
        ) {
            progress(last.position);
        }
        Ok(batch)
    }
}

impl FileEvents {
    fn next_batch(&mut self) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        let mut batch = Vec::new();
        while !self.done && batch.len() < FILE_BATCH {
            let Some(text) = self.lines.next() else {
                self.done = true;
                break;
            };
            self.line += 1;
            let text = text.map_err(|e| corrupt(self.line, e))?;
            match serde_json::from_str(&text).map_err(|e| corrupt(self.line, e))? {
                Line::Event(event) if event.position > self.through => self.done = true,
                Line::Event(event) => batch.push(event),
                Line::Header(_) => return Err(corrupt(self.line, "a second header")),
                Line::Stream(_) | Line::Snapshot(_) | Line::Checkpoint(_) => {}
            }
        }
        Ok((!batch.is_empty()).then_some(batch))
    }
}

/// The archive files in `dir` of the `pruned` segments that hold positions
/// after `after` through `through`, in order; every one must be there.
fn archive_files(
    dir: &Path,
    partition: i16,
    pruned: Vec<Segment>,
    after: i64,
    through: i64,
) -> Result<VecDeque<(Segment, std::path::PathBuf)>, StoreError> {
    let found = archive::files_in(dir, partition).map_err(archive_error)?;
    let mut files = VecDeque::new();
    for segment in pruned {
        let last = segment.last_position.unwrap_or_default();
        if last <= after || segment.first_position > through {
            continue;
        }
        let Some(path) = found.get(&segment.segment) else {
            return Err(archive_error(format!(
                "segment {} (positions {}..={last}) was pruned and {} has no {}",
                segment.segment,
                segment.first_position,
                dir.display(),
                archive::file_name(partition, segment.segment)
            )));
        };
        files.push_back((segment, path.clone()));
    }
    Ok(files)
}
