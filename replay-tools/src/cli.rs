//! `seatledger-replay verify`: prove the log (or an export file) was not
//! altered. `export` / `import`: the log as JSON Lines, and into an empty
//! store.
//! `seatledger-replay usage`: recompute billing usage from the log (or from
//! NATS JetStream). `seatledger-replay republish`: resend a range of the log
//! to JetStream.

use crate::events::EventStream;
use anyhow::Context;
use clap::{Parser, Subcommand};
use seatledger_ledger::domain::{HeartbeatTtl, SeatCount};
use seatledger_ledger::{SigningKey, Store, StoreError};
use seatledger_projections::{nats, Granularity, NatsConfig};
use seatledger_schema::Timestamp;
use seatledger_schema::{LicenseId, OrgId};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Parser)]
#[command(
    name = "seatledger-replay",
    version,
    about = "seatledger auditor tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Verify positions, hash links, hashes and signed checkpoints.
    Verify(VerifyArgs),
    /// Keep the ledger's signed heads in an append-only file outside its
    /// database, polling `GET /api/v1/checkpoints`; fail loudly (exit 1,
    /// nothing kept) when the ledger contradicts a head kept before (the
    /// log got shorter, a kept head changed or vanished, its event's hash
    /// changed). Check a log against the file with `verify
    /// --trusted-checkpoints`.
    Witness(WitnessArgs),
    /// Write the log (or a range, or one organization's events) as JSON
    /// Lines: a header, the streams, every event with its hashes, the
    /// snapshots and the signed checkpoints. Verify it with
    /// `verify --from-file`; load it into an empty store with `import`.
    Export(ExportArgs),
    /// Load an export of a whole log into an empty store (PostgreSQL or a
    /// new SQLite file), verifying it as it goes: nothing that does not
    /// verify is written.
    Import(ImportArgs),
    /// Recompute usage (seat-seconds, overage, peak seats, distinct users and
    /// machines, denials) per organization, license and UTC period from the
    /// whole log, with the billing fold the live projection uses.
    Usage(UsageArgs),
    /// The licenses' state at an instant: status, seats and the leases
    /// active then (who, which machine, since, until). A lease past its
    /// expires_at is not active, recorded as expired or not.
    #[command(group(clap::ArgGroup::new("instant").required(true).args(["time", "position"])))]
    At(AtArgs),
    /// Replay a license's real demand (acquires, heartbeats, releases,
    /// denials) against another seat count or heartbeat TTL through the
    /// real decider: which acquires would have been denied or granted,
    /// peak demand, denied seat-time. Writes nothing.
    Simulate(SimulateArgs),
    /// Compare a live projection with a replay of the log up to the same
    /// position; exit 1 if they differ. `billing`: the server's live
    /// billing tables in the ledger's database.
    Diff(ProjectionArgs),
    /// Rebuild a live projection from position 0 and swap it in for the
    /// stored one in one transaction. `billing`: the live billing tables
    /// (a running server's billing follower goes on from the rebuilt
    /// state). Writes to the database, unlike the other tools.
    Rebuild(ProjectionArgs),
    /// Resend positions FROM..=TO (to the head without --to) of the log to
    /// NATS JetStream with their original Nats-Msg-Ids, creating the stream
    /// if missing: for a JetStream that lost data, or a new one.
    Republish(RepublishArgs),
    /// Write every sealed segment of the log that DIR lacks as one
    /// self-verifying, zstd-compressed archive file: its events, the
    /// checkpoints at its boundaries and within it, and every stream's
    /// state at its start. Each file is written under a temporary name,
    /// synced, read back and checked, then renamed. `seatledger admin
    /// prune` removes archived segments from the database.
    Archive(ArchiveArgs),
}

/// The arguments of `archive`.
#[derive(clap::Args)]
struct ArchiveArgs {
    /// `postgres://…` or `sqlite:PATH` (read only).
    #[arg(
        long,
        env = "SEATLEDGER_DATABASE_URL",
        default_value = "sqlite:seatledger.db"
    )]
    database_url: String,
    /// The directory of archive files (created if missing).
    #[arg(long)]
    to: std::path::PathBuf,
}

/// The arguments of `verify`.
#[derive(clap::Args)]
struct VerifyArgs {
    #[command(flatten)]
    store: StoreArg,
    /// A ledger public key as `KEY_ID:BASE64URL` (the `ledger` keys of
    /// GET /api/v1/keys); repeat it for every key that signed (keys
    /// retired by a rotation too). Without it, a key an older version
    /// kept in the database is used, which proves integrity only
    /// against accidents, not against whoever holds the database.
    /// Required with --from-file.
    #[arg(long)]
    public_key: Vec<String>,
    /// A witness's file of signed heads (`seatledger-replay witness
    /// --store`): the log must still hold every one of them.
    #[arg(long)]
    trusted_checkpoints: Option<std::path::PathBuf>,
    /// Fail when more events than this follow the last signed
    /// checkpoint (the ledger signs every 1,000 events, and within 10 s
    /// of the last event when idle). 0 on a quiet log: every event signed.
    #[arg(long, default_value_t = seatledger_schema::limits::CHECKPOINT_EVERY_EVENTS, value_parser = clap::value_parser!(i64).range(0..))]
    max_unsigned_events: i64,
    /// Verify an export file (`-`: standard input) instead of a database.
    #[arg(long)]
    from_file: Option<String>,
    /// Start after the signed checkpoint at this position (one a witness
    /// holds, or the head of the last audit) instead of at position 1:
    /// the checkpoint's signature and the chain from it to the head are
    /// checked, so the time follows the events since. Stream states at
    /// the checkpoint come from the archive file that starts there, when
    /// --archive has one; otherwise snapshots of streams that began
    /// before it are left unchecked (and counted).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..), conflicts_with = "from_file")]
    since_checkpoint: Option<i64>,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// The arguments of `witness`.
#[derive(clap::Args)]
struct WitnessArgs {
    /// The server's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// The witness's file (JSON Lines; created if missing).
    #[arg(long)]
    store: std::path::PathBuf,
    /// Accept only heads signed by this ledger key (`KEY_ID:BASE64URL`;
    /// repeat for several). Without it any signature is kept as served.
    #[arg(long)]
    public_key: Vec<String>,
    /// Seconds between polls.
    #[arg(long, default_value_t = 10.0)]
    interval_s: f64,
    /// Poll once and exit (for cron, or a test).
    #[arg(long)]
    once: bool,
}

/// The arguments of `export`.
#[derive(clap::Args)]
struct ExportArgs {
    #[command(flatten)]
    store: StoreArg,
    /// Only this organization's events (not a chain: each event's hash
    /// verifies alone).
    #[arg(long)]
    org: Option<OrgId>,
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    from_position: Option<i64>,
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    to_position: Option<i64>,
    /// Write here instead of standard output.
    #[arg(long)]
    output: Option<std::path::PathBuf>,
}

/// The arguments of `import`.
#[derive(clap::Args)]
struct ImportArgs {
    /// The store to fill (created and migrated; it must hold no event).
    #[arg(long, env = "SEATLEDGER_DATABASE_URL")]
    database_url: String,
    /// The export file (`-`: standard input).
    #[arg(long)]
    from_file: String,
    /// A ledger public key as `KEY_ID:BASE64URL`: checkpoints must be
    /// signed with it (repeat for every key that signed).
    #[arg(long, required = true)]
    public_key: Vec<String>,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// The arguments of `usage`.
#[derive(clap::Args)]
struct UsageArgs {
    #[command(flatten)]
    store: StoreArg,
    /// Period length: hour, day or month (UTC).
    #[arg(long, default_value = "day", value_parser = parse_granularity)]
    granularity: Granularity,
    /// Count leases still open up to this instant (RFC 3339). Default:
    /// the last event's time, so the same log gives the same report.
    #[arg(long, value_parser = parse_timestamp)]
    as_of: Option<Timestamp>,
    /// Only this organization's rows.
    #[arg(long)]
    org: Option<OrgId>,
    /// Only periods that end after this instant (RFC 3339).
    #[arg(long, value_parser = parse_timestamp)]
    from: Option<Timestamp>,
    /// Only periods that start before this instant (RFC 3339).
    #[arg(long, value_parser = parse_timestamp)]
    to: Option<Timestamp>,
    /// csv (seat time in seconds) or json (seat time in microseconds).
    #[arg(long, default_value = "csv", value_parser = ["csv", "json"])]
    format: String,
    /// Read the events from this NATS JetStream (the stream
    /// `--nats-stream`) instead of the database: the report billing
    /// jobs consuming the stream would compute.
    #[arg(long)]
    from_nats: Option<String>,
    #[arg(long, default_value = "SEATLEDGER")]
    nats_stream: String,
    /// Read the events from an export file (`-`: standard input).
    #[arg(long, conflicts_with = "from_nats")]
    from_file: Option<String>,
}

/// The arguments of `at`.
#[derive(clap::Args)]
struct AtArgs {
    #[command(flatten)]
    store: StoreArg,
    /// An instant (RFC 3339): everything recorded up to it.
    #[arg(long, value_parser = parse_timestamp)]
    time: Option<Timestamp>,
    /// A log position: everything up to it, as of its event's time.
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    position: Option<i64>,
    /// Only this organization's licenses.
    #[arg(long)]
    org: Option<OrgId>,
    /// Only this license.
    #[arg(long)]
    license: Option<LicenseId>,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Read the events from an export file (`-`: standard input).
    #[arg(long)]
    from_file: Option<String>,
}

/// The arguments of `simulate`.
#[derive(clap::Args)]
struct SimulateArgs {
    #[command(flatten)]
    store: StoreArg,
    #[arg(long)]
    license: LicenseId,
    /// The seat count to try.
    #[arg(long, value_parser = parse_seats)]
    seats: SeatCount,
    /// The heartbeat TTL to try (default: the license's own).
    #[arg(long, value_parser = parse_ttl)]
    ttl_s: Option<HeartbeatTtl>,
    /// Report acquires from this instant (RFC 3339; earlier events
    /// still build the state).
    #[arg(long, value_parser = parse_timestamp)]
    from: Option<Timestamp>,
    /// Replay events before this instant only (RFC 3339).
    #[arg(long, value_parser = parse_timestamp)]
    to: Option<Timestamp>,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Read the events from an export file (`-`: standard input).
    #[arg(long)]
    from_file: Option<String>,
}

/// The arguments of `republish`.
#[derive(clap::Args)]
struct RepublishArgs {
    #[command(flatten)]
    store: StoreArg,
    #[arg(long, env = "SEATLEDGER_NATS_URL")]
    nats_url: String,
    #[arg(long, env = "SEATLEDGER_NATS_STREAM", default_value = "SEATLEDGER")]
    nats_stream: String,
    #[arg(
        long,
        env = "SEATLEDGER_NATS_SUBJECT_PREFIX",
        default_value = "seatledger"
    )]
    nats_subject_prefix: String,
    /// The first position to resend.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..))]
    from: i64,
    /// The last position to resend (default: the head).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    to: Option<i64>,
}

/// The event store a tool reads.
#[derive(clap::Args)]
struct StoreArg {
    /// `postgres://…` or `sqlite:PATH` (read-only unless the tool writes).
    #[arg(
        long,
        env = "SEATLEDGER_DATABASE_URL",
        default_value = "sqlite:seatledger.db"
    )]
    database_url: String,
    /// The directory of archive files (`seatledger-replay archive --to`):
    /// the events of pruned segments are read from there, the rest from
    /// the database. Needed once `seatledger admin prune` removed events
    /// the tool reads.
    #[arg(long, env = "SEATLEDGER_ARCHIVE")]
    archive: Option<std::path::PathBuf>,
}

/// Which live projection `diff` and `rebuild` work on, and where it is.
#[derive(clap::Args)]
struct ProjectionArgs {
    #[arg(value_parser = ["billing", "hot-counts"])]
    follower: String,
    #[command(flatten)]
    store: StoreArg,
    #[command(flatten)]
    redis: RedisArgs,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Where the hot counts are (`diff`/`rebuild hot-counts`).
#[derive(clap::Args)]
struct RedisArgs {
    /// hot-counts: the Redis the server's --redis-url names.
    #[arg(long, env = "SEATLEDGER_REDIS_URL")]
    redis_url: Option<String>,
    #[arg(long, env = "SEATLEDGER_REDIS_PREFIX", default_value = "seatledger:")]
    redis_prefix: String,
    /// hot-counts: the ledger's key id the counts were written for
    /// (default: the key that signed the last checkpoint).
    #[arg(long)]
    ledger: Option<String>,
}

impl RedisArgs {
    /// The hot counts under `prefix` (the configured one without it).
    async fn counts(
        &self,
        store: &Store,
        prefix: Option<&str>,
    ) -> anyhow::Result<seatledger_projections::RedisLicenses> {
        let Some(url) = &self.redis_url else {
            usage_error("hot-counts needs --redis-url");
        };
        let ledger = match &self.ledger {
            Some(ledger) => ledger.clone(),
            // The ledger key's id: the one that signed the last checkpoint
            // (or a key an older version kept in the database).
            None => match store.latest_checkpoint(0).await? {
                Some((checkpoint, _)) => checkpoint.key_id,
                None => {
                    let document = store.stored_signing_key().await?.context(
                        "the log has no signed checkpoint to name its ledger key: pass --ledger KEY_ID",
                    )?;
                    SigningKey::from_pkcs8(&document)?.key_id().to_owned()
                }
            },
        };
        let prefix = prefix.unwrap_or(&self.redis_prefix);
        seatledger_projections::RedisLicenses::new(url, prefix, &ledger, 0)
            .map_err(|error| anyhow::anyhow!("--redis-url: {error}"))
    }
}

/// Rebuilds the Redis hot counts from position 0 under a fresh prefix and
/// swaps them in for the live ones in one MULTI/EXEC.
/// Returns the position rebuilt to and the keys swapped in.
async fn rebuild_hot_counts(
    store: &Store,
    redis: &RedisArgs,
    archive: Option<&std::path::Path>,
) -> anyhow::Result<(i64, usize)> {
    use seatledger_projections::Follower;
    let live = redis.counts(store, None).await?;
    let fresh_prefix = format!(
        "{}-rebuild-{}:",
        redis.redis_prefix.trim_end_matches(':'),
        Uuid::now_v7().simple()
    );
    let fresh = redis.counts(store, Some(&fresh_prefix)).await?;
    let (head, _) = store.head(0).await?;
    let bar = progress_bar(u64::try_from(head).unwrap_or(0));
    let built = async {
        let mut follower = fresh.clone();
        let mut position = Follower::position(&mut follower)
            .await
            .map_err(|error| anyhow::anyhow!("redis: {error}"))?;
        let (mut log, _) = EventStream::from_log(store, 0, archive, position, Some(head)).await?;
        while let Some(events) = log.next().await? {
            let Some(last) = events.last().map(|event| event.position) else {
                continue;
            };
            follower
                .apply(&events)
                .await
                .map_err(|error| anyhow::anyhow!("redis: {error}"))?;
            position = last;
            bar.set_position(u64::try_from(position).unwrap_or(0));
        }
        let moved = fresh
            .swap_into(&live)
            .await
            .map_err(|error| anyhow::anyhow!("redis: {error}"))?;
        anyhow::Ok((position, moved))
    }
    .await;
    bar.finish_and_clear();
    match built {
        Ok(done) => Ok(done),
        Err(error) => {
            let _ = fresh.delete_all().await;
            Err(error)
        }
    }
}

fn parse_granularity(text: &str) -> Result<Granularity, String> {
    match text {
        "hour" => Ok(Granularity::Hour),
        "day" => Ok(Granularity::Day),
        "month" => Ok(Granularity::Month),
        _ => Err("expected hour, day or month".into()),
    }
}

async fn republish(
    database_url: &str,
    archive: Option<&std::path::Path>,
    config: NatsConfig,
    from: i64,
    to: Option<i64>,
) -> anyhow::Result<()> {
    let store = open_read_only(database_url).await?;
    let client = async_nats::connect(&config.url)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", config.url))?;
    let (head, _) = store.head(0).await?;
    let last = to.unwrap_or(head).min(head);
    let bar = progress_bar(u64::try_from(last).unwrap_or(0));
    bar.set_position(u64::try_from(from - 1).unwrap_or(0));
    let context = async_nats::jetstream::new(client);
    let (events, _) = EventStream::from_log(&store, 0, archive, from - 1, Some(last)).await?;
    let done = publish_log(&context, &config, events, |position| {
        bar.set_position(u64::try_from(position).unwrap_or(0));
    })
    .await
    .map_err(|error| anyhow::anyhow!(error))?;
    bar.finish_and_clear();
    println!(
        "republished positions {from}..={last} to stream {}: {} events acknowledged, {} of them already there (dropped as duplicates)",
        config.stream, done.events, done.duplicates
    );
    Ok(())
}

/// Publishes `events` to JetStream with their original `Nats-Msg-Id`s,
/// creating the stream if missing (what `nats::republish` does for the
/// store alone, here for archive files too).
async fn publish_log(
    context: &async_nats::jetstream::Context,
    config: &NatsConfig,
    mut events: EventStream,
    mut progress: impl FnMut(i64),
) -> Result<nats::Republished, String> {
    context
        .get_or_create_stream(config.stream_config())
        .await
        .map_err(|error| format!("cannot create JetStream stream {}: {error}", config.stream))?;
    let mut done = nats::Republished::default();
    while let Some(batch) = events.next().await.map_err(|error| error.to_string())? {
        for range in batch.chunks(1_000) {
            let outcome = nats::publish_range(context, config, range).await;
            done.events += outcome.acked;
            done.duplicates += outcome.duplicates;
            if let Some(error) = outcome.error {
                return Err(error);
            }
            if let Some(last) = range.last() {
                progress(last.position);
            }
        }
    }
    Ok(done)
}

/// Opens the event store read-only. A SQLite file that does not exist is a
/// usage error (exit 2), never a new empty database.
async fn open_read_only(database_url: &str) -> anyhow::Result<Store> {
    match Store::connect_read_only(database_url).await {
        Ok(store) => Ok(store),
        Err(StoreError::Missing(path)) => {
            eprintln!("seatledger-replay: no event store at {path}");
            std::process::exit(2);
        }
        Err(error) => Err(anyhow::Error::new(error).context("cannot open the event store")),
    }
}

/// Exits 2 (a usage error, like clap's) with `message`.
fn usage_error(message: &str) -> ! {
    eprintln!("seatledger-replay: {message}");
    std::process::exit(2);
}

/// `KEY_ID:BASE64URL` as (key id, raw key); a malformed one is a usage error.
fn parse_public_key(text: &str) -> (String, Vec<u8>) {
    seatledger_schema::parse_pinned_key(text)
        .unwrap_or_else(|error| usage_error(&format!("--public-key: {error}")))
}

/// A file, or standard input for `-`; a file that cannot be opened is a
/// usage error.
fn open_input(path: &str) -> Box<dyn std::io::BufRead + Send> {
    if path == "-" {
        return Box::new(std::io::BufReader::new(std::io::stdin()));
    }
    match std::fs::File::open(path) {
        Ok(file) => Box::new(std::io::BufReader::with_capacity(1 << 20, file)),
        Err(error) => usage_error(&format!("cannot open {path}: {error}")),
    }
}

/// `events` moving a progress bar (on a terminal) to `head`.
fn with_bar(events: EventStream, head: i64) -> (EventStream, indicatif::ProgressBar) {
    let bar = progress_bar(u64::try_from(head).unwrap_or(0));
    let moved = bar.clone();
    let events = events
        .with_progress(move |position| moved.set_position(u64::try_from(position).unwrap_or(0)));
    (events, bar)
}

/// A progress bar on standard error when it is a terminal, else hidden.
fn progress_bar(length: u64) -> indicatif::ProgressBar {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new(length)
    } else {
        indicatif::ProgressBar::hidden()
    }
}

fn parse_seats(text: &str) -> Result<SeatCount, String> {
    let value: u32 = text.parse().map_err(|e| format!("{e}"))?;
    SeatCount::new(value).map_err(|e| e.to_string())
}

fn parse_ttl(text: &str) -> Result<HeartbeatTtl, String> {
    let value: u32 = text.parse().map_err(|e| format!("{e}"))?;
    HeartbeatTtl::new(value).map_err(|e| e.to_string())
}

fn parse_timestamp(text: &str) -> Result<Timestamp, String> {
    Timestamp::parse(text).map_err(|e| format!("expected an RFC 3339 instant: {e}"))
}

/// Exit 0 when the command succeeded, 1 when it found something wrong or
/// failed (the message on stderr), 2 on usage errors (clap's, and
/// [`usage_error`]).
#[tokio::main]
pub async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("seatledger-replay: {}", error_chain(&error));
            let pruned = error.chain().any(|cause| {
                matches!(
                    cause.downcast_ref::<StoreError>(),
                    Some(StoreError::Pruned { .. })
                ) || cause.to_string().contains("were pruned from the database")
            });
            if pruned {
                eprintln!(
                    "seatledger-replay: pass --archive DIR, the directory `seatledger-replay archive --to DIR` wrote the pruned segments to"
                );
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// A report as pretty JSON (`--json`) or as its text description.
fn print_report<T: serde::Serialize>(
    json: bool,
    report: &T,
    describe: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", describe(report));
    }
    Ok(())
}

/// The error and its causes on one line, leaving out a cause whose text
/// the message before it already includes.
fn error_chain(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    let mut previous = text.clone();
    for cause in error.chain().skip(1) {
        let message = cause.to_string();
        if !previous.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        previous = message;
    }
    text
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Commands::Verify(args) => verify(args).await,
        Commands::Witness(args) => witness(args).await,
        Commands::Export(args) => export(args).await,
        Commands::Import(args) => import(args).await,
        Commands::Usage(args) => usage(args).await,
        Commands::At(args) => at(args).await,
        Commands::Rebuild(args) => rebuild(args).await,
        Commands::Diff(args) => diff(args).await,
        Commands::Simulate(args) => simulate(args).await,
        Commands::Republish(args) => republish_range(args).await,
        Commands::Archive(args) => archive(args).await,
    }
}

async fn archive(ArchiveArgs { database_url, to }: ArchiveArgs) -> anyhow::Result<()> {
    let store = open_read_only(&database_url).await?;
    let written = seatledger_ledger::archive::archive(&store, 0, &to, |done| {
        let header = &done.archive.header;
        let events = header.last_position - header.first_position + 1;
        println!(
            "archived segment {} (positions {}..={}, {events} events) to {}: {} bytes, {:.1} bytes per event, sha256 {}",
            header.segment,
            header.first_position,
            header.last_position,
            done.path.display(),
            done.archive.bytes,
            done.archive.bytes as f64 / events as f64,
            hex::encode(done.archive.sha256),
        );
    })
    .await?;
    if written.is_empty() {
        println!(
            "every sealed segment is already archived in {}",
            to.display()
        );
    }
    Ok(())
}

async fn verify(
    VerifyArgs {
        store: StoreArg {
            database_url,
            archive,
        },
        public_key,
        trusted_checkpoints,
        max_unsigned_events,
        from_file,
        since_checkpoint,
        json,
    }: VerifyArgs,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut trust = crate::Trust::default().max_unsigned_events(max_unsigned_events);
    for text in &public_key {
        let (key_id, key) = parse_public_key(text);
        trust = trust.and_key((&key_id, &key));
    }
    if let Some(path) = &trusted_checkpoints {
        let kept = crate::witness::read_store(path)
            .with_context(|| format!("--trusted-checkpoints {}", path.display()))?;
        trust = trust.witnessed(kept);
    }
    let verified = match from_file {
        Some(path) => {
            if public_key.is_empty() {
                usage_error("--from-file needs --public-key KEY_ID:BASE64URL (the file's own key proves nothing)");
            }
            let input = open_input(&path);
            let bar = progress_bar(0);
            let verified =
                crate::export::verify_file_with_progress(input, &trust, &mut |at, to| {
                    bar.set_length(u64::try_from(to).unwrap_or(0));
                    bar.set_position(u64::try_from(at).unwrap_or(0));
                })
                .await?
                .verified;
            bar.finish_and_clear();
            verified
        }
        None => {
            let store = open_read_only(&database_url).await?;
            if public_key.is_empty() {
                let document = store.stored_signing_key().await?.context(
                    "pass the ledger's public key: --public-key KEY_ID:BASE64URL (GET /api/v1/keys)",
                )?;
                let stored = SigningKey::from_pkcs8(&document)?;
                eprintln!(
                    "seatledger-replay: warning: checking signatures with the key kept in the database itself ({}), which proves nothing against whoever holds the database; pass --public-key",
                    stored.key_id()
                );
                trust = trust.and_key((stored.key_id(), stored.public_key()));
            }
            let (head, _) = store.head(0).await?;
            let bar = progress_bar(u64::try_from(head).unwrap_or(0));
            let from = crate::VerifyFrom {
                archive: archive.as_deref(),
                since_checkpoint,
                ..Default::default()
            };
            let verified = crate::verify_log(&store, 0, &trust, from, |at| {
                bar.set_position(u64::try_from(at).unwrap_or(0))
            })
            .await?;
            bar.finish_and_clear();
            verified
        }
    };
    let key_id = trust.key_ids().join(",");
    let seconds = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "events": verified.events,
                "checkpoints": verified.checkpoints,
                "key_id": key_id,
                "head_hash": verified.head_hash,
                "witnessed": verified.witnessed,
                "unsigned_tail": verified.unsigned_tail,
                "since_checkpoint": verified.since,
                "archives": verified.archives,
                "snapshots_unchecked": verified.snapshots_unchecked,
            })
        );
    } else {
        let witnessed = if trusted_checkpoints.is_some() {
            format!(", {} witnessed heads", verified.witnessed)
        } else {
            String::new()
        };
        let since = match verified.since {
            0 => String::new(),
            since => format!(" after the signed checkpoint at position {since}"),
        };
        let archives = match verified.archives {
            0 => String::new(),
            1 => " (read from 1 archive file and the database)".to_owned(),
            files => format!(" (read from {files} archive files and the database)"),
        };
        println!(
            "verified {} events{since}{archives} and {} signed checkpoints (key {key_id}{witnessed}); head hash {}; {} events after the last checkpoint; {:.0} events/s",
            verified.events,
            verified.checkpoints,
            verified.head_hash,
            verified.unsigned_tail,
            verified.events as f64 / seconds.max(1e-9)
        );
        if verified.snapshots_unchecked > 0 {
            println!(
                "{} stored snapshots left unchecked: their streams' states at the starting checkpoint are not known (pass --archive with the file that starts there)",
                verified.snapshots_unchecked
            );
        }
    }
    Ok(())
}

async fn witness(
    WitnessArgs {
        url,
        store,
        public_key,
        interval_s,
        once,
    }: WitnessArgs,
) -> anyhow::Result<()> {
    if !(interval_s.is_finite() && (0.1..=86_400.0).contains(&interval_s)) {
        usage_error("--interval-s is from 0.1 to 86400");
    }
    let keys = public_key
        .iter()
        .map(|text| parse_public_key(text))
        .collect();
    let mut witness = crate::witness::Witness::open(&url, &store, keys)?;
    loop {
        match witness.poll().await {
            Ok(polled) => {
                if polled.new > 0 || once {
                    println!(
                        "kept {} new signed heads; {} in all, the last at position {}",
                        polled.new, polled.kept, polled.position
                    );
                }
            }
            Err(error @ crate::witness::WitnessError::Unreachable(_)) if !once => {
                eprintln!("seatledger-replay witness: {error}; trying again");
            }
            Err(error) => return Err(error.into()),
        }
        if once {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs_f64(interval_s)).await;
    }
}

async fn export(
    ExportArgs {
        store: StoreArg {
            database_url,
            archive,
        },
        org,
        from_position,
        to_position,
        output,
    }: ExportArgs,
) -> anyhow::Result<()> {
    let store = open_read_only(&database_url).await?;
    let (head, _) = store.head(0).await?;
    let bar = progress_bar(u64::try_from(head).unwrap_or(0));
    let range = crate::export::ExportRange {
        org,
        from_position,
        to_position,
        archive,
    };
    let mut out: Box<dyn std::io::Write> = match &output {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = std::io::BufWriter::new(&mut out);
    let (header, events) = crate::export::export(&store, 0, range, &mut out, |position| {
        bar.set_position(u64::try_from(position).unwrap_or(0))
    })
    .await?;
    bar.finish_and_clear();
    eprintln!(
        "exported {events} events (positions {}..={}): {}",
        header.from_position, header.to_position, header.description
    );
    Ok(())
}

async fn import(
    ImportArgs {
        database_url,
        from_file,
        public_key,
        json,
    }: ImportArgs,
) -> anyhow::Result<()> {
    let mut trust = crate::Trust::default();
    for text in &public_key {
        let (key_id, key) = parse_public_key(text);
        trust = trust.and_key((&key_id, &key));
    }
    let key_id = trust.key_ids().join(",");
    let input = open_input(&from_file);
    let store = Store::connect(&database_url)
        .await
        .context("cannot open the store to import into")?;
    store.migrate().await?;
    let bar = progress_bar(0);
    let done = crate::export::import(input, &trust, &store, &mut |at, to| {
        bar.set_length(u64::try_from(to).unwrap_or(0));
        bar.set_position(u64::try_from(at).unwrap_or(0));
    })
    .await;
    bar.finish_and_clear();
    match done {
        Ok(done) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "events": done.imported,
                        "checkpoints": done.verified.checkpoints,
                        "key_id": key_id,
                        "head_hash": done.verified.head_hash,
                    })
                );
            } else {
                println!(
                    "imported {} events and {} signed checkpoints (key {key_id}); head hash {}",
                    done.imported, done.verified.checkpoints, done.verified.head_hash
                );
            }
            Ok(())
        }
        Err(error) => {
            let (head, _) = store.head(0).await.unwrap_or_default();
            anyhow::bail!(
                "{error}; nothing after position {head} was imported (the store holds the verified positions 1..={head})"
            )
        }
    }
}

async fn usage(
    UsageArgs {
        store: StoreArg {
            database_url,
            archive,
        },
        granularity,
        as_of,
        org,
        from,
        to,
        format,
        from_nats,
        nats_stream,
        from_file,
    }: UsageArgs,
) -> anyhow::Result<()> {
    let report = match (from_nats, from_file) {
        (None, Some(path)) => {
            let (events, header) = EventStream::from_file(open_input(&path), None)?;
            let (events, bar) = with_bar(events, header.to_position);
            let report = crate::usage_of(events, granularity, as_of).await?;
            bar.finish_and_clear();
            report
        }
        (Some(url), _) => {
            let client = async_nats::connect(&url)
                .await
                .with_context(|| format!("cannot connect to NATS at {url}"))?;
            crate::usage_from_nats(client, &nats_stream, granularity, as_of).await?
        }
        (None, None) => {
            let store = open_read_only(&database_url).await?;
            let (events, head) =
                EventStream::from_log(&store, 0, archive.as_deref(), 0, None).await?;
            let (events, bar) = with_bar(events, head);
            let report = crate::usage_of(events, granularity, as_of).await?;
            bar.finish_and_clear();
            report
        }
    };
    let incomplete = report.incomplete_orgs();
    for bad in &report.undecodable {
        if org.is_none_or(|org| org == bad.org_id) {
            eprintln!(
                "seatledger-replay usage: event at position {} of organization {} cannot be decoded: {}",
                bad.position, bad.org_id, bad.error
            );
        }
    }
    let rows = crate::select_usage(report.rows, org, from, to);
    if format == "json" {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", crate::usage_csv(&rows));
    }
    // Other organizations' undecodable events do not make this
    // organization's usage wrong; its own do.
    let affected: Vec<_> = incomplete
        .into_iter()
        .filter(|affected| org.is_none_or(|org| org == *affected))
        .collect();
    if affected.is_empty() {
        if !report.undecodable.is_empty() {
            eprintln!(
                "seatledger-replay usage: {} undecodable event(s) of other organizations skipped; run verify",
                report.undecodable.len()
            );
        }
        Ok(())
    } else {
        anyhow::bail!(
            "usage of {} organization(s) left out: they have undecodable events (see above); run verify",
            affected.len()
        )
    }
}

async fn at(
    AtArgs {
        store: StoreArg {
            database_url,
            archive,
        },
        time,
        position,
        org,
        license,
        json,
        from_file,
    }: AtArgs,
) -> anyhow::Result<()> {
    let at = match (time, position) {
        (Some(time), _) => crate::at::At::Time(time),
        (None, Some(position)) => crate::at::At::Position(position),
        (None, None) => anyhow::bail!("--time or --position is required"),
    };
    let (events, head) = match from_file {
        Some(path) => {
            let (events, header) = EventStream::from_file(open_input(&path), position)?;
            (events, header.to_position)
        }
        None => {
            let store = open_read_only(&database_url).await?;
            let (head, _) = store.head(0).await?;
            if let Some(position) = position.filter(|position| *position > head) {
                anyhow::bail!(crate::at::AtError::PastHead(position, head));
            }
            EventStream::from_log(&store, 0, archive.as_deref(), 0, position).await?
        }
    };
    let (events, bar) = with_bar(events, head);
    let state = crate::at::state_of(events, at, org, license).await?;
    bar.finish_and_clear();
    print_report(json, &state, crate::at::describe)
}

async fn rebuild(
    ProjectionArgs {
        follower,
        store: StoreArg {
            database_url,
            archive,
        },
        redis,
        json,
    }: ProjectionArgs,
) -> anyhow::Result<()> {
    if follower == "hot-counts" {
        let store = open_read_only(&database_url).await?;
        let (position, keys) = rebuild_hot_counts(&store, &redis, archive.as_deref()).await?;
        if json {
            println!(
                "{}",
                serde_json::json!({"follower": follower, "position": position, "keys": keys})
            );
        } else {
            println!(
                "hot counts rebuilt from the log up to position {position} and swapped in under {} ({keys} keys)",
                redis.redis_prefix
            );
        }
        return Ok(());
    }
    if let Some(path) = database_url.strip_prefix("sqlite:") {
        if !std::path::Path::new(path).exists() {
            usage_error(&format!("no event store at {path}"));
        }
    }
    let store = Store::connect(&database_url)
        .await
        .context("cannot open the event store")?;
    let (events, head) = EventStream::from_log(&store, 0, archive.as_deref(), 0, None).await?;
    let (mut events, bar) = with_bar(events, head);
    let mut rebuild = seatledger_projections::BillingRebuild::new(0);
    while let Some(batch) = events.next().await? {
        rebuild.push(&batch);
    }
    let position = rebuild.replace(&store).await?;
    bar.finish_and_clear();
    if json {
        println!(
            "{}",
            serde_json::json!({"follower": follower, "position": position})
        );
    } else {
        println!("live billing rebuilt from the log up to position {position} and swapped in");
    }
    Ok(())
}

async fn diff(
    ProjectionArgs {
        follower,
        store: StoreArg {
            database_url,
            archive,
        },
        redis,
        json,
    }: ProjectionArgs,
) -> anyhow::Result<()> {
    let store = open_read_only(&database_url).await?;
    let (text, differences) = if follower == "hot-counts" {
        let redis = redis.counts(&store, None).await?;
        let diff = crate::diff::diff_hot_counts(&store, 0, &redis, archive.as_deref()).await?;
        let text = match json {
            true => serde_json::to_string_pretty(&diff)? + "\n",
            false => crate::diff::describe_hot_counts(&diff),
        };
        (text, diff.differences.len())
    } else {
        let diff = crate::diff::diff_billing(&store, 0, archive.as_deref()).await?;
        let text = match json {
            true => serde_json::to_string_pretty(&diff)? + "\n",
            false => crate::diff::describe(&diff),
        };
        (text, diff.differences.len())
    };
    print!("{text}");
    if differences == 0 {
        Ok(())
    } else {
        anyhow::bail!("{differences} difference(s) between {follower} and the log")
    }
}

async fn simulate(
    SimulateArgs {
        store: StoreArg {
            database_url,
            archive,
        },
        license,
        seats,
        ttl_s,
        from,
        to,
        json,
        from_file,
    }: SimulateArgs,
) -> anyhow::Result<()> {
    let (events, head) = match from_file {
        Some(path) => {
            let (events, header) = EventStream::from_file(open_input(&path), None)?;
            (events, header.to_position)
        }
        None => {
            let store = open_read_only(&database_url).await?;
            EventStream::from_log(&store, 0, archive.as_deref(), 0, None).await?
        }
    };
    let (events, bar) = with_bar(events, head);
    let options = crate::simulate::SimulateOptions {
        license_id: license,
        seats,
        heartbeat_ttl: ttl_s,
        from,
        to,
    };
    let report = crate::simulate::simulate(events, options).await?;
    bar.finish_and_clear();
    print_report(json, &report, crate::simulate::describe)
}

async fn republish_range(
    RepublishArgs {
        store: StoreArg {
            database_url,
            archive,
        },
        nats_url,
        nats_stream,
        nats_subject_prefix,
        from,
        to,
    }: RepublishArgs,
) -> anyhow::Result<()> {
    let config = NatsConfig {
        stream: nats_stream,
        subject_prefix: nats_subject_prefix,
        ..NatsConfig::new(&nats_url)
    };
    republish(&database_url, archive.as_deref(), config, from, to).await
}
