//! The epoch ticker: one thread for the whole process that advances the
//! engines' epoch (every guest running when it advances calls back into
//! the supervisor, [`super::supervisor`]) and the coarse clock — no timer
//! per call or per connection.
//!
//! A wake-up costs about 40 µs of a core on this 2-core VM (the timer
//! interrupt, two context switches and the hypervisor's share of them;
//! a C loop that only sleeps costs the same), so the ticker keeps its pace
//! ([`pace`]) to what the guests need:
//! - [`FAST_TICK`] while guests compute in the slow lane (one ended a
//!   slice there wanting another, [`slow_lane_computing`]), and for
//!   [`FAST_TICKS_FOR`] after: a guest that starts computing on a worker
//!   then leaves it sooner, which matters when many do, one after the
//!   other (connections that spin, are stopped and reconnect);
//! - [`EPOCH_TICK`] (1 ms) while a guest computes — a tick found one a
//!   good part into its time slice ([`guest_computing`]) — and for
//!   [`FAST_TICKS_FOR`] after: the time slices are then 1 to 2 ms;
//! - [`RELAXED_TICK`] while guests run but none computes (a busy I/O app
//!   whose activations last microseconds): a tick every millisecond would
//!   cost such an app a tenth of its core on this VM, for nothing. A tick
//!   that finds a guest computing wakes the ticker at once, so a guest that
//!   starts computing then keeps its thread for at most one relaxed tick,
//!   once;
//! - [`IDLE_TICK`] when no guest ran during a tick, until one starts
//!   ([`guest_active`] wakes the ticker).
//!
//! The ticker must run *when* its tick is due, even when every core is
//! busy — and every core is busy exactly when a guest spins. As an
//! ordinary thread it waits in the run queue of a core behind the very
//! worker whose guest it should stop: the kernel does not preempt a
//! thread of equal priority on wake-up, so the tick came at the next
//! scheduler tick instead, and a spinning guest kept a tokio worker for up
//! to 11 ms (measured with `perf sched` under the `supervision` bench).
//! So the ticker asks for the lowest real-time priority ([`raise_priority`]):
//! it then preempts any ordinary thread on wake-up, and it sleeps again
//! after a few microseconds of work, so it can never starve anything.
//! Without the privilege for it (`CAP_SYS_NICE`) it asks for the shortest
//! scheduler slice instead, which on Linux 6.12 and later usually (not
//! always) preempts too; it says which it got at start.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use wasmtime::Engine;

use crate::base::clock;
use crate::base::locks::lock;

/// The epoch tick while a guest computes: a guest then yields within a
/// tick of its time slice's end ([`super::budget::SLICE`]).
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The epoch tick while guests run but none computes: the longest a guest
/// that starts computing then keeps its thread. The kernel's own tick on
/// a 250 Hz kernel.
pub(crate) const RELAXED_TICK: Duration = Duration::from_millis(4);

/// The epoch tick while guests compute in the slow lane.
pub(crate) const FAST_TICK: Duration = Duration::from_micros(250);

/// How long the ticker stays fast after the slow lane emptied, or after
/// it last saw a guest computing.
pub(crate) const FAST_TICKS_FOR: Duration = Duration::from_secs(1);

/// The longest the ticker sleeps while no guest runs; the coarse clock's
/// resolution then.
pub(crate) const IDLE_TICK: Duration = Duration::from_millis(50);

/// How fast the ticker goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Pace {
    /// No guest ran during the last tick: sleep [`IDLE_TICK`], or until a
    /// guest starts.
    Idle,
    /// Guests run, none computes: [`RELAXED_TICK`], or until a tick finds
    /// one computing.
    Relaxed,
    /// [`EPOCH_TICK`].
    Normal,
    /// [`FAST_TICK`].
    Fast,
}

/// The pace after a tick: `active` if a guest ran during it; `since_busy`
/// the time since the slow lane was last seen computing, `since_computing`
/// since a tick last found a guest computing.
pub(crate) fn pace(
    active: bool,
    since_busy: Option<Duration>,
    since_computing: Option<Duration>,
) -> Pace {
    let recent = |since: Option<Duration>| since.is_some_and(|since| since < FAST_TICKS_FOR);
    if recent(since_busy) {
        Pace::Fast
    } else if recent(since_computing) {
        Pace::Normal
    } else if active {
        Pace::Relaxed
    } else {
        Pace::Idle
    }
}

/// The ticker's pace now, as a [`Pace`]'s `u8`: who wakes it early reads it.
static PACE: AtomicU8 = AtomicU8::new(Pace::Idle as u8);

/// Set when a tick finds a guest computing; cleared by the ticker at each
/// tick.
static COMPUTING: AtomicBool = AtomicBool::new(false);

/// Set when a guest runs; cleared by the ticker at each tick.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The ticker thread, to wake it from [`Pace::Idle`].
static TICKER: OnceLock<Thread> = OnceLock::new();

/// Engines whose epoch the ticker advances. Usually one or two per
/// process; the supervision benchmark builds several.
static TICKED_ENGINES: Mutex<Vec<Engine>> = Mutex::new(Vec::new());

/// Set when a guest lent to the slow lane ([`super::slow_lane`]) ended a
/// slice there still computing (it wants another); cleared by the ticker
/// at each tick, which goes faster for a while after it saw one.
static SLOW_LANE_COMPUTING: AtomicBool = AtomicBool::new(false);

/// A guest in the slow lane used up a slice and goes on computing.
pub(crate) fn slow_lane_computing() {
    if !SLOW_LANE_COMPUTING.load(Ordering::Relaxed) {
        SLOW_LANE_COMPUTING.store(true, Ordering::Relaxed);
    }
}

/// A guest runs (an activation starts, or a tick found one running): on
/// the path of every message, so one relaxed load, except for the first
/// guest after a tick, which also reads the pace, and the first after the
/// ticker went idle, which refreshes the coarse clock and wakes the ticker.
pub(crate) fn guest_active() {
    if !ACTIVE.load(Ordering::Relaxed)
        && !ACTIVE.swap(true, Ordering::Relaxed)
        && PACE.load(Ordering::Relaxed) == Pace::Idle as u8
    {
        clock::refresh();
        wake_ticker();
    }
}

/// A tick found a guest a good part into its time slice
/// ([`super::budget::Verdict::Watch`]) or at its end: the ticker must come
/// back within a slice, so a relaxed ticker is woken now and keeps the
/// [`EPOCH_TICK`] pace for [`FAST_TICKS_FOR`].
pub(crate) fn guest_computing() {
    if !COMPUTING.swap(true, Ordering::Relaxed)
        && PACE.load(Ordering::Relaxed) == Pace::Relaxed as u8
    {
        wake_ticker();
    }
}

fn wake_ticker() {
    if let Some(ticker) = TICKER.get() {
        ticker.unpark();
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
    match raise_priority() {
        Ok(TickerPriority::RealTime) => {}
        Ok(TickerPriority::ShortSlice) => tracing::info!(
            "the epoch ticker runs as an ordinary thread with a short slice, not at real-time \
             priority: time slices may stretch under full CPU load; give the gateway \
             CAP_SYS_NICE (AmbientCapabilities=CAP_SYS_NICE in a systemd unit) to keep them \
             at 1 ms"
        ),
        Err(err) => tracing::warn!(
            "the epoch ticker runs at normal priority ({err}): under full CPU load a spinning \
             guest may keep a worker for a scheduler tick (up to 10 ms) instead of 1 ms; give \
             the gateway CAP_SYS_NICE (AmbientCapabilities=CAP_SYS_NICE in a systemd unit) to \
             keep time slices short"
        ),
    }
    let mut busy_at: Option<Instant> = None;
    let mut computing_at: Option<Instant> = None;
    loop {
        if SLOW_LANE_COMPUTING.swap(false, Ordering::Relaxed) {
            busy_at = Some(Instant::now());
        }
        if COMPUTING.swap(false, Ordering::Relaxed) {
            computing_at = Some(Instant::now());
        }
        let active = ACTIVE.swap(false, Ordering::Relaxed);
        let pace = pace(
            active,
            busy_at.map(|at| at.elapsed()),
            computing_at.map(|at| at.elapsed()),
        );
        PACE.store(pace as u8, Ordering::Relaxed);
        match pace {
            Pace::Fast => std::thread::sleep(FAST_TICK),
            Pace::Normal => std::thread::sleep(EPOCH_TICK),
            // Woken early by `guest_computing`.
            Pace::Relaxed => std::thread::park_timeout(RELAXED_TICK),
            // Woken early by `guest_active`.
            Pace::Idle => std::thread::park_timeout(IDLE_TICK),
        }
        for engine in lock(&TICKED_ENGINES).iter() {
            engine.increment_epoch();
        }
        clock::refresh();
    }
}

/// How the ticker got ahead of ordinary threads ([`raise_priority`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TickerPriority {
    /// `SCHED_FIFO` at [`TICKER_RT_PRIORITY`]: preempts any ordinary
    /// thread on wake-up.
    RealTime,
    /// An ordinary thread with a short slice ([`TICKER_SLICE_NS`]).
    ShortSlice,
}

/// The real-time priority the ticker asks for: the lowest, above every
/// ordinary thread, below anything an administrator set up as real-time.
const TICKER_RT_PRIORITY: i32 = 1;

/// The scheduler slice the ticker asks for when it may not be real-time:
/// the shortest the kernel allows. Linux's EEVDF scheduler (6.12 and
/// later) lets a waking thread with a shorter slice than the running one
/// preempt it — usually, not always, so this is the fallback.
pub(super) const TICKER_SLICE_NS: u64 = 100_000;

/// `struct sched_attr` of `sched_setattr(2)`, its first version (48 bytes).
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// Puts the calling thread (the ticker) ahead of ordinary threads:
/// real-time if the process may (`CAP_SYS_NICE` or `RLIMIT_RTPRIO`), else
/// a short scheduler slice; the error says why neither worked.
fn raise_priority() -> Result<TickerPriority, String> {
    let param = libc::sched_param {
        sched_priority: TICKER_RT_PRIORITY,
    };
    // SAFETY: pid 0 is the calling thread; `param` is a valid struct.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0 {
        return Ok(TickerPriority::RealTime);
    }
    let real_time = std::io::Error::last_os_error();
    match set_fair_slice(0, TICKER_SLICE_NS) {
        Ok(()) => Ok(TickerPriority::ShortSlice),
        Err(slice) => Err(format!(
            "real-time priority: {real_time}; short slice: {slice}"
        )),
    }
}

/// Makes the calling thread an ordinary (`SCHED_OTHER`) one with nice
/// value `nice` and a scheduler slice of `slice_ns` (Linux 6.12 and later
/// honour the slice; older kernels ignore it). Neither a higher nice value
/// nor a shorter slice needs a privilege.
pub(super) fn set_fair_slice(nice: i32, slice_ns: u64) -> std::io::Result<()> {
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice,
        priority: 0,
        runtime: slice_ns,
        deadline: 0,
        period: 0,
    };
    // SAFETY: pid 0 is the calling thread; `attr` is a valid, initialised
    // struct whose size field is its size.
    if unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ticker_keeps_pace_with_the_guests() {
        let now = Some(Duration::ZERO);
        let long_ago = Some(FAST_TICKS_FOR * 2);
        assert_eq!(pace(false, None, None), Pace::Idle);
        assert_eq!(pace(true, None, None), Pace::Relaxed);
        assert_eq!(pace(true, None, long_ago), Pace::Relaxed);
        assert_eq!(pace(true, None, now), Pace::Normal);
        assert_eq!(pace(false, None, Some(FAST_TICKS_FOR / 2)), Pace::Normal);
        assert_eq!(pace(false, now, None), Pace::Fast);
        assert_eq!(pace(true, Some(FAST_TICKS_FOR / 2), now), Pace::Fast);
        assert_eq!(pace(true, Some(FAST_TICKS_FOR), None), Pace::Relaxed);
        assert_eq!(pace(false, long_ago, long_ago), Pace::Idle);
    }
}
