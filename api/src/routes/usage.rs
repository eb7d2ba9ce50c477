//! The live billing report: `GET /api/v1/usage`, read from the billing
//! follower's tables (never by folding the log per request), as JSON or,
//! with `Accept: text/csv`, as the CSV `seatledger-replay usage` writes.

use crate::auth::Admin;
use crate::error::{ApiError, ProblemDoc};
use crate::extract::ApiQuery;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use seatledger_projections::billing_live::{self, UsageError, UsageQuery};
use seatledger_projections::{usage_csv, Granularity, UsageRow};
use seatledger_schema::{limits, Timestamp};
use seatledger_schema::{LicenseId, OrgId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Headers that say what a report reflects (on JSON and CSV alike).
pub const AS_OF_HEADER: &str = "seatledger-as-of";
pub const POSITION_HEADER: &str = "seatledger-position";

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Periods that end after this instant (RFC 3339, UTC), required.
    #[param(format = DateTime, required = true)]
    pub from: Option<String>,
    /// Periods that start before this instant (RFC 3339, UTC), required;
    /// after `from`, and at most 1000 periods later.
    #[param(format = DateTime, required = true)]
    pub to: Option<String>,
    /// `hour`, `day` (default) or `month`; UTC calendar periods.
    #[param(pattern = "^(hour|day|month)$")]
    pub granularity: Option<String>,
    /// Only this license.
    #[param(format = Uuid)]
    pub license_id: Option<String>,
}

/// One license in one period (seat time in microseconds).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UsageRowDoc {
    #[schema(value_type = Uuid)]
    org_id: OrgId,
    #[schema(value_type = Uuid)]
    license_id: LicenseId,
    #[schema(format = DateTime)]
    period_start: String,
    #[schema(format = DateTime)]
    period_end: String,
    seat_micros: u64,
    overage_seat_micros: u64,
    peak_seats: u32,
    distinct_users: u32,
    distinct_machines: u32,
    denials: u64,
}

#[derive(Serialize, ToSchema)]
pub struct UsageReport {
    #[schema(value_type = Uuid)]
    pub org_id: OrgId,
    /// `hour`, `day` or `month`.
    pub granularity: String,
    #[schema(value_type = String, format = DateTime)]
    pub from: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub to: Timestamp,
    /// Leases still open count up to this instant (the server's clock when
    /// it answered), or to their `expires_at` if earlier.
    #[schema(value_type = String, format = DateTime)]
    pub as_of: Timestamp,
    /// The log position the report reflects (events after it are not in it
    /// yet; the billing follower trails the log by moments).
    pub position: i64,
    #[schema(value_type = Vec<UsageRowDoc>)]
    pub rows: Vec<UsageRow>,
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", detail)
}

fn instant(name: &str, value: Option<&str>) -> Result<Timestamp, ApiError> {
    let value = value.ok_or_else(|| invalid(format!("{name} is required (RFC 3339)")))?;
    Timestamp::parse(value).map_err(|error| invalid(format!("{name}: {error}")))
}

/// The query, checked: both instants, `from < to`, a known granularity and
/// at most `USAGE_PERIODS_MAX` periods.
fn parse(params: &UsageParams, org_id: OrgId, as_of: Timestamp) -> Result<UsageQuery, ApiError> {
    let from = instant("from", params.from.as_deref())?;
    let to = instant("to", params.to.as_deref())?;
    let granularity = match params.granularity.as_deref() {
        None => Granularity::Day,
        Some(text) => Granularity::parse(text)
            .ok_or_else(|| invalid("granularity must be hour, day or month"))?,
    };
    let license_id = match params.license_id.as_deref() {
        None => None,
        Some(text) => Some(
            text.parse::<LicenseId>()
                .map_err(|_| invalid("license_id must be a UUID"))?,
        ),
    };
    if from >= to {
        return Err(invalid("from must be before to"));
    }
    let mut period = granularity.period_start(from);
    for _ in 0..limits::USAGE_PERIODS_MAX {
        period = granularity.next_period(period);
        if period >= to {
            return Ok(UsageQuery {
                org_id,
                license_id,
                granularity,
                from,
                to,
                as_of,
            });
        }
    }
    Err(invalid(format!(
        "from..to spans more than {} {} periods",
        limits::USAGE_PERIODS_MAX,
        granularity.as_str()
    )))
}

/// Seat usage of the organization per license and UTC period (owner or
/// admin): seat time, overage seat time, peak concurrent seats, distinct
/// users and machines, denials. JSON (seat time in microseconds), or CSV
/// with `Accept: text/csv` (seat time in seconds, six decimals: the format
/// of `seatledger-replay usage`). Rows exist for periods with any usage.
#[utoipa::path(
    get,
    path = "/api/v1/usage",
    tag = "usage",
    security(("bearer" = [])),
    params(UsageParams),
    responses(
        (status = 200, description = "the report",
            content((UsageReport = "application/json"), (String = "text/csv")),
            headers(
                ("seatledger-as-of" = String, description = "open leases count up to this instant"),
                ("seatledger-position" = i64, description = "the log position the report reflects")
            )),
        (status = 400, description = "`invalid_query`: unknown parameters", body = ProblemDoc),
        (status = 403, description = "`forbidden`", body = ProblemDoc),
        (status = 422, description = "`invalid_query`: from, to, granularity or license_id missing, malformed or out of range", body = ProblemDoc),
        (status = 500, description = "`usage_incomplete`: the organization's log holds an event billing cannot read (run `seatledger-replay verify`)", body = ProblemDoc)
    )
)]
pub async fn usage(
    State(state): State<AppState>,
    Admin(admin): Admin,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> Result<Response, ApiError> {
    let query = parse(&params, admin.org_id, state.clock.now())?;
    let report = billing_live::usage(&state.store, &query)
        .await
        .map_err(|error| match error {
            UsageError::Store(error) => ApiError::from(error),
            UsageError::Incomplete { position } => {
                tracing::error!(position, org_id = %admin.org_id, "usage refused: undecodable event");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "usage_incomplete",
                    format!("the event at position {position} cannot be read: usage would be incomplete; the operator should run seatledger-replay verify"),
                )
            }
        })?;
    let report_headers = [
        (AS_OF_HEADER, report.as_of.to_string()),
        (POSITION_HEADER, report.position.to_string()),
    ];
    if wants_csv(&headers) {
        return Ok((
            report_headers,
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            usage_csv(&report.rows),
        )
            .into_response());
    }
    Ok((
        report_headers,
        Json(UsageReport {
            org_id: admin.org_id,
            granularity: query.granularity.as_str().to_owned(),
            from: query.from,
            to: query.to,
            as_of: report.as_of,
            position: report.position,
            rows: report.rows,
        }),
    )
        .into_response())
}

/// `Accept: text/csv` (alone or first among types) asks for CSV.
fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|item| item.split(';').next().unwrap_or("").trim())
        .find(|media| !media.is_empty())
        .is_some_and(|media| media.eq_ignore_ascii_case("text/csv"))
}
