//! A `wasi:http/proxy` (WASI 0.2) request on an instance of its own: the
//! app's `max_sync_instances` quota, the store's supervision and memory
//! bound, the slow lane, and what a trap or a full instance pool answers
//! (`500`, `503`) and records (`request-trapped`, `limit-hit`). The
//! store-generic mechanics (calling `handle`, catching the response head)
//! are [`super::proxy`]'s; this file binds them to the gateway's
//! [`HostState`] and events.

use std::future::ready;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::oneshot;
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use super::bodies::{from_wasi, to_wasi};
use super::proxy::{self, ProxyEnd};
use super::service::InFlight;
use crate::http::{Refusal, Served};
use crate::runtime::host_state::{HostState, bound_store, http_view};
use crate::runtime::instance::InstanceSettings;
use crate::runtime::per_connection::PER_CONNECTION_INSTANCE;
use crate::runtime::slow_lane;
use crate::runtime::supervisor::IoProgress;
use crate::runtime::supervisor::{Activation, explain_trap, supervise_activations};
use crate::tenant::conns::ShardLoad;
use crate::tenant::logs::EventKind;

/// Serves a WASI 0.2 request of an app with `settings` on an instance
/// of its own.
pub(super) fn serve_on_new_instance(
    settings: &InstanceSettings,
    pre: &ProxyPre<HostState>,
    active: &Arc<ShardLoad>,
    request: http::Request<crate::http::Body>,
) -> BoxFuture<'static, Result<Served, Refusal>> {
    let quota = settings.limits.max_sync_instances;
    if active.active() >= quota {
        settings
            .account
            .counters
            .refused_instances_full
            .fetch_add(1, Ordering::Relaxed);
        settings.log.event(
            None,
            EventKind::LimitHit {
                limit: "max_sync_instances",
                detail: format!(
                    "answered 503 to a request: the app has {quota} instances (one per \
                     request) of the {} that per-request apps share",
                    crate::runtime::engine::PER_CONNECTION_POOL
                ),
            },
        );
        return ready(Err(Refusal::Busy(format!(
            "{quota} requests in flight (limits.max_sync_instances)"
        ))))
        .boxed();
    }
    let what = format!("{} {}", request.method(), request.uri().path());
    let progress = IoProgress::default();
    let mut store = Store::new(
        pre.engine(),
        HostState::new(settings.inputs(), PER_CONNECTION_INSTANCE),
    );
    bound_store(&mut store, 1);
    let meter = supervise_activations(
        &mut store,
        settings.supervision,
        &settings.limits,
        Activation::HostWait(progress.clone()),
    );
    let limits = settings.limits.clone();
    let yielding = meter.clone();
    let (run, response) = proxy::start(
        pre.clone(),
        store,
        http_view,
        request.map(to_wasi),
        // Suspended in an import: a wait for I/O, unless the guest only
        // yielded its time slice.
        move || {
            if !yielding.yielding() {
                progress.store(true, Ordering::Relaxed);
            }
        },
        move |error, state: &HostState| explain_trap(error, state.refused_memory(), &limits),
    );
    // The store's work may go on in the slow lane, on another thread; it
    // starts there if the app's guests compute past their budget lately.
    let run = slow_lane::run_from(meter, settings.demotion.start(), run);
    let demotion = settings.demotion.clone();
    let in_flight = InFlight::new(active.clone());
    let log = settings.log.clone();
    let account = settings.account.clone();
    let (ended_tx, ended_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let _in_flight = in_flight;
        let end = run.await;
        let refusal = match end {
            ProxyEnd::Served => None,
            ProxyEnd::NotStarted(err) => {
                if err
                    .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                    .is_some()
                {
                    log.event(
                        None,
                        EventKind::LimitHit {
                            limit: "per-connection instance pool",
                            detail: format!(
                                "answered 503 to {what}: {} instances exist already (over \
                                 all per-connection and per-request apps)",
                                crate::runtime::engine::PER_CONNECTION_POOL
                            ),
                        },
                    );
                    Some(Refusal::Busy("the instance pool is full".to_owned()))
                } else {
                    let reason = format!("{err:#}");
                    log.event(
                        Some(PER_CONNECTION_INSTANCE),
                        EventKind::InstanceFailed {
                            reason: reason.clone(),
                        },
                    );
                    Some(Refusal::Failed(format!("instantiation failed: {reason}")))
                }
            }
            ProxyEnd::Trapped((cause, reason)) => {
                demotion.after_trap(cause);
                account.counters.traps[cause.index()].fetch_add(1, Ordering::Relaxed);
                log.event(
                    Some(PER_CONNECTION_INSTANCE),
                    EventKind::RequestTrapped {
                        cause: cause.as_str(),
                        reason: reason.clone(),
                        request: what,
                    },
                );
                Some(Refusal::Failed(format!("trapped ({})", cause.as_str())))
            }
        };
        let _ = ended_tx.send(refusal);
    });
    // Dropped (the deadline passed, the client left) before a response
    // head: the instance goes (a store of its own, nothing else is
    // affected). Once the head is out, the task runs until `handle`
    // returns, streaming the body.
    let abort = AbortOnDrop(Some(task));
    async move {
        let mut abort = abort;
        match response.await {
            Ok(Ok(response)) => {
                abort.disarm();
                Ok(response.map(from_wasi))
            }
            Ok(Err(code)) => Err(Refusal::GuestError(format!("{code:?}"))),
            Err(_) => match ended_rx.await {
                Ok(Some(refusal)) => Err(refusal),
                _ => Err(Refusal::Failed(
                    "the guest returned without setting a response".to_owned(),
                )),
            },
        }
    }
    .boxed()
}

/// Aborts a task when dropped, unless disarmed.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl AbortOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}
