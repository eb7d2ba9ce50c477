//! The pure part of a batch: cached stream states, deciding every command in
//! order against them, and encoding the events (positions, chain hashes)
//! and the stream rows to write. No I/O, so a property test covers it.

use super::submit::{AppendError, CommandResult, Reply, Submission};
use crate::domain::{decide, evolve, Rejection, StreamState};
use crate::store::{CommandWrite, RecordedCommands, SnapshotWrite, StoreError, StreamWrite};
use seatledger_schema::canonical::expected_hash;
use seatledger_schema::{limits, ChainHash, Event, RecordedEvent, Timestamp};
use seatledger_schema::{OrgId, SessionId};
use std::collections::HashMap;
use uuid::Uuid;

pub(super) struct CachedStream {
    pub(super) version: i64,
    /// The version of the latest snapshot stored (as far as this appender
    /// knows: another replica may have written a later one), 0 for none.
    pub(super) snapshot_version: i64,
    pub(super) state: StreamState,
}

pub(super) fn fold(
    mut stream: CachedStream,
    events: &[RecordedEvent],
) -> Result<CachedStream, StoreError> {
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

/// The states a batch works on: readable streams, and the streams it could
/// not read (their commands answer `StreamUnreadable`).
#[derive(Default)]
pub(super) struct Working {
    pub(super) streams: HashMap<String, CachedStream>,
    pub(super) unreadable: Vec<String>,
}

/// The streams `submissions` touch, each once, in first-seen order.
pub(super) fn stream_ids_of(submissions: &[Submission]) -> Vec<String> {
    distinct(
        submissions
            .iter()
            .map(|s| s.command.stream_id().to_string()),
    )
}

/// The idempotency keys `submissions` carry, each once.
pub(super) fn keys_of(submissions: &[Submission]) -> Vec<(OrgId, String)> {
    distinct(
        submissions
            .iter()
            .filter_map(|s| s.command_id.as_ref().map(|id| (s.org_id, id.clone()))),
    )
}

/// `items` without repeats, in first-seen order (batches are small).
pub(super) fn distinct<T: PartialEq>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// Phase 2, pure (no I/O, no clock): decides `submissions` in order after
/// `head` at `now`, against `working` (which evolves) and the recorded
/// idempotent results (which grow). A batch decides exactly as the same
/// commands would one batch each (tested below).
pub(super) fn decide_batch(
    partition: i16,
    head: (i64, ChainHash),
    submissions: &[Submission],
    working: &mut Working,
    recorded: &mut RecordedCommands,
    now: Timestamp,
) -> Result<(DecidedBatch, Vec<Reply>), StoreError> {
    let mut batch = DecidedBatch::after(partition, head);
    let replies = submissions
        .iter()
        .map(|submission| batch.decide(submission, working, recorded, now))
        .collect::<Result<Vec<Reply>, StoreError>>()?;
    Ok((batch, replies))
}

/// Phase 2: the events a batch appends, with consecutive positions and
/// chained hashes, and the idempotency records it writes.
pub(super) struct DecidedBatch {
    pub(super) partition: i16,
    /// The last position and hash assigned (the head before any event).
    pub(super) position: i64,
    pub(super) prev_hash: ChainHash,
    pub(super) events: Vec<RecordedEvent>,
    pub(super) command_writes: Vec<CommandWrite>,
}

impl DecidedBatch {
    pub(super) fn after(partition: i16, (position, prev_hash): (i64, ChainHash)) -> Self {
        DecidedBatch {
            partition,
            position,
            prev_hash,
            events: Vec::new(),
            command_writes: Vec::new(),
        }
    }

    /// Decides one command against its stream's evolving state: the
    /// recorded result for a repeated idempotent request, a failure for an
    /// unreadable stream, else `decide` and its events appended.
    pub(super) fn decide(
        &mut self,
        submission: &Submission,
        working: &mut Working,
        recorded: &mut RecordedCommands,
        now: Timestamp,
    ) -> Result<Reply, StoreError> {
        let key = submission
            .command_id
            .as_ref()
            .map(|id| (submission.org_id, id.clone()));
        if let Some((hash, result)) = key.as_ref().and_then(|key| recorded.get(key)) {
            return recorded_reply(submission, hash, result);
        }
        let stream_id = submission.command.stream_id().to_string();
        let Some(stream) = working.streams.get_mut(&stream_id) else {
            if working.unreadable.contains(&stream_id) {
                return Ok(Err(AppendError::StreamUnreadable { stream_id }));
            }
            return Err(StoreError::Corrupt(format!("{stream_id} was not loaded")));
        };
        let decision = decide(&stream.state, submission.org_id, &submission.command, now);
        let payloads = match replayable_payloads(&decision.events, &stream_id) {
            Ok(payloads) => payloads,
            Err(error) => return Ok(Err(error)),
        };
        let first = self.events.len();
        for (event, payload) in decision.events.iter().zip(payloads) {
            self.append(submission, &stream_id, stream, event, payload, now);
        }
        let (license, lease) = match &stream.state {
            StreamState::License(license) => (
                license.view(now),
                touched_session(&self.events[first..])
                    .and_then(|session_id| license.lease(session_id).cloned()),
            ),
            _ => (None, None),
        };
        let result = CommandResult {
            events: self.events[first..].to_vec(),
            rejection: decision.rejection,
            license,
            lease,
            replayed: false,
        };
        if let Some(key) = key {
            let value =
                serde_json::to_value(&result).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            recorded.insert(
                key.clone(),
                (submission.request_hash.to_vec(), value.clone()),
            );
            self.command_writes.push(CommandWrite {
                org_id: key.0,
                command_id: key.1,
                request_hash: submission.request_hash.to_vec(),
                result: value,
            });
        }
        Ok(Ok(result))
    }

    /// Encodes, hashes and records one event, and evolves its stream.
    pub(super) fn append(
        &mut self,
        submission: &Submission,
        stream_id: &str,
        stream: &mut CachedStream,
        event: &Event,
        payload: serde_json::Value,
        now: Timestamp,
    ) {
        self.position += 1;
        stream.version += 1;
        let mut record = RecordedEvent {
            partition: self.partition,
            position: self.position,
            event_id: Uuid::now_v7(),
            stream_id: stream_id.to_owned(),
            stream_version: stream.version,
            org_id: submission.org_id,
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            payload,
            metadata: submission.metadata.clone(),
            occurred_at: now,
            recorded_at: now,
            prev_hash: self.prev_hash,
            hash: ChainHash::GENESIS,
        };
        record.hash = expected_hash(&record);
        self.prev_hash = record.hash;
        stream.state = evolve(std::mem::take(&mut stream.state), event);
        self.events.push(record);
    }
}

/// The session an acquire or heartbeat granted or extended, if any.
pub(super) fn touched_session(events: &[RecordedEvent]) -> Option<SessionId> {
    events
        .iter()
        .rev()
        .find_map(|record| record.seat_touch())
        .map(|touch| touch.session_id)
}

/// Phase 3: the `streams` rows of the streams the batch changed, with a
/// snapshot for each that is due (see [`snapshot_due`]); due snapshots of
/// `defer_from` bytes or more are returned apart, for the snapshot writer.
pub(super) fn stream_writes(
    partition: i16,
    working: &mut Working,
    versions: &HashMap<String, i64>,
    defer_from: usize,
) -> Result<(Vec<StreamWrite>, Vec<SnapshotWrite>), StoreError> {
    let mut writes = Vec::new();
    let mut deferred = Vec::new();
    for (stream_id, stream) in working.streams.iter_mut() {
        let stored_version = versions.get(stream_id).copied().unwrap_or(0);
        if stream.version == stored_version {
            continue;
        }
        let mut snapshot = None;
        if snapshot_due(stream) {
            let state = serde_json::to_string(&stream.state)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            // Only this batch's working copy: it reaches the cache once
            // the batch commits, and is dropped with it if it fails.
            stream.snapshot_version = stream.version;
            if state.len() >= defer_from {
                deferred.push(SnapshotWrite {
                    stream_id: stream_id.clone(),
                    version: stream.version,
                    state,
                });
            } else {
                snapshot = Some((stream.version, state));
            }
        }
        writes.push(StreamWrite {
            stream_id: stream_id.clone(),
            partition,
            version: stream.version,
            snapshot,
        });
    }
    Ok((writes, deferred))
}

/// The amortized snapshot policy: a stream's snapshot is rewritten once the
/// events since the last one reach the state's size (its leases or users),
/// and at least `SNAPSHOT_EVERY_EVENTS`. Writing a snapshot costs its size,
/// so each event pays a constant share, however large the license: a
/// license of 100,000 leases is snapshotted every 100,000 events, not every
/// 1,000 (a snapshot rewrite per 1,000 events cost each event a hundredth
/// of the state). A load reads the snapshot and at most
/// `max(SNAPSHOT_EVERY_EVENTS, size)` later events: no more than the
/// snapshot itself holds.
pub(super) fn snapshot_due(stream: &CachedStream) -> bool {
    let interval = limits::SNAPSHOT_EVERY_EVENTS.max(stream.state.size() as i64);
    stream.version - stream.snapshot_version >= interval
}

/// The answer to a repeated idempotent request: the recorded result, or
/// `IdempotencyKeyReused` when the request differs from the recorded one.
fn recorded_reply(
    submission: &Submission,
    hash: &[u8],
    result: &serde_json::Value,
) -> Result<Reply, StoreError> {
    if hash != submission.request_hash.as_slice() {
        return Ok(Ok(CommandResult::rejected(Rejection::IdempotencyKeyReused)));
    }
    let mut result: CommandResult = serde_json::from_value(result.clone())
        .map_err(|e| StoreError::Corrupt(format!("recorded command result: {e}")))?;
    result.replayed = true;
    Ok(Ok(result))
}

/// The last guard of "never store what cannot be replayed": every event
/// must decode back to itself before any of the command's events is
/// appended. The edge parsers make this hold; if a bug ever breaks it, the
/// command fails alone and the log stays clean. The events' payloads.
fn replayable_payloads(
    events: &[Event],
    stream_id: &str,
) -> Result<Vec<serde_json::Value>, AppendError> {
    let mut payloads = Vec::with_capacity(events.len());
    for event in events {
        let payload = event.payload();
        match Event::decode(event.event_type(), event.schema_version(), &payload) {
            Ok(decoded) if decoded == *event => payloads.push(payload),
            _ => {
                tracing::error!(stream_id, event_type = event.event_type(), "decided an event that does not decode to itself; nothing of its command was written");
                return Err(AppendError::Unencodable {
                    event_type: event.event_type(),
                });
            }
        }
    }
    Ok(payloads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        Command, HardwareId, HeartbeatTtl, Lease, LicenseView, Name, OveragePercent, SeatActor,
        SeatCount,
    };
    use proptest::prelude::*;
    use seatledger_schema::{LicenseId, UserId};

    const ORG: OrgId = OrgId::from_u128(1);

    fn license(n: u8) -> LicenseId {
        LicenseId::from_u128(0x100 + u128::from(n))
    }

    /// Two licenses of two seats, issued (version 1 each).
    fn working() -> Working {
        let mut working = Working::default();
        for n in 0..2 {
            let issue = Command::IssueLicense {
                client_auth: Default::default(),
                license_id: license(n),
                name: Name::parse("IDE").unwrap(),
                seats: SeatCount::new(2).unwrap(),
                expires_at: None,
                heartbeat_ttl_s: HeartbeatTtl::new(60).unwrap(),
                max_overage_percent: OveragePercent::default(),
            };
            let decision = decide(&StreamState::Empty, ORG, &issue, Timestamp::UNIX_EPOCH);
            let state = decision.events.iter().fold(StreamState::Empty, evolve);
            working.streams.insert(
                issue.stream_id().to_string(),
                CachedStream {
                    version: 1,
                    snapshot_version: 0,
                    state,
                },
            );
        }
        working
    }

    #[derive(Clone, Debug)]
    enum Op {
        Acquire { license: u8, machine: u8 },
        Heartbeat(u8),
        Release(u8),
        Suspend(u8),
        Reinstate(u8),
    }

    fn op() -> impl Strategy<Value = (Op, Option<u8>, bool)> {
        let op = prop_oneof![
            4 => (0u8..2, 0u8..4).prop_map(|(license, machine)| Op::Acquire { license, machine }),
            2 => any::<u8>().prop_map(Op::Heartbeat),
            2 => any::<u8>().prop_map(Op::Release),
            1 => (0u8..2).prop_map(Op::Suspend),
            1 => (0u8..2).prop_map(Op::Reinstate),
        ];
        // Idempotency keys from a small set, so that some repeat, with the
        // same request or another one.
        (op, proptest::option::of(0u8..4), any::<bool>())
    }

    fn submissions(ops: &[(Op, Option<u8>, bool)]) -> Vec<Submission> {
        let mut sessions: Vec<(u8, Uuid)> = Vec::new();
        ops.iter()
            .enumerate()
            .map(|(index, (op, key, same_request))| {
                let pick = |n: &u8| {
                    sessions
                        .get(usize::from(*n) % sessions.len().max(1))
                        .copied()
                        .unwrap_or((0, Uuid::from_u128(0xdead)))
                };
                let command = match op {
                    Op::Acquire {
                        license: l,
                        machine,
                    } => {
                        let session_id = Uuid::from_u128(0x9000 + index as u128);
                        sessions.push((*l, session_id));
                        Command::AcquireSeat {
                            credential: crate::domain::AcquireCredential::Unchecked,
                            token_id: None,
                            license_id: license(*l),
                            session_id: session_id.into(),
                            user_id: UserId::from_u128(u128::from(*machine)),
                            hardware_id: HardwareId::parse(&format!("m{machine}")).unwrap(),
                        }
                    }
                    Op::Heartbeat(n) => {
                        let (l, session_id) = pick(n);
                        Command::Heartbeat {
                            license_id: license(l),
                            session_id: session_id.into(),
                            by: SeatActor::Unchecked,
                        }
                    }
                    Op::Release(n) => {
                        let (l, session_id) = pick(n);
                        Command::ReleaseSeat {
                            license_id: license(l),
                            session_id: session_id.into(),
                            by: SeatActor::Unchecked,
                        }
                    }
                    Op::Suspend(l) => Command::SuspendLicense {
                        license_id: license(*l),
                        reason: None,
                    },
                    Op::Reinstate(l) => Command::ReinstateLicense {
                        license_id: license(*l),
                        reason: None,
                    },
                };
                let mut submission = Submission::new(ORG, command);
                if let Some(key) = key {
                    let request = if *same_request {
                        [*key; 32]
                    } else {
                        [index as u8; 32]
                    };
                    submission = submission.with_command_id(format!("key-{key}"), request);
                }
                submission
            })
            .collect()
    }

    /// What an event is, but for its random id and the hashes that cover it.
    fn essence(event: &RecordedEvent) -> (i64, String, i64, String, serde_json::Value, Timestamp) {
        (
            event.position,
            event.stream_id.clone(),
            event.stream_version,
            event.event_type.clone(),
            event.payload.clone(),
            event.recorded_at,
        )
    }

    type ReplyEssence = Result<
        (
            Vec<(i64, String, i64, String, serde_json::Value, Timestamp)>,
            Option<Rejection>,
            Option<LicenseView>,
            Option<Lease>,
            bool,
        ),
        String,
    >;

    fn reply_essence(reply: &Reply) -> ReplyEssence {
        match reply {
            Ok(result) => Ok((
                result.events.iter().map(essence).collect(),
                result.rejection,
                result.license.clone(),
                result.lease.clone(),
                result.replayed,
            )),
            Err(error) => Err(error.to_string()),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A batch decides exactly as the same commands one batch each:
        /// the same events at the same positions, the same answers
        /// (idempotent repeats and reused keys included), the same states,
        /// and a hash chain that links from the head either way.
        #[test]
        fn a_batch_decides_as_its_commands_one_by_one(
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            let now = Timestamp::from_micros_saturating(1_000_000);
            let head = (7, ChainHash::GENESIS);
            let submissions = submissions(&ops);

            let mut together = working();
            let mut recorded_together = RecordedCommands::default();
            let (batch, replies) = decide_batch(0, head, &submissions, &mut together, &mut recorded_together, now).unwrap();

            let mut alone = working();
            let mut recorded_alone = RecordedCommands::default();
            let mut events = Vec::new();
            let mut one_by_one = Vec::new();
            let mut at = head;
            for submission in &submissions {
                let (single, mut reply) = decide_batch(0, at, std::slice::from_ref(submission), &mut alone, &mut recorded_alone, now).unwrap();
                at = (single.position, single.prev_hash);
                events.extend(single.events);
                one_by_one.append(&mut reply);
            }

            prop_assert_eq!(batch.events.iter().map(essence).collect::<Vec<_>>(), events.iter().map(essence).collect::<Vec<_>>());
            prop_assert_eq!(replies.iter().map(reply_essence).collect::<Vec<_>>(), one_by_one.iter().map(reply_essence).collect::<Vec<_>>());
            prop_assert_eq!(batch.position, at.0);
            for (stream_id, stream) in &together.streams {
                prop_assert_eq!(stream.version, alone.streams[stream_id].version);
                prop_assert_eq!(&stream.state, &alone.streams[stream_id].state);
            }
            prop_assert_eq!(batch.command_writes.len(), recorded_alone.len());
            // Consecutive positions from the head, each event linked to the
            // one before.
            let mut expected = head;
            for event in &batch.events {
                prop_assert_eq!(event.position, expected.0 + 1);
                prop_assert_eq!(event.prev_hash, expected.1);
                prop_assert_eq!(event.hash, expected_hash(event));
                expected = (event.position, event.hash);
            }
        }
    }
}
