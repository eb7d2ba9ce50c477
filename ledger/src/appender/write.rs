//! Committing a batch: led (one statement) or in one transaction, then the
//! cache, notifications and replies after it.

use super::decide::{decide_batch, keys_of, stream_ids_of, stream_writes, DecidedBatch, Working};
use super::leadership::write_led;
use super::submit::{AppendError, Reply, Submission};
use super::worker::Worker;
use crate::store::{SnapshotWrite, StoreError, StreamWrite};
use std::sync::atomic::Ordering;
use tokio::time::Instant;

impl Worker {
    /// `commit` with the batch counters.
    pub(super) async fn commit_timed(
        &mut self,
        submissions: &[Submission],
    ) -> Result<Vec<Reply>, StoreError> {
        let started = std::time::Instant::now();
        let result = self.commit(submissions).await;
        self.count_batch(submissions, &result, started);
        result
    }
}

impl Worker {
    pub(super) fn count_batch(
        &self,
        submissions: &[Submission],
        result: &Result<Vec<Reply>, StoreError>,
        started: std::time::Instant,
    ) {
        match result {
            Ok(replies) => {
                let unreadable = replies
                    .iter()
                    .filter(|reply| matches!(reply, Err(AppendError::StreamUnreadable { .. })))
                    .count();
                self.stats
                    .commands_on_unreadable_streams
                    .fetch_add(unreadable as u64, Ordering::Relaxed);
                self.stats
                    .unreadable_streams
                    .store(self.unreadable.len() as u64, Ordering::Relaxed);
                let elapsed = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .commands
                    .fetch_add(submissions.len() as u64, Ordering::Relaxed);
                self.stats
                    .commit_micros_total
                    .fetch_add(elapsed, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Worker {
    /// One batch: led (PostgreSQL, see the module docs) or in a
    /// transaction of its own (SQLite).
    pub(super) async fn commit(
        &mut self,
        submissions: &[Submission],
    ) -> Result<Vec<Reply>, StoreError> {
        if !self.ensure_lead().await? {
            return self.commit_in_transaction(submissions).await;
        }
        let Some(mut leader) = self.leader.take() else {
            return self.commit_in_transaction(submissions).await;
        };
        // On an error `leader` is dropped: its connection closes, and with
        // it the lock; the next batch takes the lock anew.
        let mut prepared = self.prepare_leading(&mut leader, submissions).await?;
        let checkpoint = self.checkpoint_due(prepared.head.0, &prepared.batch, prepared.now);
        write_led(
            &mut leader.tx,
            prepared.head.0,
            &prepared.batch,
            &prepared.stream_writes,
            checkpoint.as_ref(),
        )
        .await?;
        Ok(self.finish_led(leader, &mut prepared, checkpoint.is_some()))
    }
}

impl Worker {
    /// One batch in one transaction, in four phases: load the states the
    /// batch needs, decide every command (assigning positions and hashes),
    /// write, commit. States taken out of the cache are put back only after
    /// the commit, so a failed batch leaves no trace in memory either.
    pub(super) async fn commit_in_transaction(
        &mut self,
        submissions: &[Submission],
    ) -> Result<Vec<Reply>, StoreError> {
        let partition = self.config.partition;
        let store = self.store.clone();
        let mut tx = store.begin_batch(partition).await?;
        // Read the clock only once the partition lock is held: a batch may
        // wait up to `lock_timeout` behind another replica's, and deciding
        // with the time from before that wait would make `recorded_at` go
        // backwards in position order.
        let now = self.clock.now();
        let stream_ids = stream_ids_of(submissions);
        let (head, versions) = tx.head_and_versions(partition, &stream_ids).await?;
        let mut working = self.load_states(&mut tx, &stream_ids, &versions).await?;
        let keys = keys_of(submissions);
        let mut recorded = tx.recorded_commands(&keys).await?;

        let (mut batch, replies) = decide_batch(
            partition,
            head,
            submissions,
            &mut working,
            &mut recorded,
            now,
        )?;
        let (stream_writes, deferred) =
            stream_writes(partition, &mut working, &versions, self.defer_from())?;

        let checkpoint = self.checkpoint_due(head.0, &batch, now);
        if let Some(checkpoint) = &checkpoint {
            tx.insert_checkpoint(checkpoint).await?;
        }
        let notify = (batch.position > head.0).then_some((partition, batch.position));
        tx.write_batch(&batch.events, &stream_writes, &batch.command_writes, notify)
            .await?;
        tx.commit().await?;

        self.count_snapshots(&stream_writes, deferred);
        self.after_commit(head.0, &mut batch, checkpoint.is_some(), working);
        Ok(replies)
    }
}

impl Worker {
    /// Phase 4: counters, the cache and followers learn of the commit (the
    /// batch's events move to the followers' recent events).
    pub(super) fn after_commit(
        &mut self,
        head_position: i64,
        batch: &mut DecidedBatch,
        checkpointed: bool,
        working: Working,
    ) {
        self.stats
            .events
            .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
        if checkpointed {
            self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
            self.last_checkpoint_at = Instant::now();
            self.uncheckpointed = false;
        } else if batch.position > head_position {
            self.uncheckpointed = true;
        }
        self.cache.put_back(working.streams);
        self.record_cache_usage();
        self.notifier.keep(std::mem::take(&mut batch.events));
        self.notifier.advance(batch.position);
    }
}

impl Worker {
    /// Counts the snapshots of a committed batch and hands the deferred
    /// ones to the snapshot writer; returns the bytes written in the batch.
    pub(super) fn count_snapshots(
        &self,
        stream_writes: &[StreamWrite],
        deferred: Vec<SnapshotWrite>,
    ) -> usize {
        let in_batch: Vec<usize> = stream_writes
            .iter()
            .filter_map(|w| Some(w.snapshot.as_ref()?.1.len()))
            .collect();
        let deferred_sizes = deferred.iter().map(|s| s.state.len());
        for bytes in in_batch.iter().copied().chain(deferred_sizes) {
            self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
            self.stats
                .snapshot_bytes
                .fetch_add(bytes as u64, Ordering::Relaxed);
        }
        if let Some(writer) = &self.snapshot_writer {
            writer.hand_over(deferred, &self.stats);
        }
        in_batch.iter().sum()
    }
}

impl Worker {
    /// The size from which a snapshot goes to the snapshot writer.
    pub(super) fn defer_from(&self) -> usize {
        match self.snapshot_writer {
            Some(_) => self.config.defer_snapshot_bytes,
            None => usize::MAX,
        }
    }
}
