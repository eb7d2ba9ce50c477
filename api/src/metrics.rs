//! Prometheus metrics, kept with the `prometheus-client` crate and served
//! in the OpenMetrics text format: requests and latency per route and
//! status, seats granted and denied, the appender's batches and commit
//! time, the followers, the reaper, the compactor and the process.
//! Labels are bounded: routes are the router's patterns, methods the
//! standard ones, codes the closed set of rejections.
//!
//! The counters of the appender, the reaper, the compactor and the
//! followers are atomics their owners keep; a [`Collector`] reads them at
//! each scrape, so the hot paths pay nothing for the exposition.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use seatledger_ledger::appender::AppenderStats;
use seatledger_ledger::compactor::CompactorStats;
use seatledger_projections::{FollowerStatus, PublisherStats, ReaperStats};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const LATENCY_BUCKETS_S: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_S)
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Acquires denied, by rejection code.
    seats_denied_by_code: Family<CodeLabels, Counter>,
    pub seats_granted: Counter,
    pub seats_denied: Counter,
    /// Reads (GET) that found a stream unreadable.
    pub unreadable_reads: Counter,
    /// License reads the hot counts could not serve in time (read from the
    /// ledger instead).
    pub hot_read_fallbacks: Counter,
    /// Heartbeats and releases whose session the session cache did not
    /// hold, so the log was asked which license it is on.
    pub session_log_lookups: Counter,
    /// Passwords checked against a stored hash by login (each one an
    /// argon2 hash: what the login back-off bounds).
    pub login_password_checks: Counter,
    /// Long-polls of the events feed waiting for a commit now.
    pub feed_waiting: Gauge,
    pub hot_licenses: FollowerStatus,
    /// The live billing follower.
    pub billing: FollowerStatus,
    /// The NATS publisher.
    pub nats: FollowerStatus,
    pub reaper: Arc<ReaperStats>,
    pub compactor: Arc<CompactorStats>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Registers a counter the server increments (`name` without `_total`,
/// which the encoder adds; `help` without its final stop, likewise).
fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let counter = Counter::default();
    registry.register(name, help, counter.clone());
    counter
}

fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PATCH" => "PATCH",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

impl Metrics {
    /// The server's metrics; `appender` is read at each scrape.
    pub fn new(appender: Arc<AppenderStats>) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "seatledger_http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        let latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "seatledger_http_request_duration_seconds",
            "HTTP request latency by route and method",
            latency.clone(),
        );
        let seats_denied_by_code = Family::<CodeLabels, Counter>::default();
        registry.register(
            "seatledger_seats_denied_by_reason",
            "Acquires denied, by rejection code",
            seats_denied_by_code.clone(),
        );
        registry.register(
            "seatledger_build",
            "The running build",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: env!("SEATLEDGER_COMMIT"),
            }),
        );
        let feed_waiting = Gauge::default();
        registry.register(
            "seatledger_events_feed_waiting",
            "Long-polls of GET /api/v1/events waiting for a commit",
            feed_waiting.clone(),
        );
        let mut metrics = Metrics {
            seats_granted: counter(&mut registry, "seatledger_seats_granted", "Seats granted by acquire"),
            seats_denied: counter(&mut registry, "seatledger_seats_denied", "Acquires denied"),
            unreadable_reads: counter(&mut registry, "seatledger_unreadable_reads", "Reads answered 500 stream_unreadable"),
            hot_read_fallbacks: counter(&mut registry, "seatledger_hot_read_fallbacks", "License reads served from the ledger because the hot counts had not caught up in time"),
            session_log_lookups: counter(&mut registry, "seatledger_session_log_lookups", "Heartbeats and releases whose session was not in the session cache and was looked up in the log (a steady rate under steady traffic: more live sessions than the cache holds, or clients that heartbeat released sessions)"),
            login_password_checks: counter(&mut registry, "seatledger_login_password_checks", "Passwords login checked against a stored hash (argon2), after the back-off let the attempt through"),
            requests,
            latency,
            seats_denied_by_code,
            feed_waiting,
            hot_licenses: FollowerStatus::default(),
            billing: FollowerStatus::default(),
            nats: FollowerStatus::default(),
            reaper: Arc::default(),
            compactor: Arc::default(),
            registry,
        };
        let collector = StatsCollector {
            appender,
            reaper: metrics.reaper.clone(),
            compactor: metrics.compactor.clone(),
            followers: [
                ("hot_licenses", metrics.hot_licenses.clone()),
                ("billing", metrics.billing.clone()),
                ("nats", metrics.nats.clone()),
            ],
        };
        metrics.registry.register_collector(Box::new(collector));
        metrics
            .registry
            .register_collector(Box::new(ProcessCollector));
        metrics
    }

    fn observe(&self, route: String, method: &'static str, status: u16, seconds: f64) {
        self.latency
            .get_or_create(&RouteLabels {
                route: route.clone(),
                method,
            })
            .observe(seconds);
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
    }

    /// An acquire denied with `code`.
    pub fn seat_denied(&self, code: &'static str) {
        self.seats_denied.inc();
        self.seats_denied_by_code
            .get_or_create(&CodeLabels { code })
            .inc();
    }

    /// The exposition: these metrics, then `scrape`'s (values known only at
    /// this scrape), then the end marker.
    pub fn render(&self, scrape: &Registry) -> String {
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, scrape);
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }
}

/// Middleware: counts and times every request by its route pattern.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    metrics.observe(
        route,
        method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

type AppenderCounter = (&'static str, &'static str, fn(&AppenderStats) -> &AtomicU64);

/// The appender's counters: name (without `_total`), help, field.
const APPENDER_COUNTERS: [AppenderCounter; 18] = [
    ("seatledger_appender_batches", "Appender batches committed.", |s| &s.batches),
    ("seatledger_appender_commands", "Commands decided in committed batches.", |s| &s.commands),
    ("seatledger_appender_events", "Events appended.", |s| &s.events),
    ("seatledger_appender_failed_batches", "Batches that failed and wrote nothing.", |s| &s.failed_batches),
    ("seatledger_appender_batches_decided_ahead", "Batches decided while the batch before them was being written (pipelined group commit).", |s| &s.batches_decided_ahead),
    ("seatledger_appender_batches_decided_again", "Batches decided ahead, then decided again because the batch before them failed.", |s| &s.batches_decided_again),
    ("seatledger_appender_connections_retired", "Appender connections closed instead of pooled after writing a large snapshot (their write buffer would stay that large).", |s| &s.connections_retired),
    ("seatledger_appender_snapshots", "State snapshots taken (written with their batch, or by the snapshot writer after it).", |s| &s.snapshots),
    ("seatledger_appender_snapshot_bytes", "Bytes of the snapshots taken (the states as JSON text).", |s| &s.snapshot_bytes),
    ("seatledger_appender_snapshots_written_after_commit", "Large snapshots the snapshot writer stored after their batch committed.", |s| &s.snapshots_written_after_commit),
    ("seatledger_appender_snapshots_not_written", "Snapshots not stored (a store error, or the snapshot writer busy with two others): the stream's next snapshot comes one interval later and loads read a longer tail meanwhile.", |s| &s.snapshots_not_written),
    ("seatledger_appender_checkpoints", "Signed checkpoints written.", |s| &s.checkpoints),
    ("seatledger_appender_leads", "Times the appender took the partition lock to lead (PostgreSQL); each costs a lock, a read of the head and an unlock.", |s| &s.leads),
    ("seatledger_appender_stream_loads", "Streams the appender read whole from the store because its cache did not hold them (once per stream after a start; a steady rate means the partition holds more than the cache and batches pay reloads).", |s| &s.stream_loads),
    ("seatledger_appender_streams_warmed", "Streams the appender loaded into its cache at start, before the server listened, because their first load would have held the partition lock long.", |s| &s.streams_warmed),
    ("seatledger_appender_cache_evictions", "Streams evicted from the appender's cache of states to make room.", |s| &s.cache_evictions),
    ("seatledger_stream_loads_failed", "Appender loads that found a stream unreadable (one per stream per retry, not per request).", |s| &s.stream_loads_failed),
    ("seatledger_commands_on_unreadable_streams", "Commands answered 500 stream_unreadable.", |s| &s.commands_on_unreadable_streams),
];

/// Reads the counters other parts of the server keep, at each scrape.
#[derive(Debug)]
struct StatsCollector {
    appender: Arc<AppenderStats>,
    reaper: Arc<ReaperStats>,
    compactor: Arc<CompactorStats>,
    followers: [(&'static str, FollowerStatus); 3],
}

/// Encodes one metric whose value is read at this scrape
/// (`ConstCounter` or `ConstGauge`).
fn encode_const(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> std::fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let load = |atomic: &AtomicU64| atomic.load(Ordering::Relaxed);
        let appender = &*self.appender;
        for (name, help, field) in APPENDER_COUNTERS {
            encode_const(
                &mut encoder,
                name,
                help,
                ConstCounter::new(load(field(appender))),
            )?;
        }
        let commit_s = load(&appender.commit_micros_total) as f64 / 1e6;
        encode_const(&mut encoder, "seatledger_appender_commit_seconds", "Time spent committing batches (÷ seatledger_appender_batches_total: the mean commit latency).", ConstCounter::new(commit_s))?;
        encode_const(&mut encoder, "seatledger_appender_cached_entries", &format!(
                "Entries (leases, remembered sessions, users) in the appender's cache of states; it evicts past {}.",
                seatledger_schema::limits::APPENDER_CACHED_ENTRIES_MAX
            ), ConstGauge::new(load(&appender.cached_entries)))?;
        encode_const(
            &mut encoder,
            "seatledger_appender_cached_streams",
            "Streams in the appender's cache of states.",
            ConstGauge::new(load(&appender.cached_streams)),
        )?;
        encode_const(
            &mut encoder,
            "seatledger_unreadable_streams",
            "Streams the appender currently remembers as unreadable.",
            ConstGauge::new(load(&appender.unreadable_streams)),
        )?;
        self.encode_background(&mut encoder)?;
        self.encode_followers(&mut encoder)
    }
}

impl StatsCollector {
    /// The reaper's and the compactor's counters.
    fn encode_background(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let load = |atomic: &AtomicU64| atomic.load(Ordering::Relaxed);
        for (name, help, value) in [
            (
                "seatledger_reaper_rounds",
                "Rounds of the zombie reaper.",
                &self.reaper.rounds,
            ),
            (
                "seatledger_reaper_leases_reaped",
                "Leases the reaper expired.",
                &self.reaper.leases_reaped,
            ),
            (
                "seatledger_reaper_failures",
                "Reaper expiries that failed (retried next round).",
                &self.reaper.failures,
            ),
            (
                "seatledger_compacted_blocks",
                "Blocks the compactor wrote (each holds consecutive events that were rows).",
                &self.compactor.blocks,
            ),
            (
                "seatledger_compacted_events",
                "Events the compactor moved from rows into blocks.",
                &self.compactor.events,
            ),
            (
                "seatledger_compaction_failures",
                "Compaction rounds that failed (retried after a pause; the log says why).",
                &self.compactor.failures,
            ),
        ] {
            encode_const(encoder, name, help, ConstCounter::new(load(value)))?;
        }
        Ok(())
    }

    fn encode_followers(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        for (name, help, field) in [
            (
                "seatledger_follower_position",
                "The last log position a follower applied.",
                (|status: &FollowerStatus| &*status.position) as fn(&FollowerStatus) -> &AtomicI64,
            ),
            (
                "seatledger_follower_lag",
                "Positions a follower is behind the head it last saw.",
                |status: &FollowerStatus| &*status.lag,
            ),
        ] {
            let family = Family::<FollowerLabels, Gauge>::default();
            for (follower, status) in &self.followers {
                family
                    .get_or_create(&FollowerLabels { follower })
                    .set(field(status).load(Ordering::Relaxed));
            }
            family.encode(encoder.encode_descriptor(name, help, None, family.metric_type())?)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FollowerLabels {
    follower: &'static str,
}

/// Values known only when a scrape comes: live leases (from the hot
/// counts, absent while Redis does not answer), Redis prefix conflicts and
/// the NATS publisher.
pub fn scrape_registry(
    live_leases: Option<u64>,
    prefix_conflicts: u64,
    nats: Option<(Arc<PublisherStats>, seatledger_schema::Timestamp)>,
) -> Registry {
    let mut registry = Registry::default();
    if let Some(live) = live_leases {
        registry.register(
            "seatledger_live_leases",
            "Leases live now, over every license",
            ConstGauge::new(live),
        );
    }
    registry.register(
        "seatledger_redis_prefix_conflicts",
        "Times the hot-count follower found the Redis prefix owned by another ledger (it then follows nothing there; see /api/v1/health/ready)",
        ConstCounter::new(prefix_conflicts),
    );
    if let Some((stats, now)) = nats {
        registry.register_collector(Box::new(NatsCollector { stats, now }));
    }
    registry
}

/// The NATS publisher's metrics (only with `--nats-url`).
#[derive(Debug)]
struct NatsCollector {
    stats: Arc<PublisherStats>,
    now: seatledger_schema::Timestamp,
}

impl Collector for NatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let stats = &*self.stats;
        for (name, help, value) in [
            ("seatledger_nats_published", "Events this replica published and JetStream acknowledged.", &stats.published),
            ("seatledger_nats_ack_failures", "Publish attempts that failed (no ack, or NATS unreachable); retried from the checkpoint.", &stats.ack_failures),
            ("seatledger_nats_checkpoints_saved", "Times the publisher stored its position (at most every 250 ms while publishing, and once idle).", &stats.checkpoints_saved),
            ("seatledger_nats_losses_recovered", "Times JetStream was found to have lost acknowledged messages; the publisher resent them from the log.", &stats.losses_recovered),
        ] {
            encode_const(&mut encoder, name, help, ConstCounter::new(value.load(Ordering::Relaxed)))?;
        }
        for (name, help, value) in [
            (
                "seatledger_nats_publisher_active",
                "1 when this replica holds the publisher lock and publishes.",
                &stats.active,
            ),
            (
                "seatledger_nats_connected",
                "1 when the NATS client is connected.",
                &stats.connected,
            ),
        ] {
            encode_const(
                &mut encoder,
                name,
                help,
                ConstGauge::new(i64::from(value.load(Ordering::Relaxed))),
            )?;
        }
        encode_const(
            &mut encoder,
            "seatledger_nats_publish_lag_seconds",
            "How long the oldest event not yet published has waited (0 when caught up).",
            ConstGauge::new(stats.lag_seconds(self.now)),
        )
    }
}

/// The process's CPU time, resident memory and open files (Linux /proc;
/// absent elsewhere).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        if let Some(ticks) = cpu_ticks() {
            encode_const(
                &mut encoder,
                "process_cpu_seconds",
                "User and system CPU time.",
                ConstCounter::new(ticks as f64 / 100.0),
            )?;
        }
        if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|statm| statm.split(' ').nth(1)?.parse::<u64>().ok())
        {
            encode_const(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory.",
                ConstGauge::new(pages * 4096),
            )?;
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            encode_const(
                &mut encoder,
                "process_open_fds",
                "Open file descriptors.",
                ConstGauge::new(entries.count() as u64),
            )?;
        }
        Ok(())
    }
}

/// utime plus stime: fields 14 and 15 of /proc/self/stat, in clock ticks
/// (100 per second on Linux), after the parenthesised command.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<u64> = stat
        .rsplit_once(") ")?
        .1
        .split(' ')
        .skip(11)
        .take(2)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    Some(fields.iter().sum())
}
