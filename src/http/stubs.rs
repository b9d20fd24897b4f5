//! Mock HTTP endpoints: stub management, the answers under `/mock/` (and
//! on `--mock-http`), the request journal and verify.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiQuery, Problem};
use crate::stubs::matcher::compile_map;
use crate::stubs::serve::{MAX_STUB_BODY, Mount, answer};
use crate::stubs::{
    HttpEntry, HttpVerifySpec, NearMiss, PathPattern, RequestFilter, StubDef, StubError, StubView,
};
use crate::verify::Verdict;

/// Largest page of `GET /http/requests`.
const MAX_PAGE: usize = 10_000;

impl From<StubError> for ApiError {
    fn from(e: StubError) -> Self {
        match e {
            StubError::Invalid(_) => ApiError::invalid(e.to_string()),
            StubError::Duplicate(_) => ApiError::conflict(e.to_string()),
            StubError::NotFound(_) => ApiError::not_found(e.to_string()),
            StubError::Store(_) => ApiError::storage(e),
        }
    }
}

/// Adds a stub. It answers at once under `/mock/` (and on `--mock-http`).
#[utoipa::path(post, path = "/api/v1/stubs", tag = "stubs",
    request_body = StubDef,
    responses((status = 201, body = StubView),
        (status = 409, description = "the id is taken", body = Problem),
        (status = 422, body = Problem)))]
pub(super) async fn stubs_create(
    State(state): State<AppState>,
    ApiJson(def): ApiJson<StubDef>,
) -> Result<(StatusCode, Json<StubView>), ApiError> {
    Ok((StatusCode::CREATED, Json(state.stubs.create(def).await?)))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct StubList {
    /// In the order they are tried: highest priority first, then newest.
    pub items: Vec<StubView>,
}

/// Every stub, with how often it was called.
#[utoipa::path(get, path = "/api/v1/stubs", tag = "stubs",
    responses((status = 200, body = StubList)))]
pub(super) async fn stubs_index(State(state): State<AppState>) -> Json<StubList> {
    Json(StubList {
        items: state.stubs.list(),
    })
}

#[utoipa::path(get, path = "/api/v1/stubs/{id}", tag = "stubs",
    params(("id" = String, Path, description = "stub id")),
    responses((status = 200, body = StubView), (status = 404, body = Problem)))]
pub(super) async fn stubs_show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StubView>, ApiError> {
    Ok(Json(state.stubs.get(&id)?))
}

#[utoipa::path(delete, path = "/api/v1/stubs/{id}", tag = "stubs",
    params(("id" = String, Path, description = "stub id")),
    responses((status = 204), (status = 404, body = Problem)))]
pub(super) async fn stubs_destroy(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.stubs.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct StubsCleared {
    pub deleted: usize,
}

/// Removes every stub (scenario ones too, until the next start).
#[utoipa::path(delete, path = "/api/v1/stubs", tag = "stubs",
    responses((status = 200, body = StubsCleared)))]
pub(super) async fn stubs_clear(
    State(state): State<AppState>,
) -> Result<Json<StubsCleared>, ApiError> {
    Ok(Json(StubsCleared {
        deleted: state.stubs.delete_all().await?,
    }))
}

/// Answers a request under `/mock/` with the matching stub (any method;
/// the stub sees the path without `/mock`); 404 problem+json naming the
/// closest stub and why it did not match.
#[utoipa::path(get, path = "/mock/{path}", tag = "stubs",
    params(("path" = String, Path, description = "the path the stubs match, e.g. ota/d-1/manifest")),
    responses((status = 200, description = "whatever the matching stub declares"),
        (status = 404, description = "no stub matched", body = NoStubMatched)))]
pub(super) async fn mock_prefixed(State(state): State<AppState>, request: Request) -> Response {
    mock_answer(&state, Mount::Prefixed, request).await
}

/// Answers a request on `--mock-http` (real paths, no prefix).
pub(super) async fn mock_root(State(state): State<AppState>, request: Request) -> Response {
    mock_answer(&state, Mount::Root, request).await
}

/// Reads a mock request's body, then lets the stubs answer it.
async fn mock_answer(state: &AppState, mount: Mount, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_STUB_BODY).await {
        Ok(b) => b,
        Err(error) => {
            return ApiError::body_failed(
                &error,
                &format!("stub requests carry at most {MAX_STUB_BODY} bytes of body"),
            )
            .into_response();
        }
    };
    answer(&state.stubs, &state.fleet, &state.clock, mount, parts, body).await
}

/// The 404 body of a request no stub matched.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct NoStubMatched {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// Names the closest stub and every matcher that failed.
    pub detail: String,
    pub closest: Option<NearMiss>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct RequestsQuery {
    /// `GET`, `POST`, ...
    pub method: Option<String>,
    /// A path prefix (`/ota`), or a pattern with `{name}`, `*` or `**`.
    pub path: Option<String>,
    /// Requests a stub answered.
    pub stub: Option<String>,
    /// Requests that authenticated as this device.
    pub device: Option<String>,
    /// `true`: only requests no stub matched.
    pub unmatched: Option<bool>,
    /// A cursor (only later entries), or an RFC 3339 time (received at or
    /// after, wall clock).
    pub since: Option<String>,
    /// At most this many (default 100, at most 10,000).
    pub limit: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct RequestsPage {
    /// `{"cursor","received_at","sim_time","listener":"api"|"mock"|"mock_http","method","path","query","headers","body","body_encoding","body_truncated","stub","device","status","fault"}`.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<HttpEntry>,
    /// Pass as `since` for the next page.
    pub next_cursor: u64,
    pub capacity: usize,
    /// Requests evicted from the journal since the start (it was full).
    pub evicted: u64,
}

fn filter_of(
    method: Option<&str>,
    path: Option<&str>,
    stub: Option<String>,
    device: Option<String>,
    unmatched: bool,
) -> Result<RequestFilter, ApiError> {
    let method = method
        .map(|m| {
            Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| ApiError::invalid(format!("method {m:?} is not an HTTP method")))
        })
        .transpose()?;
    let path = path
        .map(|p| PathPattern::parse(p).map_err(ApiError::invalid))
        .transpose()?;
    Ok(RequestFilter {
        method,
        path,
        stub,
        device,
        unmatched,
        received_since: None,
    })
}

/// Recent requests to stubs and to the device API, oldest first.
#[utoipa::path(get, path = "/api/v1/http/requests", tag = "stubs",
    params(RequestsQuery),
    responses((status = 200, body = RequestsPage), (status = 422, body = Problem)))]
pub(super) async fn http_requests(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<RequestsQuery>,
) -> Result<Json<RequestsPage>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::invalid(format!(
            "limit {limit} is out of range: use 1 to {MAX_PAGE}"
        )));
    }
    let mut filter = filter_of(
        q.method.as_deref(),
        q.path.as_deref(),
        q.stub,
        q.device,
        q.unmatched.unwrap_or(false),
    )?;
    let mut since = 0;
    match q.since.as_deref() {
        None => {}
        Some(s) => match s.parse::<u64>() {
            Ok(cursor) => since = cursor,
            Err(_) => {
                filter.received_since =
                    Some(crate::clock::parse_rfc3339_ms(s).ok_or_else(|| {
                        ApiError::invalid(format!(
                            "since {s:?} is neither a cursor nor an RFC 3339 time (2026-01-01T00:00:00.000Z)"
                        ))
                    })?);
            }
        },
    }
    let (items, next_cursor) = state.stubs.requests(&filter, since, limit);
    let stats = state.stubs.journal().stats();
    Ok(Json(RequestsPage {
        items,
        next_cursor,
        capacity: stats.capacity,
        evicted: stats.evicted,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct HttpVerifyRequest {
    pub method: Option<String>,
    /// A path prefix, or a pattern with `{name}`, `*` or `**`.
    pub path: Option<String>,
    /// Requests this stub answered.
    pub stub: Option<String>,
    /// Requests that authenticated as this device.
    pub device: Option<String>,
    /// Query parameters: name → matcher (as in stubs).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub query: std::collections::BTreeMap<String, Value>,
    /// Headers: name → matcher (as in stubs).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub headers: std::collections::BTreeMap<String, Value>,
    /// Count only requests whose JSON body contains this subset.
    #[schema(value_type = Option<Object>)]
    pub body_contains: Option<Value>,
    pub at_least: Option<u64>,
    pub at_most: Option<u64>,
    pub exactly: Option<u64>,
    /// How long to wait for the answer to be settled (default 0, at most
    /// 60,000). `at_least` returns as soon as it is reached; `at_most` and
    /// `exactly` fail as soon as they are exceeded, else pass at the end.
    #[serde(default)]
    pub within_ms: u64,
    /// Count only requests with a cursor above this (`next_cursor` of
    /// `GET /http/requests`, or `cursor` of a previous verify).
    #[serde(default)]
    pub since: u64,
}

/// Checks that the expected HTTP requests arrived, waiting up to
/// `within_ms`; the same answer as `POST /mqtt/verify`. Always 200: read
/// `passed`. `near_misses` are requests the method/path/stub/device
/// selected whose query, headers or body differed.
#[utoipa::path(post, path = "/api/v1/http/verify", tag = "stubs",
    request_body = HttpVerifyRequest,
    responses((status = 200, body = Verdict), (status = 422, body = Problem)))]
pub(super) async fn http_verify(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<HttpVerifyRequest>,
) -> Result<Json<Verdict>, ApiError> {
    let (expect, within) = crate::verify::expectation(
        request.at_least,
        request.at_most,
        request.exactly,
        request.within_ms,
    )
    .map_err(ApiError::invalid)?;
    let filter = filter_of(
        request.method.as_deref(),
        request.path.as_deref(),
        request.stub,
        request.device,
        false,
    )?;
    let spec = HttpVerifySpec {
        filter,
        query: compile_map("query", &request.query, false).map_err(ApiError::invalid)?,
        headers: compile_map("headers", &request.headers, true).map_err(ApiError::invalid)?,
        body_contains: request.body_contains,
        expect,
        within,
        since: request.since,
    };
    Ok(Json(state.stubs.verify(&spec).await))
}
