//! Verification shared by the journals (MQTT now, HTTP requests later): a
//! count expectation ("at least / at most / exactly N"), a JSON subset
//! matcher, and the verdict shape every verify call answers with.
//!
//! It owns no journal and does no waiting: a journal feeds it matches as
//! they arrive and asks [`Expect::settled`] whether waiting longer could
//! still change the answer.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How many matching items a verify call expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    AtLeast(u64),
    AtMost(u64),
    Exactly(u64),
}

impl Expect {
    /// Builds the expectation from the three optional request fields; exactly
    /// one of them must be given.
    pub fn from_fields(
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
    pub fn settled(self, matched: u64) -> Option<bool> {
        match self {
            Expect::AtLeast(n) if matched >= n => Some(true),
            Expect::AtMost(n) | Expect::Exactly(n) if matched > n => Some(false),
            _ => None,
        }
    }

    /// The verdict at the deadline.
    pub fn holds(self, matched: u64) -> bool {
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
pub fn json_contains(actual: &Value, subset: &Value) -> bool {
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
pub struct Verdict {
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
