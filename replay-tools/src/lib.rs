//! seatledger-replay: auditor tools. `verify` proves the log was not
//! altered: gap-free positions, every `prev_hash` link and every hash
//! recomputed from the event's canonical bytes, and every signed checkpoint
//! verified with the ledger's public key against the chain.
//!
//! Reading and verifying overlap: one task reads the next batch while the
//! caller verifies the current one.
//!
//! `usage` recomputes billing from the log with the billing fold
//! (`seatledger-projections`), the same code a live billing follower runs,
//! so a live report can be checked against a replayed one.
#![forbid(unsafe_code)]

pub mod at;
pub mod cli;
pub mod diff;
pub mod events;
pub mod export;
pub mod format;
pub mod read;
pub mod simulate;
pub mod usage;
pub mod verify;
pub mod witness;

pub use usage::*;
pub use verify::*;

pub use seatledger_projections::billing::usage_csv;
