//! `iotmock-bench`: the benchmark harness. It spawns the release `iotmock`
//! (and Debian's `mosquitto` for comparison), drives them over loopback
//! with rumqttc clients and the REST API, reads their CPU time and memory
//! from /proc, and prints plain tables (and the same as JSON with
//! `--json FILE`). Every run is bounded in count and time and stops by
//! itself; progress goes to stderr.
//!
//! `cargo build --release --workspace && target/release/iotmock-bench --json bench.json`
//! (`--smoke` for a run of seconds; see BENCHMARKS.md).

mod broker;
mod http;
mod platform;
mod procs;
mod report;
mod sampling;
mod soak;
mod tls;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::{Value, json};

use crate::broker::Case;
use crate::platform::Outcome;
use crate::procs::{Kind, Proc};
use crate::report::{NOT_AVAILABLE, Table, mib, ms, ratio, status, thousands};

#[derive(Parser)]
#[command(
    name = "iotmock-bench",
    about = "Benchmark iotmock (and mosquitto for comparison) over loopback"
)]
struct Cli {
    /// A run of seconds with tiny counts, iotmock only unless mosquitto
    /// is installed: checks that every part still works.
    #[arg(long)]
    smoke: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The iotmock binary (default: the one next to this binary).
    #[arg(long)]
    iotmock: Option<PathBuf>,
    /// Skip the comparison with mosquitto.
    #[arg(long)]
    no_mosquitto: bool,
    /// Parts to run, comma separated: broker, latency, connections,
    /// platform, plugins, tls; and `soak` (not run unless named: it takes
    /// `--soak-duration`).
    #[arg(long, value_delimiter = ',', default_values_t = [
        "broker".to_string(), "latency".to_string(), "connections".to_string(),
        "platform".to_string(), "plugins".to_string(), "tls".to_string(),
    ])]
    only: Vec<String>,
    /// Repetitions of each broker throughput case per broker, alternating
    /// the brokers (default: 3, 1 with --smoke).
    #[arg(long)]
    reps: Option<usize>,
    /// How long the soak part runs: `120s`, `30m` (10 s with --smoke).
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    soak_duration: Duration,
}

/// `120s`, `30m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: use e.g. 120s, 30m or 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: the unit must be s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

/// How much of everything to run.
struct Plan {
    smoke: bool,
    cases: Vec<Case>,
    /// Messages per publisher (all publishers together: about this many
    /// times `publishers`), and the time limit of one throughput run.
    messages: u64,
    run_limit: Duration,
    reps: usize,
    latency_rate: u64,
    latency_time: Duration,
    /// Latency runs per broker and QoS.
    latency_chunks: usize,
    connections: Vec<usize>,
    fleet_sizes: Vec<u64>,
    fleet_window: Duration,
    e2e_devices: u64,
    e2e_interval_ms: u64,
    commands: usize,
    edge_devices: u64,
    edge_window: Duration,
    sample_time: Duration,
    reloads: usize,
}

impl Plan {
    fn new(cli: &Cli) -> Self {
        let case = |qos, payload, publishers, subscribers| Case {
            qos,
            payload,
            publishers,
            subscribers,
        };
        if cli.smoke {
            return Self {
                smoke: true,
                cases: vec![case(0, 64, 1, 1), case(1, 1024, 2, 2)],
                messages: 300,
                run_limit: Duration::from_secs(3),
                reps: cli.reps.unwrap_or(1),
                latency_rate: 200,
                latency_time: Duration::from_millis(500),
                latency_chunks: 1,
                connections: vec![50],
                fleet_sizes: vec![20],
                fleet_window: Duration::from_secs(1),
                e2e_devices: 20,
                e2e_interval_ms: 50,
                commands: 5,
                edge_devices: 5,
                edge_window: Duration::from_secs(1),
                sample_time: Duration::from_millis(100),
                reloads: 1,
            };
        }
        let mut cases = Vec::new();
        for qos in [0, 1, 2] {
            for payload in [64, 1024] {
                for (p, s) in [(1, 1), (4, 1)] {
                    cases.push(case(qos, payload, p, s));
                }
            }
        }
        cases.push(case(0, 64, 4, 4));
        cases.push(case(1, 64, 4, 4));
        Self {
            smoke: false,
            cases,
            messages: 400_000,
            run_limit: Duration::from_secs(3),
            reps: cli.reps.unwrap_or(3),
            latency_rate: 1_000,
            latency_time: Duration::from_secs(2),
            latency_chunks: 4,
            connections: vec![1_000, 10_000],
            fleet_sizes: vec![1_000, 10_000],
            fleet_window: Duration::from_secs(5),
            e2e_devices: 1_000,
            e2e_interval_ms: 10,
            commands: 200,
            edge_devices: 100,
            edge_window: Duration::from_secs(5),
            sample_time: Duration::from_secs(2),
            reloads: 10,
        }
    }
}

// Targets.
const LATENCY_RATE_NOTE: &str = "1 publisher -> 1 subscriber, 64 B";
const SEED_DEVICES: u64 = 1_000;
const OUR_DEVICES: u64 = 10_000;
const SEED_E2E: f64 = 10_000.0;
const OUR_E2E: f64 = 100_000.0;
const SEED_COMMAND_MS: f64 = 1_000.0;
const OUR_COMMAND_MS: f64 = 10.0;
const SEED_EDGE_MS: f64 = 100.0;
const OUR_EDGE_MS: f64 = 1.0;
const SEED_CPU_PCT: f64 = 1.0;
const OUR_CPU_PCT: f64 = 0.001;
const OUR_SAMPLES: f64 = 1_000_000.0;
/// What a dialect may add to the built-in path's CPU per reading (issue
/// target: 2 µs).
const OUR_DIALECT_OVERHEAD_NS: f64 = 2_000.0;
const OUR_RELOAD_MS: f64 = 200.0;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("iotmock-bench: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Ok(false) when a part could not run (missed targets are reported, not
/// failures).
fn run(cli: Cli) -> anyhow::Result<bool> {
    let plan = Plan::new(&cli);
    let wants = |part: &str| cli.only.iter().any(|p| p == part);
    let iotmock_bin = procs::locate_iotmock(cli.iotmock.as_deref())?;
    let brokers_wanted =
        wants("broker") || wants("latency") || wants("connections") || wants("tls");
    let mosquitto_bin = if cli.no_mosquitto || !brokers_wanted {
        None
    } else {
        match procs::locate_mosquitto(!plan.smoke) {
            Ok(p) => Some(p),
            Err(e) if plan.smoke => {
                progress(&format!("mosquitto skipped: {e:#}"));
                None
            }
            Err(e) => return Err(e),
        }
    };
    let max_conn = plan.connections.iter().copied().max().unwrap_or(0) as u64;
    let fd_limit = procs::raise_open_files((max_conn + 2_000).max(4_096));

    let machine = machine(&iotmock_bin, mosquitto_bin.as_deref(), fd_limit);
    progress(&format!(
        "iotmock-bench{}: {} ({} cores), load {}",
        if plan.smoke { " --smoke" } else { "" },
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["load_at_start"].as_str().unwrap_or("?")
    ));
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    let mut tables = Vec::new();
    let mut raw = serde_json::Map::new();
    let mut errors = Vec::new();

    if wants("broker") || wants("latency") || wants("connections") {
        let result = runtime.block_on(brokers(
            &plan,
            &iotmock_bin,
            mosquitto_bin.as_deref(),
            &wants,
            &mut tables,
            &mut raw,
        ));
        if let Err(e) = result {
            errors.push(format!("brokers: {e:#}"));
        }
    }
    if wants("tls") {
        let tls_plan = if plan.smoke {
            tls::TlsPlan {
                handshake_time: Duration::from_secs(1),
                handshake_workers: 2,
                messages: 300,
                publishers: 1,
                idle_connections: 20,
            }
        } else {
            tls::TlsPlan {
                handshake_time: Duration::from_secs(10),
                handshake_workers: 8,
                messages: 50_000,
                publishers: 2,
                idle_connections: 1_000,
            }
        };
        match runtime.block_on(tls::run(&iotmock_bin, mosquitto_bin.as_deref(), &tls_plan)) {
            Ok((t, tls_raw)) => {
                tables.push(t);
                raw.insert("tls".into(), tls_raw);
            }
            Err(e) => errors.push(format!("tls: {e:#}")),
        }
    }
    if wants("platform") {
        match runtime.block_on(platform_part(&plan, &iotmock_bin, &mut raw)) {
            Ok(t) => tables.push(t),
            Err(e) => errors.push(format!("platform: {e:#}")),
        }
    }
    if wants("plugins") {
        match plugins_part(&plan, &iotmock_bin, &runtime, &mut raw) {
            Ok(t) => tables.push(t),
            Err(e) => errors.push(format!("plugins: {e:#}")),
        }
    }
    if wants("soak") {
        let duration = if plan.smoke {
            Duration::from_secs(10)
        } else {
            cli.soak_duration
        };
        match runtime.block_on(soak::run(&iotmock_bin, duration)) {
            Ok((t, soak_raw)) => {
                tables.push(t);
                raw.insert("soak".into(), soak_raw);
            }
            Err(e) => errors.push(format!("soak: {e:#}")),
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    for t in &tables {
        for r in &t.rows {
            if r.last().is_some_and(|s| s == "ERROR") {
                errors.push(format!("{}: {}", r[0], r[r.len() - 2]));
            }
        }
    }

    let mut machine = machine;
    machine["load_at_end"] = json!(loadavg());
    machine["duration_s"] = json!(started.elapsed().as_secs_f64());
    println!();
    println!(
        "iotmock-bench{} — {} cores, {}, kernel {}, load {} → {}, {:.0} s",
        if plan.smoke {
            " --smoke (tiny runs, numbers indicative only)"
        } else {
            ""
        },
        machine["cores"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
        machine["load_at_start"].as_str().unwrap_or("?"),
        machine["load_at_end"].as_str().unwrap_or("?"),
        started.elapsed().as_secs_f64()
    );
    println!();
    for t in &tables {
        println!("{}", t.render());
    }
    for e in &errors {
        println!("ERROR {e}");
    }
    if let Some(path) = &cli.json {
        let doc = json!({
            "bench": "iotmock-bench",
            "smoke": plan.smoke,
            "machine": machine,
            "tables": tables,
            "results": raw,
            "errors": errors,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        progress(&format!("JSON written to {}", path.display()));
    }
    Ok(errors.is_empty())
}

fn progress(msg: &str) {
    eprintln!("[bench] {msg}");
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine(iotmock: &std::path::Path, mosquitto: Option<&std::path::Path>, fd_limit: u64) -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.0} GiB", kib as f64 / 1048576.0));
    json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "kernel": kernel,
        "memory": mem,
        "load_at_start": loadavg(),
        "open_files_limit": fd_limit,
        "iotmock": iotmock.display().to_string(),
        "mosquitto": mosquitto.map(|m| json!({
            "path": m.display().to_string(),
            "version": procs::mosquitto_version(m),
        })),
    })
}

// ---------------------------------------------------------------------------
// Brokers: throughput, latency, connections, against both, alternating.

async fn brokers(
    plan: &Plan,
    iotmock_bin: &std::path::Path,
    mosquitto_bin: Option<&std::path::Path>,
    wants: &dyn Fn(&str) -> bool,
    tables: &mut Vec<Table>,
    raw: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<()> {
    let mut procs = vec![Proc::iotmock(iotmock_bin, &["--scenario", "none"])?];
    if let Some(m) = mosquitto_bin {
        procs.push(Proc::mosquitto(m)?);
    }
    let with_mosquitto = procs.len() > 1;

    if wants("broker") {
        let mut table = Table::new(
            "Broker throughput (N publishers -> M subscribers, loopback; best of reps; msg/CPU-s = deliveries per second of broker CPU over all reps)",
            &[
                "case",
                "iotmock recv/s",
                "mosquitto recv/s",
                "ratio",
                "iotmock msg/CPU-s",
                "mosquitto msg/CPU-s",
                "ratio",
                "sent/s i | m",
                "loss i | m",
                "broker CPU i | m",
                "RSS i | m",
                "status msg/s",
                "status msg/CPU-s",
            ],
        );
        let mut json_rows = Vec::new();
        let total = plan.cases.len();
        for (n, case) in plan.cases.iter().enumerate() {
            let mut runs: Vec<Vec<broker::Throughput>> = vec![Vec::new(); procs.len()];
            for rep in 0..plan.reps {
                // A B, then B A: neither broker always goes first.
                let order: Vec<usize> = if rep % 2 == 0 {
                    (0..procs.len()).collect()
                } else {
                    (0..procs.len()).rev().collect()
                };
                for i in order {
                    procs[i].check_alive()?;
                    let per = (plan.messages / case.publishers as u64).max(1);
                    let per = if case.qos == 0 { per } else { per / 4 };
                    let t = broker::throughput(&procs[i], *case, per, plan.run_limit).await?;
                    progress(&format!(
                        "broker {}/{total} {} rep {} {}: sent {} recv {} ({}/s), loss {:.1} %, broker CPU {:.0} %",
                        n + 1,
                        case.label(),
                        rep + 1,
                        procs[i].kind.name(),
                        t.sent,
                        t.received,
                        thousands(t.received_per_s),
                        t.loss * 100.0,
                        t.broker_cpu_share * 100.0
                    ));
                    runs[i].push(t);
                }
            }
            let best = |rs: &[broker::Throughput]| {
                rs.iter()
                    .max_by(|a, b| a.received_per_s.total_cmp(&b.received_per_s))
                    .cloned()
            };
            let per_cpu = |rs: &[broker::Throughput]| {
                let cpu: f64 = rs.iter().map(|r| r.broker_cpu_s).sum();
                let got: u64 = rs.iter().map(|r| r.received).sum();
                if cpu > 0.0 {
                    got as f64 / cpu
                } else {
                    f64::NAN
                }
            };
            let worst_loss =
                |rs: &[broker::Throughput]| rs.iter().map(|r| r.loss).fold(0.0, f64::max);
            let i = best(&runs[0]).context("no iotmock run")?;
            let i_cpu = per_cpu(&runs[0]);
            let m = runs.get(1).and_then(|r| best(r));
            let m_cpu = runs.get(1).map_or(f64::NAN, |r| per_cpu(r));
            let (r_tp, r_tp_s) = ratio(
                i.received_per_s,
                m.as_ref().map_or(f64::NAN, |m| m.received_per_s),
            );
            let (r_cpu, r_cpu_s) = ratio(i_cpu, m_cpu);
            let pair = |a: String, b: Option<String>| match b {
                Some(b) => format!("{a} | {b}"),
                None => a,
            };
            table.row(vec![
                case.label(),
                thousands(i.received_per_s),
                m.as_ref()
                    .map_or("-".into(), |m| thousands(m.received_per_s)),
                r_tp_s,
                thousands(i_cpu),
                if with_mosquitto {
                    thousands(m_cpu)
                } else {
                    "-".into()
                },
                r_cpu_s,
                pair(
                    thousands(i.sent_per_s),
                    m.as_ref().map(|m| thousands(m.sent_per_s)),
                ),
                pair(
                    format!("{:.1} %", worst_loss(&runs[0]) * 100.0),
                    runs.get(1)
                        .map(|r| format!("{:.1} %", worst_loss(r) * 100.0)),
                ),
                pair(
                    format!("{:.0} %", i.broker_cpu_share * 100.0),
                    m.as_ref()
                        .map(|m| format!("{:.0} %", m.broker_cpu_share * 100.0)),
                ),
                pair(
                    mib(i.broker_rss_bytes),
                    m.as_ref().map(|m| mib(m.broker_rss_bytes)),
                ),
                if r_tp.is_nan() {
                    "-".into()
                } else {
                    status(r_tp >= 1.0)
                },
                if r_cpu.is_nan() {
                    "-".into()
                } else {
                    status(r_cpu >= 1.0)
                },
            ]);
            json_rows.push(json!({
                "case": case,
                "iotmock": runs[0],
                "mosquitto": runs.get(1),
                "iotmock_per_broker_cpu_s": i_cpu,
                "mosquitto_per_broker_cpu_s": m_cpu,
                "ratio_received_per_s": r_tp,
                "ratio_per_broker_cpu_s": r_cpu,
            }));
        }
        table.notes.push(
            "target: ratio >= 1.00, in received msg/s and in deliveries per broker CPU-second (the figure that holds still when other work shares the cores). Loss: deliveries missing 1 s after the last one, or 2 s after the run's time limit (a broker drops QoS 0 under overload, and mosquitto drops QoS 1/2 beyond max_queued_messages)".into(),
        );
        table.notes.push(format!(
            "{} reps per broker and case, alternating; each run bounded to {} messages per publisher (QoS 1/2: a quarter) and {:?}",
            plan.reps, plan.messages, plan.run_limit
        ));
        tables.push(table);
        raw.insert("throughput".into(), Value::Array(json_rows));
    }

    if wants("latency") {
        let mut table = Table::new(
            &format!(
                "Broker latency at {} msg/s per broker ({LATENCY_RATE_NOTE}, {} runs of {:?}, the brokers interleaved message by message)",
                plan.latency_rate, plan.latency_chunks, plan.latency_time
            ),
            &[
                "QoS",
                "iotmock p50",
                "iotmock p99",
                "mosquitto p50",
                "mosquitto p99",
                "p99 ratio",
                "received i | m",
                "broker CPU i | m",
                "status",
            ],
        );
        let mut json_rows = Vec::new();
        for q in [0u8, 1, 2] {
            // Short runs, every broker in each, interleaved message by
            // message and leading in turn, so that a burst of load from
            // elsewhere on the machine falls on all of them.
            let mut runs: Vec<Vec<broker::LatencyRun>> = procs.iter().map(|_| Vec::new()).collect();
            for chunk in 0..plan.latency_chunks {
                for p in procs.iter_mut() {
                    p.check_alive()?;
                }
                let brokers: Vec<&Proc> = procs.iter().collect();
                let chunk_runs =
                    broker::latency(&brokers, chunk, q, plan.latency_rate, plan.latency_time)
                        .await?;
                for (i, run) in chunk_runs.into_iter().enumerate() {
                    runs[i].push(run);
                }
            }
            let results: Vec<broker::Latency> = runs
                .iter()
                .map(|r| broker::Latency::of(plan.latency_rate, r))
                .collect();
            for (p, l) in procs.iter().zip(&results) {
                progress(&format!(
                    "latency QoS {q} {}: p50 {:.0} µs p99 {:.0} µs ({} of {})",
                    p.kind.name(),
                    l.p50_us,
                    l.p99_us,
                    l.received,
                    l.sent
                ));
            }
            let i = &results[0];
            let m = results.get(1);
            let (r, r_s) = ratio(i.p99_us, m.map_or(f64::NAN, |m| m.p99_us));
            let us = |x: f64| ms(x / 1000.0);
            table.row(vec![
                q.to_string(),
                us(i.p50_us),
                us(i.p99_us),
                m.map_or("-".into(), |m| us(m.p50_us)),
                m.map_or("-".into(), |m| us(m.p99_us)),
                r_s,
                match m {
                    Some(m) => format!("{}/{} | {}/{}", i.received, i.sent, m.received, m.sent),
                    None => format!("{}/{}", i.received, i.sent),
                },
                match m {
                    Some(m) => format!(
                        "{:.1} % | {:.1} %",
                        i.broker_cpu_share * 100.0,
                        m.broker_cpu_share * 100.0
                    ),
                    None => format!("{:.1} %", i.broker_cpu_share * 100.0),
                },
                if r.is_nan() {
                    "-".into()
                } else {
                    status(r <= 1.0)
                },
            ]);
            json_rows.push(json!({"qos": q, "iotmock": results[0], "mosquitto": results.get(1), "p99_ratio": r}));
        }
        table
            .notes
            .push("target: p99 ratio <= 1.00 (the time from publish call to delivery, both clients in this process)".into());
        tables.push(table);
        raw.insert("latency".into(), Value::Array(json_rows));
    }

    if wants("connections") {
        let mut table = Table::new(
            "Concurrent MQTT connections (fresh broker processes; raw MQTT 3.1.1 CONNECT, each checked with PINGREQ once all are open)",
            &[
                "broker",
                "connections",
                "held",
                "time to open",
                "RSS idle",
                "RSS added",
                "bytes/connection",
                "fds/connection",
                "status",
            ],
        );
        let mut json_rows = Vec::new();
        for &n in &plan.connections {
            // A fresh process per measurement: one that has carried
            // traffic reuses the memory its allocator kept, and the
            // connections would look free.
            let mut fresh = vec![Proc::iotmock(iotmock_bin, &["--scenario", "none"])?];
            if let Some(m) = mosquitto_bin {
                fresh.push(Proc::mosquitto(m)?);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            for p in fresh.iter_mut() {
                p.check_alive()?;
                progress(&format!("connections: {n} to {}...", p.kind.name()));
                let c = broker::connections(p, n).await;
                progress(&format!(
                    "connections: {} held {}/{n}, {:.0} B each",
                    p.kind.name(),
                    c.held,
                    c.bytes_per_connection
                ));
                table.row(vec![
                    p.kind.name().into(),
                    thousands(n as f64),
                    thousands(c.held as f64),
                    format!("{:.2} s", c.connect_s),
                    mib(c.rss_before_bytes),
                    mib(c.rss_after_bytes.saturating_sub(c.rss_before_bytes)),
                    thousands(c.bytes_per_connection),
                    format!("{:.2}", c.fds_per_connection),
                    status(c.held == n),
                ]);
                if let Some(e) = &c.error {
                    table.notes.push(format!("{} at {n}: {e}", p.kind.name()));
                }
                json_rows.push(json!({"broker": p.kind.name(), "result": c}));
            }
        }
        table.notes.push(format!(
            "target: every connection held; this process's open-files limit {}",
            thousands(procs::open_files_limit().unwrap_or(0) as f64)
        ));
        tables.push(table);
        raw.insert("connections".into(), Value::Array(json_rows));
    }
    for p in &procs {
        if p.kind == Kind::Mosquitto {
            raw.insert("mosquitto_final_rss_bytes".into(), json!(p.rss()));
        }
    }
    drop(procs);
    Ok(())
}

// ---------------------------------------------------------------------------
// The seed's five, through the public interface of a spawned server.

async fn platform_part(
    plan: &Plan,
    bin: &std::path::Path,
    raw: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<Table> {
    let mut table = Table::new(
        "The seed's five (a spawned `iotmock serve`, through its REST API and MQTT)",
        &["measure", "seed target", "our target", "measured", "status"],
    );

    // 1 and 5: a growing fleet at one reading per second each.
    progress("platform: simulated fleet...");
    let fleet = {
        let p = Proc::iotmock(bin, &["--scenario", "none"])?;
        platform::fleet(&p, &plan.fleet_sizes, 1_000, plan.fleet_window, &|m| {
            progress(&format!("platform: {m}"))
        })
        .await?
    };
    for f in &fleet {
        progress(&format!(
            "platform: {} devices: heard {}, {} readings/s, server CPU {:.1} %, {:.5} % per device",
            f.devices,
            f.devices_heard,
            thousands(f.received_per_s),
            f.server_cpu_share * 100.0,
            f.cpu_percent_per_device
        ));
    }
    let largest = fleet.last().context("no fleet size measured")?;
    table.row(vec![
        "devices simulated concurrently (1 reading/s each, all heard on MQTT)".into(),
        format!(">= {}", thousands(SEED_DEVICES as f64)),
        format!(">= {}", thousands(OUR_DEVICES as f64)),
        format!(
            "{} of {} heard in {:.0} s",
            thousands(largest.devices_heard as f64),
            thousands(largest.devices as f64),
            largest.window_s
        ),
        status(
            largest.devices_heard >= OUR_DEVICES.min(largest.devices) && !plan.smoke
                || plan.smoke && largest.devices_heard == largest.devices,
        ),
    ]);

    // 2: end to end messages per second.
    progress("platform: telemetry end to end...");
    let e2e = {
        let p = Proc::iotmock(bin, &["--scenario", "none"])?;
        platform::fleet(
            &p,
            &[plan.e2e_devices],
            plan.e2e_interval_ms,
            plan.fleet_window,
            &|m| progress(&format!("platform: {m}")),
        )
        .await?
        .pop()
        .context("no end-to-end measurement")?
    };
    let offered = e2e.devices as f64 * 1000.0 / e2e.interval_ms as f64;
    table.row(vec![
        "MQTT messages/s end to end (sensor plugin -> broker -> subscriber)".into(),
        format!(">= {}/s", thousands(SEED_E2E)),
        format!(">= {}/s", thousands(OUR_E2E)),
        format!(
            "{}/s (offered {}/s, server CPU {:.0} %)",
            thousands(e2e.received_per_s),
            thousands(offered),
            e2e.server_cpu_share * 100.0
        ),
        status(e2e.received_per_s >= OUR_E2E),
    ]);

    // 3: command acknowledgements.
    progress("platform: commands...");
    let p = Proc::iotmock(bin, &["--scenario", "none"])?;
    let mut command_json = Vec::new();
    for (label, outcome) in [
        (
            "command ack latency, simulated device (thermostat handler)",
            platform::commands_simulated(&p, "thermostat", plan.commands).await,
        ),
        (
            "command ack latency, real device over MQTT",
            platform::commands_real(&p, plan.commands).await,
        ),
    ] {
        let measured = match outcome {
            Ok(Outcome::Measured(c)) => {
                progress(&format!(
                    "platform: {label}: p50 {} p99 {} ({:?})",
                    ms(c.latency.p50_ms),
                    ms(c.latency.p99_ms),
                    c.statuses
                ));
                let row = (
                    format!(
                        "p50 {}, p99 {} (n={}, {})",
                        ms(c.latency.p50_ms),
                        ms(c.latency.p99_ms),
                        c.latency.n,
                        c.statuses
                            .iter()
                            .map(|(s, n)| format!("{s} {n}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    status(c.latency.p99_ms < OUR_COMMAND_MS),
                );
                command_json.push(json!({"label": label, "result": c}));
                row
            }
            Ok(Outcome::Unavailable(why)) => {
                command_json.push(json!({"label": label, "unavailable": why}));
                (format!("{NOT_AVAILABLE} ({why})"), "n/a".into())
            }
            Err(e) => {
                command_json.push(json!({"label": label, "error": format!("{e:#}")}));
                (format!("ERROR: {e:#}"), "ERROR".into())
            }
        };
        table.row(vec![
            label.into(),
            format!("< {}", ms(SEED_COMMAND_MS)),
            format!("p99 < {}", ms(OUR_COMMAND_MS)),
            measured.0,
            measured.1,
        ]);
    }
    drop(p);

    // 4: edge processing.
    progress("platform: edge node...");
    let edge_json = {
        let dir = tempfile::tempdir()?;
        let rule = dir.path().join("bench-edge-pass.wasm");
        let fixture =
            std::path::Path::new(iotmock::bench::TEST_PLUGINS_DIR).join("test_edge_pass.wasm");
        std::fs::copy(&fixture, &rule).with_context(|| format!("copying {}", fixture.display()))?;
        let p = Proc::iotmock(
            bin,
            &[
                "--scenario",
                "none",
                "--plugins",
                dir.path().to_str().context("UTF-8 path")?,
            ],
        )?;
        let outcome =
            platform::edge(&p, "bench-edge-pass", plan.edge_devices, plan.edge_window).await;
        let (measured, st, j) = match outcome {
            Ok(Outcome::Measured(e)) => (
                format!(
                    "p50 {}, p99 {} ({} devices, 10 readings/s each)",
                    ms(e.p50_ms),
                    ms(e.p99_ms),
                    e.devices
                ),
                status(e.p99_ms < OUR_EDGE_MS),
                json!(e),
            ),
            Ok(Outcome::Unavailable(why)) => (
                format!("{NOT_AVAILABLE} ({why})"),
                "n/a".into(),
                json!({"unavailable": why}),
            ),
            Err(e) => (
                format!("ERROR: {e:#}"),
                "ERROR".into(),
                json!({"error": format!("{e:#}")}),
            ),
        };
        table.row(vec![
            "edge processing latency (pass-through rule)".into(),
            format!("< {}", ms(SEED_EDGE_MS)),
            format!("p99 < {}", ms(OUR_EDGE_MS)),
            measured,
            st,
        ]);
        j
    };

    // 5: CPU per device.
    for f in &fleet {
        table.row(vec![
            format!(
                "telemetry CPU per device ({} devices, 1 reading/s each)",
                thousands(f.devices as f64)
            ),
            format!("< {SEED_CPU_PCT} %"),
            format!("< {OUR_CPU_PCT} %"),
            format!(
                "{:.5} % ({:.1} µs per reading, server CPU {:.1} %)",
                f.cpu_percent_per_device,
                f.cpu_us_per_reading,
                f.server_cpu_share * 100.0
            ),
            status(f.cpu_percent_per_device < OUR_CPU_PCT),
        ]);
    }
    table.notes.push(format!(
        "CPU is the server process's CPU time over the window (/proc/PID), a subscriber in this harness taking every reading; the same server idle with no devices: {:.2} % of a core",
        fleet.first().map_or(f64::NAN, |f| f.idle_cpu_share * 100.0)
    ));
    table.notes.push(
        "command latency: from sending POST /devices/{id}/commands to the answer of GET /commands/{id}?wait_ms= with a final status".into(),
    );
    raw.insert(
        "platform".into(),
        json!({"fleet": fleet, "end_to_end": e2e, "commands": command_json, "edge": edge_json}),
    );
    Ok(table)
}

// ---------------------------------------------------------------------------
// Plugins.

fn plugins_part(
    plan: &Plan,
    bin: &std::path::Path,
    runtime: &tokio::runtime::Runtime,
    raw: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<Table> {
    let mut table = Table::new("Plugins", &["measure", "target", "measured", "status"]);
    progress("plugins: sensor samples per core...");
    let time = plan.sample_time;
    let sampling = std::thread::spawn(move || sampling::sampling(1024, time))
        .join()
        .map_err(|_| anyhow::anyhow!("the sampling thread panicked"))??;
    table.row(vec![
        "WASM sensor samples per core (temperature, 1,024 per call, 1 worker): per CPU-second of the caller and worker".into(),
        format!(">= {}/s", thousands(OUR_SAMPLES)),
        format!(
            "{}/CPU-s ({}/s wall clock, {:.2} cores busy)",
            thousands(sampling.readings_per_cpu_s),
            thousands(sampling.readings_per_s),
            sampling.cpu_s / sampling.wall_s
        ),
        status(sampling.readings_per_cpu_s >= OUR_SAMPLES),
    ]);
    progress("plugins: edge-rule calls...");
    let edge = std::thread::spawn(move || sampling::edge_calls(time))
        .join()
        .map_err(|_| anyhow::anyhow!("the edge-rule thread panicked"))??;
    table.row(vec![
        format!(
            "edge-rule calls/s ({}, {} readings per call, 1 worker)",
            edge.rule, edge.per_call
        ),
        "-".into(),
        format!(
            "{}/s wall clock, {}/CPU-s ({} readings/s)",
            thousands(edge.calls_per_s),
            thousands(edge.calls_per_cpu_s),
            thousands(edge.calls_per_s * edge.per_call as f64)
        ),
        "n/a".into(),
    ]);
    progress("plugins: dialect encode costs...");
    let costs = std::thread::spawn(move || sampling::encode_costs(time))
        .join()
        .map_err(|_| anyhow::anyhow!("the encode thread panicked"))??;
    let native_ns = costs.first().map_or(f64::NAN, |c| c.cpu_ns_per_reading);
    for c in &costs {
        let over = c.cpu_ns_per_reading - native_ns;
        let builtin = c.dialect == "iotmock (built-in)";
        table.row(vec![
            format!(
                "dialect encode, CPU per reading: {} ({} devices per call, 1 worker; no publishing)",
                if builtin {
                    c.dialect.clone()
                } else {
                    format!("codec plugin `{}`", c.dialect)
                },
                sampling::ENCODE_BATCH
            ),
            if builtin {
                "-".into()
            } else {
                format!("<= {} ns over built-in", OUR_DIALECT_OVERHEAD_NS)
            },
            format!(
                "{:.0} ns/reading ({}), {:.0} bytes/reading",
                c.cpu_ns_per_reading,
                if builtin {
                    "the reference".to_string()
                } else {
                    format!("{over:+.0} ns")
                },
                c.bytes_per_reading
            ),
            if builtin {
                "n/a".into()
            } else {
                status(over <= OUR_DIALECT_OVERHEAD_NS)
            },
        ]);
    }
    progress("plugins: hot reload...");
    let reload = runtime.block_on(platform::hot_reload(bin, plan.reloads));
    let reload_json = match &reload {
        Ok(r) => {
            table.row(vec![
                "hot reload, file written -> new readings on MQTT (spawned server, reading every 5 ms)".into(),
                format!("< {} (max)", ms(OUR_RELOAD_MS)),
                format!(
                    "p50 {}, max {} (n={})",
                    ms(r.latency.p50_ms),
                    ms(r.latency.max_ms),
                    r.latency.n
                ),
                status(r.latency.max_ms < OUR_RELOAD_MS),
            ]);
            json!(r)
        }
        Err(e) => {
            table.row(vec![
                "hot reload".into(),
                format!("< {} (max)", ms(OUR_RELOAD_MS)),
                format!("ERROR: {e:#}"),
                "ERROR".into(),
            ]);
            json!({"error": format!("{e:#}")})
        }
    };
    raw.insert(
        "plugins".into(),
        json!({"sampling": sampling, "edge_rule_calls": edge, "dialect_encode": costs, "hot_reload": reload_json}),
    );
    Ok(table)
}
