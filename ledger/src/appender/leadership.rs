//! Leading the partition across batches (PostgreSQL): the session lock held
//! while commands keep coming, the head and stream versions known from
//! memory, and the next batch decided while the current one is written.

use super::config::{LEADER_HOLD_MAX, RETIRE_CONNECTION_AFTER_SNAPSHOT_BYTES};
use super::decide::{
    decide_batch, distinct, keys_of, stream_ids_of, stream_writes, DecidedBatch, Working,
};
use super::submit::{Job, Reply, Submission};
use super::worker::{Leader, Next, Prepared, Worker};
use crate::store::{BatchTx, RecordedCommands, Released, StoreError, StreamWrite};
use seatledger_schema::{ChainHash, Checkpoint};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use tokio::time::Instant;

impl Worker {
    /// Lets go of the partition lock, if held.
    pub(super) async fn release_lead(&mut self) {
        if let Some(leader) = self.leader.take() {
            match leader.tx.release(self.config.partition).await {
                Ok(Released::Pooled) => {}
                Ok(Released::Retired) => {
                    self.stats
                        .connections_retired
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::warn!(error = %error, "releasing the partition lock failed; its connection was closed instead");
                }
            }
        }
    }
}

impl Worker {
    /// Takes the lead of the partition if this store can be led and it is
    /// not held: `false` on SQLite.
    pub(super) async fn ensure_lead(&mut self) -> Result<bool, StoreError> {
        if self.leader.is_none() {
            let Some(tx) = self.store.lead(self.config.partition).await? else {
                return Ok(false);
            };
            self.stats.leads.fetch_add(1, Ordering::Relaxed);
            self.leader = Some(Leader {
                tx,
                since: Instant::now(),
                head: None,
                known: Default::default(),
            });
        }
        Ok(true)
    }
}

impl Worker {
    /// The pipelined group commit (PostgreSQL): batch N is written while
    /// the commands queued behind it are gathered into batch N+1 and
    /// decided on top of N's states, head and idempotent results, so
    /// deciding and encoding N+1 overlap PostgreSQL's work on N. N+1 is
    /// written only after N succeeded (commit order, gap-free positions,
    /// nobody answered before their batch is durable); if N fails, what was
    /// decided for N+1 is dropped and N+1 is decided again from the store.
    /// Returns N's result and N+1.
    ///
    /// Long because the overlap is one `select!` over the write of N and
    /// the gathering of N+1, whose branches share the batch's locals;
    /// split apart, the hand-off of N+1 would be spread over functions.
    pub(super) async fn commit_pipelined(
        &mut self,
        submissions: &[Submission],
        speculated: Option<Prepared>,
        receiver: &mut mpsc::Receiver<Job>,
    ) -> (Result<Vec<Reply>, StoreError>, Option<Next>) {
        match self.ensure_lead().await {
            Ok(true) => {}
            Ok(false) => return (self.commit_in_transaction(submissions).await, None),
            Err(error) => return (Err(error), None),
        }
        let Some(mut leader) = self.leader.take() else {
            return (self.commit_in_transaction(submissions).await, None);
        };
        let had_speculation = speculated.is_some();
        let prepared = match speculated {
            Some(speculated) => self.confirm(&mut leader, speculated).await,
            None => Ok(None),
        };
        let prepared = match prepared {
            Ok(Some(prepared)) => Ok(prepared),
            Ok(None) => {
                if had_speculation {
                    self.stats
                        .batches_decided_again
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.prepare_leading(&mut leader, submissions).await
            }
            Err(error) => Err(error),
        };
        let mut prepared = match prepared {
            Ok(prepared) => prepared,
            Err(error) => return (Err(error), None),
        };
        let checkpoint = self.checkpoint_due(prepared.head.0, &prepared.batch, prepared.now);
        // N+1 is decided only while the lead is young: letting go of the
        // lock with a decided batch in hand would waste it.
        let may_speculate = leader.since.elapsed() < LEADER_HOLD_MAX;
        let mut next = None;
        let mut closed = false;
        let written = {
            let Leader { tx, known, .. } = &mut leader;
            let write = write_led(
                tx,
                prepared.head.0,
                &prepared.batch,
                &prepared.stream_writes,
                checkpoint.as_ref(),
            );
            let after = (prepared.batch.position, prepared.batch.prev_hash);
            tokio::pin!(write);
            loop {
                tokio::select! {
                    biased;
                    written = &mut write => break written,
                    job = receiver.recv(), if next.is_none() && !closed => match job {
                        Some(job) => {
                            let mut gathered = self.gather(job, receiver, false).await;
                            if may_speculate {
                                gathered.speculated = self.speculate(
                                    known,
                                    (&mut prepared.working, &mut prepared.recorded),
                                    after,
                                    &gathered.submissions,
                                );
                                if gathered.speculated.is_some() {
                                    self.stats.batches_decided_ahead.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            next = Some(gathered);
                        }
                        None => closed = true,
                    },
                }
            }
        };
        match written {
            Ok(()) => {
                let replies = self.finish_led(leader, &mut prepared, checkpoint.is_some());
                (Ok(replies), next)
            }
            Err(error) => {
                // N+1 was decided on top of N: decide it again.
                if let Some(next) = &mut next {
                    if next.speculated.take().is_some() {
                        self.stats
                            .batches_decided_again
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                (Err(error), next)
            }
        }
    }
}

impl Worker {
    /// Phases 1 and 2 while leading: what the lead does not know yet
    /// (head, versions of streams not checked under this lock), the states,
    /// the idempotent results, then every command decided.
    pub(super) async fn prepare_leading(
        &mut self,
        leader: &mut Leader,
        submissions: &[Submission],
    ) -> Result<Prepared, StoreError> {
        let partition = self.config.partition;
        // Read after the lock is held (see `commit_in_transaction`).
        let now = self.clock.now();
        let stream_ids = stream_ids_of(submissions);
        let mut versions = HashMap::new();
        let mut unknown = Vec::new();
        for stream_id in &stream_ids {
            match self.cache.get(stream_id) {
                Some(cached) if leader.known.contains(stream_id) => {
                    versions.insert(stream_id.clone(), cached.version);
                }
                _ => unknown.push(stream_id.clone()),
            }
        }
        let head = match leader.head {
            Some(head) if unknown.is_empty() => head,
            known => {
                let (head, stored) = leader.tx.head_and_versions(partition, &unknown).await?;
                if known.is_some_and(|known| known != head) {
                    return Err(StoreError::Corrupt(format!(
                        "partition {partition} has a head this appender did not write while it held the partition lock"
                    )));
                }
                for stream_id in unknown {
                    let version = stored.get(&stream_id).copied().unwrap_or(0);
                    versions.insert(stream_id, version);
                }
                head
            }
        };
        let mut working = self
            .load_states(&mut leader.tx, &stream_ids, &versions)
            .await?;
        let keys = keys_of(submissions);
        let mut recorded = leader.tx.recorded_commands(&keys).await?;
        let (batch, replies) = decide_batch(
            partition,
            head,
            submissions,
            &mut working,
            &mut recorded,
            now,
        )?;
        let (stream_writes, deferred_snapshots) =
            stream_writes(partition, &mut working, &versions, self.defer_from())?;
        Ok(Prepared {
            head,
            now,
            batch,
            replies,
            stream_writes,
            deferred_snapshots,
            working,
            recorded,
            unchecked_keys: Vec::new(),
        })
    }
}

impl Worker {
    /// Decides `submissions` after `head`, on top of the states and
    /// idempotent results of the batch being written, if everything they
    /// need is in memory: every stream in that batch's states or in the
    /// cache and known under this lock, none unreadable. Takes the states
    /// it uses out of that batch's and the cache. Pure but for the clock.
    pub(super) fn speculate(
        &mut self,
        known: &std::collections::HashSet<String>,
        (on_working, on_recorded): (&mut Working, &mut RecordedCommands),
        head: (i64, ChainHash),
        submissions: &[Submission],
    ) -> Option<Prepared> {
        let partition = self.config.partition;
        let stream_ids = stream_ids_of(submissions);
        let in_memory = |stream_id: &String| {
            on_working.streams.contains_key(stream_id)
                || (known.contains(stream_id) && self.cache.get(stream_id).is_some())
        };
        if !stream_ids
            .iter()
            .all(|id| in_memory(id) && !self.unreadable.is_remembered(id))
        {
            return None;
        }
        let mut working = Working::default();
        let mut versions = HashMap::new();
        for stream_id in stream_ids {
            let stream = on_working
                .streams
                .remove(&stream_id)
                .or_else(|| self.cache.take(&stream_id))?;
            versions.insert(stream_id.clone(), stream.version);
            working.streams.insert(stream_id, stream);
        }
        let mut recorded = std::mem::take(on_recorded);
        let unchecked_keys = distinct(submissions.iter().filter_map(|s| {
            let key = (s.org_id, s.command_id.clone()?);
            (!recorded.contains_key(&key)).then_some(key)
        }));
        let now = self.clock.now();
        let (batch, replies) = decide_batch(
            partition,
            head,
            submissions,
            &mut working,
            &mut recorded,
            now,
        )
        .ok()?;
        let (stream_writes, deferred_snapshots) =
            stream_writes(partition, &mut working, &versions, self.defer_from()).ok()?;
        Some(Prepared {
            head,
            now,
            batch,
            replies,
            stream_writes,
            deferred_snapshots,
            working,
            recorded,
            unchecked_keys,
        })
    }
}

impl Worker {
    /// A batch decided while the one before it was written, checked now
    /// that that one is durable: it stands unless one of its idempotency
    /// keys, unknown then, turns out to be recorded in the store.
    pub(super) async fn confirm(
        &mut self,
        leader: &mut Leader,
        speculated: Prepared,
    ) -> Result<Option<Prepared>, StoreError> {
        if leader.head != Some(speculated.head) {
            return Ok(None);
        }
        if speculated.unchecked_keys.is_empty() {
            return Ok(Some(speculated));
        }
        let found = leader
            .tx
            .recorded_commands(&speculated.unchecked_keys)
            .await?;
        Ok(found.is_empty().then_some(speculated))
    }
}

impl Worker {
    /// Phase 4 once a led batch is written: the lead learns the new head
    /// and the streams, the cache and followers learn of the commit.
    pub(super) fn finish_led(
        &mut self,
        mut leader: Leader,
        prepared: &mut Prepared,
        checkpointed: bool,
    ) -> Vec<Reply> {
        leader.head = Some((prepared.batch.position, prepared.batch.prev_hash));
        leader
            .known
            .extend(prepared.working.streams.keys().cloned());
        let deferred = std::mem::take(&mut prepared.deferred_snapshots);
        if self.count_snapshots(&prepared.stream_writes, deferred)
            >= RETIRE_CONNECTION_AFTER_SNAPSHOT_BYTES
        {
            leader.tx.retire_after_release();
        }
        self.leader = Some(leader);
        let working = std::mem::take(&mut prepared.working);
        self.after_commit(prepared.head.0, &mut prepared.batch, checkpointed, working);
        std::mem::take(&mut prepared.replies)
    }
}

/// Phase 3 while leading: the batch in one autocommit statement, or, with
/// a checkpoint, both in one explicit transaction.
pub(super) async fn write_led(
    tx: &mut BatchTx<'static>,
    head_position: i64,
    batch: &DecidedBatch,
    stream_writes: &[StreamWrite],
    checkpoint: Option<&Checkpoint>,
) -> Result<(), StoreError> {
    let notify = (batch.position > head_position).then_some((batch.partition, batch.position));
    if let Some(checkpoint) = checkpoint {
        tx.begin_explicit().await?;
        tx.insert_checkpoint(checkpoint).await?;
    }
    tx.write_batch(&batch.events, stream_writes, &batch.command_writes, notify)
        .await?;
    if checkpoint.is_some() {
        tx.commit_explicit().await?;
    }
    Ok(())
}
