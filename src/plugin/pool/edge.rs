//! The edge-rule call path of the pool: one pipeline stage per call, with
//! the node's own time and memory budget instead of the host's defaults.

use std::sync::Arc;

use super::super::bindings::edge_rule::exports::iotmock::plugin::edge_rule_api as wit;
use super::super::edge_rule::{
    CallBudget, EdgeAction, EdgeAggregate, EdgeAlert, EdgeCommand, EdgeOutcome, EdgeReading,
    EdgeWindow,
};
use super::{
    CallContext, CallError, EPOCH_TICK, Exports, Pool, Version, Worker, World, guest_error,
};

type Answer = (Result<EdgeOutcome, CallError>, CallContext);

impl Pool {
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn process_edge(
        &self,
        name: &str,
        config: Arc<str>,
        state: Vec<u8>,
        window: EdgeWindow,
        readings: Vec<EdgeReading>,
        ctx: CallContext,
        budget: CallBudget,
    ) -> Answer {
        let (entry, version) = match self.lookup(name, World::EdgeRule) {
            Ok(found) => found,
            Err(e) => return (Err(e), ctx),
        };
        // An empty batch is a configuration check: refusing a bad config is
        // the plugin doing its job, not a failing call.
        let config_check = readings.is_empty();
        match self
            .run(
                entry,
                move |w| process_on(w, &version, &config, state, window, readings, ctx, budget),
                move |r: &Answer| {
                    r.0.as_ref()
                        .err()
                        .filter(|e| !(config_check && matches!(e, CallError::InvalidConfig { .. })))
                },
            )
            .await
        {
            Ok(answer) => answer,
            Err(e) => (Err(e), CallContext::default()),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn process_on(
    worker: &mut Worker,
    version: &Arc<Version>,
    config: &str,
    state: Vec<u8>,
    window: EdgeWindow,
    readings: Vec<EdgeReading>,
    ctx: CallContext,
    budget: CallBudget,
) -> Answer {
    let ticks = (budget.timeout.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64;
    let window = wit::Window {
        start: window.start,
        end: window.end,
    };
    let readings: Vec<wit::EdgeReading> = readings.into_iter().map(to_wit).collect();
    // The worker's defaults name the deadline in errors; this call has its own.
    let default_timeout_ms = std::mem::replace(
        &mut worker.timeout_ms,
        budget.timeout.as_millis().max(1) as u64,
    );
    let (result, ctx) = worker.call(version, ctx, |store, exports| {
        let Exports::EdgeRule(rule) = exports else {
            unreachable!("world checked")
        };
        store.set_epoch_deadline(ticks);
        store.data_mut().limiter.max_bytes = budget.max_memory_bytes;
        rule.iotmock_plugin_edge_rule_api()
            .call_process(store, config, &state, window, &readings)
    });
    worker.timeout_ms = default_timeout_ms;
    let name = &*version.name;
    let result = result
        .and_then(|r| r.map_err(|e| guest_error(name, e)))
        .map(|outcome| EdgeOutcome {
            actions: outcome.actions.into_iter().map(from_wit).collect(),
            state: outcome.state,
        });
    (result, ctx)
}

fn to_wit(r: EdgeReading) -> wit::EdgeReading {
    wit::EdgeReading {
        device: r.device,
        sensor: r.sensor,
        ts: r.ts,
        value: r.value,
        unit: r.unit,
        seq: r.seq,
    }
}

fn from_wit(action: wit::Action) -> EdgeAction {
    match action {
        wit::Action::Forward(r) => EdgeAction::Forward(EdgeReading {
            device: r.device,
            sensor: r.sensor,
            ts: r.ts,
            value: r.value,
            unit: r.unit,
            seq: r.seq,
        }),
        wit::Action::Aggregate(a) => EdgeAction::Aggregate(EdgeAggregate {
            device: a.device,
            sensor: a.sensor,
            window: EdgeWindow {
                start: a.window.start,
                end: a.window.end,
            },
            min: a.min,
            max: a.max,
            mean: a.mean,
            count: a.count,
        }),
        wit::Action::Alert(a) => EdgeAction::Alert(EdgeAlert {
            device: a.device,
            sensor: a.sensor,
            severity: match a.severity {
                wit::Severity::Info => "info",
                wit::Severity::Warning => "warning",
                wit::Severity::Critical => "critical",
            }
            .to_string(),
            message: a.message,
            value: a.value,
        }),
        wit::Action::Command(c) => EdgeAction::Command(EdgeCommand {
            device: c.device,
            name: c.name,
            params: c.params,
        }),
    }
}
