//! `cold_load`: what the first command on a license holding many live
//! leases costs an appender that does not hold it in memory (a restart, a
//! new replica, a license its cache evicted). It reads the license's
//! snapshot and the events stored after it, under the partition lock, so a
//! command on any other license that arrives meanwhile waits behind it.
//!
//! ```text
//! cargo run --release -p seatledger-benches --bin cold_load -- \
//!     --database-url postgres://postgres:postgres@127.0.0.1:5432/postgres \
//!     --leases 10000,100000
//! ```
//! For each value: a fresh database, one license holding that many live
//! leases (filled straight through the appender, 256 in flight), then the
//! appender stopped and a new one started on a new connection pool, once
//! without and once with its warm-up (`AppenderConfig::warm_from_entries`);
//! each gets a heartbeat on the large license and, right behind it, an
//! acquire on a small license. Reports how long the start took until the
//! appender took commands, both latencies, then the same two commands
//! again, and how many events followed the license's last snapshot.
//! Loopback only; each run stops by itself.

use clap::Parser;
use seatledger_benches::fresh_store;
use seatledger_ledger::appender::WARM_FROM_ENTRIES;
use seatledger_ledger::domain::{
    Command, HardwareId, HeartbeatTtl, Name, OveragePercent, SeatActor, SeatCount,
};
use seatledger_ledger::{
    Appender, AppenderConfig, CommitNotifier, SigningKey, Store, Submission, SystemClock,
};
use seatledger_schema::OrgId;
use seatledger_schema::{SessionId, UserId};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Parser)]
struct Args {
    /// PostgreSQL server URL (a fresh database is created per run), or `sqlite:PATH`.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Live leases on the large license, one run per value (at most 100,000).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    leases: Vec<u32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    seatledger_benches::ensure_loopback_store(&args.database_url)?;
    anyhow::ensure!(
        args.leases.iter().all(|&n| (1..=100_000).contains(&n)),
        "--leases: 1 to 100,000"
    );
    println!("| live leases | events after its snapshot | warm-up at start | start until the appender takes commands ms | first: heartbeat on the large license ms | first: acquire on another license behind it ms | then: heartbeat ms | then: acquire ms |");
    println!("|---:|---:|---|---:|---:|---:|---:|---:|");
    for &leases in &args.leases {
        let (store, cleanup) = fresh_store(&args.database_url).await?;
        let result = run(&store, &args.database_url, leases).await;
        drop(store);
        cleanup.await?;
        for row in result? {
            println!(
                "| {leases} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                row.tail,
                if row.warm_up { "on" } else { "off" },
                ms(row.start),
                ms(row.first.0),
                ms(row.first.1),
                ms(row.then.0),
                ms(row.then.1)
            );
        }
    }
    Ok(())
}

struct Row {
    tail: i64,
    warm_up: bool,
    /// From the appender's start until it takes commands (its warm-up).
    start: Duration,
    first: (Duration, Duration),
    then: (Duration, Duration),
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn start(
    store: &Store,
    key: &Arc<SigningKey>,
    warm_up: bool,
) -> (Appender, tokio::task::JoinHandle<()>) {
    let config = AppenderConfig {
        warm_from_entries: if warm_up { WARM_FROM_ENTRIES } else { i64::MAX },
        ..AppenderConfig::default()
    };
    Appender::start(
        store.clone(),
        key.clone(),
        Arc::new(SystemClock),
        CommitNotifier::default(),
        config,
    )
}

async fn run(store: &Store, url: &str, leases: u32) -> anyhow::Result<Vec<Row>> {
    let key = Arc::new(SigningKey::generate()?);
    let org = OrgId::now_v7();
    let (large, small) = (Uuid::now_v7(), Uuid::now_v7());
    let (appender, task) = start(store, &key, true);
    for (license_id, seats) in [(large, 100_000), (small, 10)] {
        let issue = Command::IssueLicense {
            client_auth: Default::default(),
            license_id: license_id.into(),
            name: Name::parse("cold load")?,
            seats: SeatCount::new(seats)?,
            expires_at: None,
            heartbeat_ttl_s: HeartbeatTtl::new(86_400)?,
            max_overage_percent: OveragePercent::default(),
        };
        appender.submit(Submission::new(org, issue)).await?;
    }
    let workers: Vec<_> = (0..256u32)
        .map(|worker| {
            let appender = appender.clone();
            tokio::spawn(async move {
                let mut first = None;
                for n in (worker..leases).step_by(256) {
                    let session_id = Uuid::now_v7();
                    first.get_or_insert(session_id);
                    let acquire = Command::AcquireSeat {
                        credential: seatledger_ledger::domain::AcquireCredential::Unchecked,
                        token_id: None,
                        license_id: large.into(),
                        session_id: session_id.into(),
                        user_id: UserId::now_v7(),
                        hardware_id: HardwareId::parse(&format!("hold-{n}"))?,
                    };
                    let result = appender.submit(Submission::new(org, acquire)).await?;
                    anyhow::ensure!(result.is_accepted(), "filling: {result:?}");
                }
                anyhow::Ok(first)
            })
        })
        .collect();
    let mut held = None;
    for worker in workers {
        held = held.or(worker.await??);
    }
    let held = held.ok_or_else(|| anyhow::anyhow!("no lease was filled"))?;
    drop(appender);
    // Stopping waits for the snapshot writer too.
    task.await?;

    let stream_id = format!("license-{large}");
    let versions = store.stream_versions_of(0).await?;
    let (version, snapshot) = versions
        .get(&stream_id)
        .copied()
        .ok_or_else(|| anyhow::anyhow!("{stream_id} has no streams row"))?;
    let tail = version - snapshot.unwrap_or(0);

    let on = Licenses {
        org,
        large,
        held,
        small,
    };
    let mut rows = Vec::new();
    // Without, then with the warm-up: the two commands of each start add
    // nothing a later load would notice (one heartbeat, one lease).
    for (machine, warm_up) in [(1, false), (3, true)] {
        // A new process's view: a new pool, an appender with an empty cache.
        let cold_store = if url.starts_with("sqlite:") {
            store.clone()
        } else {
            let Some(pool) = store.pg_pool() else {
                anyhow::bail!("a PostgreSQL URL without a PostgreSQL store");
            };
            let options = (*pool.connect_options()).clone();
            Store::from_pg_pool(sqlx::PgPool::connect_with(options).await?)
        };
        let started = Instant::now();
        let (appender, task) = start(&cold_store, &key, warm_up);
        appender.warmed().await;
        let start = started.elapsed();
        let first = on.pair(&appender, machine).await?;
        let then = on.pair(&appender, machine + 1).await?;
        drop(appender);
        task.await?;
        rows.push(Row {
            tail,
            warm_up,
            start,
            first,
            then,
        });
    }
    Ok(rows)
}

/// The large license and one of its leases, and the small license.
struct Licenses {
    org: OrgId,
    large: Uuid,
    held: Uuid,
    small: Uuid,
}

impl Licenses {
    /// A heartbeat on the large license and, a moment later (queued behind
    /// whatever the first needs, as a request on another license arriving
    /// meanwhile would be), an acquire on the small one: their latencies.
    async fn pair(
        &self,
        appender: &Appender,
        machine: u32,
    ) -> anyhow::Result<(Duration, Duration)> {
        let heartbeat = Command::Heartbeat {
            license_id: self.large.into(),
            session_id: self.held.into(),
            by: SeatActor::Unchecked,
        };
        let acquire = Command::AcquireSeat {
            credential: seatledger_ledger::domain::AcquireCredential::Unchecked,
            token_id: None,
            license_id: self.small.into(),
            session_id: SessionId::now_v7(),
            user_id: UserId::now_v7(),
            hardware_id: HardwareId::parse(&format!("small-{machine}"))?,
        };
        let timed = |command: Command| {
            let appender = appender.clone();
            let org = self.org;
            tokio::spawn(async move {
                let started = Instant::now();
                let result = appender.submit(Submission::new(org, command)).await?;
                anyhow::ensure!(result.is_accepted(), "{result:?}");
                anyhow::Ok(started.elapsed())
            })
        };
        let first = timed(heartbeat);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let second = timed(acquire);
        Ok((first.await??, second.await??))
    }
}
