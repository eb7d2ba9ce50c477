//! Seats: acquire, heartbeat, release — the client apps' three calls. Each
//! answers from the appender's result, so a replay with the same
//! `Idempotency-Key` answers the same status and body.

use super::{accepted, metadata, submit, Idempotency};
use crate::auth::{secret_hash, Principal, TokenLicenses};
use crate::client_auth::AcquireCaller;
use crate::error::{ApiError, ProblemDoc};
use crate::extract::{IdempotencyKey, JsonBody};
use crate::lease_token::{lease_token, SeatCaller};
use crate::state::AppState;
use crate::tokens::{self, SeatClaims, SignedLicense};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use seatledger_ledger::domain::{
    AcquireCredential, Command, HardwareId, Rejection, SeatActor, StreamId,
};
use seatledger_ledger::CommandResult;
use seatledger_schema::LicenseKey;
use seatledger_schema::{LicenseId, OrgId, SessionId, UserId};
use seatledger_schema::{SeatTouchKind, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    /// The license's key. With an API token, leaving it out finds no
    /// license (404 `license_not_found`); with `Authorization: License
    /// <key>` it may be left out (if sent, it must be that key).
    #[schema(value_type = String, min_length = 1)]
    #[serde(default)]
    pub license_key: Option<LicenseKey>,
    /// Identifies this machine: 1 to 256 visible ASCII characters (`!` to
    /// `~`) and spaces.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[!-~]([ -~]*[!-~])?[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub hardware_id: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    #[schema(value_type = Uuid)]
    pub session_id: SessionId,
}

#[derive(Serialize, ToSchema)]
pub struct SeatResponse {
    #[schema(value_type = Uuid)]
    pub session_id: SessionId,
    #[schema(value_type = Uuid)]
    pub license_id: LicenseId,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    /// Heartbeat at least this often (a third of the lease's TTL).
    pub heartbeat_interval_s: u32,
    pub seats_used: u32,
    pub seats_total: u32,
    /// Fencing token: increases with every grant on this license.
    pub generation: u64,
    pub signed_license: SignedLicense,
    /// Authorizes this lease's heartbeats and release, and nothing else:
    /// send `Authorization: Lease <lease_token>` instead of an API token.
    /// The same for the whole life of the lease.
    pub lease_token: String,
}

#[derive(Serialize, ToSchema)]
pub struct ReleaseResponse {
    #[schema(value_type = Uuid)]
    pub session_id: SessionId,
    pub released: bool,
}

/// The seat answer for an accepted acquire or heartbeat.
fn seat_response(state: &AppState, result: &CommandResult) -> Result<SeatResponse, ApiError> {
    let missing = || {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the seat was not found in the result",
        )
    };
    let view = result.license.as_ref().ok_or_else(missing)?;
    let lease = result.lease.as_ref().ok_or_else(missing)?;
    let issued_at = result.seat_touch().ok_or_else(missing)?.at;
    let claims = SeatClaims {
        license_id: view.license_id,
        session_id: lease.session_id,
        org_id: view.org_id,
        user_id: lease.user_id,
        hardware_id: lease.hardware_id.clone(),
        seats_total: view.seats,
        issued_at,
        expires_at: lease.expires_at,
    };
    Ok(SeatResponse {
        session_id: lease.session_id,
        license_id: view.license_id,
        expires_at: lease.expires_at,
        heartbeat_interval_s: view.heartbeat_ttl_s / 3,
        seats_used: view.seats_used,
        seats_total: view.seats,
        generation: lease.generation,
        signed_license: tokens::sign(&state.keys.token, &claims),
        lease_token: lease_token(&state.keys.ledger, lease.session_id),
    })
}

/// The license a key opens, if it is the caller's org's.
async fn license_for_key(
    state: &AppState,
    principal: &Principal,
    licenses: &TokenLicenses,
    key: &LicenseKey,
) -> Result<LicenseId, ApiError> {
    let key = key.expose();
    let not_found = || ApiError::rejection(Rejection::LicenseNotFound);
    if key.is_empty() || key.len() > 200 {
        return Err(not_found());
    }
    let hash = secret_hash(key);
    let found = match state.caches.license_keys.get(&hash) {
        Some(found) => Some(found),
        None => {
            let found = state.directory.license_by_key(&hash).await?;
            if let Some(found) = found {
                state.caches.license_keys.insert(hash, found);
            }
            found
        }
    };
    match found {
        Some((license_id, org_id)) if org_id == principal.org_id => in_scope(licenses, license_id),
        _ => Err(not_found()),
    }
}

/// The org and license an acquire is for: the body's key, for an API
/// token; the header's, for a license key (a key in the body must then be
/// the same one).
async fn acquired_license(
    state: &AppState,
    caller: &AcquireCaller,
    body_key: Option<&LicenseKey>,
) -> Result<(OrgId, LicenseId), ApiError> {
    match caller {
        AcquireCaller::Token(principal, licenses) => {
            // No key names no license. 404 rather than 422: the document
            // cannot say "required unless the License header is sent".
            let key = body_key.ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    Rejection::LicenseNotFound.code(),
                    "no license_key: send the license's key in the body (or Authorization: License <key>)",
                )
            })?;
            let license_id = license_for_key(state, principal, licenses, key).await?;
            Ok((principal.org_id, license_id))
        }
        AcquireCaller::LicenseKey {
            license_id,
            org_id,
            key_hash,
        } => match body_key {
            Some(key) if secret_hash(key.expose()) != *key_hash => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                "license_key in the body is not the key of the Authorization header",
            )),
            _ => Ok((*org_id, *license_id)),
        },
    }
}

/// The license a session is on, if it is the caller's org's.
async fn license_for_session(
    state: &AppState,
    principal: &Principal,
    licenses: &TokenLicenses,
    session_id: SessionId,
) -> Result<LicenseId, ApiError> {
    match session_license(state, session_id).await? {
        Some((license_id, org_id)) if org_id == principal.org_id => in_scope(licenses, license_id),
        _ => Err(ApiError::rejection(Rejection::SessionNotFound)),
    }
}

/// The license a session was granted on, and its org: from the cache, or
/// the log.
async fn session_license(
    state: &AppState,
    session_id: SessionId,
) -> Result<Option<(LicenseId, OrgId)>, ApiError> {
    let found = match state.caches.sessions.get(&session_id) {
        Some(found) => Some(found),
        None => {
            state.metrics.session_log_lookups.inc();
            let found =
                state
                    .store
                    .find_session(session_id)
                    .await?
                    .and_then(|(stream_id, org_id)| match StreamId::parse(&stream_id) {
                        Some(StreamId::License(license_id)) => Some((license_id, org_id)),
                        _ => None,
                    });
            if let Some(found) = found {
                state.caches.sessions.insert(session_id, found);
            }
            found
        }
    };
    Ok(found)
}

/// What a heartbeat or release of `session_id` acts on, and as whom: a
/// token's principal on a session of its org (and scope), or the bearer of
/// that session's own lease token.
async fn seat_target(
    state: &AppState,
    caller: &SeatCaller,
    session_id: SessionId,
) -> Result<(LicenseId, OrgId, SeatActor), ApiError> {
    match caller {
        SeatCaller::Token(principal, licenses) => {
            let license_id = license_for_session(state, principal, licenses, session_id).await?;
            Ok((license_id, principal.org_id, seat_actor(principal)))
        }
        SeatCaller::Lease(lease) if *lease != session_id => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "lease_token_mismatch",
            "this lease token is another lease's: it authorizes only the lease it was answered with",
        )),
        SeatCaller::Lease(_) => match session_license(state, session_id).await? {
            Some((license_id, org_id)) => Ok((license_id, org_id, SeatActor::Lease)),
            None => Err(ApiError::rejection(Rejection::SessionNotFound)),
        },
    }
}

/// The id an idempotency key is kept under for `caller`: the user, or
/// for a lease token its lease.
fn idempotency_caller(caller: &SeatCaller) -> uuid::Uuid {
    match caller {
        SeatCaller::Token(principal, _) => principal.user_id.into(),
        SeatCaller::Lease(session_id) => (*session_id).into(),
    }
}

/// `license_id` if the calling token may use it: a client token limited
/// to other licenses of its org is refused (403; another org's licenses
/// were already 404).
fn in_scope(licenses: &TokenLicenses, license_id: LicenseId) -> Result<LicenseId, ApiError> {
    if licenses.allows(license_id) {
        Ok(license_id)
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "license_not_in_token_scope",
            "this client token is limited to other licenses",
        ))
    }
}

const ACQUIRE_ROUTE: &str = "POST /api/v1/licenses/acquire";
const HEARTBEAT_ROUTE: &str = "POST /api/v1/licenses/heartbeat";
const RELEASE_ROUTE: &str = "POST /api/v1/licenses/release";

/// Acquires a seat for this user on this machine. The same user and
/// machine with a live lease get that lease back (200), never a second seat.
/// A denial is recorded as `SeatDenied`.
#[utoipa::path(
    post,
    path = "/api/v1/licenses/acquire",
    tag = "seats",
    security(("bearer" = []), ("license" = [])),
    request_body = AcquireRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "makes a retry safe: 1 to 200 visible ASCII characters", min_length = 1, max_length = 200, pattern = r"^[\x21-\x7e]+$")),
    responses(
        (status = 201, description = "a new lease", body = SeatResponse),
        (status = 200, description = "this machine's existing lease, extended", body = SeatResponse),
        (status = 400, description = "`malformed_json`, `invalid_idempotency_key`", body = ProblemDoc),
        (status = 403, description = "`license_expired`, `license_suspended`, `license_revoked`; `license_not_in_token_scope`: a client token limited to other licenses; `client_auth_not_allowed`: the license's `client_auth` refuses this kind of credential", body = ProblemDoc),
        (status = 404, description = "`license_not_found`", body = ProblemDoc),
        (status = 409, description = "`no_seats_available`", body = ProblemDoc),
        (status = 422, description = "`invalid_request`, `idempotency_key_reused`", body = ProblemDoc),
        (status = 429, description = "`too_many_requests`: this token's seat operations per second (`--rate-limit-seat-ops-per-s`) are used up (Retry-After)", body = ProblemDoc)
    )
)]
pub async fn acquire(
    State(state): State<AppState>,
    caller: AcquireCaller,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    headers: HeaderMap,
    body: JsonBody<AcquireRequest>,
) -> Result<(StatusCode, Json<SeatResponse>), ApiError> {
    let hardware_id = HardwareId::parse(&body.value.hardware_id)?;
    let (org_id, license_id) =
        acquired_license(&state, &caller, body.value.license_key.as_ref()).await?;
    let (user_id, token_id, credential, idempotency_caller) = match &caller {
        AcquireCaller::Token(principal, _) => (
            principal.user_id,
            principal.client,
            AcquireCredential::Token,
            principal.user_id.into(),
        ),
        // A lease of the key has no user; its lease token acts for it.
        AcquireCaller::LicenseKey { license_id, .. } => (
            UserId::nil(),
            None,
            AcquireCredential::LicenseKey,
            (*license_id).into(),
        ),
    };
    let command = Command::AcquireSeat {
        credential,
        token_id,
        license_id,
        session_id: SessionId::now_v7(),
        user_id,
        hardware_id,
    };
    let idempotency = idempotency_key.map(|key| Idempotency {
        key,
        caller: idempotency_caller,
        route: ACQUIRE_ROUTE,
        body: body.raw.as_ref(),
    });
    let result = submit(
        &state,
        org_id,
        command,
        metadata(caller.principal(), &headers),
        idempotency,
    )
    .await?;
    if let Some(rejection) = result.rejection {
        state.metrics.seat_denied(rejection.code());
    }
    let result = accepted(result)?;
    let granted = result
        .seat_touch()
        .is_some_and(|touch| touch.kind == SeatTouchKind::Acquired);
    let status = if granted {
        state.metrics.seats_granted.inc();
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let response = seat_response(&state, &result)?;
    // The session's heartbeats and release will ask which license it is on.
    // Only acquire caches it: a heartbeat found it through the cache (or
    // cached it on a miss), and writing the cache on every heartbeat made
    // its concurrent map rehash under churn when full (a profile at 100k
    // live leases on one license).
    state
        .caches
        .sessions
        .insert(response.session_id, (response.license_id, org_id));
    Ok((status, Json(response)))
}

/// Extends a live lease by its TTL. A released or expired session is 410
/// `session_expired`: acquire again.
#[utoipa::path(
    post,
    path = "/api/v1/licenses/heartbeat",
    tag = "seats",
    security(("bearer" = []), ("lease" = [])),
    request_body = SessionRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "makes a retry safe: 1 to 200 visible ASCII characters", min_length = 1, max_length = 200, pattern = r"^[\x21-\x7e]+$")),
    responses(
        (status = 200, body = SeatResponse),
        (status = 403, description = "`license_expired`; `not_lease_holder`: the lease was acquired by another user (only its holder heartbeats it); `license_not_in_token_scope`; `lease_token_mismatch`: the lease token is another lease's", body = ProblemDoc),
        (status = 404, description = "`session_not_found`", body = ProblemDoc),
        (status = 410, description = "`session_expired`", body = ProblemDoc),
        (status = 422, description = "`invalid_request`, `idempotency_key_reused`", body = ProblemDoc),
        (status = 429, description = "`too_many_requests`: this token's seat operations per second (`--rate-limit-seat-ops-per-s`) are used up (Retry-After)", body = ProblemDoc)
    )
)]
pub async fn heartbeat(
    State(state): State<AppState>,
    caller: SeatCaller,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    headers: HeaderMap,
    body: JsonBody<SessionRequest>,
) -> Result<Json<SeatResponse>, ApiError> {
    let session_id = body.value.session_id;
    let (license_id, org_id, by) = seat_target(&state, &caller, session_id).await?;
    let idempotency = idempotency_key.map(|key| Idempotency {
        key,
        caller: idempotency_caller(&caller),
        route: HEARTBEAT_ROUTE,
        body: body.raw.as_ref(),
    });
    let command = Command::Heartbeat {
        license_id,
        session_id,
        by,
    };
    let result = accepted(
        submit(
            &state,
            org_id,
            command,
            metadata(caller.principal(), &headers),
            idempotency,
        )
        .await?,
    )?;
    Ok(Json(seat_response(&state, &result)?))
}

/// Who the caller is to a lease: owners and admins may release anyone's
/// lease of their organization (recorded with reason `admin` and the
/// caller as the event's actor), members only their own.
fn seat_actor(principal: &Principal) -> SeatActor {
    if principal.role.is_admin() {
        SeatActor::Admin(principal.user_id)
    } else {
        SeatActor::Holder(principal.user_id)
    }
}

/// Releases a seat. Releasing a released or expired session succeeds again.
#[utoipa::path(
    post,
    path = "/api/v1/licenses/release",
    tag = "seats",
    security(("bearer" = []), ("lease" = [])),
    request_body = SessionRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "makes a retry safe: 1 to 200 visible ASCII characters", min_length = 1, max_length = 200, pattern = r"^[\x21-\x7e]+$")),
    responses(
        (status = 200, body = ReleaseResponse),
        (status = 403, description = "`not_lease_holder`: a member releasing another user's lease (owners and admins may: reason `admin`); `license_not_in_token_scope`; `lease_token_mismatch`: the lease token is another lease's", body = ProblemDoc),
        (status = 404, description = "`session_not_found`", body = ProblemDoc),
        (status = 422, description = "`invalid_request`, `idempotency_key_reused`", body = ProblemDoc),
        (status = 429, description = "`too_many_requests`: this token's seat operations per second (`--rate-limit-seat-ops-per-s`) are used up (Retry-After)", body = ProblemDoc)
    )
)]
pub async fn release(
    State(state): State<AppState>,
    caller: SeatCaller,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    headers: HeaderMap,
    body: JsonBody<SessionRequest>,
) -> Result<Json<ReleaseResponse>, ApiError> {
    let session_id = body.value.session_id;
    let (license_id, org_id, by) = seat_target(&state, &caller, session_id).await?;
    let idempotency = idempotency_key.map(|key| Idempotency {
        key,
        caller: idempotency_caller(&caller),
        route: RELEASE_ROUTE,
        body: body.raw.as_ref(),
    });
    let command = Command::ReleaseSeat {
        license_id,
        session_id,
        by,
    };
    accepted(
        submit(
            &state,
            org_id,
            command,
            metadata(caller.principal(), &headers),
            idempotency,
        )
        .await?,
    )?;
    // A released session needs no look-up any more: the cache holds the
    // live ones (a late heartbeat or a repeated release finds it in the
    // log again, and is answered as before).
    state.caches.sessions.remove(&session_id);
    Ok(Json(ReleaseResponse {
        session_id,
        released: true,
    }))
}
