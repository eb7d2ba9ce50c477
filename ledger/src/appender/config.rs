//! How an appender is tuned, and the bounds it keeps.

use seatledger_schema::limits;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct AppenderConfig {
    pub partition: i16,
    pub queue_capacity: usize,
    pub batch_max: usize,
    /// How long a batch may wait for more commands after the queue ran dry.
    /// Zero: batches form only while the previous one commits.
    pub linger: Duration,
    pub checkpoint_every_events: i64,
    pub checkpoint_interval: Duration,
    /// How long a batch waits for the partition lock (PostgreSQL
    /// `lock_timeout` on the appender's connection) before it fails as
    /// unavailable. Another replica holds the lock for one batch, well
    /// under this; a holder stuck longer (a hung replica, an operator's
    /// open transaction) turns into 503 + Retry-After for the callers
    /// instead of requests that hang for as long as it does.
    pub lock_timeout: Duration,
    /// Snapshots of at least this many bytes (as JSON text) are written
    /// after their batch commits, by the appender's snapshot writer on a
    /// connection of its own, instead of in the batch: the next batches go
    /// on meanwhile (PostgreSQL; SQLite has one writer at a time and
    /// writes every snapshot in its batch). See [`DEFER_SNAPSHOT_BYTES`].
    pub defer_snapshot_bytes: usize,
    /// Before its first batch the appender loads, without the partition
    /// lock, the partition's streams whose load would read about this many
    /// entries or more (events after the snapshot plus the snapshot's
    /// entries), so that their first command after a start does not read
    /// them under the lock, holding every write of every replica meanwhile
    /// (~0.6 s for a license of 100,000 leases). `i64::MAX`: none. See
    /// [`WARM_FROM_ENTRIES`].
    pub warm_from_entries: i64,
}

/// The longest the appender leads the partition (holds its lock across
/// batches) before letting go once, so that another replica's batches,
/// queued on the lock in PostgreSQL's first-come order, get their turn.
pub const LEADER_HOLD_MAX: Duration = Duration::from_millis(50);

/// How long the appender keeps leading with an empty queue, waiting for
/// the next batch. Under a steady load the next command comes within it,
/// and its batch is written in one round trip instead of four; an idle
/// server lets go after it, so another replica waits at most this long for
/// a lock nobody uses.
pub const LEADER_IDLE_HOLD: Duration = Duration::from_millis(5);

/// Snapshot bytes in one led batch from which its connection is closed
/// rather than pooled when the lead ends (see
/// `BatchTx::retire_after_release`): a state of about 5,000 leases.
pub const RETIRE_CONNECTION_AFTER_SNAPSHOT_BYTES: usize = 1 << 20;

/// The default [`AppenderConfig::defer_snapshot_bytes`]: a state of about
/// 5,000 leases. A license of 100,000 leases has a ~20 MB snapshot; written
/// in its batch, it held that batch and everyone queued behind it for
/// ~180 ms of `UPDATE` on top of the ~35 ms its serialization takes (which
/// stays in the appender: copying the state for another task to serialize
/// costs as much as serializing it, measured by `cargo bench --bench micro
/// -- snapshot`). Below this size a snapshot costs its batch little.
pub const DEFER_SNAPSHOT_BYTES: usize = 1 << 20;

/// The default [`AppenderConfig::warm_from_entries`]: a load of about
/// 10,000 entries takes ~60 ms (`cold_load`); smaller ones are left to
/// their first command.
pub const WARM_FROM_ENTRIES: i64 = 10_000;

/// Streams warmed at most, and entries: half the cache, so that warming
/// never evicts what it warmed.
pub(super) const WARM_STREAMS_MAX: i64 = 1_000;
pub(super) const WARM_ENTRIES_MAX: usize = limits::APPENDER_CACHED_ENTRIES_MAX / 2;

/// Snapshots handed to the snapshot writer and not yet written, at most;
/// one more is skipped (the stream's next snapshot comes one interval
/// later; loads read more events meanwhile).
pub(super) const SNAPSHOTS_QUEUED_MAX: usize = 2;

/// The default [`AppenderConfig::lock_timeout`].
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for AppenderConfig {
    fn default() -> Self {
        AppenderConfig {
            partition: 0,
            queue_capacity: limits::APPENDER_QUEUE_CAPACITY,
            batch_max: limits::APPENDER_BATCH_MAX,
            linger: Duration::ZERO,
            checkpoint_every_events: limits::CHECKPOINT_EVERY_EVENTS,
            checkpoint_interval: Duration::from_secs(limits::CHECKPOINT_EVERY_S),
            lock_timeout: LOCK_TIMEOUT,
            defer_snapshot_bytes: DEFER_SNAPSHOT_BYTES,
            warm_from_entries: WARM_FROM_ENTRIES,
        }
    }
}
