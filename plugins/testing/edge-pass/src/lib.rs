//! Test edge rule that forwards every reading as it is. Also serves the
//! tests as a component of another world than `sensor`.

wit_bindgen::generate!({
    world: "edge-rule",
    path: "../../../wit",
});

use exports::iotmock::plugin::edge_rule_api::{Action, EdgeReading, Guest, Outcome, Window};
use iotmock::plugin::types::PluginError;

struct Plugin;
export!(Plugin);

impl Guest for Plugin {
    fn process(
        _config: String,
        state: Vec<u8>,
        _window: Window,
        readings: Vec<EdgeReading>,
    ) -> Result<Outcome, PluginError> {
        Ok(Outcome {
            actions: readings.into_iter().map(Action::Forward).collect(),
            state,
        })
    }
}
