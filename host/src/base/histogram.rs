//! A latency histogram for `/metrics`, in Prometheus' text format: one
//! atomic counter per bucket, so recording costs two relaxed additions and
//! no lock. Each metric that has one (HTTP request durations, wake
//! latencies) fixes its own bucket bounds.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Durations counted into `N` buckets bounded by `bounds` (seconds,
/// ascending), plus one for those longer than every bound.
pub(crate) struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    /// Durations per bucket (not cumulative).
    buckets: [AtomicU64; N],
    /// Durations longer than every bound.
    over: AtomicU64,
    /// Sum of durations, in microseconds.
    sum_us: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    /// An empty histogram with these bucket bounds.
    pub(crate) const fn new(bounds: &'static [f64; N]) -> Self {
        Self {
            bounds,
            buckets: [const { AtomicU64::new(0) }; N],
            over: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Counts one duration.
    pub(crate) fn record(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        match self.bounds.iter().position(|&bound| seconds <= bound) {
            Some(bucket) => self.buckets[bucket].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Durations counted so far.
    pub(crate) fn count(&self) -> u64 {
        self.buckets
            .iter()
            .chain([&self.over])
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    /// The lines of histogram `metric` for app `app` (cumulative buckets,
    /// sum, count), without its `# HELP`/`# TYPE` header.
    pub(crate) fn lines(&self, metric: &str, app: &str) -> String {
        let mut out = String::new();
        let mut cumulative = 0;
        for (bucket, bound) in self.buckets.iter().zip(self.bounds) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{metric}_bucket{{app=\"{app}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.over.load(Ordering::Relaxed);
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{metric}_bucket{{app=\"{app}\",le=\"+Inf\"}} {cumulative}\n\
             {metric}_sum{{app=\"{app}\"}} {sum}\n\
             {metric}_count{{app=\"{app}\"}} {cumulative}"
        );
        out
    }
}
