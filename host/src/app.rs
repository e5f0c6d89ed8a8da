//! An app being served: its instances (shards), and the choice of which
//! instance takes each new connection.
//!
//! Each shard is a task that runs one instance at a time
//! ([`run_instance`]); when the instance traps, the shard records why and
//! starts a fresh one, after a delay if it keeps crashing ([`Backoff`]).
//! New connections go to the shard with the fewest active connections, and
//! are refused when every shard is at its cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::conn::Connection;
use crate::logs::{AppLog, EventKind};
use crate::runtime::bindings::ConnHandlerPre;
use crate::runtime::host_state::HostState;
use crate::runtime::instance::{Assigned, InstanceError, run_instance};

/// A running app.
pub struct App {
    name: String,
    log: Arc<AppLog>,
    shards: Vec<Shard>,
    max_connections_per_instance: usize,
    accepted: AtomicU64,
    refused: AtomicU64,
}

/// The dispatching side of one shard.
struct Shard {
    tx: mpsc::Sender<Assigned>,
    /// Connections assigned to this shard and not yet finished (including
    /// those still queued for it).
    active: Arc<AtomicUsize>,
}

/// Why a connection was not handed to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Every instance serves `max_connections_per_instance` connections.
    #[error("every instance is at max_connections_per_instance")]
    AllInstancesFull,
}

impl App {
    /// Starts `instances` shards of the component `pre` and returns the app,
    /// ready to take connections. Must be called within a tokio runtime.
    pub fn start(
        name: &str,
        pre: ConnHandlerPre<HostState>,
        instances: usize,
        max_connections_per_instance: usize,
    ) -> Arc<Self> {
        let log = Arc::new(AppLog::new(name));
        let shards = (0..instances)
            .map(|index| {
                let (tx, rx) = mpsc::channel(max_connections_per_instance);
                let active = Arc::new(AtomicUsize::new(0));
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                tokio::spawn(shard_loop(
                    pre.clone(),
                    log.clone(),
                    index,
                    rx,
                    active.clone(),
                ));
                Shard { tx, active }
            })
            .collect();
        Arc::new(Self {
            name: name.to_owned(),
            log,
            shards,
            max_connections_per_instance,
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// The app's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The app's log and events.
    pub fn log(&self) -> &Arc<AppLog> {
        &self.log
    }

    /// Connections currently active across all instances.
    pub fn active_connections(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.active.load(Ordering::Relaxed))
            .sum()
    }

    /// Connections handed to the app so far, and refused so far.
    pub fn connection_totals(&self) -> (u64, u64) {
        (
            self.accepted.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    /// Hands a connection to the least busy instance, or refuses it (the
    /// connection is then dropped, which closes it).
    pub fn dispatch(&self, conn: Connection) -> Result<(), Refused> {
        let shard = self
            .shards
            .iter()
            .min_by_key(|s| s.active.load(Ordering::Relaxed))
            .filter(|s| s.active.load(Ordering::Relaxed) < self.max_connections_per_instance);
        let Some(shard) = shard else {
            return Err(self.refuse(Refused::AllInstancesFull));
        };
        shard.active.fetch_add(1, Ordering::Relaxed);
        let guard = Arc::new(ActiveGuard(shard.active.clone()));
        match shard.tx.try_send(Assigned { conn, guard }) {
            Ok(()) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            // The channel holds as many entries as the cap allows, so it is
            // full or closed only while the app is shutting down.
            Err(_) => Err(self.refuse(Refused::AllInstancesFull)),
        }
    }

    fn refuse(&self, why: Refused) -> Refused {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.log.event(
            None,
            EventKind::ConnectionRefused {
                limit: "max_connections_per_instance on every instance",
            },
        );
        why
    }
}

/// Counts a connection as active on its shard while it lives.
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs instance after instance for one shard until the app is dropped.
async fn shard_loop(
    pre: ConnHandlerPre<HostState>,
    log: Arc<AppLog>,
    index: u32,
    mut rx: mpsc::Receiver<Assigned>,
    active: Arc<AtomicUsize>,
) {
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        let kind = match run_instance(&pre, &log, index, &mut rx, &active).await {
            Ok(()) => return,
            Err(InstanceError::Instantiate(err)) => EventKind::InstanceFailed {
                reason: format!("{err:#}"),
            },
            Err(InstanceError::Trap { error, connections }) => EventKind::InstanceTrapped {
                reason: describe_trap(&error),
                connections,
            },
        };
        log.event(Some(index), kind);
        if let Some(delay) = backoff.after_exit(started.elapsed()) {
            log.event(
                Some(index),
                EventKind::Backoff {
                    delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                },
            );
            tokio::time::sleep(delay).await;
        }
    }
}

/// A trap as an operator wants to read it: what happened first, then where
/// in the guest (the wasm backtrace, with function names when the guest
/// kept its name section).
fn describe_trap(error: &wasmtime::Error) -> String {
    let what = match error.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => format!("wasm trap: {trap}"),
        None => error.root_cause().to_string(),
    };
    match error.downcast_ref::<wasmtime::WasmBacktrace>() {
        Some(backtrace) => format!("{what}\n{backtrace}"),
        None => what,
    }
}

/// Crash-loop protection: an instance that fails soon after it started is
/// restarted after a delay that doubles with each quick failure, so a guest
/// that traps on every connection cannot make the gateway spin on
/// instantiation. An instance that ran for a while is replaced at once.
#[derive(Debug, Default)]
pub struct Backoff {
    quick_failures: u32,
}

impl Backoff {
    /// A failure after this long counts as a fresh start.
    pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);
    /// The first delay.
    pub const INITIAL: Duration = Duration::from_millis(100);
    /// The longest delay.
    pub const MAX: Duration = Duration::from_secs(10);

    /// Called when an instance stopped after running for `lived`; returns
    /// how long to wait before the next one.
    pub fn after_exit(&mut self, lived: Duration) -> Option<Duration> {
        if lived >= Self::HEALTHY_AFTER {
            self.quick_failures = 0;
        }
        self.quick_failures = self.quick_failures.saturating_add(1);
        if self.quick_failures == 1 {
            return None;
        }
        let exponent = (self.quick_failures - 2).min(16);
        Some((Self::INITIAL * 2u32.pow(exponent)).min(Self::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_on_quick_failures_and_resets_after_health() {
        let mut b = Backoff::default();
        let quick = Duration::from_millis(5);
        assert_eq!(b.after_exit(quick), None);
        assert_eq!(b.after_exit(quick), Some(Duration::from_millis(100)));
        assert_eq!(b.after_exit(quick), Some(Duration::from_millis(200)));
        assert_eq!(b.after_exit(quick), Some(Duration::from_millis(400)));
        for _ in 0..20 {
            b.after_exit(quick);
        }
        assert_eq!(b.after_exit(quick), Some(Backoff::MAX));
        assert_eq!(b.after_exit(Duration::from_secs(60)), None);
        assert_eq!(b.after_exit(quick), Some(Duration::from_millis(100)));
    }
}
