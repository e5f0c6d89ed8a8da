//! The slow lane: where a guest that computes for longer than a time slice
//! goes on, so that it never keeps a thread the gateway's other work needs.
//!
//! A store's task (a shared instance, or a per-connection instance) runs
//! on the gateway's tokio workers, which also move every app's bytes, so
//! every piece of guest work starts there: handling a message takes
//! microseconds, and stays on the worker. When a guest has held the worker
//! for a time slice (1 ms, [`super::budget::SLICE`]), it yields (see [`super::supervisor`]) and its
//! task's future moves here: to a few threads of their own, at a lower OS
//! priority ([`SLOW_LANE_NICE`]), which run the guests they hold a time
//! slice each in turn. The guest computes on as fast as the machine has
//! spare CPU, while anything else that wants a core — the tokio workers
//! with other apps' connections, TLS handshakes, the I/O driver — gets it
//! at once. Once the guest waits for something (I/O, a timer) or its store
//! is done, the future goes back to its tokio task.
//!
//! Its threads also ask the kernel for a short scheduler slice
//! ([`SLOW_LANE_SLICE_NS`]): a nice value only weighs threads, and Linux's
//! EEVDF scheduler may let a running thread finish its slice before a
//! woken one of higher priority gets the core; a short slice bounds that
//! wait. The work left after a trap (dropping the store, explaining the
//! trap) runs here too ([`in_slow_lane`]), not on threads at the workers'
//! priority: an attacker whose connections spin and reconnect makes dozens
//! of traps a second.
//!
//! Moving a future between threads is what tokio does for any task (work
//! stealing); here the future stays owned by its task ([`run`]), which
//! lends it to a lane and gets it back, and wakers registered while it is
//! away wake that task, which looks for it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use super::supervisor::{self, Meter};
use super::ticker;
use crate::base::clock::coarse_now_ms;
use crate::base::locks::{lock, wait};

/// The nice value of the slow lane's threads (0 is the default, 19 the
/// lowest priority): the kernel gives a nice-10 thread about a tenth of
/// the CPU of a nice-0 one that wants it, and lets nice-0 threads preempt
/// it on wake-up. Raising a thread's nice value needs no privilege.
pub const SLOW_LANE_NICE: i32 = 10;

/// Runs `future`, the task that owns a supervised store, on the current
/// task — lending it to the slow lane whenever its guest yields a time
/// slice ([`Meter::yielding`]). The meter is told whenever the store gets
/// a thread ([`Meter::polled`]).
pub fn run<F>(meter: Arc<Meter>, future: F) -> impl Future<Output = F::Output> + Send
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    run_from(meter, Start::OnWorker, future)
}

/// Like [`run`], starting where `start` says.
pub fn run_from<F>(
    meter: Arc<Meter>,
    start: Start,
    future: F,
) -> impl Future<Output = F::Output> + Send
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    Run {
        home: Some(Box::pin(future)),
        lent: None,
        meter,
        lend_first: start == Start::Demoted,
    }
}

/// Where a store's task does its first piece of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// On the tokio worker that polls it: short work (a connection's first
    /// message) stays there, and only a guest that computes for a time
    /// slice moves.
    OnWorker,
    /// In the slow lane from the first poll: for an app whose guests were stopped at their CPU budget
    /// a moment ago ([`Demotion`]), whose next connection most likely
    /// computes too — every new connection of a spinning app would
    /// otherwise hold a worker for a slice first, and an attacker
    /// reconnecting at once would turn that into a steady share of the
    /// workers.
    Demoted,
}

/// How long an app whose guest was stopped at its CPU budget starts its
/// new connections in the slow lane ([`Demotion`]).
pub const DEMOTION: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether an app computes past its CPU budget lately: set when one of its
/// guests is stopped at the budget, it lasts [`DEMOTION`] (renewed by every
/// such stop). Its new connections then start in the slow lane
/// ([`Start::Demoted`]): the app is served as before, one thread hop
/// later, and at the slow lane's priority while it computes.
#[derive(Debug, Default)]
pub struct Demotion {
    /// The coarse clock (ms) until which the app is demoted.
    until_ms: std::sync::atomic::AtomicU64,
}

impl Demotion {
    /// One of the app's guests trapped with `cause`: a stop at its CPU
    /// budget demotes the app.
    pub fn after_trap(&self, cause: super::trap::TrapCause) {
        if cause == super::trap::TrapCause::CpuBudget {
            self.stopped_at_cpu_budget();
        }
    }

    /// One of the app's guests was stopped at its CPU budget.
    pub fn stopped_at_cpu_budget(&self) {
        let until = coarse_now_ms().saturating_add(DEMOTION.as_millis() as u64);
        self.until_ms
            .store(until, std::sync::atomic::Ordering::Relaxed);
    }

    /// Where the app's next store starts.
    pub fn start(&self) -> Start {
        if coarse_now_ms() < self.until_ms.load(std::sync::atomic::Ordering::Relaxed) {
            Start::Demoted
        } else {
            Start::OnWorker
        }
    }
}

/// The future [`run`] returns.
struct Run<F: Future> {
    /// The future, while it is here.
    home: Option<Pin<Box<F>>>,
    /// Where it is while lent to the slow lane.
    lent: Option<Arc<Lent<F>>>,
    meter: Arc<Meter>,
    /// Lend the future to the slow lane before polling it at all
    /// ([`Start::Demoted`]); cleared on the first poll.
    lend_first: bool,
}

/// A future lent to the slow lane, and what comes back.
struct Lent<F: Future> {
    slot: Mutex<Slot<F>>,
    meter: Arc<Meter>,
    /// The home task's runtime, entered on the slow lane (guest imports use
    /// its timers and I/O).
    runtime: tokio::runtime::Handle,
}

struct Slot<F: Future> {
    /// The future, unless a slow lane thread is polling it.
    future: Option<Pin<Box<F>>>,
    /// Whether the slow lane has it (queued or being polled).
    away: bool,
    /// What it completed with.
    output: Option<F::Output>,
    /// The home task's waker.
    waker: Waker,
    /// The home task is gone: drop the future.
    abandoned: bool,
    /// Polling it panicked (a bug of the host): the panic, to resume in
    /// the home task as if it had happened there.
    panicked: Option<Box<dyn std::any::Any + Send>>,
}

impl<F> Future for Run<F>
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if let Some(lent) = &this.lent {
            let mut slot = lock(&lent.slot);
            if let Some(output) = slot.output.take() {
                drop(slot);
                this.lent = None;
                return Poll::Ready(output);
            }
            if let Some(panic) = slot.panicked.take() {
                drop(slot);
                this.lent = None;
                std::panic::resume_unwind(panic);
            }
            if slot.away {
                if !slot.waker.will_wake(cx.waker()) {
                    slot.waker = cx.waker().clone();
                }
                return Poll::Pending;
            }
            // Back from the slow lane: it waits for something, or was woken.
            this.home = slot.future.take();
            drop(slot);
            this.lent = None;
        }
        // `lend_first` is only ever set before the first poll, when the
        // future is here.
        if std::mem::take(&mut this.lend_first) && this.lend(cx) {
            return Poll::Pending;
        }
        let Some(future) = this.home.as_mut() else {
            // Polled after completion.
            return Poll::Pending;
        };
        this.meter.polled();
        let polled = future.as_mut().poll(cx);
        if polled.is_pending() && this.meter.yielding() {
            // The guest has held this worker for a time slice: it goes on
            // in the slow lane.
            this.lend(cx);
        }
        polled
    }
}

impl<F> Run<F>
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    /// Lends the future to the slow lane; false (and the future stays
    /// here) where there is none, or no runtime to enter there.
    fn lend(&mut self, cx: &Context<'_>) -> bool {
        let (Some(lane), Ok(runtime)) = (slow_lane(), tokio::runtime::Handle::try_current()) else {
            return false;
        };
        let lent = Arc::new(Lent {
            slot: Mutex::new(Slot {
                future: self.home.take(),
                away: true,
                output: None,
                waker: cx.waker().clone(),
                abandoned: false,
                panicked: None,
            }),
            meter: self.meter.clone(),
            runtime,
        });
        self.lent = Some(lent.clone());
        lane.lend(lent);
        true
    }
}

impl<F: Future> Drop for Run<F> {
    fn drop(&mut self) {
        if let Some(lent) = &self.lent {
            let mut slot = lock(&lent.slot);
            slot.abandoned = true;
            // Dropped here if queued; by the slow lane if it is polling it.
            let future = slot.future.take();
            drop(slot);
            drop(future);
        }
    }
}

/// Work for the slow lane: one time slice of a lent future.
trait Slice: Send + Sync {
    /// Polls the future once; returns whether it wants another slice.
    fn slice(&self) -> bool;

    /// Polling it panicked: hands the panic to the home task.
    fn panicked(&self, panic: Box<dyn std::any::Any + Send>);
}

impl<F> Slice for Lent<F>
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    fn slice(&self) -> bool {
        let (mut future, waker) = {
            let mut slot = lock(&self.slot);
            match slot.future.take() {
                Some(future) if !slot.abandoned => (future, slot.waker.clone()),
                _ => return false,
            }
        };
        let polled = {
            let _entered = self.runtime.enter();
            self.meter.polled();
            future.as_mut().poll(&mut Context::from_waker(&waker))
        };
        let mut slot = lock(&self.slot);
        if slot.abandoned {
            drop(slot);
            // Dropping a store closes its connections, which may spawn.
            let _entered = self.runtime.enter();
            drop(future);
            return false;
        }
        match polled {
            Poll::Ready(output) => {
                slot.output = Some(output);
                slot.away = false;
            }
            Poll::Pending if self.meter.yielding() => {
                slot.future = Some(future);
                return true;
            }
            Poll::Pending => {
                // It waits for something: home, where its wakers lead.
                slot.future = Some(future);
                slot.away = false;
            }
        }
        let waker = slot.waker.clone();
        drop(slot);
        // Woken even if its wake-up came while it was here.
        waker.wake();
        false
    }

    fn panicked(&self, panic: Box<dyn std::any::Any + Send>) {
        let mut slot = lock(&self.slot);
        slot.panicked = Some(panic);
        slot.away = false;
        let waker = slot.waker.clone();
        drop(slot);
        waker.wake();
    }
}

/// Runs `job` in the slow lane, with the current tokio runtime entered,
/// and returns what it returns: for work after a trap (dropping a store,
/// which unmaps its memories and closes its connections; formatting a
/// backtrace) that no connection waits for and that must not take a core
/// from one. `None` if the job panicked. Without a lane it runs on
/// tokio's blocking threads.
pub async fn in_slow_lane<T, J>(job: J) -> Option<T>
where
    J: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (Some(lane), Ok(runtime)) = (slow_lane(), tokio::runtime::Handle::try_current()) else {
        return tokio::task::spawn_blocking(job).await.ok();
    };
    let (done, result) = tokio::sync::oneshot::channel();
    let job = Job {
        run: Mutex::new(Some(Box::new(move || {
            let _entered = runtime.enter();
            let _ = done.send(job());
        }))),
    };
    lane.push(Arc::new(job));
    result.await.ok()
}

/// A one-shot job for the slow lane ([`in_slow_lane`]).
struct Job {
    run: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Slice for Job {
    fn slice(&self) -> bool {
        let run = lock(&self.run).take();
        if let Some(run) = run {
            run();
        }
        false
    }

    fn panicked(&self, _panic: Box<dyn std::any::Any + Send>) {
        // The job's result sender was dropped in the unwinding: its caller
        // is told (`None`).
    }
}

/// The slow lane's queue and threads.
struct SlowLane {
    queue: Mutex<VecDeque<Arc<dyn Slice>>>,
    ready: Condvar,
}

impl SlowLane {
    /// Takes a future lent by its task.
    fn lend(&self, slice: Arc<dyn Slice>) {
        self.push(slice);
    }

    fn push(&self, slice: Arc<dyn Slice>) {
        lock(&self.queue).push_back(slice);
        self.ready.notify_one();
    }

    /// One slow lane thread: time slices, first come first served.
    fn serve(&self) {
        supervisor::mark_slow_lane_thread();
        lower_priority();
        loop {
            let next = {
                let mut queue = lock(&self.queue);
                loop {
                    match queue.pop_front() {
                        Some(next) => break next,
                        None => queue = wait(&self.ready, queue),
                    }
                }
            };
            // A panic (a host bug) goes to the home task, as it would have
            // there; this thread goes on.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| next.slice())) {
                Ok(true) => {
                    ticker::slow_lane_computing();
                    self.push(next);
                }
                Ok(false) => {}
                Err(panic) => next.panicked(panic),
            }
        }
    }
}

/// The process's slow lane: one thread fewer than the cores (one on a
/// single core), started on first use, so that a core is always left to
/// the tokio workers. With a thread per core, spinning guests held every
/// core and each wake-up of a worker had to preempt one of them: the
/// `supervision` bench's neighbour p99 under attack was 2.7–3.0× idle, and
/// 1.3–1.4× with a core left free (two runs, same machine, same run each).
/// The price: demoted guests compute on fewer cores (half on two);
/// `None` if no thread could be started (guests then yield on the tokio
/// workers, which still share them, less well).
fn slow_lane() -> Option<&'static SlowLane> {
    static LANE: OnceLock<Option<&'static SlowLane>> = OnceLock::new();
    *LANE.get_or_init(|| {
        let lane: &'static SlowLane = Box::leak(Box::new(SlowLane {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
        }));
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .saturating_sub(1)
            .max(1);
        let mut started = 0;
        for _ in 0..threads {
            match std::thread::Builder::new()
                .name("sockgate-slow".into())
                .spawn(|| lane.serve())
            {
                Ok(_) => started += 1,
                Err(err) => tracing::error!("cannot start a slow lane thread: {err}"),
            }
        }
        (started > 0).then_some(lane)
    })
}

/// The scheduler slice the slow lane's threads ask for: the shortest the
/// kernel allows, so that a woken worker waits at most that long for a
/// core one of them holds (Linux 6.12 and later; the CPU share the nice
/// value gives is the same whatever the slice).
pub const SLOW_LANE_SLICE_NS: u64 = ticker::TICKER_SLICE_NS;

/// Lowers the calling thread's scheduling priority to [`SLOW_LANE_NICE`]
/// with a slice of [`SLOW_LANE_SLICE_NS`] (on Linux both are per thread);
/// where the kernel refuses the slice, the nice value alone.
fn lower_priority() {
    if ticker::set_fair_slice(SLOW_LANE_NICE, SLOW_LANE_SLICE_NS).is_ok() {
        return;
    }
    // SAFETY: setpriority changes the calling thread's nice value and
    // touches no memory.
    let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, SLOW_LANE_NICE) };
    if set != 0 {
        tracing::warn!(
            "cannot lower the slow lane's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_a_lane_thread() -> bool {
        std::thread::current().name() == Some("sockgate-slow")
    }

    /// The calling thread's nice value.
    fn nice() -> i32 {
        // SAFETY: reads the calling thread's nice value.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[tokio::test]
    async fn a_store_starts_where_it_is_told() {
        let meter = || supervisor::Meter::new();
        let on_worker = run_from(meter(), Start::OnWorker, async { on_a_lane_thread() });
        assert!(!on_worker.await, "started in the slow lane");
        let demoted = run_from(meter(), Start::Demoted, async {
            (on_a_lane_thread(), nice())
        });
        assert_eq!(demoted.await, (true, SLOW_LANE_NICE));
    }

    #[tokio::test]
    async fn slow_lane_jobs_run_there_and_a_panic_is_told() {
        let ran = in_slow_lane(|| (on_a_lane_thread(), nice())).await;
        assert_eq!(ran, Some((true, SLOW_LANE_NICE)));
        let panicked = in_slow_lane(|| -> u8 { panic!("a job's bug") }).await;
        assert_eq!(panicked, None);
        // The lane goes on after it.
        assert_eq!(in_slow_lane(|| 7).await, Some(7));
    }

    #[test]
    fn an_app_stopped_at_its_cpu_budget_starts_in_the_slow_lane() {
        let demotion = Demotion::default();
        assert_eq!(demotion.start(), Start::OnWorker);
        demotion.stopped_at_cpu_budget();
        assert_eq!(demotion.start(), Start::Demoted);
    }
}
