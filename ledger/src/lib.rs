//! seatledger-ledger: the domain (`decide`/`evolve`), the event store
//! (PostgreSQL and embedded SQLite), the group-commit appender with its hash
//! chain and signed checkpoints, and reading and tailing the log.
#![forbid(unsafe_code)]

pub mod appender;
pub mod archive;
pub mod billing;
pub mod clock;
pub mod compactor;
pub mod domain;
pub mod keys;
pub mod listen;
pub mod recent;
mod state_cache;
pub mod store;

pub use appender::{
    request_hash, AppendError, Appender, AppenderConfig, CommandResult, CommitNotifier, Submission,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use keys::SigningKey;
pub use store::blocks::{write_line, Relinker};
pub use store::{Backend, ImportError, ImportExtras, Segment, Store, StoreError};
