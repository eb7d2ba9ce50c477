//! Consuming seatledger's events from JetStream: [`EventConsumer`], a
//! durable pull consumer that resumes where it left off, drops repeats
//! (JetStream delivers at least once, and a republish resends), and stops
//! at a gap in positions, so that a caller never folds a history with a
//! hole in it (it should then republish the range, or read it from
//! PostgreSQL: `GET /api/v1/events`, or `seatledger-replay republish`).

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy};
use futures::StreamExt;
use seatledger_schema::RecordedEvent;
use std::collections::BTreeMap;
use std::time::Duration;

/// Messages asked for per fetch at most.
pub const FETCH_MAX: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("nats: {0}")]
    Nats(String),
    /// A message whose body is not a seatledger event.
    #[error("message {sequence} of the stream is not a seatledger event: {error}")]
    NotAnEvent { sequence: u64, error: String },
    /// Positions `expected..got` of `partition` are missing from the stream.
    #[error("gap in partition {partition}: expected position {expected}, got {got}; republish the range or read it from PostgreSQL")]
    Gap {
        partition: i16,
        expected: i64,
        got: i64,
    },
}

fn nats(error: impl std::fmt::Display) -> ConsumerError {
    ConsumerError::Nats(error.to_string())
}

/// A pull consumer of the event stream.
pub struct EventConsumer {
    consumer: jetstream::consumer::PullConsumer,
    /// The last position handed over, per partition.
    positions: BTreeMap<i16, i64>,
    /// Messages handed over and not yet acknowledged.
    pending: Vec<jetstream::Message>,
    /// Whether messages are acknowledged (durable) or not (one pass).
    acks: bool,
    /// A gap found after events that were handed over first.
    gap: Option<ConsumerError>,
}

impl EventConsumer {
    /// The durable consumer `name` of `stream` (created if missing): it
    /// resumes after the last message acknowledged with [`ack`](Self::ack),
    /// even from another process.
    pub async fn durable(
        client: async_nats::Client,
        stream: &str,
        name: &str,
    ) -> Result<EventConsumer, ConsumerError> {
        let config = pull::Config {
            durable_name: Some(name.to_owned()),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        };
        Self::open(client, stream, name, config).await
    }

    /// A consumer of the whole stream from its first message, for one
    /// pass (the server forgets it when idle).
    pub async fn from_start(
        client: async_nats::Client,
        stream: &str,
    ) -> Result<EventConsumer, ConsumerError> {
        let config = pull::Config {
            ack_policy: AckPolicy::None,
            deliver_policy: DeliverPolicy::All,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        };
        let context = jetstream::new(client);
        let stream = context.get_stream(stream).await.map_err(nats)?;
        let consumer = stream.create_consumer(config).await.map_err(nats)?;
        Ok(EventConsumer {
            consumer,
            positions: BTreeMap::new(),
            pending: Vec::new(),
            acks: false,
            gap: None,
        })
    }

    async fn open(
        client: async_nats::Client,
        stream: &str,
        name: &str,
        config: pull::Config,
    ) -> Result<EventConsumer, ConsumerError> {
        let context = jetstream::new(client);
        let stream = context.get_stream(stream).await.map_err(nats)?;
        let consumer = stream
            .get_or_create_consumer(name, config)
            .await
            .map_err(nats)?;
        Ok(EventConsumer {
            consumer,
            positions: BTreeMap::new(),
            pending: Vec::new(),
            acks: true,
            gap: None,
        })
    }

    /// Declares that everything up to `position` of `partition` was
    /// already processed (the caller's own checkpoint): earlier events are
    /// dropped as repeats, and the next must be `position + 1`. Without
    /// it, a partition's first event must be position 1.
    pub fn resume_after(mut self, partition: i16, position: i64) -> Self {
        self.positions.insert(partition, position);
        self
    }

    /// The last position handed over in `partition` (0 before any).
    pub fn position(&self, partition: i16) -> i64 {
        self.positions.get(&partition).copied().unwrap_or(0)
    }

    /// Messages still in the stream for this consumer.
    pub async fn pending(&mut self) -> Result<u64, ConsumerError> {
        Ok(self.consumer.info().await.map_err(nats)?.num_pending)
    }

    /// Up to `max` new events in position order, waiting at most `wait`
    /// for the first; repeats are dropped. A gap is an error, returned
    /// once the events before it have been handed over (by this call, or
    /// the next one returns it).
    pub async fn fetch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<RecordedEvent>, ConsumerError> {
        if let Some(gap) = self.gap.take() {
            return Err(gap);
        }
        let mut messages = self
            .consumer
            .fetch()
            .max_messages(max.clamp(1, FETCH_MAX))
            .expires(wait)
            .messages()
            .await
            .map_err(nats)?;
        let mut events = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message.map_err(nats)?;
            let sequence = message.info().map(|info| info.stream_sequence).unwrap_or(0);
            let is_head = message
                .headers
                .as_ref()
                .is_some_and(|headers| headers.get(crate::nats::CHECKPOINT_HEADER).is_some());
            if is_head {
                // A signed head (for witnesses), not an event.
                if self.acks {
                    self.pending.push(message);
                }
                continue;
            }
            let event: RecordedEvent =
                serde_json::from_slice(&message.payload).map_err(|error| {
                    ConsumerError::NotAnEvent {
                        sequence,
                        error: error.to_string(),
                    }
                })?;
            let last = self.position(event.partition);
            if event.position <= last {
                // A repeat: drop it, and let the server forget it.
                if self.acks {
                    self.pending.push(message);
                }
                continue;
            }
            if event.position != last + 1 {
                let gap = ConsumerError::Gap {
                    partition: event.partition,
                    expected: last + 1,
                    got: event.position,
                };
                if events.is_empty() {
                    return Err(gap);
                }
                self.gap = Some(gap);
                break;
            }
            self.positions.insert(event.partition, event.position);
            if self.acks {
                self.pending.push(message);
            }
            events.push(event);
        }
        Ok(events)
    }

    /// Acknowledges every message handed over so far: a durable consumer
    /// resumes after them. Call it once the events are processed.
    pub async fn ack(&mut self) -> Result<(), ConsumerError> {
        for message in self.pending.drain(..) {
            message.ack().await.map_err(nats)?;
        }
        Ok(())
    }
}
