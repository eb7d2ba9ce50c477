//! Request extractors whose every failure is a problem+json `ApiError`:
//! JSON bodies (keeping the raw bytes for idempotency hashing), optional
//! JSON bodies, ids in paths, query strings, and the `Idempotency-Key`.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use seatledger_schema::limits::COMMAND_ID_LEN_MAX;
use seatledger_schema::LicenseId;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// A JSON body, parsed, with the bytes it came from.
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Bytes,
}

async fn body_bytes<S: Send + Sync>(
    request: Request,
    state: &S,
) -> Result<(HeaderMap, Bytes), ApiError> {
    let headers = request.headers().clone();
    let bytes = Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if crate::http::is_body_timeout(&rejection) {
                ApiError::body_timeout()
            } else if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is larger than 64 KiB",
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    rejection.body_text(),
                )
            }
        })?;
    Ok((headers, bytes))
}

fn require_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON with Content-Type: application/json",
        ))
    }
}

/// Parses JSON: syntax errors (including truncated bodies) are 400
/// `malformed_json`; wrong types, missing or unknown fields are 422
/// `invalid_request`. A body is parsed once; only a body that fails is
/// parsed again, without types, to tell a syntax error from a type error
/// (serde reports whichever it meets first, so `[1,2` would look like a
/// type error).
///
/// A type error names the field it is in (`expires_at: must lie between
/// …`), so a client can tell which value was refused.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|error| (error.path().to_string(), error.into_inner()))
        .and_then(|value| {
            deserializer
                .end()
                .map(|()| value)
                .map_err(|error| (String::new(), error))
        });
    parsed.map_err(|(path, error)| {
        let detail = if path.is_empty() || path == "." {
            error.to_string()
        } else {
            format!("{path}: {error}")
        };
        match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Err(syntax) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                syntax.to_string(),
            ),
            Ok(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", detail),
        }
    })
}

/// A request body parsed as an object: every body of this API is one.
/// serde would also read a struct from an array of its fields in order
/// (`[3, null]`), which the document does not allow.
fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value = parse_json(bytes)?;
    match bytes.trim_ascii_start().first() {
        Some(b'{') => Ok(value),
        _ => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "the body must be a JSON object",
        )),
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (headers, raw) = body_bytes(request, state).await?;
        require_json_content_type(&headers)?;
        Ok(JsonBody {
            value: parse_object(&raw)?,
            raw,
        })
    }
}

/// A JSON body that may be absent (empty, or `null`).
pub struct OptionalJsonBody<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (headers, raw) = body_bytes(request, state).await?;
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(None));
        }
        require_json_content_type(&headers)?;
        // `null` is no body too (the document allows either).
        if raw.trim_ascii() == b"null" {
            return Ok(OptionalJsonBody(None));
        }
        Ok(OptionalJsonBody(Some(parse_object(&raw)?)))
    }
}

/// A license id in the path; anything that is not a uuid cannot name a
/// license, so it is 404 `license_not_found`.
pub struct LicenseIdPath(pub LicenseId);

impl<S: Send + Sync> FromRequestParts<S> for LicenseIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        path_uuid(parts, state)
            .await
            .map(LicenseIdPath)
            .ok_or_else(|| {
                ApiError::rejection(seatledger_ledger::domain::Rejection::LicenseNotFound)
            })
    }
}

/// The path's one parameter as a uuid; None if it is not one (which then
/// names nothing: the caller answers its own 404).
pub async fn path_uuid<S: Send + Sync, T: From<Uuid>>(parts: &mut Parts, state: &S) -> Option<T> {
    let Path(text) = Path::<String>::from_request_parts(parts, state)
        .await
        .ok()?;
    Uuid::parse_str(&text).ok().map(T::from)
}

/// A query string; errors are 400 `invalid_query`.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|rejection| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    rejection.body_text(),
                )
            })
    }
}

/// The optional `Idempotency-Key` header: 1 to 200 visible ASCII characters.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        let invalid = || {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                format!(
                    "Idempotency-Key must be 1 to {COMMAND_ID_LEN_MAX} visible ASCII characters"
                ),
            )
        };
        let text = value.to_str().map_err(|_| invalid())?;
        if text.is_empty()
            || text.len() > COMMAND_ID_LEN_MAX
            || !text.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(invalid());
        }
        Ok(IdempotencyKey(Some(text.to_owned())))
    }
}

/// The client's address (the TCP peer), when the server was started with
/// connect info (always under `serve`; not in a router driven directly).
pub struct ClientAddress(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0.ip()),
        ))
    }
}

/// Integer fields as JSON Schema counts integers: `3600` and `3600.0` are
/// the same number, and an integral JSON number is an integer whatever its
/// spelling. For `#[serde(deserialize_with = "integral")]`.
pub fn integral<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::{Error, Unexpected};
    use serde::Deserialize;
    let number = serde_json::Number::deserialize(deserializer)?;
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    });
    let unexpected = |number: &serde_json::Number| match number.as_f64() {
        Some(f) => Unexpected::Float(f),
        None => Unexpected::Other("a number"),
    };
    let whole = whole
        .ok_or_else(|| D::Error::invalid_value(unexpected(&number), &"a non-negative integer"))?;
    T::try_from(whole)
        .map_err(|_| D::Error::invalid_value(Unexpected::Unsigned(whole), &"a smaller integer"))
}

/// [`integral`] for an optional field (absent or `null`: `None`); use with
/// `#[serde(default)]`.
pub fn optional_integral<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    #[derive(serde::Deserialize)]
    struct Wrapped<T: TryFrom<u64>>(#[serde(deserialize_with = "integral")] T);
    use serde::Deserialize;
    Ok(Option::<Wrapped<T>>::deserialize(deserializer)?.map(|Wrapped(value)| value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Body {
        #[serde(deserialize_with = "integral")]
        seats: u32,
        #[serde(default, deserialize_with = "optional_integral")]
        ttl_s: Option<u64>,
    }

    #[test]
    fn integral_numbers_are_integers_in_any_spelling() {
        let parse = |text: &str| serde_json::from_str::<Body>(text).map_err(|e| e.to_string());
        assert_eq!(
            parse(r#"{"seats": 3.0, "ttl_s": 3600.0}"#),
            Ok(Body {
                seats: 3,
                ttl_s: Some(3600)
            })
        );
        assert_eq!(
            parse(r#"{"seats": 3e0}"#),
            Ok(Body {
                seats: 3,
                ttl_s: None
            })
        );
        assert_eq!(
            parse(r#"{"seats": 3, "ttl_s": null}"#),
            Ok(Body {
                seats: 3,
                ttl_s: None
            })
        );
        for bad in [
            r#"{"seats": 3.5}"#,
            r#"{"seats": -1}"#,
            r#"{"seats": "3"}"#,
            r#"{"seats": 4294967296}"#,
            r#"{"seats": 1e300}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
