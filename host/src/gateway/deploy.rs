//! The changes the admin API makes to deployed apps: deploy a new version,
//! roll back to the previous one, remove an app. Each checks what it can
//! before any work (a refused deploy costs no compile and leaves no
//! trace), then goes through [`Gateway::switch`] with a persist step that
//! records the change in the state directory once the new version runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};

use super::error::{Change, DeployError};
use super::switch::Slot;
use super::{AppStatus, Gateway, Source, digest_of, short, unix_now};
use crate::base::locks::lock;
use crate::config::AppConfig;
use crate::runtime::load::World;
use crate::state::{AppRecord, StateDir, VersionRecord};
use crate::tenant::logs::EventKind;

/// Largest component accepted (a Python guest is about 22 MB). Threat: an
/// upload that fills the gateway's memory and disk.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

impl Gateway {
    /// Deploys `bytes` as a new version of app `config.name` (creating the
    /// app), persisting it with `origin` (where the client got the
    /// component, if it said); see the module documentation for the steps.
    pub async fn deploy(
        &self,
        mut config: AppConfig,
        bytes: Vec<u8>,
        origin: Option<String>,
    ) -> Result<AppStatus, DeployError> {
        if bytes.len() > MAX_COMPONENT_BYTES {
            return Err(DeployError::TooLarge {
                size: bytes.len(),
                limit: MAX_COMPONENT_BYTES,
            });
        }
        let state = self
            .inner
            .state
            .as_ref()
            .ok_or(DeployError::NoStateDirectory {
                change: Change::Deploy,
            })?;
        {
            let slots = self.inner.slots.lock().await;
            if let Some(slot) = slots.get(config.name.as_str())
                && slot.source == Source::Config
            {
                return Err(DeployError::OwnedByConfig {
                    name: config.name.into(),
                    change: Change::Deploy,
                });
            }
            // Settings and names first: a refused deploy costs no compile.
            self.check_app(&config, Source::Deployed, &slots)
                .map_err(DeployError::InvalidSettings)?;
        }
        if self.inner.cluster.get().is_some() {
            return self
                .deploy_in_cluster(config, Arc::new(bytes), origin)
                .await;
        }
        // Check the component before anything is stored: a refused upload
        // leaves no trace. (The compile lands in the compile cache, so the
        // switch below loads it at once.)
        config.component = PathBuf::from(format!("the uploaded component of `{}`", config.name));
        let bytes = Arc::new(bytes);
        self.load(&config, bytes.clone()).await?;
        let digest = digest_of(&bytes);
        config.component = state.blob_path(&digest);
        let mut version = VersionRecord {
            number: 0,
            digest,
            deployed_at: unix_now(),
            config: config.clone(),
            origin,
            world: None,
        };
        let inner = self.inner.clone();
        let blob = bytes.clone();
        // Runs under the slot lock, once the new version is started: the
        // blob, then the record, then the blobs no record needs any more.
        let persist = move |bound: Option<SocketAddr>, world: World| -> anyhow::Result<u64> {
            let state = inner.state.as_ref().context("no state directory")?;
            state.put_blob(&blob)?;
            crate::base::failpoint::hit("deploy-after-blob");
            crate::base::failpoint::hit("deploy-before-record");
            let mut record = state.load_app(&version.config.name)?.unwrap_or(AppRecord {
                name: version.config.name.to_string(),
                current: 0,
                versions: Vec::new(),
            });
            version.config.listen = bound;
            version.world = Some(world);
            let forgotten = record.push(version);
            state.save_app(&record)?;
            crate::base::failpoint::hit("deploy-after-record");
            // Only a forgotten version can leave a component unused; a
            // collection reads every record, which at thousands of apps
            // made each deploy cost milliseconds per thousand apps.
            // (What a crash left behind is collected at the next start.)
            if forgotten.is_some() {
                collect_blobs(state);
            }
            Ok(record.current)
        };
        let name = config.name.clone();
        self.switch(config, Source::Deployed, bytes, 0, Some(Box::new(persist)))
            .await?;
        self.status(&name).await.ok_or_else(|| {
            DeployError::Internal(anyhow::anyhow!("the app vanished during its deploy"))
        })
    }

    /// Switches app `name` back to its previous version.
    pub async fn rollback(&self, name: &str) -> Result<AppStatus, DeployError> {
        if self.inner.cluster.get().is_some() {
            return self.rollback_in_cluster(name).await;
        }
        let state = self
            .inner
            .state
            .as_ref()
            .ok_or(DeployError::NoStateDirectory {
                change: Change::Rollback,
            })?;
        let record = state
            .load_app(name)
            .map_err(DeployError::State)?
            .ok_or_else(|| DeployError::NotDeployed {
                name: name.to_owned(),
            })?;
        let previous =
            record
                .previous()
                .cloned()
                .ok_or_else(|| DeployError::NoPreviousVersion {
                    name: name.to_owned(),
                    current: record.current,
                })?;
        let bytes = read_blob(&previous).map_err(DeployError::State)?;
        let inner = self.inner.clone();
        let number = previous.number;
        let persist = move |_bound: Option<SocketAddr>, world: World| -> anyhow::Result<u64> {
            let state = inner.state.as_ref().context("no state directory")?;
            let mut record = record;
            record.current = number;
            if let Some(version) = record.versions.iter_mut().find(|v| v.number == number) {
                version.world = Some(world);
            }
            state.save_app(&record)?;
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
        self.status(name).await.ok_or_else(|| {
            DeployError::Internal(anyhow::anyhow!("the app vanished during its rollback"))
        })
    }

    /// Stops serving app `name` (its connections drain) and forgets it:
    /// its record, its custom domains (their certificates are no longer
    /// renewed) and the components no other record needs. A persisted app
    /// that failed to start is removed the same way.
    pub async fn remove(&self, name: &str) -> Result<(), DeployError> {
        if self.inner.cluster.get().is_some() {
            let slots = self.inner.slots.lock().await;
            if slots.get(name).is_some_and(|s| s.source == Source::Config) {
                return Err(DeployError::OwnedByConfig {
                    name: name.to_owned(),
                    change: Change::Remove,
                });
            }
            drop(slots);
            return self.remove_in_cluster(name).await;
        }
        let mut slots = self.inner.slots.lock().await;
        let failed = lock(&self.inner.failed).contains_key(name);
        match slots.get(name) {
            None if !failed => {
                return Err(DeployError::NoSuchApp {
                    name: name.to_owned(),
                });
            }
            Some(slot) if slot.source == Source::Config => {
                return Err(DeployError::OwnedByConfig {
                    name: name.to_owned(),
                    change: Change::Remove,
                });
            }
            _ => {}
        }
        if let Some(state) = &self.inner.state {
            state.remove_app(name).map_err(DeployError::State)?;
            collect_blobs(state);
        }
        lock(&self.inner.failed).remove(name);
        self.stop_serving(&mut slots, name).await;
        Ok(())
    }

    /// Takes app `name` out of `slots` (the gateway's, locked): its
    /// listener closes, the router and the TLS side forget it, and its open
    /// connections drain. The one way an app stops, for a removal through
    /// the admin API and a reload alike; it returns once the listener is
    /// closed.
    pub(super) async fn stop_serving(&self, slots: &mut BTreeMap<String, Slot>, name: &str) {
        if let Some(slot) = slots.remove(name) {
            self.inner.router.remove(name);
            if let Some(https) = self.inner.https.get() {
                https.remove_app(name);
            }
            slot.app.log().event(None, EventKind::Removed);
            if let Some(dormant) = slot.app.as_dormant() {
                dormant.resolve(None);
            }
            if let Some(task) = slot.accept_task {
                super::switch::close_listener(task).await;
            }
        }
        self.inner.own_ports.replace(self.listening_ports(slots));
    }
}

/// The component of a persisted version, checked against its digest: a
/// blob that was damaged or replaced is refused, never run.
pub(super) fn read_blob(version: &VersionRecord) -> anyhow::Result<Vec<u8>> {
    read_blob_at(&version.config.component, &version.digest, version.number)
}

/// [`read_blob`], given the blob's path, the digest recorded and the
/// version's number.
pub(super) fn read_blob_at(path: &Path, recorded: &str, number: u64) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "cannot read {} (the component of version {number}); deploy the app anew",
            path.display()
        )
    })?;
    let digest = digest_of(&bytes);
    if digest != recorded {
        bail!(
            "{} does not hold the component of version {number} (its SHA-256 is {}, the \
             record says {}): it was damaged or replaced; deploy the app anew",
            path.display(),
            short(&digest),
            short(recorded)
        );
    }
    Ok(bytes)
}

/// Deletes the components no app record needs any more; a failure only
/// costs disk space, so it is logged.
pub(super) fn collect_blobs(state: &StateDir) {
    match state.collect_blobs() {
        Ok(0) => {}
        Ok(n) => tracing::info!("removed {n} component(s) no deployed version uses"),
        Err(err) => tracing::warn!("cannot collect unused components: {err:#}"),
    }
}
