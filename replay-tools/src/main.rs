//! `seatledger-replay verify`: prove the log was not altered.
#![forbid(unsafe_code)]

use anyhow::Context;
use base64::Engine;
use clap::{Parser, Subcommand};
use seatledger_ledger::{SigningKey, Store};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "seatledger-replay",
    version,
    about = "seatledger auditor tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Verify positions, hash links, hashes and signed checkpoints.
    Verify {
        #[arg(
            long,
            env = "SEATLEDGER_DATABASE_URL",
            default_value = "sqlite:seatledger.db"
        )]
        database_url: String,
        /// The ledger's public key as `KEY_ID:BASE64URL` (from GET /api/v1/keys).
        /// Without it, the key stored in the database is used, which proves
        /// integrity only against accidents, not against whoever holds the database.
        #[arg(long)]
        public_key: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Commands::Verify {
            database_url,
            public_key,
        } => {
            let store = Store::connect(&database_url)
                .await
                .context("cannot open the event store")?;
            let (key_id, key) = match public_key {
                Some(text) => {
                    let (id, encoded) = text
                        .split_once(':')
                        .context("--public-key is KEY_ID:BASE64URL")?;
                    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(encoded)
                        .context("public key")?;
                    (id.to_owned(), bytes)
                }
                None => {
                    let stored = SigningKey::load(None, &store)
                        .await
                        .context("no key in the database")?;
                    (stored.key_id().to_owned(), stored.public_key().to_vec())
                }
            };
            let started = Instant::now();
            let verified = seatledger_replay::verify(&store, 0, (&key_id, &key)).await?;
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "verified {} events and {} signed checkpoints (key {key_id}); head hash {}; {:.0} events/s",
                verified.events,
                verified.checkpoints,
                verified.head_hash,
                verified.events as f64 / seconds.max(1e-9)
            );
            Ok(())
        }
    }
}
