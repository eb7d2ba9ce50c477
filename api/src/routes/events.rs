//! The events feed for billing jobs over HTTP: the caller's org's events in
//! position order, with their hashes.

use crate::auth::Admin;
use crate::error::{ApiError, ProblemDoc};
use crate::extract::ApiQuery;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use seatledger_schema::RecordedEvent;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub const FEED_LIMIT_DEFAULT: i64 = 100;
pub const FEED_LIMIT_MAX: i64 = 1_000;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// Return events with a position after this one (default 0).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// An event as the log holds it (for the OpenAPI document).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventDoc {
    partition: i16,
    position: i64,
    event_id: uuid::Uuid,
    stream_id: String,
    stream_version: i64,
    tenant_id: uuid::Uuid,
    event_type: String,
    schema_version: i32,
    #[schema(value_type = Object)]
    payload: serde_json::Value,
    #[schema(value_type = Object)]
    metadata: serde_json::Value,
    #[schema(format = DateTime)]
    occurred_at: String,
    #[schema(format = DateTime)]
    recorded_at: String,
    /// hex SHA-256
    prev_hash: String,
    /// hex SHA-256 of prev_hash and the event's canonical bytes
    hash: String,
}

#[derive(Serialize, ToSchema)]
pub struct EventsPage {
    #[schema(value_type = Vec<EventDoc>)]
    pub events: Vec<RecordedEvent>,
    /// Pass as `after` to continue.
    pub next_after: i64,
}

/// The organization's events after a position, in order (owner or admin).
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    security(("bearer" = [])),
    params(FeedQuery),
    responses(
        (status = 200, body = EventsPage),
        (status = 400, description = "`invalid_query`", body = ProblemDoc),
        (status = 403, description = "`forbidden`", body = ProblemDoc)
    )
)]
pub async fn feed(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiQuery(query): ApiQuery<FeedQuery>,
) -> Result<Json<EventsPage>, ApiError> {
    let after = query.after.unwrap_or(0);
    let limit = query.limit.unwrap_or(FEED_LIMIT_DEFAULT);
    if after < 0 || !(1..=FEED_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("after must be >= 0 and limit between 1 and {FEED_LIMIT_MAX}"),
        ));
    }
    let events = state
        .store
        .read_tenant_after(admin.org_id, 0, after, limit)
        .await?;
    let next_after = events.last().map_or(after, |event| event.position);
    Ok(Json(EventsPage { events, next_after }))
}
