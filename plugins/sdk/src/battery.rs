//! Primary-cell discharge curves: voltage under a light load against the
//! fraction of capacity used, at 20 °C, with a sag below that temperature.
//!
//! - `li-socl2`: one Li-SOCl2 bobbin cell (Saft LS14500 / Tadiran TL-5903
//!   class): open-circuit 3.67 V, a very flat plateau near 3.6 V for most
//!   of the life, then a steep knee; end of discharge 2.0 V.
//! - `alkaline-2aa`: two alkaline AA cells in series (Energizer E91
//!   class): 1.6 V per cell fresh, a steady slope, end 0.9 V per cell
//!   (1.8 V for the pair).
//! - `cr2032`: one lithium coin cell (Energizer CR2032 class): 3.0 V
//!   nominal, plateau near 2.9 V, end 2.0 V.

use crate::interpolate;

#[derive(serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Chemistry {
    #[default]
    #[serde(rename = "li-socl2")]
    LiSoCl2,
    #[serde(rename = "alkaline-2aa")]
    Alkaline2Aa,
    #[serde(rename = "cr2032")]
    Cr2032,
}

const LI_SOCL2: &[(f64, f64)] = &[
    (0.0, 3.67),
    (0.02, 3.62),
    (0.5, 3.58),
    (0.8, 3.52),
    (0.9, 3.45),
    (0.95, 3.3),
    (0.98, 3.0),
    (1.0, 2.0),
];

const ALKALINE_2AA: &[(f64, f64)] = &[
    (0.0, 3.2),
    (0.1, 2.9),
    (0.3, 2.7),
    (0.5, 2.54),
    (0.7, 2.36),
    (0.85, 2.16),
    (0.95, 1.94),
    (1.0, 1.8),
];

const CR2032: &[(f64, f64)] = &[
    (0.0, 3.2),
    (0.05, 3.0),
    (0.7, 2.9),
    (0.85, 2.8),
    (0.95, 2.6),
    (1.0, 2.0),
];

impl Chemistry {
    fn curve(self) -> &'static [(f64, f64)] {
        match self {
            Self::LiSoCl2 => LI_SOCL2,
            Self::Alkaline2Aa => ALKALINE_2AA,
            Self::Cr2032 => CR2032,
        }
    }

    /// End-of-discharge voltage.
    pub fn cutoff_v(self) -> f64 {
        let curve = self.curve();
        curve[curve.len() - 1].1
    }

    /// Voltage lost per °C below 20 °C under load (more internal
    /// resistance in the cold; Li-SOCl2 still delivers at -40 °C with a
    /// few tenths of a volt less, alkaline suffers most).
    pub fn cold_sag_v_per_c(self) -> f64 {
        match self {
            Self::LiSoCl2 => 0.005,
            Self::Alkaline2Aa => 0.008,
            Self::Cr2032 => 0.006,
        }
    }

    /// Voltage with `used` (0 = fresh, 1 = empty) of the capacity gone, at
    /// `temperature_c`. Never negative.
    pub fn voltage(self, used: f64, temperature_c: f64) -> f64 {
        let sag = self.cold_sag_v_per_c() * (20.0 - temperature_c).max(0.0);
        (interpolate(self.curve(), used) - sag).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_fall_and_sag_in_the_cold() {
        for chem in [
            Chemistry::LiSoCl2,
            Chemistry::Alkaline2Aa,
            Chemistry::Cr2032,
        ] {
            let mut prev = f64::INFINITY;
            for i in 0..=100 {
                let v = chem.voltage(i as f64 / 100.0, 20.0);
                assert!(v <= prev, "{chem:?} rises at {i}");
                prev = v;
            }
            assert_eq!(chem.voltage(1.0, 25.0), chem.cutoff_v());
            assert!(chem.voltage(0.5, -20.0) < chem.voltage(0.5, 20.0));
        }
        // Li-SOCl2 is flat: half-way it is still within 0.1 V of fresh.
        assert!(
            Chemistry::LiSoCl2.voltage(0.0, 20.0) - Chemistry::LiSoCl2.voltage(0.5, 20.0) < 0.1
        );
    }
}
