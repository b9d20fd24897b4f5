//! Test edge rule that forwards every reading as it is. Also serves the
//! tests as a component of another world than `sensor`.

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
        Ok(readings.into_iter().map(Action::Forward).collect())
    }
}
