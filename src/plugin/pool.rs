//! The threads that run plugin calls. Calls are synchronous wasmtime calls
//! on a few OS threads fed from tokio through one bounded queue. Each worker
//! keeps one live instance per plugin version it has run, so a plugin has
//! at most one instance per worker, never one per device.
//!
//! Isolation: one plugin's calls may occupy all workers but one (each
//! plugin has that many slots, taken before a call is queued), so a plugin
//! that runs to its deadline on every call slows only itself; and one that
//! keeps doing so is quarantined (see the registry), its calls refused
//! before they reach the queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, mpsc, oneshot};
use wasmtime::{Store, Trap};

use super::bindings::{codec, command_handler, edge_rule, sensor, types};
use super::host::{CallContext, HostState, MemoryLimiter};
use super::registry::{EPOCH_TICK, Entry, Prepared, Registry, Ticker, Version, World};
use super::{
    CallError, HandlerCommand, HandlerReply, Handling, PluginLimits, ReplyStatus, Sample,
    SampleRequest, SensorInfo,
};

mod codec_api;
mod edge;

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

pub(crate) struct Pool {
    registry: Arc<Registry>,
    jobs: mpsc::Sender<Job>,
    /// Calls one plugin may have queued or running at once.
    per_plugin: usize,
    // A std mutex: held to find or make a plugin's semaphore, never across
    // an await.
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
}

enum Exports {
    Sensor(sensor::Sensor),
    CommandHandler(command_handler::CommandHandler),
    EdgeRule(edge_rule::EdgeRule),
    Codec(codec::Codec),
}

struct Live {
    version: u64,
    store: Store<HostState>,
    exports: Exports,
}

pub(crate) struct Worker {
    live: HashMap<Arc<str>, Live>,
    ticker: Arc<Ticker>,
    deadline_ticks: u64,
    timeout_ms: u64,
    max_memory: usize,
}

impl Pool {
    pub(super) fn start(registry: Arc<Registry>, limits: &PluginLimits) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(limits.queue_capacity);
        // A std mutex around the receiver: a worker holds it only while it
        // waits for the next job, on its own OS thread.
        let rx = Arc::new(Mutex::new(rx));
        let deadline_ticks =
            (limits.call_timeout.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64;
        for n in 0..limits.workers.max(1) {
            let rx = rx.clone();
            let mut worker = Worker {
                live: HashMap::new(),
                ticker: registry.ticker.clone(),
                deadline_ticks,
                timeout_ms: limits.call_timeout.as_millis() as u64,
                max_memory: limits.max_memory_bytes,
            };
            std::thread::Builder::new()
                .name(format!("iotmock-plugin-{n}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().unwrap().blocking_recv();
                        match job {
                            Some(job) => job(&mut worker),
                            None => break,
                        }
                    }
                })
                .expect("spawn plugin worker thread");
        }
        Self {
            registry,
            jobs: tx,
            per_plugin: limits.workers.max(2) - 1,
            slots: Mutex::default(),
        }
    }

    fn slots_of(&self, name: &str) -> Arc<Semaphore> {
        let mut slots = self.slots.lock().unwrap();
        if let Some(s) = slots.get(name) {
            return s.clone();
        }
        let s = Arc::new(Semaphore::new(self.per_plugin));
        slots.insert(name.to_string(), s.clone());
        s
    }

    fn lookup(&self, name: &str, world: World) -> Result<(Arc<Entry>, Arc<Version>), CallError> {
        let entry = self
            .registry
            .entry(name)
            .ok_or_else(|| CallError::NotFound(name.to_string()))?;
        let version = entry
            .current()
            .ok_or_else(|| CallError::NotFound(name.to_string()))?;
        if version.world() != world {
            return Err(CallError::WrongWorld {
                name: name.to_string(),
                found: version.world(),
                expected: world,
            });
        }
        if let Some(refused) = entry.refusal() {
            entry.record_failure(&refused);
            return Err(refused);
        }
        Ok((entry, version))
    }

    /// Queues `f` on a worker and waits for its answer, recording the call
    /// in the plugin's health.
    async fn run<R: Send + 'static>(
        &self,
        entry: Arc<Entry>,
        f: impl FnOnce(&mut Worker) -> R + Send + 'static,
        outcome: impl Fn(&R) -> Option<&CallError>,
    ) -> Result<R, CallError> {
        let slots = self.slots_of(entry.name());
        let _slot = slots
            .acquire_owned()
            .await
            .map_err(|_| CallError::ShuttingDown)?;
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |worker| {
            let _ = tx.send(f(worker));
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| CallError::ShuttingDown)?;
        let result = rx.await.map_err(|_| CallError::ShuttingDown)?;
        record(&entry, outcome(&result));
        Ok(result)
    }

    fn run_blocking<R: Send + 'static>(
        &self,
        entry: Arc<Entry>,
        f: impl FnOnce(&mut Worker) -> R + Send + 'static,
        outcome: impl Fn(&R) -> Option<&CallError>,
    ) -> Result<R, CallError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |worker| {
            let _ = tx.send(f(worker));
        });
        self.jobs
            .blocking_send(job)
            .map_err(|_| CallError::ShuttingDown)?;
        let result = rx.blocking_recv().map_err(|_| CallError::ShuttingDown)?;
        record(&entry, outcome(&result));
        Ok(result)
    }

    /// `describe` of a sensor plugin (see [`Pool::describe`]).
    pub(super) async fn describe_sensor(
        &self,
        name: &str,
        config: &str,
        config_check: bool,
    ) -> Result<SensorInfo, CallError> {
        self.describe(
            name,
            World::Sensor,
            config,
            config_check,
            |store, exports, config| {
                let Exports::Sensor(s) = exports else {
                    unreachable!("world checked")
                };
                s.iotmock_plugin_sensor_api().call_describe(store, config)
            },
            |info| SensorInfo {
                unit: info.unit,
                description: info.description,
            },
        )
        .await
    }

    /// `describe`, for any world: `call` makes the call on the exports,
    /// `convert` turns the generated answer into the plain one. With
    /// `config_check`, a refused configuration is the plugin doing its job
    /// (checking what a user gave it), not a failed call; otherwise (the
    /// scheduler asking for a unit) it is one.
    async fn describe<G, T: Send + 'static>(
        &self,
        name: &str,
        world: World,
        config: &str,
        config_check: bool,
        call: impl FnOnce(
            &mut Store<HostState>,
            &Exports,
            &str,
        ) -> wasmtime::Result<Result<G, types::PluginError>>
        + Send
        + 'static,
        convert: impl FnOnce(G) -> T + Send + 'static,
    ) -> Result<T, CallError> {
        let (entry, version) = self.lookup(name, world)?;
        let config = config.to_string();
        self.run(
            entry,
            move |worker| {
                let (result, _) =
                    worker.call(&version, CallContext::default(), |store, exports| {
                        call(store, exports, &config)
                    });
                let name = &*version.name;
                result
                    .and_then(|r| r.map_err(|e| guest_error(name, e)))
                    .map(convert)
            },
            move |r| {
                r.as_ref()
                    .err()
                    .filter(|e| !(config_check && matches!(e, CallError::InvalidConfig { .. })))
            },
        )
        .await?
    }

    /// A call for devices, on a worker: `f` gets the worker, the plugin's
    /// current version and the devices' context, and hands the context
    /// back. A refused lookup hands `ctx` back untouched; a call that never
    /// ran (shutting down) answers an empty one.
    async fn call_for<T: Send + 'static>(
        &self,
        name: &str,
        world: World,
        ctx: CallContext,
        f: impl FnOnce(&mut Worker, &Arc<Version>, CallContext) -> (Result<T, CallError>, CallContext)
        + Send
        + 'static,
    ) -> (Result<T, CallError>, CallContext) {
        let (entry, version) = match self.lookup(name, world) {
            Ok(found) => found,
            Err(e) => return (Err(e), ctx),
        };
        match self
            .run(
                entry,
                move |w| f(w, &version, ctx),
                |r: &(Result<T, CallError>, CallContext)| r.0.as_ref().err(),
            )
            .await
        {
            Ok(answer) => answer,
            Err(e) => (Err(e), CallContext::default()),
        }
    }

    /// [`Pool::call_for`] from a thread that may block (not a runtime's).
    fn call_for_blocking<T: Send + 'static>(
        &self,
        name: &str,
        world: World,
        ctx: CallContext,
        f: impl FnOnce(&mut Worker, &Arc<Version>, CallContext) -> (Result<T, CallError>, CallContext)
        + Send
        + 'static,
    ) -> (Result<T, CallError>, CallContext) {
        let (entry, version) = match self.lookup(name, world) {
            Ok(found) => found,
            Err(e) => return (Err(e), ctx),
        };
        match self.run_blocking(
            entry,
            move |w| f(w, &version, ctx),
            |r: &(Result<T, CallError>, CallContext)| r.0.as_ref().err(),
        ) {
            Ok(answer) => answer,
            Err(e) => (Err(e), CallContext::default()),
        }
    }

    pub(super) async fn sample(
        &self,
        name: &str,
        config: Arc<str>,
        ctx: CallContext,
        requests: Vec<SampleRequest>,
    ) -> (Result<Vec<Sample>, CallError>, CallContext) {
        self.call_for(name, World::Sensor, ctx, move |w, version, ctx| {
            sample_on(w, version, &config, ctx, requests)
        })
        .await
    }

    pub(super) async fn handle_command(
        &self,
        name: &str,
        config: Arc<str>,
        ctx: CallContext,
        command: HandlerCommand,
    ) -> (Result<Handling, CallError>, CallContext) {
        self.call_for(name, World::CommandHandler, ctx, move |w, version, ctx| {
            handle_on(w, version, &config, ctx, command)
        })
        .await
    }

    pub(super) fn sample_blocking(
        &self,
        name: &str,
        config: Arc<str>,
        ctx: CallContext,
        requests: Vec<SampleRequest>,
    ) -> (Result<Vec<Sample>, CallError>, CallContext) {
        self.call_for_blocking(name, World::Sensor, ctx, move |w, version, ctx| {
            sample_on(w, version, &config, ctx, requests)
        })
    }
}

fn record(entry: &Entry, error: Option<&CallError>) {
    match error {
        None => entry.record_success(),
        Some(e) => entry.record_failure(e),
    }
}

fn sample_on(
    worker: &mut Worker,
    version: &Arc<Version>,
    config: &str,
    ctx: CallContext,
    requests: Vec<SampleRequest>,
) -> (Result<Vec<Sample>, CallError>, CallContext) {
    let expected = requests.len();
    let requests: Vec<sensor::exports::iotmock::plugin::sensor_api::SampleRequest> = requests
        .into_iter()
        .map(
            |r| sensor::exports::iotmock::plugin::sensor_api::SampleRequest {
                device: r.device,
                ts: r.ts,
                state: r.state,
            },
        )
        .collect();
    let (result, ctx) = worker.call(version, ctx, |store, exports| {
        let Exports::Sensor(s) = exports else {
            unreachable!("world checked")
        };
        s.iotmock_plugin_sensor_api()
            .call_sample(store, config, &requests)
    });
    let name = &*version.name;
    let result = result
        .and_then(|r| r.map_err(|e| guest_error(name, e)))
        .and_then(|samples| {
            if samples.len() != expected {
                return Err(CallError::BadAnswer {
                    name: name.to_string(),
                    got: samples.len(),
                    expected,
                });
            }
            Ok(samples
                .into_iter()
                .map(|s| Sample {
                    value: s.value,
                    anomaly: s.anomaly.map(|a| anomaly_label(a).to_string()),
                    state: s.state,
                })
                .collect())
        });
    (result, ctx)
}

fn handle_on(
    worker: &mut Worker,
    version: &Arc<Version>,
    config: &str,
    ctx: CallContext,
    command: HandlerCommand,
) -> (Result<Handling, CallError>, CallContext) {
    use command_handler::exports::iotmock::plugin::command_handler_api as api;
    let command = api::Command {
        id: command.id,
        name: command.name,
        params: command.params,
        attempt: command.attempt,
    };
    let (result, ctx) = worker.call(version, ctx, |store, exports| {
        let Exports::CommandHandler(h) = exports else {
            unreachable!("world checked")
        };
        h.iotmock_plugin_command_handler_api()
            .call_handle(store, config, 0, &command)
    });
    let name = &*version.name;
    let result = result
        .and_then(|r| r.map_err(|e| guest_error(name, e)))
        .map(|h| Handling {
            replies: h
                .replies
                .into_iter()
                .map(|r| HandlerReply {
                    delay_ms: r.delay_ms,
                    status: match r.status {
                        api::AckStatus::Received => ReplyStatus::Received,
                        api::AckStatus::Completed => ReplyStatus::Completed,
                        api::AckStatus::Rejected => ReplyStatus::Rejected,
                        api::AckStatus::Failed => ReplyStatus::Failed,
                    },
                    result: r.result,
                })
                .collect(),
            offline_ms: h.offline_ms,
        });
    (result, ctx)
}

fn guest_error(name: &str, e: types::PluginError) -> CallError {
    match e {
        types::PluginError::InvalidConfig(detail) => CallError::InvalidConfig {
            name: name.to_string(),
            detail,
        },
        types::PluginError::Failed(detail) => CallError::Failed {
            name: name.to_string(),
            detail,
        },
    }
}

impl Worker {
    /// Runs one call on this worker's instance of `version`, creating it if
    /// needed. A call that traps, times out or runs out of memory leaves the
    /// instance unusable, so it is dropped; the next call gets a fresh store
    /// from the same pre-linked component.
    fn call<R>(
        &mut self,
        version: &Arc<Version>,
        ctx: CallContext,
        f: impl FnOnce(&mut Store<HostState>, &Exports) -> wasmtime::Result<R>,
    ) -> (Result<R, CallError>, CallContext) {
        let deadline_ticks = self.deadline_ticks;
        let ticker = self.ticker.clone();
        let _busy = ticker.busy();
        let live = match self.live_for(version) {
            Ok(live) => live,
            Err(e) => return (Err(e), ctx),
        };
        live.store.data_mut().ctx = ctx;
        live.store.set_epoch_deadline(deadline_ticks);
        let result = f(&mut live.store, &live.exports);
        let ctx = std::mem::take(&mut live.store.data_mut().ctx);
        match result {
            Ok(r) => (Ok(r), ctx),
            Err(e) => {
                let oom = live.store.data().limiter.exceeded;
                self.live.remove(&version.name);
                let name = version.name.to_string();
                let error = if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                    CallError::Timeout {
                        name,
                        ms: self.timeout_ms,
                    }
                } else if oom {
                    CallError::OutOfMemory {
                        name,
                        detail: format!("{e:#}"),
                    }
                } else {
                    CallError::Trap {
                        name,
                        detail: format!("{e:#}"),
                    }
                };
                tracing::warn!(plugin = %version.name, error = %error, "plugin call failed; instance replaced");
                (Err(error), ctx)
            }
        }
    }

    fn live_for(&mut self, version: &Arc<Version>) -> Result<&mut Live, CallError> {
        let stale = self
            .live
            .get(&version.name)
            .is_none_or(|l| l.version != version.id);
        if stale {
            let live = self.instantiate(version)?;
            self.live.insert(version.name.clone(), live);
        }
        Ok(self.live.get_mut(&version.name).expect("inserted above"))
    }

    fn instantiate(&self, version: &Arc<Version>) -> Result<Live, CallError> {
        let engine = match &version.prepared {
            Prepared::Sensor(p) => p.instance_pre().engine().clone(),
            Prepared::CommandHandler(p) => p.instance_pre().engine().clone(),
            Prepared::EdgeRule(p) => p.instance_pre().engine().clone(),
            Prepared::Codec(p) => p.instance_pre().engine().clone(),
        };
        let state = HostState {
            plugin: version.name.clone(),
            ctx: CallContext::default(),
            limiter: MemoryLimiter {
                max_bytes: self.max_memory,
                exceeded: false,
            },
        };
        let mut store = Store::new(&engine, state);
        store.limiter(|s| &mut s.limiter);
        // A fresh store's deadline is "now": set it before instantiating or
        // instantiation itself is interrupted.
        store.set_epoch_deadline(self.deadline_ticks);
        let trap = |e: wasmtime::Error| CallError::Trap {
            name: version.name.to_string(),
            detail: format!("instantiation failed: {e:#}"),
        };
        let exports = match &version.prepared {
            Prepared::Sensor(p) => Exports::Sensor(p.instantiate(&mut store).map_err(trap)?),
            Prepared::CommandHandler(p) => {
                Exports::CommandHandler(p.instantiate(&mut store).map_err(trap)?)
            }
            Prepared::EdgeRule(p) => Exports::EdgeRule(p.instantiate(&mut store).map_err(trap)?),
            Prepared::Codec(p) => Exports::Codec(p.instantiate(&mut store).map_err(trap)?),
        };
        Ok(Live {
            version: version.id,
            store,
            exports,
        })
    }
}

/// The label a reading carries for an anomaly kind (the MQTT payload's
/// `"anomaly"` field).
fn anomaly_label(kind: sensor::exports::iotmock::plugin::sensor_api::AnomalyKind) -> &'static str {
    use sensor::exports::iotmock::plugin::sensor_api::AnomalyKind;
    match kind {
        AnomalyKind::Spike => "spike",
        AnomalyKind::Stuck => "stuck",
        AnomalyKind::Drift => "drift",
        AnomalyKind::Dropout => "dropout",
        AnomalyKind::OutOfRange => "out-of-range",
    }
}
