//! Adding users to an organization.

use crate::auth::{Admin, Principal};
use crate::error::{ApiError, ProblemDoc};
use crate::extract::JsonBody;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use seatledger_ledger::domain::{Command, Email, Name};
use seatledger_schema::Role;
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
    pub email: String,
    pub password: String,
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
        (status = 422, description = "`invalid_request`", body = ProblemDoc)
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
    let role = match request.role {
        NewUserRole::Admin => Role::Admin,
        NewUserRole::Member => Role::Member,
    };
    let principal = Principal {
        user_id: Uuid::now_v7(),
        org_id: admin.org_id,
        role,
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
            id: principal.user_id,
            email: email.as_str().to_owned(),
            full_name: full_name.as_str().to_owned(),
            role: role.as_str().to_owned(),
            organization_id: admin.org_id,
        }),
    ))
}
