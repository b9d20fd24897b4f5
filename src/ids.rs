//! The names things are known by, checked once where they come in (the
//! scenario file, a request body, a URL): device ids, edge node ids, sensor
//! names, stub ids and plugin names. A value of one of these types has been
//! checked, so code that holds one need not check it again.
//!
//! It owns the rules and the words users read when a name breaks them; it
//! does not know where names are stored or looked up. Ids of things the
//! server makes itself (command ids, certificate serials) are not checked
//! here: nobody types them in.

use std::fmt;
use std::ops::Deref;

/// Longest id or name that appears in a topic or a URL segment.
const MAX_SEGMENT: usize = 128;
/// Longest plugin name: a file name and a URL segment.
const MAX_PLUGIN_NAME: usize = 64;

/// Why a name was refused; the message names the input and what to use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{noun} {id:?}: must be 1 to 128 characters long")]
    Length { noun: &'static str, id: String },
    #[error("{noun} {id:?}: contains {found:?}; use only A-Z, a-z, 0-9, '.', '_' and '-'")]
    Character {
        noun: &'static str,
        id: String,
        found: char,
    },
    #[error("id {0:?}: use 1 to 128 characters from A-Z, a-z, 0-9, '.', '_' and '-'")]
    Stub(String),
    #[error("{0:?} is not a valid plugin name (a-z, 0-9, '-', '_')")]
    PluginName(String),
}

/// Checks a segment of a topic or URL: 1 to 128 characters from A-Z,
/// a-z, 0-9, '.', '_' and '-' (no '/', '+' or '#', which would change
/// what a topic filter matches).
fn check_segment(noun: &'static str, id: &str) -> Result<(), IdError> {
    if id.is_empty() || id.len() > MAX_SEGMENT {
        return Err(IdError::Length {
            noun,
            id: id.to_string(),
        });
    }
    if let Some(found) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(IdError::Character {
            noun,
            id: id.to_string(),
            found,
        });
    }
    Ok(())
}

/// Whether `name` is a plugin name: 1 to 64 of a-z, 0-9, '-' and '_'
/// (what users type in URLs and file names).
pub(crate) fn valid_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PLUGIN_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A checked name: a `String` that passed its type's rule. It reads as a
/// `&str` and serializes as a plain string.
macro_rules! checked_name {
    ($(#[$attr:meta])* $name:ident, $check:expr) => {
        $(#[$attr])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks `id` and wraps it.
            pub fn parse(id: impl Into<String>) -> Result<Self, IdError> {
                let id = id.into();
                let check: fn(&str) -> Result<(), IdError> = $check;
                check(&id)?;
                Ok(Self(id))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // Shown as the text it holds, as in `{:?}` of the `String` it
        // replaces: error messages quote ids so.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

checked_name! {
    /// A device id: it appears in MQTT topics and URLs, so 1 to 128
    /// characters from A-Z, a-z, 0-9, '.', '_' and '-'.
    DeviceId, |id| check_segment("device id", id)
}

checked_name! {
    /// An edge node id: the same rule as a device id (it appears in the
    /// node's uplink topics and its URL).
    EdgeNodeId, |id| check_segment("edge node id", id)
}

checked_name! {
    /// A sensor's name in topics and exports: the rule of a device id.
    SensorName, |id| check_segment("sensor name", id)
}

checked_name! {
    /// A stub id: it appears in URLs (`/stubs/{id}`).
    StubId, |id| check_segment("stub id", id).map_err(|_| IdError::Stub(id.to_string()))
}

checked_name! {
    /// A plugin name: 1 to 64 of a-z, 0-9, '-' and '_'.
    PluginName, |name| {
        if valid_plugin_name(name) {
            Ok(())
        } else {
            Err(IdError::PluginName(name.to_string()))
        }
    }
}

/// Expands an id pattern, `dev-{n:05}` (or `{n}`), for n = first,
/// first+1, ... The ids it makes are not checked yet: the pattern's fixed
/// parts may break the id rule, which the caller reports per id.
pub(crate) fn expand_pattern(pattern: &str, first: u32, count: u32) -> Result<Vec<String>, String> {
    let start = pattern
        .find("{n")
        .ok_or_else(|| format!("id_pattern {pattern:?} has no {{n}} or {{n:0W}} placeholder"))?;
    let end = start
        + pattern[start..]
            .find('}')
            .ok_or_else(|| format!("id_pattern {pattern:?}: unclosed placeholder"))?;
    let spec = &pattern[start + 2..end];
    let width = match spec {
        "" => 0,
        _ => spec
            .strip_prefix(":0")
            .or_else(|| spec.strip_prefix(':'))
            .and_then(|w| w.parse::<usize>().ok())
            .ok_or_else(|| {
                format!(
                    "id_pattern {pattern:?}: placeholder must be {{n}} or {{n:0W}}, e.g. {{n:05}}"
                )
            })?,
    };
    let (head, tail) = (&pattern[..start], &pattern[end + 1..]);
    Ok((0..count)
        .map(|i| format!("{head}{:0width$}{tail}", u64::from(first) + u64::from(i)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_name_what_to_fix() {
        assert_eq!(DeviceId::parse("dev-01.a_b").unwrap(), "dev-01.a_b");
        assert_eq!(
            DeviceId::parse("a/b").unwrap_err().to_string(),
            "device id \"a/b\": contains '/'; use only A-Z, a-z, 0-9, '.', '_' and '-'"
        );
        assert_eq!(
            DeviceId::parse("").unwrap_err().to_string(),
            "device id \"\": must be 1 to 128 characters long"
        );
        assert!(DeviceId::parse("x".repeat(128)).is_ok());
        assert!(DeviceId::parse("x".repeat(129)).is_err());
        assert!(
            EdgeNodeId::parse("n+1")
                .unwrap_err()
                .to_string()
                .starts_with("edge node id \"n+1\": contains '+'")
        );
    }

    #[test]
    fn stub_ids_and_plugin_names_have_their_own_rules() {
        assert_eq!(
            StubId::parse("a b").unwrap_err().to_string(),
            "id \"a b\": use 1 to 128 characters from A-Z, a-z, 0-9, '.', '_' and '-'"
        );
        assert!(StubId::parse("Ota.Manifest_1").is_ok());
        assert!(PluginName::parse("random-walk_2").is_ok());
        assert_eq!(
            PluginName::parse("Random").unwrap_err().to_string(),
            "\"Random\" is not a valid plugin name (a-z, 0-9, '-', '_')"
        );
        assert!(!valid_plugin_name(&"p".repeat(65)));
    }

    #[test]
    fn an_id_serializes_as_its_text() {
        let id = DeviceId::parse("d-1").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"d-1\"");
        assert_eq!(id.to_string(), "d-1");
        assert_eq!(format!("{id:?}"), "\"d-1\"");
    }

    #[test]
    fn patterns_expand() {
        assert_eq!(
            expand_pattern("s-{n:03}", 1, 2).unwrap(),
            ["s-001", "s-002"]
        );
        assert_eq!(expand_pattern("{n}x", 9, 2).unwrap(), ["9x", "10x"]);
        assert!(expand_pattern("none", 1, 1).is_err());
    }

    #[test]
    fn a_bad_pattern_says_what_to_write() {
        assert_eq!(
            expand_pattern("dev-{n", 1, 1).unwrap_err(),
            "id_pattern \"dev-{n\": unclosed placeholder"
        );
        for bad in ["dev-{n:5x}", "dev-{nope}"] {
            assert_eq!(
                expand_pattern(bad, 1, 1).unwrap_err(),
                format!("id_pattern {bad:?}: placeholder must be {{n}} or {{n:0W}}, e.g. {{n:05}}")
            );
        }
        // `{n:5}` pads with zeros like `{n:05}`.
        assert_eq!(expand_pattern("d{n:3}", 7, 1).unwrap(), ["d007"]);
    }
}
