//! Waiting longer after each failure, so that something failing over and
//! over (a guest that traps at once, a CA that refuses, an order the CA is
//! still validating) costs the gateway a bounded effort.
//!
//! One mechanism, [`ExponentialBackoff`]: a deterministic policy (initial
//! delay, factor, cap) that maps an attempt number to a delay, with
//! optional jitter whose randomness is passed in, so that the policy is
//! tested without clocks or sockets. Its users keep their own state (how
//! many failures so far, when to reset): [`Backoff`] for crashing
//! instances, `certs::renewal::Renewal` for failed ACME orders, and the
//! polls of an ACME order.

use std::time::Duration;

/// An exponential back-off policy: attempt `n` (from 0) waits
/// `initial * factor^n`, never more than `max`, plus up to `jitter_percent`
/// percent of that delay drawn from the randomness passed in (the sum is
/// still capped at `max`).
///
/// Jitter spreads retries of many parties that failed at the same moment
/// (gateways behind one CA outage) so they do not retry in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExponentialBackoff {
    initial: Duration,
    factor: u32,
    max: Duration,
    jitter_percent: u32,
}

impl ExponentialBackoff {
    /// Doubling from `initial` up to `max`, without jitter.
    pub(crate) const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            factor: 2,
            max,
            jitter_percent: 0,
        }
    }

    /// The same policy, multiplying by `factor` (at least 1) instead of 2.
    #[cfg(test)]
    pub(crate) const fn with_factor(self, factor: u32) -> Self {
        Self {
            factor: if factor == 0 { 1 } else { factor },
            ..self
        }
    }

    /// The same policy, lengthening each delay by up to `percent` percent
    /// (see [`jittered`](Self::jittered)).
    pub(crate) const fn with_jitter(self, percent: u32) -> Self {
        Self {
            jitter_percent: percent,
            ..self
        }
    }

    /// The longest delay.
    #[cfg(test)]
    pub(crate) const fn max(&self) -> Duration {
        self.max
    }

    /// The delay before retry `attempt` (0 for the first), without jitter:
    /// `initial * factor^attempt`, at most `max`. Saturates instead of
    /// overflowing, however large `attempt` grows.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let multiplier = self.factor.saturating_pow(attempt);
        self.initial.saturating_mul(multiplier).min(self.max)
    }

    /// [`delay`](Self::delay) lengthened by `random / 2^32` of the jitter
    /// share (`jitter_percent` percent of the delay), at most `max`.
    /// `random` is any uniformly drawn `u32` ([`random_u32`] in the
    /// gateway, a fixed value in tests); 0 gives the plain delay.
    pub(crate) fn jittered(&self, attempt: u32, random: u32) -> Duration {
        let delay = self.delay(attempt);
        let share = delay
            .as_nanos()
            .saturating_mul(u128::from(self.jitter_percent))
            / 100;
        let extra_nanos = share.saturating_mul(u128::from(random)) >> 32;
        let extra = Duration::from_nanos(u64::try_from(extra_nanos).unwrap_or(u64::MAX));
        delay.saturating_add(extra).min(self.max)
    }
}

/// A uniformly random `u32` for [`ExponentialBackoff::jittered`], from the
/// operating system; 0 (no jitter) if it cannot give one, since jitter only
/// spreads retries and is never needed for correctness.
pub(crate) fn random_u32() -> u32 {
    getrandom::u32().unwrap_or(0)
}

/// Crash-loop protection: an instance that fails soon after it started is
/// restarted after a delay that doubles with each quick failure, so a guest
/// that traps on every connection cannot make the gateway spin on
/// instantiation. An instance that ran for a while is replaced at once.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    quick_failures: u32,
}

impl Backoff {
    /// A failure after this long counts as a fresh start.
    pub(crate) const HEALTHY_AFTER: Duration = Duration::from_secs(10);
    /// The first delay.
    pub(crate) const INITIAL: Duration = Duration::from_millis(100);
    /// The longest delay.
    pub(crate) const MAX: Duration = Duration::from_secs(10);
    /// The delays after the first quick failure (which restarts at once):
    /// no jitter, since each instance's restarts are its own.
    pub(crate) const POLICY: ExponentialBackoff = ExponentialBackoff::new(Self::INITIAL, Self::MAX);

    /// Called when an instance stopped after running for `lived`; returns
    /// how long to wait before the next one.
    pub(crate) fn after_exit(&mut self, lived: Duration) -> Option<Duration> {
        if lived >= Self::HEALTHY_AFTER {
            self.quick_failures = 0;
        }
        self.quick_failures = self.quick_failures.saturating_add(1);
        if self.quick_failures == 1 {
            return None;
        }
        Some(Self::POLICY.delay(self.quick_failures - 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_multiply_up_to_the_cap() {
        let policy = ExponentialBackoff::new(MS * 250, MS * 5000);
        let delays: Vec<u128> = (0..7).map(|n| policy.delay(n).as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        let triple = ExponentialBackoff::new(MS, MS * 100).with_factor(3);
        let delays: Vec<u128> = (0..6).map(|n| triple.delay(n).as_millis()).collect();
        assert_eq!(delays, [1, 3, 9, 27, 81, 100]);
        let flat = ExponentialBackoff::new(MS * 7, MS * 100).with_factor(0);
        assert_eq!(flat.delay(10), MS * 7);
    }

    #[test]
    fn huge_attempts_saturate_at_the_cap() {
        let policy = ExponentialBackoff::new(Duration::from_secs(60), Duration::from_secs(21_600));
        for attempt in [31, 32, 64, 1000, u32::MAX] {
            assert_eq!(policy.delay(attempt), policy.max());
            assert_eq!(policy.jittered(attempt, u32::MAX), policy.max());
        }
        let unbounded = ExponentialBackoff::new(Duration::MAX, Duration::MAX).with_jitter(100);
        assert_eq!(unbounded.jittered(u32::MAX, u32::MAX), Duration::MAX);
    }

    #[test]
    fn jitter_lengthens_within_its_share_and_never_past_the_cap() {
        let policy = ExponentialBackoff::new(Duration::from_secs(1), Duration::from_secs(60))
            .with_jitter(10);
        // No randomness: the plain delays.
        assert_eq!(policy.jittered(0, 0), Duration::from_secs(1));
        assert_eq!(policy.jittered(2, 0), Duration::from_secs(4));
        // Half the range: half the 10 % share.
        assert_eq!(policy.jittered(0, 1 << 31), MS * 1050);
        assert_eq!(policy.jittered(2, 1 << 31), MS * 4200);
        // The top of the range stays below the full share.
        let top = policy.jittered(0, u32::MAX);
        assert!(top > MS * 1099 && top < MS * 1100, "{top:?}");
        // Near the cap, the cap wins.
        assert_eq!(policy.jittered(5, 1 << 31), MS * 33_600);
        assert_eq!(policy.jittered(6, u32::MAX), Duration::from_secs(60));
        // Without a jitter share, randomness changes nothing.
        let plain = ExponentialBackoff::new(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(plain.jittered(3, u32::MAX), Duration::from_secs(8));
    }

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
