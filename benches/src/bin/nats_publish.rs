//! `nats_publish`: the NATS publisher's throughput from a backlog, next to
//! raw JetStream publish-with-ack throughput from the same client library
//! in the same run.
//!
//! Fills a fresh database with `--events` events, then for each window
//! (acks in flight): publishes the same messages (subjects, headers and
//! bodies of the log) straight to a JetStream stream (the baseline), and
//! runs the real publisher follower from position 0 to the head (reading
//! the log in ranges, publishing, storing its checkpoint) into another
//! stream, until JetStream acknowledged every event. Streams are of the
//! run's own and deleted afterwards. Loopback only; bounded by the fill
//! size.
//!
//! ```text
//! cargo run --release -p seatledger-benches --bin nats_publish -- \
//!     --database-url postgres://postgres:postgres@127.0.0.1:5432/postgres \
//!     --events 100000 --windows 1,64,256,1024
//! ```

use clap::Parser;
use seatledger_benches::{fill_live_leases, fresh_store};
use seatledger_ledger::{CommitNotifier, Store};
use seatledger_projections::nats::{self, NATS_FOLLOWER};
use seatledger_projections::{runner, FollowerStatus, NatsConfig, NatsPublisher, PublisherStats};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Parser)]
struct Args {
    /// PostgreSQL server URL (a fresh database is created), or `sqlite:PATH`.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Events in the backlog (at most 2,000,000).
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Acks in flight, one run of each kind per value.
    #[arg(long, value_delimiter = ',', default_value = "1,64,256,1024")]
    windows: Vec<usize>,
    /// Instead of measuring: delete every stream whose name starts with
    /// this (what `scripts/bench-report`'s servers created), then exit.
    #[arg(long)]
    delete_streams: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let loopback = |url: &str| {
        url.contains("127.0.0.1") || url.contains("localhost") || url.starts_with("sqlite:")
    };
    anyhow::ensure!(loopback(&args.nats_url), "loopback only");
    // Deleting streams needs no database (callers pass `unused`).
    if let Some(prefix) = &args.delete_streams {
        return delete_streams(&args.nats_url, prefix).await;
    }
    anyhow::ensure!(loopback(&args.database_url), "loopback only");
    anyhow::ensure!(args.events <= 2_000_000, "--events at most 2,000,000");
    let (store, cleanup) = fresh_store(&args.database_url).await?;
    let result = run(&store, &args).await;
    drop(store);
    cleanup.await?;
    result
}

async fn run(store: &Store, args: &Args) -> anyhow::Result<()> {
    fill_live_leases(store, args.events).await?;
    let (head, _) = store.head(0).await?;
    let mut log = Vec::new();
    let reading = Instant::now();
    while (log.len() as i64) < head {
        let after = log.len() as i64;
        log.extend(store.read_range(0, after, head.min(after + 10_000)).await?);
    }
    anyhow::ensure!(log.len() as i64 == head, "read the whole log");
    eprintln!("reading and decoding the log: {:?}", reading.elapsed());
    // What the publisher reads instead: payload and metadata as stored text.
    let reading = Instant::now();
    let mut raw_log = Vec::new();
    while (raw_log.len() as i64) < head {
        let after = raw_log.len() as i64;
        raw_log.extend(
            store
                .read_range_raw(0, after, head.min(after + 10_000))
                .await?,
        );
    }
    eprintln!(
        "reading the log with payloads as text: {:?}",
        reading.elapsed()
    );
    let encoding = Instant::now();
    let config = NatsConfig::new(&args.nats_url);
    for (parsed, raw) in log.iter().zip(&raw_log) {
        std::hint::black_box(nats::message(&config, parsed).map_err(anyhow::Error::msg)?);
        std::hint::black_box(raw);
    }
    let parsed_encoding = encoding.elapsed();
    let encoding = Instant::now();
    for raw in &raw_log {
        std::hint::black_box(nats::message(&config, raw).map_err(anyhow::Error::msg)?);
    }
    eprintln!(
        "building messages: {parsed_encoding:?} from parsed events, {:?} from text",
        encoding.elapsed()
    );
    drop(raw_log);
    let client = async_nats::connect(&args.nats_url).await?;
    let jetstream = async_nats::jetstream::new(client.clone());
    println!("| window | events | raw JetStream events/s | publisher events/s | publisher / raw |");
    println!("|---:|---:|---:|---:|---:|");
    for &window in &args.windows {
        let id = Uuid::now_v7().simple().to_string();
        let config = NatsConfig {
            stream: format!("BENCH_{id}"),
            subject_prefix: format!("bench_{id}"),
            window,
            ..NatsConfig::new(&args.nats_url)
        };

        // Baseline: the same messages, pre-serialized, straight to JetStream.
        let raw = NatsConfig {
            stream: format!("BENCHRAW_{id}"),
            subject_prefix: format!("benchraw_{id}"),
            ..config.clone()
        };
        jetstream.get_or_create_stream(raw.stream_config()).await?;
        let encoding = Instant::now();
        let messages: Vec<_> = log
            .iter()
            .map(|event| {
                Ok((
                    raw.subject(event),
                    nats::headers(event),
                    serde_json::to_vec(event)?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        eprintln!(
            "window {window}: encoding its messages: {:?}",
            encoding.elapsed()
        );
        let started = Instant::now();
        let mut in_flight = VecDeque::with_capacity(window);
        for (subject, headers, body) in messages {
            if in_flight.len() >= window {
                let ack: async_nats::jetstream::context::PublishAckFuture =
                    in_flight.pop_front().expect("non-empty");
                ack.await?;
            }
            in_flight.push_back(
                jetstream
                    .publish_with_headers(subject, headers, body.into())
                    .await?,
            );
        }
        for ack in in_flight {
            ack.await?;
        }
        let raw_per_s = head as f64 / started.elapsed().as_secs_f64();

        // The publisher follower, from 0.
        Store::save_follower_position(store, NATS_FOLLOWER, 0, 0).await?;
        let stats = Arc::new(PublisherStats::default());
        let publisher_client = nats::connect(&args.nats_url, stats.clone())
            .await
            .map_err(|error| anyhow::anyhow!(error))?;
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let started = Instant::now();
        let task = tokio::spawn(runner::run(
            store.clone(),
            NatsPublisher::new(
                store.clone(),
                0,
                config.clone(),
                publisher_client,
                stats.clone(),
            ),
            CommitNotifier::default(),
            nats::runner_config(),
            FollowerStatus::default(),
            shutdown,
        ));
        let deadline = Instant::now() + Duration::from_secs(3_600);
        // Done once JetStream acknowledged every event (the stored
        // checkpoint follows at most `CHECKPOINT_SAVE_INTERVAL` later).
        while stats.published.load(std::sync::atomic::Ordering::Relaxed) < head as u64 {
            anyhow::ensure!(Instant::now() < deadline, "the publisher did not catch up");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let publisher_per_s = head as f64 / started.elapsed().as_secs_f64();
        let _ = stop.send(true);
        task.await?;
        println!(
            "| {window} | {head} | {raw_per_s:.0} | {publisher_per_s:.0} | {:.2} |",
            publisher_per_s / raw_per_s
        );
        for stream in [&config.stream, &raw.stream] {
            jetstream.delete_stream(stream).await?;
        }
    }
    Ok(())
}

async fn delete_streams(url: &str, prefix: &str) -> anyhow::Result<()> {
    use futures::TryStreamExt;
    anyhow::ensure!(prefix.len() >= 4, "a prefix of at least 4 characters");
    let jetstream = async_nats::jetstream::new(async_nats::connect(url).await?);
    let names: Vec<String> = jetstream.stream_names().try_collect().await?;
    for name in names.into_iter().filter(|name| name.starts_with(prefix)) {
        jetstream.delete_stream(&name).await?;
    }
    Ok(())
}
