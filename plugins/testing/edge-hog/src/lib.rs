//! Test edge rule that allocates without bound in `process`: the host must
//! stop it at the node's memory budget.

wit_bindgen::generate!({
    world: "edge-rule",
    path: "../../../wit",
});

use exports::iotmock::plugin::edge_rule_api::{EdgeReading, Guest, Outcome, Window};
use iotmock::plugin::types::PluginError;

struct Plugin;
export!(Plugin);

impl Guest for Plugin {
    fn process(
        _config: String,
        _state: Vec<u8>,
        _window: Window,
        _readings: Vec<EdgeReading>,
    ) -> Result<Outcome, PluginError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(core::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
}
