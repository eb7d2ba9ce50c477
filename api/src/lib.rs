//! seatledger-api: the HTTP API (axum), configuration, and the `serve` and
//! `migrate` commands of the `seatledger` binary. Handlers are thin: parse,
//! build a command, one call into the ledger, answer.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cache;
pub mod client_auth;
pub mod config;
/// The credentials directory lives in the storage layer.
pub use seatledger_ledger::store::directory;
pub mod error;
pub mod extract;
pub mod framing;
pub mod http;
pub mod keyring;
pub mod lease_token;
pub mod login_guard;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod state;
pub mod store_gate;
pub mod tokens;

pub use config::{DatabaseArgs, NatsArgs, ServeArgs};
pub use error::ApiError;
pub use server::{run, Server};
pub use state::AppState;
