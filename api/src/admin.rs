//! `seatledger admin`: operator commands that run beside (or without) a
//! server, against the same store: `create-owner` registers an
//! organization and its owner when registration is closed; `export-key`
//! moves a key an older version kept in the database to a file.

use crate::auth::Principal;
use crate::config::KeyArgs;
use crate::directory::Directory;
use crate::error::ApiError;
use crate::routes::auth::{check_password, new_organization, record_user};
use anyhow::Context;
use seatledger_ledger::domain::{Email, Name};
use seatledger_ledger::{Appender, AppenderConfig, CommitNotifier, Store, SystemClock};
use seatledger_schema::Metadata;
use seatledger_schema::Password;
use std::sync::Arc;

/// What `create-owner` needs.
pub struct NewOwner {
    pub email: String,
    pub full_name: String,
    pub company: String,
    pub password: Password,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Registers an organization and its owner in `store` (migrated first),
/// as `POST /api/v1/auth/register` would, whatever the registration
/// policy; recorded with actor `admin-cli`. Returns the owner.
pub async fn create_owner(
    store: Store,
    database_url: &str,
    keys: &KeyArgs,
    owner: NewOwner,
) -> Result<Principal, AdminError> {
    let invalid = |error: ApiError| AdminError::Invalid(error.detail);
    let email = Email::parse(&owner.email).map_err(|e| invalid(e.into()))?;
    let full_name = Name::parse(&owner.full_name).map_err(|e| invalid(e.into()))?;
    let company = Name::parse(&owner.company).map_err(|e| invalid(e.into()))?;
    check_password(&owner.password).map_err(invalid)?;
    let (_, appender, task) = open_ledger(&store, database_url, keys).await?;
    let (principal, command) = new_organization(&email, &full_name, &company);
    let metadata = Metadata {
        actor: Some("admin-cli".to_owned()),
        ..Metadata::default()
    };
    let recorded = record_user(
        &Directory::new(store),
        &appender,
        &principal,
        &email,
        owner.password,
        command,
        metadata,
    )
    .await;
    drop(appender);
    task.await
        .map_err(|e| anyhow::Error::new(e).context("appender task failed"))?;
    recorded.map_err(invalid)?;
    Ok(principal)
}

/// What an admin command that records events starts from: the store
/// migrated, the server's keys, and an appender signing checkpoints with
/// its ledger key (drop the appender, then await the task, to finish).
async fn open_ledger(
    store: &Store,
    database_url: &str,
    keys: &KeyArgs,
) -> Result<
    (
        crate::keyring::KeyRing,
        Appender,
        tokio::task::JoinHandle<()>,
    ),
    AdminError,
> {
    store
        .migrate()
        .await
        .map_err(|e| anyhow::Error::new(e).context("cannot migrate the event store"))?;
    let keys = crate::keyring::load(store, database_url, keys)
        .await
        .context("cannot load the signing keys")?;
    let (appender, task) = Appender::start(
        store.clone(),
        keys.ledger.clone(),
        Arc::new(SystemClock),
        CommitNotifier::default(),
        AppenderConfig::default(),
    );
    Ok((keys, appender, task))
}

/// What `prune` needs.
pub struct PruneRequest {
    pub archive: std::path::PathBuf,
    pub before_position: i64,
}

/// Prunes the archived segments of partition 0 that end at or before
/// `request.before_position` (see [`seatledger_ledger::archive::prune`]):
/// each archive is checked whole, its checkpoints against the ledger keys
/// the server lists (retired ones included), before anything is dropped.
/// Prints a line per segment pruned.
pub async fn prune(
    store: Store,
    database_url: &str,
    keys: &KeyArgs,
    request: PruneRequest,
) -> Result<Vec<seatledger_ledger::archive::Pruned>, AdminError> {
    let (keys, appender, task) = open_ledger(&store, database_url, keys).await?;
    let ledger_keys: Vec<(String, Vec<u8>)> = keys
        .listed
        .iter()
        .filter(|key| key.purpose == crate::keyring::Purpose::Ledger)
        .map(|key| (key.key_id.clone(), key.public_key.clone()))
        .chain(std::iter::once((
            keys.ledger.key_id().to_owned(),
            keys.ledger.public_key().to_vec(),
        )))
        .collect();
    let check = |checkpoint: &seatledger_schema::Checkpoint| -> Result<(), String> {
        match ledger_keys.iter().find(|(id, _)| *id == checkpoint.key_id) {
            Some((id, key)) => checkpoint.verify(id, key).map_err(|e| e.to_string()),
            None => Err(format!(
                "the checkpoint at position {} is signed by key {}, which is not a ledger key of this server",
                checkpoint.position, checkpoint.key_id
            )),
        }
    };
    let pruned = seatledger_ledger::archive::prune(
        &store,
        &appender,
        0,
        &request.archive,
        request.before_position,
        Some(&check),
        |done| {
            println!(
                "pruned segment {} (positions {}..={}): archive {} sha256 {}, recorded at position {}",
                done.segment,
                done.first_position,
                done.last_position,
                done.path.display(),
                seatledger_ledger::archive::hex_of(&done.sha256),
                done.recorded_at_position
            );
        },
    )
    .await;
    drop(appender);
    task.await
        .map_err(|e| anyhow::Error::new(e).context("appender task failed"))?;
    pruned.map_err(|error| match error {
        seatledger_ledger::archive::ArchiveError::Store(error) => {
            AdminError::Other(anyhow::Error::new(error))
        }
        other => AdminError::Invalid(other.to_string()),
    })
}
