//! The supervisor's policy for one store, as a plain struct: how much CPU
//! time and wall-clock time the current *activation* has used, when the
//! guest must hand its thread back for a moment (a time slice), and when
//! it has used up a budget. It is driven by samples — the thread's CPU
//! clock and the coarse wall clock, read on epoch ticks — so tests drive it
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
//! task is polled, and ends at the second epoch tick seen since (the guest
//! has then computed for a full tick): the guest yields, to let other work
//! have the thread (and, on the tokio workers, to move to the slow lane,
//! [`super::slow_lane`]), then goes on. No guest computes on a thread for
//! more than two ticks without a break, whatever the shape of its loop,
//! and the budgets accumulate across yields. Work shorter than a tick is
//! never interrupted, even when a tick comes while it runs, nor is a busy
//! instance that runs many short activations in a row.
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
//! guest spent waiting for its next slice after a yield: that wait is the
//! gateway's scheduling (the slow lane takes the guests it holds in turn),
//! and with many guests computing at once on a busy machine it would grow
//! with their number, not with what any one of them does.

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

/// Where the current activation stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Accounting {
    /// The thread's CPU clock at the last sample, while the store has held
    /// the thread since; `None` when it may not have.
    pub baseline_ns: Option<u64>,
    /// CPU time the activation has used, counted at samples.
    pub used_ns: u64,
    /// The coarse clock (ms) when the activation started.
    pub started_ms: u64,
    /// Epoch ticks seen since the current slice began.
    pub slice_ticks: u32,
}

/// What the guest must do after an epoch tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Go on running.
    Continue,
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
        "wall-clock budget exceeded: the guest ran for {ran_ms} ms without waiting for I/O \
         or handing control back to the gateway, over its {budget_ms} ms budget \
         (limits.wall_budget_ms)"
    )]
    Wall {
        /// Wall-clock time the activation had run, in ms.
        ran_ms: u64,
        /// The budget, in ms.
        budget_ms: u64,
    },
}

/// Epoch ticks a slice may see before the guest yields: the first may
/// come just after the slice began, the second proves a full tick of
/// running.
pub(crate) const SLICE_TICKS: u32 = 2;

impl Accounting {
    /// The gateway hands control to the guest: a new activation, at
    /// coarse time `now_ms`.
    #[cfg(test)]
    pub(crate) fn start_activation(&mut self, now_ms: u64) {
        self.used_ns = 0;
        self.started_ms = now_ms;
        self.baseline_ns = None;
        self.slice_ticks = 0;
    }

    /// The guest moved bytes without leaving its activation: the budgets
    /// start over at coarse time `now_ms`, as for a new activation, but
    /// the time slice goes on (the guest still yields its thread on time).
    /// CPU time before this point is not counted.
    pub(crate) fn renew_budgets(&mut self, now_ms: u64) {
        self.used_ns = 0;
        self.started_ms = now_ms;
        self.baseline_ns = None;
    }

    /// The store's task is polled: the thread may have run anything since
    /// the store last ran, so the CPU baseline is forgotten; a slice begins.
    #[cfg(test)]
    pub(crate) fn polled(&mut self) {
        self.baseline_ns = None;
        self.slice_ticks = 0;
    }

    /// The guest resumes after a yield, with the thread's CPU clock at
    /// `cpu_ns`, having waited `queued_ms` for its next slice: a slice
    /// begins, counted from here. The wait is the gateway's scheduling (the
    /// slow lane's turn of every guest it holds, or the tokio worker's other
    /// tasks), not the guest's doing, so the wall-clock budget does not
    /// count it: the activation's start moves forward by that much.
    pub(crate) fn resumed(&mut self, cpu_ns: u64, queued_ms: u64) {
        self.baseline_ns = Some(cpu_ns);
        self.slice_ticks = 0;
        self.started_ms = self.started_ms.saturating_add(queued_ms);
    }

    /// An epoch tick found the guest running; the thread's CPU clock reads
    /// `cpu_ns` and the coarse clock `now_ms`.
    pub(crate) fn tick(&mut self, cpu_ns: u64, now_ms: u64, budget: Budget) -> Verdict {
        if let Some(baseline) = self.baseline_ns {
            self.used_ns = self.used_ns.saturating_add(cpu_ns.saturating_sub(baseline));
        }
        self.baseline_ns = Some(cpu_ns);
        self.slice_ticks = self.slice_ticks.saturating_add(1);
        if self.used_ns >= budget.cpu_ns {
            return Verdict::Exceeded(Exceeded::Cpu {
                used: Duration::from_nanos(self.used_ns),
                budget_ms: budget.cpu_ns / 1_000_000,
            });
        }
        let ran_ms = now_ms.saturating_sub(self.started_ms);
        if ran_ms > budget.wall_ms {
            return Verdict::Exceeded(Exceeded::Wall {
                ran_ms,
                budget_ms: budget.wall_ms,
            });
        }
        if self.slice_ticks >= SLICE_TICKS {
            Verdict::Yield
        } else {
            Verdict::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

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
        a.polled();
        a.start_activation(0);
        // The first tick comes part-way into a tick: not counted.
        let mut cpu = 7 * MS + MS / 3;
        let mut now = 1;
        assert_eq!(a.tick(cpu, now, budget), Verdict::Continue);
        let mut yields = 0;
        let verdict = loop {
            cpu += MS;
            now += 1;
            match a.tick(cpu, now, budget) {
                Verdict::Continue => {}
                Verdict::Yield => {
                    yields += 1;
                    a.polled();
                    cpu += 3 * MS;
                    a.resumed(cpu, 0);
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
        // One yield per two ticks.
        assert_eq!(yields, 25);
    }

    /// Work shorter than a tick is not interrupted, even when a tick comes
    /// while it runs, nor a long run of short activations in one poll.
    #[test]
    fn a_tick_in_passing_does_not_make_a_guest_yield() {
        let budget = budget(50, 1000);
        let mut a = Accounting::default();
        a.polled();
        for n in 1..100 {
            a.start_activation(n);
            assert_eq!(a.tick(n * MS, n, budget), Verdict::Continue);
        }
    }

    #[test]
    fn cpu_time_on_another_thread_or_task_is_not_counted() {
        let budget = budget(10, 1000);
        let mut a = Accounting::default();
        a.start_activation(0);
        assert_eq!(a.tick(100 * MS, 1, budget), Verdict::Continue);
        // The task returned to the executor and was polled again, maybe on
        // another thread whose clock reads anything.
        a.polled();
        assert_eq!(a.tick(5 * MS, 2, budget), Verdict::Continue);
        assert_eq!(a.used_ns, 0);
        assert_eq!(a.tick(6 * MS, 3, budget), Verdict::Yield);
        assert_eq!(a.used_ns, MS);
    }

    /// A busy echo loop whose reads and writes complete without leaving
    /// wasm: every renewal starts the budgets over, and the slices go on.
    #[test]
    fn io_inside_an_activation_renews_the_budgets_but_not_the_slice() {
        let budget = budget(5, 1_000);
        let mut a = Accounting::default();
        a.start_activation(0);
        let mut cpu = 0;
        let mut yields = 0;
        for now in 0..100 {
            cpu += MS;
            if now % 3 == 0 {
                a.renew_budgets(now);
            }
            match a.tick(cpu, now, budget) {
                Verdict::Exceeded(e) => panic!("stopped a guest doing I/O: {e}"),
                Verdict::Yield => {
                    yields += 1;
                    a.resumed(cpu, 0);
                }
                Verdict::Continue => {}
            }
        }
        assert!(yields > 10, "the guest kept its thread: {yields} yields");
    }

    #[test]
    fn a_new_activation_starts_with_a_full_budget() {
        let budget = budget(10, 1000);
        let mut a = Accounting::default();
        a.start_activation(0);
        a.tick(0, 1, budget);
        a.tick(9 * MS, 2, budget);
        assert_eq!(a.used_ns, 9 * MS);
        a.start_activation(2);
        assert_eq!(a.used_ns, 0);
        // The baseline went with the old activation, and a slice began.
        assert_eq!(a.tick(30 * MS, 3, budget), Verdict::Continue);
        assert_eq!(a.used_ns, 0);
        assert_eq!(a.tick(31 * MS, 4, budget), Verdict::Yield);
        assert_eq!(a.used_ns, MS);
    }

    /// A guest that holds its activation without computing (blocked in an
    /// import, or starved of CPU) is stopped by the wall-clock budget.
    #[test]
    fn the_wall_clock_budget_counts_time_not_cpu() {
        let budget = budget(50, 200);
        let mut a = Accounting::default();
        a.start_activation(1000);
        assert_eq!(a.tick(0, 1001, budget), Verdict::Continue);
        assert_eq!(a.tick(MS / 10, 1200, budget), Verdict::Yield);
        a.resumed(MS / 10, 0);
        assert_eq!(
            a.tick(MS / 5, 1201, budget),
            Verdict::Exceeded(Exceeded::Wall {
                ran_ms: 201,
                budget_ms: 200
            })
        );
    }

    /// Two hundred guests computing at once take turns in the slow lane:
    /// each waits for its next slice far longer than it runs. The wait is
    /// not the guest's, and must not spend its wall-clock budget; the time
    /// it holds a thread (computing, blocked, or preempted) does.
    #[test]
    fn waiting_for_the_next_slice_is_not_counted_as_wall_time() {
        let budget = budget(1000, 1000);
        let mut a = Accounting::default();
        a.start_activation(0);
        let (mut cpu, mut now) = (0, 0);
        for _ in 0..100 {
            cpu += MS;
            now += 1;
            assert_eq!(a.tick(cpu, now, budget), Verdict::Continue);
            cpu += MS;
            now += 1;
            assert_eq!(a.tick(cpu, now, budget), Verdict::Yield);
            // 100 ms in the queue behind the other guests.
            now += 100;
            a.resumed(cpu, 100);
        }
        // 10.2 s have passed, 200 ms of them holding a thread.
        assert_eq!(now - a.started_ms, 200);
        // Held without a break, the same activation is stopped on time.
        assert_eq!(a.tick(cpu, now + 700, budget), Verdict::Continue);
        assert_eq!(
            a.tick(cpu, now + 801, budget),
            Verdict::Exceeded(Exceeded::Wall {
                ran_ms: 1001,
                budget_ms: 1000
            })
        );
    }

    #[test]
    fn a_clock_going_backwards_counts_nothing() {
        let budget = budget(10, 1000);
        let mut a = Accounting::default();
        a.resumed(50 * MS, 0);
        assert_eq!(a.tick(40 * MS, 0, budget), Verdict::Continue);
        assert_eq!(a.used_ns, 0);
    }
}
