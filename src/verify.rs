//! Verification shared by the journals (MQTT messages, HTTP requests): a
//! count expectation ("at least / at most / exactly N"), a JSON subset
//! matcher, the waiting loop, and the verdict shape every verify call
//! answers with.
//!
//! It owns no journal: a journal's scan feeds [`wait_for_verdict`] matches
//! as they arrive, and [`Expect::settled`] says whether waiting longer could
//! still change the answer.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest wait of a verify call.
pub(crate) const MAX_WITHIN_MS: u64 = 60_000;

/// The fields every verify request carries besides its selection: one
/// count expectation and how long to wait, checked in one place for the
/// MQTT and the HTTP journals.
pub(crate) fn expectation(
    at_least: Option<u64>,
    at_most: Option<u64>,
    exactly: Option<u64>,
    within_ms: u64,
) -> Result<(Expect, std::time::Duration), String> {
    let expect = Expect::from_fields(at_least, at_most, exactly)?;
    if within_ms > MAX_WITHIN_MS {
        return Err(format!(
            "within_ms {within_ms} is too long: at most {MAX_WITHIN_MS}"
        ));
    }
    Ok((expect, std::time::Duration::from_millis(within_ms)))
}

/// How many matching items a verify call expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    AtLeast(u64),
    AtMost(u64),
    Exactly(u64),
}

impl Expect {
    /// Builds the expectation from the three optional request fields; exactly
    /// one of them must be given.
    pub(crate) fn from_fields(
        at_least: Option<u64>,
        at_most: Option<u64>,
        exactly: Option<u64>,
    ) -> Result<Self, &'static str> {
        match (at_least, at_most, exactly) {
            (Some(n), None, None) => Ok(Expect::AtLeast(n)),
            (None, Some(n), None) => Ok(Expect::AtMost(n)),
            (None, None, Some(n)) => Ok(Expect::Exactly(n)),
            (None, None, None) => Err("give one of at_least, at_most or exactly"),
            _ => Err("give only one of at_least, at_most or exactly"),
        }
    }

    /// The verdict if it can no longer change as more items arrive:
    /// reaching `at_least` passes at once, going over `at_most` or
    /// `exactly` fails at once; anything else needs the deadline.
    pub(crate) fn settled(self, matched: u64) -> Option<bool> {
        match self {
            Expect::AtLeast(n) if matched >= n => Some(true),
            Expect::AtMost(n) | Expect::Exactly(n) if matched > n => Some(false),
            _ => None,
        }
    }

    /// The verdict at the deadline.
    pub(crate) fn holds(self, matched: u64) -> bool {
        match self {
            Expect::AtLeast(n) => matched >= n,
            Expect::AtMost(n) => matched <= n,
            Expect::Exactly(n) => matched == n,
        }
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::AtLeast(n) => write!(f, "at least {n}"),
            Expect::AtMost(n) => write!(f, "at most {n}"),
            Expect::Exactly(n) => write!(f, "exactly {n}"),
        }
    }
}

/// Whether `actual` contains `subset`: objects need every key of the subset
/// (recursively), arrays need every element of the subset to be contained in
/// some element, other values must be equal (numbers by value: 1 and 1.0
/// match).
pub(crate) fn json_contains(actual: &Value, subset: &Value) -> bool {
    match (actual, subset) {
        (Value::Object(a), Value::Object(s)) => s
            .iter()
            .all(|(k, sv)| a.get(k).is_some_and(|av| json_contains(av, sv))),
        (Value::Array(a), Value::Array(s)) => {
            s.iter().all(|sv| a.iter().any(|av| json_contains(av, sv)))
        }
        (Value::Number(a), Value::Number(s)) => match (a.as_f64(), s.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => a == s,
        },
        (a, s) => a == s,
    }
}

/// The answer of a verify call.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct Verdict {
    pub passed: bool,
    /// Items that matched.
    pub matched: u64,
    /// The expectation, in words ("at least 3").
    pub expected: String,
    /// Why it passed or failed, in a sentence.
    pub detail: String,
    /// Items that matched the selector (e.g. the topic) but not the content,
    /// the first few, to show what was there instead.
    #[schema(value_type = Vec<Object>)]
    pub near_misses: Vec<Value>,
    /// How long the call waited, in milliseconds.
    pub waited_ms: u64,
    /// The journal cursor up to which items were examined: pass it as
    /// `since` to look only at what came after.
    pub cursor: u64,
}

/// What a journal scan found so far in one verify call.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Items that matched completely.
    pub matched: u64,
    /// Items the selector picked (topic, method and path, ...), matched
    /// or not.
    pub selected: u64,
    /// The first few selected items that did not match.
    pub near_misses: Vec<Value>,
    /// Whether items after the cursor had already been evicted.
    pub missed: bool,
}

impl Tally {
    /// Counts one selected item; keeps it as a near miss when it did not
    /// match and fewer than five are kept.
    pub(crate) fn count(&mut self, matched: bool, near_miss: impl FnOnce() -> Value) {
        self.selected += 1;
        if matched {
            self.matched += 1;
        } else if self.near_misses.len() < 5 {
            self.near_misses.push(near_miss());
        }
    }
}

/// The waiting every verify call shares: `scan` examines the journal after
/// a cursor (answering the new cursor and whether items were evicted), and
/// is called again whenever `newest` moves, until `expect` is settled or
/// `within` has passed. `describe` words the verdict's detail.
pub(crate) async fn wait_for_verdict(
    expect: Expect,
    since: u64,
    within: std::time::Duration,
    mut newest: tokio::sync::watch::Receiver<u64>,
    mut scan: impl FnMut(u64, &mut Tally) -> (u64, bool),
    describe: impl FnOnce(&Tally) -> String,
) -> Verdict {
    let started = tokio::time::Instant::now();
    let deadline = started + within;
    let mut cursor = since;
    let mut tally = Tally::default();
    loop {
        newest.borrow_and_update();
        let (last, gap) = scan(cursor, &mut tally);
        cursor = last;
        tally.missed |= gap;
        let now = tokio::time::Instant::now();
        let verdict = match expect.settled(tally.matched) {
            Some(v) => Some(v),
            None if now >= deadline => Some(expect.holds(tally.matched)),
            None => None,
        };
        if let Some(passed) = verdict {
            let detail = describe(&tally);
            return Verdict {
                passed,
                matched: tally.matched,
                expected: expect.to_string(),
                detail,
                near_misses: tally.near_misses,
                waited_ms: now.duration_since(started).as_millis() as u64,
                cursor,
            };
        }
        tokio::select! {
            _ = newest.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_matching() {
        let a = json!({"device":"d1","value":21.5,"tags":["a","b"],"nested":{"x":1,"y":2}});
        assert!(json_contains(&a, &json!({})));
        assert!(json_contains(&a, &json!({"device":"d1"})));
        assert!(json_contains(&a, &json!({"nested":{"x":1.0}})));
        assert!(json_contains(&a, &json!({"tags":["b"]})));
        assert!(!json_contains(&a, &json!({"tags":["c"]})));
        assert!(!json_contains(&a, &json!({"device":"d2"})));
        assert!(!json_contains(&a, &json!({"missing":null})));
        assert!(json_contains(&json!(5), &json!(5)));
    }

    #[test]
    fn expectations_settle_early_only_when_final() {
        assert_eq!(Expect::AtLeast(2).settled(1), None);
        assert_eq!(Expect::AtLeast(2).settled(2), Some(true));
        assert_eq!(Expect::AtMost(2).settled(2), None);
        assert_eq!(Expect::AtMost(2).settled(3), Some(false));
        assert_eq!(Expect::Exactly(0).settled(1), Some(false));
        assert!(Expect::Exactly(2).holds(2));
        assert!(!Expect::AtLeast(1).holds(0));
        assert!(Expect::from_fields(Some(1), Some(2), None).is_err());
        assert!(Expect::from_fields(None, None, None).is_err());
    }
}
