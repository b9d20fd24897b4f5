//! iotmock: a mock IoT platform in one binary.
//!
//! A host server provides the protocols (an MQTT broker and an HTTP REST
//! API) and the simulation; sensor patterns, command handlers and edge
//! rules are WebAssembly components defined by the WIT files in `wit/`,
//! hot-reloaded while the server runs.
//!
//! Map of the modules:
//! - [`app`]: the composition root, [`Server`] and its [`Config`].
//! - [`clock`]: simulated time (realtime, accelerated, manual); the only
//!   reader of the wall clock.
//! - [`scenario`]: the scenario file and the built-in demo.
//! - [`fleet`]: devices, credentials, lifecycle, connectivity; the SQLite
//!   store.
//! - [`mqtt`]: the embedded broker behind a facade: topics, journal,
//!   clients, auth hook, outages.
//! - [`dialect`]: dialects (codec plugins): a device's topics and
//!   payloads, its codec state, batched encode and publish.
//! - [`inbound`]: what clients publish in a dialect, decoded and filed
//!   with the fleet, telemetry and the command engine.
//! - [`ids`]: device ids, stub ids, plugin names and the other names
//!   users type, checked once where they come in.
//! - [`edge`]: edge nodes: rule pipelines over member devices' readings,
//!   store-and-forward uplink, budgets.
//! - [`http`]: the REST API.
//! - [`stubs`]: mock HTTP endpoints, the HTTP request journal and verify.
//! - [`telemetry`]: the fleet's scheduler, sensor calls, publishing.
//! - [`transport`]: TLS and WebSocket transports, the built-in certificate
//!   authority.
//! - [`plugin`]: the wasmtime host, the registry with hot reload, the
//!   folder watcher.
//! - [`simulation`]: simulated time played in order (readings, edge
//!   windows, command events) and the delivery barrier.
//! - [`random`]: the seeded per-device random streams.
//! - [`verify`]: count expectations and JSON subset matching, shared by
//!   the journals' verify calls.
//! - `journal`: the ring behind the MQTT, HTTP and telemetry journals,
//!   bounded by a count and by bytes.

pub mod app;
pub mod builtin;
pub mod clock;
pub mod commands;
pub mod dialect;
pub mod edge;
pub mod fleet;
mod hex;
pub mod http;
pub mod ids;
pub mod inbound;
mod journal;
#[cfg(test)]
mod layers;
mod linger;
pub mod mqtt;
pub mod plugin;
pub mod random;
mod ratelimit;
pub mod scenario;
pub mod simulation;
pub mod sqlite;
pub mod stubs;
pub mod telemetry;
pub mod transport;
pub mod verify;

pub use app::{Config, MqttAuth, ScenarioChoice, Server, StartError};
pub use clock::ClockMode;
