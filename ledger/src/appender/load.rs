//! Loading stream states into the cache: by snapshot and tail, checked
//! against `streams.version`, and the warm-up of costly streams at start.

use super::config::{WARM_ENTRIES_MAX, WARM_STREAMS_MAX};
use super::decide::{fold, CachedStream, Working};
use super::worker::Worker;
use crate::domain::StreamState;
use crate::store::{BatchTx, StoreError};
use seatledger_schema::limits;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

impl Worker {
    /// Loads the partition's streams that are costly to load into the
    /// cache, without the partition lock: each is then checked against
    /// `streams.version` at its first batch like any cached state, and only
    /// what was appended since is read under the lock. A stream that
    /// cannot be loaded here is left to its first command (which reports
    /// it as it always does).
    pub(super) async fn warm_up(&mut self) {
        if self.config.warm_from_entries == i64::MAX {
            return;
        }
        let started = std::time::Instant::now();
        let partition = self.config.partition;
        let listed = match self
            .store
            .streams_costly_to_load(partition, self.config.warm_from_entries, WARM_STREAMS_MAX)
            .await
        {
            Ok(listed) => listed,
            Err(error) => {
                tracing::warn!(error = %error, "appender warm-up: cannot list the streams to load; each is loaded at its first command");
                return;
            }
        };
        let mut warmed = HashMap::new();
        let mut entries = 0;
        for (stream_id, snapshot_version) in listed {
            if entries >= WARM_ENTRIES_MAX {
                break;
            }
            match self.store.stream_state(&stream_id).await {
                Ok((version, state)) => {
                    entries += state.size();
                    let snapshot_version = snapshot_version.unwrap_or(0);
                    let stream = CachedStream {
                        version,
                        snapshot_version,
                        state,
                    };
                    warmed.insert(stream_id, stream);
                }
                Err(error) => {
                    tracing::warn!(stream_id = %stream_id, error = %error, "appender warm-up: cannot load a stream; it is loaded at its first command");
                }
            }
        }
        if warmed.is_empty() {
            return;
        }
        let streams = warmed.len();
        self.stats
            .streams_warmed
            .fetch_add(streams as u64, Ordering::Relaxed);
        self.cache.put_back(warmed);
        self.record_cache_usage();
        tracing::info!(
            partition,
            streams,
            entries,
            ms = started.elapsed().as_millis() as u64,
            "appender warm-up: loaded the streams that are costly to load"
        );
    }
}

impl Worker {
    /// Phase 1: each stream's state at its stored version, from the cache
    /// when it is current, else from the store (snapshot + later events).
    /// A stream that cannot be read (corrupt snapshot, undecodable event,
    /// versions that do not add up) is set aside as unreadable: its
    /// commands fail alone and the rest of the batch goes on. A store
    /// failure still fails the whole batch.
    pub(super) async fn load_states(
        &mut self,
        tx: &mut BatchTx<'_>,
        stream_ids: &[String],
        versions: &HashMap<String, i64>,
    ) -> Result<Working, StoreError> {
        let mut working = Working::default();
        for stream_id in stream_ids {
            if self.unreadable.is_remembered(stream_id) {
                working.unreadable.push(stream_id.clone());
                continue;
            }
            let stored_version = versions.get(stream_id).copied().unwrap_or(0);
            let cached = self.cache.take(stream_id);
            if cached.is_none() && stored_version > 0 {
                self.stats.stream_loads.fetch_add(1, Ordering::Relaxed);
            }
            match load_state(tx, stream_id, cached, stored_version).await {
                Ok(stream) => {
                    self.unreadable.forget(stream_id);
                    working.streams.insert(stream_id.clone(), stream);
                }
                Err(StoreError::Corrupt(reason)) => {
                    self.stats
                        .stream_loads_failed
                        .fetch_add(1, Ordering::Relaxed);
                    self.unreadable.remember(stream_id, &reason);
                    working.unreadable.push(stream_id.clone());
                }
                Err(error) => return Err(error),
            }
        }
        Ok(working)
    }
}

impl Worker {
    /// Publishes the cache's size, and says once in the log when it first
    /// evicts (what follows is a reload per evicted stream touched again).
    pub(super) fn record_cache_usage(&mut self) {
        let (streams, entries, evictions) = self.cache.usage();
        let before = self
            .stats
            .cache_evictions
            .swap(evictions, Ordering::Relaxed);
        if before == 0 && evictions > 0 {
            tracing::warn!(
                streams,
                entries,
                max_entries = limits::APPENDER_CACHED_ENTRIES_MAX,
                "the appender's cache of states is full and evicts: streams touched again are read back from the store (see seatledger_appender_stream_loads_total)"
            );
        }
        self.stats
            .cached_streams
            .store(streams as u64, Ordering::Relaxed);
        self.stats
            .cached_entries
            .store(entries as u64, Ordering::Relaxed);
    }
}

/// A stream's state at `stored_version`: the cached state if current, the
/// cached state plus what another replica appended, or snapshot + events.
pub(super) async fn load_state(
    tx: &mut BatchTx<'_>,
    stream_id: &str,
    cached: Option<CachedStream>,
    stored_version: i64,
) -> Result<CachedStream, StoreError> {
    let stream = match cached {
        Some(cached) if cached.version == stored_version => cached,
        Some(cached) if cached.version < stored_version => {
            // Another replica appended: apply only what we missed.
            let loaded = tx.load_stream(stream_id, Some(cached.version)).await?;
            fold(cached, &loaded.events)?
        }
        _ => {
            let loaded = tx.load_stream(stream_id, None).await?;
            let start = match loaded.snapshot {
                Some((version, state)) => CachedStream {
                    version,
                    snapshot_version: version,
                    state: serde_json::from_value(state).map_err(|e| {
                        StoreError::Corrupt(format!("snapshot of {stream_id}: {e}"))
                    })?,
                },
                None => CachedStream {
                    version: 0,
                    snapshot_version: 0,
                    state: StreamState::Empty,
                },
            };
            fold(start, &loaded.events)?
        }
    };
    if stream.version != stored_version {
        return Err(StoreError::Corrupt(format!(
            "{stream_id}: streams.version is {stored_version} but its events end at {}",
            stream.version
        )));
    }
    Ok(stream)
}
