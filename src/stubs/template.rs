//! Response templates: `{{ name }}` placeholders in a stub's body and
//! header values, filled from the request, the authenticated device and
//! simulated time.
//!
//! Names: `request.method`, `request.path` (the whole path),
//! `request.path.NAME` (a path parameter), `request.query.NAME`,
//! `request.headers.NAME`, `request.body` (the text), `request.body.A.B`
//! (a field of a JSON body; array elements by index), `device.id`,
//! `device.type`, `device.group`, `device.tags`, `device.metadata.A`,
//! `device.state.A` (the state it reported), `now` (simulated time, RFC
//! 3339), `now_ms`, `stub.id`, `stub.calls` (this call's number, from 1).
//! A missing value renders as nothing; in a JSON body a string that is
//! exactly one placeholder becomes the value itself (a number stays a
//! number; missing is null).

use std::borrow::Cow;

use serde_json::{Map, Value};

/// What a template can read.
pub(crate) struct Context<'a> {
    /// `{"method","path","params","query","headers","body","json"}`.
    pub request: &'a Value,
    /// The device's fields (`id`, `type`, ..., `state`), when the request
    /// authenticated as one.
    pub device: Option<&'a Value>,
    pub now_ms: i64,
    pub stub_id: &'a str,
    pub calls: u64,
}

const ROOTS: &str = "request.*, device.*, now, now_ms, stub.id, stub.calls";

/// Checks every placeholder of `text` names something templates know.
pub(crate) fn check(field: &str, text: &str) -> Result<(), String> {
    for piece in pieces(text) {
        match piece {
            Piece::Text(_) => {}
            Piece::Var(name) => check_name(name).map_err(|e| format!("{field}: {e}"))?,
            Piece::Unclosed => {
                return Err(format!(
                    "{field}: a placeholder opened with {{{{ is not closed with }}}}"
                ));
            }
        }
    }
    Ok(())
}

/// Checks every string in a JSON template.
pub(crate) fn check_json(field: &str, value: &Value) -> Result<(), String> {
    match value {
        Value::String(s) => check(field, s),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_json(&format!("{field}[{i}]"), v)),
        Value::Object(map) => map
            .iter()
            .try_for_each(|(k, v)| check_json(&format!("{field}.{k}"), v)),
        _ => Ok(()),
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let mut parts = name.split('.');
    let ok = match (parts.next(), parts.next()) {
        (Some("now" | "now_ms"), None) => true,
        (Some("stub"), Some("id" | "calls")) => parts.next().is_none(),
        (Some("request"), Some("method")) => parts.next().is_none(),
        (Some("request"), Some("path" | "body")) => true,
        (Some("request"), Some("query" | "headers")) => parts.next().is_some(),
        (Some("device"), Some(_)) => true,
        _ => false,
    };
    if ok && !name.split('.').any(str::is_empty) {
        Ok(())
    } else {
        Err(format!("unknown placeholder {{{{{name}}}}}; use {ROOTS}"))
    }
}

enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
    Unclosed,
}

fn pieces(text: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            out.push(Piece::Text(&rest[..start]));
        }
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                out.push(Piece::Var(after[..end].trim()));
                rest = &after[end + 2..];
            }
            None => {
                out.push(Piece::Unclosed);
                return out;
            }
        }
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    out
}

fn walk<'v>(mut value: &'v Value, path: &mut std::str::Split<'_, char>) -> Option<&'v Value> {
    for key in path {
        value = match value {
            Value::Object(map) => map.get(key)?,
            Value::Array(items) => items.get(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(value)
}

/// The value a placeholder names: borrowed from the request or device
/// when it lives there (a large body is not copied to be looked at).
fn lookup<'v>(name: &str, ctx: &Context<'v>) -> Option<Cow<'v, Value>> {
    let mut parts = name.split('.');
    match parts.next()? {
        "now" => Some(Cow::Owned(Value::String(crate::clock::rfc3339_ms(
            ctx.now_ms,
        )))),
        "now_ms" => Some(Cow::Owned(Value::from(ctx.now_ms))),
        "stub" => match parts.next()? {
            "id" => Some(Cow::Owned(Value::String(ctx.stub_id.to_string()))),
            "calls" => Some(Cow::Owned(Value::from(ctx.calls))),
            _ => None,
        },
        "device" => walk(ctx.device?, &mut parts).map(Cow::Borrowed),
        "request" => {
            let field = parts.next()?;
            let request: &'v Value = ctx.request;
            let found = match field {
                "path" => match parts.next() {
                    None => request.get("path"),
                    Some(param) => request.get("params")?.get(param),
                },
                "body" => {
                    let mut rest = parts.clone();
                    if rest.next().is_none() {
                        request.get("body")
                    } else {
                        walk(request.get("json")?, &mut parts)
                    }
                }
                "headers" => {
                    let name = parts.collect::<Vec<_>>().join(".").to_ascii_lowercase();
                    request.get("headers")?.get(name)
                }
                "query" => {
                    let name = parts.collect::<Vec<_>>().join(".");
                    request.get("query")?.get(name)
                }
                other => request.get(other),
            };
            found.map(Cow::Borrowed)
        }
        _ => None,
    }
}

fn push_text(out: &mut String, value: &Value) {
    match value {
        Value::String(s) => out.push_str(s),
        Value::Null => {}
        other => out.push_str(&other.to_string()),
    }
}

/// Fills the placeholders of a text template.
pub(crate) fn render(text: &str, ctx: &Context<'_>) -> String {
    if !text.contains("{{") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for piece in pieces(text) {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(name) => {
                if let Some(v) = lookup(name, ctx) {
                    push_text(&mut out, &v);
                }
            }
            Piece::Unclosed => {}
        }
    }
    out
}

/// Fills the placeholders of a JSON template.
pub(crate) fn render_json(value: &Value, ctx: &Context<'_>) -> Value {
    match value {
        Value::String(s) => {
            let p = pieces(s);
            if let [Piece::Var(name)] = p.as_slice() {
                return lookup(name, ctx).map_or(Value::Null, Cow::into_owned);
            }
            Value::String(render(s, ctx))
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| render_json(v, ctx)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), render_json(v, ctx)))
                .collect::<Map<_, _>>(),
        ),
        other => other.clone(),
    }
}

/// A rendered response would pass its byte budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLarge;

/// Bytes a rendering may still produce. Measuring takes from it and stops
/// at the first piece that does not fit, so measuring costs at most the
/// budget (plus the template), never what the rendering would have cost.
#[derive(Debug)]
pub(crate) struct Budget(usize);

impl Budget {
    pub(crate) fn new(bytes: usize) -> Self {
        Self(bytes)
    }

    fn take(&mut self, n: usize) -> Result<(), TooLarge> {
        self.0 = self.0.checked_sub(n).ok_or(TooLarge)?;
        Ok(())
    }
}

/// Counts serialized bytes against a budget, failing once it is spent.
struct Counter<'b>(&'b mut Budget);

impl std::io::Write for Counter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .take(buf.len())
            .map_err(|_| std::io::Error::other("over budget"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn take_json(value: &Value, budget: &mut Budget) -> Result<(), TooLarge> {
    serde_json::to_writer(Counter(budget), value).map_err(|_| TooLarge)
}

/// Takes what `push_text` would write.
fn take_text(value: &Value, budget: &mut Budget) -> Result<(), TooLarge> {
    match value {
        Value::String(s) => budget.take(s.len()),
        Value::Null => Ok(()),
        other => take_json(other, budget),
    }
}

/// Takes `s` as it appears inside a JSON string literal (escapes counted).
/// Its plain length is taken first, so a string larger than what is left
/// is refused without being scanned.
fn take_escaped(s: &str, budget: &mut Budget) -> Result<(), TooLarge> {
    budget.take(s.len())?;
    let extra = s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
            0..=0x1f => 5,
            _ => 0,
        })
        .sum();
    budget.take(extra)
}

/// Takes from `budget` the bytes [`render`] would produce, without
/// rendering.
pub(crate) fn measure(text: &str, ctx: &Context<'_>, budget: &mut Budget) -> Result<(), TooLarge> {
    if !text.contains("{{") {
        return budget.take(text.len());
    }
    for piece in pieces(text) {
        match piece {
            Piece::Text(t) => budget.take(t.len())?,
            Piece::Var(name) => {
                if let Some(v) = lookup(name, ctx) {
                    take_text(&v, budget)?;
                }
            }
            Piece::Unclosed => {}
        }
    }
    Ok(())
}

/// Takes from `budget` the bytes the JSON text of [`render_json`] would
/// have, without rendering.
pub(crate) fn measure_json(
    value: &Value,
    ctx: &Context<'_>,
    budget: &mut Budget,
) -> Result<(), TooLarge> {
    match value {
        Value::String(s) => {
            let p = pieces(s);
            if let [Piece::Var(name)] = p.as_slice() {
                return match lookup(name, ctx) {
                    Some(v) => take_json(&v, budget),
                    None => budget.take(4),
                };
            }
            budget.take(2)?;
            for piece in p {
                match piece {
                    Piece::Text(t) => take_escaped(t, budget)?,
                    Piece::Var(name) => match lookup(name, ctx).as_deref() {
                        Some(Value::String(v)) => take_escaped(v, budget)?,
                        Some(Value::Null) | None => {}
                        Some(other) => take_json(other, budget)?,
                    },
                    Piece::Unclosed => {}
                }
            }
            Ok(())
        }
        Value::Array(items) => {
            budget.take(2 + items.len().saturating_sub(1))?;
            items.iter().try_for_each(|v| measure_json(v, ctx, budget))
        }
        Value::Object(map) => {
            budget.take(2 + map.len().saturating_sub(1))?;
            map.iter().try_for_each(|(k, v)| {
                budget.take(3)?;
                take_escaped(k, budget)?;
                measure_json(v, ctx, budget)
            })
        }
        other => take_json(other, budget),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fills_from_request_device_and_time() {
        let request = json!({
            "method": "GET", "path": "/ota/d1/manifest", "params": {"device": "d1"},
            "query": {"v": "2"}, "headers": {"x-fw": "1.0"}, "body": "{\"n\":[5]}",
            "json": {"n": [5]}
        });
        let device = json!({"id": "d1", "state": {"fw": "1.0"}});
        let ctx = Context {
            request: &request,
            device: Some(&device),
            now_ms: crate::clock::MANUAL_EPOCH_MS,
            stub_id: "s",
            calls: 3,
        };
        assert_eq!(
            render(
                "{{request.path.device}} {{ request.query.v }} {{request.headers.X-Fw}} {{request.body.n.0}} {{device.state.fw}} {{now}} {{stub.calls}} [{{request.query.none}}]",
                &ctx
            ),
            "d1 2 1.0 5 1.0 2026-01-01T00:00:00.000Z 3 []"
        );
        assert_eq!(
            render_json(
                &json!({"n": "{{request.body.n.0}}", "s": "id={{device.id}}", "x": "{{device.nope}}"}),
                &ctx
            ),
            json!({"n": 5, "s": "id=d1", "x": null})
        );
        assert!(check("b", "{{request.path.device}}{{now}}").is_ok());
        assert!(check("b", "{{reqest.path}}").is_err());
        assert!(check("b", "{{now").is_err());
        assert!(check("b", "{{request.query}}").is_err());
    }

    #[test]
    fn measuring_matches_rendering_and_stops_at_the_budget() {
        let request = json!({
            "method": "POST", "path": "/p", "body": "a\"b\u{1}c", "json": {"k": [1, "x"]},
            "query": {}, "headers": {}, "params": {}
        });
        let ctx = Context {
            request: &request,
            device: None,
            now_ms: 0,
            stub_id: "s",
            calls: 1,
        };
        let text = "[{{request.body}}] {{request.body.k}} {{stub.calls}}";
        let rendered = render(text, &ctx);
        let mut exact = Budget::new(rendered.len());
        assert_eq!(measure(text, &ctx, &mut exact), Ok(()));
        assert_eq!(
            measure(text, &ctx, &mut Budget::new(rendered.len() - 1)),
            Err(TooLarge)
        );
        let template = json!({"b": "<{{request.body}}>", "k": "{{request.body.k}}", "n": null, "m": "{{nope.x}}", "l": [1, "{{now_ms}}"]});
        let rendered = render_json(&template, &ctx).to_string();
        let mut exact = Budget::new(rendered.len());
        assert_eq!(
            measure_json(&template, &ctx, &mut exact),
            Ok(()),
            "{rendered}"
        );
        assert_eq!(
            measure_json(&template, &ctx, &mut Budget::new(rendered.len() - 1)),
            Err(TooLarge)
        );
    }
}
