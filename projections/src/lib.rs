//! seatledger-projections: everything that follows the log (DESIGN §4):
//! the follower runner with checkpoints, hot seat counts, the zombie
//! reaper, billing and the NATS JetStream publisher.
//!
//! Empty for now: no open issue has built a follower yet. The
//! `follower_checkpoints` table (schema migrations) and the ledger's
//! `CommitNotifier` / `listen` wake-ups are in place for them.
#![forbid(unsafe_code)]
