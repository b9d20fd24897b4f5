//! iotmock: a mock IoT platform in one binary.
//!
//! A host server provides the protocols (an MQTT broker and an HTTP REST
//! API) and the simulation; sensor patterns, command handlers and edge
//! rules are WebAssembly components defined by the WIT files in `wit/`,
//! hot-reloaded while the server runs.
//!
//! # Embedding
//!
//! The library is what the `iotmock` command runs, for a Rust test that
//! wants the platform in its own process: [`Server::start`] takes a
//! [`Config`] (start from [`Config::ephemeral`]: loopback, ports picked by
//! the system, no scenario), and the running [`Server`] tells its
//! addresses and hands out two handles, [`Server::mqtt`] (publish as the
//! server, client events) and [`Server::simulation`] (simulated time, the
//! MQTT delivery barrier). Everything else is reached the way any client
//! reaches it: the REST API and the broker.
//!
//! ```
//! use iotmock::{ClockMode, Config, MANUAL_EPOCH_MS, Server};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config {
//!     clock: ClockMode::Manual,
//!     ..Config::ephemeral()
//! };
//! let server = Server::start(config).await?;
//!
//! // The REST API, over a plain socket.
//! let mut http = tokio::net::TcpStream::connect(server.http_addr()).await?;
//! http.write_all(b"GET /api/v1/health HTTP/1.1\r\nhost: iotmock\r\nconnection: close\r\n\r\n")
//!     .await?;
//! let mut response = String::new();
//! http.read_to_string(&mut response).await?;
//! assert!(response.starts_with("HTTP/1.1 200"), "{response}");
//!
//! // Simulated time moves only when told to, as `POST /clock/advance` does.
//! let simulation = server.simulation();
//! assert_eq!(simulation.now_ms(), MANUAL_EPOCH_MS);
//! simulation.advance(1_000).await?;
//! assert_eq!(simulation.now_ms(), MANUAL_EPOCH_MS + 1_000);
//!
//! println!("MQTT clients connect to {}", server.mqtt_addr());
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Map of the modules
//!
//! All modules are private; this page lists the whole public API.
//! - `app`: the composition root, [`Server`] and its [`Config`].
//! - `clock`: simulated time (realtime, accelerated, manual); the only
//!   reader of the wall clock.
//! - `scenario`: the scenario file and the built-in demo.
//! - `fleet`: devices, credentials, lifecycle, connectivity; the SQLite
//!   store.
//! - `mqtt`: the embedded broker behind a facade: topics, journal,
//!   clients, auth hook, outages.
//! - `dialect`: dialects (codec plugins): a device's topics and
//!   payloads, its codec state, batched encode and publish.
//! - `inbound`: what clients publish in a dialect, decoded and filed
//!   with the fleet, telemetry and the command engine.
//! - `ids`: device ids, stub ids, plugin names and the other names
//!   users type, checked once where they come in.
//! - `edge`: edge nodes: rule pipelines over member devices' readings,
//!   store-and-forward uplink, budgets.
//! - `http`: the REST API.
//! - `stubs`: mock HTTP endpoints, the HTTP request journal and verify.
//! - `telemetry`: the fleet's scheduler, sensor calls, publishing.
//! - `transport`: TLS and WebSocket transports, the built-in certificate
//!   authority.
//! - `plugin`: the wasmtime host, the registry with hot reload, the
//!   folder watcher, the scaffold of a new plugin crate.
//! - `simulation`: simulated time played in order (readings, edge
//!   windows, command events) and the delivery barrier.
//! - `random`: the seeded per-device random streams.
//! - `verify`: count expectations and JSON subset matching, shared by
//!   the journals' verify calls.
//! - `journal`: the ring behind the MQTT, HTTP and telemetry journals,
//!   bounded by a count and by bytes.

#![warn(missing_docs, unreachable_pub)]

mod app;
pub mod bench;
mod builtin;
mod clock;
mod commands;
mod dialect;
mod edge;
mod fleet;
mod hex;
mod http;
mod ids;
mod inbound;
mod journal;
#[cfg(test)]
mod layers;
mod linger;
mod mqtt;
mod plugin;
mod random;
mod ratelimit;
mod scenario;
mod simulation;
mod sqlite;
mod stubs;
mod tasks;
mod telemetry;
mod transport;
mod verify;

pub use app::{Config, MqttAuth, ScenarioChoice, Server, StartError};
pub use clock::{ClockError, ClockMode, MANUAL_EPOCH_MS, parse_rfc3339_ms, rfc3339_ms};
pub use http::{AdminToken, EmptyToken, HttpLimits};
pub use mqtt::{
    AuthDecision, Authorizer, ClientEvent, MqttHandle, PeerCert, PendingDelivery, PublishOutcome,
    PublishProps, Qos,
};
pub use plugin::PluginLimits;
pub use plugin::scaffold::{
    SDK_DIR as PLUGIN_SDK_DIR, Scaffold, ScaffoldError, ScaffoldWorld, create as scaffold_plugin,
};
pub use scenario::DEMO as DEMO_SCENARIO;
pub use simulation::Simulation;
pub use telemetry::TelemetryLimits;
pub use transport::{MqttTransport, TlsSettings};
