//! Simulated time played in order. Moving a manual clock is more than
//! changing a number: every reading due in the span is published in
//! timestamp order, every edge window that closes in it is processed, and
//! command events (replies, retries, timeouts, a device going offline)
//! interleave with them at their own instants. [`Simulation::advance`] is
//! that order, for the HTTP API and for programs that embed the server
//! alike; [`Simulation::wait_delivered`] is the barrier a test adds when
//! it asserts on what its own MQTT subscribers received.

use std::time::Duration;

use crate::clock::{Clock, ClockError};
use crate::commands::Commands;
use crate::edge::EdgeNodes;
use crate::mqtt::{MqttHandle, PendingDelivery};
use crate::telemetry::Telemetry;

/// The most simulated time one step of an advance covers: the work of a
/// long advance is done a step at a time, so that a caller that goes away
/// (dropping the future) stops it soon.
const STEP_MS: i64 = 10_000;

/// The parts of the server that simulated time drives; cheap to clone.
#[derive(Clone)]
pub struct Simulation {
    clock: Clock,
    telemetry: Telemetry,
    edge: EdgeNodes,
    commands: Commands,
    mqtt: MqttHandle,
}

impl Simulation {
    pub(crate) fn new(
        clock: Clock,
        telemetry: Telemetry,
        edge: EdgeNodes,
        commands: Commands,
        mqtt: MqttHandle,
    ) -> Self {
        Self {
            clock,
            telemetry,
            edge,
            commands,
            mqtt,
        }
    }

    /// Simulated time now, ms since the epoch.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// How the clock runs.
    pub fn mode(&self) -> crate::clock::ClockMode {
        self.clock.mode()
    }

    /// Moves a manual clock forward by `ms` and returns the new time once
    /// every reading due in the span has been published (in timestamp
    /// order), every edge node has processed the windows that closed in
    /// it, and the span's command events have happened. Dropping the
    /// future stops the clock at the step it had reached.
    pub async fn advance(&self, ms: i64) -> Result<i64, ClockError> {
        self.clock.check_advance(ms)?;
        let start = self.clock.now_ms();
        let target = start.saturating_add(ms);
        // Commands answered before the advance (a handler call started by
        // a send) change device state before any reading of the span.
        self.commands.settle(start).await;
        // Steps end at each command event, so readings, edge windows and
        // command events interleave in time order whatever the span.
        loop {
            let now = self.clock.now_ms();
            if now >= target {
                return Ok(now);
            }
            let limit = target.min(now.saturating_add(STEP_MS));
            let step_to = self
                .commands
                .next_due()
                .filter(|due| *due > now && *due < limit)
                .unwrap_or(limit);
            self.clock.advance(step_to - now)?;
            self.telemetry.wait_produced(step_to).await;
            self.edge.wait_processed(step_to).await;
            self.commands.settle(step_to).await;
        }
    }

    /// Waits until every connected MQTT client has every message routed
    /// to it so far: written to its socket (QoS 0) or acknowledged by it
    /// (QoS 1/2). After `timeout`, the clients still waiting.
    pub async fn wait_delivered(&self, timeout: Duration) -> Result<(), Vec<PendingDelivery>> {
        self.mqtt.wait_delivered(timeout).await
    }
}
