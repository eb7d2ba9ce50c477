//! `audit`: the auditor tools on a large log. For each size, fills a fresh
//! PostgreSQL database with that many events through the appender, then
//! measures, in the same run:
//! - a `COPY (SELECT * FROM events ORDER BY …) TO STDOUT` read to this
//!   process (the baseline: the cheapest way to get every row out);
//! - `seatledger-replay verify`, `export` and `verify --from-file` on it
//!   (events/s, and each process's peak RSS from `/usr/bin/time`);
//! - `at --time` (one license, the end of the log) and `simulate` latency.
//!
//! Loopback only; bounded by the sizes asked for (at most 5,000,000).
//!
//! ```text
//! cargo build --release -p seatledger-replay -p seatledger-benches
//! target/release/audit --database-url postgres://postgres:postgres@127.0.0.1:5432/postgres \
//!     --events 100000,1000000
//! ```

use anyhow::Context;
use base64::Engine;
use clap::Parser;
use futures::StreamExt;
use seatledger_benches::{fill_cycling_leases_signed, fill_live_leases_signed, fresh_store};
use seatledger_ledger::{SigningKey, Store};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// PostgreSQL server URL (a fresh database is created per size).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    events: Vec<u64>,
    /// `cycling`: clients acquire, heartbeat and release (at most 256
    /// leases live, whatever the log's length); `held`: every lease stays
    /// (the live leases grow with the log: the worst shape for a replay
    /// that checks snapshots, which must hold each license's state).
    #[arg(long, value_delimiter = ',', default_value = "cycling,held", value_parser = ["cycling", "held"])]
    shapes: Vec<String>,
    /// The seatledger-replay binary.
    #[arg(long, default_value = "target/release/seatledger-replay")]
    replay: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.database_url.contains("127.0.0.1") || args.database_url.contains("localhost"),
        "loopback only"
    );
    anyhow::ensure!(
        args.events.iter().all(|n| *n <= 5_000_000),
        "--events at most 5,000,000"
    );
    println!("| shape | events | COPY rows/s | verify events/s | verify ÷ COPY | verify peak RSS MiB | export events/s | export ÷ COPY | export peak RSS MiB | verify file events/s | verify file peak RSS MiB | at ms | simulate ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for shape in &args.shapes {
        for &events in &args.events {
            let (store, cleanup) = fresh_store(&args.database_url).await?;
            let result = measure(&store, &args, shape, events).await;
            drop(store);
            cleanup.await?;
            result?;
        }
    }
    Ok(())
}

/// Runs the replay tool under `/usr/bin/time`: (seconds, peak RSS MiB, stdout).
fn timed(replay: &str, arguments: &[&str]) -> anyhow::Result<(f64, f64, String)> {
    let started = Instant::now();
    let output = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("maxrss_kib=%M")
        .arg(replay)
        .args(arguments)
        .output()
        .context("run /usr/bin/time seatledger-replay")?;
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(
        output.status.success(),
        "seatledger-replay {arguments:?}: {stderr}"
    );
    let kib: f64 = stderr
        .lines()
        .filter_map(|line| line.strip_prefix("maxrss_kib="))
        .next_back()
        .context("no maxrss from /usr/bin/time")?
        .trim()
        .parse()?;
    Ok((
        seconds,
        kib / 1024.0,
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

async fn measure(store: &Store, args: &Args, shape: &str, events: u64) -> anyhow::Result<()> {
    let key = Arc::new(SigningKey::generate()?);
    if shape == "held" {
        fill_live_leases_signed(store, events, key.clone()).await?;
    } else {
        fill_cycling_leases_signed(store, events, key.clone()).await?;
    }
    let pool = store.pg_pool().context("PostgreSQL only")?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    let license: String = sqlx::query_scalar(
        "SELECT stream_id FROM streams WHERE stream_id LIKE 'license-%' ORDER BY version DESC LIMIT 1",
    )
    .fetch_one(pool)
    .await?;
    let license = license.trim_start_matches("license-").to_owned();
    let last: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT max(occurred_at) FROM events")
            .fetch_one(pool)
            .await?;
    let options = pool.connect_options();
    let url = format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    );

    // Baseline: every row out of PostgreSQL into this process.
    let started = Instant::now();
    let mut connection = pool.acquire().await?;
    let mut copy = connection
        .copy_out_raw("COPY (SELECT * FROM events ORDER BY partition, position) TO STDOUT")
        .await?;
    let mut bytes = 0usize;
    while let Some(chunk) = copy.next().await {
        bytes += chunk?.len();
    }
    drop(copy);
    drop(connection);
    let copy_per_s = rows as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(bytes > 0, "COPY read nothing");

    let public_key = format!(
        "{}:{}",
        key.key_id(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.public_key())
    );
    let (verify_s, verify_rss, _) = timed(
        &args.replay,
        &[
            "verify",
            "--database-url",
            &url,
            "--public-key",
            &public_key,
        ],
    )?;
    let file =
        std::env::temp_dir().join(format!("seatledger-audit-{}.jsonl", uuid::Uuid::now_v7()));
    let file_arg = file.display().to_string();
    let exported = timed(
        &args.replay,
        &["export", "--database-url", &url, "--output", &file_arg],
    );
    let verified_file = exported.as_ref().ok().map(|_| {
        timed(
            &args.replay,
            &[
                "verify",
                "--from-file",
                &file_arg,
                "--public-key",
                &public_key,
            ],
        )
    });
    let _ = std::fs::remove_file(&file);
    let (export_s, export_rss, _) = exported?;
    let (file_s, file_rss, _) = verified_file.context("export failed")??;
    let time = last.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (at_s, _, _) = timed(
        &args.replay,
        &[
            "at",
            "--database-url",
            &url,
            "--time",
            &time,
            "--license",
            &license,
            "--json",
        ],
    )?;
    let (simulate_s, _, _) = timed(
        &args.replay,
        &[
            "simulate",
            "--database-url",
            &url,
            "--license",
            &license,
            "--seats",
            "100",
            "--json",
        ],
    )?;
    let per_s = |seconds: f64| rows as f64 / seconds;
    println!(
        "| {shape} | {rows} | {copy_per_s:.0} | {:.0} | {:.2} | {verify_rss:.0} | {:.0} | {:.2} | {export_rss:.0} | {:.0} | {file_rss:.0} | {:.0} | {:.0} |",
        per_s(verify_s),
        per_s(verify_s) / copy_per_s,
        per_s(export_s),
        per_s(export_s) / copy_per_s,
        per_s(file_s),
        at_s * 1e3,
        simulate_s * 1e3,
    );
    Ok(())
}
