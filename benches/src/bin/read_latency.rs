//! `read_latency`: how long license reads take on a license holding many
//! live leases, against the same reads on a license holding a handful, in
//! the same run (these machines are noisy: the ratio is the figure).
//!
//! Registers an organization on a running server, issues a small license
//! (10 leases) and a large one (`--leases`, default 100,000), fills both
//! with live leases (64 concurrent acquires), then times `--reads`
//! sequential `GET /api/v1/licenses/{id}` and `GET …/sessions?limit=1000`
//! on each. Loopback only; bounded by `--timeout-s`.
//!
//! ```text
//! cargo run --release -p seatledger-benches --bin read_latency -- \
//!     --url http://127.0.0.1:8080 --leases 100000 --reads 2000
//! ```

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// The server (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Live leases on the large license (1 to 100000).
    #[arg(long, default_value_t = 100_000)]
    leases: u64,
    /// Timed reads per measurement.
    #[arg(long, default_value_t = 2_000)]
    reads: usize,
    /// Give up after this many seconds (at most 900).
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let parsed = reqwest::Url::parse(&args.url).context("--url")?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(host)) => host == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if !loopback || !(1..=100_000).contains(&args.leases) || args.timeout_s > 900 {
        bail!("loopback only; --leases 1 to 100000; --timeout-s at most 900");
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let api = format!("{}/api/v1", args.url);
    let token = seatledger_benches::register_org(&client, &args.url, "read-latency").await?;
    println!("| license | live leases | GET license p50 ms | p99 ms | GET sessions (1000) p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, leases) in [("small", 10), ("large", args.leases), ("small again", 10)] {
        let issued: Value = client
            .post(format!("{api}/licenses"))
            .bearer_auth(&token)
            .json(&json!({"name": label, "seats": leases, "heartbeat_ttl_s": 86_400}))
            .send()
            .await?
            .json()
            .await?;
        let key = issued["key"].as_str().context("issue")?.to_owned();
        let id = issued["id"].as_str().context("issue")?.to_owned();
        fill(&client, &api, &token, &key, leases, deadline).await?;
        let license =
            time_reads(&client, &format!("{api}/licenses/{id}"), &token, args.reads).await?;
        let sessions = time_reads(
            &client,
            &format!("{api}/licenses/{id}/sessions?limit=1000"),
            &token,
            args.reads,
        )
        .await?;
        println!(
            "| {label} | {leases} | {:.2} | {:.2} | {:.2} | {:.2} |",
            license.0, license.1, sessions.0, sessions.1
        );
    }
    Ok(())
}

/// `leases` live leases on distinct machines, 64 acquires at a time.
async fn fill(
    client: &reqwest::Client,
    api: &str,
    token: &str,
    key: &str,
    leases: u64,
    deadline: Instant,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..64)
        .map(|_| {
            let (client, api, token, key, next) = (
                client.clone(),
                api.to_owned(),
                token.to_owned(),
                key.to_owned(),
                next.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let machine = next.fetch_add(1, Ordering::Relaxed);
                    if machine >= leases || Instant::now() > deadline {
                        return anyhow::Ok(());
                    }
                    let status = client
                        .post(format!("{api}/licenses/acquire"))
                        .bearer_auth(&token)
                        .json(&json!({"license_key": key, "hardware_id": format!("machine-{machine}")}))
                        .send()
                        .await?
                        .status();
                    anyhow::ensure!(status.as_u16() == 201, "acquire answered {status}");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    anyhow::ensure!(Instant::now() <= deadline, "timed out filling the license");
    Ok(())
}

/// p50 and p99 in milliseconds of `reads` sequential GETs of `url`.
async fn time_reads(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    reads: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut micros = Vec::with_capacity(reads);
    for _ in 0..reads {
        let started = Instant::now();
        let response = client.get(url).bearer_auth(token).send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "GET {url}: {}",
            response.status()
        );
        response.bytes().await?;
        micros.push(started.elapsed().as_micros() as f64);
    }
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() as f64 - 1.0) * q) as usize] / 1000.0;
    Ok((at(0.5), at(0.99)))
}
