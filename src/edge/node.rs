//! One edge node: the input queue the telemetry tap fills, the task that
//! runs each window's batch through the rule pipeline, the uplink with its
//! store-and-forward buffer, and the counters the API shows.
//!
//! Windows are cut on simulated time: the window `[start, end)` closes once
//! telemetry has produced every reading due before `end`, so with a manual
//! clock the same calls give the same batches. A reading joins the first
//! window that closes after it reaches the node (one buffered while its
//! device was offline joins the window open when it arrives).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use super::sink::CommandSink;
use super::spec::{BufferPolicy, EdgeNodeSpec, OnError, Rule};
use super::stats::{Latency, LatencyView};
use crate::clock::{Clock, ClockMode, rfc3339_ms};
use crate::mqtt::{MqttHandle, PublishOutcome, Qos, topics};
use crate::plugin::{
    CallContext, CallError, DeviceSlot, EdgeAction, EdgeAggregate, EdgeAlert, EdgeCommand,
    EdgeReading, EdgeWindow, PluginHost, SharedState,
};
use crate::random::DeviceRng;
use crate::telemetry::{Reading, Telemetry};

/// How long one command submission may take before it counts as failed.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(2);
/// With a running clock, how long a closed window waits for telemetry to
/// catch up before it is processed anyway.
const CATCH_UP: Duration = Duration::from_millis(200);

/// A reading waiting in a node's input queue. The strings are shared with
/// the scheduler's stream, so queueing copies no text.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    device: Arc<str>,
    sensor: Arc<str>,
    unit_json: Arc<str>,
    ts: i64,
    value: f64,
    seq: u64,
}

impl Queued {
    fn unit(&self) -> String {
        serde_json::from_str(&self.unit_json).unwrap_or_default()
    }

    fn to_plugin(&self) -> EdgeReading {
        EdgeReading {
            device: self.device.to_string(),
            sensor: self.sensor.to_string(),
            ts: self.ts,
            value: self.value,
            unit: self.unit(),
            seq: self.seq,
        }
    }
}

struct Input {
    queue: VecDeque<Queued>,
    next_seq: u64,
}

#[derive(Debug, Default, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct RuleStats {
    pub plugin: String,
    pub calls: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Counters {
    readings_in: u64,
    dropped_input: u64,
    readings_out: u64,
    filtered: u64,
    unprocessed: u64,
    aggregates_out: u64,
    alerts_out: u64,
    commands_issued: u64,
    commands_failed: u64,
    invalid_outputs: u64,
    invalid_in: u64,
    batches: u64,
    failed_batches: u64,
    degraded: Option<String>,
    degraded_since: Option<i64>,
    last_error: Option<String>,
    rules: Vec<RuleStats>,
    latency: Latency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutKind {
    Reading,
    Aggregate,
    Alert,
    Command,
}

/// A message ready for the uplink.
struct Out {
    topic: String,
    payload: Bytes,
    kind: OutKind,
}

struct Uplink {
    up: bool,
    buffer: VecDeque<Out>,
    dropped: u64,
    flushed: u64,
    /// Messages the broker did not take (it was shut down).
    failed: u64,
}

/// What the node's task is told.
pub(crate) enum Control {
    /// Set the uplink up or down; answered once a flush is done.
    Uplink(bool, oneshot::Sender<()>),
}

/// The parts of the server a node's task uses.
#[derive(Clone)]
pub(crate) struct Runtime {
    pub clock: Clock,
    pub telemetry: Telemetry,
    pub plugins: PluginHost,
    pub mqtt: MqttHandle,
    pub sink: Arc<dyn CommandSink>,
    pub seed: u64,
}

/// A node's shared half: what the tap, the API and the task all reach.
/// Std mutexes: each is held for a queue or counter operation, never
/// across an await.
pub(crate) struct Node {
    pub id: Arc<str>,
    pub spec: EdgeNodeSpec,
    /// The devices feeding the node; for a tag or group selector it follows
    /// the fleet.
    pub members: Mutex<std::collections::BTreeSet<Arc<str>>>,
    input: Mutex<Input>,
    counters: Mutex<Counters>,
    uplink: Mutex<Uplink>,
    processed: watch::Sender<i64>,
}

impl Node {
    pub(super) fn new(spec: EdgeNodeSpec, members: Vec<String>, now: i64) -> Arc<Self> {
        let w = spec.window_ms as i64;
        let counters = Counters {
            rules: spec
                .rules
                .iter()
                .map(|r| RuleStats {
                    plugin: r.plugin.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        Arc::new(Self {
            id: Arc::from(spec.id.as_str()),
            members: Mutex::new(members.iter().map(|m| Arc::from(m.as_str())).collect()),
            input: Mutex::new(Input {
                queue: VecDeque::new(),
                next_seq: 1,
            }),
            counters: Mutex::new(counters),
            uplink: Mutex::new(Uplink {
                up: true,
                buffer: VecDeque::new(),
                dropped: 0,
                flushed: 0,
                failed: 0,
            }),
            processed: watch::Sender::new(now.div_euclid(w) * w),
            spec,
        })
    }

    /// Takes a reading from a member device (the telemetry tap calls this
    /// for every published reading). The reading gets the node's next
    /// sequence number even when the queue is full, so a drop shows as a
    /// gap as well as in the counters.
    pub(super) fn accept(&self, reading: &Reading) {
        let capacity = self.spec.budget.queue;
        let mut input = self.input.lock().unwrap();
        let seq = input.next_seq;
        input.next_seq += 1;
        let full = input.queue.len() >= capacity;
        if !full {
            input.queue.push_back(Queued {
                device: reading.device.clone(),
                sensor: reading.sensor.clone(),
                unit_json: reading.unit_json.clone(),
                ts: reading.ts,
                value: reading.value,
                seq,
            });
        }
        drop(input);
        let mut c = self.counters.lock().unwrap();
        c.readings_in += 1;
        if full {
            c.dropped_input += 1;
        }
    }

    /// Counts a message from a member device that is not a reading.
    pub(super) fn reject(&self) {
        self.counters.lock().unwrap().invalid_in += 1;
    }

    /// Resolves once every window ending at or before `t` is processed.
    pub(super) async fn wait_processed(&self, t: i64) {
        let w = self.spec.window_ms as i64;
        let target = t.div_euclid(w) * w;
        let mut rx = self.processed.subscribe();
        let _ = rx.wait_for(|p| *p >= target).await;
    }

    /// Takes the readings that belong to the window ending at `end`.
    fn take_batch(&self, end: i64) -> Vec<Queued> {
        let mut input = self.input.lock().unwrap();
        if input.queue.iter().all(|q| q.ts < end) {
            return input.queue.drain(..).collect();
        }
        let mut batch = Vec::new();
        let mut rest = VecDeque::with_capacity(input.queue.len());
        for q in input.queue.drain(..) {
            if q.ts < end {
                batch.push(q);
            } else {
                rest.push_back(q);
            }
        }
        input.queue = rest;
        batch
    }

    /// Puts a failed batch back at the head of the queue (policy `hold`).
    /// When that overfills the queue, the newest readings give way,
    /// counted as input drops.
    fn hold(&self, batch: Vec<Queued>) {
        let capacity = self.spec.budget.queue;
        let mut input = self.input.lock().unwrap();
        let mut queue: VecDeque<Queued> = batch.into();
        queue.extend(input.queue.drain(..));
        let mut dropped = 0;
        while queue.len() > capacity {
            queue.pop_back();
            dropped += 1;
        }
        input.queue = queue;
        drop(input);
        self.counters.lock().unwrap().dropped_input += dropped;
    }

    pub(super) fn view(&self) -> EdgeNodeView {
        let queued = self.input.lock().unwrap().queue.len() as u64;
        let (up, buffered, dropped, flushed, failed) = {
            let u = self.uplink.lock().unwrap();
            (u.up, u.buffer.len() as u64, u.dropped, u.flushed, u.failed)
        };
        let c = self.counters.lock().unwrap();
        EdgeNodeView {
            id: self.id.to_string(),
            state: if c.degraded.is_some() {
                "degraded"
            } else {
                "ok"
            },
            reason: c.degraded.clone(),
            degraded_since: c.degraded_since.map(rfc3339_ms),
            last_error: c.last_error.clone(),
            spec: self.spec.clone(),
            members: self.members.lock().unwrap().len(),
            processed_until: rfc3339_ms(*self.processed.borrow()),
            readings: ReadingCounters {
                r#in: c.readings_in,
                out: c.readings_out,
                dropped: c.dropped_input,
                queued,
                filtered: c.filtered,
                unprocessed: c.unprocessed,
                invalid_outputs: c.invalid_outputs,
                invalid_in: c.invalid_in,
            },
            aggregates_out: c.aggregates_out,
            alerts_out: c.alerts_out,
            commands: CommandCounters {
                issued: c.commands_issued,
                failed: c.commands_failed,
            },
            uplink: UplinkView {
                state: if up { "up" } else { "down" },
                buffered,
                capacity: self.spec.buffer.capacity,
                policy: self.spec.buffer.policy,
                dropped,
                flushed,
                failed,
            },
            batches: c.batches,
            failed_batches: c.failed_batches,
            rules: c.rules.clone(),
            latency: c.latency.view(),
        }
    }

    /// The node's task: one window after another until the node is
    /// removed (its control sender dropped).
    pub(super) async fn run(self: Arc<Self>, rt: Runtime, mut control: mpsc::Receiver<Control>) {
        let w = self.spec.window_ms as i64;
        let mut task = Task {
            rules: self.spec.rules(),
            states: vec![Vec::new(); self.spec.rules.len()],
            rng: DeviceRng::derive(rt.seed, &self.id, "edge"),
            shared: Arc::new(SharedState::default()),
            rt,
        };
        let mut end = *self.processed.borrow() + w;
        loop {
            tokio::select! {
                biased;
                message = control.recv() => match message {
                    Some(Control::Uplink(up, reply)) => {
                        self.set_uplink(&task.rt, up).await;
                        let _ = reply.send(());
                    }
                    None => return,
                },
                closed = window_closed(&task.rt, end) => {
                    if !closed {
                        return;
                    }
                    self.process(&mut task, EdgeWindow { start: end - w, end }).await;
                    self.processed.send_replace(end);
                    end += w;
                }
            }
        }
    }

    async fn process(&self, task: &mut Task, window: EdgeWindow) {
        let batch = self.take_batch(window.end);
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        let batch_len = batch.len();
        let time_budget = Duration::from_millis(self.spec.budget.time_ms);
        let mut readings: Vec<EdgeReading> = batch.iter().map(Queued::to_plugin).collect();
        let mut side: Vec<EdgeAction> = Vec::new();
        let mut states = Vec::with_capacity(task.rules.len());
        let mut failure: Option<(usize, CallError)> = None;
        for (i, rule) in task.rules.iter().enumerate() {
            let left = time_budget.saturating_sub(started.elapsed());
            if left.is_zero() {
                failure = Some((
                    i,
                    CallError::Timeout {
                        name: rule.plugin.clone(),
                        ms: self.spec.budget.time_ms,
                    },
                ));
                break;
            }
            let ctx = CallContext {
                now: task.rt.clock.now_ms(),
                slots: vec![DeviceSlot {
                    rng: std::mem::replace(&mut task.rng, DeviceRng::placeholder()),
                    state: Some(task.shared.clone()),
                    deferred: None,
                }],
            };
            let (result, mut ctx) = task
                .rt
                .plugins
                .process_edge(
                    &rule.plugin,
                    rule.config.clone(),
                    task.states[i].clone(),
                    window,
                    std::mem::take(&mut readings),
                    ctx,
                    self.spec.call_budget(left),
                )
                .await;
            task.rng = match ctx.slots.pop() {
                Some(slot) => slot.rng,
                None => DeviceRng::derive(task.rt.seed, &self.id, "edge"),
            };
            let mut c = self.counters.lock().unwrap();
            c.rules[i].calls += 1;
            match result {
                Ok(outcome) => {
                    for action in outcome.actions {
                        match action {
                            EdgeAction::Forward(r) => readings.push(r),
                            other => side.push(other),
                        }
                    }
                    states.push(outcome.state);
                }
                Err(error) => {
                    c.rules[i].errors += 1;
                    c.rules[i].last_error = Some(error.to_string());
                    failure = Some((i, error));
                    break;
                }
            }
        }

        match failure {
            None => {
                task.states = states;
                {
                    let mut c = self.counters.lock().unwrap();
                    c.batches += 1;
                    c.filtered += (batch.len() as u64).saturating_sub(readings.len() as u64);
                    c.degraded = None;
                    c.degraded_since = None;
                }
                for r in &readings {
                    match reading_out(&self.id, r, false) {
                        Some(out) => self.emit(&task.rt, out).await,
                        None => self.counters.lock().unwrap().invalid_outputs += 1,
                    }
                }
                let ts = task.rt.clock.now_ms();
                for action in side {
                    let out = match action {
                        EdgeAction::Aggregate(a) => aggregate_out(&self.id, &a),
                        EdgeAction::Alert(a) => alert_out(&self.id, &a, window.end),
                        EdgeAction::Command(command) => self.submit(&task.rt, &command, ts).await,
                        EdgeAction::Forward(_) => unreachable!("forwards are kept apart"),
                    };
                    self.emit(&task.rt, out).await;
                }
            }
            Some((i, error)) => {
                let reason = format!(
                    "rule {i} ({}) failed on the batch of window ending {}: {error}",
                    task.rules[i].plugin,
                    rfc3339_ms(window.end)
                );
                crate::ratelimit::warn_limited!(node = %self.id, rule = i, plugin = %task.rules[i].plugin, %error, "edge batch failed");
                {
                    let mut c = self.counters.lock().unwrap();
                    c.failed_batches += 1;
                    if c.degraded.is_none() {
                        c.degraded_since = Some(task.rt.clock.now_ms());
                    }
                    c.degraded = Some(reason.clone());
                    c.last_error = Some(reason);
                }
                match self.spec.on_error {
                    OnError::PassThrough => {
                        self.counters.lock().unwrap().unprocessed += batch.len() as u64;
                        for q in &batch {
                            match reading_out(&self.id, &q.to_plugin(), true) {
                                Some(out) => self.emit(&task.rt, out).await,
                                None => self.counters.lock().unwrap().invalid_outputs += 1,
                            }
                        }
                    }
                    OnError::Hold => self.hold(batch),
                }
            }
        }
        self.counters
            .lock()
            .unwrap()
            .latency
            .record(started.elapsed(), batch_len);
    }

    async fn submit(&self, rt: &Runtime, command: &EdgeCommand, ts: i64) -> Out {
        let result =
            match tokio::time::timeout(SUBMIT_TIMEOUT, rt.sink.submit(&self.id, command)).await {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "the command engine did not accept the command within {} ms",
                    SUBMIT_TIMEOUT.as_millis()
                )),
            };
        {
            let mut c = self.counters.lock().unwrap();
            match &result {
                Ok(_) => c.commands_issued += 1,
                Err(_) => c.commands_failed += 1,
            }
        }
        if let Err(error) = &result {
            tracing::debug!(node = %self.id, device = %command.device, command = %command.name, %error, "edge command refused");
        }
        command_out(&self.id, command, &result, ts)
    }

    /// Publishes now when the uplink is up, else keeps the message in the
    /// buffer by its policy.
    async fn emit(&self, rt: &Runtime, out: Out) {
        {
            let mut u = self.uplink.lock().unwrap();
            if !u.up || !u.buffer.is_empty() {
                let capacity = self.spec.buffer.capacity;
                if u.buffer.len() >= capacity {
                    u.dropped += 1;
                    match self.spec.buffer.policy {
                        BufferPolicy::DropNewest => return,
                        BufferPolicy::DropOldest => {
                            if u.buffer.pop_front().is_none() {
                                return; // capacity 0: nothing is kept
                            }
                        }
                    }
                }
                u.buffer.push_back(out);
                return;
            }
        }
        self.publish(rt, out).await;
    }

    async fn publish(&self, rt: &Runtime, out: Out) {
        let outcome = rt
            .mqtt
            .publish(&out.topic, out.payload, Qos::AtLeastOnce, false)
            .await;
        if outcome == PublishOutcome::Dropped {
            self.uplink.lock().unwrap().failed += 1;
            return;
        }
        let mut c = self.counters.lock().unwrap();
        match out.kind {
            OutKind::Reading => c.readings_out += 1,
            OutKind::Aggregate => c.aggregates_out += 1,
            OutKind::Alert => c.alerts_out += 1,
            OutKind::Command => {}
        }
    }

    async fn set_uplink(&self, rt: &Runtime, up: bool) {
        self.uplink.lock().unwrap().up = up;
        if !up {
            tracing::info!(node = %self.id, "edge uplink down; buffering");
            return;
        }
        let mut flushed = 0u64;
        loop {
            let next = self.uplink.lock().unwrap().buffer.pop_front();
            let Some(out) = next else { break };
            self.publish(rt, out).await;
            flushed += 1;
        }
        self.uplink.lock().unwrap().flushed += flushed;
        tracing::info!(node = %self.id, flushed, "edge uplink up; buffer flushed");
    }
}

/// The task's own state: rule states, the node's random stream.
struct Task {
    rules: Vec<Rule>,
    states: Vec<Vec<u8>>,
    rng: DeviceRng,
    shared: Arc<SharedState>,
    rt: Runtime,
}

/// Waits until the window ending at `end` can be processed; false when
/// telemetry has stopped (the server is shutting down).
async fn window_closed(rt: &Runtime, end: i64) -> bool {
    if rt.clock.mode() != ClockMode::Manual {
        rt.clock.sleep_until(end).await;
        let _ = tokio::time::timeout(CATCH_UP, rt.telemetry.wait_produced(end)).await;
        return true;
    }
    rt.telemetry.wait_produced(end).await;
    rt.telemetry.produced_until() >= end
}

fn valid_level(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#', '\0'])
}

#[derive(Serialize)]
struct ReadingPayload<'a> {
    node: &'a str,
    device: &'a str,
    sensor: &'a str,
    ts: String,
    value: f64,
    unit: &'a str,
    seq: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    unprocessed: bool,
}

fn reading_out(node: &str, r: &EdgeReading, unprocessed: bool) -> Option<Out> {
    if !valid_level(&r.device) || !valid_level(&r.sensor) {
        return None;
    }
    let payload = serde_json::to_vec(&ReadingPayload {
        node,
        device: &r.device,
        sensor: &r.sensor,
        ts: rfc3339_ms(r.ts),
        value: r.value,
        unit: &r.unit,
        seq: r.seq,
        unprocessed,
    })
    .ok()?;
    let mut kind = String::with_capacity(10 + r.device.len() + r.sensor.len());
    kind.push_str("readings/");
    kind.push_str(&r.device);
    kind.push('/');
    kind.push_str(&r.sensor);
    Some(Out {
        topic: topics::edge_uplink(node, &kind),
        payload: payload.into(),
        kind: OutKind::Reading,
    })
}

fn aggregate_out(node: &str, a: &EdgeAggregate) -> Out {
    let payload = serde_json::json!({
        "node": node,
        "device": a.device,
        "sensor": a.sensor,
        "window": {"start": rfc3339_ms(a.window.start), "end": rfc3339_ms(a.window.end)},
        "min": a.min,
        "max": a.max,
        "mean": a.mean,
        "count": a.count,
    });
    Out {
        topic: topics::edge_uplink(node, "aggregates"),
        payload: payload.to_string().into(),
        kind: OutKind::Aggregate,
    }
}

fn alert_out(node: &str, a: &EdgeAlert, window_end: i64) -> Out {
    let payload = serde_json::json!({
        "node": node,
        "device": a.device,
        "sensor": a.sensor,
        "severity": a.severity,
        "message": a.message,
        "value": a.value,
        "window_end": rfc3339_ms(window_end),
    });
    Out {
        topic: topics::edge_uplink(node, "alerts"),
        payload: payload.to_string().into(),
        kind: OutKind::Alert,
    }
}

fn command_out(node: &str, c: &EdgeCommand, result: &Result<String, String>, ts: i64) -> Out {
    let params: serde_json::Value =
        serde_json::from_str(&c.params).unwrap_or(serde_json::Value::String(c.params.clone()));
    let mut payload = serde_json::json!({
        "node": node,
        "device": c.device,
        "name": c.name,
        "params": params,
        "ts": rfc3339_ms(ts),
    });
    match result {
        Ok(id) => {
            payload["status"] = "submitted".into();
            payload["command_id"] = id.clone().into();
        }
        Err(error) => {
            payload["status"] = "refused".into();
            payload["error"] = error.clone().into();
        }
    }
    Out {
        topic: topics::edge_uplink(node, "commands"),
        payload: payload.to_string().into(),
        kind: OutKind::Command,
    }
}

/// An edge node as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct EdgeNodeView {
    pub id: String,
    /// `ok`, or `degraded` after a batch failed (until one succeeds).
    pub state: &'static str,
    /// Why the node is degraded.
    pub reason: Option<String>,
    pub degraded_since: Option<String>,
    /// The last failure, kept after the node recovers.
    pub last_error: Option<String>,
    /// The node as declared, defaults filled in.
    pub spec: EdgeNodeSpec,
    /// Devices feeding the node.
    pub members: usize,
    /// Simulated time up to which every window has been processed.
    pub processed_until: String,
    pub readings: ReadingCounters,
    /// Aggregates published on the uplink.
    pub aggregates_out: u64,
    /// Alerts published on the uplink.
    pub alerts_out: u64,
    pub commands: CommandCounters,
    pub uplink: UplinkView,
    /// Batches that went through the whole pipeline.
    pub batches: u64,
    /// Batches a rule failed on (handled by `on_error`).
    pub failed_batches: u64,
    pub rules: Vec<RuleStats>,
    /// Wall time from a window's close to its output handed to the uplink.
    pub latency: LatencyView,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct ReadingCounters {
    /// Readings that reached the node (each got a `seq`).
    #[serde(rename = "in")]
    pub r#in: u64,
    /// Readings published on the uplink (processed or passed through).
    pub out: u64,
    /// Readings the full input queue had no room for.
    pub dropped: u64,
    /// Readings waiting for their window now.
    pub queued: u64,
    /// Readings the rules did not forward (net).
    pub filtered: u64,
    /// Readings of failed batches passed through unprocessed.
    pub unprocessed: u64,
    /// Forwarded readings whose device or sensor is not a topic level.
    pub invalid_outputs: u64,
    /// Messages a member device published on its telemetry topic that
    /// were not readings (see "Edge nodes" in the README).
    pub invalid_in: u64,
}

/// Named apart from the command engine's counters in the OpenAPI
/// document, where one name is one schema.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = EdgeCommandCounters)]
pub(crate) struct CommandCounters {
    /// Commands the command engine accepted.
    pub issued: u64,
    /// Commands it refused (or there was none).
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct UplinkView {
    /// `up` or `down`.
    pub state: &'static str,
    /// Messages waiting for the uplink now.
    pub buffered: u64,
    pub capacity: usize,
    pub policy: BufferPolicy,
    /// Messages the full buffer had no room for.
    pub dropped: u64,
    /// Buffered messages published after the uplink came back.
    pub flushed: u64,
    /// Messages the broker did not take (it was shut down).
    pub failed: u64,
}
