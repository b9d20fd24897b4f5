//! The iotmock plugin SDK: everything a plugin needs besides its model.
//!
//! A plugin is a WebAssembly component of one of the worlds in the WIT
//! package this crate carries (`wit/`, the same files the server is built
//! from). Pick the world with a cargo feature and implement its trait:
//!
//! | feature | trait | export macro |
//! |---|---|---|
//! | `sensor` | [`sensor::Sensor`] | [`export_sensor!`] |
//! | `command-handler` | [`command::CommandHandler`] | [`export_command_handler!`] |
//! | `edge-rule` | [`edge::EdgeRule`] | [`export_edge_rule!`] |
//!
//! The SDK parses the JSON configuration into the trait's `Config` (serde;
//! an unknown key is refused by name, see [`parse_config`]), keeps the
//! model's typed state between calls in a versioned byte encoding
//! ([`codec`]), and turns the model's answers into the world's records.
//! [`Device`] reaches the host: the device's seeded random stream, its
//! shared state and simulated time. Build with
//! `cargo build --release --target wasm32-wasip2`.
//!
//! Besides the bindings, plain Rust models that need no host (and are
//! tested on the host target): they take their random numbers from a
//! [`Random`] source, which [`Device::random`] builds over the host's
//! per-device stream, so a plugin stays deterministic.
//! - numeric basics: [`gaussian`], [`ar1_step`], [`quantize`], [`diurnal`];
//! - [`Random`] and [`Stream`]: uniform, normal, exponential and geometric
//!   draws over any `u64` source;
//! - [`weather`]: the slow day-to-day (or hour-to-hour) random walk that
//!   moves means and amplitudes;
//! - [`anomaly`]: the anomaly injector every shipped sensor shares, and
//!   their common state ([`state`]);
//! - models used by one plugin each but tested here: [`pir`] (motion),
//!   [`bursts`] (vibration), [`energy`] (load profile and meter),
//!   [`battery`] (discharge curves), [`physics`] (humidity, altitude),
//!   [`thermostat`] (a target temperature reached with a first-order lag);
//! - [`dialect`]: timestamps, JSON strings, topic templates and state numbers
//!   for codec plugins (dialects).

extern crate alloc;

pub mod anomaly;
pub mod battery;
pub mod bursts;
pub mod codec;
#[cfg(feature = "command-handler")]
pub mod command;
pub mod dialect;
#[cfg(feature = "edge-rule")]
pub mod edge;
pub mod energy;
mod host;
pub mod physics;
pub mod pir;
#[cfg(feature = "sensor")]
pub mod sensor;
pub mod state;
pub mod thermostat;
pub mod weather;

pub use host::{Device, Level, log, now};

use serde::de::DeserializeOwned;

/// Parses a plugin's JSON configuration, naming what is wrong on failure.
/// An empty string means "all defaults".
///
/// Give the config struct `#[serde(default, deny_unknown_fields)]`: an
/// unknown key is then refused by name (`unknown field \`amplitud\`,
/// expected one of ...`), and a bad value names its field (`field \`mean\`:
/// invalid type: string "hot", expected f64`), which serde alone does not
/// say. The host calls `describe` with every configuration before it
/// accepts it, so this is what a user sees in a 422 or a refused scenario.
pub fn parse_config<T: DeserializeOwned + Default>(config: &str) -> Result<T, String> {
    if config.trim().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(config).map_err(|e| format!("config: {}", blame::<T>(config, &e)))
}

/// Words a config error so it names the top-level field at fault: with
/// every field defaulted, each key can be tried alone, and the first that
/// fails alone is the one to fix.
fn blame<T: DeserializeOwned>(config: &str, error: &serde_json::Error) -> String {
    let whole = without_position(error);
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(config)
    else {
        return whole;
    };
    for (key, value) in map {
        let mut alone = serde_json::Map::new();
        alone.insert(key.clone(), value);
        if let Err(e) = serde_json::from_value::<T>(serde_json::Value::Object(alone)) {
            let detail = without_position(&e);
            if detail.starts_with(&unknown_field_prefix(&key)) {
                return detail;
            }
            return format!("field `{key}`: {detail}");
        }
    }
    whole
}

/// The prefix of serde's message for the unknown top-level key `key`.
fn unknown_field_prefix(key: &str) -> String {
    format!("unknown field `{key}`")
}

/// serde_json's message without its " at line L column C" (configs are one
/// line of JSON the host wrote, so the position helps nobody).
fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.find(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// The configuration of a plugin that takes none: `{}` (or nothing), and
/// any key is refused by name.
#[derive(serde::Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// The configuration of a plugin that ignores whatever it is given.
pub type AnyConfig = serde::de::IgnoredAny;

/// Fails with `message` unless `ok`: for config checks.
pub fn require(ok: bool, message: &str) -> Result<(), String> {
    if ok { Ok(()) } else { Err(message.to_string()) }
}

/// Where an environmental sensor hangs; picks the defaults of the fields
/// a config leaves out.
#[derive(serde::Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    #[default]
    Indoor,
    Outdoor,
}

/// Reads a JSON number from a device-state value (as `host::get-state`
/// returns it); anything else is `None`.
pub fn state_number(text: Option<&str>) -> Option<f64> {
    let value: f64 = serde_json::from_str(text?).ok()?;
    value.is_finite().then_some(value)
}

/// A standard normal value from two uniform values in [0, 1) (Box–Muller).
pub fn gaussian(u1: f64, u2: f64) -> f64 {
    // 1 - u keeps the logarithm finite when u1 is exactly 0.
    let r = (-2.0 * (1.0 - u1).ln()).sqrt();
    r * (core::f64::consts::TAU * u2).cos()
}

/// One step of a first-order autoregressive process with lag-1
/// autocorrelation `phi` and stationary standard deviation `sigma`.
pub fn ar1_step(previous: f64, phi: f64, sigma: f64, normal: f64) -> f64 {
    phi * previous + (1.0 - phi * phi).max(0.0).sqrt() * sigma * normal
}

/// `steps` steps of the same AR(1) process at once (exact in
/// distribution): the lag-k correlation is `phi^k`. Used to catch up after
/// a gap without looping.
pub fn ar1_steps(previous: f64, phi: f64, sigma: f64, steps: f64, normal: f64) -> f64 {
    let decay = phi.powf(steps.max(0.0));
    decay * previous + (1.0 - decay * decay).max(0.0).sqrt() * sigma * normal
}

/// Rounds to the sensor's resolution (0 leaves the value as it is). For
/// steps like 0.01 it divides by the whole number 100 instead of
/// multiplying by 0.01, so 21.24 comes out as 21.24, not 21.240000000000002.
pub fn quantize(value: f64, step: f64) -> f64 {
    snap(value, step, f64::round)
}

/// Like [`quantize`] but rounds down, as a counter register does (an
/// energy meter shows 12.345 kWh until it has counted 12.346).
pub fn quantize_down(value: f64, step: f64) -> f64 {
    // The tiny bias keeps 0.3 / 0.1 = 2.9999999999999996 at 3.
    snap(value, step, |x| (x + 1e-9).floor())
}

fn snap(value: f64, step: f64, round: impl Fn(f64) -> f64) -> f64 {
    if step <= 0.0 {
        return value;
    }
    let per_unit = (1.0 / step).round();
    if per_unit >= 1.0 && (per_unit * step - 1.0).abs() < 1e-9 {
        round(value * per_unit) / per_unit
    } else {
        round(value / step) * step
    }
}

/// Milliseconds in a day.
pub const DAY_MS: f64 = 86_400_000.0;
/// Milliseconds in an hour.
pub const HOUR_MS: f64 = 3_600_000.0;

/// Hour of the (UTC) day at `ts_ms`, in [0, 24).
pub fn hour_of_day(ts_ms: f64) -> f64 {
    ts_ms.rem_euclid(DAY_MS) / HOUR_MS
}

/// A cosine cycle of length `period_ms` that is 1 at `peak_hour` (hours
/// after midnight UTC, counted in the cycle's own hours when the period is
/// not a day) and -1 half a period later.
pub fn diurnal(ts_ms: f64, peak_hour: f64, period_ms: f64) -> f64 {
    let phase = (ts_ms - peak_hour * HOUR_MS) / period_ms;
    (phase * core::f64::consts::TAU).cos()
}

/// Daytime weight in [night, 1]: `night` at the trough, 1 at `peak_hour`.
pub fn day_weight(ts_ms: f64, peak_hour: f64, night: f64) -> f64 {
    night + (1.0 - night) * 0.5 * (1.0 + diurnal(ts_ms, peak_hour, DAY_MS))
}

/// Smooth 0→1 ramp on [0, 1] with zero slope at both ends.
pub fn smoothstep(x: f64) -> f64 {
    let x = x.clamp(0.0, 1.0);
    x * x * (3.0 - 2.0 * x)
}

/// Linear interpolation in a table of (x, y) points sorted by x; clamps
/// outside the table.
pub fn interpolate(table: &[(f64, f64)], x: f64) -> f64 {
    let (first, last) = (table[0], table[table.len() - 1]);
    if x <= first.0 {
        return first.1;
    }
    if x >= last.0 {
        return last.1;
    }
    for pair in table.windows(2) {
        let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
        if x <= x1 {
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0);
        }
    }
    last.1
}

/// A source of random numbers. Only [`Random::next_u64`] is required; the
/// rest are derived from it, so the number of raw draws each one makes is
/// fixed (one per uniform) and a model's stream use is predictable.
pub trait Random {
    /// 64 fresh random bits.
    fn next_u64(&mut self) -> u64;

    /// A uniform value in [0, 1) with 53 bits of precision.
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// A standard normal value.
    fn normal(&mut self) -> f64 {
        gaussian(self.uniform(), self.uniform())
    }

    /// True with probability `p`; draws nothing when `p` is 0 or less.
    fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            false
        } else if p >= 1.0 {
            true
        } else {
            self.uniform() < p
        }
    }

    /// An exponential value with the given mean.
    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.uniform()).ln()
    }

    /// A geometric count on {1, 2, ...} with the given mean (at least 1).
    fn geometric(&mut self, mean: f64) -> f64 {
        if mean <= 1.0 {
            return 1.0;
        }
        let u = self.uniform();
        ((1.0 - u).ln() / (1.0 - 1.0 / mean).ln()).ceil().max(1.0)
    }

    /// +1 or -1 with equal chance.
    fn sign(&mut self) -> f64 {
        if self.next_u64() >> 63 == 0 {
            1.0
        } else {
            -1.0
        }
    }
}

/// [`Random`] over a closure that returns 64 random bits, e.g. the host's
/// `random-u64` for one device. Normal values come in pairs from
/// Box–Muller; the second is kept for the next call, so two normals cost
/// two raw draws. Build one per request: the kept value never outlives it,
/// which keeps the stream use a function of the request alone.
pub struct Stream<F: FnMut() -> u64> {
    source: F,
    spare: Option<f64>,
}

impl<F: FnMut() -> u64> Stream<F> {
    pub fn new(source: F) -> Self {
        Self {
            source,
            spare: None,
        }
    }
}

impl<F: FnMut() -> u64> Random for Stream<F> {
    fn next_u64(&mut self) -> u64 {
        (self.source)()
    }

    fn normal(&mut self) -> f64 {
        if let Some(spare) = self.spare.take() {
            return spare;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * (1.0 - u1).ln()).sqrt();
        let angle = core::f64::consts::TAU * u2;
        self.spare = Some(r * angle.sin());
        r * angle.cos()
    }
}

/// SplitMix64 finalizer: a bijective 64-bit mix.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A counter-based SplitMix64 stream: draw `n` is `mix64(seed + n·γ)`.
/// Its whole state is two integers below 2^53, so it fits exactly in the
/// `f64` state vector. The anomaly injector uses one, seeded once from the
/// host stream, so turning anomalies on or off does not shift the draws of
/// the clean signal.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Counter {
    pub seed: u64,
    pub drawn: u64,
}

impl Random for Counter {
    fn next_u64(&mut self) -> u64 {
        self.drawn += 1;
        mix64(
            self.seed
                .wrapping_add(self.drawn.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        )
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A seeded test stream (SplitMix64).
    pub fn rng(seed: u64) -> Counter {
        Counter { seed, drawn: 0 }
    }

    pub fn mean(xs: &[f64]) -> f64 {
        xs.iter().sum::<f64>() / xs.len() as f64
    }

    pub fn std_dev(xs: &[f64]) -> f64 {
        let m = mean(xs);
        (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / xs.len() as f64).sqrt()
    }

    pub fn lag1(xs: &[f64]) -> f64 {
        let m = mean(xs);
        let var: f64 = xs.iter().map(|x| (x - m) * (x - m)).sum();
        let cov: f64 = xs.windows(2).map(|w| (w[0] - m) * (w[1] - m)).sum();
        cov / var
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[derive(serde::Deserialize, Default, Debug)]
    #[serde(default, deny_unknown_fields)]
    struct Example {
        mean: Option<f64>,
        placement: Placement,
        nested: Nested,
    }

    #[derive(serde::Deserialize, Default, Debug)]
    #[serde(default, deny_unknown_fields)]
    struct Nested {
        rate: f64,
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = parse_config::<Example>(r#"{"mean":1,"amplitud":2}"#).unwrap_err();
        assert!(e.starts_with("config: unknown field `amplitud`"), "{e}");
        assert!(!e.contains("line 1"), "{e}");
        let e = parse_config::<Example>(r#"{"placement":"indoor","mean":"hot"}"#).unwrap_err();
        assert!(e.starts_with("config: field `mean`: invalid type"), "{e}");
        let e = parse_config::<Example>(r#"{"placement":"attic"}"#).unwrap_err();
        assert!(
            e.starts_with("config: field `placement`: unknown variant `attic`"),
            "{e}"
        );
        let e = parse_config::<Example>(r#"{"nested":{"rat":1}}"#).unwrap_err();
        assert!(
            e.starts_with("config: field `nested`: unknown field `rat`"),
            "{e}"
        );
        assert!(parse_config::<Example>("\"warm\"").is_err());
        assert_eq!(
            parse_config::<Example>(r#"{"mean":3}"#).unwrap().mean,
            Some(3.0)
        );
        assert!(parse_config::<Example>("").unwrap().mean.is_none());
    }

    #[test]
    fn no_config_takes_nothing_and_any_config_anything() {
        assert!(parse_config::<NoConfig>("{}").is_ok());
        assert!(parse_config::<NoConfig>("").is_ok());
        let e = parse_config::<NoConfig>(r#"{"scale":3}"#).unwrap_err();
        assert!(e.contains("unknown field `scale`"), "{e}");
        assert!(parse_config::<AnyConfig>(r#"{"scale":3}"#).is_ok());
    }

    #[test]
    fn quantize_rounds_to_step() {
        assert_eq!(quantize(21.237, 0.01), 21.24);
        assert_eq!(quantize(21.24000001, 0.01).to_string(), "21.24");
        assert_eq!(quantize(7.3, 0.5), 7.5);
        assert_eq!(quantize(1.5, 0.0), 1.5);
        assert_eq!(quantize_down(12.3459, 0.001), 12.345);
        assert_eq!(quantize_down(0.3, 0.1), 0.3);
    }

    #[test]
    fn quantized_values_sit_on_the_grid() {
        let mut r = rng(1);
        for step in [0.01, 0.1, 0.0625, 0.5, 1.0] {
            for _ in 0..2000 {
                let v = quantize(r.normal() * 30.0, step);
                let k = v / step;
                assert!((k - k.round()).abs() < 1e-6, "{v} not on {step}");
                // The printed value is short: no 21.240000000000002.
                if step == 0.01 || step == 0.1 {
                    assert!(v.to_string().len() <= 7, "{v}");
                }
            }
        }
        // Consecutive distinct levels differ by exactly one step.
        let levels: Vec<f64> = (0..300)
            .map(|i| quantize(i as f64 * 0.0037, 0.01))
            .collect();
        for w in levels.windows(2) {
            let d = w[1] - w[0];
            assert!(d.abs() < 1e-12 || (d - 0.01).abs() < 1e-9, "{d}");
        }
    }

    #[test]
    fn gaussian_is_finite_at_edges() {
        assert!(gaussian(0.0, 0.0).is_finite());
        assert!(gaussian(0.999_999, 0.5).is_finite());
    }

    #[test]
    fn normal_draws_have_unit_variance() {
        let mut s = Stream::new({
            let mut r = rng(9);
            move || r.next_u64()
        });
        let xs: Vec<f64> = (0..100_000).map(|_| s.normal()).collect();
        assert!(mean(&xs).abs() < 0.02);
        assert!((std_dev(&xs) - 1.0).abs() < 0.02);
    }

    #[test]
    fn ar1_has_the_configured_lag1_autocorrelation_and_sigma() {
        let mut r = rng(42);
        for phi in [0.0, 0.5, 0.9, 0.98] {
            let mut x = 0.0;
            let xs: Vec<f64> = (0..200_000)
                .map(|_| {
                    x = ar1_step(x, phi, 2.0, r.normal());
                    x
                })
                .collect();
            let rho = lag1(&xs);
            assert!((rho - phi).abs() < 0.02, "phi {phi}: lag-1 {rho}");
            assert!((std_dev(&xs) - 2.0).abs() < 0.15, "phi {phi}");
        }
    }

    #[test]
    fn ar1_steps_matches_repeated_steps() {
        let mut r = rng(5);
        // k steps at once: lag-k correlation phi^k.
        let (phi, k) = (0.8_f64, 3.0);
        let mut pairs = Vec::new();
        for _ in 0..50_000 {
            let x0 = r.normal();
            let xk = ar1_steps(x0, phi, 1.0, k, r.normal());
            pairs.push((x0, xk));
        }
        let cov = pairs.iter().map(|(a, b)| a * b).sum::<f64>() / pairs.len() as f64;
        assert!((cov - phi.powf(k)).abs() < 0.02, "{cov}");
    }

    #[test]
    fn geometric_has_the_configured_mean() {
        let mut r = rng(3);
        let xs: Vec<f64> = (0..100_000).map(|_| r.geometric(5.0)).collect();
        assert!(xs.iter().all(|&x| x >= 1.0 && x.fract() == 0.0));
        assert!((mean(&xs) - 5.0).abs() < 0.1, "{}", mean(&xs));
    }

    #[test]
    fn day_weight_peaks_at_the_peak_hour() {
        let at = |h: f64| day_weight(h * HOUR_MS, 14.0, 0.1);
        assert!((at(14.0) - 1.0).abs() < 1e-12);
        assert!((at(2.0) - 0.1).abs() < 1e-12);
        assert!((hour_of_day(-HOUR_MS) - 23.0).abs() < 1e-12);
    }

    #[test]
    fn state_numbers_parse() {
        assert_eq!(state_number(Some("21.5")), Some(21.5));
        assert_eq!(state_number(Some("\"x\"")), None);
        assert_eq!(state_number(None), None);
    }
}
