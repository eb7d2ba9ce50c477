//! Prometheus metrics in text format, kept by hand (a few counters and
//! histograms need no framework): requests and latency per route and
//! status, the appender's batches and commit time, seats granted and denied.
//! Labels are bounded: routes are the router's patterns, methods the
//! standard ones.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use seatledger_ledger::appender::AppenderStats;
use seatledger_projections::{FollowerStatus, PublisherStats, ReaperStats};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const LATENCY_BUCKETS_S: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Default, Clone)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS_S.len()],
    sum_s: f64,
    count: u64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, &'static str, u16), u64>>,
    latency: Mutex<BTreeMap<(String, &'static str), Histogram>>,
    pub seats_granted: AtomicU64,
    pub seats_denied: AtomicU64,
    /// Acquires denied, by rejection code (a closed set).
    seats_denied_by_code: Mutex<BTreeMap<&'static str, u64>>,
    /// Reads (GET) that found a stream unreadable.
    pub unreadable_reads: AtomicU64,
    /// License reads the hot counts could not serve in time (read from the
    /// ledger instead).
    pub hot_read_fallbacks: AtomicU64,
    /// Heartbeats and releases whose session the session cache did not
    /// hold, so the log was asked which license it is on.
    pub session_log_lookups: AtomicU64,
    /// Passwords checked against a stored hash by login (each one an
    /// argon2 hash: what the login back-off bounds).
    pub login_password_checks: AtomicU64,
    /// Long-polls of the events feed waiting for a commit now.
    pub feed_waiting: AtomicI64,
    pub hot_licenses: FollowerStatus,
    /// The live billing follower.
    pub billing: FollowerStatus,
    /// The NATS publisher.
    pub nats: FollowerStatus,
    pub reaper: Arc<ReaperStats>,
    pub compactor: Arc<seatledger_ledger::compactor::CompactorStats>,
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
    fn observe(&self, route: String, method: &'static str, status: u16, seconds: f64) {
        {
            let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            *requests.entry((route.clone(), method, status)).or_default() += 1;
        }
        let mut latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let histogram = latency.entry((route, method)).or_default();
        for (index, bound) in LATENCY_BUCKETS_S.iter().enumerate() {
            if seconds <= *bound {
                histogram.buckets[index] += 1;
            }
        }
        histogram.sum_s += seconds;
        histogram.count += 1;
    }

    /// An acquire denied with `code`.
    pub fn seat_denied(&self, code: &'static str) {
        self.seats_denied.fetch_add(1, Ordering::Relaxed);
        let mut by_code = self
            .seats_denied_by_code
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *by_code.entry(code).or_default() += 1;
    }

    pub fn render(&self, appender: &AppenderStats) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str(
            "# HELP seatledger_http_requests_total HTTP requests by route, method and status.\n",
        );
        out.push_str("# TYPE seatledger_http_requests_total counter\n");
        for ((route, method, status), count) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "seatledger_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {count}");
        }
        out.push_str(
            "# HELP seatledger_http_request_duration_seconds HTTP request latency by route and method.\n",
        );
        out.push_str("# TYPE seatledger_http_request_duration_seconds histogram\n");
        for ((route, method), histogram) in self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let labels = format!("route=\"{route}\",method=\"{method}\"");
            for (bound, count) in LATENCY_BUCKETS_S.iter().zip(histogram.buckets) {
                let _ = writeln!(
                    out,
                    "seatledger_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "seatledger_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                histogram.count
            );
            let _ = writeln!(
                out,
                "seatledger_http_request_duration_seconds_sum{{{labels}}} {}",
                histogram.sum_s
            );
            let _ = writeln!(
                out,
                "seatledger_http_request_duration_seconds_count{{{labels}}} {}",
                histogram.count
            );
        }
        out.push_str(
            "# HELP seatledger_seats_denied_by_reason_total Acquires denied, by rejection code.\n",
        );
        out.push_str("# TYPE seatledger_seats_denied_by_reason_total counter\n");
        for (code, count) in self
            .seats_denied_by_code
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "seatledger_seats_denied_by_reason_total{{code=\"{code}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP seatledger_build_info The running build.\n# TYPE seatledger_build_info gauge\n\
             seatledger_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            env!("SEATLEDGER_COMMIT")
        );
        out.push_str(&process_metrics());
        let counters = [
            (
                "seatledger_appender_batches_total",
                "Appender batches committed.",
                appender.batches.load(Ordering::Relaxed),
            ),
            (
                "seatledger_appender_commands_total",
                "Commands decided in committed batches.",
                appender.commands.load(Ordering::Relaxed),
            ),
            (
                "seatledger_appender_events_total",
                "Events appended.",
                appender.events.load(Ordering::Relaxed),
            ),
            (
                "seatledger_appender_failed_batches_total",
                "Batches that failed and wrote nothing.",
                appender.failed_batches.load(Ordering::Relaxed),
            ),
            (
                "seatledger_appender_batches_decided_ahead_total",
                "Batches decided while the batch before them was being written (pipelined group commit).",
                appender.batches_decided_ahead.load(Ordering::Relaxed),
            ),
            (
                "seatledger_appender_batches_decided_again_total",
                "Batches decided ahead, then decided again because the batch before them failed.",
                appender.batches_decided_again.load(Ordering::Relaxed),
            ),
            (
                "seatledger_appender_connections_retired_total",
                "Appender connections closed instead of pooled after writing a large snapshot (their write buffer would stay that large).",
                appender.connections_retired.load(Ordering::Relaxed),
            ),
            (
                "seatledger_appender_snapshots_total",
                "State snapshots taken (written with their batch, or by the snapshot writer after it).",
                appender.snapshots.load(Ordering::Relaxed),
            ),
            (
                "seatledger_appender_snapshot_bytes_total",
                "Bytes of the snapshots taken (the states as JSON text).",
                appender.snapshot_bytes.load(Ordering::Relaxed),
            ),
            (
                "seatledger_appender_snapshots_written_after_commit_total",
                "Large snapshots the snapshot writer stored after their batch committed.",
                appender.snapshots_written_after_commit.load(Ordering::Relaxed),
            ),
            (
                "seatledger_appender_snapshots_not_written_total",
                "Snapshots not stored (a store error, or the snapshot writer busy with two others): the stream's next snapshot comes one interval later and loads read a longer tail meanwhile.",
                appender.snapshots_not_written.load(Ordering::Relaxed),
            ),
            (
                "seatledger_appender_checkpoints_total",
                "Signed checkpoints written.",
                appender.checkpoints.load(Ordering::Relaxed),
            ),
            (
                "seatledger_appender_stream_loads_total",
                "Streams the appender read whole from the store because its cache did not hold them (once per stream after a start; a steady rate means the partition holds more than the cache and batches pay reloads).",
                appender.stream_loads.load(Ordering::Relaxed),
            ),
            (
                "seatledger_appender_streams_warmed_total",
                "Streams the appender loaded into its cache at start, before the server listened, because their first load would have held the partition lock long.",
                appender.streams_warmed.load(Ordering::Relaxed),
            ),
            (
                "seatledger_appender_cache_evictions_total",
                "Streams evicted from the appender's cache of states to make room.",
                appender.cache_evictions.load(Ordering::Relaxed),
            ),
            (
                "seatledger_stream_loads_failed_total",
                "Appender loads that found a stream unreadable (one per stream per retry, not per request).",
                appender.stream_loads_failed.load(Ordering::Relaxed),
            ),
            (
                "seatledger_commands_on_unreadable_streams_total",
                "Commands answered 500 stream_unreadable.",
                appender.commands_on_unreadable_streams.load(Ordering::Relaxed),
            ),
            (
                "seatledger_unreadable_reads_total",
                "Reads answered 500 stream_unreadable.",
                self.unreadable_reads.load(Ordering::Relaxed),
            ),
            (
                "seatledger_hot_read_fallbacks_total",
                "License reads served from the ledger because the hot counts had not caught up in time.",
                self.hot_read_fallbacks.load(Ordering::Relaxed),
            ),
            (
                "seatledger_session_log_lookups_total",
                "Heartbeats and releases whose session was not in the session cache and was looked up in the log (a steady rate under steady traffic: more live sessions than the cache holds, or clients that heartbeat released sessions).",
                self.session_log_lookups.load(Ordering::Relaxed),
            ),
            (
                "seatledger_reaper_rounds_total",
                "Rounds of the zombie reaper.",
                self.reaper.rounds.load(Ordering::Relaxed),
            ),
            (
                "seatledger_reaper_leases_reaped_total",
                "Leases the reaper expired.",
                self.reaper.leases_reaped.load(Ordering::Relaxed),
            ),
            (
                "seatledger_reaper_failures_total",
                "Reaper expiries that failed (retried next round).",
                self.reaper.failures.load(Ordering::Relaxed),
            ),
            (
                "seatledger_compacted_blocks_total",
                "Blocks the compactor wrote (each holds consecutive events that were rows).",
                self.compactor.blocks.load(Ordering::Relaxed),
            ),
            (
                "seatledger_compacted_events_total",
                "Events the compactor moved from rows into blocks.",
                self.compactor.events.load(Ordering::Relaxed),
            ),
            (
                "seatledger_compaction_failures_total",
                "Compaction rounds that failed (retried after a pause; the log says why).",
                self.compactor.failures.load(Ordering::Relaxed),
            ),
            (
                "seatledger_login_password_checks_total",
                "Passwords login checked against a stored hash (argon2), after the back-off let the attempt through.",
                self.login_password_checks.load(Ordering::Relaxed),
            ),
            (
                "seatledger_seats_granted_total",
                "Seats granted by acquire.",
                self.seats_granted.load(Ordering::Relaxed),
            ),
            (
                "seatledger_seats_denied_total",
                "Acquires denied.",
                self.seats_denied.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        for (name, help, field) in [
            (
                "seatledger_follower_position",
                "The last log position a follower applied.",
                (|status: &FollowerStatus| &status.position) as fn(&FollowerStatus) -> &AtomicI64,
            ),
            (
                "seatledger_follower_lag",
                "Positions a follower is behind the head it last saw.",
                |status: &FollowerStatus| &status.lag,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (follower, status) in [
                ("hot_licenses", &self.hot_licenses),
                ("billing", &self.billing),
                ("nats", &self.nats),
            ] {
                let value = field(status).load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{follower=\"{follower}\"}} {value}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP seatledger_events_feed_waiting Long-polls of GET /api/v1/events waiting for a commit.\n\
             # TYPE seatledger_events_feed_waiting gauge\n\
             seatledger_events_feed_waiting {}",
            self.feed_waiting.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP seatledger_appender_cached_entries Entries (leases, remembered sessions, users) in the appender's cache of states; it evicts past {}.\n\
             # TYPE seatledger_appender_cached_entries gauge\n\
             seatledger_appender_cached_entries {}\n\
             # HELP seatledger_appender_cached_streams Streams in the appender's cache of states.\n\
             # TYPE seatledger_appender_cached_streams gauge\n\
             seatledger_appender_cached_streams {}",
            seatledger_schema::limits::APPENDER_CACHED_ENTRIES_MAX,
            appender.cached_entries.load(Ordering::Relaxed),
            appender.cached_streams.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP seatledger_unreadable_streams Streams the appender currently remembers as unreadable.\n\
             # TYPE seatledger_unreadable_streams gauge\n\
             seatledger_unreadable_streams {}",
            appender.unreadable_streams.load(Ordering::Relaxed)
        );
        let batches = appender.batches.load(Ordering::Relaxed);
        let commit_s = appender.commit_micros_total.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "# HELP seatledger_appender_commit_seconds Time spent committing batches (sum and count: mean commit latency).\n\
             # TYPE seatledger_appender_commit_seconds summary\n\
             seatledger_appender_commit_seconds_sum {commit_s}\nseatledger_appender_commit_seconds_count {batches}"
        );
        let commands = appender.commands.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP seatledger_appender_batch_size Commands per batch (sum and count: mean batch size).\n\
             # TYPE seatledger_appender_batch_size summary\n\
             seatledger_appender_batch_size_sum {commands}\nseatledger_appender_batch_size_count {batches}"
        );
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

/// The NATS publisher's metrics (only with `--nats-url`).
pub fn render_nats(stats: &PublisherStats, now: seatledger_schema::Timestamp) -> String {
    let mut out = String::new();
    for (name, kind, help, value) in [
        (
            "seatledger_nats_published_total",
            "counter",
            "Events this replica published and JetStream acknowledged.",
            stats.published.load(Ordering::Relaxed).to_string(),
        ),
        (
            "seatledger_nats_ack_failures_total",
            "counter",
            "Publish attempts that failed (no ack, or NATS unreachable); retried from the checkpoint.",
            stats.ack_failures.load(Ordering::Relaxed).to_string(),
        ),
        (
            "seatledger_nats_checkpoints_saved_total",
            "counter",
            "Times the publisher stored its position (at most every 250 ms while publishing, and once idle).",
            stats.checkpoints_saved.load(Ordering::Relaxed).to_string(),
        ),
        (
            "seatledger_nats_losses_recovered_total",
            "counter",
            "Times JetStream was found to have lost acknowledged messages; the publisher resent them from the log.",
            stats.losses_recovered.load(Ordering::Relaxed).to_string(),
        ),
        (
            "seatledger_nats_publisher_active",
            "gauge",
            "1 when this replica holds the publisher lock and publishes.",
            u8::from(stats.active.load(Ordering::Relaxed)).to_string(),
        ),
        (
            "seatledger_nats_connected",
            "gauge",
            "1 when the NATS client is connected.",
            u8::from(stats.connected.load(Ordering::Relaxed)).to_string(),
        ),
        (
            "seatledger_nats_publish_lag_seconds",
            "gauge",
            "How long the oldest event not yet published has waited (0 when caught up).",
            format!("{:.3}", stats.lag_seconds(now)),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    out
}

/// The process's CPU time, resident memory and open files (Linux /proc;
/// absent elsewhere).
fn process_metrics() -> String {
    let mut out = String::new();
    // utime and stime are fields 14 and 15 of /proc/self/stat, in clock
    // ticks (100 per second on Linux), after the parenthesised command.
    if let Some(ticks) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let fields: Vec<u64> = stat
                .rsplit_once(") ")?
                .1
                .split(' ')
                .skip(11)
                .take(2)
                .map(|field| field.parse().ok())
                .collect::<Option<_>>()?;
            Some(fields.iter().sum::<u64>())
        })
    {
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total User and system CPU time.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}",
            ticks as f64 / 100.0
        );
    }
    if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split(' ').nth(1)?.parse::<u64>().ok())
    {
        let _ = writeln!(
            out,
            "# HELP process_resident_memory_bytes Resident memory.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}",
            pages * 4096
        );
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(
            out,
            "# HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}",
            entries.count()
        );
    }
    out
}
