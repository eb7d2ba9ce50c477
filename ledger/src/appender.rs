//! The group-commit appender: the only writer of the log (DESIGN §3).
//!
//! Callers `submit` a command and await its result. One task per partition
//! drains up to `batch_max` queued commands, opens one transaction, takes
//! the partition lock (`pg_advisory_xact_lock`; an in-process mutex and
//! `BEGIN IMMEDIATE` on SQLite), checks its cached stream states against
//! `streams.version`, decides every command in order against the evolving
//! state, assigns consecutive positions and chain hashes, writes all events
//! in one statement, updates `streams` (and snapshots), records idempotent
//! commands, maybe signs a checkpoint, commits, and only then answers.
//!
//! So: no optimistic-concurrency retries, no races (decide sees the true
//! state, also across replicas), gap-free positions in commit order, and
//! throughput set by batch size rather than commit latency. A rejection is
//! a value in its command's result; it never fails its neighbours. A store
//! failure fails the whole batch and nothing of it is written.

use crate::clock::Clock;
use crate::domain::{decide, evolve, Command, Lease, LicenseView, Rejection, StreamState};
use crate::keys::SigningKey;
use crate::store::{CommandWrite, Store, StoreError, StreamWrite};
use seatledger_schema::canonical::expected_hash;
use seatledger_schema::{limits, ChainHash, Metadata, RecordedEvent, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use uuid::Uuid;

/// A command with who asks and how to recognise a retry.
#[derive(Clone, Debug)]
pub struct Submission {
    pub tenant_id: Uuid,
    pub command: Command,
    /// The client's idempotency key, if any.
    pub command_id: Option<String>,
    /// Identifies the request behind `command_id` (see `request_hash`): the
    /// same key with a different hash is `idempotency_key_reused`.
    pub request_hash: [u8; 32],
    pub metadata: Metadata,
}

impl Submission {
    /// A submission without an idempotency key.
    pub fn new(tenant_id: Uuid, command: Command) -> Self {
        Submission {
            tenant_id,
            command,
            command_id: None,
            request_hash: [0; 32],
            metadata: Metadata::default(),
        }
    }

    pub fn with_command_id(
        mut self,
        command_id: impl Into<String>,
        request_hash: [u8; 32],
    ) -> Self {
        self.command_id = Some(command_id.into());
        self.request_hash = request_hash;
        self
    }

    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}

/// SHA-256 over length-prefixed parts: what identifies a request for
/// idempotency (for HTTP: method, path and body).
pub fn request_hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    let mut out = [0; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// What a command did: its events (possibly none), its rejection if it was
/// refused, and the license as it stands after it (for license commands).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub events: Vec<RecordedEvent>,
    pub rejection: Option<Rejection>,
    pub license: Option<LicenseView>,
    /// The lease the command granted or extended (acquire, heartbeat), as
    /// it stands after the command.
    pub lease: Option<Lease>,
    /// True when this is the recorded result of an earlier identical
    /// request with the same idempotency key.
    #[serde(skip)]
    pub replayed: bool,
}

impl CommandResult {
    fn rejected(rejection: Rejection) -> Self {
        CommandResult {
            events: Vec::new(),
            rejection: Some(rejection),
            license: None,
            lease: None,
            replayed: false,
        }
    }

    pub fn is_accepted(&self) -> bool {
        self.rejection.is_none()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("the appender has shut down")]
    ShutDown,
}

impl AppendError {
    pub fn is_unavailable(&self) -> bool {
        match self {
            AppendError::Store(error) => error.is_unavailable(),
            AppendError::ShutDown => true,
        }
    }
}

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
}

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
        }
    }
}

/// Counters for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct AppenderStats {
    pub batches: AtomicU64,
    pub commands: AtomicU64,
    pub events: AtomicU64,
    pub failed_batches: AtomicU64,
    pub commit_micros_total: AtomicU64,
    pub checkpoints: AtomicU64,
}

/// Tells followers the last committed position they may read up to.
/// Cheap to clone; advanced by the appender after each commit and, on
/// PostgreSQL, by `listen` for commits of other replicas.
#[derive(Clone, Debug)]
pub struct CommitNotifier(Arc<watch::Sender<i64>>);

impl Default for CommitNotifier {
    fn default() -> Self {
        CommitNotifier(Arc::new(watch::channel(0).0))
    }
}

impl CommitNotifier {
    pub fn advance(&self, position: i64) {
        self.0.send_if_modified(|current| {
            if position > *current {
                *current = position;
                true
            } else {
                false
            }
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.0.subscribe()
    }

    pub fn position(&self) -> i64 {
        *self.0.borrow()
    }
}

struct Job {
    submission: Submission,
    reply: oneshot::Sender<Result<CommandResult, AppendError>>,
}

/// The handle callers hold. Clones share the queue; when the last clone is
/// dropped the task drains what is queued, commits it and stops.
#[derive(Clone)]
pub struct Appender {
    sender: mpsc::Sender<Job>,
    notifier: CommitNotifier,
    stats: Arc<AppenderStats>,
}

impl Appender {
    /// Starts the appender task of `config.partition`.
    pub fn start(
        store: Store,
        signer: Arc<SigningKey>,
        clock: Arc<dyn Clock>,
        notifier: CommitNotifier,
        config: AppenderConfig,
    ) -> (Appender, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let stats = Arc::new(AppenderStats::default());
        let worker = Worker {
            store: store.for_appender(config.lock_timeout),
            signer,
            clock,
            notifier: notifier.clone(),
            stats: stats.clone(),
            cache: HashMap::new(),
            last_checkpoint_at: Instant::now(),
            uncheckpointed: false,
            config,
        };
        let handle = tokio::spawn(worker.run(receiver));
        (
            Appender {
                sender,
                notifier,
                stats,
            },
            handle,
        )
    }

    /// Decides and durably records `submission`; resolves after the commit.
    pub async fn submit(&self, submission: Submission) -> Result<CommandResult, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Job { submission, reply })
            .await
            .map_err(|_| AppendError::ShutDown)?;
        answer.await.map_err(|_| AppendError::ShutDown)?
    }

    pub fn notifier(&self) -> &CommitNotifier {
        &self.notifier
    }

    pub fn stats(&self) -> &AppenderStats {
        &self.stats
    }
}

struct CachedStream {
    version: i64,
    state: StreamState,
}

struct Worker {
    store: Store,
    signer: Arc<SigningKey>,
    clock: Arc<dyn Clock>,
    notifier: CommitNotifier,
    stats: Arc<AppenderStats>,
    cache: HashMap<String, CachedStream>,
    last_checkpoint_at: Instant,
    /// Events were committed since the last checkpoint this worker wrote.
    uncheckpointed: bool,
    config: AppenderConfig,
}

impl Worker {
    async fn run(mut self, mut receiver: mpsc::Receiver<Job>) {
        loop {
            let first = if self.uncheckpointed {
                let deadline = self.last_checkpoint_at + self.config.checkpoint_interval;
                tokio::select! {
                    job = receiver.recv() => job,
                    _ = tokio::time::sleep_until(deadline) => {
                        self.checkpoint_idle().await;
                        continue;
                    }
                }
            } else {
                receiver.recv().await
            };
            let Some(first) = first else { break };
            let mut batch = Vec::with_capacity(self.config.batch_max.min(64));
            batch.push(first);
            while batch.len() < self.config.batch_max {
                match receiver.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if !self.config.linger.is_zero() {
                let deadline = Instant::now() + self.config.linger;
                while batch.len() < self.config.batch_max {
                    match tokio::time::timeout_at(deadline, receiver.recv()).await {
                        Ok(Some(job)) => batch.push(job),
                        _ => break,
                    }
                }
            }
            self.process(batch).await;
        }
        if self.uncheckpointed {
            self.checkpoint_idle().await;
        }
    }

    async fn process(&mut self, batch: Vec<Job>) {
        let (submissions, replies): (Vec<Submission>, Vec<_>) = batch
            .into_iter()
            .map(|job| (job.submission, job.reply))
            .unzip();
        match self.commit_timed(&submissions).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    // A caller that gave up still had its command committed.
                    let _ = reply.send(Ok(result));
                }
            }
            // The database refused something in the batch (not an outage):
            // retry each command alone, so one poisonous command fails by
            // itself instead of failing its neighbours every time.
            Err(error) if !error.is_unavailable() && submissions.len() > 1 => {
                tracing::warn!(error = %error, commands = submissions.len(), "appender batch failed; retrying its commands one by one");
                for (submission, reply) in submissions.into_iter().zip(replies) {
                    let result = self
                        .commit_timed(std::slice::from_ref(&submission))
                        .await
                        .map(|mut results| results.remove(0))
                        .map_err(|error| {
                            tracing::warn!(error = %error, command = submission.command.kind(), "command failed alone; nothing of it was written");
                            AppendError::Store(Arc::new(error))
                        });
                    let _ = reply.send(result);
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, commands = submissions.len(), "appender batch failed; nothing of it was written");
                let error = AppendError::Store(Arc::new(error));
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// `commit` with the batch counters.
    async fn commit_timed(
        &mut self,
        submissions: &[Submission],
    ) -> Result<Vec<CommandResult>, StoreError> {
        let now = self.clock.now();
        let started = std::time::Instant::now();
        let result = self.commit(submissions, now).await;
        match &result {
            Ok(_) => {
                let elapsed = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .commands
                    .fetch_add(submissions.len() as u64, Ordering::Relaxed);
                self.stats
                    .commit_micros_total
                    .fetch_add(elapsed, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// One batch in one transaction. States taken out of the cache are put
    /// back only after the commit, so a failed batch leaves no trace in
    /// memory either.
    async fn commit(
        &mut self,
        submissions: &[Submission],
        now: Timestamp,
    ) -> Result<Vec<CommandResult>, StoreError> {
        let partition = self.config.partition;
        let mut tx = self.store.begin_batch(partition).await?;

        let mut stream_ids: Vec<String> = Vec::new();
        for submission in submissions {
            let id = submission.command.stream_id().to_string();
            if !stream_ids.contains(&id) {
                stream_ids.push(id);
            }
        }
        let ((head_position, head_hash), versions) =
            tx.head_and_versions(partition, &stream_ids).await?;
        let mut working: HashMap<String, CachedStream> = HashMap::with_capacity(stream_ids.len());
        for stream_id in &stream_ids {
            let stored_version = versions.get(stream_id).copied().unwrap_or(0);
            let stream = match self.cache.remove(stream_id) {
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
                            state: serde_json::from_value(state).map_err(|e| {
                                StoreError::Corrupt(format!("snapshot of {stream_id}: {e}"))
                            })?,
                        },
                        None => CachedStream {
                            version: 0,
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
            working.insert(stream_id.clone(), stream);
        }

        let mut keys: Vec<(Uuid, String)> = Vec::new();
        for submission in submissions {
            if let Some(command_id) = &submission.command_id {
                let key = (submission.tenant_id, command_id.clone());
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
        }
        let mut recorded = tx.recorded_commands(&keys).await?;

        let mut position = head_position;
        let mut prev_hash = head_hash;
        let mut events: Vec<RecordedEvent> = Vec::new();
        let mut results = Vec::with_capacity(submissions.len());
        let mut command_writes = Vec::new();
        for submission in submissions {
            let key = submission
                .command_id
                .as_ref()
                .map(|id| (submission.tenant_id, id.clone()));
            if let Some((hash, result)) = key.as_ref().and_then(|key| recorded.get(key)) {
                let result = if hash.as_slice() == submission.request_hash.as_slice() {
                    let mut result: CommandResult = serde_json::from_value(result.clone())
                        .map_err(|e| {
                            StoreError::Corrupt(format!("recorded command result: {e}"))
                        })?;
                    result.replayed = true;
                    result
                } else {
                    CommandResult::rejected(Rejection::IdempotencyKeyReused)
                };
                results.push(result);
                continue;
            }
            let stream_id = submission.command.stream_id().to_string();
            let Some(stream) = working.get_mut(&stream_id) else {
                return Err(StoreError::Corrupt(format!("{stream_id} was not loaded")));
            };
            let decision = decide(
                &stream.state,
                submission.tenant_id,
                &submission.command,
                now,
            );
            let first = events.len();
            for event in decision.events {
                position += 1;
                stream.version += 1;
                let mut record = RecordedEvent {
                    partition,
                    position,
                    event_id: Uuid::now_v7(),
                    stream_id: stream_id.clone(),
                    stream_version: stream.version,
                    tenant_id: submission.tenant_id,
                    event_type: event.event_type().to_owned(),
                    schema_version: event.schema_version(),
                    payload: event.payload(),
                    metadata: submission.metadata.clone(),
                    occurred_at: now,
                    recorded_at: now,
                    prev_hash,
                    hash: ChainHash::GENESIS,
                };
                record.hash = expected_hash(&record);
                prev_hash = record.hash;
                stream.state = evolve(std::mem::take(&mut stream.state), &event);
                events.push(record);
            }
            let (license, lease) = match &stream.state {
                StreamState::License(license) => {
                    let touched = events[first..].iter().rev().find_map(|record| {
                        match record.event_type.as_str() {
                            "SeatAcquired" | "SeatHeartbeat" => {
                                record.payload["session_id"].as_str()?.parse::<Uuid>().ok()
                            }
                            _ => None,
                        }
                    });
                    (
                        license.view(now),
                        touched.and_then(|session_id| license.lease(session_id).cloned()),
                    )
                }
                _ => (None, None),
            };
            let result = CommandResult {
                events: events[first..].to_vec(),
                rejection: decision.rejection,
                license,
                lease,
                replayed: false,
            };
            if let Some(key) = key {
                let value = serde_json::to_value(&result)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                recorded.insert(
                    key.clone(),
                    (submission.request_hash.to_vec(), value.clone()),
                );
                command_writes.push(CommandWrite {
                    tenant_id: key.0,
                    command_id: key.1,
                    request_hash: submission.request_hash.to_vec(),
                    result: value,
                });
            }
            results.push(result);
        }
        debug_assert!(events
            .windows(2)
            .all(|pair| pair[1].position == pair[0].position + 1));

        let mut stream_writes = Vec::new();
        for (stream_id, stream) in &working {
            let stored_version = versions.get(stream_id).copied().unwrap_or(0);
            if stream.version == stored_version {
                continue;
            }
            let crossed = stored_version / limits::SNAPSHOT_EVERY_EVENTS
                != stream.version / limits::SNAPSHOT_EVERY_EVENTS;
            let snapshot = if crossed {
                let state = serde_json::to_string(&stream.state)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Some((stream.version, state))
            } else {
                None
            };
            stream_writes.push(StreamWrite {
                stream_id: stream_id.clone(),
                partition,
                version: stream.version,
                snapshot,
            });
        }
        let mut checkpointed = false;
        if position > head_position {
            let every = self.config.checkpoint_every_events.max(1);
            let crossed = head_position / every != position / every;
            let due = self.last_checkpoint_at.elapsed() >= self.config.checkpoint_interval;
            if crossed || due {
                tx.insert_checkpoint(
                    &self
                        .signer
                        .sign_checkpoint(partition, position, prev_hash, now),
                )
                .await?;
                checkpointed = true;
            }
        }
        let notify = (position > head_position).then_some((partition, position));
        tx.write_batch(&events, &stream_writes, &command_writes, notify)
            .await?;
        tx.commit().await?;

        self.stats
            .events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        if checkpointed {
            self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
            self.last_checkpoint_at = Instant::now();
            self.uncheckpointed = false;
        } else if position > head_position {
            self.uncheckpointed = true;
        }
        self.cache.extend(working);
        self.bound_cache();
        self.notifier.advance(position);
        Ok(results)
    }

    /// Signs the head if events were committed since the last checkpoint
    /// (the "or 10 s" of DESIGN §3 when traffic stops).
    async fn checkpoint_idle(&mut self) {
        let partition = self.config.partition;
        let result: Result<bool, StoreError> = async {
            let mut tx = self.store.begin_batch(partition).await?;
            let (position, hash) = tx.head(partition).await?;
            let last = tx.last_checkpoint_position(partition).await?;
            let write = position > last;
            if write {
                tx.insert_checkpoint(&self.signer.sign_checkpoint(
                    partition,
                    position,
                    hash,
                    self.clock.now(),
                ))
                .await?;
            }
            tx.commit().await?;
            Ok(write)
        }
        .await;
        match result {
            Ok(written) => {
                if written {
                    self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                }
                self.uncheckpointed = false;
            }
            Err(error) => tracing::warn!(error = %error, "writing a checkpoint failed; will retry"),
        }
        self.last_checkpoint_at = Instant::now();
    }

    fn bound_cache(&mut self) {
        if self.cache.len() <= limits::APPENDER_CACHED_STREAMS_MAX {
            return;
        }
        let keep = limits::APPENDER_CACHED_STREAMS_MAX * 3 / 4;
        let excess: Vec<String> = self.cache.keys().skip(keep).cloned().collect();
        for stream_id in excess {
            self.cache.remove(&stream_id);
        }
    }
}

fn fold(mut stream: CachedStream, events: &[RecordedEvent]) -> Result<CachedStream, StoreError> {
    for record in events {
        if record.stream_version != stream.version + 1 {
            return Err(StoreError::Corrupt(format!(
                "{}: version {} follows {}",
                record.stream_id, record.stream_version, stream.version
            )));
        }
        let event = record
            .event()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        stream.state = evolve(std::mem::take(&mut stream.state), &event);
        stream.version = record.stream_version;
    }
    Ok(stream)
}
