//! When to order a certificate: renewal well before expiry, and exponential
//! back-off after failed orders (the gateway's one back-off,
//! [`ExponentialBackoff`], with jitter). A plain state machine without I/O
//! or clock of its own, driven by the ACME task in [`super::acme`] and by
//! the tests below.

use std::time::{Duration, SystemTime};

use crate::base::backoff::ExponentialBackoff;

/// Jitter on the delay after a failed order, in percent of that delay:
/// gateways that failed together (one CA outage) spread their retries
/// instead of coming back in step. Only ever lengthens a delay, by less
/// than this share, and never past `backoff_max`.
pub(crate) const ORDER_RETRY_JITTER_PERCENT: u32 = 10;

/// The validity period of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Not valid before this time.
    pub not_before: SystemTime,
    /// Not valid after this time.
    pub not_after: SystemTime,
}

impl Validity {
    /// Whether the certificate is valid at `now`.
    pub fn contains(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// How early to renew and how to back off after failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RenewalPolicy {
    /// Renew this long before expiry; `None`: once a third of the
    /// certificate's lifetime remains (30 days for Let's Encrypt's 90).
    pub renew_before: Option<Duration>,
    /// Delay before the first retry after a failed order.
    pub backoff_initial: Duration,
    /// Longest delay between retries. Bounds how long a name stays without
    /// a fresh certificate once the CA (or DNS) is fixed; large enough not
    /// to hammer the CA (Let's Encrypt limits failed validations per hour).
    pub backoff_max: Duration,
}

impl RenewalPolicy {
    /// The back-off between failed orders: doubling from `backoff_initial`
    /// up to `backoff_max`, with [`ORDER_RETRY_JITTER_PERCENT`] of jitter.
    pub(crate) fn backoff(&self) -> ExponentialBackoff {
        ExponentialBackoff::new(self.backoff_initial, self.backoff_max)
            .with_jitter(ORDER_RETRY_JITTER_PERCENT)
    }
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        Self {
            renew_before: None,
            backoff_initial: Duration::from_secs(60),
            backoff_max: Duration::from_secs(6 * 3600),
        }
    }
}

/// What the ACME task should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Order a certificate now.
    Order,
    /// Nothing to do for this long.
    Wait(Duration),
}

/// The renewal state of one name.
#[derive(Debug, Clone)]
pub(crate) struct Renewal {
    policy: RenewalPolicy,
    /// Consecutive failed orders.
    failures: u32,
    /// No order before this time (set after a failure).
    retry_at: Option<SystemTime>,
}

impl Renewal {
    /// A name with no failed orders yet.
    pub(crate) fn new(policy: RenewalPolicy) -> Self {
        Self {
            policy,
            failures: 0,
            retry_at: None,
        }
    }

    /// When a certificate with validity `v` is due for renewal.
    pub(crate) fn renew_at(&self, v: &Validity) -> SystemTime {
        let lifetime = v.not_after.duration_since(v.not_before).unwrap_or_default();
        // A window longer than the lifetime: due from the start.
        let before = self
            .policy
            .renew_before
            .unwrap_or(lifetime / 3)
            .min(lifetime);
        v.not_after.checked_sub(before).unwrap_or(v.not_before)
    }

    /// The next step at `now`, given the certificate currently served.
    pub(crate) fn next(&self, now: SystemTime, current: Option<&Validity>) -> Step {
        if let Some(retry_at) = self.retry_at
            && let Ok(left) = retry_at.duration_since(now)
            && !left.is_zero()
        {
            return Step::Wait(left);
        }
        match current {
            None => Step::Order,
            Some(v) => match self.renew_at(v).duration_since(now) {
                Ok(left) if !left.is_zero() => Step::Wait(left),
                _ => Step::Order,
            },
        }
    }

    /// Records a failed order at `now`; returns the delay before the next
    /// attempt (doubling from `backoff_initial` up to `backoff_max`),
    /// without jitter: [`failed_with_jitter`](Self::failed_with_jitter)
    /// with no randomness.
    #[cfg(test)]
    pub(crate) fn failed(&mut self, now: SystemTime) -> Duration {
        self.failed_with_jitter(now, 0)
    }

    /// Records a failed order at `now`; returns the delay before the next
    /// attempt: the policy's back-off for this many failures, lengthened
    /// by the jitter that `random` (a uniform draw, see
    /// [`ExponentialBackoff::jittered`]) selects. The ACME task passes
    /// [`crate::base::backoff::random_u32`].
    pub(crate) fn failed_with_jitter(&mut self, now: SystemTime, random: u32) -> Duration {
        let delay = self.policy.backoff().jittered(self.failures, random);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now + delay);
        delay
    }

    /// Takes on another node's back-off (a cluster shares one per name):
    /// `failures` failed orders, none before `retry_at`. Never shortens
    /// this node's own wait.
    pub(crate) fn adopt_backoff(&mut self, failures: u32, retry_at: SystemTime) {
        self.failures = self.failures.max(failures);
        if self.retry_at.is_none_or(|own| own < retry_at) {
            self.retry_at = Some(retry_at);
        }
    }

    /// Records a successful order: back-off starts over.
    pub(crate) fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }

    /// Consecutive failed orders so far.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(days: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + DAY * 1000 + DAY * days as u32
    }

    fn validity(from: u64, to: u64) -> Validity {
        Validity {
            not_before: at(from),
            not_after: at(to),
        }
    }

    #[test]
    fn orders_at_once_without_a_certificate() {
        let renewal = Renewal::new(RenewalPolicy::default());
        assert_eq!(renewal.next(at(0), None), Step::Order);
    }

    #[test]
    fn renews_when_a_third_of_the_lifetime_remains() {
        let renewal = Renewal::new(RenewalPolicy::default());
        let cert = validity(0, 90);
        assert_eq!(renewal.renew_at(&cert), at(60));
        assert_eq!(renewal.next(at(10), Some(&cert)), Step::Wait(DAY * 50));
        assert_eq!(renewal.next(at(60), Some(&cert)), Step::Order);
        assert_eq!(renewal.next(at(95), Some(&cert)), Step::Order);
    }

    #[test]
    fn an_explicit_renewal_window_wins() {
        let renewal = Renewal::new(RenewalPolicy {
            renew_before: Some(DAY * 10),
            ..RenewalPolicy::default()
        });
        let cert = validity(0, 90);
        assert_eq!(renewal.renew_at(&cert), at(80));
        // A window longer than the lifetime: due at once.
        let eager = Renewal::new(RenewalPolicy {
            renew_before: Some(DAY * 100_000),
            ..RenewalPolicy::default()
        });
        assert_eq!(eager.renew_at(&cert), at(0));
        assert_eq!(eager.next(at(1), Some(&cert)), Step::Order);
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_cap_and_reset_on_success() {
        let policy = RenewalPolicy {
            renew_before: None,
            backoff_initial: Duration::from_secs(60),
            backoff_max: Duration::from_secs(600),
        };
        let mut renewal = Renewal::new(policy);
        let now = at(0);
        let delays: Vec<u64> = (0..6).map(|_| renewal.failed(now).as_secs()).collect();
        assert_eq!(delays, [60, 120, 240, 480, 600, 600]);
        assert_eq!(renewal.failures(), 6);
        // While backing off, even a missing certificate waits.
        assert_eq!(
            renewal.next(now, None),
            Step::Wait(Duration::from_secs(600))
        );
        assert_eq!(
            renewal.next(now + Duration::from_secs(600), None),
            Step::Order
        );
        renewal.succeeded();
        assert_eq!(renewal.failures(), 0);
        assert_eq!(renewal.next(now, None), Step::Order);
        assert_eq!(renewal.failed(now).as_secs(), 60);
    }

    #[test]
    fn backing_off_keeps_the_current_certificate_in_service() {
        // A renewal that fails waits for the back-off, not for the
        // renewal date (which has passed), and orders again after it.
        let mut renewal = Renewal::new(RenewalPolicy::default());
        let cert = validity(0, 90);
        let now = at(70);
        assert_eq!(renewal.next(now, Some(&cert)), Step::Order);
        let delay = renewal.failed(now);
        assert_eq!(renewal.next(now, Some(&cert)), Step::Wait(delay));
        assert_eq!(renewal.next(now + delay, Some(&cert)), Step::Order);
        assert!(cert.contains(now));
    }

    #[test]
    fn jitter_spreads_retries_within_a_tenth_and_below_the_cap() {
        let policy = RenewalPolicy {
            renew_before: None,
            backoff_initial: Duration::from_secs(60),
            backoff_max: Duration::from_secs(600),
        };
        let now = at(0);
        let mut low = Renewal::new(policy);
        let mut mid = Renewal::new(policy);
        let mut high = Renewal::new(policy);
        for plain in [60, 120, 240, 480, 600] {
            let plain = Duration::from_secs(plain);
            let (low, mid, high) = (
                low.failed_with_jitter(now, 0),
                mid.failed_with_jitter(now, 1 << 31),
                high.failed_with_jitter(now, u32::MAX),
            );
            assert_eq!(low, plain);
            assert!(mid > plain || plain == policy.backoff_max, "{mid:?}");
            assert!(high >= mid && high <= (plain + plain / 10).min(policy.backoff_max));
        }
        // The wait honours the jittered delay.
        let mut renewal = Renewal::new(policy);
        let delay = renewal.failed_with_jitter(now, 1 << 31);
        assert_eq!(delay, Duration::from_secs(63));
        assert_eq!(renewal.next(now, None), Step::Wait(delay));
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let mut renewal = Renewal::new(RenewalPolicy::default());
        for _ in 0..100 {
            renewal.failed(at(0));
        }
        assert_eq!(renewal.failed(at(0)), RenewalPolicy::default().backoff_max);
    }
}
