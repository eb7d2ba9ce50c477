//! seatledger-replay: auditor tools. `verify` proves the log was not
//! altered: gap-free positions, every `prev_hash` link and every hash
//! recomputed from the event's canonical bytes, and every signed checkpoint
//! verified with the ledger's public key against the chain.
//!
//! Reading and verifying overlap: one task reads the next batch while the
//! caller verifies the current one.
#![forbid(unsafe_code)]

use seatledger_ledger::Store;
use seatledger_schema::canonical::expected_hash;
use seatledger_schema::{ChainError, ChainHash, Checkpoint, CheckpointError, RecordedEvent};
use std::collections::HashMap;

/// Events read per batch, and batches read at once.
pub const VERIFY_BATCH: i64 = 10_000;
pub const READS_IN_FLIGHT: usize = 3;

#[derive(Debug)]
pub struct Verified {
    pub events: i64,
    pub head_hash: ChainHash,
    pub checkpoints: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] seatledger_ledger::StoreError),
    #[error("the chain is broken: {0}")]
    Chain(#[from] ChainError),
    #[error("checkpoint at position {position} signs hash {signed} but the chain has {actual}")]
    CheckpointMismatch {
        position: i64,
        signed: ChainHash,
        actual: ChainHash,
    },
    #[error("checkpoint at position {0} is beyond the last event")]
    CheckpointBeyondHead(i64),
    #[error(transparent)]
    Signature(#[from] CheckpointError),
}

/// The position of the first event whose stored hash is not the hash of
/// its content and `prev_hash`, computed on all cores.
fn first_hash_mismatch(events: &[RecordedEvent]) -> Option<i64> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(1);
    let chunk = events.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = events
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .find(|event| expected_hash(event) != event.hash)
                        .map(|e| e.position)
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|worker| worker.join().ok().flatten())
            .min()
    })
}

/// Verifies partition `partition` of `store` from position 0. `key` is the
/// `(key_id, raw Ed25519 public key)` checkpoints must be signed with.
pub async fn verify(
    store: &Store,
    partition: i16,
    key: (&str, &[u8]),
) -> Result<Verified, VerifyError> {
    let checkpoints: HashMap<i64, Checkpoint> = store
        .checkpoints(partition)
        .await?
        .into_iter()
        .map(|c| (c.position, c))
        .collect();
    let mut position = 0i64;
    let mut hash = ChainHash::GENESIS;
    let mut checked = 0usize;
    // Positions are meant to be gap-free (that is what is verified), so the
    // ranges of the next batches are known: keep several reads in flight.
    // A gap or reorder still shows up below, as a position out of sequence.
    let (head_position, _) = store.head(partition).await?;
    let mut pending = std::collections::VecDeque::new();
    let mut next_after = 0i64;
    let mut refill = |pending: &mut std::collections::VecDeque<tokio::task::JoinHandle<_>>| {
        while pending.len() < READS_IN_FLIGHT && next_after < head_position {
            let reader = store.clone();
            let after = next_after;
            pending.push_back(tokio::spawn(async move {
                let through = (after + VERIFY_BATCH).min(head_position);
                reader.read_range(partition, after, through).await
            }));
            next_after += VERIFY_BATCH;
        }
    };
    refill(&mut pending);
    while let Some(next) = pending.pop_front() {
        let batch = next
            .await
            .map_err(|e| seatledger_ledger::StoreError::Corrupt(e.to_string()))??;
        refill(&mut pending);
        if batch.is_empty() {
            continue;
        }
        // Hashes are independent given each event's own `prev_hash`:
        // recompute them on every core, then check positions and links in
        // order (cheap).
        let batch = std::sync::Arc::new(batch);
        let mismatch = tokio::task::spawn_blocking({
            let batch = batch.clone();
            move || first_hash_mismatch(&batch)
        })
        .await
        .map_err(|e| seatledger_ledger::StoreError::Corrupt(e.to_string()))?;
        for event in batch.iter() {
            if event.position != position + 1 {
                return Err(ChainError::PositionGap {
                    position: event.position,
                    expected: position + 1,
                }
                .into());
            }
            if event.prev_hash != hash {
                return Err(ChainError::BrokenLink {
                    position: event.position,
                }
                .into());
            }
            if mismatch == Some(event.position) {
                return Err(ChainError::HashMismatch {
                    position: event.position,
                }
                .into());
            }
            position = event.position;
            hash = event.hash;
            if let Some(checkpoint) = checkpoints.get(&position) {
                if checkpoint.hash != hash {
                    return Err(VerifyError::CheckpointMismatch {
                        position,
                        signed: checkpoint.hash,
                        actual: hash,
                    });
                }
                checkpoint.verify(key.0, key.1)?;
                checked += 1;
            }
        }
    }
    if let Some(beyond) = checkpoints.keys().find(|p| **p > position) {
        return Err(VerifyError::CheckpointBeyondHead(*beyond));
    }
    Ok(Verified {
        events: position,
        head_hash: hash,
        checkpoints: checked,
    })
}
