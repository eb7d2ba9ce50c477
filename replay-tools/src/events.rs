//! Where the tools read events from: the store (in bounded position
//! ranges, read ahead) or an export file (line by line). Either way the
//! caller sees batches in position order and memory holds one batch.
//! Reading a file does not verify it: `verify --from-file` does.

use crate::export::{Header, Line, FORMAT, FORMAT_VERSION};
use crate::verify::LogReader;
use seatledger_ledger::{Store, StoreError};
use seatledger_schema::RecordedEvent;
use std::io::BufRead;

/// Events per batch read from a file.
const FILE_BATCH: usize = 10_000;

/// Batches of events in position order.
pub struct EventStream {
    source: Source,
    /// Called with the last position of each batch (a progress bar).
    progress: Option<Box<dyn FnMut(i64) + Send>>,
}

enum Source {
    Log(LogReader),
    File(FileEvents),
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
        let (head, _) = store.head(partition).await?;
        let through = through.unwrap_or(head).min(head);
        let source = Source::Log(LogReader::new(store, partition, through));
        Ok((
            EventStream {
                source,
                progress: None,
            },
            head,
        ))
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
