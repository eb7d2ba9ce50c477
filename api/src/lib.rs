//! seatledger-api: the HTTP API (axum), configuration, and the `serve` and
//! `migrate` commands of the `seatledger` binary. Handlers are thin: parse,
//! build a command, one call into the ledger, answer.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod routes;
pub mod server;
pub mod state;

pub use config::{DatabaseArgs, ServeArgs};
pub use error::ApiError;
pub use server::{run, Server};
pub use state::AppState;
