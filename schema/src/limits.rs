//! Every bound of seatledger in one place (TigerBeetle style): queues,
//! batches, sizes, ranges. Relations between them are checked at compile time.

/// Seats a license may have.
pub const SEATS_MIN: u32 = 1;
pub const SEATS_MAX: u32 = 100_000;
/// Seconds a lease lives without a heartbeat.
pub const HEARTBEAT_TTL_S_MIN: u32 = 10;
pub const HEARTBEAT_TTL_S_MAX: u32 = 86_400;
pub const HEARTBEAT_TTL_S_DEFAULT: u32 = 360;
/// Extra seats allowed above `seats`, in percent.
pub const MAX_OVERAGE_PERCENT_MAX: u32 = 100;
/// Lengths of free-text fields carried in events.
pub const HARDWARE_ID_LEN_MAX: usize = 256;
pub const NAME_LEN_MAX: usize = 200;
pub const EMAIL_LEN_MAX: usize = 254;
pub const REASON_LEN_MAX: usize = 500;
pub const COMMAND_ID_LEN_MAX: usize = 200;
/// Released/expired sessions a license remembers, so that a late heartbeat
/// answers `session_expired` (and a late release succeeds) instead of
/// `session_not_found`. Bounded so license state cannot grow without limit
/// under churn; older sessions are forgotten first-in first-out.
pub const ENDED_SESSIONS_REMEMBERED: usize = 4_096;
/// A stream's state snapshot is rewritten when its version crosses a
/// multiple of this (docs/design.md §3).
pub const SNAPSHOT_EVERY_EVENTS: i64 = 1_000;
/// A signed checkpoint is written when the position crosses a multiple of
/// this, or after `CHECKPOINT_EVERY_S` with new events.
pub const CHECKPOINT_EVERY_EVENTS: i64 = 1_000;
pub const CHECKPOINT_EVERY_S: u64 = 10;
/// The newest events of a partition that stay rows when the rest is
/// compacted into blocks (docs/design.md §3): what followers and feeds at
/// the head read.
pub const COMPACT_KEEP_EVENTS: i64 = 10_000;
/// Events per compacted block at most.
pub const COMPACT_BLOCK_EVENTS: i64 = 1_000;
/// Events a segment of the log holds (it ends at the first signed
/// checkpoint at or after this many; docs/design.md §3): about a day of a
/// 10k-seat customer (2.4M events over an 8-hour day at 120 s heartbeats),
/// so retention is counted in days there, and a smaller customer's segment
/// spans several days. An archive file of one is about 40 MB.
pub const SEGMENT_EVENTS: i64 = 2_000_000;
/// Commands waiting for the appender; senders wait when it is full.
pub const APPENDER_QUEUE_CAPACITY: usize = 16_384;
/// Commands decided in one transaction.
pub const APPENDER_BATCH_MAX: usize = 1_024;
/// License/org states the appender keeps in memory.
pub const APPENDER_CACHED_STREAMS_MAX: usize = 10_000;
/// Entries (leases, remembered ended sessions, users; one more a stream)
/// those states may hold between them: a few hundred bytes each, so about
/// 600 MiB at most. A batch's own states stay whatever their size.
///
/// Past the bound, a license that was evicted is reloaded (its snapshot
/// and a tail as long as its state) by the next batch that touches it,
/// and with commands spread over many licenses that is nearly every batch:
/// measured with `audit --shapes held`, 600k events (about 450k live
/// leases) took 30 s in all, 800k (about 600k) did not finish in 240 s
/// under the former bound of 500k. So the bound sits well above the live
/// leases one server is sized for (the in-memory hot counts and the
/// billing fold hold every live lease anyway); it is a guard against a
/// runaway, not a working limit.
pub const APPENDER_CACHED_ENTRIES_MAX: usize = 2_000_000;
/// Streams the appender remembers as unreadable (a corrupt snapshot, an
/// undecodable event), so that commands on them fail at once instead of
/// reloading the stream under the partition lock on every request.
pub const UNREADABLE_STREAMS_REMEMBERED: usize = 1_024;
/// How long a stream stays remembered as unreadable before one command
/// tries to load it again; doubled after each failed try, up to the max.
pub const UNREADABLE_STREAM_RETRY_S: u64 = 30;
pub const UNREADABLE_STREAM_RETRY_MAX_S: u64 = 900;
/// Characters of a client's `X-Request-Id` kept in event metadata.
pub const REQUEST_ID_LEN_MAX: usize = 100;
/// Stale leases one reaper round expires (the rest wait for the next).
pub const REAPER_BATCH_MAX: usize = 1_000;
/// Live sessions listed per page of `GET /licenses/{id}/sessions`.
pub const SESSIONS_PAGE_MAX: usize = 1_000;
/// How long a read waits for the hot counts to include the writes the
/// server had committed when the read arrived, before it reads the ledger
/// instead.
pub const READ_YOUR_WRITES_WAIT_MS: u64 = 1_000;
/// Events returned by one read of the log.
pub const READ_BATCH_MAX: i64 = 10_000;

const _: () = assert!(SEATS_MIN >= 1 && SEATS_MIN <= SEATS_MAX);
const _: () = assert!(HEARTBEAT_TTL_S_MIN <= HEARTBEAT_TTL_S_DEFAULT);
const _: () = assert!(HEARTBEAT_TTL_S_DEFAULT <= HEARTBEAT_TTL_S_MAX);
const _: () = assert!(APPENDER_BATCH_MAX <= APPENDER_QUEUE_CAPACITY);
const _: () = assert!(UNREADABLE_STREAM_RETRY_S <= UNREADABLE_STREAM_RETRY_MAX_S);
// SQLite binds at most 32,766 parameters per statement; a batch row has 14.
const _: () = assert!(APPENDER_BATCH_MAX * 14 < 32_766);

/// Periods one usage report may span (`GET /api/v1/usage`): 41 days by
/// the hour, 2.7 years by the day, 83 years by the month.
pub const USAGE_PERIODS_MAX: usize = 1_000;

/// Client tokens: licenses one may be limited to, live tokens
/// per organization, and the longest expiry one may be given (ten years;
/// without one it lives until revoked).
pub const CLIENT_TOKEN_LICENSES_MAX: usize = 100;
pub const CLIENT_TOKENS_PER_ORG_MAX: usize = 1_000;
pub const CLIENT_TOKEN_TTL_S_MIN: u64 = 60;
pub const CLIENT_TOKEN_TTL_S_MAX: u64 = 315_360_000;
