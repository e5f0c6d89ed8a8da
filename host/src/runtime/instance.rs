//! One instance of an app: a task that owns the wasmtime `Store`, runs its
//! event loop (`run_concurrent`) and starts a `handle` call for every
//! connection sent to it, all concurrently on the same instance.
//!
//! Any trap poisons the whole store, so the instance is the failure domain:
//! [`run_instance`] returns, every stream of the store is dropped (closing
//! its connections), and the caller starts a fresh instance. Connections
//! still queued in the channel are not lost: the next instance takes them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use futures::task::AtomicWaker;
use thiserror::Error;
use tokio::sync::mpsc;
use wasmtime::Store;
use wasmtime::component::{Accessor, StreamReader};

use super::bindings::ConnHandler;
use super::host_state::{AppInputs, HostState};
use super::load::GuestPre;
use super::pump::{ClientReader, ClientWriter, ConnGuard};
use super::slow_lane;
use super::supervisor::IoProgress;
use super::supervisor::{Activation, Supervision, TrapCause, explain_trap, supervise_activations};
use crate::base::conn::{ByteReader, ByteWriter, ConnInfo};
use crate::limits::AppLimits;
use crate::tenant::conns::{AppAccount, ConnTracker, ShardLoad};
use crate::tenant::logs::{AppLog, EventKind};
use crate::tenant::outbound::OutboundPolicy;

/// A connection assigned to an instance, with the record that counts it
/// as active.
pub struct Assigned {
    /// What is known about the connection.
    pub info: ConnInfo,
    /// Bytes from the client.
    pub reader: ByteReader,
    /// Bytes to the client.
    pub writer: ByteWriter,
    /// Dropped when the connection is done.
    pub guard: ConnGuard,
}

/// How long connections of a replaced or removed app version may go on,
/// unless configured otherwise.
pub const DEFAULT_DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

/// What every instance of an app is created with.
pub struct InstanceSettings {
    /// The component, pre-linked for its world.
    pub pre: Arc<GuestPre>,
    /// The app's log and events.
    pub log: Arc<AppLog>,
    /// The app's limits.
    pub limits: AppLimits,
    /// The app's outbound policy.
    pub policy: Arc<OutboundPolicy>,
    /// The CPU supervision the engine was built with.
    pub supervision: Supervision,
    /// The app's connection accounting.
    pub account: Arc<AppAccount>,
    /// The gateway's connection accounting.
    pub tracker: Arc<ConnTracker>,
    /// How long connections may go on once the app is replaced or removed.
    pub drain: std::time::Duration,
    /// Whether the app's guests were stopped at their CPU budget lately:
    /// its new per-connection (and per-request) instances then start in the
    /// slow lane.
    pub demotion: Arc<slow_lane::Demotion>,
    /// How long an instance stays idle before it hibernates (dropped until
    /// the next connection), if it does
    /// ([`crate::limits::AppLimits::hibernate_after`]).
    pub hibernate_after: Option<std::time::Duration>,
}

/// How an instance ended, other than by a trap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Its channel closed (the app was replaced or removed) and its
    /// connections drained.
    Closed,
    /// It was idle for the app's `hibernate_after_secs`: its store is
    /// dropped, and the next connection on the channel wakes a fresh one.
    Hibernate,
}

impl InstanceSettings {
    /// What each store of the app is given ([`HostState::new`]).
    pub fn inputs(&self) -> AppInputs<'_> {
        AppInputs {
            log: &self.log,
            policy: &self.policy,
            limits: &self.limits,
            account: &self.account,
            tracker: &self.tracker,
        }
    }

    /// A store for instance `index` of the app on `engine`: its state,
    /// its tables bounded, its budgets and memory limits applied. The
    /// store's task must run in [`slow_lane::run`] with the returned meter;
    /// the instance's connections set the progress flag whenever they move
    /// bytes ([`super::supervisor::Activation::EventLoop`]).
    pub(crate) fn supervised_store(
        &self,
        engine: &wasmtime::Engine,
        index: u32,
    ) -> (Store<HostState>, IoProgress, Arc<super::supervisor::Meter>) {
        self.supervised_store_with(engine, index, Activation::EventLoop)
    }

    /// Like [`InstanceSettings::supervised_store`], with the activation
    /// rule `activation` of the instance's world (the event world's driver
    /// starts each call's activation itself: [`Activation::PerCall`]).
    pub(crate) fn supervised_store_with(
        &self,
        engine: &wasmtime::Engine,
        index: u32,
        activation: fn(IoProgress) -> Activation,
    ) -> (Store<HostState>, IoProgress, Arc<super::supervisor::Meter>) {
        let mut store = Store::new(engine, HostState::new(self.inputs(), index));
        super::host_state::bound_store(&mut store, self.limits.max_connections_per_instance);
        let progress = IoProgress::default();
        let meter = supervise_activations(
            &mut store,
            self.supervision,
            &self.limits,
            activation(progress.clone()),
        );
        (store, progress, meter)
    }

    /// Settings for app `name` with `limits` and `policy`, its log and
    /// accounting created fresh.
    pub fn new(
        name: &str,
        pre: impl Into<Arc<GuestPre>>,
        limits: AppLimits,
        policy: OutboundPolicy,
        supervision: Supervision,
        tracker: Arc<ConnTracker>,
    ) -> Self {
        let log = Arc::new(AppLog::new(name));
        Self::with_log(log, pre, limits, policy, supervision, tracker)
    }

    /// Like [`InstanceSettings::new`], keeping an existing log (a new
    /// version of an app continues its log and events).
    pub fn with_log(
        log: Arc<AppLog>,
        pre: impl Into<Arc<GuestPre>>,
        limits: AppLimits,
        policy: OutboundPolicy,
        supervision: Supervision,
        tracker: Arc<ConnTracker>,
    ) -> Self {
        let account = AppAccount::new(log.clone(), &limits);
        Self {
            pre: pre.into(),
            log,
            limits,
            policy: Arc::new(policy),
            supervision,
            account,
            tracker,
            drain: DEFAULT_DRAIN,
            demotion: Arc::default(),
            hibernate_after: None,
        }
    }
}

/// Why an instance stopped serving.
#[derive(Debug, Error)]
pub enum InstanceError {
    /// The instance could not be created (e.g. its start function trapped).
    #[error("instantiation failed: {0:#}")]
    Instantiate(wasmtime::Error),
    /// The instance trapped while serving.
    #[error("{reason}")]
    Trap {
        /// The category of the trap.
        cause: TrapCause,
        /// The explanation, with the wasm backtrace.
        reason: String,
        /// Connections the instance was serving when it trapped.
        connections: usize,
    },
}

impl InstanceError {
    /// Records why an instance of the app ended — a failed instantiation,
    /// or a trap (counted by cause) — in the app's events, then waits the
    /// crash-loop back-off before the next instance starts (`lived`: how
    /// long this one ran). One mechanism for every world's instance loop.
    pub(crate) async fn record_and_back_off(
        self,
        settings: &InstanceSettings,
        index: u32,
        lived: std::time::Duration,
        backoff: &mut crate::base::backoff::Backoff,
    ) {
        let log = &settings.log;
        let kind = match self {
            InstanceError::Instantiate(err) => EventKind::InstanceFailed {
                reason: format!("{err:#}"),
            },
            InstanceError::Trap {
                cause,
                reason,
                connections,
            } => {
                settings.account.counters.traps[cause.index()]
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                EventKind::InstanceTrapped {
                    cause: cause.as_str(),
                    reason,
                    connections,
                }
            }
        };
        log.event(Some(index), kind);
        if let Some(delay) = backoff.after_exit(lived) {
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

/// Creates instance `index` and serves connections from `rx` on it until
/// the channel closes ([`Ended::Closed`]), the instance has been idle for
/// the app's `hibernate_after_secs` ([`Ended::Hibernate`]) or it traps.
/// `active` counts the connections assigned to this shard; `woke` is when
/// the connection that woke a hibernated shard arrived. Returns `rx` for
/// the next instance.
pub async fn run_instance(
    settings: Arc<InstanceSettings>,
    index: u32,
    mut rx: mpsc::Receiver<Assigned>,
    active: Arc<ShardLoad>,
    woke: Option<tokio::time::Instant>,
) -> (Result<Ended, InstanceError>, mpsc::Receiver<Assigned>) {
    let GuestPre::Shared(pre) = &*settings.pre else {
        let error = wasmtime::format_err!(
            "a conn-handler-sync component is served one instance per connection, not by \
             shared instances"
        );
        return (Err(InstanceError::Instantiate(error)), rx);
    };
    let pre = pre.clone();
    let (mut store, progress, meter) = settings.supervised_store(pre.engine(), index);
    store.data_mut().attach_shard(active.clone());
    // Everything the store's work needs moves into it: it may go on in the
    // slow lane, on another thread.
    let serving = {
        let settings = settings.clone();
        let active = active.clone();
        async move {
            let served = match pre.instantiate_async(&mut store).await {
                Ok(handler) => {
                    settings.started(index, woke);
                    Ok(store
                        .run_concurrent(async |accessor| -> wasmtime::Result<Ended> {
                            let all = serve_all(
                                &settings, index, &mut rx, &active, accessor, &handler, &progress,
                            );
                            WakeGate::new(all).await
                        })
                        .await)
                }
                Err(error) => Err(error),
            };
            (store, rx, served)
        }
    };
    let (store, rx, served) = slow_lane::run(meter, serving).await;
    let error = match served {
        Ok(Ok(Ok(ended))) => return (Ok(ended), rx),
        Err(error) => return (Err(InstanceError::Instantiate(error)), rx),
        Ok(Ok(Err(error)) | Err(error)) => error,
    };
    // Read before the store (and so every connection) is dropped;
    // connections still queued are not lost and not counted.
    let connections = active.active().saturating_sub(rx.len());
    let (cause, reason) = dispose_after_trap(store, error, &settings.limits).await;
    let trapped = InstanceError::Trap {
        cause,
        reason,
        connections,
    };
    (Err(trapped), rx)
}

/// What a trapped store leaves to do, off the threads that serve
/// connections and at a priority that yields to them (the slow lane,
/// [`slow_lane::in_slow_lane`]): dropping the store (unmapping its
/// memories, closing the connections it served) and explaining the trap
/// (formatting, and demangling, a backtrace that may be thousands of
/// frames deep; a memory growth the store refused names the limit). An
/// attacker whose connections spin and reconnect makes dozens of these a
/// second; at the priority of the gateway's workers each one could hold a
/// core a neighbour's connection was woken for.
pub async fn dispose_after_trap(
    store: Store<HostState>,
    error: wasmtime::Error,
    limits: &AppLimits,
) -> (TrapCause, String) {
    let refused_memory = store.data().refused_memory();
    let limits = limits.clone();
    slow_lane::in_slow_lane(move || {
        drop(store);
        explain_trap(&error, refused_memory, &limits)
    })
    .await
    .unwrap_or_else(|| {
        (
            TrapCause::Guest,
            "the instance trapped; explaining why failed (see the gateway's log)".to_owned(),
        )
    })
}

/// The instance's own work inside its event loop: starts a `handle` call
/// for every connection from `rx`; once the channel closes, drains; once
/// idle for the app's `hibernate_after_secs`, returns
/// [`Ended::Hibernate`] (see [`guest_is_quiet`] for what idle means).
async fn serve_all(
    settings: &InstanceSettings,
    index: u32,
    rx: &mut mpsc::Receiver<Assigned>,
    active: &ShardLoad,
    accessor: &Accessor<HostState>,
    handler: &ConnHandler,
    progress: &IoProgress,
) -> wasmtime::Result<Ended> {
    let mut calls = FuturesUnordered::new();
    // One timer per instance, reset when it fires (never per connection).
    let after = settings.hibernate_after;
    let idle_check = tokio::time::sleep(after.unwrap_or(std::time::Duration::MAX / 4));
    tokio::pin!(idle_check);
    let table_at_start = accessor.with(|mut store| store.data_mut().table_entries());
    loop {
        tokio::select! {
            Some(result) = calls.next() => result?,
            assigned = rx.recv() => match assigned {
                Some(assigned) => calls.push(serve(accessor, handler, assigned, progress)),
                None => break,
            },
            () = &mut idle_check, if after.is_some() => {
                let after = after.unwrap_or_default();
                let quiet = calls.is_empty()
                    && rx.is_empty()
                    && guest_is_quiet(accessor, table_at_start);
                let quiet_for = if quiet {
                    active.quiet_for(crate::tenant::hibernation::now_ms())
                } else {
                    None
                };
                match crate::tenant::hibernation::next_check(quiet_for, after) {
                    None => return Ok(Ended::Hibernate),
                    Some(wait) => idle_check.as_mut().reset(tokio::time::Instant::now() + wait),
                }
            }
            // The gateway's memory ceiling needs room: hibernate now if
            // quiet, however recently used.
            () = active.hibernation_requested(), if after.is_some() => {
                if calls.is_empty()
                    && rx.is_empty()
                    && active.active() == 0
                    && guest_is_quiet(accessor, table_at_start)
                {
                    return Ok(Ended::Hibernate);
                }
            }
        }
    }
    // The app was replaced or removed: no new connections come. The
    // ones this instance serves go on (its event loop keeps
    // running here) until they finish or the drain deadline
    // passes. Never drop a call in flight: that would poison the
    // store.
    let drained = async {
        while let Some(result) = calls.next().await {
            result?;
        }
        active.wait_idle().await;
        wasmtime::Result::<()>::Ok(())
    };
    match tokio::time::timeout(settings.drain, drained).await {
        Ok(result) => result.map(|()| Ended::Closed),
        Err(_) => {
            settings.log.event(
                Some(index),
                EventKind::DrainDeadline {
                    closed: active.active(),
                },
            );
            Ok(Ended::Closed)
        }
    }
}

/// Whether a WASI 0.3 store has no pending guest work: no task of the
/// guest still running (wasmtime's `poll_no_interesting_tasks`: a `handle`
/// call, or work it spawned, that has not exited — a task waiting on a
/// timer, a socket or a stream included), and no host resource (socket,
/// stream, pollable) beyond the `table_at_start` entries the store had
/// when it started serving. Such a store can be dropped without cutting
/// anything short; what its memory holds is lost, as on a trap.
pub(crate) fn guest_is_quiet(accessor: &Accessor<HostState>, table_at_start: usize) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    accessor.poll_no_interesting_tasks(&mut cx).is_ready()
        && accessor.with(|mut store| store.data_mut().table_entries()) <= table_at_start
}

/// Polls a future only when it was woken (or on its first poll).
///
/// wasmtime's event loop (`run_concurrent`) polls the future it runs on
/// every turn, whether or not that future was woken: several times per
/// message on a busy instance. Polling the instance's own loop (a `select!`
/// over the connection channel and the pending calls) each time cost about
/// 1 000 of the 32 000 instructions of an echoed message (callgrind over
/// `benches/boundary.rs`, and 2 000 of 32 000 over TCP at 50 connections);
/// behind this gate a turn that did not concern it costs an atomic swap.
struct WakeGate<F> {
    inner: Pin<Box<F>>,
    signal: Arc<GateSignal>,
    waker: Waker,
}

/// Set when the gated future is woken; forwards the wake-up to whoever
/// polls the gate.
struct GateSignal {
    woken: AtomicBool,
    outer: AtomicWaker,
}

impl Wake for GateSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.outer.wake();
    }
}

impl<F: Future> WakeGate<F> {
    fn new(inner: F) -> Self {
        let signal = Arc::new(GateSignal {
            // The first poll always goes through.
            woken: AtomicBool::new(true),
            outer: AtomicWaker::new(),
        });
        Self {
            inner: Box::pin(inner),
            waker: Waker::from(signal.clone()),
            signal,
        }
    }
}

impl<F: Future> Future for WakeGate<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Register before looking at the flag, so a wake-up in between is
        // seen now or forwarded later, never lost.
        self.signal.outer.register(cx.waker());
        if !self.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        this.inner
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

/// Hands one connection to the guest: wraps the client's bytes as the `rx`
/// stream, calls `handle`, and pipes the returned stream to the client.
async fn serve(
    accessor: &Accessor<HostState>,
    handler: &ConnHandler,
    assigned: Assigned,
    progress: &IoProgress,
) -> wasmtime::Result<()> {
    let Assigned {
        info,
        reader,
        writer,
        guard,
    } = assigned;
    let id = info.id;
    let reader = ClientReader::new(reader, guard.clone(), progress.clone());
    let rx = accessor.with(|mut store| StreamReader::new(&mut store, reader))?;
    let tx = handler
        .sockgate_gateway_handler()
        .call_handle(accessor, id, rx)
        .await?;
    let writer = ClientWriter::new(writer, guard, progress.clone());
    accessor.with(|mut store| tx.pipe(&mut store, writer))?;
    Ok(())
}
