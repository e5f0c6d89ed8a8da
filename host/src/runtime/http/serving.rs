//! An HTTP app as the gateway runs it: the [`Origin`] behind every
//! connection's request pipeline ([`crate::http::Front`]), which dispatches
//! each request to whatever serves the app's current version.
//!
//! - `wasi:http/service` (WASI 0.3): `instances` long-lived instances, each
//!   a task running one store after another ([`super::service_instance`])
//!   with the supervision, memory limit, trap isolation, drain and
//!   crash-loop back-off of `conn-handler` apps. A request goes to the
//!   instance with the fewest requests in flight, under
//!   `max_connections_per_instance` (there: requests per instance); when
//!   every instance is full the client gets `503`. A trap answers `500` to
//!   the requests of that instance only, and is recorded as an
//!   `instance-trapped` event.
//! - `wasi:http/proxy` (WASI 0.2): an instance per request from the
//!   per-connection engine's pool, within the app's `max_sync_instances`
//!   ([`super::per_request`]); a trap answers `500` to that request only
//!   (`request-trapped` event).
//!
//! The app's connections are served by [`HttpApp::serve_connection`]
//! (HTTP/1.1 and HTTP/2 over TLS or the app's cleartext port) and
//! [`HttpApp::serve_h3`]. A redeploy keeps them open: each request goes to
//! the version current when it arrives ([`SiteMap`], see [`super::site`]),
//! and the old version's instances drain (the requests they serve finish,
//! within the drain deadline). When the app is removed they are closed
//! gracefully (HTTP/2 and HTTP/3 `GOAWAY`, HTTP/1.1 after the request in
//! flight), and closed outright once the drain deadline passes.

use std::future::ready;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use super::HttpPre;
use super::bodies::{from_wasi, to_wasi};
use super::per_request::serve_on_new_instance;
use super::service::{HttpJob, InFlight, JobError};
use super::service_instance::instance_loop;
use crate::base::conn::Transport;
use crate::http::front::Deadline;
use crate::http::server::{self, Mode};
use crate::http::stats::{HttpStats, access_line};
use crate::http::{ConnMeta, Exchange, Front, Origin, Protocol, Refusal, Served};
use crate::runtime::host_state::HostState;
use crate::runtime::instance::{Assigned, InstanceSettings};
use crate::runtime::load::GuestPre;
use crate::runtime::shard::ShardSide;
use crate::tenant::conns::ShardLoad;

/// Re-exported where callers have always found them.
pub(crate) use super::site::{HttpSite, SiteMap};

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
    /// Set while it hibernates (no instance), by its loop.
    asleep: Arc<AtomicBool>,
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
        let workers = match &*settings.pre {
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
                            let asleep = Arc::new(AtomicBool::new(false));
                            let side = ShardSide {
                                index,
                                load: load.clone(),
                                asleep: asleep.clone(),
                                requeue: jobs.downgrade(),
                            };
                            tokio::spawn(instance_loop(settings.clone(), side, rx));
                            Worker { jobs, load, asleep }
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

    /// Instances running: the long-lived ones not hibernating, or one per
    /// request in flight.
    pub fn instance_count(&self) -> usize {
        match self.workers.upgrade().as_deref() {
            Some(Workers(WorkerKind::Service(workers))) => workers
                .iter()
                .filter(|w| !w.asleep.load(Ordering::Relaxed))
                .count(),
            Some(Workers(WorkerKind::Proxy { active, .. })) => active.active(),
            None => 0,
        }
    }

    /// Whether every long-lived instance hibernates (never for a
    /// `wasi:http/proxy` app, which has no instance while idle anyway).
    pub fn hibernated(&self) -> bool {
        match self.workers.upgrade().as_deref() {
            Some(Workers(WorkerKind::Service(workers))) => {
                workers.iter().all(|w| w.asleep.load(Ordering::Relaxed))
            }
            _ => false,
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
            server_name: if tls {
                info.server_name.as_deref().map(str::to_owned)
            } else {
                None
            },
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
            server_name: info.server_name.as_deref().map(str::to_owned),
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
                serve_on_new_instance(&self.settings, pre, active, request)
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
