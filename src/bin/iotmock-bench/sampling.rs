//! Sensor samples per second per core: the plugin host with one worker
//! thread, batched calls of the built-in `temperature` plugin, the same
//! path the telemetry scheduler takes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use iotmock::plugin::{CallContext, DeviceSlot, PluginHost, PluginLimits, SampleRequest};
use iotmock::random::DeviceRng;
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
            })
            .collect(),
    };
    let mut states: Vec<Vec<f64>> = vec![Vec::new(); per_call];
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
    let me = std::process::id();
    let cpu_before = crate::procs::sched_time(me).unwrap_or_default();
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < time {
        ctx = call(ctx, ts)?;
        ts += 1_000;
        calls += 1;
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = crate::procs::sched_time(me)
        .unwrap_or_default()
        .saturating_sub(cpu_before)
        .as_secs_f64();
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
