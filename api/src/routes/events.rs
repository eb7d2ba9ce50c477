//! The events feed for billing jobs over HTTP: the caller's org's events in
//! position order, with their hashes. With `wait_s` it is a long-poll: an
//! empty page waits on the in-process bus of commits (this server's, and
//! other replicas' through `LISTEN/NOTIFY`) until one of the org's events
//! commits, so a consumer of the embedded default gets events as they
//! happen with nothing to configure.

use crate::auth::Admin;
use crate::error::{ApiError, ProblemDoc};
use crate::extract::ApiQuery;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use seatledger_schema::RecordedEvent;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

pub const FEED_LIMIT_DEFAULT: i64 = 100;
pub const FEED_LIMIT_MAX: i64 = 1_000;
/// The longest a long-poll waits (also at most half the request timeout).
pub const FEED_WAIT_MAX_S: i64 = 20;
/// While a long-poll waits, commits of other organizations wake it too: it
/// reads again at most this often, so a busy log costs each waiting
/// consumer a few queries a second, not one per commit.
const FEED_RECHECK_INTERVAL: Duration = Duration::from_millis(100);

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
    /// 0 to 20 (default 0): when no event follows `after`, wait up to this
    /// many seconds for one to commit before answering (a long-poll; an
    /// empty page when none did). Also ends early when the server shuts
    /// down.
    #[param(minimum = 0, maximum = 20)]
    pub wait_s: Option<i64>,
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
    // The organization: the wire keeps the envelope's hashed name.
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

/// The organization's events after a position, in order (owner or admin);
/// with `wait_s`, a long-poll that answers as soon as one commits.
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
    let wait_s = query.wait_s.unwrap_or(0);
    if after < 0
        || !(1..=FEED_LIMIT_MAX).contains(&limit)
        || !(0..=FEED_WAIT_MAX_S).contains(&wait_s)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!(
                "after must be >= 0, limit between 1 and {FEED_LIMIT_MAX} and wait_s between 0 and {FEED_WAIT_MAX_S}"
            ),
        ));
    }
    // Answered well before the request timeout would answer 503.
    let wait = Duration::from_secs(wait_s.unsigned_abs()).min(state.request_timeout / 2);
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before the first read: a commit between the read and the
    // wait still wakes it.
    let mut commits = state.commits.subscribe();
    let mut draining = state.draining.clone();
    let mut waiting = None;
    loop {
        let read_at = tokio::time::Instant::now();
        let events = state
            .store
            .read_org_after(admin.org_id, 0, after, limit)
            .await?;
        if !events.is_empty() || read_at >= deadline || *draining.borrow() {
            let next_after = events.last().map_or(after, |event| event.position);
            return Ok(Json(EventsPage { events, next_after }));
        }
        // Counted while it waits, uncounted however it ends (a client that
        // goes away drops this future).
        waiting.get_or_insert_with(|| Waiting::new(state.metrics.feed_waiting.inner()));
        let stop = tokio::select! {
            // An error: the appender stopped and nothing more will commit.
            changed = commits.changed() => changed.is_err(),
            // An error: the server is gone.
            changed = draining.changed() => changed.is_err(),
            _ = tokio::time::sleep_until(deadline) => false,
        };
        if stop {
            return Ok(Json(EventsPage {
                events,
                next_after: after,
            }));
        }
        tokio::time::sleep_until((read_at + FEED_RECHECK_INTERVAL).min(deadline)).await;
    }
}

/// One long-poll in `seatledger_events_feed_waiting`, for as long as it lives.
struct Waiting<'a>(&'a AtomicI64);

impl<'a> Waiting<'a> {
    fn new(gauge: &'a AtomicI64) -> Waiting<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Waiting(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
