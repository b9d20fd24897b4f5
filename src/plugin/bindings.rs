//! Host-side bindings for the four plugin worlds, generated from `wit/`.
//! The `host` and `types` interfaces are generated once (with `sensor`) and
//! shared by the other worlds, so one `Host` implementation serves all.

pub(crate) mod sensor {
    wasmtime::component::bindgen!({
        world: "sensor",
        path: "wit",
    });
}

pub(crate) mod command_handler {
    wasmtime::component::bindgen!({
        world: "command-handler",
        path: "wit",
        with: {
            "iotmock:plugin/types": super::sensor::iotmock::plugin::types,
            "iotmock:plugin/host": super::sensor::iotmock::plugin::host,
        },
    });
}

pub(crate) mod edge_rule {
    wasmtime::component::bindgen!({
        world: "edge-rule",
        path: "wit",
        with: {
            "iotmock:plugin/types": super::sensor::iotmock::plugin::types,
            "iotmock:plugin/host": super::sensor::iotmock::plugin::host,
        },
    });
}

pub(crate) mod codec {
    wasmtime::component::bindgen!({
        world: "codec",
        path: "wit",
        with: {
            "iotmock:plugin/types": super::sensor::iotmock::plugin::types,
            "iotmock:plugin/host": super::sensor::iotmock::plugin::host,
        },
    });
}

pub(crate) use sensor::iotmock::plugin::{host, types};
