//! seatledger-projections: everything that follows the log (DESIGN §4):
//! the follower runner with checkpoints, hot seat counts, the zombie
//! reaper, billing and the NATS JetStream publisher.
//!
//! Built so far: the billing fold ([`billing`]), pure and replayable; the
//! follower [`runner`]; hot seat counts in memory ([`hot`]); the zombie
//! [`reaper`]. Still to come: hot counts in Redis, live billing in tables
//! (with `follower_checkpoints`) and the NATS publisher.
#![forbid(unsafe_code)]

pub mod billing;
pub mod counts;
pub mod hot;
pub mod reaper;
pub mod redis_hot;
pub mod runner;

pub use billing::{BillingFold, Granularity, UsageRow};
pub use counts::{HotCounts, HotReadError};
pub use hot::{HotLicenses, StaleLease, Unreadable};
pub use reaper::{reap_once, ReaperStats, REAPER_INTERVAL};
pub use redis_hot::{RedisLicenses, RedisReadError};
pub use runner::{Follower, FollowerError, FollowerStatus, RunnerConfig};
