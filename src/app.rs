//! The composition root: starts every part in order, wires their handles
//! together, and returns a [`Server`] with its addresses and a shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::clock::{Clock, ClockMode};
use crate::commands::{CommandRequest, Commands, Origin};
use crate::dialect::DeviceDialect;
use crate::edge::{CommandSink, EdgeNodes, SinkFuture};
use crate::fleet::access::DeviceAccess;
use crate::fleet::{DialectReader, Fleet, FleetError};
use crate::http::{self, Addrs, AdminToken, AppState, HttpLimits, ListenerStats};
use crate::inbound::Inbound;
use crate::mqtt::{Broker, MqttConfig};
use crate::plugin::EdgeCommand;
use crate::plugin::watcher::{PluginWatcher, WatchError};
use crate::plugin::{LoadError, PluginHost, PluginLimits};
use crate::scenario::{Scenario, ScenarioError};
use crate::sqlite::Writers;
use crate::tasks::{StopOnDrop, Tasks};
use crate::telemetry::Telemetry;
use crate::transport::{MqttListener, MqttTransport, Tls, TlsSettings};

/// Which scenario to run.
#[derive(Debug, Clone)]
pub enum ScenarioChoice {
    /// The built-in demo fleet.
    Demo,
    /// Nothing: an empty platform.
    Empty,
    /// A TOML scenario file.
    File(PathBuf),
    /// Scenario text (tests and embedding).
    Inline(String),
}

/// How to run the server: the command line's flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// The REST API's address (`--http`); port 0 picks a free port.
    pub http: SocketAddr,
    /// The MQTT broker's address (`--mqtt`); port 0 picks a free port.
    pub mqtt: SocketAddr,
    /// A folder watched for `*.wasm` plugins, hot-reloaded (`--plugins`).
    pub plugins_dir: Option<PathBuf>,
    /// Where durable state lives (`--data-dir`); without it, in memory.
    pub data_dir: Option<PathBuf>,
    /// The fleet, edge nodes and stubs to start with.
    pub scenario: ScenarioChoice,
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// How simulated time runs.
    pub clock: ClockMode,
    /// Where simulated time starts (ms since the epoch); overrides the
    /// scenario's `start_time`. Neither: see [`Clock::starting_at`].
    pub start_time_ms: Option<i64>,
    /// Time, memory and threads of plugin calls.
    pub plugin_limits: PluginLimits,
    /// Messages kept in the MQTT journal.
    pub journal_capacity: usize,
    /// Bytes kept in the MQTT journal.
    pub journal_max_bytes: usize,
    /// The largest MQTT packet a client may send, advertised in CONNACK.
    pub mqtt_max_packet_size: usize,
    /// Messages queued per MQTT session.
    pub mqtt_max_queued: usize,
    /// Bytes queued per MQTT session.
    pub mqtt_max_queued_bytes: usize,
    /// The longest Keep Alive an MQTT client may use, in seconds
    /// (`None`: any); see [`crate::mqtt::MqttConfig::max_keep_alive`].
    pub mqtt_max_keep_alive: Option<u16>,
    /// Topic aliases the broker sets on what it sends each MQTT 5 client
    /// (0: none).
    pub mqtt_server_topic_aliases: u16,
    /// Who may connect to the broker; `None` allows everyone.
    pub mqtt_authorizer: Option<std::sync::Arc<dyn crate::mqtt::Authorizer>>,
    /// `devices`: device credentials (or the admin's) are required; used
    /// when `mqtt_authorizer` is not set.
    pub mqtt_auth: MqttAuth,
    /// A second HTTP listener where stubs answer on their real paths.
    pub mock_http: Option<SocketAddr>,
    /// Requests kept in the HTTP journal (stubs and the device API).
    pub http_journal_capacity: usize,
    /// Bytes kept in the HTTP journal.
    pub http_journal_max_bytes: usize,
    /// Largest rendered stub response; larger ones are answered 413.
    pub max_stub_response_bytes: usize,
    /// The telemetry export journal's bounds and the live streams' budget.
    pub telemetry_limits: crate::telemetry::TelemetryLimits,
    /// Most devices the fleet holds.
    pub max_devices: usize,
    /// Silence, in simulated ms, after which an HTTP device is offline.
    pub http_device_timeout_ms: i64,
    /// Timeouts and the connection cap of each HTTP listener.
    pub http_limits: HttpLimits,
    /// With a token, `/api/v1` (but `/health` and the device API) requires
    /// `Authorization: Bearer TOKEN`.
    pub admin_token: Option<AdminToken>,
    /// Serve the API on a non-loopback address without an admin token.
    pub insecure_admin: bool,
    /// The longest span one `POST /clock/advance` may move, ms.
    pub max_advance_ms: i64,
    /// MQTT over TLS.
    pub mqtts: Option<SocketAddr>,
    /// MQTT over WebSocket.
    pub ws: Option<SocketAddr>,
    /// MQTT over WebSocket over TLS.
    pub wss: Option<SocketAddr>,
    /// The API (and the device API) over TLS.
    pub https: Option<SocketAddr>,
    /// The `--mock-http` stubs over TLS.
    pub mock_https: Option<SocketAddr>,
    /// Server certificate names, or a certificate brought along.
    pub tls: TlsSettings,
}

/// How MQTT clients are admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttAuth {
    /// Anyone may connect and use any topic.
    Open,
    /// Devices with their own credentials (a password, or a client
    /// certificate over TLS), back ends as `admin`.
    Devices {
        /// The password of the user `admin`.
        admin_password: String,
    },
    /// Devices only with a client certificate over TLS; back ends as
    /// `admin` with its password.
    Certificates {
        /// The password of the user `admin`.
        admin_password: String,
    },
}

impl MqttAuth {
    /// A fresh random password for `admin`, made as devices' passwords
    /// are (what `iotmock serve` uses when none is given).
    pub fn random_password() -> String {
        crate::fleet::credentials::new_secret().0
    }

    fn admin_password(&self) -> Option<&str> {
        match self {
            MqttAuth::Open => None,
            MqttAuth::Devices { admin_password } | MqttAuth::Certificates { admin_password } => {
                Some(admin_password)
            }
        }
    }
}

impl std::fmt::Debug for dyn crate::mqtt::Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authorizer")
    }
}

impl Config {
    /// The values [`Config::mqtt_max_packet_size`] may take: 1 KiB up to
    /// the MQTT maximum.
    pub const MQTT_MAX_PACKET_SIZE_RANGE: std::ops::RangeInclusive<usize> =
        crate::mqtt::MIN_MAX_PACKET_SIZE..=crate::mqtt::MAX_PACKET_SIZE;

    /// Loopback, ephemeral ports, no scenario, a realtime clock, and the
    /// command line's defaults for every limit: what tests start from.
    pub fn ephemeral() -> Self {
        Self {
            http: ([127, 0, 0, 1], 0).into(),
            mqtt: ([127, 0, 0, 1], 0).into(),
            plugins_dir: None,
            data_dir: None,
            scenario: ScenarioChoice::Empty,
            seed: None,
            clock: ClockMode::Realtime,
            start_time_ms: None,
            plugin_limits: PluginLimits::default(),
            journal_capacity: crate::mqtt::DEFAULT_JOURNAL_CAPACITY,
            journal_max_bytes: crate::mqtt::DEFAULT_JOURNAL_MAX_BYTES,
            mqtt_max_packet_size: crate::mqtt::DEFAULT_MAX_PACKET_SIZE,
            mqtt_max_queued: crate::mqtt::DEFAULT_MAX_QUEUED,
            mqtt_max_queued_bytes: crate::mqtt::DEFAULT_MAX_QUEUED_BYTES,
            mqtt_max_keep_alive: None,
            mqtt_server_topic_aliases: 0,
            mqtt_authorizer: None,
            mqtt_auth: MqttAuth::Open,
            mock_http: None,
            http_journal_capacity: crate::stubs::DEFAULT_HTTP_JOURNAL_CAPACITY,
            http_journal_max_bytes: crate::stubs::DEFAULT_HTTP_JOURNAL_MAX_BYTES,
            max_stub_response_bytes: crate::stubs::DEFAULT_MAX_RESPONSE_BYTES,
            telemetry_limits: crate::telemetry::TelemetryLimits::default(),
            max_devices: crate::fleet::DEFAULT_MAX_DEVICES,
            http_device_timeout_ms: crate::fleet::DEFAULT_HTTP_DEVICE_TIMEOUT_MS,
            http_limits: HttpLimits::default(),
            admin_token: None,
            insecure_admin: false,
            max_advance_ms: http::DEFAULT_MAX_ADVANCE_MS,
            mqtts: None,
            ws: None,
            wss: None,
            https: None,
            mock_https: None,
            tls: TlsSettings::default(),
        }
    }
}

/// Why the server did not start. Each message names the input at fault
/// and says what to change; where a part failed, the variant holds that
/// part's error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The scenario does not parse or is not valid.
    #[error(transparent)]
    Scenario(Box<dyn std::error::Error + Send + Sync>),
    /// A plugin (built-in or in the plugins folder) does not load.
    #[error(transparent)]
    Plugin(Box<dyn std::error::Error + Send + Sync>),
    /// The plugins folder cannot be watched.
    #[error(transparent)]
    Watch(Box<dyn std::error::Error + Send + Sync>),
    /// The MQTT broker does not start.
    #[error(transparent)]
    Mqtt(Box<dyn std::error::Error + Send + Sync>),
    /// The fleet (its store, or a device of the scenario) is refused.
    #[error(transparent)]
    Fleet(Box<dyn std::error::Error + Send + Sync>),
    /// The command engine (its store) does not start.
    #[error(transparent)]
    Commands(Box<dyn std::error::Error + Send + Sync>),
    /// The API would be open to the network with no authentication.
    #[error(
        "the API would listen on {addr}, reachable from the network, with no authentication: \
         give an admin token (--admin-token TOKEN, IOTMOCK_ADMIN_TOKEN or --admin-token-file PATH), \
         listen on a loopback address (--http 127.0.0.1:{port}), or pass --insecure-admin to serve it open"
    )]
    InsecureAdmin {
        /// The address asked for.
        addr: SocketAddr,
        /// Its port.
        port: u16,
    },
    /// A listener's address is taken.
    #[error(
        "{flag} {addr} is in use (another iotmock, or another program, holds it); pass {flag} {free} for a free port, or stop what holds it",
        free = SocketAddr::new(addr.ip(), 0)
    )]
    InUse {
        /// The command-line flag of the listener.
        flag: &'static str,
        /// The address asked for.
        addr: SocketAddr,
    },
    /// A listener cannot listen on its address.
    #[error(
        "{flag} {addr}: cannot listen there ({reason}); pass an address of this machine, e.g. {flag} 127.0.0.1:0"
    )]
    Listen {
        /// The command-line flag of the listener.
        flag: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// What the system said.
        reason: String,
    },
    /// The data directory cannot be made or used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// An edge node of the scenario is not valid.
    #[error("edge node {node:?}: {problem}")]
    EdgeNode {
        /// The node's id.
        node: String,
        /// What is wrong and what to change.
        problem: String,
    },
    /// A stub of the scenario is not valid.
    #[error("scenario: {0}")]
    Stub(Box<dyn std::error::Error + Send + Sync>),
    /// TLS cannot be set up (a certificate or key brought along, or the
    /// built-in authority).
    #[error("TLS: {0}")]
    Tls(Box<dyn std::error::Error + Send + Sync>),
    /// A part panicked while starting: a bug in iotmock, not in the input.
    #[error(
        "{part} panicked ({detail}); this is a bug in iotmock: please report it with the command line and scenario that caused it"
    )]
    Panicked {
        /// What was starting.
        part: &'static str,
        /// The panic's message, or why it ended otherwise.
        detail: String,
    },
}

impl StartError {
    fn panicked(part: &'static str, error: tokio::task::JoinError) -> Self {
        let detail = match error.try_into_panic() {
            Ok(panic) => panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_string()),
            Err(error) => error.to_string(),
        };
        StartError::Panicked { part, detail }
    }
}

/// The parts' errors become [`StartError`]s with `?` in [`Server::start`].
macro_rules! start_error_from {
    ($($error:ty => $variant:ident),* $(,)?) => {$(
        impl From<$error> for StartError {
            fn from(error: $error) -> Self {
                StartError::$variant(Box::new(error))
            }
        }
    )*};
}

start_error_from! {
    ScenarioError => Scenario,
    LoadError => Plugin,
    WatchError => Watch,
    crate::mqtt::MqttError => Mqtt,
    FleetError => Fleet,
    crate::commands::CommandError => Commands,
    crate::stubs::StubError => Stub,
    crate::transport::TlsError => Tls,
}

/// How scenario text given inline is named in errors.
const INLINE_ORIGIN: &str = "(inline)";

/// The scenario's name in errors, as [`Scenario::parse`] names it.
fn scenario_origin(choice: &ScenarioChoice) -> String {
    match choice {
        ScenarioChoice::Demo => crate::scenario::DEMO_ORIGIN.to_string(),
        ScenarioChoice::Empty => "(none)".to_string(),
        ScenarioChoice::File(path) => path.display().to_string(),
        ScenarioChoice::Inline(_) => INLINE_ORIGIN.to_string(),
    }
}

/// A running iotmock: the broker, the API, the plugin host and the
/// simulation.
pub struct Server {
    mqtt_auth: MqttAuth,
    addrs: Addrs,
    seed: u64,
    plugins: PluginHost,
    simulation: crate::simulation::Simulation,
    broker: Broker,
    http: http::serve::Serving,
    stubs: crate::stubs::Stubs,
    mock: Option<MockListener>,
    /// `--https` and `--mock-https`.
    https: Option<MockListener>,
    mock_https: Option<MockListener>,
    /// `--mqtts`, `--ws`, `--wss`, in that order when given.
    transports: Vec<(MqttTransport, MqttListener)>,
    tls: Arc<Tls>,
    /// The threads that own the databases, closed last by the shutdown.
    writers: Arc<Writers>,
    /// The background tasks, stopped before the databases close (or
    /// when the server is dropped without its shutdown).
    tasks: StopOnDrop,
    /// The fleet's link to the dialect decoders, which the fleet holds
    /// weakly (the decoders hold the fleet).
    _dialect_reader: Arc<dyn DialectReader>,
    _watcher: Option<PluginWatcher>,
}

impl Server {
    /// Starts every part: binds the listeners, loads the plugins and the
    /// scenario, and returns once the server answers on every address.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let writers = Arc::new(Writers::default());
        let tasks = Tasks::default();
        let started = Self::start_parts(config, writers.clone(), tasks.clone()).await;
        if started.is_err() {
            // The tasks started before the failure end, and the databases
            // opened are closed, so a second attempt on the same
            // --data-dir finds them free.
            tasks.stop(TASKS_STOP).await;
            writers.close().await;
        }
        started
    }

    async fn start_parts(
        config: Config,
        writers: Arc<Writers>,
        tasks: Tasks,
    ) -> Result<Self, StartError> {
        for addr in std::iter::once(config.http).chain(config.https) {
            if !addr.ip().is_loopback() && config.admin_token.is_none() && !config.insecure_admin {
                return Err(StartError::InsecureAdmin {
                    addr,
                    port: addr.port(),
                });
            }
        }
        let scenario = match &config.scenario {
            ScenarioChoice::Demo => Scenario::demo(),
            ScenarioChoice::Empty => Scenario::default(),
            ScenarioChoice::File(path) => Scenario::from_file(path)?,
            ScenarioChoice::Inline(text) => Scenario::parse(text, INLINE_ORIGIN)?,
        };
        let seed = config.seed.or(scenario.seed).unwrap_or(0);
        if let Some(dir) = &config.data_dir {
            std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }

        // Every listener is checked before anything starts, so a port clash
        // is one clear error, not a broker and a fleet started for nothing.
        let listener = bind("--http", config.http).await?;
        let mock_listener = match config.mock_http {
            Some(addr) => Some(bind("--mock-http", addr).await?),
            None => None,
        };
        if config.mqtt.port() != 0 {
            // The broker binds its own socket; a probe finds a clash first.
            drop(bind("--mqtt", config.mqtt).await?);
        }
        let mut transport_listeners = Vec::new();
        for (kind, addr) in [
            (MqttTransport::Tls, config.mqtts),
            (MqttTransport::Ws, config.ws),
            (MqttTransport::Wss, config.wss),
        ] {
            if let Some(addr) = addr {
                transport_listeners.push((kind, bind(kind.flag(), addr).await?));
            }
        }
        let https_listener = match config.https {
            Some(addr) => Some(bind("--https", addr).await?),
            None => None,
        };
        let mock_https_listener = match config.mock_https {
            Some(addr) => Some(bind("--mock-https", addr).await?),
            None => None,
        };
        let tls = {
            let settings = config.tls.clone();
            let dir = config.data_dir.clone();
            tokio::task::spawn_blocking(move || Tls::start(&settings, dir.as_deref()))
                .await
                .map_err(|e| StartError::panicked("TLS set-up", e))??
        };

        let clock = Clock::starting_at(
            config.clock,
            config.start_time_ms.or(scenario.start_time_ms),
        );
        let limits = config.plugin_limits.clone();
        let plugins = tokio::task::spawn_blocking(move || PluginHost::start(limits))
            .await
            .map_err(|e| StartError::panicked("the plugin host's start", e))??;
        let watcher = match &config.plugins_dir {
            Some(dir) => Some(crate::plugin::watcher::watch(&tasks, plugins.clone(), dir).await?),
            None => None,
        };

        let mut mqtt_config = MqttConfig::new(config.mqtt);
        mqtt_config.journal_capacity = config.journal_capacity;
        mqtt_config.seed = seed;
        mqtt_config.journal_max_bytes = config.journal_max_bytes;
        mqtt_config.max_packet_size = config.mqtt_max_packet_size;
        mqtt_config.max_queued_per_session = config.mqtt_max_queued;
        mqtt_config.max_queued_bytes_per_session = config.mqtt_max_queued_bytes;
        mqtt_config.max_keep_alive = config.mqtt_max_keep_alive;
        mqtt_config.server_topic_aliases = config.mqtt_server_topic_aliases;
        mqtt_config.storage_dir = config.data_dir.as_ref().map(|d| d.join("mqtt"));
        let device_access = match &config.mqtt_auth {
            MqttAuth::Open => None,
            _ if config.mqtt_authorizer.is_some() => None,
            auth => Some(DeviceAccess::new(
                auth.admin_password().unwrap_or_default().to_string(),
                matches!(auth, MqttAuth::Certificates { .. }),
                tls.stats().clone(),
            )),
        };
        mqtt_config.authorizer = config.mqtt_authorizer.clone().or_else(|| {
            device_access
                .clone()
                .map(|a| a as std::sync::Arc<dyn crate::mqtt::Authorizer>)
        });
        let broker = Broker::start_in(&mqtt_config, clock.clone(), Some(&writers)).await?;
        let telemetry = Telemetry::start(
            &tasks,
            clock.clone(),
            plugins.clone(),
            broker.handle(),
            seed,
            config.telemetry_limits,
        );

        let fleet = Fleet::open(
            config.data_dir.as_deref(),
            &writers,
            &tasks,
            clock.clone(),
            seed,
            telemetry.clone(),
            broker.handle(),
            plugins.clone(),
            tls.clone(),
        )
        .await?;
        fleet.set_http_device_timeout(config.http_device_timeout_ms);
        fleet.set_max_devices(config.max_devices);
        if let Some(access) = &device_access {
            access.attach(&fleet);
        }
        fleet.follow(broker.handle().events());
        let provisioned =
            fleet
                .provision_scenario(&scenario.devices)
                .await
                .map_err(|e| -> StartError {
                    match e {
                        FleetError::Invalid(detail) => ScenarioError::Invalid {
                            origin: scenario_origin(&config.scenario),
                            detail,
                        }
                        .into(),
                        other => other.into(),
                    }
                })?;
        tracing::info!(devices = fleet.len(), provisioned, seed, "fleet ready");
        let commands = Commands::start(
            config.data_dir.as_deref(),
            &writers,
            &tasks,
            clock.clone(),
            fleet.clone(),
            broker.handle(),
            plugins.clone(),
            seed,
            config.plugin_limits.workers,
        )
        .await?;
        // What clients publish in a device's dialect is read into the fleet.
        let inbound = Inbound::new(
            &tasks,
            plugins.clone(),
            broker.handle(),
            fleet.clone(),
            telemetry.clone(),
        );
        inbound.set_commands(commands.clone());
        let dialect_reader: Arc<dyn DialectReader> = Arc::new(inbound.clone());
        fleet.set_inbound(&dialect_reader);
        let edge = EdgeNodes::open(
            config.data_dir.as_deref(),
            &writers,
            &tasks,
            clock.clone(),
            telemetry.clone(),
            plugins.clone(),
            broker.handle(),
            fleet.clone(),
            seed,
            std::sync::Arc::new(commands.clone()),
        )
        .await
        .map_err(|e| StartError::EdgeNode {
            node: String::new(),
            problem: e.to_string(),
        })?;
        telemetry.set_tap(edge.tap());
        edge.restore(&scenario.edge_nodes)
            .await
            .map_err(|(node, e)| StartError::EdgeNode {
                node,
                problem: e.to_string(),
            })?;

        let http_addr = local_addr("--http", config.http, &listener)?;
        let addrs = Addrs {
            http: http_addr,
            mqtt: broker.local_addr(),
        };
        let stubs = crate::stubs::Stubs::open(
            config.data_dir.as_deref(),
            &writers,
            seed,
            crate::stubs::StubLimits {
                journal_capacity: config.http_journal_capacity,
                journal_max_bytes: config.http_journal_max_bytes,
                max_response_bytes: config.max_stub_response_bytes,
            },
        )
        .await?;
        stubs.restore(&scenario.stubs).await?;
        let simulation = crate::simulation::Simulation::new(
            clock.clone(),
            telemetry.clone(),
            edge.clone(),
            commands.clone(),
            broker.handle(),
        );
        let state = AppState {
            addrs,
            simulation: simulation.clone(),
            clock: clock.clone(),
            plugins: plugins.clone(),
            mqtt: broker.handle(),
            telemetry,
            fleet,
            edge,
            stubs: stubs.clone(),
            commands,
            inbound,
            admin_token: config.admin_token.clone(),
            tls: tls.clone(),
            limits: http::ApiLimits {
                http: config.http_limits,
                max_advance_ms: config.max_advance_ms,
                api_connections: Arc::new(ListenerStats::default()),
                mock_connections: config.mock_http.map(|_| Arc::new(ListenerStats::default())),
                https_connections: config.https.map(|_| Arc::new(ListenerStats::default())),
                mock_https_connections: config
                    .mock_https
                    .map(|_| Arc::new(ListenerStats::default())),
            },
        };
        let mock = match (
            config.mock_http,
            mock_listener,
            &state.limits.mock_connections,
        ) {
            (Some(addr), Some(listener), Some(stats)) => Some(MockListener::start(
                "--mock-http",
                addr,
                listener,
                http::mock_router(state.clone()),
                config.http_limits,
                stats.clone(),
                None,
            )?),
            _ => None,
        };
        let https = match (
            config.https,
            https_listener,
            &state.limits.https_connections,
        ) {
            (Some(addr), Some(listener), Some(stats)) => Some(MockListener::start(
                "--https",
                addr,
                listener,
                http::router(state.clone()),
                config.http_limits,
                stats.clone(),
                Some(tls.clone()),
            )?),
            _ => None,
        };
        let mock_https = match (
            config.mock_https,
            mock_https_listener,
            &state.limits.mock_https_connections,
        ) {
            (Some(addr), Some(listener), Some(stats)) => Some(MockListener::start(
                "--mock-https",
                addr,
                listener,
                http::mock_router(state.clone()),
                config.http_limits,
                stats.clone(),
                Some(tls.clone()),
            )?),
            _ => None,
        };
        let mut transports = Vec::new();
        for (kind, listener) in transport_listeners {
            let addr = local_addr(kind.flag(), listener_addr(&config, kind), &listener)?;
            let running = MqttListener::start(kind, listener, tls.clone(), broker.handle())
                .map_err(|e| listen_error(kind.flag(), addr, &e))?;
            transports.push((kind, running));
        }
        let api_stats = state.limits.api_connections.clone();
        let http = http::serve::serve(
            listener,
            http::router(state),
            config.http_limits,
            api_stats,
            None,
        );
        tracing::info!(addr = %http_addr, "HTTP API listening");
        Ok(Self {
            mqtt_auth: config.mqtt_auth.clone(),
            addrs,
            seed,
            plugins,
            simulation,
            broker,
            http,
            stubs,
            mock,
            https,
            mock_https,
            transports,
            tls,
            writers,
            tasks: StopOnDrop(tasks),
            _dialect_reader: dialect_reader,
            _watcher: watcher,
        })
    }

    /// The address of a TLS or WebSocket MQTT listener, when it runs.
    pub fn transport_addr(&self, kind: MqttTransport) -> Option<SocketAddr> {
        self.transports
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, l)| l.addr)
    }

    /// The `--https` listener's address, when there is one.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().map(|m| m.addr)
    }

    /// The `--mock-https` listener's address, when there is one.
    pub fn mock_https_addr(&self) -> Option<SocketAddr> {
        self.mock_https.as_ref().map(|m| m.addr)
    }

    /// The built-in CA's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        self.tls.ca_pem()
    }

    /// The `--mock-http` listener's address, when there is one.
    pub fn mock_http_addr(&self) -> Option<SocketAddr> {
        self.mock.as_ref().map(|m| m.addr)
    }

    /// Where the REST API listens (`/api/v1`, `/metrics`).
    pub fn http_addr(&self) -> SocketAddr {
        self.addrs.http
    }

    /// Where the MQTT broker listens (plain TCP).
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.addrs.mqtt
    }

    /// The broker's in-process handle: publish, journal, clients, events.
    pub fn mqtt(&self) -> crate::mqtt::MqttHandle {
        self.broker.handle()
    }

    /// The seed every random stream derives from: the config's, else the
    /// scenario's, else 0.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub(crate) fn plugins(&self) -> &PluginHost {
        &self.plugins
    }

    /// Simulated time: read it, and move a manual clock with the span
    /// played in order, as `POST /clock/advance` does; and the MQTT
    /// delivery barrier.
    pub fn simulation(&self) -> &crate::simulation::Simulation {
        &self.simulation
    }

    /// The line printed on stdout when the server is ready.
    pub fn ready_line(&self) -> String {
        let mut line = serde_json::json!({
            "event": "ready",
            "http": self.addrs.http.to_string(),
            "mqtt": self.addrs.mqtt.to_string(),
        });
        if let Some(mock) = &self.mock {
            line["mock_http"] = serde_json::json!(mock.addr.to_string());
        }
        for (kind, listener) in &self.transports {
            let key = match kind {
                MqttTransport::Tls => "mqtts",
                MqttTransport::Ws => "ws",
                MqttTransport::Wss => "wss",
            };
            line[key] = serde_json::json!(listener.addr.to_string());
        }
        if let Some(https) = &self.https {
            line["https"] = serde_json::json!(https.addr.to_string());
        }
        if let Some(mock) = &self.mock_https {
            line["mock_https"] = serde_json::json!(mock.addr.to_string());
        }
        if let Some(admin_password) = self.mqtt_auth.admin_password() {
            line["mqtt_admin"] = serde_json::json!({
                "username": crate::fleet::access::ADMIN_USER,
                "password": admin_password,
            });
        }
        line.to_string()
    }

    /// Stops accepting, lets open HTTP requests finish, disconnects MQTT
    /// clients, ends the background tasks, then closes every database:
    /// what was accepted before is committed, anything still running
    /// afterwards is refused, and when this returns no task or thread of
    /// the server runs or holds a file under `--data-dir`, so a new server
    /// may open it at once.
    pub async fn shutdown(self) {
        // Hanging stubs let go, so open requests can finish.
        self.stubs.close();
        drop(self.transports);
        for listener in [self.mock, self.https, self.mock_https]
            .into_iter()
            .flatten()
        {
            let _ = listener.serving.stop.send(());
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), listener.serving.task)
                .await;
        }
        let _ = self.http.stop.send(());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.http.task).await;
        self.broker.shutdown().await;
        let running = self.tasks.0.stop(TASKS_STOP).await;
        if running > 0 {
            tracing::warn!(running, "background tasks still running at shutdown");
        }
        self.writers.close().await;
        tracing::info!("stopped");
    }
}

/// How long the shutdown waits for the background tasks to be dropped
/// once cancelled (each stops at its next await).
const TASKS_STOP: std::time::Duration = std::time::Duration::from_secs(5);

/// An extra HTTP server: `--mock-http`, `--https`, `--mock-https`.
struct MockListener {
    addr: SocketAddr,
    serving: http::serve::Serving,
}

impl MockListener {
    fn start(
        flag: &'static str,
        addr: SocketAddr,
        listener: TcpListener,
        app: axum::Router,
        limits: HttpLimits,
        stats: Arc<ListenerStats>,
        tls: Option<Arc<Tls>>,
    ) -> Result<Self, StartError> {
        let addr = local_addr(flag, addr, &listener)?;
        let serving = http::serve::serve(listener, app, limits, stats, tls);
        tracing::info!(%addr, listener = flag, "HTTP listening");
        Ok(Self { addr, serving })
    }
}

fn listener_addr(config: &Config, kind: MqttTransport) -> SocketAddr {
    match kind {
        MqttTransport::Tls => config.mqtts,
        MqttTransport::Ws => config.ws,
        MqttTransport::Wss => config.wss,
    }
    .unwrap_or(config.mqtt)
}

/// Binds the listener of command-line flag `flag`, with an error that
/// says which flag to change.
async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| listen_error(flag, addr, &e))
}

fn local_addr(
    flag: &'static str,
    addr: SocketAddr,
    listener: &TcpListener,
) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|e| listen_error(flag, addr, &e))
}

fn listen_error(flag: &'static str, addr: SocketAddr, error: &std::io::Error) -> StartError {
    if error.kind() == std::io::ErrorKind::AddrInUse {
        StartError::InUse { flag, addr }
    } else {
        StartError::Listen {
            flag,
            addr,
            reason: error.to_string(),
        }
    }
}

/// Edge commands go to the command engine like any other, marked as
/// coming from an edge node, with its defaults for timeout and retries.
impl CommandSink for Commands {
    fn submit<'a>(&'a self, _node: &'a str, command: &'a EdgeCommand) -> SinkFuture<'a> {
        Box::pin(async move {
            let params: serde_json::Value = serde_json::from_str(&command.params)
                .map_err(|e| format!("the rule's params are not JSON: {e}"))?;
            let request = CommandRequest {
                name: command.name.clone(),
                params: Some(params),
                ..Default::default()
            };
            self.submit_as(&command.device, request, Origin::Edge, None)
                .await
                .map(|view| view.id)
                .map_err(|e| e.to_string())
        })
    }
}

/// The fleet's dialect reader is the decoders of client publishes.
impl DialectReader for Inbound {
    fn listen(&self, dialect: &DeviceDialect) {
        Inbound::listen(self, dialect);
    }

    fn listen_known(&self, plugin: &str, config: &str, filters: &[String]) {
        Inbound::listen_known(self, plugin, config, filters);
    }

    fn may_publish(&self, dialect: &DeviceDialect, topic: &str) -> bool {
        Inbound::may_publish(self, dialect, topic)
    }
}
