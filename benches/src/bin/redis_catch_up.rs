//! `redis_catch_up`: how long the Redis hot counts take to rebuild from
//! position 0 (after a flush, or on a new Redis) with N events behind.
//!
//! Fills a fresh PostgreSQL database (or SQLite file) through the appender
//! with `--events` events (acquire/release pairs and heartbeats on 64
//! licenses, leaving live leases), then follows the log into Redis under a
//! prefix of its own, from 0, and reports seconds and events/s; the keys
//! are deleted afterwards. Loopback only; bounded by the fill size.
//!
//! ```text
//! cargo run --release -p seatledger-benches --bin redis_catch_up -- \
//!     --database-url postgres://postgres:postgres@127.0.0.1:5432/postgres \
//!     --events 100000,1000000
//! ```

use clap::Parser;
use seatledger_benches::fresh_store;
use seatledger_ledger::domain::{
    Command, HardwareId, HeartbeatTtl, Name, OveragePercent, SeatCount,
};
use seatledger_ledger::{
    Appender, AppenderConfig, CommitNotifier, SigningKey, Store, Submission, SystemClock,
};
use seatledger_projections::{runner, FollowerStatus, RedisLicenses, RunnerConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Parser)]
struct Args {
    /// PostgreSQL server URL (a fresh database is created per run), or `sqlite:PATH`.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Events behind, one run per value (at most 2,000,000).
    #[arg(long, value_delimiter = ',', default_value = "100000")]
    events: Vec<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for url in [&args.database_url, &args.redis_url] {
        anyhow::ensure!(
            url.contains("127.0.0.1") || url.contains("localhost") || url.starts_with("sqlite:"),
            "loopback only"
        );
    }
    println!("| events behind | fill s | catch-up s | events/s |");
    println!("|---:|---:|---:|---:|");
    for &events in &args.events {
        anyhow::ensure!(events <= 2_000_000, "--events at most 2,000,000");
        let (store, cleanup) = fresh_store(&args.database_url).await?;
        let result = run(&store, &args.redis_url, events).await;
        drop(store);
        cleanup.await?;
        let (fill_s, catch_up_s, head) = result?;
        println!(
            "| {head} | {fill_s:.1} | {catch_up_s:.2} | {:.0} |",
            head as f64 / catch_up_s
        );
    }
    Ok(())
}

async fn run(store: &Store, redis_url: &str, events: u64) -> anyhow::Result<(f64, f64, i64)> {
    let started = Instant::now();
    fill(store, events).await?;
    let fill_s = started.elapsed().as_secs_f64();
    let (head, _) = store.head(0).await?;

    let prefix = format!("seatledger-catch-up-{}:", Uuid::now_v7());
    let redis = RedisLicenses::new(redis_url, &prefix, "bench", 0)?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(runner::run(
        store.clone(),
        redis.clone(),
        CommitNotifier::default(),
        RunnerConfig::default(),
        FollowerStatus::default(),
        shutdown,
    ));
    // Polled, not awaited on the counts' own signal: that is quiet until
    // the first call to Redis succeeded.
    let deadline = Instant::now() + Duration::from_secs(3_600);
    while redis.position() < head && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let caught_up = redis.position() >= head;
    let catch_up_s = started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    task.await?;
    anyhow::ensure!(caught_up, "the follower did not catch up");

    let client = redis::Client::open(redis_url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut connection)
        .await?;
    for chunk in keys.chunks(1_000) {
        let _: () = redis::cmd("DEL")
            .arg(chunk)
            .query_async(&mut connection)
            .await?;
    }
    Ok((fill_s, catch_up_s, head))
}

/// About `events` events: per license, acquires that stay live and
/// heartbeats, 256 submissions in flight.
async fn fill(store: &Store, events: u64) -> anyhow::Result<()> {
    let (appender, task) = Appender::start(
        store.clone(),
        Arc::new(SigningKey::generate()?),
        Arc::new(SystemClock),
        CommitNotifier::default(),
        AppenderConfig::default(),
    );
    let tenant = Uuid::now_v7();
    let licenses: Vec<Uuid> = (0..64).map(|_| Uuid::now_v7()).collect();
    for license_id in &licenses {
        let issue = Command::IssueLicense {
            license_id: *license_id,
            name: Name::parse("bench")?,
            seats: SeatCount::new(100_000)?,
            expires_at: None,
            heartbeat_ttl_s: HeartbeatTtl::new(86_400)?,
            max_overage_percent: OveragePercent::default(),
        };
        appender.submit(Submission::new(tenant, issue)).await?;
    }
    let per_client = events / 256 + 1;
    let workers: Vec<_> = (0..256u64)
        .map(|client| {
            let appender = appender.clone();
            let license_id = licenses[(client % 64) as usize];
            tokio::spawn(async move {
                let mut sessions = Vec::new();
                for step in 0..per_client {
                    let command = if step % 4 == 3 && !sessions.is_empty() {
                        Command::Heartbeat {
                            license_id,
                            session_id: sessions[(step as usize / 4) % sessions.len()],
                        }
                    } else {
                        let session_id = Uuid::now_v7();
                        sessions.push(session_id);
                        Command::AcquireSeat {
                            license_id,
                            session_id,
                            user_id: Uuid::now_v7(),
                            hardware_id: HardwareId::parse(&format!("m-{client}-{step}"))?,
                        }
                    };
                    appender.submit(Submission::new(tenant, command)).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    drop(appender);
    task.await?;
    Ok(())
}
