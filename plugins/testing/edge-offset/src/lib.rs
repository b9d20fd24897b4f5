//! Test edge rule that forwards every reading with 1000 added to its
//! value. Swapped in for `test-edge-pass` under the same name, it shows
//! which version processed each reading.

use iotmock_sdk::edge::{Action, EdgeRule, Reading, Window};
use iotmock_sdk::{AnyConfig, Device};

struct Plugin;

iotmock_sdk::export_edge_rule!(Plugin);

impl EdgeRule for Plugin {
    type Config = AnyConfig;
    type State = ();

    fn new(_: AnyConfig) -> Result<Self, String> {
        Ok(Self)
    }

    fn process(
        &self,
        _node: &Device,
        (): &mut (),
        _window: Window,
        readings: Vec<Reading>,
    ) -> Result<Vec<Action>, String> {
        Ok(readings
            .into_iter()
            .map(|mut r| {
                r.value += 1000.0;
                Action::Forward(r)
            })
            .collect())
    }
}
