//! `lease_levels`: seat operations on one license while it holds more and
//! more live leases, against a running `seatledger serve`.
//!
//! One license of `--seats` seats (10% overage allowed) with a 24-hour heartbeat TTL (held leases
//! stay live for the whole run). For each level (0, 10k, 50k, 100k live
//! leases by default) it first fills the license up to that level through
//! the API (acquires for distinct machines, kept), waits until the
//! server's followers (hot counts, billing, NATS) have applied the fill
//! (every `seatledger_follower_lag` at 0, at most 300 s; the wait is the
//! last column), so a level is measured in its steady state and not while
//! the followers still work off the fill, then measures for
//! `--duration-s`: `--clients` keep-alive clients cycling acquire → release
//! on the same license (distinct machines, so every cycle is a real grant
//! and a real release), reporting ops/s, p50/p99, the appender's events/s
//! (from `/metrics`) and the server's RSS (from `/proc/PID/status`); then a
//! burst: `--burst` clients acquiring at once (then releasing), with its
//! wall time and p99.
//!
//! Loopback only; bounded (levels within the license's 110,000-seat limit,
//! at most 120 s of measurement per level).
//!
//! ```text
//! target/release/lease_levels --url http://127.0.0.1:8080 --server-pid PID \
//!     --levels 0,10000,50000,100000 --duration-s 10
//! ```

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Clone)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The server's process id, for its RSS (omit: not reported).
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long, value_delimiter = ',', default_value = "0,10000,50000,100000")]
    levels: Vec<u64>,
    /// Seats of the license (at most 100,000), with 10% overage allowed so
    /// that the top level plus the cycling and burst clients fit.
    #[arg(long, default_value_t = 100_000)]
    seats: u64,
    /// Clients cycling acquire → release while measuring.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Clients acquiring at once in the burst.
    #[arg(long, default_value_t = 256)]
    burst: usize,
    /// Clients filling the license up to each level.
    #[arg(long, default_value_t = 128)]
    fill_clients: usize,
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// After the levels, suspend the license (at the top level) while the
    /// clients cycle on another license, and report their p99 before and
    /// during.
    #[arg(long)]
    suspend: bool,
    /// Cycle and burst on a second, empty license while the levels are
    /// held on the first: separates what the leases of the license an
    /// operation is on cost from what the server's whole working set costs.
    #[arg(long)]
    cycle_elsewhere: bool,
}

struct Setup {
    token: String,
    /// The license the levels are held on.
    key: String,
    /// The license the clients cycle and burst on (`key` unless
    /// `--cycle-elsewhere`).
    cycle_key: String,
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: Value,
) -> Option<(u16, Value)> {
    let response = client
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.unwrap_or(Value::Null)))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

/// Waits until every follower of the server reports no lag (at most
/// `limit`); returns how long that took, or `None` if it did not happen.
async fn settle(client: &reqwest::Client, url: &str, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(response) = client.get(format!("{url}/metrics")).send().await {
            let text = response.text().await.unwrap_or_default();
            let mut lags = text
                .lines()
                .filter_map(|line| line.strip_prefix("seatledger_follower_lag{"))
                .filter_map(|rest| rest.rsplit_once(' ')?.1.parse::<f64>().ok())
                .peekable();
            if lags.peek().is_some() && lags.all(|lag| lag == 0.0) {
                return Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

async fn metric(client: &reqwest::Client, url: &str, name: &str) -> f64 {
    let Ok(response) = client.get(format!("{url}/metrics")).send().await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn rss_mib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let kb: u64 = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// Acquires seats for machines `hold-N` until `held` reaches `level`.
async fn fill(
    client: &reqwest::Client,
    args: &Args,
    setup: &Setup,
    held: &Arc<AtomicU64>,
    level: u64,
) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/licenses/acquire", args.url);
    let workers = (0..args.fill_clients).map(|_| {
        let (client, url, held) = (client.clone(), url.clone(), held.clone());
        let (token, key) = (setup.token.clone(), setup.key.clone());
        tokio::spawn(async move {
            loop {
                let n = held.fetch_add(1, Ordering::Relaxed);
                if n >= level {
                    held.fetch_sub(1, Ordering::Relaxed);
                    return Ok::<(), anyhow::Error>(());
                }
                let body = json!({"license_key": key, "hardware_id": format!("hold-{n}")});
                match post(&client, &url, &token, body).await {
                    Some((201, _)) => {}
                    other => bail!("filling: acquire answered {other:?}"),
                }
            }
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker??;
    }
    Ok(())
}

/// `clients` clients cycling acquire → release until `deadline`; returns
/// every operation's latency and the failures.
async fn cycle(
    client: &reqwest::Client,
    args: &Args,
    setup: &Setup,
    key: &str,
    level: u64,
    deadline: Instant,
) -> (Vec<Duration>, u64) {
    let workers = (0..args.clients).map(|index| {
        let client = client.clone();
        let (token, key, base) = (setup.token.clone(), key.to_owned(), args.url.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0;
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let started = Instant::now();
                let body = json!({"license_key": key, "hardware_id": format!("cycle-{level}-{index}-{n}")});
                let Some((201, granted)) = post(&client, &format!("{base}/api/v1/licenses/acquire"), &token, body).await else {
                    failures += 1;
                    continue;
                };
                latencies.push(started.elapsed());
                let started = Instant::now();
                let body = json!({"session_id": granted["session_id"]});
                match post(&client, &format!("{base}/api/v1/licenses/release"), &token, body).await {
                    Some((200, _)) => latencies.push(started.elapsed()),
                    _ => failures += 1,
                }
            }
            (latencies, failures)
        })
    });
    let mut all = Vec::new();
    let mut failures = 0;
    for worker in futures::future::join_all(workers).await {
        let (latencies, failed) = worker.unwrap_or_default();
        all.extend(latencies);
        failures += failed;
    }
    all.sort();
    (all, failures)
}

/// `burst` clients acquiring at once, then releasing what they got:
/// (wall time of the acquires, their latencies).
async fn burst(
    client: &reqwest::Client,
    args: &Args,
    setup: &Setup,
    level: u64,
) -> (Duration, Vec<Duration>) {
    let started = Instant::now();
    let acquires = (0..args.burst).map(|index| {
        let client = client.clone();
        let (token, key, base) = (
            setup.token.clone(),
            setup.cycle_key.clone(),
            args.url.clone(),
        );
        async move {
            let started = Instant::now();
            let body = json!({"license_key": key, "hardware_id": format!("burst-{level}-{index}")});
            let answer = post(
                &client,
                &format!("{base}/api/v1/licenses/acquire"),
                &token,
                body,
            )
            .await;
            (started.elapsed(), answer)
        }
    });
    let answers = futures::future::join_all(acquires).await;
    let wall = started.elapsed();
    let mut latencies: Vec<Duration> = answers.iter().map(|(latency, _)| *latency).collect();
    latencies.sort();
    let releases = answers.iter().filter_map(|(_, answer)| match answer {
        Some((201, body)) => Some(body["session_id"].clone()),
        _ => None,
    });
    let url = format!("{}/api/v1/licenses/release", args.url);
    futures::future::join_all(
        releases.map(|session| post(client, &url, &setup.token, json!({"session_id": session}))),
    )
    .await;
    (wall, latencies)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(args.url.contains("127.0.0.1") || args.url.contains("localhost")) {
        bail!("loopback only");
    }
    let limit = args.seats + args.seats / 10;
    let headroom = (args.clients + args.burst) as u64;
    if args.levels.iter().any(|level| level + headroom > limit) {
        bail!("every level plus --clients and --burst must fit in --seats plus 10% overage");
    }
    if args.duration_s == 0 || args.duration_s > 120 {
        bail!("--duration-s must be 1 to 120");
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let token = seatledger_benches::register_org(&client, &args.url, "lease-levels").await?;
    let issued: Value = client
        .post(format!("{}/api/v1/licenses", args.url))
        .bearer_auth(&token)
        .json(&json!({"name": "site license", "seats": args.seats, "max_overage_percent": 10, "heartbeat_ttl_s": 86_400}))
        .send()
        .await?
        .json()
        .await?;
    let key = issued["key"]
        .as_str()
        .with_context(|| format!("issue: {issued}"))?
        .to_owned();
    let cycle_key = if args.cycle_elsewhere {
        let other: Value = client
            .post(format!("{}/api/v1/licenses", args.url))
            .bearer_auth(&token)
            .json(&json!({"name": "cycling license", "seats": 10_000, "heartbeat_ttl_s": 86_400}))
            .send()
            .await?
            .json()
            .await?;
        println!("Clients cycle and burst on a second, empty license; the levels are held on the first.\n");
        other["key"]
            .as_str()
            .with_context(|| format!("issue: {other}"))?
            .to_owned()
    } else {
        key.clone()
    };
    let setup = Setup {
        token,
        key,
        cycle_key,
    };
    let held = Arc::new(AtomicU64::new(0));
    println!("| live leases | seat ops/s | p50 ms | p99 ms | appender events/s | server RSS MiB | burst of {} wall ms | burst p99 ms | fill acquires/s | failures | followers caught up on the fill after s |", args.burst);
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &level in &args.levels {
        let filled_from = held.load(Ordering::Relaxed);
        let fill_started = Instant::now();
        fill(&client, &args, &setup, &held, level).await?;
        let fill_rate = (level.saturating_sub(filled_from)) as f64
            / fill_started.elapsed().as_secs_f64().max(1e-9);
        let settled = settle(&client, &args.url, Duration::from_secs(300)).await;
        let events_before = metric(&client, &args.url, "seatledger_appender_events_total").await;
        let started = Instant::now();
        let (latencies, failures) = cycle(
            &client,
            &args,
            &setup,
            &setup.cycle_key,
            level,
            started + Duration::from_secs(args.duration_s),
        )
        .await;
        let seconds = started.elapsed().as_secs_f64();
        let events =
            metric(&client, &args.url, "seatledger_appender_events_total").await - events_before;
        let rss = rss_mib(args.server_pid);
        let (wall, burst_latencies) = burst(&client, &args, &setup, level).await;
        println!(
            "| {level} | {:.0} | {:.1} | {:.1} | {:.0} | {} | {:.0} | {:.1} | {} | {failures} | {} |",
            latencies.len() as f64 / seconds,
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            events / seconds,
            rss.map_or_else(|| "-".to_owned(), |mib| mib.to_string()),
            wall.as_secs_f64() * 1000.0,
            percentile(&burst_latencies, 0.99),
            if level > filled_from {
                format!("{fill_rate:.0}")
            } else {
                "-".to_owned()
            },
            settled.map_or_else(
                || "not in 300 s".to_owned(),
                |took| format!("{:.1}", took.as_secs_f64())
            ),
        );
    }
    if args.suspend {
        suspend_under_load(&client, &args, &setup, held.load(Ordering::Relaxed)).await?;
    }
    Ok(())
}

/// Suspends the license (holding `held` live leases) while the clients
/// cycle on another license: their p99 before and during, and how long
/// the suspension took.
async fn suspend_under_load(
    client: &reqwest::Client,
    args: &Args,
    setup: &Setup,
    held: u64,
) -> anyhow::Result<()> {
    let other: Value = client
        .post(format!("{}/api/v1/licenses", args.url))
        .bearer_auth(&setup.token)
        .json(&json!({"name": "another license", "seats": 10_000}))
        .send()
        .await?
        .json()
        .await?;
    let other_key = other["key"]
        .as_str()
        .with_context(|| format!("issue: {other}"))?
        .to_owned();
    let phase = Duration::from_secs(args.duration_s.min(10));
    let (normal, _) = cycle(client, args, setup, &other_key, 1, Instant::now() + phase).await;
    let deadline = Instant::now() + phase;
    let suspend = async {
        tokio::time::sleep(phase / 4).await;
        let started = Instant::now();
        let suspended = client
            .post(format!(
                "{}/api/v1/licenses/{}/suspend",
                args.url,
                license_id(client, args, setup).await?
            ))
            .bearer_auth(&setup.token)
            .json(&json!({}))
            .send()
            .await?;
        anyhow::ensure!(
            suspended.status().is_success(),
            "suspend answered {}",
            suspended.status()
        );
        Ok::<Duration, anyhow::Error>(started.elapsed())
    };
    let ((during, failures), took) =
        tokio::join!(cycle(client, args, setup, &other_key, 2, deadline), suspend);
    let took = took?;
    println!();
    println!("| suspend of a license with {held} live leases | ms | other license's seat op p99 before ms | during ms | during ÷ before | failures |");
    println!("|---|---:|---:|---:|---:|---:|");
    let (before, while_suspending) = (percentile(&normal, 0.99), percentile(&during, 0.99));
    println!(
        "| suspend | {:.0} | {before:.1} | {while_suspending:.1} | {:.2} | {failures} |",
        took.as_secs_f64() * 1000.0,
        while_suspending / before.max(1e-9)
    );
    Ok(())
}

/// The id of the license `setup.key` opens (the first license listed).
async fn license_id(
    client: &reqwest::Client,
    args: &Args,
    setup: &Setup,
) -> anyhow::Result<String> {
    let listed: Value = client
        .get(format!("{}/api/v1/licenses", args.url))
        .bearer_auth(&setup.token)
        .send()
        .await?
        .json()
        .await?;
    let licenses = listed
        .as_array()
        .or_else(|| listed["licenses"].as_array())
        .context("license list")?;
    licenses
        .iter()
        .find(|license| license["name"] == "site license")
        .and_then(|license| license["id"].as_str())
        .map(str::to_owned)
        .context("the site license is listed")
}
