//! `simulate` on a crafted history with known demand (manual clock): the
//! expected denials for fewer seats, none for more, peak demand and denied
//! seat-time computed by hand; through the library and the CLI, from the
//! store and from an export file.

mod common;

use seatledger_ledger::domain::{
    Command, HardwareId, HeartbeatTtl, Name, OveragePercent, SeatCount,
};
use seatledger_ledger::{
    Appender, AppenderConfig, CommitNotifier, ManualClock, SigningKey, Store, Submission,
};
use seatledger_replay::events::EventStream;
use seatledger_replay::simulate::{simulate, SimulateOptions, Simulation};
use seatledger_schema::Timestamp;
use seatledger_schema::{LicenseId, OrgId};
use seatledger_schema::{SessionId, UserId};
use std::sync::Arc;
use uuid::Uuid;

const ORG: OrgId = OrgId::from_u128(0x0a);
const LICENSE: LicenseId = LicenseId::from_u128(0x1c);

fn t0() -> Timestamp {
    Timestamp::parse("2030-03-01T10:00:00Z").unwrap()
}

fn acquire(machine: u128) -> Command {
    Command::AcquireSeat {
        credential: seatledger_ledger::domain::AcquireCredential::Unchecked,
        token_id: None,
        license_id: LICENSE,
        session_id: SessionId::from_u128(0x5e55_0000 + machine),
        user_id: UserId::from_u128(0xa0 + machine),
        hardware_id: HardwareId::parse(&format!("m{machine}")).unwrap(),
    }
}

/// 3 seats, TTL 60 s. t+10, +20, +30: m1, m2, m3 granted; t+40: m4 denied
/// (no seats); t+50: m1 released; t+60: m5 granted.
async fn history(store: &Store) {
    let clock = ManualClock::new(t0());
    let (appender, task) = Appender::start(
        store.clone(),
        Arc::new(SigningKey::generate().unwrap()),
        Arc::new(clock.clone()),
        CommitNotifier::default(),
        AppenderConfig::default(),
    );
    let issue = Command::IssueLicense {
        client_auth: Default::default(),
        license_id: LICENSE,
        name: Name::parse("IDE").unwrap(),
        seats: SeatCount::new(3).unwrap(),
        expires_at: None,
        heartbeat_ttl_s: HeartbeatTtl::new(60).unwrap(),
        max_overage_percent: OveragePercent::default(),
    };
    let steps: Vec<(i64, Command, bool)> = vec![
        (0, issue, true),
        (10, acquire(1), true),
        (20, acquire(2), true),
        (30, acquire(3), true),
        (40, acquire(4), false),
        (
            50,
            Command::ReleaseSeat {
                license_id: LICENSE,
                session_id: SessionId::from_u128(0x5e55_0001),
                by: seatledger_ledger::domain::SeatActor::Unchecked,
            },
            true,
        ),
        (60, acquire(5), true),
    ];
    for (seconds, command, accepted) in steps {
        clock.set(t0().plus_seconds(seconds));
        let result = appender
            .submit(Submission::new(ORG, command))
            .await
            .unwrap();
        assert_eq!(
            result.rejection.is_none(),
            accepted,
            "t+{seconds}: {result:?}"
        );
    }
    drop(appender);
    task.await.unwrap();
}

async fn run(store: &Store, seats: u32) -> Simulation {
    let (events, _) = EventStream::from_store(store, 0, None).await.unwrap();
    let options = SimulateOptions {
        license_id: LICENSE,
        seats: SeatCount::new(seats).unwrap(),
        heartbeat_ttl: None,
        from: None,
        to: None,
    };
    simulate(events, options).await.unwrap()
}

#[tokio::test]
async fn fewer_seats_deny_what_the_demand_needed_and_more_seats_deny_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_store(&dir).await;
    history(&store).await;

    let two = run(&store, 2).await;
    assert_eq!(two.acquires, 5);
    assert_eq!(two.granted_recorded, 4);
    assert_eq!(two.would_be_denied, 1, "{two:#?}");
    assert_eq!(two.would_be_denied_acquires[0].hardware_id, "m3");
    assert_eq!(two.would_be_denied_acquires[0].at, t0().plus_seconds(30));
    assert_eq!(two.would_be_granted, 0);
    assert_eq!(
        two.granted_simulated, 3,
        "m1, m2 and (after m1's release) m5"
    );
    assert_eq!(two.peak_demand, 4, "m1..m4 at t+40 with unlimited seats");
    assert_eq!(two.peak_simulated, 2);
    // m3 from t+30 and m4 from t+40, each up to the last event (t+60).
    assert_eq!(two.denied_seat_seconds, 50.0);

    let four = run(&store, 4).await;
    assert_eq!(four.would_be_denied, 0);
    assert_eq!(four.would_be_granted, 1);
    assert_eq!(four.would_be_granted_acquires[0].hardware_id, "m4");
    assert_eq!(four.granted_simulated, four.acquires, "none denied");
    assert_eq!(four.denied_seat_seconds, 0.0);

    // The same through the CLI, from the store and from an export file;
    // the store is untouched.
    let (head_before, _) = store.head(0).await.unwrap();
    let url = format!("sqlite:{}", dir.path().join("ledger.db").display());
    let license = LICENSE.to_string();
    let (ok, json, err) = common::replay(&[
        "simulate",
        "--database-url",
        &url,
        "--license",
        &license,
        "--seats",
        "2",
        "--json",
    ]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["would_be_denied"], 1);
    assert_eq!(report["peak_demand"], 4);
    let (ok, export, err) = common::replay(&["export", "--database-url", &url]);
    assert!(ok, "{err}");
    let file = dir.path().join("export.jsonl");
    std::fs::write(&file, export).unwrap();
    let file = file.display().to_string();
    let (ok, text, err) = common::replay(&[
        "simulate",
        "--from-file",
        &file,
        "--license",
        &license,
        "--seats",
        "2",
    ]);
    assert!(ok, "{err}");
    assert!(text.contains("would have been denied: 1"), "{text}");
    assert!(text.contains("peak demand (unlimited seats): 4"), "{text}");
    assert_eq!(store.head(0).await.unwrap().0, head_before);

    let (code, _, _) = common::replay_code(&[
        "simulate",
        "--database-url",
        &url,
        "--license",
        &license,
        "--seats",
        "0",
    ]);
    assert_eq!(code, Some(2), "0 seats is a usage error");
    let (code, _, err) = common::replay_code(&[
        "simulate",
        "--database-url",
        &url,
        "--license",
        &Uuid::now_v7().to_string(),
        "--seats",
        "2",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is not in the log"), "{err}");
}

/// `diff billing`: the live billing projection, brought up to the head by
/// its follower, equals the replay (exit 0); a planted difference in a
/// stored period is listed (exit 1).
#[tokio::test]
async fn diff_billing_reports_a_planted_difference_and_nothing_after_rebuild_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_store(&dir).await;
    let url = format!("sqlite:{}", dir.path().join("ledger.db").display());
    diff_and_rebuild(store, url).await;
}

#[sqlx::test(migrations = false)]
async fn diff_billing_reports_a_planted_difference_and_nothing_after_rebuild_on_postgres(
    pool: sqlx::PgPool,
) {
    let url = common::pg_url(&pool);
    diff_and_rebuild(common::pg_store(pool).await, url).await;
}

async fn diff_and_rebuild(store: Store, url: String) {
    use seatledger_projections::{Follower, LiveBilling};
    history(&store).await;
    let mut billing = LiveBilling::new(store.clone(), 0);
    assert_eq!(billing.position().await.unwrap(), 0);
    let (head, _) = store.head(0).await.unwrap();
    let events = store.read_range(0, 0, head).await.unwrap();
    billing.apply(&events).await.unwrap();

    let (code, out, err) = common::replay_code(&["diff", "billing", "--database-url", &url]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("billing at position {head}")),
        "{out}"
    );
    assert!(out.contains("0 difference(s)"), "{out}");

    let plant = "UPDATE usage_periods SET denials = denials + 1 WHERE granularity = 'day'";
    match &store {
        Store::Postgres(pool) => {
            sqlx::query(plant).execute(pool).await.unwrap();
        }
        Store::Sqlite(pool, _) => {
            sqlx::query(plant).execute(pool).await.unwrap();
        }
    }
    let (code, out, err) =
        common::replay_code(&["diff", "billing", "--database-url", &url, "--json"]);
    assert_eq!(code, Some(1), "{out}{err}");
    let diff: serde_json::Value = serde_json::from_str(&out).unwrap();
    let differences = diff["differences"].as_array().unwrap();
    assert_eq!(differences.len(), 1, "{out}");
    assert_eq!(differences[0]["granularity"], "day");
    assert_eq!(
        differences[0]["live"]["denials"].as_u64().unwrap(),
        differences[0]["replayed"]["denials"].as_u64().unwrap() + 1
    );
    assert!(err.contains("1 difference(s)"), "{err}");

    // Rebuilt from the log, the projection has no difference left.
    let (code, out, err) = common::replay_code(&["rebuild", "billing", "--database-url", &url]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("up to position {head}")), "{out}");
    let (code, out, err) = common::replay_code(&["diff", "billing", "--database-url", &url]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("0 difference(s)"), "{out}");
    // And the follower goes on from the rebuilt state.
    let mut billing = LiveBilling::new(store.clone(), 0);
    assert_eq!(billing.position().await.unwrap(), head);
}

/// `diff hot-counts` against real Redis (a key prefix of the test's own):
/// counts brought to the head by their follower equal the replay; a
/// planted expiry is listed; `rebuild hot-counts` swaps in counts rebuilt
/// from 0 and the difference is gone.
#[tokio::test]
async fn diff_hot_counts_reports_a_planted_difference_and_nothing_after_rebuild() {
    use seatledger_projections::{Follower, RedisLicenses};
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_store(&dir).await;
    history(&store).await;
    let redis_url = std::env::var("SEATLEDGER_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("test:{}:", Uuid::now_v7());
    let counts = RedisLicenses::new(&redis_url, &prefix, "test-ledger", 0).unwrap();
    let mut follower = counts.clone();
    assert_eq!(Follower::position(&mut follower).await.unwrap(), 0);
    let (head, _) = store.head(0).await.unwrap();
    follower
        .apply(&store.read_range(0, 0, head).await.unwrap())
        .await
        .unwrap();

    let url = format!("sqlite:{}", dir.path().join("ledger.db").display());
    // `seatledger-replay <tool> hot-counts` on this test's counts.
    let hot_counts = |tool: &'static str, extra: &'static str| {
        let mut args = vec![
            tool,
            "hot-counts",
            "--database-url",
            &url,
            "--redis-url",
            &redis_url,
            "--redis-prefix",
            &prefix,
            "--ledger",
            "test-ledger",
        ];
        if !extra.is_empty() {
            args.push(extra);
        }
        common::replay_code(&args)
    };
    let diff = |extra: &'static str| hot_counts("diff", extra);
    let (code, out, err) = diff("");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("3 live lease(s) compared, 0 difference(s)"),
        "{out}"
    );

    // m2's lease made to expire an hour later in Redis.
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let expires = t0().plus_seconds(20 + 60 + 3_600).as_micros();
    redis::cmd("ZADD")
        .arg(format!("{prefix}lic:{LICENSE}:exp"))
        .arg(expires)
        .arg(Uuid::from_u128(0x5e55_0002).to_string())
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
    let (code, out, err) = diff("--json");
    assert_eq!(code, Some(1), "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["differences"][0]["what"], "leases", "{out}");
    assert_eq!(report["differences"][0]["license_id"], LICENSE.to_string());

    let (code, out, err) = hot_counts("rebuild", "");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("up to position {head}")), "{out}");
    let (code, out, err) = diff("");
    assert_eq!(code, Some(0), "{out}{err}");
    // Nothing is left under the rebuild's own prefix.
    let rebuild_prefix = format!("{}-rebuild-*", prefix.trim_end_matches(':'));
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(&rebuild_prefix)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    let ours: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(!ours.is_empty());
    redis::cmd("DEL")
        .arg(ours)
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
}
