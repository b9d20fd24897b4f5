//! Test edge rule that never returns from `process`: the host must stop
//! it at the node's time budget.

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

    #[allow(clippy::empty_loop)]
    fn process(
        &self,
        _node: &Device,
        (): &mut (),
        _window: Window,
        _readings: Vec<Reading>,
    ) -> Result<Vec<Action>, String> {
        let mut n: u64 = 0;
        loop {
            n = core::hint::black_box(n.wrapping_add(1));
        }
    }
}
