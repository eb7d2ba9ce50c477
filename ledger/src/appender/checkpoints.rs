//! Signing a checkpoint of the partition head: with a batch when one is due, or on its own once the appender is idle.

use super::decide::DecidedBatch;
use super::worker::Worker;
use crate::store::StoreError;
use seatledger_schema::{Checkpoint, Timestamp};
use std::sync::atomic::Ordering;
use tokio::time::Instant;

impl Worker {
    /// Phase 3a: a signed checkpoint, written with the batch, when the
    /// batch crosses a multiple of `checkpoint_every_events` or the last
    /// one is older than `checkpoint_interval`.
    pub(super) fn checkpoint_due(
        &self,
        head_position: i64,
        batch: &DecidedBatch,
        now: Timestamp,
    ) -> Option<Checkpoint> {
        if batch.position <= head_position {
            return None;
        }
        let every = self.config.checkpoint_every_events.max(1);
        let crossed = head_position / every != batch.position / every;
        let due = self.last_checkpoint_at.elapsed() >= self.config.checkpoint_interval;
        (crossed || due).then(|| {
            self.signer
                .sign_checkpoint(self.config.partition, batch.position, batch.prev_hash, now)
        })
    }
}

impl Worker {
    /// Signs the head if events were committed since the last checkpoint
    /// (the "or 10 s" of docs/design.md §3 when traffic stops).
    pub(super) async fn checkpoint_idle(&mut self) {
        // Its own transaction takes the partition lock: the lead must not
        // hold it (the appender has one connection).
        self.release_lead().await;
        let partition = self.config.partition;
        let result: Result<bool, StoreError> = async {
            let mut tx = self.store.begin_batch(partition).await?;
            let (position, hash) = tx.head(partition).await?;
            let last = tx.last_checkpoint_position(partition).await?;
            let write = position > last;
            if write {
                tx.insert_checkpoint(&self.signer.sign_checkpoint(
                    partition,
                    position,
                    hash,
                    self.clock.now(),
                ))
                .await?;
            }
            tx.commit().await?;
            Ok(write)
        }
        .await;
        match result {
            Ok(written) => {
                if written {
                    self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                }
                self.uncheckpointed = false;
            }
            Err(error) => tracing::warn!(error = %error, "writing a checkpoint failed; will retry"),
        }
        self.last_checkpoint_at = Instant::now();
    }
}
