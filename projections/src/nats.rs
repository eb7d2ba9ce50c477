//! The NATS JetStream publisher (docs/design.md §4): a follower that publishes
//! every event of a partition, in position order, to JetStream.
//!
//! - Stream `SEATLEDGER` (name, subject prefix, replicas and max age
//!   configurable) over subjects `seatledger.>`, file storage, duplicate
//!   window [`DUPLICATE_WINDOW`]; created when missing.
//! - Subject `seatledger.<tenant_id>.<event_type>`; headers `Nats-Msg-Id`
//!   (the event id: JetStream drops a repeat within the duplicate window),
//!   `Seatledger-Partition`, `Seatledger-Position`, `Seatledger-Stream-Id`,
//!   `Seatledger-Event-Type`; body: the event envelope as JSON, the shape of
//!   `GET /api/v1/events` items, hashes included.
//! - Publishes are pipelined, at most `window` acks in flight; the
//!   checkpoint (`follower_checkpoints ('nats', partition)`) moves only past
//!   events whose ack came back, in order. After a crash between a publish
//!   and its checkpoint, the repeat is dropped by JetStream's de-duplication
//!   (within the window; consumers dedupe by `event_id` beyond it).
//! - One publisher per partition across replicas: it publishes only while
//!   it holds a PostgreSQL advisory lock on a connection of its own; the
//!   others wait and one takes over within about a second of the holder's
//!   connection closing (SQLite is one process: no lock).
//!
//! - A JetStream that lost what it had acknowledged (a `nats-server`
//!   killed before it synced, a stream deleted and recreated) is noticed
//!   when the publisher reconnects after a failure: the stream's last
//!   sequence is below the highest sequence this publisher was acked. It
//!   then moves its checkpoint back to the last of its events the stream
//!   still holds and sends the rest again (an event the stream kept is
//!   dropped as a duplicate within the window). At start and at each
//!   take-over of the publisher lock it also reads the stream's last event
//!   of its partition (`Seatledger-Position`): when that is behind the
//!   checkpoint, the stream lost messages while no publisher was there to
//!   notice, and the rest is sent again the same way. `seatledger-replay
//!   republish` remains for a stream rebuilt by hand.
//!
//! PostgreSQL stays the truth: while NATS is unreachable events wait in the
//! log, the API is unaffected, and publishing resumes from the checkpoint.

use crate::runner::{Follower, FollowerError};
use async_nats::header::{HeaderName, NATS_MESSAGE_ID};
use async_nats::jetstream::{self, stream::StorageType};
use seatledger_ledger::store::SessionLock;
use seatledger_ledger::{Backend, Store};
use seatledger_schema::{RawRecordedEvent, RecordedEvent, Timestamp};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The follower's name in `follower_checkpoints`.
pub const NATS_FOLLOWER: &str = "nats";
/// The follower checkpoint of signed heads published.
pub const NATS_HEADS_FOLLOWER: &str = "nats-heads";
/// The header marking a signed head (not an event) on the stream.
pub const CHECKPOINT_HEADER: &str = "Seatledger-Checkpoint";
/// JetStream's de-duplication window on the stream seatledger creates.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Acks in flight by default.
pub const PUBLISH_WINDOW_DEFAULT: usize = 256;
/// The most acks in flight allowed.
pub const PUBLISH_WINDOW_MAX: usize = 4_096;
/// How long an ack may take before the publish counts as failed.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Positions the publisher reads per range: the ack pipeline drains at the
/// end of each range (the checkpoint follows the acks), so ranges are long.
pub const PUBLISHER_BATCH: i64 = 10_000;

/// How `serve` runs the publisher.
pub fn runner_config() -> crate::runner::RunnerConfig {
    crate::runner::RunnerConfig {
        batch: PUBLISHER_BATCH,
        ..crate::runner::RunnerConfig::default()
    }
}

/// The advisory lock of partition `p`'s publisher is this plus `p`
/// (distinct from the appender's partition locks).
const PUBLISHER_LOCK_NAMESPACE: i64 = 0x5EA7_4A75_0000_0000;

/// Where and how to publish.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    pub url: String,
    pub stream: String,
    /// Subjects are `<prefix>.<tenant_id>.<event_type>`.
    pub subject_prefix: String,
    pub replicas: usize,
    /// How long JetStream keeps a message; zero: for ever.
    pub max_age: Duration,
    /// Acks in flight.
    pub window: usize,
}

impl NatsConfig {
    pub fn new(url: &str) -> NatsConfig {
        NatsConfig {
            url: url.to_owned(),
            stream: "SEATLEDGER".to_owned(),
            subject_prefix: "seatledger".to_owned(),
            replicas: 1,
            max_age: Duration::ZERO,
            window: PUBLISH_WINDOW_DEFAULT,
        }
    }

    /// The stream seatledger creates when it is missing.
    pub fn stream_config(&self) -> jetstream::stream::Config {
        jetstream::stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.subject_prefix)],
            storage: StorageType::File,
            num_replicas: self.replicas.max(1),
            max_age: self.max_age,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        }
    }

    /// The subject signed heads (checkpoints) are published on: two tokens,
    /// so consumers of `<prefix>.*.*` (events) never see them.
    pub fn checkpoint_subject(&self) -> String {
        format!("{}.checkpoints", self.subject_prefix)
    }

    /// The subject of `event`.
    pub fn subject<P, M>(&self, event: &RecordedEvent<P, M>) -> String {
        format!(
            "{}.{}.{}",
            self.subject_prefix, event.org_id, event.event_type
        )
    }
}

/// What `/metrics` and readiness show of a publisher. Shared.
#[derive(Debug, Default)]
pub struct PublisherStats {
    pub published: AtomicU64,
    pub ack_failures: AtomicU64,
    /// This replica holds the lock and publishes.
    pub active: AtomicBool,
    /// The client is connected to NATS.
    pub connected: AtomicBool,
    /// The last attempt to publish failed.
    pub failing: AtomicBool,
    /// `recorded_at` (µs) of the oldest event not yet published when the
    /// publisher last looked, 0 when it was caught up.
    pub oldest_unpublished_micros: AtomicI64,
    /// Times the stream was found to have lost acknowledged messages (and
    /// the publisher went back to resend them).
    pub losses_recovered: AtomicU64,
    /// Times the publisher stored its checkpoint.
    pub checkpoints_saved: AtomicU64,
}

impl PublisherStats {
    /// `ok`, `standby` (another replica publishes) or `degraded`.
    pub fn status(&self) -> &'static str {
        if !self.connected.load(Ordering::Relaxed) || self.failing.load(Ordering::Relaxed) {
            "degraded"
        } else if self.active.load(Ordering::Relaxed) {
            "ok"
        } else {
            "standby"
        }
    }

    /// Seconds the oldest unpublished event has waited (0 when caught up).
    pub fn lag_seconds(&self, now: Timestamp) -> f64 {
        match self.oldest_unpublished_micros.load(Ordering::Relaxed) {
            0 => 0.0,
            micros => (now.as_micros() - micros).max(0) as f64 / 1e6,
        }
    }
}

/// Connects to NATS without waiting for it: the client reconnects by
/// itself, and `stats.connected` follows its state.
pub async fn connect(url: &str, stats: Arc<PublisherStats>) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .request_timeout(Some(ACK_TIMEOUT))
        .event_callback(move |event| {
            let stats = stats.clone();
            async move {
                match event {
                    async_nats::Event::Connected => stats.connected.store(true, Ordering::Relaxed),
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        stats.connected.store(false, Ordering::Relaxed)
                    }
                    other => tracing::debug!(event = %other, "nats event"),
                }
            }
        })
        .connect(url)
        .await
        .map_err(|error| format!("cannot connect to NATS: {error}"))
}

/// The publisher follower of one partition.
pub struct NatsPublisher {
    store: Store,
    partition: i16,
    config: NatsConfig,
    jetstream: jetstream::Context,
    stream_ready: bool,
    /// PostgreSQL: the connection holding the advisory lock.
    lock: Option<SessionLock>,
    stats: Arc<PublisherStats>,
    /// The last signed head published (loaded on first use).
    heads_published: Option<i64>,
    /// The highest stream sequence JetStream acknowledged to this
    /// publisher: a stream whose last sequence is lower lost messages.
    acked_sequence: u64,
    /// The last position published, while this replica holds the lock
    /// without a break (`None`: read the stored checkpoint).
    published: Option<i64>,
    /// The stored checkpoint, and when it was stored.
    saved: (i64, Instant),
    /// When the store was last asked for signed heads to publish.
    heads_checked_at: Option<Instant>,
}

/// The least time between two stores of the publisher's checkpoint, and
/// between two looks for signed heads to publish, while events keep
/// coming. Storing it after every range (each commit wakes the publisher)
/// cost a write and its WAL flush per commit on the ledger's database;
/// an event published but not yet checkpointed when seatledger stops is
/// sent again on restart and dropped by JetStream's de-duplication window
/// (two minutes, far longer than this).
pub const CHECKPOINT_SAVE_INTERVAL: Duration = Duration::from_millis(250);

/// How far back from a stream's last message the publisher looks for the
/// last of its partition's events after a loss; beyond it, it resends from
/// the start of the log (correct, only slower: consumers dedupe).
const LOSS_SCAN_MAX: u64 = 10_000;

impl NatsPublisher {
    pub fn new(
        store: Store,
        partition: i16,
        config: NatsConfig,
        client: async_nats::Client,
        stats: Arc<PublisherStats>,
    ) -> NatsPublisher {
        NatsPublisher {
            store,
            partition,
            config,
            jetstream: jetstream::new(client),
            stream_ready: false,
            lock: None,
            stats,
            heads_published: None,
            acked_sequence: 0,
            published: None,
            saved: (0, Instant::now()),
            heads_checked_at: None,
        }
    }

    /// Whether this replica may publish: on PostgreSQL, it holds (or just
    /// took) the partition's publisher lock on its own live connection.
    async fn lead(&mut self) -> Result<bool, FollowerError> {
        if let Some(lock) = &mut self.lock {
            if lock.is_held().await {
                return Ok(true);
            }
            // The connection (and the lock with it) is gone.
            self.lock = None;
            self.stats.active.store(false, Ordering::Relaxed);
            tracing::warn!("nats publisher: lost the publisher lock");
        }
        let key = PUBLISHER_LOCK_NAMESPACE + i64::from(self.partition);
        let Some(lock) = self.store.try_session_lock(key).await? else {
            return Ok(false);
        };
        if self.store.backend() == Backend::Postgres {
            tracing::info!(partition = self.partition, "nats publisher: active");
        }
        // Another replica may have published meanwhile.
        self.published = None;
        self.heads_published = None;
        self.lock = Some(lock);
        self.stats.active.store(true, Ordering::Relaxed);
        Ok(true)
    }
}

impl Follower for NatsPublisher {
    /// Payload and metadata stay the stored text: the message body is the
    /// envelope, so parsing them would only build trees to serialize back.
    type Event = RawRecordedEvent;

    fn name(&self) -> &'static str {
        NATS_FOLLOWER
    }

    async fn position(&mut self) -> Result<i64, FollowerError> {
        if !self.lead().await? {
            return Err(FollowerError::Standby);
        }
        if !self.stream_ready && self.acked_sequence > 0 {
            // Publishing failed after something was acked: see whether the
            // stream still holds it before going on from the checkpoint.
            self.ensure_stream().await?;
        }
        let position = match self.published {
            Some(position) => position,
            None => {
                // At start or after a take-over: did the stream lose what
                // the checkpoint says was published?
                self.check_stream_at_start().await?;
                let position =
                    Store::follower_position(&self.store, NATS_FOLLOWER, self.partition).await?;
                self.published = Some(position);
                self.saved = (position, Instant::now());
                position
            }
        };
        // Once idle, the last position is stored at the next round.
        self.save_checkpoint(false).await?;
        // A checkpoint signed while the log was idle comes after its
        // events were published: send it on the next round.
        self.publish_heads(position).await?;
        Ok(position)
    }

    async fn apply(&mut self, events: &[RawRecordedEvent]) -> Result<(), FollowerError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        if self.stats.oldest_unpublished_micros.load(Ordering::Relaxed) == 0 {
            self.stats
                .oldest_unpublished_micros
                .store(first.recorded_at.as_micros().max(1), Ordering::Relaxed);
        }
        let result = self.publish(events).await;
        self.stats.failing.store(result.is_err(), Ordering::Relaxed);
        if result.is_ok() {
            self.stats
                .oldest_unpublished_micros
                .store(0, Ordering::Relaxed);
        }
        result
    }
}

impl NatsPublisher {
    /// The stream (created when missing) and its state now.
    async fn open_stream(
        &self,
    ) -> Result<(jetstream::stream::Stream, jetstream::stream::State), FollowerError> {
        let stream_error = |error: String| {
            FollowerError::Output(format!("JetStream stream {}: {error}", self.config.stream))
        };
        let mut stream = self
            .jetstream
            .get_or_create_stream(self.config.stream_config())
            .await
            .map_err(|error| stream_error(format!("cannot create it: {error}")))?;
        let state = stream
            .info()
            .await
            .map_err(|error| stream_error(format!("cannot read its state: {error}")))?
            .state
            .clone();
        Ok((stream, state))
    }

    async fn ensure_stream(&mut self) -> Result<(), FollowerError> {
        if self.stream_ready {
            return Ok(());
        }
        let (stream, state) = self.open_stream().await?;
        let last_sequence = state.last_sequence;
        if last_sequence < self.acked_sequence {
            self.recover_loss(&stream, last_sequence).await?;
        }
        self.stream_ready = true;
        Ok(())
    }

    /// The stream ends at `last_sequence`, below what it acknowledged: it
    /// lost messages. Moves both checkpoints back to the last event and the
    /// last signed head of this partition the stream still holds (both are
    /// published in position order), so everything after them is sent
    /// again.
    async fn recover_loss(
        &mut self,
        stream: &jetstream::stream::Stream,
        last_sequence: u64,
    ) -> Result<(), FollowerError> {
        let (kept, kept_head) = self.last_kept(stream, last_sequence, true).await;
        self.resend_after(kept, kept_head, last_sequence).await
    }

    /// At start and at each take-over of the lock: the stream must still
    /// hold the last event the checkpoint says was published. A stream
    /// whose last event of this partition is behind the checkpoint (or that
    /// is empty and new, though events were published) lost messages while
    /// no publisher of this process was there to notice: the rest is sent
    /// again, with no operator action. A stream that cannot tell (its
    /// messages aged out, or the last [`LOSS_SCAN_MAX`] are all of other
    /// partitions) is trusted.
    async fn check_stream_at_start(&mut self) -> Result<(), FollowerError> {
        let checkpoint =
            Store::follower_position(&self.store, NATS_FOLLOWER, self.partition).await?;
        if checkpoint == 0 {
            return Ok(());
        }
        let (stream, state) = self.open_stream().await?;
        let (kept, _) = self.last_kept(&stream, state.last_sequence, false).await;
        let lost = match kept {
            Some(position) => position < checkpoint,
            None => state.last_sequence == 0,
        };
        if lost {
            self.recover_loss(&stream, state.last_sequence).await?;
        }
        self.stream_ready = true;
        Ok(())
    }

    /// The positions of the last event and (when `heads`) the last signed
    /// head of this partition among the stream's last [`LOSS_SCAN_MAX`]
    /// messages.
    async fn last_kept(
        &self,
        stream: &jetstream::stream::Stream,
        last_sequence: u64,
        heads: bool,
    ) -> (Option<i64>, Option<i64>) {
        let mut kept = None;
        let mut kept_head = None;
        let oldest = last_sequence.saturating_sub(LOSS_SCAN_MAX).max(1);
        let mut sequence = last_sequence;
        while sequence >= oldest && (kept.is_none() || (heads && kept_head.is_none())) {
            // A sequence may be gone (deleted, aged out): skip it.
            if let Ok(message) = stream.get_raw_message(sequence).await {
                let header = |name: &str| {
                    message
                        .headers
                        .get(name)
                        .and_then(|value| value.as_str().parse::<i64>().ok())
                };
                if header("Seatledger-Partition") == Some(i64::from(self.partition)) {
                    let position = header("Seatledger-Position");
                    if message.headers.get(CHECKPOINT_HEADER).is_some() {
                        kept_head = kept_head.or(position);
                    } else {
                        kept = kept.or(position);
                    }
                }
            }
            sequence -= 1;
        }
        (kept, kept_head)
    }

    /// Moves both checkpoints back to what the stream still holds (`kept`,
    /// `kept_head`; `None`: nothing), so everything after is sent again.
    async fn resend_after(
        &mut self,
        kept: Option<i64>,
        kept_head: Option<i64>,
        last_sequence: u64,
    ) -> Result<(), FollowerError> {
        let checkpoint =
            Store::follower_position(&self.store, NATS_FOLLOWER, self.partition).await?;
        let heads =
            Store::follower_position(&self.store, NATS_HEADS_FOLLOWER, self.partition).await?;
        let back_to = kept.unwrap_or(0).min(checkpoint);
        let heads_back_to = kept_head.unwrap_or(0).min(heads);
        tracing::warn!(
            stream = %self.config.stream,
            last_sequence,
            acknowledged_sequence = self.acked_sequence,
            checkpoint,
            resend_from = back_to + 1,
            "JetStream lost acknowledged messages; resending them from the log"
        );
        Store::save_follower_position(&self.store, NATS_FOLLOWER, self.partition, back_to).await?;
        Store::save_follower_position(
            &self.store,
            NATS_HEADS_FOLLOWER,
            self.partition,
            heads_back_to,
        )
        .await?;
        self.heads_published = Some(heads_back_to);
        self.published = Some(back_to);
        self.saved = (back_to, Instant::now());
        self.acked_sequence = last_sequence;
        self.stats.losses_recovered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn publish(&mut self, events: &[RawRecordedEvent]) -> Result<(), FollowerError> {
        self.ensure_stream().await?;
        let outcome = publish_range(&self.jetstream, &self.config, events).await;
        self.acked_sequence = self.acked_sequence.max(outcome.last_sequence);
        if outcome.acked > 0 {
            self.stats
                .published
                .fetch_add(outcome.acked, Ordering::Relaxed);
        }
        if let Some(position) = outcome.acked_through {
            self.published = Some(position);
            // After a failure, keep what was acked before retrying.
            self.save_checkpoint(outcome.error.is_some()).await?;
            if outcome.error.is_none() {
                self.publish_heads(position).await?;
            }
        }
        match outcome.error {
            None => Ok(()),
            Some(error) => {
                self.stats.ack_failures.fetch_add(1, Ordering::Relaxed);
                // The stream may be gone (deleted, or a new server): look
                // again next time.
                self.stream_ready = false;
                Err(FollowerError::Output(error))
            }
        }
    }
}

impl NatsPublisher {
    /// Stores the position published if it moved, at most once per
    /// [`CHECKPOINT_SAVE_INTERVAL`] unless `now`.
    async fn save_checkpoint(&mut self, now: bool) -> Result<(), FollowerError> {
        let Some(position) = self.published else {
            return Ok(());
        };
        let (saved, saved_at) = self.saved;
        if position > saved && (now || saved_at.elapsed() >= CHECKPOINT_SAVE_INTERVAL) {
            Store::save_follower_position(&self.store, NATS_FOLLOWER, self.partition, position)
                .await?;
            self.saved = (position, Instant::now());
            self.stats.checkpoints_saved.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Publishes the signed heads (checkpoints) up to `through` not yet
    /// published, on [`NatsConfig::checkpoint_subject`], after the events
    /// they sign (`Nats-Msg-Id` `checkpoint:<partition>:<position>`, body
    /// the checkpoint as JSON), so a witness can follow the stream.
    async fn publish_heads(&mut self, through: i64) -> Result<(), FollowerError> {
        let published = match self.heads_published {
            Some(position) => position,
            None => {
                Store::follower_position(&self.store, NATS_HEADS_FOLLOWER, self.partition).await?
            }
        };
        self.heads_published = Some(published);
        if through <= published {
            return Ok(());
        }
        // Heads are signed every 1,000 events or so: look for them at most
        // every `CHECKPOINT_SAVE_INTERVAL` while events keep coming.
        if self
            .heads_checked_at
            .is_some_and(|at| at.elapsed() < CHECKPOINT_SAVE_INTERVAL)
        {
            return Ok(());
        }
        self.heads_checked_at = Some(Instant::now());
        let heads = self
            .store
            .signed_checkpoints(self.partition, published, 1_000)
            .await?;
        if heads.iter().any(|c| c.position <= through) {
            self.ensure_stream().await?;
        }
        let mut last = None;
        for checkpoint in heads.iter().filter(|c| c.position <= through) {
            self.publish_head(checkpoint).await?;
            last = Some(checkpoint.position);
        }
        if let Some(position) = last {
            Store::save_follower_position(
                &self.store,
                NATS_HEADS_FOLLOWER,
                self.partition,
                position,
            )
            .await?;
            self.heads_published = Some(position);
        }
        Ok(())
    }

    /// Publishes one signed head on the checkpoint subject and waits for
    /// its ack (de-duplicated by partition and position).
    async fn publish_head(
        &mut self,
        checkpoint: &seatledger_schema::Checkpoint,
    ) -> Result<(), FollowerError> {
        let body = serde_json::to_vec(checkpoint)
            .map_err(|error| FollowerError::Output(error.to_string()))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!(
                "checkpoint:{}:{}",
                checkpoint.partition, checkpoint.position
            )
            .as_str(),
        );
        headers.insert(CHECKPOINT_HEADER, "1");
        headers.insert(
            "Seatledger-Partition",
            checkpoint.partition.to_string().as_str(),
        );
        headers.insert(
            "Seatledger-Position",
            checkpoint.position.to_string().as_str(),
        );
        let publish_error = |error: String| {
            FollowerError::Output(format!(
                "publishing the signed head at position {}: {error}",
                checkpoint.position
            ))
        };
        let acked = self
            .jetstream
            .publish_with_headers(self.config.checkpoint_subject(), headers, body.into())
            .await
            .map_err(|error| publish_error(error.to_string()))?
            .await;
        match acked {
            Ok(ack) => {
                self.acked_sequence = self.acked_sequence.max(ack.sequence);
                Ok(())
            }
            Err(error) => {
                self.stream_ready = false;
                Err(publish_error(error.to_string()))
            }
        }
    }
}

/// What publishing a range achieved.
#[derive(Debug)]
pub struct RangeOutcome {
    /// Acks received, in order, before the first failure.
    pub acked: u64,
    /// The position of the last event acked with every earlier one.
    pub acked_through: Option<i64>,
    /// Of those, how many JetStream reported as duplicates.
    pub duplicates: u64,
    /// The highest stream sequence among the acks (0: none).
    pub last_sequence: u64,
    pub error: Option<String>,
}

/// Publishes `events` in order with at most `config.window` acks in
/// flight, stopping at the first failure. Used by the publisher and by
/// `seatledger-replay republish` (same subjects, headers and ids).
pub async fn publish_range<P: serde::Serialize, M: serde::Serialize>(
    jetstream: &jetstream::Context,
    config: &NatsConfig,
    events: &[RecordedEvent<P, M>],
) -> RangeOutcome {
    let window = config.window.clamp(1, PUBLISH_WINDOW_MAX);
    let mut outcome = RangeOutcome {
        acked: 0,
        acked_through: None,
        duplicates: 0,
        last_sequence: 0,
        error: None,
    };
    let mut in_flight = VecDeque::with_capacity(window);
    let mut next = events.iter();
    loop {
        while outcome.error.is_none() && in_flight.len() < window {
            let Some(event) = next.next() else { break };
            let message = match message(config, event) {
                Ok(message) => message,
                Err(error) => {
                    outcome.error = Some(error);
                    return outcome;
                }
            };
            let sent = jetstream
                .publish_with_headers(message.subject, message.headers, message.payload)
                .await;
            match sent {
                Ok(ack) => in_flight.push_back((event.position, ack)),
                Err(error) => {
                    outcome.error =
                        Some(format!("publishing position {}: {error}", event.position));
                    break;
                }
            }
        }
        let Some((position, ack)) = in_flight.pop_front() else {
            return outcome;
        };
        match ack.await {
            Ok(ack) => {
                outcome.acked += 1;
                outcome.duplicates += u64::from(ack.duplicate);
                outcome.last_sequence = outcome.last_sequence.max(ack.sequence);
                outcome.acked_through = Some(position);
            }
            Err(error) => {
                outcome.error = Some(format!("no ack for position {position}: {error}"));
                return outcome;
            }
        }
        if outcome.error.is_some() && in_flight.is_empty() {
            return outcome;
        }
    }
}

/// One event as a JetStream message.
#[derive(Debug)]
pub struct Message {
    pub subject: String,
    pub headers: async_nats::HeaderMap,
    pub payload: bytes::Bytes,
}

/// `event`'s message: subject, headers and body (the envelope as JSON).
pub fn message<P: serde::Serialize, M: serde::Serialize>(
    config: &NatsConfig,
    event: &RecordedEvent<P, M>,
) -> Result<Message, String> {
    // Most envelopes are 600-900 bytes: one allocation instead of a few.
    let mut payload = Vec::with_capacity(1024);
    serde_json::to_writer(&mut payload, event)
        .map_err(|error| format!("event {} cannot be encoded: {error}", event.position))?;
    Ok(Message {
        subject: config.subject(event),
        headers: headers(event),
        payload: payload.into(),
    })
}

/// The header names of an event's message, built once: from a `&str`,
/// each insert would validate and copy its name again (a tenth of the
/// publisher's CPU per event, measured).
const PARTITION_HEADER: HeaderName = HeaderName::from_static("Seatledger-Partition");
const POSITION_HEADER: HeaderName = HeaderName::from_static("Seatledger-Position");
const STREAM_ID_HEADER: HeaderName = HeaderName::from_static("Seatledger-Stream-Id");
const EVENT_TYPE_HEADER: HeaderName = HeaderName::from_static("Seatledger-Event-Type");

/// The headers of `event`'s message.
pub fn headers<P, M>(event: &RecordedEvent<P, M>) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, event.event_id.to_string());
    headers.insert(PARTITION_HEADER, event.partition.to_string());
    headers.insert(POSITION_HEADER, event.position.to_string());
    headers.insert(STREAM_ID_HEADER, event.stream_id.clone());
    headers.insert(EVENT_TYPE_HEADER, event.event_type.clone());
    headers
}

/// What a republish did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Republished {
    /// Events sent and acknowledged.
    pub events: u64,
    /// Of those, how many JetStream already held (dropped as duplicates
    /// within its window).
    pub duplicates: u64,
}

/// Positions read from the log per range while republishing.
const REPUBLISH_RANGE: i64 = 1_000;

/// Resends positions `from..=to` of `partition` (to the head without `to`)
/// from the log, with their original `Nats-Msg-Id`s, creating the stream
/// if missing; `progress` is called with each position reached. For a
/// JetStream that lost data, or a new one: consumers dedupe what they had.
pub async fn republish(
    store: &Store,
    partition: i16,
    jetstream: &jetstream::Context,
    config: &NatsConfig,
    from: i64,
    to: Option<i64>,
    mut progress: impl FnMut(i64),
) -> Result<Republished, String> {
    jetstream
        .get_or_create_stream(config.stream_config())
        .await
        .map_err(|error| format!("cannot create JetStream stream {}: {error}", config.stream))?;
    let (head, _) = store
        .head(partition)
        .await
        .map_err(|error| error.to_string())?;
    let to = to.unwrap_or(head).min(head);
    let mut position = from.max(1) - 1;
    let mut done = Republished::default();
    while position < to {
        let through = to.min(position + REPUBLISH_RANGE);
        let events = store
            .read_range_raw(partition, position, through)
            .await
            .map_err(|error| error.to_string())?;
        let outcome = publish_range(jetstream, config, &events).await;
        done.events += outcome.acked;
        done.duplicates += outcome.duplicates;
        if let Some(error) = outcome.error {
            return Err(error);
        }
        position = through;
        progress(position);
    }
    Ok(done)
}
