//! Hibernation's policy and record, without WebAssembly: when an idle
//! instance is dropped ([`next_check`]), and how long wakes took
//! ([`WakeStats`], the `sockgate_wake_seconds` histogram of `/metrics`).
//!
//! An app with `limits.hibernate_after_secs` drops its long-lived
//! instances (store, linear memory) once none of them has had a
//! connection, pending guest work or traffic for that long; its routes,
//! listeners, certificate and compiled code stay, and the next connection
//! starts a fresh instance. The runtime decides what "pending guest work"
//! is for its world and asks [`next_check`] when to look again.

use std::time::Duration;

use crate::base::histogram::Histogram;

/// What an idle check found out: `None`, hibernate now; `Some(wait)`, look
/// again after `wait`. `quiet_for` is how long the instance has been
/// without a connection, pending guest work or traffic (`None`: it has
/// some now), `after` the app's `hibernate_after_secs`. A pure function, so
/// that the rule is tested without a guest.
pub fn next_check(quiet_for: Option<Duration>, after: Duration) -> Option<Duration> {
    match quiet_for {
        None => Some(after),
        Some(quiet) if quiet >= after => None,
        // Never a zero wait: the coarse clock may lag a few ms behind.
        Some(quiet) => Some((after - quiet).max(Duration::from_millis(10))),
    }
}

/// The coarse clock, brought up to date first: an idle check runs once per
/// idle period, and must not read a clock that no ticker advanced lately.
pub fn now_ms() -> u64 {
    crate::base::clock::refresh();
    crate::base::clock::coarse_now_ms()
}

/// How long it has been since `since_ms` on the coarse clock: an
/// instance's quiet time, counted from its last traffic.
pub fn quiet_since(since_ms: u64) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(since_ms))
}

/// Upper bounds of the wake histogram's buckets, in seconds: from a Rust
/// guest's instantiation (tens of µs) to a large Python heap (a second).
pub const WAKE_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
];

/// The metric of wake latencies.
pub const WAKE_METRIC: &str = "sockgate_wake_seconds";

/// How long an app's wakes took: from the connection that woke a
/// hibernated instance to the fresh instance ready to serve it.
pub struct WakeStats(Histogram<{ WAKE_BUCKETS.len() }>);

impl Default for WakeStats {
    fn default() -> Self {
        Self(Histogram::new(&WAKE_BUCKETS))
    }
}

impl WakeStats {
    /// Counts one wake that took `took`.
    pub fn record(&self, took: Duration) {
        self.0.record(took);
    }

    /// Wakes so far.
    pub fn count(&self) -> u64 {
        self.0.count()
    }

    /// The lines of the [`WAKE_METRIC`] histogram for app `app` (buckets,
    /// sum, count), without its `# HELP`/`# TYPE` header.
    pub fn lines(&self, app: &str) -> String {
        self.0.lines(WAKE_METRIC, app)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn a_busy_instance_is_looked_at_again_a_whole_period_later() {
        assert_eq!(next_check(None, 10 * SEC), Some(10 * SEC));
    }

    #[test]
    fn a_quiet_instance_hibernates_once_quiet_for_the_whole_period() {
        assert_eq!(next_check(Some(10 * SEC), 10 * SEC), None);
        assert_eq!(next_check(Some(11 * SEC), 10 * SEC), None);
    }

    #[test]
    fn a_recently_quiet_instance_waits_for_the_rest_of_the_period() {
        assert_eq!(next_check(Some(3 * SEC), 10 * SEC), Some(7 * SEC));
        let almost = 10 * SEC - Duration::from_millis(1);
        assert_eq!(
            next_check(Some(almost), 10 * SEC),
            Some(Duration::from_millis(10))
        );
    }

    #[test]
    fn wakes_fill_cumulative_buckets() {
        let stats = WakeStats::default();
        stats.record(Duration::from_micros(80));
        stats.record(Duration::from_millis(3));
        stats.record(Duration::from_secs(2));
        assert_eq!(stats.count(), 3);
        let lines = stats.lines("echo");
        assert!(lines.contains("sockgate_wake_seconds_bucket{app=\"echo\",le=\"0.0001\"} 1"));
        assert!(lines.contains("sockgate_wake_seconds_bucket{app=\"echo\",le=\"0.005\"} 2"));
        assert!(lines.contains("sockgate_wake_seconds_bucket{app=\"echo\",le=\"1\"} 2"));
        assert!(lines.contains("sockgate_wake_seconds_bucket{app=\"echo\",le=\"+Inf\"} 3"));
        assert!(
            lines.contains("sockgate_wake_seconds_count{app=\"echo\"} 3"),
            "{lines}"
        );
    }
}
