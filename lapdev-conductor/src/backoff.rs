//! The conductor's clock and its retry delays.
//!
//! Retry state lives in the workspace row (`repair_attempts`, `next_attempt_at`), so
//! a restarted server, or another replica, continues the same backoff. The delay
//! after `n` attempts is `initial · 2^(n-1)`, capped at `max`, plus up to a quarter
//! of jitter so that many workspaces failing together do not retry together.
//!
//! With the defaults (10 s doubling to 10 min) a workspace whose pod keeps ending
//! costs, per repair, one manager call (`start_workspace`) and at most four
//! workspace writes (the manager's `failed` report, the announcement, the request,
//! the manager's answer); repeated identical reports cost none. Once at the cap
//! (after about 21 minutes), 1,000 such workspaces cost at most 1,000 / 600 s ≈ 1.7
//! manager calls and ≈ 6.7 writes per second, where a reconciler without backoff
//! would call every workspace every 5 s (200 calls per second).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Where the conductor reads the time: the system clock, moved by tests with
/// [`Clock::advance`] so they drive backoff without sleeping.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset: Arc<Mutex<chrono::Duration>>,
}

impl Clock {
    /// The current time as the conductor sees it.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + *self.offset.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves this clock (and every clone of it) forward.
    pub fn advance(&self, by: Duration) {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        let mut offset = self.offset.lock().unwrap_or_else(|e| e.into_inner());
        *offset = offset.checked_add(&by).unwrap_or(chrono::Duration::MAX);
    }
}

/// The delay before attempt `attempts` (1-based), without jitter.
pub fn delay(initial: Duration, max: Duration, attempts: i32) -> Duration {
    let exponent = attempts.saturating_sub(1).clamp(0, 30) as u32;
    initial.saturating_mul(1 << exponent).min(max)
}

/// `delay` plus up to a quarter of jitter.
pub fn jittered(delay: Duration) -> Duration {
    delay + delay.mul_f64(rand_fraction() * 0.25)
}

/// A number in `[0, 1)` for jitter; not for anything secret.
fn rand_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::Instant::now().elapsed().as_nanos() as u64);
    (h.finish() % 10_000) as f64 / 10_000.0
}

/// When, for stored status messages: an absolute UTC time to the second
/// (`2026-11-30T03:15:42Z`), which stays true however late it is read; "now"
/// when there is no time.
pub fn at(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(|| "now".to_owned(), lapdev_common::time::at)
}

/// "40 s", "3 min", "10 min": how long, for status messages.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s < 120 {
        format!("{} s", s.max(1))
    } else {
        format!("{} min", s.div_ceil(60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let (i, m) = (Duration::from_secs(10), Duration::from_secs(600));
        let got: Vec<u64> = (1..=9).map(|n| delay(i, m, n).as_secs()).collect();
        assert_eq!(got, [10, 20, 40, 80, 160, 320, 600, 600, 600]);
        assert_eq!(delay(i, m, 0), i);
        assert_eq!(delay(i, m, i32::MAX), m);
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        let d = Duration::from_secs(40);
        for _ in 0..100 {
            let j = jittered(d);
            assert!(j >= d && j <= d + d / 4, "{j:?}");
        }
    }

    #[test]
    fn the_clock_moves_only_forward_when_told() {
        let c = Clock::default();
        let before = c.now();
        c.clone().advance(Duration::from_secs(3600));
        assert!(c.now() - before >= chrono::Duration::seconds(3600));
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_secs(40)), "40 s");
        assert_eq!(human(Duration::from_millis(3)), "1 s");
        assert_eq!(human(Duration::from_secs(600)), "10 min");
    }
}
