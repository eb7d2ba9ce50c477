//! What committed: the latest position for followers to wait on, and the
//! latest events kept in memory for them to read.

use crate::recent::{RecentEvents, RECENT_EVENTS_DEFAULT};
use seatledger_schema::RecordedEvent;
use std::sync::Arc;
use tokio::sync::watch;

/// Tells followers the last committed position they may read up to, and
/// keeps this process's latest committed events for them
/// ([`crate::recent`]). Cheap to clone; advanced by the appender after each
/// commit and, on PostgreSQL, by `listen` for commits of other replicas.
#[derive(Clone, Debug)]
pub struct CommitNotifier {
    pub(super) position: Arc<watch::Sender<i64>>,
    pub(super) recent: Arc<std::sync::Mutex<RecentEvents>>,
}

impl Default for CommitNotifier {
    fn default() -> Self {
        CommitNotifier::with_recent_capacity(RECENT_EVENTS_DEFAULT)
    }
}

impl CommitNotifier {
    /// A notifier keeping at most `capacity` recent events (0: none).
    pub fn with_recent_capacity(capacity: usize) -> Self {
        CommitNotifier {
            position: Arc::new(watch::channel(0).0),
            recent: Arc::new(std::sync::Mutex::new(RecentEvents::new(capacity))),
        }
    }

    pub fn advance(&self, position: i64) {
        self.position.send_if_modified(|current| {
            if position > *current {
                *current = position;
                true
            } else {
                false
            }
        });
    }

    /// Keeps the events of a batch this process committed for followers;
    /// the appender then announces the batch with [`CommitNotifier::advance`].
    pub(crate) fn keep(&self, events: Vec<RecordedEvent>) {
        self.recent_events().push(events);
    }

    /// This process's committed events of `partition` from `after + 1` up
    /// to at most `through`, as the batches holding them (pick them out
    /// with [`crate::recent::in_range`]), when it still holds position
    /// `after + 1`; otherwise `None`, and the reader reads the store.
    pub fn recent(
        &self,
        partition: i16,
        after: i64,
        through: i64,
    ) -> Option<Vec<Arc<[RecordedEvent]>>> {
        self.recent_events().covering(partition, after, through)
    }

    pub(super) fn recent_events(&self) -> std::sync::MutexGuard<'_, RecentEvents> {
        // Nothing panics while holding it; a poisoned lock's data is whole.
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.position.subscribe()
    }

    pub fn position(&self) -> i64 {
        *self.position.borrow()
    }
}
