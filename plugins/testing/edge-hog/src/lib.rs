//! Test edge rule that allocates without bound in `process`: the host must
//! stop it at the node's memory budget.

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
        _readings: Vec<Reading>,
    ) -> Result<Vec<Action>, String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(core::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
}
