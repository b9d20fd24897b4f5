//! Compiled plugins by name. Loading compiles a component, checks its
//! imports and its world, and swaps it in atomically; a load that fails
//! leaves the previous version serving and records the error.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, EngineWeak};

use super::bindings::{codec, command_handler, edge_rule, sensor};
use super::host::HostState;
use super::{CallError, LoadError, valid_name};
use crate::hex::hex;

/// The WIT package version plugins are built against.
pub(crate) const WIT_VERSION: &str = "0.2.0";

/// How often the epoch advances; call deadlines are counted in these ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Deadline hits in a row that put a plugin in quarantine.
pub(super) const QUARANTINE_AFTER: u32 = 3;
/// The first quarantine's length (wall time); each one that follows
/// without a successful call in between lasts twice as long, up to
/// [`QUARANTINE_MAX`].
pub(super) const QUARANTINE_FIRST: Duration = Duration::from_secs(1);
pub(super) const QUARANTINE_MAX: Duration = Duration::from_secs(60);

/// The world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    Sensor,
    CommandHandler,
    EdgeRule,
    Codec,
}

impl World {
    const ALL: [World; 4] = [
        World::Sensor,
        World::CommandHandler,
        World::EdgeRule,
        World::Codec,
    ];

    fn export_name(self) -> String {
        let iface = match self {
            World::Sensor => "sensor-api",
            World::CommandHandler => "command-handler-api",
            World::EdgeRule => "edge-rule-api",
            World::Codec => "codec-api",
        };
        format!("iotmock:plugin/{iface}@{WIT_VERSION}")
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            World::Sensor => "sensor",
            World::CommandHandler => "command-handler",
            World::EdgeRule => "edge-rule",
            World::Codec => "codec",
        })
    }
}

/// Where a plugin version came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PluginSource {
    BuiltIn,
    File {
        #[schema(value_type = String)]
        path: PathBuf,
    },
    Api,
}

/// Health of a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PluginStatus {
    /// Loaded, and its last call (if any) succeeded.
    Ok,
    /// Loaded, but its last call trapped, timed out or ran out of memory.
    Unhealthy,
    /// It kept running past its deadline: calls are refused at once, without
    /// reaching a worker, until `quarantined_until`; then one call is tried
    /// again (see `quarantine_reason`).
    Quarantined,
    /// Loaded and serving, but its last call returned an error (a
    /// configuration it refused, a failure it reported; see `last_error`).
    /// Other plugins are not affected; the next call that succeeds clears it.
    Failing,
    /// Never loaded: every attempt failed (see `last_error`).
    Failed,
}

/// A plugin as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PluginInfo {
    pub name: String,
    /// None until a version has loaded.
    pub world: Option<World>,
    /// SHA-256 of the component bytes, hex.
    pub hash: Option<String>,
    pub size: Option<usize>,
    /// Wall time the serving version was loaded, RFC 3339.
    pub loaded_at: Option<String>,
    /// Increases with every version loaded, across all plugins.
    pub version: Option<u64>,
    pub source: Option<PluginSource>,
    pub status: PluginStatus,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub calls: u64,
    pub failures: u64,
    /// While quarantined: when calls are tried again (wall time, RFC 3339).
    pub quarantined_until: Option<String>,
    /// Why the plugin was last quarantined.
    pub quarantine_reason: Option<String>,
    /// Quarantines since the start.
    pub quarantines: u64,
    /// Calls refused because the plugin was quarantined (not counted in
    /// `calls`).
    pub refused_calls: u64,
}

/// A plugin's compiled, linked form, ready to instantiate.
pub(crate) enum Prepared {
    Sensor(sensor::SensorPre<HostState>),
    CommandHandler(command_handler::CommandHandlerPre<HostState>),
    EdgeRule(edge_rule::EdgeRulePre<HostState>),
    Codec(codec::CodecPre<HostState>),
}

impl Prepared {
    fn world(&self) -> World {
        match self {
            Prepared::Sensor(_) => World::Sensor,
            Prepared::CommandHandler(_) => World::CommandHandler,
            Prepared::EdgeRule(_) => World::EdgeRule,
            Prepared::Codec(_) => World::Codec,
        }
    }
}

/// One loaded version of a plugin. Calls hold an `Arc` of it, so a version
/// being replaced finishes the calls it has started.
pub(crate) struct Version {
    pub id: u64,
    pub name: Arc<str>,
    pub hash: String,
    pub size: usize,
    pub loaded_at: String,
    pub source: PluginSource,
    pub prepared: Prepared,
}

impl Version {
    pub(super) fn world(&self) -> World {
        self.prepared.world()
    }
}

/// A plugin taken out of service for a while.
struct Quarantine {
    until: std::time::Instant,
    until_wall: String,
}

#[derive(Default)]
struct Health {
    status_unhealthy: bool,
    /// Deadline hits in a row.
    timeouts_in_row: u32,
    /// Quarantines since the last successful call: each doubles the next.
    backoff_level: u32,
    quarantine: Option<Quarantine>,
    quarantine_reason: Option<String>,
    quarantines: u64,
    refused_calls: u64,
    /// The last call returned an error that was not a fault.
    failing: bool,
    last_error: Option<String>,
    last_error_at: Option<String>,
    failures: u64,
    /// The bytes and source of the last refused load, so the same file
    /// reported twice by the watcher is not compiled (and reported) twice.
    refused: Option<(String, PluginSource)>,
}

pub(crate) struct Entry {
    name: String,
    current: RwLock<Option<Arc<Version>>>,
    health: Mutex<Health>,
    calls: AtomicU64,
    builtin: Option<&'static [u8]>,
}

impl Entry {
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn current(&self) -> Option<Arc<Version>> {
        self.current.read().unwrap().clone()
    }

    pub(super) fn record_success(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut health = self.health.lock().unwrap();
        health.status_unhealthy = false;
        health.timeouts_in_row = 0;
        health.backoff_level = 0;
        health.failing = false;
    }

    /// Records a failed call; the [`QUARANTINE_AFTER`]th deadline hit in a
    /// row puts the plugin in quarantine.
    pub(super) fn record_failure(&self, error: &CallError) {
        if matches!(error, CallError::Quarantined { .. }) {
            self.health.lock().unwrap().refused_calls += 1;
            return;
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut health = self.health.lock().unwrap();
        health.failures += 1;
        health.status_unhealthy |= error.is_fault();
        health.failing = !error.is_fault();
        health.last_error = Some(error.to_string());
        health.last_error_at = Some(crate::clock::wall_rfc3339());
        if !matches!(error, CallError::Timeout { .. }) {
            health.timeouts_in_row = 0;
            return;
        }
        health.timeouts_in_row += 1;
        let now = std::time::Instant::now();
        let active = health.quarantine.as_ref().is_some_and(|q| q.until > now);
        if health.timeouts_in_row < QUARANTINE_AFTER || active {
            return;
        }
        let backoff = QUARANTINE_FIRST
            .saturating_mul(1 << health.backoff_level.min(16))
            .min(QUARANTINE_MAX);
        let until_wall =
            crate::clock::rfc3339_ms(crate::clock::wall_ms() + backoff.as_millis() as i64);
        let reason = format!(
            "ran past its deadline {} times in a row (last: {error}); its calls are refused until {until_wall}, then one is tried again, and a failure doubles the wait (up to {} s)",
            health.timeouts_in_row,
            QUARANTINE_MAX.as_secs()
        );
        tracing::warn!(plugin = %self.name, until = %until_wall, backoff_ms = backoff.as_millis() as u64, "plugin quarantined: it keeps running past its deadline");
        health.quarantine = Some(Quarantine {
            until: now + backoff,
            until_wall,
        });
        health.quarantine_reason = Some(reason);
        health.quarantines += 1;
        health.backoff_level += 1;
        // Once released, the next deadline hit puts it back at once.
        health.timeouts_in_row = QUARANTINE_AFTER - 1;
    }

    /// The refusal for a call made while the plugin is quarantined.
    pub(super) fn refusal(&self) -> Option<CallError> {
        let health = self.health.lock().unwrap();
        let q = health.quarantine.as_ref()?;
        (q.until > std::time::Instant::now()).then(|| CallError::Quarantined {
            name: self.name.clone(),
            until: q.until_wall.clone(),
        })
    }

    fn record_load_error(&self, error: &str, refused: (String, PluginSource)) {
        let mut health = self.health.lock().unwrap();
        health.refused = Some(refused);
        health.last_error = Some(error.to_string());
        health.last_error_at = Some(crate::clock::wall_rfc3339());
    }

    fn info(&self) -> PluginInfo {
        let current = self.current();
        let health = self.health.lock().unwrap();
        let quarantined_until = health
            .quarantine
            .as_ref()
            .filter(|q| q.until > std::time::Instant::now())
            .map(|q| q.until_wall.clone());
        let status = match (&current, health.status_unhealthy) {
            (None, _) => PluginStatus::Failed,
            (Some(_), _) if quarantined_until.is_some() => PluginStatus::Quarantined,
            (Some(_), true) => PluginStatus::Unhealthy,
            (Some(_), false) if health.failing => PluginStatus::Failing,
            (Some(_), false) => PluginStatus::Ok,
        };
        PluginInfo {
            name: self.name.clone(),
            world: current.as_ref().map(|v| v.world()),
            hash: current.as_ref().map(|v| v.hash.clone()),
            size: current.as_ref().map(|v| v.size),
            loaded_at: current.as_ref().map(|v| v.loaded_at.clone()),
            version: current.as_ref().map(|v| v.id),
            source: current.as_ref().map(|v| v.source.clone()),
            status,
            last_error: health.last_error.clone(),
            last_error_at: health.last_error_at.clone(),
            calls: self.calls.load(Ordering::Relaxed),
            failures: health.failures,
            quarantined_until,
            quarantine_reason: health.quarantine_reason.clone(),
            quarantines: health.quarantines,
            refused_calls: health.refused_calls,
        }
    }
}

pub(crate) struct Registry {
    pub engine: Engine,
    /// Runs the epoch for plugin calls' deadlines.
    pub ticker: Arc<Ticker>,
    linker: Linker<HostState>,
    entries: RwLock<BTreeMap<String, Arc<Entry>>>,
    next_version: AtomicU64,
}

impl Registry {
    pub(super) fn new() -> Self {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        config.cache(compile_cache());
        let engine = Engine::new(&config).expect("wasmtime engine configuration is valid");
        let ticker = Arc::new(Ticker::spawn(engine.weak()));

        let mut linker = Linker::new(&engine);
        sensor::iotmock::plugin::host::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )
        .expect("host interface links");
        sensor::iotmock::plugin::types::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )
        .expect("types interface links");
        Self {
            engine,
            ticker,
            linker,
            entries: RwLock::default(),
            next_version: AtomicU64::new(1),
        }
    }

    pub(super) fn entry(&self, name: &str) -> Option<Arc<Entry>> {
        self.entries.read().unwrap().get(name).cloned()
    }

    pub(super) fn list(&self) -> Vec<PluginInfo> {
        let entries: Vec<_> = self.entries.read().unwrap().values().cloned().collect();
        entries.iter().map(|e| e.info()).collect()
    }

    pub(super) fn info(&self, name: &str) -> Option<PluginInfo> {
        self.entry(name).map(|e| e.info())
    }

    /// Drops `name`'s entry when no version of it has ever loaded and no
    /// load attempt left an error to show.
    fn forget_if_empty(&self, name: &str) {
        let mut entries = self.entries.write().unwrap();
        if let Some(entry) = entries.get(name)
            && entry.current().is_none()
            && entry.builtin.is_none()
            && entry.health.lock().unwrap().last_error.is_none()
        {
            entries.remove(name);
        }
    }

    fn entry_or_insert(&self, name: &str) -> Arc<Entry> {
        if let Some(entry) = self.entry(name) {
            return entry;
        }
        let builtin = crate::builtin::BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, bytes)| *bytes);
        self.entries
            .write()
            .unwrap()
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Entry {
                    name: name.to_string(),
                    current: RwLock::new(None),
                    health: Mutex::default(),
                    calls: AtomicU64::new(0),
                    builtin,
                })
            })
            .clone()
    }

    pub(super) fn load(
        &self,
        name: &str,
        bytes: Vec<u8>,
        source: PluginSource,
    ) -> Result<PluginInfo, LoadError> {
        if !valid_name(name) {
            return Err(LoadError::BadName(name.to_string()));
        }
        let entry = self.entry_or_insert(name);
        let hash = hex(&Sha256::digest(&bytes));
        if let Some(current) = entry.current()
            && current.hash == hash
            && current.source == source
        {
            return Ok(entry.info());
        }
        {
            let health = entry.health.lock().unwrap();
            if health.refused.as_ref() == Some(&(hash.clone(), source.clone())) {
                return Err(LoadError::Refused {
                    detail: health.last_error.clone().unwrap_or_default(),
                });
            }
        }
        let started = std::time::Instant::now();
        match self.prepare(name, &bytes, entry.current().map(|v| v.world())) {
            Ok(prepared) => {
                let version = Arc::new(Version {
                    id: self.next_version.fetch_add(1, Ordering::Relaxed),
                    name: Arc::from(name),
                    hash,
                    size: bytes.len(),
                    loaded_at: crate::clock::wall_rfc3339(),
                    source,
                    prepared,
                });
                tracing::info!(
                    plugin = name,
                    world = %version.world(),
                    version = version.id,
                    compile_ms = started.elapsed().as_millis() as u64,
                    "plugin loaded"
                );
                *entry.current.write().unwrap() = Some(version);
                {
                    // A new version starts with a clean record.
                    let mut health = entry.health.lock().unwrap();
                    health.status_unhealthy = false;
                    health.failing = false;
                    health.refused = None;
                    health.timeouts_in_row = 0;
                    health.backoff_level = 0;
                    health.quarantine = None;
                }
                Ok(entry.info())
            }
            Err(error) => {
                tracing::warn!(plugin = name, %error, "plugin load refused; the previous version keeps serving");
                // An upload refused over the API was answered with its error;
                // a name that never served anything is not listed for it. A
                // refused file stays listed: nobody else would see why.
                if entry.current().is_none() && source == PluginSource::Api {
                    self.forget_if_empty(name);
                } else {
                    entry.record_load_error(&error.to_string(), (hash, source));
                }
                Err(error)
            }
        }
    }

    fn prepare(
        &self,
        name: &str,
        bytes: &[u8],
        existing: Option<World>,
    ) -> Result<Prepared, LoadError> {
        let component =
            Component::new(&self.engine, bytes).map_err(|e| LoadError::NotAComponent {
                name: name.to_string(),
                detail: first_line(&e),
            })?;
        let ty = component.component_type();
        // A component built against another version of the package is
        // refused by that version's name before anything else is checked.
        let names = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .chain(ty.exports(&self.engine).map(|(n, _)| n.to_string()));
        for item in names {
            if let Some(found) = item
                .strip_prefix("iotmock:plugin/")
                .and_then(|rest| rest.split_once('@'))
                .map(|(_, version)| version)
                && found != WIT_VERSION
            {
                return Err(LoadError::OtherPackageVersion {
                    name: name.to_string(),
                    found: found.to_string(),
                    version: WIT_VERSION,
                });
            }
        }
        for (import, _) in ty.imports(&self.engine) {
            let ours = [
                format!("iotmock:plugin/host@{WIT_VERSION}"),
                format!("iotmock:plugin/types@{WIT_VERSION}"),
            ];
            if !ours.iter().any(|o| o == import) && !import.starts_with("wasi:") {
                return Err(LoadError::UnknownImport {
                    name: name.to_string(),
                    import: import.to_string(),
                    version: WIT_VERSION,
                });
            }
        }
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let world = World::ALL
            .into_iter()
            .find(|w| exports.contains(&w.export_name()))
            .ok_or_else(|| LoadError::NoWorld {
                name: name.to_string(),
                version: WIT_VERSION,
            })?;
        if let Some(expected) = existing
            && expected != world
        {
            return Err(LoadError::WrongWorld {
                name: name.to_string(),
                found: world,
                expected,
            });
        }
        // WASI imports (reachable from a Rust guest's std, e.g. panic
        // printing) link to functions that trap: no files, clocks or
        // randomness reach a plugin except through `host`.
        let mut linker = self.linker.clone();
        let mismatch = |e: wasmtime::Error| LoadError::Mismatch {
            name: name.to_string(),
            world,
            detail: format!("{e:#}"),
        };
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(mismatch)?;
        let pre = linker.instantiate_pre(&component).map_err(mismatch)?;
        Ok(match world {
            World::Sensor => Prepared::Sensor(sensor::SensorPre::new(pre).map_err(mismatch)?),
            World::CommandHandler => Prepared::CommandHandler(
                command_handler::CommandHandlerPre::new(pre).map_err(mismatch)?,
            ),
            World::EdgeRule => {
                Prepared::EdgeRule(edge_rule::EdgeRulePre::new(pre).map_err(mismatch)?)
            }
            World::Codec => Prepared::Codec(codec::CodecPre::new(pre).map_err(mismatch)?),
        })
    }

    pub(super) fn remove(&self, name: &str) -> Result<(), LoadError> {
        let entry = self
            .entry(name)
            .ok_or_else(|| LoadError::NotFound(name.to_string()))?;
        if entry.builtin.is_some() {
            if matches!(
                entry.current().map(|v| v.source.clone()),
                Some(PluginSource::BuiltIn)
            ) {
                return Err(LoadError::BuiltIn {
                    name: name.to_string(),
                });
            }
            self.restore_builtin(&entry);
            return Ok(());
        }
        self.entries.write().unwrap().remove(name);
        tracing::info!(plugin = name, "plugin removed");
        Ok(())
    }

    pub(super) fn remove_file(&self, name: &str, path: &Path) {
        let Some(entry) = self.entry(name) else {
            return;
        };
        let from_file = matches!(
            entry.current().map(|v| v.source.clone()),
            Some(PluginSource::File { path: p }) if p == path
        );
        if !from_file {
            return;
        }
        if entry.builtin.is_some() {
            self.restore_builtin(&entry);
        } else {
            self.entries.write().unwrap().remove(name);
            tracing::info!(plugin = name, path = %path.display(), "plugin file removed; plugin unloaded");
        }
    }

    fn restore_builtin(&self, entry: &Entry) {
        if let Some(bytes) = entry.builtin
            && let Err(error) = self.load(&entry.name, bytes.to_vec(), PluginSource::BuiltIn)
        {
            tracing::error!(plugin = %entry.name, %error, "restoring built-in plugin failed");
        }
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while a plugin call
/// runs (a call's deadline is counted in these ticks), and sleeps while
/// none does: a server that runs no plugin takes no wake-ups from it.
pub(crate) struct Ticker {
    busy: Arc<AtomicUsize>,
    thread: std::thread::Thread,
}

/// Holds the ticker running for as long as it lives ([`Ticker::busy`]).
pub(crate) struct Busy<'a>(&'a Ticker);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Ticker {
    fn spawn(engine: EngineWeak) -> Self {
        let busy = Arc::new(AtomicUsize::new(0));
        let calls = busy.clone();
        // An OS thread, not a tokio task: a guest stuck in a loop can
        // occupy a runtime worker, and the ticker must still run to stop
        // it.
        let thread = std::thread::Builder::new()
            .name("iotmock-epoch".into())
            .spawn(move || {
                while let Some(engine) = engine.upgrade() {
                    if calls.load(Ordering::Acquire) == 0 {
                        drop(engine);
                        // Woken by the next call; the timeout only notices
                        // an engine that is gone.
                        std::thread::park_timeout(Duration::from_secs(1));
                        continue;
                    }
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .expect("spawn epoch ticker thread")
            .thread()
            .clone();
        Self { busy, thread }
    }

    /// A call is about to run guest code: the epoch advances until the
    /// returned guard drops.
    pub(crate) fn busy(&self) -> Busy<'_> {
        if self.busy.fetch_add(1, Ordering::AcqRel) == 0 {
            self.thread.unpark();
        }
        Busy(self)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.thread.unpark();
    }
}

fn first_line(e: &wasmtime::Error) -> String {
    format!("{e:#}")
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// wasmtime's cache of compiled code on disk: a component compiled once
/// (the built-ins at every start, a test plugin in every test server) is
/// loaded instead of compiled the next time, keyed by its bytes, the
/// wasmtime version and the engine settings. In `IOTMOCK_CACHE_DIR` if set
/// (empty turns it off), else wasmtime's default under the user's cache
/// directory. A cache that cannot start only costs compiles.
fn compile_cache() -> Option<wasmtime::Cache> {
    let mut config = wasmtime::CacheConfig::new();
    match std::env::var_os("IOTMOCK_CACHE_DIR") {
        Some(dir) if dir.is_empty() => return None,
        Some(dir) => {
            config.with_directory(std::path::PathBuf::from(dir));
        }
        None => {}
    }
    match wasmtime::Cache::new(config) {
        Ok(cache) => Some(cache),
        Err(error) => {
            tracing::debug!(%error, "no cache of compiled plugins");
            None
        }
    }
}
