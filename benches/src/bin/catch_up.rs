//! `catch_up`: how long a follower takes to rebuild from position 0 with
//! N events behind: the Redis hot counts (after a flush, or on a new
//! Redis) and live billing (its tables emptied, or a new server on an old
//! log); then how long a usage report takes with every lease still open.
//!
//! Fills a fresh PostgreSQL database (or SQLite file) through the appender
//! with `--events` events (acquires that stay live, and heartbeats, on 64
//! licenses: the worst shape for both, as every lease is open), then runs
//! each follower from 0 and reports seconds and events/s; the Redis keys
//! are deleted afterwards. Loopback only; bounded by the fill size.
//!
//! ```text
//! cargo run --release -p seatledger-benches --bin catch_up -- \
//!     --database-url postgres://postgres:postgres@127.0.0.1:5432/postgres \
//!     --events 100000,1000000 --followers redis,billing
//! ```

use clap::Parser;
use seatledger_benches::{fill_live_leases, fresh_store};
use seatledger_ledger::{CommitNotifier, Store};
use seatledger_projections::{
    billing_live, runner, Follower, FollowerStatus, Granularity, LiveBilling, RedisLicenses,
    RunnerConfig, UsageQuery,
};
use seatledger_schema::OrgId;
use seatledger_schema::Timestamp;
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
    /// Which followers: redis, billing.
    #[arg(long, value_delimiter = ',', default_value = "redis,billing")]
    followers: Vec<String>,
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
    for follower in &args.followers {
        anyhow::ensure!(
            follower == "redis" || follower == "billing",
            "--followers: redis or billing, not {follower}"
        );
    }
    println!("| follower | events behind | open leases | fill s | catch-up s | events/s | usage report ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for &events in &args.events {
        anyhow::ensure!(events <= 2_000_000, "--events at most 2,000,000");
        let (store, cleanup) = fresh_store(&args.database_url).await?;
        let result = run(&store, &args, events).await;
        drop(store);
        cleanup.await?;
        for line in result? {
            println!("{line}");
        }
    }
    Ok(())
}

async fn run(store: &Store, args: &Args, events: u64) -> anyhow::Result<Vec<String>> {
    let started = Instant::now();
    let (org, open) = fill_live_leases(store, events).await?;
    let fill_s = started.elapsed().as_secs_f64();
    let (head, _) = store.head(0).await?;
    let mut lines = Vec::new();
    for follower in &args.followers {
        let (catch_up_s, report_ms) = if follower == "redis" {
            (redis_catch_up(store, &args.redis_url, head).await?, None)
        } else {
            billing_catch_up(store, head, org).await?
        };
        lines.push(format!(
            "| {follower} | {head} | {open} | {fill_s:.1} | {catch_up_s:.2} | {:.0} | {} |",
            head as f64 / catch_up_s,
            report_ms.map_or("".to_owned(), |ms: f64| format!("{ms:.1}"))
        ));
    }
    Ok(lines)
}

/// Runs `follower` from 0 until `reached` says it applied the head.
async fn follow<F, R, Fut>(store: &Store, follower: F, head: i64, reached: R) -> anyhow::Result<f64>
where
    F: Follower + 'static,
    R: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<i64>>,
{
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(runner::run(
        store.clone(),
        follower,
        CommitNotifier::default(),
        RunnerConfig::default(),
        FollowerStatus::default(),
        shutdown,
    ));
    let deadline = Instant::now() + Duration::from_secs(3_600);
    let mut caught_up = false;
    while Instant::now() < deadline {
        if reached().await? >= head {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let catch_up_s = started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    task.await?;
    anyhow::ensure!(caught_up, "the follower did not catch up");
    Ok(catch_up_s)
}

async fn redis_catch_up(store: &Store, redis_url: &str, head: i64) -> anyhow::Result<f64> {
    let prefix = format!("seatledger-catch-up-{}:", Uuid::now_v7());
    let redis = RedisLicenses::new(redis_url, &prefix, "bench", 0)?;
    // Polled, not awaited on the counts' own signal: that is quiet until
    // the first call to Redis succeeded.
    let watched = redis.clone();
    let catch_up_s = follow(store, redis, head, || {
        let position = watched.position();
        async move { Ok(position) }
    })
    .await?;

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
    Ok(catch_up_s)
}

/// Live billing from 0, then the median of 5 day reports of the tenant
/// (every lease open: the report's worst case).
async fn billing_catch_up(
    store: &Store,
    head: i64,
    org: OrgId,
) -> anyhow::Result<(f64, Option<f64>)> {
    let catch_up_s = follow(store, LiveBilling::new(store.clone(), 0), head, || async {
        Ok(billing_live::checkpoint(store, 0).await?)
    })
    .await?;
    let now = Timestamp::now();
    let query = UsageQuery {
        org_id: org,
        license_id: None,
        granularity: Granularity::Day,
        from: now.plus_seconds(-86_400),
        to: now.plus_seconds(86_400),
        as_of: now,
    };
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let report = billing_live::usage(store, &query).await?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(!report.rows.is_empty(), "the report is empty");
    }
    times.sort_by(f64::total_cmp);
    Ok((catch_up_s, Some(times[times.len() / 2])))
}
