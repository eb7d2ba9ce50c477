//! An organization's users: adding them, listing them, changing their
//! role, deactivating them.

use crate::auth::{Admin, Principal};
use crate::directory::Revoke;
use crate::error::{ApiError, ProblemDoc};
use crate::extract::JsonBody;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use seatledger_ledger::domain::{Command, Email, Name, Rejection, SeatActor};
use seatledger_schema::Password;
use seatledger_schema::Role;
use seatledger_schema::UserId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Deserialize, ToSchema, Clone, Copy, Default)]
#[serde(rename_all = "snake_case")]
pub enum NewUserRole {
    Admin,
    #[default]
    Member,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddUserRequest {
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
    /// `admin` or `member` (default). An organization has one owner.
    #[serde(default)]
    pub role: NewUserRole,
}

#[derive(Serialize, ToSchema)]
pub struct UserResponse {
    pub id: Uuid,
    pub email: String,
    pub full_name: String,
    pub role: String,
    pub organization_id: Uuid,
}

/// Adds a user to the caller's organization (owner or admin only).
#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "users",
    security(("bearer" = [])),
    request_body = AddUserRequest,
    responses(
        (status = 201, body = UserResponse),
        (status = 403, description = "`forbidden` (not an admin)", body = ProblemDoc),
        (status = 409, description = "`email_taken`", body = ProblemDoc),
        (status = 422, description = "`invalid_request`", body = ProblemDoc),
        (status = 429, description = "`too_many_requests`: 20 users an hour per organization (Retry-After)", body = ProblemDoc)
    )
)]
pub async fn add_user(
    State(state): State<AppState>,
    Admin(admin): Admin,
    headers: HeaderMap,
    body: JsonBody<AddUserRequest>,
) -> Result<(StatusCode, Json<UserResponse>), ApiError> {
    let request = body.value;
    let email = Email::parse(&request.email)?;
    let full_name = Name::parse(&request.full_name)?;
    super::auth::check_password(&request.password)?;
    // Counted once the request is valid: each answer from here on may say
    // whether the address is taken.
    if let Err(seconds) = state.address_limits.add_user(admin.org_id) {
        return Err(ApiError::too_many_requests(
            seconds,
            format!(
                "this organization added {} users in the last hour: try again in {seconds} s",
                crate::login_guard::USERS_PER_ORG_PER_HOUR
            ),
        ));
    }
    let role = match request.role {
        NewUserRole::Admin => Role::Admin,
        NewUserRole::Member => Role::Member,
    };
    let principal = Principal {
        user_id: UserId::now_v7(),
        org_id: admin.org_id,
        role,
        client: None,
    };
    let command = Command::RegisterUser {
        org_id: admin.org_id,
        user_id: principal.user_id,
        email: email.clone(),
        full_name: full_name.clone(),
        role,
    };
    super::auth::create_user(
        &state,
        &principal,
        &email,
        request.password,
        command,
        &headers,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(UserResponse {
            id: principal.user_id.into(),
            email: email.as_str().to_owned(),
            full_name: full_name.as_str().to_owned(),
            role: role.as_str().to_owned(),
            organization_id: admin.org_id.into(),
        }),
    ))
}

/// A member of the organization, as `GET /api/v1/users` lists them.
#[derive(Serialize, ToSchema)]
pub struct MemberResponse {
    pub id: Uuid,
    pub email: String,
    /// `owner`, `admin` or `member`.
    pub role: String,
    /// Deactivated users stay listed (their email stays taken).
    pub active: bool,
}

#[derive(Serialize, ToSchema)]
pub struct MembersResponse {
    pub users: Vec<MemberResponse>,
}

/// The organization's users and their roles (owner or admin only).
#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, body = MembersResponse),
        (status = 403, description = "`forbidden` (not an admin)", body = ProblemDoc)
    )
)]
pub async fn list_users(
    State(state): State<AppState>,
    Admin(admin): Admin,
) -> Result<Json<MembersResponse>, ApiError> {
    let users = state
        .directory
        .users_of(admin.org_id)
        .await?
        .into_iter()
        .map(|(id, email, role, deactivated)| MemberResponse {
            id: id.into(),
            email,
            role: role.as_str().to_owned(),
            active: !deactivated,
        })
        .collect();
    Ok(Json(MembersResponse { users }))
}

/// A user id in the path; anything that is not a uuid names no user.
pub struct UserIdPath(pub UserId);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for UserIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        crate::extract::path_uuid(parts, state)
            .await
            .map(UserIdPath)
            .ok_or_else(|| ApiError::rejection(Rejection::UserNotFound))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRoleRequest {
    /// `admin` or `member` (an owner stays owner).
    pub role: NewUserRole,
}

/// Sets a user's role (owner or admin only; not an owner's). Recorded as
/// `UserRoleChanged`; the user's tokens are revoked, so the new role holds
/// from their next login on every replica.
#[utoipa::path(
    patch,
    path = "/api/v1/users/{id}",
    tag = "users",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "the user")),
    request_body = ChangeRoleRequest,
    responses(
        (status = 200, body = MemberResponse),
        (status = 403, description = "`forbidden` (not an admin), `owner_is_permanent`", body = ProblemDoc),
        (status = 404, description = "`user_not_found` (or deactivated, or of another organization)", body = ProblemDoc)
    )
)]
pub async fn change_role(
    State(state): State<AppState>,
    Admin(admin): Admin,
    UserIdPath(user_id): UserIdPath,
    headers: HeaderMap,
    body: JsonBody<ChangeRoleRequest>,
) -> Result<Json<MemberResponse>, ApiError> {
    let role = match body.value.role {
        NewUserRole::Admin => Role::Admin,
        NewUserRole::Member => Role::Member,
    };
    let command = Command::ChangeUserRole {
        org_id: admin.org_id,
        user_id,
        role,
    };
    super::accepted(
        super::submit(
            &state,
            admin.org_id,
            command,
            super::metadata(Some(&admin), &headers),
            None,
        )
        .await?,
    )?;
    // The log says so: make the directory agree (also on a retry after a
    // call cut short), and revoke the tokens that carry the old role. The
    // same role again changes nothing.
    let (email, stored_role) = state
        .directory
        .user_by_id(user_id)
        .await?
        .unwrap_or_default();
    if stored_role != role.as_str() {
        state.directory.set_role(user_id, role).await?;
        state
            .directory
            .revoke_tokens(Revoke::All, user_id, state.clock.now())
            .await?;
        state.caches.forget_user(user_id);
    }
    Ok(Json(MemberResponse {
        id: user_id.into(),
        email,
        role: role.as_str().to_owned(),
        active: true,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct DeactivatedResponse {
    pub id: Uuid,
    pub active: bool,
    /// The user's leases released (reason `admin`).
    pub leases_released: u64,
}

/// Deactivates a user (owner or admin only; not an owner): recorded as
/// `UserDeactivated`; their tokens are revoked, login refuses them, and
/// their live leases are released with reason `admin`. Again: 200, and
/// anything a cut-short call left undone is done.
#[utoipa::path(
    delete,
    path = "/api/v1/users/{id}",
    tag = "users",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "the user")),
    responses(
        (status = 200, body = DeactivatedResponse),
        (status = 403, description = "`forbidden` (not an admin), `owner_is_permanent`", body = ProblemDoc),
        (status = 404, description = "`user_not_found` (or of another organization)", body = ProblemDoc)
    )
)]
pub async fn deactivate(
    State(state): State<AppState>,
    Admin(admin): Admin,
    UserIdPath(user_id): UserIdPath,
    headers: HeaderMap,
) -> Result<Json<DeactivatedResponse>, ApiError> {
    let metadata = super::metadata(Some(&admin), &headers);
    let command = Command::DeactivateUser {
        org_id: admin.org_id,
        user_id,
    };
    super::accepted(super::submit(&state, admin.org_id, command, metadata.clone(), None).await?)?;
    let now = state.clock.now();
    state.directory.deactivate(user_id, now).await?;
    state
        .directory
        .revoke_tokens(Revoke::All, user_id, now)
        .await?;
    state.caches.forget_user(user_id);
    let mut released = 0;
    for license_id in state
        .directory
        .licenses_of(admin.org_id, i64::from(u32::MAX))
        .await?
    {
        let license = super::licenses::load_license(&state, admin.org_id, license_id).await?;
        let leases = license
            .live_leases_after(now, None, usize::MAX)
            .into_iter()
            .filter(|lease| lease.user_id == user_id);
        for lease in leases {
            let release = Command::ReleaseSeat {
                license_id,
                session_id: lease.session_id,
                by: SeatActor::Admin(admin.user_id),
            };
            let result =
                super::submit(&state, admin.org_id, release, metadata.clone(), None).await?;
            if result.rejection.is_none() {
                released += 1;
            }
        }
    }
    Ok(Json(DeactivatedResponse {
        id: user_id.into(),
        active: false,
        leases_released: released,
    }))
}
