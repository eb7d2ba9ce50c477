//! A witness: keeps the ledger's signed heads outside its
//! database, and notices when the ledger stops being consistent with what
//! it signed before.
//!
//! Each poll reads `GET /api/v1/checkpoints/latest` and the checkpoints
//! after the last one kept, and appends the new ones to the store file
//! (JSON Lines, one checkpoint per line, append-only, synced). Before
//! keeping anything it checks, and fails loudly otherwise:
//!
//! - the log did not get shorter (the latest head is not before the last
//!   kept one);
//! - the checkpoint kept last is still served unchanged, and the event at
//!   its position still has its hash (a rewrite of the log at or before it
//!   shows here);
//! - every new checkpoint is signed by a pinned key (when keys are given),
//!   comes after the last kept one, and its event has the signed hash.
//!
//! `verify --trusted-checkpoints FILE` then checks a log (database or
//! export) against every head kept.

use seatledger_schema::{ChainHash, Checkpoint};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// Checkpoints asked for per request.
const PAGE: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The ledger contradicts what it signed before: the reason to run a
    /// witness at all.
    #[error("INCONSISTENT: {0}")]
    Inconsistent(String),
    #[error("cannot reach the ledger: {0}")]
    Unreachable(String),
    #[error("witness store {path}: {error}")]
    Store { path: String, error: String },
}

/// A checkpoint as the API serves it.
#[derive(Debug, Deserialize)]
struct Served {
    #[serde(flatten)]
    checkpoint: Checkpoint,
    event_hash: Option<ChainHash>,
}

#[derive(Debug, Deserialize)]
struct Page {
    checkpoints: Vec<Served>,
}

/// The checkpoints a witness kept in `path` (JSON Lines), in order.
pub fn read_store(path: &Path) -> Result<Vec<Checkpoint>, WitnessError> {
    let store_error = |error: String| WitnessError::Store {
        path: path.display().to_string(),
        error,
    };
    let text = std::fs::read_to_string(path).map_err(|error| store_error(error.to_string()))?;
    let mut kept: Vec<Checkpoint> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let checkpoint: Checkpoint = serde_json::from_str(line)
            .map_err(|error| store_error(format!("line {}: {error}", index + 1)))?;
        if let Some(last) = kept.last() {
            if checkpoint.position <= last.position {
                return Err(store_error(format!(
                    "line {}: position {} does not follow {}",
                    index + 1,
                    checkpoint.position,
                    last.position
                )));
            }
        }
        kept.push(checkpoint);
    }
    Ok(kept)
}

/// A witness of one ledger.
pub struct Witness {
    base: String,
    client: reqwest::Client,
    keys: HashMap<String, Vec<u8>>,
    path: std::path::PathBuf,
    kept: Vec<Checkpoint>,
}

/// What a poll found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Polled {
    /// New heads kept.
    pub new: usize,
    /// Heads kept in all.
    pub kept: usize,
    /// The position of the last head kept (0 without any).
    pub position: i64,
}

impl Witness {
    /// A witness of the ledger at `url` (its base, e.g.
    /// `http://127.0.0.1:8080`) keeping heads in `path` (created if
    /// missing), accepting only heads signed by `keys` (any, if empty).
    pub fn open(
        url: &str,
        path: &Path,
        keys: Vec<(String, Vec<u8>)>,
    ) -> Result<Witness, WitnessError> {
        let kept = if path.exists() {
            read_store(path)?
        } else {
            Vec::new()
        };
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|error| WitnessError::Unreachable(error.to_string()))?;
        Ok(Witness {
            base: url.trim_end_matches('/').to_owned(),
            client,
            keys: keys.into_iter().collect(),
            path: path.to_owned(),
            kept,
        })
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, WitnessError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |error: String| WitnessError::Unreachable(format!("{url}: {error}"));
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|error| unreachable(error.to_string()))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(unreachable(format!("answered {}", response.status())));
        }
        response
            .json()
            .await
            .map(Some)
            .map_err(|error| unreachable(error.to_string()))
    }

    fn check_signature(&self, checkpoint: &Checkpoint) -> Result<(), WitnessError> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let key = self.keys.get(&checkpoint.key_id).ok_or_else(|| {
            WitnessError::Inconsistent(format!(
                "the signed head at position {} is signed by key {}, not by a pinned key",
                checkpoint.position, checkpoint.key_id
            ))
        })?;
        checkpoint
            .verify(&checkpoint.key_id, key)
            .map_err(|error| WitnessError::Inconsistent(error.to_string()))
    }

    /// One round: check the ledger against the heads kept, then keep the
    /// new ones.
    pub async fn poll(&mut self) -> Result<Polled, WitnessError> {
        let last = self.kept.last().cloned();
        if let Some(last) = &last {
            self.check_kept(last).await?;
        }
        let mut after = last.as_ref().map_or(0, |c| c.position);
        let mut new = Vec::new();
        loop {
            let page: Page = self
                .get(&format!("/api/v1/checkpoints?after={after}&limit={PAGE}"))
                .await?
                .unwrap_or(Page {
                    checkpoints: Vec::new(),
                });
            let full = page.checkpoints.len() == PAGE;
            for served in page.checkpoints {
                let checkpoint = served.checkpoint;
                if checkpoint.position <= after {
                    return Err(WitnessError::Inconsistent(format!(
                        "checkpoint at position {} served after position {after}",
                        checkpoint.position
                    )));
                }
                self.check_signature(&checkpoint)?;
                if served.event_hash != Some(checkpoint.hash) {
                    return Err(WitnessError::Inconsistent(format!(
                        "the checkpoint at position {} signs hash {}, but the event there has {}",
                        checkpoint.position,
                        checkpoint.hash,
                        served
                            .event_hash
                            .map_or("no event".to_owned(), |hash| hash.to_string())
                    )));
                }
                after = checkpoint.position;
                new.push(checkpoint);
            }
            if !full {
                break;
            }
        }
        if !new.is_empty() {
            self.append(&new)?;
        }
        Ok(Polled {
            new: new.len(),
            kept: self.kept.len(),
            position: self.kept.last().map_or(0, |c| c.position),
        })
    }

    /// The ledger still serves the last head this witness kept, unchanged,
    /// and its log did not get shorter.
    async fn check_kept(&self, last: &Checkpoint) -> Result<(), WitnessError> {
        let latest: Option<Served> = self.get("/api/v1/checkpoints/latest").await?;
        let Some(latest) = &latest else {
            return Err(WitnessError::Inconsistent(format!(
                "the ledger serves no checkpoint, but this witness kept one at position {}",
                last.position
            )));
        };
        if latest.checkpoint.position < last.position {
            return Err(WitnessError::Inconsistent(format!(
                "the log got shorter: its latest signed head is at position {}, but this witness kept one at position {}",
                latest.checkpoint.position, last.position
            )));
        }
        let page: Page = self
            .get(&format!(
                "/api/v1/checkpoints?after={}&limit=1",
                last.position - 1
            ))
            .await?
            .unwrap_or(Page {
                checkpoints: Vec::new(),
            });
        match page.checkpoints.first() {
            Some(served) if served.checkpoint == *last => {
                if served.event_hash != Some(last.hash) {
                    return Err(WitnessError::Inconsistent(format!(
                        "the event at position {} no longer has the hash {} that was signed there (it has {})",
                        last.position,
                        last.hash,
                        served
                            .event_hash
                            .map_or("no event".to_owned(), |hash| hash.to_string())
                    )));
                }
            }
            Some(served) if served.checkpoint.position == last.position => {
                return Err(WitnessError::Inconsistent(format!(
                    "the signed head at position {} changed: hash {} signed at {} became hash {} signed at {}",
                    last.position,
                    last.hash,
                    last.signed_at,
                    served.checkpoint.hash,
                    served.checkpoint.signed_at
                )));
            }
            _ => {
                return Err(WitnessError::Inconsistent(format!(
                    "the signed head at position {} that this witness kept is gone from the ledger",
                    last.position
                )))
            }
        }
        Ok(())
    }

    fn append(&mut self, new: &[Checkpoint]) -> Result<(), WitnessError> {
        let store_error = |error: std::io::Error| WitnessError::Store {
            path: self.path.display().to_string(),
            error: error.to_string(),
        };
        let mut text = String::new();
        for checkpoint in new {
            let line = serde_json::to_string(checkpoint)
                .map_err(|error| store_error(std::io::Error::other(error)))?;
            text.push_str(&line);
            text.push('\n');
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(store_error)?;
        file.write_all(text.as_bytes()).map_err(store_error)?;
        file.sync_all().map_err(store_error)?;
        self.kept.extend_from_slice(new);
        Ok(())
    }
}
