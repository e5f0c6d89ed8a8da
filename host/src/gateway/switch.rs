//! Switching an app to a new version: the one path every app takes
//! (configured, restored, deployed, rolled back), and the [`Slot`] that
//! holds what an app runs.
//!
//! The steps, in order: check the settings and the names claimed, load the
//! component (the old version keeps serving meanwhile), take the listener
//! ([`plan_listener`]: kept or bound anew), start the new version's
//! instances, tell the TLS side, persist, then switch the router. Any step
//! before the switch that fails leaves everything as it was.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio::task::JoinHandle;

use super::plan::{ListenerPlan, Listening, plan_listener, version_number};
use super::{DeployError, Gateway, LoadFacts, Source, digest_of, short, unix_now};
use crate::apps::app::App;
use crate::base::locks::{lock, read};
use crate::config::AppConfig;
use crate::listen;
use crate::runtime::cache::CacheOutcome;
use crate::runtime::http::serving::{HttpSite, SiteMap};
use crate::runtime::instance::InstanceSettings;
use crate::runtime::load::{LoadedComponent, World, load_component_bytes};
use crate::tenant::logs::{AppLog, EventKind};
use crate::tenant::outbound::OutboundPolicy;

/// Persists a deploy or rollback once the new version is known to load
/// and its listener is bound (at the given address, recorded so that a
/// restart binds the same port; none for an app without a port of its
/// own) with the world its component implements (recorded so that a
/// restart can leave it dormant); returns the version number now current.
pub(super) type Persist = Box<dyn FnOnce(Option<SocketAddr>, World) -> anyhow::Result<u64> + Send>;

/// How the app's log announces a version that now serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Announce {
    /// `deployed version N (…)`: a deploy, rollback or restart.
    Deployed,
    /// `loaded on first use (…)`: a dormant app was loaded by its first
    /// connection, this long after it arrived.
    LoadedOnFirstUse(Duration),
}

/// What an app runs: its serving version and the listener that feeds it.
/// The gateway keeps one per app, by name, under its deploy lock.
///
/// # Lifecycle
///
/// A slot exists only while its app serves; the states of an app are:
///
/// - **Absent**: no slot. A switch that succeeds goes to *Serving*; one
///   that fails stays here (a persisted app that fails is also recorded as
///   a [`FailedApp`](super::FailedApp), until it is deployed anew, rolled
///   back or removed).
/// - **Serving** version *n*: the router hands new connections to
///   [`Slot::app`]; [`Slot::accept_task`] accepts on [`Slot::tcp`] (an
///   app without a port of its own has neither, and is reached by name
///   on the shared TLS and QUIC listeners only).
///   - A switch that succeeds replaces the slot (still *Serving*, version
///     *n′*). The old [`App`] is dropped from the router and drains: its
///     connections go on until they close or the drain deadline passes.
///     The accept task goes to the new slot when the listener is kept, and
///     is aborted when a new one was bound.
///   - A switch that fails leaves the slot as it was (version *n* serves).
///   - A removal goes to *Absent*: the accept task is aborted, the router
///     entry and TLS names go, and the app drains as above.
/// - **Dormant** version *n* (lazy start, `lazy.rs`): restored at the
///   gateway's start but not loaded; [`Slot::app`] is an `App::dormant`
///   whose connections wait, and the listener and names are as for
///   *Serving*. Its first connection's load goes to *Serving* version *n*
///   (through [`Gateway::switch_loaded`], unless the slot changed
///   meanwhile); a deploy or rollback goes to *Serving* as above, and the
///   waiting connections go to the new version; a removal, or a load that
///   fails (then recorded as a [`FailedApp`](super::FailedApp)), goes to
///   *Absent* and closes them.
///
/// There is no state in between: the deploy lock is held from the checks
/// to the replacement, so no one sees a slot half switched (a load on
/// first use compiles without it, and switches only if the slot still
/// holds the dormant app it loaded for).
pub(super) struct Slot {
    /// The version serving (in the router too).
    pub(super) app: Arc<App>,
    /// Its settings.
    pub(super) config: AppConfig,
    /// Who owns the app.
    pub(super) source: Source,
    /// The address its listener is bound to, if it has a port of its own.
    pub(super) tcp: Option<SocketAddr>,
    /// The accept loop of that listener.
    pub(super) accept_task: Option<JoinHandle<()>>,
    /// Its version number (0 for an app of the configuration file).
    pub(super) version: u64,
    /// SHA-256 of its component, hex.
    pub(super) digest: String,
    /// When it started serving (Unix seconds).
    pub(super) deployed_at: u64,
    /// What loading its component found out.
    pub(super) load: LoadFacts,
}

/// Stops the accept loop `task` and returns once its listener is closed:
/// aborting alone closes it whenever the runtime next drops the task, and
/// until then the kernel completes handshakes on it that are then reset.
/// A removal or a move that has returned refuses new connections.
pub(super) async fn close_listener(task: JoinHandle<()>) {
    task.abort();
    let _ = task.await;
}

/// What a switch makes serve, besides its loaded component.
pub(super) struct Target {
    /// The settings.
    pub(super) config: AppConfig,
    /// Who owns the app.
    pub(super) source: Source,
    /// SHA-256 of the component, hex.
    pub(super) digest: String,
    /// Its version number when known (0: the persist step gives it, or an
    /// app of the configuration file).
    pub(super) version: u64,
}

impl Slot {
    /// Its listener, as the listener rule sees it (none without a port).
    fn listening(&self) -> Option<Listening> {
        Some(Listening {
            asked: self.config.listen?,
            bound: self.tcp?,
        })
    }
}

impl Gateway {
    /// Loads, binds, starts, persists (via `persist`) and switches, in a
    /// task of its own: a panic in any step (a bug) fails this switch with
    /// an error, and neither the caller (the admin API, the start) nor the
    /// other apps. The slot lock is held throughout, so deploys of the
    /// gateway are serialized.
    pub(super) async fn switch(
        &self,
        config: AppConfig,
        source: Source,
        bytes: Arc<Vec<u8>>,
        version: u64,
        persist: Option<Persist>,
    ) -> Result<(), DeployError> {
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
                Err(DeployError::Internal(anyhow!(
                    "app `{name}`: the gateway failed while starting it ({what}); this is a \
                     bug in sockgate, please report it. Nothing was persisted"
                )))
            }
        }
    }

    /// The steps of [`Gateway::switch`]: the checks and the load, then
    /// [`Gateway::switch_loaded`].
    async fn switch_now(
        &self,
        config: AppConfig,
        source: Source,
        bytes: Arc<Vec<u8>>,
        version: u64,
        persist: Option<Persist>,
    ) -> Result<(), DeployError> {
        let mut slots = self.inner.slots.lock().await;
        self.check_app(&config, source, &slots)
            .map_err(DeployError::InvalidSettings)?;
        let digest = digest_of(&bytes);
        let loaded = self.load(&config, bytes).await?;
        let target = Target {
            config,
            source,
            digest,
            version,
        };
        self.switch_loaded(&mut slots, target, loaded, persist, Announce::Deployed)
            .await
    }

    /// The steps of a switch once the component is loaded (and checked):
    /// take the listener, start the instances, tell the TLS side, persist,
    /// switch the router. `slots` is the gateway's, locked by the caller
    /// since its checks; a dormant version replaced hands its waiting
    /// connections to the new one.
    pub(super) async fn switch_loaded(
        &self,
        slots: &mut BTreeMap<String, Slot>,
        target: Target,
        loaded: LoadedComponent,
        persist: Option<Persist>,
        announce: Announce,
    ) -> Result<(), DeployError> {
        let Target {
            config,
            source,
            digest,
            version,
        } = target;
        let name = config.name.to_string();

        // The listener: kept when the address is unchanged, else bound anew.
        let existing = slots.get(&name);
        let (new_listener, bound) =
            match plan_listener(existing.and_then(Slot::listening), config.listen) {
                ListenerPlan::Keep(bound) => (None, Some(bound)),
                ListenerPlan::Bind(addr) => {
                    let listener = listen::tcp::bind(addr)
                        .await
                        .with_context(|| format!("app `{name}`"))
                        .map_err(DeployError::Bind)?;
                    let bound = listener
                        .local_addr()
                        .map_err(|err| DeployError::Bind(err.into()))?;
                    (Some(listener), Some(bound))
                }
                ListenerPlan::NoPort => (None, None),
            };
        // Every app's guests are held to the new port before it serves.
        if let Some(bound) = bound {
            self.inner.own_ports.insert(bound.port());
        }

        let policy = OutboundPolicy::parse(&config.outbound)
            .with_context(|| format!("app `{name}`: invalid outbound rule"))
            .map_err(DeployError::InvalidSettings)?
            .with_own_ports(self.inner.own_ports.clone())
            .with_budget(&config.limits);
        let log = existing
            .map(|slot| slot.app.log().clone())
            .unwrap_or_else(|| Arc::new(AppLog::new(&name)));
        if loaded.world.is_http() && !config.alpn.is_empty() {
            return Err(DeployError::InvalidSettings(anyhow!(
                "app `{name}`: `alpn` does not apply to an HTTP app ({}): the gateway offers \
                 h2 and http/1.1 over TLS and h3 over QUIC itself; remove `alpn`",
                loaded.world.name()
            )));
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
        settings.drain = Duration::from_secs(self.inner.drain_secs.load(Ordering::Relaxed));
        settings.hibernate_after = config.limits.hibernate_after(source == Source::Deployed);
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
            https.add_app(&config).map_err(DeployError::Tls)?;
            if let Some(quic) = https.quic().filter(|_| loaded.world.is_http()) {
                quic.serve_http(&name).map_err(DeployError::Tls)?;
            }
        }
        let persisted = match persist {
            None => None,
            Some(persist) => match persist(bound, loaded.world) {
                Ok(number) => Some(number),
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
                    self.inner.own_ports.replace(self.listening_ports(slots));
                    return Err(DeployError::State(err));
                }
            },
        };
        let version = version_number(version, persisted);
        // The switch: from here on new connections get the new version.
        self.inner.router.insert(&name, app.clone());
        if let Some(https) = self.inner.https.get() {
            https.prepare_certificates(&config);
        }
        lock(&self.inner.failed).remove(&name);
        let old = slots.remove(&name);
        if let Some(dormant) = old.as_ref().and_then(|old| old.app.as_dormant()) {
            dormant.resolve(Some(app.clone()));
        }
        let (tcp, accept_task) = match (new_listener, bound, old) {
            (Some(listener), _, old) => {
                if let Some(task) = old.and_then(|old| old.accept_task) {
                    close_listener(task).await;
                }
                let task = tokio::spawn(listen::tcp::serve(
                    listener,
                    name.clone(),
                    self.inner.router.clone(),
                ));
                (bound, Some(task))
            }
            (None, Some(_), Some(old)) => (old.tcp, old.accept_task),
            (None, Some(_), None) => unreachable!("a kept listener implies an existing slot"),
            // No port of its own (any more): served by name only.
            (None, None, old) => {
                if let Some(task) = old.and_then(|old| old.accept_task) {
                    close_listener(task).await;
                }
                (None, None)
            }
        };
        match (announce, version) {
            (Announce::Deployed, Some(number)) => log.event(
                None,
                EventKind::Deployed {
                    version: format!(
                        "version {number} ({}, world {})",
                        short(&digest),
                        loaded.world.name()
                    ),
                },
            ),
            (Announce::Deployed, None) => {}
            (Announce::LoadedOnFirstUse(waited), _) => log.event(
                None,
                EventKind::Loaded {
                    wait_ms: waited.as_millis() as u64,
                    load_ms: loaded.load_time.as_millis() as u64,
                    cache_hit: loaded.cache.is_hit(),
                },
            ),
        }
        slots.insert(
            name,
            Slot {
                app,
                config,
                source,
                tcp,
                accept_task,
                version: version.unwrap_or(0),
                digest,
                deployed_at: unix_now(),
                load: LoadFacts {
                    cache_hit: loaded.cache.is_hit(),
                    shared: loaded.cache == CacheOutcome::Shared,
                    load_ms: loaded.load_time.as_millis() as u64,
                    size: loaded.size,
                    world: loaded.world,
                },
            },
        );
        // A listener that moved no longer needs protecting.
        self.inner.own_ports.replace(self.listening_ports(slots));
        Ok(())
    }

    /// Checks `config` as the gateway will run it: its settings (with the
    /// operator's ceilings for a deployed app) and its claims on names
    /// against the other apps in `slots`.
    pub(super) fn check_app(
        &self,
        config: &AppConfig,
        source: Source,
        slots: &BTreeMap<String, Slot>,
    ) -> anyhow::Result<()> {
        self.check_app_among(
            config,
            source,
            slots
                .iter()
                .map(|(name, slot)| (name.as_str(), &slot.config)),
        )
    }

    /// [`Gateway::check_app`], against the apps `others` (name and
    /// settings) instead of every app that serves.
    pub(super) fn check_app_among<'a>(
        &self,
        config: &AppConfig,
        source: Source,
        others: impl Iterator<Item = (&'a str, &'a AppConfig)> + Clone,
    ) -> anyhow::Result<()> {
        let ceilings = (source == Source::Deployed).then(|| read(&self.inner.ceilings).clone());
        config.check(ceilings.as_ref())?;
        if config.listen.is_none() {
            self.check_reachable_by_name(config)?;
        }
        let Some(policy) = &self.inner.names else {
            if !config.domains.is_empty() || !config.alpn.is_empty() {
                anyhow::bail!(
                    "app `{}`: `domains` and `alpn` apply to TLS, and this gateway has no \
                     [tls] section",
                    config.name
                );
            }
            return Ok(());
        };
        for domain in &config.domains {
            policy.check_claim(&config.name, domain, source == Source::Config)?;
            let owner = others.clone().find(|(name, other)| {
                *name != config.name.as_str() && other.domains.contains(domain)
            });
            if let Some((owner, _)) = owner {
                anyhow::bail!(
                    "app `{}`: domain `{domain}` is already app `{owner}`'s (a name serves one \
                     app): remove it from `{owner}` first",
                    config.name
                );
            }
        }
        Ok(())
    }

    /// Refuses an app without a port of its own (`listen`) that no name
    /// would reach: the gateway has no `[tls]`, or neither a base domain
    /// (`<name>.<domain>`) nor a custom domain of the app.
    fn check_reachable_by_name(&self, config: &AppConfig) -> anyhow::Result<()> {
        let name = &config.name;
        match &self.inner.names {
            None => anyhow::bail!(
                "app `{name}` has no port of its own (no `listen`) and this gateway has no \
                 [tls] section to serve it by name: give it a port (`sockgate deploy \
                 --port N`, or `listen` in the configuration), or configure [tls]"
            ),
            Some(policy) if !policy.has_base_domains() && config.domains.is_empty() => {
                anyhow::bail!(
                    "app `{name}` has no port of its own (no `listen`) and no name: this \
                     gateway's [tls] has no base domains, so `{name}.<domain>` does not exist; \
                     give it a port or a custom domain (`domains`)"
                )
            }
            Some(_) => Ok(()),
        }
    }

    /// Loads (compiles, or takes from the compile cache) the component of
    /// `config`, on a blocking thread, and counts the cache outcome.
    pub(super) async fn load(
        &self,
        config: &AppConfig,
        bytes: Arc<Vec<u8>>,
    ) -> Result<LoadedComponent, DeployError> {
        let runtime = self.inner.runtime.clone();
        let path = config.component.clone();
        let loaded =
            tokio::task::spawn_blocking(move || load_component_bytes(&runtime, &path, &bytes))
                .await
                .map_err(|err| {
                    DeployError::Internal(
                        anyhow::Error::new(err).context("component loader panicked"),
                    )
                })?
                .map_err(|source| DeployError::InvalidComponent {
                    app: config.name.to_string(),
                    source,
                })?;
        match loaded.cache {
            CacheOutcome::Hit | CacheOutcome::Shared => &self.inner.cache_hits,
            CacheOutcome::Miss => &self.inner.cache_misses,
        }
        .fetch_add(1, Ordering::Relaxed);
        Ok(loaded)
    }

    /// Every port the gateway listens on now: apps, admin, TLS/HTTP/QUIC.
    pub(super) fn listening_ports(&self, slots: &BTreeMap<String, Slot>) -> Vec<u16> {
        let mut ports: Vec<u16> = slots
            .values()
            .filter_map(|slot| slot.tcp)
            .map(|addr| addr.port())
            .collect();
        ports.extend(*lock(&self.inner.admin_port));
        ports.extend(self.inner.tls_ports.iter().copied());
        ports
    }
}
