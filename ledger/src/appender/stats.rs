//! The appender's counters, read by the metrics endpoint.

use std::sync::atomic::AtomicU64;

/// Counters for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct AppenderStats {
    pub batches: AtomicU64,
    pub commands: AtomicU64,
    pub events: AtomicU64,
    pub failed_batches: AtomicU64,
    pub commit_micros_total: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Times the appender took the partition lock to lead (PostgreSQL).
    /// Each lead costs a lock, a read of the head and an unlock, so a count
    /// close to `batches` under load means the lead keeps being let go.
    pub leads: AtomicU64,
    /// Loads of a stream that found it unreadable. A stream remembered as
    /// unreadable is not loaded again until its retry is due, so this
    /// grows by one per stream per retry, not per request.
    pub stream_loads_failed: AtomicU64,
    /// Commands answered `StreamUnreadable`.
    pub commands_on_unreadable_streams: AtomicU64,
    /// Streams currently remembered as unreadable.
    pub unreadable_streams: AtomicU64,
    /// Snapshots taken, and their bytes (the state as JSON text): written
    /// with their batch, or handed to the snapshot writer after it.
    pub snapshots: AtomicU64,
    pub snapshot_bytes: AtomicU64,
    /// Of those, the ones handed to the snapshot writer after their batch
    /// committed, and the ones it stored.
    pub snapshots_handed_to_writer: AtomicU64,
    pub snapshots_written_after_commit: AtomicU64,
    /// Snapshots the writer could not store (the error is logged) or that
    /// found it busy with [`SNAPSHOTS_QUEUED_MAX`] others; the stream's
    /// next snapshot is due one interval later.
    pub snapshots_not_written: AtomicU64,
    /// Batches decided while the batch before them was written (pipelined
    /// group commit), and of those, the ones decided again because that
    /// batch failed or one of their idempotency keys turned out recorded.
    pub batches_decided_ahead: AtomicU64,
    pub batches_decided_again: AtomicU64,
    /// Connections closed instead of pooled after a batch, or the snapshot
    /// writer, sent a large snapshot (see
    /// `RETIRE_CONNECTION_AFTER_SNAPSHOT_BYTES`).
    pub connections_retired: AtomicU64,
    /// Streams loaded into the cache before the first batch (see
    /// [`AppenderConfig::warm_from_entries`]).
    pub streams_warmed: AtomicU64,
    /// Streams read whole from the store (snapshot and tail) because the
    /// cache did not hold them: once per stream after a start, then only
    /// for streams the cache evicted. A steady rate under steady traffic
    /// means the partition holds more than the cache does
    /// (`limits::APPENDER_CACHED_ENTRIES_MAX`), and every batch pays loads.
    pub stream_loads: AtomicU64,
    /// Streams evicted from the cache to make room.
    pub cache_evictions: AtomicU64,
    /// Streams and entries (leases, remembered sessions, users) cached now.
    pub cached_streams: AtomicU64,
    pub cached_entries: AtomicU64,
}
