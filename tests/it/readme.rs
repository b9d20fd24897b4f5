//! The README's shell examples, run as written: every ```sh block of the
//! sections a new user follows (the tour, Devices, Commands, HTTP devices,
//! stubs and their journal, Edge nodes), in order, in one bash session,
//! against the real binary. A README that drifts from the server fails here.
//!
//! How a block is read:
//! - `cargo run --release -- serve ARGS` (re)starts the server with ARGS on
//!   free ports, as the reader's Ctrl-C and restart would, and waits for
//!   the ready line;
//! - `curl` runs the real curl with `localhost:8080` pointed at that
//!   server; every call must answer 2xx unless an expectation says
//!   otherwise;
//! - a comment `# → STATUS {SHAPE}` (either part optional) after a command
//!   is its expectation: the status, and the JSON keys the shape names
//!   (anywhere in the answer), with the values it spells out
//!   (`"status":"completed"`, `"created":1000`) compared exactly.
//!   `"a"|"b"` alternatives and `...` are not compared.
//!
//! ```console, ```text and unmarked blocks are not run.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The README sections whose `sh` blocks run, in README order.
const SECTIONS: &[&str] = &[
    "A five-minute tour",
    "Devices",
    "Commands",
    "HTTP devices",
    "Mock HTTP endpoints (stubs)",
    "Request journal and verify",
    "Edge nodes",
];

/// Defined before the README's commands run.
const PRELUDE: &str = r#"
set -u
echo 0 > "$T/n"
: > "$T/calls"
__HTTP=""
__PID=""
__stop() {
  if [ -n "$__PID" ]; then kill -TERM "$__PID" 2>/dev/null; wait "$__PID" 2>/dev/null; fi
  __PID=""
}
trap __stop EXIT
__serve() {
  __stop
  : > "$T/ready"
  "$BIN" serve --http 127.0.0.1:0 --mqtt 127.0.0.1:0 "$@" > "$T/ready" 2>> "$T/server.log" &
  __PID=$!
  for _ in $(seq 1 1200); do
    if [ -s "$T/ready" ]; then break; fi
    sleep 0.05
  done
  __HTTP=$(head -n 1 "$T/ready" | jq -r .http)
  if [ -z "$__HTTP" ] || [ "$__HTTP" = null ]; then
    echo "the server did not print its ready line; its log:" >&2
    cat "$T/server.log" >&2
    exit 97
  fi
  printf 'serve\t0\t0\t%s\n' "$*" >> "$T/calls"
}
curl() {
  local n args=() a code
  n=$(( $(cat "$T/n") + 1 ))
  echo "$n" > "$T/n"
  for a in "$@"; do args+=("${a//localhost:8080/$__HTTP}"); done
  code=$(command curl -sS --max-time 60 -o "$T/body.$n" -w '%{http_code}' "${args[@]}") || code="curl-failed"
  local shown="$*"
  printf 'call\t%s\t%s\t%s\n' "$n" "$code" "${shown//$'\n'/ }" >> "$T/calls"
  cat "$T/body.$n"
}
__expect() {
  printf 'expect\t%s\t-\t%s\n' "$(cat "$T/n")" "$1" >> "$T/calls"
}
"#;

/// The `sh` blocks of the listed sections, in order, with their section.
fn tested_blocks(readme: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut section = String::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if let Some(heading) = line
            .strip_prefix("### ")
            .or_else(|| line.strip_prefix("## "))
        {
            section = heading.trim().to_string();
            continue;
        }
        let fence = line.trim_start();
        if !fence.starts_with("```") {
            continue;
        }
        let indent = line.len() - fence.len();
        let mut body = String::new();
        for inner in lines.by_ref() {
            if inner.trim_start().starts_with("```") {
                break;
            }
            body.push_str(inner.get(indent..).unwrap_or(inner.trim_start()));
            body.push('\n');
        }
        if fence == "```sh" && SECTIONS.contains(&section.as_str()) {
            blocks.push((section.clone(), body));
        }
    }
    blocks
}

/// A block as bash runs it: server starts and expectations made explicit.
fn translate(block: &str) -> String {
    let mut out = String::new();
    for line in block.lines() {
        let trimmed = line.trim_start();
        if let Some(args) = trimmed.strip_prefix("cargo run --release -- serve") {
            let args = args.split('#').next().unwrap_or("").trim();
            out.push_str(&format!("__serve {args}\n"));
            continue;
        }
        match line.split_once("# → ") {
            Some((code, expectation)) => {
                if !code.trim().is_empty() {
                    out.push_str(code);
                    out.push('\n');
                }
                out.push_str(&format!("__expect {}\n", shell_quote(expectation.trim())));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One JSON key an expectation names, and the value it spells out.
#[derive(Debug)]
struct Field {
    key: String,
    value: Option<Value>,
}

/// Reads `201 {"id":"x","credentials":{"username","password"}}`.
fn parse_expectation(text: &str) -> (Option<u16>, Vec<Field>) {
    let text = text.trim();
    let (status, shape) = match text.split_once(|c: char| !c.is_ascii_digit()) {
        Some((digits, rest)) if digits.len() == 3 => (digits.parse().ok(), rest),
        None if text.len() == 3 => (text.parse().ok(), ""),
        _ => (None, text),
    };
    (status, shape_fields(shape))
}

fn shape_fields(shape: &str) -> Vec<Field> {
    let chars: Vec<char> = shape.chars().collect();
    let next_solid = |from: usize| (from..chars.len()).find(|&j| !chars[j].is_whitespace());
    let prev_solid = |before: usize| (0..before).rev().find(|&j| !chars[j].is_whitespace());
    let mut fields = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '"' {
            i += 1;
            continue;
        }
        let (key, end) = read_string(&chars, i);
        let after_value = prev_solid(i).is_some_and(|j| matches!(chars[j], ':' | '|'));
        if after_value {
            i = end;
            continue;
        }
        let mut value = None;
        if let Some(colon) = next_solid(end).filter(|&j| chars[j] == ':')
            && let Some(v) = next_solid(colon + 1)
        {
            if chars[v] == '"' {
                let (text, v_end) = read_string(&chars, v);
                let alternatives = next_solid(v_end).is_some_and(|j| chars[j] == '|');
                if !alternatives && !text.contains("...") {
                    value = Some(Value::String(text));
                }
            } else {
                let token: String = chars[v..]
                    .iter()
                    .take_while(|c| !matches!(c, ',' | '}' | ']') && !c.is_whitespace())
                    .collect();
                value = serde_json::from_str::<Value>(&token)
                    .ok()
                    .filter(|t| !t.is_object() && !t.is_array());
            }
        }
        fields.push(Field { key, value });
        i = end;
    }
    fields
}

/// A JSON string starting at `start` (a quote): its text and the index
/// after its closing quote.
fn read_string(chars: &[char], start: usize) -> (String, usize) {
    let mut text = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if i + 1 < chars.len() => {
                text.push(chars[i + 1]);
                i += 2;
            }
            '"' => return (text, i + 1),
            c => {
                text.push(c);
                i += 1;
            }
        }
    }
    (text, i)
}

/// Whether `key` appears anywhere in `v` (with `value`, when given).
fn has_field(v: &Value, field: &Field) -> bool {
    match v {
        Value::Object(map) => map.iter().any(|(k, inner)| {
            (k == &field.key && field.value.as_ref().is_none_or(|want| want == inner))
                || has_field(inner, field)
        }),
        Value::Array(items) => items.iter().any(|inner| has_field(inner, field)),
        _ => false,
    }
}

#[test]
fn readme_examples_work_as_written() {
    // The README's examples need these; installed on first use, like the
    // mosquitto clients.
    for tool in ["bash", "curl", "jq"] {
        crate::support::ensure_tool(tool, tool);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = tested_blocks(&readme);
    for section in SECTIONS {
        assert!(
            blocks.iter().any(|(s, _)| s == section),
            "README section {section:?} has no ```sh block (renamed? the test runs the listed sections)"
        );
    }
    let mut script = String::from(PRELUDE);
    for (section, block) in &blocks {
        script.push_str(&format!("\n# --- {section}\n"));
        script.push_str(&translate(block));
    }

    let dir = tempfile::tempdir().unwrap();
    let output = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("T", dir.path())
        .env("BIN", env!("CARGO_BIN_EXE_iotmock"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run bash");
    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap_or_default();
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "the README's examples stopped: {}\nstderr: {}\ncalls:\n{calls}\nserver log:\n{log}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );

    let mut problems = Vec::new();
    let mut ran = 0;
    let mut servers = 0;
    let records: Vec<Vec<&str>> = calls.lines().map(|l| l.splitn(4, '\t').collect()).collect();
    for record in &records {
        match record[0] {
            "serve" => servers += 1,
            "call" => {
                ran += 1;
                let (n, code, command) = (record[1], record[2], record[3]);
                let body = std::fs::read_to_string(dir.path().join(format!("body.{n}")))
                    .unwrap_or_default();
                let expectations: Vec<&str> = records
                    .iter()
                    .filter(|r| r[0] == "expect" && r[1] == n)
                    .map(|r| r[3])
                    .collect();
                let status: Option<u16> = code.parse().ok();
                let (want_status, fields) = match expectations.first() {
                    Some(e) => parse_expectation(e),
                    None => (None, Vec::new()),
                };
                let status_ok = match (status, want_status) {
                    (Some(got), Some(want)) => got == want,
                    (Some(got), None) => (200..300).contains(&got),
                    (None, _) => false,
                };
                if !status_ok {
                    problems.push(format!(
                        "`curl {command}` answered {code} (expected {}): {body}",
                        want_status.map_or("2xx".to_string(), |s| s.to_string())
                    ));
                    continue;
                }
                if fields.is_empty() {
                    continue;
                }
                let Ok(json) = serde_json::from_str::<Value>(&body) else {
                    problems.push(format!("`curl {command}`: the answer is not JSON: {body}"));
                    continue;
                };
                for field in &fields {
                    if !has_field(&json, field) {
                        problems.push(format!(
                            "`curl {command}`: no {:?}{} in the answer: {body}",
                            field.key,
                            field
                                .value
                                .as_ref()
                                .map_or(String::new(), |v| format!(" = {v}"))
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    assert!(
        servers >= 3,
        "the tour's two starts and the reference sections' one: {calls}"
    );
    assert!(ran >= 40, "only {ran} curl calls ran:\n{calls}");
    assert!(
        problems.is_empty(),
        "README examples that do not work as written:\n{}\n\nserver log:\n{log}",
        problems.join("\n")
    );
}

#[test]
fn expectations_are_read_as_documented() {
    let (status, fields) =
        parse_expectation(r#"201 {"id":"th-1","n":3,"credentials":{"username","password"}}"#);
    assert_eq!(status, Some(201));
    let seen: Vec<(&str, Option<&Value>)> = fields
        .iter()
        .map(|f| (f.key.as_str(), f.value.as_ref()))
        .collect();
    assert_eq!(
        seen,
        [
            ("id", Some(&Value::from("th-1"))),
            ("n", Some(&Value::from(3))),
            ("credentials", None),
            ("username", None),
            ("password", None),
        ]
    );
    let (status, fields) = parse_expectation(r#"{"listener":"api"|"mock","batch":"batch-..."}"#);
    assert_eq!(status, None);
    assert!(fields.iter().all(|f| f.value.is_none()), "{fields:?}");
    assert_eq!(parse_expectation("503").0, Some(503));
    let answer = serde_json::json!({"items":[{"status":"completed"}]});
    let completed = Field {
        key: "status".into(),
        value: Some("completed".into()),
    };
    assert!(has_field(&answer, &completed));
    let failed = Field {
        key: "status".into(),
        value: Some("failed".into()),
    };
    assert!(!has_field(&answer, &failed));
}
