//! seatledger-replay: auditor tools. `verify` proves the log was not
//! altered: gap-free positions, every `prev_hash` link and every hash
//! recomputed from the event's canonical bytes, and every signed checkpoint
//! verified with the ledger's public key against the chain.
//!
//! Reading and verifying overlap: one task reads the next batch while the
//! caller verifies the current one.
//!
//! `usage` recomputes billing from the log with the billing fold
//! (`seatledger-projections`), the same code a live billing follower runs,
//! so a live report can be checked against a replayed one.
#![forbid(unsafe_code)]

pub mod at;

use seatledger_ledger::{Store, StoreError};
use seatledger_projections::{BillingFold, Granularity, UsageRow};
use seatledger_schema::canonical::expected_hash;
use seatledger_schema::{
    ChainError, ChainHash, Checkpoint, CheckpointError, DecodeError, RecordedEvent, Timestamp,
};
use std::collections::{HashMap, VecDeque};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Events read per batch, and batches read at once.
pub const VERIFY_BATCH: i64 = 10_000;
pub const READS_IN_FLIGHT: usize = 3;

#[derive(Debug)]
pub struct Verified {
    pub events: i64,
    pub head_hash: ChainHash,
    pub checkpoints: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] seatledger_ledger::StoreError),
    #[error("the chain is broken: {0}")]
    Chain(#[from] ChainError),
    #[error("checkpoint at position {position} signs hash {signed} but the chain has {actual}")]
    CheckpointMismatch {
        position: i64,
        signed: ChainHash,
        actual: ChainHash,
    },
    #[error("checkpoint at position {0} is beyond the last event")]
    CheckpointBeyondHead(i64),
    #[error(transparent)]
    Signature(#[from] CheckpointError),
    #[error("event at position {position} cannot be decoded: {source}")]
    Undecodable {
        position: i64,
        #[source]
        source: DecodeError,
    },
    #[error(
        "event at position {position} is version {got} of stream {stream_id}, expected {expected}"
    )]
    StreamVersionGap {
        position: i64,
        stream_id: String,
        expected: i64,
        got: i64,
    },
    #[error(
        "stream {stream_id}: its streams row says version {stored}, its events end at {replayed}"
    )]
    StreamVersionMismatch {
        stream_id: String,
        stored: i64,
        replayed: i64,
    },
    #[error("stream {stream_id}: the snapshot at version {version} is not the state its events replay to")]
    SnapshotMismatch { stream_id: String, version: i64 },
}

/// Stream versions follow each other from 1 in every stream, each
/// `streams` row ends where its events end, and each stored snapshot is
/// the state its stream's events replay to at the snapshot's version. Only
/// the streams with a snapshot keep a state, and only until that version.
struct StreamCheck {
    versions: HashMap<String, i64>,
    /// Snapshot version and the state replayed so far, per stream still to
    /// reach its snapshot.
    pending: HashMap<String, (i64, seatledger_ledger::domain::StreamState)>,
}

impl StreamCheck {
    fn new(stored: &HashMap<String, (i64, Option<i64>)>) -> StreamCheck {
        StreamCheck {
            versions: HashMap::new(),
            pending: stored
                .iter()
                .filter_map(|(stream_id, (_, snapshot))| {
                    snapshot.map(|version| (stream_id.clone(), (version, Default::default())))
                })
                .collect(),
        }
    }

    async fn apply(&mut self, store: &Store, event: &RecordedEvent) -> Result<(), VerifyError> {
        // No allocation for a stream already seen (verify's hot path).
        if !self.versions.contains_key(&event.stream_id) {
            self.versions.insert(event.stream_id.clone(), 0);
        }
        let Some(version) = self.versions.get_mut(&event.stream_id) else {
            return Ok(());
        };
        if event.stream_version != *version + 1 {
            return Err(VerifyError::StreamVersionGap {
                position: event.position,
                stream_id: event.stream_id.clone(),
                expected: *version + 1,
                got: event.stream_version,
            });
        }
        *version = event.stream_version;
        let Some((snapshot_version, state)) = self.pending.get_mut(&event.stream_id) else {
            return Ok(());
        };
        let decoded = event.event().map_err(|source| VerifyError::Undecodable {
            position: event.position,
            source,
        })?;
        *state = seatledger_ledger::domain::evolve(std::mem::take(state), &decoded);
        if event.stream_version < *snapshot_version {
            return Ok(());
        }
        let snapshot_version = *snapshot_version;
        let Some((_, replayed)) = self.pending.remove(&event.stream_id) else {
            return Ok(());
        };
        let mismatch = || VerifyError::SnapshotMismatch {
            stream_id: event.stream_id.clone(),
            version: snapshot_version,
        };
        let stored = store
            .stream_snapshot(&event.stream_id)
            .await?
            .filter(|(version, _)| *version == snapshot_version)
            .ok_or_else(mismatch)?;
        let replayed = serde_json::to_value(&replayed)
            .map_err(|e| seatledger_ledger::StoreError::Corrupt(e.to_string()))?;
        if replayed != stored.1 {
            return Err(mismatch());
        }
        Ok(())
    }

    fn finish(self, stored: &HashMap<String, (i64, Option<i64>)>) -> Result<(), VerifyError> {
        for (stream_id, (stored_version, _)) in stored {
            let replayed = self.versions.get(stream_id).copied().unwrap_or(0);
            if replayed != *stored_version {
                return Err(VerifyError::StreamVersionMismatch {
                    stream_id: stream_id.clone(),
                    stored: *stored_version,
                    replayed,
                });
            }
        }
        if let Some((stream_id, replayed)) = self
            .versions
            .iter()
            .find(|(stream_id, _)| !stored.contains_key(*stream_id))
        {
            return Err(VerifyError::StreamVersionMismatch {
                stream_id: stream_id.clone(),
                stored: 0,
                replayed: *replayed,
            });
        }
        if let Some((stream_id, (version, _))) = self.pending.into_iter().next() {
            return Err(VerifyError::SnapshotMismatch { stream_id, version });
        }
        Ok(())
    }
}

/// What is wrong with one event, found without looking at its neighbours.
#[derive(Debug)]
enum BadEvent {
    HashMismatch,
    Undecodable(DecodeError),
}

/// The first event whose stored hash is not the hash of its content and
/// `prev_hash`, or that does not decode into an event seatledger can
/// replay, computed on all cores.
fn first_bad_event(events: &[RecordedEvent]) -> Option<(i64, BadEvent)> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(1);
    let chunk = events.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = events
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter().find_map(|event| {
                        if expected_hash(event) != event.hash {
                            return Some((event.position, BadEvent::HashMismatch));
                        }
                        event
                            .event()
                            .err()
                            .map(|error| (event.position, BadEvent::Undecodable(error)))
                    })
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|worker| worker.join().ok().flatten())
            .min_by_key(|(position, _)| *position)
    })
}

/// Reads a partition in position order up to a head, in bounded ranges of
/// `VERIFY_BATCH` events with `READS_IN_FLIGHT` reads under way.
///
/// Positions are meant to be gap-free (verify checks it), so the ranges of
/// the next batches are known in advance; a gap or reorder still shows up
/// to the caller as a position out of sequence.
pub struct LogReader {
    store: Store,
    partition: i16,
    through: i64,
    next_after: i64,
    pending: VecDeque<JoinHandle<Result<Vec<RecordedEvent>, StoreError>>>,
}

impl LogReader {
    /// A reader of positions `1..=through` of `partition`.
    pub fn new(store: &Store, partition: i16, through: i64) -> LogReader {
        let mut reader = LogReader {
            store: store.clone(),
            partition,
            through,
            next_after: 0,
            pending: VecDeque::new(),
        };
        reader.refill();
        reader
    }

    fn refill(&mut self) {
        while self.pending.len() < READS_IN_FLIGHT && self.next_after < self.through {
            let reader = self.store.clone();
            let (partition, after) = (self.partition, self.next_after);
            let through = (after + VERIFY_BATCH).min(self.through);
            self.pending.push_back(tokio::spawn(async move {
                reader.read_range(partition, after, through).await
            }));
            self.next_after = through;
        }
    }

    /// The next batch (possibly empty where the log has a gap), or `None`
    /// past `through`.
    pub async fn next(&mut self) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        let Some(next) = self.pending.pop_front() else {
            return Ok(None);
        };
        let batch = next
            .await
            .map_err(|e| StoreError::Corrupt(e.to_string()))??;
        self.refill();
        Ok(Some(batch))
    }
}

impl Drop for LogReader {
    /// Reads still under way when the caller stops early are not needed.
    fn drop(&mut self) {
        for read in &self.pending {
            read.abort();
        }
    }
}

/// Verifies partition `partition` of `store` from position 0. `key` is the
/// `(key_id, raw Ed25519 public key)` checkpoints must be signed with.
pub async fn verify(
    store: &Store,
    partition: i16,
    key: (&str, &[u8]),
) -> Result<Verified, VerifyError> {
    let checkpoints: HashMap<i64, Checkpoint> = store
        .checkpoints(partition)
        .await?
        .into_iter()
        .map(|c| (c.position, c))
        .collect();
    let mut position = 0i64;
    let mut hash = ChainHash::GENESIS;
    let mut checked = 0usize;
    let (head_position, _) = store.head(partition).await?;
    let stored_streams = store.stream_versions_of(partition).await?;
    let mut streams = StreamCheck::new(&stored_streams);
    let mut reader = LogReader::new(store, partition, head_position);
    while let Some(batch) = reader.next().await? {
        if batch.is_empty() {
            continue;
        }
        // Hashes are independent given each event's own `prev_hash`:
        // recompute them on every core, then check positions and links in
        // order (cheap).
        let batch = std::sync::Arc::new(batch);
        let mut bad = tokio::task::spawn_blocking({
            let batch = batch.clone();
            move || first_bad_event(&batch)
        })
        .await
        .map_err(|e| seatledger_ledger::StoreError::Corrupt(e.to_string()))?;
        for event in batch.iter() {
            if event.position != position + 1 {
                return Err(ChainError::PositionGap {
                    position: event.position,
                    expected: position + 1,
                }
                .into());
            }
            if event.prev_hash != hash {
                return Err(ChainError::BrokenLink {
                    position: event.position,
                }
                .into());
            }
            if let Some((_, problem)) = bad.take_if(|(at, _)| *at == event.position) {
                return Err(match problem {
                    BadEvent::HashMismatch => ChainError::HashMismatch {
                        position: event.position,
                    }
                    .into(),
                    // The chain may be intact, but an event no version can
                    // replay makes the log unusable for billing and audit.
                    BadEvent::Undecodable(source) => VerifyError::Undecodable {
                        position: event.position,
                        source,
                    },
                });
            }
            position = event.position;
            hash = event.hash;
            streams.apply(store, event).await?;
            if let Some(checkpoint) = checkpoints.get(&position) {
                if checkpoint.hash != hash {
                    return Err(VerifyError::CheckpointMismatch {
                        position,
                        signed: checkpoint.hash,
                        actual: hash,
                    });
                }
                checkpoint.verify(key.0, key.1)?;
                checked += 1;
            }
        }
    }
    if let Some(beyond) = checkpoints.keys().find(|p| **p > position) {
        return Err(VerifyError::CheckpointBeyondHead(*beyond));
    }
    streams.finish(&stored_streams)?;
    Ok(Verified {
        events: position,
        head_hash: hash,
        checkpoints: checked,
    })
}

/// An event the billing fold could not read: its tenant's usage is
/// incomplete, every other tenant's is not affected.
#[derive(Debug)]
pub struct UndecodableEvent {
    pub position: i64,
    pub tenant_id: Uuid,
    pub error: DecodeError,
}

/// Usage rows of the tenants whose every event was read, and the events
/// that could not be (their tenants have no rows: a partial bill is worse
/// than none).
#[derive(Debug, Default)]
pub struct UsageReport {
    pub rows: Vec<UsageRow>,
    pub undecodable: Vec<UndecodableEvent>,
}

impl UsageReport {
    /// Tenants with an undecodable event, in position order, once each.
    pub fn incomplete_tenants(&self) -> Vec<Uuid> {
        let mut tenants = Vec::new();
        for event in &self.undecodable {
            if !tenants.contains(&event.tenant_id) {
                tenants.push(event.tenant_id);
            }
        }
        tenants
    }
}

/// Usage recomputed from the log: the billing fold over every event of
/// `partition` up to its head, reported as of `as_of`. Without `as_of`, as
/// of the last event's `occurred_at`, so the same log always gives the same
/// report (leases still open count up to that instant, or their expiry).
/// An event that cannot be decoded is reported with its position and
/// tenant; the fold goes on with every other tenant.
pub async fn usage(
    store: &Store,
    partition: i16,
    granularity: Granularity,
    as_of: Option<Timestamp>,
) -> Result<UsageReport, StoreError> {
    let (head, _) = store.head(partition).await?;
    let mut usage = UsageBuilder::new(granularity);
    let mut reader = LogReader::new(store, partition, head);
    while let Some(batch) = reader.next().await? {
        usage.push(&batch);
    }
    Ok(usage.finish(as_of))
}

/// The usage fold over events from any source (the log, JetStream), in
/// position order.
pub struct UsageBuilder {
    fold: BillingFold,
    last: Option<Timestamp>,
    undecodable: Vec<UndecodableEvent>,
}

impl UsageBuilder {
    pub fn new(granularity: Granularity) -> UsageBuilder {
        UsageBuilder {
            fold: BillingFold::new(granularity),
            last: None,
            undecodable: Vec::new(),
        }
    }

    pub fn push(&mut self, events: &[RecordedEvent]) {
        for record in events {
            if let Err(error) = self.fold.apply(record) {
                self.undecodable.push(UndecodableEvent {
                    position: record.position,
                    tenant_id: record.tenant_id,
                    error,
                });
            }
            self.last = Some(record.occurred_at);
        }
    }

    /// The report as of `as_of` (default: the last event's time).
    pub fn finish(self, as_of: Option<Timestamp>) -> UsageReport {
        let as_of = as_of.or(self.last).unwrap_or(Timestamp::UNIX_EPOCH);
        let mut report = UsageReport {
            rows: self.fold.report(as_of),
            undecodable: self.undecodable,
        };
        let incomplete = report.incomplete_tenants();
        report.rows.retain(|row| !incomplete.contains(&row.org_id));
        report
    }
}

/// Usage recomputed from JetStream instead of the log: every message of
/// `stream`, through the consumer library (repeats dropped; a gap is an
/// error: republish the range first). Same report as [`usage`] on the same
/// events.
pub async fn usage_from_nats(
    client: async_nats::Client,
    stream: &str,
    granularity: Granularity,
    as_of: Option<Timestamp>,
) -> Result<UsageReport, seatledger_projections::ConsumerError> {
    let mut consumer = seatledger_projections::EventConsumer::from_start(client, stream).await?;
    let mut usage = UsageBuilder::new(granularity);
    loop {
        let events = consumer
            .fetch(1_000, std::time::Duration::from_secs(1))
            .await?;
        if events.is_empty() && consumer.pending().await? == 0 {
            break;
        }
        usage.push(&events);
    }
    Ok(usage.finish(as_of))
}

/// The rows of one organization (all without `org`) whose period overlaps
/// `[from, to)` (unbounded where absent).
pub fn select_usage(
    rows: Vec<UsageRow>,
    org: Option<Uuid>,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
) -> Vec<UsageRow> {
    rows.into_iter()
        .filter(|row| org.is_none_or(|org| row.org_id == org))
        .filter(|row| from.is_none_or(|from| row.period_end > from))
        .filter(|row| to.is_none_or(|to| row.period_start < to))
        .collect()
}

pub use seatledger_projections::billing::usage_csv;
