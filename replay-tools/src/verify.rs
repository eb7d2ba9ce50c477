//! `verify`: the log proved unaltered, batch by batch, with reads
//! overlapping the checks.

use crate::events::{EventStream, ReadArchive};
pub use crate::read::{LogReader, READS_IN_FLIGHT, VERIFY_BATCH};
use seatledger_ledger::archive::{SharedCheck, SnapshotRow};
use seatledger_ledger::{Store, StoreError};
use seatledger_schema::canonical::expected_hash;
use seatledger_schema::{
    ChainError, ChainHash, Checkpoint, CheckpointError, DecodeError, RecordedEvent,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

#[derive(Debug)]
pub struct Verified {
    pub events: i64,
    pub head_hash: ChainHash,
    pub checkpoints: usize,
    /// Witnessed heads the log was checked against.
    pub witnessed: usize,
    /// Events after the last signed checkpoint.
    pub unsigned_tail: i64,
    /// The trusted checkpoint the check started from (0: position 1).
    pub since: i64,
    /// Archive files read (pruned segments).
    pub archives: usize,
    /// Stored snapshots left unchecked: taken before the trusted
    /// checkpoint, or of streams whose state there was not known.
    pub snapshots_unchecked: usize,
}

/// What an auditor brings from outside the database: the
/// ledger's public keys (every key that signed a checkpoint, retired ones
/// included), the signed heads a witness kept, and how many events may
/// follow the last signed checkpoint.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    keys: HashMap<String, Vec<u8>>,
    witnessed: BTreeMap<i64, Checkpoint>,
    max_unsigned_events: Option<i64>,
}

impl Trust {
    /// Trusts checkpoints signed with `key` (`(key_id, raw Ed25519 key)`).
    pub fn key(key: (&str, &[u8])) -> Trust {
        Trust::default().and_key(key)
    }

    /// Also trusts checkpoints signed with `key` (another ledger key, e.g.
    /// one retired by a rotation).
    pub fn and_key(mut self, key: (&str, &[u8])) -> Trust {
        self.keys.insert(key.0.to_owned(), key.1.to_vec());
        self
    }

    /// Signed heads a witness kept: the log must still hold each of them
    /// (the checkpoint, and an event at its position with its hash).
    pub fn witnessed(mut self, checkpoints: impl IntoIterator<Item = Checkpoint>) -> Trust {
        self.witnessed
            .extend(checkpoints.into_iter().map(|c| (c.position, c)));
        self
    }

    /// Fails a whole log with more than `events` after its last signed
    /// checkpoint.
    pub fn max_unsigned_events(mut self, events: i64) -> Trust {
        self.max_unsigned_events = Some(events);
        self
    }

    /// The pinned key ids, sorted (for reports).
    pub fn key_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.keys.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Whether `checkpoint` is signed by one of the trusted keys.
    pub fn check_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        self.check_signature(checkpoint)
    }

    fn check_signature(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        match self.keys.get(&checkpoint.key_id) {
            Some(key) => checkpoint.verify(&checkpoint.key_id, key),
            None => Err(CheckpointError::UnknownKey {
                position: checkpoint.position,
                key_id: checkpoint.key_id.clone(),
            }),
        }
    }
}

impl From<(&str, &[u8])> for Trust {
    fn from(key: (&str, &[u8])) -> Trust {
        Trust::key(key)
    }
}

impl From<&Trust> for Trust {
    fn from(trust: &Trust) -> Trust {
        trust.clone()
    }
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
    #[error("checkpoint at position {position} is out of place (after position {after})")]
    CheckpointOutOfPlace { position: i64, after: i64 },
    #[error(transparent)]
    Signature(#[from] CheckpointError),
    #[error("a witnessed signed head: {0}")]
    WitnessedSignature(CheckpointError),
    #[error("the event at position {position} has hash {actual}, but a witness kept a signed head there with hash {witnessed}: the log was rewritten at or before that position")]
    WitnessedHashMismatch {
        position: i64,
        witnessed: ChainHash,
        actual: ChainHash,
    },
    #[error("the log ends at position {head}, but a witness kept a signed head at position {position}: events were removed from its end")]
    WitnessedBeyondHead { position: i64, head: i64 },
    #[error("a witness kept the signed checkpoint at position {0}, which the log no longer holds: checkpoints were deleted or replaced")]
    WitnessedCheckpointMissing(i64),
    #[error("witnessed heads can be checked only against a chain (the log, or an export of it), not one organization's events")]
    WitnessedNeedsChain,
    #[error("{tail} event(s) follow the last signed checkpoint (position {signed}), more than the {max} allowed (--max-unsigned-events): nothing proves they were written by the ledger")]
    UnsignedTail { tail: i64, signed: i64, max: i64 },
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
    #[error("{0}")]
    Prune(String),
    #[error("there is no signed checkpoint at position {0} to start from (GET /api/v1/checkpoints lists them)")]
    NoCheckpoint(i64),
}

/// Stream versions follow each other from 1 in every stream (from the
/// first one seen, in a partial export), each `streams` row ends where its
/// events end, and each stored snapshot is the state its stream's events
/// replay to at the snapshot's version. Only the streams with a snapshot
/// keep a state, and only until that version.
struct StreamCheck {
    versions: HashMap<String, i64>,
    /// Whether every stream starts at version 1 (the log from position 1).
    from_start: bool,
    /// Snapshot version and the state replayed so far, per stream still to
    /// reach its snapshot.
    pending: HashMap<String, (i64, seatledger_ledger::domain::StreamState)>,
    /// Leases held by the pending states, and the most they may hold
    /// before the largest is left to a pass of its own.
    pending_leases: usize,
    lease_budget: usize,
    /// Streams whose snapshot is checked after the main pass, one at a
    /// time (stream id, snapshot version).
    deferred: Vec<(String, i64)>,
    /// The check starts at a checkpoint without the streams' states
    /// there: a stream's version before its first event is unknown.
    partial: bool,
    /// Snapshots that cannot be checked from where the check starts.
    unchecked: usize,
}

/// Leases the replayed states of a verify may hold at once (about 400
/// bytes each: ~40 MiB; at 200,000, a verify of 1M events with 750k live
/// leases peaked at 205 MiB, `audit --shapes held`). Past it, the largest
/// stream's snapshot is checked in a pass of its own over that stream, so
/// memory follows this bound, not the live leases of the whole log.
pub const VERIFY_LEASE_BUDGET: usize = 100_000;

fn leases_of(state: &seatledger_ledger::domain::StreamState) -> usize {
    match state {
        seatledger_ledger::domain::StreamState::License(license) => license.lease_count(),
        _ => 0,
    }
}

/// A stream reached the version of its stored snapshot: the snapshot must
/// be the state `replayed`. Kept as a state, not as JSON, until it is
/// compared ([`check_snapshot`]), so that a batch in which many large
/// streams reach their snapshots holds one JSON form at a time.
#[derive(Debug)]
pub struct DueSnapshot {
    pub stream_id: String,
    pub version: i64,
    pub replayed: seatledger_ledger::domain::StreamState,
}

impl StreamCheck {
    fn new(
        stored: Option<&HashMap<String, (i64, Option<i64>)>>,
        from_start: bool,
        lease_budget: usize,
    ) -> StreamCheck {
        StreamCheck {
            versions: HashMap::new(),
            from_start,
            pending_leases: 0,
            lease_budget,
            deferred: Vec::new(),
            partial: false,
            unchecked: 0,
            pending: stored
                .into_iter()
                .flatten()
                .filter_map(|(stream_id, (_, snapshot))| {
                    snapshot.map(|version| (stream_id.clone(), (version, Default::default())))
                })
                .collect(),
        }
    }

    fn apply(&mut self, event: &RecordedEvent) -> Result<Option<DueSnapshot>, VerifyError> {
        // No allocation for a stream already seen (verify's hot path).
        if !self.versions.contains_key(&event.stream_id) {
            let before = if self.from_start {
                0
            } else {
                event.stream_version - 1
            };
            // A stream that began before the start, its state unknown.
            if self.partial && before > 0 && self.pending.remove(&event.stream_id).is_some() {
                self.unchecked += 1;
            }
            self.versions.insert(event.stream_id.clone(), before);
        }
        let Some(version) = self.versions.get_mut(&event.stream_id) else {
            return Ok(None);
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
            return Ok(None);
        };
        let decoded = event.event().map_err(|source| VerifyError::Undecodable {
            position: event.position,
            source,
        })?;
        let before = leases_of(state);
        *state = seatledger_ledger::domain::evolve(std::mem::take(state), &decoded);
        let after = leases_of(state);
        self.pending_leases = (self.pending_leases + after).saturating_sub(before);
        if event.stream_version < *snapshot_version {
            if self.pending_leases > self.lease_budget {
                self.defer_largest();
            }
            return Ok(None);
        }
        let Some((version, replayed)) = self.pending.remove(&event.stream_id) else {
            return Ok(None);
        };
        self.pending_leases = self.pending_leases.saturating_sub(leases_of(&replayed));
        Ok(Some(DueSnapshot {
            stream_id: event.stream_id.clone(),
            version,
            replayed,
        }))
    }

    /// Drops the largest pending state; its stream is checked later.
    fn defer_largest(&mut self) {
        let Some(largest) = self
            .pending
            .iter()
            .max_by_key(|(_, (_, state))| leases_of(state))
            .map(|(stream_id, _)| stream_id.clone())
        else {
            return;
        };
        if let Some((version, state)) = self.pending.remove(&largest) {
            self.pending_leases = self.pending_leases.saturating_sub(leases_of(&state));
            self.deferred.push((largest, version));
        }
    }

    fn finish(
        mut self,
        stored: &HashMap<String, (i64, Option<i64>)>,
    ) -> Result<usize, VerifyError> {
        for (stream_id, (stored_version, _)) in stored {
            let Some(replayed) = self.versions.get(stream_id).copied().or_else(|| {
                // A stream with no event since a start without states.
                (!self.partial).then_some(0)
            }) else {
                continue;
            };
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
        if self.partial {
            self.unchecked += self.pending.len();
        } else if let Some((stream_id, (version, _))) = self.pending.into_iter().next() {
            return Err(VerifyError::SnapshotMismatch { stream_id, version });
        }
        Ok(self.unchecked)
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

/// The checks of `verify`, fed in log order from any source (the store, an
/// export file): positions, links and hashes of events, checkpoints at
/// their positions, stream versions, and snapshots when their stream
/// reaches them.
pub struct Verifier {
    trust: Trust,
    /// The source is the whole log to its head (the store, a whole-log
    /// export): its end and its unsigned tail are checked too.
    whole: bool,
    /// The first position checked.
    first: Option<i64>,
    /// The last position a log checkpoint signed.
    last_signed: i64,
    /// Witnessed positions whose checkpoint the log holds.
    witnessed_present: HashSet<i64>,
    /// A chain (the log or a range of it) or a selection of its events (one
    /// organization's): a selection has gaps by nature, so its events are
    /// checked one by one (hash of content and `prev_hash`, ascending
    /// positions) and not linked.
    chain: bool,
    /// The last position and hash checked; `None` before the first event of
    /// a range that does not start at position 1 (its `prev_hash` is then
    /// taken as given).
    last: Option<(i64, ChainHash)>,
    events: i64,
    checkpoints: usize,
    streams: StreamCheck,
}

impl Verifier {
    /// A verifier of events from position 1 (`from_start`), or from
    /// wherever the first event is. `stored_streams`: the `streams` rows
    /// (version and snapshot version) the events must end at, when the
    /// source has them.
    pub fn new(
        trust: impl Into<Trust>,
        chain: bool,
        from_start: bool,
        stored_streams: Option<&HashMap<String, (i64, Option<i64>)>>,
    ) -> Verifier {
        Verifier {
            trust: trust.into(),
            whole: false,
            first: None,
            last_signed: 0,
            witnessed_present: HashSet::new(),
            chain,
            last: from_start.then_some((0, ChainHash::GENESIS)),
            events: 0,
            checkpoints: 0,
            streams: StreamCheck::new(stored_streams, from_start && chain, usize::MAX),
        }
    }

    /// Marks the source as the whole log up to its head.
    pub fn whole_log(mut self) -> Verifier {
        self.whole = true;
        self
    }

    /// Bounds the leases the replayed states may hold; streams past it are
    /// returned by [`deferred`](Self::deferred) to be checked on their own.
    /// Only for a source that can read one stream again (the store).
    pub fn with_lease_budget(mut self, leases: usize) -> Verifier {
        self.streams.lease_budget = leases;
        self
    }

    /// Starts the check after a trusted signed `checkpoint` instead of at
    /// position 1: the first event must link to its hash, and it is
    /// checked like any other checkpoint. `states`: every stream's version
    /// and state there, when known (an archive file that starts there);
    /// without them a stream's versions are checked from its first event
    /// on, and the snapshots of streams that began before are left
    /// unchecked. Returns the stored snapshots that fall exactly on the
    /// checkpoint, due at once.
    pub fn start_after(
        &mut self,
        checkpoint: &Checkpoint,
        states: Option<Vec<(String, i64, seatledger_ledger::domain::StreamState)>>,
    ) -> Result<Vec<DueSnapshot>, VerifyError> {
        self.last = Some((checkpoint.position, checkpoint.hash));
        self.checkpoint(checkpoint)?;
        let streams = &mut self.streams;
        let mut due = Vec::new();
        match states {
            None => {
                streams.from_start = false;
                streams.partial = true;
            }
            Some(states) => {
                streams.from_start = true;
                for (stream_id, version, state) in states {
                    if let Some((snapshot, _)) = streams.pending.get(&stream_id) {
                        let snapshot = *snapshot;
                        if snapshot == version {
                            streams.pending.remove(&stream_id);
                            due.push(DueSnapshot {
                                stream_id: stream_id.clone(),
                                version,
                                replayed: state,
                            });
                        } else if snapshot < version {
                            streams.pending.remove(&stream_id);
                            streams.unchecked += 1;
                        } else {
                            streams.pending_leases += leases_of(&state);
                            streams.pending.insert(stream_id.clone(), (snapshot, state));
                        }
                    }
                    streams.versions.insert(stream_id, version);
                }
            }
        }
        Ok(due)
    }

    /// Streams whose snapshot was left to a pass of their own:
    /// (stream id, snapshot version).
    pub fn take_deferred(&mut self) -> Vec<(String, i64)> {
        std::mem::take(&mut self.streams.deferred)
    }

    /// The last position checked (0 before any).
    pub fn position(&self) -> i64 {
        self.last.map_or(0, |(position, _)| position)
    }

    /// Checks the next events in log order; `checkpoints` holds those to
    /// check as their position is reached (or none: see
    /// [`checkpoint`](Self::checkpoint)). Returns the snapshots that became
    /// due, in order.
    pub async fn events(
        &mut self,
        batch: Vec<RecordedEvent>,
        checkpoints: &HashMap<i64, Checkpoint>,
    ) -> Result<Vec<DueSnapshot>, VerifyError> {
        if batch.is_empty() {
            return Ok(Vec::new());
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
        let mut due = Vec::new();
        for event in batch.iter() {
            let (position, hash) = self.last.unwrap_or((event.position - 1, event.prev_hash));
            if self.chain && event.position != position + 1
                || !self.chain && event.position <= position
            {
                return Err(ChainError::PositionGap {
                    position: event.position,
                    expected: position + 1,
                }
                .into());
            }
            if self.chain && event.prev_hash != hash {
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
            if let Some(witnessed) = self.trust.witnessed.get(&event.position) {
                if witnessed.hash != event.hash {
                    return Err(VerifyError::WitnessedHashMismatch {
                        position: event.position,
                        witnessed: witnessed.hash,
                        actual: event.hash,
                    });
                }
            }
            self.first.get_or_insert(event.position);
            self.last = Some((event.position, event.hash));
            self.events += 1;
            due.extend(self.streams.apply(event)?);
            if let Some(checkpoint) = checkpoints.get(&event.position) {
                self.checkpoint(checkpoint)?;
            }
        }
        Ok(due)
    }

    /// Checks a signed checkpoint at the position just reached: its hash
    /// is the chain's there, and the pinned key signed it. In a selection
    /// of events, a checkpoint between two of them is checked by its
    /// signature alone.
    pub fn checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), VerifyError> {
        let (position, hash) = self.last.unwrap_or((0, ChainHash::GENESIS));
        if checkpoint.position == position {
            if checkpoint.hash != hash {
                return Err(VerifyError::CheckpointMismatch {
                    position,
                    signed: checkpoint.hash,
                    actual: hash,
                });
            }
        } else if self.chain || checkpoint.position < position {
            return Err(VerifyError::CheckpointOutOfPlace {
                position: checkpoint.position,
                after: position,
            });
        }
        self.trust.check_signature(checkpoint)?;
        if let Some(witnessed) = self.trust.witnessed.get(&checkpoint.position) {
            if witnessed == checkpoint {
                self.witnessed_present.insert(checkpoint.position);
            }
        }
        self.last_signed = self.last_signed.max(checkpoint.position);
        self.checkpoints += 1;
        Ok(())
    }

    /// Ends the check: every stream ended where `stored_streams` says
    /// (when known) and every snapshot was reached.
    pub fn finish(
        self,
        stored_streams: Option<&HashMap<String, (i64, Option<i64>)>>,
    ) -> Result<Verified, VerifyError> {
        let (head, head_hash) = self.last.unwrap_or((0, ChainHash::GENESIS));
        let since = self.first.map_or(head, |first| first - 1);
        let snapshots_unchecked = match stored_streams {
            Some(stored) => self.streams.finish(stored)?,
            None => 0,
        };
        let trust = &self.trust;
        if !trust.witnessed.is_empty() && !self.chain {
            return Err(VerifyError::WitnessedNeedsChain);
        }
        let first = self.first.unwrap_or(1);
        let mut witnessed = 0;
        for (&position, checkpoint) in &trust.witnessed {
            trust
                .check_signature(checkpoint)
                .map_err(VerifyError::WitnessedSignature)?;
            if position > head {
                if self.whole {
                    return Err(VerifyError::WitnessedBeyondHead { position, head });
                }
                continue;
            }
            if position < first {
                continue;
            }
            if !self.witnessed_present.contains(&position) {
                return Err(VerifyError::WitnessedCheckpointMissing(position));
            }
            witnessed += 1;
        }
        let unsigned_tail = head - self.last_signed;
        if let (true, Some(max)) = (self.whole, trust.max_unsigned_events) {
            if unsigned_tail > max {
                return Err(VerifyError::UnsignedTail {
                    tail: unsigned_tail,
                    signed: self.last_signed,
                    max,
                });
            }
        }
        Ok(Verified {
            events: self.events,
            head_hash,
            checkpoints: self.checkpoints,
            witnessed,
            unsigned_tail,
            since,
            archives: 0,
            snapshots_unchecked,
        })
    }
}

/// Verifies partition `partition` of `store` from position 0. `key` is the
/// `(key_id, raw Ed25519 public key)` checkpoints must be signed with.
pub async fn verify(
    store: &Store,
    partition: i16,
    key: impl Into<Trust>,
) -> Result<Verified, VerifyError> {
    verify_with_progress(store, partition, key, |_| {}).await
}

/// [`verify`], calling `progress` with the last position of each batch
/// verified.
pub async fn verify_with_progress(
    store: &Store,
    partition: i16,
    key: impl Into<Trust>,
    progress: impl FnMut(i64),
) -> Result<Verified, VerifyError> {
    verify_with_budget(store, partition, key, VERIFY_LEASE_BUDGET, progress).await
}

/// [`verify_with_progress`] with another [`VERIFY_LEASE_BUDGET`] (a test
/// can make every snapshot stream take the pass of its own).
pub async fn verify_with_budget(
    store: &Store,
    partition: i16,
    key: impl Into<Trust>,
    lease_budget: usize,
    progress: impl FnMut(i64),
) -> Result<Verified, VerifyError> {
    let from = VerifyFrom {
        lease_budget,
        ..VerifyFrom::default()
    };
    verify_log(store, partition, key, from, progress).await
}

/// Where a verify of a store reads and starts.
#[derive(Clone, Debug)]
pub struct VerifyFrom<'a> {
    /// The archive files of pruned segments.
    pub archive: Option<&'a Path>,
    /// Start after the signed checkpoint at this position instead of at
    /// position 1 (incremental verify).
    pub since_checkpoint: Option<i64>,
    pub lease_budget: usize,
}

impl Default for VerifyFrom<'_> {
    fn default() -> Self {
        VerifyFrom {
            archive: None,
            since_checkpoint: None,
            lease_budget: VERIFY_LEASE_BUDGET,
        }
    }
}

/// The states an archive's snapshot lines hold, as a verifier takes them.
fn parse_states(
    rows: Vec<SnapshotRow>,
) -> Result<Vec<(String, i64, seatledger_ledger::domain::StreamState)>, VerifyError> {
    rows.into_iter()
        .map(|row| {
            let state = serde_json::from_value(row.state).map_err(|e| {
                StoreError::Archive(format!("the snapshot line of {}: {e}", row.stream_id))
            })?;
            Ok((row.stream_id, row.version, state))
        })
        .collect()
}

/// Verifies partition `partition` of `store`: from position 1, or after a
/// trusted checkpoint (`from.since_checkpoint`); the events of pruned
/// segments from their archive files (`from.archive`), each checked whole
/// and against the `LogPruned` event that recorded its prune.
pub async fn verify_log(
    store: &Store,
    partition: i16,
    key: impl Into<Trust>,
    from: VerifyFrom<'_>,
    mut progress: impl FnMut(i64),
) -> Result<Verified, VerifyError> {
    let trust: Trust = key.into();
    let since = from.since_checkpoint.unwrap_or(0);
    let checkpoints: HashMap<i64, Checkpoint> = store
        .checkpoints(partition)
        .await?
        .into_iter()
        .filter(|c| c.position >= since)
        .map(|c| (c.position, c))
        .collect();
    let (head_position, _) = store.head(partition).await?;
    let stored_streams = store.stream_versions_of(partition).await?;
    let mut verifier = Verifier::new(trust.clone(), true, since == 0, Some(&stored_streams))
        .whole_log()
        .with_lease_budget(from.lease_budget);
    let signatures = signature_check(&trust);
    let (events, _) =
        EventStream::from_log(store, partition, from.archive, since, Some(head_position)).await?;
    let mut events = events.check_signatures(signatures.clone());
    if since > 0 {
        start_at_checkpoint(
            store,
            &trust,
            &checkpoints,
            since,
            &mut events,
            &mut verifier,
            signatures,
        )
        .await?;
    }
    let mut prunes = Vec::new();
    while let Some(batch) = events.next().await? {
        prunes.extend(batch.iter().filter_map(|event| {
            event
                .log_pruned()
                .filter(|pruned| pruned.partition == partition)
        }));
        for due in verifier.events(batch, &checkpoints).await? {
            let stored = store.stream_snapshot(&due.stream_id).await?;
            check_snapshot(due, stored)?;
        }
        progress(verifier.position());
    }
    let position = verifier.position();
    if let Some(beyond) = checkpoints.keys().filter(|p| **p > position).min() {
        return Err(VerifyError::CheckpointBeyondHead(*beyond));
    }
    check_prunes(events.archives_read(), &prunes, since)?;
    let archives = events.archives_read().len();
    // The chain is sound: every event the deferred streams replay was
    // checked above.
    for (stream_id, version) in verifier.take_deferred() {
        check_stream_snapshot(store, partition, from.archive, &stream_id, version).await?;
    }
    let mut verified = verifier.finish(Some(&stored_streams))?;
    verified.archives = archives;
    Ok(verified)
}

/// Checks a checkpoint's signature against `trust` (for archive readers).
fn signature_check(trust: &Trust) -> SharedCheck {
    let trust = trust.clone();
    std::sync::Arc::new(move |checkpoint: &Checkpoint| {
        trust
            .check_signature(checkpoint)
            .map_err(|error| error.to_string())
    })
}

/// Verifying since checkpoint `since`: it must exist (and match a
/// witnessed head at its position), and the verifier starts from the
/// states the archives or snapshots give there.
async fn start_at_checkpoint(
    store: &Store,
    trust: &Trust,
    checkpoints: &HashMap<i64, Checkpoint>,
    since: i64,
    events: &mut EventStream,
    verifier: &mut Verifier,
    signatures: SharedCheck,
) -> Result<(), VerifyError> {
    let Some(start) = checkpoints.get(&since) else {
        return Err(VerifyError::NoCheckpoint(since));
    };
    if trust
        .witnessed
        .get(&since)
        .is_some_and(|witnessed| witnessed != start)
    {
        return Err(VerifyError::WitnessedCheckpointMissing(since));
    }
    let states = match events.starting_states(Some(signatures)).await? {
        Some(rows) => Some(parse_states(rows)?),
        None => None,
    };
    for due in verifier.start_after(start, states)? {
        let stored = store.stream_snapshot(&due.stream_id).await?;
        check_snapshot(due, stored)?;
    }
    Ok(())
}

/// Every archive file read is the one a `LogPruned` event recorded, and
/// every such event whose segment was read from a file names that file.
/// A file read whose event lies before `since` (an incremental check) is
/// taken on its recorded SHA-256 in the database.
fn check_prunes(
    read: &[ReadArchive],
    prunes: &[seatledger_schema::LogPruned],
    since: i64,
) -> Result<(), VerifyError> {
    for file in read {
        let sha = seatledger_ledger::archive::hex_of(&file.archive.sha256);
        let header = &file.archive.header;
        let recorded = prunes.iter().find(|p| p.segment == header.segment);
        match recorded {
            Some(pruned)
                if pruned.archive_sha256 == sha
                    && pruned.first_position == header.first_position
                    && pruned.last_position == header.last_position => {}
            Some(pruned) => {
                return Err(VerifyError::Prune(format!(
                    "{}: the log recorded the prune of segment {} with archive {} (sha256 {}, positions {}..={}), this file is sha256 {sha} (positions {}..={})",
                    file.path.display(),
                    pruned.segment,
                    pruned.archive_file,
                    pruned.archive_sha256,
                    pruned.first_position,
                    pruned.last_position,
                    header.first_position,
                    header.last_position
                )))
            }
            None if since > 0 => {}
            None => {
                return Err(VerifyError::Prune(format!(
                    "{}: segment {} was pruned but no LogPruned event in the log records it",
                    file.path.display(),
                    header.segment
                )))
            }
        }
    }
    Ok(())
}

fn evolve_checked(
    state: seatledger_ledger::domain::StreamState,
    event: &RecordedEvent,
) -> Result<seatledger_ledger::domain::StreamState, VerifyError> {
    let decoded = event.event().map_err(|source| VerifyError::Undecodable {
        position: event.position,
        source,
    })?;
    Ok(seatledger_ledger::domain::evolve(state, &decoded))
}

/// Replays one stream up to its snapshot's version (in bounded reads) and
/// compares the stored snapshot. Where its early events were pruned, they
/// are read from the archive files: the whole log, filtered.
async fn check_stream_snapshot(
    store: &Store,
    partition: i16,
    archive: Option<&Path>,
    stream_id: &str,
    version: i64,
) -> Result<(), VerifyError> {
    let mut state = seatledger_ledger::domain::StreamState::default();
    let mut after = 0;
    while after < version {
        let through = version.min(after + VERIFY_BATCH);
        let events = match store.read_stream_range(stream_id, after, through).await {
            Err(StoreError::Pruned { .. }) if archive.is_some() => {
                state = Default::default();
                let (mut log, _) =
                    EventStream::from_log(store, partition, archive, 0, None).await?;
                while let Some(batch) = log.next().await? {
                    for event in &batch {
                        if event.stream_id == stream_id && event.stream_version <= version {
                            state = evolve_checked(state, event)?;
                        }
                    }
                }
                break;
            }
            read => read?,
        };
        if events.is_empty() {
            break;
        }
        for event in &events {
            state = evolve_checked(state, event)?;
        }
        after = through;
    }
    let due = DueSnapshot {
        stream_id: stream_id.to_owned(),
        version,
        replayed: state,
    };
    let stored = store.stream_snapshot(stream_id).await?;
    check_snapshot(due, stored)
}

/// A due snapshot against the one stored (version and state).
pub fn check_snapshot(
    due: DueSnapshot,
    stored: Option<(i64, serde_json::Value)>,
) -> Result<(), VerifyError> {
    let mismatch = || VerifyError::SnapshotMismatch {
        stream_id: due.stream_id.clone(),
        version: due.version,
    };
    let Some((_, state)) = stored.filter(|(version, _)| *version == due.version) else {
        return Err(mismatch());
    };
    let replayed = serde_json::to_value(&due.replayed)
        .map_err(|e| seatledger_ledger::StoreError::Corrupt(e.to_string()))?;
    if state == replayed {
        Ok(())
    } else {
        Err(mismatch())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seatledger_ledger::archive::{Archive, ArchiveHeader};
    use seatledger_ledger::Segment;
    use seatledger_schema::LogPruned;

    fn read(segment: i64, first: i64, last: i64, sha: u8) -> ReadArchive {
        ReadArchive {
            segment: Segment {
                partition: 0,
                segment,
                first_position: first,
                last_position: Some(last),
                archive_sha256: Some(vec![sha; 32]),
                pruned_at: Some("2026-12-07T00:00:00Z".into()),
            },
            path: format!("seatledger-p0-s{segment:08}.archive").into(),
            archive: Archive {
                header: ArchiveHeader {
                    format: "seatledger-archive".into(),
                    format_version: 1,
                    partition: 0,
                    segment,
                    first_position: first,
                    last_position: last,
                    prev_hash: ChainHash::GENESIS,
                    last_hash: ChainHash::GENESIS,
                    checkpoints: 0,
                    snapshots: 0,
                    description: String::new(),
                },
                checkpoints: Vec::new(),
                snapshots: Vec::new(),
                sha256: [sha; 32],
                bytes: 0,
            },
        }
    }

    fn pruned(segment: i64, first: i64, last: i64, sha: u8) -> LogPruned {
        LogPruned {
            partition: 0,
            segment,
            first_position: first,
            last_position: last,
            archive_sha256: hex::encode([sha; 32]),
            archive_file: format!("seatledger-p0-s{segment:08}.archive"),
        }
    }

    #[test]
    fn every_file_read_must_be_the_one_a_prune_recorded() {
        let files = [read(1, 1, 100, 7), read(2, 101, 200, 8)];
        let recorded = [pruned(1, 1, 100, 7), pruned(2, 101, 200, 8)];
        assert!(check_prunes(&files, &recorded, 0).is_ok());
        // Another file for segment 2 (another SHA-256), another range, or
        // no record of the prune at all.
        let other_file = [pruned(1, 1, 100, 7), pruned(2, 101, 200, 9)];
        let error = check_prunes(&files, &other_file, 0)
            .unwrap_err()
            .to_string();
        assert!(error.contains("recorded the prune of segment 2"), "{error}");
        let other_range = [pruned(1, 1, 100, 7), pruned(2, 101, 199, 8)];
        assert!(check_prunes(&files, &other_range, 0).is_err());
        let error = check_prunes(&files, &recorded[..1], 0)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no LogPruned event"), "{error}");
        // From a checkpoint on, the record may lie before the start.
        assert!(check_prunes(&files, &recorded[..1], 150).is_ok());
    }
}
