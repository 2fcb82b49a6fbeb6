//! Retry delays: exponential with jitter, computed with backon so the policy
//! is the one every other retry in the process uses.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// The longest backoff cap allowed (`--backoff-cap-secs`). A status record
/// whose next retry lies further ahead than this (plus jitter) was not
/// written by a reconciler's backoff: it is corrupt or hostile, and is not
/// waited for.
pub const MAX_CAP: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    pub base: Duration,
    pub factor: f32,
    pub cap: Duration,
    pub jitter: bool,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            factor: 2.0,
            cap: Duration::from_secs(300),
            jitter: true,
        }
    }
}

impl BackoffPolicy {
    /// The delay before retry number `attempt` (1-based), with random
    /// jitter (for in-memory retries).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_seeded(attempt, None)
    }

    /// The delay before retry number `attempt`, its jitter drawn from
    /// `seed`: the planner stays a pure function of what it observed (the
    /// same failure always plans the same retry time), while different
    /// resources failing together still spread their retries.
    pub fn delay_seeded(&self, attempt: u32, seed: Option<u64>) -> Duration {
        let mut b = ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_factor(self.factor)
            .with_max_delay(self.cap)
            .without_max_times();
        if self.jitter {
            b = b.with_jitter();
            if let Some(seed) = seed {
                b = b.with_jitter_seed(seed);
            }
        }
        let n = attempt.saturating_sub(1).min(64) as usize;
        b.build().nth(n).unwrap_or(self.cap).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_the_factor_up_to_the_cap() {
        let p = BackoffPolicy {
            jitter: false,
            ..BackoffPolicy::default()
        };
        let secs: Vec<u64> = (1..=10).map(|a| p.delay(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(p.delay(1000).as_secs(), 300);
    }

    #[test]
    fn jitter_stays_within_one_delay_above() {
        let p = BackoffPolicy::default();
        for a in 1..8 {
            let d = p.delay(a);
            let base = Duration::from_secs(1 << (a - 1));
            assert!(d >= base && d <= base * 2, "attempt {a}: {d:?}");
        }
    }
}
