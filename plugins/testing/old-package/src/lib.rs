//! Test sensor built against the previous version of the WIT package,
//! `iotmock:plugin@0.1.0` (its `sensor-api` as that version had it): the
//! server must refuse it by the version's name and say how to rebuild.

wit_bindgen::generate!({
    inline: "
        package iotmock:plugin@0.1.0;

        interface sensor-api {
            record sensor-info {
                unit: string,
                description: string,
            }

            record sample-request {
                device: u32,
                ts: s64,
                state: list<f64>,
            }

            record sample-result {
                value: option<f64>,
                anomaly: option<string>,
                state: list<f64>,
            }

            variant plugin-error {
                invalid-config(string),
                failed(string),
            }

            describe: func(config: string) -> result<sensor-info, plugin-error>;
            sample: func(config: string, requests: list<sample-request>) -> result<list<sample-result>, plugin-error>;
        }

        world sensor {
            export sensor-api;
        }
    ",
});

use exports::iotmock::plugin::sensor_api::{
    Guest, PluginError, SampleRequest, SampleResult, SensorInfo,
};

struct Plugin;
export!(Plugin);

impl Guest for Plugin {
    fn describe(_config: String) -> Result<SensorInfo, PluginError> {
        Ok(SensorInfo {
            unit: "count".into(),
            description: "always 1.0".into(),
        })
    }

    fn sample(
        _config: String,
        requests: Vec<SampleRequest>,
    ) -> Result<Vec<SampleResult>, PluginError> {
        Ok(requests
            .into_iter()
            .map(|_| SampleResult {
                value: Some(1.0),
                anomaly: None,
                state: Vec::new(),
            })
            .collect())
    }
}
