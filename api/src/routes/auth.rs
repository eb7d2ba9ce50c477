//! Registration and login.

use super::metadata;
use crate::auth::{
    hash_password, random_secret, secret_hash, verify_password, CallingToken, Principal,
    TOKEN_PREFIX,
};
use crate::directory::{Revoke, UserRecord};
use crate::error::{ApiError, ProblemDoc};
use crate::extract::{ClientAddress, JsonBody};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Extension;
use axum::Json;
use seatledger_ledger::domain::{Command, Email, Name, NewUser};
use seatledger_schema::Role;
use seatledger_schema::Timestamp;
use seatledger_schema::{ApiToken, Password};
use seatledger_schema::{OrgId, UserId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub const PASSWORD_LEN_MIN: usize = 8;
pub const PASSWORD_LEN_MAX: usize = 1024;

pub(crate) fn check_password(password: &Password) -> Result<(), ApiError> {
    let length = password.expose().chars().count();
    if !(PASSWORD_LEN_MIN..=PASSWORD_LEN_MAX).contains(&length) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!("password: must be {PASSWORD_LEN_MIN} to {PASSWORD_LEN_MAX} characters"),
        ));
    }
    Ok(())
}

/// Creates a user: a pending credentials row first (its unique email
/// settles races), then `command` records the user in the log, then the
/// row is confirmed; if the event is not recorded the row is removed so
/// the email is free. The steps run in a task of their own, so a request
/// cut short (timeout, closed connection) cannot stop them half-way; a
/// crash between them leaves a pending row, which login settles against
/// the log (no event: no user) and which stops holding its email after
/// [`PENDING_USER_GRACE`](crate::directory::PENDING_USER_GRACE).
pub(crate) async fn create_user(
    state: &AppState,
    principal: &Principal,
    email: &Email,
    password: Password,
    command: Command,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    record_user(
        &state.directory,
        &state.appender,
        principal,
        email,
        password,
        command,
        metadata(Some(principal), headers),
    )
    .await
}

/// [`create_user`] without a server: the directory and appender given.
pub async fn record_user(
    directory: &crate::directory::Directory,
    appender: &seatledger_ledger::Appender,
    principal: &Principal,
    email: &Email,
    password: Password,
    command: Command,
    metadata: seatledger_schema::Metadata,
) -> Result<(), ApiError> {
    let password_hash = hash_password(password).await?;
    let record = UserRecord {
        principal: *principal,
        email: email.as_str().to_owned(),
        password_hash,
    };
    let directory = directory.clone();
    let appender = appender.clone();
    let submission =
        seatledger_ledger::Submission::new(principal.org_id, command).with_metadata(metadata);
    tokio::spawn(async move { write_user(&directory, &appender, &record, submission).await })
        .await
        .map_err(|e| ApiError::internal(&e))?
}

/// The steps of [`create_user`], run to the end by their own task.
async fn write_user(
    directory: &crate::directory::Directory,
    appender: &seatledger_ledger::Appender,
    record: &UserRecord,
    submission: seatledger_ledger::Submission,
) -> Result<(), ApiError> {
    insert_or_take_over(directory, record).await?;
    let recorded = appender.submit(submission).await.map_err(ApiError::from);
    if matches!(&recorded, Ok(result) if result.is_accepted()) {
        // If this fails the row stays pending: login confirms it from
        // the log.
        if let Err(error) = directory.confirm_user(record.principal.user_id).await {
            tracing::warn!(error = %error, "recorded user left pending");
        }
        return Ok(());
    }
    if let Err(error) = directory.delete_user(record.principal.user_id).await {
        tracing::error!(error = %error, "cannot undo a user that was not recorded");
    }
    super::accepted(recorded?)?;
    Ok(())
}

/// Inserts the pending row; if the email's row is pending past the grace
/// period and its user is not in the log, that row was abandoned (a crash
/// between the steps) and is replaced.
async fn insert_or_take_over(
    directory: &crate::directory::Directory,
    record: &UserRecord,
) -> Result<(), ApiError> {
    match directory.insert_user(record).await {
        Err(crate::directory::DirectoryError::EmailTaken) => {}
        other => return other.map_err(ApiError::from),
    }
    let Some(found) = directory.user_by_email(&record.email).await? else {
        return Err(crate::directory::DirectoryError::EmailTaken.into());
    };
    let grace = i64::try_from(crate::directory::PENDING_USER_GRACE.as_secs()).unwrap_or(i64::MAX);
    let abandoned = found
        .pending_since
        .is_some_and(|since| since.plus_seconds(grace) < Timestamp::now());
    if !abandoned {
        return Err(crate::directory::DirectoryError::EmailTaken.into());
    }
    if directory.is_recorded(&found.record.principal).await? {
        directory
            .confirm_user(found.record.principal.user_id)
            .await?;
        return Err(crate::directory::DirectoryError::EmailTaken.into());
    }
    tracing::warn!(user_id = %found.record.principal.user_id, "replacing an abandoned pending user");
    directory
        .delete_user(found.record.principal.user_id)
        .await?;
    directory.insert_user(record).await.map_err(ApiError::from)
}

/// A new organization with its owner: the principal and the command that
/// records both.
pub fn new_organization(email: &Email, full_name: &Name, company: &Name) -> (Principal, Command) {
    let principal = Principal {
        user_id: UserId::now_v7(),
        org_id: OrgId::now_v7(),
        role: Role::Owner,
        client: None,
    };
    let command = Command::RegisterOrganization {
        org_id: principal.org_id,
        name: company.clone(),
        owner: Some(NewUser {
            user_id: principal.user_id,
            email: email.clone(),
            full_name: full_name.clone(),
            role: Role::Owner,
        }),
    };
    (principal, command)
}

/// A new bearer token for `principal`, stored as its hash, living `ttl`
/// (at most the server's `--token-ttl-s`). Returns it and its expiry.
pub(crate) async fn issue_token(
    state: &AppState,
    principal: &Principal,
    ttl: Option<std::time::Duration>,
) -> Result<(String, Timestamp), ApiError> {
    let ttl = ttl.unwrap_or(state.token_ttl).min(state.token_ttl);
    let seconds = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let issued_at = state.clock.now();
    let expires_at = issued_at.plus_seconds(seconds);
    let token = random_secret(TOKEN_PREFIX)?;
    state
        .directory
        .insert_token(&secret_hash(&token), principal, issued_at, expires_at)
        .await?;
    Ok((token, expires_at))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[schema(
        min_length = 3,
        max_length = 254,
        pattern = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^@\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f\xad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\uffa0\ue000-\uf8ff\ufdd0-\ufdef\ufeff\ufff0-\ufffb\ufffe\uffff]+@[^@\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000.\x00-\x1f\x7f-\x9f\xad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\uffa0\ue000-\uf8ff\ufdd0-\ufdef\ufeff\ufff0-\ufffb\ufffe\uffff][^@\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f\xad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\uffa0\ue000-\uf8ff\ufdd0-\ufdef\ufeff\ufff0-\ufffb\ufffe\uffff]*\.[^@\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f\xad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\uffa0\ue000-\uf8ff\ufdd0-\ufdef\ufeff\ufff0-\ufffb\ufffe\uffff]*[^@\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000.\x00-\x1f\x7f-\x9f\xad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\uffa0\ue000-\uf8ff\ufdd0-\ufdef\ufeff\ufff0-\ufffb\ufffe\uffff][\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub email: String,
    #[schema(value_type = String, min_length = 8, max_length = 1024)]
    pub password: Password,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\x00-\x1f\x7f-\x9f\xad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\uffa0\ue000-\uf8ff\ufdd0-\ufdef\ufeff\ufff0-\ufffb\ufffe\uffff\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f\xad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\uffa0\ue000-\uf8ff\ufdd0-\ufdef\ufeff\ufff0-\ufffb\ufffe\uffff]*[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub full_name: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\x00-\x1f\x7f-\x9f\xad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\uffa0\ue000-\uf8ff\ufdd0-\ufdef\ufeff\ufff0-\ufffb\ufffe\uffff\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f\xad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\uffa0\ue000-\uf8ff\ufdd0-\ufdef\ufeff\ufff0-\ufffb\ufffe\uffff]*[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub company_name: String,
}

#[derive(Serialize, ToSchema)]
pub struct OrganizationSummary {
    pub id: Uuid,
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct RegisterResponse {
    /// The new user's id.
    pub id: Uuid,
    pub email: String,
    pub full_name: String,
    pub organization: OrganizationSummary,
    /// Bearer token, shown once.
    #[schema(value_type = String)]
    pub api_token: ApiToken,
    /// When it stops working (401 `token_expired`).
    #[schema(value_type = String, format = DateTime)]
    pub token_expires_at: Timestamp,
}

/// Registers an organization and its owner; answers with the owner's token.
#[utoipa::path(
    post,
    path = "/api/v1/auth/register",
    tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, body = RegisterResponse),
        (status = 403, description = "`registration_closed`: the server runs with `--registration closed`", body = ProblemDoc),
        (status = 429, description = "`too_many_requests`: 20 registrations an hour from this address (Retry-After)", body = ProblemDoc),
        (status = 409, description = "`email_taken`", body = ProblemDoc),
        (status = 422, description = "`invalid_request`", body = ProblemDoc)
    )
)]
pub async fn register(
    State(state): State<AppState>,
    ClientAddress(peer): ClientAddress,
    headers: HeaderMap,
    body: JsonBody<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    if let Some(peer) = peer {
        if let Err(seconds) = state.address_limits.register(peer) {
            return Err(ApiError::too_many_requests(
                seconds,
                format!("too many registrations from this address: try again in {seconds} s"),
            ));
        }
    }
    if !state.registration_open {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "registration_closed",
            "this server does not register organizations; its operator creates owners with `seatledger admin create-owner`",
        ));
    }
    let request = body.value;
    let email = Email::parse(&request.email)?;
    let full_name = Name::parse(&request.full_name)?;
    let company = Name::parse(&request.company_name).map_err(|e| {
        ApiError::from(seatledger_ledger::domain::InvalidField::new(
            "company_name",
            e.message,
        ))
    })?;
    check_password(&request.password)?;
    let (principal, command) = new_organization(&email, &full_name, &company);
    create_user(
        &state,
        &principal,
        &email,
        request.password,
        command,
        &headers,
    )
    .await?;
    let (api_token, token_expires_at) = issue_token(&state, &principal, None).await?;
    Ok((
        StatusCode::CREATED,
        Json(RegisterResponse {
            id: principal.user_id.into(),
            email: email.as_str().to_owned(),
            full_name: full_name.as_str().to_owned(),
            organization: OrganizationSummary {
                id: principal.org_id.into(),
                name: company.as_str().to_owned(),
            },
            api_token: ApiToken::new(api_token),
            token_expires_at,
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(min_length = 1)]
    pub email: String,
    #[schema(value_type = String, min_length = 1)]
    pub password: Password,
    /// Seconds the token should live: at most the server's `--token-ttl-s`
    /// (30 days by default), which is also the default.
    #[schema(minimum = 60, maximum = 31_536_000)]
    #[serde(default, deserialize_with = "crate::extract::optional_integral")]
    pub ttl_s: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    /// A new bearer token, shown once.
    #[schema(value_type = String)]
    pub api_token: ApiToken,
    /// When it stops working (401 `token_expired`): log in or refresh before.
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
}

/// Exchanges email and password for a new bearer token.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, body = LoginResponse),
        (status = 401, description = "`invalid_credentials`", body = ProblemDoc),
        (status = 429, description = "`too_many_requests`: five wrong passwords for this account from this address (or fifty from all addresses, for an address that has not logged in to it before), then delays doubling from 1 s; or 120 attempts a minute from this address (Retry-After)", body = ProblemDoc),
        (status = 422, description = "`invalid_request`", body = ProblemDoc)
    )
)]
pub async fn login(
    State(state): State<AppState>,
    ClientAddress(peer): ClientAddress,
    body: JsonBody<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    if let Some(peer) = peer {
        if let Err(seconds) = state.address_limits.login(peer) {
            return Err(ApiError::too_many_requests(
                seconds,
                format!("too many logins from this address: try again in {seconds} s"),
            ));
        }
    }
    let request = body.value;
    let invalid = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong email or password",
        )
    };
    // Looked up as stored, without today's rules: an address recorded
    // before a rule was added still logs in.
    let account = Email::for_lookup(&request.email);
    let now = state.clock.now();
    if let Err(seconds) = state.login_guard.begin(&account, peer, now) {
        return Err(ApiError::too_many_requests(
            seconds,
            format!("too many wrong passwords for this account: try again in {seconds} s"),
        ));
    }
    let user = if account.contains('@') {
        state.directory.login_user(&account).await?
    } else {
        None
    };
    let stored = user.as_ref().map(|user| user.password_hash.clone());
    if request.password.expose().len() > PASSWORD_LEN_MAX * 4 {
        return Err(invalid());
    }
    state.metrics.login_password_checks.inc();
    if !verify_password(request.password, stored).await {
        return Err(invalid());
    }
    state.login_guard.succeeded(&account, peer, now);
    let user = user.ok_or_else(invalid)?;
    let ttl = match request.ttl_s {
        Some(seconds) if !(TOKEN_TTL_S_MIN..=TOKEN_TTL_S_MAX).contains(&seconds) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("ttl_s: must be {TOKEN_TTL_S_MIN} to {TOKEN_TTL_S_MAX}"),
            ))
        }
        Some(seconds) => Some(std::time::Duration::from_secs(seconds)),
        None => None,
    };
    let (api_token, expires_at) = issue_token(&state, &user.principal, ttl).await?;
    Ok(Json(LoginResponse {
        api_token: ApiToken::new(api_token),
        expires_at,
    }))
}

/// Revokes `which` tokens of `user_id` in the directory (and so on every
/// replica) and drops them from this replica's credential cache at once.
async fn revoke(state: &AppState, which: Revoke<'_>, user_id: UserId) -> Result<u64, ApiError> {
    let revoked = state
        .directory
        .revoke_tokens(which, user_id, state.clock.now())
        .await?;
    match which {
        Revoke::Token(hash) => state.caches.tokens.remove(hash),
        Revoke::AllBut(_) | Revoke::All => state.caches.forget_user(user_id),
    }
    Ok(revoked)
}

/// The calling user's email and role.
async fn user_of(state: &AppState, principal: &Principal) -> Result<(String, String), ApiError> {
    state
        .directory
        .user_by_id(principal.user_id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the token's user no longer exists",
            )
        })
}

/// The shortest token life a login may ask for, in seconds.
pub const TOKEN_TTL_S_MIN: u64 = 60;
/// The largest `ttl_s` a login may ask for (a year, the largest `--token-ttl-s`;
/// the server's own `--token-ttl-s` still caps it).
pub const TOKEN_TTL_S_MAX: u64 = 31_536_000;

/// Revokes the calling token: at once on this replica, and on the others
/// as soon as they hear of it (docs/api.md, "Accounts and tokens").
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "auth",
    security(("bearer" = [])),
    responses((status = 204, description = "the token no longer works"))
)]
pub async fn logout(
    State(state): State<AppState>,
    principal: Principal,
    Extension(token): Extension<CallingToken>,
) -> Result<StatusCode, ApiError> {
    revoke(&state, Revoke::Token(&token.hash), principal.user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct LogoutAllResponse {
    /// Tokens revoked, the calling one included.
    pub revoked: u64,
}

/// Revokes every token of the calling user (every device logged out).
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout-all",
    tag = "auth",
    security(("bearer" = [])),
    responses((status = 200, body = LogoutAllResponse))
)]
pub async fn logout_all(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<LogoutAllResponse>, ApiError> {
    let revoked = revoke(&state, Revoke::All, principal.user_id).await?;
    Ok(Json(LogoutAllResponse { revoked }))
}

/// Exchanges the calling (live) token for a new one with a fresh expiry,
/// and revokes the old one. The new token lives as long as the old one was
/// issued for (a 60 s token refreshes to another 60 s one), capped by the
/// server's `--token-ttl-s`.
#[utoipa::path(
    post,
    path = "/api/v1/auth/refresh",
    tag = "auth",
    security(("bearer" = [])),
    responses((status = 200, body = LoginResponse))
)]
pub async fn refresh(
    State(state): State<AppState>,
    principal: Principal,
    Extension(token): Extension<CallingToken>,
) -> Result<Json<LoginResponse>, ApiError> {
    let lifetime = u64::try_from(token.expires_at.micros_since(token.issued_at))
        .map(|micros| {
            std::time::Duration::from_micros(micros)
                .max(std::time::Duration::from_secs(TOKEN_TTL_S_MIN))
        })
        .ok();
    let (api_token, expires_at) = issue_token(&state, &principal, lifetime).await?;
    revoke(&state, Revoke::Token(&token.hash), principal.user_id).await?;
    Ok(Json(LoginResponse {
        api_token: ApiToken::new(api_token),
        expires_at,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct MeResponse {
    pub id: Uuid,
    pub email: String,
    /// `owner`, `admin` or `member`.
    pub role: String,
    #[schema(value_type = Uuid)]
    pub org_id: OrgId,
    /// When the calling token stops working.
    #[schema(value_type = String, format = DateTime)]
    pub token_expires_at: Timestamp,
}

/// The calling user.
#[utoipa::path(
    get,
    path = "/api/v1/users/me",
    tag = "users",
    security(("bearer" = [])),
    responses((status = 200, body = MeResponse))
)]
pub async fn me(
    State(state): State<AppState>,
    principal: Principal,
    Extension(token): Extension<CallingToken>,
) -> Result<Json<MeResponse>, ApiError> {
    let (email, role) = user_of(&state, &principal).await?;
    Ok(Json(MeResponse {
        id: principal.user_id.into(),
        email,
        role,
        org_id: principal.org_id,
        token_expires_at: token.expires_at,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    #[schema(value_type = String)]
    pub current_password: Password,
    #[schema(value_type = String, min_length = 8, max_length = 1024)]
    pub new_password: Password,
}

/// Changes the calling user's password (the current one is required) and
/// revokes every other token of the user; the calling token keeps working.
#[utoipa::path(
    put,
    path = "/api/v1/users/me/password",
    tag = "users",
    security(("bearer" = [])),
    request_body = PasswordChange,
    responses(
        (status = 204, description = "changed; the user's other tokens are revoked"),
        (status = 401, description = "`invalid_credentials`: the current password is wrong", body = ProblemDoc)
    )
)]
pub async fn change_password(
    State(state): State<AppState>,
    principal: Principal,
    Extension(token): Extension<CallingToken>,
    body: JsonBody<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    let request = body.value;
    check_password(&request.new_password)?;
    let (email, _) = user_of(&state, &principal).await?;
    let stored = state
        .directory
        .user_by_email(&email)
        .await?
        .map(|user| user.record.password_hash);
    if request.current_password.expose().len() > PASSWORD_LEN_MAX * 4
        || !verify_password(request.current_password, stored).await
    {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "the current password is wrong",
        ));
    }
    let password_hash = hash_password(request.new_password).await?;
    state
        .directory
        .set_password_hash(principal.user_id, &password_hash)
        .await?;
    revoke(&state, Revoke::AllBut(&token.hash), principal.user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
