//! `seatledger serve | migrate | admin create-owner`.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use seatledger_api::config::redacted_url;
use seatledger_api::config::KeyArgs;
use seatledger_api::{DatabaseArgs, ServeArgs};

/// jemalloc instead of glibc's allocator: the server allocates per request
/// on every tokio thread and holds large, long-lived states. Same-run
/// measurement (BENCHMARKS.md, "Choices these measurements settled"): 1.32x the seat ops/s at 256
/// clients, p99 39 -> 30 ms, and less RSS with 100k leases on a license;
/// mimalloc was as fast but held 25% more memory.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "seatledger",
    version,
    about = "An event-sourced licensing ledger"
)]
struct Cli {
    /// Log lines as `text` (human-readable) or `json` (one object per line).
    #[arg(long, env = "SEATLEDGER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    log_format: String,
    /// A TOML file of settings, keys named as the flags without `--`
    /// (see seatledger.example.toml); a flag wins over its environment
    /// variable, which wins over the file.
    #[arg(long, env = "SEATLEDGER_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the HTTP API (migrates the event store first).
    Serve(Box<ServeArgs>),
    /// Apply the event store's migrations and exit.
    Migrate(DatabaseArgs),
    /// Print the OpenAPI document the server serves at /openapi.json.
    Openapi,
    /// The configuration `serve` would run with.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Operator commands against the store (with or without a server running).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Prints the effective configuration (flags, environment, config file,
    /// defaults) as a config file, passwords redacted; exits 2 on an error.
    Check(Box<ServeArgs>),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Register an organization and its owner (whatever `--registration`
    /// says). The password is read from a prompt on a terminal, else from
    /// the first line of standard input. Prints the owner's ids.
    CreateOwner {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The same key files the server uses.
        #[command(flatten)]
        keys: KeyArgs,
        #[arg(long)]
        email: String,
        /// The organization's name.
        #[arg(long)]
        company: String,
        /// The owner's name (default: the email).
        #[arg(long)]
        full_name: Option<String>,
    },
    /// Print a key file's public key as `KEY_ID:BASE64URL`, the form
    /// auditors pin (`seatledger-replay verify --public-key`).
    PublicKey {
        /// A PKCS#8 key file (`--signing-key`, `--token-signing-key`).
        #[arg(long)]
        key: std::path::PathBuf,
    },
    /// Remove sealed segments of the log that end at or before
    /// --before-position from the database, once each one's archive (from
    /// `seatledger-replay archive`) in --archive verifies and matches the
    /// database's signed checkpoints. Each prune is recorded in the log as
    /// a LogPruned event. Exits 1, dropping nothing, when an archive is
    /// missing, altered or partial.
    Prune {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The same key files the server uses (the prune is recorded, and
        /// signed, in the log).
        #[command(flatten)]
        keys: KeyArgs,
        /// The directory of archive files.
        #[arg(long)]
        archive: std::path::PathBuf,
        /// Prune the segments that end at or before this position.
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        before_position: i64,
    },
    /// Move the signing key an older version kept in the database
    /// (`signing_keys` table) to a new file (mode 0600), then delete it
    /// from the database. Start the server with `--signing-key FILE` (and a
    /// new `--token-signing-key`, listing the old key as
    /// `--retired-token-key FILE` until the seat tokens it signed expire).
    ExportKey {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The new key file (must not exist). Default on SQLite: the
        /// ledger key file beside the database, which the server then finds
        /// by itself.
        #[arg(long)]
        to: Option<std::path::PathBuf>,
    },
}

/// The command line, with a config file's values (`--config` or
/// `SEATLEDGER_CONFIG`) as defaults below flags and environment.
fn parse_cli() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut path = std::env::var_os("SEATLEDGER_CONFIG").map(std::path::PathBuf::from);
    for (index, arg) in args.iter().enumerate() {
        let text = arg.to_string_lossy();
        if text == "--config" {
            path = args.get(index + 1).map(std::path::PathBuf::from);
        } else if let Some(value) = text.strip_prefix("--config=") {
            path = Some(value.into());
        }
    }
    let mut command = Cli::command();
    if let Some(path) = path {
        command = match seatledger_api::config::apply_config_file(command, &path) {
            Ok(command) => command,
            Err(error) => {
                eprintln!("seatledger: {error}");
                std::process::exit(2);
            }
        };
    }
    let matches = command.get_matches_from(args);
    Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}

/// The password: a prompt without echo on a terminal, else one line of
/// standard input.
fn read_password() -> anyhow::Result<String> {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return rpassword::prompt_password("password for the new owner: ")
            .context("cannot read the password");
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = parse_cli();
    init_logs(&cli.log_format);
    match cli.command {
        Commands::Serve(args) => seatledger_api::run(*args).await,
        Commands::Migrate(args) => {
            open(&args.database_url)
                .await?
                .migrate()
                .await
                .context("migration failed")?;
            println!("migrated {}", redacted_url(&args.database_url));
            Ok(())
        }
        Commands::Openapi => {
            let (_, document) = seatledger_api::routes::api();
            println!("{}", document.to_pretty_json()?);
            Ok(())
        }
        Commands::Config {
            command: ConfigCommand::Check(args),
        } => {
            print!("{}", args.to_toml());
            Ok(())
        }
        Commands::Admin { command } => admin(command).await,
    }
}

/// Logs go to stderr, in colour only on a terminal and without NO_COLOR:
/// a log file or a pipe gets plain text.
fn init_logs(format: &str) {
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    if format == "json" {
        logs.json().init();
    } else {
        logs.with_ansi(colour).init();
    }
}

async fn open(database_url: &str) -> anyhow::Result<seatledger_ledger::Store> {
    seatledger_ledger::Store::connect(database_url)
        .await
        .with_context(|| format!("cannot open {}", redacted_url(database_url)))
}

async fn admin(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::CreateOwner {
            database,
            keys,
            email,
            company,
            full_name,
        } => {
            let owner = seatledger_api::admin::NewOwner {
                full_name: full_name.unwrap_or_else(|| email.clone()),
                email,
                company,
                password: seatledger_schema::Password::new(read_password()?),
            };
            create_owner(&database, &keys, owner).await
        }
        AdminCommand::Prune {
            database,
            keys,
            archive,
            before_position,
        } => {
            let request = seatledger_api::admin::PruneRequest {
                archive,
                before_position,
            };
            prune(&database, &keys, request).await
        }
        AdminCommand::PublicKey { key } => {
            let document =
                std::fs::read(&key).with_context(|| format!("cannot read {}", key.display()))?;
            let key = seatledger_ledger::SigningKey::from_pkcs8(&document)
                .with_context(|| format!("{}", key.display()))?;
            println!("{}", seatledger_schema::pinned_key_text(key.public_key()));
            Ok(())
        }
        AdminCommand::ExportKey { database, to } => export_key(&database, to).await,
    }
}

async fn create_owner(
    database: &DatabaseArgs,
    keys: &KeyArgs,
    owner: seatledger_api::admin::NewOwner,
) -> anyhow::Result<()> {
    let store = open(&database.database_url).await?;
    match seatledger_api::admin::create_owner(store, &database.database_url, keys, owner).await {
        Ok(principal) => {
            println!(
                "created organization {} with owner {}",
                principal.org_id, principal.user_id
            );
            Ok(())
        }
        Err(seatledger_api::admin::AdminError::Invalid(detail)) => {
            eprintln!("seatledger admin create-owner: {detail}");
            std::process::exit(2);
        }
        Err(seatledger_api::admin::AdminError::Other(error)) => Err(error),
    }
}

async fn prune(
    database: &DatabaseArgs,
    keys: &KeyArgs,
    request: seatledger_api::admin::PruneRequest,
) -> anyhow::Result<()> {
    let before_position = request.before_position;
    let store = open(&database.database_url).await?;
    match seatledger_api::admin::prune(store, &database.database_url, keys, request).await {
        Ok(pruned) => {
            if pruned.is_empty() {
                println!(
                    "no archived segment to prune ends at or before position {before_position}"
                );
            }
            Ok(())
        }
        Err(seatledger_api::admin::AdminError::Invalid(detail)) => {
            eprintln!("seatledger admin prune: {detail}; nothing more was pruned");
            std::process::exit(1);
        }
        Err(seatledger_api::admin::AdminError::Other(error)) => Err(error),
    }
}

async fn export_key(database: &DatabaseArgs, to: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let Some(to) = to.or_else(|| {
        seatledger_api::keyring::beside_database(
            &database.database_url,
            seatledger_api::keyring::LEDGER_KEY_SUFFIX,
        )
    }) else {
        eprintln!("seatledger admin export-key: --to FILE is required on PostgreSQL");
        std::process::exit(2);
    };
    let store = open(&database.database_url).await?;
    match seatledger_api::keyring::export_legacy_key(&store, &to).await? {
        Some(key_id) => {
            println!(
                "wrote key {key_id} to {} and deleted it from the database",
                to.display()
            );
            Ok(())
        }
        None => {
            eprintln!("seatledger admin export-key: the database holds no signing key");
            std::process::exit(1);
        }
    }
}
