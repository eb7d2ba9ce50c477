//! `loadgen`: simulated client apps against a seatledger server over HTTP
//! keep-alive. Each client acquires a seat, heartbeats `--heartbeats` times
//! and releases it, again and again until `--duration-s` is up. Reports per
//! operation ops/s and latency p50/p99/p99.9/max, and errors by `code`.
//!
//! `--rate N` runs an open loop instead: N seat operations a second in
//! all, at constant arrival (wrk2's model). Client i of C sends its k-th
//! operation at `(i + k·C) / N` seconds after the start, whether or not its
//! previous one was slow, and each latency is measured from that intended
//! time, so a stalled server counts every request it delayed (coordinated
//! omission corrected). `--clients` is then the most requests in flight:
//! raise it if the report says the clients fell behind.
//!
//! `--hold N` instead acquires N leases on distinct machines and keeps them
//! (for measuring the server's memory with many active leases).
//!
//! Percentiles come from HdrHistogram (3 significant digits).
//!
//! Loopback only; bounded in time (at most 600 s) and stops by itself.
//!
//! ```text
//! cargo run --release -p seatledger-benches --bin loadgen -- \
//!     --url http://127.0.0.1:8080 --clients 256 --heartbeats 2 --duration-s 20
//! cargo run --release -p seatledger-benches --bin loadgen -- \
//!     --url http://127.0.0.1:8080 --rate 5000 --duration-s 20
//! ```

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use seatledger_benches::OpenLoop;
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
    #[arg(long, conflicts_with = "rate")]
    hold: Option<u64>,
    /// Open loop: seat operations per second in all, at constant arrival,
    /// latency measured from each one's intended send time.
    #[arg(long)]
    rate: Option<f64>,
}

/// Latencies in µs by operation, and errors by `operation:code`.
#[derive(Default)]
struct Recorder {
    latencies_us: BTreeMap<&'static str, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    /// Open loop: operations sent more than a millisecond after their
    /// intended time because the client was still waiting for an answer.
    late: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits is a valid precision")
}

impl Recorder {
    /// Records an operation that was due at `due` (its intended send time
    /// in an open loop, else when it was sent).
    fn record(&mut self, operation: &'static str, due: Instant) {
        let micros = due.elapsed().as_micros().try_into().unwrap_or(u64::MAX);
        self.latencies_us
            .entry(operation)
            .or_insert_with(histogram)
            .record(micros.max(1))
            // An auto-resizing histogram grows to any value it is given.
            .expect("an auto-resizing histogram records any value");
    }

    fn error(&mut self, operation: &'static str, code: &str) {
        *self
            .errors
            .entry(format!("{operation}:{code}"))
            .or_default() += 1;
    }

    fn merge(&mut self, other: Recorder) {
        for (operation, latencies) in other.latencies_us {
            let into = self.latencies_us.entry(operation).or_insert_with(histogram);
            // Auto-resizing histograms of the same precision always add.
            let _ = into.add(&latencies);
        }
        for (code, count) in other.errors {
            *self.errors.entry(code).or_default() += count;
        }
        self.late += other.late;
    }
}

/// When a client sends its operations: at once (closed loop), or on its
/// open-loop schedule.
struct Pace {
    schedule: Option<(OpenLoop, Instant)>,
    sent: u64,
    deadline: Instant,
}

impl Pace {
    /// Waits for the next operation's turn and returns when it is due, or
    /// `None` once the run is over.
    async fn next(&mut self, recorder: &mut Recorder) -> Option<Instant> {
        let due = match &self.schedule {
            None => Instant::now(),
            Some((schedule, start)) => {
                let due = *start + schedule.offset(self.sent);
                self.sent += 1;
                let now = Instant::now();
                if due > now {
                    tokio::time::sleep_until(due.into()).await;
                } else if now.duration_since(due) > Duration::from_millis(1) {
                    recorder.late += 1;
                }
                due
            }
        };
        (due < self.deadline).then_some(due)
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
    mut pace: Pace,
) -> Recorder {
    let mut recorder = Recorder::default();
    let key = &setup.keys[index % setup.keys.len()];
    let acquire_url = format!("{}/api/v1/licenses/acquire", args.url);
    let heartbeat_url = format!("{}/api/v1/licenses/heartbeat", args.url);
    let release_url = format!("{}/api/v1/licenses/release", args.url);
    let hardware_id = format!("loadgen-machine-{index}");
    while let Some(due) = pace.next(&mut recorder).await {
        let acquired = call(
            &client,
            &acquire_url,
            &setup.token,
            json!({"license_key": key, "hardware_id": hardware_id}),
        )
        .await;
        let session = match &acquired {
            Ok((200 | 201, body)) => {
                recorder.record("acquire", due);
                body["session_id"].as_str().map(str::to_owned)
            }
            _ => {
                recorder.error("acquire", &code_of(&acquired));
                None
            }
        };
        let Some(session) = session else {
            if pace.schedule.is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            continue;
        };
        let mut session_ops = (0..args.heartbeats)
            .map(|_| ("heartbeat", &heartbeat_url))
            .chain(std::iter::once(("release", &release_url)));
        for (operation, url) in &mut session_ops {
            // A closed loop finishes its session; in an open loop the run
            // may end mid-session, and the lease is left to expire, as a
            // client that vanished would.
            let due = match pace.next(&mut recorder).await {
                Some(due) => due,
                None if pace.schedule.is_none() => Instant::now(),
                None => break,
            };
            let answer = call(&client, url, &setup.token, json!({"session_id": session})).await;
            match &answer {
                Ok((200, _)) => recorder.record(operation, due),
                _ => recorder.error(operation, &code_of(&answer)),
            }
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

fn percentile_ms(latencies: &Histogram<u64>, quantile: f64) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    latencies.value_at_quantile(quantile) as f64 / 1000.0
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
    if args
        .rate
        .is_some_and(|rate| !(rate.is_finite() && rate > 0.0))
    {
        bail!("--rate must be a number of operations per second above 0");
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
            let pace = Pace {
                schedule: args
                    .rate
                    .map(|rate| (OpenLoop::new(rate, index, args.clients), started)),
                sent: 0,
                deadline,
            };
            tokio::spawn(async move {
                match args.hold {
                    Some(_) => hold_client(client, args, setup, index, remaining, deadline).await,
                    None => cycle_client(client, args, setup, index, pace).await,
                }
            })
        })
        .collect();
    let mut total = Recorder::default();
    for task in tasks {
        total.merge(task.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    report(&args, &total, elapsed);
    Ok(())
}

fn report(args: &Args, total: &Recorder, elapsed: f64) {
    match args.rate {
        Some(rate) => println!(
            "loadgen: open loop at {rate} operations/s over {} clients, {elapsed:.1} s, {} (latency from each intended send time)",
            args.clients, args.url
        ),
        None => println!(
            "loadgen: {} clients, {elapsed:.1} s, {}",
            args.clients, args.url
        ),
    }
    println!("| operation | ops | ops/s | p50 ms | p99 ms | p99.9 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut all = histogram();
    let row = |label: &str, latencies: &Histogram<u64>| {
        format!(
            "| {label} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
            latencies.len(),
            latencies.len() as f64 / elapsed,
            percentile_ms(latencies, 0.50),
            percentile_ms(latencies, 0.99),
            percentile_ms(latencies, 0.999),
            percentile_ms(latencies, 1.0)
        )
    };
    for (operation, latencies) in &total.latencies_us {
        let _ = all.add(latencies);
        println!("{}", row(operation, latencies));
    }
    println!("{}", row("all seat operations", &all));
    let errors: u64 = total.errors.values().sum();
    if total.errors.is_empty() {
        println!("errors: none");
    } else {
        println!("errors by code: {:?}", total.errors);
    }
    if total.late > 0 {
        println!(
            "{} operations were sent late because every client was waiting for an answer: the latencies count that wait; raise --clients if the server was not the cause",
            total.late
        );
    }
    // One machine-readable line for scripts.
    println!(
        "RESULT ops={} ops_per_s={:.0} p50_ms={:.2} p99_ms={:.2} p999_ms={:.2} max_ms={:.2} errors={errors} seconds={elapsed:.2} rate={} late={}",
        all.len(),
        all.len() as f64 / elapsed,
        percentile_ms(&all, 0.50),
        percentile_ms(&all, 0.99),
        percentile_ms(&all, 0.999),
        percentile_ms(&all, 1.0),
        args.rate.map_or_else(|| "closed".to_owned(), |rate| rate.to_string()),
        total.late
    );
}
