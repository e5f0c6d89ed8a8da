//! The coarse clock: milliseconds since the process's clocks started,
//! cheap to read on every transfer (one relaxed load).
//!
//! It is advanced by whoever keeps time for the process — the runtime's
//! epoch ticker ([`crate::runtime::ticker`] calls [`refresh`] at each
//! tick) — so its resolution is the ticker's: 0.25 to 4 ms while guests
//! run, up to 50 ms while the gateway is idle. Connection accounting,
//! budgets and deadlines read it; none of them keeps a timer of its own.
//!
//! [`precise_now_ns`] reads the monotonic clock itself (a vDSO call, tens
//! of nanoseconds), for the few places that need better than a tick: the
//! start of a guest's time slice.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Milliseconds since [`STARTED`], as of the last [`refresh`].
static COARSE_NOW_MS: AtomicU64 = AtomicU64::new(0);

/// When the process's clocks started.
static STARTED: OnceLock<Instant> = OnceLock::new();

/// The coarse clock: milliseconds since the process's clocks started, as
/// of the last [`refresh`].
pub(crate) fn coarse_now_ms() -> u64 {
    COARSE_NOW_MS.load(Ordering::Relaxed)
}

/// Sets the coarse clock to the time now (the first call starts it).
pub(crate) fn refresh() {
    let started = STARTED.get_or_init(Instant::now);
    let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    COARSE_NOW_MS.store(now, Ordering::Relaxed);
}

/// Nanoseconds since the process's clocks started, read now (not as of
/// the last tick): when a guest's time slice begins, so that a tick can
/// tell how long the guest has held its thread whatever the ticker's pace.
pub(crate) fn precise_now_ns() -> u64 {
    let started = STARTED.get_or_init(Instant::now);
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
