//! Liveness and readiness; no auth.

use crate::error::{ApiError, ProblemDoc};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/api/v1/health", tag = "health", responses((status = 200, description = "alive", body = Object)))]
pub async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: 200 when the event store answers; redis (`ok`, `degraded` or
/// `not_configured`, with `redis_problem` saying why when Redis answers
/// but its keys cannot be used) and nats (`ok`, `standby`: another replica publishes,
/// `degraded`: NATS unreachable or publishing failing, or `not_configured`,
/// with the publisher's position and lag under `event_stream`) are
/// reported but never make the service unready (the ledger works without
/// them). Answers within a second: 503 `store_unavailable` when the store
/// does not answer a ping within 1 s, at once while it is known to be down.
#[utoipa::path(
    get,
    path = "/api/v1/health/ready",
    tag = "health",
    responses(
        (status = 200, description = "the event store answers", body = Object),
        (status = 503, description = "`store_unavailable`: the event store does not answer within 1 s, or is known to be down (answered at once; Retry-After)", body = ProblemDoc)
    )
)]
pub async fn ready(State(state): State<AppState>) -> Response {
    let backend = match state.store.backend() {
        seatledger_ledger::Backend::Postgres => "postgres",
        seatledger_ledger::Backend::Sqlite => "sqlite",
    };
    if state.store_gate.ping().await {
        (
            StatusCode::OK,
            Json(json!({
                "status": "ok",
                "store": { "backend": backend, "status": "ok" },
                "redis": match state.hot.status() {
                    "memory" => "not_configured",
                    status => status,
                },
                "redis_problem": state.hot.problem(),
                "hot_counts": { "position": state.hot.position() },
                "nats": state.nats.as_ref().map_or("not_configured", |nats| nats.status()),
                "event_stream": state.nats.as_ref().map(|nats| json!({
                    "position": state.metrics.nats.position.load(Ordering::Relaxed),
                    "lag": state.metrics.nats.lag.load(Ordering::Relaxed),
                    "lag_seconds": nats.lag_seconds(state.clock.now()),
                    "active": nats.active.load(Ordering::Relaxed),
                }))
            })),
        )
            .into_response()
    } else {
        // problem+json with Retry-After, like any request that finds the
        // store down; at once while the gate knows it is down, else within
        // READY_TIMEOUT.
        ApiError::store_unavailable().into_response()
    }
}
