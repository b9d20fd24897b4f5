//! One error type for the API, answered as `application/problem+json`
//! (RFC 9457), and the extractors whose rejections use the same shape:
//! JSON bodies ([`ApiJson`]), raw bodies ([`ApiBytes`]) and query strings
//! ([`ApiQuery`]).

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What went wrong and what to do about it.
    pub detail: String,
}

#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub detail: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            detail: detail.into(),
        }
    }

    pub(crate) fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    pub(crate) fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-input", detail)
    }

    pub(crate) fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub(crate) fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", detail)
    }

    /// A body larger than the route takes.
    pub(crate) fn too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", detail)
    }

    /// A request body that failed to arrive: too large, too slow, or cut
    /// off. `error` is the body's error, `limits` says what the route takes.
    pub(crate) fn body_failed(error: &(dyn std::error::Error + 'static), limits: &str) -> Self {
        let mut cause = Some(error);
        while let Some(e) = cause {
            // axum boxes the limit's error once more on its way up.
            if e.is::<http_body_util::LengthLimitError>()
                || e.is::<Box<http_body_util::LengthLimitError>>()
            {
                return Self::too_large(format!("the body is too large: {limits}"));
            }
            if let Some(timeout) = e.downcast_ref::<super::serve::BodyTimeout>() {
                return Self::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request-timeout",
                    format!(
                        "the body did not arrive within {} s of the headers (--http-body-timeout); send it in one go",
                        timeout.0.as_secs_f64()
                    ),
                );
            }
            cause = e.source();
        }
        Self::bad_request(format!("the body could not be read: {error}"))
    }

    /// A change that could not be stored under `--data-dir`, and so was not
    /// made: 503, the store's own error logged, not sent.
    pub(crate) fn storage(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "a change could not be stored; it was not made");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage-failed",
            "the change could not be stored under --data-dir, so it was not made; the server log says why (a full or read-only disk?); retry once the storage is fixed",
        )
    }

    /// A server-side failure: the detail is logged, not sent.
    pub(crate) fn internal(detail: impl std::fmt::Display) -> Self {
        crate::ratelimit::error_limited!(%detail, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to handle this request; its log says why",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self
            .status
            .canonical_reason()
            .unwrap_or("Error")
            .to_string();
        let body = Problem {
            kind: format!("https://iotmock.dev/problems/{}", self.kind),
            title,
            status: self.status.as_u16(),
            detail: self.detail,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

/// `axum::Json`, with rejections answered as problem+json: a body that is
/// not JSON is a 400; JSON of the wrong shape is a 422 naming the field.
pub(super) struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(match rejection {
                JsonRejection::JsonDataError(e) => ApiError::invalid(format!(
                    "the JSON body does not have the expected shape: {}",
                    e.body_text().trim_start_matches(
                        "Failed to deserialize the JSON body into the target type: "
                    )
                )),
                JsonRejection::JsonSyntaxError(e) => {
                    ApiError::bad_request(format!("the body is not valid JSON: {}", e.body_text()))
                }
                JsonRejection::MissingJsonContentType(_) => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported-media-type",
                    "send the body as JSON with the header Content-Type: application/json",
                ),
                JsonRejection::BytesRejection(e) => ApiError::body_failed(&e, JSON_LIMITS),
                other => ApiError::bad_request(other.body_text()),
            }),
        }
    }
}

/// What JSON bodies may weigh, for the 413 answer.
const JSON_LIMITS: &str = "JSON bodies carry at most 2 MiB (16 MiB for POST /devices/bulk)";

/// A raw body, with rejections answered as problem+json (413 when larger
/// than the route takes, 408 when it does not arrive in time).
pub(super) struct ApiBytes(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::body::Bytes::from_request(req, state)
            .await
            .map(Self)
            .map_err(|e: BytesRejection| {
                ApiError::body_failed(&e, "plugin components carry at most 64 MiB")
            })
    }
}

/// `axum::extract::Query`, with rejections answered as problem+json: a
/// query string that does not fit the route's parameters is a 422 naming
/// the parameter.
pub(super) struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(q)| Self(q))
            .map_err(|e| {
                ApiError::invalid(format!(
                    "the query string does not fit this route's parameters (see /api/v1/openapi.json): {}",
                    e.body_text()
                        .trim_start_matches("Failed to deserialize query string: ")
                ))
            })
    }
}
