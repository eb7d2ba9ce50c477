//! The follower runner (docs/design.md §4): one loop any follower plugs into. It
//! reads the log after the follower's position in bounded position ranges
//! (`Store::read_range`), hands each range to the follower, and wakes on
//! the commit notifier (this process's commits, and other replicas' through
//! `LISTEN/NOTIFY`) and on a poll interval, so a missed notification only
//! delays it. It reports how far behind the head it is.
//!
//! The runner owns no checkpoint: each follower keeps its position with its
//! output (the same transaction, the same Redis call, or, for an in-memory
//! follower, the same lock), so the two can never disagree. It never
//! assumes one sequence across partitions: a runner follows one partition.

use seatledger_ledger::{recent, CommitNotifier, Store, StoreError};
use seatledger_schema::{Metadata, RecordedEvent};
use serde_json::value::RawValue;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How a follower reads the log: parsed events ([`RecordedEvent`], what a
/// follower that decodes them needs), or with payload and metadata as the
/// stored text ([`seatledger_schema::RawRecordedEvent`], for one that
/// passes envelopes on).
pub trait LogEvent: Sized + Send + 'static {
    fn position(&self) -> i64;

    /// The events of `partition` with `after < position <= through`.
    fn read(
        store: Store,
        partition: i16,
        after: i64,
        through: i64,
    ) -> impl Future<Output = Result<Vec<Self>, StoreError>> + Send + 'static;

    /// The event from one this process committed (kept by the commit
    /// notifier): the same value [`LogEvent::read`] gives for it.
    fn from_committed(event: &RecordedEvent) -> Result<Self, StoreError>;
}

/// A payload or metadata as a follower reads it, from the committed value.
pub trait FromCommitted<S>: Sized {
    fn from_committed(source: &S) -> Result<Self, StoreError>;
}

impl FromCommitted<serde_json::Value> for serde_json::Value {
    fn from_committed(source: &serde_json::Value) -> Result<Self, StoreError> {
        Ok(source.clone())
    }
}

impl FromCommitted<Metadata> for Metadata {
    fn from_committed(source: &Metadata) -> Result<Self, StoreError> {
        Ok(source.clone())
    }
}

/// As JSON text: what the store gives a raw read is its own rendering of
/// the same value (PostgreSQL's `jsonb` orders members its way), so
/// readers of raw events rely on the value, never the bytes.
impl<S: serde::Serialize> FromCommitted<S> for Box<RawValue> {
    fn from_committed(source: &S) -> Result<Self, StoreError> {
        serde_json::value::to_raw_value(source).map_err(|error| {
            StoreError::Corrupt(format!("a committed event cannot be encoded: {error}"))
        })
    }
}

impl<P, M> LogEvent for RecordedEvent<P, M>
where
    P: serde::de::DeserializeOwned + FromCommitted<serde_json::Value> + Send + 'static,
    M: serde::de::DeserializeOwned + FromCommitted<Metadata> + Send + 'static,
{
    fn position(&self) -> i64 {
        self.position
    }

    async fn read(
        store: Store,
        partition: i16,
        after: i64,
        through: i64,
    ) -> Result<Vec<Self>, StoreError> {
        store.read_range_as(partition, after, through).await
    }

    fn from_committed(event: &RecordedEvent) -> Result<Self, StoreError> {
        Ok(RecordedEvent {
            partition: event.partition,
            position: event.position,
            event_id: event.event_id,
            stream_id: event.stream_id.clone(),
            stream_version: event.stream_version,
            org_id: event.org_id,
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            payload: P::from_committed(&event.payload)?,
            metadata: M::from_committed(&event.metadata)?,
            occurred_at: event.occurred_at,
            recorded_at: event.recorded_at,
            prev_hash: event.prev_hash,
            hash: event.hash,
        })
    }
}

/// A follower of one partition of the log.
pub trait Follower: Send {
    /// How it reads events.
    type Event: LogEvent;

    /// A stable name for logs and metrics.
    fn name(&self) -> &'static str;

    /// The last position applied (0 before any).
    fn position(&mut self) -> impl Future<Output = Result<i64, FollowerError>> + Send;

    /// Applies `events` (consecutive, after `position()`) and advances the
    /// position to the last of them, atomically with the follower's output.
    fn apply(
        &mut self,
        events: &[Self::Event],
    ) -> impl Future<Output = Result<(), FollowerError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum FollowerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The follower's own output store failed (Redis, a projection table).
    #[error("{0}")]
    Output(String),
    /// Another replica applied the range first: the follower reloaded its
    /// state and the runner starts again from its position.
    #[error("another replica applied these events first")]
    Superseded,
    /// Another replica is the one that follows (it holds the lock): wait.
    #[error("another replica is active")]
    Standby,
}

/// Positions a runner reads per range by default: small enough that a range
/// of decoded events stays a few MiB while catching up, large enough that
/// a range is one cheap query.
pub const RUNNER_BATCH_DEFAULT: i64 = 1_000;

#[derive(Clone, Debug)]
pub struct RunnerConfig {
    pub partition: i16,
    /// How often the runner looks for new events without a notification.
    pub poll_interval: Duration,
    /// Positions read per range.
    pub batch: i64,
    /// How long the runner waits after a failure before trying again.
    pub retry_after: Duration,
    /// The least time between two catch-ups, however often commits wake
    /// it: a follower that need not be current to the millisecond (billing)
    /// then applies fewer, larger ranges, one transaction each, instead of
    /// one small one per commit. Zero: every commit wakes it at once.
    pub coalesce: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            partition: 0,
            poll_interval: Duration::from_secs(1),
            batch: RUNNER_BATCH_DEFAULT,
            retry_after: Duration::from_secs(1),
            coalesce: Duration::ZERO,
        }
    }
}

/// What a running follower reports: its position and how many positions
/// it is behind the head it last saw. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct FollowerStatus {
    pub position: Arc<AtomicI64>,
    pub lag: Arc<AtomicI64>,
}

/// Runs `follower` until `shutdown` turns true.
pub async fn run<F: Follower>(
    store: Store,
    mut follower: F,
    notifier: CommitNotifier,
    config: RunnerConfig,
    status: FollowerStatus,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut commits = notifier.subscribe();
    let mut failing = false;
    // The head a commit announced; `None` (at start, after a poll interval
    // or a failure) asks the store, which also finds commits whose
    // announcement was missed.
    let mut announced = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let caught_up = catch_up(
            &store,
            &notifier,
            announced.take(),
            &mut follower,
            &config,
            &status,
        )
        .await;
        let Some(wait) = next_wait(caught_up, &mut failing, follower.name(), &config) else {
            continue;
        };
        if !config.coalesce.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(config.coalesce) => {}
                _ = shutdown.changed() => {}
            }
        }
        tokio::select! {
            changed = commits.changed() => {
                if changed.is_ok() && !failing {
                    announced = Some(*commits.borrow_and_update());
                }
            }
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// How long a follower waits after a round that ended with `caught_up`
/// (None: go again now), and whether it is failing (said once per spell).
fn next_wait(
    caught_up: Result<(), FollowerError>,
    failing: &mut bool,
    name: &str,
    config: &RunnerConfig,
) -> Option<Duration> {
    match caught_up {
        Ok(()) => {
            if *failing {
                tracing::info!(follower = name, "follower recovered");
                *failing = false;
            }
            Some(config.poll_interval)
        }
        Err(FollowerError::Superseded) => None,
        Err(FollowerError::Standby) => Some(config.retry_after),
        Err(error @ FollowerError::Store(StoreError::Pruned { .. })) => {
            // Retrying cannot help: the events it needs left the database.
            // It waits for an operator (and says so once).
            if !*failing {
                tracing::error!(
                    follower = name,
                    error = %error,
                    "follower needs pruned events; rebuild it from the archive files \
                     (seatledger-replay rebuild billing --archive DIR, or republish --archive DIR \
                     for a new JetStream stream)"
                );
                *failing = true;
            }
            Some(config.retry_after)
        }
        Err(error) => {
            if !*failing {
                tracing::warn!(follower = name, error = %error, "follower failed; retrying");
                *failing = true;
            }
            Some(config.retry_after)
        }
    }
}

/// Applies everything up to the current head, range by range. The next
/// range is read while the follower applies the current one, so reading
/// the log and writing the output overlap. A range this process committed
/// lately comes from the commit notifier's memory instead of the store,
/// and a commit's announcement is the head (no query).
async fn catch_up<F: Follower>(
    store: &Store,
    notifier: &CommitNotifier,
    announced: Option<i64>,
    follower: &mut F,
    config: &RunnerConfig,
    status: &FollowerStatus,
) -> Result<(), FollowerError> {
    // A committed position is never ahead of what the store shows.
    let head = match announced {
        Some(head) => head,
        None => store.head(config.partition).await?.0,
    };
    let mut position = follower.position().await?;
    status.position.store(position, Ordering::Relaxed);
    let read = |after: i64| {
        let through = head.min(after.saturating_add(config.batch.max(1)));
        match notifier.recent(config.partition, after, through) {
            Some(batches) => Reading::Committed(
                recent::in_range(&batches, after, through)
                    .map(F::Event::from_committed)
                    .collect(),
            ),
            None => Reading::Store(tokio::spawn(F::Event::read(
                store.clone(),
                config.partition,
                after,
                through,
            ))),
        }
    };
    let mut next = (position < head).then(|| read(position));
    while let Some(reading) = next.take() {
        let events = match reading {
            Reading::Committed(events) => events?,
            Reading::Store(reading) => reading
                .await
                .map_err(|error| FollowerError::Output(format!("reading the log: {error}")))??,
        };
        let Some(last) = events.last().map(LogEvent::position) else {
            break;
        };
        if last < head {
            next = Some(read(last));
        }
        follower.apply(&events).await?;
        position = last;
        status.position.store(position, Ordering::Relaxed);
        status.lag.store(head - position, Ordering::Relaxed);
    }
    status
        .lag
        .store((head - position).max(0), Ordering::Relaxed);
    Ok(())
}

/// A range being read: from this process's recent commits, or the store.
enum Reading<E> {
    Committed(Result<Vec<E>, StoreError>),
    Store(tokio::task::JoinHandle<Result<Vec<E>, StoreError>>),
}
