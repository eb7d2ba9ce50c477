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
    /// NATS with JetStream for event delivery (absent: in-process bus).
    #[arg(long, env = "SEATLEDGER_NATS_URL")]
    pub nats_url: Option<String>,
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
