//! Answering a request with a stub: match, journal, delay, render, and
//! misbehave when the stub says so.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::journal::HttpEntry;
use super::listener::ConnHandle;
use super::stub::Fault;
use super::template::{self, Context};
use super::{NearMiss, RequestFacts, Stubs};
use crate::clock::{Clock, wall_ms};
use crate::fleet::{AuthOutcome, Fleet};

/// Largest request body a stub reads.
pub(crate) const MAX_STUB_BODY: usize = 16 << 20;
/// Longest a `hang` fault holds a request (or until shutdown).
const MAX_HANG: Duration = Duration::from_secs(600);

/// Where a request came in.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mount {
    /// `/mock/...` on the API port: the prefix is not part of the path.
    Prefixed,
    /// `--mock-http`: the real paths.
    Root,
}

impl Mount {
    fn listener(self) -> &'static str {
        match self {
            Mount::Prefixed => "mock",
            Mount::Root => "mock_http",
        }
    }
}

/// Splits `Authorization: Basic` into user and password.
pub(crate) fn basic_credentials(headers: &axum::http::HeaderMap) -> Option<(String, Vec<u8>)> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// The query string as name/value pairs.
pub(crate) fn query_pairs(uri: &axum::http::Uri) -> Vec<(String, String)> {
    Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|Query(q)| q)
        .unwrap_or_default()
}

/// Header names (lower case) and values, repeated ones joined with ", ".
pub(crate) fn header_pairs(headers: &axum::http::HeaderMap) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match out.iter_mut().find(|(n, _)| n == name.as_str()) {
            Some((_, v)) => {
                v.push_str(", ");
                v.push_str(&value);
            }
            None => out.push((name.as_str().to_string(), value)),
        }
    }
    out
}

/// Headers as the journal keeps them: every HTTP Basic credential (in
/// `Authorization` or `Proxy-Authorization`, whatever its user name and
/// whether or not it is a device's) has its password removed; other
/// schemes are kept, so a test can verify that a token was sent.
pub(crate) fn journal_headers(headers: &axum::http::HeaderMap) -> Vec<(String, String)> {
    let mut out = header_pairs(headers);
    for (name, value) in &mut out {
        if name == "authorization" || name == "proxy-authorization" {
            *value = redact_basic(value);
        }
    }
    out
}

/// `value` (one header value, or repeated ones joined with ", ") with each
/// Basic credential replaced by its user name.
fn redact_basic(value: &str) -> String {
    use base64::Engine;
    let mut parts = Vec::new();
    for part in value.split(", ") {
        let Some((scheme, encoded)) = part.trim().split_once(' ') else {
            parts.push(part.to_string());
            continue;
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            parts.push(part.to_string());
            continue;
        }
        let user = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|d| {
                let colon = d.iter().position(|b| *b == b':')?;
                String::from_utf8(d[..colon].to_vec()).ok()
            });
        parts.push(match user {
            Some(user) => format!("Basic (redacted; user {user:?})"),
            None => "Basic (redacted)".to_string(),
        });
    }
    parts.join(", ")
}

/// The device's fields for templates, when the request authenticates as
/// a device.
fn device_context(fleet: &Fleet, headers: &axum::http::HeaderMap) -> Option<(String, Value)> {
    let (user, password) = basic_credentials(headers)?;
    if fleet.authenticate(&user, &password) != AuthOutcome::Ok {
        return None;
    }
    let view = fleet.get(&user).ok()?;
    let state = view
        .reported
        .as_ref()
        .map(|r| Value::Object((*r.state).clone()))
        .unwrap_or_else(|| Value::Object(Map::new()));
    let value = json!({
        "id": view.id,
        "type": view.kind,
        "group": view.group,
        "tags": *view.tags,
        "metadata": *view.metadata,
        "lifecycle": view.state,
        "state": state,
    });
    Some((user, value))
}

fn problem(status: StatusCode, kind: &str, detail: String, extra: Option<Value>) -> Response {
    let mut body = json!({
        "type": format!("https://iotmock.dev/problems/{kind}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if let (Some(Value::Object(extra)), Value::Object(map)) = (extra, &mut body) {
        map.extend(extra);
    }
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// Answers one request with the stubs. The HTTP server reads the body
/// (at most [`MAX_STUB_BODY`] bytes) and answers a body that could not be
/// read itself, in the API's own words.
pub(crate) async fn answer(
    stubs: &Stubs,
    fleet: &Fleet,
    clock: &Clock,
    mount: Mount,
    parts: Parts,
    body: Bytes,
) -> Response {
    let conn = parts
        .extensions
        .get::<ConnectInfo<ConnHandle>>()
        .map(|c| c.0.clone());
    let raw_path = parts.uri.path();
    let path = match mount {
        Mount::Prefixed => match raw_path.strip_prefix("/mock") {
            Some("") => "/".to_string(),
            Some(rest) => rest.to_string(),
            None => raw_path.to_string(),
        },
        Mount::Root => raw_path.to_string(),
    };
    let json_body = if body.is_empty() {
        None
    } else {
        serde_json::from_slice::<Value>(&body).ok()
    };
    let facts = RequestFacts {
        method: parts.method.clone(),
        path,
        query: query_pairs(&parts.uri),
        headers: header_pairs(&parts.headers),
        body,
        json: json_body,
    };
    let device = device_context(fleet, &parts.headers);
    let journal_headers = journal_headers(&parts.headers);
    let mut entry = HttpEntry {
        cursor: 0,
        wall_ms: wall_ms(),
        sim_ms: clock.now_ms(),
        listener: mount.listener(),
        method: facts.method.to_string(),
        path: facts.path.clone(),
        query: facts.query.clone(),
        headers: journal_headers,
        body: facts.body.clone(),
        body_truncated: false,
        stub: None,
        device: device.as_ref().map(|(id, _)| id.clone()),
        status: None,
        fault: None,
    };
    let (stub, params) = match stubs.find(&facts) {
        Ok(found) => found,
        Err(near) => {
            entry.status = Some(404);
            stubs.journal().push(entry);
            return no_match(&facts, parts.uri.query(), near);
        }
    };
    let chosen = stub.choose();
    let response = chosen.response;
    entry.stub = Some(stub.id.clone());
    entry.fault = response.fault.map(Fault::as_str);
    entry.status = match response.fault {
        Some(Fault::Reset | Fault::Hang) => None,
        _ => Some(response.status),
    };
    let request_value = json!({
        "method": facts.method.as_str(),
        "path": facts.path,
        "params": params,
        "query": facts.query.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<Map<_, _>>(),
        "headers": facts.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<Map<_, _>>(),
        "body": String::from_utf8_lossy(&facts.body),
        "json": facts.json,
    });
    let device_value = device.as_ref().map(|(_, v)| v);
    let context = |now_ms| Context {
        request: &request_value,
        device: device_value,
        now_ms,
        stub_id: &stub.id,
        calls: chosen.call,
    };
    // Measured before anything is rendered: a template that repeats the
    // request body must not be rendered to learn that it is too large.
    let limit = stubs.limits().max_response_bytes;
    if entry.status.is_some() && !fits(response, &context(clock.now_ms()), limit) {
        stubs.count_oversized();
        entry.status = Some(413);
        entry.fault = None;
        stubs.journal().push(entry);
        tracing::debug!(stub = %stub.id, limit, "stub response over the size limit");
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "stub-response-too-large",
            format!(
                "stub {:?} would answer this request with more than {limit} bytes (body and headers as rendered from its template); send a smaller request body, change the template, or raise --max-stub-response-bytes",
                stub.id
            ),
            None,
        );
    }
    stubs.journal().push(entry);
    tracing::debug!(stub = %stub.id, call = chosen.call, path = %facts.path, "stub answered");

    if !chosen.delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(chosen.delay) => {}
            _ = stubs.closed() => {}
        }
    }

    match response.fault {
        Some(Fault::Hang) => {
            tokio::select! {
                _ = tokio::time::sleep(MAX_HANG) => {}
                _ = stubs.closed() => {}
            }
            return reset_response(conn);
        }
        Some(Fault::Reset) => return reset_response(conn),
        _ => {}
    }

    build(response, &context(clock.now_ms()))
}

/// Whether the response, rendered for this request, stays within `limit`
/// bytes (body and header values).
fn fits(response: &super::stub::ResponseDef, ctx: &Context<'_>, limit: usize) -> bool {
    let mut budget = template::Budget::new(limit);
    let body = match &response.body {
        None => Ok(()),
        Some(Value::String(text)) => template::measure(text, ctx, &mut budget),
        Some(value) => template::measure_json(value, ctx, &mut budget),
    };
    body.is_ok()
        && response
            .headers
            .values()
            .all(|value| template::measure(value, ctx, &mut budget).is_ok())
}

/// The declared response, rendered, with a `malformed` or `drip` fault
/// applied.
fn build(response: &super::stub::ResponseDef, ctx: &Context<'_>) -> Response {
    let (bytes, content_type) = match &response.body {
        None => (Bytes::new(), None),
        Some(Value::String(text)) => (
            Bytes::from(template::render(text, ctx)),
            Some("text/plain; charset=utf-8"),
        ),
        Some(value) => (
            Bytes::from(template::render_json(value, ctx).to_string()),
            Some("application/json"),
        ),
    };
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::OK);
    let mut builder = Response::builder().status(status);
    if let Some(ct) = content_type {
        builder = builder.header(header::CONTENT_TYPE, ct);
    }
    let mut out = match response.fault {
        Some(Fault::Malformed) => {
            let mut cut = bytes.slice(..bytes.len() / 2).to_vec();
            cut.extend_from_slice(b"<!--");
            builder.body(Body::from(cut))
        }
        Some(Fault::Drip) => {
            let drip = response.drip.unwrap_or_default();
            let total = bytes.len();
            builder = builder.header(header::CONTENT_LENGTH, total);
            builder.body(drip_body(bytes, drip.chunk_bytes, drip.interval_ms))
        }
        _ => builder.body(Body::from(bytes)),
    }
    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    for (name, value) in &response.headers {
        let rendered = template::render(value, ctx);
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&rendered),
        ) {
            out.headers_mut().insert(n, v);
        }
    }
    out
}

/// The 404 for a request no stub matched: the closest stub and every
/// matcher that failed.
fn no_match(facts: &RequestFacts, query: Option<&str>, near: Option<NearMiss>) -> Response {
    let shown = match query {
        Some(q) if !q.is_empty() => format!("{}?{q}", facts.path),
        _ => facts.path.clone(),
    };
    let (detail, extra) = match near {
        None => (
            format!(
                "no stub matches {} {shown}: there are no stubs; add one with POST /api/v1/stubs",
                facts.method
            ),
            None,
        ),
        Some(near) => {
            let why: Vec<String> = near
                .mismatches
                .iter()
                .map(|m| format!("{} expected {}, got {}", m.field, m.expected, m.got))
                .collect();
            (
                format!(
                    "no stub matches {} {shown}; the closest is stub {:?}: {}",
                    facts.method,
                    near.stub,
                    why.join("; ")
                ),
                Some(json!({ "closest": near })),
            )
        }
    };
    problem(StatusCode::NOT_FOUND, "no-stub-matched", detail, extra)
}

/// A response that never arrives: the connection is reset.
fn reset_response(conn: Option<ConnHandle>) -> Response {
    match conn {
        Some(conn) => {
            conn.reset();
            // Never written: the first write fails and resets the socket.
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        None => {
            // Served without the resettable listener (in-process): a body
            // that fails makes hyper abort the connection instead.
            let failing = futures_util::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "reset by a stub's fault",
                ))
            });
            Response::new(Body::from_stream(failing))
        }
    }
}

/// The body in `chunk` byte pieces, `interval_ms` apart (the first at once).
fn drip_body(bytes: Bytes, chunk: usize, interval_ms: u64) -> Body {
    let stream = futures_util::stream::unfold((bytes, true), move |(rest, first)| async move {
        if rest.is_empty() {
            return None;
        }
        if !first {
            tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        }
        let n = chunk.min(rest.len());
        let piece = rest.slice(..n);
        let rest = rest.slice(n..);
        Some((Ok::<Bytes, std::io::Error>(piece), (rest, false)))
    });
    Body::from_stream(stream)
}
