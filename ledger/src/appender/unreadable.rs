//! Streams that could not be loaded: remembered, logged once, retried.

use seatledger_schema::limits;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// Streams found unreadable, remembered for a while so that commands on
/// them fail at once instead of reloading them under the partition lock
/// on every request (the blast radius of one bad event). Bounded; each is logged
/// once when first found, and tried again after a delay that doubles.
#[derive(Default)]
pub(super) struct UnreadableStreams {
    pub(super) streams: HashMap<String, UnreadableStream>,
}

pub(super) struct UnreadableStream {
    pub(super) retry_at: Instant,
    pub(super) delay: Duration,
}

impl UnreadableStreams {
    pub(super) fn is_remembered(&self, stream_id: &str) -> bool {
        self.streams
            .get(stream_id)
            .is_some_and(|stream| Instant::now() < stream.retry_at)
    }

    pub(super) fn remember(&mut self, stream_id: &str, reason: &str) {
        let max = Duration::from_secs(limits::UNREADABLE_STREAM_RETRY_MAX_S);
        let delay = match self.streams.get(stream_id) {
            Some(stream) => (stream.delay * 2).min(max),
            None => {
                tracing::error!(stream_id, reason, "stream unreadable: its commands fail with stream_unreadable until it can be read; see docs/design.md §2, on recovery from an event that was stored anyway");
                Duration::from_secs(limits::UNREADABLE_STREAM_RETRY_S)
            }
        };
        if self.streams.len() >= limits::UNREADABLE_STREAMS_REMEMBERED
            && !self.streams.contains_key(stream_id)
        {
            // Forget the one due soonest: it would be retried first anyway.
            if let Some(oldest) = self
                .streams
                .iter()
                .min_by_key(|(_, stream)| stream.retry_at)
                .map(|(id, _)| id.clone())
            {
                self.streams.remove(&oldest);
            }
        }
        self.streams.insert(
            stream_id.to_owned(),
            UnreadableStream {
                retry_at: Instant::now() + delay,
                delay,
            },
        );
    }

    pub(super) fn forget(&mut self, stream_id: &str) {
        if self.streams.remove(stream_id).is_some() {
            tracing::info!(stream_id, "stream readable again");
        }
    }

    pub(super) fn len(&self) -> usize {
        self.streams.len()
    }
}
