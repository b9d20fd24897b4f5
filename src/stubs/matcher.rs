//! Request matchers of a stub: a path pattern with parameters, and value
//! matchers for query parameters, headers and the body.
//!
//! A value matcher is a string (equals) or an object with exactly one of
//! `equals`, `contains`, `matches` (a regular expression, anchored by you
//! with `^...$` if you need it), `present` (true: any value; false: must be
//! missing). A body can also be matched by a JSON subset (`json`).

use std::collections::BTreeMap;

use regex::Regex;
use serde::Serialize;
use serde_json::Value;

/// One matcher that did not hold, for near-miss explanations.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub(crate) struct Mismatch {
    /// `method`, `path`, `query.NAME`, `headers.NAME`, `body` or `json`.
    pub field: String,
    pub expected: String,
    /// What the request had (`(missing)` when it had nothing).
    pub got: String,
}

#[derive(Debug, Clone)]
pub(crate) enum Matcher {
    Equals(String),
    Contains(String),
    Matches(Regex),
    Present(bool),
}

impl Matcher {
    /// Builds a matcher from its JSON form; `field` names it in errors.
    pub(crate) fn compile(field: &str, def: &Value) -> Result<Self, String> {
        match def {
            Value::String(s) => Ok(Matcher::Equals(s.clone())),
            Value::Object(map) if map.len() == 1 => {
                let (op, arg) = map.iter().next().expect("one entry");
                match (op.as_str(), arg) {
                    ("equals", Value::String(s)) => Ok(Matcher::Equals(s.clone())),
                    ("contains", Value::String(s)) => Ok(Matcher::Contains(s.clone())),
                    ("matches", Value::String(s)) => {
                        Regex::new(s).map(Matcher::Matches).map_err(|e| {
                            format!(
                                "{field}: `matches` {s:?} is not a valid regular expression: {e}"
                            )
                        })
                    }
                    ("present", Value::Bool(b)) => Ok(Matcher::Present(*b)),
                    ("equals" | "contains" | "matches", _) => {
                        Err(format!("{field}: `{op}` takes a string"))
                    }
                    ("present", _) => Err(format!("{field}: `present` takes true or false")),
                    _ => Err(format!(
                        "{field}: unknown matcher `{op}`; use equals, contains, matches (regex) or present"
                    )),
                }
            }
            Value::Object(_) => Err(format!(
                "{field}: give exactly one of equals, contains, matches or present"
            )),
            other => Err(format!(
                "{field}: a matcher is a string (equals) or an object like {{\"contains\":\"...\"}}, not {other}"
            )),
        }
    }

    pub(crate) fn check(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Matcher::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            (Matcher::Equals(s), Some(v)) => v == s,
            (Matcher::Contains(s), Some(v)) => v.contains(s.as_str()),
            (Matcher::Matches(re), Some(v)) => re.is_match(v),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Matcher::Equals(s) => format!("equals {s:?}"),
            Matcher::Contains(s) => format!("contains {s:?}"),
            Matcher::Matches(re) => format!("matches /{}/", re.as_str()),
            Matcher::Present(true) => "present".into(),
            Matcher::Present(false) => "absent".into(),
        }
    }
}

/// Matchers keyed by name (query parameters, headers).
pub(crate) fn compile_map(
    field: &str,
    defs: &BTreeMap<String, Value>,
    lowercase: bool,
) -> Result<Vec<(String, Matcher)>, String> {
    defs.iter()
        .map(|(name, def)| {
            let key = if lowercase {
                name.to_ascii_lowercase()
            } else {
                name.clone()
            };
            Matcher::compile(&format!("{field}.{name}"), def).map(|m| (key, m))
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Param(String),
    /// `*`: any one segment.
    Any,
    /// `**` (last): the rest of the path, possibly empty.
    Rest,
}

/// A path pattern: `/ota/{device}/manifest`, `/files/*/meta`, `/static/**`.
#[derive(Debug, Clone)]
pub(crate) struct PathPattern {
    segments: Vec<Segment>,
    source: String,
}

impl PathPattern {
    pub(crate) fn parse(pattern: &str) -> Result<Self, String> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(format!("path {pattern:?} must start with /"));
        };
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let mut segments = Vec::with_capacity(parts.len());
        let mut names = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let segment = if *part == "**" {
                if i + 1 != parts.len() {
                    return Err(format!(
                        "path {pattern:?}: ** (the rest of the path) must be the last segment"
                    ));
                }
                Segment::Rest
            } else if *part == "*" {
                Segment::Any
            } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(format!(
                        "path {pattern:?}: parameter {{{name}}} needs a name of A-Z, a-z, 0-9, _ or -"
                    ));
                }
                if names.contains(&name) {
                    return Err(format!(
                        "path {pattern:?}: parameter {{{name}}} appears twice"
                    ));
                }
                names.push(name);
                Segment::Param(name.to_string())
            } else if part.contains(['{', '}', '*']) {
                return Err(format!(
                    "path {pattern:?}: segment {part:?} mixes text with {{}} or *; a parameter or wildcard takes a whole segment"
                ));
            } else {
                Segment::Literal(part.to_string())
            };
            segments.push(segment);
        }
        Ok(Self {
            segments,
            source: pattern.to_string(),
        })
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern has parameters or wildcards (else it is a plain
    /// path, which filters also use as a prefix).
    pub(crate) fn is_literal(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Literal(_)))
    }

    /// The parameters when `path` matches.
    pub(crate) fn matches(&self, path: &str) -> Option<BTreeMap<String, String>> {
        let rest = path.strip_prefix('/')?;
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let mut params = BTreeMap::new();
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Rest => return Some(params),
                _ if i >= parts.len() => return None,
                Segment::Literal(l) if l != parts[i] => return None,
                Segment::Literal(_) | Segment::Any => {}
                Segment::Param(name) => {
                    if parts[i].is_empty() {
                        return None;
                    }
                    params.insert(name.clone(), parts[i].to_string());
                }
            }
        }
        (parts.len() == self.segments.len()).then_some(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn path_patterns() {
        let p = PathPattern::parse("/ota/{device}/manifest").unwrap();
        let params = p.matches("/ota/d-1/manifest").unwrap();
        assert_eq!(params["device"], "d-1");
        assert!(p.matches("/ota/d-1/manifest/x").is_none());
        assert!(p.matches("/ota//manifest").is_none());
        assert!(p.matches("/ota/d-1").is_none());
        let any = PathPattern::parse("/files/*/meta").unwrap();
        assert!(any.matches("/files/a/meta").is_some());
        let rest = PathPattern::parse("/static/**").unwrap();
        assert!(rest.matches("/static/a/b/c").is_some());
        assert!(rest.matches("/static").is_some());
        assert!(PathPattern::parse("/").unwrap().matches("/").is_some());
        assert!(PathPattern::parse("ota").is_err());
        assert!(PathPattern::parse("/a/**/b").is_err());
        assert!(PathPattern::parse("/a/x{y}").is_err());
    }

    #[test]
    fn value_matchers() {
        let m = Matcher::compile("q", &json!("1")).unwrap();
        assert!(m.check(Some("1")) && !m.check(Some("2")) && !m.check(None));
        let m = Matcher::compile("q", &json!({"contains":"json"})).unwrap();
        assert!(m.check(Some("application/json")));
        let m = Matcher::compile("q", &json!({"matches":"^v[0-9]+$"})).unwrap();
        assert!(m.check(Some("v12")) && !m.check(Some("v1x")));
        let m = Matcher::compile("q", &json!({"present":false})).unwrap();
        assert!(m.check(None) && !m.check(Some("")));
        assert!(Matcher::compile("q", &json!({"regex":"x"})).is_err());
        assert!(Matcher::compile("q", &json!({"matches":"("})).is_err());
        assert!(Matcher::compile("q", &json!(1)).is_err());
    }
}
