//! Test edge rule that forwards every reading with 1000 added to its
//! value. Swapped in for `test-edge-pass` under the same name, it shows
//! which version processed each reading.

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
            actions: readings
                .into_iter()
                .map(|mut r| {
                    r.value += 1000.0;
                    Action::Forward(r)
                })
                .collect(),
            state,
        })
    }
}
