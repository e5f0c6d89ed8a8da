//! Serving a `wasi:http/service` (WASI 0.3) app: requests on long-lived
//! instances, many at once.
//!
//! Each instance's task runs its store's event loop (`run_concurrent`) and,
//! inside it, [`serve_jobs`]: for every [`HttpJob`] sent to the instance it
//! starts a concurrent call of `wasi:http/handler.handle`, and answers the
//! job with the guest's response as soon as `handle` returns it (the body
//! goes on streaming from the instance's tasks). Everything else is the
//! shared world's (`runtime::instance`): the store is the failure domain
//! (a trap ends the instance, the requests it was serving get `500`, jobs
//! still queued go to the next instance), the app's limits and supervision
//! apply, and a replaced instance drains.
//!
//! A request whose deadline passes before `handle` returned gets
//! [`JobError::Expired`] (`504`), but its call is never dropped: it goes on
//! in the instance (wasmtime cannot cancel a guest task yet) until it
//! returns, and its response is then discarded. An instance with more than
//! [`ServiceSettings::max_lingering`] such calls stops taking requests,
//! waits for the others, and returns [`ServiceEnd::Recycle`], so that a
//! guest that hangs requests cannot pile them up in one store forever.
//!
//! An instance holds at most [`ServiceSettings::max_requests`] requests at
//! once, each counted from its call until its response body has ended (or
//! been read to its end after the client left, see [`Guarded`]). The
//! bound is what keeps a busy instance alive: wasmtime's event loop runs a
//! guest task that yields (as `wasip3`'s `spawn_local` tasks do, writing a
//! body after `handle` returned) only when no new call is waiting, so under
//! a steady stream of requests the ends of earlier ones would pile up, each
//! holding about nine entries of the store's table, until the table is
//! full and the instance traps. With the bound, new calls wait while the
//! instance finishes what it started.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::{Either, select};
use futures::stream::FuturesUnordered;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use wasmtime::component::Accessor;
use wasmtime_wasi_http::p3::bindings::Service;
use wasmtime_wasi_http::{WasiBody, WasiHttpCtxView};

use super::bodies::Guarded;
use crate::tenant::conns::ShardLoad;
use crate::tenant::hibernation::next_check;

/// How a store's data gives the `wasi:http` view.
pub(crate) type View<T> = fn(&mut T) -> WasiHttpCtxView<'_>;

/// One request for an instance, and where its answer goes.
pub(crate) struct HttpJob {
    /// The request, normalised (an absolute URI) by the protocol side.
    pub request: http::Request<WasiBody>,
    /// When the client stops waiting for the response head.
    pub deadline: Instant,
    /// Where the response (or why there is none) goes. Dropped unanswered
    /// when the instance traps.
    pub reply: oneshot::Sender<Result<http::Response<WasiBody>, JobError>>,
    /// The request's place in its instance's count, held until the
    /// response body ends.
    pub guard: InFlight,
}

/// Why a job got no response (a trap drops the reply instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JobError {
    /// `handle` returned an `error-code`.
    GuestError(String),
    /// The deadline passed before `handle` returned.
    Expired,
}

/// A request counted in its instance's load until dropped.
pub(crate) struct InFlight(Arc<ShardLoad>);

impl InFlight {
    /// Counts one more request in `load`.
    pub(crate) fn new(load: Arc<ShardLoad>) -> Self {
        load.acquire();
        Self(load)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// How [`serve_jobs`] behaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServiceSettings {
    /// How long requests in flight may go on once the instance stops
    /// taking new ones.
    pub drain: Duration,
    /// Calls past their deadline an instance may carry before it is
    /// recycled.
    pub max_lingering: usize,
    /// Requests in the instance at once, each from its call until its
    /// response body ends (the app's `max_connections_per_instance`).
    pub max_requests: usize,
    /// How long the instance may be idle — no request in it or queued for
    /// it, no guest task left — before [`serve_jobs`] returns
    /// [`ServiceEnd::Hibernate`]; `None`: never.
    pub hibernate_after: Option<Duration>,
}

/// Why [`serve_jobs`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServiceEnd {
    /// The job channel closed (the app was replaced or removed) and the
    /// requests in flight finished (or the drain deadline passed).
    Closed,
    /// Too many calls outlived their deadline: the instance stopped
    /// taking requests and should be replaced by a fresh one.
    Recycle {
        /// Calls still running past their deadline.
        lingering: usize,
    },
    /// The instance was idle for [`ServiceSettings::hibernate_after`]: it
    /// may be dropped, and the next job wakes a fresh one.
    Hibernate,
}

/// Serves jobs from `jobs` on `service` (an instance in `accessor`'s store)
/// until the channel closes or the instance should be recycled; `load`
/// counts the jobs assigned to this instance. An error is a trap: the store
/// is poisoned, and the caller replaces the instance.
pub(crate) async fn serve_jobs<T: Send + 'static>(
    accessor: &Accessor<T>,
    service: &Service,
    view: View<T>,
    jobs: &mut mpsc::Receiver<HttpJob>,
    load: &ShardLoad,
    settings: ServiceSettings,
) -> wasmtime::Result<ServiceEnd> {
    let lingering = AtomicUsize::new(0);
    let slots = Arc::new(Semaphore::new(settings.max_requests.max(1)));
    let mut slot: Option<OwnedSemaphorePermit> = None;
    let mut calls = FuturesUnordered::new();
    let mut end = ServiceEnd::Closed;
    // One timer per instance, reset when it fires (never per request).
    let after = settings.hibernate_after;
    let idle_check = tokio::time::sleep(after.unwrap_or(Duration::MAX / 4));
    tokio::pin!(idle_check);
    loop {
        if lingering.load(Ordering::Relaxed) > settings.max_lingering {
            end = ServiceEnd::Recycle {
                lingering: lingering.load(Ordering::Relaxed),
            };
            break;
        }
        // A slot first, then a job: while the instance is full, jobs wait
        // in the channel and the store finishes the requests it has.
        let Some(held) = slot.take() else {
            tokio::select! {
                Some(result) = calls.next() => result?,
                permit = slots.clone().acquire_owned() => {
                    slot = Some(permit.expect("the semaphore is never closed"));
                }
            }
            continue;
        };
        tokio::select! {
            Some(result) = calls.next() => {
                slot = Some(held);
                result?;
            }
            job = jobs.recv() => match job {
                Some(job) => calls.push(call(accessor, service, view, job, held, &lingering)),
                None => break,
            },
            () = &mut idle_check, if after.is_some() => {
                slot = Some(held);
                // Idle: no call, no request (response bodies included)
                // in the instance or queued, no guest task left (work a
                // guest spawned, waiting on a timer or an outbound
                // request, included).
                let quiet = calls.is_empty() && jobs.is_empty() && no_guest_tasks(accessor);
                let quiet_for = quiet
                    .then(|| load.quiet_for(crate::tenant::hibernation::now_ms()))
                    .flatten();
                match next_check(quiet_for, after.unwrap_or_default()) {
                    None => {
                        end = ServiceEnd::Hibernate;
                        break;
                    }
                    Some(wait) => idle_check.as_mut().reset(Instant::now() + wait),
                }
            }
            // The gateway's memory ceiling needs room: hibernate now if
            // quiet, however recently used.
            () = load.hibernation_requested(), if after.is_some() => {
                slot = Some(held);
                if calls.is_empty() && jobs.is_empty() && no_guest_tasks(accessor) {
                    end = ServiceEnd::Hibernate;
                    break;
                }
            }
        }
    }
    // No new requests: those in flight go on until they end or the drain
    // deadline passes. Never drop a call in flight (its store would be
    // poisoned); returning leaves them to the store's owner. A recycled
    // instance waits only for the requests someone waits for: the calls
    // answered `504` are what it is recycled for.
    let recycling = matches!(end, ServiceEnd::Recycle { .. });
    let drained = async {
        loop {
            if recycling && lingering.load(Ordering::Relaxed) >= calls.len() {
                break;
            }
            match calls.next().await {
                Some(result) => result?,
                None => break,
            }
        }
        // Response bodies still streaming hold their request's place; jobs
        // still queued for this instance count too, and wait for the next.
        while load.active() > jobs.len() {
            let idle = load.wait_idle();
            if tokio::time::timeout(Duration::from_millis(10), idle)
                .await
                .is_ok()
            {
                break;
            }
        }
        wasmtime::Result::<()>::Ok(())
    };
    match tokio::time::timeout(settings.drain, drained).await {
        Ok(result) => result?,
        Err(_) => tracing::debug!("http: drain deadline passed with requests in flight"),
    }
    if recycling {
        end = ServiceEnd::Recycle {
            lingering: lingering.load(Ordering::Relaxed),
        };
    }
    Ok(end)
}

/// Whether no guest task of the store is left: wasmtime counts every task
/// from its start until it exits, after it returned too (a body written by
/// a spawned task, a timer awaited).
fn no_guest_tasks<T: 'static>(accessor: &Accessor<T>) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    accessor.poll_no_interesting_tasks(&mut cx).is_ready()
}

/// One request: starts `handle`, answers the job with its response (or
/// [`JobError`]), and, past the deadline, lets the call finish unanswered.
async fn call<T: Send + 'static>(
    accessor: &Accessor<T>,
    service: &Service,
    view: View<T>,
    job: HttpJob,
    slot: OwnedSemaphorePermit,
    lingering: &AtomicUsize,
) -> wasmtime::Result<()> {
    let HttpJob {
        request,
        deadline,
        reply,
        guard,
    } = job;
    if reply.is_closed() || Instant::now() >= deadline {
        // The client stopped waiting while the job was queued.
        let _ = reply.send(Err(JobError::Expired));
        return Ok(());
    }
    let func = service.wasi_http_handler().func_handle();
    let (started, io) = accessor.with(|mut store| -> wasmtime::Result<_> {
        let (request, io) =
            wasmtime_wasi_http::p3::Request::from_http(view(store.data_mut()).hooks, request);
        // Boxed: the future's type names the hooks' borrow, which ends here.
        let io: Pin<Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>> =
            Box::pin(io);
        let request = view(store.data_mut()).table.push(request)?;
        let started = func.start_call_concurrent(&mut store, (request,))?;
        Ok((started, io))
    })?;
    let handled = async {
        let (result,) = func.finish_call_concurrent(accessor, started).await?;
        match result {
            Ok(response) => accessor
                .with(|mut store| -> wasmtime::Result<_> {
                    let response = view(store.data_mut()).table.delete(response)?;
                    response.into_http_with_getter(&mut store, io, view)
                })
                .map(Ok),
            Err(code) => Ok(Err(format!("{code:?}"))),
        }
    };
    let mut handled = pin!(handled);
    let expiry = pin!(tokio::time::sleep_until(deadline));
    match select(handled.as_mut(), expiry).await {
        Either::Left((outcome, _)) => {
            let answer = match outcome? {
                Ok(response) => Ok(response.map(|body| {
                    use http_body_util::BodyExt;
                    Guarded::new(body, (guard, slot)).boxed_unsync()
                })),
                Err(code) => Err(JobError::GuestError(code)),
            };
            let _ = reply.send(answer);
        }
        Either::Right(((), _)) => {
            let _ = reply.send(Err(JobError::Expired));
            // The client has its answer: the request no longer holds a
            // place. The call goes on; whatever it returns is dropped (a
            // response's body with it).
            drop(guard);
            lingering.fetch_add(1, Ordering::Relaxed);
            let finished = handled.await;
            lingering.fetch_sub(1, Ordering::Relaxed);
            let _discarded = finished?;
        }
    }
    Ok(())
}
