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

/// Prometheus metrics (the OpenMetrics text format).
#[utoipa::path(get, path = "/metrics", tag = "meta", responses((status = 200, description = "metrics", body = String, content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let scrape = crate::metrics::scrape_registry(
        state.hot.live_leases(state.clock.now()).await.ok(),
        state.hot.prefix_conflicts(),
        state.nats.clone().map(|nats| (nats, state.clock.now())),
    );
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics.render(&scrape),
    )
}
