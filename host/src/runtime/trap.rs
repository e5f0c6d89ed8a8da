//! Why an instance trapped, in the app's terms: the cause operators and
//! metrics count, and an explanation with the guest's wasm backtrace.
//!
//! Explaining is not free — a deep recursion's backtrace has thousands of
//! frames, each demangled — and the text is partly the guest's (its
//! function names), so the explanation is capped at [`MAX_TRAP_TEXT`] and
//! formatting stops there; callers run it off the threads that serve
//! connections (`spawn_blocking`).

use std::fmt::{self, Write};

use wasmtime::Trap;

use super::budget::Exceeded;
use crate::limits::AppLimits;

/// The longest trap explanation kept, in bytes. Threat: a guest choosing
/// enormous function names, or trapping a thousand frames deep, would
/// otherwise make every trap event (kept in memory, printed, served by the
/// admin API) as large as it likes, and its formatting as slow.
pub(crate) const MAX_TRAP_TEXT: usize = 4096;

/// Why an instance trapped, in the categories operators and metrics use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapCause {
    /// The guest used up its CPU budget for one activation.
    CpuBudget,
    /// The guest ran past its wall-clock budget for one activation.
    WallClock,
    /// A memory growth was refused at the limit before the trap.
    Memory,
    /// Anything else: a guest panic, an out-of-bounds access, a bug.
    Guest,
}

impl TrapCause {
    /// Every cause, in the order of [`crate::tenant::conns::AppCounters::traps`].
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
/// refused, and explains it in the app's terms, with the wasm backtrace,
/// in at most [`MAX_TRAP_TEXT`] bytes.
pub fn explain_trap(
    error: &wasmtime::Error,
    refused_memory: Option<usize>,
    limits: &AppLimits,
) -> (TrapCause, String) {
    let mut text = Capped::default();
    let cause = match (
        error.downcast_ref::<Exceeded>(),
        error.downcast_ref::<Trap>(),
    ) {
        (Some(exceeded), _) => {
            let _ = write!(text, "{exceeded}");
            match exceeded {
                Exceeded::Cpu { .. } => TrapCause::CpuBudget,
                Exceeded::Wall { .. } => TrapCause::WallClock,
            }
        }
        (None, trap) if refused_memory.is_some() => {
            let _ = write!(
                text,
                "memory limit reached: the guest asked for {} MiB, over its {} MiB \
                 (limits.memory_limit_mb), and then trapped (",
                refused_memory.unwrap_or(0) >> 20,
                limits.memory_limit_mb,
            );
            let _ = match trap {
                Some(trap) => write!(text, "{trap})"),
                None => write!(text, "{})", error.root_cause()),
            };
            TrapCause::Memory
        }
        (None, Some(trap)) => {
            let _ = write!(text, "wasm trap: {trap}");
            TrapCause::Guest
        }
        (None, None) => {
            let _ = write!(text, "{}", error.root_cause());
            TrapCause::Guest
        }
    };
    if let Some(backtrace) = error.downcast_ref::<wasmtime::WasmBacktrace>() {
        let _ = write!(text, "\n{backtrace}");
    }
    (cause, text.finish())
}

/// A string that takes writes up to [`MAX_TRAP_TEXT`] bytes and then
/// refuses them, which ends the formatting that writes to it.
#[derive(Default)]
struct Capped {
    text: String,
    truncated: bool,
}

impl Capped {
    fn finish(mut self) -> String {
        if self.truncated {
            self.text.push_str(" … (truncated)");
        }
        self.text
    }
}

impl fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.truncated {
            return Err(fmt::Error);
        }
        let room = MAX_TRAP_TEXT.saturating_sub(self.text.len());
        if s.len() <= room {
            self.text.push_str(s);
            return Ok(());
        }
        let mut end = room;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.text.push_str(&s[..end]);
        self.truncated = true;
        Err(fmt::Error)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn budget_traps_name_their_limit() {
        let limits = AppLimits::default();
        let cpu = wasmtime::Error::new(Exceeded::Cpu {
            used: Duration::from_millis(51),
            budget_ms: 50,
        });
        let (cause, text) = explain_trap(&cpu, None, &limits);
        assert_eq!(cause, TrapCause::CpuBudget);
        assert!(text.contains("51 ms of CPU time"), "{text}");
        assert!(text.contains("limits.cpu_budget_ms"), "{text}");
        let wall = wasmtime::Error::new(Exceeded::Wall {
            ran_ms: 1001,
            computed_ms: 3,
            budget_ms: 1000,
        })
        .context("while serving");
        let (cause, text) = explain_trap(&wall, Some(1 << 30), &limits);
        assert_eq!(cause, TrapCause::WallClock);
        assert!(text.contains("1001 ms (3 ms of it computing)"), "{text}");
        assert!(text.contains("limits.wall_budget_ms"), "{text}");
    }

    #[test]
    fn explanations_are_capped() {
        let name = "é".repeat(10_000);
        let error = wasmtime::Error::msg(name);
        let (cause, text) = explain_trap(&error, None, &AppLimits::default());
        assert_eq!(cause, TrapCause::Guest);
        assert!(text.len() <= MAX_TRAP_TEXT + " … (truncated)".len());
        assert!(text.ends_with("(truncated)"));
    }
}
