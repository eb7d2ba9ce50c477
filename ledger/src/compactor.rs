//! The compactor: a task that keeps moving the oldest sealed rows of a
//! partition's log into blocks (docs/design.md §3, "Compact storage"), so
//! the live database holds each event once, compressed, after its first
//! minutes. It also seals the log's segments, which archive and prune
//! work on. One replica at a time compacts a partition (PostgreSQL: a
//! transaction lock; a replica that finds it taken waits for its next
//! round).

use crate::store::Store;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How the compactor runs.
#[derive(Clone, Debug)]
pub struct CompactorConfig {
    pub partition: i16,
    /// The newest events that stay rows (at least 1): followers and feeds
    /// near the head read rows, which is cheaper than a block.
    pub keep_events: i64,
    /// Events per block: a block is written once that many are due, so
    /// the rows number at most `keep_events` + `block_events` + the events
    /// not yet signed by a checkpoint.
    pub block_events: i64,
    /// The size a segment is sealed at (its end is the first signed
    /// checkpoint at or after this many events into it).
    pub segment_events: i64,
    /// The pause once no block is due (or after a failure).
    pub idle: Duration,
    /// Blocks between two vacuums of the row tail ([`Store::vacuum_rows`]).
    pub vacuum_every_blocks: u64,
}

impl Default for CompactorConfig {
    fn default() -> Self {
        CompactorConfig {
            partition: 0,
            keep_events: seatledger_schema::limits::COMPACT_KEEP_EVENTS,
            block_events: seatledger_schema::limits::COMPACT_BLOCK_EVENTS,
            segment_events: seatledger_schema::limits::SEGMENT_EVENTS,
            idle: Duration::from_secs(1),
            vacuum_every_blocks: 10,
        }
    }
}

/// What the compactor did, for `/metrics`.
#[derive(Debug, Default)]
pub struct CompactorStats {
    pub blocks: AtomicU64,
    pub events: AtomicU64,
    pub failures: AtomicU64,
}

/// Compacts until `shutdown` turns true: block after block while any is
/// due, then a pause of `config.idle`.
pub async fn run(
    store: Store,
    config: CompactorConfig,
    stats: Arc<CompactorStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        let pause = match store
            .compact(
                config.partition,
                config.keep_events,
                config.block_events,
                config.segment_events,
            )
            .await
        {
            Ok(Some((first, last))) => {
                let blocks = stats.blocks.fetch_add(1, Ordering::Relaxed) + 1;
                if blocks.is_multiple_of(config.vacuum_every_blocks.max(1)) {
                    if let Err(error) = store.vacuum_rows().await {
                        tracing::warn!(%error, "vacuuming the compacted rows failed");
                    }
                }
                stats.events.fetch_add(
                    u64::try_from(last - first + 1).unwrap_or(0),
                    Ordering::Relaxed,
                );
                tracing::debug!(first, last, "compacted events into a block");
                None
            }
            Ok(None) => Some(config.idle),
            Err(error) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "compaction failed; retrying later");
                Some(config.idle)
            }
        };
        if let Some(pause) = pause {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => {}
            }
        } else {
            tokio::task::yield_now().await;
        }
    }
}
