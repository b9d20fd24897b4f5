//! The internals the benchmarks (`benches/` and the `iotmock-bench`
//! crate) drive directly: the plugin host and its call types, the broker
//! on its own, the clock, the random streams, the reading encoder.
//!
//! Not a stable API: it follows the internals and changes without notice.
//! Programs that embed iotmock use the items at the crate root.

pub use crate::builtin::TEST_PLUGINS_DIR;
pub use crate::clock::Clock;
pub use crate::mqtt::topics::telemetry as telemetry_topic;
pub use crate::mqtt::{Broker, MqttConfig};
pub use crate::plugin::{
    CallBudget, CallContext, CodecDevice, CodecEvent, CodecReading, DeviceSlot, EdgeReading,
    EdgeWindow, EncodeRequest, PluginHost, SampleRequest,
};
pub use crate::random::DeviceRng;
pub use crate::telemetry::Reading;

/// The plugin host of a running server.
pub fn plugins(server: &crate::Server) -> &PluginHost {
    server.plugins()
}
