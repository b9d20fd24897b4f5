//! Test edge rule that never returns from `process`: the host must stop
//! it at the node's time budget.

wit_bindgen::generate!({
    world: "edge-rule",
    path: "../../../wit",
});

use exports::iotmock::plugin::edge_rule_api::{EdgeReading, Guest, Outcome, Window};
use iotmock::plugin::types::PluginError;

struct Plugin;
export!(Plugin);

impl Guest for Plugin {
    #[allow(clippy::empty_loop)]
    fn process(
        _config: String,
        _state: Vec<u8>,
        _window: Window,
        _readings: Vec<EdgeReading>,
    ) -> Result<Outcome, PluginError> {
        let mut n: u64 = 0;
        loop {
            n = core::hint::black_box(n.wrapping_add(1));
        }
    }
}
