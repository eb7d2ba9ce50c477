//! The zombie reaper (docs/design.md §4): every interval it takes the leases past
//! their `expires_at` from the hot counts (in memory or Redis) and submits
//! `ExpireSeat` for each through the appender. While Redis does not answer,
//! it takes them from the billing follower's open leases instead, which
//! live in the ledger's own database (so the reaper works whenever the
//! ledger does; they may trail the log by moments, which the decider
//! absorbs: a lease heartbeated meanwhile is live and its `ExpireSeat`
//! appends nothing). The decider makes a repeat a no-op (a lease that
//! was heartbeated, released or already expired meanwhile appends
//! nothing), so several replicas may reap at once. A lease whose client
//! stopped heartbeating is expired within its TTL plus the interval.

use crate::billing_live;
use crate::counts::HotCounts;
use seatledger_ledger::domain::Command;
use seatledger_ledger::{Appender, Clock, Store, Submission};
use seatledger_schema::{limits, Metadata};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The default interval between rounds.
pub const REAPER_INTERVAL: Duration = Duration::from_secs(30);

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ReaperStats {
    pub rounds: AtomicU64,
    /// Leases this reaper expired (its `ExpireSeat` appended `SeatExpired`).
    pub leases_reaped: AtomicU64,
    /// `ExpireSeat` commands that failed (store down): retried next round.
    pub failures: AtomicU64,
}

/// Runs rounds every `interval` until `shutdown` turns true.
pub async fn run(
    hot: HotCounts,
    store: Store,
    appender: Appender,
    clock: Arc<dyn Clock>,
    interval: Duration,
    stats: Arc<ReaperStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        reap_once(&hot, &store, &appender, clock.as_ref(), &stats).await;
    }
}

/// One round: at most `REAPER_BATCH_MAX` stale leases, submitted together
/// (they commit in as few batches as the appender forms). Returns how many
/// were expired by this round.
pub async fn reap_once(
    hot: &HotCounts,
    store: &Store,
    appender: &Appender,
    clock: &dyn Clock,
    stats: &ReaperStats,
) -> u64 {
    stats.rounds.fetch_add(1, Ordering::Relaxed);
    let now = clock.now();
    let stale = match hot.stale(now, limits::REAPER_BATCH_MAX).await {
        Ok(stale) => stale,
        Err(error) => {
            tracing::debug!(error = %error, "reaper: hot counts unavailable; reading the ledger's database");
            match billing_live::stale_leases(store, 0, now, limits::REAPER_BATCH_MAX).await {
                Ok(stale) => stale,
                Err(error) => {
                    // The database is down too: nothing can be expired
                    // anyway; the next round catches up.
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %error, "reaper: round skipped");
                    return 0;
                }
            }
        }
    };
    let submissions = stale.into_iter().map(|lease| {
        let command = Command::ExpireSeat {
            license_id: lease.license_id,
            session_id: lease.session_id,
        };
        let submission = Submission::new(lease.org_id, command).with_metadata(Metadata {
            actor: Some("reaper".to_owned()),
            ..Metadata::default()
        });
        appender.submit(submission)
    });
    let mut reaped = 0;
    for result in futures::future::join_all(submissions).await {
        match result {
            Ok(result) if !result.events.is_empty() => reaped += 1,
            Ok(_) => {}
            Err(error) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %error, "reaper: expiring a lease failed; next round retries");
            }
        }
    }
    stats.leases_reaped.fetch_add(reaped, Ordering::Relaxed);
    reaped
}
