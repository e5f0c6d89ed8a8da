//! Loops that never end, one per shape of CPU work, for the gateway's CPU
//! budget tests: a budget in CPU time must stop each after the same time,
//! though they execute very different numbers of instructions per
//! millisecond. Shared by `hostile` and `sync-hostile` (which includes this
//! file), each passing its world's clock import for `spin-clock`.
//!
//! - `spin` — integer multiply-add, stored to a static.
//! - `spin-float` — dependent floating-point divisions and square roots.
//! - `spin-memory` — pointer chasing through 32 MiB (a cache miss a step).
//! - `spin-recurse` — naive recursion (a call per step, never inlined).
//! - `spin-clock` — a cheap import (the clock) in a loop.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

/// The loop shapes, by command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `spin`
    Integer,
    /// `spin-float`
    Float,
    /// `spin-memory`
    Memory,
    /// `spin-recurse`
    Recursive,
    /// `spin-clock`
    Import,
}

impl Shape {
    /// The shape a command names, if it names one.
    pub fn parse(command: &str) -> Option<Self> {
        Some(match command {
            "spin" => Shape::Integer,
            "spin-float" => Shape::Float,
            "spin-memory" => Shape::Memory,
            "spin-recurse" => Shape::Recursive,
            "spin-clock" => Shape::Import,
            _ => return None,
        })
    }
}

static SINK: AtomicU64 = AtomicU64::new(0);

/// Computes forever in the given shape; `import` is a cheap import to call
/// for [`Shape::Import`].
pub fn forever(shape: Shape, import: impl Fn()) -> ! {
    match shape {
        Shape::Integer => {
            let mut x = 1u64;
            loop {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                SINK.store(x, Ordering::Relaxed);
            }
        }
        Shape::Float => {
            let mut x = black_box(2.0f64);
            loop {
                x = black_box((x + 1.0).sqrt() + 1.0 / (x + 0.5));
            }
        }
        Shape::Memory => {
            // Each element names the next, 9 999 991 elements on (a prime,
            // so the chain visits every element): every step loads from an
            // address the previous load gave, far from the last.
            const LEN: usize = 8 << 20;
            const STRIDE: usize = 9_999_991;
            let chain: Vec<u32> = (0..LEN).map(|i| ((i + STRIDE) % LEN) as u32).collect();
            let mut at = 0usize;
            loop {
                at = black_box(chain[at]) as usize;
            }
        }
        Shape::Recursive => loop {
            SINK.store(fib(black_box(40)), Ordering::Relaxed);
        },
        Shape::Import => loop {
            import();
        },
    }
}

#[inline(never)]
fn fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(black_box(n - 1)).wrapping_add(fib(black_box(n - 2)))
    }
}
