//! Telemetry export (recent readings as JSON lines or CSV) and the live
//! stream (server-sent events).

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, ApiQuery, Problem};
use crate::clock::{parse_rfc3339_ms, write_rfc3339_ms};
use crate::telemetry::{DEFAULT_QUEUE, ExportFilter, LiveFilter, LiveItem, MAX_QUEUE};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct ExportQuery {
    pub device: Option<String>,
    pub sensor: Option<String>,
    /// Simulated time, RFC 3339 or ms since the epoch; inclusive.
    pub since: Option<String>,
    /// Simulated time, RFC 3339 or ms since the epoch; exclusive.
    pub until: Option<String>,
    /// `x-next-cursor` of the previous page.
    pub cursor: Option<u64>,
    /// 1 to 100,000 (default 10,000).
    pub limit: Option<usize>,
    /// `jsonl` (default) or `csv`.
    pub format: Option<String>,
    /// `dropouts`: also the records of readings the sensor model left out
    /// (value null, anomaly `dropout`; never published on MQTT).
    pub include: Option<String>,
    /// `true` (JSON lines only): the body ends with one more line,
    /// `{"next_cursor":N}` when more pages follow (pass it as `cursor`) or
    /// `{"next_cursor":null}` on the last page, so a reader of the body
    /// alone knows whether it has everything.
    pub trailer: Option<bool>,
}

/// Parses `include`: the only thing that can be included is `dropouts`.
fn include_dropouts(include: &Option<String>) -> Result<bool, ApiError> {
    match include.as_deref() {
        None | Some("") => Ok(false),
        Some("dropouts") => Ok(true),
        Some(other) => Err(ApiError::invalid(format!(
            "include {other:?} is not valid: use include=dropouts or leave it out"
        ))),
    }
}

fn time(field: &str, value: &Option<String>) -> Result<Option<i64>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) => v.parse::<i64>().ok().or_else(|| parse_rfc3339_ms(v)).map(Some).ok_or_else(|| {
            ApiError::invalid(format!(
                "{field} {v:?} is not a time: use RFC 3339 (2026-01-01T00:00:00.000Z) or ms since the epoch"
            ))
        }),
    }
}

/// Recent published readings (from a bounded journal; see
/// `telemetry.journal_*` in `/health`), oldest first. When `limit` cuts the
/// answer short, the `x-next-cursor` header gives the cursor of the next page
/// (and, with `trailer=true`, a last line of the body).
#[utoipa::path(get, path = "/api/v1/telemetry", tag = "telemetry",
    params(ExportQuery),
    responses((status = 200, description = "JSON lines or CSV", content_type = "application/x-ndjson"),
        (status = 422, body = Problem)))]
pub(super) async fn telemetry_export(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(10_000);
    if !(1..=100_000).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit must be 1 to 100000, got {limit}"
        )));
    }
    let csv = match q.format.as_deref() {
        None | Some("jsonl") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "format {other:?} is not valid: use jsonl or csv"
            )));
        }
    };
    let filter = ExportFilter {
        since: time("since", &q.since)?,
        until: time("until", &q.until)?,
        device: q.device,
        sensor: q.sensor,
        cursor: q.cursor,
        limit,
        dropouts: include_dropouts(&q.include)?,
    };
    let trailer = q.trailer.unwrap_or(false);
    if trailer && csv {
        return Err(ApiError::invalid(
            "trailer=true is for format=jsonl; a CSV page says that more follow in its x-next-cursor header",
        ));
    }
    let (readings, next) = state.telemetry.export(&filter);
    let mut body = String::with_capacity(readings.len() * 110 + 64);
    if csv {
        body.push_str("device,sensor,ts,value,unit,anomaly\n");
        for r in &readings {
            let unit: String = serde_json::from_str(&r.unit_json).unwrap_or_default();
            body.push_str(&r.device);
            body.push(',');
            body.push_str(&r.sensor);
            body.push(',');
            write_rfc3339_ms(&mut body, r.ts);
            let value = if r.is_dropout() {
                String::new()
            } else {
                r.value.to_string()
            };
            body.push_str(&format!(
                ",{},{},{}\n",
                value,
                csv_field(&unit),
                r.anomaly.as_deref().unwrap_or("")
            ));
        }
    } else {
        for r in &readings {
            r.write_json(&mut body);
            body.push('\n');
        }
        if trailer {
            body.push_str(&serde_json::json!({ "next_cursor": next }).to_string());
            body.push('\n');
        }
    }
    let content_type = if csv {
        "text/csv"
    } else {
        "application/x-ndjson"
    };
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    if let Some(next) = next {
        response.headers_mut().insert("x-next-cursor", next.into());
    }
    Ok(response)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamQuery {
    /// Only this device's readings.
    pub device: Option<String>,
    /// Only this sensor's readings.
    pub sensor: Option<String>,
    /// `dropouts`: also dropout records (value null, anomaly `dropout`).
    pub include: Option<String>,
    /// Readings queued for this subscriber while it is behind, 1 to
    /// 100,000 (default 10,000).
    pub queue: Option<usize>,
    /// Resume after this event id (as the `Last-Event-ID` header does,
    /// which an EventSource sends by itself when it reconnects).
    pub after: Option<u64>,
}

/// Items sent in one chunk of the stream at most.
const STREAM_BATCH: usize = 512;
/// A comment line is sent after this long without readings (wall time), so
/// idle connections stay open through proxies and closed ones are noticed.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Readings as they are published, as server-sent events: `event: reading`
/// with the MQTT payload as `data` and the reading's journal sequence
/// number as `id`. Each subscriber has a bounded queue (`queue`, default
/// 10,000 readings); when a slow client lets it fill, the readings that do
/// not fit are dropped for that client and an `event: missed` with
/// `{"missed":N}` takes their place in the stream. Every such drop is also
/// counted in `telemetry.stream_missed` in `/health`.
///
/// A client that reconnects with `Last-Event-ID` (or `after`) first gets
/// the readings after that id the telemetry journal still holds, then the
/// live ones, with none lost or repeated between them; when some are no
/// longer held (evicted, or the id is from an earlier run of the server)
/// an `event: gap` says so first.
#[utoipa::path(get, path = "/api/v1/telemetry/stream", tag = "telemetry",
    params(StreamQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "resume after this event id")),
    responses((status = 200, description = "server-sent events: `reading`, `missed` and `gap`", content_type = "text/event-stream"),
        (status = 422, body = Problem)))]
pub(super) async fn telemetry_stream(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Response, ApiError> {
    let capacity = q.queue.unwrap_or(DEFAULT_QUEUE);
    if !(1..=MAX_QUEUE).contains(&capacity) {
        return Err(ApiError::invalid(format!(
            "queue must be 1 to {MAX_QUEUE} readings, got {capacity}"
        )));
    }
    let after = match (q.after, headers.get("last-event-id")) {
        (Some(after), _) => Some(after),
        (None, Some(id)) => Some(
            id.to_str()
                .ok()
                .and_then(|id| id.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::invalid(
                        "Last-Event-ID: give the id of the last event received, a whole number",
                    )
                })?,
        ),
        (None, None) => None,
    };
    let filter = LiveFilter {
        dropouts: include_dropouts(&q.include)?,
        device: q.device,
        sensor: q.sensor,
    };
    // A first chunk, so the client has the headers as soon as the
    // subscription is in place: a comment, and what it missed if it
    // resumes.
    let mut first = format!(": subscribed, queue {capacity}\n\n");
    // Live readings at or below this id were in the replay.
    let (subscription, skip_to) = match after {
        None => (state.telemetry.subscribe(filter, capacity), 0),
        Some(after) => {
            let (subscription, replay) = state.telemetry.resume(filter, capacity, after);
            if replay.gap {
                first.push_str(&format!(
                    "event: gap\ndata: {{\"after\":{after},\"detail\":\"some readings after this id are no longer kept (evicted from the telemetry journal, or the id is from an earlier run)\"}}\n\n"
                ));
            }
            for (seq, r) in &replay.items {
                write_reading(&mut first, *seq, r);
            }
            (subscription, replay.upto)
        }
    };
    let events = futures_util::stream::unfold(
        (subscription, Some(Bytes::from(first)), skip_to),
        |(subscription, first, skip_to)| async move {
            if let Some(first) = first {
                return Some((Ok::<_, Infallible>(first), (subscription, None, skip_to)));
            }
            let items = tokio::select! {
                items = subscription.next_batch(STREAM_BATCH) => items,
                _ = tokio::time::sleep(KEEP_ALIVE) => {
                    return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), (subscription, None, skip_to)));
                }
            };
            let mut out = String::with_capacity(items.len() * 160);
            for item in items {
                match item {
                    LiveItem::Reading(seq, _) if seq <= skip_to => {}
                    LiveItem::Reading(seq, r) => write_reading(&mut out, seq, &r),
                    LiveItem::Missed(n) => {
                        out.push_str(&format!("event: missed\ndata: {{\"missed\":{n}}}\n\n"));
                    }
                }
            }
            Some((Ok(Bytes::from(out)), (subscription, None, skip_to)))
        },
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(events),
    )
        .into_response())
}

fn write_reading(out: &mut String, seq: u64, r: &crate::telemetry::Reading) {
    use std::fmt::Write;
    let _ = write!(out, "id: {seq}\nevent: reading\ndata: ");
    r.write_json(out);
    out.push_str("\n\n");
}
