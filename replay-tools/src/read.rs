//! Reading a partition of the log from the store in bounded batches, with
//! the next reads under way while the caller works on the current one.

use seatledger_ledger::{Store, StoreError};
use seatledger_schema::RecordedEvent;
use std::collections::VecDeque;
use tokio::task::JoinHandle;

/// Events read per batch, and batches read at once.
pub const VERIFY_BATCH: i64 = 10_000;
pub const READS_IN_FLIGHT: usize = 3;

/// Reads a partition in position order up to a head, in bounded ranges of
/// `VERIFY_BATCH` events with `READS_IN_FLIGHT` reads under way.
///
/// Positions are meant to be gap-free (verify checks it), so the ranges of
/// the next batches are known in advance; a gap or reorder still shows up
/// to the caller as a position out of sequence.
pub struct LogReader {
    store: Store,
    partition: i16,
    through: i64,
    next_after: i64,
    pending: VecDeque<JoinHandle<Result<Vec<RecordedEvent>, StoreError>>>,
}

impl LogReader {
    /// A reader of positions `1..=through` of `partition`.
    pub fn new(store: &Store, partition: i16, through: i64) -> LogReader {
        LogReader::range(store, partition, 0, through)
    }

    /// A reader of positions `after + 1..=through` of `partition`.
    pub fn range(store: &Store, partition: i16, after: i64, through: i64) -> LogReader {
        let mut reader = LogReader {
            store: store.clone(),
            partition,
            through,
            next_after: after,
            pending: VecDeque::new(),
        };
        reader.refill();
        reader
    }

    fn refill(&mut self) {
        while self.pending.len() < READS_IN_FLIGHT && self.next_after < self.through {
            let reader = self.store.clone();
            let (partition, after) = (self.partition, self.next_after);
            let through = (after + VERIFY_BATCH).min(self.through);
            self.pending.push_back(tokio::spawn(async move {
                reader.read_range(partition, after, through).await
            }));
            self.next_after = through;
        }
    }

    /// The next batch (possibly empty where the log has a gap), or `None`
    /// past `through`.
    pub async fn next(&mut self) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        let Some(next) = self.pending.pop_front() else {
            return Ok(None);
        };
        let batch = next
            .await
            .map_err(|e| StoreError::Corrupt(e.to_string()))??;
        self.refill();
        Ok(Some(batch))
    }
}

impl Drop for LogReader {
    /// Reads still under way when the caller stops early are not needed.
    fn drop(&mut self) {
        for read in &self.pending {
            read.abort();
        }
    }
}
