//! The composition root: starts every part in order, wires their handles
//! together, and returns a [`Server`] with its addresses and a shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::clock::{Clock, ClockMode};
use crate::commands::Commands;
use crate::edge::EdgeNodes;
use crate::fleet::access::DeviceAccess;
use crate::fleet::{Fleet, FleetError};
use crate::http::{self, Addrs, AdminToken, AppState, HttpLimits, ListenerStats};
use crate::mqtt::{Broker, MqttConfig};
use crate::plugin::watcher::{PluginWatcher, WatchError};
use crate::plugin::{LoadError, PluginHost, PluginLimits, World};
use crate::scenario::{Scenario, ScenarioError};
use crate::telemetry::Telemetry;

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
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
    pub plugins_dir: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub scenario: ScenarioChoice,
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    pub clock: ClockMode,
    pub plugin_limits: PluginLimits,
    /// Messages kept in the MQTT journal.
    pub journal_capacity: usize,
    /// Bytes kept in the MQTT journal.
    pub journal_max_bytes: usize,
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
}

/// How MQTT clients are admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttAuth {
    /// Anyone may connect and use any topic.
    Open,
    /// Devices with their own credentials, back ends as `admin`.
    Devices { admin_password: String },
}

impl std::fmt::Debug for dyn crate::mqtt::Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authorizer")
    }
}

impl Config {
    /// Loopback, ephemeral ports, no scenario: what tests start from.
    pub fn ephemeral() -> Self {
        Self {
            http: ([127, 0, 0, 1], 0).into(),
            mqtt: ([127, 0, 0, 1], 0).into(),
            plugins_dir: None,
            data_dir: None,
            scenario: ScenarioChoice::Empty,
            seed: None,
            clock: ClockMode::Realtime,
            plugin_limits: PluginLimits::default(),
            journal_capacity: crate::mqtt::DEFAULT_JOURNAL_CAPACITY,
            journal_max_bytes: crate::mqtt::DEFAULT_JOURNAL_MAX_BYTES,
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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error(transparent)]
    Plugin(#[from] LoadError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error(transparent)]
    Mqtt(#[from] crate::mqtt::MqttError),
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Commands(#[from] crate::commands::CommandError),
    #[error(
        "the API would listen on {addr}, reachable from the network, with no authentication: \
         give an admin token (--admin-token TOKEN, IOTMOCK_ADMIN_TOKEN or --admin-token-file PATH), \
         listen on a loopback address (--http 127.0.0.1:{port}), or pass --insecure-admin to serve it open"
    )]
    InsecureAdmin { addr: SocketAddr, port: u16 },
    #[error("listening for HTTP on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("edge node {node:?}: {problem}")]
    EdgeNode { node: String, problem: String },
    #[error("scenario: {0}")]
    Stub(#[from] crate::stubs::StubError),
    #[error("scenario: device {device:?} has sensor {sensor:?} with plugin {plugin:?}, {problem}")]
    SensorPlugin {
        device: String,
        sensor: String,
        plugin: String,
        problem: String,
    },
}

/// A running iotmock: the broker, the API, the plugin host and the
/// simulation.
pub struct Server {
    mqtt_auth: MqttAuth,
    addrs: Addrs,
    seed: u64,
    plugins: PluginHost,
    clock: Clock,
    broker: Broker,
    http: http::serve::Serving,
    stubs: crate::stubs::Stubs,
    mock: Option<MockListener>,
    _watcher: Option<PluginWatcher>,
}

impl Server {
    pub async fn start(config: Config) -> Result<Self, StartError> {
        if !config.http.ip().is_loopback() && config.admin_token.is_none() && !config.insecure_admin
        {
            return Err(StartError::InsecureAdmin {
                addr: config.http,
                port: config.http.port(),
            });
        }
        let scenario = match &config.scenario {
            ScenarioChoice::Demo => Scenario::demo(),
            ScenarioChoice::Empty => Scenario::default(),
            ScenarioChoice::File(path) => Scenario::from_file(path)?,
            ScenarioChoice::Inline(text) => Scenario::parse(text, "(inline)")?,
        };
        let seed = config.seed.or(scenario.seed).unwrap_or(0);
        if let Some(dir) = &config.data_dir {
            std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }

        let clock = Clock::new(config.clock);
        let limits = config.plugin_limits.clone();
        let plugins = tokio::task::spawn_blocking(move || PluginHost::start(limits))
            .await
            .expect("plugin host start panicked")?;
        let watcher = match &config.plugins_dir {
            Some(dir) => Some(crate::plugin::watcher::watch(plugins.clone(), dir).await?),
            None => None,
        };

        let mut mqtt_config = MqttConfig::new(config.mqtt);
        mqtt_config.journal_capacity = config.journal_capacity;
        mqtt_config.seed = seed;
        mqtt_config.journal_max_bytes = config.journal_max_bytes;
        mqtt_config.storage_dir = config.data_dir.as_ref().map(|d| d.join("mqtt"));
        let device_access = match &config.mqtt_auth {
            MqttAuth::Devices { admin_password } if config.mqtt_authorizer.is_none() => {
                Some(DeviceAccess::new(admin_password.clone()))
            }
            _ => None,
        };
        mqtt_config.authorizer = config.mqtt_authorizer.clone().or_else(|| {
            device_access
                .clone()
                .map(|a| a as std::sync::Arc<dyn crate::mqtt::Authorizer>)
        });
        let broker = Broker::start(&mqtt_config, clock.clone()).await?;
        let telemetry = Telemetry::start(
            clock.clone(),
            plugins.clone(),
            broker.handle(),
            seed,
            config.telemetry_limits,
        );

        for device in &scenario.devices {
            for sensor in &device.sensors {
                match plugins.info(&sensor.plugin).and_then(|i| i.world) {
                    Some(World::Sensor) => {}
                    Some(other) => {
                        return Err(StartError::SensorPlugin {
                            device: device.id.clone(),
                            sensor: sensor.sensor_name().to_string(),
                            plugin: sensor.plugin.clone(),
                            problem: format!("which is a {other} plugin, not a sensor"),
                        });
                    }
                    // It may still arrive (a file in --plugins, PUT
                    // /plugins); until then its readings count as failed.
                    None => tracing::warn!(
                        device = %device.id,
                        plugin = %sensor.plugin,
                        "sensor plugin not loaded yet; its readings are counted as failed until it is"
                    ),
                }
            }
        }
        let fleet = Fleet::open(
            config.data_dir.as_deref(),
            clock.clone(),
            seed,
            telemetry.clone(),
            broker.handle(),
            plugins.clone(),
        )
        .await?;
        fleet.set_http_device_timeout(config.http_device_timeout_ms);
        fleet.set_max_devices(config.max_devices);
        if let Some(access) = &device_access {
            access.attach(fleet.clone());
        }
        fleet.follow(broker.handle().events());
        let provisioned = fleet.provision_scenario(&scenario.devices).await?;
        tracing::info!(devices = fleet.len(), provisioned, seed, "fleet ready");
        let commands = Commands::start(
            config.data_dir.as_deref(),
            clock.clone(),
            fleet.clone(),
            broker.handle(),
            plugins.clone(),
            seed,
            config.plugin_limits.workers,
        )
        .await?;
        let edge = EdgeNodes::open(
            config.data_dir.as_deref(),
            clock.clone(),
            telemetry.clone(),
            plugins.clone(),
            broker.handle(),
            fleet.clone(),
            seed,
            std::sync::Arc::new(commands.clone()),
        )
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

        let listener = TcpListener::bind(config.http)
            .await
            .map_err(|source| StartError::Http {
                addr: config.http,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| StartError::Http {
            addr: config.http,
            source,
        })?;
        let addrs = Addrs {
            http: http_addr,
            mqtt: broker.local_addr(),
        };
        let stubs = crate::stubs::Stubs::open(
            config.data_dir.as_deref(),
            seed,
            crate::stubs::StubLimits {
                journal_capacity: config.http_journal_capacity,
                journal_max_bytes: config.http_journal_max_bytes,
                max_response_bytes: config.max_stub_response_bytes,
            },
        )?;
        stubs.restore(&scenario.stubs).await?;
        let state = AppState {
            addrs,
            clock: clock.clone(),
            plugins: plugins.clone(),
            mqtt: broker.handle(),
            telemetry,
            fleet,
            edge,
            stubs: stubs.clone(),
            commands,
            admin_token: config.admin_token.clone(),
            limits: http::ApiLimits {
                http: config.http_limits,
                max_advance_ms: config.max_advance_ms,
                api_connections: Arc::new(ListenerStats::default()),
                mock_connections: config.mock_http.map(|_| Arc::new(ListenerStats::default())),
            },
        };
        let mock = match (config.mock_http, &state.limits.mock_connections) {
            (Some(addr), Some(stats)) => Some(
                MockListener::start(
                    addr,
                    http::mock_router(state.clone()),
                    config.http_limits,
                    stats.clone(),
                )
                .await?,
            ),
            _ => None,
        };
        let api_stats = state.limits.api_connections.clone();
        let http = http::serve::serve(listener, http::router(state), config.http_limits, api_stats);
        tracing::info!(addr = %http_addr, "HTTP API listening");
        Ok(Self {
            mqtt_auth: config.mqtt_auth.clone(),
            addrs,
            seed,
            plugins,
            clock,
            broker,
            http,
            stubs,
            mock,
            _watcher: watcher,
        })
    }

    /// The `--mock-http` listener's address, when there is one.
    pub fn mock_http_addr(&self) -> Option<SocketAddr> {
        self.mock.as_ref().map(|m| m.addr)
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.addrs.http
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        self.addrs.mqtt
    }

    /// The broker's in-process handle: publish, journal, clients, events.
    pub fn mqtt(&self) -> crate::mqtt::MqttHandle {
        self.broker.handle()
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn plugins(&self) -> &PluginHost {
        &self.plugins
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
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
        if let MqttAuth::Devices { admin_password } = &self.mqtt_auth {
            line["mqtt_admin"] = serde_json::json!({
                "username": crate::fleet::access::ADMIN_USER,
                "password": admin_password,
            });
        }
        line.to_string()
    }

    /// Stops accepting, lets open HTTP requests finish, disconnects MQTT
    /// clients.
    pub async fn shutdown(self) {
        // Hanging stubs let go, so open requests can finish.
        self.stubs.close();
        if let Some(mock) = self.mock {
            let _ = mock.serving.stop.send(());
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), mock.serving.task).await;
        }
        let _ = self.http.stop.send(());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.http.task).await;
        self.broker.shutdown().await;
        tracing::info!("stopped");
    }
}

/// The `--mock-http` server.
struct MockListener {
    addr: SocketAddr,
    serving: http::serve::Serving,
}

impl MockListener {
    async fn start(
        addr: SocketAddr,
        app: axum::Router,
        limits: HttpLimits,
        stats: Arc<ListenerStats>,
    ) -> Result<Self, StartError> {
        let http_error = |source| StartError::Http { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(http_error)?;
        let addr = listener.local_addr().map_err(http_error)?;
        let serving = http::serve::serve(listener, app, limits, stats);
        tracing::info!(%addr, "mock HTTP listening (stubs on their real paths)");
        Ok(Self { addr, serving })
    }
}
