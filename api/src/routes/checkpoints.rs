//! Signed heads of the log, for witnesses: every checkpoint the
//! ledger signed, and the latest. Public like `/api/v1/keys`: a checkpoint
//! tells only how long the log is, when it was signed and its hash.

use crate::error::{ApiError, ProblemDoc};
use crate::extract::ApiQuery;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use seatledger_schema::{ChainHash, Checkpoint};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub const CHECKPOINTS_LIMIT_DEFAULT: i64 = 100;
pub const CHECKPOINTS_LIMIT_MAX: i64 = 1_000;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CheckpointsQuery {
    /// Checkpoints at positions after this one (default 0).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// A signed head: the ledger key's Ed25519 signature over the canonical
/// JSON of `partition`, `position`, `hash`, `signed_at` and `key_id`.
#[derive(Serialize, ToSchema)]
pub struct SignedHead {
    pub partition: i16,
    pub position: i64,
    /// hex SHA-256: the chain hash of the event at `position`.
    pub hash: String,
    #[schema(format = DateTime)]
    pub signed_at: String,
    pub key_id: String,
    /// hex Ed25519 signature.
    pub signature: String,
    /// The hash the event at `position` has now (hex), or null if the log
    /// has no such event: a witness checks it equals `hash`.
    pub event_hash: Option<String>,
}

fn signed_head(checkpoint: Checkpoint, event_hash: Option<ChainHash>) -> SignedHead {
    SignedHead {
        partition: checkpoint.partition,
        position: checkpoint.position,
        hash: checkpoint.hash.to_string(),
        signed_at: checkpoint.signed_at.to_string(),
        key_id: checkpoint.key_id,
        signature: hex::encode(&checkpoint.signature),
        event_hash: event_hash.map(|hash| hash.to_string()),
    }
}

#[derive(Serialize, ToSchema)]
pub struct CheckpointsPage {
    pub checkpoints: Vec<SignedHead>,
    /// Pass as `after` to continue.
    pub next_after: i64,
}

/// Signed checkpoints after a position, in position order.
#[utoipa::path(
    get,
    path = "/api/v1/checkpoints",
    operation_id = "list_checkpoints",
    tag = "keys",
    params(CheckpointsQuery),
    responses(
        (status = 200, body = CheckpointsPage),
        (status = 400, description = "`invalid_query`", body = ProblemDoc, content_type = "application/problem+json")
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<CheckpointsQuery>,
) -> Result<Json<CheckpointsPage>, ApiError> {
    let after = query.after.unwrap_or(0);
    let limit = query.limit.unwrap_or(CHECKPOINTS_LIMIT_DEFAULT);
    if after < 0 || !(1..=CHECKPOINTS_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("after must be >= 0 and limit between 1 and {CHECKPOINTS_LIMIT_MAX}"),
        ));
    }
    let rows = state.store.checkpoints_after(0, after, limit).await?;
    let next_after = rows
        .last()
        .map_or(after, |(checkpoint, _)| checkpoint.position);
    Ok(Json(CheckpointsPage {
        checkpoints: rows
            .into_iter()
            .map(|(checkpoint, hash)| signed_head(checkpoint, hash))
            .collect(),
        next_after,
    }))
}

/// The latest signed checkpoint (404 `no_checkpoint` before the first).
#[utoipa::path(
    get,
    path = "/api/v1/checkpoints/latest",
    operation_id = "latest_checkpoint",
    tag = "keys",
    responses(
        (status = 200, body = SignedHead),
        (status = 404, description = "`no_checkpoint`: nothing signed yet", body = ProblemDoc, content_type = "application/problem+json")
    )
)]
pub async fn latest(State(state): State<AppState>) -> Result<Json<SignedHead>, ApiError> {
    match state.store.latest_checkpoint(0).await? {
        Some((checkpoint, hash)) => Ok(Json(signed_head(checkpoint, hash))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_checkpoint",
            "the ledger has signed no checkpoint yet",
        )),
    }
}
