//! The ledger against a real PostgreSQL: a fresh database per test
//! (`#[sqlx::test]`), so tests run in parallel.

mod common;

use common::*;
use futures::future::join_all;
use seatledger_ledger::domain::{Command, Rejection};
use seatledger_ledger::{
    request_hash, AppendError, AppenderConfig, CommitNotifier, Store, Submission, SystemClock,
};
use seatledger_schema::limits::SNAPSHOT_EVERY_EVENTS;
use seatledger_schema::SessionId;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

async fn migrated(pool: sqlx::PgPool) -> Store {
    let store = Store::from_pg_pool(pool);
    store.migrate().await.unwrap();
    store
}

#[sqlx::test(migrations = false)]
async fn two_appenders_on_separate_pools_grant_exactly_the_seat_limit(pool: sqlx::PgPool) {
    let store_a = migrated(pool.clone()).await;
    let store_b = second_pg_store(&pool).await;
    let key = Arc::new(seatledger_ledger::SigningKey::generate().unwrap());
    let replica_a = start(
        &store_a,
        key.clone(),
        Arc::new(SystemClock),
        AppenderConfig::default(),
    );
    let replica_b = start(
        &store_b,
        key,
        Arc::new(SystemClock),
        AppenderConfig::default(),
    );
    let license = Uuid::now_v7();
    assert!(submit(&replica_a, issue(license.into(), 10))
        .await
        .is_accepted());

    let attempts = (0..200).map(|machine| {
        let replica = if machine % 2 == 0 {
            replica_a.clone()
        } else {
            replica_b.clone()
        };
        tokio::spawn(async move { submit(&replica, acquire(license.into(), machine)).await })
    });
    let results: Vec<_> = join_all(attempts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let granted = results.iter().filter(|r| r.is_accepted()).count();
    let denied = results
        .iter()
        .filter(|r| r.rejection == Some(Rejection::NoSeatsAvailable))
        .count();
    assert_eq!((granted, denied), (10, 190));

    let events = assert_chain_verifies(&store_a).await;
    let count = |kind: &str| events.iter().filter(|e| e.event_type == kind).count();
    assert_eq!(count("SeatAcquired"), 10);
    assert_eq!(count("SeatDenied"), 190);
    assert_eq!(events.len(), 1 + 200);
    // Generations are 1..=10, each once.
    let mut generations: Vec<u64> = events
        .iter()
        .filter(|e| e.event_type == "SeatAcquired")
        .map(|e| e.payload["generation"].as_u64().unwrap())
        .collect();
    generations.sort();
    assert_eq!(generations, (1..=10).collect::<Vec<_>>());
}

/// A batch reads the clock only once it holds the partition lock: a batch
/// that waited behind another replica's decides with the time after the
/// wait, so `recorded_at` never goes backwards in position order.
/// Commands that follow each other closely (one client, each sent once
/// the one before is answered) are written under one lead: the appender
/// waits `LEADER_IDLE_HOLD` for the next before it lets the lock go, so
/// each costs one round trip, not a lock, a read of the head, the write
/// and an unlock.
#[sqlx::test(migrations = false)]
async fn commands_in_quick_succession_are_written_under_one_lead(pool: sqlx::PgPool) {
    let store = migrated(pool).await;
    let (appender, _) = start_default(&store);
    let license = Uuid::now_v7().into();
    submit(&appender, issue(license, 100)).await;
    let before = appender.stats().leads.load(Ordering::Relaxed);
    for machine in 0..20 {
        let result = submit(&appender, acquire(license, machine)).await;
        assert!(result.is_accepted());
    }
    let leads = appender.stats().leads.load(Ordering::Relaxed) - before;
    // Without the idle hold this is 20; a lead lasts at most
    // LEADER_HOLD_MAX (50 ms), so a slow machine may need a few.
    assert!(
        leads <= 10,
        "20 commands in a row took the lead {leads} times"
    );
}

#[sqlx::test(migrations = false)]
async fn the_clock_is_read_after_the_partition_lock_is_taken(pool: sqlx::PgPool) {
    let store = migrated(pool.clone()).await;
    let key = Arc::new(seatledger_ledger::SigningKey::generate().unwrap());
    let start_at = seatledger_schema::Timestamp::parse("2030-01-01T00:00:00Z").unwrap();
    let clock = seatledger_ledger::ManualClock::new(start_at);
    let appender = start(
        &store,
        key,
        Arc::new(clock.clone()),
        AppenderConfig::default(),
    );
    let license = Uuid::now_v7();
    submit(&appender, issue(license.into(), 5)).await;

    // Another replica holds the partition lock.
    let mut holder = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(seatledger_ledger::store::partition_lock_key(0))
        .execute(&mut *holder)
        .await
        .unwrap();
    let pending = tokio::spawn({
        let appender = appender.clone();
        async move { submit(&appender, acquire(license.into(), 1)).await }
    });
    // Wait until the batch is queued behind the lock, then let time pass.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the batch never waited"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    clock.advance_seconds(10);
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(seatledger_ledger::store::partition_lock_key(0))
        .execute(&mut *holder)
        .await
        .unwrap();
    let result = pending.await.unwrap();
    assert_eq!(result.events[0].recorded_at, start_at.plus_seconds(10));
}

#[sqlx::test(migrations = false)]
async fn a_tailing_reader_never_sees_a_gap_or_a_later_position_first(pool: sqlx::PgPool) {
    let store_a = migrated(pool.clone()).await;
    let store_b = second_pg_store(&pool).await;
    let key = Arc::new(seatledger_ledger::SigningKey::generate().unwrap());
    let config = AppenderConfig {
        batch_max: 8,
        ..AppenderConfig::default()
    };
    let replicas = [
        start(&store_a, key.clone(), Arc::new(SystemClock), config.clone()),
        start(&store_b, key, Arc::new(SystemClock), config),
    ];
    const WRITERS: usize = 8;
    const COMMANDS_PER_WRITER: usize = 60;
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let replica = replicas[writer % 2].clone();
            tokio::spawn(async move {
                let license = Uuid::now_v7();
                submit(&replica, issue(license.into(), 1000)).await;
                for machine in 1..COMMANDS_PER_WRITER {
                    assert!(submit(&replica, acquire(license.into(), machine))
                        .await
                        .is_accepted());
                }
            })
        })
        .collect();
    let expected = (WRITERS * COMMANDS_PER_WRITER) as i64;
    let reader_store = second_pg_store(&pool).await;
    let reader = tokio::spawn(async move {
        let mut seen = 0i64;
        let mut reads = 0u64;
        while seen < expected {
            let batch = reader_store.read_after(0, seen, 7).await.unwrap();
            for event in &batch {
                assert_eq!(event.position, seen + 1, "gap or reorder after {seen}");
                seen = event.position;
            }
            reads += 1;
            if batch.is_empty() {
                tokio::task::yield_now().await;
            }
        }
        reads
    });
    for writer in writers {
        writer.await.unwrap();
    }
    let reads = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .unwrap()
        .unwrap();
    assert!(reads > 1);
    assert_chain_verifies(&store_a).await;
}

#[sqlx::test(migrations = false)]
async fn an_idempotent_command_returns_the_same_result_and_appends_nothing(pool: sqlx::PgPool) {
    let store = migrated(pool).await;
    idempotency_scenario(&store).await;
}

#[tokio::test]
async fn idempotency_holds_on_sqlite_too() {
    let dir = tempfile::tempdir().unwrap();
    idempotency_scenario(&sqlite_store(&dir).await).await;
}

async fn idempotency_scenario(store: &Store) {
    let (appender, _) = start_default(store);
    let license = Uuid::now_v7();
    submit(&appender, issue(license.into(), 2)).await;
    let hash = request_hash(&[b"POST /acquire", b"{machine-1}"]);
    let first = appender
        .submit(Submission::new(ORG, acquire(license.into(), 1)).with_command_id("key-1", hash))
        .await
        .unwrap();
    assert!(first.is_accepted() && !first.replayed);
    let before = read_all(store).await.len();
    // A retry carries a fresh session id: the request hash, not the
    // command, identifies the request.
    let again = appender
        .submit(Submission::new(ORG, acquire(license.into(), 1)).with_command_id("key-1", hash))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.events, first.events);
    assert_eq!(again.license, first.license);
    assert_eq!(read_all(store).await.len(), before);

    let other = request_hash(&[b"POST /acquire", b"{machine-2}"]);
    let reused = appender
        .submit(Submission::new(ORG, acquire(license.into(), 2)).with_command_id("key-1", other))
        .await
        .unwrap();
    assert_eq!(reused.rejection, Some(Rejection::IdempotencyKeyReused));
    assert_eq!(read_all(store).await.len(), before);

    // Two identical submissions in flight at once: one result, recorded once.
    let hash = request_hash(&[b"release"]);
    let session = first.events[0].payload["session_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let release = || {
        Submission::new(
            ORG,
            Command::ReleaseSeat {
                license_id: license.into(),
                session_id: session,
                by: seatledger_ledger::domain::SeatActor::Unchecked,
            },
        )
        .with_command_id("key-2", hash)
    };
    let (a, b) = tokio::join!(appender.submit(release()), appender.submit(release()));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.events, b.events);
    assert!(a.replayed ^ b.replayed);
    assert_eq!(read_all(store).await.len(), before + 1);
}

#[sqlx::test(migrations = false)]
async fn the_database_rejects_update_delete_and_truncate_of_events(pool: sqlx::PgPool) {
    let store = migrated(pool.clone()).await;
    let (appender, _) = start_default(&store);
    submit(&appender, issue(Uuid::now_v7().into(), 1)).await;
    for statement in [
        "UPDATE events SET event_type = 'X'",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let error = sqlx::query(statement).execute(&pool).await.unwrap_err();
        assert!(
            error.to_string().contains("append-only"),
            "{statement}: {error}"
        );
    }
    assert_eq!(read_all(&store).await.len(), 1);
}

#[tokio::test]
async fn sqlite_rejects_update_and_delete_of_events_and_runs_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let (appender, _) = start_default(&store);
    submit(&appender, issue(Uuid::now_v7().into(), 1)).await;
    let pool = store.sqlite_pool().unwrap();
    for statement in ["UPDATE events SET event_type = 'X'", "DELETE FROM events"] {
        let error = sqlx::query(statement).execute(pool).await.unwrap_err();
        assert!(
            error.to_string().contains("append-only"),
            "{statement}: {error}"
        );
    }
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(read_all(&store).await.len(), 1);
}

#[sqlx::test(migrations = false)]
async fn an_export_from_sqlite_imports_into_postgres_with_identical_hashes(pool: sqlx::PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite_store(&dir).await;
    let (appender, _) = start_default(&sqlite);
    let license = Uuid::now_v7();
    submit(&appender, issue(license.into(), 3)).await;
    for machine in 0..5 {
        submit(&appender, acquire(license.into(), machine)).await;
    }
    let exported = assert_chain_verifies(&sqlite).await;

    let postgres = migrated(pool).await;
    postgres.import(0, &exported).await.unwrap();
    let imported = assert_chain_verifies(&postgres).await;
    assert_eq!(
        imported, exported,
        "same rows, same hashes on both backends"
    );
    // Importing again does not continue the chain: refused.
    assert!(postgres.import(0, &exported).await.is_err());

    // Both continue from the same state: the next acquire is denied on both.
    let (pg_appender, _) = start_default(&postgres);
    let on_pg = submit(&pg_appender, acquire(license.into(), 99)).await;
    let on_sqlite = submit(&appender, acquire(license.into(), 99)).await;
    assert_eq!(on_pg.rejection, Some(Rejection::NoSeatsAvailable));
    assert_eq!(on_sqlite.rejection, Some(Rejection::NoSeatsAvailable));
}

#[sqlx::test(migrations = false)]
async fn checkpoints_are_signed_every_n_events_and_verify_against_the_chain(pool: sqlx::PgPool) {
    let store = migrated(pool).await;
    let key = Arc::new(seatledger_ledger::SigningKey::generate().unwrap());
    // Small batches, so that each mark is crossed by its own batch.
    let config = AppenderConfig {
        checkpoint_every_events: 50,
        batch_max: 10,
        ..AppenderConfig::default()
    };
    let appender = start(&store, key.clone(), Arc::new(SystemClock), config);
    let license = Uuid::now_v7();
    submit(&appender, issue(license.into(), 1000)).await;
    let acquires = (0..180).map(|machine| {
        let appender = appender.clone();
        tokio::spawn(async move { submit(&appender, acquire(license.into(), machine)).await })
    });
    join_all(acquires).await;
    let events = assert_chain_verifies(&store).await;
    let checkpoints = store.checkpoints(0).await.unwrap();
    // 181 events cross the marks 50, 100 and 150.
    assert!(checkpoints.len() >= 3, "{checkpoints:?}");
    for checkpoint in &checkpoints {
        checkpoint.verify(key.key_id(), key.public_key()).unwrap();
        assert_eq!(
            events[checkpoint.position as usize - 1].hash,
            checkpoint.hash
        );
        let mut forged = checkpoint.clone();
        forged.position -= 1;
        assert!(forged.verify(key.key_id(), key.public_key()).is_err());
    }
}

#[sqlx::test(migrations = false)]
async fn a_long_stream_is_snapshotted_and_a_fresh_appender_continues_from_snapshot_and_tail(
    pool: sqlx::PgPool,
) {
    let store = migrated(pool.clone()).await;
    let (appender, _) = start_default(&store);
    let license = Uuid::now_v7();
    submit(&appender, issue(license.into(), 2000)).await;
    let total = SNAPSHOT_EVERY_EVENTS as usize + 200;
    let acquires = (1..total).map(|machine| {
        let appender = appender.clone();
        tokio::spawn(async move { submit(&appender, acquire(license.into(), machine)).await })
    });
    join_all(acquires).await;
    let (snapshot_version, version): (Option<i64>, i64) = sqlx::query_as(
        "SELECT p.version, s.version FROM streams s \
         LEFT JOIN snapshots p ON p.stream_id = s.stream_id WHERE s.stream_id = $1",
    )
    .bind(format!("license-{license}"))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(version, total as i64);
    let snapshot_version = snapshot_version.expect("a snapshot was written");
    assert!(snapshot_version >= SNAPSHOT_EVERY_EVENTS && snapshot_version < version);

    // Another replica (no cache) loads snapshot + tail and sees every lease.
    let (fresh, _) = start_default(&second_pg_store(&pool).await);
    let again = submit(&fresh, acquire(license.into(), 1)).await;
    assert!(
        matches!(again.events[0].event_type.as_str(), "SeatHeartbeat"),
        "re-acquire is recognised"
    );
    assert_eq!(again.license.unwrap().seats_used, (total - 1) as u32);
    assert_chain_verifies(&store).await;
}

/// The amortized snapshot policy: a license growing to 20,000 live leases
/// is snapshotted only when the events since the last snapshot reach its
/// size, so the snapshot bytes written stay within twice what the final
/// state takes (a constant share per event), and the tail after the last
/// snapshot stays under the state's size. Rewriting the state every 1,000
/// events, as before, wrote about ten times that (the sum of 1,000, 2,000,
/// … 20,000 leases). A fresh appender still loads snapshot + tail.
#[sqlx::test(migrations = false)]
async fn snapshot_bytes_per_event_stay_bounded_however_many_leases(pool: sqlx::PgPool) {
    let store = migrated(pool.clone()).await;
    let (appender, _) = start_default(&store);
    let license = Uuid::now_v7();
    submit(&appender, issue(license.into(), 30_000)).await;
    const LEASES: usize = 20_000;
    for chunk in (1..=LEASES).collect::<Vec<_>>().chunks(500) {
        let acquires = chunk.iter().map(|&machine| {
            let appender = appender.clone();
            tokio::spawn(async move { submit(&appender, acquire(license.into(), machine)).await })
        });
        join_all(acquires).await;
    }
    let stats = appender.stats();
    until_snapshots_stored(stats).await;
    let written = stats
        .snapshot_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    let snapshots = stats.snapshots.load(std::sync::atomic::Ordering::Relaxed);
    let (state, version, snapshot_version): (String, i64, i64) = sqlx::query_as(
        "SELECT p.state, s.version, p.version FROM streams s \
         JOIN snapshots p ON p.stream_id = s.stream_id WHERE s.stream_id = $1",
    )
    .bind(format!("license-{license}"))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(version, LEASES as i64 + 1);
    // The final state's size (as JSON text, as the appender writes it).
    let (fresh, _) = start_default(&second_pg_store(&pool).await);
    let again = submit(&fresh, acquire(license.into(), 1)).await;
    assert_eq!(again.license.unwrap().seats_used, LEASES as u32);
    let final_bytes = {
        let value: serde_json::Value = serde_json::from_str(&state).unwrap();
        let leases = value["leases"].as_array().map_or(0, Vec::len);
        // The stored snapshot holds `leases` leases; scale to all of them.
        let compact = serde_json::to_string(&value).unwrap();
        (compact.len() as u64) * LEASES as u64 / leases.max(1) as u64
    };
    assert!(snapshots >= 1, "{snapshots} snapshots");
    assert!(
        version - snapshot_version <= LEASES as i64,
        "a tail of {} events after the snapshot at {snapshot_version}",
        version - snapshot_version
    );
    assert!(
        written <= 2 * final_bytes,
        "{written} snapshot bytes for {LEASES} events, the final state being {final_bytes} bytes"
    );
    println!("{snapshots} snapshots, {written} bytes for {LEASES} events ({} per event); final state {final_bytes} bytes", written / LEASES as u64);
}

/// Submits `commands`, 500 at a time (the lead is let go between chunks,
/// when the queue runs dry); each must be accepted.
async fn submit_all(appender: &seatledger_ledger::Appender, commands: Vec<Command>) {
    let mut commands = commands.into_iter().peekable();
    while commands.peek().is_some() {
        let chunk = commands.by_ref().take(500).map(|command| {
            let appender = appender.clone();
            tokio::spawn(async move { submit(&appender, command).await })
        });
        for result in join_all(chunk.collect::<Vec<_>>()).await {
            assert!(result.unwrap().is_accepted());
        }
    }
}

/// A large snapshot goes to the snapshot writer, whose connection is then
/// closed rather than kept with a buffer of the snapshot's size.
#[sqlx::test(migrations = false)]
async fn the_connection_that_wrote_a_large_snapshot_is_closed_not_pooled(pool: sqlx::PgPool) {
    const LEASES: usize = 7_000;
    let store = migrated(pool.clone()).await;
    let (appender, _) = start_default(&store);
    let license = Uuid::now_v7();
    submit(&appender, issue(license.into(), 20_000)).await;
    let stats = appender.stats();
    let acquires: Vec<Command> = (0..LEASES)
        .map(|machine| acquire(license.into(), machine))
        .collect();
    let sessions: Vec<SessionId> = acquires
        .iter()
        .filter_map(|command| match command {
            Command::AcquireSeat { session_id, .. } => Some(*session_id),
            _ => None,
        })
        .collect();
    // One snapshot, at 1,000 leases: about 200 KB.
    submit_all(&appender, acquires).await;
    assert_eq!(stats.snapshots.load(Ordering::Relaxed), 1);
    assert_eq!(stats.connections_retired.load(Ordering::Relaxed), 0);
    // A heartbeat for each lease: the next snapshot is due (as many events
    // as the state holds leases) and holds 7,000 leases, over 1 MiB.
    let heartbeats = sessions.iter().map(|&session_id| Command::Heartbeat {
        license_id: license.into(),
        session_id,
        by: seatledger_ledger::domain::SeatActor::Unchecked,
    });
    submit_all(&appender, heartbeats.collect()).await;
    until_snapshots_stored(stats).await;
    assert_eq!(stats.snapshots_handed_to_writer.load(Ordering::Relaxed), 1);
    let stored: i32 =
        sqlx::query_scalar("SELECT octet_length(state) FROM snapshots WHERE stream_id = $1")
            .bind(format!("license-{license}"))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(stored >= 1 << 20, "the stored snapshot is {stored} bytes");
    assert!(stats.connections_retired.load(Ordering::Relaxed) >= 1);
    // The appender goes on, on a new connection.
    let granted = submit(&appender, acquire(license.into(), LEASES)).await;
    assert_eq!(granted.license.unwrap().seats_used, LEASES as u32 + 1);
    assert_chain_verifies(&store).await;
}

#[sqlx::test(migrations = false)]
async fn a_commit_notifies_a_listener_on_another_pool(pool: sqlx::PgPool) {
    let store = migrated(pool.clone()).await;
    let listener_store = second_pg_store(&pool).await;
    let notifier = CommitNotifier::default();
    let mut woken = notifier.subscribe();
    let listener = tokio::spawn(seatledger_ledger::listen::listen(
        listener_store.pg_pool().unwrap().clone(),
        0,
        notifier,
    ));
    let (appender, _) = start_default(&store);
    // The listener may not have subscribed yet: keep appending until woken.
    let license = Uuid::now_v7();
    submit(&appender, issue(license.into(), 100)).await;
    let wait = async {
        let mut machine = 0;
        loop {
            tokio::select! {
                changed = woken.changed() => { changed.unwrap(); return *woken.borrow(); }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    machine += 1;
                    submit(&appender, acquire(license.into(), machine)).await;
                }
            }
        }
    };
    let position = tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("woken by NOTIFY");
    assert!(position >= 1);
    listener.abort();
}

#[sqlx::test(migrations = false)]
async fn a_store_failure_fails_the_batch_and_writes_nothing(pool: sqlx::PgPool) {
    let store = migrated(pool.clone()).await;
    let (appender, _) = start_default(&store);
    let license = Uuid::now_v7();
    submit(&appender, issue(license.into(), 5)).await;
    // Make the next insert fail inside the transaction.
    sqlx::query("ALTER TABLE events ADD CONSTRAINT no_more CHECK (position < 2) NOT VALID")
        .execute(&pool)
        .await
        .unwrap();
    let error = appender
        .submit(Submission::new(ORG, acquire(license.into(), 1)))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no_more"), "{error}");
    sqlx::query("ALTER TABLE events DROP CONSTRAINT no_more")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(read_all(&store).await.len(), 1);
    // The appender recovers; the failed command left no state behind.
    let retried = submit(&appender, acquire(license.into(), 1)).await;
    assert_eq!(retried.events[0].event_type, "SeatAcquired");
    assert_eq!(retried.license.unwrap().seats_used, 1);
    assert_chain_verifies(&store).await;
}

#[sqlx::test(migrations = false)]
async fn a_command_the_database_refuses_fails_alone_not_its_batch(pool: sqlx::PgPool) {
    let store = migrated(pool.clone()).await;
    let key = Arc::new(seatledger_ledger::SigningKey::generate().unwrap());
    // A long linger gathers the concurrent submissions into one batch.
    let config = AppenderConfig {
        linger: Duration::from_millis(200),
        ..AppenderConfig::default()
    };
    let appender = start(&store, key, Arc::new(SystemClock), config);
    let license = Uuid::now_v7();
    submit(&appender, issue(license.into(), 100)).await;
    // The database refuses one particular machine's event.
    sqlx::query("ALTER TABLE events ADD CONSTRAINT no_poison CHECK (payload->>'hardware_id' IS DISTINCT FROM 'machine-13')")
        .execute(&pool)
        .await
        .unwrap();
    let attempts = (0..20).map(|machine| {
        let appender = appender.clone();
        tokio::spawn(async move {
            appender
                .submit(Submission::new(ORG, acquire(license.into(), machine)))
                .await
        })
    });
    let results: Vec<_> = join_all(attempts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for (machine, result) in results.iter().enumerate() {
        match result {
            Err(error) => {
                assert_eq!(machine, 13, "only the poisonous command fails");
                assert!(error.to_string().contains("no_poison"), "{error}");
            }
            Ok(result) => assert!(result.is_accepted(), "machine {machine}"),
        }
    }
    assert!(results[13].is_err());
    let events = assert_chain_verifies(&store).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == "SeatAcquired")
            .count(),
        19
    );
}

/// A concurrent burst commits in real batches and no batch fails: the
/// retry-alone path for refused batches must never hide a statement that
/// fails whenever a batch has more than one row.
async fn burst_commits_in_batches_without_failures(store: &Store) {
    let key = Arc::new(seatledger_ledger::SigningKey::generate().unwrap());
    let config = AppenderConfig {
        linger: Duration::from_millis(100),
        ..AppenderConfig::default()
    };
    let appender = start(store, key, Arc::new(SystemClock), config);
    let licenses: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    for license in &licenses {
        submit(&appender, issue((*license).into(), 100)).await;
    }
    let stats = appender.stats();
    let before = stats.batches.load(std::sync::atomic::Ordering::Relaxed);
    let attempts = (0..60).map(|machine| {
        let appender = appender.clone();
        let license = licenses[machine % licenses.len()];
        tokio::spawn(async move { submit(&appender, acquire(license.into(), machine)).await })
    });
    for result in join_all(attempts).await {
        assert!(result.unwrap().is_accepted());
    }
    let batches = stats.batches.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert_eq!(
        stats
            .failed_batches
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(
        batches < 60 / 2,
        "60 concurrent commands took {batches} batches"
    );
    assert_chain_verifies(store).await;
}

#[sqlx::test(migrations = false)]
async fn a_burst_commits_in_batches_without_failures_on_postgres(pool: sqlx::PgPool) {
    burst_commits_in_batches_without_failures(&migrated(pool).await).await;
}

#[tokio::test]
async fn a_burst_commits_in_batches_without_failures_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    burst_commits_in_batches_without_failures(&sqlite_store(&dir).await).await;
}

/// A start warms the streams that are costly to load (here a license
/// of 12,000 leases whose events mostly follow its snapshot) before its
/// first batch: the first command on it loads nothing under the partition
/// lock, only what another appender wrote since the warm-up is read, and a
/// small stream is left to its first command. `second` is the new
/// appender's store (another replica's pool on PostgreSQL).
async fn a_start_warms_what_is_costly_to_load(first: &Store, second: &Store) {
    const LEASES: usize = 12_000;
    let (writer, _) = start_default(first);
    let (large, small) = (Uuid::now_v7(), Uuid::now_v7());
    submit(&writer, issue(large.into(), 20_000)).await;
    submit(&writer, issue(small.into(), 10)).await;
    submit_all(
        &writer,
        (0..LEASES).map(|m| acquire(large.into(), m)).collect(),
    )
    .await;
    submit(&writer, acquire(small.into(), 0)).await;

    let (fresh, _) = start_default(second);
    fresh.warmed().await;
    let stats = fresh.stats();
    assert_eq!(stats.streams_warmed.load(Ordering::Relaxed), 1);
    // Written by the other appender after the warm-up: read at the first
    // command, on top of the warmed state.
    submit(&writer, acquire(large.into(), LEASES)).await;
    let granted = submit(&fresh, acquire(large.into(), LEASES + 1)).await;
    assert_eq!(granted.license.unwrap().seats_used, LEASES as u32 + 2);
    assert_eq!(stats.stream_loads.load(Ordering::Relaxed), 0);
    let granted = submit(&fresh, acquire(small.into(), 1)).await;
    assert_eq!(granted.license.unwrap().seats_used, 2);
    assert_eq!(stats.stream_loads.load(Ordering::Relaxed), 1);
    assert_chain_verifies(first).await;
}

#[sqlx::test(migrations = false)]
async fn a_start_warms_what_is_costly_to_load_on_postgres(pool: sqlx::PgPool) {
    let first = migrated(pool.clone()).await;
    a_start_warms_what_is_costly_to_load(&first, &second_pg_store(&pool).await).await;
}

#[tokio::test]
async fn a_start_warms_what_is_costly_to_load_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    a_start_warms_what_is_costly_to_load(&store, &store).await;
}

/// `read_range` returns exactly `after < position <= through`, capped at
/// the head, and nothing for an empty or inverted range.
async fn read_range_is_bounded_on_both_sides(store: &Store) {
    let (appender, _) = start_default(store);
    let license = Uuid::now_v7();
    submit(&appender, issue(license.into(), 10)).await;
    for machine in 0..5 {
        submit(&appender, acquire(license.into(), machine)).await;
    }
    let positions = |events: Vec<seatledger_schema::RecordedEvent>| {
        events.iter().map(|e| e.position).collect::<Vec<_>>()
    };
    assert_eq!(
        positions(store.read_range(0, 2, 5).await.unwrap()),
        [3, 4, 5]
    );
    assert_eq!(
        positions(store.read_range(0, 4, 100).await.unwrap()),
        [5, 6]
    );
    assert!(store.read_range(0, 5, 5).await.unwrap().is_empty());
    assert!(store.read_range(0, 5, 3).await.unwrap().is_empty());
    assert_eq!(positions(store.read_after(0, 4, 1).await.unwrap()), [5]);
}

#[sqlx::test(migrations = false)]
async fn read_range_is_bounded_on_both_sides_on_postgres(pool: sqlx::PgPool) {
    read_range_is_bounded_on_both_sides(&migrated(pool).await).await;
}

#[tokio::test]
async fn read_range_is_bounded_on_both_sides_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    read_range_is_bounded_on_both_sides(&sqlite_store(&dir).await).await;
}

/// A raw read (payload and metadata left as the stored text, what the NATS
/// publisher sends) serializes to the same envelope as a parsed read:
/// the same JSON value, and read back as the same event. Payloads with
/// escapes, non-ASCII text, nested values, numbers of every JSON shape and
/// members whose order differs between `jsonb` and a sorted map.
async fn a_raw_read_is_the_same_envelope_as_a_parsed_read(store: &Store) {
    let (appender, _) = start_default(store);
    let license = Uuid::now_v7();
    submit(&appender, issue(license.into(), 2)).await;
    for machine in 0..3 {
        submit(&appender, acquire(license.into(), machine)).await;
    }
    let awkward = [
        serde_json::json!({}),
        serde_json::json!({"a": "quote \" backslash \\ control \u{1} tab \t", "é": "ünïcødé 🎫"}),
        serde_json::json!({"zz": [1, -2, 3.5, 1e300, -0.0, 18446744073709551615u64], "a": {"nested": [null, true, false, {}]}, "mmm": ""}),
        serde_json::json!({"long member name": 1, "b": 2, "ccc": -9223372036854775808i64}),
    ];
    for payload in awkward {
        plant_event(store, ORG, "planted-1", "Planted", payload).await;
    }
    let (head, _) = store.head(0).await.unwrap();
    let parsed = store.read_range(0, 0, head).await.unwrap();
    let raw = store.read_range_raw(0, 0, head).await.unwrap();
    assert_eq!(parsed.len(), head as usize);
    assert_eq!(raw.len(), parsed.len());
    for (raw, parsed) in raw.iter().zip(&parsed) {
        assert_eq!(
            serde_json::to_value(raw).unwrap(),
            serde_json::to_value(parsed).unwrap(),
            "position {}",
            parsed.position
        );
        let body = serde_json::to_vec(raw).unwrap();
        let back: seatledger_schema::RecordedEvent = serde_json::from_slice(&body).unwrap();
        assert_eq!(&back, parsed);
    }
}

#[sqlx::test(migrations = false)]
async fn a_raw_read_is_the_same_envelope_as_a_parsed_read_on_postgres(pool: sqlx::PgPool) {
    a_raw_read_is_the_same_envelope_as_a_parsed_read(&migrated(pool).await).await;
}

#[tokio::test]
async fn a_raw_read_is_the_same_envelope_as_a_parsed_read_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_raw_read_is_the_same_envelope_as_a_parsed_read(&sqlite_store(&dir).await).await;
}

#[sqlx::test(migrations = false)]
async fn a_batch_behind_a_stuck_lock_holder_fails_as_unavailable_then_recovers(pool: sqlx::PgPool) {
    let store = migrated(pool.clone()).await;
    let key = Arc::new(seatledger_ledger::SigningKey::generate().unwrap());
    let config = AppenderConfig {
        lock_timeout: Duration::from_millis(200),
        ..AppenderConfig::default()
    };
    let appender = start(&store, key, Arc::new(SystemClock), config);
    let license = Uuid::now_v7();
    submit(&appender, issue(license.into(), 5)).await;
    // A stuck writer (a hung replica, an operator's open transaction)
    // holds the partition lock.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(seatledger_ledger::store::partition_lock_key(0))
        .execute(&mut *holder)
        .await
        .unwrap();
    let blocked = tokio::time::timeout(
        Duration::from_secs(30),
        appender.submit(Submission::new(ORG, acquire(license.into(), 1))),
    )
    .await
    .expect("the append gave up instead of waiting for the holder");
    let error = blocked.unwrap_err();
    assert!(error.is_unavailable(), "{error}");
    assert_eq!(read_all(&store).await.len(), 1, "nothing was written");
    holder.rollback().await.unwrap();
    let retried = submit(&appender, acquire(license.into(), 1)).await;
    assert_eq!(retried.events[0].event_type, "SeatAcquired");
    assert_chain_verifies(&store).await;
}

/// Issue 8, point 3: one command on a stream that cannot be loaded fails
/// alone with `StreamUnreadable`; the 50 commands on healthy licenses in
/// the same batch commit; the next command on the broken stream fails at
/// once without loading it again.
#[sqlx::test(migrations = false)]
async fn an_unreadable_stream_fails_alone_and_is_not_reloaded(pool: sqlx::PgPool) {
    let store = migrated(pool).await;
    let key = Arc::new(seatledger_ledger::SigningKey::generate().unwrap());
    // A long linger gathers the concurrent submissions into one batch.
    let config = AppenderConfig {
        linger: Duration::from_millis(200),
        ..AppenderConfig::default()
    };
    let appender = start(&store, key, Arc::new(SystemClock), config);
    let broken = Uuid::now_v7();
    submit(&appender, issue(broken.into(), 5)).await;
    let healthy: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
    for license in &healthy {
        submit(&appender, issue((*license).into(), 5)).await;
    }
    let planted = plant_undecodable_event(&store, ORG, &format!("license-{broken}")).await;
    let stats = appender.stats();
    let batches_before = stats.batches.load(Ordering::Relaxed);

    let mut commands = vec![acquire(broken.into(), 0)];
    commands.extend(healthy.iter().map(|license| acquire((*license).into(), 1)));
    let results = join_all(commands.into_iter().map(|command| {
        let appender = appender.clone();
        async move { appender.submit(Submission::new(ORG, command)).await }
    }))
    .await;

    assert_eq!(
        stats.batches.load(Ordering::Relaxed),
        batches_before + 1,
        "one batch"
    );
    assert_eq!(stats.failed_batches.load(Ordering::Relaxed), 0);
    match &results[0] {
        Err(AppendError::StreamUnreadable { stream_id }) => {
            assert_eq!(stream_id, &format!("license-{broken}"))
        }
        other => panic!("expected StreamUnreadable, got {other:?}"),
    }
    for (index, result) in results[1..].iter().enumerate() {
        let result = result.as_ref().expect("healthy licenses commit");
        assert!(result.is_accepted(), "license {index}: {result:?}");
        assert_eq!(result.events[0].event_type, "SeatAcquired");
    }
    assert_eq!(stats.stream_loads_failed.load(Ordering::Relaxed), 1);

    // Again: answered at once from memory, no second load.
    let again = appender
        .submit(Submission::new(ORG, acquire(broken.into(), 2)))
        .await;
    assert!(
        matches!(again, Err(AppendError::StreamUnreadable { .. })),
        "{again:?}"
    );
    assert_eq!(stats.stream_loads_failed.load(Ordering::Relaxed), 1);
    assert_eq!(
        stats.commands_on_unreadable_streams.load(Ordering::Relaxed),
        2
    );
    assert_eq!(stats.unreadable_streams.load(Ordering::Relaxed), 1);

    // Nothing was appended to the broken stream after the planted event.
    let events = read_all(&store).await;
    assert_eq!(events.last().map(|e| e.position), Some(planted + 50));
    assert!(events
        .iter()
        .filter(|e| e.stream_id == format!("license-{broken}"))
        .all(|e| e.position <= planted));
}

/// Waits until some lock in the database is waited for (a batch blocked).
async fn until_a_lock_is_awaited(pool: &sqlx::PgPool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE NOT granted")
            .fetch_one(pool)
            .await
            .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no batch ever waited"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the snapshot writer stored every snapshot handed to it.
async fn until_snapshots_stored(stats: &seatledger_ledger::appender::AppenderStats) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let handed = stats.snapshots_handed_to_writer.load(Ordering::Relaxed);
        let written = stats.snapshots_written_after_commit.load(Ordering::Relaxed);
        if written == handed {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the snapshot writer stored {written} of {handed} snapshots ({} not written)",
            stats.snapshots_not_written.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A store, an appender that hands every snapshot to its snapshot writer
/// whatever its size, and a license of 5,000 seats issued through it.
async fn licensed_with_every_snapshot_deferred(
    pool: &sqlx::PgPool,
) -> (Store, seatledger_ledger::Appender, Uuid) {
    let store = migrated(pool.clone()).await;
    let key = Arc::new(seatledger_ledger::SigningKey::generate().unwrap());
    let config = AppenderConfig {
        defer_snapshot_bytes: 0,
        ..AppenderConfig::default()
    };
    let appender = start(&store, key, Arc::new(SystemClock), config);
    let license = Uuid::now_v7();
    submit(&appender, issue(license.into(), 5_000)).await;
    (store, appender, license)
}

/// The snapshot writer works off the batch's path: while a snapshot's
/// write is held up (its row locked by someone else), the
/// batches after it commit; once the lock goes, the snapshot lands at the
/// version it was taken at, and another replica loads it plus the tail.
#[sqlx::test(migrations = false)]
async fn a_held_up_snapshot_write_does_not_hold_the_batches_after_it(pool: sqlx::PgPool) {
    let (store, appender, license) = licensed_with_every_snapshot_deferred(&pool).await;
    let stats = appender.stats();
    // Someone else's uncommitted row for the stream: the writer's upsert
    // waits for that transaction to end.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO snapshots (stream_id, version, state) VALUES ($1, 0, '{}')")
        .bind(format!("license-{license}"))
        .execute(&mut *holder)
        .await
        .unwrap();
    // Past the first snapshot mark (version 1,000), and 500 more after it.
    let first = SNAPSHOT_EVERY_EVENTS as usize;
    submit_all(
        &appender,
        (1..first + 500)
            .map(|m| acquire(license.into(), m))
            .collect(),
    )
    .await;
    until_counted(
        &stats.snapshots_handed_to_writer,
        1,
        "a snapshot handed to the writer",
    )
    .await;
    until_a_lock_is_awaited(&pool).await;
    assert_eq!(
        stats.snapshots_written_after_commit.load(Ordering::Relaxed),
        0
    );
    let granted = submit(&appender, acquire(license.into(), first + 500)).await;
    assert_eq!(granted.license.unwrap().seats_used, (first + 500) as u32);
    holder.rollback().await.unwrap();

    until_snapshots_stored(stats).await;
    let (snapshot_version, version): (i64, i64) = sqlx::query_as(
        "SELECT p.version, s.version FROM streams s \
         JOIN snapshots p ON p.stream_id = s.stream_id WHERE s.stream_id = $1",
    )
    .bind(format!("license-{license}"))
    .fetch_one(&pool)
    .await
    .unwrap();
    // Taken at the batch that crossed the mark, long before the head.
    assert!(
        (SNAPSHOT_EVERY_EVENTS..SNAPSHOT_EVERY_EVENTS + 500).contains(&snapshot_version),
        "snapshot at {snapshot_version}"
    );
    assert_eq!(version, (first + 501) as i64);
    let (fresh, _) = start_default(&second_pg_store(&pool).await);
    let again = submit(&fresh, acquire(license.into(), 1)).await;
    assert_eq!(again.license.unwrap().seats_used, (first + 500) as u32);
    assert_chain_verifies(&store).await;
}

/// A snapshot that lands late never replaces a later one: the writer's
/// upsert keeps the higher version.
#[sqlx::test(migrations = false)]
async fn a_late_snapshot_does_not_replace_a_later_one(pool: sqlx::PgPool) {
    let (store, appender, license) = licensed_with_every_snapshot_deferred(&pool).await;
    let first = SNAPSHOT_EVERY_EVENTS as usize;
    submit_all(
        &appender,
        (1..first).map(|m| acquire(license.into(), m)).collect(),
    )
    .await;
    until_snapshots_stored(appender.stats()).await;
    let stream_id = format!("license-{license}");
    let (stored, state): (i64, String) =
        sqlx::query_as("SELECT version, state FROM snapshots WHERE stream_id = $1")
            .bind(&stream_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, SNAPSHOT_EVERY_EVENTS);
    // An earlier snapshot arriving now (as a held-up write would) is
    // ignored.
    store
        .store_snapshot(&stream_id, stored - 1, "{}")
        .await
        .unwrap();
    let kept = store.stream_snapshot(&stream_id).await.unwrap();
    assert_eq!(kept.map(|(version, _)| version), Some(stored));
    // A later one replaces it.
    store
        .store_snapshot(&stream_id, stored + 1, &state)
        .await
        .unwrap();
    let kept = store.stream_snapshot(&stream_id).await.unwrap();
    assert_eq!(kept.map(|(version, _)| version), Some(stored + 1));
}

/// Waits until `count` reaches `at_least`.
async fn until_counted(count: &std::sync::atomic::AtomicU64, at_least: u64, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count.load(Ordering::Relaxed) < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never happened"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Holds an uncommitted `commands` row for `key`: a batch recording the
/// same key blocks on it until `holder` commits (and then fails on the
/// unique key) or rolls back (and then succeeds).
async fn hold_command_key(
    pool: &sqlx::PgPool,
    key: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut holder = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO commands (tenant_id, command_id, request_hash, result) VALUES ($1, $2, $3, '{}')",
    )
    .bind(ORG)
    .bind(key)
    .bind(vec![0u8; 32])
    .execute(&mut *holder)
    .await
    .unwrap();
    holder
}

/// A one-seat license; batch N (machine 1's acquire, with idempotency key
/// "first") blocked in its write on `holder`'s uncommitted row for that
/// key; batch N+1 (machine 2's acquire) decided on top of it meanwhile.
struct Ahead {
    store: Store,
    appender: seatledger_ledger::Appender,
    holder: sqlx::Transaction<'static, sqlx::Postgres>,
    first: tokio::task::JoinHandle<Result<seatledger_ledger::CommandResult, AppendError>>,
    second: tokio::task::JoinHandle<seatledger_ledger::CommandResult>,
}

async fn decide_one_ahead(pool: &sqlx::PgPool) -> Ahead {
    let store = migrated(pool.clone()).await;
    let (appender, _) = start_default(&store);
    let license = Uuid::now_v7();
    submit(&appender, issue(license.into(), 1)).await;
    let holder = hold_command_key(pool, "first").await;
    let first = tokio::spawn({
        let appender = appender.clone();
        async move {
            appender
                .submit(
                    Submission::new(ORG, acquire(license.into(), 1))
                        .with_command_id("first", [1; 32]),
                )
                .await
        }
    });
    until_a_lock_is_awaited(pool).await;
    let second = tokio::spawn({
        let appender = appender.clone();
        async move { submit(&appender, acquire(license.into(), 2)).await }
    });
    until_counted(&appender.stats().batches_decided_ahead, 1, "deciding ahead").await;
    Ahead {
        store,
        appender,
        holder,
        first,
        second,
    }
}

/// Issue 12, point 3: while batch N is written, batch N+1 is decided on
/// top of it (here: N takes the last seat, so N+1 is denied), and written
/// only once N is durable; nobody hears back before their batch commits.
#[sqlx::test(migrations = false)]
async fn a_batch_decided_while_the_one_before_is_written_commits_after_it(pool: sqlx::PgPool) {
    let ahead = decide_one_ahead(&pool).await;
    let (store, appender) = (&ahead.store, &ahead.appender);
    assert!(
        !ahead.second.is_finished(),
        "answered before its batch was written"
    );
    assert_eq!(read_all(store).await.len(), 1, "nothing written yet");
    ahead.holder.rollback().await.unwrap();

    let first = ahead.first.await.unwrap().unwrap();
    let second = ahead.second.await.unwrap();
    assert!(first.is_accepted());
    assert_eq!(second.rejection, Some(Rejection::NoSeatsAvailable));
    assert_eq!(
        appender
            .stats()
            .batches_decided_again
            .load(Ordering::Relaxed),
        0
    );
    let events = assert_chain_verifies(store).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(kinds, ["LicenseIssued", "SeatAcquired", "SeatDenied"]);
}

/// When batch N fails, the batch decided on top of it is decided again
/// from the store: N's seat was never taken, so N+1 gets it.
#[sqlx::test(migrations = false)]
async fn a_batch_decided_on_top_of_a_failed_one_is_decided_again(pool: sqlx::PgPool) {
    let ahead = decide_one_ahead(&pool).await;
    let (store, appender) = (&ahead.store, &ahead.appender);
    // The key turns out taken: N fails on it.
    ahead.holder.commit().await.unwrap();

    let error = ahead.first.await.unwrap().unwrap_err();
    assert!(!error.is_unavailable(), "{error}");
    let second = ahead.second.await.unwrap();
    assert!(second.is_accepted(), "{:?}", second.rejection);
    assert_eq!(second.license.unwrap().seats_used, 1);
    assert_eq!(
        appender
            .stats()
            .batches_decided_again
            .load(Ordering::Relaxed),
        1
    );
    let events = assert_chain_verifies(store).await;
    let acquired: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e.event_type == "SeatAcquired")
        .map(|e| &e.payload["hardware_id"])
        .collect();
    assert_eq!(acquired.len(), 1);
    assert_eq!(events.len(), 2);
}

/// Many clients on few licenses with the pipeline busy (small batches, so
/// commands are always queued behind the batch being written): exact
/// grants, a gap-free verified chain, and batches were decided ahead.
#[sqlx::test(migrations = false)]
async fn pipelined_batches_grant_exactly_the_seat_limit(pool: sqlx::PgPool) {
    let store = migrated(pool.clone()).await;
    let config = AppenderConfig {
        batch_max: 8,
        ..AppenderConfig::default()
    };
    let key = Arc::new(seatledger_ledger::SigningKey::generate().unwrap());
    let appender = start(&store, key, Arc::new(SystemClock), config);
    let licenses: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    for license in &licenses {
        submit(&appender, issue((*license).into(), 25)).await;
    }
    let clients = (0..64).map(|client| {
        let appender = appender.clone();
        let licenses = licenses.clone();
        tokio::spawn(async move {
            let mut granted = 0;
            for round in 0..10 {
                let license = licenses[(client + round) % licenses.len()];
                if submit(&appender, acquire(license.into(), client * 100 + round))
                    .await
                    .is_accepted()
                {
                    granted += 1;
                }
            }
            granted
        })
    });
    let granted: usize = join_all(clients)
        .await
        .into_iter()
        .map(Result::unwrap)
        .sum();
    assert_eq!(granted, 100, "four licenses of 25 seats");
    assert!(
        appender
            .stats()
            .batches_decided_ahead
            .load(Ordering::Relaxed)
            > 0
    );
    let events = assert_chain_verifies(&store).await;
    assert_eq!(events.len(), 4 + 640);
    for license in &licenses {
        let (_, state) = store
            .stream_state(&format!("license-{license}"))
            .await
            .unwrap();
        let seats = match state {
            seatledger_ledger::domain::StreamState::License(license) => license.leases().count(),
            _ => panic!("not a license"),
        };
        assert_eq!(seats, 25);
    }
}

/// The appender reads a stream whole from the store once after it starts
/// and then works from its cache: `stream_loads` counts exactly those
/// reads (the figure an operator watches for a partition outgrowing the
/// cache), the cache reports what it holds, and nothing is evicted.
async fn each_stream_is_loaded_once_then_served_from_the_cache(store: &Store) {
    let (first, _) = start_default(store);
    let licenses: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    for license in &licenses {
        submit(&first, issue((*license).into(), 100)).await;
        submit(&first, acquire((*license).into(), 1)).await;
    }
    assert_eq!(
        first.stats().stream_loads.load(Ordering::Relaxed),
        0,
        "streams it created itself are cached from the start"
    );

    let (restarted, _) = start_default(store);
    for round in 0..3 {
        for license in &licenses {
            submit(&restarted, acquire((*license).into(), 2 + round)).await;
        }
        assert_eq!(
            restarted.stats().stream_loads.load(Ordering::Relaxed),
            licenses.len() as u64,
            "round {round}: one load per stream, the first time it is touched"
        );
    }
    let stats = restarted.stats();
    assert_eq!(stats.cache_evictions.load(Ordering::Relaxed), 0);
    assert_eq!(stats.cached_streams.load(Ordering::Relaxed), 5);
    assert_eq!(
        stats.cached_entries.load(Ordering::Relaxed),
        5 * (1 + 4),
        "each license counts itself and its four leases"
    );
}

#[sqlx::test(migrations = false)]
async fn each_stream_is_loaded_once_then_served_from_the_cache_on_postgres(pool: sqlx::PgPool) {
    each_stream_is_loaded_once_then_served_from_the_cache(&migrated(pool).await).await;
}

#[tokio::test]
async fn each_stream_is_loaded_once_then_served_from_the_cache_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    each_stream_is_loaded_once_then_served_from_the_cache(&sqlite_store(&dir).await).await;
}

/// Records every event's target, level and fields, for tests that assert
/// on what is logged.
#[derive(Clone, Default)]
struct Recorded(Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorded {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={value:?}", field.name()));
            }
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let metadata = event.metadata();
        self.0.lock().unwrap().push(format!(
            "{} {}{}",
            metadata.level(),
            metadata.target(),
            fields.0
        ));
    }
}

/// Starting again on a migrated database logs no PostgreSQL notice (the
/// migrator's "relation \"_sqlx_migrations\" already exists, skipping"),
/// and the migrating connection goes back to the pool hearing notices
/// again.
#[sqlx::test(migrations = false)]
async fn migrating_again_logs_no_expected_notice(pool: sqlx::PgPool) {
    use tracing_subscriber::layer::SubscriberExt;
    let recorded = Recorded::default();
    let subscriber = tracing_subscriber::registry().with(recorded.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let store = Store::from_pg_pool(pool.clone());
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let notices: Vec<String> = recorded
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|line| line.contains("sqlx::postgres::notice"))
        .cloned()
        .collect();
    assert_eq!(notices, Vec::<String>::new());
    let level: String = sqlx::query_scalar("SHOW client_min_messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(level, "notice");
}
