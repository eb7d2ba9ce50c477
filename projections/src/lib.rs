//! seatledger-projections: everything that follows the log (DESIGN §4):
//! the follower runner with checkpoints, hot seat counts, the zombie
//! reaper, billing and the NATS JetStream publisher.
//!
//! Built so far: the billing fold ([`billing`]), pure and replayable. The
//! followers that run it and the others against the live log (with the
//! `follower_checkpoints` table and the ledger's `CommitNotifier` / `listen`
//! wake-ups, already in place) are not built yet.
#![forbid(unsafe_code)]

pub mod billing;

pub use billing::{BillingFold, Granularity, UsageRow};
