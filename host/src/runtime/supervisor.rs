//! CPU and memory supervision of guests.
//!
//! One thread for the whole process ticks the engine's epoch (and a coarse
//! clock the connection sweeper reads) — no timer per call. Two budgets
//! bound every stretch of guest execution, so a guest that keeps doing I/O
//! runs for as long as it likes while a guest that computes without end
//! traps:
//!
//! - **Fuel** (deterministic: the same code traps at the same point) bounds
//!   the computation between two contacts with the host. It is refilled
//!   whenever the guest enters wasm from the host: a new call, an event
//!   for its event loop, and the return of every import it calls (stream
//!   reads and writes that complete at once are imports, and are the I/O of
//!   a busy connection).
//! - **The epoch deadline** (wall clock) bounds one *activation*: the time
//!   between the gateway's event loop handing control to the guest and the
//!   guest handing it back. It is refilled only by the event loop, so a
//!   guest that spins while calling cheap imports (which keep refilling its
//!   fuel) still traps, after `limits.wall_budget_ms`.
//!
//! Memory is bounded by a store limiter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::{CallHook, Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap};

use super::host_state::HostState;
use crate::limits::AppLimits;
use crate::logs::{AppLog, EventKind};

/// How often the epoch advances; the granularity of the wall-clock
/// backstop and of the coarse clock.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Fuel per millisecond of CPU budget. Fuel counts wasm operators, so the
/// rate depends on the code: ALU-bound guest code (the `compute` request
/// of `benches/supervision.rs`, ~28 operators per round) runs about 14 M
/// operators per ms on this machine kind, memory- and call-heavy code
/// fewer. 10 M per ms makes the budget a slightly generous bound in CPU
/// time for ordinary code; the epoch backstop bounds wall time whatever
/// the code.
pub const FUEL_PER_MS: u64 = 10_000_000;

/// Milliseconds since the process started, advanced by the ticker; cheap
/// to read on every transfer (a relaxed load).
static COARSE_NOW_MS: AtomicU64 = AtomicU64::new(0);

/// The coarse clock: milliseconds since the supervisor started, at
/// [`EPOCH_TICK`] resolution.
pub fn coarse_now_ms() -> u64 {
    COARSE_NOW_MS.load(Ordering::Relaxed)
}

/// Engines whose epoch the ticker advances. Usually one per process; the
/// supervision benchmark builds several.
static TICKED_ENGINES: Mutex<Vec<Engine>> = Mutex::new(Vec::new());

/// Makes the process's ticker thread (started on first use) advance
/// `engine`'s epoch.
pub fn start_ticker(engine: &Engine) {
    static STARTED: OnceLock<()> = OnceLock::new();
    TICKED_ENGINES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(engine.clone());
    STARTED.get_or_init(|| {
        let started = Instant::now();
        std::thread::Builder::new()
            .name("sockgate-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    for engine in TICKED_ENGINES
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .iter()
                    {
                        engine.increment_epoch();
                    }
                    let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    COARSE_NOW_MS.store(now, Ordering::Relaxed);
                }
            })
            .expect("cannot start the epoch ticker thread");
    });
}

/// Which CPU bounds the engine enforces. Both are on in production: fuel
/// for the deterministic bound, the epoch as the wall-clock backstop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supervision {
    /// Count fuel (`Config::consume_fuel`).
    pub fuel: bool,
    /// Check epoch deadlines (`Config::epoch_interruption`).
    pub epoch: bool,
}

impl Default for Supervision {
    fn default() -> Self {
        Self {
            fuel: true,
            epoch: true,
        }
    }
}

/// The CPU budgets of guest execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuBudget {
    /// Fuel between two contacts with the host.
    pub fuel: u64,
    /// Epoch ticks per activation (plus one, so a deadline set just before
    /// a tick still allows the full budget).
    pub epoch_ticks: u64,
}

impl CpuBudget {
    /// The budgets of an app's limits.
    pub fn new(limits: &AppLimits) -> Self {
        let tick = EPOCH_TICK.as_millis() as u64;
        Self {
            fuel: limits.cpu_budget_ms.saturating_mul(FUEL_PER_MS),
            epoch_ticks: limits.wall_budget_ms.div_ceil(tick) + 1,
        }
    }
}

/// What ends an *activation* (and so refills the epoch deadline): how a
/// guest hands control back to the gateway.
#[derive(Clone)]
pub enum Activation {
    /// The `conn-handler` world: the guest's event loop returns to the
    /// gateway's (`run_concurrent`); only entries into wasm refill it.
    EventLoop,
    /// The `conn-handler-sync` world: a guest waits for I/O inside a
    /// blocking import (`blocking-read`, `poll`), so the return of an import
    /// during which the guest waited also refills it. The flag says so: set
    /// when the call's future returned `Pending` to the event loop (the
    /// guest's fiber was suspended: a real wait) or the connection's streams
    /// moved bytes (a busy connection, whose reads and writes complete at
    /// once, is doing I/O); the call hook clears it. A guest spinning on
    /// imports that return at once (a non-blocking read with nothing to
    /// read, the clock) never sets it, and traps after
    /// `limits.wall_budget_ms`.
    HostWait(super::sync_streams::IoProgress),
}

/// Applies the CPU budget (as far as `supervision` enables it) and the
/// memory limits to a fresh store of the `conn-handler` world.
pub fn supervise(
    store: &mut Store<HostState>,
    supervision: Supervision,
    budget: CpuBudget,
) -> wasmtime::Result<()> {
    supervise_activations(store, supervision, budget, Activation::EventLoop)
}

/// Like [`supervise`], with the activation rule of the store's world.
pub fn supervise_activations(
    store: &mut Store<HostState>,
    supervision: Supervision,
    budget: CpuBudget,
    activation: Activation,
) -> wasmtime::Result<()> {
    store.limiter(|state| state.limiter());
    if supervision.fuel {
        store.set_fuel(budget.fuel)?;
    }
    if supervision.epoch {
        store.epoch_deadline_trap();
        store.set_epoch_deadline(budget.epoch_ticks);
    }
    if supervision.fuel || supervision.epoch {
        store.call_hook(move |mut store, hook| {
            if let Activation::HostWait(progress) = &activation
                && supervision.epoch
                && matches!(hook, CallHook::ReturningFromHost)
                && progress.swap(false, Ordering::Relaxed)
            {
                store.set_epoch_deadline(budget.epoch_ticks);
            }
            match hook {
                // The event loop (or a new call) enters the guest: a new
                // activation.
                CallHook::CallingWasm => {
                    if supervision.fuel {
                        store.set_fuel(budget.fuel)?;
                    }
                    if supervision.epoch {
                        store.set_epoch_deadline(budget.epoch_ticks);
                    }
                }
                // An import returns: new fuel, same activation.
                CallHook::ReturningFromHost if supervision.fuel => {
                    store.set_fuel(budget.fuel)?;
                }
                _ => {}
            }
            Ok(())
        });
    }
    Ok(())
}

/// Bounds one instance's memories and tables, and remembers refusals so a
/// later trap can be explained.
pub struct GuestLimiter {
    limits: StoreLimits,
    memory_limit: usize,
    /// The size a guest last asked to grow a memory to and was refused.
    pub refused_memory: Option<usize>,
    log: Arc<AppLog>,
    instance: u32,
}

impl GuestLimiter {
    /// Limits from the app's configuration; refusals are recorded as events
    /// of instance `instance` in `log`.
    pub fn new(limits: &AppLimits, log: Arc<AppLog>, instance: u32) -> Self {
        let memory_limit = usize::try_from(limits.memory_limit_mb << 20).unwrap_or(usize::MAX);
        Self {
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_limit)
                // A component has a handful of tables and core instances;
                // these bounds stop a guest from creating unbounded numbers.
                .table_elements(1 << 20)
                .instances(100)
                .tables(100)
                .memories(100)
                .trap_on_grow_failure(false)
                .build(),
            memory_limit,
            refused_memory: None,
            log,
            instance,
        }
    }

    /// The memory limit in bytes.
    pub fn memory_limit(&self) -> usize {
        self.memory_limit
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if !allowed {
            // Record the first refusal only: a guest retrying in a loop
            // must not flood the events.
            if self.refused_memory.is_none() {
                self.log.event(
                    Some(self.instance),
                    EventKind::MemoryRefused {
                        requested: desired,
                        limit: self.memory_limit,
                    },
                );
            }
            self.refused_memory = Some(desired);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Why an instance trapped, in the categories operators and metrics use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapCause {
    /// The guest used up its CPU budget for one slice (fuel).
    CpuBudget,
    /// The guest ran past the wall-clock backstop (epoch deadline).
    WallClock,
    /// A memory growth was refused at the limit before the trap.
    Memory,
    /// Anything else: a guest panic, an out-of-bounds access, a bug.
    Guest,
}

impl TrapCause {
    /// Every cause, in the order of [`crate::conns::AppCounters::traps`].
    pub const ALL: [TrapCause; 4] = [
        TrapCause::CpuBudget,
        TrapCause::WallClock,
        TrapCause::Memory,
        TrapCause::Guest,
    ];

    /// This cause's index in [`TrapCause::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TrapCause::CpuBudget => "cpu-budget",
            TrapCause::WallClock => "wall-clock",
            TrapCause::Memory => "memory-limit",
            TrapCause::Guest => "guest",
        }
    }
}

/// Classifies a trap, given whether the instance had a memory growth
/// refused, and explains it in the app's terms.
pub fn explain_trap(
    error: &wasmtime::Error,
    refused_memory: Option<usize>,
    limits: &AppLimits,
) -> (TrapCause, String) {
    let trap = error.downcast_ref::<Trap>().copied();
    let (cause, what) = match trap {
        Some(Trap::OutOfFuel) => (
            TrapCause::CpuBudget,
            format!(
                "CPU budget exceeded: the guest computed for more than its {} ms budget \
                 without calling the host (limits.cpu_budget_ms)",
                limits.cpu_budget_ms
            ),
        ),
        Some(Trap::Interrupt) => (
            TrapCause::WallClock,
            format!(
                "wall-clock budget exceeded: the guest ran for more than {} ms without \
                 waiting for I/O (limits.wall_budget_ms)",
                limits.wall_budget_ms
            ),
        ),
        _ if refused_memory.is_some() => (
            TrapCause::Memory,
            format!(
                "memory limit reached: the guest asked for {} MiB, over its {} MiB \
                 (limits.memory_limit_mb), and then trapped ({})",
                refused_memory.unwrap_or(0) >> 20,
                limits.memory_limit_mb,
                trap.map(|t| t.to_string())
                    .unwrap_or_else(|| error.root_cause().to_string())
            ),
        ),
        Some(trap) => (TrapCause::Guest, format!("wasm trap: {trap}")),
        None => (TrapCause::Guest, error.root_cause().to_string()),
    };
    let detail = match error.downcast_ref::<wasmtime::WasmBacktrace>() {
        Some(backtrace) => format!("{what}\n{backtrace}"),
        None => what,
    };
    (cause, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_follow_the_limits() {
        let b = CpuBudget::new(&AppLimits::default());
        assert_eq!(b.fuel, 50 * FUEL_PER_MS);
        assert_eq!(b.epoch_ticks, 101);
        let b = CpuBudget::new(&AppLimits {
            cpu_budget_ms: 60_000,
            wall_budget_ms: 5,
            ..AppLimits::default()
        });
        assert_eq!(b.fuel, 600_000_000_000);
        assert_eq!(b.epoch_ticks, 2);
    }
}
