//! The OpenAPI document and Prometheus metrics; no auth.

use super::OpenApiJson;
use crate::state::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Extension;

/// This document (OpenAPI 3.1).
#[utoipa::path(get, path = "/openapi.json", tag = "meta", responses((status = 200, description = "the OpenAPI document", body = Object)))]
pub async fn openapi_json(Extension(document): Extension<OpenApiJson>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.0.as_str().to_owned(),
    )
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "meta", responses((status = 200, description = "metrics", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.metrics.render(state.appender.stats());
    // Live leases over every license, from the hot counts (absent while
    // Redis does not answer).
    if let Ok(live) = state.hot.live_leases(state.clock.now()).await {
        text.push_str(&format!(
            "# HELP seatledger_live_leases Leases live now, over every license.\n# TYPE seatledger_live_leases gauge\nseatledger_live_leases {live}\n"
        ));
    }
    text.push_str(&format!(
        "# HELP seatledger_redis_prefix_conflicts_total Times the hot-count follower found the Redis prefix owned by another ledger (it then follows nothing there; see /api/v1/health/ready).\n# TYPE seatledger_redis_prefix_conflicts_total counter\nseatledger_redis_prefix_conflicts_total {}\n",
        state.hot.prefix_conflicts()
    ));
    if let Some(nats) = &state.nats {
        text.push_str(&crate::metrics::render_nats(nats, state.clock.now()));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
