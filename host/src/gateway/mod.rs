//! The gateway as a whole: the apps it serves, how they get there (the
//! configuration file at start, the admin API at any time), and how one
//! version replaces another without dropping a connection.
//!
//! Every app goes through one path ([`Gateway::switch`]): check its settings
//! ([`AppConfig::check`], with the operator's ceilings for deployed apps)
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
//! `sockgate ls`. The other apps serve.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::apps::app::App;
use crate::apps::route::{NamePolicy, Router};
use crate::base::names::check_app_name;
use crate::base::names::normalize_name;
use crate::config::{AppConfig, Config};
use crate::limits::Ceilings;
use crate::listen;
use crate::runtime::Runtime;
use crate::runtime::cache::CacheOutcome;
use crate::runtime::http::serving::{HttpSite, SiteMap};
use crate::runtime::instance::InstanceSettings;
use crate::runtime::load::{LoadedComponent, World, load_component_bytes};
use crate::state::{AppRecord, StateStore, VersionRecord};
use crate::tenant::conns::ConnTracker;
use crate::tenant::logs::{AppLog, EventKind};
use crate::tenant::outbound::{OutboundPolicy, OwnPorts};

/// Largest component accepted (a Python guest is about 22 MB).
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// A running gateway. Cheap to clone: the admin API holds one.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Arc<Runtime>,
    tracker: Arc<ConnTracker>,
    router: Arc<Router>,
    store: Option<StateStore>,
    drain: Duration,
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
    /// The most a deployed app may ask for (`[ceilings]`).
    ceilings: Ceilings,
    /// Persisted apps that could not be started, by name.
    failed: std::sync::Mutex<BTreeMap<String, FailedApp>>,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    /// `Alt-Svc` for HTTP apps' HTTP/1.1 and HTTP/2 answers, set once the
    /// QUIC endpoint serves HTTP/3.
    alt_svc: Arc<std::sync::OnceLock<http::HeaderValue>>,
}

/// A persisted app that could not be started (at start, or when rolled
/// back): reported in `sockgate ls` until it is deployed anew, rolled back
/// or removed.
#[derive(Clone, serde::Serialize)]
pub struct FailedApp {
    /// Name.
    pub name: String,
    /// Where it comes from (always `deployed`).
    pub source: Source,
    /// `failed`.
    pub state: &'static str,
    /// The version that could not start (0 if its record is unreadable).
    pub version: u64,
    /// Why.
    pub error: String,
    /// Its events (the failure), for `sockgate events`.
    #[serde(skip)]
    pub log: Arc<AppLog>,
}

/// Persists a deploy or rollback once the new version is known to load
/// and its listener is bound (at the given address, recorded so that a
/// restart binds the same port); returns the version number now current.
type Persist = Box<dyn FnOnce(SocketAddr) -> Result<u64> + Send>;

/// Where an app comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The configuration file; changed by editing it and restarting.
    Config,
    /// The admin API; persisted in the state directory.
    Deployed,
}

struct Slot {
    app: Arc<App>,
    config: AppConfig,
    source: Source,
    tcp: SocketAddr,
    accept_task: JoinHandle<()>,
    version: u64,
    digest: String,
    deployed_at: u64,
    load: LoadFacts,
}

/// What loading a component found out.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LoadFacts {
    /// Whether the compiled component came from the cache.
    pub cache_hit: bool,
    /// Compile (or cache load) time in milliseconds.
    pub load_ms: u64,
    /// Component size in bytes.
    pub size: usize,
    /// The WIT world the component implements (`conn-handler` or
    /// `conn-handler-sync`), detected when it was loaded.
    pub world: World,
}

/// An app as operators see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppStatus {
    /// Name.
    pub name: String,
    /// Where it comes from.
    pub source: Source,
    /// `running` (a persisted app that could not start is a
    /// [`FailedApp`]).
    pub state: &'static str,
    /// The version serving (1, 2, …).
    pub version: u64,
    /// SHA-256 of its component.
    pub digest: String,
    /// The component file (a blob in the state directory for deployed apps).
    pub component: PathBuf,
    /// The TCP address it is served on.
    pub tcp: SocketAddr,
    /// When the serving version was deployed (Unix seconds).
    pub deployed_at: u64,
    /// Instances running.
    pub instances: usize,
    /// Connections active now.
    pub active_connections: usize,
    /// Connections accepted since the version started.
    pub accepted: u64,
    /// Connections refused by a limit since the version started.
    pub refused: u64,
    /// Loading facts of the serving version.
    pub load: LoadFacts,
    /// Versions available for rollback (deployed apps only).
    pub versions: Vec<u64>,
    /// The app's settings.
    pub config: AppConfig,
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
        let tracker = ConnTracker::with_reserve(
            config.gateway.max_connections,
            config.gateway.reserved_connections_percent,
        );
        tokio::spawn(tracker.clone().run_sweeper());
        let store = match config.gateway.admin {
            Some(_) => Some(StateStore::open(&config.state_dir())?),
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
                store,
                drain: Duration::from_secs(config.gateway.drain_secs),
                slots: Mutex::new(BTreeMap::new()),
                admin_port: std::sync::Mutex::new(admin_port),
                tls_ports,
                own_ports,
                https: std::sync::OnceLock::new(),
                names: config.tls.as_ref().map(|tls| tls.name_policy()),
                ceilings: config.ceilings.clone(),
                failed: std::sync::Mutex::new(BTreeMap::new()),
                cache_hits: AtomicU64::new(0),
                cache_misses: AtomicU64::new(0),
                alt_svc: Arc::default(),
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
        Ok(gateway)
    }

    /// Brings back every app persisted in the state directory; one that
    /// cannot start is reported ([`FailedApp`]) and skipped.
    async fn restore(&self) {
        let Some(store) = &self.inner.store else {
            return;
        };
        let (records, problems) = match store.load_apps() {
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
            let restored = async {
                let bytes = read_blob(&version)?;
                self.switch(
                    version.config.clone(),
                    Source::Deployed,
                    Arc::new(bytes),
                    version.number,
                    None,
                )
                .await
            };
            if let Err(err) = restored.await {
                self.record_failure(&record.name, version.number, format!("{err:#}"));
            }
        }
    }

    /// Reports that persisted app `name` (at `version`) could not start:
    /// the log, an event of the app, and `failed` in the list of apps.
    fn record_failure(&self, name: &str, version: u64, error: String) {
        tracing::error!(app = %name, "cannot start the deployed app; skipping it: {error}");
        let log = Arc::new(AppLog::new(name));
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
        crate::base::locks::lock(&self.inner.failed).insert(name.to_owned(), failed);
    }

    /// Checks `config` as the gateway will run it: its settings (with the
    /// operator's ceilings for a deployed app) and its claims on names
    /// against the other apps in `slots`.
    fn check_app(
        &self,
        config: &AppConfig,
        source: Source,
        slots: &BTreeMap<String, Slot>,
    ) -> Result<()> {
        let ceilings = (source == Source::Deployed).then_some(&self.inner.ceilings);
        config.check(ceilings)?;
        let Some(policy) = &self.inner.names else {
            if !config.domains.is_empty() || !config.alpn.is_empty() {
                bail!(
                    "app `{}`: `domains` and `alpn` apply to TLS, and this gateway has no \
                     [tls] section",
                    config.name
                );
            }
            return Ok(());
        };
        for domain in &config.domains {
            policy.check_claim(&config.name, domain, source == Source::Config)?;
            let domain = normalize_name(domain);
            let owner = slots.iter().find(|(name, slot)| {
                *name != &config.name
                    && slot
                        .config
                        .domains
                        .iter()
                        .any(|d| normalize_name(d) == domain)
            });
            if let Some((owner, _)) = owner {
                bail!(
                    "app `{}`: domain `{domain}` is already app `{owner}`'s (a name serves one \
                     app): remove it from `{owner}` first",
                    config.name
                );
            }
        }
        Ok(())
    }

    /// Deploys `bytes` as a new version of app `config.name` (creating the
    /// app), persisting it; see the module documentation for the steps.
    pub async fn deploy(&self, mut config: AppConfig, bytes: Vec<u8>) -> Result<AppStatus> {
        check_app_name(&config.name)?;
        if bytes.len() > MAX_COMPONENT_BYTES {
            bail!(
                "the component is {} MiB, over the {} MiB limit",
                bytes.len() >> 20,
                MAX_COMPONENT_BYTES >> 20
            );
        }
        let store = self
            .inner
            .store
            .as_ref()
            .ok_or_else(|| anyhow!("this gateway has no state directory to deploy into"))?;
        {
            let slots = self.inner.slots.lock().await;
            if let Some(slot) = slots.get(&config.name)
                && slot.source == Source::Config
            {
                bail!(
                    "app `{}` is defined in the configuration file; change it there (or pick \
                     another name)",
                    config.name
                );
            }
            // Settings and names first: a refused deploy costs no compile.
            self.check_app(&config, Source::Deployed, &slots)?;
        }
        // Check the component before anything is stored: a refused upload
        // leaves no trace. (The compile lands in the compile cache, so the
        // switch below loads it at once.)
        config.component = PathBuf::from(format!("the uploaded component of `{}`", config.name));
        let bytes = Arc::new(bytes);
        self.load(&config, bytes.clone()).await?;
        let digest = digest_of(&bytes);
        config.component = store.blob_path(&digest);
        let version = VersionRecord {
            number: 0,
            digest,
            deployed_at: unix_now(),
            config: config.clone(),
        };
        let inner = self.inner.clone();
        let mut version = version;
        let blob = bytes.clone();
        // Runs under the slot lock, once the new version is started: the
        // blob, then the record, then the blobs no record needs any more.
        let persist = move |bound: SocketAddr| -> Result<u64> {
            let store = inner.store.as_ref().context("no state directory")?;
            store.put_blob(&blob)?;
            crate::base::failpoint::hit("deploy-after-blob");
            crate::base::failpoint::hit("deploy-before-record");
            let mut record = store.load_app(&version.config.name)?.unwrap_or(AppRecord {
                name: version.config.name.clone(),
                current: 0,
                versions: Vec::new(),
            });
            version.config.listen = bound;
            record.push(version);
            store.save_app(&record)?;
            crate::base::failpoint::hit("deploy-after-record");
            collect_blobs(store);
            Ok(record.current)
        };
        let name = config.name.clone();
        self.switch(config, Source::Deployed, bytes, 0, Some(Box::new(persist)))
            .await?;
        self.status(&name)
            .await
            .ok_or_else(|| anyhow!("the app vanished during its deploy"))
    }

    /// Switches app `name` back to its previous version.
    pub async fn rollback(&self, name: &str) -> Result<AppStatus> {
        let store = self
            .inner
            .store
            .as_ref()
            .ok_or_else(|| anyhow!("this gateway has no state directory"))?;
        let record = store
            .load_app(name)?
            .ok_or_else(|| anyhow!("no deployed app `{name}`"))?;
        let previous = record.previous().cloned().ok_or_else(|| {
            anyhow!(
                "app `{name}` has no version before version {}",
                record.current
            )
        })?;
        let bytes = read_blob(&previous)?;
        let inner = self.inner.clone();
        let number = previous.number;
        let persist = move |_bound: SocketAddr| -> Result<u64> {
            let store = inner.store.as_ref().context("no state directory")?;
            let mut record = record;
            record.current = number;
            store.save_app(&record)?;
            Ok(number)
        };
        self.switch(
            previous.config.clone(),
            Source::Deployed,
            Arc::new(bytes),
            number,
            Some(Box::new(persist)),
        )
        .await?;
        self.status(name)
            .await
            .ok_or_else(|| anyhow!("the app vanished during its rollback"))
    }

    /// Stops serving app `name` (its connections drain) and forgets it:
    /// its record, its custom domains (their certificates are no longer
    /// renewed) and the components no other record needs. A persisted app
    /// that failed to start is removed the same way.
    pub async fn remove(&self, name: &str) -> Result<()> {
        let mut slots = self.inner.slots.lock().await;
        let failed = crate::base::locks::lock(&self.inner.failed).contains_key(name);
        match slots.get(name) {
            None if !failed => bail!("no app `{name}`"),
            Some(slot) if slot.source == Source::Config => bail!(
                "app `{name}` is defined in the configuration file; remove it there and restart"
            ),
            _ => {}
        }
        if let Some(store) = &self.inner.store {
            store.remove_app(name)?;
            collect_blobs(store);
        }
        crate::base::locks::lock(&self.inner.failed).remove(name);
        if let Some(slot) = slots.remove(name) {
            slot.accept_task.abort();
            self.inner.router.remove(name);
            if let Some(https) = self.inner.https.get() {
                https.remove_app(name);
            }
            slot.app.log().event(None, EventKind::Removed);
        }
        self.inner.own_ports.replace(self.listening_ports(&slots));
        Ok(())
    }

    /// Loads, binds, starts, persists (via `persist`) and switches, in a
    /// task of its own: a panic in any step (a bug) fails this switch with
    /// an error, and neither the caller (the admin API, the start) nor the
    /// other apps. The slot lock is held throughout, so deploys of the
    /// gateway are serialized.
    async fn switch(
        &self,
        config: AppConfig,
        source: Source,
        bytes: Arc<Vec<u8>>,
        version: u64,
        persist: Option<Persist>,
    ) -> Result<()> {
        let name = config.name.clone();
        let gateway = self.clone();
        let task = tokio::spawn(async move {
            gateway
                .switch_now(config, source, bytes, version, persist)
                .await
        });
        match task.await {
            Ok(result) => result,
            Err(err) => {
                let what = match err.try_into_panic() {
                    Ok(panic) => panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".to_owned()),
                    Err(_) => "cancelled".to_owned(),
                };
                Err(anyhow!(
                    "app `{name}`: the gateway failed while starting it ({what}); this is a \
                     bug in sockgate, please report it. Nothing was persisted"
                ))
            }
        }
    }

    /// The steps of [`Gateway::switch`].
    async fn switch_now(
        &self,
        config: AppConfig,
        source: Source,
        bytes: Arc<Vec<u8>>,
        mut version: u64,
        persist: Option<Persist>,
    ) -> Result<()> {
        let name = config.name.clone();
        let mut slots = self.inner.slots.lock().await;
        self.check_app(&config, source, &slots)?;
        let digest = digest_of(&bytes);
        let loaded = self.load(&config, bytes).await?;

        // The listener: kept when the address is unchanged, else bound anew.
        let existing = slots.get(&name);
        let reuse = existing.filter(|slot| {
            slot.config.listen == config.listen
                || slot.tcp == config.listen
                || (config.listen.port() == 0 && slot.tcp.ip() == config.listen.ip())
        });
        let new_listener = match reuse {
            Some(_) => None,
            None => Some(
                listen::tcp::bind(config.listen)
                    .await
                    .with_context(|| format!("app `{name}`"))?,
            ),
        };

        let bound = match (&new_listener, existing) {
            (Some(listener), _) => listener.local_addr()?,
            (None, Some(slot)) => slot.tcp,
            (None, None) => config.listen,
        };
        // Every app's guests are held to the new port before it serves.
        self.inner.own_ports.insert(bound.port());

        let policy = OutboundPolicy::parse(&config.outbound)
            .with_context(|| format!("app `{name}`: invalid outbound rule"))?
            .with_own_ports(self.inner.own_ports.clone())
            .with_budget(&config.limits);
        let log = existing
            .map(|slot| slot.app.log().clone())
            .unwrap_or_else(|| Arc::new(AppLog::new(&name)));
        if loaded.world.is_http() && !config.alpn.is_empty() {
            bail!(
                "app `{name}`: `alpn` does not apply to an HTTP app ({}): the gateway offers \
                 h2 and http/1.1 over TLS and h3 over QUIC itself; remove `alpn`",
                loaded.world.name()
            );
        }
        if matches!(loaded.world, World::ConnHandlerSync | World::HttpProxy)
            && config.instances.is_some()
        {
            tracing::warn!(
                app = %name,
                "`instances` has no effect on a conn-handler-sync app: each connection gets \
                 an instance of its own (a wasi:http/proxy app: each request)"
            );
        }
        let mut settings = InstanceSettings::with_log(
            log.clone(),
            loaded.pre,
            config.limits.clone(),
            policy,
            self.inner.runtime.supervision,
            self.inner.tracker.clone(),
        );
        settings.drain = self.inner.drain;
        // Started before anything is persisted: a version that cannot
        // start is never recorded, so it can never fail a later start.
        let site = HttpSite {
            router: Arc::downgrade(&(self.inner.router.clone() as Arc<dyn SiteMap>)),
            alt_svc: self.inner.alt_svc.clone(),
            stats: existing
                .and_then(|slot| slot.app.http().map(|http| http.stats().clone()))
                .unwrap_or_default(),
        };
        let app = App::start_with_site(&name, settings, config.instance_count(), site);
        if let Some(https) = self.inner.https.get() {
            https.add_app(&config)?;
            if let Some(quic) = https.quic().filter(|_| loaded.world.is_http()) {
                quic.serve_http(&name)?;
            }
        }
        if let Some(persist) = persist {
            match persist(bound) {
                Ok(number) => version = number,
                Err(err) => {
                    // Nothing switched: the TLS side goes back to the
                    // version that keeps serving.
                    if let Some(https) = self.inner.https.get() {
                        match slots.get(&name) {
                            Some(old) => {
                                let _ = https.add_app(&old.config);
                            }
                            None => https.remove_app(&name),
                        }
                    }
                    self.inner.own_ports.replace(self.listening_ports(&slots));
                    return Err(err);
                }
            }
        }
        // The switch: from here on new connections get the new version.
        self.inner.router.insert(&name, app.clone());
        crate::base::locks::lock(&self.inner.failed).remove(&name);
        let (tcp, accept_task) = match (new_listener, slots.remove(&name)) {
            (Some(listener), old) => {
                if let Some(old) = old {
                    old.accept_task.abort();
                }
                let task = tokio::spawn(listen::tcp::serve(
                    listener,
                    name.clone(),
                    self.inner.router.clone(),
                ));
                (bound, task)
            }
            (None, Some(old)) => (old.tcp, old.accept_task),
            (None, None) => unreachable!("a reused listener implies an existing slot"),
        };
        if version > 0 {
            log.event(
                None,
                EventKind::Deployed {
                    version: format!(
                        "version {version} ({}, world {})",
                        short(&digest),
                        loaded.world.name()
                    ),
                },
            );
        }
        slots.insert(
            name,
            Slot {
                app,
                config,
                source,
                tcp,
                accept_task,
                version,
                digest,
                deployed_at: unix_now(),
                load: LoadFacts {
                    cache_hit: loaded.cache == CacheOutcome::Hit,
                    load_ms: loaded.load_time.as_millis() as u64,
                    size: loaded.size,
                    world: loaded.world,
                },
            },
        );
        // A listener that moved no longer needs protecting.
        self.inner.own_ports.replace(self.listening_ports(&slots));
        Ok(())
    }

    async fn load(&self, config: &AppConfig, bytes: Arc<Vec<u8>>) -> Result<LoadedComponent> {
        let runtime = self.inner.runtime.clone();
        let path = config.component.clone();
        let loaded =
            tokio::task::spawn_blocking(move || load_component_bytes(&runtime, &path, &bytes))
                .await
                .context("component loader panicked")?
                .with_context(|| format!("app `{}`", config.name))?;
        match loaded.cache {
            CacheOutcome::Hit => &self.inner.cache_hits,
            CacheOutcome::Miss => &self.inner.cache_misses,
        }
        .fetch_add(1, Ordering::Relaxed);
        Ok(loaded)
    }

    /// Every port the gateway listens on now: apps, admin, TLS/HTTP/QUIC.
    fn listening_ports(&self, slots: &BTreeMap<String, Slot>) -> Vec<u16> {
        let mut ports: Vec<u16> = slots.values().map(|s| s.tcp.port()).collect();
        ports.extend(
            *self
                .inner
                .admin_port
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        ports.extend(self.inner.tls_ports.iter().copied());
        ports
    }

    /// Records the admin API's port, which guests may then never reach
    /// (every app's policy reads the live set at connect time).
    pub fn set_admin_port(&self, port: u16) {
        *self
            .inner
            .admin_port
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(port);
        self.inner.own_ports.insert(port);
    }

    /// The ports the gateway listens on, as guests' policies see them.
    pub fn own_ports(&self) -> &Arc<OwnPorts> {
        &self.inner.own_ports
    }

    /// The status of every app, by name.
    pub async fn apps(&self) -> Vec<AppStatus> {
        let slots = self.inner.slots.lock().await;
        let mut out = Vec::new();
        for (name, slot) in slots.iter() {
            out.push(self.describe(name, slot));
        }
        out
    }

    /// The status of app `name`.
    pub async fn status(&self, name: &str) -> Option<AppStatus> {
        let slots = self.inner.slots.lock().await;
        slots.get(name).map(|slot| self.describe(name, slot))
    }

    /// The running app `name` (its log, events and counters).
    pub fn app(&self, name: &str) -> Option<Arc<App>> {
        self.inner.router.get(name)
    }

    /// Persisted apps that could not be started, by name.
    pub fn failed_apps(&self) -> Vec<FailedApp> {
        crate::base::locks::lock(&self.inner.failed)
            .values()
            .cloned()
            .collect()
    }

    /// The log and events of app `name`, running or failed to start.
    pub fn log_of(&self, name: &str) -> Option<Arc<AppLog>> {
        match self.app(name) {
            Some(app) => Some(app.log().clone()),
            None => crate::base::locks::lock(&self.inner.failed)
                .get(name)
                .map(|failed| failed.log.clone()),
        }
    }

    fn describe(&self, name: &str, slot: &Slot) -> AppStatus {
        let counters = &slot.app.account().counters;
        let versions = self
            .inner
            .store
            .as_ref()
            .filter(|_| slot.source == Source::Deployed)
            .and_then(|s| s.load_app(name).ok().flatten())
            .map(|r| r.versions.iter().map(|v| v.number).collect())
            .unwrap_or_default();
        AppStatus {
            name: name.to_owned(),
            source: slot.source,
            state: "running",
            version: slot.version,
            digest: slot.digest.clone(),
            component: slot.config.component.clone(),
            tcp: slot.tcp,
            deployed_at: slot.deployed_at,
            instances: slot.app.instance_count(),
            active_connections: slot.app.account().active(),
            accepted: counters.accepted.load(Ordering::Relaxed),
            refused: counters.refused(),
            load: slot.load,
            versions,
            config: slot.config.clone(),
        }
    }

    /// The admin API token (generated into the state directory on first
    /// use), when the gateway has a state directory.
    pub fn admin_token(&self) -> Option<Result<String>> {
        self.inner.store.as_ref().map(StateStore::admin_token)
    }

    /// Compile cache hits and misses since start.
    pub fn cache_stats(&self) -> (u64, u64) {
        (
            self.inner.cache_hits.load(Ordering::Relaxed),
            self.inner.cache_misses.load(Ordering::Relaxed),
        )
    }

    /// Gateway-wide connection accounting.
    pub fn tracker(&self) -> &Arc<ConnTracker> {
        &self.inner.tracker
    }

    /// The apps by name, for listeners that route by server name.
    pub fn router(&self) -> &Arc<Router> {
        &self.inner.router
    }

    /// TLS termination (listener addresses, certificates), if configured.
    pub fn https(&self) -> Option<&Arc<listen::tls::Https>> {
        self.inner.https.get()
    }
}

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

/// The component of a persisted version, checked against its digest: a
/// blob that was damaged or replaced is refused, never run.
fn read_blob(version: &VersionRecord) -> Result<Vec<u8>> {
    let path = &version.config.component;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let digest = digest_of(&bytes);
    if digest != version.digest {
        bail!(
            "{} does not hold the component of version {} (its SHA-256 is {}, the record says \
             {}): it was damaged or replaced; deploy the app anew",
            path.display(),
            version.number,
            short(&digest),
            short(&version.digest)
        );
    }
    Ok(bytes)
}

/// Deletes the components no app record needs any more; a failure only
/// costs disk space, so it is logged.
fn collect_blobs(store: &StateStore) {
    match store.collect_blobs() {
        Ok(0) => {}
        Ok(n) => tracing::info!("removed {n} component(s) no deployed version uses"),
        Err(err) => tracing::warn!("cannot collect unused components: {err:#}"),
    }
}
