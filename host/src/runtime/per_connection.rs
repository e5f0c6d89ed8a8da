//! Serving a `conn-handler-sync` app: one instance per connection.
//!
//! Each connection gets a task that creates a store and an instance from
//! the app's pre-linked component (`InstancePre`, instantiated from the
//! per-connection engine's pooling allocator), hands the client's bytes to
//! the guest's `sync-handler.handle` as WASI 0.2 streams, and destroys the
//! instance when `handle` returns. The store is the failure domain, as in
//! the shared world, but here it holds one connection: a trap closes that
//! connection, is recorded as an app event with its cause, and touches
//! nothing else.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wasmtime::Store;
use wasmtime_wasi::WasiView;
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream};

use super::host_state::HostState;
use super::instance::{Assigned, InstanceSettings, dispose_after_trap};
use super::slow_lane;
use super::supervisor::IoProgress;
use super::supervisor::{Activation, Meter, supervise_activations};
use super::sync_bindings::ConnHandlerSyncPre;
use super::sync_bindings::sockgate::gateway::sync_types as wit;
use super::sync_streams::{ConnInput, ConnOutput};
use crate::base::conn::ConnInfo;
use crate::tenant::logs::EventKind;

/// The instance index per-connection instances report in logs and events
/// (there are no shards; events name the connection instead).
pub const PER_CONNECTION_INSTANCE: u32 = 0;

/// How one connection of a `conn-handler-sync` app ended.
#[derive(Debug)]
pub enum Outcome {
    /// `handle` returned: the connection was served.
    Served,
    /// The instance could not be created (pool full, start function
    /// trapped); the connection was closed unserved.
    NotStarted,
    /// The instance trapped; the connection was closed.
    Trapped,
    /// The app was replaced or removed and its drain deadline passed.
    Drained,
}

/// Serves one connection on a fresh instance of `pre`, until `handle`
/// returns, the instance traps, or `draining` resolves and the drain
/// deadline passes after it. Records instantiation failures and traps in
/// the app's events and counters.
pub async fn serve_connection(
    settings: Arc<InstanceSettings>,
    pre: ConnHandlerSyncPre<HostState>,
    assigned: Assigned,
    draining: impl Future<Output = ()>,
) -> Outcome {
    let id = assigned.info.id;
    let peer = assigned.info.peer;
    let guard = assigned.guard.clone();
    let log = &settings.log;
    let served = serve(&settings, pre, assigned);
    let deadline = async {
        draining.await;
        tokio::time::sleep(settings.drain).await;
    };
    tokio::select! {
        outcome = served => match outcome {
            Ok(()) => Outcome::Served,
            Err(Failure::Instantiate(err)) => {
                if err.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() {
                    log.event(None, EventKind::LimitHit {
                        limit: "per-connection instance pool",
                        detail: format!(
                            "closed connection {id} from {}: {} instances exist already \
                             (over all conn-handler-sync apps)",
                            peer,
                            super::engine::PER_CONNECTION_POOL,
                        ),
                    });
                } else {
                    log.event(
                        Some(PER_CONNECTION_INSTANCE),
                        EventKind::InstanceFailed { reason: format!("{err:#}") },
                    );
                }
                Outcome::NotStarted
            }
            Err(Failure::Trap { cause, reason }) => {
                settings.account.counters.traps[cause.index()]
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                log.event(
                    Some(PER_CONNECTION_INSTANCE),
                    EventKind::ConnectionTrapped {
                        cause: cause.as_str(),
                        reason,
                        connection: id,
                    },
                );
                Outcome::Trapped
            }
        },
        () = deadline => {
            // Dropping the call in flight destroys its instance (a store
            // of its own: nothing else is affected); close the transport so
            // bytes still queued are not sent.
            guard.close();
            log.event(None, EventKind::DrainDeadline { closed: 1 });
            Outcome::Drained
        }
    }
}

/// Why serving a connection failed.
enum Failure {
    Instantiate(wasmtime::Error),
    Trap {
        cause: super::supervisor::TrapCause,
        reason: String,
    },
}

async fn serve(
    settings: &Arc<InstanceSettings>,
    pre: ConnHandlerSyncPre<HostState>,
    assigned: Assigned,
) -> Result<(), Failure> {
    let Assigned {
        info,
        reader,
        writer,
        guard,
    } = assigned;
    let progress = IoProgress::default();
    let (mut store, meter) = supervised_store(settings, &pre, progress.clone());
    // Everything the store's work needs moves into it: it may go on in the
    // slow lane, on another thread.
    let serving = {
        let meter = meter.clone();
        async move {
            let handler = match pre.instantiate_async(&mut store).await {
                Ok(handler) => handler,
                Err(error) => return (store, Err(Failure::Instantiate(error))),
            };
            let table = store.data_mut().ctx().table;
            let rx: DynInputStream =
                Box::new(ConnInput::new(reader, guard.clone(), progress.clone()));
            let tx: DynOutputStream = Box::new(ConnOutput::new(writer, guard, progress.clone()));
            let (rx, tx) = match (table.push(rx), table.push(tx)) {
                (Ok(rx), Ok(tx)) => (rx, tx),
                (Err(err), _) | (_, Err(err)) => {
                    return (store, Err(Failure::Instantiate(err.into())));
                }
            };
            let info = wit_info(&info);
            let result = {
                let call = handler
                    .sockgate_gateway_sync_handler()
                    .call_handle(&mut store, &info, rx, tx);
                let mut call = std::pin::pin!(call);
                // The call returning `Pending` means the guest's fiber is
                // suspended in an import: it waits for I/O (see
                // `Activation::HostWait`) — unless it only yielded its time
                // slice, which the epoch callback does from an import too.
                std::future::poll_fn(|cx| {
                    let polled = call.as_mut().poll(cx);
                    if polled.is_pending() && !meter.yielding() {
                        progress.store(true, Ordering::Relaxed);
                    }
                    polled
                })
                .await
            };
            (store, Ok(result))
        }
    };
    // A connection of an app that computes past its budget lately most
    // likely computes too: it starts in the slow lane, not on a worker.
    let start = settings.demotion.start();
    let (store, result) = slow_lane::run_from(meter, start, serving).await;
    match result? {
        // Dropping the store (here) drops the streams the guest still
        // holds: the writer task sends what is queued and shuts down.
        Ok(()) => Ok(()),
        Err(error) => {
            let (cause, reason) = dispose_after_trap(store, error, &settings.limits).await;
            settings.demotion.after_trap(cause);
            Err(Failure::Trap { cause, reason })
        }
    }
}

/// A store for one instance of `pre`, supervised as a connection's is.
fn supervised_store(
    settings: &InstanceSettings,
    pre: &ConnHandlerSyncPre<HostState>,
    progress: IoProgress,
) -> (Store<HostState>, Arc<Meter>) {
    let state = HostState::new(settings.inputs(), PER_CONNECTION_INSTANCE);
    let mut store = Store::new(pre.engine(), state);
    // One connection per store.
    super::host_state::bound_store(&mut store, 1);
    let meter = supervise_activations(
        &mut store,
        settings.supervision,
        &settings.limits,
        Activation::HostWait(progress),
    );
    (store, meter)
}

/// Creates one instance of `pre` in a supervised store, as a connection
/// would get it, and drops it: what the per-connection world costs on
/// every connection before the guest runs. Returns the time taken. For
/// benchmarks and the instantiation measurement test.
pub async fn instantiate_once(
    settings: &InstanceSettings,
    pre: &ConnHandlerSyncPre<HostState>,
) -> wasmtime::Result<Duration> {
    let started = Instant::now();
    let (mut store, meter) = supervised_store(settings, pre, IoProgress::default());
    let pre = pre.clone();
    let store = slow_lane::run(meter, async move {
        pre.instantiate_async(&mut store).await.map(|_| store)
    })
    .await?;
    // Destroying the instance is part of a connection's cost: its pool
    // slots are returned here.
    drop(store);
    Ok(started.elapsed())
}

/// The WASI 0.2 view of a connection's info.
pub fn wit_info(info: &ConnInfo) -> wit::ConnInfo {
    wit_conn_info!(super::sync_bindings::sockgate::gateway::sync_types, info)
}
