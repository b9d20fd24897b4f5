//! Readings that real devices publish over MQTT reach their edge nodes
//! too: a task follows the broker's journal (woken by its cursor, not by
//! polling) and hands each client-published `devices/{id}/telemetry/{sensor}`
//! message of a member device to the tap. The server's own (simulated)
//! readings are tapped in-process and skipped here.
//!
//! A payload is a JSON object with a numeric `value` (and optional `ts`,
//! RFC 3339, and `unit`) or a bare number; anything else is counted on the
//! member's nodes as `readings.invalid_in`. Messages evicted from the
//! journal before the task read them (it holds `--journal-capacity`) are
//! logged (the journal does not say which were telemetry).

use std::sync::Arc;

use super::Tap;
use crate::mqtt::MqttHandle;
use crate::telemetry::Reading;

/// Journal entries read per page.
const PAGE: usize = 1024;
/// After a wake, how long to let more messages gather before reading, so a
/// burst costs a few wakes, not one per message.
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);
const FILTER: &str = "devices/+/telemetry/+";

/// Runs as one of the server's tasks, until the server stops.
pub(crate) async fn follow(mqtt: MqttHandle, tap: Arc<Tap>) {
    let mut newest = mqtt.journal_watch();
    let mut active = tap.active.subscribe();
    let mut cursor = *newest.borrow_and_update();
    let mut evicted = mqtt.messages(Some(FILTER), cursor, 1).evicted;
    loop {
        if active.borrow_and_update().is_none() {
            // No node has members: nothing to follow until one does, then
            // from where the journal was when it did.
            if active.changed().await.is_err() {
                return;
            }
            let Some(since) = *active.borrow_and_update() else {
                continue;
            };
            newest.borrow_and_update();
            cursor = since;
            evicted = mqtt.messages(Some(FILTER), cursor, 1).evicted;
            continue;
        }
        loop {
            let page = mqtt.messages(Some(FILTER), cursor, PAGE);
            if page.evicted > evicted {
                // Entries went before this task saw them; which ones were
                // telemetry is unknown, so it is logged, not guessed.
                crate::ratelimit::warn_limited!(
                    evicted = page.evicted - evicted,
                    "MQTT journal evicted messages before edge nodes read them; raise --journal-capacity"
                );
                evicted = page.evicted;
            }
            for entry in &page.items {
                if entry.client_id.is_some() {
                    take(&tap, &entry.topic, &entry.payload, entry.sim_ms);
                }
            }
            let done = page.next_cursor == cursor || page.items.len() < PAGE;
            cursor = page.next_cursor;
            if done {
                break;
            }
        }
        tokio::select! {
            changed = newest.changed() => if changed.is_err() { return },
            changed = active.changed() => if changed.is_err() { return },
        }
        tokio::time::sleep(GATHER).await;
    }
}

fn take(tap: &Tap, topic: &str, payload: &[u8], received_ms: i64) {
    let mut levels = topic.split('/');
    let (Some(_), Some(device), Some(_), Some(sensor)) =
        (levels.next(), levels.next(), levels.next(), levels.next())
    else {
        return;
    };
    let Some(nodes) = tap.nodes_of(device) else {
        return;
    };
    match parse(device, sensor, payload, received_ms) {
        Some(reading) => nodes.iter().for_each(|n| n.accept(&reading)),
        None => nodes.iter().for_each(|n| n.reject()),
    }
}

fn parse(device: &str, sensor: &str, payload: &[u8], received_ms: i64) -> Option<Reading> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let (number, ts, unit) = match &value {
        serde_json::Value::Number(n) => (n.as_f64()?, None, None),
        serde_json::Value::Object(o) => (
            o.get("value")?.as_f64()?,
            o.get("ts").and_then(|t| t.as_str()),
            o.get("unit").and_then(|u| u.as_str()),
        ),
        _ => return None,
    };
    if !number.is_finite() {
        return None;
    }
    let ts = match ts {
        Some(text) => crate::clock::parse_rfc3339_ms(text)?,
        None => received_ms,
    };
    Some(Reading {
        device: Arc::from(device),
        sensor: Arc::from(sensor),
        ts,
        value: number,
        unit_json: Arc::from(serde_json::to_string(unit.unwrap_or("")).ok()?),
        anomaly: None,
    })
}
