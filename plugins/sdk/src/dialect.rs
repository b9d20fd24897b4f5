//! Helpers for codec plugins (dialects), free of any WIT binding so they
//! can be tested on the host target: the timestamp and JSON string forms
//! iotmock's own dialect uses, and topic/payload templates with
//! `{placeholder}`s that fill, match a topic back, and turn into a
//! subscription filter.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write;

/// Writes `ts` (ms since the Unix epoch, UTC) as RFC 3339 with
/// milliseconds: `2026-01-01T00:00:00.000Z`, the form of iotmock's `ts`.
pub fn write_rfc3339_ms(out: &mut String, ts: i64) {
    let days = ts.div_euclid(86_400_000);
    let ms_of_day = ts.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (h, rest) = (ms_of_day / 3_600_000, ms_of_day % 3_600_000);
    let (min, rest) = (rest / 60_000, rest % 60_000);
    let (s, ms) = (rest / 1000, rest % 1000);
    let _ = write!(out, "{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{ms:03}Z");
}

/// [`write_rfc3339_ms`] into a new string.
pub fn rfc3339_ms(ts: i64) -> String {
    let mut out = String::with_capacity(24);
    write_rfc3339_ms(&mut out, ts);
    out
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `s` as a JSON string literal, quotes included.
pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// `s` escaped for use inside a JSON string literal, without the quotes.
pub fn json_escaped(s: &str) -> String {
    let quoted = json_string(s);
    quoted[1..quoted.len() - 1].to_string()
}

/// A piece of a [`Template`].
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Var(String),
}

/// Text with `{name}` placeholders, e.g. `site/{group}/{id}/{sensor}`.
/// `{{` and `}}` stand for literal braces.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`, refusing placeholders not in `allowed` by name.
    pub fn parse(text: &str, allowed: &[&str]) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => {
                                return Err(alloc::format!(
                                    "{text:?}: a `{{` is not closed (write `{{{{` for a literal brace)"
                                ));
                            }
                        }
                    }
                    if !allowed.contains(&name.as_str()) {
                        return Err(alloc::format!(
                            "{text:?}: unknown placeholder {{{name}}} (use {})",
                            allowed
                                .iter()
                                .map(|a| alloc::format!("{{{a}}}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Text(core::mem::take(&mut literal)));
                    }
                    parts.push(Part::Var(name));
                }
                '}' => {
                    return Err(alloc::format!(
                        "{text:?}: a `}}` without its `{{` (write `}}}}` for a literal brace)"
                    ));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Self { parts })
    }

    /// Whether the template uses placeholder `name`.
    pub fn uses(&self, name: &str) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Var(v) if v == name))
    }

    /// Fills the placeholders with what `value` answers for each name.
    pub fn render_into<'a>(&self, out: &mut String, value: impl Fn(&str) -> &'a str) {
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => out.push_str(value(v)),
            }
        }
    }

    pub fn render<'a>(&self, value: impl Fn(&str) -> &'a str) -> String {
        let mut out = String::new();
        self.render_into(&mut out, value);
        out
    }

    /// The subscription filter of a topic template: each level holding a
    /// placeholder becomes `+`.
    pub fn filter(&self) -> String {
        let mut whole = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => whole.push_str(t),
                Part::Var(_) => whole.push('\u{0}'),
            }
        }
        whole
            .split('/')
            .map(|level| if level.contains('\u{0}') { "+" } else { level })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Reads a topic back: the placeholders' values, when `topic` has the
    /// template's shape (a placeholder matches within one level).
    pub fn match_topic(&self, topic: &str) -> Option<Vec<(String, String)>> {
        let mut found = Vec::new();
        let mut rest = topic;
        let mut parts = self.parts.iter().peekable();
        while let Some(part) = parts.next() {
            match part {
                Part::Text(t) => rest = rest.strip_prefix(t.as_str())?,
                Part::Var(name) => {
                    // Up to the next literal text, within this level.
                    let level_end = rest.find('/').unwrap_or(rest.len());
                    let end = match parts.peek() {
                        Some(Part::Text(next)) => rest[..].find(next.as_str())?,
                        Some(Part::Var(_)) => return None,
                        None => rest.len(),
                    };
                    if end > level_end || end == 0 {
                        return None;
                    }
                    found.push((name.clone(), rest[..end].to_string()));
                    rest = &rest[end..];
                }
            }
        }
        rest.is_empty().then_some(found)
    }
}

/// A little-endian `u64` kept at the start of a codec's state (a sequence
/// number, a birth counter); 0 when the state is shorter.
pub fn state_u64(state: &[u8], index: usize) -> u64 {
    let at = index * 8;
    state
        .get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .unwrap_or(0)
}

/// Sets the `index`th `u64` of a codec's state, growing it as needed.
pub fn set_state_u64(state: &mut Vec<u8>, index: usize, value: u64) {
    let at = index * 8;
    if state.len() < at + 8 {
        state.resize(at + 8, 0);
    }
    state[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_with_ms() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_767_225_600_000), "2026-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn templates_fill_match_and_filter() {
        let t = Template::parse("site/{group}/{id}/{sensor}", &["group", "id", "sensor"]).unwrap();
        let topic = t.render(|v| match v {
            "group" => "north",
            "id" => "d-1",
            _ => "temp",
        });
        assert_eq!(topic, "site/north/d-1/temp");
        assert_eq!(t.filter(), "site/+/+/+");
        let found = t.match_topic("site/north/d-1/temp").unwrap();
        assert_eq!(found[1], ("id".to_string(), "d-1".to_string()));
        assert!(t.match_topic("site/north/d-1").is_none());
        assert!(t.match_topic("site/north/d-1/temp/x").is_none());
        let e = Template::parse("a/{nope}", &["id"]).unwrap_err();
        assert!(e.contains("{nope}"), "{e}");
        let p = Template::parse("{{\"v\":{value}}}", &["value"]).unwrap();
        assert_eq!(p.render(|_| "1.5"), "{\"v\":1.5}");
    }

    #[test]
    fn state_numbers_round_trip() {
        let mut s = Vec::new();
        assert_eq!(state_u64(&s, 1), 0);
        set_state_u64(&mut s, 1, 300);
        assert_eq!(state_u64(&s, 1), 300);
        assert_eq!(s.len(), 16);
    }
}
