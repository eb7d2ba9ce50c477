//! `seatledger admin`: operator commands that run beside (or without) a
//! server, against the same store: `create-owner` registers an
//! organization and its owner when registration is closed.

use crate::auth::Principal;
use crate::directory::Directory;
use crate::error::ApiError;
use crate::routes::auth::{check_password, new_organization, record_user};
use seatledger_ledger::domain::{Email, Name};
use seatledger_ledger::{Appender, AppenderConfig, CommitNotifier, SigningKey, Store, SystemClock};
use seatledger_schema::Metadata;
use std::path::Path;
use std::sync::Arc;

/// What `create-owner` needs.
pub struct NewOwner {
    pub email: String,
    pub full_name: String,
    pub company: String,
    pub password: String,
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
    signing_key: Option<&Path>,
    owner: NewOwner,
) -> Result<Principal, AdminError> {
    let invalid = |error: ApiError| AdminError::Invalid(error.detail);
    let email = Email::parse(&owner.email).map_err(|e| invalid(e.into()))?;
    let full_name = Name::parse(&owner.full_name).map_err(|e| invalid(e.into()))?;
    let company = Name::parse(&owner.company).map_err(|e| invalid(e.into()))?;
    check_password(&owner.password).map_err(invalid)?;
    store
        .migrate()
        .await
        .map_err(|e| anyhow::Error::new(e).context("cannot migrate the event store"))?;
    let signer = SigningKey::load(signing_key, &store)
        .await
        .map_err(|e| anyhow::Error::new(e).context("cannot load the signing key"))?;
    let (appender, task) = Appender::start(
        store.clone(),
        Arc::new(signer),
        Arc::new(SystemClock),
        CommitNotifier::default(),
        AppenderConfig::default(),
    );
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
