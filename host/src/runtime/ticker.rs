//! The epoch ticker: one thread for the whole process that advances the
//! engines' epoch (every guest running when it advances calls back into
//! the supervisor, [`super::supervisor`]) and the coarse clock — no timer
//! per call or per connection.
//!
//! A wake-up costs the ticker thread about 20 µs of CPU on a small VM, so
//! it keeps its pace ([`pace`]) to what the guests need:
//! - [`EPOCH_TICK`] (1 ms) while guests run: the time slice, and the
//!   resolution of the CPU and wall-clock budgets;
//! - [`FAST_TICK`] while guests compute in the slow lane, and for
//!   [`FAST_TICKS_FOR`] after: a guest that starts computing on a worker
//!   then leaves it sooner, which matters when many do, one after the
//!   other (connections that spin, are stopped and reconnect);
//! - [`IDLE_TICK`] when no guest ran during a tick, until one starts
//!   ([`guest_active`] wakes the ticker).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use wasmtime::Engine;

use crate::base::clock;
use crate::base::locks::lock;

/// The epoch tick while guests run: the longest a guest keeps a thread
/// before yielding is two ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The epoch tick while guests compute in the slow lane.
pub(crate) const FAST_TICK: Duration = Duration::from_micros(250);

/// How long the ticker stays fast after the slow lane emptied.
pub(crate) const FAST_TICKS_FOR: Duration = Duration::from_secs(1);

/// The longest the ticker sleeps while no guest runs; the coarse clock's
/// resolution then.
pub(crate) const IDLE_TICK: Duration = Duration::from_millis(50);

/// How fast the ticker goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    /// No guest ran during the last tick: sleep [`IDLE_TICK`], or until a
    /// guest starts.
    Idle,
    /// [`EPOCH_TICK`].
    Normal,
    /// [`FAST_TICK`].
    Fast,
}

/// The pace after a tick: `active` if a guest ran during it, `since_busy`
/// the time since the slow lane was last seen computing.
pub(crate) fn pace(active: bool, since_busy: Option<Duration>) -> Pace {
    match since_busy {
        Some(since) if since < FAST_TICKS_FOR => Pace::Fast,
        _ if active => Pace::Normal,
        _ => Pace::Idle,
    }
}

/// Set when a guest runs; cleared by the ticker at each tick.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The ticker thread, to wake it from [`Pace::Idle`].
static TICKER: OnceLock<Thread> = OnceLock::new();

/// Engines whose epoch the ticker advances. Usually one or two per
/// process; the supervision benchmark builds several.
static TICKED_ENGINES: Mutex<Vec<Engine>> = Mutex::new(Vec::new());

/// Futures lent to the slow lane ([`super::slow_lane`]) and not back yet;
/// the slow lane reports them here, and the ticker goes faster while there
/// are any.
static SLOW_LANE_LENT: AtomicUsize = AtomicUsize::new(0);

/// The slow lane took a guest's future.
pub(crate) fn slow_lane_lent() {
    SLOW_LANE_LENT.fetch_add(1, Ordering::Relaxed);
}

/// The slow lane gave a guest's future back.
pub(crate) fn slow_lane_returned() {
    SLOW_LANE_LENT.fetch_sub(1, Ordering::Relaxed);
}

/// Whether a guest is computing in the slow lane (or waiting there for its
/// turn); the ticker ticks faster meanwhile.
fn slow_lane_busy() -> bool {
    SLOW_LANE_LENT.load(Ordering::Relaxed) > 0
}

/// A guest runs (an activation starts, or a tick found one running): on
/// the path of every message, so one relaxed load, except for the first
/// guest after the ticker went idle, which refreshes the coarse clock and
/// wakes the ticker.
pub(crate) fn guest_active() {
    if !ACTIVE.load(Ordering::Relaxed) && !ACTIVE.swap(true, Ordering::Relaxed) {
        clock::refresh();
        if let Some(ticker) = TICKER.get() {
            ticker.unpark();
        }
    }
}

/// Makes the process's ticker thread (started on first use) advance
/// `engine`'s epoch.
pub fn start_ticker(engine: &Engine) {
    lock(&TICKED_ENGINES).push(engine.clone());
    TICKER.get_or_init(|| {
        clock::refresh();
        std::thread::Builder::new()
            .name("sockgate-epoch".into())
            .spawn(tick_forever)
            .expect("cannot start the epoch ticker thread")
            .thread()
            .clone()
    });
}

fn tick_forever() {
    let mut busy_at: Option<Instant> = None;
    loop {
        if slow_lane_busy() {
            busy_at = Some(Instant::now());
        }
        let active = ACTIVE.swap(false, Ordering::Relaxed);
        match pace(active, busy_at.map(|at| at.elapsed())) {
            Pace::Fast => std::thread::sleep(FAST_TICK),
            Pace::Normal => std::thread::sleep(EPOCH_TICK),
            // Woken early by `guest_active`.
            Pace::Idle => std::thread::park_timeout(IDLE_TICK),
        }
        for engine in lock(&TICKED_ENGINES).iter() {
            engine.increment_epoch();
        }
        clock::refresh();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ticker_keeps_pace_with_the_guests() {
        assert_eq!(pace(false, None), Pace::Idle);
        assert_eq!(pace(true, None), Pace::Normal);
        assert_eq!(pace(false, Some(Duration::ZERO)), Pace::Fast);
        assert_eq!(pace(true, Some(FAST_TICKS_FOR / 2)), Pace::Fast);
        assert_eq!(pace(true, Some(FAST_TICKS_FOR)), Pace::Normal);
        assert_eq!(pace(false, Some(FAST_TICKS_FOR * 2)), Pace::Idle);
    }
}
