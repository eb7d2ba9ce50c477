//! The server's keys (docs/design.md §6): the **ledger key** signs
//! checkpoints, the **token key** signs seat tokens, and neither lives in
//! the log's database, so whoever holds the database can neither re-sign
//! the log nor mint seat tokens.
//!
//! Where each key comes from, first match wins:
//!
//! | key | 1 | 2 | 3 |
//! |---|---|---|---|
//! | ledger | `--signing-key FILE` | a key left in the `signing_keys` table by an older version (legacy, warned) | SQLite: `<database file>.ledger.key`; PostgreSQL: an error |
//! | token | `--token-signing-key FILE` | SQLite: `<database file>.token.key` | PostgreSQL: the legacy key if there is one (warned), else an error |
//!
//! Key files are PKCS#8 and are created (mode 0600) when missing, so a
//! first start needs only the paths; replicas share the files like any
//! other secret. Retired keys (`--retired-signing-key`,
//! `--retired-token-key`: a PKCS#8 file or a `KEY_ID:BASE64URL` public key)
//! are listed at `GET /api/v1/keys` with status `retired`, so tokens and
//! checkpoints signed before a rotation still verify.

use crate::config::KeyArgs;
use anyhow::Context;
use seatledger_ledger::{SigningKey, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Signs checkpoints of the log.
    Ledger,
    /// Signs seat tokens.
    Token,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Ledger => "ledger",
            Purpose::Token => "token",
        }
    }
}

/// A public key as `GET /api/v1/keys` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedKey {
    pub key_id: String,
    pub public_key: Vec<u8>,
    pub purpose: Purpose,
    pub active: bool,
}

/// The keys a server signs with, and the public keys it lists.
#[derive(Clone, Debug)]
pub struct KeyRing {
    pub ledger: Arc<SigningKey>,
    pub token: Arc<SigningKey>,
    pub listed: Vec<ListedKey>,
    /// The ledger key came from the database (see [`export_legacy_key`]).
    pub legacy: bool,
}

/// `<database file>.<suffix>` for a SQLite file URL; `None` for PostgreSQL
/// and in-memory SQLite.
pub fn beside_database(database_url: &str, suffix: &str) -> Option<PathBuf> {
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        return None;
    }
    let path = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
        .unwrap_or(database_url);
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path.contains(":memory:") {
        return None;
    }
    Some(PathBuf::from(format!("{path}.{suffix}")))
}

pub const LEDGER_KEY_SUFFIX: &str = "ledger.key";
pub const TOKEN_KEY_SUFFIX: &str = "token.key";

/// Loads the ledger and token keys of a server on `store` (see the module
/// docs for where each comes from).
pub async fn load(store: &Store, database_url: &str, args: &KeyArgs) -> anyhow::Result<KeyRing> {
    let legacy = store
        .stored_signing_key()
        .await
        .context("cannot look for a key in the database")?
        .map(|document| SigningKey::from_pkcs8(&document))
        .transpose()
        .context("the key in the signing_keys table")?
        .map(Arc::new);
    let from_file = |path: &Path, what: &str| {
        SigningKey::from_file(path)
            .map(Arc::new)
            .with_context(|| format!("cannot load the {what} from {}", path.display()))
    };
    let mut used_legacy = false;
    let ledger = match (&args.signing_key, &legacy) {
        (Some(path), _) => from_file(path, "ledger signing key")?,
        (None, Some(key)) => {
            used_legacy = true;
            key.clone()
        }
        (None, None) => match beside_database(database_url, LEDGER_KEY_SUFFIX) {
            Some(path) => from_file(&path, "ledger signing key")?,
            None if store.pg_pool().is_some() => anyhow::bail!(
                "on PostgreSQL the ledger key must be given: --signing-key FILE (or \
                 SEATLEDGER_SIGNING_KEY; created there if missing, share it between replicas)"
            ),
            None => Arc::new(SigningKey::generate()?),
        },
    };
    let token = match &args.token_signing_key {
        Some(path) => from_file(path, "token signing key")?,
        None => match beside_database(database_url, TOKEN_KEY_SUFFIX) {
            Some(path) => from_file(&path, "token signing key")?,
            None => match (&legacy, store.pg_pool().is_some()) {
                (Some(key), true) => {
                    used_legacy = true;
                    key.clone()
                }
                (None, true) => anyhow::bail!(
                    "on PostgreSQL the seat-token key must be given: --token-signing-key FILE \
                     (or SEATLEDGER_TOKEN_SIGNING_KEY; created there if missing; not the \
                     --signing-key file)"
                ),
                (_, false) => Arc::new(SigningKey::generate()?),
            },
        },
    };
    if used_legacy {
        warn_legacy(legacy.as_deref());
    }
    anyhow::ensure!(
        !Arc::ptr_eq(&ledger, &token) && ledger.key_id() != token.key_id() || used_legacy,
        "--signing-key and --token-signing-key hold the same key ({}): give each purpose a key of its own",
        ledger.key_id()
    );
    let listed = listed_keys(&ledger, &token, legacy.as_deref(), args)?;
    Ok(KeyRing {
        ledger,
        token,
        listed,
        legacy: used_legacy,
    })
}

fn warn_legacy(legacy: Option<&SigningKey>) {
    tracing::warn!(
        key_id = legacy.map(|key| key.key_id()),
        "the signing key is kept in the database, where whoever reads the database can \
         re-sign the log and mint seat tokens: move it out with `seatledger admin \
         export-key --to FILE`, then start with --signing-key FILE and a new \
         --token-signing-key FILE"
    );
}

/// Every key `/api/v1/keys` lists: the two in use, a legacy key's tokens
/// (they still verify until they expire), and the retired key files.
fn listed_keys(
    ledger: &SigningKey,
    token: &SigningKey,
    legacy: Option<&SigningKey>,
    args: &KeyArgs,
) -> anyhow::Result<Vec<ListedKey>> {
    let mut keys = vec![
        listed(ledger, Purpose::Ledger),
        listed(token, Purpose::Token),
    ];
    if let Some(key) = legacy.filter(|key| key.key_id() != token.key_id()) {
        keys.push(ListedKey {
            active: false,
            ..listed(key, Purpose::Token)
        });
    }
    for (paths, purpose) in [
        (&args.retired_signing_keys, Purpose::Ledger),
        (&args.retired_token_keys, Purpose::Token),
    ] {
        for path in paths {
            let (key_id, public_key) = read_public_key(path)?;
            if !keys
                .iter()
                .any(|key| key.key_id == key_id && key.purpose == purpose)
            {
                keys.push(ListedKey {
                    key_id,
                    public_key,
                    purpose,
                    active: false,
                });
            }
        }
    }
    Ok(keys)
}

fn listed(key: &SigningKey, purpose: Purpose) -> ListedKey {
    ListedKey {
        key_id: key.key_id().to_owned(),
        public_key: key.public_key().to_vec(),
        purpose,
        active: true,
    }
}

/// A retired key's public half, from a PKCS#8 file or a file holding
/// `KEY_ID:BASE64URL`.
fn read_public_key(path: &Path) -> anyhow::Result<(String, Vec<u8>)> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read key file {}", path.display()))?;
    if let Ok(key) = SigningKey::from_pkcs8(&bytes) {
        return Ok((key.key_id().to_owned(), key.public_key().to_vec()));
    }
    let text = String::from_utf8_lossy(&bytes);
    seatledger_schema::parse_pinned_key(&text).map_err(|error| {
        anyhow::anyhow!(
            "{}: neither a PKCS#8 key nor KEY_ID:BASE64URL ({error})",
            path.display()
        )
    })
}

/// Moves the key an older version kept in the `signing_keys` table to a
/// new file (mode 0600, synced) and deletes it from the table. Returns
/// the key's id, or `None` when the table holds no key.
pub async fn export_legacy_key(store: &Store, to: &Path) -> anyhow::Result<Option<String>> {
    let Some(document) = store.stored_signing_key().await? else {
        return Ok(None);
    };
    let key = SigningKey::from_pkcs8(&document)?;
    SigningKey::write_new_file(to, &document)
        .with_context(|| format!("cannot write {}", to.display()))?;
    // The file is synced: only now may the database forget the key.
    store.delete_signing_key(key.key_id()).await?;
    Ok(Some(key.key_id().to_owned()))
}
