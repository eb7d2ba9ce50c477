//! `usage` on a real log written by the appender with a manual clock, on
//! PostgreSQL and on SQLite: the recomputed figures are the ones the
//! history implies.

mod common;

use seatledger_ledger::domain::{
    Command, HardwareId, HeartbeatTtl, Name, OveragePercent, SeatCount,
};
use seatledger_ledger::{
    Appender, AppenderConfig, CommitNotifier, ManualClock, SigningKey, Store, Submission,
};
use seatledger_projections::Granularity;
use seatledger_schema::Timestamp;
use seatledger_schema::UserId;
use seatledger_schema::{LicenseId, OrgId, SessionId};
use std::sync::Arc;
use uuid::Uuid;

const ORG: OrgId = OrgId::from_u128(0x0a);
const LICENSE: LicenseId = LicenseId::from_u128(0x1c);
const SECOND: u64 = 1_000_000;

fn t0() -> Timestamp {
    Timestamp::parse("2027-01-15T08:00:00Z").unwrap()
}

fn session(n: u128) -> SessionId {
    SessionId::from_u128(0x5000 + n)
}

fn acquire(n: u128) -> Command {
    Command::AcquireSeat {
        credential: seatledger_ledger::domain::AcquireCredential::Unchecked,
        token_id: None,
        license_id: LICENSE,
        session_id: session(n),
        user_id: UserId::from_u128(0x100 + n),
        hardware_id: HardwareId::parse(&format!("machine-{n}")).unwrap(),
    }
}

/// Two seats, TTL 360 s. Lease 1: 0–250 s (released). Lease 2: from 300 s,
/// never heartbeats, reaped at 2,000 s (billed to its expiry, 660 s).
/// Leases 3 and 4 from 2,100 s, a fifth acquire denied, lease 3 heartbeats
/// at 2,200 s (the last event).
async fn history(store: &Store) {
    let clock = ManualClock::new(t0());
    let key = Arc::new(SigningKey::generate().unwrap());
    let (appender, task) = Appender::start(
        store.clone(),
        key,
        Arc::new(clock.clone()),
        CommitNotifier::default(),
        AppenderConfig::default(),
    );
    let at = |seconds: i64, command: Command| {
        clock.set(t0().plus_seconds(seconds));
        let appender = appender.clone();
        async move {
            appender
                .submit(Submission::new(ORG, command))
                .await
                .unwrap()
        }
    };
    let issue = Command::IssueLicense {
        client_auth: Default::default(),
        license_id: LICENSE,
        name: Name::parse("IDE").unwrap(),
        seats: SeatCount::new(2).unwrap(),
        expires_at: None,
        heartbeat_ttl_s: HeartbeatTtl::new(360).unwrap(),
        max_overage_percent: OveragePercent::default(),
    };
    at(0, issue).await;
    at(0, acquire(1)).await;
    let beat = |n| Command::Heartbeat {
        license_id: LICENSE,
        session_id: session(n),
        by: seatledger_ledger::domain::SeatActor::Unchecked,
    };
    at(100, beat(1)).await;
    let release = Command::ReleaseSeat {
        license_id: LICENSE,
        session_id: session(1),
        by: seatledger_ledger::domain::SeatActor::Unchecked,
    };
    at(250, release).await;
    at(300, acquire(2)).await;
    let reap = Command::ExpireSeat {
        license_id: LICENSE,
        session_id: session(2),
    };
    assert_eq!(at(2_000, reap).await.events[0].event_type, "SeatExpired");
    at(2_100, acquire(3)).await;
    at(2_100, acquire(4)).await;
    assert!(at(2_100, acquire(5)).await.rejection.is_some());
    at(2_200, beat(3)).await;
    drop(appender);
    task.await.unwrap();
}

async fn usage_is_recomputed_from_the_log(store: &Store) {
    history(store).await;
    let report = seatledger_replay::usage(store, 0, Granularity::Day, None)
        .await
        .unwrap();
    assert!(report.undecodable.is_empty());
    let rows = report.rows;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let day = &rows[0];
    assert_eq!((day.org_id, day.license_id), (ORG, LICENSE));
    assert_eq!(
        day.period_start,
        Timestamp::parse("2027-01-15T00:00:00Z").unwrap()
    );
    // As of the last event (2,200 s): 250 + 360 + 100 + 100 seconds.
    assert_eq!(day.seat_micros, 810 * SECOND);
    assert_eq!(day.overage_seat_micros, 0);
    assert_eq!(day.peak_seats, 2);
    assert_eq!((day.distinct_users, day.distinct_machines), (4, 4));
    assert_eq!(day.denials, 1);

    // Later, the open leases count to their expiry: 3 until 2,560 s, 4
    // until 2,460 s.
    let later =
        seatledger_replay::usage(store, 0, Granularity::Hour, Some(t0().plus_seconds(10_000)))
            .await
            .unwrap()
            .rows;
    assert_eq!(later.len(), 1, "all within 08:00-09:00: {later:?}");
    assert_eq!(later[0].seat_micros, (250 + 360 + 460 + 360) * SECOND);

    let csv = seatledger_replay::usage_csv(&rows);
    assert_eq!(
        csv,
        format!(
            "org_id,license_id,period_start,period_end,seat_seconds,overage_seat_seconds,\
             peak_seats,distinct_users,distinct_machines,denials\n\
             {ORG},{LICENSE},2027-01-15T00:00:00.000000Z,2027-01-16T00:00:00.000000Z,\
             810.000000,0.000000,2,4,4,1\n"
        )
    );
    let select = |org, from, to| seatledger_replay::select_usage(rows.clone(), org, from, to);
    assert_eq!(select(Some(ORG), None, None).len(), 1);
    assert!(select(Some(Uuid::from_u128(0x0b).into()), None, None).is_empty());
    let next_day = Timestamp::parse("2027-01-16T00:00:00Z").unwrap();
    assert!(select(None, Some(next_day), None).is_empty());
    assert!(select(None, None, Some(t0().minus_seconds(86_400))).is_empty());
    assert_eq!(select(None, Some(t0()), Some(next_day)).len(), 1);
}

#[sqlx::test(migrations = false)]
async fn usage_is_recomputed_from_the_log_on_postgres(pool: sqlx::PgPool) {
    usage_is_recomputed_from_the_log(&common::pg_store(pool).await).await;
}

#[tokio::test]
async fn usage_is_recomputed_from_the_log_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    usage_is_recomputed_from_the_log(&common::sqlite_store(&dir).await).await;
}

/// Billing jobs consuming JetStream compute what the log says: the log
/// republished to a stream of the test's own, then `usage --from-nats`
/// prints the same CSV as `usage` from PostgreSQL.
#[sqlx::test(migrations = false)]
async fn usage_from_nats_equals_usage_from_the_log(pool: sqlx::PgPool) {
    let store = common::pg_store(pool.clone()).await;
    history(&store).await;
    let database = common::pg_url(&pool);
    let nats = std::env::var("SEATLEDGER_TEST_NATS_URL")
        .unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let id = Uuid::now_v7().simple().to_string();
    let (stream, prefix) = (format!("TEST_{id}"), format!("test_{id}"));
    let (ok, out, err) = common::replay(&[
        "republish",
        "--database-url",
        &database,
        "--nats-url",
        &nats,
        "--nats-stream",
        &stream,
        "--nats-subject-prefix",
        &prefix,
    ]);
    assert!(ok, "{err}");
    let (head, _) = store.head(0).await.unwrap();
    assert!(out.contains(&format!("positions 1..={head}")), "{out}");
    let (ok, from_nats, err) = common::replay(&[
        "usage",
        "--from-nats",
        &nats,
        "--nats-stream",
        &stream,
        "--granularity",
        "hour",
    ]);
    assert!(ok, "{err}");
    let (ok, from_log, err) = common::replay(&[
        "usage",
        "--database-url",
        &database,
        "--granularity",
        "hour",
    ]);
    assert!(ok, "{err}");
    assert_eq!(from_nats, from_log);
    assert_eq!(
        from_log.lines().count(),
        2,
        "a header and a row: {from_log}"
    );
    let client = async_nats::connect(&nats).await.unwrap();
    async_nats::jetstream::new(client)
        .delete_stream(&stream)
        .await
        .unwrap();
}

/// `at` on the same history: who held which seat at an instant. A lease
/// past its expiry is not active even before its `SeatExpired` (lease 2
/// expired at 660 s and was reaped at 2,000 s).
#[tokio::test]
async fn at_shows_who_held_which_seat_at_an_instant() {
    use seatledger_replay::at::{state_at, At};
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_store(&dir).await;
    history(&store).await;
    let sessions_at = |seconds: i64| {
        let store = store.clone();
        async move {
            let state = state_at(&store, 0, At::Time(t0().plus_seconds(seconds)), None, None)
                .await
                .unwrap();
            assert_eq!(state.licenses.len(), 1);
            let license = &state.licenses[0];
            assert_eq!((license.license_id, license.org_id), (LICENSE, ORG));
            license
                .leases
                .iter()
                .map(|lease| {
                    (
                        lease.session_id,
                        lease.since.micros_since(t0()) / 1_000_000,
                        lease.expires_at.micros_since(t0()) / 1_000_000,
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(sessions_at(200).await, vec![(session(1), 0, 460)]);
    assert_eq!(sessions_at(400).await, vec![(session(2), 300, 660)]);
    assert_eq!(sessions_at(700).await, vec![], "expired, not yet reaped");
    assert_eq!(
        sessions_at(2_150).await,
        vec![(session(3), 2_100, 2_460), (session(4), 2_100, 2_460)]
    );
    // By position: the third event is the heartbeat at 100 s.
    let third = state_at(&store, 0, At::Position(3), Some(ORG), Some(LICENSE))
        .await
        .unwrap();
    assert_eq!((third.position, third.time), (3, t0().plus_seconds(100)));
    assert_eq!(third.licenses[0].leases.len(), 1);
    // Another organization: nothing.
    let none = state_at(
        &store,
        0,
        At::Position(3),
        Some(Uuid::from_u128(0x0b).into()),
        None,
    )
    .await
    .unwrap();
    assert!(none.licenses.is_empty());

    // The CLI prints the same as JSON, and as text; bad usage exits 2.
    let url = format!("sqlite:{}", dir.path().join("ledger.db").display());
    let time = t0().plus_seconds(2_150).to_string();
    let (ok, out, err) = common::replay(&["at", "--database-url", &url, "--time", &time, "--json"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["licenses"][0]["leases"].as_array().unwrap().len(), 2);
    let (ok, out, _) = common::replay(&["at", "--database-url", &url, "--time", &time]);
    assert!(ok);
    assert!(out.contains("2 active lease(s)"), "{out}");
    assert!(out.contains("machine machine-3"), "{out}");
    let (code, _, _) = common::replay_code(&["at", "--database-url", &url]);
    assert_eq!(code, Some(2), "--time or --position is required");
}
