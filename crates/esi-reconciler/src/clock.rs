//! Time as the protocol records it (wall-clock milliseconds) and deadlines
//! that cannot overflow.
//!
//! Delays reach these functions from records in etcd (`heat_timeout`, a
//! status's `next_retry_ms`), so none of them may panic however large the
//! delay: `Instant + Duration` does on overflow.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A deadline this far away stands for "never" (about 30 years: far enough,
/// and still representable on every platform's monotonic clock).
const NEVER: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// Milliseconds since the Unix epoch (0 for a clock set before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

/// A duration in whole milliseconds, saturating at `u64::MAX`.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The instant `d` from now, or [`NEVER`] from now when `d` is longer.
pub fn deadline_in(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d.min(NEVER)).unwrap_or(now)
}

/// `minutes` as a duration, saturating instead of overflowing.
pub fn minutes(minutes: u64) -> Duration {
    Duration::from_secs(minutes.saturating_mul(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_delays_saturate_instead_of_panicking() {
        let far = deadline_in(Duration::MAX);
        assert!(far > Instant::now() + Duration::from_secs(3600 * 24 * 365));
        assert_eq!(minutes(u64::MAX), Duration::from_secs(u64::MAX));
        assert!(deadline_in(minutes(100_000_000_000_000_000)) > Instant::now());
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
