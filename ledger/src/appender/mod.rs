//! The group-commit appender: the only writer of the log (docs/design.md §3).
//!
//! Callers `submit` a command and await its result. One task per partition
//! drains up to `batch_max` queued commands, opens one transaction, takes
//! the partition lock (`pg_advisory_xact_lock`; an in-process mutex and
//! `BEGIN IMMEDIATE` on SQLite), checks its cached stream states against
//! `streams.version`, decides every command in order against the evolving
//! state, assigns consecutive positions and chain hashes, writes all events
//! in one statement, updates `streams` (and snapshots), records idempotent
//! commands, maybe signs a checkpoint, commits, and only then answers.
//!
//! On PostgreSQL the task *leads* the partition while commands keep
//! coming: it holds the partition lock for its session
//! (`pg_advisory_lock` on a connection of its own) across batches, knows
//! the head and the versions of the streams it wrote, and writes each
//! batch as one autocommit statement: one round trip instead of four
//! (BEGIN + lock, head and versions, write, COMMIT). It lets go when its
//! queue has stayed dry for [`LEADER_IDLE_HOLD`] or after
//! [`LEADER_HOLD_MAX`], so another replica's batches wait at most that
//! long, and on any error (closing the
//! connection, which PostgreSQL answers by releasing the lock). While
//! another process holds the lock nothing it writes is trusted from
//! memory: a new lead reads the head and the versions of every stream it
//! touches again, once.
//!
//! So: no optimistic-concurrency retries, no races (decide sees the true
//! state, also across replicas), gap-free positions in commit order, and
//! throughput set by batch size rather than commit latency. A rejection is
//! a value in its command's result; it never fails its neighbours. A store
//! failure fails the whole batch and nothing of it is written.
//!
//! The modules, each depending only on those listed before it:
//! - `config`, `submit`, `stats`, `notifier`, `unreadable`: what callers
//!   pass and get, the counters, the commit notifications, and the streams
//!   that could not be read;
//! - `decide`: the pure part, deciding a batch against cached states and
//!   encoding its events (positions, chain hashes, stream writes);
//! - `snapshots`: the task that writes large snapshots after their batch;
//! - `worker`: the task itself, taking commands from the queue in batches;
//! - `load`: loading stream states (and the warm-up at start);
//! - `leadership`: leading the partition across batches (PostgreSQL);
//! - `write`: committing a batch, led or in one transaction;
//! - `checkpoints`: signing checkpoints when due.

mod checkpoints;
mod config;
mod decide;
mod leadership;
mod load;
mod notifier;
mod snapshots;
mod stats;
mod submit;
mod unreadable;
mod worker;
mod write;

pub use config::{
    AppenderConfig, DEFER_SNAPSHOT_BYTES, LEADER_HOLD_MAX, LEADER_IDLE_HOLD, LOCK_TIMEOUT,
    RETIRE_CONNECTION_AFTER_SNAPSHOT_BYTES, WARM_FROM_ENTRIES,
};
pub use notifier::CommitNotifier;
pub use stats::AppenderStats;
pub use submit::{request_hash, AppendError, CommandResult, Submission};

use crate::clock::Clock;
use crate::keys::SigningKey;
use crate::state_cache::StateCache;
use crate::store::Store;
use seatledger_schema::limits;
use snapshots::SnapshotWriter;
use std::sync::Arc;
use submit::Job;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use unreadable::UnreadableStreams;
use worker::Worker;

/// The handle callers hold. Clones share the queue; when the last clone is
/// dropped the task drains what is queued, commits it and stops.
#[derive(Clone)]
pub struct Appender {
    sender: mpsc::Sender<Job>,
    notifier: CommitNotifier,
    stats: Arc<AppenderStats>,
    warmed: watch::Receiver<bool>,
}

impl Appender {
    /// Starts the appender task of `config.partition`.
    pub fn start(
        store: Store,
        signer: Arc<SigningKey>,
        clock: Arc<dyn Clock>,
        notifier: CommitNotifier,
        config: AppenderConfig,
    ) -> (Appender, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let stats = Arc::new(AppenderStats::default());
        let worker = Worker {
            store: store.for_appender(config.lock_timeout),
            signer,
            clock,
            notifier: notifier.clone(),
            stats: stats.clone(),
            cache: StateCache::new(
                limits::APPENDER_CACHED_STREAMS_MAX,
                limits::APPENDER_CACHED_ENTRIES_MAX,
                |stream| 1 + stream.state.size(),
            ),
            unreadable: UnreadableStreams::default(),
            last_checkpoint_at: Instant::now(),
            uncheckpointed: false,
            leader: None,
            snapshot_writer: match &store {
                Store::Postgres(_) => Some(SnapshotWriter::start(
                    store.for_appender(config.lock_timeout),
                    stats.clone(),
                )),
                Store::Sqlite(..) => None,
            },
            config,
        };
        let (warmed_sender, warmed) = watch::channel(false);
        let handle = tokio::spawn(worker.run(receiver, warmed_sender));
        (
            Appender {
                sender,
                notifier,
                stats,
                warmed,
            },
            handle,
        )
    }

    /// Resolves once the appender has warmed its cache (see
    /// [`AppenderConfig::warm_from_entries`]) and takes commands without
    /// a first load of a large stream under the partition lock. Commands
    /// submitted before wait for it.
    pub async fn warmed(&self) {
        let mut warmed = self.warmed.clone();
        // An error: the appender stopped; nothing to wait for.
        let _ = warmed.wait_for(|warmed| *warmed).await;
    }

    /// Decides and durably records `submission`; resolves after the commit.
    pub async fn submit(&self, submission: Submission) -> Result<CommandResult, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Job { submission, reply })
            .await
            .map_err(|_| AppendError::ShutDown)?;
        answer.await.map_err(|_| AppendError::ShutDown)?
    }

    pub fn notifier(&self) -> &CommitNotifier {
        &self.notifier
    }

    pub fn stats(&self) -> &Arc<AppenderStats> {
        &self.stats
    }
}
