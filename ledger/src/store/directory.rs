//! Credentials and look-ups kept beside the log, in ordinary tables: users
//! with password hashes, API token hashes, license key hashes. The log
//! never holds a secret. The same SQL runs on PostgreSQL and SQLite (ids as
//! text, times as microseconds, `$n` placeholders).

use crate::store::{Store, StoreError};
use seatledger_schema::{LicenseId, OrgId, TokenId, UserId};
use seatledger_schema::{Role, Timestamp};
use sqlx::Row;
use uuid::Uuid;

/// The PostgreSQL channel revocations are announced on (`token:<hex hash>`
/// or `user:<uuid>`), so every replica drops them from its cache at once.
pub const REVOCATIONS_CHANNEL: &str = "seatledger_revocations";

/// A revocation another replica announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoked {
    /// The token with this hash.
    Token([u8; 32]),
    /// Every token of this user.
    User(UserId),
    /// Announcements may have been missed (the listener reconnected):
    /// forget every cached token.
    Unknown,
}

/// Listens for revocations and hands each to `revoked`; reconnects after
/// errors, until the pool closes. Without it (or while it reconnects) a
/// revoked token stays usable on another replica for at most the cache's
/// TTL.
pub async fn listen_revocations(pool: sqlx::PgPool, mut revoked: impl FnMut(Revoked)) {
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
                                revoked(Revoked::Token(key));
                            }
                        } else if let Some(user) = payload.strip_prefix("user:") {
                            if let Ok(user_id) = user.parse() {
                                revoked(Revoked::User(user_id));
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
        // Whatever was announced meanwhile was missed.
        revoked(Revoked::Unknown);
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

/// [`on_pool!`] for a statement that writes: on SQLite it waits for the
/// process's turn to write first ([`Store::write_turn`]; without it, a
/// login under a seat-operation load took up to 0.9 s).
macro_rules! with_write_pool {
    ($store:expr, |$pool:ident| $body:expr) => {{
        let store: &Store = $store;
        let _turn = store.write_turn().await;
        on_pool!(store, |$pool| $body)
    }};
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The user; for a client token, the token's own id (its leases are
    /// the token's, not its creator's).
    pub user_id: UserId,
    pub org_id: OrgId,
    pub role: Role,
    /// Set when the caller is a client token (scope `seats`): its id.
    pub client: Option<TokenId>,
}

/// What a live token grants: who, until when, and for a client token
/// limited to some licenses, which.
#[derive(Clone, Debug)]
pub struct TokenGrant {
    pub principal: Principal,
    /// When the token was issued (its lifetime is `expires_at - issued_at`).
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub licenses: Option<std::sync::Arc<[LicenseId]>>,
}

/// A client token as listed (never its secret).
#[derive(Clone, Debug)]
pub struct ClientTokenRecord {
    pub token_id: TokenId,
    pub name: String,
    pub created_by: UserId,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub licenses: Option<Vec<LicenseId>>,
}

/// The scope of a client token: seat operations only.
pub const SCOPE_SEATS: &str = "seats";

/// How long a pending user row (credentials written, registration event
/// not yet known to be recorded) holds its email before another
/// registration may check the log and take the email over. Longer than
/// any request may last (the request timeout is at most 300 s).
pub const PENDING_USER_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// A user row as found by email: the record and whether it is pending.
#[derive(Clone, Debug)]
pub struct FoundUser {
    pub record: UserRecord,
    /// Set while the registration event is not known to be recorded.
    pub pending_since: Option<Timestamp>,
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

fn parse_uuid<T: From<Uuid>>(text: &str) -> Result<T, DirectoryError> {
    Uuid::parse_str(text)
        .map(T::from)
        .map_err(|e| DirectoryError::Store(StoreError::Corrupt(format!("directory id: {e}"))))
}

fn micros(value: i64) -> Result<Timestamp, DirectoryError> {
    Timestamp::try_from_micros(value)
        .map_err(|_| DirectoryError::Store(StoreError::Corrupt(format!("directory time {value}"))))
}

fn parse_licenses(text: &str) -> Result<Vec<LicenseId>, DirectoryError> {
    serde_json::from_str(text)
        .map_err(|e| DirectoryError::Store(StoreError::Corrupt(format!("token licenses: {e}"))))
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

    /// Writes a pending user row (see [`PENDING_USER_GRACE`]). Fails with
    /// `EmailTaken` if the (normalized) email has a row.
    pub async fn insert_user(&self, user: &UserRecord) -> Result<(), DirectoryError> {
        let now = Timestamp::now().as_micros();
        let result = with_write_pool!(&self.store, |pool| {
            sqlx::query(
            "INSERT INTO users (user_id, org_id, email, password_hash, role, created_at, pending_since) VALUES ($1, $2, $3, $4, $5, $6, $6)"
        )
        .bind(user.principal.user_id.to_string())
        .bind(user.principal.org_id.to_string())
        .bind(&user.email)
        .bind(&user.password_hash)
        .bind(user.principal.role.as_str())
        .bind(now)
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

    /// The user's registration event is recorded: the row is a user.
    pub async fn confirm_user(&self, user_id: UserId) -> Result<(), DirectoryError> {
        with_write_pool!(&self.store, |pool| sqlx::query(
            "UPDATE users SET pending_since = NULL WHERE user_id = $1"
        )
        .bind(user_id.to_string())
        .execute(pool)
        .await
        .map(drop))
        .map_err(store_error)
    }

    /// Undoes `insert_user` when the registration could not be recorded
    /// (only a pending row: a recorded user is never deleted).
    pub async fn delete_user(&self, user_id: UserId) -> Result<(), DirectoryError> {
        with_write_pool!(&self.store, |pool| sqlx::query(
            "DELETE FROM users WHERE user_id = $1 AND pending_since IS NOT NULL"
        )
        .bind(user_id.to_string())
        .execute(pool)
        .await
        .map(drop))
        .map_err(store_error)
    }

    /// Whether the log holds the user's registration (its org stream
    /// knows the user): the truth a pending row is settled by.
    pub async fn is_recorded(&self, principal: &Principal) -> Result<bool, DirectoryError> {
        let (_, state) = self
            .store
            .stream_state(&format!("org-{}", principal.org_id))
            .await?;
        Ok(matches!(
            state,
            crate::domain::StreamState::Org(org) if org.users.contains_key(&principal.user_id)
        ))
    }

    /// A user row by email (deactivated users are not found), pending or
    /// not.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<FoundUser>, DirectoryError> {
        let row = on_pool!(&self.store, |pool| {
            sqlx::query_as::<_, (String, String, String, String, String, Option<i64>)>(
                "SELECT user_id, org_id, email, password_hash, role, pending_since FROM users WHERE email = $1 AND deactivated_at IS NULL",
            )
            .bind(email)
            .fetch_optional(pool)
            .await
            .map_err(store_error)?
        });
        let Some((user_id, org_id, email, password_hash, role, pending_since)) = row else {
            return Ok(None);
        };
        Ok(Some(FoundUser {
            record: UserRecord {
                principal: Principal {
                    user_id: parse_uuid(&user_id)?,
                    org_id: parse_uuid(&org_id)?,
                    role: parse_role(&role)?,
                    client: None,
                },
                email,
                password_hash,
            },
            pending_since: pending_since.map(micros).transpose()?,
        }))
    }

    /// A login user by email: a recorded, active user. A pending row is
    /// settled against the log first (confirmed if its event is there,
    /// else not a user).
    pub async fn login_user(&self, email: &str) -> Result<Option<UserRecord>, DirectoryError> {
        let Some(found) = self.user_by_email(email).await? else {
            return Ok(None);
        };
        if found.pending_since.is_some() {
            if !self.is_recorded(&found.record.principal).await? {
                return Ok(None);
            }
            self.confirm_user(found.record.principal.user_id).await?;
        }
        Ok(Some(found.record))
    }

    pub async fn insert_token(
        &self,
        token_hash: &[u8; 32],
        principal: &Principal,
        issued_at: Timestamp,
        expires_at: Timestamp,
    ) -> Result<(), DirectoryError> {
        with_write_pool!(&self.store, |pool| sqlx::query(
            "INSERT INTO api_tokens (token_hash, user_id, org_id, role, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)"
        )
        .bind(token_hash.as_slice())
        .bind(principal.user_id.to_string())
        .bind(principal.org_id.to_string())
        .bind(principal.role.as_str())
        .bind(issued_at.as_micros())
        .bind(expires_at.as_micros())
        .execute(pool)
        .await
        .map(drop))
        .map_err(store_error)
    }

    /// What a live (not revoked) token grants.
    pub async fn principal_by_token(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<TokenGrant>, DirectoryError> {
        type Row = (
            String,
            String,
            String,
            i64,
            i64,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let row = on_pool!(&self.store, |pool| {
            sqlx::query_as::<_, Row>("SELECT user_id, org_id, role, created_at, expires_at, token_id, scope, licenses FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL")
                .bind(token_hash.as_slice())
                .fetch_optional(pool)
                .await
                .map_err(store_error)?
        });
        let Some((user_id, org_id, role, issued_at, expires_at, token_id, scope, licenses)) = row
        else {
            return Ok(None);
        };
        let client = match (token_id, scope.as_deref()) {
            (Some(token_id), Some(SCOPE_SEATS)) => Some(parse_uuid(&token_id)?),
            (None, None) => None,
            (_, other) => {
                return Err(DirectoryError::Store(StoreError::Corrupt(format!(
                    "token scope {other:?}"
                ))))
            }
        };
        let principal = Principal {
            user_id: parse_uuid(&user_id)?,
            org_id: parse_uuid(&org_id)?,
            role: parse_role(&role)?,
            client,
        };
        Ok(Some(TokenGrant {
            principal,
            issued_at: micros(issued_at)?,
            expires_at: micros(expires_at)?,
            licenses: licenses
                .as_deref()
                .map(parse_licenses)
                .transpose()?
                .map(Into::into),
        }))
    }

    /// Stores a client token (scope `seats`) of `org_id`, created by
    /// `created_by`. `expires_at` None: it lives until revoked (stored as
    /// the end of time, so one expiry check serves every token).
    pub async fn insert_client_token(
        &self,
        token_hash: &[u8; 32],
        org_id: OrgId,
        record: &ClientTokenRecord,
    ) -> Result<(), DirectoryError> {
        let licenses = record
            .licenses
            .as_ref()
            .map(|ids| serde_json::to_string(ids).unwrap_or_default());
        let expires_at = record.expires_at.unwrap_or(Timestamp::MAX);
        with_write_pool!(&self.store, |pool| sqlx::query(
            "INSERT INTO api_tokens (token_hash, user_id, org_id, role, created_at, expires_at, token_id, scope, name, licenses, created_by) VALUES ($1, $2, $3, 'member', $4, $5, $2, $6, $7, $8, $9)"
        )
        .bind(token_hash.as_slice())
        .bind(record.token_id.to_string())
        .bind(org_id.to_string())
        .bind(record.created_at.as_micros())
        .bind(expires_at.as_micros())
        .bind(SCOPE_SEATS)
        .bind(&record.name)
        .bind(licenses)
        .bind(record.created_by.to_string())
        .execute(pool)
        .await
        .map(drop))
        .map_err(store_error)
    }

    /// The org's live client tokens, oldest first.
    pub async fn client_tokens_of(
        &self,
        org_id: OrgId,
    ) -> Result<Vec<ClientTokenRecord>, DirectoryError> {
        type Row = (
            String,
            Option<String>,
            Option<String>,
            i64,
            i64,
            Option<String>,
        );
        let rows = on_pool!(&self.store, |pool| sqlx::query_as::<_, Row>(
            "SELECT token_id, name, created_by, created_at, expires_at, licenses FROM api_tokens WHERE org_id = $1 AND scope = $2 AND revoked_at IS NULL ORDER BY created_at, token_id"
        )
        .bind(org_id.to_string())
        .bind(SCOPE_SEATS)
        .fetch_all(pool)
        .await)
        .map_err(store_error)?;
        rows.into_iter()
            .map(
                |(token_id, name, created_by, created_at, expires_at, licenses)| {
                    let expires_at = micros(expires_at)?;
                    Ok(ClientTokenRecord {
                        token_id: parse_uuid(&token_id)?,
                        name: name.unwrap_or_default(),
                        created_by: parse_uuid(created_by.as_deref().unwrap_or_default())?,
                        created_at: micros(created_at)?,
                        expires_at: (expires_at != Timestamp::MAX).then_some(expires_at),
                        licenses: licenses.as_deref().map(parse_licenses).transpose()?,
                    })
                },
            )
            .collect()
    }

    /// Revokes the org's client token `token_id`; returns its hash if it
    /// was live (tells other replicas, as [`Self::revoke_tokens`] does).
    pub async fn revoke_client_token(
        &self,
        org_id: OrgId,
        token_id: TokenId,
        now: Timestamp,
    ) -> Result<Option<[u8; 32]>, DirectoryError> {
        let hash: Option<Vec<u8>> = with_write_pool!(&self.store, |pool| sqlx::query_scalar(
            "UPDATE api_tokens SET revoked_at = $1 WHERE org_id = $2 AND token_id = $3 AND scope = $4 AND revoked_at IS NULL RETURNING token_hash"
        )
        .bind(now.as_micros())
        .bind(org_id.to_string())
        .bind(token_id.to_string())
        .bind(SCOPE_SEATS)
        .fetch_optional(pool)
        .await)
        .map_err(store_error)?;
        let Some(hash) = hash else {
            return Ok(None);
        };
        let hash: [u8; 32] = hash
            .try_into()
            .map_err(|_| DirectoryError::Store(StoreError::Corrupt("token hash length".into())))?;
        self.announce(&format!("token:{}", hex::encode(hash)))
            .await?;
        Ok(Some(hash))
    }

    /// Tells every replica's revocation listener (PostgreSQL only; one
    /// SQLite server has one cache).
    async fn announce(&self, payload: &str) -> Result<(), DirectoryError> {
        if let Some(pool) = self.store.pg_pool() {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(REVOCATIONS_CHANNEL)
                .bind(payload)
                .execute(pool)
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }

    /// Revokes tokens of `user_id` (see [`Revoke`]) and tells other
    /// replicas (PostgreSQL `NOTIFY` on [`REVOCATIONS_CHANNEL`]). Returns
    /// how many tokens were revoked.
    pub async fn revoke_tokens(
        &self,
        which: Revoke<'_>,
        user_id: UserId,
        now: Timestamp,
    ) -> Result<u64, DirectoryError> {
        let (condition, hash) = match which {
            Revoke::Token(hash) => ("AND token_hash = $3", Some(hash)),
            Revoke::AllBut(hash) => ("AND token_hash <> $3", Some(hash)),
            Revoke::All => ("", None),
        };
        let statement = format!(
            "UPDATE api_tokens SET revoked_at = $1 WHERE user_id = $2 AND token_id IS NULL AND revoked_at IS NULL {condition}"
        );
        let revoked = with_write_pool!(&self.store, |pool| {
            let mut query = sqlx::query(&statement)
                .bind(now.as_micros())
                .bind(user_id.to_string());
            if let Some(hash) = hash {
                query = query.bind(hash.as_slice());
            }
            query.execute(pool).await.map(|done| done.rows_affected())
        })
        .map_err(store_error)?;
        let payload = match which {
            Revoke::Token(hash) => format!("token:{}", hex::encode(hash)),
            Revoke::AllBut(_) | Revoke::All => format!("user:{user_id}"),
        };
        self.announce(&payload).await?;
        Ok(revoked)
    }

    /// Replaces a user's password hash.
    pub async fn set_password_hash(
        &self,
        user_id: UserId,
        password_hash: &str,
    ) -> Result<(), DirectoryError> {
        with_write_pool!(&self.store, |pool| sqlx::query(
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
        org_id: OrgId,
    ) -> Result<Vec<(UserId, String, Role, bool)>, DirectoryError> {
        let rows = on_pool!(&self.store, |pool| sqlx::query_as::<
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
    pub async fn set_role(&self, user_id: UserId, role: Role) -> Result<(), DirectoryError> {
        with_write_pool!(&self.store, |pool| sqlx::query(
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
    pub async fn deactivate(&self, user_id: UserId, now: Timestamp) -> Result<(), DirectoryError> {
        with_write_pool!(&self.store, |pool| sqlx::query(
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
        user_id: UserId,
    ) -> Result<Option<(String, String)>, DirectoryError> {
        on_pool!(&self.store, |pool| sqlx::query_as::<_, (String, String)>(
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
        license_id: LicenseId,
        org_id: OrgId,
    ) -> Result<(), DirectoryError> {
        with_write_pool!(&self.store, |pool| sqlx::query(
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
    ) -> Result<Option<(LicenseId, OrgId)>, DirectoryError> {
        let row = on_pool!(&self.store, |pool| {
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

    /// The org a license belongs to (from its key row; one indexed read,
    /// whatever the license's history holds).
    pub async fn license_org(
        &self,
        license_id: LicenseId,
    ) -> Result<Option<OrgId>, DirectoryError> {
        let org: Option<String> = on_pool!(&self.store, |pool| sqlx::query_scalar(
            "SELECT org_id FROM license_keys WHERE license_id = $1"
        )
        .bind(license_id.to_string())
        .fetch_optional(pool)
        .await)
        .map_err(store_error)?;
        org.as_deref().map(parse_uuid).transpose()
    }

    /// The org's licenses, oldest first, at most `limit`.
    pub async fn licenses_of(
        &self,
        org_id: OrgId,
        limit: i64,
    ) -> Result<Vec<LicenseId>, DirectoryError> {
        let ids: Vec<String> = on_pool!(&self.store, |pool| sqlx::query_scalar(
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
