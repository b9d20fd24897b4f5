//! Small pieces of physics shared by the sensors.

/// Saturation vapour pressure over water, hPa (Magnus formula with the
/// Alduchov–Eskridge coefficients: 6.1094 hPa, 17.625, 243.04 °C).
pub fn saturation_hpa(temperature_c: f64) -> f64 {
    6.1094 * (17.625 * temperature_c / (243.04 + temperature_c)).exp()
}

/// Relative humidity, %, of air at `temperature_c` with dew point
/// `dew_point_c` (not clamped).
pub fn relative_humidity(temperature_c: f64, dew_point_c: f64) -> f64 {
    100.0 * saturation_hpa(dew_point_c) / saturation_hpa(temperature_c)
}

/// Dew point, °C, of air at `temperature_c` and `rh` %.
pub fn dew_point(temperature_c: f64, rh: f64) -> f64 {
    let gamma = (rh.max(1e-6) / 100.0).ln() + 17.625 * temperature_c / (243.04 + temperature_c);
    243.04 * gamma / (17.625 - gamma)
}

/// Station pressure at `altitude_m` for sea-level pressure `sea_level_hpa`
/// (international barometric formula, standard atmosphere).
pub fn station_pressure(sea_level_hpa: f64, altitude_m: f64) -> f64 {
    sea_level_hpa * (1.0 - 2.25577e-5 * altitude_m).max(0.0).powf(5.25588)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humidity_round_trip_and_anti_correlation() {
        let td = dew_point(21.0, 45.0);
        assert!((td - 8.6).abs() < 0.2, "{td}");
        assert!((relative_humidity(21.0, td) - 45.0).abs() < 1e-9);
        // Same air, warmer: lower relative humidity.
        assert!(relative_humidity(25.0, td) < 45.0);
        assert!(relative_humidity(17.0, td) > 45.0);
    }

    #[test]
    fn pressure_falls_with_altitude() {
        assert_eq!(station_pressure(1013.25, 0.0), 1013.25);
        let p = station_pressure(1013.25, 1000.0);
        assert!((p - 898.75).abs() < 0.5, "{p}");
    }
}
