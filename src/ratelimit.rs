//! Rate-limited warnings: a warning that can repeat per message or per
//! request (a failing store, a misbehaving device, an accept loop out of
//! file descriptors) is logged at most once per interval, with the number
//! of occurrences it left out since the last line. Without this one bad
//! client can write gigabytes of identical log lines.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one call site may log a repeating warning.
pub(crate) const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Admits one event per interval and counts the rest.
#[derive(Debug)]
pub(crate) struct RateLimit {
    interval: Duration,
    // A std mutex: two fields updated together, never held across an await.
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub(crate) const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(Window {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when this event should be logged, `n` being how many were
    /// left out since the last logged one; `None` when it is left out.
    pub(crate) fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    /// [`RateLimit::admit`] at a given instant.
    pub(crate) fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut window = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match window.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                window.suppressed += 1;
                None
            }
            _ => {
                window.last = Some(now);
                Some(std::mem::take(&mut window.suppressed))
            }
        }
    }
}

/// `tracing::warn!` at most once per [`WARN_INTERVAL`] per call site, with
/// a `suppressed` field counting the lines left out since the last one.
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::RateLimit =
            $crate::ratelimit::RateLimit::new($crate::ratelimit::WARN_INTERVAL);
        if let Some(suppressed) = LIMIT.admit() {
            tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

/// `tracing::error!` at most once per [`WARN_INTERVAL`] per call site, with
/// a `suppressed` field (see [`warn_limited!`]).
macro_rules! error_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::RateLimit =
            $crate::ratelimit::RateLimit::new($crate::ratelimit::WARN_INTERVAL);
        if let Some(suppressed) = LIMIT.admit() {
            tracing::error!(suppressed, $($arg)+);
        }
    }};
}

pub(crate) use {error_limited, warn_limited};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_left_out() {
        let limit = RateLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limit.admit_at(t0), Some(0));
        for i in 1..=999 {
            assert_eq!(limit.admit_at(t0 + Duration::from_millis(i)), None);
        }
        // The next interval logs once, saying how many were left out.
        assert_eq!(limit.admit_at(t0 + Duration::from_secs(10)), Some(999));
        assert_eq!(limit.admit_at(t0 + Duration::from_secs(11)), None);
        assert_eq!(limit.admit_at(t0 + Duration::from_secs(25)), Some(1));
    }
}
