//! `loadgen`: simulated client apps against a seatledger server over HTTP
//! keep-alive. Each client acquires a seat, heartbeats `--heartbeats` times
//! and releases it, again and again until `--duration-s` is up. Reports per
//! operation ops/s and latency p50/p99/p99.9/max, and errors by `code`.
//!
//! `--hold N` instead acquires N leases on distinct machines and keeps them
//! (for measuring the server's memory with many active leases).
//!
//! Loopback only; bounded in time (at most 600 s) and stops by itself.
//!
//! ```text
//! cargo run --release -p seatledger-benches --bin loadgen -- \
//!     --url http://127.0.0.1:8080 --clients 256 --heartbeats 2 --duration-s 20
//! ```

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Clone)]
struct Args {
    /// The server (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrent simulated client apps.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Heartbeats between acquire and release.
    #[arg(long, default_value_t = 2)]
    heartbeats: usize,
    /// Licenses the clients spread over.
    #[arg(long, default_value_t = 10)]
    licenses: usize,
    /// Seats per license (keep licenses × seats ≥ clients to avoid denials).
    #[arg(long, default_value_t = 1000)]
    seats_per_license: u32,
    /// How long to run, in seconds (at most 600).
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Acquire this many leases and keep them, instead of cycling.
    #[arg(long)]
    hold: Option<u64>,
}

#[derive(Default)]
struct Recorder {
    latencies_us: BTreeMap<&'static str, Vec<u64>>,
    errors: BTreeMap<String, u64>,
}

impl Recorder {
    fn record(&mut self, operation: &'static str, started: Instant) {
        self.latencies_us
            .entry(operation)
            .or_default()
            .push(started.elapsed().as_micros() as u64);
    }

    fn error(&mut self, operation: &'static str, code: &str) {
        *self
            .errors
            .entry(format!("{operation}:{code}"))
            .or_default() += 1;
    }

    fn merge(&mut self, other: Recorder) {
        for (operation, latencies) in other.latencies_us {
            self.latencies_us
                .entry(operation)
                .or_default()
                .extend(latencies);
        }
        for (code, count) in other.errors {
            *self.errors.entry(code).or_default() += count;
        }
    }
}

fn check_loopback(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).context("--url")?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(host)) => host == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if !loopback {
        bail!("loadgen only targets loopback addresses (127.0.0.0/8, localhost, [::1]); got {url}");
    }
    Ok(())
}

async fn call(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: Value,
) -> Result<(u16, Value), String> {
    let response = client
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "timeout".to_owned()
            } else {
                "connection".to_owned()
            }
        })?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

fn code_of(result: &Result<(u16, Value), String>) -> String {
    match result {
        Ok((status, body)) => body["code"]
            .as_str()
            .map_or_else(|| status.to_string(), str::to_owned),
        Err(kind) => kind.clone(),
    }
}

struct Setup {
    token: String,
    keys: Vec<String>,
}

async fn setup(client: &reqwest::Client, args: &Args) -> anyhow::Result<Setup> {
    let token = seatledger_benches::register_org(client, &args.url, "loadgen").await?;
    let mut keys = Vec::new();
    for index in 0..args.licenses {
        let issued: Value = client
            .post(format!("{}/api/v1/licenses", args.url))
            .bearer_auth(&token)
            .json(&json!({"name": format!("loadgen-{index}"), "seats": args.seats_per_license}))
            .send()
            .await?
            .json()
            .await?;
        keys.push(
            issued["key"]
                .as_str()
                .with_context(|| format!("issue failed: {issued}"))?
                .to_owned(),
        );
    }
    Ok(Setup { token, keys })
}

async fn cycle_client(
    client: reqwest::Client,
    args: Arc<Args>,
    setup: Arc<Setup>,
    index: usize,
    deadline: Instant,
) -> Recorder {
    let mut recorder = Recorder::default();
    let key = &setup.keys[index % setup.keys.len()];
    let acquire_url = format!("{}/api/v1/licenses/acquire", args.url);
    let heartbeat_url = format!("{}/api/v1/licenses/heartbeat", args.url);
    let release_url = format!("{}/api/v1/licenses/release", args.url);
    let hardware_id = format!("loadgen-machine-{index}");
    while Instant::now() < deadline {
        let started = Instant::now();
        let acquired = call(
            &client,
            &acquire_url,
            &setup.token,
            json!({"license_key": key, "hardware_id": hardware_id}),
        )
        .await;
        let session = match &acquired {
            Ok((200 | 201, body)) => {
                recorder.record("acquire", started);
                body["session_id"].as_str().map(str::to_owned)
            }
            _ => {
                recorder.error("acquire", &code_of(&acquired));
                None
            }
        };
        let Some(session) = session else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        for _ in 0..args.heartbeats {
            let started = Instant::now();
            let beat = call(
                &client,
                &heartbeat_url,
                &setup.token,
                json!({"session_id": session}),
            )
            .await;
            match &beat {
                Ok((200, _)) => recorder.record("heartbeat", started),
                _ => recorder.error("heartbeat", &code_of(&beat)),
            }
        }
        let started = Instant::now();
        let released = call(
            &client,
            &release_url,
            &setup.token,
            json!({"session_id": session}),
        )
        .await;
        match &released {
            Ok((200, _)) => recorder.record("release", started),
            _ => recorder.error("release", &code_of(&released)),
        }
    }
    recorder
}

async fn hold_client(
    client: reqwest::Client,
    args: Arc<Args>,
    setup: Arc<Setup>,
    index: usize,
    remaining: Arc<AtomicU64>,
    deadline: Instant,
) -> Recorder {
    let mut recorder = Recorder::default();
    let acquire_url = format!("{}/api/v1/licenses/acquire", args.url);
    let mut n = 0u64;
    while Instant::now() < deadline {
        if remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_err()
        {
            break;
        }
        let key = &setup.keys[(index + n as usize) % setup.keys.len()];
        let started = Instant::now();
        let acquired = call(
            &client,
            &acquire_url,
            &setup.token,
            json!({"license_key": key, "hardware_id": format!("hold-{index}-{n}")}),
        )
        .await;
        match &acquired {
            Ok((201, _)) => recorder.record("acquire", started),
            _ => recorder.error("acquire", &code_of(&acquired)),
        }
        n += 1;
    }
    recorder
}

fn percentile(sorted: &[u64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    check_loopback(&args.url)?;
    if args.duration_s == 0 || args.duration_s > 600 {
        bail!("--duration-s must be 1 to 600");
    }
    if args.clients == 0 || args.licenses == 0 {
        bail!("--clients and --licenses must be at least 1");
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let setup = Arc::new(setup(&client, &args).await?);
    let args = Arc::new(args);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_s);
    let remaining = Arc::new(AtomicU64::new(args.hold.unwrap_or(0)));
    let tasks: Vec<_> = (0..args.clients)
        .map(|index| {
            let (client, args, setup, remaining) = (
                client.clone(),
                args.clone(),
                setup.clone(),
                remaining.clone(),
            );
            tokio::spawn(async move {
                match args.hold {
                    Some(_) => hold_client(client, args, setup, index, remaining, deadline).await,
                    None => cycle_client(client, args, setup, index, deadline).await,
                }
            })
        })
        .collect();
    let mut total = Recorder::default();
    for task in tasks {
        total.merge(task.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();

    println!(
        "loadgen: {} clients, {:.1} s, {}",
        args.clients, elapsed, args.url
    );
    println!("| operation | ops | ops/s | p50 ms | p99 ms | p99.9 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut all: Vec<u64> = Vec::new();
    for (operation, latencies) in &mut total.latencies_us {
        latencies.sort_unstable();
        all.extend_from_slice(latencies);
        println!(
            "| {operation} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
            latencies.len(),
            latencies.len() as f64 / elapsed,
            percentile(latencies, 0.50),
            percentile(latencies, 0.99),
            percentile(latencies, 0.999),
            percentile(latencies, 1.0)
        );
    }
    all.sort_unstable();
    println!(
        "| all seat operations | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
        all.len(),
        all.len() as f64 / elapsed,
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        percentile(&all, 0.999),
        percentile(&all, 1.0)
    );
    let errors: u64 = total.errors.values().sum();
    if total.errors.is_empty() {
        println!("errors: none");
    } else {
        println!("errors by code: {:?}", total.errors);
    }
    // One machine-readable line for scripts.
    println!(
        "RESULT ops={} ops_per_s={:.0} p50_ms={:.2} p99_ms={:.2} p999_ms={:.2} max_ms={:.2} errors={errors} seconds={elapsed:.2}",
        all.len(),
        all.len() as f64 / elapsed,
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        percentile(&all, 0.999),
        percentile(&all, 1.0)
    );
    Ok(())
}
