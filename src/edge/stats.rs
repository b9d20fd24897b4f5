//! The processing-latency record of a node: the last 1,024 batches for
//! percentiles, and the all-time maximum.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;

/// Batches kept for percentiles.
const SAMPLES: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct Latency {
    /// Microseconds, oldest first.
    recent: VecDeque<u64>,
    max_us: u64,
    count: u64,
    last_us: u64,
    last_readings: u64,
}

/// Batch latencies, ms (µs precision).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct LatencyView {
    /// Batches measured, all time.
    pub batches: u64,
    /// Over the last 1,024 batches.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// All time.
    pub max_ms: Option<f64>,
    /// The most recent batch: its latency and how many readings it held.
    pub last_ms: Option<f64>,
    pub last_readings: u64,
}

impl Latency {
    pub(super) fn record(&mut self, elapsed: Duration, readings: usize) {
        let us = elapsed.as_micros().min(u64::MAX as u128) as u64;
        if self.recent.len() == SAMPLES {
            self.recent.pop_front();
        }
        self.recent.push_back(us);
        self.max_us = self.max_us.max(us);
        self.count += 1;
        self.last_us = us;
        self.last_readings = readings as u64;
    }

    pub(super) fn view(&self) -> LatencyView {
        let mut sorted: Vec<u64> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        LatencyView {
            batches: self.count,
            p50_ms: percentile(&sorted, 0.50).map(ms),
            p99_ms: percentile(&sorted, 0.99).map(ms),
            max_ms: (self.count > 0).then(|| ms(self.max_us)),
            last_ms: (self.count > 0).then(|| ms(self.last_us)),
            last_readings: self.last_readings,
        }
    }
}

/// Nearest-rank percentile of sorted values.
pub(super) fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.5), Some(50));
        assert_eq!(percentile(&values, 0.99), Some(99));
        assert_eq!(percentile(&[], 0.5), None);
        let mut l = Latency::default();
        for us in [1000, 3000, 2000] {
            l.record(Duration::from_micros(us), 10);
        }
        let v = l.view();
        assert_eq!(v.batches, 3);
        assert_eq!(v.p50_ms, Some(2.0));
        assert_eq!(v.max_ms, Some(3.0));
    }
}
