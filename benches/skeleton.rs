//! The skeleton's benchmark: what the design promises, measured on the real
//! parts, loopback only.
//!
//! 1. Sensor samples per second through the plugin host with one worker
//!    thread (so: per core), single calls against batched calls, with the
//!    built-in `temperature` plugin.
//! 2. Hot reload: a server in this process watches a plugins folder; the
//!    time from writing a new `probe.wasm` to the first MQTT reading with the
//!    new plugin's value.
//! 3. Start to ready: the real `iotmock` binary, from spawn to its JSON
//!    ready line on stdout; then SIGTERM and the time to a clean exit.
//!
//! Run: `cargo build --release --bin iotmock && cargo bench --bench skeleton`.
//! Every part is bounded in count and time and stops by itself. With
//! `IOTMOCK_BENCH_QUICK=1` (or `-- --quick`) each part runs a tiny bounded
//! amount, for a smoke test. The results end with a plain table and one line
//! `JSON: {...}` for machines. The exit code is 1 when a part could not run
//! (missed targets are reported, not failures).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, Instant, SystemTime};

use iotmock::bench::{CallContext, DeviceRng, DeviceSlot, PluginHost, SampleRequest};
use iotmock::{ClockMode, Config, PluginLimits, ScenarioChoice, Server};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Batched sensor calls: at least this many readings per second per core.
const TARGET_READINGS_PER_S: f64 = 1_000_000.0;
/// Hot reload: every reload visible in under this long.
const TARGET_RELOAD_MS: f64 = 200.0;
/// Start: every start ready in under this long.
const TARGET_READY_MS: f64 = 1_000.0;

/// The sensor plugin of part 1, and its configuration.
const SENSOR: &str = "temperature";
const SENSOR_CONFIG: &str = "{}";
/// Part 2's device and sensor (the plugin file is `probe.wasm`).
const RELOAD_DEVICE: &str = "bench-1";
const RELOAD_PLUGIN: &str = "probe";
/// A simulated time to sample at (2025-01-01T00:00:00Z).
const START_TS: i64 = 1_735_689_600_000;

/// How much of each part to run.
#[derive(Debug, Clone)]
struct Plan {
    quick: bool,
    /// Measured time per sampling mode.
    sample_time: Duration,
    /// Untimed calls before measuring, at most this long.
    warmup_time: Duration,
    /// Requests per batched call.
    batch: usize,
    /// Reloads per write mode.
    reloads: usize,
    /// Quiet time after each reload (also catches old values coming late).
    settle: Duration,
    /// Longest wait for a reload to show.
    reload_timeout: Duration,
    /// Binary starts.
    starts: usize,
    /// Longest wait for the ready line, and for the exit after SIGTERM.
    process_timeout: Duration,
    /// Longest any one part may take in all; past it the part is reported
    /// as hung and the benchmark ends anyway.
    part_limit: Duration,
}

impl Plan {
    fn from_env() -> Self {
        let quick = std::env::var("IOTMOCK_BENCH_QUICK").is_ok_and(|v| v == "1")
            || std::env::args().any(|a| a == "--quick");
        if quick {
            Self {
                quick,
                sample_time: Duration::from_millis(50),
                warmup_time: Duration::from_millis(10),
                batch: 1024,
                reloads: 2,
                settle: Duration::from_millis(30),
                reload_timeout: Duration::from_secs(5),
                starts: 1,
                process_timeout: Duration::from_secs(10),
                part_limit: Duration::from_secs(60),
            }
        } else {
            Self {
                quick,
                sample_time: Duration::from_secs(2),
                warmup_time: Duration::from_millis(250),
                batch: 1024,
                reloads: 10,
                settle: Duration::from_millis(100),
                reload_timeout: Duration::from_secs(5),
                starts: 5,
                process_timeout: Duration::from_secs(10),
                part_limit: Duration::from_secs(180),
            }
        }
    }
}

fn main() {
    let plan = Plan::from_env();
    eprintln!(
        "iotmock skeleton benchmark{} ({} cores)",
        if plan.quick { ", quick mode" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    eprintln!("part 1: sensor samples through the plugin host (1 worker)...");
    let sampling = bounded(&plan, bench_sampling);
    eprintln!("part 2: hot reload in an in-process server...");
    let reload = bounded(&plan, bench_reload);
    eprintln!("part 3: start to ready of the iotmock binary...");
    let ready = bounded(&plan, bench_ready);

    let report = Report {
        quick: plan.quick,
        sampling,
        reload,
        ready,
    };
    report.print_table();
    println!("JSON: {}", report.json());
    // Exiting also ends the threads of a part that hung.
    std::process::exit(if report.failed() { 1 } else { 0 });
}

/// Runs one part on its own thread and gives up on it after
/// `plan.part_limit`, so that a hang in the library (a deadlock, a call
/// that never answers) is reported instead of stopping the benchmark.
fn bounded<T: Send + 'static>(
    plan: &Plan,
    part: fn(&Plan) -> Result<T, String>,
) -> Result<T, String> {
    let (tx, rx) = std_mpsc::channel();
    let thread_plan = plan.clone();
    std::thread::Builder::new()
        .name("bench-part".into())
        .spawn(move || {
            let _ = tx.send(part(&thread_plan));
        })
        .map_err(|e| format!("spawning the part's thread: {e}"))?;
    match rx.recv_timeout(plan.part_limit) {
        Ok(result) => result,
        Err(std_mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "did not finish within {:?}: something hangs (a deadlock or a call that never answers?)",
            plan.part_limit
        )),
        Err(std_mpsc::RecvTimeoutError::Disconnected) => {
            Err("panicked (see the message above)".into())
        }
    }
}

// ---------------------------------------------------------------------------
// Part 1: sensor samples per second per core.

struct Throughput {
    per_call: usize,
    calls: u64,
    readings: u64,
    wall: Duration,
    /// Process CPU time while measuring (caller and worker threads).
    cpu: Option<Duration>,
}

impl Throughput {
    fn per_s(&self) -> f64 {
        self.readings as f64 / self.wall.as_secs_f64()
    }

    fn per_cpu_s(&self) -> Option<f64> {
        self.cpu
            .filter(|c| !c.is_zero())
            .map(|c| self.readings as f64 / c.as_secs_f64())
    }

    fn cores_busy(&self) -> Option<f64> {
        self.cpu.map(|c| c.as_secs_f64() / self.wall.as_secs_f64())
    }

    fn json(&self) -> Value {
        json!({
            "per_call": self.per_call,
            "calls": self.calls,
            "readings": self.readings,
            "wall_s": self.wall.as_secs_f64(),
            "readings_per_s": self.per_s(),
            "process_cpu_s": self.cpu.map(|c| c.as_secs_f64()),
            "readings_per_cpu_s": self.per_cpu_s(),
        })
    }
}

struct Sampling {
    single: Throughput,
    batched: Throughput,
}

fn bench_sampling(plan: &Plan) -> Result<Sampling, String> {
    // A plain thread (this one): the blocking API must not run on a tokio
    // runtime thread, and there is no runtime yet.
    let host = PluginHost::start(PluginLimits {
        workers: 1,
        ..Default::default()
    })
    .map_err(|e| format!("starting the plugin host: {e}"))?;
    let config: Arc<str> = Arc::from(SENSOR_CONFIG);
    let single = run_sampling(&host, &config, 1, plan)?;
    let batched = run_sampling(&host, &config, plan.batch, plan)?;
    Ok(Sampling { single, batched })
}

/// Calls the sensor with `per_call` devices per call, one request each,
/// feeding each reading's state into the next as the scheduler does.
fn run_sampling(
    host: &PluginHost,
    config: &Arc<str>,
    per_call: usize,
    plan: &Plan,
) -> Result<Throughput, String> {
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

    let call = |ctx: CallContext, states: &mut Vec<Vec<u8>>, ts: i64| {
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
        let samples = result.map_err(|e| format!("{SENSOR} sample call ({per_call}/call): {e}"))?;
        if samples.len() != per_call {
            return Err(format!(
                "{SENSOR} answered {} samples for {per_call} requests",
                samples.len()
            ));
        }
        if ctx.slots.len() != per_call {
            return Err(format!(
                "the call handed back {} device slots for {per_call}",
                ctx.slots.len()
            ));
        }
        for (state, sample) in states.iter_mut().zip(samples) {
            if !sample.value.is_some_and(f64::is_finite) {
                return Err(format!(
                    "{SENSOR} returned a sample without a finite value: {sample:?}"
                ));
            }
            *state = sample.state;
        }
        Ok(ctx)
    };

    // Warm-up: the first call instantiates the plugin on the worker.
    let warmup = Instant::now();
    loop {
        ctx = call(ctx, &mut states, ts)?;
        ts += 1_000;
        if warmup.elapsed() >= plan.warmup_time {
            break;
        }
    }

    let cpu_before = process_cpu_time();
    let started = Instant::now();
    let mut calls = 0u64;
    while started.elapsed() < plan.sample_time {
        ctx = call(ctx, &mut states, ts)?;
        ts += 1_000;
        calls += 1;
    }
    let wall = started.elapsed();
    let cpu = process_cpu_time()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    Ok(Throughput {
        per_call,
        calls,
        readings: calls * per_call as u64,
        wall,
        cpu,
    })
}

/// CPU time of this process, all threads (Linux only): the sum of the live
/// threads' scheduler times in ns, else user plus system time in ticks.
fn process_cpu_time() -> Option<Duration> {
    let from_tasks = || -> Option<Duration> {
        let mut ns = 0u64;
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(Duration::from_nanos(ns))
    };
    from_tasks().or_else(|| {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (in parentheses, may hold spaces):
        // state is field 3, utime 14, stime 15, in clock ticks.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        // USER_HZ is 100 on every Linux this runs on.
        Some(Duration::from_millis((utime + stime) * 10))
    })
}

// ---------------------------------------------------------------------------
// Part 2: hot reload, file write to the first new reading.

#[derive(Clone, Copy, PartialEq, Eq)]
enum WriteMode {
    /// Write a temporary file in the folder, then rename it over the plugin.
    Rename,
    /// `std::fs::write` over the plugin file.
    InPlace,
}

impl WriteMode {
    fn label(self) -> &'static str {
        match self {
            WriteMode::Rename => "write temp + rename",
            WriteMode::InPlace => "in-place write",
        }
    }

    fn key(self) -> &'static str {
        match self {
            WriteMode::Rename => "rename",
            WriteMode::InPlace => "in_place",
        }
    }

    fn write(self, dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let target = dir.join(format!("{RELOAD_PLUGIN}.wasm"));
        match self {
            WriteMode::Rename => {
                // Not `*.wasm`: the watcher ignores it.
                let temp = dir.join(format!("{RELOAD_PLUGIN}.wasm.tmp"));
                std::fs::write(&temp, bytes)?;
                std::fs::rename(&temp, &target)
            }
            WriteMode::InPlace => std::fs::write(&target, bytes),
        }
    }
}

struct Reloads {
    mode: WriteMode,
    latencies: Vec<Duration>,
    /// Readings with the old value after the first new one.
    stale_after_switch: u64,
}

impl Reloads {
    fn p50(&self) -> Duration {
        percentile(&self.latencies, 0.5)
    }

    fn max(&self) -> Duration {
        self.latencies.iter().copied().max().unwrap_or_default()
    }

    fn json(&self) -> Value {
        json!({
            "n": self.latencies.len(),
            "p50_ms": ms(self.p50()),
            "max_ms": ms(self.max()),
            "samples_ms": self.latencies.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "stale_readings_after_switch": self.stale_after_switch,
        })
    }
}

enum MqttMsg {
    Subscribed,
    Reading { at: Instant, value: f64 },
    Bad(String),
    Closed(String),
}

fn bench_reload(plan: &Plan) -> Result<Vec<Reloads>, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a tokio runtime: {e}"))?;
    let result = runtime.block_on(reload_async(plan));
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn reload_async(plan: &Plan) -> Result<Vec<Reloads>, String> {
    let fixtures = Path::new(iotmock::bench::TEST_PLUGINS_DIR);
    let read_fixture = |file: &str| {
        let path = fixtures.join(file);
        std::fs::read(&path).map_err(|e| {
            format!(
                "reading test plugin {} (built by build.rs with the library): {e}",
                path.display()
            )
        })
    };
    let one = read_fixture("test_fixed_one.wasm")?;
    let two = read_fixture("test_fixed_two.wasm")?;

    let dir = tempfile::tempdir().map_err(|e| format!("creating a temporary folder: {e}"))?;
    std::fs::write(dir.path().join(format!("{RELOAD_PLUGIN}.wasm")), &one)
        .map_err(|e| format!("writing the first probe.wasm: {e}"))?;
    let scenario = format!(
        "[[fleet]]\nid = \"{RELOAD_DEVICE}\"\n[[fleet.sensors]]\nplugin = \"{RELOAD_PLUGIN}\"\ninterval_ms = 5\n"
    );
    let server = Server::start(Config {
        plugins_dir: Some(dir.path().to_path_buf()),
        scenario: ScenarioChoice::Inline(scenario),
        clock: ClockMode::Realtime,
        ..Config::ephemeral()
    })
    .await
    .map_err(|e| format!("starting the server: {e}"))?;

    let result = measure_reloads(plan, &server, dir.path(), &one, &two).await;
    let limit = Duration::from_secs(10);
    match tokio::time::timeout(limit, server.shutdown()).await {
        Ok(()) => result,
        Err(_) => Err(format!(
            "the server did not shut down within {limit:?} (measurements before: {})",
            match &result {
                Ok(all) => all
                    .iter()
                    .map(|r| format!("{}: {:?}", r.mode.key(), r.latencies))
                    .collect::<Vec<_>>()
                    .join("; "),
                Err(e) => e.clone(),
            }
        )),
    }
}

async fn measure_reloads(
    plan: &Plan,
    server: &Server,
    dir: &Path,
    one: &[u8],
    two: &[u8],
) -> Result<Vec<Reloads>, String> {
    let topic = format!("devices/{RELOAD_DEVICE}/telemetry/{RELOAD_PLUGIN}");
    let addr = server.mqtt_addr();
    let mut options = MqttOptions::new("iotmock-bench", addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let (tx, mut rx) = mpsc::unbounded_channel::<MqttMsg>();
    let events = tokio::spawn(async move {
        loop {
            let msg = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                        MqttMsg::Closed("the broker refused the subscription".into())
                    } else {
                        MqttMsg::Subscribed
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let at = Instant::now();
                    match serde_json::from_slice::<Value>(&publish.payload)
                        .ok()
                        .and_then(|v| v.get("value").and_then(Value::as_f64))
                    {
                        Some(value) => MqttMsg::Reading { at, value },
                        None => MqttMsg::Bad(String::from_utf8_lossy(&publish.payload).into()),
                    }
                }
                Ok(_) => continue,
                Err(e) => {
                    let _ = tx.send(MqttMsg::Closed(e.to_string()));
                    return;
                }
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
    });

    let result = async {
        client
            .subscribe(&topic, QoS::AtMostOnce)
            .await
            .map_err(|e| format!("MQTT subscribe: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match recv_until(&mut rx, deadline).await? {
                Some(MqttMsg::Subscribed) => break,
                Some(_) => {}
                None => return Err(format!("no SUBACK from the broker at {addr} within 5 s")),
            }
        }
        // The first plugin serves before anything is measured.
        wait_for_value(&mut rx, 1.0, Instant::now(), Instant::now() + plan.reload_timeout)
            .await?
            .ok_or_else(|| {
                format!(
                    "no reading with value 1 on {topic} within {:?} of subscribing ({})",
                    plan.reload_timeout,
                    plugin_status(server)
                )
            })?;

        let mut current = 1.0;
        let mut all = Vec::new();
        for mode in [WriteMode::Rename, WriteMode::InPlace] {
            let mut reloads = Reloads {
                mode,
                latencies: Vec::new(),
                stale_after_switch: 0,
            };
            for i in 0..plan.reloads {
                let (bytes, value) = if current == 1.0 {
                    (two, 2.0)
                } else {
                    (one, 1.0)
                };
                // Start clean: nothing queued from before the write.
                while let Ok(msg) = rx.try_recv() {
                    check_msg(&msg)?;
                }
                let written = Instant::now();
                mode.write(dir, bytes)
                    .map_err(|e| format!("writing probe.wasm ({}): {e}", mode.label()))?;
                let seen = wait_for_value(&mut rx, value, written, written + plan.reload_timeout)
                    .await?
                    .ok_or_else(|| {
                        format!(
                            "reload {} ({}): no reading with value {value} within {:?} of the write ({})",
                            i + 1,
                            mode.label(),
                            plan.reload_timeout,
                            plugin_status(server)
                        )
                    })?;
                reloads.latencies.push(seen - written);
                current = value;
                // Settle, counting old values that still arrive.
                let until = Instant::now() + plan.settle;
                while let Some(msg) = recv_until(&mut rx, until).await? {
                    if let MqttMsg::Reading { value: v, .. } = msg
                        && v != value
                    {
                        reloads.stale_after_switch += 1;
                    }
                }
            }
            all.push(reloads);
        }
        Ok(all)
    }
    .await;

    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while rx.recv().await.is_some() {}
    })
    .await;
    events.abort();
    result
}

/// The next message before `deadline`, or None when it passes. Errors on a
/// closed connection.
async fn recv_until(
    rx: &mut mpsc::UnboundedReceiver<MqttMsg>,
    deadline: Instant,
) -> Result<Option<MqttMsg>, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, rx.recv()).await {
        Err(_) => Ok(None),
        Ok(None) => Err("the MQTT event loop stopped".into()),
        Ok(Some(msg)) => {
            check_msg(&msg)?;
            Ok(Some(msg))
        }
    }
}

fn check_msg(msg: &MqttMsg) -> Result<(), String> {
    match msg {
        MqttMsg::Closed(e) => Err(format!("the MQTT connection failed: {e}")),
        MqttMsg::Bad(payload) => Err(format!("a reading without a numeric value: {payload}")),
        _ => Ok(()),
    }
}

/// When the first reading with `value` received at or after `since`
/// arrived, or None at `deadline`.
async fn wait_for_value(
    rx: &mut mpsc::UnboundedReceiver<MqttMsg>,
    value: f64,
    since: Instant,
    deadline: Instant,
) -> Result<Option<Instant>, String> {
    while let Some(msg) = recv_until(rx, deadline).await? {
        if let MqttMsg::Reading { at, value: v } = msg
            && v == value
            && at >= since
        {
            return Ok(Some(at));
        }
    }
    Ok(None)
}

fn plugin_status(server: &Server) -> String {
    match iotmock::bench::plugins(server).info(RELOAD_PLUGIN) {
        Some(info) => format!("plugin {RELOAD_PLUGIN}: {info:?}"),
        None => format!("plugin {RELOAD_PLUGIN} is not loaded"),
    }
}

// ---------------------------------------------------------------------------
// Part 3: start to ready of the binary, and SIGTERM to exit.

struct Starts {
    binary: PathBuf,
    profile: String,
    warning: Option<String>,
    ready: Vec<Duration>,
    shutdown: Vec<Duration>,
}

impl Starts {
    fn json(&self) -> Value {
        json!({
            "binary": self.binary.display().to_string(),
            "profile": self.profile,
            "warning": self.warning,
            "n": self.ready.len(),
            "median_ms": ms(percentile(&self.ready, 0.5)),
            "max_ms": ms(self.ready.iter().copied().max().unwrap_or_default()),
            "samples_ms": self.ready.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "sigterm_to_exit_median_ms": ms(percentile(&self.shutdown, 0.5)),
            "sigterm_to_exit_max_ms": ms(self.shutdown.iter().copied().max().unwrap_or_default()),
        })
    }
}

fn bench_ready(plan: &Plan) -> Result<Starts, String> {
    let (binary, profile) = locate_binary()?;
    let warning = stale_warning(&binary);
    if let Some(w) = &warning {
        eprintln!("warning: {w}");
    }
    let mut starts = Starts {
        binary,
        profile,
        warning,
        ready: Vec::new(),
        shutdown: Vec::new(),
    };
    for i in 0..plan.starts {
        let (ready, shutdown) = start_once(&starts.binary, plan.process_timeout)
            .map_err(|e| format!("start {} of {}: {e}", i + 1, starts.binary.display()))?;
        starts.ready.push(ready);
        starts.shutdown.push(shutdown);
    }
    Ok(starts)
}

/// The iotmock binary: `IOTMOCK_BIN`, else the one next to this benchmark
/// (`target/<profile>/`), else `target/release/`, else `target/debug/`.
fn locate_binary() -> Result<(PathBuf, String), String> {
    if let Some(path) = std::env::var_os("IOTMOCK_BIN") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok((path, "IOTMOCK_BIN".into()))
        } else {
            Err(format!("IOTMOCK_BIN={} is not a file", path.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("locating this benchmark: {e}"))?;
    // target/<profile>/deps/skeleton-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected benchmark location {}", exe.display()))?;
    let target = profile_dir.parent().unwrap_or(profile_dir);
    let name = format!("iotmock{}", std::env::consts::EXE_SUFFIX);
    let candidates = [
        profile_dir.to_path_buf(),
        target.join("release"),
        target.join("debug"),
    ];
    for dir in &candidates {
        let path = dir.join(&name);
        if path.is_file() {
            let profile = dir
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            return Ok((path, profile));
        }
    }
    Err(format!(
        "the iotmock binary is not built (looked in {} and {}); run `cargo build --release --bin iotmock` first, or set IOTMOCK_BIN",
        target.join("release").display(),
        target.join("debug").display()
    ))
}

/// A warning when the binary is a debug build or older than the sources.
fn stale_warning(binary: &Path) -> Option<String> {
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok()?;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let newest = newest_mtime(&src)?;
    let mut notes = Vec::new();
    if binary.parent().and_then(Path::file_name) == Some("debug".as_ref()) {
        notes.push("it is a debug build (timings are not representative)".to_string());
    }
    if newest > built {
        notes.push("it is older than the sources in src/".to_string());
    }
    (!notes.is_empty()).then(|| {
        format!(
            "{}: {}; rebuild with `cargo build --release --bin iotmock`",
            binary.display(),
            notes.join(" and ")
        )
    })
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(time);
    }
    newest
}

/// One start: spawn, wait for the ready line, check the port answers,
/// SIGTERM, wait for a clean exit. Returns (spawn → ready, SIGTERM → exit).
fn start_once(binary: &Path, timeout: Duration) -> Result<(Duration, Duration), String> {
    let started = Instant::now();
    let mut child = Command::new(binary)
        .args(["serve", "--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning: {e}"))?;

    // stdout lines with their arrival time; the tail of stderr for errors.
    let (lines_tx, lines_rx) = std_mpsc::channel::<(Instant, String)>();
    let stdout = child.stdout.take().expect("stdout is piped");
    let out_thread = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let stderr_tail = Arc::new(Mutex::new(VecDeque::<String>::new()));
    let err_thread = {
        let tail = stderr_tail.clone();
        let mut stderr = child.stderr.take().expect("stderr is piped");
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                text.extend_from_slice(&buf[..n]);
                while let Some(end) = text.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = text.drain(..=end).collect();
                    let mut tail = tail.lock().unwrap();
                    tail.push_back(String::from_utf8_lossy(&line).trim_end().to_string());
                    if tail.len() > 20 {
                        tail.pop_front();
                    }
                }
            }
        })
    };
    let tail = || {
        let tail = stderr_tail.lock().unwrap();
        if tail.is_empty() {
            "(stderr empty)".to_string()
        } else {
            format!(
                "stderr ends with:\n    {}",
                Vec::from(tail.clone()).join("\n    ")
            )
        }
    };

    let outcome = (|| {
        let deadline = started + timeout;
        let (ready_at, http) = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok((at, line)) => {
                    let Ok(event) = serde_json::from_str::<Value>(&line) else {
                        continue;
                    };
                    if event.get("event").and_then(Value::as_str) == Some("ready") {
                        let http = event
                            .get("http")
                            .and_then(Value::as_str)
                            .and_then(|a| a.parse::<SocketAddr>().ok())
                            .ok_or_else(|| format!("ready line without an http address: {line}"))?;
                        break (at, http);
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("no ready line within {timeout:?}; {}", tail()));
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    let status = wait_exit(&mut child, Duration::from_secs(2));
                    return Err(format!(
                        "stdout closed before the ready line (exit: {}); {}",
                        describe_exit(status),
                        tail()
                    ));
                }
            }
        };
        let ready = ready_at - started;
        TcpStream::connect_timeout(&http, Duration::from_secs(2))
            .map_err(|e| format!("ready, but the HTTP port {http} does not answer: {e}"))?;

        let term = Instant::now();
        let kill = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .map_err(|e| format!("running `kill -TERM`: {e}"))?;
        if !kill.success() {
            return Err(format!("`kill -TERM {}` failed: {kill}", child.id()));
        }
        match wait_exit(&mut child, timeout) {
            Some(status) if status.success() => Ok((ready, term.elapsed())),
            other => Err(format!(
                "after SIGTERM: {}; {}",
                describe_exit(other),
                tail()
            )),
        }
    })();

    if outcome.is_err() && child.try_wait().ok().flatten().is_none() {
        // Our own child, by its handle.
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = out_thread.join();
    let _ = err_thread.join();
    outcome
}

/// Waits up to `timeout` for the child to exit.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            _ => return None,
        }
    }
}

fn describe_exit(status: Option<ExitStatus>) -> String {
    match status {
        Some(status) => status.to_string(),
        None => "did not exit in time".into(),
    }
}

// ---------------------------------------------------------------------------
// The report.

struct Report {
    quick: bool,
    sampling: Result<Sampling, String>,
    reload: Result<Vec<Reloads>, String>,
    ready: Result<Starts, String>,
}

impl Report {
    fn failed(&self) -> bool {
        self.sampling.is_err() || self.reload.is_err() || self.ready.is_err()
    }

    fn print_table(&self) {
        let mut rows: Vec<[String; 4]> = Vec::new();
        let mut notes: Vec<String> = Vec::new();
        let verdict = |pass: bool| if pass { "PASS" } else { "MISS" }.to_string();

        match &self.sampling {
            Ok(s) => {
                rows.push([
                    "sensor samples, 1 per call".into(),
                    format!("{} readings/s", thousands(s.single.per_s())),
                    "-".into(),
                    "-".into(),
                ]);
                rows.push([
                    format!("sensor samples, {} per call", s.batched.per_call),
                    format!("{} readings/s", thousands(s.batched.per_s())),
                    format!(">= {} /s/core", thousands(TARGET_READINGS_PER_S)),
                    verdict(s.batched.per_s() >= TARGET_READINGS_PER_S),
                ]);
                for t in [&s.single, &s.batched] {
                    notes.push(format!(
                        "sampling {}/call: {} calls in {:.2} s; process CPU {} cores busy, {} readings per CPU-second",
                        t.per_call,
                        t.calls,
                        t.wall.as_secs_f64(),
                        t.cores_busy().map_or("?".into(), |c| format!("{c:.2}")),
                        t.per_cpu_s().map_or("?".into(), thousands),
                    ));
                }
            }
            Err(e) => {
                rows.push([
                    "sensor samples".into(),
                    "ERROR".into(),
                    "-".into(),
                    "ERROR".into(),
                ]);
                notes.push(format!("sampling failed: {e}"));
            }
        }

        match &self.reload {
            Ok(all) => {
                for r in all {
                    rows.push([
                        format!("hot reload, {}", r.mode.label()),
                        format!(
                            "p50 {:.1} ms, max {:.1} ms (n={})",
                            ms(r.p50()),
                            ms(r.max()),
                            r.latencies.len()
                        ),
                        format!("< {TARGET_RELOAD_MS:.0} ms (max)"),
                        verdict(ms(r.max()) < TARGET_RELOAD_MS),
                    ]);
                    notes.push(format!(
                        "reload {}: samples ms {:?}; old-value readings after the switch: {}",
                        r.mode.key(),
                        r.latencies
                            .iter()
                            .map(|d| (ms(*d) * 10.0).round() / 10.0)
                            .collect::<Vec<_>>(),
                        r.stale_after_switch
                    ));
                }
            }
            Err(e) => {
                rows.push([
                    "hot reload".into(),
                    "ERROR".into(),
                    "-".into(),
                    "ERROR".into(),
                ]);
                notes.push(format!("hot reload failed: {e}"));
            }
        }

        match &self.ready {
            Ok(s) => {
                let median = percentile(&s.ready, 0.5);
                let max = s.ready.iter().copied().max().unwrap_or_default();
                rows.push([
                    format!("start -> ready ({} binary)", s.profile),
                    format!(
                        "median {:.1} ms, max {:.1} ms (n={})",
                        ms(median),
                        ms(max),
                        s.ready.len()
                    ),
                    format!("< {TARGET_READY_MS:.0} ms (max)"),
                    verdict(ms(max) < TARGET_READY_MS),
                ]);
                rows.push([
                    "SIGTERM -> clean exit".into(),
                    format!(
                        "median {:.1} ms, max {:.1} ms",
                        ms(percentile(&s.shutdown, 0.5)),
                        ms(s.shutdown.iter().copied().max().unwrap_or_default())
                    ),
                    "-".into(),
                    "-".into(),
                ]);
                notes.push(format!(
                    "binary: {} (demo scenario; SIGTERM time includes spawning `kill`)",
                    s.binary.display()
                ));
                if let Some(w) = &s.warning {
                    notes.push(format!("warning: {w}"));
                }
            }
            Err(e) => {
                rows.push([
                    "start -> ready".into(),
                    "ERROR".into(),
                    "-".into(),
                    "ERROR".into(),
                ]);
                notes.push(format!("start to ready failed: {e}"));
            }
        }

        let header = ["part", "measured", "target", "verdict"].map(String::from);
        let widths: Vec<usize> = (0..4)
            .map(|c| {
                rows.iter()
                    .chain(std::iter::once(&header))
                    .map(|r| r[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |r: &[String; 4]| {
            r.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        println!();
        println!(
            "iotmock skeleton benchmark{}",
            if self.quick {
                " (QUICK MODE: tiny runs, numbers are indicative only)"
            } else {
                ""
            }
        );
        println!("{}", line(&header));
        println!(
            "{}",
            widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("  ")
        );
        for row in &rows {
            println!("{}", line(row));
        }
        println!();
        for note in &notes {
            println!("- {note}");
        }
        println!();
    }

    fn json(&self) -> String {
        let sampling = match &self.sampling {
            Ok(s) => json!({
                "single": s.single.json(),
                "batched": s.batched.json(),
                "target_readings_per_s": TARGET_READINGS_PER_S,
                "pass": s.batched.per_s() >= TARGET_READINGS_PER_S,
            }),
            Err(e) => json!({ "error": e }),
        };
        let reload = match &self.reload {
            Ok(all) => {
                let mut object = serde_json::Map::new();
                for r in all {
                    object.insert(r.mode.key().into(), r.json());
                }
                object.insert("target_ms".into(), json!(TARGET_RELOAD_MS));
                object.insert(
                    "pass".into(),
                    json!(all.iter().all(|r| ms(r.max()) < TARGET_RELOAD_MS)),
                );
                Value::Object(object)
            }
            Err(e) => json!({ "error": e }),
        };
        let ready = match &self.ready {
            Ok(s) => {
                let mut v = s.json();
                v["target_ms"] = json!(TARGET_READY_MS);
                v["pass"] =
                    json!(ms(s.ready.iter().copied().max().unwrap_or_default()) < TARGET_READY_MS);
                v
            }
            Err(e) => json!({ "error": e }),
        };
        json!({
            "bench": "skeleton",
            "quick": self.quick,
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "sampling": sampling,
            "reload": reload,
            "ready": ready,
        })
        .to_string()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// Nearest-rank percentile; zero for no samples.
fn percentile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// 1234567.8 -> "1,234,568".
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
