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
const TICKER_SLICE_NS: u64 = 100_000;

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
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice: 0,
        priority: 0,
        runtime: TICKER_SLICE_NS,
        deadline: 0,
        period: 0,
    };
    // SAFETY: pid 0 is the calling thread; `attr` is a valid, initialised
    // struct whose size field is its size.
    if unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) } == 0 {
        return Ok(TickerPriority::ShortSlice);
    }
    let slice = std::io::Error::last_os_error();
    Err(format!(
        "real-time priority: {real_time}; short slice: {slice}"
    ))
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
