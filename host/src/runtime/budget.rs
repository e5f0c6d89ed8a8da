//! The supervisor's policy for one store, as a plain struct: how much CPU
//! time and wall-clock time the current *activation* has used, when the
//! guest must hand its thread back for a moment (a time slice), and when
//! it has used up a budget. It is driven by samples — the thread's clocks
//! ([`ThreadSample`]) and the coarse wall clock, read on epoch ticks — so tests drive it
//! without wasm, threads or sockets; [`super::supervisor`] takes the samples
//! and carries the verdicts out.
//!
//! # Activations and slices
//! An *activation* is a stretch of guest work that the gateway started and
//! that ends when the guest hands control back: for a `conn-handler` app,
//! every entry of the event loop into the guest; for a `conn-handler-sync`
//! app, the call plus every import return after which the guest had
//! waited for I/O. Both budgets are per activation, so a guest that keeps
//! doing I/O runs for as long as it likes.
//!
//! A *time slice* is the time one activation holds its thread without a
//! break. It begins when the activation starts and whenever the store's
//! task is polled (read from the precise clock, a vDSO call), and ends at
//! the first epoch tick that finds it [`SLICE`] old: the guest yields, to
//! let other work have the thread (and, on the tokio workers, to move to
//! the slow lane, [`super::slow_lane`], unless its connections moved
//! bytes during the slice: it is then serving them, and only lets the
//! worker's other tasks run first), then goes on; the budgets accumulate
//! across yields. Work shorter than a slice is never
//! interrupted, even when a tick comes while it runs, nor is a busy
//! instance that runs many short activations in a row.
//!
//! How soon after [`SLICE`] the tick comes is the ticker's pace
//! ([`super::ticker`]): every millisecond or faster while any guest
//! computes, but relaxed to a few milliseconds while every activation is
//! short, because on a small VM each tick costs tens of microseconds of a
//! core. A tick that finds a guest [`WATCH_AFTER`] into its slice
//! ([`Verdict::Watch`]) brings the fast pace back at once, so a guest that
//! starts computing on a quiet gateway keeps its thread for at most one
//! relaxed tick, once; from then on for one slice.
//!
//! # Counting CPU time
//! CPU time is the thread's (`CLOCK_THREAD_CPUTIME_ID`), counted between
//! two samples only when the store held the thread throughout: a poll that
//! starts, or an activation that starts, forgets the baseline (the thread
//! may have run other tasks, or be another thread), so the partial tick
//! before the first sample is not counted; the resumption after a yield
//! takes a fresh sample, so a running guest is counted exactly. The
//! budget is therefore met to within one tick.
//!
//! # Counting wall-clock time
//! Wall-clock time runs from the activation's start, less the time the
//! guest spent waiting for its next slice after a yield, and less the time
//! its thread waited, runnable, for a core while it held the guest (the
//! kernel's run-queue delay, counted between samples like the CPU time).
//! Both waits are the gateway's scheduling — the slow lane takes the
//! guests it holds in turn, at a priority below everything else — and on a
//! busy machine they grow with the load, not with what the guest does: a
//! spinning guest would be stopped by the wall clock before it had used
//! its CPU budget, and reported as `wall-clock`. What the wall clock
//! counts is the time the guest ran or was blocked in an import: the
//! latter is what the CPU budget cannot see.

use std::time::Duration;

/// The budgets of one activation, from the app's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// CPU time, in nanoseconds of the thread's CPU clock.
    pub cpu_ns: u64,
    /// Wall-clock time, in milliseconds.
    pub wall_ms: u64,
}

impl Budget {
    /// The budgets of `limits`.
    pub(crate) fn new(limits: &crate::limits::AppLimits) -> Self {
        Self {
            cpu_ns: limits.cpu_budget_ms.saturating_mul(1_000_000),
            wall_ms: limits.wall_budget_ms,
        }
    }
}

/// What the supervisor reads of the thread that runs the guest
/// ([`super::thread_clock::sample`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ThreadSample {
    /// The thread's CPU clock, in nanoseconds.
    pub cpu_ns: u64,
    /// How long the thread has waited, runnable, for a core, in
    /// nanoseconds (0 where the kernel does not say).
    pub waiting_ns: u64,
}

/// Where the current activation stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Accounting {
    /// The thread's clocks at the last sample, while the store has held
    /// the thread since; `None` when it may not have.
    pub baseline: Option<ThreadSample>,
    /// CPU time the activation has used, counted at samples.
    pub used_ns: u64,
    /// Time the activation's thread waited for a core, counted at samples.
    pub waited_ns: u64,
    /// The coarse clock (ms) when the activation started.
    pub started_ms: u64,
    /// The precise clock ([`crate::base::clock::precise_now_ns`]) when
    /// the current slice began.
    pub slice_started_ns: u64,
}

/// What the guest must do after an epoch tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Go on running.
    Continue,
    /// Go on running, but the guest has held its thread for a good part of
    /// a slice ([`WATCH_AFTER`]): the ticker must come back within a slice,
    /// whatever its pace.
    Watch,
    /// Hand the thread back for a moment, then go on.
    Yield,
    /// Stop: a budget is spent (the store traps).
    Exceeded(Exceeded),
}

/// Which budget an activation used up, and how much it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    /// The CPU budget (`limits.cpu_budget_ms`).
    #[error(
        "CPU budget exceeded: the guest computed for {} ms of CPU time without handing \
         control back to the gateway, over its {budget_ms} ms budget (limits.cpu_budget_ms)",
        used.as_millis()
    )]
    Cpu {
        /// CPU time used when it was stopped.
        used: Duration,
        /// The budget, in ms.
        budget_ms: u64,
    },
    /// The wall-clock budget (`limits.wall_budget_ms`).
    #[error(
        "wall-clock budget exceeded: the guest ran for {ran_ms} ms ({computed_ms} ms of it \
         computing) without waiting for I/O or handing control back to the gateway, over its \
         {budget_ms} ms budget (limits.wall_budget_ms)"
    )]
    Wall {
        /// Wall-clock time the activation had run, in ms.
        ran_ms: u64,
        /// CPU time it had used, in ms.
        computed_ms: u64,
        /// The budget, in ms.
        budget_ms: u64,
    },
}

/// How long a guest holds its thread before it yields (one time slice).
pub(crate) const SLICE: Duration = Duration::from_millis(1);

/// How far into its slice a tick must find a guest for the ticker to
/// keep its fast pace ([`Verdict::Watch`]): a quarter of a slice, longer
/// than the activations of a busy I/O loop (a few microseconds each), so
/// their passing does not keep the ticker fast.
pub(crate) const WATCH_AFTER: Duration = Duration::from_micros(250);

impl Accounting {
    /// The gateway hands control to the guest: a new activation, at
    /// coarse time `now_ms` and precise time `now_ns`.
    #[cfg(test)]
    pub(crate) fn start_activation(&mut self, now_ms: u64, now_ns: u64) {
        self.used_ns = 0;
        self.waited_ns = 0;
        self.started_ms = now_ms;
        self.baseline = None;
        self.slice_started_ns = now_ns;
    }

    /// The guest moved bytes without leaving its activation: the budgets
    /// start over at coarse time `now_ms`, as for a new activation, but
    /// the time slice goes on (the guest still yields its thread on time).
    /// CPU time before this point is not counted.
    pub(crate) fn renew_budgets(&mut self, now_ms: u64) {
        self.used_ns = 0;
        self.waited_ns = 0;
        self.started_ms = now_ms;
        self.baseline = None;
    }

    /// The store's task is polled: the thread may have run anything since
    /// the store last ran, so the CPU baseline is forgotten; a slice begins
    /// at precise time `now_ns`.
    #[cfg(test)]
    pub(crate) fn polled(&mut self, now_ns: u64) {
        self.baseline = None;
        self.slice_started_ns = now_ns;
    }

    /// The guest resumes after a yield, with the thread's clocks at
    /// `thread`, having waited `queued_ms` for its next slice: a slice
    /// begins at precise time `now_ns`, counted from here. The wait is the gateway's scheduling (the
    /// slow lane's turn of every guest it holds, or the tokio worker's other
    /// tasks), not the guest's doing, so the wall-clock budget does not
    /// count it: the activation's start moves forward by that much.
    pub(crate) fn resumed(&mut self, thread: ThreadSample, queued_ms: u64, now_ns: u64) {
        self.baseline = Some(thread);
        self.slice_started_ns = now_ns;
        self.started_ms = self.started_ms.saturating_add(queued_ms);
    }

    /// An epoch tick found the guest running; the thread's clocks read
    /// `thread`, the coarse clock `now_ms` and the precise clock `now_ns`.
    pub(crate) fn tick(
        &mut self,
        thread: ThreadSample,
        now_ms: u64,
        now_ns: u64,
        budget: Budget,
    ) -> Verdict {
        if let Some(baseline) = self.baseline {
            let cpu = thread.cpu_ns.saturating_sub(baseline.cpu_ns);
            let waited = thread.waiting_ns.saturating_sub(baseline.waiting_ns);
            self.used_ns = self.used_ns.saturating_add(cpu);
            self.waited_ns = self.waited_ns.saturating_add(waited);
        }
        self.baseline = Some(thread);
        if self.used_ns >= budget.cpu_ns {
            return Verdict::Exceeded(Exceeded::Cpu {
                used: Duration::from_nanos(self.used_ns),
                budget_ms: budget.cpu_ns / 1_000_000,
            });
        }
        let ran_ms = now_ms
            .saturating_sub(self.started_ms)
            .saturating_sub(self.waited_ns / 1_000_000);
        if ran_ms > budget.wall_ms {
            return Verdict::Exceeded(Exceeded::Wall {
                ran_ms,
                computed_ms: self.used_ns / 1_000_000,
                budget_ms: budget.wall_ms,
            });
        }
        let slice = Duration::from_nanos(now_ns.saturating_sub(self.slice_started_ns));
        if slice >= SLICE {
            Verdict::Yield
        } else if slice >= WATCH_AFTER {
            Verdict::Watch
        } else {
            Verdict::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const US: u64 = 1_000;

    /// A sample of a thread that never waited for a core.
    fn on_cpu(cpu_ns: u64) -> ThreadSample {
        ThreadSample {
            cpu_ns,
            waiting_ns: 0,
        }
    }

    fn budget(cpu_ms: u64, wall_ms: u64) -> Budget {
        Budget {
            cpu_ns: cpu_ms * MS,
            wall_ms,
        }
    }

    /// A guest computing without a break: resumed after each yield (with a
    /// fresh sample, after the thread ran something else), one tick per ms
    /// of CPU.
    #[test]
    fn a_spinning_guest_yields_every_slice_and_is_stopped_at_its_cpu_budget() {
        let budget = budget(50, 1000);
        let mut a = Accounting::default();
        a.polled(0);
        a.start_activation(0, 0);
        // The first tick comes part-way into a slice: its CPU time before
        // the first sample is not counted, and the slice goes on.
        let mut cpu = 7 * MS + MS / 3;
        let mut now = MS / 3;
        assert_eq!(a.tick(on_cpu(cpu), 0, now, budget), Verdict::Watch);
        let mut yields = 0;
        let verdict = loop {
            cpu += MS;
            now += MS;
            match a.tick(on_cpu(cpu), now / MS, now, budget) {
                Verdict::Continue | Verdict::Watch => {}
                Verdict::Yield => {
                    yields += 1;
                    cpu += 3 * MS;
                    now += 3 * MS;
                    a.polled(now);
                    a.resumed(on_cpu(cpu), 3, now);
                }
                exceeded => break exceeded,
            }
        };
        assert_eq!(
            verdict,
            Verdict::Exceeded(Exceeded::Cpu {
                used: Duration::from_millis(50),
                budget_ms: 50
            })
        );
        // A tick a slice after each resumption: one yield per tick.
        assert_eq!(yields, 49);
    }

    /// Work shorter than a slice is not interrupted, even when a tick comes
    /// while it runs, nor a long run of short activations in one poll; nor
    /// does it keep the ticker fast.
    #[test]
    fn a_tick_in_passing_does_not_make_a_guest_yield() {
        let budget = budget(50, 1000);
        let mut a = Accounting::default();
        a.polled(0);
        for n in 1..100 {
            a.start_activation(n, n * MS);
            assert_eq!(
                a.tick(on_cpu(n * MS), n, n * MS + 20 * US, budget),
                Verdict::Continue
            );
        }
    }

    /// The slice is measured from its start, not counted in ticks: however
    /// far apart the ticks come (the ticker's relaxed pace), the first tick
    /// after a slice's length makes the guest yield, and one a quarter of
    /// the way in asks the ticker to come back in time.
    #[test]
    fn a_slice_is_timed_whatever_the_ticks_pace() {
        let budget = budget(50, 1000);
        let mut a = Accounting::default();
        a.start_activation(0, 0);
        assert_eq!(a.tick(on_cpu(0), 4, 4 * MS, budget), Verdict::Yield);
        a.resumed(on_cpu(0), 0, 4 * MS);
        assert_eq!(
            a.tick(on_cpu(0), 4, 4 * MS + 100 * US, budget),
            Verdict::Continue
        );
        assert_eq!(
            a.tick(on_cpu(0), 4, 4 * MS + 300 * US, budget),
            Verdict::Watch
        );
        assert_eq!(a.tick(on_cpu(0), 5, 5 * MS, budget), Verdict::Yield);
    }

    #[test]
    fn cpu_time_on_another_thread_or_task_is_not_counted() {
        let budget = budget(10, 1000);
        let mut a = Accounting::default();
        a.start_activation(0, 0);
        assert_eq!(
            a.tick(on_cpu(100 * MS), 0, 100 * US, budget),
            Verdict::Continue
        );
        // The task returned to the executor and was polled again, maybe on
        // another thread whose clock reads anything.
        a.polled(2 * MS);
        assert_eq!(
            a.tick(on_cpu(5 * MS), 2, 2 * MS + 100 * US, budget),
            Verdict::Continue
        );
        assert_eq!(a.used_ns, 0);
        assert_eq!(a.tick(on_cpu(6 * MS), 3, 3 * MS, budget), Verdict::Yield);
        assert_eq!(a.used_ns, MS);
    }

    /// A busy echo loop whose reads and writes complete without leaving
    /// wasm: every renewal starts the budgets over, and the slices go on.
    #[test]
    fn io_inside_an_activation_renews_the_budgets_but_not_the_slice() {
        let budget = budget(5, 1_000);
        let mut a = Accounting::default();
        a.start_activation(0, 0);
        let mut cpu = 0;
        let mut yields = 0;
        for now in 0..100 {
            cpu += MS;
            if now % 3 == 0 {
                a.renew_budgets(now);
            }
            match a.tick(on_cpu(cpu), now, now * MS, budget) {
                Verdict::Exceeded(e) => panic!("stopped a guest doing I/O: {e}"),
                Verdict::Yield => {
                    yields += 1;
                    a.resumed(on_cpu(cpu), 0, now * MS);
                }
                Verdict::Continue | Verdict::Watch => {}
            }
        }
        assert!(yields > 10, "the guest kept its thread: {yields} yields");
    }

    #[test]
    fn a_new_activation_starts_with_a_full_budget() {
        let budget = budget(10, 1000);
        let mut a = Accounting::default();
        a.start_activation(0, 0);
        a.tick(on_cpu(0), 0, 100 * US, budget);
        a.tick(on_cpu(9 * MS), 0, 200 * US, budget);
        assert_eq!(a.used_ns, 9 * MS);
        a.start_activation(2, 2 * MS);
        assert_eq!(a.used_ns, 0);
        // The baseline went with the old activation, and a slice began.
        assert_eq!(
            a.tick(on_cpu(30 * MS), 2, 2 * MS + 100 * US, budget),
            Verdict::Continue
        );
        assert_eq!(a.used_ns, 0);
        assert_eq!(a.tick(on_cpu(31 * MS), 3, 3 * MS, budget), Verdict::Yield);
        assert_eq!(a.used_ns, MS);
    }

    /// A guest that holds its activation without computing (blocked in an
    /// import) is stopped by the wall-clock budget.
    #[test]
    fn the_wall_clock_budget_counts_time_not_cpu() {
        let budget = budget(50, 200);
        let mut a = Accounting::default();
        a.start_activation(1000, 1000 * MS);
        assert_eq!(
            a.tick(on_cpu(0), 1000, 1000 * MS + 100 * US, budget),
            Verdict::Continue
        );
        assert_eq!(
            a.tick(on_cpu(MS / 10), 1200, 1200 * MS, budget),
            Verdict::Yield
        );
        a.resumed(on_cpu(MS / 10), 0, 1200 * MS);
        assert_eq!(
            a.tick(on_cpu(MS / 5), 1201, 1201 * MS, budget),
            Verdict::Exceeded(Exceeded::Wall {
                ran_ms: 201,
                computed_ms: 0,
                budget_ms: 200
            })
        );
    }

    /// Two hundred guests computing at once take turns in the slow lane:
    /// each waits for its next slice far longer than it runs. The wait is
    /// not the guest's, and must not spend its wall-clock budget; the time
    /// it holds a thread (computing, or blocked in an import) does.
    #[test]
    fn waiting_for_the_next_slice_is_not_counted_as_wall_time() {
        let budget = budget(1000, 1000);
        let mut a = Accounting::default();
        a.start_activation(0, 0);
        let (mut cpu, mut now) = (0, 0);
        for _ in 0..100 {
            cpu += MS;
            now += 1;
            assert_eq!(
                a.tick(on_cpu(cpu), now, now * MS - 300 * US, budget),
                Verdict::Watch
            );
            cpu += MS;
            now += 1;
            assert_eq!(a.tick(on_cpu(cpu), now, now * MS, budget), Verdict::Yield);
            // 100 ms in the queue behind the other guests.
            now += 100;
            a.resumed(on_cpu(cpu), 100, now * MS);
        }
        // 10.2 s have passed, 200 ms of them holding a thread.
        assert_eq!(now - a.started_ms, 200);
        // Held without a break, the same activation is stopped on time.
        assert_eq!(
            a.tick(on_cpu(cpu), now + 700, (now + 700) * MS, budget),
            Verdict::Yield
        );
        a.resumed(on_cpu(cpu), 0, (now + 700) * MS);
        assert_eq!(
            a.tick(on_cpu(cpu), now + 801, (now + 801) * MS, budget),
            Verdict::Exceeded(Exceeded::Wall {
                ran_ms: 1001,
                computed_ms: 199,
                budget_ms: 1000
            })
        );
    }

    /// Ticks an activation once a millisecond, the thread's clocks moving
    /// by `each_ms` each time, until a budget stops it: the verdict, and
    /// when (ms).
    fn tick_until_stopped(budget: Budget, each_ms: ThreadSample) -> (Verdict, u64) {
        let mut a = Accounting::default();
        a.start_activation(0, 0);
        let mut thread = on_cpu(0);
        a.resumed(thread, 0, 0);
        (1..)
            .find_map(|now| {
                thread.cpu_ns += each_ms.cpu_ns;
                thread.waiting_ns += each_ms.waiting_ns;
                match a.tick(thread, now, now * MS, budget) {
                    Verdict::Yield => {
                        a.resumed(thread, 0, now * MS);
                        None
                    }
                    Verdict::Continue | Verdict::Watch => None,
                    exceeded => Some((exceeded, now)),
                }
            })
            .unwrap()
    }

    /// A spinning guest in the slow lane on a busy machine: the kernel runs
    /// its low-priority thread a twentieth of the time and keeps it waiting
    /// for a core the rest. The wait is not counted as wall time, so the
    /// guest is stopped at its CPU budget (and reported as computing, which
    /// demotes its app), not by the wall clock 20 times earlier.
    #[test]
    fn waiting_for_a_core_is_not_counted_as_wall_time() {
        let budget = budget(50, 1000);
        let starved = ThreadSample {
            cpu_ns: 50 * US,
            waiting_ns: 950 * US,
        };
        assert_eq!(
            tick_until_stopped(budget, starved),
            (
                Verdict::Exceeded(Exceeded::Cpu {
                    used: Duration::from_millis(50),
                    budget_ms: 50
                }),
                1000
            )
        );
        // A guest blocked in an import (10 µs on a core each millisecond,
        // not waiting for one the rest) is stopped by the wall clock.
        assert_eq!(
            tick_until_stopped(budget, on_cpu(10 * US)),
            (
                Verdict::Exceeded(Exceeded::Wall {
                    ran_ms: 1001,
                    computed_ms: 10,
                    budget_ms: 1000
                }),
                1001
            )
        );
    }

    #[test]
    fn a_clock_going_backwards_counts_nothing() {
        let budget = budget(10, 1000);
        let mut a = Accounting::default();
        a.resumed(on_cpu(50 * MS), 0, 0);
        assert_eq!(a.tick(on_cpu(40 * MS), 0, 0, budget), Verdict::Continue);
        assert_eq!(a.used_ns, 0);
    }
}
