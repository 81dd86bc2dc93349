// SPDX-License-Identifier: GPL-3.0-or-later
//! The counting algorithms, pure so that every backend computes the same thing.
//!
//! - Rate limits use GCRA (the generic cell rate algorithm, as in ATM networks and
//!   Redis-cell): one timestamp per key, the "theoretical arrival time" (TAT). A budget
//!   of `limit` per `period` means each recipient costs `period / limit`; a message of
//!   `cost` recipients fits when the TAT it would leave is at most `period` ahead of
//!   now. No bursts beyond the budget, smooth refill, O(1) memory per sender.
//! - The breaker uses a sliding window counter (the current and the previous bucket,
//!   the previous one weighted by how much of it still lies within the window).

use std::time::{Duration, SystemTime};

/// A budget: `limit` units per rolling `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Units per period.
    pub limit: u64,
    /// The period.
    pub period: Duration,
}

/// What a GCRA take answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Take {
    /// True when the cost fitted and was taken.
    pub allowed: bool,
    /// Units of the budget in use after the call (before it, when refused).
    pub used: u64,
    /// When the refused cost would fit (now, when allowed).
    pub retry_at: SystemTime,
}

/// Microseconds since the epoch.
pub fn micros(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn at(us: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_micros(us)
}

/// The time `cost` units occupy in a budget, in microseconds.
pub fn span(cost: u64, limit: Limit) -> u64 {
    if limit.limit == 0 {
        return u64::MAX;
    }
    let v = u128::from(cost) * limit.period.as_micros() / u128::from(limit.limit);
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// One GCRA step: given the stored TAT (µs, 0 if none), returns the answer and the TAT
/// to store (unchanged when refused).
pub fn gcra(tat: u64, cost: u64, limit: Limit, now: SystemTime) -> (Take, u64) {
    let now_us = micros(now);
    let base = tat.max(now_us);
    let new_tat = base.saturating_add(span(cost, limit));
    let period = limit.period.as_micros() as u64;
    let used_before = used(base - now_us, limit);
    if new_tat - now_us <= period {
        let take = Take {
            allowed: true,
            used: used(new_tat - now_us, limit),
            retry_at: now,
        };
        (take, new_tat)
    } else {
        let take = Take {
            allowed: false,
            used: used_before,
            retry_at: at(new_tat.saturating_sub(period).max(now_us)),
        };
        (take, tat)
    }
}

/// The TAT after giving `cost` back.
pub fn gcra_give_back(tat: u64, cost: u64, limit: Limit, now: SystemTime) -> u64 {
    tat.saturating_sub(span(cost, limit)).max(micros(now))
}

fn used(ahead_us: u64, limit: Limit) -> u64 {
    let period = limit.period.as_micros();
    if period == 0 {
        return 0;
    }
    let v = (u128::from(ahead_us) * u128::from(limit.limit)).div_ceil(period);
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// A sliding window counter: the current bucket (start, count) and the previous count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// Start of the current bucket, µs since the epoch.
    pub start: u64,
    /// Count in the current bucket.
    pub current: u64,
    /// Count in the bucket before it.
    pub previous: u64,
}

impl Window {
    /// Moves the buckets forward to `now`.
    pub fn roll(&mut self, width: Duration, now: SystemTime) {
        let w = (width.as_micros() as u64).max(1);
        let now = micros(now);
        let bucket = now - now % w;
        if bucket == self.start {
            return;
        }
        self.previous = if bucket == self.start + w {
            self.current
        } else {
            0
        };
        self.current = 0;
        self.start = bucket;
    }

    /// The estimated count over the last `width` at `now` (after [`Window::roll`]).
    pub fn total(&self, width: Duration, now: SystemTime) -> u64 {
        let w = u128::from((width.as_micros() as u64).max(1));
        let into = u128::from(micros(now).saturating_sub(self.start)).min(w);
        let prev = u128::from(self.previous) * (w - into) / w;
        self.current.saturating_add(prev as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    const HOURLY_1000: Limit = Limit {
        limit: 1000,
        period: Duration::from_secs(3600),
    };

    #[test]
    fn gcra_three_messages_of_400_against_1000_an_hour() {
        let (a, tat) = gcra(0, 400, HOURLY_1000, t(0));
        assert!(a.allowed);
        assert_eq!(a.used, 400);
        let (b, tat) = gcra(tat, 400, HOURLY_1000, t(1));
        assert!(b.allowed);
        assert_eq!(b.used, 800);
        let (c, same) = gcra(tat, 400, HOURLY_1000, t(2));
        assert!(!c.allowed, "1,200 > 1,000");
        assert_eq!(same, tat, "a refusal takes nothing");
        assert_eq!(c.used, 800);
        // 200 units free up after 720 s (each unit is 3.6 s); from t(0)+2880-3600+1440.
        assert_eq!(c.retry_at, t(720));
        let (d, _) = gcra(tat, 400, HOURLY_1000, t(720));
        assert!(d.allowed, "passes once the window has moved on");
        let (e, _) = gcra(tat, 400, HOURLY_1000, t(719));
        assert!(!e.allowed);
    }

    #[test]
    fn gcra_cost_over_the_whole_budget_never_fits() {
        let (a, _) = gcra(0, 1001, HOURLY_1000, t(0));
        assert!(!a.allowed);
        let (b, _) = gcra(0, 1000, HOURLY_1000, t(0));
        assert!(b.allowed);
    }

    #[test]
    fn gcra_give_back_restores_the_budget() {
        let (_, tat) = gcra(0, 600, HOURLY_1000, t(0));
        let tat = gcra_give_back(tat, 600, HOURLY_1000, t(0));
        let (a, _) = gcra(tat, 1000, HOURLY_1000, t(0));
        assert!(a.allowed);
        assert_eq!(
            gcra_give_back(0, 5, HOURLY_1000, t(10)),
            micros(t(10)),
            "never before now"
        );
    }

    #[test]
    fn sliding_window_weights_the_previous_bucket() {
        let minute = Duration::from_secs(60);
        let mut w = Window::default();
        // A minute boundary.
        let base: u64 = 1_800_000_060;
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(base + s);
        w.roll(minute, at(0));
        w.current += 600;
        assert_eq!(w.total(minute, at(30)), 600);
        w.roll(minute, at(75));
        w.current += 100;
        // 15 s into the new bucket: 3/4 of the previous 600 still count.
        assert_eq!(w.total(minute, at(75)), 100 + 450);
        w.roll(minute, at(200));
        assert_eq!(
            w.total(minute, at(200)),
            0,
            "buckets older than one window are gone"
        );
    }
}
