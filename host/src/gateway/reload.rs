//! Reloading the configuration file while serving (`sockgate reload`,
//! `POST /v1/reload`, SIGHUP).
//!
//! A reload reads the file again and checks all of it before it changes
//! anything: syntax, fields, limits, names (`Config::load`, whose errors
//! say `FILE:LINE:COLUMN`), every new or changed app's component (read and
//! compiled: the compile lands in the cache, so the switch loads it at
//! once) and its claims on names and ports against the apps deployed
//! through the admin API. A file refused there changes nothing: the running
//! configuration keeps serving, and the refusal is a gateway event.
//!
//! Then it applies the differences through the path every deploy takes:
//! removed apps stop ([`Gateway::stop_serving`]: their connections
//! drain), changed apps switch to their new version ([`Gateway::switch`]:
//! connections open on the old version go on, new ones get the new), then
//! added apps start. Removals go first so that a port or a domain an app
//! gives up can be taken by another in the same reload. An app whose
//! settings and component are unchanged is not touched. A step can still
//! fail at that point (a port taken by another process since): the reload
//! stops there, says what it applied, and the rest serves as before.
//!
//! Apps deployed through the admin API are never touched by a reload; a
//! file that names one of them is refused (one name, one owner).
//!
//! Gateway-wide settings: `drain_secs` and `[ceilings]` are applied (to
//! versions started, and deploys made, from then on). The others need a
//! restart — listeners and their addresses (`admin`, `[tls]`, `[http]`,
//! `[quic]`), where state and compiled code live, the log's format, and the accounting every
//! open connection was admitted under (`max_connections`,
//! `reserved_connections_percent`, `client_ipv6_prefix`). A reload that
//! changes one of those applies the rest and says, in its answer and its
//! event, which settings wait for a restart: refusing would hold back every
//! app change for a setting that takes effect at the next restart anyway,
//! as the file on disk is what a restart reads.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, anyhow};
use serde::Serialize;

use super::{DeployError, Gateway, Source, digest_of, short};
use crate::base::locks::write;
use crate::config::{AppConfig, Config, app_location};
use crate::tenant::logs::EventKind;

/// The configuration file a gateway was started from, with the command
/// line's overrides, so that a reload reads what a restart would.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    admin: Option<SocketAddr>,
    state_dir: Option<PathBuf>,
    cluster: Option<String>,
}

impl ConfigFile {
    /// The file `path` (made absolute, so that messages name it whatever
    /// the reader's directory), with the command line's `--admin` and
    /// `--state-dir`, which win over the file's.
    pub fn new(path: PathBuf, admin: Option<SocketAddr>, state_dir: Option<PathBuf>) -> Self {
        Self {
            path: std::path::absolute(&path).unwrap_or(path),
            admin,
            state_dir,
            cluster: None,
        }
    }

    /// With the command line's `--cluster etcd://…`, which wins over the
    /// file's `cluster.endpoints`.
    pub fn with_cluster(mut self, url: Option<String>) -> Self {
        self.cluster = url;
        self
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and checks the file ([`Config::load`]) and applies the
    /// overrides.
    pub fn read(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(&self.path)?;
        if self.admin.is_some() {
            config.gateway.admin = self.admin;
        }
        if self.state_dir.is_some() {
            config.gateway.state_dir.clone_from(&self.state_dir);
        }
        if let Some(url) = &self.cluster {
            let Some(cluster) = config.cluster.as_mut() else {
                anyhow::bail!(
                    "--cluster {url} needs a [cluster] section in {} (peer_listen, token_file; \
                     see the README's \"Run a cluster\")",
                    self.path.display()
                );
            };
            cluster.set_endpoints_from_url(url)?;
        }
        Ok(config)
    }
}

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reloaded {
    /// The file read.
    pub file: PathBuf,
    /// Apps started.
    pub added: Vec<String>,
    /// Apps switched to a new version (new settings or component).
    pub changed: Vec<String>,
    /// Apps stopped (their connections drain).
    pub removed: Vec<String>,
    /// Apps left as they were.
    pub unchanged: Vec<String>,
    /// Gateway-wide settings applied (`drain_secs`, `[ceilings]`).
    pub settings: Vec<String>,
    /// Settings changed in the file that take effect only at a restart.
    pub needs_restart: Vec<String>,
}

/// Why a reload changed nothing, or stopped part-way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The gateway was started without a configuration file.
    #[error(
        "this gateway was started without a configuration file (`sockgate serve --config \
         FILE`): there is nothing to reload"
    )]
    NoConfigFile,
    /// The file is refused as a whole: nothing changed.
    #[error("{0:#}")]
    Refused(anyhow::Error),
    /// A step failed after the file was accepted: what `applied` lists
    /// serves, the rest serves as before.
    #[error("the reload stopped part-way ({applied}): {error:#}")]
    Partial {
        /// What was applied before the failure.
        applied: Box<Reloaded>,
        /// The failure.
        error: anyhow::Error,
    },
}

/// What `enable_reload` hands the gateway: the file and the configuration
/// it last applied (under an async lock: one reload at a time).
pub(super) struct Reloader {
    file: ConfigFile,
    applied: tokio::sync::Mutex<Config>,
}

/// One app to start or switch, with its component read.
struct Step {
    config: AppConfig,
    bytes: Arc<Vec<u8>>,
    added: bool,
}

impl Gateway {
    /// Lets `sockgate reload` and SIGHUP re-read `file`; `running` is the
    /// configuration the gateway started from, as the file gave it (before
    /// a port 0 was bound), against which a reload finds what changed.
    pub fn enable_reload(&self, file: ConfigFile, running: Config) {
        let _ = self.inner.reload.set(Reloader {
            file,
            applied: tokio::sync::Mutex::new(running),
        });
    }

    /// Re-reads the configuration file and applies it (see the module
    /// documentation); records the outcome as a gateway event.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let Some(reloader) = self.inner.reload.get() else {
            return Err(ReloadError::NoConfigFile);
        };
        let mut applied = reloader.applied.lock().await;
        let outcome = self.reload_from(&reloader.file, &mut applied).await;
        match &outcome {
            Ok(reloaded) => self.inner.events.event(
                None,
                EventKind::Reloaded {
                    summary: reloaded.to_string(),
                },
            ),
            Err(err) => self.inner.events.event(
                None,
                EventKind::ReloadRefused {
                    reason: err.to_string(),
                },
            ),
        }
        outcome
    }

    /// The checks, then the steps, of a reload; `applied` becomes the new
    /// file once it is accepted.
    async fn reload_from(
        &self,
        file: &ConfigFile,
        applied: &mut Config,
    ) -> Result<Reloaded, ReloadError> {
        let new = file.read().map_err(ReloadError::Refused)?;
        let (steps, mut reloaded) = self.plan_reload(file, &new).await?;
        reloaded.needs_restart = restart_only_changes(applied, &new);
        reloaded.settings = self.apply_settings(applied, &new);
        *applied = new;

        let mut done = Reloaded {
            file: reloaded.file.clone(),
            unchanged: reloaded.unchanged.clone(),
            settings: reloaded.settings.clone(),
            needs_restart: reloaded.needs_restart.clone(),
            ..Reloaded::default()
        };
        {
            let mut slots = self.inner.slots.lock().await;
            for name in &reloaded.removed {
                if slots.get(name).is_some_and(|s| s.source == Source::Config) {
                    self.stop_serving(&mut slots, name).await;
                    done.removed.push(name.clone());
                }
            }
        }
        for step in steps {
            let name = step.config.name.to_string();
            let digest = short(&digest_of(&step.bytes)).to_owned();
            if let Err(error) = self
                .switch(step.config, Source::Config, step.bytes, 0, None)
                .await
            {
                return Err(ReloadError::Partial {
                    applied: Box::new(done),
                    error: anyhow::Error::new(error),
                });
            }
            let change = if step.added { "added" } else { "changed" };
            if let Some(log) = self.log_of(&name) {
                log.event(
                    None,
                    EventKind::Reconfigured {
                        change,
                        component: digest,
                    },
                );
            }
            if step.added {
                done.added.push(name);
            } else {
                done.changed.push(name);
            }
        }
        Ok(done)
    }

    /// Checks every app of `new` against what serves and loads each new or
    /// changed component; returns the switches to make (changes first,
    /// then additions) and the names in each group. Changes nothing.
    async fn plan_reload(
        &self,
        file: &ConfigFile,
        new: &Config,
    ) -> Result<(Vec<Step>, Reloaded), ReloadError> {
        // What serves now: the file's apps (settings and digest) and the
        // deployed ones (settings), copied so no lock is held while
        // components compile.
        let (configured, deployed) = {
            let slots = self.inner.slots.lock().await;
            let mut configured = BTreeMap::new();
            let mut deployed = BTreeMap::new();
            for (name, slot) in slots.iter() {
                if slot.source == Source::Config {
                    configured.insert(name.clone(), (slot.config.clone(), slot.digest.clone()));
                } else {
                    deployed.insert(name.clone(), slot.config.clone());
                }
            }
            (configured, deployed)
        };
        let refused = |index: usize, error: anyhow::Error| {
            ReloadError::Refused(error.context(format!(
                "invalid configuration file {}",
                app_location(file.path(), index)
            )))
        };
        let mut reloaded = Reloaded {
            file: file.path().to_owned(),
            ..Reloaded::default()
        };
        let (mut changes, mut additions) = (Vec::new(), Vec::new());
        for (index, app) in new.apps.iter().enumerate() {
            let name = app.name.to_string();
            if deployed.contains_key(&name) {
                return Err(refused(
                    index,
                    anyhow!(
                        "app `{name}` is deployed through the admin API, and a reload does not \
                         touch deployed apps: remove it (`sockgate rm {name}`) or give the app \
                         of the file another name"
                    ),
                ));
            }
            if let Some(listen) = app.listen.filter(|addr| addr.port() != 0)
                && let Some((other, _)) = deployed.iter().find(|(_, d)| d.listen == Some(listen))
            {
                return Err(refused(
                    index,
                    anyhow!("app `{name}`: listen address {listen} is deployed app `{other}`'s"),
                ));
            }
            let others = deployed.iter().map(|(n, c)| (n.as_str(), c));
            self.check_app_among(app, Source::Config, others)
                .map_err(|err| refused(index, err))?;
            let bytes = std::fs::read(&app.component)
                .with_context(|| {
                    format!(
                        "app `{name}`: cannot read component {}",
                        app.component.display()
                    )
                })
                .map_err(|err| refused(index, err))?;
            let running = configured.get(&name);
            if let Some((config, digest)) = running
                && same_settings(config, app)
                && *digest == digest_of(&bytes)
            {
                reloaded.unchanged.push(name);
                continue;
            }
            let bytes = Arc::new(bytes);
            self.load(app, bytes.clone())
                .await
                .map_err(|err: DeployError| refused(index, anyhow::Error::new(err)))?;
            let step = Step {
                config: app.clone(),
                bytes,
                added: running.is_none(),
            };
            if step.added {
                additions.push(step);
            } else {
                changes.push(step);
            }
        }
        reloaded.removed = configured
            .keys()
            .filter(|name| !new.apps.iter().any(|app| app.name.as_str() == *name))
            .cloned()
            .collect();
        changes.append(&mut additions);
        Ok((changes, reloaded))
    }

    /// Applies the gateway-wide settings a reload may change; returns
    /// those that changed, as `name: old -> new`.
    fn apply_settings(&self, old: &Config, new: &Config) -> Vec<String> {
        let mut applied = Vec::new();
        if old.gateway.drain_secs != new.gateway.drain_secs {
            self.inner
                .drain_secs
                .store(new.gateway.drain_secs, Ordering::Relaxed);
            applied.push(format!(
                "gateway.drain_secs: {} -> {}",
                old.gateway.drain_secs, new.gateway.drain_secs
            ));
        }
        if json(&old.ceilings) != json(&new.ceilings) {
            *write(&self.inner.ceilings) = new.ceilings.clone();
            applied.push("[ceilings]".to_owned());
        }
        applied
    }
}

/// The settings of `new` that differ from `old` and need a restart.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let (o, n) = (&old.gateway, &new.gateway);
    let mut changed = Vec::new();
    let mut compare = |name: &str, differs: bool| {
        if differs {
            changed.push(name.to_owned());
        }
    };
    compare("gateway.admin", o.admin != n.admin);
    compare(
        "gateway.allow_remote_admin",
        o.allow_remote_admin != n.allow_remote_admin,
    );
    compare("gateway.state_dir", o.state_dir != n.state_dir);
    compare("gateway.cache_dir", o.cache_dir != n.cache_dir);
    compare("gateway.log_format", o.log_format != n.log_format);
    compare(
        "gateway.max_connections",
        o.max_connections != n.max_connections,
    );
    compare(
        "gateway.reserved_connections_percent",
        o.reserved_connections_percent != n.reserved_connections_percent,
    );
    compare(
        "gateway.client_ipv6_prefix",
        o.client_ipv6_prefix != n.client_ipv6_prefix,
    );
    // The listeners' settings have no equality of their own; their debug
    // form holds every field.
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    compare("[tls]", differs(&old.tls, &new.tls));
    compare("[http]", differs(&old.http, &new.http));
    compare("[quic]", differs(&old.quic, &new.quic));
    compare("[cluster]", differs(&old.cluster, &new.cluster));
    changed
}

/// Whether two versions of an app's settings are the same (component path
/// included; its content is compared by digest).
fn same_settings(a: &AppConfig, b: &AppConfig) -> bool {
    json(a) == json(b)
}

fn json(value: &impl Serialize) -> Option<serde_json::Value> {
    serde_json::to_value(value).ok()
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        for (what, names) in [
            ("added", &self.added),
            ("changed", &self.changed),
            ("removed", &self.removed),
            ("settings applied", &self.settings),
        ] {
            if !names.is_empty() {
                write!(f, "; {what}: {}", names.join(", "))?;
            }
        }
        if self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty() {
            write!(f, "; no app changed")?;
        }
        if !self.needs_restart.is_empty() {
            write!(
                f,
                "; changed but not applied until a restart: {}",
                self.needs_restart.join(", ")
            )?;
        }
        Ok(())
    }
}
