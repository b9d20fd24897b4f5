//! The `iotmock` command: flags in, library call, exit code out.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use iotmock::{
    AdminToken, ClockMode, Config, HttpLimits, MqttAuth, ScenarioChoice, Server, TelemetryLimits,
    TlsSettings,
};

#[derive(Parser)]
#[command(
    name = "iotmock",
    version,
    about = "A mock IoT platform: MQTT broker, REST API, simulated fleet, WASM plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the broker, the API and the simulation.
    #[command(after_long_help = SERVE_HELP)]
    Serve(Box<ServeArgs>),
    /// Print the built-in demo scenario (a starting point for your own).
    Scenario,
    /// Plugins of your own.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Create a plugin crate of its own, outside this checkout, on the
    /// iotmock plugin SDK: a small working model that builds with
    /// `cargo build --release --target wasm32-wasip2`.
    New(NewPluginArgs),
}

#[derive(clap::Args)]
struct NewPluginArgs {
    /// The plugin's name: its folder, its crate, and the name the server
    /// knows it by (NAME.wasm in the --plugins folder).
    name: String,
    /// The WIT world the plugin implements.
    #[arg(long, value_enum)]
    world: WorldArg,
    /// Folder to create the crate's folder in.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// The SDK crate to depend on (the plugins/sdk folder of an iotmock
    /// checkout); default: the checkout this binary was built from.
    #[arg(long, default_value = iotmock::PLUGIN_SDK_DIR)]
    sdk: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WorldArg {
    Sensor,
    CommandHandler,
    EdgeRule,
}

/// The part of `serve --help` that is not about one flag.
const SERVE_HELP: &str = "\
Addresses (--http, --mqtt, --mock-http, and the TLS and WebSocket ones):
IP:PORT (127.0.0.1:8080, [::1]:8080), HOST:PORT (localhost:8080), or a bare
PORT, which means 127.0.0.1:PORT. Port 0 picks a free port.

When every listener is up, one JSON line goes to stdout:
  {\"event\":\"ready\",\"http\":\"127.0.0.1:8080\",\"mqtt\":\"127.0.0.1:1883\"}
(with \"mock_http\", \"mqtts\", \"ws\", \"wss\", \"https\", \"mock_https\" when
those listeners are given, and \"mqtt_admin\" with --mqtt-auth devices or
certificates). Wait for it before connecting. Logs go to stderr.

TLS: the built-in CA (kept in --data-dir/tls, else made for the run) signs
the server certificate (localhost, 127.0.0.1, ::1 and --tls-name names) and
device certificates (POST /api/v1/devices/{id}/certificates); fetch it at
GET /api/v1/ca.pem. --tls-cert/--tls-key serve your own certificate instead.
SIGINT (Ctrl-C) or SIGTERM shuts down cleanly.

Environment:
  RUST_LOG                 log filter (default info), e.g. RUST_LOG=debug
  IOTMOCK_CACHE_DIR        where compiled plugins are cached (default: wasmtime's,
                           ~/.cache/wasmtime); empty turns the cache off
  IOTMOCK_ADMIN_PASSWORD   same as --admin-password

Exit codes:
  0  stopped by SIGINT or SIGTERM
  1  could not start (a port in use, a bad scenario, a data directory that
     cannot be written), or failed while running; stderr says why
  2  bad command line (an unknown flag, a value that does not parse)";

#[derive(clap::Args)]
struct ServeArgs {
    /// HTTP API address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = parse_listen_addr)]
    http: SocketAddr,
    /// MQTT broker address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:1883", value_parser = parse_listen_addr)]
    mqtt: SocketAddr,
    /// Folder of *.wasm plugins, watched and hot-reloaded.
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// Folder for durable state; without it state lives in memory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Scenario TOML file; without it the built-in demo runs; `none` starts empty.
    #[arg(long)]
    scenario: Option<String>,
    /// Seed of every random stream (default: the scenario's, else 0).
    #[arg(long)]
    seed: Option<u64>,
    /// realtime, manual, or xN (N times faster than real time).
    #[arg(long, default_value = "realtime")]
    clock: ClockMode,
    /// Where simulated time starts, RFC 3339 (e.g. 2026-06-01T09:00:00Z);
    /// overrides the scenario's start_time. Default: 2026-01-01T00:00:00Z
    /// with --clock manual, the wall clock's now otherwise.
    #[arg(long, value_name = "RFC3339", value_parser = parse_start_time)]
    start_time: Option<i64>,
    /// Recent MQTT messages kept for GET /api/v1/mqtt/messages and verify;
    /// older ones are evicted and counted.
    #[arg(long, default_value_t = Config::ephemeral().journal_capacity)]
    journal_capacity: usize,
    /// Bytes of recent MQTT messages kept (payloads, topics, bookkeeping):
    /// `128MiB`, `512KiB`, `1GiB` or plain bytes; older ones are evicted and
    /// counted, and a message larger than this is not kept.
    #[arg(long, default_value = "128MiB", value_parser = parse_bytes)]
    journal_max_bytes: usize,
    /// The largest MQTT packet a client may send (advertised in CONNACK as
    /// Maximum Packet Size): a larger one closes its connection (MQTT 5:
    /// DISCONNECT 0x95) and is counted. 1KiB up to 256MiB less one byte,
    /// the MQTT maximum.
    #[arg(long, default_value = "16MiB", value_parser = parse_max_packet_size)]
    mqtt_max_packet_size: usize,
    /// QoS 1/2 messages queued per MQTT session while its client is away
    /// or behind; past it the oldest is dropped and counted.
    #[arg(long, default_value_t = Config::ephemeral().mqtt_max_queued)]
    mqtt_max_queued: usize,
    /// Bytes queued per MQTT session, with the same policy.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    mqtt_max_queued_bytes: usize,
    /// The longest Keep Alive a client may use, in seconds (1-65535): an
    /// MQTT 5 client asking for more, or for none, is told this one
    /// (Server Keep Alive in CONNACK) and held to it; an MQTT 3.1.1
    /// client, which cannot be told, is refused (CONNACK 2). Default: any.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u16).range(1..))]
    mqtt_max_keep_alive: Option<u16>,
    /// Topic aliases the broker sets on the PUBLISHes it sends each MQTT 5
    /// client, up to the Topic Alias Maximum the client allows: the first
    /// on a topic carries it with an alias, the next only the alias; the
    /// least recently used alias goes to a new topic. 0: none.
    #[arg(long, value_name = "N", default_value_t = 0)]
    mqtt_server_topic_aliases: u16,
    /// MQTT admission: `open` (anyone, any topic), `devices` (device
    /// credentials or a device certificate over TLS; back ends use the
    /// admin user) or `certificates` (devices only with a certificate).
    #[arg(long, default_value = "open", value_parser = ["open", "devices", "certificates"])]
    mqtt_auth: String,
    /// MQTT over TLS (client certificates optional; see --mqtt-auth).
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    mqtts: Option<SocketAddr>,
    /// MQTT over WebSocket (path /mqtt, subprotocol mqtt).
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    ws: Option<SocketAddr>,
    /// MQTT over WebSocket over TLS (path /mqtt, subprotocol mqtt).
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    wss: Option<SocketAddr>,
    /// The API and the HTTP device API over TLS (devices may present their
    /// certificate instead of a password).
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    https: Option<SocketAddr>,
    /// Stubs on their real paths over TLS, like --mock-http.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    mock_https: Option<SocketAddr>,
    /// Another DNS name or IP address for the built-in server certificate
    /// (repeat it, or separate with commas); localhost, 127.0.0.1 and ::1
    /// are always covered.
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    tls_name: Vec<String>,
    /// A PEM certificate chain to serve instead of the built-in one.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificates whose client certificates are accepted too
    /// (device certificates you issue yourself: subject CN = device id).
    #[arg(long, value_name = "PATH")]
    tls_client_ca: Option<PathBuf>,
    /// Password of the MQTT `admin` user with --mqtt-auth devices (default:
    /// a random one, printed in the ready line). Prefer the environment or
    /// --admin-password-file: arguments show in `ps`.
    #[arg(long, env = "IOTMOCK_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// A file holding the MQTT `admin` password (its first line).
    #[arg(long, value_name = "PATH", conflicts_with = "admin_password")]
    admin_password_file: Option<PathBuf>,
    /// Require `Authorization: Bearer TOKEN` on /api/v1 (all but /health and
    /// the device API). Prefer the environment or --admin-token-file:
    /// arguments show in `ps`.
    #[arg(long, env = "IOTMOCK_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// A file holding the admin token (its first line).
    #[arg(long, value_name = "PATH", conflicts_with = "admin_token")]
    admin_token_file: Option<PathBuf>,
    /// Serve the API on a non-loopback --http address without an admin
    /// token (anyone who can reach it controls the server).
    #[arg(long)]
    insecure_admin: bool,
    /// The longest span one POST /clock/advance may move: `1d`, `6h`,
    /// `90m`, `30s`, `500ms` or plain milliseconds.
    #[arg(long, default_value = "1d", value_parser = parse_duration_ms)]
    max_advance: i64,
    /// Time a client has to send a request's headers (from the connection's
    /// start, or from the first byte of a later request).
    #[arg(long, default_value = "10s", value_parser = parse_duration_ms)]
    http_header_timeout: i64,
    /// Time a client has to send a request's body, after its headers.
    #[arg(long, default_value = "30s", value_parser = parse_duration_ms)]
    http_body_timeout: i64,
    /// A kept-alive HTTP connection with no request under way for this long
    /// is closed.
    #[arg(long, default_value = "60s", value_parser = parse_duration_ms)]
    http_idle_timeout: i64,
    /// Connections each HTTP listener (the API, --mock-http) keeps open at
    /// once; one more is answered 503 and closed.
    #[arg(long, default_value_t = Config::ephemeral().http_limits.max_connections)]
    http_max_connections: usize,
    /// A second HTTP listener where stubs answer on their real paths (no
    /// /mock prefix), for firmware with fixed URLs.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    mock_http: Option<SocketAddr>,
    /// Recent HTTP requests (stubs and device API) kept for
    /// GET /api/v1/http/requests and verify; older ones are evicted and counted.
    #[arg(long, default_value_t = Config::ephemeral().http_journal_capacity)]
    http_journal_capacity: usize,
    /// Bytes of recent HTTP requests kept; older ones are evicted and
    /// counted.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    http_journal_max_bytes: usize,
    /// Largest response a stub may render (body and headers); a request
    /// whose response would be larger is answered 413 without rendering.
    #[arg(long, default_value = "8MiB", value_parser = parse_bytes)]
    max_stub_response_bytes: usize,
    /// Readings (and dropout records) kept for GET /api/v1/telemetry and
    /// stream resumption; older ones are evicted and counted.
    #[arg(long, default_value_t = Config::ephemeral().telemetry_limits.journal_capacity)]
    telemetry_journal_capacity: usize,
    /// Bytes of readings kept for export, with the same policy.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    telemetry_journal_max_bytes: usize,
    /// Bytes the queues of all live telemetry stream subscribers may hold
    /// together; beyond it readings are dropped for the slow ones, counted
    /// and marked in their streams.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    stream_max_bytes: usize,
    /// Most devices the fleet holds; creations beyond it are refused (422).
    #[arg(long, default_value_t = Config::ephemeral().max_devices)]
    max_devices: usize,
    /// Silence after which a device using the HTTP device API is offline,
    /// in simulated time: `30s`, `500ms`, `2m` or plain milliseconds.
    #[arg(long, default_value = "30s", value_parser = parse_duration_ms)]
    http_device_timeout: i64,
}

/// `64MiB`, `512KiB`, `1GiB` (also `K`, `M`, `G`, powers of 1024), or a
/// number of bytes.
fn parse_bytes(s: &str) -> Result<usize, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size: use e.g. 64MiB, 512KiB or 1048576"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return Err(format!("{s:?}: the unit must be KiB, MiB or GiB")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_max_packet_size(s: &str) -> Result<usize, String> {
    let n = parse_bytes(s)?;
    let range = Config::MQTT_MAX_PACKET_SIZE_RANGE;
    let (min, max) = (*range.start(), *range.end());
    if range.contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{s:?} is outside {min}..={max} bytes (1KiB up to the MQTT maximum)"
        ))
    }
}

/// `30s`, `500ms`, `2m`, `6h`, `1d`, or a number of milliseconds.
fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: use e.g. 30s, 500ms or 2m"))?;
    let factor = match unit {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?}: the unit must be ms, s, m, h or d")),
    };
    let ms = n
        .checked_mul(factor)
        .ok_or_else(|| format!("{s:?} is too long"))?;
    if ms <= 0 {
        return Err(format!("{s:?}: give a duration above zero"));
    }
    Ok(ms)
}

/// A listening address: `IP:PORT`, `HOST:PORT` (resolved; IPv4 first), or
/// a bare `PORT` on 127.0.0.1.
fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let forms = "use PORT (8080 means 127.0.0.1:8080), IP:PORT (127.0.0.1:8080, [::1]:8080) or HOST:PORT (localhost:8080)";
    if s.rsplit_once(':')
        .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(format!("{s:?} is not an address: {forms}"));
    }
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("{s:?}: the host name does not resolve ({e}); {forms}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{s:?}: the host name has no address; {forms}"))
}

/// `--start-time`: RFC 3339, as ms since the epoch.
fn parse_start_time(s: &str) -> Result<i64, String> {
    iotmock::parse_rfc3339_ms(s).ok_or_else(|| {
        format!(
            "{s:?} is not an RFC 3339 time: write e.g. 2026-06-01T09:00:00Z or 2026-06-01T09:00:00+02:00"
        )
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Scenario => {
            print!("{}", iotmock::DEMO_SCENARIO);
            ExitCode::SUCCESS
        }
        Command::Plugin(PluginCommand::New(args)) => match new_plugin(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("iotmock: {}", error_text(&error));
                ExitCode::FAILURE
            }
        },
        Command::Serve(args) => {
            let args = *args;
            init_logging();
            let runtime = tokio::runtime::Runtime::new().expect("start tokio runtime");
            match runtime.block_on(serve(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("iotmock: {}", error_text(&error));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `iotmock plugin new`: writes the crate and says how to build it.
fn new_plugin(args: &NewPluginArgs) -> anyhow::Result<()> {
    use iotmock::ScaffoldWorld;
    let world = match args.world {
        WorldArg::Sensor => ScaffoldWorld::Sensor,
        WorldArg::CommandHandler => ScaffoldWorld::CommandHandler,
        WorldArg::EdgeRule => ScaffoldWorld::EdgeRule,
    };
    let made = iotmock::scaffold_plugin(&args.name, world, &args.dir, &args.sdk)?;
    let dir = made.dir.display();
    println!("created the {world} plugin {} in {dir}", args.name);
    println!("build it:  cd {dir} && cargo build --release --target wasm32-wasip2");
    println!(
        "then copy {dir}/{} into the server's --plugins folder as {}.wasm (see {dir}/README.md)",
        made.artifact.display(),
        args.name
    );
    Ok(())
}

/// An error and its causes in one line, leaving out a cause whose text the
/// message already quotes.
fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let scenario = match args.scenario.as_deref() {
        None => ScenarioChoice::Demo,
        Some("none") => ScenarioChoice::Empty,
        Some(path) => ScenarioChoice::File(PathBuf::from(path)),
    };
    let admin_password = secret(args.admin_password, args.admin_password_file.as_deref())?;
    let admin_token = secret(args.admin_token, args.admin_token_file.as_deref())?
        .map(|t| AdminToken::new(&t))
        .transpose()?;
    let ms = |ms: i64| std::time::Duration::from_millis(ms as u64);
    let config = Config {
        http: args.http,
        mqtt: args.mqtt,
        plugins_dir: args.plugins,
        data_dir: args.data_dir,
        scenario,
        seed: args.seed,
        clock: args.clock,
        start_time_ms: args.start_time,
        journal_capacity: args.journal_capacity,
        journal_max_bytes: args.journal_max_bytes,
        mqtt_max_packet_size: args.mqtt_max_packet_size,
        mqtt_max_queued: args.mqtt_max_queued,
        mqtt_max_queued_bytes: args.mqtt_max_queued_bytes,
        mqtt_max_keep_alive: args.mqtt_max_keep_alive,
        mqtt_server_topic_aliases: args.mqtt_server_topic_aliases,
        http_journal_max_bytes: args.http_journal_max_bytes,
        max_stub_response_bytes: args.max_stub_response_bytes,
        telemetry_limits: TelemetryLimits {
            journal_capacity: args.telemetry_journal_capacity,
            journal_max_bytes: args.telemetry_journal_max_bytes,
            stream_max_bytes: args.stream_max_bytes,
        },
        max_devices: args.max_devices,
        mqtt_auth: match args.mqtt_auth.as_str() {
            "devices" => MqttAuth::Devices {
                admin_password: admin_password.unwrap_or_else(MqttAuth::random_password),
            },
            "certificates" => MqttAuth::Certificates {
                admin_password: admin_password.unwrap_or_else(MqttAuth::random_password),
            },
            _ => MqttAuth::Open,
        },
        mqtts: args.mqtts,
        ws: args.ws,
        wss: args.wss,
        https: args.https,
        mock_https: args.mock_https,
        tls: TlsSettings {
            names: args.tls_name,
            cert: args.tls_cert,
            key: args.tls_key,
            client_ca: args.tls_client_ca,
        },
        mock_http: args.mock_http,
        http_journal_capacity: args.http_journal_capacity,
        http_device_timeout_ms: args.http_device_timeout,
        http_limits: HttpLimits {
            header_timeout: ms(args.http_header_timeout),
            body_timeout: ms(args.http_body_timeout),
            idle_timeout: ms(args.http_idle_timeout),
            max_connections: args.http_max_connections,
        },
        admin_token,
        insecure_admin: args.insecure_admin,
        max_advance_ms: args.max_advance,
        ..Config::ephemeral()
    };
    let server = Server::start(config).await?;
    // Listening before the ready line: a signal sent the moment it is
    // read must stop the server cleanly, not kill the process.
    let signalled = shutdown_signal()?;
    println!("{}", server.ready_line());
    signalled.await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// A secret given directly (flag or environment) or as a file's first
/// line.
fn secret(value: Option<String>, file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    match (value, file) {
        (Some(value), _) => Ok(Some(value)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the secret in {}", path.display()))?;
            let line = text.lines().next().unwrap_or("").trim().to_string();
            anyhow::ensure!(
                !line.is_empty(),
                "{} is empty: write the secret on its first line",
                path.display()
            );
            Ok(Some(line))
        }
        (None, None) => Ok(None),
    }
}

/// Resolves on SIGINT or SIGTERM; both are listened for from the call
/// on, before the returned future is first polled.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
        let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[cfg(test)]
mod tests {
    use super::{parse_bytes, parse_duration_ms, parse_listen_addr};

    #[test]
    fn sizes_take_binary_units_and_refuse_nonsense() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("512K"), Ok(512 << 10));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("5TB").unwrap_err().contains("KiB, MiB or GiB"));
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn addresses_take_a_bare_port_and_host_names() {
        assert_eq!(parse_listen_addr("8080"), Ok(([127, 0, 0, 1], 8080).into()));
        assert_eq!(
            parse_listen_addr("0.0.0.0:1883"),
            Ok(([0, 0, 0, 0], 1883).into())
        );
        assert_eq!(
            parse_listen_addr("localhost:8080").map(|a| (a.ip().is_loopback(), a.port())),
            Ok((true, 8080))
        );
        for bad in [
            "localhost",
            "http://localhost:8080",
            ":8080",
            "8080x",
            "99999",
        ] {
            let err = parse_listen_addr(bad).unwrap_err();
            assert!(err.contains("HOST:PORT"), "{bad}: {err}");
        }
    }

    #[test]
    fn durations_take_units_and_refuse_nonsense() {
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert_eq!(parse_duration_ms("1500"), Ok(1500));
        assert!(parse_duration_ms("0s").is_err());
        assert_eq!(parse_duration_ms("6h"), Ok(21_600_000));
        assert_eq!(parse_duration_ms("1d"), Ok(86_400_000));
        assert!(
            parse_duration_ms("5w")
                .unwrap_err()
                .contains("ms, s, m, h or d")
        );
        assert!(parse_duration_ms("soon").is_err());
    }
}
