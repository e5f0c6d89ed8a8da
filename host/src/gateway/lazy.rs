//! Lazy start (issue 18): a restart registers each deployed app without
//! loading it, and loads it on its first connection.
//!
//! At a restart, a persisted app whose record knows its world is
//! registered **dormant** ([`Gateway::restore_dormant`]): its slot, its
//! router entry, its own port (if it has one), its TLS and QUIC names —
//! but its component is neither read, compiled nor instantiated. So a
//! gateway with thousands of apps serves within seconds, and lists every
//! app (`dormant`) at once.
//!
//! The first connection to a dormant app fires its trigger
//! ([`crate::apps::dormant`]); the load ([`Gateway::load_on_first_use`])
//! reads and checks the blob and loads the component (from the compile
//! cache, normally) **without** the deploy lock, so that deploys of other
//! apps and the listing go on meanwhile; it then takes the lock and, if
//! the slot still holds the same dormant app, switches to the loaded one
//! through [`Gateway::switch_loaded`] (the connections that waited go to
//! it). A deploy, rollback or removal that came first wins: the lazy load
//! is dropped (the deploy handed the waiting connections on itself). A
//! load that fails marks the app `failed` with the reason, as a restart
//! that cannot start an app does, and closes the waiting connections.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow};

use super::deploy::read_blob_at;
use super::plan::{ListenerPlan, plan_listener};
use super::switch::{Announce, Slot, Target, close_listener};
use super::{DeployError, Gateway, LoadFacts, Source};
use crate::apps::app::App;
use crate::apps::dormant::LoadTrigger;
use crate::listen;
use crate::runtime::load::World;
use crate::state::VersionRecord;
use crate::tenant::logs::AppLog;

impl Gateway {
    /// Registers persisted `version` dormant, as the app of world `world`
    /// it was recorded as: router, own port, TLS and QUIC names, slot — no
    /// component read. Fails, changing nothing, when its settings no
    /// longer pass (a lowered ceiling, a name now someone else's) or its
    /// port cannot be bound.
    pub(super) async fn restore_dormant(
        &self,
        version: &VersionRecord,
        world: World,
    ) -> Result<(), DeployError> {
        let config = version.config.clone();
        let name = config.name.to_string();
        let mut slots = self.inner.slots.lock().await;
        self.check_app(&config, Source::Deployed, &slots)
            .map_err(DeployError::InvalidSettings)?;
        if let Some(https) = self.inner.https.get() {
            https.add_app(&config).map_err(DeployError::Tls)?;
            if let Some(quic) = https.quic().filter(|_| world.is_http()) {
                quic.serve_http(&name).map_err(DeployError::Tls)?;
            }
        }
        let listener = match plan_listener(None, config.listen) {
            ListenerPlan::Bind(addr) => {
                let bound = async {
                    let listener = listen::tcp::bind(addr).await?;
                    let bound = listener.local_addr()?;
                    anyhow::Ok((listener, bound))
                }
                .await
                .with_context(|| format!("app `{name}`"));
                match bound {
                    Ok(bound) => Some(bound),
                    Err(err) => {
                        if let Some(https) = self.inner.https.get() {
                            https.remove_app(&name);
                        }
                        return Err(DeployError::Bind(err));
                    }
                }
            }
            ListenerPlan::Keep(_) | ListenerPlan::NoPort => None,
        };
        let log = Arc::new(AppLog::new(&name));
        log.set_line_rate(config.limits.log_lines_per_second);
        let app = App::dormant(
            &name,
            log,
            &config.limits,
            self.inner.tracker.clone(),
            world,
            self.load_trigger(&name),
        );
        self.inner.router.insert(&name, app.clone());
        if let Some(https) = self.inner.https.get() {
            https.prepare_certificates(&config);
        }
        let (tcp, accept_task) = match listener {
            Some((listener, bound)) => {
                self.inner.own_ports.insert(bound.port());
                let router = self.inner.router.clone();
                let task = tokio::spawn(listen::tcp::serve(listener, name.clone(), router));
                (Some(bound), Some(task))
            }
            None => (None, None),
        };
        // The blob's size, for the status; a missing blob is found (and
        // reported) by the first connection's load.
        let size = std::fs::metadata(&config.component).map_or(0, |m| m.len() as usize);
        slots.insert(
            name,
            Slot {
                app,
                config,
                source: Source::Deployed,
                tcp,
                accept_task,
                version: version.number,
                digest: version.digest.clone(),
                deployed_at: version.deployed_at,
                load: LoadFacts {
                    cache_hit: false,
                    shared: false,
                    load_ms: 0,
                    size,
                    world,
                },
            },
        );
        Ok(())
    }

    /// What the first connection of dormant app `name` fires: a task that
    /// loads it. It holds the gateway weakly (the gateway holds the app).
    fn load_trigger(&self, name: &str) -> LoadTrigger {
        let gateway = Arc::downgrade(&self.inner);
        let name = name.to_owned();
        Box::new(move || {
            let arrived = Instant::now();
            tokio::spawn(async move {
                if let Some(inner) = gateway.upgrade() {
                    Gateway { inner }.load_on_first_use(name, arrived).await;
                }
            });
        })
    }

    /// Loads dormant app `name`, whose first connection arrived at
    /// `arrived`, and switches to it; see the module documentation.
    async fn load_on_first_use(&self, name: String, arrived: Instant) {
        let (dormant, target) = {
            let slots = self.inner.slots.lock().await;
            let Some(slot) = slots.get(&name).filter(|s| s.app.as_dormant().is_some()) else {
                tracing::info!(
                    app = %name,
                    "the load on first use was dropped: a deploy, rollback or removal came first"
                );
                return;
            };
            let target = Target {
                config: slot.config.clone(),
                source: slot.source,
                digest: slot.digest.clone(),
                version: slot.version,
            };
            (slot.app.clone(), target)
        };
        // Read, checked and compiled without the deploy lock, in a task of
        // its own: a panic (a bug) fails this app's load, nothing else.
        let gateway = self.clone();
        let config = target.config.clone();
        let (digest, number) = (target.digest.clone(), target.version);
        let loading = tokio::spawn(async move {
            let path = config.component.clone();
            let bytes = tokio::task::spawn_blocking(move || read_blob_at(&path, &digest, number))
                .await
                .map_err(|err| anyhow!("reading the component failed: {err}"))??;
            anyhow::Ok(gateway.load(&config, Arc::new(bytes)).await?)
        });
        let loaded = match loading.await {
            Ok(result) => result,
            Err(err) => Err(anyhow!(
                "the gateway failed while loading it ({err}); this is a bug in sockgate, \
                 please report it"
            )),
        };
        let mut slots = self.inner.slots.lock().await;
        if !slots
            .get(&name)
            .is_some_and(|s| Arc::ptr_eq(&s.app, &dormant))
        {
            // A deploy, rollback or removal won while this loaded: it
            // handed the waiting connections on (or closed them).
            tracing::info!(
                app = %name,
                "the load on first use was dropped: a deploy, rollback or removal came first"
            );
            return;
        }
        let switched = match loaded {
            Ok(loaded) => {
                let announce = Announce::LoadedOnFirstUse(arrived.elapsed());
                self.switch_loaded(&mut slots, target, loaded, None, announce)
                    .await
                    .map_err(anyhow::Error::new)
            }
            Err(err) => Err(err),
        };
        if let Err(err) = switched {
            self.fail_dormant(&mut slots, &name, number, format!("{err:#}"))
                .await;
        }
    }

    /// Dormant app `name` (at `version`) could not be loaded: it stops
    /// being served (its listener, router entry and names go; its waiting
    /// connections are closed) and is reported `failed` with `error`, its
    /// events kept.
    async fn fail_dormant(
        &self,
        slots: &mut BTreeMap<String, Slot>,
        name: &str,
        version: u64,
        error: String,
    ) {
        let Some(slot) = slots.remove(name) else {
            return;
        };
        self.inner.router.remove(name);
        if let Some(https) = self.inner.https.get() {
            https.remove_app(name);
        }
        if let Some(dormant) = slot.app.as_dormant() {
            dormant.resolve(None);
        }
        if let Some(task) = slot.accept_task {
            close_listener(task).await;
        }
        self.inner.own_ports.replace(self.listening_ports(slots));
        self.record_failure_in(slot.app.log().clone(), name, version, error);
    }
}
