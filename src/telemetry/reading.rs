//! A reading and its JSON wire form.

use std::fmt::Write;

/// One sensor reading as published on `devices/{id}/telemetry/{sensor}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The device id.
    pub device: std::sync::Arc<str>,
    /// The sensor's name.
    pub sensor: std::sync::Arc<str>,
    /// Simulated time, ms since the Unix epoch.
    pub ts: i64,
    /// The value (NaN for a reading the model left out).
    pub value: f64,
    /// Unit as a JSON string literal (quoted and escaped once, not per
    /// reading).
    pub unit_json: std::sync::Arc<str>,
    /// The anomaly the pattern injected, if any.
    pub anomaly: Option<String>,
}

impl Reading {
    /// The record of a reading the sensor model left out: value NaN
    /// (written as `null`), anomaly `"dropout"`. It goes to the export
    /// journal and live subscribers that ask for dropouts, never to MQTT.
    pub fn dropout(
        device: std::sync::Arc<str>,
        sensor: std::sync::Arc<str>,
        ts: i64,
        unit_json: std::sync::Arc<str>,
    ) -> Self {
        Self {
            device,
            sensor,
            ts,
            value: f64::NAN,
            unit_json,
            anomaly: Some("dropout".into()),
        }
    }

    /// Whether this is a dropout record (no value). Readings whose value is
    /// not a finite number are never made, so NaN marks a dropout.
    pub fn is_dropout(&self) -> bool {
        self.value.is_nan()
    }

    /// Writes `{"device","sensor","ts","value","unit"[,"anomaly"]}` into
    /// `out`. Device ids and sensor names are validated to need no escaping.
    pub fn write_json(&self, out: &mut String) {
        out.push_str("{\"device\":\"");
        out.push_str(&self.device);
        out.push_str("\",\"sensor\":\"");
        out.push_str(&self.sensor);
        out.push_str("\",\"ts\":\"");
        crate::clock::write_rfc3339_ms(out, self.ts);
        out.push_str("\",\"value\":");
        if self.value.is_finite() {
            let _ = write!(out, "{}", self.value);
        } else {
            out.push_str("null");
        }
        out.push_str(",\"unit\":");
        out.push_str(&self.unit_json);
        if let Some(anomaly) = &self.anomaly {
            out.push_str(",\"anomaly\":");
            out.push_str(&serde_json::to_string(anomaly).unwrap_or_default());
        }
        out.push('}');
    }

    /// The reading as its MQTT payload, JSON.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(128);
        self.write_json(&mut out);
        out
    }
}

/// A one-degree temperature reading of `device` at `ts`, for tests.
#[cfg(test)]
pub(crate) fn test_reading(device: &str, ts: i64) -> Reading {
    Reading {
        device: device.into(),
        sensor: "temperature".into(),
        ts,
        value: 1.0,
        unit_json: "\"celsius\"".into(),
        anomaly: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_documented_fields() {
        let r = Reading {
            device: "d-1".into(),
            sensor: "temperature".into(),
            ts: crate::clock::MANUAL_EPOCH_MS,
            value: 21.5,
            unit_json: "\"celsius\"".into(),
            anomaly: Some("spike".into()),
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["device"], "d-1");
        assert_eq!(v["sensor"], "temperature");
        assert_eq!(v["ts"], "2026-01-01T00:00:00.000Z");
        assert_eq!(v["value"], 21.5);
        assert_eq!(v["unit"], "celsius");
        assert_eq!(v["anomaly"], "spike");
    }

    #[test]
    fn a_dropout_has_a_null_value() {
        let r = Reading::dropout("d".into(), "s".into(), 0, "\"volt\"".into());
        assert!(r.is_dropout());
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert!(v["value"].is_null());
        assert_eq!(v["anomaly"], "dropout");
    }
}
