//! The appender task: takes commands from the queue in batches and hands
//! each to the commit path.

use super::config::{AppenderConfig, LEADER_HOLD_MAX, LEADER_IDLE_HOLD};
use super::decide::{CachedStream, DecidedBatch, Working};
use super::notifier::CommitNotifier;
use super::snapshots::SnapshotWriter;
use super::stats::AppenderStats;
use super::submit::{AppendError, Job, Reply, Submission};
use super::unreadable::UnreadableStreams;
use crate::clock::Clock;
use crate::keys::SigningKey;
use crate::state_cache::StateCache;
use crate::store::{BatchTx, RecordedCommands, SnapshotWrite, Store, StreamWrite};
use seatledger_schema::OrgId;
use seatledger_schema::{ChainHash, Timestamp};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

pub(super) struct Worker {
    pub(super) store: Store,
    pub(super) signer: Arc<SigningKey>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) notifier: CommitNotifier,
    pub(super) stats: Arc<AppenderStats>,
    pub(super) cache: StateCache<CachedStream>,
    pub(super) unreadable: UnreadableStreams,
    pub(super) last_checkpoint_at: Instant,
    /// Events were committed since the last checkpoint this worker wrote.
    pub(super) uncheckpointed: bool,
    /// The partition lock held across batches (PostgreSQL), if it is.
    pub(super) leader: Option<Leader>,
    /// Writes large snapshots after their batch (PostgreSQL).
    pub(super) snapshot_writer: Option<SnapshotWriter>,
    pub(super) config: AppenderConfig,
}

/// What the appender knows while it leads the partition: nobody else has
/// written since it took the lock, so the head and the versions of the
/// streams it wrote (or checked) under this lock are the stored ones.
pub(super) struct Leader {
    pub(super) tx: BatchTx<'static>,
    pub(super) since: Instant,
    /// The partition head, once read under this lock.
    pub(super) head: Option<(i64, ChainHash)>,
    /// Streams whose cached state is current as of this lock.
    pub(super) known: std::collections::HashSet<String>,
}

impl Worker {
    pub(super) async fn run(
        mut self,
        mut receiver: mpsc::Receiver<Job>,
        warmed: watch::Sender<bool>,
    ) {
        self.warm_up().await;
        let _ = warmed.send(true);
        let mut next: Option<Next> = None;
        loop {
            let batch = match next.take() {
                Some(next) => next,
                None => {
                    let Some(first) = self.wait_for_job(&mut receiver).await else {
                        break;
                    };
                    self.gather(first, &mut receiver, true).await
                }
            };
            next = self.process(batch, &mut receiver).await;
            if next.is_none() && receiver.is_empty() {
                next = self.next_while_leading(&mut receiver).await;
            }
            let held_long = self
                .leader
                .as_ref()
                .is_some_and(|leader| leader.since.elapsed() >= LEADER_HOLD_MAX);
            // A batch decided on top of this lead is written under it; the
            // lead lets go at the next batch that was not.
            let release = match &next {
                None => receiver.is_empty() || held_long,
                Some(next) => held_long && next.speculated.is_none(),
            };
            if release {
                self.release_lead().await;
            }
        }
        self.release_lead().await;
        if self.uncheckpointed {
            self.checkpoint_idle().await;
        }
        if let Some(writer) = self.snapshot_writer.take() {
            writer.finish().await;
        }
    }
}

impl Worker {
    /// Waits up to [`LEADER_IDLE_HOLD`] (and no later than
    /// [`LEADER_HOLD_MAX`] into the lead) for the next batch while still
    /// leading, so that it is written in one round trip: letting go and
    /// leading again costs three more (unlock; lock; the head and the
    /// versions read again). `None` when nothing came, or when not leading.
    async fn next_while_leading(&mut self, receiver: &mut mpsc::Receiver<Job>) -> Option<Next> {
        let since = self.leader.as_ref()?.since;
        let deadline = (Instant::now() + LEADER_IDLE_HOLD).min(since + LEADER_HOLD_MAX);
        match tokio::time::timeout_at(deadline, receiver.recv()).await {
            Ok(Some(job)) => Some(self.gather(job, receiver, true).await),
            Ok(None) | Err(_) => None,
        }
    }
}

impl Worker {
    /// The next job, signing the head meanwhile if it is due; `None` once
    /// every handle is gone and the queue is drained.
    pub(super) async fn wait_for_job(&mut self, receiver: &mut mpsc::Receiver<Job>) -> Option<Job> {
        loop {
            if !self.uncheckpointed {
                return receiver.recv().await;
            }
            let deadline = self.last_checkpoint_at + self.config.checkpoint_interval;
            tokio::select! {
                job = receiver.recv() => return job,
                _ = tokio::time::sleep_until(deadline) => self.checkpoint_idle().await,
            }
        }
    }
}

impl Worker {
    /// A batch: `first` and what is queued behind it, up to `batch_max`,
    /// waiting up to `linger` for more once the queue is dry if `linger`
    /// (not while a batch is being written: its callers would wait).
    pub(super) async fn gather(
        &self,
        first: Job,
        receiver: &mut mpsc::Receiver<Job>,
        linger: bool,
    ) -> Next {
        let mut batch = Vec::with_capacity(self.config.batch_max.min(64));
        batch.push(first);
        while batch.len() < self.config.batch_max {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if linger && !self.config.linger.is_zero() {
            let deadline = Instant::now() + self.config.linger;
            while batch.len() < self.config.batch_max {
                match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(Some(job)) => batch.push(job),
                    _ => break,
                }
            }
        }
        let (submissions, replies) = batch
            .into_iter()
            .map(|job| (job.submission, job.reply))
            .unzip();
        Next {
            submissions,
            replies,
            speculated: None,
        }
    }
}

impl Worker {
    /// Commits `batch` and answers its callers; returns the batch gathered
    /// (and perhaps decided) while it was written.
    pub(super) async fn process(
        &mut self,
        batch: Next,
        receiver: &mut mpsc::Receiver<Job>,
    ) -> Option<Next> {
        let Next {
            submissions,
            replies,
            speculated,
        } = batch;
        let started = std::time::Instant::now();
        let (result, next) = self
            .commit_pipelined(&submissions, speculated, receiver)
            .await;
        self.count_batch(&submissions, &result, started);
        match result {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    // A caller that gave up still had its command committed.
                    let _ = reply.send(result);
                }
            }
            // The database refused something in the batch (not an outage):
            // retry each command alone, so one poisonous command fails by
            // itself instead of failing its neighbours every time.
            Err(error) if !error.is_unavailable() && submissions.len() > 1 => {
                tracing::warn!(error = %error, commands = submissions.len(), "appender batch failed; retrying its commands one by one");
                for (submission, reply) in submissions.into_iter().zip(replies) {
                    let result = match self.commit_timed(std::slice::from_ref(&submission)).await {
                        Ok(mut results) => results.pop().unwrap_or(Err(AppendError::ShutDown)),
                        Err(error) => {
                            tracing::warn!(error = %error, command = submission.command.kind(), "command failed alone; nothing of it was written");
                            Err(AppendError::Store(Arc::new(error)))
                        }
                    };
                    let _ = reply.send(result);
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, commands = submissions.len(), "appender batch failed; nothing of it was written");
                let error = AppendError::Store(Arc::new(error));
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
        next
    }
}

/// Commands taken from the queue for the next batch, perhaps already
/// decided (on top of the batch written while they were gathered).
pub(super) struct Next {
    pub(super) submissions: Vec<Submission>,
    pub(super) replies: Vec<oneshot::Sender<Reply>>,
    pub(super) speculated: Option<Prepared>,
}

/// A led batch decided and encoded, not yet written.
pub(super) struct Prepared {
    /// The partition head before the batch.
    pub(super) head: (i64, ChainHash),
    pub(super) now: Timestamp,
    pub(super) batch: DecidedBatch,
    pub(super) replies: Vec<Reply>,
    pub(super) stream_writes: Vec<StreamWrite>,
    /// Snapshots for the snapshot writer once the batch committed.
    pub(super) deferred_snapshots: Vec<SnapshotWrite>,
    pub(super) working: Working,
    /// The idempotent results known after the batch (the next batch
    /// decides against them).
    pub(super) recorded: RecordedCommands,
    /// Idempotency keys of the batch that were looked up nowhere yet (it
    /// was decided before the batch in front of it was durable).
    pub(super) unchecked_keys: Vec<(OrgId, String)>,
}
