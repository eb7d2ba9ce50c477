//! The router (docs/design.md §5). Every API route is registered through
//! utoipa-axum, so the router and `/openapi.json` come from the same list
//! and cannot drift apart. Trailing slashes are trimmed before routing (see
//! `server`).

pub(crate) mod auth;
mod checkpoints;
mod client_tokens;
mod events;
mod health;
mod keys;
mod licenses;
mod meta;
mod seats;
mod usage;
mod users;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode};
use axum::{middleware, Extension, Router};
use seatledger_ledger::domain::Command;
use seatledger_ledger::{CommandResult, Submission};
use seatledger_schema::Metadata;
use seatledger_schema::OrgId;
use std::sync::Arc;
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

/// Largest request body accepted.
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "seatledger",
        description = "An event-sourced licensing ledger: acquire, heartbeat and release license seats. \
            Errors are application/problem+json with a stable `code`.",
        license(name = "Apache-2.0")
    ),
    components(schemas(crate::error::ProblemDoc)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "license",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`License <key>`: the license key alone acquires a seat of that license, if its `client_auth` is `license_key` or `both`",
            ))),
        );
        // `Authorization: Lease <lease_token>` (heartbeat and release of
        // that one lease). Not an IANA-registered HTTP scheme, so it is
        // described as the header it is.
        components.add_security_scheme(
            "lease",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`Lease <lease_token>`: the `lease_token` an acquire answered; authorizes the heartbeats and the release of that lease only",
            ))),
        );
    }
}

/// Documents the problems every route of a kind can answer, derived from
/// the operation itself so no route can forget one: 401 for routes that
/// need a token; 400/413/415/422 for routes with a JSON body; 503 for
/// routes that reach the event store. Route-specific codes stay on the
/// routes (an existing entry is never replaced).
struct CommonProblems;

impl utoipa::Modify for CommonProblems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let reaches_store = crate::store_gate::reaches_store(path);
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                problems_as_sent(operation);
                let token = operation.security.is_some();
                let body = operation.request_body.is_some();
                for (applies, status, codes) in COMMON_PROBLEMS {
                    let applies = match applies {
                        Applies::Token => token,
                        Applies::Body => body,
                        Applies::Store => reaches_store,
                    };
                    if applies {
                        add_problem(operation, status, codes);
                    }
                }
            }
        }
    }
}

/// Which operations a common problem applies to.
enum Applies {
    /// Those that need a token.
    Token,
    /// Those with a JSON body.
    Body,
    /// Those that reach the event store.
    Store,
}

const COMMON_PROBLEMS: [(Applies, &str, &str); 9] = [
    (Applies::Token, "401", "`unauthorized`: missing, malformed, unknown or revoked bearer token; `token_expired`"),
    (Applies::Token, "403", "`forbidden`: a client token (scope `seats`) calling anything but acquire, heartbeat or release"),
    (Applies::Body, "400", "`malformed_json`"),
    (Applies::Body, "408", "`body_timeout`: the body did not arrive within `--body-read-timeout-s`; the connection is closed"),
    (Applies::Body, "413", "`payload_too_large`: body over 64 KiB"),
    (Applies::Body, "415", "`unsupported_media_type`: the body must be application/json"),
    (Applies::Body, "422", "`invalid_request`: wrong types, missing or unknown fields, values out of range"),
    (Applies::Store, "500", "`stream_unreadable`: the license's or organization's history cannot be read back (logged for the operator); other licenses are unaffected"),
    (Applies::Store, "503", "`store_unavailable` or `request_timeout`, with Retry-After"),
];

/// Adds a problem response, unless the route documents that status itself.
fn add_problem(operation: &mut utoipa::openapi::path::Operation, status: &str, codes: &str) {
    operation
        .responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| {
            utoipa::openapi::ResponseBuilder::new()
                .description(codes)
                .content(
                    "application/problem+json",
                    utoipa::openapi::Content::new(Some(utoipa::openapi::Ref::from_schema_name(
                        "ProblemDoc",
                    ))),
                )
                .build()
                .into()
        });
}

/// Every problem is sent as application/problem+json: say so for the
/// responses a route declares with `body = ProblemDoc` (utoipa files them
/// under application/json).
fn problems_as_sent(operation: &mut utoipa::openapi::path::Operation) {
    for response in operation.responses.responses.values_mut() {
        let utoipa::openapi::RefOr::T(response) = response else {
            continue;
        };
        let is_problem = response.content.get("application/json").is_some_and(|content| {
            matches!(&content.schema, Some(utoipa::openapi::RefOr::Ref(reference)) if reference.ref_location.ends_with("/ProblemDoc"))
        });
        if is_problem {
            if let Some(content) = response.content.shift_remove("application/json") {
                response
                    .content
                    .insert("application/problem+json".to_owned(), content);
            }
        }
    }
}

/// The documented API: router and OpenAPI document from one list.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(auth::register))
        .routes(routes!(auth::login))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::logout_all))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::me))
        .routes(routes!(auth::change_password))
        .routes(routes!(users::add_user, users::list_users))
        .routes(routes!(users::change_role, users::deactivate))
        .routes(routes!(licenses::issue, licenses::list))
        .routes(routes!(licenses::get, licenses::update))
        .routes(routes!(licenses::suspend))
        .routes(routes!(licenses::reinstate))
        .routes(routes!(licenses::revoke))
        .routes(routes!(licenses::sessions))
        .routes(routes!(seats::acquire))
        .routes(routes!(seats::heartbeat))
        .routes(routes!(seats::release))
        .routes(routes!(client_tokens::create, client_tokens::list))
        .routes(routes!(client_tokens::revoke))
        .routes(routes!(events::feed))
        .routes(routes!(usage::usage))
        .routes(routes!(keys::keys))
        .routes(routes!(checkpoints::list))
        .routes(routes!(checkpoints::latest))
        .routes(routes!(meta::openapi_json))
        .routes(routes!(meta::metrics))
        .split_for_parts();
    // After the paths exist: `ApiDoc`'s own modifiers run before any route
    // is added.
    utoipa::Modify::modify(&CommonProblems, &mut document);
    (router, document)
}

/// The served document, rendered once.
#[derive(Clone)]
pub struct OpenApiJson(pub Arc<String>);

pub fn router(state: AppState) -> Router {
    let (api, document) = api();
    let document = OpenApiJson(Arc::new(document.to_pretty_json().unwrap_or_default()));
    api.route(
        crate::framing::AMBIGUOUS_PATH,
        axum::routing::get(|| async {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "a request may not carry both Content-Length and Transfer-Encoding \
                 (RFC 9112 section 6.3); the connection is closed",
            )
        }),
    )
    .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
    .method_not_allowed_fallback(|| async {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not accept that method",
        )
    })
    .layer(Extension(document))
    .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
    .layer(middleware::from_fn_with_state(
        state.store_gate.clone(),
        crate::store_gate::gate,
    ))
    .layer(middleware::from_fn_with_state(
        state.request_timeout,
        time_limit,
    ))
    .layer(middleware::from_fn_with_state(
        state.metrics.clone(),
        crate::metrics::track,
    ))
    .layer(middleware::from_fn(request_id))
    .with_state(state)
}

/// The request id header, read from clients and sent on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A client's request id if it is 1 to `REQUEST_ID_LEN_MAX` visible ASCII
/// characters.
fn valid_request_id(value: &axum::http::HeaderValue) -> Option<&str> {
    value.to_str().ok().filter(|text| {
        !text.is_empty()
            && text.len() <= seatledger_schema::limits::REQUEST_ID_LEN_MAX
            && text.bytes().all(|b| b.is_ascii_graphic())
    })
}

/// Gives every request an id (the client's `x-request-id` when it sends a
/// usable one, else a new UUIDv7), which handlers carry into the metadata
/// of the events they append and which every response returns; and logs
/// one line per request with it.
async fn request_id(
    mut request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let id = match request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(valid_request_id)
    {
        Some(id) => id.to_owned(),
        None => Uuid::now_v7().to_string(),
    };
    let header = axum::http::HeaderValue::from_str(&id).ok();
    if let Some(header) = &header {
        request
            .headers_mut()
            .insert(REQUEST_ID_HEADER, header.clone());
    }
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(
            || request.uri().path().to_owned(),
            |path| path.as_str().to_owned(),
        );
    // Everything logged while serving the request carries its id, and the
    // org id once the caller is authenticated (recorded by `Principal`).
    let span = tracing::info_span!("request", request_id = %id, org_id = tracing::field::Empty);
    let mut response = next.run(request).instrument(span.clone()).await;
    let headers = response.headers_mut();
    if let Some(header) = header {
        headers.insert(REQUEST_ID_HEADER, header);
    }
    security_headers(headers);
    span.in_scope(|| {
        tracing::info!(
            method = %method,
            route = %route,
            status = response.status().as_u16(),
            latency_ms = started.elapsed().as_micros() as f64 / 1000.0,
            "request"
        )
    });
    response
}

/// Headers every response carries: `X-Content-Type-Options: nosniff`, and
/// `Cache-Control: no-store` unless the route chose its own. Answers of
/// this API carry secrets (tokens from login, register, refresh and token
/// creation; license keys) or live state (seats in use) that no cache
/// between client and server should keep, so storing is opted into, not
/// out of.
fn security_headers(headers: &mut axum::http::HeaderMap) {
    use axum::http::{header, HeaderValue};
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

/// Answers 503 `request_timeout` (with Retry-After) when a request takes
/// longer than the limit, instead of letting it hang with a stuck store.
/// A write cut short this way may still commit afterwards: a retry with the
/// same `Idempotency-Key` answers what it did.
async fn time_limit(
    axum::extract::State(limit): axum::extract::State<std::time::Duration>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(limit_s = limit.as_secs_f64(), "request timed out");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                "the request took longer than the server allows; retry later \
                 (with the same Idempotency-Key, if it had one)",
            )
            .into_response()
        }
    }
}

/// Event metadata for a request: who, and the client's request id if it
/// sent a sane one.
pub(crate) fn metadata(principal: Option<&Principal>, headers: &HeaderMap) -> Metadata {
    let request_id = headers
        .get(REQUEST_ID_HEADER)
        .and_then(valid_request_id)
        .map(str::to_owned);
    Metadata {
        actor: principal.map(|p| format!("user:{}", p.user_id)),
        correlation_id: None,
        request_id,
    }
}

/// A request's `Idempotency-Key` with what identifies the request.
pub(crate) struct Idempotency<'a> {
    pub key: String,
    /// Who sent it: a key belongs to its caller, not to the organization,
    /// so two users who pick the same key never get each other's result.
    pub caller: Uuid,
    pub route: &'static str,
    /// The raw body; compared as parsed JSON (see `request_identity`).
    pub body: &'a [u8],
}

impl Idempotency<'_> {
    /// The key as the ledger records it: scoped to the caller.
    fn command_id(&self) -> String {
        format!("{}:{}", self.caller, self.key)
    }

    /// The route and the body as canonical JSON (sorted keys, no
    /// whitespace), so the same body sent with other spacing or key order
    /// is the same request; a body that is not JSON counts as its bytes.
    fn request_hash(&self) -> [u8; 32] {
        let body = match serde_json::from_slice::<serde_json::Value>(self.body) {
            Ok(value) => {
                let mut canonical = Vec::with_capacity(self.body.len());
                seatledger_schema::canonical::write_canonical_json(&mut canonical, &value);
                canonical
            }
            Err(_) => self.body.to_vec(),
        };
        seatledger_ledger::request_hash(&[self.route.as_bytes(), &body])
    }
}

/// One command through the appender, with the request's idempotency key.
pub(crate) async fn submit(
    state: &AppState,
    org_id: OrgId,
    command: Command,
    metadata: Metadata,
    idempotency: Option<Idempotency<'_>>,
) -> Result<CommandResult, ApiError> {
    let mut submission = Submission::new(org_id, command).with_metadata(metadata);
    if let Some(idempotency) = idempotency {
        submission =
            submission.with_command_id(idempotency.command_id(), idempotency.request_hash());
    }
    Ok(state.appender.submit(submission).await?)
}

/// The result's rejection as an error, else the result.
pub(crate) fn accepted(result: CommandResult) -> Result<CommandResult, ApiError> {
    match result.rejection {
        Some(rejection) => Err(ApiError::rejection(rejection)),
        None => Ok(result),
    }
}
