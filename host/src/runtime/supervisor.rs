//! CPU and memory supervision of guests.
//!
//! One thread for the whole process ticks the engines' epoch while guests
//! run ([`super::ticker`]) — no timer per call. Every guest running when a
//! tick comes calls back into the supervisor, which:
//!
//! - **shares the threads**: a guest that has held its thread for a time
//!   slice ([`super::budget::SLICE`], 1 ms) yields (an async yield of its fiber), and goes on in the slow
//!   lane ([`super::slow_lane`]): threads of lower OS priority, so the
//!   tokio workers stay free for every app's connections and the I/O
//!   driver, and anything that needs a core gets it before the guest;
//! - **enforces the budgets** of the activation in progress
//!   ([`super::budget`]): `limits.cpu_budget_ms` of the thread's CPU time
//!   (sampled from `CLOCK_THREAD_CPUTIME_ID`, whatever the shape of the
//!   guest's loop, imports included) and `limits.wall_budget_ms` of wall
//!   time holding a thread (not the time waiting for its next slice, nor
//!   for a core: [`super::thread_clock`]). A guest that spends one traps, with [`Exceeded`] as the cause.
//!
//! A budget is per activation — from the gateway handing control to the
//! guest to the guest handing it back — so a guest that keeps doing I/O
//! runs for as long as it likes, while one that computes without end
//! traps. An epoch yield alone would not do: a guest yielding with its
//! store held keeps every other connection of its instance waiting, so a
//! spinning guest must end in a trap.
//!
//! Memory is bounded by a store limiter ([`GuestLimiter`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use wasmtime::{CallHook, Store, UpdateDeadline};

use super::budget::{Accounting, Budget, ThreadSample, Verdict};
use super::host_state::HostState;
use super::{thread_clock, ticker};
use crate::limits::AppLimits;

pub use super::budget::Exceeded;
pub use super::trap::{TrapCause, explain_trap};

pub use super::ticker::{EPOCH_TICK, start_ticker};
use crate::base::clock::{coarse_now_ms, precise_now_ns};

/// Set whenever the guest's connection moved bytes (or its call waited);
/// the supervisor then treats the import as I/O and refills the wall-clock
/// budget ([`Activation::HostWait`]).
pub(crate) type IoProgress = Arc<AtomicBool>;

thread_local! {
    static ON_SLOW_LANE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as one of the slow lane's ([`super::slow_lane`]).
pub(crate) fn mark_slow_lane_thread() {
    ON_SLOW_LANE.with(|on| on.set(true));
}

/// Whether the calling thread is one of the slow lane's, which polls a
/// yielding guest again without being woken.
fn on_slow_lane() -> bool {
    ON_SLOW_LANE.with(|on| on.get())
}

/// Whether guests are supervised. Always in the gateway; only the
/// benchmarks that measure what supervision costs turn it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Supervision {
    /// Epoch interruption on: time slices and the CPU and wall-clock
    /// budgets.
    #[default]
    On,
    /// No epoch checks in the compiled code: a spinning guest is never
    /// stopped.
    Off,
}

impl Supervision {
    /// Whether the engine checks epoch deadlines.
    pub fn epoch(self) -> bool {
        self == Supervision::On
    }
}

/// What ends an *activation* (and so renews the budgets): how a guest
/// hands control back to the gateway.
#[derive(Clone)]
pub enum Activation {
    /// The `conn-handler` world: the guest's event loop returns to the
    /// gateway's (`run_concurrent`), and every entry into wasm starts one.
    /// So does I/O inside one entry: a guest's stream reads and writes can
    /// complete without leaving wasm (the host end is ready, and on TLS the
    /// encryption runs on this thread), so a busy echo loop may stay in one
    /// entry for as long as its clients send. The flag is set whenever a
    /// connection of the instance moved bytes; the epoch callback clears it
    /// and renews the budgets (the time slices go on: the guest still
    /// yields its worker to the worker's other tasks at each slice's end,
    /// but stays on it rather than moving to the slow lane). A guest that
    /// computes without moving bytes never sets it.
    EventLoop(IoProgress),
    /// The `conn-handler-sync` world: a guest waits for I/O inside a
    /// blocking import (`blocking-read`, `poll`), so the return of an import
    /// during which the guest waited also starts one. The flag says so: set
    /// when the call's future returned `Pending` to the executor (the
    /// guest's fiber was suspended in an import: a real wait, unless it was
    /// only yielding its time slice, [`Meter::yielding`]) or the connection's streams
    /// moved bytes (a busy connection, whose reads and writes complete at
    /// once, is doing I/O); the call hook clears it. A guest spinning on
    /// imports that return at once (a non-blocking read with nothing to
    /// read, the clock) never sets it, and traps at its CPU budget.
    HostWait(IoProgress),
    /// The `conn-events` world: one plain call of the guest's handler per
    /// batch, and each call is one activation, started by the driver that
    /// makes it ([`Meter::start_call`]) rather than by a call hook. A hook
    /// would fire for every entry into wasm, and lowering a batch enters
    /// the guest once per list it carries (its `cabi_realloc`, one per
    /// received message), reading the clock each time. The flag is
    /// [`Activation::EventLoop`]'s: set when the driver moved bytes, so a
    /// busy instance's budgets are renewed as in that world.
    PerCall(IoProgress),
}

/// One store's supervision state, shared by its call hook, its epoch
/// callback and the task that polls it ([`super::slow_lane::run`]): the
/// [`Accounting`] of the activation in progress, in atomics (only the
/// thread running the store touches them, one at a time), and whether the
/// guest is yielding its time slice.
pub struct Meter {
    /// [`Accounting::baseline`]'s CPU clock, [`NO_BASELINE`] for `None`.
    baseline_cpu_ns: AtomicU64,
    /// [`Accounting::baseline`]'s wait for a core.
    baseline_waiting_ns: AtomicU64,
    used_ns: AtomicU64,
    waited_ns: AtomicU64,
    started_ms: AtomicU64,
    slice_started_ns: AtomicU64,
    /// Set while the guest waits in [`Meter::next_slice`].
    yielding: AtomicBool,
    /// The coarse clock (ms) when the guest last yielded its slice.
    yielded_ms: AtomicU64,
}

/// [`Meter::baseline_cpu_ns`] when there is no baseline.
const NO_BASELINE: u64 = u64::MAX;

impl Meter {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            baseline_cpu_ns: AtomicU64::new(NO_BASELINE),
            baseline_waiting_ns: AtomicU64::new(0),
            used_ns: AtomicU64::new(0),
            waited_ns: AtomicU64::new(0),
            started_ms: AtomicU64::new(coarse_now_ms()),
            slice_started_ns: AtomicU64::new(precise_now_ns()),
            yielding: AtomicBool::new(false),
            yielded_ms: AtomicU64::new(0),
        })
    }

    /// Whether the guest is yielding its time slice: a store's task that
    /// returned `Pending` for this reason is not waiting for anything but
    /// its next slice (nor, in the `conn-handler-sync` world, for I/O: see
    /// [`Activation::HostWait`]).
    pub fn yielding(&self) -> bool {
        self.yielding.load(Ordering::Relaxed)
    }

    /// The store's task is polled: it has a thread from now on, which may
    /// have run anything since ([`Accounting::polled`]).
    pub fn polled(&self) {
        self.baseline_cpu_ns.store(NO_BASELINE, Ordering::Relaxed);
        self.slice_started_ns
            .store(precise_now_ns(), Ordering::Relaxed);
    }

    /// [`Accounting::start_activation`]: on the path of every message, so
    /// a few relaxed stores, the precise clock (a vDSO read) and no system
    /// call.
    fn start_activation(&self) {
        ticker::guest_active();
        self.used_ns.store(0, Ordering::Relaxed);
        self.waited_ns.store(0, Ordering::Relaxed);
        self.started_ms.store(coarse_now_ms(), Ordering::Relaxed);
        self.baseline_cpu_ns.store(NO_BASELINE, Ordering::Relaxed);
        self.slice_started_ns
            .store(precise_now_ns(), Ordering::Relaxed);
    }

    /// The driver of a [`Activation::PerCall`] store is about to call the
    /// guest: an activation starts, and the next epoch tick comes back to
    /// the supervisor.
    pub(crate) fn start_call(&self, store: &mut Store<HostState>) {
        self.start_activation();
        store.set_epoch_deadline(1);
    }

    /// The guest did I/O inside its activation ([`Activation::EventLoop`]):
    /// its budgets start over from here, its time slice goes on.
    fn renew_budgets(&self) {
        let mut accounting = self.load();
        accounting.renew_budgets(coarse_now_ms());
        self.save(&accounting);
    }

    fn load(&self) -> Accounting {
        let baseline_cpu_ns = self.baseline_cpu_ns.load(Ordering::Relaxed);
        Accounting {
            baseline: (baseline_cpu_ns != NO_BASELINE).then(|| ThreadSample {
                cpu_ns: baseline_cpu_ns,
                waiting_ns: self.baseline_waiting_ns.load(Ordering::Relaxed),
            }),
            used_ns: self.used_ns.load(Ordering::Relaxed),
            waited_ns: self.waited_ns.load(Ordering::Relaxed),
            started_ms: self.started_ms.load(Ordering::Relaxed),
            slice_started_ns: self.slice_started_ns.load(Ordering::Relaxed),
        }
    }

    fn save(&self, accounting: &Accounting) {
        let baseline = accounting.baseline;
        self.baseline_cpu_ns.store(
            baseline.map_or(NO_BASELINE, |sample| sample.cpu_ns),
            Ordering::Relaxed,
        );
        self.baseline_waiting_ns.store(
            baseline.map_or(0, |sample| sample.waiting_ns),
            Ordering::Relaxed,
        );
        self.used_ns.store(accounting.used_ns, Ordering::Relaxed);
        self.waited_ns
            .store(accounting.waited_ns, Ordering::Relaxed);
        self.started_ms
            .store(accounting.started_ms, Ordering::Relaxed);
        self.slice_started_ns
            .store(accounting.slice_started_ns, Ordering::Relaxed);
    }

    /// The epoch callback: samples the clocks and carries out the verdict.
    /// `moved_bytes`: the guest's connections moved bytes since the last
    /// tick, so it is serving them, not computing
    /// ([`Activation::EventLoop`]): at a slice's end it lets the worker's
    /// other tasks run and stays on the worker, instead of moving to the
    /// slow lane, and it does not keep the ticker fast.
    fn tick(
        self: &Arc<Self>,
        budget: Budget,
        moved_bytes: bool,
    ) -> wasmtime::Result<UpdateDeadline> {
        ticker::guest_active();
        let mut accounting = self.load();
        let verdict = accounting.tick(
            thread_clock::sample(),
            coarse_now_ms(),
            precise_now_ns(),
            budget,
        );
        self.save(&accounting);
        match verdict {
            Verdict::Continue => Ok(UpdateDeadline::Continue(1)),
            Verdict::Watch => {
                if !moved_bytes {
                    ticker::guest_computing();
                }
                Ok(UpdateDeadline::Continue(1))
            }
            Verdict::Yield if moved_bytes => {
                self.yielded_ms.store(coarse_now_ms(), Ordering::Relaxed);
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(self.clone().next_turn()),
                ))
            }
            Verdict::Yield => {
                ticker::guest_computing();
                self.yielded_ms.store(coarse_now_ms(), Ordering::Relaxed);
                self.yielding.store(true, Ordering::Relaxed);
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(self.clone().next_slice()),
                ))
            }
            Verdict::Exceeded(exceeded) => Err(exceeded.into()),
        }
    }

    /// What a yielding guest waits for: its task to be polled again —
    /// by the slow lane ([`super::slow_lane`]), which takes it from here
    /// on, or, without one, by the tokio worker after its other tasks. The
    /// guest resumes on whichever thread polls it, counted from there.
    async fn next_slice(self: Arc<Self>) {
        let mut yielded = false;
        std::future::poll_fn(|cx| {
            if yielded {
                return std::task::Poll::Ready(());
            }
            yielded = true;
            if !on_slow_lane() {
                cx.waker().wake_by_ref();
            }
            std::task::Poll::Pending
        })
        .await;
        self.resumed();
        self.yielding.store(false, Ordering::Relaxed);
    }

    /// What a guest that is serving its connections waits for at the end
    /// of a slice: its turn on the same worker, after the tasks that were
    /// waiting for it (tokio's `yield_now` puts it behind them, where a
    /// plain wake-up would run it again at once).
    async fn next_turn(self: Arc<Self>) {
        tokio::task::yield_now().await;
        self.resumed();
    }

    /// The guest goes on after a yield, on whichever thread polls it: a
    /// slice begins ([`Accounting::resumed`]).
    fn resumed(&self) {
        let queued_ms = coarse_now_ms().saturating_sub(self.yielded_ms.load(Ordering::Relaxed));
        let mut accounting = self.load();
        accounting.resumed(thread_clock::sample(), queued_ms, precise_now_ns());
        self.save(&accounting);
    }
}

/// Applies the budgets of `limits` (as far as `supervision` enables them)
/// and the memory limits to a fresh store of the `conn-handler` world.
/// The store's task must run in [`super::slow_lane::run`] with the
/// returned meter.
/// `progress` is set by the instance's connections whenever they move
/// bytes ([`Activation::EventLoop`]).
pub fn supervise(
    store: &mut Store<HostState>,
    supervision: Supervision,
    limits: &AppLimits,
    progress: IoProgress,
) -> Arc<Meter> {
    supervise_activations(store, supervision, limits, Activation::EventLoop(progress))
}

/// Like [`supervise`], with the activation rule of the store's world.
pub fn supervise_activations(
    store: &mut Store<HostState>,
    supervision: Supervision,
    limits: &AppLimits,
    activation: Activation,
) -> Arc<Meter> {
    store.limiter(|state| state.limiter());
    let meter = Meter::new();
    if !supervision.epoch() {
        return meter;
    }
    let budget = Budget::new(limits);
    store.set_epoch_deadline(1);
    let ticked = meter.clone();
    let moved_bytes = match &activation {
        Activation::EventLoop(progress) | Activation::PerCall(progress) => Some(progress.clone()),
        Activation::HostWait(_) => None,
    };
    store.epoch_deadline_callback(move |_store| {
        let moved = moved_bytes
            .as_ref()
            .is_some_and(|progress| progress.swap(false, Ordering::Relaxed));
        if moved {
            ticked.renew_budgets();
        }
        ticked.tick(budget, moved)
    });
    if matches!(activation, Activation::PerCall(_)) {
        return meter;
    }
    let hooked = meter.clone();
    store.call_hook(move |mut store, hook| {
        let starts = match hook {
            // The event loop (or a new call) enters the guest.
            CallHook::CallingWasm => true,
            // An import returns after the guest waited for it.
            CallHook::ReturningFromHost => match &activation {
                Activation::HostWait(progress) => progress.swap(false, Ordering::Relaxed),
                Activation::EventLoop(_) | Activation::PerCall(_) => false,
            },
            _ => false,
        };
        if starts {
            hooked.start_activation();
            store.set_epoch_deadline(1);
        }
        Ok(())
    });
    meter
}
