//! seatledger-projections: everything that follows the log (docs/design.md §4):
//! the follower runner, hot seat counts, the zombie
//! reaper, billing and the NATS JetStream publisher.
//!
//! Built so far: the billing fold ([`billing`]), pure and replayable, and
//! live billing in the ledger's database ([`billing_live`]); the follower
//! [`runner`]; hot seat counts in memory ([`hot`]) and Redis
//! ([`redis_hot`]); the zombie [`reaper`]; the NATS JetStream publisher
//! ([`nats`]).
#![forbid(unsafe_code)]

pub use seatledger_ledger::billing;
pub mod billing_live;
pub mod counts;
pub mod event_consumer;
pub mod hot;
pub mod nats;
pub mod reaper;
pub mod redis_hot;
pub mod runner;

pub use billing::{usage_csv, BillingFold, Granularity, UsageRow};
pub use billing_live::{BillingRebuild, LiveBilling, LiveUsage, UsageError, UsageQuery};
pub use counts::{HotCounts, HotReadError};
pub use event_consumer::{ConsumerError, EventConsumer};
pub use hot::{HotLicenses, StaleLease, Unreadable};
pub use nats::{NatsConfig, NatsPublisher, PublisherStats};
pub use reaper::{reap_once, ReaperStats, REAPER_INTERVAL};
pub use redis_hot::{RedisLicenses, RedisReadError};
pub use runner::{Follower, FollowerError, FollowerStatus, RunnerConfig};
