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

/// Event delivery to NATS JetStream (docs/event-stream.md).
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

/// The server's keys (see `keyring`): files outside the database.
#[derive(Args, Clone, Debug, Default)]
pub struct KeyArgs {
    /// The ledger key, which signs checkpoints (Ed25519 PKCS#8 file,
    /// created there with mode 0600 if missing). Required on PostgreSQL;
    /// on SQLite the default is `<database file>.ledger.key`.
    #[arg(long, env = "SEATLEDGER_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// The seat-token key, which signs seat tokens (a file like
    /// `--signing-key`, holding another key). Required on PostgreSQL; on
    /// SQLite the default is `<database file>.token.key`.
    #[arg(long, env = "SEATLEDGER_TOKEN_SIGNING_KEY")]
    pub token_signing_key: Option<PathBuf>,
    /// Ledger keys used before a rotation (PKCS#8 or `KEY_ID:BASE64URL`
    /// files), listed as retired so older checkpoints still verify.
    #[arg(
        long = "retired-signing-key",
        env = "SEATLEDGER_RETIRED_SIGNING_KEYS",
        value_delimiter = ','
    )]
    pub retired_signing_keys: Vec<PathBuf>,
    /// Seat-token keys used before a rotation, listed as retired so tokens
    /// they signed verify until they expire.
    #[arg(
        long = "retired-token-key",
        env = "SEATLEDGER_RETIRED_TOKEN_KEYS",
        value_delimiter = ','
    )]
    pub retired_token_keys: Vec<PathBuf>,
}

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SEATLEDGER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Redis for hot seat counts (absent: in memory).
    #[arg(long, env = "SEATLEDGER_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key seatledger writes.
    #[arg(long, env = "SEATLEDGER_REDIS_PREFIX", default_value = "seatledger:")]
    pub redis_prefix: String,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    /// `open`: anyone who reaches the server can register an organization
    /// (`POST /api/v1/auth/register`); `closed`: register answers 403 and
    /// the operator creates owners with `seatledger admin create-owner`.
    #[arg(long, env = "SEATLEDGER_REGISTRATION", default_value = "open", value_parser = ["open", "closed"])]
    pub registration: String,
    /// Seconds an API token lives (login may ask for less); then it is 401
    /// `token_expired`. Default 30 days.
    #[arg(long, env = "SEATLEDGER_TOKEN_TTL_S", default_value_t = 2_592_000, value_parser = clap::value_parser!(u64).range(60..=31_536_000))]
    pub token_ttl_s: u64,
    /// Seconds a request may take before it is answered 503
    /// `request_timeout` (with Retry-After) instead of hanging.
    #[arg(long, env = "SEATLEDGER_REQUEST_TIMEOUT_S", default_value_t = 30.0, value_parser = parse_request_timeout)]
    pub request_timeout_s: f64,
    /// Seconds between rounds of the zombie reaper, which expires leases
    /// whose clients stopped heartbeating (within TTL + this interval).
    #[arg(long, env = "SEATLEDGER_REAPER_INTERVAL_S", default_value_t = 30.0, value_parser = parse_reaper_interval)]
    pub reaper_interval_s: f64,
    /// Seat operations (acquire, heartbeat, release) one API token may make
    /// per second, with a burst of as many; beyond, 429 `too_many_requests`
    /// with Retry-After. Per replica. 0: unlimited. The default covers a
    /// site of 500,000 machines heartbeating every 6 minutes through one
    /// client token.
    #[arg(
        long,
        env = "SEATLEDGER_RATE_LIMIT_SEAT_OPS_PER_S",
        default_value_t = 2_000
    )]
    pub rate_limit_seat_ops_per_s: u32,
    /// Events that stay one row each at the head of the log; older, signed
    /// ones are compacted into blocks (docs/design.md §3). 0: no compaction.
    #[arg(long, env = "SEATLEDGER_COMPACT_KEEP_EVENTS", default_value_t = seatledger_schema::limits::COMPACT_KEEP_EVENTS, value_parser = clap::value_parser!(i64).range(0..=1_000_000_000))]
    pub compact_keep_events: i64,
    /// Events per compacted block at most.
    #[arg(long, env = "SEATLEDGER_COMPACT_BLOCK_EVENTS", default_value_t = seatledger_schema::limits::COMPACT_BLOCK_EVENTS, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub compact_block_events: i64,
    /// Events a segment of the log holds before it is sealed at the next
    /// signed checkpoint; sealed segments are what `seatledger-replay
    /// archive` writes and `seatledger admin prune` removes (docs/design.md
    /// §3). The default is about a day of a 10k-seat customer. Segments are
    /// sealed by the compactor: none with --compact-keep-events 0.
    #[arg(long, env = "SEATLEDGER_SEGMENT_EVENTS", default_value_t = seatledger_schema::limits::SEGMENT_EVENTS, value_parser = clap::value_parser!(i64).range(1..=1_000_000_000_000))]
    pub segment_events: i64,
}

/// Limits against slow and abusive clients (see `seatledger_api::http`).
#[derive(Args, Clone, Debug)]
pub struct HttpArgs {
    /// Seconds a connection has to send a whole request head, from when it
    /// is accepted or its previous response was sent (so also how long an
    /// idle keep-alive connection stays open); then it is closed.
    #[arg(long, env = "SEATLEDGER_HEADER_READ_TIMEOUT_S", default_value_t = 10.0, value_parser = parse_http_timeout)]
    pub header_read_timeout_s: f64,
    /// Seconds a request body has to arrive whole after its head; then the
    /// request is answered 408 `body_timeout` and the connection closed.
    #[arg(long, env = "SEATLEDGER_BODY_READ_TIMEOUT_S", default_value_t = 10.0, value_parser = parse_http_timeout)]
    pub body_read_timeout_s: f64,
    /// Connections served at once; more wait in the listen backlog until
    /// one closes. Keep it under the process's open-file limit.
    #[arg(long, env = "SEATLEDGER_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
}

impl Default for HttpArgs {
    fn default() -> Self {
        HttpArgs {
            header_read_timeout_s: 10.0,
            body_read_timeout_s: 10.0,
            max_connections: 4096,
        }
    }
}

impl HttpArgs {
    pub fn limits(&self) -> crate::http::HttpLimits {
        crate::http::HttpLimits {
            header_read_timeout: std::time::Duration::from_secs_f64(self.header_read_timeout_s),
            body_read_timeout: std::time::Duration::from_secs_f64(self.body_read_timeout_s),
            max_connections: self.max_connections as usize,
        }
    }
}

fn parse_http_timeout(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && (0.1..=3600.0).contains(&seconds) => Ok(seconds),
        _ => Err("expected seconds, from 0.1 to 3600".into()),
    }
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

impl ServeArgs {
    /// The effective configuration as `key = value` lines of a config
    /// file (keys are the flags without `--`; passwords in URLs redacted).
    /// Long because it lists every option once, in the order `--help`
    /// gives them.
    pub fn to_toml(&self) -> String {
        let quoted = |text: &str| format!("{text:?}");
        let optional = |value: Option<String>| match value {
            Some(value) => quoted(&value),
            None => "# (not set)".to_owned(),
        };
        let lines = [
            ("listen", quoted(&self.listen.to_string())),
            (
                "database-url",
                quoted(&redacted_url(&self.database.database_url)),
            ),
            (
                "signing-key",
                optional(
                    self.keys
                        .signing_key
                        .as_ref()
                        .map(|path| path.display().to_string()),
                ),
            ),
            (
                "token-signing-key",
                optional(
                    self.keys
                        .token_signing_key
                        .as_ref()
                        .map(|path| path.display().to_string()),
                ),
            ),
            (
                "retired-signing-key",
                path_list(&self.keys.retired_signing_keys),
            ),
            (
                "retired-token-key",
                path_list(&self.keys.retired_token_keys),
            ),
            (
                "redis-url",
                optional(self.redis_url.as_deref().map(redacted_url)),
            ),
            ("redis-prefix", quoted(&self.redis_prefix)),
            (
                "nats-url",
                optional(self.nats.url.as_deref().map(redacted_url)),
            ),
            ("nats-stream", quoted(&self.nats.stream)),
            ("nats-subject-prefix", quoted(&self.nats.subject_prefix)),
            ("nats-replicas", self.nats.replicas.to_string()),
            ("nats-max-age-s", self.nats.max_age_s.to_string()),
            ("nats-window", self.nats.window.to_string()),
            ("registration", quoted(&self.registration)),
            ("token-ttl-s", self.token_ttl_s.to_string()),
            ("request-timeout-s", format!("{:?}", self.request_timeout_s)),
            ("reaper-interval-s", format!("{:?}", self.reaper_interval_s)),
            (
                "header-read-timeout-s",
                format!("{:?}", self.http.header_read_timeout_s),
            ),
            (
                "body-read-timeout-s",
                format!("{:?}", self.http.body_read_timeout_s),
            ),
            ("max-connections", self.http.max_connections.to_string()),
            (
                "rate-limit-seat-ops-per-s",
                self.rate_limit_seat_ops_per_s.to_string(),
            ),
            ("compact-keep-events", self.compact_keep_events.to_string()),
            (
                "compact-block-events",
                self.compact_block_events.to_string(),
            ),
            ("segment-events", self.segment_events.to_string()),
        ];
        lines
            .iter()
            .map(|(key, value)| {
                if value.starts_with('#') {
                    format!("# {key} = {}\n", &value[2..])
                } else {
                    format!("{key} = {value}\n")
                }
            })
            .collect()
    }
}

/// Paths as a TOML array.
fn path_list(paths: &[PathBuf]) -> String {
    let quoted: Vec<String> = paths
        .iter()
        .map(|path| format!("{:?}", path.display().to_string()))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// The values of a config file (`--config FILE`, TOML, keys are the flags
/// without `--`) as defaults of `command`'s arguments, so that a flag wins
/// over its environment variable, which wins over the file, which wins
/// over the built-in default. Applied to every subcommand (and nested
/// subcommand) that has the argument; a key no subcommand has is an error.
pub fn apply_config_file(
    mut command: clap::Command,
    path: &std::path::Path,
) -> Result<clap::Command, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read config file {}: {error}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|error| format!("config file {}: {error}", path.display()))?;
    for (key, value) in table {
        let scalar = |value: toml::Value| match value {
            toml::Value::String(text) => Ok(text),
            toml::Value::Integer(number) => Ok(number.to_string()),
            toml::Value::Float(number) => Ok(number.to_string()),
            toml::Value::Boolean(flag) => Ok(flag.to_string()),
            other => Err(format!(
                "config file {}: {key} must be a string, number, boolean or a list of them, not {}",
                path.display(),
                other.type_str()
            )),
        };
        let values = match value {
            toml::Value::Array(items) => items.into_iter().map(scalar).collect::<Result<_, _>>()?,
            other => vec![scalar(other)?],
        };
        let values: Vec<String> = values;
        let mut found = false;
        command = set_default(command, &key, &values, &mut found);
        if !found {
            return Err(format!(
                "config file {}: unknown key {key:?} (keys are the flags of `seatledger serve` without --)",
                path.display()
            ));
        }
    }
    Ok(command)
}

fn set_default(
    mut command: clap::Command,
    key: &str,
    values: &[String],
    found: &mut bool,
) -> clap::Command {
    let id = command
        .get_arguments()
        .find(|argument| argument.get_long() == Some(key) && argument.get_id() != "config")
        .map(|argument| argument.get_id().clone());
    if let Some(id) = id {
        *found = true;
        command = command.mut_arg(id, |argument| {
            argument.default_values(values.iter().cloned())
        });
    }
    let names: Vec<String> = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_owned())
        .collect();
    for name in names {
        command = command.mut_subcommand(name, |sub| set_default(sub, key, values, found));
    }
    command
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
