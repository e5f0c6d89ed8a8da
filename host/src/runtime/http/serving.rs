//! An HTTP app as the gateway runs it: the [`Origin`] behind every
//! connection's request pipeline ([`crate::http::Front`]), and the
//! instances that serve its requests.
//!
//! - `wasi:http/service` (WASI 0.3): `instances` long-lived instances, each
//!   a task running one store after another ([`instance_loop`]) with the
//!   supervision, memory limit, trap isolation, drain and crash-loop
//!   back-off of `conn-handler` apps. A request goes to the instance with
//!   the fewest requests in flight, under `max_connections_per_instance`
//!   (there: requests per instance); when every instance is full the
//!   client gets `503`. A trap answers `500` to the requests of that
//!   instance only, and is recorded as an `instance-trapped` event.
//! - `wasi:http/proxy` (WASI 0.2): an instance per request from the
//!   per-connection engine's pool, within the app's `max_sync_instances`;
//!   a trap answers `500` to that request only (`request-trapped` event).
//!
//! The app's connections are served by [`HttpApp::serve_connection`]
//! (HTTP/1.1 and HTTP/2 over TLS or the app's cleartext port) and
//! [`HttpApp::serve_h3`]. A redeploy keeps them open: each request goes to
//! the version current when it arrives, and the old version's instances
//! drain (the requests they serve finish, within the drain deadline). When
//! the app is removed they are closed gracefully (HTTP/2 and HTTP/3
//! `GOAWAY`, HTTP/1.1 after the request in flight), and closed outright
//! once the drain deadline passes.

use std::future::ready;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};

use futures::FutureExt;
use futures::future::BoxFuture;
use http::HeaderValue;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use super::HttpPre;
use super::bodies::{from_wasi, to_wasi};
use super::proxy::{self, ProxyEnd};
use super::service::{HttpJob, InFlight, JobError, ServiceEnd, ServiceSettings, serve_jobs};
use crate::base::conn::Transport;
use crate::http::front::Deadline;
use crate::http::server::{self, Mode};
use crate::http::stats::{HttpStats, access_line};
use crate::http::{ConnMeta, Exchange, Front, Origin, Protocol, Refusal, Served};
use crate::runtime::host_state::{HostState, bound_store, http_view};
use crate::runtime::instance::dispose_after_trap;
use crate::runtime::instance::{Assigned, InstanceError, InstanceSettings};
use crate::runtime::load::GuestPre;
use crate::runtime::per_connection::PER_CONNECTION_INSTANCE;
use crate::runtime::slow_lane;
use crate::runtime::supervisor::{Activation, explain_trap, supervise, supervise_activations};
use crate::runtime::sync_streams::IoProgress;
use crate::tenant::conns::ShardLoad;
use crate::tenant::logs::EventKind;

/// Calls past their deadline (answered `504`, still running in the guest)
/// one WASI 0.3 instance may carry before it is replaced. Threat: a guest
/// that never answers some requests piling their tasks up in one store,
/// each holding guest memory and host table entries, forever.
pub const MAX_LINGERING_CALLS: usize = 64;

/// Requests one WASI 0.3 instance holds at once (fewer if the app's
/// `max_connections_per_instance` is lower), each from its call until its
/// response body has ended; more wait in the instance's queue (up to
/// `max_connections_per_instance`, then `503`). Bounds the store's table of
/// tasks, streams and futures (about nine entries per request) and the
/// backlog of requests whose ends wait behind new calls (see
/// `service.rs`). An app with more long-lived responses at once (event
/// streams) runs more `instances`.
pub const MAX_REQUESTS_IN_STORE: usize = 1024;

/// What an HTTP app asks of the routing table around it, which the
/// runtime never reads itself ([`crate::apps::route::Router`] implements
/// it): which version of an app is current, and which app a host selects.
pub trait SiteMap: Send + Sync {
    /// The current version of app `name` when it is served as an HTTP app
    /// (`None` once it was removed or redeployed as a raw app).
    fn current_http(&self, name: &str) -> Option<Arc<HttpApp>>;
    /// The name of the app that `host` (a request's `Host` or
    /// `:authority`, without port) selects, if any.
    fn app_for_host(&self, host: &str) -> Option<String>;
}

/// The site of an app started alone (tests, benchmarks): no other app,
/// no redeploys.
struct NoSite;

impl SiteMap for NoSite {
    fn current_http(&self, _: &str) -> Option<Arc<HttpApp>> {
        None
    }
    fn app_for_host(&self, _: &str) -> Option<String> {
        None
    }
}

/// What an HTTP app needs from the gateway around it.
#[derive(Clone)]
pub struct HttpSite {
    /// The routing table, to tell whether a request's host selects this
    /// app (else `421`) and which version is current. Weak: the table
    /// holds the app.
    pub router: Weak<dyn SiteMap>,
    /// `Alt-Svc` for HTTP/1.1 and HTTP/2 answers, set once the QUIC
    /// endpoint serves HTTP/3.
    pub alt_svc: Arc<OnceLock<HeaderValue>>,
    /// The app's request counters, shared by its versions.
    pub stats: Arc<HttpStats>,
}

impl Default for HttpSite {
    fn default() -> Self {
        Self {
            router: Weak::<NoSite>::new(),
            alt_svc: Arc::default(),
            stats: Arc::default(),
        }
    }
}

/// A running HTTP app (one version of it).
pub struct HttpApp {
    name: String,
    settings: Arc<InstanceSettings>,
    site: HttpSite,
    /// Held by the app's [`crate::apps::app::App`] (the version the router
    /// serves): once it is replaced or removed, this version takes no new
    /// requests (its instances drain) while its connections live on.
    workers: Weak<Workers>,
    /// Connections open to this version.
    connections: Arc<ShardLoad>,
}

/// Who serves a version's requests: its instances.
pub struct Workers(WorkerKind);

enum WorkerKind {
    /// `wasi:http/service`: long-lived instances.
    Service(Vec<Worker>),
    /// `wasi:http/proxy`: an instance per request.
    Proxy {
        pre: ProxyPre<HostState>,
        /// Requests (and so instances) in flight.
        active: Arc<ShardLoad>,
    },
}

/// The dispatching side of one long-lived instance.
struct Worker {
    jobs: mpsc::Sender<HttpJob>,
    /// Requests assigned to it and not finished (response body included).
    load: Arc<ShardLoad>,
}

impl HttpApp {
    /// Starts app `name` (`settings.pre` an HTTP component): `instances`
    /// instances for `wasi:http/service`, none ahead of time for
    /// `wasi:http/proxy`. Must be called within a tokio runtime. The
    /// caller holds the returned [`Workers`] for as long as this version
    /// is the app's current one.
    pub fn start(
        name: &str,
        settings: Arc<InstanceSettings>,
        instances: usize,
        site: HttpSite,
    ) -> (Arc<Self>, Arc<Workers>) {
        let workers = match &settings.pre {
            GuestPre::Http(HttpPre::Proxy(pre)) => WorkerKind::Proxy {
                pre: pre.clone(),
                active: Arc::new(ShardLoad::default()),
            },
            _ => {
                let per_instance = settings.limits.max_connections_per_instance.max(1);
                WorkerKind::Service(
                    (0..instances.max(1))
                        .map(|index| {
                            let (jobs, rx) = mpsc::channel(per_instance);
                            let load = Arc::new(ShardLoad::default());
                            let index = u32::try_from(index).unwrap_or(u32::MAX);
                            tokio::spawn(instance_loop(settings.clone(), index, rx, load.clone()));
                            Worker { jobs, load }
                        })
                        .collect(),
                )
            }
        };
        let workers = Arc::new(Workers(workers));
        let app = Arc::new(Self {
            name: name.to_owned(),
            settings,
            site,
            workers: Arc::downgrade(&workers),
            connections: Arc::new(ShardLoad::default()),
        });
        (app, workers)
    }

    /// The app's current version when it is another HTTP version than
    /// this one: requests of connections opened before a redeploy go
    /// there, so a keep-alive connection moves to the new version between
    /// two requests, and the old version's instances drain.
    fn successor(&self) -> Option<Arc<HttpApp>> {
        let http = self.site.router.upgrade()?.current_http(&self.name)?;
        (!std::ptr::eq(Arc::as_ptr(&http), self)).then_some(http)
    }

    /// Whether the app is still an HTTP app (this version or a newer one):
    /// after a redeploy, open connections stay; after a removal (or a
    /// redeploy as a raw app) they are closed gracefully.
    fn still_served(&self) -> bool {
        self.site
            .router
            .upgrade()
            .is_some_and(|router| router.current_http(&self.name).is_some())
    }

    /// The app's request counters.
    pub fn stats(&self) -> &Arc<HttpStats> {
        &self.site.stats
    }

    /// Instances running: the long-lived ones, or one per request in
    /// flight.
    pub fn instance_count(&self) -> usize {
        match self.workers.upgrade().as_deref() {
            Some(Workers(WorkerKind::Service(workers))) => workers.len(),
            Some(Workers(WorkerKind::Proxy { active, .. })) => active.active(),
            None => 0,
        }
    }

    /// The count of this version's open connections (a connection's
    /// record releases its place when it ends).
    pub fn connections(&self) -> &Arc<ShardLoad> {
        &self.connections
    }

    /// Serves one admitted connection (TLS, with its ALPN result, or the
    /// app's cleartext port) until it ends; once `retired` changes or
    /// closes (the version was replaced or removed), the connection is
    /// closed gracefully, and outright after the drain deadline.
    pub fn serve_connection(self: &Arc<Self>, assigned: Assigned, retired: watch::Receiver<()>) {
        let Assigned {
            info,
            reader,
            writer,
            guard,
        } = assigned;
        let tls = info.transport == Transport::Tls;
        let mode = Mode::for_alpn(info.alpn.as_deref(), tls);
        let meta = ConnMeta {
            peer: info.peer,
            local: info.local,
            server_name: if tls { info.server_name.clone() } else { None },
            protocol: if mode == Mode::Http2 {
                Protocol::Http2
            } else {
                Protocol::Http1
            },
        };
        let alt_svc = if tls {
            self.site.alt_svc.get().cloned()
        } else {
            None
        };
        let origin: Arc<dyn Origin> = self.clone();
        let front = Front::new(origin, self.settings.limits.http(), meta, alt_svc);
        let io = crate::http::io::ConnIo::new(reader, writer, guard.clone());
        let drain = self.settings.drain;
        let app = self.name.clone();
        let this = self.clone();
        tokio::spawn(async move {
            let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
            let signal = async move {
                this.retired(retired).await;
                let _ = shutdown_tx.send(());
            };
            let served = server::serve(io, mode, front, async move {
                let _ = shutdown_rx.await;
            });
            tokio::pin!(served);
            tokio::pin!(signal);
            let result = tokio::select! {
                result = &mut served => result,
                () = &mut signal => {
                    match tokio::time::timeout(drain, &mut served).await {
                        Ok(result) => result,
                        Err(_) => {
                            guard.close();
                            Ok(())
                        }
                    }
                }
            };
            if let Err(err) = result {
                tracing::debug!(app = %app, "http connection from {}: {err}", info.peer);
            }
        });
    }

    /// Resolves when this version's connections should close: the app was
    /// removed (or became a raw app). A redeploy as an HTTP app keeps them
    /// open: their next requests go to the new version.
    async fn retired(&self, mut retired: watch::Receiver<()>) {
        while retired.changed().await.is_ok() {}
        if self.still_served() {
            std::future::pending::<()>().await;
        }
    }

    /// Serves one admitted HTTP/3 connection (QUIC, ALPN `h3`) until it
    /// ends; once `retired` changes or closes, the gateway sends `GOAWAY`
    /// and lets the requests in flight finish, and closes the connection
    /// after the drain deadline.
    pub fn serve_h3(
        self: &Arc<Self>,
        conn: quinn::Connection,
        info: crate::base::conn::ConnInfo,
        record: crate::runtime::pump::ConnGuard,
        retired: watch::Receiver<()>,
    ) {
        let meta = ConnMeta {
            peer: info.peer,
            local: info.local,
            server_name: info.server_name.clone(),
            protocol: Protocol::Http3,
        };
        let origin: Arc<dyn Origin> = self.clone();
        let front = Front::new(origin, self.settings.limits.http(), meta, None);
        let drain = self.settings.drain;
        let app = self.name.clone();
        let this = self.clone();
        tokio::spawn(async move {
            let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
            let signal = async move {
                this.retired(retired).await;
                let _ = shutdown_tx.send(());
            };
            let served = crate::http::h3::serve(conn, front, record.clone(), async move {
                let _ = shutdown_rx.await;
            });
            tokio::pin!(served);
            tokio::pin!(signal);
            let result = tokio::select! {
                result = &mut served => result,
                () = &mut signal => {
                    match tokio::time::timeout(drain, &mut served).await {
                        Ok(result) => result,
                        Err(_) => {
                            record.close();
                            Ok(())
                        }
                    }
                }
            };
            if let Err(err) = result {
                tracing::debug!(app = %app, "http/3 connection from {}: {err}", info.peer);
            }
        });
    }

    /// Serves a WASI 0.3 request on the least busy instance.
    fn serve_on_instance(
        &self,
        workers: &[Worker],
        request: http::Request<crate::http::Body>,
    ) -> BoxFuture<'static, Result<Served, Refusal>> {
        let cap = self.settings.limits.max_connections_per_instance;
        let worker = workers
            .iter()
            .min_by_key(|w| w.load.active())
            .filter(|w| w.load.active() < cap);
        let Some(worker) = worker else {
            self.settings
                .account
                .counters
                .refused_instances_full
                .fetch_add(1, Ordering::Relaxed);
            return ready(Err(Refusal::Busy(format!(
                "every instance has {cap} requests in flight \
                 (limits.max_connections_per_instance)"
            ))))
            .boxed();
        };
        let deadline = deadline_of(&request, &self.settings);
        let (reply, answer) = oneshot::channel();
        let job = HttpJob {
            request: request.map(to_wasi),
            deadline,
            reply,
            guard: InFlight::new(worker.load.clone()),
        };
        if worker.jobs.try_send(job).is_err() {
            return ready(Err(Refusal::Gone)).boxed();
        }
        async move {
            match answer.await {
                Ok(Ok(response)) => Ok(response.map(from_wasi)),
                Ok(Err(JobError::GuestError(code))) => Err(Refusal::GuestError(code)),
                Ok(Err(JobError::Expired)) => Err(Refusal::Expired),
                Err(_) => Err(Refusal::Failed(
                    "the instance serving it trapped (see the app's instance-trapped event)"
                        .to_owned(),
                )),
            }
        }
        .boxed()
    }

    /// Serves a WASI 0.2 request on an instance of its own.
    fn serve_on_new_instance(
        &self,
        pre: &ProxyPre<HostState>,
        active: &Arc<ShardLoad>,
        request: http::Request<crate::http::Body>,
    ) -> BoxFuture<'static, Result<Served, Refusal>> {
        let settings = &self.settings;
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
            HostState::new(settings, PER_CONNECTION_INSTANCE),
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
        // The store's work may go on in the slow lane, on another thread.
        let run = slow_lane::run(meter, run);
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
}

impl Origin for HttpApp {
    fn serves_host(&self, host: &str) -> bool {
        self.site
            .router
            .upgrade()
            .is_some_and(|router| router.app_for_host(host).as_deref() == Some(self.name.as_str()))
    }

    fn serve(
        &self,
        request: http::Request<crate::http::Body>,
    ) -> BoxFuture<'static, Result<Served, Refusal>> {
        if let Some(successor) = self.successor() {
            return successor.serve(request);
        }
        match self.workers.upgrade().as_deref() {
            Some(Workers(WorkerKind::Service(workers))) => self.serve_on_instance(workers, request),
            Some(Workers(WorkerKind::Proxy { pre, active })) => {
                self.serve_on_new_instance(pre, active, request)
            }
            None => ready(Err(Refusal::Gone)).boxed(),
        }
    }

    fn record(&self, exchange: &Exchange) {
        self.site.stats.record(exchange);
        self.settings.log.access(access_line(exchange));
    }
}

/// The request's deadline, as the front set it.
fn deadline_of<B>(request: &http::Request<B>, settings: &InstanceSettings) -> Instant {
    request
        .extensions()
        .get::<Deadline>()
        .map(|deadline| deadline.0)
        .unwrap_or_else(|| Instant::now() + settings.limits.http().request_timeout())
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

/// Runs instance after instance of a WASI 0.3 app until the app is
/// dropped, with the crash-loop back-off of `conn-handler` apps.
async fn instance_loop(
    settings: Arc<InstanceSettings>,
    index: u32,
    mut jobs: mpsc::Receiver<HttpJob>,
    load: Arc<ShardLoad>,
) {
    let log = settings.log.clone();
    let mut backoff = crate::base::backoff::Backoff::default();
    loop {
        let started = std::time::Instant::now();
        let (outcome, returned) = run_instance(settings.clone(), index, jobs, load.clone()).await;
        jobs = returned;
        let kind = match outcome {
            Ok(ServiceEnd::Closed) => return,
            Ok(ServiceEnd::Recycle { lingering }) => {
                log.event(
                    Some(index),
                    EventKind::LimitHit {
                        limit: "http_request_timeout_ms",
                        detail: format!(
                            "{lingering} requests went on past their deadline (answered 504): \
                             the instance is replaced by a fresh one"
                        ),
                    },
                );
                continue;
            }
            Err(InstanceError::Instantiate(err)) => EventKind::InstanceFailed {
                reason: format!("{err:#}"),
            },
            Err(InstanceError::Trap {
                cause,
                reason,
                connections,
            }) => {
                settings.account.counters.traps[cause.index()].fetch_add(1, Ordering::Relaxed);
                EventKind::InstanceTrapped {
                    cause: cause.as_str(),
                    reason,
                    connections,
                }
            }
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

/// One WASI 0.3 instance: created, supervised, serving jobs until the
/// channel closes, it must be recycled, or it traps (`connections` in the
/// error then counts the requests it was serving). Returns `jobs` for the
/// next instance.
async fn run_instance(
    settings: Arc<InstanceSettings>,
    index: u32,
    mut jobs: mpsc::Receiver<HttpJob>,
    load: Arc<ShardLoad>,
) -> (Result<ServiceEnd, InstanceError>, mpsc::Receiver<HttpJob>) {
    let GuestPre::Http(HttpPre::Service(pre)) = &settings.pre else {
        let error = wasmtime::format_err!(
            "only a wasi:http/service component runs on long-lived HTTP instances"
        );
        return (Err(InstanceError::Instantiate(error)), jobs);
    };
    let pre = pre.clone();
    let mut store = Store::new(pre.engine(), HostState::new(&settings, index));
    bound_store(&mut store, settings.limits.max_connections_per_instance);
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
                    settings.log.event(Some(index), EventKind::InstanceStarted);
                    let service_settings = ServiceSettings {
                        drain: settings.drain,
                        max_lingering: MAX_LINGERING_CALLS,
                        max_requests: settings
                            .limits
                            .max_connections_per_instance
                            .min(MAX_REQUESTS_IN_STORE),
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
