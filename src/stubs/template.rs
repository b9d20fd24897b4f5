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

use serde_json::{Map, Value};

/// What a template can read.
pub struct Context<'a> {
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
pub fn check(field: &str, text: &str) -> Result<(), String> {
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
pub fn check_json(field: &str, value: &Value) -> Result<(), String> {
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

/// The value a placeholder names.
fn lookup(name: &str, ctx: &Context<'_>) -> Option<Value> {
    let mut parts = name.split('.');
    match parts.next()? {
        "now" => Some(Value::String(crate::clock::rfc3339_ms(ctx.now_ms))),
        "now_ms" => Some(Value::from(ctx.now_ms)),
        "stub" => match parts.next()? {
            "id" => Some(Value::String(ctx.stub_id.to_string())),
            "calls" => Some(Value::from(ctx.calls)),
            _ => None,
        },
        "device" => walk(ctx.device?, &mut parts).cloned(),
        "request" => {
            let field = parts.next()?;
            let request = ctx.request;
            match field {
                "path" => match parts.next() {
                    None => request.get("path").cloned(),
                    Some(param) => request.get("params")?.get(param).cloned(),
                },
                "body" => {
                    let mut rest = parts.clone();
                    if rest.next().is_none() {
                        request.get("body").cloned()
                    } else {
                        walk(request.get("json")?, &mut parts).cloned()
                    }
                }
                "headers" => {
                    let name = parts.collect::<Vec<_>>().join(".").to_ascii_lowercase();
                    request.get("headers")?.get(name).cloned()
                }
                "query" => {
                    let name = parts.collect::<Vec<_>>().join(".");
                    request.get("query")?.get(name).cloned()
                }
                other => request.get(other).cloned(),
            }
        }
        _ => None,
    }
}

fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Fills the placeholders of a text template.
pub fn render(text: &str, ctx: &Context<'_>) -> String {
    if !text.contains("{{") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for piece in pieces(text) {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(name) => {
                if let Some(v) = lookup(name, ctx) {
                    out.push_str(&as_text(&v));
                }
            }
            Piece::Unclosed => {}
        }
    }
    out
}

/// Fills the placeholders of a JSON template.
pub fn render_json(value: &Value, ctx: &Context<'_>) -> Value {
    match value {
        Value::String(s) => {
            let p = pieces(s);
            if let [Piece::Var(name)] = p.as_slice() {
                return lookup(name, ctx).unwrap_or(Value::Null);
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
}
