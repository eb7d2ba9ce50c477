//! Client tokens: long-lived bearer tokens an owner or admin
//! creates for embedding in a client app. Scope `seats`: acquire, heartbeat
//! and release (see [`crate::auth::SEAT_ROUTES`]); every other
//! authenticated route answers 403. A token may be limited to some of the
//! organization's licenses. Its leases are its own: `SeatAcquired` records
//! `token_id`, with `user_id` set to the token's id, so only the token (or
//! an admin's force-release) ends them and deactivating the admin who
//! created it does not. The directory holds the tokens (like login tokens,
//! never the log: a secret's hash has no place in an append-only history).

use crate::auth::{random_secret, secret_hash, Admin, TOKEN_PREFIX};
use crate::directory::ClientTokenRecord;
use crate::error::{ApiError, ProblemDoc};
use crate::extract::JsonBody;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use seatledger_ledger::domain::Name;
use seatledger_schema::ApiToken;
use seatledger_schema::LicenseId;
use seatledger_schema::{limits, Timestamp};
use seatledger_schema::{OrgId, TokenId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateClientTokenRequest {
    /// What the token is for (shown in the list), e.g. the app's name.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\x00-\x1f\x7f-\x9f\xad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\uffa0\ue000-\uf8ff\ufdd0-\ufdef\ufeff\ufff0-\ufffb\ufffe\uffff\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f\xad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\uffa0\ue000-\uf8ff\ufdd0-\ufdef\ufeff\ufff0-\ufffb\ufffe\uffff]*[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub name: String,
    /// Limits the token to these licenses of the organization; absent, it
    /// may use any of them.
    #[schema(min_items = 1, max_items = 100, value_type = Option<Vec<Uuid>>)]
    pub licenses: Option<Vec<LicenseId>>,
    /// Seconds until the token expires; absent, it lives until revoked.
    #[schema(minimum = 60, maximum = 315_360_000)]
    #[serde(default, deserialize_with = "crate::extract::optional_integral")]
    pub ttl_s: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct ClientToken {
    pub id: Uuid,
    pub name: String,
    pub scope: String,
    /// The licenses it is limited to; null: any of the organization's.
    #[schema(value_type = Option<Vec<Uuid>>)]
    pub licenses: Option<Vec<LicenseId>>,
    /// The owner or admin who created it.
    pub created_by: Uuid,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Null: until revoked.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
}

impl From<ClientTokenRecord> for ClientToken {
    fn from(record: ClientTokenRecord) -> Self {
        ClientToken {
            id: record.token_id.into(),
            name: record.name,
            scope: crate::directory::SCOPE_SEATS.to_owned(),
            licenses: record.licenses,
            created_by: record.created_by.into(),
            created_at: record.created_at,
            expires_at: record.expires_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CreatedClientToken {
    #[serde(flatten)]
    pub token: ClientToken,
    /// The bearer token, shown once: embed it in the client app.
    #[schema(value_type = String)]
    pub api_token: ApiToken,
}

#[derive(Serialize, ToSchema)]
pub struct ClientTokens {
    pub tokens: Vec<ClientToken>,
}

fn invalid(detail: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", detail)
}

/// The licenses a new token is limited to, each checked to be one of the
/// organization's: 404 `license_not_found` otherwise (another org's
/// license is as unknown as none).
async fn parse_licenses(
    state: &AppState,
    org_id: OrgId,
    licenses: Option<Vec<LicenseId>>,
) -> Result<Option<Vec<LicenseId>>, ApiError> {
    let Some(mut licenses) = licenses else {
        return Ok(None);
    };
    if licenses.is_empty() || licenses.len() > limits::CLIENT_TOKEN_LICENSES_MAX {
        return Err(invalid(format!(
            "licenses: 1 to {} license ids, or leave it out for all",
            limits::CLIENT_TOKEN_LICENSES_MAX
        )));
    }
    licenses.sort_unstable();
    licenses.dedup();
    for license_id in &licenses {
        // The key row, not the license's stream: a license holding 100k
        // leases costs the same one-row read as an empty one.
        if state.directory.license_org(*license_id).await? != Some(org_id) {
            return Err(ApiError {
                detail: format!("licenses: no license {license_id} in this organization"),
                ..ApiError::rejection(seatledger_ledger::domain::Rejection::LicenseNotFound)
            });
        }
    }
    Ok(Some(licenses))
}

/// Creates a client token (owner or admin): scope `seats`, optionally
/// limited to licenses and given an expiry. The secret is shown once.
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    operation_id = "create_client_token",
    tag = "tokens",
    security(("bearer" = [])),
    request_body = CreateClientTokenRequest,
    responses(
        (status = 201, body = CreatedClientToken),
        (status = 403, description = "`forbidden` (not an owner or admin, or a client token)", body = ProblemDoc),
        (status = 404, description = "`license_not_found`: one of `licenses` is not a license of the organization", body = ProblemDoc),
        (status = 409, description = "`too_many_client_tokens`: the organization has 1,000 live client tokens", body = ProblemDoc),
        (status = 422, description = "`invalid_request`", body = ProblemDoc)
    )
)]
pub async fn create(
    State(state): State<AppState>,
    Admin(admin): Admin,
    body: JsonBody<CreateClientTokenRequest>,
) -> Result<(StatusCode, Json<CreatedClientToken>), ApiError> {
    let request = body.value;
    let name = Name::parse(&request.name)?;
    let now = state.clock.now();
    let expires_at = match request.ttl_s {
        None => None,
        Some(seconds)
            if (limits::CLIENT_TOKEN_TTL_S_MIN..=limits::CLIENT_TOKEN_TTL_S_MAX)
                .contains(&seconds) =>
        {
            Some(now.plus_seconds(i64::try_from(seconds).unwrap_or(i64::MAX)))
        }
        Some(_) => {
            return Err(invalid(format!(
                "ttl_s: {} to {} seconds, or leave it out for no expiry",
                limits::CLIENT_TOKEN_TTL_S_MIN,
                limits::CLIENT_TOKEN_TTL_S_MAX
            )))
        }
    };
    let licenses = parse_licenses(&state, admin.org_id, request.licenses).await?;
    if state.directory.client_tokens_of(admin.org_id).await?.len()
        >= limits::CLIENT_TOKENS_PER_ORG_MAX
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_client_tokens",
            format!(
                "the organization has {} live client tokens: revoke some first",
                limits::CLIENT_TOKENS_PER_ORG_MAX
            ),
        ));
    }
    let record = ClientTokenRecord {
        token_id: TokenId::now_v7(),
        name: name.as_str().to_owned(),
        created_by: admin.user_id,
        created_at: now,
        expires_at,
        licenses,
    };
    let secret = random_secret(TOKEN_PREFIX)?;
    state
        .directory
        .insert_client_token(&secret_hash(&secret), admin.org_id, &record)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedClientToken {
            token: record.into(),
            api_token: ApiToken::new(secret),
        }),
    ))
}

/// The organization's live client tokens (owner or admin), never their
/// secrets.
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    operation_id = "list_client_tokens",
    tag = "tokens",
    security(("bearer" = [])),
    responses(
        (status = 200, body = ClientTokens),
        (status = 403, description = "`forbidden` (not an owner or admin, or a client token)", body = ProblemDoc)
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Admin(admin): Admin,
) -> Result<Json<ClientTokens>, ApiError> {
    let tokens = state.directory.client_tokens_of(admin.org_id).await?;
    Ok(Json(ClientTokens {
        tokens: tokens.into_iter().map(ClientToken::from).collect(),
    }))
}

/// A client token id in the path; anything else names no token.
pub struct TokenIdPath(pub TokenId);

fn token_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "token_not_found",
        "no such live client token in this organization",
    )
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for TokenIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        crate::extract::path_uuid(parts, state)
            .await
            .map(TokenIdPath)
            .ok_or_else(token_not_found)
    }
}

/// Revokes a client token (owner or admin): refused at once on this
/// replica, and on the others as soon as they hear the PostgreSQL
/// `NOTIFY` (at most the credential cache's 60 s without it). Its live
/// leases stay until released, reclaimed by an admin or reaped.
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    operation_id = "revoke_client_token",
    tag = "tokens",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "the client token")),
    responses(
        (status = 204, description = "revoked"),
        (status = 403, description = "`forbidden` (not an owner or admin, or a client token)", body = ProblemDoc),
        (status = 404, description = "`token_not_found` (or revoked, or of another organization)", body = ProblemDoc)
    )
)]
pub async fn revoke(
    State(state): State<AppState>,
    Admin(admin): Admin,
    TokenIdPath(token_id): TokenIdPath,
) -> Result<StatusCode, ApiError> {
    let hash = state
        .directory
        .revoke_client_token(admin.org_id, token_id, state.clock.now())
        .await?
        .ok_or_else(token_not_found)?;
    state.caches.tokens.remove(&hash);
    Ok(StatusCode::NO_CONTENT)
}
