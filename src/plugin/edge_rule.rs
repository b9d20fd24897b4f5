//! The edge-rule world as the rest of the server sees it: plain types for
//! a batch, its actions and a per-call budget, and the host call that runs
//! one pipeline stage. No wasmtime type leaves this module.

use std::sync::Arc;
use std::time::Duration;

use super::{CallContext, CallError, PluginHost};

/// One reading as an edge rule sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeReading {
    /// The device that sent it.
    pub device: String,
    /// The sensor's name.
    pub sensor: String,
    /// Simulated time, ms since the Unix epoch.
    pub ts: i64,
    /// The value.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// Per-node sequence number.
    pub seq: u64,
}

/// A batching window, simulated ms: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeWindow {
    /// Where the window starts, simulated ms since the Unix epoch.
    pub start: i64,
    /// Where it ends (exclusive).
    pub end: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EdgeAggregate {
    /// None: over every device of the node.
    pub device: Option<String>,
    pub sensor: String,
    pub window: EdgeWindow,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EdgeAlert {
    pub device: String,
    pub sensor: String,
    pub severity: String,
    pub message: String,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EdgeCommand {
    pub device: String,
    pub name: String,
    /// JSON text.
    pub params: String,
}

/// What a stage asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum EdgeAction {
    Forward(EdgeReading),
    Aggregate(EdgeAggregate),
    Alert(EdgeAlert),
    Command(EdgeCommand),
}

/// A stage's answer: its actions, and the state it wants back next time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeOutcome {
    pub actions: Vec<EdgeAction>,
    pub state: Vec<u8>,
}

/// Limits of one call, overriding the host's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallBudget {
    /// Longest the call may run (enforced by epoch deadline).
    pub timeout: Duration,
    /// Largest linear memory the instance may grow to during the call.
    pub max_memory_bytes: usize,
}

impl PluginHost {
    /// Runs one stage of an edge pipeline: plugin `name` (an edge-rule)
    /// over `readings`. `ctx.slots[0]` is the node; it is handed back with
    /// its random stream advanced.
    #[allow(clippy::too_many_arguments)]
    pub async fn process_edge(
        &self,
        name: &str,
        config: Arc<str>,
        state: Vec<u8>,
        window: EdgeWindow,
        readings: Vec<EdgeReading>,
        ctx: CallContext,
        budget: CallBudget,
    ) -> (Result<EdgeOutcome, CallError>, CallContext) {
        self.pool
            .process_edge(name, config, state, window, readings, ctx, budget)
            .await
    }
}
