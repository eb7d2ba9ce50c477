//! Compaction on both stores: the oldest rows of the log move into blocks,
//! and every reader sees the same events, byte for byte, before and after.
//! PostgreSQL cases each get a database of their own (`DATABASE_URL`);
//! SQLite cases a file of their own.

mod common;

use common::*;
use proptest::prelude::*;
use seatledger_ledger::domain::{Command, Rejection};
use seatledger_ledger::{ImportExtras, Store};
use seatledger_schema::testing::{any_entry, chain};
use seatledger_schema::OrgId;
use seatledger_schema::{canonical_bytes, Checkpoint, RecordedEvent, Timestamp};
use seatledger_schema::{LicenseId, SessionId};
use std::collections::BTreeSet;
use uuid::Uuid;

/// A fresh, migrated PostgreSQL database; dropped with the guard.
struct PgDatabase {
    admin: String,
    name: String,
    store: Store,
}

impl PgDatabase {
    async fn new() -> PgDatabase {
        let admin = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
        let name = format!("compaction_{}", Uuid::new_v4().simple());
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
            .await
            .unwrap();
        sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let url = match admin.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => unreachable!("DATABASE_URL names a database"),
        };
        let store = Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        PgDatabase { admin, name, store }
    }

    async fn drop_database(self) {
        if let Some(pool) = self.store.pg_pool() {
            pool.close().await;
        }
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&self.admin)
            .await
            .unwrap();
        let drop = format!("DROP DATABASE {} WITH (FORCE)", self.name);
        sqlx::Executor::execute(&mut conn, drop.as_str())
            .await
            .unwrap();
    }
}

/// A checkpoint of `event` (its signature is not checked on import).
fn checkpoint_of(event: &RecordedEvent) -> Checkpoint {
    Checkpoint {
        partition: event.partition,
        position: event.position,
        hash: event.hash,
        signed_at: Timestamp::from_micros_saturating(1),
        key_id: "test".into(),
        signature: vec![0; 64],
    }
}

/// What every reader of the store answers about `events`' log.
#[derive(Debug, PartialEq)]
struct Reads {
    head: (i64, seatledger_schema::ChainHash),
    all: Vec<RecordedEvent>,
    windows: Vec<Vec<RecordedEvent>>,
    raw_payloads: Vec<serde_json::Value>,
    orgs: Vec<Vec<RecordedEvent>>,
    streams: Vec<Vec<RecordedEvent>>,
    stream_ranges: Vec<Vec<RecordedEvent>>,
    sessions: Vec<Option<(String, OrgId)>>,
    checkpoint_hashes: Vec<Option<seatledger_schema::ChainHash>>,
}

async fn reads(store: &Store, events: &[RecordedEvent]) -> Reads {
    let head = events.last().map_or(0, |e| e.position);
    let mut windows = Vec::new();
    for after in (0..=head).chain([i64::MAX]) {
        windows.push(store.read_after(0, after, 3).await.unwrap());
    }
    let raw_payloads = store
        .read_range_raw(0, 0, head)
        .await
        .unwrap()
        .iter()
        .map(|event| serde_json::from_str(event.payload.get()).unwrap())
        .collect();
    let orgs: BTreeSet<OrgId> = events.iter().map(|e| e.org_id).collect();
    let mut org_reads = Vec::new();
    for org in orgs {
        // Paged two at a time, as a feed reader would.
        let mut read = Vec::new();
        loop {
            let after = read.last().map_or(0, |e: &RecordedEvent| e.position);
            let page = store.read_org_after(org, 0, after, 2).await.unwrap();
            if page.is_empty() {
                break;
            }
            read.extend(page);
        }
        assert!(store
            .read_org_after(org, 0, i64::MAX, 2)
            .await
            .unwrap()
            .is_empty());
        org_reads.push(read);
    }
    let streams: BTreeSet<&str> = events.iter().map(|e| e.stream_id.as_str()).collect();
    let mut stream_reads = Vec::new();
    let mut stream_ranges = Vec::new();
    for stream in streams {
        stream_reads.push(store.read_stream(stream).await.unwrap());
        stream_ranges.push(store.read_stream_range(stream, 1, 3).await.unwrap());
        stream_ranges.push(
            store
                .read_stream_range(stream, i64::MAX, i64::MAX)
                .await
                .unwrap(),
        );
    }
    let mut sessions = Vec::new();
    for event in events {
        if let Some(touch) = event.seat_touch() {
            sessions.push(store.find_session(touch.session_id).await.unwrap());
        }
    }
    let checkpoint_hashes = store
        .checkpoints_after(0, 0, 1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, hash)| hash)
        .collect();
    Reads {
        head: store.head(0).await.unwrap(),
        all: store.read_range(0, 0, head).await.unwrap(),
        windows,
        raw_payloads,
        orgs: org_reads,
        streams: stream_reads,
        stream_ranges,
        sessions,
        checkpoint_hashes,
    }
}

/// The blocks compaction is expected to write, by the rules of
/// docs/design.md §3: segments end at the first checkpoint at or after
/// `segment_events` events into them; a block holds at most `max_events`,
/// never crosses a segment's end, ends at or before a checkpoint, and
/// leaves the newest `keep` (at least 1) as rows.
fn expected_blocks(
    head: i64,
    signed: &std::collections::BTreeSet<i64>,
    keep: i64,
    max_events: i64,
    segment_events: i64,
) -> (Vec<(i64, i64)>, Vec<i64>) {
    let mut ends = Vec::new();
    let mut first = 1;
    while let Some(&end) = signed.range(first + segment_events - 1..).next() {
        ends.push(end);
        first = end + 1;
    }
    let last_signed = signed.last().copied().unwrap_or(0);
    let mut blocks = Vec::new();
    let mut start = 1;
    loop {
        let mut end = start + max_events - 1;
        if let Some(&segment_end) = ends.iter().find(|&&end| end >= start) {
            end = end.min(segment_end);
        }
        if end > head - keep.max(1) || end > last_signed {
            break;
        }
        blocks.push((start, end));
        start = end + 1;
    }
    (blocks, ends)
}

/// Imports `events` with checkpoints at `signed` positions, compacts with
/// `keep`, `max_events` and `segment_events` until nothing is due, and
/// checks the blocks and segments written against [`expected_blocks`] and
/// that every read answers as before.
async fn compaction_keeps_every_read(
    store: &Store,
    events: &[RecordedEvent],
    signed: &[usize],
    keep: i64,
    max_events: i64,
    segment_events: i64,
) {
    let checkpoints: Vec<Checkpoint> = signed
        .iter()
        .map(|index| {
            let event = &events[index % events.len()];
            (event.position, checkpoint_of(event))
        })
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_values()
        .collect();
    let signed_positions = checkpoints.iter().map(|c| c.position).collect();
    store
        .import_with(
            0,
            events,
            &ImportExtras {
                checkpoints,
                snapshots: Vec::new(),
            },
        )
        .await
        .unwrap();
    let before = reads(store, events).await;
    assert_eq!(before.all, events, "the store gives back what was imported");
    let mut blocks = Vec::new();
    while let Some(block) = store
        .compact(0, keep, max_events, segment_events)
        .await
        .unwrap()
    {
        blocks.push(block);
    }
    let (expected, segment_ends) = expected_blocks(
        events.len() as i64,
        &signed_positions,
        keep,
        max_events,
        segment_events,
    );
    assert_eq!(blocks, expected, "the blocks written");
    let sealed: Vec<i64> = store
        .segments(0)
        .await
        .unwrap()
        .iter()
        .filter_map(|segment| segment.last_position)
        .collect();
    assert_eq!(sealed, segment_ends, "the segments sealed");
    let after = reads(store, events).await;
    for (read, written) in after.all.iter().zip(events) {
        assert_eq!(canonical_bytes(read), canonical_bytes(written));
    }
    assert_eq!(after, before);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Every event type (legacy payloads included), any block size and any
    /// tail kept: every reader answers the same before and after.
    #[test]
    fn every_read_answers_the_same_after_compaction_on_sqlite(
        entries in proptest::collection::vec(any_entry(), 1..30),
        signed in proptest::collection::vec(0usize..30, 0..4),
        keep in 0i64..4,
        max_events in 1i64..8,
        segment_events in 1i64..12,
    ) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = sqlite_store(&dir).await;
            compaction_keeps_every_read(&store, &chain(0, &entries), &signed, keep, max_events, segment_events).await;
        });
    }

    #[test]
    fn every_read_answers_the_same_after_compaction_on_postgres(
        entries in proptest::collection::vec(any_entry(), 1..30),
        signed in proptest::collection::vec(0usize..30, 0..4),
        keep in 0i64..4,
        max_events in 1i64..8,
        segment_events in 1i64..12,
    ) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let database = PgDatabase::new().await;
            compaction_keeps_every_read(&database.store, &chain(0, &entries), &signed, keep, max_events, segment_events).await;
            database.drop_database().await;
        });
    }
}

fn heartbeat(license_id: LicenseId, session_id: SessionId) -> Command {
    Command::Heartbeat {
        license_id,
        session_id,
        by: seatledger_ledger::domain::SeatActor::Unchecked,
    }
}

/// A license whose every event but the last was compacted decides as it
/// did, by a new appender with nothing cached (a restart): the seats taken
/// still count, a lease granted in a block still heartbeats, and the log
/// goes on from the head the blocks end at.
async fn a_license_decides_the_same_after_compaction(store: &Store) {
    let config = seatledger_ledger::AppenderConfig {
        checkpoint_every_events: 1,
        ..Default::default()
    };
    let key = std::sync::Arc::new(seatledger_ledger::SigningKey::generate().unwrap());
    let clock = std::sync::Arc::new(seatledger_ledger::SystemClock);
    let appender = start(store, key.clone(), clock.clone(), config.clone());
    let license = Uuid::now_v7();
    assert!(submit(&appender, issue(license.into(), 3))
        .await
        .is_accepted());
    let mut sessions = Vec::new();
    for machine in 0..3 {
        let granted = submit(&appender, acquire(license.into(), machine)).await;
        sessions.push(granted.lease.expect("a seat").session_id);
    }
    for session in &sessions {
        assert!(submit(&appender, heartbeat(license.into(), *session))
            .await
            .is_accepted());
    }
    drop(appender);
    let head = store.head(0).await.unwrap();
    let mut compacted = 0;
    while let Some((first, last)) = store.compact(0, 1, 2, i64::MAX).await.unwrap() {
        compacted += last - first + 1;
    }
    assert_eq!(
        compacted,
        (head.0 - 1) / 2 * 2,
        "all but the newest event or two"
    );
    assert_eq!(store.head(0).await.unwrap(), head);

    let restarted = start(store, key, clock, config);
    let denied = submit(&restarted, acquire(license.into(), 7)).await;
    assert_eq!(denied.rejection, Some(Rejection::NoSeatsAvailable));
    let extended = submit(&restarted, heartbeat(license.into(), sessions[0])).await;
    assert!(extended.is_accepted(), "{:?}", extended.rejection);
    assert_eq!(
        store
            .find_session(sessions[0])
            .await
            .unwrap()
            .map(|(stream, _)| stream),
        Some(format!("license-{license}"))
    );
    assert_chain_verifies(store).await;
}

#[sqlx::test(migrations = false)]
async fn a_license_decides_the_same_after_compaction_on_postgres(pool: sqlx::PgPool) {
    let store = Store::from_pg_pool(pool);
    store.migrate().await.unwrap();
    a_license_decides_the_same_after_compaction(&store).await;
}

#[tokio::test]
async fn a_license_decides_the_same_after_compaction_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_license_decides_the_same_after_compaction(&sqlite_store(&dir).await).await;
}

/// A block altered in the database (its triggers dropped first) is
/// refused by every read that reaches it, naming its range; rows that no
/// block covers still cannot be deleted.
#[tokio::test]
async fn an_altered_block_is_refused_and_uncompacted_rows_cannot_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let entries: Vec<_> = (0..6u128)
        .map(|n| seatledger_schema::testing::Entry {
            event_type: "SeatHeartbeat".into(),
            payload: serde_json::json!({"session_id": Uuid::from_u128(n), "expires_at": "2030-01-01T00:00:00.000000Z"}),
            metadata: Default::default(),
            event_id: Uuid::from_u128(50 + n),
            org: 0,
            stream: 0,
            occurred_at: Timestamp::from_micros_saturating(1),
            recorded_at: Timestamp::from_micros_saturating(1),
        })
        .collect();
    let events = chain(0, &entries);
    let extras = ImportExtras {
        checkpoints: vec![checkpoint_of(&events[5])],
        snapshots: Vec::new(),
    };
    store.import_with(0, &events, &extras).await.unwrap();
    let pool = store.sqlite_pool().unwrap();
    let refused = sqlx::query("DELETE FROM events WHERE position = 6")
        .execute(pool)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");
    assert_eq!(
        store.compact(0, 1, 3, i64::MAX).await.unwrap(),
        Some((1, 3))
    );
    sqlx::query("DROP TRIGGER event_blocks_no_update")
        .execute(pool)
        .await
        .unwrap();
    // Give the first block the body of the second: well-formed, but not
    // the events its range and hashes record.
    assert_eq!(
        store.compact(0, 1, 2, i64::MAX).await.unwrap(),
        Some((4, 5))
    );
    sqlx::query(
        "UPDATE event_blocks SET body = (SELECT body FROM event_blocks WHERE first_position = 4) \
         WHERE first_position = 1",
    )
    .execute(pool)
    .await
    .unwrap();
    let error = store.read_range(0, 0, 6).await.unwrap_err();
    assert!(
        error.to_string().contains("positions 1..=3 of partition 0"),
        "{error}"
    );
    let error = store.read_stream(&events[0].stream_id).await.unwrap_err();
    assert!(error.to_string().contains("positions 1..=3"), "{error}");
}
