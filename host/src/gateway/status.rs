//! What the gateway tells about its apps: the types the admin API, the
//! dashboard, the metrics and `sockgate serve` read ([`AppStatus`],
//! [`FailedApp`], [`LoadFacts`], [`Source`]) and the [`Gateway`] methods
//! that produce them. Read-only: nothing here changes an app.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Gateway;
use super::switch::Slot;
use crate::apps::app::App;
use crate::base::locks::lock;
use crate::config::AppConfig;
use crate::runtime::load::World;
use crate::tenant::logs::AppLog;

/// Where an app comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The configuration file; changed by editing it and reloading it
    /// (`sockgate reload`, SIGHUP).
    Config,
    /// The admin API; persisted in the state directory.
    Deployed,
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

/// What loading a component found out.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LoadFacts {
    /// Whether the compiled component came from the cache (on disk, or
    /// shared in memory: `shared`).
    pub cache_hit: bool,
    /// Whether the compiled component is the one another app of the same
    /// bytes already had in memory: the two share it, and this app added
    /// no compiled code to the gateway's memory.
    pub shared: bool,
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
    /// The TCP address of its own port, if it has one (`null`: served by
    /// name only, on the shared TLS and QUIC listeners).
    pub tcp: Option<SocketAddr>,
    /// Where clients reach it, one URL per way in: `tcp://ADDR` (its own
    /// port; `http://ADDR/` for an HTTP app), `tls://NAME:PORT` and
    /// `quic://NAME:PORT` for each name it is served at over TLS and QUIC
    /// (`https://NAME:PORT/` for an HTTP app, which HTTP/3 reaches too).
    pub endpoints: Vec<String>,
    /// When the serving version was deployed (Unix seconds; for an app of
    /// the configuration file, when this version started).
    pub deployed_at: u64,
    /// Where the client got the serving version's component (e.g.
    /// `oci://REGISTRY/REPO:TAG@sha256:…`), if the deploy said.
    pub origin: Option<String>,
    /// Instances running (0 while hibernated).
    pub instances: usize,
    /// `awake`, or `hibernated`: every long-lived instance was dropped
    /// after the app's `hibernate_after_secs` idle, and the next
    /// connection wakes one. Apps of the per-connection and per-request
    /// worlds (`conn-handler-sync`, `wasi:http/proxy`) hold no instance
    /// while idle anyway and are always `awake`. `dormant`: restored at
    /// the gateway's start but not loaded yet (lazy start); its first
    /// connection loads it (`load` then tells how), and it is `awake`.
    pub hibernation: &'static str,
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
        lock(&self.inner.failed).values().cloned().collect()
    }

    /// The log and events of app `name`, running or failed to start.
    pub fn log_of(&self, name: &str) -> Option<Arc<AppLog>> {
        match self.app(name) {
            Some(app) => Some(app.log().clone()),
            None => lock(&self.inner.failed)
                .get(name)
                .map(|failed| failed.log.clone()),
        }
    }

    /// Compile cache hits and misses since start.
    pub fn cache_stats(&self) -> (u64, u64) {
        (
            self.inner.cache_hits.load(Ordering::Relaxed),
            self.inner.cache_misses.load(Ordering::Relaxed),
        )
    }

    /// How many distinct compiled components the apps hold: apps whose
    /// components have the same bytes share one
    /// ([`crate::runtime::images`]).
    pub fn component_images(&self) -> usize {
        self.inner.runtime.images.live()
    }

    /// The URLs app `slot` is reached at (see [`AppStatus::endpoints`]).
    fn endpoints(&self, slot: &Slot) -> Vec<String> {
        let http = slot.load.world.is_http();
        let mut out: Vec<String> = slot
            .tcp
            .map(|addr| match http {
                true => format!("http://{addr}/"),
                false => format!("tcp://{addr}"),
            })
            .into_iter()
            .collect();
        let Some(https) = self.inner.https.get() else {
            return out;
        };
        let tls_port = https.tls_addr().port();
        let quic_port = https.quic().map(|quic| quic.local_addr().port());
        for name in https.names_of(&slot.config) {
            if http {
                out.push(format!("https://{name}:{tls_port}/"));
                continue;
            }
            out.push(format!("tls://{name}:{tls_port}"));
            if let Some(port) = quic_port {
                out.push(format!("quic://{name}:{port}"));
            }
        }
        out
    }

    /// The status of the app `name` whose serving version is `slot`.
    fn describe(&self, name: &str, slot: &Slot) -> AppStatus {
        let counters = &slot.app.account().counters;
        let record = self
            .inner
            .state
            .as_ref()
            .filter(|_| slot.source == Source::Deployed)
            .and_then(|s| s.load_app(name).ok().flatten());
        let versions = record
            .as_ref()
            .map(|r| r.versions.iter().map(|v| v.number).collect())
            .unwrap_or_default();
        let serving = record
            .as_ref()
            .and_then(|r| r.versions.iter().find(|v| v.number == slot.version));
        AppStatus {
            name: name.to_owned(),
            source: slot.source,
            state: "running",
            version: slot.version,
            digest: slot.digest.clone(),
            component: slot.config.component.clone(),
            tcp: slot.tcp,
            endpoints: self.endpoints(slot),
            deployed_at: serving.map_or(slot.deployed_at, |v| v.deployed_at),
            origin: serving.and_then(|v| v.origin.clone()),
            instances: slot.app.instance_count(),
            hibernation: if slot.app.as_dormant().is_some() {
                "dormant"
            } else if slot.app.hibernated() {
                "hibernated"
            } else {
                "awake"
            },
            active_connections: slot.app.account().active(),
            accepted: counters.accepted.load(Ordering::Relaxed),
            refused: counters.refused(),
            load: slot.load,
            versions,
            config: slot.config.clone(),
        }
    }
}
