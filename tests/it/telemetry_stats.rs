//! Statistics of generated series, through the real server: a manual
//! clock, readings exported over HTTP, measured against the configured
//! model. Each check states its tolerance; the seed is fixed, so a pass
//! is reproducible, and the tolerances are several standard errors wide
//! so another seed passes too.

use iotmock::ClockMode;
use serde_json::{Value, json};

use crate::support::TestServer;

const HOUR_MS: f64 = 3_600_000.0;
const DAY_MS: i64 = 86_400_000;

/// Runs `scenario` for `days` simulated days and exports every reading.
async fn series(scenario: &str, days: i64, seed: u64) -> Vec<Value> {
    let server = TestServer::with_scenario(scenario, |c| {
        c.clock = ClockMode::Manual;
        c.seed = Some(seed);
    })
    .await;
    // One day per call: the most one advance may move by default.
    for _ in 0..days {
        let (status, _) = server
            .post("/api/v1/clock/advance", json!({"ms": DAY_MS}))
            .await;
        assert_eq!(status, 200);
    }
    let text = server
        .http
        .get(server.url("/api/v1/telemetry?limit=100000"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    server.stop().await;
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn of_device(readings: &[Value], device: &str) -> (Vec<f64>, Vec<f64>) {
    readings
        .iter()
        .filter(|r| r["device"] == device)
        .map(|r| {
            let ts = iotmock::parse_rfc3339_ms(r["ts"].as_str().unwrap()).unwrap();
            (ts as f64, r["value"].as_f64().unwrap())
        })
        .unzip()
}

/// Least-squares fit of `c + a·cos(ωt) + b·sin(ωt)` for period `period_ms`:
/// (residuals, amplitude, hour of the peak).
fn fit_sinusoid(ts: &[f64], xs: &[f64], period_ms: f64) -> (Vec<f64>, f64, f64) {
    let w = std::f64::consts::TAU / period_ms;
    // Normal equations, 3×3, solved by Cramer's rule.
    let mut m = [[0.0f64; 3]; 3];
    let mut v = [0.0f64; 3];
    for (&t, &x) in ts.iter().zip(xs) {
        let f = [1.0, (w * t).cos(), (w * t).sin()];
        for i in 0..3 {
            v[i] += f[i] * x;
            for j in 0..3 {
                m[i][j] += f[i] * f[j];
            }
        }
    }
    let det = |m: &[[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(&m);
    let mut coef = [0.0; 3];
    for (k, c) in coef.iter_mut().enumerate() {
        let mut mk = m;
        for i in 0..3 {
            mk[i][k] = v[i];
        }
        *c = det(&mk) / d;
    }
    let residuals = ts
        .iter()
        .zip(xs)
        .map(|(&t, &x)| x - coef[0] - coef[1] * (w * t).cos() - coef[2] * (w * t).sin())
        .collect();
    let amplitude = coef[1].hypot(coef[2]);
    let peak_ms = coef[2].atan2(coef[1]) / w;
    let peak_hour = (peak_ms / HOUR_MS).rem_euclid(period_ms / HOUR_MS);
    (residuals, amplitude, peak_hour)
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn std_dev(xs: &[f64]) -> f64 {
    let m = mean(xs);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64).sqrt()
}

fn autocorrelation(xs: &[f64], lag: usize) -> f64 {
    let m = mean(xs);
    let var: f64 = xs.iter().map(|x| (x - m).powi(2)).sum();
    let cov: f64 = xs
        .iter()
        .zip(&xs[lag..])
        .map(|(a, b)| (a - m) * (b - m))
        .sum();
    cov / var
}

/// Temperature with a known model: no weather wander, a fixed daily
/// swing of 4 °C peaking at 15:00, AR(1) noise 0.3 °C with lag-1
/// correlation 0.9, reported on a 0.05 °C grid, every 10 minutes.
const MODEL: &str = r#"
[[fleet]]
id_pattern = "m-{n}"
count = 2
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 600000
config = { mean = 20.0, amplitude = 4.0, peak_hour = 15.0, noise = 0.3, correlation = 0.9, resolution = 0.05, weather_sd = 0.0, amplitude_variability = 0.0 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_statistics_match_the_configured_model() {
    let days = 8;
    let readings = series(MODEL, days, 2026).await;
    assert_eq!(readings.len(), 2 * 144 * days as usize);
    let mut pooled_residuals = Vec::new();
    for device in ["m-1", "m-2"] {
        let (ts, xs) = of_device(&readings, device);

        // Period: the sinusoid that explains most of the series, on a grid
        // of 20 h to 28 h in 6-minute steps. Tolerance ±0.3 h.
        let best = (0..=80)
            .map(|k| (20.0 + k as f64 * 0.1) * HOUR_MS)
            .map(|p| {
                let (r, _, _) = fit_sinusoid(&ts, &xs, p);
                (r.iter().map(|e| e * e).sum::<f64>(), p)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap()
            .1;
        assert!(
            (best / HOUR_MS - 24.0).abs() <= 0.3,
            "{device}: fitted period {} h",
            best / HOUR_MS
        );
        // The autocorrelation peaks one day (144 readings) later, ±2.
        let peak_lag = (100..=200)
            .max_by(|&a, &b| autocorrelation(&xs, a).total_cmp(&autocorrelation(&xs, b)))
            .unwrap();
        assert!(
            (142..=146).contains(&peak_lag),
            "{device}: autocorrelation peaks at lag {peak_lag}"
        );

        // Swing and phase at 24 h: amplitude 4 ± 0.2 °C, peak 15:00 ± 0.5 h.
        let (residuals, amplitude, peak_hour) = fit_sinusoid(&ts, &xs, 24.0 * HOUR_MS);
        eprintln!(
            "{device}: period {:.2} h, acf peak lag {peak_lag}, amplitude {amplitude:.3}, peak {peak_hour:.2} h, mean {:.3}",
            best / HOUR_MS,
            mean(&xs)
        );
        assert!(
            (amplitude - 4.0).abs() <= 0.2,
            "{device}: amplitude {amplitude}"
        );
        assert!(
            (peak_hour - 15.0).abs() <= 0.5,
            "{device}: peak at {peak_hour} h"
        );
        assert!(
            (mean(&xs) - 20.0).abs() <= 0.15,
            "{device}: mean {}",
            mean(&xs)
        );

        // Quantization: every value is a whole multiple of 0.05 °C, and
        // the grid is not coarser (odd multiples occur).
        let steps: Vec<f64> = xs.iter().map(|x| x / 0.05).collect();
        assert!(
            steps.iter().all(|k| (k - k.round()).abs() < 1e-6),
            "{device}: a value off the 0.05 grid"
        );
        assert!(steps.iter().any(|k| k.round() as i64 % 2 != 0));
        pooled_residuals.push(residuals);
    }

    // Noise: the residuals' standard deviation is the configured 0.3 °C
    // (quantization adds 0.014 °C in quadrature); tolerance ±0.05 °C (about
    // 3.5 standard errors for AR(1) noise at this length).
    for residuals in &pooled_residuals {
        let sd = std_dev(residuals);
        assert!((sd - 0.3).abs() <= 0.05, "noise sd {sd}");
        // Lag-1 autocorrelation 0.9 ± 0.04 (about 3 standard errors).
        let rho = autocorrelation(residuals, 1);
        eprintln!("residuals: sd {sd:.4}, lag-1 {rho:.4}");
        assert!((rho - 0.9).abs() <= 0.04, "lag-1 autocorrelation {rho}");
    }
}

const ANOMALOUS: &str = r#"
[[fleet]]
id = "a-1"
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 60000
config = { anomalies = { spike = 0.05 } }
[[fleet.sensors]]
plugin = "pressure"
interval_ms = 60000
config = { anomalies = { out_of_range = 0.02 } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_anomaly_rates_match_the_configured_rates() {
    let days = 6;
    let readings = series(ANOMALOUS, days, 99).await;
    let per_sensor = (days * 1440) as usize;
    for (sensor, label, rate, tolerance) in [
        // Standard error sqrt(r(1-r)/n): 0.0023 and 0.0015; tolerance
        // about 4 of them.
        ("temperature", "spike", 0.05, 0.01),
        ("pressure", "out-of-range", 0.02, 0.006),
    ] {
        let of: Vec<&Value> = readings.iter().filter(|r| r["sensor"] == sensor).collect();
        assert_eq!(of.len(), per_sensor, "{sensor}");
        let flagged = of.iter().filter(|r| r["anomaly"] == label).count();
        assert_eq!(
            of.iter().filter(|r| r.get("anomaly").is_some()).count(),
            flagged,
            "{sensor}: only {label} is configured"
        );
        let fraction = flagged as f64 / per_sensor as f64;
        eprintln!("{sensor}: {label} fraction {fraction:.4} (configured {rate})");
        assert!(
            (fraction - rate).abs() <= tolerance,
            "{sensor}: {label} fraction {fraction}, configured {rate}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_temperature_follows_a_thermostat_target_with_a_first_order_lag() {
    // A flat 20 °C room; a test plugin sets the thermostat's `target` to
    // 25 °C (as a command handler would); tau 600 s.
    let scenario = r#"
[[fleet]]
id = "room"
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 60000
config = { mean = 20.0, amplitude = 0.0, noise = 0.02, weather_sd = 0.0, amplitude_variability = 0.0, tau_s = 600 }
"#;
    let server = TestServer::with_scenario(scenario, |c| {
        c.clock = ClockMode::Manual;
        c.seed = Some(5);
    })
    .await;
    let (status, _) = server
        .put_bytes(
            "/api/v1/plugins/set-target",
            crate::support::test_plugin_bytes("test_set_target.wasm"),
        )
        .await;
    assert!(status == 200 || status == 201, "{status}");
    // An hour of the free-running room first.
    server
        .post("/api/v1/clock/advance", json!({"ms": 3_600_000}))
        .await;
    // Then the thermostat: a second sensor that sets `target`.
    let response = server
        .http
        .patch(server.url("/api/v1/devices/room"))
        .json(&json!({"sensors": [
            {"plugin": "temperature", "interval_ms": 60000, "config": {"mean": 20.0, "amplitude": 0.0, "noise": 0.02, "weather_sd": 0.0, "amplitude_variability": 0.0, "tau_s": 600}},
            {"plugin": "set-target", "name": "target", "interval_ms": 60000, "config": {"target": 25.0}},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server
        .post("/api/v1/clock/advance", json!({"ms": 2 * 3_600_000}))
        .await;
    let text = server
        .http
        .get(server.url("/api/v1/telemetry?device=room&limit=100000"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    server.stop().await;
    let readings: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ts = |r: &Value| iotmock::parse_rfc3339_ms(r["ts"].as_str().unwrap()).unwrap();
    let set_at = readings
        .iter()
        .find(|r| r["sensor"] == "target")
        .map(ts)
        .expect("the target was set");
    let temperature: Vec<(i64, f64)> = readings
        .iter()
        .filter(|r| r["sensor"] == "temperature")
        .map(|r| (ts(r), r["value"].as_f64().unwrap()))
        .collect();
    let tau = 600_000;
    let mut checked = [0; 3];
    for &(t, v) in &temperature {
        if t < set_at - 60_000 {
            // Free running: 20 °C ± noise (tolerance 0.1 °C, 5 sd).
            assert!((v - 20.0).abs() < 0.1, "before the target: {v} at {t}");
            checked[0] += 1;
        } else if (t - set_at - tau).abs() <= 30_000 {
            // One time constant in: 1 - 1/e of the 5 °C gap closed, 23.16 °C;
            // tolerance 0.45 °C for where the target fell within a reading.
            assert!((v - 23.16).abs() < 0.45, "after one tau: {v}");
            checked[1] += 1;
        } else if t > set_at + 6 * tau {
            // Six time constants in: at the target (tolerance 0.1 °C).
            assert!((v - 25.0).abs() < 0.1, "settled: {v} at {t}");
            checked[2] += 1;
        }
    }
    assert!(
        checked[0] >= 50 && checked[1] == 1 && checked[2] >= 50,
        "{checked:?}"
    );
}
