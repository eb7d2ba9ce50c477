//! The follower runner, the hot counts, the reaper and live billing against a
//! real log (SQLite in a temporary directory; PostgreSQL per test through
//! `#[sqlx::test]`).

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use seatledger_ledger::domain::{
    Command, HardwareId, HeartbeatTtl, Name, OveragePercent, SeatCount, StreamState,
};
use seatledger_ledger::{
    Appender, AppenderConfig, Clock, CommitNotifier, ManualClock, SigningKey, Store, Submission,
};
use seatledger_projections::{
    billing_live, reap_once, runner, BillingFold, Follower, FollowerStatus, Granularity, HotCounts,
    HotLicenses, LiveBilling, ReaperStats, RedisLicenses, RunnerConfig, UsageQuery, UsageRow,
};
use seatledger_schema::OrgId;
use seatledger_schema::Timestamp;
use seatledger_schema::{LicenseId, SessionId, UserId};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

const ORG: OrgId = OrgId::from_u128(0x0a);
const TTL_S: u32 = 60;

async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
    let url = format!("sqlite:{}", dir.path().join("ledger.db").display());
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    store
}

async fn pg_store(pool: sqlx::PgPool) -> Store {
    let store = Store::from_pg_pool(pool);
    store.migrate().await.unwrap();
    store
}

fn start_appender(store: &Store, clock: &ManualClock, notifier: &CommitNotifier) -> Appender {
    Appender::start(
        store.clone(),
        Arc::new(SigningKey::generate().unwrap()),
        Arc::new(clock.clone()),
        notifier.clone(),
        AppenderConfig::default(),
    )
    .0
}

fn issue(license_id: LicenseId, seats: u32) -> Command {
    Command::IssueLicense {
        client_auth: Default::default(),
        license_id,
        name: Name::parse("IDE").unwrap(),
        seats: SeatCount::new(seats).unwrap(),
        expires_at: None,
        heartbeat_ttl_s: HeartbeatTtl::new(TTL_S).unwrap(),
        max_overage_percent: OveragePercent::default(),
    }
}

fn acquire(license_id: LicenseId, session_id: SessionId, machine: u8) -> Command {
    Command::AcquireSeat {
        credential: seatledger_ledger::domain::AcquireCredential::Unchecked,
        token_id: None,
        license_id,
        session_id,
        user_id: UserId::from_u128(u128::from(machine)),
        hardware_id: HardwareId::parse(&format!("machine-{machine}")).unwrap(),
    }
}

/// A runner following `store` into `hot`, stopped by dropping the sender.
fn follow<F: Follower + Clone + 'static>(
    store: &Store,
    hot: &F,
    notifier: &CommitNotifier,
    batch: i64,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, shutdown) = watch::channel(false);
    let config = RunnerConfig {
        batch,
        poll_interval: Duration::from_millis(50),
        ..RunnerConfig::default()
    };
    let task = tokio::spawn(runner::run(
        store.clone(),
        hot.clone(),
        notifier.clone(),
        config,
        FollowerStatus::default(),
        shutdown,
    ));
    (stop, task)
}

// --- Property: hot counts = the ledger's state replayed, live and rebuilt ---

#[derive(Clone, Debug)]
enum Step {
    Acquire { license: usize, machine: u8 },
    Heartbeat { license: usize, lease: usize },
    Release { license: usize, lease: usize },
    Expire { license: usize, lease: usize },
    Suspend(usize),
    Reinstate(usize),
    ChangeSeats { license: usize, seats: u32 },
    Advance(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0..3usize, 0..6u8).prop_map(|(license, machine)| Step::Acquire { license, machine }),
        3 => (0..3usize, 0..8usize).prop_map(|(license, lease)| Step::Heartbeat { license, lease }),
        2 => (0..3usize, 0..8usize).prop_map(|(license, lease)| Step::Release { license, lease }),
        2 => (0..3usize, 0..8usize).prop_map(|(license, lease)| Step::Expire { license, lease }),
        1 => (0..3usize).prop_map(Step::Suspend),
        1 => (0..3usize).prop_map(Step::Reinstate),
        1 => (0..3usize, 1..5u32).prop_map(|(license, seats)| Step::ChangeSeats { license, seats }),
        2 => (0..90u16).prop_map(Step::Advance),
    ]
}

/// `count` licenses of two seats each, issued through `appender`.
async fn issue_licenses(appender: &Appender, count: usize) -> Vec<Uuid> {
    let licenses: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
    for license in &licenses {
        appender
            .submit(Submission::new(ORG, issue((*license).into(), 2)))
            .await
            .unwrap();
    }
    licenses
}

/// A proptest runner that draws the same steps on every run.
fn deterministic_runner() -> TestRunner {
    TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    )
}

/// The command a step stands for, or `None` for a step that only moves
/// the clock (by calling `advance` with its seconds).
fn command_of(
    step: Step,
    licenses: &[Uuid],
    sessions: &mut [Vec<Uuid>],
    advance: impl FnOnce(i64),
) -> Option<Command> {
    let lease = |sessions: &[Vec<Uuid>], license: usize, lease: usize| {
        let held = &sessions[license];
        held.get(lease % held.len().max(1))
            .copied()
            .unwrap_or_else(Uuid::now_v7)
    };
    Some(match step {
        Step::Acquire { license, machine } => {
            let session_id = Uuid::now_v7();
            sessions[license].push(session_id);
            acquire(licenses[license].into(), session_id.into(), machine)
        }
        Step::Heartbeat { license, lease: n } => Command::Heartbeat {
            license_id: licenses[license].into(),
            session_id: lease(sessions, license, n).into(),
            by: seatledger_ledger::domain::SeatActor::Unchecked,
        },
        Step::Release { license, lease: n } => Command::ReleaseSeat {
            license_id: licenses[license].into(),
            session_id: lease(sessions, license, n).into(),
            by: seatledger_ledger::domain::SeatActor::Unchecked,
        },
        Step::Expire { license, lease: n } => Command::ExpireSeat {
            license_id: licenses[license].into(),
            session_id: lease(sessions, license, n).into(),
        },
        Step::Suspend(license) => Command::SuspendLicense {
            license_id: licenses[license].into(),
            reason: None,
        },
        Step::Reinstate(license) => Command::ReinstateLicense {
            license_id: licenses[license].into(),
            reason: None,
        },
        Step::ChangeSeats { license, seats } => Command::ChangeSeats {
            license_id: licenses[license].into(),
            seats: SeatCount::new(seats).unwrap(),
        },
        Step::Advance(seconds) => {
            advance(i64::from(seconds));
            return None;
        }
    })
}

fn redis_url() -> String {
    std::env::var("SEATLEDGER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Redis hot counts under a key prefix of the test's own.
fn redis_counts() -> RedisLicenses {
    RedisLicenses::new(
        &redis_url(),
        &format!("test:{}:", Uuid::now_v7()),
        "ledger-a",
        0,
    )
    .unwrap()
}

/// Every key under the counts' prefix is deleted.
async fn drop_redis_keys(counts: &RedisLicenses) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", counts.prefix()))
        .query_async(&mut connection)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
}

/// The Redis counts answer for every license what the in-memory ones do:
/// the view, and every live session page by page.
async fn assert_redis_equals_memory(
    redis: &RedisLicenses,
    memory: &HotLicenses,
    licenses: &[Uuid],
    now: Timestamp,
) {
    for license in licenses {
        let expected = memory.view(ORG, (*license).into(), now).unwrap();
        assert_eq!(
            redis.view(ORG, (*license).into(), now).await.unwrap(),
            expected
        );
        let mut after = None;
        let mut pages = Vec::new();
        loop {
            let page = redis
                .sessions(ORG, (*license).into(), now, after, 2)
                .await
                .unwrap()
                .unwrap();
            after = page.last().map(|lease| lease.session_id);
            let done = page.len() < 2;
            pages.extend(page);
            if done {
                break;
            }
        }
        assert_eq!(
            pages,
            memory
                .sessions(ORG, (*license).into(), now, None, 1_000)
                .unwrap()
                .unwrap()
        );
    }
}

async fn hot_counts_equal_the_ledger(store: Store) {
    let clock = ManualClock::new(Timestamp::parse("2030-01-01T00:00:00Z").unwrap());
    let notifier = CommitNotifier::default();
    let appender = start_appender(&store, &clock, &notifier);
    let hot = HotLicenses::default();
    // Ranges of 3 positions: the runner crosses many range boundaries.
    let (stop, task) = follow(&store, &hot, &notifier, 3);
    let redis = redis_counts();
    let (stop_redis, redis_task) = follow(&store, &redis, &notifier, 5);
    let licenses = issue_licenses(&appender, 3).await;
    let mut sessions: Vec<Vec<Uuid>> = vec![Vec::new(); licenses.len()];
    let mut runner = deterministic_runner();
    let steps = prop::collection::vec(step(), 40..80);
    for _ in 0..12 {
        for step in steps.new_tree(&mut runner).unwrap().current() {
            let Some(command) = command_of(step, &licenses, &mut sessions, |seconds| {
                clock.advance_seconds(seconds)
            }) else {
                continue;
            };
            appender
                .submit(Submission::new(ORG, command))
                .await
                .unwrap();
        }
        let (head, _) = store.head(0).await.unwrap();
        assert!(
            hot.wait_for(head, Duration::from_secs(10)).await,
            "caught up"
        );
        let live = hot.snapshot();
        for license in &licenses {
            let (_, replayed) = store
                .stream_state(&format!("license-{license}"))
                .await
                .unwrap();
            let StreamState::License(replayed) = replayed else {
                panic!("a license stream");
            };
            assert_eq!(
                live.get(&LicenseId::from(*license)),
                Some(&replayed),
                "live = the ledger's replay"
            );
        }
        assert!(
            redis.wait_for(head, Duration::from_secs(10)).await,
            "redis caught up"
        );
        assert_redis_equals_memory(&redis, &hot, &licenses, clock.now()).await;
        // The reaper's index holds exactly the leases there are (none left
        // behind by a suspension that ended every lease at once).
        let far = Timestamp::parse("9999-01-01T00:00:00Z").unwrap();
        let indexed = redis.stale(far, 100_000).await.unwrap().len();
        let leases: usize = hot
            .snapshot()
            .values()
            .map(|state| state.lease_count())
            .sum();
        assert_eq!(indexed, leases, "stale index = the leases");
        // Rebuilt from position 0, in one range, it equals the live one.
        let rebuilt = HotLicenses::default();
        let (stop_rebuild, rebuild) = follow(&store, &rebuilt, &CommitNotifier::default(), 10_000);
        assert!(rebuilt.wait_for(head, Duration::from_secs(10)).await);
        assert_eq!(rebuilt.snapshot(), hot.snapshot(), "rebuild = live");
        let _ = stop_rebuild.send(true);
        rebuild.await.unwrap();
    }
    let _ = stop.send(true);
    task.await.unwrap();
    let _ = stop_redis.send(true);
    redis_task.await.unwrap();

    // Redis emptied (a restart without persistence): the follower finds no
    // checkpoint and rebuilds from position 0 by itself.
    drop_redis_keys(&redis).await;
    let (stop_redis, redis_task) = follow(&store, &redis, &notifier, 1_000);
    let (head, _) = store.head(0).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while redis
        .view(ORG, licenses[0].into(), clock.now())
        .await
        .unwrap()
        .is_none()
        || !redis.wait_for(head, Duration::from_millis(100)).await
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis was not rebuilt"
        );
    }
    assert_redis_equals_memory(&redis, &hot, &licenses, clock.now()).await;
    let _ = stop_redis.send(true);
    redis_task.await.unwrap();
    drop_redis_keys(&redis).await;
}

#[tokio::test]
async fn hot_counts_equal_the_ledger_replayed_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    hot_counts_equal_the_ledger(sqlite_store(&dir).await).await;
}

#[sqlx::test(migrations = false)]
async fn hot_counts_equal_the_ledger_replayed_on_postgres(pool: sqlx::PgPool) {
    hot_counts_equal_the_ledger(pg_store(pool).await).await;
}

// --- The reaper ---

/// Leases whose clients stopped heartbeating are expired once their TTL
/// passed; two reapers running at once (two appenders on two pools, as two
/// replicas) produce exactly one `SeatExpired` per lease.
#[sqlx::test(migrations = false)]
async fn two_reapers_expire_each_stale_lease_exactly_once(pool: sqlx::PgPool) {
    let store = pg_store(pool.clone()).await;
    let other = Store::from_pg_pool(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with((*pool.connect_options()).clone())
            .await
            .unwrap(),
    );
    let clock = ManualClock::new(Timestamp::parse("2030-01-01T00:00:00Z").unwrap());
    let notifier = CommitNotifier::default();
    let appender = start_appender(&store, &clock, &notifier);
    let second = start_appender(&other, &clock, &CommitNotifier::default());
    let memory = HotLicenses::default();
    let (stop, task) = follow(&store, &memory, &notifier, 1_000);
    let hot = HotCounts::Memory(memory.clone());

    let license = Uuid::now_v7();
    appender
        .submit(Submission::new(ORG, issue(license.into(), 50)))
        .await
        .unwrap();
    for machine in 0..20 {
        let result = appender
            .submit(Submission::new(
                ORG,
                acquire(license.into(), Uuid::now_v7().into(), machine),
            ))
            .await
            .unwrap();
        assert!(result.is_accepted());
    }
    let (head, _) = store.head(0).await.unwrap();
    assert!(memory.wait_for(head, Duration::from_secs(10)).await);
    let stats = ReaperStats::default();
    assert_eq!(
        reap_once(&hot, &store, &appender, &clock, &stats).await,
        0,
        "nothing is stale yet"
    );

    clock.advance_seconds(i64::from(TTL_S) + 1);
    let (first, second) = tokio::join!(
        reap_once(&hot, &store, &appender, &clock, &stats),
        reap_once(&hot, &store, &second, &clock, &stats),
    );
    assert_eq!(first + second, 20, "every stale lease expired once");
    let events = store.read_after(0, 0, 10_000).await.unwrap();
    let expired: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "SeatExpired")
        .collect();
    assert_eq!(expired.len(), 20);
    let mut sessions: Vec<_> = expired
        .iter()
        .map(|e| e.payload["session_id"].clone())
        .collect();
    sessions.sort_by_key(|s| s.to_string());
    sessions.dedup();
    assert_eq!(sessions.len(), 20, "one SeatExpired per lease");
    assert!(expired
        .iter()
        .all(|e| e.metadata.actor.as_deref() == Some("reaper")));

    // The counts follow; the next round finds nothing.
    let (head, _) = store.head(0).await.unwrap();
    assert!(hot.wait_for(head, Duration::from_secs(10)).await);
    assert!(hot.stale(clock.now(), 100).await.unwrap().is_empty());
    assert_eq!(stats.leases_reaped.load(Ordering::Relaxed), 20);
    let _ = stop.send(true);
    task.await.unwrap();
}

/// Counts under a prefix belong to the ledger that claimed it: another
/// ledger pointed at the same Redis and prefix refuses to follow (and so
/// never serves them) instead of mixing two logs.
#[tokio::test]
async fn another_ledgers_counts_are_never_used() {
    let ours = redis_counts();
    let mut theirs = RedisLicenses::new(&redis_url(), ours.prefix(), "ledger-b", 0).unwrap();
    let mut ours_follower = ours.clone();
    assert_eq!(
        Follower::position(&mut ours_follower).await.unwrap(),
        0,
        "claimed, empty"
    );
    assert!(Follower::position(&mut theirs).await.is_err());
    drop_redis_keys(&ours).await;
}

// --- Live billing: stored in the ledger's database, equal to the fold ---

/// A billing follower in the background, ranges of `batch` positions.
fn follow_billing(
    store: &Store,
    notifier: &CommitNotifier,
    batch: i64,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, shutdown) = watch::channel(false);
    let config = RunnerConfig {
        batch,
        poll_interval: Duration::from_millis(50),
        retry_after: Duration::from_millis(50),
        ..RunnerConfig::default()
    };
    let task = tokio::spawn(runner::run(
        store.clone(),
        LiveBilling::new(store.clone(), 0),
        notifier.clone(),
        config,
        FollowerStatus::default(),
        shutdown,
    ));
    (stop, task)
}

/// Waits until the stored billing checkpoint reaches the head.
async fn billing_caught_up(store: &Store) {
    let (head, _) = store.head(0).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while billing_live::checkpoint(store, 0).await.unwrap() < head {
        assert!(
            tokio::time::Instant::now() < deadline,
            "billing did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The offline fold over the whole log, as `seatledger-replay usage` runs it.
async fn replayed_usage(
    store: &Store,
    granularity: Granularity,
    as_of: Timestamp,
    from: Timestamp,
    to: Timestamp,
) -> Vec<UsageRow> {
    let mut fold = BillingFold::new(granularity);
    for record in store.read_after(0, 0, 1_000_000).await.unwrap() {
        fold.apply(&record).unwrap();
    }
    fold.report(as_of)
        .into_iter()
        .filter(|row| row.org_id == ORG && row.period_end > from && row.period_start < to)
        .collect()
}

/// Random seat traffic on three licenses with hours and days between some
/// commands, followed by two billing followers at once (two replicas: each
/// range is stored by one of them), and after each round the stored report
/// equals the fold over the whole log, for every granularity, several
/// ranges and `as_of` instants. Then the tables are emptied and rebuilt
/// from position 0 to the same report.
async fn live_billing_equals_the_fold(store: Store) {
    let start = Timestamp::parse("2030-01-31T22:00:00Z").unwrap();
    let clock = ManualClock::new(start);
    let notifier = CommitNotifier::default();
    let appender = start_appender(&store, &clock, &notifier);
    let (stop_a, task_a) = follow_billing(&store, &notifier, 3);
    let (stop_b, task_b) = follow_billing(&store, &notifier, 7);
    let licenses = issue_licenses(&appender, 3).await;
    let mut sessions: Vec<Vec<Uuid>> = vec![Vec::new(); licenses.len()];
    let mut runner = deterministic_runner();
    let steps = prop::collection::vec(step(), 30..60);
    let long_gaps = prop::collection::vec(0..40_000i64, 60);
    let compare = |store: Store, now: Timestamp| async move {
        billing_caught_up(&store).await;
        for granularity in Granularity::ALL {
            for (from, to) in [
                (Timestamp::UNIX_EPOCH, Timestamp::MAX),
                (start.plus_seconds(3_600), start.plus_seconds(2 * 86_400)),
            ] {
                for as_of in [now, now.plus_seconds(-50), now.plus_seconds(5_000)] {
                    let query = UsageQuery {
                        org_id: ORG,
                        license_id: None,
                        granularity,
                        from,
                        to,
                        as_of,
                    };
                    let live = billing_live::usage(&store, &query).await.unwrap();
                    assert_eq!(
                        live.rows,
                        replayed_usage(&store, granularity, as_of, from, to).await,
                        "{granularity:?} [{from}, {to}) as of {as_of}"
                    );
                }
            }
        }
    };
    for _ in 0..6 {
        let gaps = long_gaps.new_tree(&mut runner).unwrap().current();
        for (index, step) in steps
            .new_tree(&mut runner)
            .unwrap()
            .current()
            .into_iter()
            .enumerate()
        {
            let Some(command) = command_of(step, &licenses, &mut sessions, |seconds| {
                // Now and then hours, so leases cross hours, days and the
                // month's end.
                let long = if index % 7 == 0 {
                    gaps[index % gaps.len()]
                } else {
                    0
                };
                clock.advance_seconds(seconds + long)
            }) else {
                continue;
            };
            appender
                .submit(Submission::new(ORG, command))
                .await
                .unwrap();
        }
        compare(store.clone(), clock.now()).await;
    }
    for (stop, task) in [(stop_a, task_a), (stop_b, task_b)] {
        let _ = stop.send(true);
        task.await.unwrap();
    }
    let before = billing_live::usage(
        &store,
        &UsageQuery {
            org_id: ORG,
            license_id: Some(licenses[0].into()),
            granularity: Granularity::Hour,
            from: Timestamp::UNIX_EPOCH,
            to: Timestamp::MAX,
            as_of: clock.now(),
        },
    )
    .await
    .unwrap();
    assert!(!before.rows.is_empty(), "the license was billed");
    assert!(before
        .rows
        .iter()
        .all(|row| row.license_id == licenses[0].into()));

    // Rebuilt from position 0: the same report.
    for table in [
        "usage_periods",
        "usage_users",
        "usage_machines",
        "usage_open_leases",
        "usage_incomplete",
        "follower_checkpoints",
    ] {
        let statement = format!("DELETE FROM {table}");
        match &store {
            Store::Postgres(pool) => sqlx::query(&statement).execute(pool).await.map(drop),
            Store::Sqlite(pool, _) => sqlx::query(&statement).execute(pool).await.map(drop),
        }
        .unwrap();
    }
    let (stop, task) = follow_billing(&store, &notifier, 1_000);
    compare(store.clone(), clock.now()).await;
    let _ = stop.send(true);
    task.await.unwrap();
}

#[tokio::test]
async fn live_billing_equals_the_fold_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    live_billing_equals_the_fold(sqlite_store(&dir).await).await;
}

#[sqlx::test(migrations = false)]
async fn live_billing_equals_the_fold_on_postgres(pool: sqlx::PgPool) {
    live_billing_equals_the_fold(pg_store(pool).await).await;
}

// --- Followers read this process's recent commits from memory ---

/// Records the positions it is given and announces the last.
#[derive(Clone)]
struct Recorder {
    seen: Arc<std::sync::Mutex<Vec<i64>>>,
    last: Arc<watch::Sender<i64>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            seen: Arc::default(),
            last: Arc::new(watch::channel(0).0),
        }
    }
}

impl Follower for Recorder {
    type Event = seatledger_schema::RecordedEvent;

    fn name(&self) -> &'static str {
        "recorder"
    }

    async fn position(&mut self) -> Result<i64, seatledger_projections::FollowerError> {
        Ok(self.seen.lock().unwrap().last().copied().unwrap_or(0))
    }

    async fn apply(
        &mut self,
        events: &[seatledger_schema::RecordedEvent],
    ) -> Result<(), seatledger_projections::FollowerError> {
        self.seen
            .lock()
            .unwrap()
            .extend(events.iter().map(|event| event.position));
        if let Some(event) = events.last() {
            self.last.send_replace(event.position);
        }
        Ok(())
    }
}

/// A license with `acquires` acquires on it, `concurrency` at a time (so
/// batches hold several events); returns the head.
async fn acquires(appender: &Appender, store: &Store, acquires: usize, concurrency: usize) -> i64 {
    let license = Uuid::now_v7();
    appender
        .submit(Submission::new(ORG, issue(license.into(), acquires as u32)))
        .await
        .unwrap();
    for chunk in (0..acquires).collect::<Vec<_>>().chunks(concurrency) {
        let submits = chunk.iter().map(|n| {
            appender.submit(Submission::new(
                ORG,
                acquire(license.into(), Uuid::now_v7().into(), (*n % 250) as u8),
            ))
        });
        for result in futures::future::join_all(submits).await {
            result.unwrap();
        }
    }
    store.head(0).await.unwrap().0
}

/// The events the notifier keeps are the ones the store gives back: parsed
/// equal, raw the same JSON values (what the NATS publisher sends).
async fn committed_events_are_the_stored_ones(store: Store) {
    let clock = ManualClock::new(Timestamp::parse("2030-01-01T00:00:00Z").unwrap());
    let notifier = CommitNotifier::default();
    let appender = start_appender(&store, &clock, &notifier);
    let head = acquires(&appender, &store, 300, 32).await;
    assert!(head > 300, "{head}");

    let batches = notifier
        .recent(0, 0, head)
        .expect("every event was committed by this process");
    let kept: Vec<_> = seatledger_ledger::recent::in_range(&batches, 0, head).collect();
    assert_eq!(kept.len() as i64, head);
    let stored = store.read_range(0, 0, head).await.unwrap();
    let parsed: Vec<seatledger_schema::RecordedEvent> = kept
        .iter()
        .map(|event| runner::LogEvent::from_committed(event).unwrap())
        .collect();
    assert_eq!(parsed, stored);

    let stored_raw = store.read_range_raw(0, 0, head).await.unwrap();
    for (event, stored) in kept.iter().zip(&stored_raw) {
        let raw: seatledger_schema::RawRecordedEvent =
            runner::LogEvent::from_committed(event).unwrap();
        let as_value = |e: &seatledger_schema::RawRecordedEvent| {
            serde_json::from_str::<serde_json::Value>(&serde_json::to_string(e).unwrap()).unwrap()
        };
        assert_eq!(
            as_value(&raw),
            as_value(stored),
            "position {}",
            event.position
        );
    }
}

#[tokio::test]
async fn committed_events_are_the_stored_ones_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    committed_events_are_the_stored_ones(sqlite_store(&dir).await).await;
}

#[sqlx::test(migrations = false)]
async fn committed_events_are_the_stored_ones_on_postgres(pool: sqlx::PgPool) {
    committed_events_are_the_stored_ones(pg_store(pool).await).await;
}

/// A follower that starts further back than the notifier remembers reads
/// the store up to where memory begins, then memory: every position once,
/// in order, whichever source served it.
#[tokio::test]
async fn a_follower_behind_what_memory_holds_reads_the_store_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let clock = ManualClock::new(Timestamp::parse("2030-01-01T00:00:00Z").unwrap());
    let notifier = CommitNotifier::with_recent_capacity(40);
    let appender = start_appender(&store, &clock, &notifier);
    let head = acquires(&appender, &store, 200, 16).await;
    assert!(
        notifier.recent(0, 0, head).is_none(),
        "the first positions are no longer in memory"
    );
    assert!(notifier.recent(0, head - 10, head).is_some());

    let recorder = Recorder::default();
    let mut last = recorder.last.subscribe();
    let (stop, task) = follow(&store, &recorder, &notifier, 7);
    let more = acquires(&appender, &store, 50, 16).await;
    tokio::time::timeout(Duration::from_secs(30), last.wait_for(|last| *last == more))
        .await
        .expect("the follower caught up")
        .unwrap();
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(
        *recorder.seen.lock().unwrap(),
        (1..=more).collect::<Vec<_>>()
    );
}
