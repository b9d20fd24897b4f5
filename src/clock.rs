//! Simulated time, and the only place that reads the wall clock.
//!
//! `realtime` follows the wall clock; `xN` runs N times faster from the
//! moment the server starts; `manual` stands still until
//! [`Clock::advance`] moves it, which makes runs reproducible.
//!
//! Simulated time starts where `--start-time` (or the scenario's
//! `start_time`) says; without it a manual clock starts at
//! [`MANUAL_EPOCH_MS`] and the others at the wall clock's now.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// Where a manual clock starts unless told otherwise: 2026-01-01T00:00:00Z.
pub const MANUAL_EPOCH_MS: i64 = 1_767_225_600_000;

/// How simulated time runs (`--clock realtime|manual|xN`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClockMode {
    /// As fast as the wall clock.
    Realtime,
    /// N times faster than the wall clock (`x60`).
    Accelerated(f64),
    /// Only when advanced ([`crate::Simulation::advance`],
    /// `POST /clock/advance`), from [`MANUAL_EPOCH_MS`] unless a start
    /// time is given.
    Manual,
}

impl FromStr for ClockMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "realtime" => Ok(ClockMode::Realtime),
            "manual" => Ok(ClockMode::Manual),
            _ => match s.strip_prefix('x').map(str::parse::<f64>) {
                Some(Ok(n)) if n > 0.0 && n.is_finite() => Ok(ClockMode::Accelerated(n)),
                _ => Err(format!(
                    "clock {s:?} is not valid: use realtime, manual, or xN with N > 0 (e.g. x60)"
                )),
            },
        }
    }
}

impl fmt::Display for ClockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClockMode::Realtime => f.write_str("realtime"),
            ClockMode::Accelerated(n) => write!(f, "x{n}"),
            ClockMode::Manual => f.write_str("manual"),
        }
    }
}

/// Why the clock did not move.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// Only a manual clock is advanced by hand.
    #[error("the clock is {0}; only a manual clock (--clock manual) can be advanced")]
    NotManual(ClockMode),
    /// The span is not a positive number of milliseconds.
    #[error("cannot advance the clock by {0} ms: give a positive number of milliseconds")]
    BadStep(i64),
}

/// A handle on the simulated clock; cheap to clone.
#[derive(Clone)]
pub struct Clock(Arc<Inner>);

struct Inner {
    mode: ClockMode,
    start_ms: i64,
    /// A realtime clock given a start time runs from it at the wall
    /// clock's rate instead of reading the wall clock.
    anchored: bool,
    started: Instant,
    /// Manual time; also wakes sleepers on a manual clock.
    manual: watch::Sender<i64>,
}

impl Clock {
    /// A clock of `mode` starting now (a manual one at [`MANUAL_EPOCH_MS`]).
    pub fn new(mode: ClockMode) -> Self {
        Self::starting_at(mode, None)
    }

    /// A clock whose simulated time starts at `start_ms` (ms since the
    /// epoch); `None`: the manual epoch for a manual clock, now otherwise.
    pub fn starting_at(mode: ClockMode, start_ms: Option<i64>) -> Self {
        let anchored = start_ms.is_some();
        let start_ms = start_ms.unwrap_or_else(|| match mode {
            ClockMode::Manual => MANUAL_EPOCH_MS,
            _ => wall_ms(),
        });
        Self(Arc::new(Inner {
            mode,
            start_ms,
            anchored,
            started: Instant::now(),
            manual: watch::Sender::new(start_ms),
        }))
    }

    /// How the clock runs.
    pub fn mode(&self) -> ClockMode {
        self.0.mode
    }

    /// Simulated time, ms since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match self.0.mode {
            ClockMode::Realtime if !self.0.anchored => wall_ms(),
            ClockMode::Realtime => self.0.start_ms + self.0.started.elapsed().as_millis() as i64,
            ClockMode::Accelerated(n) => {
                self.0.start_ms + (self.0.started.elapsed().as_secs_f64() * 1000.0 * n) as i64
            }
            ClockMode::Manual => *self.0.manual.borrow(),
        }
    }

    /// Moves a manual clock forward; returns the new time.
    pub fn advance(&self, ms: i64) -> Result<i64, ClockError> {
        self.check_advance(ms)?;
        let mut now = 0;
        self.0.manual.send_modify(|t| {
            *t += ms;
            now = *t;
        });
        Ok(now)
    }

    /// Whether [`advance`](Self::advance) would take a step of `ms`.
    pub fn check_advance(&self, ms: i64) -> Result<(), ClockError> {
        if self.0.mode != ClockMode::Manual {
            return Err(ClockError::NotManual(self.0.mode));
        }
        if ms <= 0 {
            return Err(ClockError::BadStep(ms));
        }
        Ok(())
    }

    /// Notified on every move of a manual clock.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.0.manual.subscribe()
    }

    /// Waits until simulated time reaches `t`.
    pub async fn sleep_until(&self, t: i64) {
        match self.0.mode {
            ClockMode::Manual => {
                let mut rx = self.0.manual.subscribe();
                let _ = rx.wait_for(|now| *now >= t).await;
            }
            ClockMode::Realtime | ClockMode::Accelerated(_) => {
                let factor = match self.0.mode {
                    ClockMode::Accelerated(n) => n,
                    _ => 1.0,
                };
                loop {
                    let ahead = t - self.now_ms();
                    if ahead <= 0 {
                        return;
                    }
                    let wait = Duration::from_secs_f64(ahead as f64 / 1000.0 / factor);
                    tokio::time::sleep(wait.max(Duration::from_micros(100))).await;
                }
            }
        }
    }
}

/// Wall-clock time, ms since the Unix epoch.
pub(crate) fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Wall-clock time as RFC 3339, for metadata such as "loaded at".
pub(crate) fn wall_rfc3339() -> String {
    rfc3339_ms(wall_ms())
}

/// Formats ms since the Unix epoch as RFC 3339 UTC with milliseconds,
/// e.g. `2026-01-01T00:00:00.000Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    let mut out = String::with_capacity(24);
    write_rfc3339_ms(&mut out, ms);
    out
}

/// Appends the RFC 3339 form of `ms` to `out` (no allocation of its own).
pub(crate) fn write_rfc3339_ms(out: &mut String, ms: i64) {
    use fmt::Write;
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    );
}

/// Parses RFC 3339 as this module writes it (UTC, `Z`), also without
/// milliseconds or with an offset (`+02:00`, `-05:30`).
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = &s[19..];
    let (frac, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let digits = r.bytes().take_while(u8::is_ascii_digit).count();
            let mut ms: i64 = r[..digits.min(3)].parse().ok()?;
            for _ in digits.min(3)..3 {
                ms *= 10;
            }
            (ms, &r[digits..])
        }
        None => (0, rest),
    };
    let offset_min = match zone {
        "Z" | "z" => 0,
        _ => {
            let z = zone.as_bytes();
            if z.len() != 6 || !matches!(z[0], b'+' | b'-') || z[3] != b':' {
                return None;
            }
            let (oh, om) = (
                zone.get(1..3)?.parse::<i64>().ok()?,
                zone.get(4..6)?.parse::<i64>().ok()?,
            );
            if oh > 23 || om > 59 {
                return None;
            }
            let minutes = oh * 60 + om;
            if z[0] == b'-' { -minutes } else { minutes }
        }
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    Some(
        days_from_civil(y, mo, d) * 86_400_000 + ((h * 60 + mi) * 60 + sec) * 1000 + frac
            - offset_min * 60_000,
    )
}

// Howard Hinnant's civil calendar algorithms.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_rfc3339() {
        assert_eq!(rfc3339_ms(MANUAL_EPOCH_MS), "2026-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        for ms in [0, MANUAL_EPOCH_MS + 86_399_999, 951_782_400_123] {
            assert_eq!(parse_rfc3339_ms(&rfc3339_ms(ms)), Some(ms));
        }
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        assert_eq!(
            parse_rfc3339_ms("2026-01-01T00:00:00Z"),
            Some(MANUAL_EPOCH_MS)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-01-01T09:30:00+09:30"),
            Some(MANUAL_EPOCH_MS)
        );
        assert_eq!(
            parse_rfc3339_ms("2025-12-31T19:00:00.000-05:00"),
            Some(MANUAL_EPOCH_MS)
        );
        assert_eq!(parse_rfc3339_ms("2026-01-01T00:00:00+0100"), None);
    }

    #[test]
    fn parses_clock_modes() {
        assert_eq!("manual".parse::<ClockMode>(), Ok(ClockMode::Manual));
        assert_eq!("x60".parse::<ClockMode>(), Ok(ClockMode::Accelerated(60.0)));
        assert!("x0".parse::<ClockMode>().is_err());
        assert!("fast".parse::<ClockMode>().is_err());
    }

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = Clock::new(ClockMode::Manual);
        assert_eq!(clock.now_ms(), MANUAL_EPOCH_MS);
        assert_eq!(clock.advance(1500).unwrap(), MANUAL_EPOCH_MS + 1500);
        assert!(clock.advance(0).is_err());
        assert!(Clock::new(ClockMode::Realtime).advance(1).is_err());
    }

    #[test]
    fn a_start_time_moves_every_mode() {
        let start = MANUAL_EPOCH_MS + 9 * 3_600_000;
        assert_eq!(
            Clock::starting_at(ClockMode::Manual, Some(start)).now_ms(),
            start
        );
        for mode in [ClockMode::Realtime, ClockMode::Accelerated(10.0)] {
            let now = Clock::starting_at(mode, Some(start)).now_ms();
            assert!((start..start + 60_000).contains(&now), "{mode}: {now}");
        }
    }
}
