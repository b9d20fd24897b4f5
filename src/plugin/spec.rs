//! How a device names a plugin it uses (a command handler, a dialect):
//! the bare plugin name, or the plugin with its configuration. The parts
//! that use such a reference each define their own type with
//! [`plugin_spec!`], so each keeps its own schema in the API document.

/// Defines a plugin reference a device names: the bare plugin name, or the
/// plugin with its configuration (`{"plugin":...,"config":{...}}`). Command
/// handlers and dialects are both spelled so; each stays its own type (and
/// its own schema in the API document), with the same reading and storing.
macro_rules! plugin_spec {
    ($(#[$attr:meta])* $name:ident) => {
        $(#[$attr])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        #[serde(untagged)]
        pub(crate) enum $name {
            Name(String),
            Full {
                plugin: String,
                #[serde(default)]
                #[schema(value_type = Object)]
                config: serde_json::Value,
            },
        }

        impl $name {
            pub(crate) fn plugin(&self) -> &str {
                match self {
                    $name::Name(name) => name,
                    $name::Full { plugin, .. } => plugin,
                }
            }

            /// The configuration as the plugin gets it (JSON text; `{}`
            /// when none).
            pub(crate) fn config_text(&self) -> String {
                match self {
                    $name::Full { config, .. } if !config.is_null() => config.to_string(),
                    _ => "{}".to_string(),
                }
            }

            /// How the store keeps it: the bare name, or the JSON object.
            pub(crate) fn to_stored(&self) -> String {
                match self {
                    $name::Name(name) => name.clone(),
                    full => serde_json::to_string(full).expect("a plugin spec serializes"),
                }
            }

            pub(crate) fn from_stored(text: &str) -> Option<Self> {
                if text.starts_with('{') {
                    serde_json::from_str(text).ok()
                } else {
                    Some($name::Name(text.to_string()))
                }
            }
        }
    };
}
pub(crate) use plugin_spec;
