//! Integration tests: the real server on ephemeral ports, real clients.
//! One binary (see `autotests = false`), shared helpers in `support`.

mod support;

mod api;
mod broker;
mod budgets;
mod commands;
mod config_checks;
mod dialects;
mod durability;
mod edge;
mod embedding;
mod engine;
mod fleet;
mod hardening;
mod http_commands;
mod http_devices;
mod isolation;
mod mosquitto;
mod mqtt_fuzz;
mod mqtt_protocol;
mod plugin_sdk;
mod plugins;
mod process;
mod readme;
mod shutdown;
mod stubs;
mod telemetry;
mod telemetry_buffer;
mod telemetry_stats;
mod telemetry_stream;
mod tls;
mod websocket;
