//! Telemetry export: recent readings as JSON lines or CSV.

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, Problem};
use crate::clock::{parse_rfc3339_ms, write_rfc3339_ms};
use crate::telemetry::ExportFilter;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
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
/// answer short, the `x-next-cursor` header gives the cursor of the next page.
#[utoipa::path(get, path = "/api/v1/telemetry", tag = "telemetry",
    params(ExportQuery),
    responses((status = 200, description = "JSON lines or CSV", content_type = "application/x-ndjson"),
        (status = 422, body = Problem)))]
pub async fn telemetry_export(
    State(state): State<AppState>,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(format!("query: {}", e.body_text())))?;
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
    };
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
            body.push_str(&format!(
                ",{},{},{}\n",
                r.value,
                csv_field(&unit),
                r.anomaly.as_deref().unwrap_or("")
            ));
        }
    } else {
        for r in &readings {
            r.write_json(&mut body);
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
