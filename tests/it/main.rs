//! Integration tests: the real server on ephemeral ports, real clients.
//! One binary (see `autotests = false`), shared helpers in `support`.

mod support;

mod api;
mod bench;
mod broker;
mod commands;
mod fleet;
mod mosquitto;
mod plugins;
mod process;
mod telemetry;
