//! The long-lived instances of a `wasi:http/service` (WASI 0.3) app: a
//! task per instance runs one store after another ([`instance_loop`], on
//! [`crate::runtime::shard::run_shard`]),
//! each serving the jobs [`super::serving`] dispatches to it until the
//! channel closes, it must be recycled (too many lingering calls), it
//! hibernates (idle for the app's `hibernate_after_secs`: the next one
//! starts when a job arrives), or it traps; then the next store starts, after the crash-loop back-off of
//! `conn-handler` apps ([`crate::base::backoff::Backoff`]). Jobs still
//! queued when a store ends are not lost: they go to the next one.

use std::sync::Arc;

use tokio::sync::mpsc;
use wasmtime::Store;

use super::HttpPre;
use super::service::{HttpJob, ServiceEnd, ServiceSettings, serve_jobs};
use crate::runtime::host_state::{HostState, bound_store, http_view};
use crate::runtime::instance::dispose_after_trap;
use crate::runtime::instance::{InstanceError, InstanceSettings};
use crate::runtime::load::GuestPre;
use crate::runtime::shard::{InstanceEnd, ShardSide, run_shard};
use crate::runtime::slow_lane;
use crate::runtime::supervisor::IoProgress;
use crate::runtime::supervisor::supervise;
use crate::tenant::conns::ShardLoad;
use crate::tenant::logs::EventKind;

/// Calls past their deadline (answered `504`, still running in the guest)
/// one WASI 0.3 instance may carry before it is replaced. Threat: a guest
/// that never answers some requests piling their tasks up in one store,
/// each holding guest memory and host table entries, forever.
pub(super) const MAX_LINGERING_CALLS: usize = 64;

/// Requests one WASI 0.3 instance holds at once (fewer if the app's
/// `max_connections_per_instance` is lower), each from its call until its
/// response body has ended; more wait in the instance's queue (up to
/// `max_connections_per_instance`, then `503`). Bounds the store's table of
/// tasks, streams and futures (about nine entries per request) and the
/// backlog of requests whose ends wait behind new calls (see
/// `service.rs`). An app with more long-lived responses at once (event
/// streams) runs more `instances`.
pub(super) const MAX_REQUESTS_IN_STORE: usize = 1024;

/// Runs instance after instance of a WASI 0.3 app until the app is
/// dropped ([`run_shard`]: hibernation, wakes and the crash-loop back-off
/// of every world). An instance with too many calls past their deadline
/// is replaced at once, with an event that says so.
pub(super) async fn instance_loop(
    settings: Arc<InstanceSettings>,
    worker: ShardSide<HttpJob>,
    jobs: mpsc::Receiver<HttpJob>,
) {
    let (index, load) = (worker.index, worker.load.clone());
    let runner = settings.clone();
    run_shard(settings, worker, jobs, move |jobs, woke| {
        let (settings, load) = (runner.clone(), load.clone());
        async move {
            let (outcome, jobs) = run_instance(settings.clone(), index, jobs, load, woke).await;
            let end = outcome.map(|end| match end {
                ServiceEnd::Closed => InstanceEnd::Closed,
                ServiceEnd::Hibernate => InstanceEnd::Hibernated,
                ServiceEnd::Recycle { lingering } => {
                    settings.log.event(
                        Some(index),
                        EventKind::LimitHit {
                            limit: "http_request_timeout_ms",
                            detail: format!(
                                "{lingering} requests went on past their deadline (answered \
                                 504): the instance is replaced by a fresh one"
                            ),
                        },
                    );
                    InstanceEnd::Replace
                }
            });
            (end, jobs)
        }
    })
    .await;
}

/// One WASI 0.3 instance: created, supervised, serving jobs until the
/// channel closes, it must be recycled, it hibernates, or it traps
/// (`connections` in the error then counts the requests it was serving).
/// `woke`: when the job that woke a hibernated worker arrived. Returns
/// `jobs` for the next instance.
async fn run_instance(
    settings: Arc<InstanceSettings>,
    index: u32,
    mut jobs: mpsc::Receiver<HttpJob>,
    load: Arc<ShardLoad>,
    woke: Option<tokio::time::Instant>,
) -> (Result<ServiceEnd, InstanceError>, mpsc::Receiver<HttpJob>) {
    let GuestPre::Http(HttpPre::Service(pre)) = &*settings.pre else {
        let error = wasmtime::format_err!(
            "only a wasi:http/service component runs on long-lived HTTP instances"
        );
        return (Err(InstanceError::Instantiate(error)), jobs);
    };
    let pre = pre.clone();
    let mut store = Store::new(pre.engine(), HostState::new(settings.inputs(), index));
    bound_store(&mut store, settings.limits.max_connections_per_instance);
    store.data_mut().attach_shard(load.clone());
    // Request and response bodies move inside wasmtime-wasi-http, not
    // through the gateway's byte pumps: nothing sets the progress flag, and
    // every entry into wasm starts an activation.
    let meter = supervise(
        &mut store,
        settings.supervision,
        &settings.limits,
        IoProgress::default(),
    );
    // Everything the store's work needs moves into it: it may go on in the
    // slow lane, on another thread.
    let serving = {
        let settings = settings.clone();
        let load = load.clone();
        async move {
            let served = match pre.instantiate_async(&mut store).await {
                Ok(service) => {
                    settings.started(index, woke);
                    let service_settings = ServiceSettings {
                        drain: settings.drain,
                        max_lingering: MAX_LINGERING_CALLS,
                        max_requests: settings
                            .limits
                            .max_connections_per_instance
                            .min(MAX_REQUESTS_IN_STORE),
                        hibernate_after: settings.hibernate_after,
                    };
                    Ok(store
                        .run_concurrent(async |accessor| {
                            serve_jobs(
                                accessor,
                                &service,
                                http_view,
                                &mut jobs,
                                &load,
                                service_settings,
                            )
                            .await
                        })
                        .await)
                }
                Err(error) => Err(error),
            };
            (store, jobs, served)
        }
    };
    let (store, jobs, served) = slow_lane::run(meter, serving).await;
    let error = match served {
        Ok(Ok(Ok(end))) => return (Ok(end), jobs),
        Err(error) => return (Err(InstanceError::Instantiate(error)), jobs),
        Ok(Ok(Err(error)) | Err(error)) => error,
    };
    // Read before the store (and so every request in it) is dropped; jobs
    // still queued are not lost and not counted.
    let connections = load.active().saturating_sub(jobs.len());
    let (cause, reason) = dispose_after_trap(store, error, &settings.limits).await;
    let trapped = InstanceError::Trap {
        cause,
        reason,
        connections,
    };
    (Err(trapped), jobs)
}
