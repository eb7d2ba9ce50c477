//! Licenses: issue, list, read, change, suspend, reinstate, revoke, and
//! their active sessions. Reads come from the hot seat counts once they
//! include the server's latest commit (read-your-writes), else from the
//! ledger (snapshot + tail); another org's license is 404
//! `license_not_found`.

use super::{accepted, metadata, submit, Idempotency};
use crate::auth::{
    random_secret, secret_from_bytes, secret_hash, Admin, Principal, LICENSE_KEY_PREFIX,
};
use crate::error::{ApiError, ProblemDoc};
use crate::extract::{ApiQuery, IdempotencyKey, JsonBody, LicenseIdPath, OptionalJsonBody};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use seatledger_ledger::domain::{
    Command, HeartbeatTtl, LicenseState, LicenseView, Name, OveragePercent, Reason, Rejection,
    SeatCount, StreamState,
};
use seatledger_ledger::StoreError;
use seatledger_projections::HotReadError;
use seatledger_schema::{limits, Timestamp};
use seatledger_schema::{ClientAuth, LicenseKey};
use seatledger_schema::{LicenseId, OrgId, SessionId, UserId};
use serde::{Deserialize, Deserializer, Serialize};
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Licenses listed per request.
pub const LICENSES_LIST_MAX: i64 = 1_000;

#[derive(Serialize, ToSchema)]
pub struct LicenseResponse {
    pub id: Uuid,
    #[schema(value_type = Uuid)]
    pub org_id: OrgId,
    pub name: String,
    /// `active`, `suspended` or `revoked`.
    pub status: String,
    pub seats: u32,
    /// `seats` plus the overage allowance.
    pub seat_limit: u32,
    /// Leases currently live.
    pub seats_used: u32,
    #[schema(value_type = Option<String>, format = DateTime, pattern = r"^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")]
    pub expires_at: Option<Timestamp>,
    pub heartbeat_ttl_s: u32,
    pub max_overage_percent: u32,
    #[schema(value_type = ClientAuthDoc)]
    pub client_auth: ClientAuth,
    /// The license key, shown once: only in the answer to issuing.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub key: Option<LicenseKey>,
}

impl From<LicenseView> for LicenseResponse {
    fn from(view: LicenseView) -> Self {
        LicenseResponse {
            id: view.license_id.into(),
            org_id: view.org_id,
            name: view.name,
            status: view.status.as_str().to_owned(),
            seats: view.seats,
            seat_limit: view.seat_limit,
            seats_used: view.seats_used,
            expires_at: view.expires_at,
            heartbeat_ttl_s: view.heartbeat_ttl_s,
            max_overage_percent: view.max_overage_percent,
            client_auth: view.client_auth,
            key: None,
        }
    }
}

/// The license's state if it belongs to `org_id`, else `license_not_found`.
pub(crate) async fn load_license(
    state: &AppState,
    org_id: OrgId,
    license_id: LicenseId,
) -> Result<LicenseState, ApiError> {
    let stream_id = format!("license-{license_id}");
    let (_, stream) = state
        .store
        .stream_state(&stream_id)
        .await
        .map_err(|error| match error {
            StoreError::Corrupt(reason) => {
                tracing::error!(stream_id, reason, "stream unreadable on a read");
                state.metrics.unreadable_reads.inc();
                ApiError::stream_unreadable()
            }
            other => ApiError::from(other),
        })?;
    match stream {
        StreamState::License(license)
            if license
                .terms
                .as_ref()
                .is_some_and(|terms| terms.org_id == org_id) =>
        {
            Ok(license)
        }
        _ => Err(ApiError::rejection(Rejection::LicenseNotFound)),
    }
}

fn view_of(result: seatledger_ledger::CommandResult) -> Result<Json<LicenseResponse>, ApiError> {
    let view = accepted(result)?
        .license
        .ok_or_else(|| ApiError::rejection(Rejection::LicenseNotFound))?;
    Ok(Json(view.into()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueLicenseRequest {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\x00-\x1f\x7f-\x9f\xad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\uffa0\ue000-\uf8ff\ufdd0-\ufdef\ufeff\ufff0-\ufffb\ufffe\uffff\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f\xad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\uffa0\ue000-\uf8ff\ufdd0-\ufdef\ufeff\ufff0-\ufffb\ufffe\uffff]*[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub name: String,
    /// 1 to 100000.
    #[schema(minimum = 1, maximum = 100_000)]
    #[serde(deserialize_with = "crate::extract::integral")]
    pub seats: u32,
    /// 10 to 86400 (default 360).
    #[schema(minimum = 10, maximum = 86_400)]
    #[serde(default, deserialize_with = "crate::extract::optional_integral")]
    pub heartbeat_ttl_s: Option<u32>,
    /// 0 to 100 (default 0).
    #[schema(minimum = 0, maximum = 100)]
    #[serde(default, deserialize_with = "crate::extract::optional_integral")]
    pub max_overage_percent: Option<u32>,
    /// RFC 3339 with any offset, normalized to UTC; once in UTC it must lie
    /// between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z.
    /// Absent or `null`: the license does not expire.
    #[schema(value_type = Option<String>, format = DateTime, pattern = r"^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")]
    pub expires_at: Option<Timestamp>,
    /// Who may acquire its seats (default `token`).
    #[schema(value_type = Option<ClientAuthDoc>)]
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
}

/// Who may acquire a license's seats: `token` (an API token with the key
/// in the body; the default), `license_key` (`Authorization: License
/// <key>` alone, for client apps without an organization credential), or
/// `both`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = ClientAuth)]
#[allow(dead_code)] // Documents `seatledger_schema::ClientAuth`.
pub enum ClientAuthDoc {
    Token,
    LicenseKey,
    Both,
}

const ISSUE_ROUTE: &str = "POST /api/v1/licenses";

/// Issues a license (owner or admin). The key is shown once. With an
/// `Idempotency-Key`, a retry answers the same license and key.
#[utoipa::path(
    post,
    path = "/api/v1/licenses",
    tag = "licenses",
    security(("bearer" = [])),
    request_body = IssueLicenseRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "makes a retry safe: 1 to 200 visible ASCII characters", min_length = 1, max_length = 200, pattern = r"^[\x21-\x7e]+$")),
    responses(
        (status = 201, body = LicenseResponse),
        (status = 400, description = "`malformed_json`, `invalid_idempotency_key`", body = ProblemDoc),
        (status = 403, description = "`forbidden`", body = ProblemDoc),
        (status = 422, description = "`invalid_request`, `idempotency_key_reused`", body = ProblemDoc)
    )
)]
pub async fn issue(
    State(state): State<AppState>,
    Admin(admin): Admin,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    headers: HeaderMap,
    body: JsonBody<IssueLicenseRequest>,
) -> Result<(StatusCode, Json<LicenseResponse>), ApiError> {
    let request = &body.value;
    let name = Name::parse(&request.name)?;
    let seats = SeatCount::new(request.seats)?;
    let heartbeat_ttl_s = request
        .heartbeat_ttl_s
        .map(HeartbeatTtl::new)
        .transpose()?
        .unwrap_or_default();
    let max_overage_percent = request
        .max_overage_percent
        .map(OveragePercent::new)
        .transpose()?
        .unwrap_or_default();
    let (license_id, key) = new_license_id_and_key(&state, &admin, idempotency_key.as_deref())?;
    state
        .directory
        .insert_license_key(&secret_hash(&key), license_id, admin.org_id)
        .await?;
    let command = Command::IssueLicense {
        client_auth: request.client_auth.unwrap_or_default(),
        license_id,
        name,
        seats,
        expires_at: request.expires_at,
        heartbeat_ttl_s,
        max_overage_percent,
    };
    let idempotency = idempotency_key.map(|key| Idempotency {
        key,
        caller: admin.user_id.into(),
        route: ISSUE_ROUTE,
        body: body.raw.as_ref(),
    });
    let result = submit(
        &state,
        admin.org_id,
        command,
        metadata(Some(&admin), &headers),
        idempotency,
    )
    .await?;
    let Json(mut response) = view_of(result)?;
    response.key = Some(LicenseKey::new(key));
    Ok((StatusCode::CREATED, Json(response)))
}

/// A new license's id and key. With an idempotency key they are derived
/// from it and its caller (keyed by the ledger's secret), so a retry
/// reproduces them without the key ever being stored.
fn new_license_id_and_key(
    state: &AppState,
    admin: &Principal,
    idempotency_key: Option<&str>,
) -> Result<(LicenseId, String), ApiError> {
    let Some(idempotency) = idempotency_key else {
        return Ok((LicenseId::now_v7(), random_secret(LICENSE_KEY_PREFIX)?));
    };
    let org = admin.org_id.as_bytes().as_slice();
    let caller = admin.user_id.as_bytes().as_slice();
    let ledger = &state.keys.ledger;
    let id_bytes = ledger.derive("license-id", &[org, caller, idempotency.as_bytes()]);
    let mut random = [0u8; 16];
    random.copy_from_slice(&id_bytes[..16]);
    let key_bytes = ledger.derive("license-key", &[org, caller, idempotency.as_bytes()]);
    Ok((
        uuid::Builder::from_random_bytes(random).into_uuid().into(),
        secret_from_bytes(LICENSE_KEY_PREFIX, &key_bytes),
    ))
}

/// The response header saying which log position a read is as of: every
/// event up to it is reflected.
pub const POSITION_HEADER: &str = "seatledger-position";

/// Waits, at most `READ_YOUR_WRITES_WAIT_MS`, for the hot counts to
/// include every write this server knew committed when the read arrived
/// (its own commits, and other replicas' it was notified of): so a client
/// reads its own writes. `Some(position)` when they do, else `None` and
/// the read goes to the ledger (counted in `/metrics`).
async fn hot_position(state: &AppState) -> Option<i64> {
    let target = state.appender.notifier().position();
    let wait = Duration::from_millis(limits::READ_YOUR_WRITES_WAIT_MS);
    if state.hot.wait_for(target, wait).await {
        Some(state.hot.position())
    } else {
        state.metrics.hot_read_fallbacks.inc();
        None
    }
}

/// What the hot counts answered: a license they hold as unreadable is 500
/// `stream_unreadable` (logged by the follower that found it); counts that
/// cannot answer (Redis down) are `None`, so the caller reads the ledger.
fn hot_read<T>(
    state: &AppState,
    read: Result<Option<T>, HotReadError>,
) -> Result<Option<T>, ApiError> {
    match read {
        Ok(found) => Ok(found),
        Err(HotReadError::Unreadable(_)) => Err(ApiError::stream_unreadable()),
        Err(HotReadError::Unavailable(_)) => {
            state.metrics.hot_read_fallbacks.inc();
            Ok(None)
        }
    }
}

/// The position header: the hot counts' position, or for a read from the
/// ledger the last commit this server knew of when it read.
fn position_header(state: &AppState, hot: Option<i64>) -> [(&'static str, String); 1] {
    let position = hot.unwrap_or_else(|| state.appender.notifier().position());
    [(POSITION_HEADER, position.to_string())]
}

/// One license's view: from the hot counts when they are current, else
/// (or when they do not know it, e.g. issued on another replica a moment
/// ago) from the ledger.
async fn license_view(
    state: &AppState,
    hot: Option<i64>,
    org_id: OrgId,
    license_id: LicenseId,
) -> Result<LicenseView, ApiError> {
    let now = state.clock.now();
    if hot.is_some() {
        if let Some(view) = hot_read(state, state.hot.view(org_id, license_id, now).await)? {
            return Ok(view);
        }
    }
    load_license(state, org_id, license_id)
        .await?
        .view(now)
        .ok_or_else(|| ApiError::rejection(Rejection::LicenseNotFound))
}

/// The organization's licenses with live seat counts.
#[utoipa::path(
    get,
    path = "/api/v1/licenses",
    tag = "licenses",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<LicenseResponse>, headers(
            ("seatledger-position" = i64, description = "the log position the counts are as of")
        ))
    )
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<([(&'static str, String); 1], Json<Vec<LicenseResponse>>), ApiError> {
    let hot = hot_position(&state).await;
    let mut licenses = Vec::new();
    for license_id in state
        .directory
        .licenses_of(principal.org_id, LICENSES_LIST_MAX)
        .await?
    {
        // A key recorded for an issue that never committed names no
        // license. An unreadable license is left out of the list (logged
        // and counted by `load_license`) rather than failing the list of
        // every other license of the organization.
        if let Ok(view) = license_view(&state, hot, principal.org_id, license_id).await {
            licenses.push(view.into());
        }
    }
    Ok((position_header(&state, hot), Json(licenses)))
}

/// One license with its live seat count.
#[utoipa::path(
    get,
    path = "/api/v1/licenses/{id}",
    tag = "licenses",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = LicenseResponse, headers(
            ("seatledger-position" = i64, description = "the log position the counts are as of")
        )),
        (status = 404, description = "`license_not_found`", body = ProblemDoc)
    )
)]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    LicenseIdPath(license_id): LicenseIdPath,
) -> Result<([(&'static str, String); 1], Json<LicenseResponse>), ApiError> {
    let hot = hot_position(&state).await;
    let view = license_view(&state, hot, principal.org_id, license_id).await?;
    Ok((position_header(&state, hot), Json(view.into())))
}

fn present<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<Timestamp>>, D::Error> {
    Option::<Timestamp>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateLicenseRequest {
    #[schema(minimum = 1, maximum = 100_000)]
    #[serde(default, deserialize_with = "crate::extract::optional_integral")]
    pub seats: Option<u32>,
    /// A new expiry (RFC 3339 with any offset, normalized to UTC, between
    /// 1970-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z once in UTC);
    /// `null` makes the license perpetual; absent leaves it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime, pattern = r"^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")]
    pub expires_at: Option<Option<Timestamp>>,
}

/// Changes seats and/or expiry in one append (owner or admin). Lowering
/// seats never evicts a held lease; it limits new grants.
#[utoipa::path(
    patch,
    path = "/api/v1/licenses/{id}",
    tag = "licenses",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    request_body = UpdateLicenseRequest,
    responses(
        (status = 200, body = LicenseResponse),
        (status = 403, description = "`forbidden`, `license_revoked`", body = ProblemDoc),
        (status = 404, description = "`license_not_found`", body = ProblemDoc),
        (status = 422, description = "`invalid_request`", body = ProblemDoc)
    )
)]
pub async fn update(
    State(state): State<AppState>,
    Admin(admin): Admin,
    LicenseIdPath(license_id): LicenseIdPath,
    headers: HeaderMap,
    body: JsonBody<UpdateLicenseRequest>,
) -> Result<Json<LicenseResponse>, ApiError> {
    let seats = body.value.seats.map(SeatCount::new).transpose()?;
    let command = Command::UpdateLicense {
        license_id,
        seats,
        expires_at: body.value.expires_at,
    };
    view_of(
        submit(
            &state,
            admin.org_id,
            command,
            metadata(Some(&admin), &headers),
            None,
        )
        .await?,
    )
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\x00-\x1f\x7f-\x9f\xad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\uffa0\ue000-\uf8ff\ufdd0-\ufdef\ufeff\ufff0-\ufffb\ufffe\uffff\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f\xad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\uffa0\ue000-\uf8ff\ufdd0-\ufdef\ufeff\ufff0-\ufffb\ufffe\uffff]*[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub reason: Option<String>,
}

fn reason(body: OptionalJsonBody<ReasonRequest>) -> Result<Option<Reason>, ApiError> {
    Ok(body
        .0
        .and_then(|request| request.reason)
        .map(|text| Reason::parse(&text))
        .transpose()?)
}

async fn status_change(
    state: &AppState,
    admin: &Principal,
    headers: &HeaderMap,
    command: Command,
) -> Result<Json<LicenseResponse>, ApiError> {
    view_of(
        submit(
            state,
            admin.org_id,
            command,
            metadata(Some(admin), headers),
            None,
        )
        .await?,
    )
}

/// Suspends a license: it grants nothing and every active lease is released.
#[utoipa::path(
    post,
    path = "/api/v1/licenses/{id}/suspend",
    tag = "licenses",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    request_body(content = Option<ReasonRequest>, description = "optional"),
    responses(
        (status = 200, body = LicenseResponse),
        (status = 403, description = "`forbidden`, `license_revoked`", body = ProblemDoc),
        (status = 404, description = "`license_not_found`", body = ProblemDoc)
    )
)]
pub async fn suspend(
    State(state): State<AppState>,
    Admin(admin): Admin,
    LicenseIdPath(license_id): LicenseIdPath,
    headers: HeaderMap,
    body: OptionalJsonBody<ReasonRequest>,
) -> Result<Json<LicenseResponse>, ApiError> {
    let command = Command::SuspendLicense {
        license_id,
        reason: reason(body)?,
    };
    status_change(&state, &admin, &headers, command).await
}

/// Reinstates a suspended license.
#[utoipa::path(
    post,
    path = "/api/v1/licenses/{id}/reinstate",
    tag = "licenses",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    request_body(content = Option<ReasonRequest>, description = "optional"),
    responses(
        (status = 200, body = LicenseResponse),
        (status = 403, description = "`forbidden`, `license_revoked`", body = ProblemDoc),
        (status = 404, description = "`license_not_found`", body = ProblemDoc),
        (status = 409, description = "`license_not_suspended`", body = ProblemDoc)
    )
)]
pub async fn reinstate(
    State(state): State<AppState>,
    Admin(admin): Admin,
    LicenseIdPath(license_id): LicenseIdPath,
    headers: HeaderMap,
    body: OptionalJsonBody<ReasonRequest>,
) -> Result<Json<LicenseResponse>, ApiError> {
    let command = Command::ReinstateLicense {
        license_id,
        reason: reason(body)?,
    };
    status_change(&state, &admin, &headers, command).await
}

/// Revokes a license for good: every active lease is released.
#[utoipa::path(
    post,
    path = "/api/v1/licenses/{id}/revoke",
    tag = "licenses",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    request_body(content = Option<ReasonRequest>, description = "optional"),
    responses(
        (status = 200, body = LicenseResponse),
        (status = 403, description = "`forbidden`", body = ProblemDoc),
        (status = 404, description = "`license_not_found`", body = ProblemDoc)
    )
)]
pub async fn revoke(
    State(state): State<AppState>,
    Admin(admin): Admin,
    LicenseIdPath(license_id): LicenseIdPath,
    headers: HeaderMap,
    body: OptionalJsonBody<ReasonRequest>,
) -> Result<Json<LicenseResponse>, ApiError> {
    let command = Command::RevokeLicense {
        license_id,
        reason: reason(body)?,
    };
    status_change(&state, &admin, &headers, command).await
}

#[derive(Serialize, ToSchema)]
pub struct SessionResponse {
    #[schema(value_type = Uuid)]
    pub session_id: SessionId,
    #[schema(value_type = Uuid)]
    pub user_id: UserId,
    pub hardware_id: String,
    pub generation: u64,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    pub overage: bool,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SessionsQuery {
    /// Return sessions whose id sorts after this one (the last `session_id`
    /// of the previous page).
    #[param(value_type = Option<Uuid>)]
    pub after: Option<SessionId>,
    /// 1 to 1000 (default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// The license's live leases, a page at a time, by session id (session ids
/// are UUIDv7, so this is about grant order). A page has fewer than
/// `limit` sessions only at the end.
#[utoipa::path(
    get,
    path = "/api/v1/licenses/{id}/sessions",
    tag = "licenses",
    security(("bearer" = [])),
    params(("id" = Uuid, Path), SessionsQuery),
    responses(
        (status = 200, body = Vec<SessionResponse>, headers(
            ("seatledger-position" = i64, description = "the log position the sessions are as of")
        )),
        (status = 400, description = "`invalid_query`", body = ProblemDoc),
        (status = 404, description = "`license_not_found`", body = ProblemDoc)
    )
)]
pub async fn sessions(
    State(state): State<AppState>,
    principal: Principal,
    LicenseIdPath(license_id): LicenseIdPath,
    ApiQuery(query): ApiQuery<SessionsQuery>,
) -> Result<([(&'static str, String); 1], Json<Vec<SessionResponse>>), ApiError> {
    let limit = query.limit.unwrap_or(limits::SESSIONS_PAGE_MAX);
    if !(1..=limits::SESSIONS_PAGE_MAX).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be between 1 and {}", limits::SESSIONS_PAGE_MAX),
        ));
    }
    let now = state.clock.now();
    let hot = hot_position(&state).await;
    let from_hot = match hot {
        Some(_) => hot_read(
            &state,
            state
                .hot
                .sessions(principal.org_id, license_id, now, query.after, limit)
                .await,
        )?,
        None => None,
    };
    let leases = match from_hot {
        Some(leases) => leases,
        None => load_license(&state, principal.org_id, license_id)
            .await?
            .live_leases_after(now, query.after, limit),
    };
    let sessions = leases
        .into_iter()
        .map(|lease| SessionResponse {
            session_id: lease.session_id,
            user_id: lease.user_id,
            hardware_id: lease.hardware_id,
            generation: lease.generation,
            expires_at: lease.expires_at,
            overage: lease.overage,
        })
        .collect();
    Ok((position_header(&state, hot), Json(sessions)))
}
