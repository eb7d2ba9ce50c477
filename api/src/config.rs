//! Configuration: CLI flags with `SEATLEDGER_*` environment twins and
//! embedded defaults. Secrets (database passwords, keys) are never logged:
//! use `redacted_url` to show a URL.

use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The embedded default: SQLite in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite:seatledger.db";

#[derive(Args, Clone, Debug)]
pub struct DatabaseArgs {
    /// `postgres://user:pass@host/db` for PostgreSQL, or `sqlite:PATH` (the
    /// default keeps the log in ./seatledger.db).
    #[arg(long, env = "SEATLEDGER_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
}

/// Event delivery to NATS JetStream (README "Event stream").
#[derive(Args, Clone, Debug)]
pub struct NatsArgs {
    /// NATS with JetStream: every event is published there (absent: no
    /// publisher; billing jobs read `GET /api/v1/events`).
    #[arg(long = "nats-url", env = "SEATLEDGER_NATS_URL")]
    pub url: Option<String>,
    /// The JetStream stream, created if missing.
    #[arg(
        long = "nats-stream",
        env = "SEATLEDGER_NATS_STREAM",
        default_value = "SEATLEDGER"
    )]
    pub stream: String,
    /// Subjects are `<prefix>.<tenant_id>.<event_type>`; the stream takes `<prefix>.>`.
    #[arg(
        long = "nats-subject-prefix",
        env = "SEATLEDGER_NATS_SUBJECT_PREFIX",
        default_value = "seatledger"
    )]
    pub subject_prefix: String,
    /// Replicas of the stream (a JetStream cluster of at least that many).
    #[arg(long = "nats-replicas", env = "SEATLEDGER_NATS_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,
    /// How long JetStream keeps a message, in seconds (0: for ever).
    #[arg(
        long = "nats-max-age-s",
        env = "SEATLEDGER_NATS_MAX_AGE_S",
        default_value_t = 0
    )]
    pub max_age_s: u64,
    /// Publishes in flight awaiting their ack.
    #[arg(long = "nats-window", env = "SEATLEDGER_NATS_WINDOW", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub window: u16,
}

impl NatsArgs {
    /// No publisher.
    pub fn off() -> NatsArgs {
        NatsArgs {
            url: None,
            stream: "SEATLEDGER".into(),
            subject_prefix: "seatledger".into(),
            replicas: 1,
            max_age_s: 0,
            window: 256,
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SEATLEDGER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Ed25519 signing key (PKCS#8 file). Created there if missing; without
    /// this flag the key is generated on first start and kept in the database.
    #[arg(long, env = "SEATLEDGER_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// Redis for hot seat counts (absent: in memory).
    #[arg(long, env = "SEATLEDGER_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key seatledger writes.
    #[arg(long, env = "SEATLEDGER_REDIS_PREFIX", default_value = "seatledger:")]
    pub redis_prefix: String,
    #[command(flatten)]
    pub nats: NatsArgs,
    /// `open`: anyone who reaches the server can register an organization
    /// (`POST /api/v1/auth/register`); `closed`: register answers 403 and
    /// the operator creates owners with `seatledger admin create-owner`.
    #[arg(long, env = "SEATLEDGER_REGISTRATION", default_value = "open", value_parser = ["open", "closed"])]
    pub registration: String,
    /// Seconds a request may take before it is answered 503
    /// `request_timeout` (with Retry-After) instead of hanging.
    #[arg(long, env = "SEATLEDGER_REQUEST_TIMEOUT_S", default_value_t = 30.0, value_parser = parse_request_timeout)]
    pub request_timeout_s: f64,
    /// Seconds between rounds of the zombie reaper, which expires leases
    /// whose clients stopped heartbeating (within TTL + this interval).
    #[arg(long, env = "SEATLEDGER_REAPER_INTERVAL_S", default_value_t = 30.0, value_parser = parse_reaper_interval)]
    pub reaper_interval_s: f64,
}

fn parse_reaper_interval(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && (0.01..=3600.0).contains(&seconds) => Ok(seconds),
        _ => Err("expected seconds, from 0.01 to 3600".into()),
    }
}

fn parse_request_timeout(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0 => Ok(seconds),
        _ => Err("expected seconds, more than 0 and at most 3600".into()),
    }
}

/// `url` with any password replaced by `***`.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted_url("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redacted_url("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redacted_url("sqlite:seatledger.db"), "sqlite:seatledger.db");
    }
}
