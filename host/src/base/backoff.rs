//! Waiting longer after each quick failure, so that something failing
//! over and over (a guest that traps at once, a CA that refuses) costs the
//! gateway a bounded effort.

use std::time::Duration;

/// Crash-loop protection: an instance that fails soon after it started is
/// restarted after a delay that doubles with each quick failure, so a guest
/// that traps on every connection cannot make the gateway spin on
/// instantiation. An instance that ran for a while is replaced at once.
#[derive(Debug, Default)]
pub struct Backoff {
    quick_failures: u32,
}

impl Backoff {
    /// A failure after this long counts as a fresh start.
    pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);
    /// The first delay.
    pub const INITIAL: Duration = Duration::from_millis(100);
    /// The longest delay.
    pub const MAX: Duration = Duration::from_secs(10);

    /// Called when an instance stopped after running for `lived`; returns
    /// how long to wait before the next one.
    pub fn after_exit(&mut self, lived: Duration) -> Option<Duration> {
        if lived >= Self::HEALTHY_AFTER {
            self.quick_failures = 0;
        }
        self.quick_failures = self.quick_failures.saturating_add(1);
        if self.quick_failures == 1 {
            return None;
        }
        let exponent = (self.quick_failures - 2).min(16);
        Some((Self::INITIAL * 2u32.pow(exponent)).min(Self::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_on_quick_failures_and_resets_after_health() {
        let mut b = Backoff::default();
        let quick = Duration::from_millis(5);
        assert_eq!(b.after_exit(quick), None);
        assert_eq!(b.after_exit(quick), Some(Duration::from_millis(100)));
        assert_eq!(b.after_exit(quick), Some(Duration::from_millis(200)));
        assert_eq!(b.after_exit(quick), Some(Duration::from_millis(400)));
        for _ in 0..20 {
            b.after_exit(quick);
        }
        assert_eq!(b.after_exit(quick), Some(Backoff::MAX));
        assert_eq!(b.after_exit(Duration::from_secs(60)), None);
        assert_eq!(b.after_exit(quick), Some(Duration::from_millis(100)));
    }
}
