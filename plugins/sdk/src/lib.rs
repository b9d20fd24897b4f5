//! Helpers for iotmock plugins that are plain Rust, free of any WIT binding:
//! the models here take their random numbers as arguments, so a plugin draws
//! them from the host's per-device stream and stays deterministic.

use serde::de::DeserializeOwned;

/// Parses a plugin's JSON configuration, naming what is wrong on failure.
/// An empty string means "all defaults".
pub fn parse_config<T: DeserializeOwned + Default>(config: &str) -> Result<T, String> {
    if config.trim().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(config).map_err(|e| format!("plugin config: {e}"))
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

/// Rounds to the sensor's resolution (0 leaves the value as it is). For
/// steps like 0.01 it divides by the whole number 100 instead of
/// multiplying by 0.01, so 21.24 comes out as 21.24, not 21.240000000000002.
pub fn quantize(value: f64, step: f64) -> f64 {
    if step <= 0.0 {
        return value;
    }
    let per_unit = (1.0 / step).round();
    if per_unit >= 1.0 && (per_unit * step - 1.0).abs() < 1e-9 {
        (value * per_unit).round() / per_unit
    } else {
        (value / step).round() * step
    }
}

/// Milliseconds in a day.
pub const DAY_MS: f64 = 86_400_000.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_rounds_to_step() {
        assert_eq!(quantize(21.237, 0.01), 21.24);
        assert_eq!(quantize(21.24000001, 0.01).to_string(), "21.24");
        assert_eq!(quantize(7.3, 0.5), 7.5);
        assert_eq!(quantize(1.5, 0.0), 1.5);
    }

    #[test]
    fn gaussian_is_finite_at_edges() {
        assert!(gaussian(0.0, 0.0).is_finite());
        assert!(gaussian(0.999_999, 0.5).is_finite());
    }
}
