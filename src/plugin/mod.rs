//! The plugin host: compiles WebAssembly components of the four worlds in
//! `wit/`, keeps the current version of each named plugin, and runs calls on
//! a small pool of OS threads with a deadline and a memory cap per call.
//!
//! It owns the wasmtime engine and every store; nothing outside this module
//! sees a wasmtime type. It does not decide *when* plugins are called (that
//! is the telemetry scheduler's, the command engine's and the edge nodes'
//! business) and does not watch folders by itself: the watcher only tells
//! the registry which file changed.

mod bindings;
mod codec;
mod edge_rule;
mod host;
mod pool;
mod registry;
pub(crate) mod scaffold;
pub(crate) mod spec;
pub(crate) mod watcher;

use std::sync::Arc;
use std::time::Duration;

pub(crate) use crate::ids::valid_plugin_name as valid_name;
// What `crate::bench` re-exports stays `pub`; the rest is the crate's.
pub use codec::{CodecDevice, CodecEvent, CodecReading, EncodeRequest};
pub(crate) use codec::{CodecInfo, DecodeRequest, Decoded};
pub use edge_rule::{CallBudget, EdgeReading, EdgeWindow};
pub(crate) use edge_rule::{EdgeAction, EdgeAggregate, EdgeAlert, EdgeCommand};
pub(crate) use host::SharedState;
pub use host::{CallContext, DeviceSlot};
pub(crate) use registry::{PluginInfo, PluginSource, World};

use pool::Pool;
use registry::Registry;

/// How plugins are run.
#[derive(Debug, Clone)]
pub struct PluginLimits {
    /// Longest a single call may run before the host stops it.
    pub call_timeout: Duration,
    /// Largest linear memory a plugin instance may grow to.
    pub max_memory_bytes: usize,
    /// OS threads that run plugin calls.
    pub workers: usize,
    /// Calls waiting for a worker; senders wait when it is full.
    pub queue_capacity: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_millis(250),
            max_memory_bytes: 16 << 20,
            workers: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .min(8),
            queue_capacity: 1024,
        }
    }
}

/// Failures of loading a plugin. Each message names the plugin and says
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin name {0:?} is not valid: use 1 to 64 characters from a-z, 0-9, '-' and '_'")]
    BadName(String),
    #[error(
        "plugin {name:?} is not a WebAssembly component ({detail}); build it with `cargo build --target wasm32-wasip2`"
    )]
    NotAComponent { name: String, detail: String },
    #[error(
        "plugin {name:?} imports `{import}`, which iotmock does not provide; a plugin may import only iotmock:plugin/host@{version} (and wasi interfaces, which trap when called)"
    )]
    UnknownImport {
        name: String,
        import: String,
        version: &'static str,
    },
    #[error(
        "plugin {name:?} exports none of the iotmock worlds; implement one of sensor, command-handler, edge-rule or codec from iotmock:plugin@{version}"
    )]
    NoWorld { name: String, version: &'static str },
    #[error(
        "plugin {name:?} was built against iotmock:plugin@{found}, and this server speaks iotmock:plugin@{version}: rebuild it with the current plugin SDK (plugins/sdk: `cargo build --release --target wasm32-wasip2` in the plugin's crate; `iotmock plugin new` makes a fresh one)"
    )]
    OtherPackageVersion {
        name: String,
        found: String,
        version: &'static str,
    },
    #[error(
        "plugin {name:?} is a {found} component, but the loaded plugin of that name is a {expected}; delete it first to change its world"
    )]
    WrongWorld {
        name: String,
        found: World,
        expected: World,
    },
    #[error("plugin {name:?} does not match the {world} world: {detail}")]
    Mismatch {
        name: String,
        world: World,
        detail: String,
    },
    #[error(
        "plugin {name:?} is built in and cannot be deleted; a file of the same name in the plugins folder overrides it"
    )]
    BuiltIn { name: String },
    #[error("no plugin named {0:?} is loaded")]
    NotFound(String),
    /// The same bytes were refused before; `detail` is why.
    #[error("{detail}")]
    Refused { detail: String },
    #[error("reading plugin file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Failures of calling a plugin. Plugin failures are data: they are
/// returned here and shown in the plugin list, never a process failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("no plugin named {0:?} is loaded")]
    NotFound(String),
    #[error("plugin {name:?} is a {found} plugin, not a {expected} plugin")]
    WrongWorld {
        name: String,
        found: World,
        expected: World,
    },
    #[error("plugin {name:?} ran past its deadline of {ms} ms and was stopped")]
    Timeout { name: String, ms: u64 },
    #[error("plugin {name:?} ran out of memory and was stopped: {detail}")]
    OutOfMemory { name: String, detail: String },
    #[error("plugin {name:?} trapped: {detail}")]
    Trap { name: String, detail: String },
    #[error("plugin {name:?} rejected its configuration: {detail}")]
    InvalidConfig { name: String, detail: String },
    #[error("plugin {name:?} failed: {detail}")]
    Failed { name: String, detail: String },
    #[error("plugin {name:?} answered {got} results for {expected} requests")]
    BadAnswer {
        name: String,
        got: usize,
        expected: usize,
    },
    #[error(
        "plugin {name:?} is quarantined until {until} for running past its deadline again and again; see GET /api/v1/plugins, fix or replace it"
    )]
    Quarantined { name: String, until: String },
    #[error("the plugin host is shutting down")]
    ShuttingDown,
}

impl CallError {
    /// Whether the failure means the plugin misbehaved (as opposed to a
    /// configuration it rejected as data).
    pub(crate) fn is_fault(&self) -> bool {
        matches!(
            self,
            CallError::Timeout { .. }
                | CallError::OutOfMemory { .. }
                | CallError::Trap { .. }
                | CallError::BadAnswer { .. }
        )
    }
}

/// A sensor's description of its readings.
#[derive(Debug, Clone)]
pub struct SensorInfo {
    pub unit: String,
    pub description: String,
}

/// One (device, time) pair of a batched sensor call.
#[derive(Debug, Clone)]
pub struct SampleRequest {
    /// Index into the call's slots.
    pub device: u32,
    /// Simulated time to sample at, ms since the Unix epoch.
    pub ts: i64,
    /// The device's sensor state from the last call.
    pub state: Vec<u8>,
}

/// One sensor sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub value: Option<f64>,
    pub anomaly: Option<String>,
    pub state: Vec<u8>,
}

/// A handle on the plugin host; cheap to clone.
/// A command as a command handler sees it.
#[derive(Debug, Clone)]
pub struct HandlerCommand {
    pub id: String,
    pub name: String,
    /// JSON text.
    pub params: String,
    pub attempt: u32,
}

/// An acknowledgement status, as devices send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStatus {
    Received,
    Completed,
    Rejected,
    Failed,
}

/// One ack a simulated device sends, `delay_ms` after the previous one.
#[derive(Debug, Clone)]
pub struct HandlerReply {
    pub delay_ms: u32,
    pub status: ReplyStatus,
    /// JSON text.
    pub result: Option<String>,
}

/// How a simulated device answers a command.
#[derive(Debug, Clone, Default)]
pub struct Handling {
    pub replies: Vec<HandlerReply>,
    pub offline_ms: Option<u32>,
}

#[derive(Clone)]
/// The plugin host: the registry of loaded plugins and the worker threads that call them; cheap to clone.
pub struct PluginHost {
    registry: Arc<Registry>,
    pool: Arc<Pool>,
}

impl PluginHost {
    /// Starts the engine, its epoch ticker and the worker threads, and loads
    /// the built-in plugins.
    pub fn start(limits: PluginLimits) -> Result<Self, LoadError> {
        let registry = Arc::new(Registry::new());
        let pool = Arc::new(Pool::start(registry.clone(), &limits));
        let host = Self { registry, pool };
        // Compiling dominates start-up; the built-ins compile side by side,
        // one thread per core.
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<Result<(), LoadError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        loop {
                            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some((name, bytes)) = crate::builtin::BUILTIN.get(n) else {
                                return Ok(());
                            };
                            host.registry
                                .load(name, bytes.to_vec(), PluginSource::BuiltIn)?;
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("plugin compile thread panicked"))
                .collect()
        });
        results.into_iter().collect::<Result<(), LoadError>>()?;
        Ok(host)
    }

    /// Compiles and installs `bytes` as plugin `name`, replacing the current
    /// version atomically. On failure the old version keeps serving and the
    /// error is kept for the plugin list.
    pub fn load(
        &self,
        name: &str,
        bytes: Vec<u8>,
        source: PluginSource,
    ) -> Result<PluginInfo, LoadError> {
        self.registry.load(name, bytes, source)
    }

    /// Like [`load`](Self::load), off the async runtime (compiling takes
    /// tens of milliseconds).
    pub async fn load_async(
        &self,
        name: String,
        bytes: Vec<u8>,
        source: PluginSource,
    ) -> Result<PluginInfo, LoadError> {
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || registry.load(&name, bytes, source))
            .await
            .expect("plugin compile task panicked")
    }

    /// Removes plugin `name`. Built-in plugins stay.
    pub fn remove(&self, name: &str) -> Result<(), LoadError> {
        self.registry.remove(name)
    }

    /// Removes plugin `name` if it came from the given file, restoring the
    /// built-in of that name if there is one.
    pub fn remove_file(&self, name: &str, path: &std::path::Path) {
        self.registry.remove_file(name, path);
    }

    /// Every loaded plugin, built-in and loaded.
    pub fn list(&self) -> Vec<PluginInfo> {
        self.registry.list()
    }

    /// The serving version of plugin `name` (changes on every reload).
    pub fn version(&self, name: &str) -> Option<u64> {
        self.registry.entry(name)?.current().map(|v| v.id)
    }

    /// Whether the serving version of `name` is the one built in.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.registry
            .entry(name)
            .and_then(|e| e.current())
            .is_some_and(|v| v.source == PluginSource::BuiltIn)
    }

    /// The plugin named `name`, when one is loaded.
    pub fn info(&self, name: &str) -> Option<PluginInfo> {
        self.registry.info(name)
    }

    /// Asks a sensor plugin what its readings are, checking `config`.
    pub async fn describe_sensor(&self, name: &str, config: &str) -> Result<SensorInfo, CallError> {
        self.pool.describe_sensor(name, config, false).await
    }

    /// Asks a sensor plugin whether it takes `config` (its `describe`),
    /// before a device with it is accepted. A refusal is the plugin's
    /// answer, not a failed call: it does not make the plugin `failing`.
    pub async fn check_sensor_config(
        &self,
        name: &str,
        config: &str,
    ) -> Result<SensorInfo, CallError> {
        self.pool.describe_sensor(name, config, true).await
    }

    /// Produces one sample per request, in order. `ctx.slots` are the
    /// devices the requests name; it is handed back with their random
    /// streams advanced.
    pub async fn sample(
        &self,
        name: &str,
        config: Arc<str>,
        ctx: CallContext,
        requests: Vec<SampleRequest>,
    ) -> (Result<Vec<Sample>, CallError>, CallContext) {
        self.pool.sample(name, config, ctx, requests).await
    }

    /// Asks a command-handler plugin how the device in `ctx.slots[0]`
    /// answers `command`.
    pub async fn handle_command(
        &self,
        name: &str,
        config: Arc<str>,
        ctx: CallContext,
        command: HandlerCommand,
    ) -> (Result<Handling, CallError>, CallContext) {
        self.pool.handle_command(name, config, ctx, command).await
    }

    /// The same as [`sample`](Self::sample), from a plain thread (benchmarks).
    pub fn sample_blocking(
        &self,
        name: &str,
        config: Arc<str>,
        ctx: CallContext,
        requests: Vec<SampleRequest>,
    ) -> (Result<Vec<Sample>, CallError>, CallContext) {
        self.pool.sample_blocking(name, config, ctx, requests)
    }
}
