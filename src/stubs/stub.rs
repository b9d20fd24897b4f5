//! A stub: its definition as users write it (JSON body of `POST /stubs`,
//! or `[[stubs]]` in a scenario), validated into matchers, responses and a
//! delay.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::RequestFacts;
use super::matcher::{Matcher, Mismatch, PathPattern, compile_map};
use super::template;
use crate::ids::StubId;
use crate::random::DeviceRng;
use crate::verify::json_contains;

/// Longest delay a stub may declare.
pub(crate) const MAX_DELAY_MS: u64 = 600_000;
/// Most responses in a sequence.
pub(crate) const MAX_RESPONSES: usize = 100;

/// A stub as written by its author.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StubDef {
    /// 1 to 128 of `A-Z a-z 0-9 . _ -`; generated (`stub-N`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// When several stubs match, the highest priority wins; among equal
    /// priorities, the most recently added.
    #[serde(default)]
    pub priority: i32,
    pub request: RequestDef,
    /// The answer; or give `responses` for a sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseDef>,
    /// A sequence: call 1 gets the first, call 2 the second, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub responses: Option<Vec<ResponseDef>>,
    /// After the last response of a sequence: `repeat_last` (default) or
    /// `cycle` (start over).
    #[serde(default)]
    pub after_last: AfterLast,
    /// Wall-clock delay before answering: a number of ms, or
    /// `{"uniform":{"min":50,"max":150}}` or `{"normal":{"mean":100,"stddev":20}}`
    /// (drawn from a stream seeded by `--seed` and the stub id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub delay_ms: Option<Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AfterLast {
    #[default]
    RepeatLast,
    Cycle,
}

/// What a request must look like.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestDef {
    /// `GET`, `POST`, ...; absent or `ANY` matches every method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// A path pattern: `/ota/{device}/manifest` (`{name}` captures a
    /// segment), `*` any one segment, `**` (last) the rest.
    pub path: String,
    /// Query parameters: name → matcher.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub query: BTreeMap<String, Value>,
    /// Headers (names case-insensitive): name → matcher.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub headers: BTreeMap<String, Value>,
    /// A matcher on the body text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub body: Option<Value>,
    /// The body must be JSON containing this subset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub json: Option<Value>,
}

/// One answer.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResponseDef {
    #[serde(default = "ok")]
    pub status: u16,
    /// Header values are templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A string is sent as text (a template); any other JSON value is sent
    /// as JSON, its strings being templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub body: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// For `fault: drip`: bytes per chunk (default 16) and the pause
    /// between chunks (default 100 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drip: Option<Drip>,
}

fn ok() -> u16 {
    200
}

/// A way to misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Fault {
    /// The connection is closed with a TCP reset; no response.
    Reset,
    /// No response at all: the request hangs until the client gives up.
    Hang,
    /// The status and headers as declared, then a body cut to half its
    /// length and followed by `<!--`: never parseable.
    Malformed,
    /// The body trickles out in small chunks (see `drip`).
    Drip,
}

impl Fault {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Fault::Reset => "reset",
            Fault::Hang => "hang",
            Fault::Malformed => "malformed",
            Fault::Drip => "drip",
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Drip {
    #[serde(default = "drip_chunk")]
    pub chunk_bytes: usize,
    #[serde(default = "drip_interval")]
    pub interval_ms: u64,
}

impl Default for Drip {
    fn default() -> Self {
        Self {
            chunk_bytes: drip_chunk(),
            interval_ms: drip_interval(),
        }
    }
}

fn drip_chunk() -> usize {
    16
}

fn drip_interval() -> u64 {
    100
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Delay {
    None,
    Fixed(u64),
    Uniform { min: u64, max: u64 },
    Normal { mean: f64, stddev: f64 },
}

fn parse_delay(value: Option<&Value>) -> Result<Delay, String> {
    let too_long = |ms: f64| {
        (ms > MAX_DELAY_MS as f64)
            .then(|| format!("delay_ms: {ms} is longer than the longest delay, {MAX_DELAY_MS} ms"))
    };
    let shape = "delay_ms: give a number of ms, {\"uniform\":{\"min\":50,\"max\":150}} or {\"normal\":{\"mean\":100,\"stddev\":20}}";
    let Some(value) = value else {
        return Ok(Delay::None);
    };
    if let Some(ms) = value.as_u64() {
        return match too_long(ms as f64) {
            Some(e) => Err(e),
            None => Ok(Delay::Fixed(ms)),
        };
    }
    let Some(map) = value.as_object().filter(|m| m.len() == 1) else {
        return Err(shape.into());
    };
    let (kind, args) = map.iter().next().expect("one entry");
    let num = |name: &str| -> Result<f64, String> {
        args.get(name)
            .and_then(Value::as_f64)
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("delay_ms.{kind}.{name}: give a number of ms, 0 or more"))
    };
    let allowed: &[&str] = match kind.as_str() {
        "uniform" => &["min", "max"],
        "normal" => &["mean", "stddev"],
        _ => return Err(shape.into()),
    };
    if let Some(extra) = args
        .as_object()
        .ok_or_else(|| shape.to_string())?
        .keys()
        .find(|k| !allowed.contains(&k.as_str()))
    {
        return Err(format!(
            "delay_ms.{kind}: unknown field {extra:?}; use {}",
            allowed.join(" and ")
        ));
    }
    let delay = match kind.as_str() {
        "uniform" => {
            let (min, max) = (num("min")?, num("max")?);
            if min > max {
                return Err(format!(
                    "delay_ms.uniform: min ({min}) is above max ({max})"
                ));
            }
            if let Some(e) = too_long(max) {
                return Err(e);
            }
            Delay::Uniform {
                min: min as u64,
                max: max as u64,
            }
        }
        _ => {
            let (mean, stddev) = (num("mean")?, num("stddev")?);
            if let Some(e) = too_long(mean + 4.0 * stddev) {
                return Err(e);
            }
            Delay::Normal { mean, stddev }
        }
    };
    Ok(delay)
}

/// A validated stub, ready to match and answer.
pub(crate) struct Stub {
    pub id: Arc<str>,
    pub def: StubDef,
    /// `api` or `scenario`.
    pub source: &'static str,
    /// Insertion order, for ties between equal priorities.
    pub order: u64,
    method: Option<Method>,
    path: PathPattern,
    query: Vec<(String, Matcher)>,
    headers: Vec<(String, Matcher)>,
    body: Option<Matcher>,
    json: Option<Value>,
    responses: Vec<ResponseDef>,
    delay: Delay,
    calls: AtomicU64,
    // A std mutex: one draw per call, never held across an await.
    rng: Mutex<DeviceRng>,
}

/// The answer a call gets.
pub(crate) struct Chosen<'a> {
    pub call: u64,
    pub response: &'a ResponseDef,
    pub delay: Duration,
}

impl Stub {
    /// Validates a definition. `id` is the final id (given or generated).
    pub(crate) fn compile(
        def: StubDef,
        id: StubId,
        source: &'static str,
        order: u64,
        seed: u64,
    ) -> Result<Self, String> {
        let r = &def.request;
        let method = match r.method.as_deref() {
            None => None,
            Some(m) if m.eq_ignore_ascii_case("ANY") => None,
            Some(m) => Some(
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("request.method {m:?} is not an HTTP method"))?,
            ),
        };
        let path = PathPattern::parse(&r.path).map_err(|e| format!("request.{e}"))?;
        let query = compile_map("request.query", &r.query, false)?;
        for name in r.headers.keys() {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("request.headers: {name:?} is not a header name"))?;
        }
        let headers = compile_map("request.headers", &r.headers, true)?;
        let body = r
            .body
            .as_ref()
            .map(|b| Matcher::compile("request.body", b))
            .transpose()?;
        let responses = match (&def.response, &def.responses) {
            (Some(one), None) => vec![one.clone()],
            (None, Some(many)) if !many.is_empty() && many.len() <= MAX_RESPONSES => many.clone(),
            (None, Some(_)) => {
                return Err(format!("responses: give 1 to {MAX_RESPONSES} responses"));
            }
            (None, None) => {
                return Err("give `response` (one answer) or `responses` (a sequence)".into());
            }
            (Some(_), Some(_)) => {
                return Err("give either `response` or `responses`, not both".into());
            }
        };
        for (i, response) in responses.iter().enumerate() {
            let at = if def.responses.is_some() {
                format!("responses[{i}]")
            } else {
                "response".to_string()
            };
            check_response(&at, response)?;
        }
        let delay = parse_delay(def.delay_ms.as_ref())?;
        Ok(Self {
            rng: Mutex::new(DeviceRng::derive(seed, &id, "stub-delay")),
            id: id.as_str().into(),
            source,
            order,
            method,
            path,
            query,
            headers,
            body,
            json: def.request.json.clone(),
            responses,
            delay,
            calls: AtomicU64::new(0),
            def,
        })
    }

    pub(crate) fn priority(&self) -> i32 {
        self.def.priority
    }

    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The path parameters when the request matches; otherwise every
    /// matcher that failed.
    pub(crate) fn check(
        &self,
        req: &RequestFacts,
    ) -> Result<BTreeMap<String, String>, Vec<Mismatch>> {
        let mut misses = Vec::new();
        if let Some(m) = &self.method
            && *m != req.method
        {
            misses.push(Mismatch {
                field: "method".into(),
                expected: m.to_string(),
                got: req.method.to_string(),
            });
        }
        let params = self.path.matches(&req.path);
        if params.is_none() {
            misses.push(Mismatch {
                field: "path".into(),
                expected: self.path.as_str().to_string(),
                got: req.path.clone(),
            });
        }
        let missing = || "(missing)".to_string();
        for (name, matcher) in &self.query {
            let got = req.query_value(name);
            if !matcher.check(got) {
                misses.push(Mismatch {
                    field: format!("query.{name}"),
                    expected: matcher.describe(),
                    got: got.map_or_else(missing, |v| format!("{v:?}")),
                });
            }
        }
        for (name, matcher) in &self.headers {
            let got = req.header(name);
            if !matcher.check(got) {
                misses.push(Mismatch {
                    field: format!("headers.{name}"),
                    expected: matcher.describe(),
                    got: got.map_or_else(missing, |v| format!("{v:?}")),
                });
            }
        }
        if let Some(matcher) = &self.body {
            let text = std::str::from_utf8(&req.body).ok();
            if !matcher.check(text) {
                misses.push(Mismatch {
                    field: "body".into(),
                    expected: matcher.describe(),
                    got: text.map_or_else(|| "(not UTF-8)".into(), shorten),
                });
            }
        }
        if let Some(subset) = &self.json {
            let ok = req.json.as_ref().is_some_and(|v| json_contains(v, subset));
            if !ok {
                misses.push(Mismatch {
                    field: "json".into(),
                    expected: format!("a JSON body containing {subset}"),
                    got: match &req.json {
                        Some(v) => shorten(&v.to_string()),
                        None => "(not JSON)".into(),
                    },
                });
            }
        }
        match params {
            Some(params) if misses.is_empty() => Ok(params),
            _ => Err(misses),
        }
    }

    /// Counts the call and picks its response and delay.
    pub(crate) fn choose(&self) -> Chosen<'_> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let n = self.responses.len() as u64;
        let index = match self.def.after_last {
            AfterLast::RepeatLast => (call - 1).min(n - 1),
            AfterLast::Cycle => (call - 1) % n,
        } as usize;
        let ms = match self.delay {
            Delay::None => 0,
            Delay::Fixed(ms) => ms,
            Delay::Uniform { min, max } => {
                let u = self.rng.lock().unwrap().next_f64();
                min + ((max - min) as f64 * u).round() as u64
            }
            Delay::Normal { mean, stddev } => {
                let (u1, u2) = {
                    let mut rng = self.rng.lock().unwrap();
                    (rng.next_f64(), rng.next_f64())
                };
                // Box-Muller; clamped to [0, MAX_DELAY_MS].
                let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (mean + stddev * z).clamp(0.0, MAX_DELAY_MS as f64) as u64
            }
        };
        Chosen {
            call,
            response: &self.responses[index],
            delay: Duration::from_millis(ms),
        }
    }
}

fn check_response(at: &str, r: &ResponseDef) -> Result<(), String> {
    StatusCode::from_u16(r.status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .ok_or_else(|| format!("{at}.status {} is not a status from 200 to 599", r.status))?;
    for (name, value) in &r.headers {
        HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{at}.headers: {name:?} is not a header name"))?;
        HeaderValue::from_str(value).map_err(|_| {
            format!("{at}.headers.{name}: the value has characters a header cannot carry")
        })?;
        template::check(&format!("{at}.headers.{name}"), value)?;
    }
    if let Some(body) = &r.body {
        template::check_json(&format!("{at}.body"), body)?;
    }
    match (r.fault, &r.drip) {
        (Some(Fault::Drip), Some(d)) if d.chunk_bytes == 0 || d.interval_ms > 60_000 => {
            return Err(format!(
                "{at}.drip: chunk_bytes must be at least 1 and interval_ms at most 60000"
            ));
        }
        (Some(Fault::Drip), Some(_)) => {}
        (_, Some(_)) => {
            return Err(format!("{at}.drip is only used with \"fault\": \"drip\""));
        }
        _ => {}
    }
    Ok(())
}

fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return format!("{s:?}");
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stub(def: Value) -> Result<Stub, String> {
        let def: StubDef = serde_json::from_value(def).map_err(|e| e.to_string())?;
        Stub::compile(def, StubId::parse("s").unwrap(), "api", 0, 7)
    }

    #[test]
    fn sequences_repeat_last_or_cycle() {
        let s = stub(json!({"request":{"path":"/"},"responses":[{"status":503},{"status":200}]}))
            .unwrap();
        let got: Vec<u16> = (0..4).map(|_| s.choose().response.status).collect();
        assert_eq!(got, [503, 200, 200, 200]);
        let s = stub(json!({"request":{"path":"/"},"after_last":"cycle","responses":[{"status":503},{"status":200}]}))
            .unwrap();
        let got: Vec<u16> = (0..4).map(|_| s.choose().response.status).collect();
        assert_eq!(got, [503, 200, 503, 200]);
    }

    #[test]
    fn seeded_delays_stay_in_range_and_repeat() {
        let draws = || {
            let s = stub(json!({"request":{"path":"/"},"response":{},"delay_ms":{"uniform":{"min":10,"max":20}}}))
                .unwrap();
            (0..50)
                .map(|_| s.choose().delay.as_millis() as u64)
                .collect::<Vec<_>>()
        };
        let a = draws();
        assert!(a.iter().all(|d| (10..=20).contains(d)));
        assert!(a.iter().any(|d| *d != a[0]));
        assert_eq!(a, draws());
        let s = stub(json!({"request":{"path":"/"},"response":{},"delay_ms":{"normal":{"mean":100,"stddev":10}}}))
            .unwrap();
        let mean: f64 = (0..400)
            .map(|_| s.choose().delay.as_millis() as f64)
            .sum::<f64>()
            / 400.0;
        assert!((95.0..105.0).contains(&mean), "mean {mean}");
    }

    #[test]
    fn bad_definitions_say_what_to_fix() {
        let err = |v| stub(v).err().unwrap();
        assert!(err(json!({"request":{"path":"/"}})).contains("response"));
        assert!(err(json!({"request":{"path":"x"},"response":{}})).contains("must start with /"));
        assert!(
            err(json!({"request":{"path":"/","method":"G T"},"response":{}})).contains("method")
        );
        assert!(err(json!({"request":{"path":"/"},"response":{"status":42}})).contains("status"));
        assert!(
            err(json!({"request":{"path":"/"},"response":{"body":"{{nope}}"}}))
                .contains("placeholder")
        );
        assert!(err(json!({"request":{"path":"/"},"response":{},"delay_ms":{"uniform":{"min":5,"max":1}}})).contains("min"));
        assert!(
            err(json!({"request":{"path":"/"},"response":{"fault":"explode"}}))
                .contains("unknown variant")
        );
        assert!(err(json!({"request":{"path":"/"},"response":{"drip":{}}})).contains("drip"));
    }
}
