//! Durable append throughput of the group-commit appender, straight into
//! the ledger (no HTTP): N client tasks each submit acquire/release pairs on
//! their own license as fast as they can, for each batch size given.
//!
//! ```text
//! cargo run --release -p seatledger-benches --bin append_throughput -- \
//!     --database-url postgres://postgres:postgres@127.0.0.1:5432/postgres \
//!     --clients 1,16,64,256 --batch-max 1,64,1024 --seconds 5
//! ```
//! On PostgreSQL each run uses a fresh database (created and dropped); the
//! URL names the server and a database to connect to for that. Loopback
//! only; every run stops by itself after `--seconds`.
//!
//! `--broken-clients 0,16` adds that many tasks hammering acquire on a
//! license whose stream holds an undecodable event (the blast
//! radius): the healthy clients' events/s should not move.
//!
//! `--followers none,billing` runs each configuration without and with the
//! live billing follower writing into the same database: what billing
//! costs the appender.

#[path = "../../../ledger/tests/common/plant.rs"]
mod plant;

use clap::Parser;
use seatledger_benches::fresh_store;
use seatledger_ledger::domain::{
    Command, HardwareId, HeartbeatTtl, Name, OveragePercent, SeatCount,
};
use seatledger_ledger::{
    Appender, AppenderConfig, CommitNotifier, SigningKey, Store, Submission, SystemClock,
};
use seatledger_projections::{billing_live, runner, FollowerStatus, LiveBilling};
use seatledger_schema::OrgId;
use seatledger_schema::{SessionId, UserId};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Parser)]
struct Args {
    /// PostgreSQL server URL (a fresh database is created per run), or `sqlite:PATH`.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,64,1024")]
    batch_max: Vec<usize>,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Microseconds a batch waits for more commands once the queue is dry
    /// (the appender's `linger`), one run per value.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    linger_us: Vec<u64>,
    /// Tasks submitting acquires on an unreadable license alongside the
    /// healthy clients, one run per value.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    broken_clients: Vec<usize>,
    /// Followers running during the run, one run per value: `none`, or
    /// `billing` (live billing writing to the same database, woken on
    /// every commit, as under `seatledger serve`).
    #[arg(long, value_delimiter = ',', default_value = "none")]
    followers: Vec<String>,
    /// Partitions written at once, one run per value: K appenders, each
    /// with its own partition (lock, positions, hash chain) on the same
    /// database, client i on partition i mod K (DESIGN's scale-out plan).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    partitions: Vec<i16>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    seatledger_benches::ensure_loopback_store(&args.database_url)?;
    for followers in &args.followers {
        anyhow::ensure!(
            followers == "none" || followers == "billing",
            "--followers: none or billing, not {followers}"
        );
    }
    for &partitions in &args.partitions {
        anyhow::ensure!(partitions >= 1, "--partitions: at least 1");
        anyhow::ensure!(
            partitions == 1 || args.followers.iter().all(|f| f == "none"),
            "--partitions above 1 runs without followers"
        );
    }
    println!("| batch_max | linger µs | clients | broken clients | followers | events/s | mean batch | commit ms (mean) | unreadable answers | partitions |");
    println!("|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|");
    for &batch_max in &args.batch_max {
        for &linger_us in &args.linger_us {
            for &clients in &args.clients {
                for (broken_clients, followers, partitions) in runs(&args) {
                    let (store, cleanup) = fresh_store(&args.database_url).await?;
                    let config = AppenderConfig {
                        batch_max,
                        linger: Duration::from_micros(linger_us),
                        ..AppenderConfig::default()
                    };
                    let load = Load {
                        clients,
                        broken_clients,
                        duration: Duration::from_secs(args.seconds),
                        billing: followers == "billing",
                        partitions,
                    };
                    let result = run(&store, config, load).await;
                    drop(store);
                    cleanup.await?;
                    let (events_per_s, mean_batch, commit_ms, unreadable) = result?;
                    println!("| {batch_max} | {linger_us} | {clients} | {broken_clients} | {followers} | {events_per_s:.0} | {mean_batch:.1} | {commit_ms:.2} | {unreadable} | {partitions} |");
                }
            }
        }
    }
    Ok(())
}

/// Every combination of broken clients, followers and partitions.
fn runs(args: &Args) -> Vec<(usize, &str, i16)> {
    let mut runs = Vec::new();
    for &broken in &args.broken_clients {
        for followers in &args.followers {
            for &partitions in &args.partitions {
                runs.push((broken, followers.as_str(), partitions));
            }
        }
    }
    runs
}

struct Load {
    clients: usize,
    broken_clients: usize,
    duration: Duration,
    billing: bool,
    partitions: i16,
}

async fn run(
    store: &Store,
    config: AppenderConfig,
    load: Load,
) -> anyhow::Result<(f64, f64, f64, u64)> {
    let Load {
        clients,
        broken_clients,
        duration,
        billing,
        partitions,
    } = load;
    let key = Arc::new(SigningKey::generate()?);
    let notifier = CommitNotifier::default();
    let mut appenders = Vec::new();
    let mut tasks = Vec::new();
    for partition in 0..partitions {
        let (appender, task) = Appender::start(
            store.clone(),
            key.clone(),
            Arc::new(SystemClock),
            // Positions are per partition, and so is a notifier.
            if partition == 0 {
                notifier.clone()
            } else {
                CommitNotifier::default()
            },
            AppenderConfig {
                partition,
                ..config.clone()
            },
        );
        appenders.push(appender);
        tasks.push(task);
    }
    let appender = appenders[0].clone();
    let events_of = |appenders: &[Appender]| -> (u64, u64, u64) {
        appenders.iter().fold((0, 0, 0), |(e, b, c), a| {
            let stats = a.stats();
            (
                e + stats.events.load(Ordering::Relaxed),
                b + stats.batches.load(Ordering::Relaxed),
                c + stats.commit_micros_total.load(Ordering::Relaxed),
            )
        })
    };
    let (stop_followers, followers_shutdown) = tokio::sync::watch::channel(false);
    let billing_task = billing.then(|| {
        tokio::spawn(runner::run(
            store.clone(),
            LiveBilling::new(store.clone(), 0),
            notifier.clone(),
            billing_live::runner_config(),
            FollowerStatus::default(),
            followers_shutdown,
        ))
    });
    let org = OrgId::now_v7();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let mut licenses = Vec::new();
    for client in 0..clients {
        let appender = &appenders[client % appenders.len()];
        let license_id = Uuid::now_v7();
        let issue = Command::IssueLicense {
            client_auth: Default::default(),
            license_id: license_id.into(),
            name: Name::parse("bench")?,
            seats: SeatCount::new(10)?,
            expires_at: None,
            heartbeat_ttl_s: HeartbeatTtl::default(),
            max_overage_percent: OveragePercent::default(),
        };
        licenses.push((license_id, appender.submit(Submission::new(org, issue))));
    }
    let mut ready = Vec::new();
    for (license_id, issued) in licenses {
        issued.await?;
        ready.push(license_id);
    }
    let broken_license = Uuid::now_v7();
    let unreadable = Arc::new(AtomicU64::new(0));
    let mut broken_workers = Vec::new();
    if broken_clients > 0 {
        let issue = Command::IssueLicense {
            client_auth: Default::default(),
            license_id: broken_license.into(),
            name: Name::parse("broken")?,
            seats: SeatCount::new(10)?,
            expires_at: None,
            heartbeat_ttl_s: HeartbeatTtl::default(),
            max_overage_percent: OveragePercent::default(),
        };
        appender.submit(Submission::new(org, issue)).await?;
        plant::plant_undecodable_event(store, org, &format!("license-{broken_license}")).await;
        for client in 0..broken_clients {
            let appender = appender.clone();
            let stop = stop.clone();
            let unreadable = unreadable.clone();
            broken_workers.push(tokio::spawn(async move {
                let hardware_id = HardwareId::parse(&format!("broken-{client}"))
                    .unwrap_or_else(|_| unreachable!());
                while !stop.load(Ordering::Relaxed) {
                    let acquire = Command::AcquireSeat {
                        credential: seatledger_ledger::domain::AcquireCredential::Unchecked,
                        token_id: None,
                        license_id: broken_license.into(),
                        session_id: SessionId::now_v7(),
                        user_id: UserId::now_v7(),
                        hardware_id: hardware_id.clone(),
                    };
                    if appender
                        .submit(Submission::new(org, acquire))
                        .await
                        .is_err()
                    {
                        unreadable.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    let (before_events, before_batches, before_commit) = events_of(&appenders);
    let started = Instant::now();
    let workers: Vec<_> = ready
        .into_iter()
        .enumerate()
        .map(|(client, license_id)| {
            let appender = appenders[client % appenders.len()].clone();
            let stop = stop.clone();
            let failures = failures.clone();
            tokio::spawn(async move {
                let hardware_id = HardwareId::parse(&format!("machine-{client}"))
                    .unwrap_or_else(|_| unreachable!());
                let user_id = Uuid::now_v7();
                while !stop.load(Ordering::Relaxed) {
                    let session_id = Uuid::now_v7();
                    let acquire = Command::AcquireSeat {
                        credential: seatledger_ledger::domain::AcquireCredential::Unchecked,
                        token_id: None,
                        license_id: license_id.into(),
                        session_id: session_id.into(),
                        user_id: user_id.into(),
                        hardware_id: hardware_id.clone(),
                    };
                    let release = Command::ReleaseSeat {
                        license_id: license_id.into(),
                        session_id: session_id.into(),
                        by: seatledger_ledger::domain::SeatActor::Unchecked,
                    };
                    for command in [acquire, release] {
                        match appender.submit(Submission::new(org, command)).await {
                            Ok(result) if result.is_accepted() => {}
                            _ => {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers.into_iter().chain(broken_workers) {
        worker.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (after_events, after_batches, after_commit) = events_of(&appenders);
    let events = after_events - before_events;
    let batches = after_batches - before_batches;
    let commit = after_commit - before_commit;
    drop(appender);
    drop(appenders);
    for task in tasks {
        task.await?;
    }
    let _ = stop_followers.send(true);
    if let Some(billing) = billing_task {
        billing.await?;
    }
    anyhow::ensure!(
        failures.load(Ordering::Relaxed) == 0,
        "{} commands failed",
        failures.load(Ordering::Relaxed)
    );
    let batches = batches.max(1) as f64;
    Ok((
        events as f64 / elapsed,
        events as f64 / batches,
        commit as f64 / batches / 1000.0,
        unreadable.load(Ordering::Relaxed),
    ))
}
