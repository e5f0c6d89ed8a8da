//! The gateway as a whole: loads every configured app, binds its listener
//! and starts serving. Everything that can be wrong with the configuration
//! is found here, before anything is served, and reported with the app's
//! name and the file concerned.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::app::App;
use crate::config::Config;
use crate::conns::ConnTracker;
use crate::listen;
use crate::outbound::OutboundPolicy;
use crate::route::Router;
use crate::runtime::Runtime;
use crate::runtime::cache::CacheOutcome;
use crate::runtime::instance::InstanceSettings;
use crate::runtime::load::load_component;

/// A running gateway.
pub struct Gateway {
    apps: Vec<ServedApp>,
    tracker: Arc<ConnTracker>,
    router: Arc<Router>,
}

/// An app the gateway serves, with what an operator wants to know about it.
pub struct ServedApp {
    /// The running app.
    pub app: Arc<App>,
    /// The component file it was loaded from.
    pub component: PathBuf,
    /// The address its TCP listener is bound to (the real port when the
    /// configuration said 0).
    pub tcp: SocketAddr,
    /// Whether the compiled component came from the cache.
    pub cache: CacheOutcome,
    /// Compile (or cache load) time.
    pub load_time: Duration,
    /// Component size in bytes.
    pub size: usize,
}

impl Gateway {
    /// Loads and checks every app, binds every listener, and starts serving.
    /// Fails without serving anything if any app is wrong.
    pub async fn start(config: Config) -> Result<Self> {
        config.validate()?;
        let runtime = Arc::new(Runtime::new(config.cache_dir())?);
        let tracker = ConnTracker::new(config.gateway.max_connections);
        tokio::spawn(tracker.clone().run_sweeper());

        // Load every component and bind every listener before serving
        // anything: a mistake anywhere refuses the whole start.
        let mut prepared = Vec::new();
        for app_config in &config.apps {
            let name = &app_config.name;
            let loaded = {
                let runtime = runtime.clone();
                let path = app_config.component.clone();
                tokio::task::spawn_blocking(move || load_component(&runtime, &path))
                    .await
                    .context("component loader panicked")?
                    .with_context(|| format!("app `{name}`"))?
            };
            let listener = listen::tcp::bind(app_config.listen)
                .await
                .with_context(|| format!("app `{name}`"))?;
            prepared.push((app_config, loaded, listener));
        }
        let own_ports: Vec<u16> = prepared
            .iter()
            .filter_map(|(_, _, listener)| listener.local_addr().ok())
            .map(|addr| addr.port())
            .collect();

        let router = Router::new();
        let mut apps = Vec::new();
        for (app_config, loaded, listener) in prepared {
            let name = &app_config.name;
            let mut policy = OutboundPolicy::parse(&app_config.outbound)
                .with_context(|| format!("app `{name}`: invalid outbound rule"))?;
            policy.protect_ports(own_ports.iter().copied());
            let settings = InstanceSettings::new(
                name,
                loaded.pre,
                app_config.limits.clone(),
                policy,
                runtime.supervision,
                tracker.clone(),
            );
            let tcp = listener.local_addr()?;
            let app = App::start(name, settings, app_config.instance_count());
            tokio::spawn(listen::tcp::serve(listener, app.clone()));
            router.insert(name, app.clone());
            apps.push(ServedApp {
                app,
                component: app_config.component.clone(),
                tcp,
                cache: loaded.cache,
                load_time: loaded.load_time,
                size: loaded.size,
            });
        }
        Ok(Self {
            apps,
            tracker,
            router,
        })
    }

    /// The apps by name, for listeners that route by server name.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Gateway-wide connection accounting.
    pub fn tracker(&self) -> &Arc<ConnTracker> {
        &self.tracker
    }

    /// The apps being served, in configuration order.
    pub fn apps(&self) -> &[ServedApp] {
        &self.apps
    }
}
