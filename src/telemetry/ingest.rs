//! Readings that arrive from outside the scheduler (devices posting over
//! the HTTP device API): published on the same topic with the same JSON as
//! simulated readings, counted, and journaled for export.

use super::{Reading, Telemetry};
use crate::mqtt::{MqttHandle, PublishOutcome, Qos, topics};

impl Telemetry {
    /// Publishes readings in order and journals them before it returns.
    /// They go out at QoS 1 so that an MQTT outage holds them (and replays
    /// them) instead of dropping them.
    pub(crate) async fn ingest(
        &self,
        mqtt: &MqttHandle,
        readings: Vec<Reading>,
    ) -> Vec<PublishOutcome> {
        let mut outcomes = Vec::with_capacity(readings.len());
        let mut payload = String::with_capacity(128);
        for reading in readings {
            payload.clear();
            reading.write_json(&mut payload);
            let topic = topics::telemetry(&reading.device, &reading.sensor);
            let outcome = mqtt
                .publish(
                    &topic,
                    bytes::Bytes::copy_from_slice(payload.as_bytes()),
                    Qos::AtLeastOnce,
                    false,
                )
                .await;
            outcomes.push(outcome);
            // The same hooks as simulated readings: edge nodes and the live
            // stream see readings posted over HTTP too.
            self.stats.published(reading);
        }
        outcomes
    }

    /// Readings a device published itself in its dialect (decoded by its
    /// codec): counted, shown to edge nodes and live subscribers, and
    /// journaled for export, like simulated ones. They are already on the
    /// broker in the device's own words, so nothing is published.
    pub(crate) fn observed(&self, readings: Vec<Reading>) {
        for reading in readings {
            self.stats.published(reading);
        }
    }
}
