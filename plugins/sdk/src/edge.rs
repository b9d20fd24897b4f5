//! The `edge-rule` world: one stage of an edge node's pipeline. It gets a
//! window's batch of readings and returns actions; readings it does not
//! forward are dropped. Implement [`EdgeRule`] and export it with
//! [`export_edge_rule!`](crate::export_edge_rule).
//!
//! ```no_run
//! use iotmock_sdk::edge::{Action, EdgeRule, Reading, Window};
//! use iotmock_sdk::Device;
//!
//! #[derive(serde::Deserialize, Default)]
//! #[serde(default, deny_unknown_fields)]
//! struct Config { above: f64 }
//!
//! struct Over { above: f64 }
//!
//! impl EdgeRule for Over {
//!     type Config = Config;
//!     /// Readings dropped so far.
//!     type State = u64;
//!     fn new(config: Config) -> Result<Self, String> {
//!         Ok(Self { above: config.above })
//!     }
//!     fn process(&self, _node: &Device, dropped: &mut u64, _window: Window, readings: Vec<Reading>)
//!         -> Result<Vec<Action>, String>
//!     {
//!         let (keep, drop): (Vec<_>, Vec<_>) = readings.into_iter().partition(|r| r.value > self.above);
//!         *dropped += drop.len() as u64;
//!         Ok(keep.into_iter().map(Action::Forward).collect())
//!     }
//! }
//!
//! iotmock_sdk::export_edge_rule!(Over);
//! ```

use serde::de::DeserializeOwned;

use crate::Device;
use crate::codec::{self, Codec};

#[doc(hidden)]
pub mod wit {
    wit_bindgen::generate!({
        world: "edge-rule",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_world",
    });
}

use wit::exports::iotmock::plugin::edge_rule_api::Outcome;
pub use wit::exports::iotmock::plugin::edge_rule_api::{
    Action, Aggregate, Alert, DeviceCommand, EdgeReading as Reading, Severity, Window,
};
use wit::iotmock::plugin::types::PluginError;

/// One stage of an edge node's pipeline. `Self` is the model built from
/// the stage's configuration.
pub trait EdgeRule: Sized {
    /// The configuration as users write it (JSON). Give it
    /// `#[serde(default, deny_unknown_fields)]`: an unknown key is then
    /// refused by name, and `{}` means all defaults.
    type Config: DeserializeOwned + Default;
    /// What the stage remembers on a node from one window to the next
    /// (`()` for nothing); it starts as `Default::default()`.
    type State: Codec + Default;
    /// The layout of [`EdgeRule::State`]: change it whenever the state's
    /// shape changes, and a node's old state is dropped instead of misread
    /// after a hot reload.
    const STATE_VERSION: u32 = 1;

    /// Checks the configuration and builds the model; an `Err` says what to
    /// fix and reaches the user as an invalid configuration.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Processes one window's batch on the node: the actions to take, in
    /// order. `node` reaches the node's own random stream and state.
    fn process(
        &self,
        node: &Device,
        state: &mut Self::State,
        window: Window,
        readings: Vec<Reading>,
    ) -> Result<Vec<Action>, String>;
}

#[doc(hidden)]
pub fn process<T: EdgeRule>(
    config: String,
    state: Vec<u8>,
    window: Window,
    readings: Vec<Reading>,
) -> Result<Outcome, PluginError> {
    let model = crate::parse_config::<T::Config>(&config)
        .and_then(T::new)
        .map_err(PluginError::InvalidConfig)?;
    let mut state = codec::load::<T::State>(T::STATE_VERSION, &state).unwrap_or_default();
    // Slot 0 is the edge node itself.
    let actions = model
        .process(&Device::from_slot(0), &mut state, window, readings)
        .map_err(PluginError::Failed)?;
    Ok(Outcome {
        actions,
        state: codec::save(T::STATE_VERSION, &state),
    })
}

/// Exports an [`EdgeRule`] model as the plugin's `edge-rule` world. Use it
/// once, in the plugin crate's `lib.rs`.
#[macro_export]
macro_rules! export_edge_rule {
    ($model:ty) => {
        const _: () = {
            struct Export;
            impl $crate::edge::wit::exports::iotmock::plugin::edge_rule_api::Guest for Export {
                fn process(
                    config: ::std::string::String,
                    state: ::std::vec::Vec<u8>,
                    window: $crate::edge::Window,
                    readings: ::std::vec::Vec<$crate::edge::Reading>,
                ) -> ::core::result::Result<
                    $crate::edge::wit::exports::iotmock::plugin::edge_rule_api::Outcome,
                    $crate::edge::wit::iotmock::plugin::types::PluginError,
                > {
                    $crate::edge::process::<$model>(config, state, window, readings)
                }
            }
    $crate::edge::wit::export_world!(Export with_types_in $crate::edge::wit);
        };
    };
}
