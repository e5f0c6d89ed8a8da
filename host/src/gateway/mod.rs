//! The gateway as a whole: the apps it serves, how they get there (the
//! configuration file at start, the admin API at any time), and how one
//! version replaces another without dropping a connection.
//!
//! Every app goes through one path (`Gateway::switch`, in `switch.rs`):
//! check its settings ([`AppConfig::check`], with the operator's ceilings for deployed apps)
//! and who owns its domains ([`NamePolicy`]), load and check the component
//! (compile included) while the old version keeps serving, bind the
//! listener, start the new version's instances, persist (for deployed
//! apps), then switch: the router points new connections at the new
//! version, and the old one drains (its connections go on until they close
//! or the drain deadline passes). Nothing changes, and nothing is
//! persisted, when any step before the switch fails; a bug (a panic) in
//! one of them fails that deploy, not the gateway.
//!
//! At start, a persisted app that cannot be started (a record damaged by
//! hand, settings over a lowered ceiling, a missing component) is skipped
//! and reported: in the log, as an event of the app, and as `failed` in
//! `sockgate ls`. The other apps serve. A persisted app whose record
//! names its world starts *dormant* (`lazy.rs`): registered at once,
//! loaded on its first connection — a component found missing or damaged
//! then is reported the same way.
//!
//! [`AppConfig::check`]: crate::config::AppConfig::check
//!
//! The files, by responsibility:
//!
//! - `mod.rs`: the [`Gateway`] handle, its start (configured apps, then
//!   the persisted ones) and what it hands to the listeners and the admin
//!   API.
//! - `switch.rs`: the one path to a new version, and the `Slot` that
//!   holds what an app runs (its lifecycle is documented there).
//! - `plan.rs`: the switch's decisions that need no I/O (the listener
//!   rule, version numbers), table-tested.
//! - `lazy.rs`: lazy start: persisted apps registered dormant at a
//!   restart, each loaded on its first connection.
//! - `deploy.rs`: deploy, rollback and remove, as the admin API asks.
//! - `reload.rs`: re-reading the configuration file (`sockgate reload`,
//!   SIGHUP): its apps added, changed and removed through the same switch.
//! - `error.rs`: [`DeployError`], why one of those changed nothing.
//! - `status.rs`: [`AppStatus`] and the other views operators read.

mod cluster;
mod deploy;
mod error;
mod lazy;
mod peers;
mod plan;
mod reload;
mod status;
mod switch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use anyhow::Result;
use tokio::sync::Mutex;

pub use self::cluster::{ClusterNode, ClusterStatus};
pub use self::deploy::MAX_COMPONENT_BYTES;
use self::deploy::read_blob;
pub use self::error::{Change, DeployError};
pub use self::reload::{ConfigFile, ReloadError, Reloaded};
pub use self::status::{AppStatus, FailedApp, LoadFacts, Source};
use self::switch::Slot;
use crate::apps::route::{NamePolicy, Router};
use crate::base::locks::lock;
use crate::config::Config;
use crate::limits::Ceilings;
use crate::listen;
use crate::runtime::Runtime;
use crate::state::StateDir;
use crate::tenant::conns::ConnTracker;
use crate::tenant::logs::{AppLog, EventKind};
use crate::tenant::outbound::OwnPorts;

/// A running gateway. Cheap to clone: the admin API holds one.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Arc<Runtime>,
    tracker: Arc<ConnTracker>,
    router: Arc<Router>,
    /// Where deployed apps persist; `None` without an admin API.
    state: Option<StateDir>,
    /// `gateway.drain_secs`: a reload may change it (versions started
    /// afterwards drain within the new value).
    drain_secs: AtomicU64,
    /// Serializes deploys and holds what each app is.
    slots: Mutex<BTreeMap<String, Slot>>,
    /// The admin API's port, once known.
    admin_port: std::sync::Mutex<Option<u16>>,
    /// The TLS, plain-HTTP and QUIC listeners' ports.
    tls_ports: Vec<u16>,
    /// Every port the gateway listens on (apps, admin, TLS, HTTP, QUIC):
    /// the live set each app's outbound policy consults at connect time.
    own_ports: Arc<OwnPorts>,
    /// TLS termination and SNI routing, once started (`[tls]`).
    https: std::sync::OnceLock<Arc<listen::tls::Https>>,
    /// Who may claim which custom domain; `None` without `[tls]`.
    names: Option<NamePolicy>,
    /// The most a deployed app may ask for (`[ceilings]`); a reload may
    /// change it (for deploys from then on).
    ceilings: std::sync::RwLock<Ceilings>,
    /// What happens to the gateway as a whole (reloads), beside each
    /// app's own events.
    events: Arc<AppLog>,
    /// The configuration file `sockgate reload` and SIGHUP re-read, once
    /// [`Gateway::enable_reload`] named it.
    reload: std::sync::OnceLock<reload::Reloader>,
    /// Persisted apps that could not be started, by name.
    failed: std::sync::Mutex<BTreeMap<String, FailedApp>>,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    /// `Alt-Svc` for HTTP apps' HTTP/1.1 and HTTP/2 answers, set once the
    /// QUIC endpoint serves HTTP/3.
    alt_svc: Arc<std::sync::OnceLock<http::HeaderValue>>,
    /// The cluster this node is in (`[cluster]`), once joined.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// Serializes the changes of cluster apps on this node: a change made
    /// here is applied before the watch's copy of it is looked at.
    cluster_changes: Mutex<()>,
    /// Components being fetched from peers ahead of a deploy.
    fetching: cluster::Fetching,
}

impl Gateway {
    /// Starts the gateway: restores deployed apps from the state directory
    /// (when there is an admin API), then deploys every app of the
    /// configuration. A configured app that is wrong fails the whole start,
    /// before anything is served; a persisted app that cannot be restored is
    /// reported and skipped.
    pub async fn start(config: Config) -> Result<Self> {
        config.validate()?;
        crate::tenant::conns::set_client_ipv6_prefix(config.gateway.client_ipv6_prefix);
        let runtime = Arc::new(Runtime::new(config.cache_dir()?)?);
        let memory_ceiling = config
            .gateway
            .max_guest_memory_mb
            .map(|mb| usize::try_from(mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX));
        let tracker = ConnTracker::with_memory(
            config.gateway.max_connections,
            config.gateway.reserved_connections_percent,
            crate::tenant::memory::GuestMemory::new(memory_ceiling),
        );
        tokio::spawn(tracker.clone().run_sweeper());
        let state = match config.gateway.admin {
            Some(_) => Some(StateDir::open(&config.state_dir())?),
            None => None,
        };
        // TLS: bound and certificates loaded before any app serves, started
        // once the configured apps are in the router.
        let tls = listen::tls::prepare(&config).await?;
        let tls_ports = tls.as_ref().map(|t| t.ports()).unwrap_or_default();
        // Protected before any guest runs: the admin port when configured
        // (a port 0 is added once bound, see `set_admin_port`).
        let own_ports = OwnPorts::new();
        let admin_port = config.gateway.admin.map(|a| a.port()).filter(|&p| p != 0);
        own_ports.replace(tls_ports.iter().copied().chain(admin_port));
        let gateway = Self {
            inner: Arc::new(Inner {
                runtime,
                tracker,
                router: Router::new(),
                state,
                drain_secs: AtomicU64::new(config.gateway.drain_secs),
                slots: Mutex::new(BTreeMap::new()),
                admin_port: std::sync::Mutex::new(admin_port),
                tls_ports,
                own_ports,
                https: std::sync::OnceLock::new(),
                names: config.tls.as_ref().map(|tls| tls.name_policy()),
                ceilings: std::sync::RwLock::new(config.ceilings.clone()),
                events: Arc::new(AppLog::new(GATEWAY_EVENTS)),
                reload: std::sync::OnceLock::new(),
                failed: std::sync::Mutex::new(BTreeMap::new()),
                cache_hits: AtomicU64::new(0),
                cache_misses: AtomicU64::new(0),
                alt_svc: Arc::default(),
                cluster: std::sync::OnceLock::new(),
                cluster_changes: Mutex::new(()),
                fetching: cluster::Fetching::default(),
            }),
        };
        for app in &config.apps {
            let bytes = std::fs::read(&app.component).map_err(|source| {
                anyhow::Error::new(crate::runtime::load::LoadError::Unreadable {
                    path: app.component.clone(),
                    source,
                })
                .context(format!("app `{}`", app.name))
            })?;
            gateway
                .switch(app.clone(), Source::Config, Arc::new(bytes), 0, None)
                .await?;
        }
        if let Some(tls) = tls {
            let https = tls.start(&gateway.inner.router, &config.apps)?;
            if let Some(quic) = https.quic() {
                // HTTP apps are served over HTTP/3 too: say so in their
                // HTTP/1.1 and HTTP/2 answers, and accept `h3` for them.
                let port = quic.local_addr().port();
                let _ = gateway
                    .inner
                    .alt_svc
                    .set(crate::http::answer::alt_svc(port));
                for app in &config.apps {
                    if gateway
                        .inner
                        .router
                        .get(&app.name)
                        .is_some_and(|a| a.http().is_some())
                    {
                        quic.serve_http(&app.name)?;
                    }
                }
            }
            let _ = gateway.inner.https.set(https);
        }
        gateway.restore().await;
        gateway.collect_unused_blobs_in_background();
        if let Some(settings) = &config.cluster {
            gateway.join_cluster(settings).await?;
        }
        Ok(gateway)
    }

    /// Removes, off the start's path, the components no record uses (those a
    /// crash between storing a component and recording its version left
    /// behind). Under the slot lock, like every collection, so that no
    /// deploy stores a component between the records read and the
    /// components listed.
    fn collect_unused_blobs_in_background(&self) {
        if self.inner.state.is_none() {
            return;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let slots = inner.slots.lock().await;
            let collecting = inner.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(state) = &collecting.state {
                    deploy::collect_blobs(state);
                }
            })
            .await;
            drop(slots);
        });
    }

    /// Brings back every app persisted in the state directory; one that
    /// cannot start is reported ([`FailedApp`]) and skipped.
    async fn restore(&self) {
        let Some(state) = &self.inner.state else {
            return;
        };
        let (records, problems) = match state.load_apps() {
            Ok(found) => found,
            Err(err) => {
                tracing::error!("cannot read deployed apps: {err:#}");
                return;
            }
        };
        for (name, problem) in problems {
            tracing::error!("skipping a damaged app record: {problem}");
            if let Some(name) = name {
                self.record_failure(&name, 0, format!("its record is damaged: {problem}"));
            }
        }
        for record in records {
            if self.inner.slots.lock().await.contains_key(&record.name) {
                tracing::warn!(
                    app = %record.name,
                    "a deployed app has the name of a configured app; the configured one serves"
                );
                continue;
            }
            let Some(version) = record.current_version().cloned() else {
                self.record_failure(
                    &record.name,
                    record.current,
                    format!("its record names no version {}", record.current),
                );
                continue;
            };
            if let Some(world) = version.world {
                if let Err(err) = self.restore_dormant(&version, world).await {
                    self.record_failure(&record.name, version.number, format!("{err:#}"));
                }
                continue;
            }
            // Recorded before worlds were: loaded now, as before lazy
            // start, and its world recorded for the next restart.
            let restored = async {
                let bytes = read_blob(&version)?;
                self.switch(
                    version.config.clone(),
                    Source::Deployed,
                    Arc::new(bytes),
                    version.number,
                    None,
                )
                .await?;
                anyhow::Ok(())
            };
            match restored.await {
                Ok(()) => self.record_world(state, &record.name, version.number).await,
                Err(err) => self.record_failure(&record.name, version.number, format!("{err:#}")),
            }
        }
    }

    /// Records in app `name`'s record the world of its version `number`,
    /// now loaded, so that the next restart starts it dormant; a failure
    /// only costs that, so it is logged.
    async fn record_world(&self, state: &StateDir, name: &str, number: u64) {
        let slots = self.inner.slots.lock().await;
        let Some(world) = slots.get(name).map(|slot| slot.load.world) else {
            return;
        };
        let recorded = state.load_app(name).and_then(|record| {
            let Some(mut record) = record else {
                return Ok(());
            };
            match record.versions.iter_mut().find(|v| v.number == number) {
                Some(version) if version.world.is_none() => version.world = Some(world),
                _ => return Ok(()),
            }
            state.save_app(&record)
        });
        if let Err(err) = recorded {
            tracing::warn!(app = %name, "cannot record the app's world (it will be loaded at \
                           the next start too, not on its first connection): {err:#}");
        }
    }

    /// Reports that persisted app `name` (at `version`) could not start:
    /// the log, an event of the app, and `failed` in the list of apps.
    fn record_failure(&self, name: &str, version: u64, error: String) {
        self.record_failure_in(Arc::new(AppLog::new(name)), name, version, error);
    }

    /// [`Gateway::record_failure`], the event going to `log` (the app's
    /// own, when it was served dormant until its load failed).
    fn record_failure_in(&self, log: Arc<AppLog>, name: &str, version: u64, error: String) {
        tracing::error!(app = %name, "cannot start the deployed app; skipping it: {error}");
        log.event(
            None,
            EventKind::NotStarted {
                reason: error.clone(),
            },
        );
        let failed = FailedApp {
            name: name.to_owned(),
            source: Source::Deployed,
            state: "failed",
            version,
            error,
            log,
        };
        lock(&self.inner.failed).insert(name.to_owned(), failed);
    }

    /// Records the admin API's port, which guests may then never reach
    /// (every app's policy reads the live set at connect time).
    pub fn set_admin_port(&self, port: u16) {
        *lock(&self.inner.admin_port) = Some(port);
        self.inner.own_ports.insert(port);
    }

    /// The ports the gateway listens on, as guests' policies see them.
    pub fn own_ports(&self) -> &Arc<OwnPorts> {
        &self.inner.own_ports
    }

    /// The admin API token (generated into the state directory on first
    /// use), when the gateway has a state directory.
    pub fn admin_token(&self) -> Option<Result<String>> {
        self.inner.state.as_ref().map(StateDir::admin_token)
    }

    /// Gateway-wide connection accounting.
    pub fn tracker(&self) -> &Arc<ConnTracker> {
        &self.inner.tracker
    }

    /// The apps by name, for listeners that route by server name.
    pub fn router(&self) -> &Arc<Router> {
        &self.inner.router
    }

    /// What happened to the gateway as a whole (reloads, refused or
    /// applied), newest last: `GET /v1/events`, `sockgate events`.
    pub fn events(&self) -> &Arc<AppLog> {
        &self.inner.events
    }

    /// TLS termination (listener addresses, certificates), if configured.
    pub fn https(&self) -> Option<&Arc<listen::tls::Https>> {
        self.inner.https.get()
    }
}

/// The name the gateway's own events are logged under.
const GATEWAY_EVENTS: &str = "(gateway)";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// SHA-256 of a component, hex.
fn digest_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    crate::state::hex(&sha2::Sha256::digest(bytes))
}
