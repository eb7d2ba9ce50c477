//! The task that stores large snapshots after their batch committed.

use super::config::{RETIRE_CONNECTION_AFTER_SNAPSHOT_BYTES, SNAPSHOTS_QUEUED_MAX};
use super::stats::AppenderStats;
use crate::store::{SnapshotWrite, Store};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The task that stores large snapshots after their batch committed, on a
/// connection of its own, in a table of their own: the next batches do not
/// wait for it (a snapshot is valid at its version whenever it lands, and
/// the store never replaces a later snapshot with an earlier one). Only
/// committed states reach it. On shutdown it writes what it was handed,
/// then stops.
pub(super) struct SnapshotWriter {
    pub(super) sender: mpsc::Sender<SnapshotWrite>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl SnapshotWriter {
    pub(super) fn start(store: Store, stats: Arc<AppenderStats>) -> SnapshotWriter {
        let (sender, mut receiver) = mpsc::channel::<SnapshotWrite>(SNAPSHOTS_QUEUED_MAX);
        let task = tokio::spawn(async move {
            while let Some(snapshot) = receiver.recv().await {
                let retire = snapshot.state.len() >= RETIRE_CONNECTION_AFTER_SNAPSHOT_BYTES;
                let written = store.write_snapshots(std::slice::from_ref(&snapshot), retire);
                match written.await {
                    Ok(()) => {
                        if retire {
                            stats.connections_retired.fetch_add(1, Ordering::Relaxed);
                        }
                        stats
                            .snapshots_written_after_commit
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        stats.snapshots_not_written.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            stream_id = %snapshot.stream_id,
                            version = snapshot.version,
                            error = %error,
                            "cannot store a snapshot; the stream's next one is due one interval later"
                        );
                    }
                }
            }
        });
        SnapshotWriter { sender, task }
    }

    /// Hands a committed batch's large snapshots over; skips one the
    /// writer has no room for (it is busy with earlier ones).
    pub(super) fn hand_over(&self, snapshots: Vec<SnapshotWrite>, stats: &AppenderStats) {
        for snapshot in snapshots {
            if let Err(error) = self.sender.try_send(snapshot) {
                let snapshot = match error {
                    mpsc::error::TrySendError::Full(s) | mpsc::error::TrySendError::Closed(s) => s,
                };
                stats.snapshots_not_written.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    stream_id = %snapshot.stream_id,
                    version = snapshot.version,
                    "the snapshot writer is busy; skipping a snapshot (the stream's next one is due one interval later)"
                );
            } else {
                stats
                    .snapshots_handed_to_writer
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes what was handed over, then stops.
    pub(super) async fn finish(self) {
        drop(self.sender);
        if let Err(error) = self.task.await {
            tracing::warn!(error = %error, "the snapshot writer failed");
        }
    }
}
