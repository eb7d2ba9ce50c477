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
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the HTTP API (migrates the event store first).
    Serve(ServeArgs),
    /// Apply the event store's migrations and exit.
    Migrate(DatabaseArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs go to stderr, in colour only on a terminal and without NO_COLOR:
    // a log file or a pipe gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Commands::Serve(args) => seatledger_api::run(args).await,
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
