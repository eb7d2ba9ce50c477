//! The one HTTP error type: every failure becomes `application/problem+json`
//! with a stable `code`. 5xx causes are logged with their chain and never
//! sent to the client; 503 carries `Retry-After`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use seatledger_ledger::domain::Rejection;
use seatledger_ledger::AppendError;
use serde::Serialize;

/// Marks a response that found the event store unavailable (see
/// [`crate::store_gate`]).
#[derive(Clone, Copy, Debug)]
pub struct StoreWasUnavailable;

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_S: u32 = 2;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Seconds for `Retry-After` (429); 503 always carries one.
    pub retry_after_s: Option<u64>,
}

/// The problem+json body every error has (RFC 9457), for the OpenAPI
/// document.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ProblemDoc {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable code, e.g. `no_seats_available`.
    pub code: String,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            retry_after_s: None,
        }
    }

    /// 429 `too_many_requests`, to be retried after `seconds`.
    pub fn too_many_requests(seconds: u64, detail: impl Into<String>) -> Self {
        ApiError {
            retry_after_s: Some(seconds.max(1)),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", detail)
        }
    }

    pub fn not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }

    /// 408 `body_timeout`: the body did not arrive within the body read
    /// timeout; the connection is closed after this answer.
    pub fn body_timeout() -> Self {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the request body did not arrive in time (--body-read-timeout-s)",
        )
    }

    pub fn store_unavailable() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the event store is unavailable; retry later",
        )
    }

    /// An unexpected failure: logged here with its cause, opaque to the client.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error = %error_chain(cause), "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an internal error occurred",
        )
    }

    pub fn rejection(rejection: Rejection) -> Self {
        let status = match rejection {
            Rejection::OrganizationNotFound
            | Rejection::LicenseNotFound
            | Rejection::SessionNotFound
            | Rejection::UserNotFound => StatusCode::NOT_FOUND,
            Rejection::NoSeatsAvailable
            | Rejection::OrganizationAlreadyExists
            | Rejection::UserAlreadyExists
            | Rejection::LicenseAlreadyExists
            | Rejection::LicenseNotSuspended => StatusCode::CONFLICT,
            Rejection::LicenseExpired
            | Rejection::LicenseSuspended
            | Rejection::LicenseRevoked
            | Rejection::NotLeaseHolder
            | Rejection::ClientAuthNotAllowed
            | Rejection::OwnerIsPermanent => StatusCode::FORBIDDEN,
            Rejection::SessionExpired => StatusCode::GONE,
            Rejection::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, rejection.code(), rejection.message())
    }
}

impl ApiError {
    /// 500 `stream_unreadable`: this license's (or organization's) history
    /// cannot be read back. The cause is logged by whoever found it (once
    /// per stream by the appender); the client learns no internals.
    pub fn stream_unreadable() -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "stream_unreadable",
            "this resource's history cannot be read; the operator has been alerted",
        )
    }
}

impl From<AppendError> for ApiError {
    fn from(error: AppendError) -> Self {
        if let AppendError::StreamUnreadable { .. } | AppendError::Unencodable { .. } = error {
            return ApiError::stream_unreadable();
        }
        if error.is_unavailable() {
            tracing::warn!(error = %error_chain(&error), "store unavailable");
            ApiError::store_unavailable()
        } else {
            ApiError::internal(&error)
        }
    }
}

impl From<seatledger_ledger::StoreError> for ApiError {
    fn from(error: seatledger_ledger::StoreError) -> Self {
        if let seatledger_ledger::StoreError::Pruned { .. } = error {
            // What was asked for left the database with a pruned segment:
            // gone for good here, readable from its archive.
            return ApiError::new(StatusCode::GONE, "events_pruned", error.to_string());
        }
        if error.is_unavailable() {
            tracing::warn!(error = %error_chain(&error), "store unavailable");
            ApiError::store_unavailable()
        } else {
            ApiError::internal(&error)
        }
    }
}

impl From<crate::directory::DirectoryError> for ApiError {
    fn from(error: crate::directory::DirectoryError) -> Self {
        match error {
            crate::directory::DirectoryError::EmailTaken => ApiError::new(
                StatusCode::CONFLICT,
                "email_taken",
                "a user with this email is already registered",
            ),
            crate::directory::DirectoryError::Store(error) => ApiError::from(error),
        }
    }
}

impl From<seatledger_ledger::domain::InvalidField> for ApiError {
    fn from(error: seatledger_ledger::domain::InvalidField) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            error.to_string(),
        )
    }
}

pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let problem = Problem {
            kind: format!("https://seatledger.dev/problems/{}", self.code),
            title,
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::REQUEST_TIMEOUT {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.code == "store_unavailable" {
            // The store gate learns from this that the store is down.
            response.extensions_mut().insert(StoreWasUnavailable);
        }
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        } else if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
        }
        response
    }
}
