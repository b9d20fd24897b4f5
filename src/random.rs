//! Seeded random streams. Every device draws from streams derived from
//! (seed, device id, stream name), so its values depend only on those and on
//! how many values it drew before: adding a device changes no other.

use rand::{RngCore, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// A device's random stream (PCG-64 MCG: fast, small, and its output is fixed
/// by its algorithm, not by a library version).
#[derive(Debug, Clone)]
pub struct DeviceRng(Pcg64Mcg);

impl DeviceRng {
    /// The stream named `stream` of device `device` under `seed`.
    pub fn derive(seed: u64, device: &str, stream: &str) -> Self {
        let mut h = fnv1a(FNV_OFFSET, device.as_bytes());
        h = fnv1a(h ^ 0xff, stream.as_bytes());
        let hi = splitmix64(seed ^ h);
        let lo = splitmix64(hi ^ seed.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15);
        Self(Pcg64Mcg::new(((hi as u128) << 64) | lo as u128 | 1))
    }

    /// A stand-in while the real stream is lent to a plugin call.
    pub fn placeholder() -> Self {
        Self(Pcg64Mcg::new(1))
    }

    /// The next number of the stream.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A value in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A generator seeded from this stream, for host-side draws (jitter).
    pub fn fork(&mut self) -> Pcg64Mcg {
        Pcg64Mcg::seed_from_u64(self.next_u64())
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = DeviceRng::derive(7, "dev-1", "temperature");
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = DeviceRng::derive(7, "dev-1", "temperature");
                move |_| r.next_u64()
            })
            .collect();
        let c = DeviceRng::derive(7, "dev-2", "temperature").next_u64();
        let d = DeviceRng::derive(8, "dev-1", "temperature").next_u64();
        assert_eq!(a, b);
        assert_ne!(a[0], c);
        assert_ne!(a[0], d);
    }

    #[test]
    fn f64_is_in_unit_interval() {
        let mut r = DeviceRng::derive(1, "x", "y");
        for _ in 0..10_000 {
            let v = r.next_f64();
            assert!((0.0..1.0).contains(&v));
        }
    }
}
