//! An app being served: its instances (shards), and the choice of which
//! instance takes each new connection — or, for a `conn-handler-sync` app,
//! a task per connection with an instance of its own
//! ([`crate::runtime::per_connection`]).
//!
//! Each shard is a task that runs one instance at a time
//! ([`run_instance`]) on the loop every world shares ([`run_shard`]): when
//! the instance traps, the shard records why and starts a fresh one,
//! after a delay if it keeps crashing. A shard whose instance hibernated
//! (the app's `hibernate_after_secs`) waits for the next connection and
//! then starts a fresh one.
//! A new connection is admitted against the gateway's, the app's and the
//! per-IP caps ([`crate::tenant::conns`]), then goes to the shard with the fewest
//! active connections, or is refused when every shard is at its cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

use crate::apps::dormant::{Dormant, LoadTrigger, LoadedApp, Queued};
use crate::base::conn::Connection;
use crate::limits::AppLimits;
use crate::runtime::events::run_events_instance;
use crate::runtime::host_state::HostState;
use crate::runtime::http::serving::{HttpApp, HttpSite, Workers};
use crate::runtime::instance::{Assigned, Ended, InstanceSettings, run_instance};
use crate::runtime::load::{GuestPre, World};
use crate::runtime::per_connection::serve_connection;
use crate::runtime::shard::{InstanceEnd, ShardSide, run_shard};
use crate::runtime::sync_bindings::ConnHandlerSyncPre;
use crate::tenant::conns::{Admission, AppAccount, ConnTracker, Refused, ShardLoad, admit};
use crate::tenant::logs::{AppLog, EventKind};

/// A running app.
pub struct App {
    name: String,
    log: Arc<AppLog>,
    serving: Serving,
    max_connections_per_instance: usize,
    tracker: Arc<ConnTracker>,
    account: Arc<AppAccount>,
}

/// How an app's connections reach its guest.
enum Serving {
    /// `conn-handler`: long-lived instances, each serving many connections.
    Shards(Vec<Shard>),
    /// `conn-handler-sync`: an instance per connection, in a task per
    /// connection.
    PerConnection(PerConnection),
    /// A `wasi:http` app: the gateway speaks HTTP on its connections and
    /// hands the guest requests ([`crate::runtime::http::serving`]).
    Http {
        /// The app's version, held by its connections too.
        http: Arc<HttpApp>,
        /// The version's instances: held here only, so that they drain
        /// once the version is replaced or removed.
        _workers: Arc<Workers>,
        /// Dropped with the app (replaced or removed): its connections
        /// then close gracefully, within the drain deadline.
        alive: tokio::sync::watch::Sender<()>,
    },
    /// Not loaded yet (lazy start): connections queue until the gateway
    /// has loaded it and replaced this app in the router.
    Dormant(Dormant<App>),
}

/// What every connection task of a `conn-handler-sync` app shares.
struct PerConnection {
    settings: Arc<InstanceSettings>,
    pre: ConnHandlerSyncPre<HostState>,
    /// Connections (and so instances) open.
    active: Arc<ShardLoad>,
    /// Dropped with the app (replaced or removed): its open connections
    /// then have the drain deadline to finish.
    alive: tokio::sync::watch::Sender<()>,
}

/// The dispatching side of one shard.
struct Shard {
    tx: mpsc::Sender<Assigned>,
    /// Connections assigned to this shard and not yet finished (including
    /// those still queued for it).
    active: Arc<ShardLoad>,
    /// Set while the shard hibernates (no instance), by its loop.
    asleep: Arc<AtomicBool>,
}

impl App {
    /// Starts `instances` shards of the app described by `settings` and
    /// returns it, ready to take connections. Must be called within a tokio
    /// runtime.
    ///
    /// A `conn-handler-sync` app has no shards: `instances` is ignored, and
    /// each connection gets an instance of its own.
    pub fn start(name: &str, settings: InstanceSettings, instances: usize) -> Arc<Self> {
        Self::start_with_site(name, settings, instances, HttpSite::default())
    }

    /// Like [`App::start`], giving an HTTP app what it needs from the
    /// gateway around it (the routing table for `421`, `Alt-Svc`, its
    /// counters); other apps ignore `site`.
    pub fn start_with_site(
        name: &str,
        settings: InstanceSettings,
        instances: usize,
        site: HttpSite,
    ) -> Arc<Self> {
        let log = settings.log.clone();
        let account = settings.account.clone();
        let tracker = settings.tracker.clone();
        let max_connections_per_instance = settings.limits.max_connections_per_instance;
        let settings = Arc::new(settings);
        if let GuestPre::Http(_) = &*settings.pre {
            let (http, workers) = HttpApp::start(name, settings, instances, site);
            return Arc::new(Self {
                name: name.to_owned(),
                log,
                serving: Serving::Http {
                    http,
                    _workers: workers,
                    alive: tokio::sync::watch::channel(()).0,
                },
                max_connections_per_instance,
                tracker,
                account,
            });
        }
        if let GuestPre::PerConnection(pre) = &*settings.pre {
            return Arc::new(Self {
                name: name.to_owned(),
                log,
                serving: Serving::PerConnection(PerConnection {
                    pre: pre.clone(),
                    settings,
                    active: Arc::new(ShardLoad::default()),
                    alive: tokio::sync::watch::channel(()).0,
                }),
                max_connections_per_instance,
                tracker,
                account,
            });
        }
        let shards = (0..instances)
            .map(|index| {
                let (tx, rx) = mpsc::channel(max_connections_per_instance);
                let active = Arc::new(ShardLoad::default());
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                let asleep = Arc::new(AtomicBool::new(false));
                let shard = ShardSide {
                    index,
                    load: active.clone(),
                    asleep: asleep.clone(),
                    requeue: tx.downgrade(),
                };
                tokio::spawn(shard_loop(settings.clone(), shard, rx));
                Shard { tx, active, asleep }
            })
            .collect();
        Arc::new(Self {
            name: name.to_owned(),
            log,
            serving: Serving::Shards(shards),
            max_connections_per_instance,
            tracker,
            account,
        })
    }

    /// A dormant app (lazy start): registered under `name` but not loaded;
    /// its first connection calls `trigger`, and connections queue (at
    /// most `limits.max_connections`) until the gateway replaces it with
    /// the loaded version. `world` is the one recorded at its deploy.
    pub fn dormant(
        name: &str,
        log: Arc<AppLog>,
        limits: &AppLimits,
        tracker: Arc<ConnTracker>,
        world: World,
        trigger: LoadTrigger,
    ) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            account: AppAccount::new(log.clone(), limits),
            log,
            serving: Serving::Dormant(Dormant::new(world, limits.max_connections, trigger)),
            max_connections_per_instance: limits.max_connections_per_instance,
            tracker,
        })
    }

    /// The dormant state of an app not loaded yet (lazy start).
    pub fn as_dormant(&self) -> Option<&Dormant<App>> {
        match &self.serving {
            Serving::Dormant(dormant) => Some(dormant),
            _ => None,
        }
    }

    /// Whether it is an HTTP app (TLS offers `h2` and `http/1.1` for it,
    /// QUIC `h3`): answered from the recorded world while dormant.
    pub fn is_http(&self) -> bool {
        match &self.serving {
            Serving::Http { .. } => true,
            Serving::Dormant(dormant) => dormant.world().is_http(),
            Serving::Shards(_) | Serving::PerConnection(_) => false,
        }
    }

    /// The app's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The app's log and events.
    pub fn log(&self) -> &Arc<AppLog> {
        &self.log
    }

    /// The app's connection counts and counters.
    pub fn account(&self) -> &Arc<AppAccount> {
        &self.account
    }

    /// How many instances the app runs: its shards that are not
    /// hibernating, or for a `conn-handler-sync` app one per open
    /// connection.
    pub fn instance_count(&self) -> usize {
        match &self.serving {
            Serving::Shards(shards) => shards
                .iter()
                .filter(|s| !s.asleep.load(Ordering::Relaxed))
                .count(),
            Serving::PerConnection(per) => per.active.active(),
            Serving::Http { http, .. } => http.instance_count(),
            Serving::Dormant(_) => 0,
        }
    }

    /// Whether the app hibernates now: every one of its long-lived
    /// instances was dropped after its idle time, until the next
    /// connection. Apps of the per-connection and per-request worlds have
    /// no instance while idle anyway, and are never said to hibernate.
    pub fn hibernated(&self) -> bool {
        match &self.serving {
            Serving::Shards(shards) => shards.iter().all(|s| s.asleep.load(Ordering::Relaxed)),
            Serving::PerConnection(_) => false,
            Serving::Http { http, .. } => http.hibernated(),
            Serving::Dormant(_) => false,
        }
    }

    /// Connections active on the app.
    pub fn active_connections(&self) -> usize {
        match &self.serving {
            Serving::Shards(shards) => shards.iter().map(|s| s.active.active()).sum(),
            Serving::PerConnection(per) => per.active.active(),
            Serving::Http { http, .. } => http.connections().active(),
            Serving::Dormant(dormant) => dormant.queued(),
        }
    }

    /// The HTTP side of an HTTP app (`None` for raw-connection apps).
    pub fn http(&self) -> Option<&Arc<HttpApp>> {
        match &self.serving {
            Serving::Http { http, .. } => Some(http),
            _ => None,
        }
    }

    /// Hands a connection to the least busy instance, or refuses it (the
    /// connection is then dropped, which closes it). A dormant app queues
    /// it until it is loaded.
    pub fn dispatch(&self, conn: Connection) -> Result<(), Refused> {
        let peer = conn.info.peer.ip();
        if let Serving::Dormant(dormant) = &self.serving {
            return dormant.offer(Queued::Conn(conn), || {
                self.account.refuse(Refused::AppFull, peer)
            });
        }
        let admission = admit(&self.tracker, &self.account, peer)?;
        let shards = match &self.serving {
            Serving::Shards(shards) => shards,
            Serving::Dormant(_) => unreachable!("a dormant app queued the connection above"),
            Serving::Http { http, alive, .. } => {
                let assigned = assign(conn, admission, http.connections());
                http.serve_connection(assigned, alive.subscribe());
                return Ok(());
            }
            Serving::PerConnection(per) => {
                // The app's share of the gateway's per-connection instance
                // pool (`limits.max_sync_instances`), so one app's flood
                // leaves instances for the others.
                let quota = per.settings.limits.max_sync_instances;
                if per.active.active() >= quota {
                    drop(admission);
                    return Err(self.refuse_over_pool_share(quota, peer));
                }
                let assigned = assign(conn, admission, &per.active);
                let settings = per.settings.clone();
                let pre = per.pre.clone();
                let mut alive = per.alive.subscribe();
                tokio::spawn(async move {
                    let draining = async move { while alive.changed().await.is_ok() {} };
                    serve_connection(settings, pre, assigned, draining).await;
                });
                return Ok(());
            }
        };
        let shard = shards
            .iter()
            .min_by_key(|s| s.active.active())
            .filter(|s| s.active.active() < self.max_connections_per_instance);
        let Some(shard) = shard else {
            drop(admission);
            return Err(self.account.refuse(Refused::InstancesFull, peer));
        };
        let assigned = assign(conn, admission, &shard.active);
        // The channel holds as many entries as the instance cap allows, so
        // it is full or closed only while the app is shutting down; the
        // connection is then dropped (closed) and its counts released.
        shard
            .tx
            .try_send(assigned)
            .map_err(|_| self.account.refuse(Refused::InstancesFull, peer))
    }
}

impl App {
    /// Hands a whole QUIC connection that negotiated `h3` to an HTTP app,
    /// admitted against the same caps as a TCP connection (`info`
    /// describes it; `closer` aborts it), or refuses it.
    pub fn dispatch_h3(
        &self,
        conn: quinn::Connection,
        info: crate::base::conn::ConnInfo,
        closer: crate::base::conn::Closer,
    ) -> Result<(), Refused> {
        let peer = info.peer.ip();
        if let Serving::Dormant(dormant) = &self.serving
            && dormant.world().is_http()
        {
            let queued = Queued::H3 { conn, info, closer };
            return dormant.offer(queued, || self.account.refuse(Refused::AppFull, peer));
        }
        let Serving::Http { http, alive, .. } = &self.serving else {
            return Err(Refused::InstancesFull);
        };
        let admission = admit(&self.tracker, &self.account, peer)?;
        http.connections().acquire();
        let record = admission.finish(info.clone(), http.connections().clone(), closer);
        http.serve_h3(conn, info, record, alive.subscribe());
        Ok(())
    }

    /// Records a connection refused at the app's share of the
    /// per-connection instance pool.
    fn refuse_over_pool_share(&self, quota: usize, peer: std::net::IpAddr) -> Refused {
        self.account
            .counters
            .refused_instances_full
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.log.event(
            None,
            EventKind::LimitHit {
                limit: "max_sync_instances",
                detail: format!(
                    "refused a connection from {peer}: the app has {quota} instances (one per \
                     connection) of the {} that all conn-handler-sync apps share",
                    crate::runtime::engine::PER_CONNECTION_POOL
                ),
            },
        );
        Refused::InstancesFull
    }
}

/// A dormant app's queued connections go to the version loaded for it as
/// any new connection would.
impl LoadedApp for App {
    fn dispatch(&self, conn: Connection) -> Result<(), Refused> {
        App::dispatch(self, conn)
    }

    fn dispatch_h3(
        &self,
        conn: quinn::Connection,
        info: crate::base::conn::ConnInfo,
        closer: crate::base::conn::Closer,
    ) -> Result<(), Refused> {
        App::dispatch_h3(self, conn, info, closer)
    }
}

/// Runs instance after instance for one shard until the app is dropped
/// ([`run_shard`]), each in the app's world: the event world's runner, or
/// the stream worlds' one.
async fn shard_loop(
    settings: Arc<InstanceSettings>,
    shard: ShardSide<Assigned>,
    rx: mpsc::Receiver<Assigned>,
) {
    let (index, active) = (shard.index, shard.load.clone());
    let runner = settings.clone();
    run_shard(settings, shard, rx, move |rx, woke| {
        let (settings, active) = (runner.clone(), active.clone());
        async move {
            let (outcome, rx) = if let GuestPre::Events(_) = &*settings.pre {
                run_events_instance(settings.clone(), index, rx, woke).await
            } else {
                run_instance(settings.clone(), index, rx, active, woke).await
            };
            let end = outcome.map(|ended| match ended {
                Ended::Closed => InstanceEnd::Closed,
                Ended::Hibernate => InstanceEnd::Hibernated,
            });
            (end, rx)
        }
    })
    .await;
}

/// Gives an admitted connection its place in `active` (a shard's or the
/// per-connection instances' count) and the guard that releases every
/// count it holds once the connection is done.
pub(crate) fn assign(conn: Connection, admission: Admission, active: &Arc<ShardLoad>) -> Assigned {
    active.acquire();
    let Connection {
        info,
        reader,
        writer,
        closer,
    } = conn;
    let guard = admission.finish(info.clone(), active.clone(), closer);
    Assigned {
        info,
        reader,
        writer,
        guard,
    }
}
