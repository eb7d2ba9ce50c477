//! Credentials and look-ups kept beside the log, in ordinary tables: users
//! with password hashes, API token hashes, license key hashes. The log
//! never holds a secret. The same SQL runs on PostgreSQL and SQLite (ids as
//! text, times as microseconds, `$n` placeholders).

use seatledger_ledger::{Store, StoreError};
use seatledger_schema::{Role, Timestamp};
use sqlx::Row;
use uuid::Uuid;

/// Runs `$body` with `$pool` bound to whichever pool the store has.
/// The PostgreSQL channel revocations are announced on (`token:<hex hash>`
/// or `user:<uuid>`), so every replica drops them from its cache at once.
pub const REVOCATIONS_CHANNEL: &str = "seatledger_revocations";

/// Listens for revocations and drops them from `tokens` (the credential
/// cache); reconnects after errors, until the pool closes. Without it (or
/// while it reconnects) a revoked token stays usable on another replica
/// for at most the cache's TTL.
pub async fn listen_revocations(pool: sqlx::PgPool, tokens: std::sync::Arc<crate::state::Caches>) {
    loop {
        match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                if let Err(error) = listener.listen(REVOCATIONS_CHANNEL).await {
                    tracing::warn!(error = %error, "LISTEN for revocations failed");
                } else {
                    while let Ok(notification) = listener.recv().await {
                        let payload = notification.payload();
                        if let Some(hash) = payload.strip_prefix("token:") {
                            let mut key = [0u8; 32];
                            if hex::decode_to_slice(hash, &mut key).is_ok() {
                                tokens.tokens.remove(&key);
                            }
                        } else if let Some(user) = payload.strip_prefix("user:") {
                            if let Ok(user_id) = Uuid::parse_str(user) {
                                tokens
                                    .tokens
                                    .retain(|(principal, _)| principal.user_id != user_id);
                            }
                        }
                    }
                    tracing::warn!("revocation listener lost its connection");
                }
            }
            Err(error) => tracing::warn!(error = %error, "cannot connect the revocation listener"),
        }
        if pool.is_closed() {
            return;
        }
        // Whatever was announced meanwhile was missed: forget every cached
        // token rather than keep a revoked one for the cache's TTL.
        tokens.tokens.retain(|_| false);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Which of a user's tokens to revoke.
#[derive(Clone, Copy, Debug)]
pub enum Revoke<'a> {
    /// This one.
    Token(&'a [u8; 32]),
    /// Every one but this (a password change keeps the calling token).
    AllBut(&'a [u8; 32]),
    All,
}

macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            Store::Postgres($pool) => $body,
            Store::Sqlite($pool, _) => $body,
        }
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Principal {
    pub user_id: Uuid,
    pub org_id: Uuid,
    pub role: Role,
}

#[derive(Clone, Debug)]
pub struct UserRecord {
    pub principal: Principal,
    pub email: String,
    pub password_hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("email already registered")]
    EmailTaken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn store_error(error: sqlx::Error) -> DirectoryError {
    DirectoryError::Store(StoreError::from(error))
}

fn parse_uuid(text: &str) -> Result<Uuid, DirectoryError> {
    Uuid::parse_str(text)
        .map_err(|e| DirectoryError::Store(StoreError::Corrupt(format!("directory id: {e}"))))
}

fn parse_role(text: &str) -> Result<Role, DirectoryError> {
    match text {
        "owner" => Ok(Role::Owner),
        "admin" => Ok(Role::Admin),
        "member" => Ok(Role::Member),
        other => Err(DirectoryError::Store(StoreError::Corrupt(format!(
            "unknown role {other}"
        )))),
    }
}

#[derive(Clone)]
pub struct Directory {
    store: Store,
}

impl Directory {
    pub fn new(store: Store) -> Self {
        Directory { store }
    }

    /// Fails with `EmailTaken` if the (lower-cased) email is registered.
    pub async fn insert_user(&self, user: &UserRecord) -> Result<(), DirectoryError> {
        let result = with_pool!(&self.store, |pool| {
            sqlx::query(
            "INSERT INTO users (user_id, org_id, email, password_hash, role, created_at) VALUES ($1, $2, $3, $4, $5, $6)"
        )
        .bind(user.principal.user_id.to_string())
        .bind(user.principal.org_id.to_string())
        .bind(&user.email)
        .bind(&user.password_hash)
        .bind(user.principal.role.as_str())
        .bind(Timestamp::now().as_micros())
        .execute(pool)
        .await
        .map(drop)
        });
        match result {
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                Err(DirectoryError::EmailTaken)
            }
            other => other.map_err(store_error),
        }
    }

    /// Undoes `insert_user` when the registration could not be recorded.
    pub async fn delete_user(&self, user_id: Uuid) -> Result<(), DirectoryError> {
        with_pool!(&self.store, |pool| sqlx::query(
            "DELETE FROM users WHERE user_id = $1"
        )
        .bind(user_id.to_string())
        .execute(pool)
        .await
        .map(drop))
        .map_err(store_error)
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, DirectoryError> {
        let row = with_pool!(&self.store, |pool| {
            match sqlx::query(
                "SELECT user_id, org_id, email, password_hash, role FROM users WHERE email = $1 AND deactivated_at IS NULL",
            )
            .bind(email)
            .fetch_optional(pool)
            .await
            .map_err(store_error)?
            {
                Some(row) => Some((
                    row.try_get::<String, _>("user_id").map_err(store_error)?,
                    row.try_get::<String, _>("org_id").map_err(store_error)?,
                    row.try_get::<String, _>("email").map_err(store_error)?,
                    row.try_get::<String, _>("password_hash")
                        .map_err(store_error)?,
                    row.try_get::<String, _>("role").map_err(store_error)?,
                )),
                None => None,
            }
        });
        let Some((user_id, org_id, email, password_hash, role)) = row else {
            return Ok(None);
        };
        Ok(Some(UserRecord {
            principal: Principal {
                user_id: parse_uuid(&user_id)?,
                org_id: parse_uuid(&org_id)?,
                role: parse_role(&role)?,
            },
            email,
            password_hash,
        }))
    }

    pub async fn insert_token(
        &self,
        token_hash: &[u8; 32],
        principal: &Principal,
        expires_at: Timestamp,
    ) -> Result<(), DirectoryError> {
        with_pool!(&self.store, |pool| sqlx::query(
            "INSERT INTO api_tokens (token_hash, user_id, org_id, role, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)"
        )
        .bind(token_hash.as_slice())
        .bind(principal.user_id.to_string())
        .bind(principal.org_id.to_string())
        .bind(principal.role.as_str())
        .bind(Timestamp::now().as_micros())
        .bind(expires_at.as_micros())
        .execute(pool)
        .await
        .map(drop))
        .map_err(store_error)
    }

    /// The principal of a live (not revoked) token, with its expiry.
    pub async fn principal_by_token(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<(Principal, Timestamp)>, DirectoryError> {
        let row = with_pool!(&self.store, |pool| {
            match sqlx::query("SELECT user_id, org_id, role, expires_at FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL")
                .bind(token_hash.as_slice())
                .fetch_optional(pool)
                .await
                .map_err(store_error)?
            {
                Some(row) => Some((
                    row.try_get::<String, _>("user_id").map_err(store_error)?,
                    row.try_get::<String, _>("org_id").map_err(store_error)?,
                    row.try_get::<String, _>("role").map_err(store_error)?,
                    row.try_get::<i64, _>("expires_at").map_err(store_error)?,
                )),
                None => None,
            }
        });
        let Some((user_id, org_id, role, expires_at)) = row else {
            return Ok(None);
        };
        let principal = Principal {
            user_id: parse_uuid(&user_id)?,
            org_id: parse_uuid(&org_id)?,
            role: parse_role(&role)?,
        };
        let expires_at = Timestamp::try_from_micros(expires_at).map_err(|_| {
            DirectoryError::Store(StoreError::Corrupt(format!("token expiry {expires_at}")))
        })?;
        Ok(Some((principal, expires_at)))
    }

    /// Revokes tokens of `user_id` (see [`Revoke`]) and tells other
    /// replicas (PostgreSQL `NOTIFY` on [`REVOCATIONS_CHANNEL`]). Returns
    /// how many tokens were revoked.
    pub async fn revoke_tokens(
        &self,
        which: Revoke<'_>,
        user_id: Uuid,
        now: Timestamp,
    ) -> Result<u64, DirectoryError> {
        let (condition, hash) = match which {
            Revoke::Token(hash) => ("AND token_hash = $3", Some(hash)),
            Revoke::AllBut(hash) => ("AND token_hash <> $3", Some(hash)),
            Revoke::All => ("", None),
        };
        let statement = format!(
            "UPDATE api_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL {condition}"
        );
        let revoked = with_pool!(&self.store, |pool| {
            let mut query = sqlx::query(&statement)
                .bind(now.as_micros())
                .bind(user_id.to_string());
            if let Some(hash) = hash {
                query = query.bind(hash.as_slice());
            }
            query.execute(pool).await.map(|done| done.rows_affected())
        })
        .map_err(store_error)?;
        if let Some(pool) = self.store.pg_pool() {
            let payload = match which {
                Revoke::Token(hash) => format!("token:{}", hex::encode(hash)),
                Revoke::AllBut(_) | Revoke::All => format!("user:{user_id}"),
            };
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(REVOCATIONS_CHANNEL)
                .bind(payload)
                .execute(pool)
                .await
                .map_err(store_error)?;
        }
        Ok(revoked)
    }

    /// Replaces a user's password hash.
    pub async fn set_password_hash(
        &self,
        user_id: Uuid,
        password_hash: &str,
    ) -> Result<(), DirectoryError> {
        with_pool!(&self.store, |pool| sqlx::query(
            "UPDATE users SET password_hash = $1 WHERE user_id = $2"
        )
        .bind(password_hash)
        .bind(user_id.to_string())
        .execute(pool)
        .await
        .map(drop))
        .map_err(store_error)
    }

    /// The organization's users by email: (id, email, role, deactivated).
    pub async fn users_of(
        &self,
        org_id: Uuid,
    ) -> Result<Vec<(Uuid, String, Role, bool)>, DirectoryError> {
        let rows = with_pool!(&self.store, |pool| sqlx::query_as::<
            _,
            (String, String, String, Option<i64>),
        >(
            "SELECT user_id, email, role, deactivated_at FROM users WHERE org_id = $1 ORDER BY email"
        )
        .bind(org_id.to_string())
        .fetch_all(pool)
        .await)
        .map_err(store_error)?;
        rows.into_iter()
            .map(|(id, email, role, deactivated)| {
                Ok((
                    parse_uuid(&id)?,
                    email,
                    parse_role(&role)?,
                    deactivated.is_some(),
                ))
            })
            .collect()
    }

    /// Sets a user's role (its tokens carry the old one: revoke them).
    pub async fn set_role(&self, user_id: Uuid, role: Role) -> Result<(), DirectoryError> {
        with_pool!(&self.store, |pool| sqlx::query(
            "UPDATE users SET role = $1 WHERE user_id = $2"
        )
        .bind(role.as_str())
        .bind(user_id.to_string())
        .execute(pool)
        .await
        .map(drop))
        .map_err(store_error)
    }

    /// Marks a user deactivated (login finds them no more); idempotent.
    pub async fn deactivate(&self, user_id: Uuid, now: Timestamp) -> Result<(), DirectoryError> {
        with_pool!(&self.store, |pool| sqlx::query(
            "UPDATE users SET deactivated_at = $1 WHERE user_id = $2 AND deactivated_at IS NULL"
        )
        .bind(now.as_micros())
        .bind(user_id.to_string())
        .execute(pool)
        .await
        .map(drop))
        .map_err(store_error)
    }

    /// A user's email and role.
    pub async fn user_by_id(
        &self,
        user_id: Uuid,
    ) -> Result<Option<(String, String)>, DirectoryError> {
        with_pool!(&self.store, |pool| sqlx::query_as::<_, (String, String)>(
            "SELECT email, role FROM users WHERE user_id = $1"
        )
        .bind(user_id.to_string())
        .fetch_optional(pool)
        .await)
        .map_err(store_error)
    }

    /// Records a license key's hash. Idempotent for the same key and license.
    pub async fn insert_license_key(
        &self,
        key_hash: &[u8; 32],
        license_id: Uuid,
        org_id: Uuid,
    ) -> Result<(), DirectoryError> {
        with_pool!(&self.store, |pool| sqlx::query(
            "INSERT INTO license_keys (key_hash, license_id, org_id, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
        )
        .bind(key_hash.as_slice())
        .bind(license_id.to_string())
        .bind(org_id.to_string())
        .bind(Timestamp::now().as_micros())
        .execute(pool)
        .await
        .map(drop))
        .map_err(store_error)
    }

    /// The license a key opens, and its org.
    pub async fn license_by_key(
        &self,
        key_hash: &[u8; 32],
    ) -> Result<Option<(Uuid, Uuid)>, DirectoryError> {
        let row = with_pool!(&self.store, |pool| {
            match sqlx::query("SELECT license_id, org_id FROM license_keys WHERE key_hash = $1")
                .bind(key_hash.as_slice())
                .fetch_optional(pool)
                .await
                .map_err(store_error)?
            {
                Some(row) => Some((
                    row.try_get::<String, _>("license_id")
                        .map_err(store_error)?,
                    row.try_get::<String, _>("org_id").map_err(store_error)?,
                )),
                None => None,
            }
        });
        let Some((license_id, org_id)) = row else {
            return Ok(None);
        };
        Ok(Some((parse_uuid(&license_id)?, parse_uuid(&org_id)?)))
    }

    /// The org's licenses, oldest first, at most `limit`.
    pub async fn licenses_of(&self, org_id: Uuid, limit: i64) -> Result<Vec<Uuid>, DirectoryError> {
        let ids: Vec<String> = with_pool!(&self.store, |pool| sqlx::query_scalar(
            "SELECT license_id FROM license_keys WHERE org_id = $1 ORDER BY created_at, license_id LIMIT $2"
        )
        .bind(org_id.to_string())
        .bind(limit)
        .fetch_all(pool)
        .await)
        .map_err(store_error)?;
        ids.iter().map(|id| parse_uuid(id)).collect()
    }
}
