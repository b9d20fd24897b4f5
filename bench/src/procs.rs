//! The brokers under test as child processes: a release `iotmock serve` and
//! Debian's `mosquitto`, each on a free loopback port; what /proc says
//! about them (CPU time, resident memory); the open-files limit.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::Value;

/// Which broker a measurement ran against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Iotmock,
    Mosquitto,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Iotmock => "iotmock",
            Kind::Mosquitto => "mosquitto",
        }
    }
}

/// A running broker process, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub kind: Kind,
    pub mqtt: SocketAddr,
    /// The REST API (iotmock only).
    pub http: Option<SocketAddr>,
    /// The ready line (iotmock only).
    ready: Option<Value>,
    child: Child,
    /// The last lines of stderr, for error messages.
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time used so far by the process; subtract two with
    /// [`CpuSample::since`].
    pub fn cpu(&self) -> CpuSample {
        CpuSample {
            precise: sched_time(self.pid()).unwrap_or_default(),
            ticks: cpu_time(self.pid()).unwrap_or_default(),
        }
    }

    /// Resident memory now, bytes.
    pub fn rss(&self) -> u64 {
        rss_bytes(self.pid()).unwrap_or(0)
    }

    /// Whether it still runs; an error with its last words if not.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); stderr ends with:\n{}",
                self.kind.name(),
                self.stderr.lock().unwrap().join("\n")
            );
        }
        Ok(())
    }

    /// Starts `iotmock serve --scenario none` on free ports (plus `extra`
    /// flags) and waits for its ready line.
    pub fn iotmock(binary: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(binary)
            .args(["serve", "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let stderr = tail_stderr(&mut child);
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let ready = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&line)
                        && v["event"] == "ready"
                    {
                        break v;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "no ready line from {} within 20 s; stderr:\n{}",
                        binary.display(),
                        stderr.lock().unwrap().join("\n")
                    );
                }
            }
        };
        let addr = |key: &str| -> anyhow::Result<SocketAddr> {
            ready[key]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("ready line without `{key}`: {ready}"))
        };
        Ok(Self {
            kind: Kind::Iotmock,
            mqtt: addr("mqtt")?,
            http: Some(addr("http")?),
            ready: Some(ready.clone()),
            child,
            stderr,
            _dir: dir,
        })
    }

    /// An address the ready line names (`mqtts`, ...).
    pub fn ready_addr(&self, key: &str) -> anyhow::Result<SocketAddr> {
        self.ready
            .as_ref()
            .and_then(|r| r[key].as_str())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("{} names no `{key}` address", self.kind.name()))
    }

    /// Starts mosquitto on a free port with a generated configuration and
    /// waits until the port accepts connections.
    pub fn mosquitto(binary: &Path) -> anyhow::Result<Self> {
        Self::mosquitto_with(binary, "")
    }

    /// [`Proc::mosquitto`] with more lines for its listener (TLS files).
    pub fn mosquitto_with(binary: &Path, listener: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = dir.path().join("mosquitto.conf");
        // The limits mirror iotmock's (README, "Limits"), so that both
        // brokers queue and keep in flight the same amounts; both send
        // without Nagle's delay (iotmock sets TCP_NODELAY on every
        // connection), so latencies compare fairly.
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\n\
                 {listener}\
                 allow_anonymous true\n\
                 persistence false\n\
                 max_inflight_messages 64\n\
                 max_queued_messages 10000\n\
                 max_connections -1\n\
                 set_tcp_nodelay true\n\
                 log_dest stderr\n\
                 log_type error\n"
            ),
        )?;
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let stderr = tail_stderr(&mut child);
        let mqtt: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&mqtt, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline || child.try_wait()?.is_some() {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "mosquitto did not listen on {mqtt}; stderr:\n{}",
                    stderr.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            kind: Kind::Mosquitto,
            mqtt,
            http: None,
            ready: None,
            child,
            stderr,
            _dir: dir,
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Our own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail_stderr(child: &mut Child) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let t = tail.clone();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        let mut tail = t.lock().unwrap();
        tail.extend(text.lines().rev().take(20).map(String::from));
        tail.reverse();
    });
    tail
}

/// A process's CPU time, two ways: the live threads' scheduler times (ns
/// resolution, but a thread that exits takes its time with it) and
/// /proc/PID/stat (every thread ever, in 10 ms ticks).
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    precise: Duration,
    ticks: Duration,
}

impl CpuSample {
    /// CPU time between `earlier` and this sample: the precise figure,
    /// unless the tick count says more was used (threads that exited).
    pub fn since(&self, earlier: &CpuSample) -> Duration {
        let precise = self.precise.saturating_sub(earlier.precise);
        let ticks = self.ticks.saturating_sub(earlier.ticks);
        if ticks > precise + Duration::from_millis(20) {
            ticks
        } else {
            precise
        }
    }
}

/// The sum of the scheduler times (/proc/PID/task/*/schedstat) of a
/// process's live threads.
pub fn sched_time(pid: u32) -> Option<Duration> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        // A thread may exit between listing and reading.
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(Duration::from_nanos(ns))
}

/// CPU time of a process, all threads: user + system from /proc/PID/stat
/// (includes threads that have exited; 10 ms ticks).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (in parentheses, may hold spaces):
    // utime is field 14, stime 15, in clock ticks.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// VmRSS of a process, bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// How many file descriptors a process has open.
pub fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// The soft limit on open files of this process.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

/// Raises this process's open-files limit to at least `want` (children
/// started afterwards inherit it), with `prlimit`; returns the limit now.
pub fn raise_open_files(want: u64) -> u64 {
    let now = open_files_limit().unwrap_or(1024);
    if now >= want {
        return now;
    }
    let pid = std::process::id().to_string();
    let _ = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={want}:{want}")])
        .stderr(Stdio::null())
        .status();
    if open_files_limit().unwrap_or(0) < want {
        // Not allowed to raise the hard limit: take the soft one up to it.
        let _ = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={want}:")])
            .stderr(Stdio::null())
            .status();
    }
    open_files_limit().unwrap_or(now)
}

/// The release `iotmock` binary: `--iotmock PATH`, else `IOTMOCK_BIN`, else
/// the one next to this binary.
pub fn locate_iotmock(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("IOTMOCK_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let sibling = exe.with_file_name(format!("iotmock{}", std::env::consts::EXE_SUFFIX));
    if sibling.is_file() {
        return Ok(sibling);
    }
    bail!(
        "no iotmock binary next to {} : run `cargo build --release --workspace` or pass --iotmock PATH",
        exe.display()
    )
}

/// The mosquitto broker binary, installing Debian's package with apt-get
/// when `install` is set and it is missing.
pub fn locate_mosquitto(install: bool) -> anyhow::Result<PathBuf> {
    let find = || {
        [
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    if !install {
        bail!("mosquitto is not installed (apt-get install mosquitto)");
    }
    eprintln!("installing mosquitto with apt-get...");
    let ok = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto",
        ])
        .status()
        .is_ok_and(|s| s.success());
    match find() {
        Some(p) if ok => Ok(p),
        _ => bail!("mosquitto is missing and `apt-get install mosquitto` failed"),
    }
}

/// mosquitto's version, from `mosquitto -h`.
pub fn mosquitto_version(binary: &Path) -> Option<String> {
    let out = Command::new(binary).arg("-h").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.contains("version"))
        .and_then(|l| l.split("version").nth(1))
        .map(|v| v.trim().to_string())
}
