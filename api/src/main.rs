//! `seatledger serve | migrate`.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use seatledger_api::config::redacted_url;
use seatledger_api::{DatabaseArgs, ServeArgs};

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
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the HTTP API (migrates the event store first).
    Serve(Box<ServeArgs>),
    /// Apply the event store's migrations and exit.
    Migrate(DatabaseArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logs go to stderr, in colour only on a terminal and without NO_COLOR:
    // a log file or a pipe gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        logs.with_ansi(colour).init();
    }
    match cli.command {
        Commands::Serve(args) => seatledger_api::run(*args).await,
        Commands::Migrate(args) => {
            let store = seatledger_ledger::Store::connect(&args.database_url)
                .await
                .with_context(|| format!("cannot open {}", redacted_url(&args.database_url)))?;
            store.migrate().await.context("migration failed")?;
            println!("migrated {}", redacted_url(&args.database_url));
            Ok(())
        }
    }
}
