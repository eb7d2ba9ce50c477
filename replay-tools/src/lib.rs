//! seatledger-replay: auditor tools. `verify` proves the log was not
//! altered: gap-free positions, every `prev_hash` link and every hash
//! recomputed from the event's canonical bytes, and every signed checkpoint
//! verified with the ledger's public key against the chain.
//!
//! Reading and verifying overlap: one task reads the next batch while the
//! caller verifies the current one.
#![forbid(unsafe_code)]

use seatledger_ledger::Store;
use seatledger_schema::{verify_chain, ChainError, ChainHash, Checkpoint, CheckpointError};
use std::collections::HashMap;

/// Events read per batch.
pub const VERIFY_BATCH: i64 = 10_000;

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
    let reader = store.clone();
    let mut next = tokio::spawn(async move { reader.read_after(partition, 0, VERIFY_BATCH).await });
    loop {
        let batch = next
            .await
            .map_err(|e| seatledger_ledger::StoreError::Corrupt(e.to_string()))??;
        if batch.is_empty() {
            break;
        }
        let last = batch.last().map_or(position, |event| event.position);
        let reader = store.clone();
        next = tokio::spawn(async move { reader.read_after(partition, last, VERIFY_BATCH).await });
        for event in &batch {
            (position, hash) = verify_chain(position, hash, std::slice::from_ref(event))?;
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
