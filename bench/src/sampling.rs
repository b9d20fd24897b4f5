//! Plugin call rates: sensor samples per second per core (the plugin host
//! with one worker thread, batched calls of the built-in `temperature`
//! plugin, the same path the telemetry scheduler takes) and edge-rule calls
//! per second (the path edge nodes take).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use iotmock::PluginLimits;
use iotmock::bench::{
    CallBudget, CallContext, DeviceRng, DeviceSlot, EdgeReading, EdgeWindow, PluginHost,
    SampleRequest,
};
use serde::Serialize;

const SENSOR: &str = "temperature";
/// 2025-01-01T00:00:00Z, simulated ms.
const START_TS: i64 = 1_735_689_600_000;

#[derive(Debug, Clone, Serialize)]
pub struct Sampling {
    pub per_call: usize,
    pub calls: u64,
    pub readings: u64,
    pub wall_s: f64,
    pub readings_per_s: f64,
    /// CPU time of this process (caller and worker threads) while
    /// measuring.
    pub cpu_s: f64,
    /// Readings per second of CPU: per core, whatever else runs.
    pub readings_per_cpu_s: f64,
}

/// A measured stretch: wall time and this process's CPU time.
struct Span {
    wall: Instant,
    cpu: Duration,
}

impl Span {
    fn start() -> Self {
        Self {
            cpu: crate::procs::sched_time(std::process::id()).unwrap_or_default(),
            wall: Instant::now(),
        }
    }

    fn elapsed(&self) -> Duration {
        self.wall.elapsed()
    }

    /// Wall seconds and CPU seconds since the start.
    fn end(&self) -> (f64, f64) {
        let wall = self.wall.elapsed().as_secs_f64();
        let cpu = crate::procs::sched_time(std::process::id())
            .unwrap_or_default()
            .saturating_sub(self.cpu)
            .as_secs_f64();
        (wall, cpu)
    }
}

/// Runs on the calling (plain, non-async) thread: the blocking API of the
/// host must not run on an async runtime thread.
pub fn sampling(per_call: usize, time: Duration) -> anyhow::Result<Sampling> {
    let host = PluginHost::start(PluginLimits {
        workers: 1,
        ..Default::default()
    })
    .map_err(|e| anyhow!("starting the plugin host: {e}"))?;
    let config: Arc<str> = Arc::from("{}");
    let mut ctx = CallContext {
        now: START_TS,
        slots: (0..per_call)
            .map(|i| DeviceSlot {
                rng: DeviceRng::derive(42, &format!("bench-{i:05}"), SENSOR),
                state: None,
                deferred: None,
            })
            .collect(),
    };
    let mut states: Vec<Vec<u8>> = vec![Vec::new(); per_call];
    let mut ts = START_TS;
    let mut call = |ctx: CallContext, ts: i64| -> anyhow::Result<CallContext> {
        let requests: Vec<SampleRequest> = states
            .iter_mut()
            .enumerate()
            .map(|(i, state)| SampleRequest {
                device: i as u32,
                ts,
                state: std::mem::take(state),
            })
            .collect();
        let (result, ctx) = host.sample_blocking(SENSOR, config.clone(), ctx, requests);
        let samples = result.map_err(|e| anyhow!("{SENSOR} sample call: {e}"))?;
        if samples.len() != per_call {
            bail!("{SENSOR} answered {} samples for {per_call}", samples.len());
        }
        for (state, sample) in states.iter_mut().zip(samples) {
            if !sample.value.is_some_and(f64::is_finite) {
                bail!("{SENSOR} returned a sample without a finite value: {sample:?}");
            }
            *state = sample.state;
        }
        Ok(ctx)
    };
    // Warm-up: the first call instantiates the plugin on the worker.
    let warm = Instant::now();
    while warm.elapsed() < time / 8 + Duration::from_millis(10) {
        ctx = call(ctx, ts)?;
        ts += 1_000;
    }
    let span = Span::start();
    let mut calls = 0u64;
    while span.elapsed() < time {
        ctx = call(ctx, ts)?;
        ts += 1_000;
        calls += 1;
    }
    let (wall, cpu) = span.end();
    let readings = calls * per_call as u64;
    Ok(Sampling {
        per_call,
        calls,
        readings,
        wall_s: wall,
        readings_per_s: readings as f64 / wall,
        cpu_s: cpu,
        readings_per_cpu_s: if cpu > 0.0 {
            readings as f64 / cpu
        } else {
            f64::NAN
        },
    })
}

/// Readings in one edge-rule call: a window of 100 devices' readings.
pub const EDGE_BATCH: usize = 100;
const EDGE_RULE: &str = "edge-threshold";

#[derive(Debug, Clone, Serialize)]
pub struct EdgeCalls {
    pub rule: &'static str,
    pub per_call: usize,
    pub calls: u64,
    pub wall_s: f64,
    pub calls_per_s: f64,
    pub cpu_s: f64,
    /// Calls per second of CPU (caller and worker).
    pub calls_per_cpu_s: f64,
}

/// Edge-rule calls per second: the built-in `edge-threshold` rule over
/// windows of [`EDGE_BATCH`] readings, through the plugin host's async
/// call path (the one edge nodes take), one worker, driven from a
/// current-thread runtime on this thread.
pub fn edge_calls(time: Duration) -> anyhow::Result<EdgeCalls> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let host = PluginHost::start(PluginLimits {
            workers: 1,
            ..Default::default()
        })
        .map_err(|e| anyhow!("starting the plugin host: {e}"))?;
        let config: Arc<str> = Arc::from(r#"{"min": 20.0, "max": 30.0}"#);
        let mut ctx = CallContext {
            now: START_TS,
            slots: vec![DeviceSlot {
                rng: DeviceRng::derive(42, "bench-node", "edge"),
                state: None,
                deferred: None,
            }],
        };
        let mut state = Vec::new();
        let mut seq = 0u64;
        let mut window_start = START_TS;
        let mut call = async |ctx: CallContext| -> anyhow::Result<CallContext> {
            let readings: Vec<EdgeReading> = (0..EDGE_BATCH)
                .map(|i| {
                    seq += 1;
                    EdgeReading {
                        device: format!("bench-{i:03}"),
                        sensor: "temperature".into(),
                        ts: window_start + i as i64,
                        value: 15.0 + (seq % 20) as f64,
                        unit: "celsius".into(),
                        seq,
                    }
                })
                .collect();
            let window = EdgeWindow {
                start: window_start,
                end: window_start + 1_000,
            };
            window_start += 1_000;
            let budget = CallBudget {
                timeout: Duration::from_millis(250),
                max_memory_bytes: 16 << 20,
            };
            let (result, ctx) = host
                .process_edge(
                    EDGE_RULE,
                    config.clone(),
                    std::mem::take(&mut state),
                    window,
                    readings,
                    ctx,
                    budget,
                )
                .await;
            let outcome = result.map_err(|e| anyhow!("{EDGE_RULE} call: {e}"))?;
            if outcome.actions.is_empty() {
                bail!("{EDGE_RULE} forwarded nothing of a window with readings in range");
            }
            state = outcome.state;
            Ok(ctx)
        };
        let warm = Instant::now();
        while warm.elapsed() < time / 8 + Duration::from_millis(10) {
            ctx = call(ctx).await?;
        }
        let span = Span::start();
        let mut calls = 0u64;
        while span.elapsed() < time {
            ctx = call(ctx).await?;
            calls += 1;
        }
        let (wall, cpu) = span.end();
        Ok(EdgeCalls {
            rule: EDGE_RULE,
            per_call: EDGE_BATCH,
            calls,
            wall_s: wall,
            calls_per_s: calls as f64 / wall,
            cpu_s: cpu,
            calls_per_cpu_s: if cpu > 0.0 {
                calls as f64 / cpu
            } else {
                f64::NAN
            },
        })
    })
}

/// What one dialect's encode path costs per reading.
#[derive(Debug, Clone, Serialize)]
pub struct EncodeCost {
    /// `iotmock (built-in)` or the codec plugin's name.
    pub dialect: String,
    pub readings: u64,
    pub wall_s: f64,
    pub cpu_s: f64,
    /// CPU time (caller and worker) per reading, ns.
    pub cpu_ns_per_reading: f64,
    /// Bytes of topic and payload per reading, on average.
    pub bytes_per_reading: f64,
}

/// Devices per encode call (one reading each: a scheduler round of a fleet
/// with one sensor per device).
pub const ENCODE_BATCH: usize = 1024;

/// The CPU cost per reading of turning readings into MQTT messages: the
/// built-in iotmock path (`Reading::write_json` and the topic), and each
/// codec plugin through the plugin host (one worker, batched calls of
/// [`ENCODE_BATCH`] devices, codec state carried from call to call).
/// Nothing is published: this is the part a dialect changes.
pub fn encode_costs(time: Duration) -> anyhow::Result<Vec<EncodeCost>> {
    use iotmock::bench::{CodecDevice, CodecEvent, CodecReading, EncodeRequest, Reading};

    let ids: Vec<String> = (0..ENCODE_BATCH).map(|i| format!("bench-{i:05}")).collect();
    let value = |i: usize, ts: i64| 20.0 + ((ts / 1000 + i as i64) % 97) as f64 / 10.0;
    let mut out = Vec::new();

    // The built-in path, as the scheduler takes it.
    let unit: Arc<str> = Arc::from("\"celsius\"");
    let devices: Vec<Arc<str>> = ids.iter().map(|id| Arc::from(id.as_str())).collect();
    let sensor: Arc<str> = Arc::from(SENSOR);
    let mut payload = String::with_capacity(256);
    let mut bytes = 0u64;
    let mut readings = 0u64;
    let mut ts = START_TS;
    let span = Span::start();
    while span.elapsed() < time {
        for (i, device) in devices.iter().enumerate() {
            let reading = Reading {
                device: device.clone(),
                sensor: sensor.clone(),
                ts,
                value: value(i, ts),
                unit_json: unit.clone(),
                anomaly: None,
            };
            payload.clear();
            reading.write_json(&mut payload);
            let topic = iotmock::bench::telemetry_topic(&reading.device, &reading.sensor);
            let body = bytes::Bytes::copy_from_slice(payload.as_bytes());
            bytes += (topic.len() + body.len()) as u64;
            std::hint::black_box((topic, body));
        }
        readings += ENCODE_BATCH as u64;
        ts += 1_000;
    }
    let (wall, cpu) = span.end();
    out.push(cost("iotmock (built-in)", readings, wall, cpu, bytes));

    let host = PluginHost::start(PluginLimits {
        workers: 1,
        ..Default::default()
    })
    .map_err(|e| anyhow!("starting the plugin host: {e}"))?;
    let infos: Vec<CodecDevice> = ids
        .iter()
        .map(|id| CodecDevice {
            id: id.clone(),
            group: Some("bench".into()),
            kind: None,
            username: id.clone(),
            simulated: true,
        })
        .collect();
    for (name, config) in [
        ("iotmock", "{}"),
        (
            "template",
            r#"{"telemetry_topic":"site/{group}/{id}/{sensor}","telemetry_payload":"{{\"v\":{value},\"t\":{ts_ms}}}"}"#,
        ),
        ("thingsboard", "{}"),
        ("sparkplug-b", "{}"),
    ] {
        let config: Arc<str> = Arc::from(config);
        let mut ctx = CallContext {
            now: START_TS,
            slots: ids
                .iter()
                .map(|id| DeviceSlot {
                    rng: DeviceRng::derive(42, id, "dialect"),
                    state: None,
                    deferred: None,
                })
                .collect(),
        };
        let mut states: Vec<Vec<u8>> = vec![Vec::new(); ENCODE_BATCH];
        let mut ts = START_TS;
        let mut bytes = 0u64;
        let mut call =
            |ctx: CallContext, ts: i64, bytes: &mut u64| -> anyhow::Result<CallContext> {
                let requests = infos
                    .iter()
                    .zip(states.iter_mut())
                    .enumerate()
                    .map(|(i, (info, state))| EncodeRequest {
                        device: i as u32,
                        info: info.clone(),
                        ts,
                        event: CodecEvent::Readings(vec![CodecReading {
                            sensor: SENSOR.into(),
                            ts,
                            value: value(i, ts),
                            unit: "celsius".into(),
                            anomaly: None,
                        }]),
                        state: std::mem::take(state),
                    })
                    .collect();
                let (result, ctx) = host.encode_blocking(name, config.clone(), ctx, requests);
                let answers = result.map_err(|e| anyhow!("{name} encode call: {e}"))?;
                for (state, answer) in states.iter_mut().zip(answers) {
                    if answer.messages.is_empty() {
                        bail!("{name} encoded a reading into no message");
                    }
                    for m in &answer.messages {
                        *bytes += (m.topic.len() + m.payload.len()) as u64;
                    }
                    *state = answer.state;
                }
                Ok(ctx)
            };
        let warm = Instant::now();
        let mut ignored = 0;
        while warm.elapsed() < time / 8 + Duration::from_millis(10) {
            ctx = call(ctx, ts, &mut ignored)?;
            ts += 1_000;
        }
        let span = Span::start();
        let mut calls = 0u64;
        while span.elapsed() < time {
            ctx = call(ctx, ts, &mut bytes)?;
            ts += 1_000;
            calls += 1;
        }
        let (wall, cpu) = span.end();
        out.push(cost(name, calls * ENCODE_BATCH as u64, wall, cpu, bytes));
    }
    Ok(out)
}

fn cost(dialect: &str, readings: u64, wall_s: f64, cpu_s: f64, bytes: u64) -> EncodeCost {
    EncodeCost {
        dialect: dialect.to_string(),
        readings,
        wall_s,
        cpu_s,
        cpu_ns_per_reading: cpu_s * 1e9 / readings.max(1) as f64,
        bytes_per_reading: bytes as f64 / readings.max(1) as f64,
    }
}
