//! The `command-handler` world: how a simulated device answers commands.
//! Implement [`CommandHandler`] and export it with
//! [`export_command_handler!`](crate::export_command_handler).
//!
//! ```no_run
//! use iotmock_sdk::command::{Command, CommandHandler, Handling, Reply};
//! use iotmock_sdk::Device;
//!
//! #[derive(serde::Deserialize, Default)]
//! #[serde(default, deny_unknown_fields)]
//! struct Config { delay_ms: u32 }
//!
//! struct Echo { delay_ms: u32 }
//!
//! impl CommandHandler for Echo {
//!     type Config = Config;
//!     fn new(config: Config) -> Result<Self, String> {
//!         Ok(Self { delay_ms: config.delay_ms })
//!     }
//!     fn handle(&self, _device: &Device, command: Command) -> Result<Handling, String> {
//!         Ok(Handling::replies([
//!             Reply::received(),
//!             Reply::completed(command.params()).after_ms(self.delay_ms),
//!         ]))
//!     }
//! }
//!
//! iotmock_sdk::export_command_handler!(Echo);
//! ```

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Device;

#[doc(hidden)]
pub mod wit {
    wit_bindgen::generate!({
        world: "command-handler",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_world",
    });
}

pub use wit::exports::iotmock::plugin::command_handler_api::{AckStatus, Command, Handling, Reply};
use wit::iotmock::plugin::types::PluginError;

impl Command {
    /// The command's parameters as JSON (`null` when they are not JSON).
    pub fn params(&self) -> Value {
        serde_json::from_str(&self.params).unwrap_or(Value::Null)
    }
}

impl Reply {
    /// An ack with `status` and, unless `None`, a JSON result, sent at
    /// once after the previous reply.
    pub fn new(status: AckStatus, result: Option<Value>) -> Self {
        Self {
            delay_ms: 0,
            status,
            result: result.map(|r| r.to_string()),
        }
    }

    /// `received`, with no result.
    pub fn received() -> Self {
        Self::new(AckStatus::Received, None)
    }

    /// `completed` with `result`.
    pub fn completed(result: Value) -> Self {
        Self::new(AckStatus::Completed, Some(result))
    }

    /// `rejected` with `{"error": message}`.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(
            AckStatus::Rejected,
            Some(serde_json::json!({ "error": message.into() })),
        )
    }

    /// `failed` with `{"error": message}`.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(
            AckStatus::Failed,
            Some(serde_json::json!({ "error": message.into() })),
        )
    }

    /// The same reply, sent `delay_ms` simulated milliseconds after the
    /// previous one.
    pub fn after_ms(mut self, delay_ms: u32) -> Self {
        self.delay_ms = delay_ms;
        self
    }
}

impl Handling {
    /// The device sends these acks, in order, and stays online.
    pub fn replies(replies: impl IntoIterator<Item = Reply>) -> Self {
        Self {
            replies: replies.into_iter().collect(),
            offline_ms: None,
        }
    }

    /// The device stays silent: the command times out.
    pub fn silent() -> Self {
        Self::replies([])
    }

    /// One reply.
    pub fn reply(reply: Reply) -> Self {
        Self::replies([reply])
    }

    /// The same handling, after which the device goes offline for
    /// `offline_ms` simulated milliseconds (a reboot).
    pub fn then_offline_ms(mut self, offline_ms: u32) -> Self {
        self.offline_ms = Some(offline_ms);
        self
    }
}

/// How a simulated device answers commands. `Self` is the model built from
/// the handler's configuration.
pub trait CommandHandler: Sized {
    /// The configuration as users write it (JSON). Give it
    /// `#[serde(default, deny_unknown_fields)]`: an unknown key is then
    /// refused by name, and `{}` means all defaults.
    type Config: DeserializeOwned + Default;

    /// Checks the configuration and builds the model; an `Err` says what to
    /// fix and reaches the user as an invalid configuration.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Decides how `device` answers `command` (delivery number
    /// `command.attempt`). An `Err` is a failure of the plugin, reported
    /// by the host; a command the device refuses is a [`Reply::rejected`].
    fn handle(&self, device: &Device, command: Command) -> Result<Handling, String>;
}

#[doc(hidden)]
pub fn handle<T: CommandHandler>(
    config: String,
    device: u32,
    command: Command,
) -> Result<Handling, PluginError> {
    let model = crate::parse_config::<T::Config>(&config)
        .and_then(T::new)
        .map_err(PluginError::InvalidConfig)?;
    model
        .handle(&Device::from_slot(device), command)
        .map_err(PluginError::Failed)
}

/// Exports a [`CommandHandler`] model as the plugin's `command-handler`
/// world. Use it once, in the plugin crate's `lib.rs`.
#[macro_export]
macro_rules! export_command_handler {
    ($model:ty) => {
        const _: () = {
            struct Export;
            impl $crate::command::wit::exports::iotmock::plugin::command_handler_api::Guest
                for Export
            {
                fn handle(
                    config: ::std::string::String,
                    device: u32,
                    command: $crate::command::Command,
                ) -> ::core::result::Result<
                    $crate::command::Handling,
                    $crate::command::wit::iotmock::plugin::types::PluginError,
                > {
                    $crate::command::handle::<$model>(config, device, command)
                }
            }
            $crate::command::wit::export_world!(Export with_types_in $crate::command::wit);
        };
    };
}
