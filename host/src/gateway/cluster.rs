//! Cluster mode on the gateway's side (`[cluster]`; the protocol is
//! documented in [`crate::cluster`]): deploys, rollbacks and removals go
//! through etcd, and every change seen there — this node's own included —
//! is applied here through the same [`Gateway::switch`] as any deploy.
//!
//! Apps of the configuration file stay this node's own: a cluster record
//! of the same name is ignored here (and reported). The state directory is
//! this node's cache of the cluster: each applied record is saved there, so
//! a node restarted while etcd is down serves what it last knew.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, anyhow};

use super::deploy::{collect_blobs, read_blob};
use super::error::DeployError;
use super::{AppStatus, Gateway, Source, digest_of, unix_now};
use crate::base::locks::lock;
use crate::cluster::{Change, Cluster};
use crate::config::AppConfig;
use crate::runtime::load::World;
use crate::state::{AppRecord, VersionRecord};

impl Gateway {
    /// Joins the cluster `[cluster]` describes: registers this node, serves
    /// its components to peers, and applies the cluster's records from now
    /// on (the first snapshot reconciles what the state directory held).
    pub(super) async fn join_cluster(
        &self,
        settings: &crate::config::ClusterSettings,
    ) -> anyhow::Result<()> {
        let state = self
            .inner
            .state
            .clone()
            .context("[cluster] needs the admin API's state directory")?;
        let compiled = self.inner.runtime.cache.dir().to_owned();
        let cluster = Cluster::connect(settings, state, compiled).await?;
        if let Some(acme) = self.acme() {
            // Before the watch starts: it reports this CA's changes only.
            acme.share_through(cluster.acme_store(acme.directory_url()));
        }
        let mut changes = cluster.changes();
        let _ = self.inner.cluster.set(cluster);
        self.publish_serving().await;
        let gateway = self.clone();
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                gateway.apply(change).await;
            }
        });
        Ok(())
    }

    /// The line `sockgate serve` prints about the cluster, if this node is
    /// in one.
    pub fn describe_cluster(&self) -> Option<String> {
        let cluster = self.inner.cluster.get()?;
        Some(format!(
            "cluster: node {} of the cluster in etcd at {} (peers fetch components from {})",
            cluster.node(),
            cluster.endpoints().join(","),
            cluster.peer_url()
        ))
    }

    /// The ACME manager, when certificates come from an ACME CA.
    fn acme(&self) -> Option<Arc<crate::certs::acme::AcmeManager>> {
        self.inner.https.get()?.certificates().acme().cloned()
    }

    /// Applies one change seen in etcd.
    async fn apply(&self, change: Change) {
        match change {
            Change::Certificate(name) => {
                if let Some(acme) = self.acme() {
                    acme.shared_changed(&name);
                }
                return;
            }
            Change::Challenge { id, answer } => return self.answer_challenge(id, answer),
            Change::Snapshot { records, why } => {
                tracing::info!(
                    "cluster: {why}: {} app(s) in the cluster; reconciling",
                    records.len()
                );
                let _changing = self.inner.cluster_changes.lock().await;
                let names: BTreeSet<String> = records.iter().map(|r| r.name.clone()).collect();
                for record in records {
                    self.apply_record_reporting(record).await;
                }
                let gone: Vec<String> = {
                    let slots = self.inner.slots.lock().await;
                    let failed = lock(&self.inner.failed);
                    slots
                        .iter()
                        .filter(|(_, slot)| slot.source == Source::Deployed)
                        .map(|(name, _)| name.clone())
                        .chain(failed.keys().cloned())
                        .filter(|name| !names.contains(name))
                        .collect()
                };
                for name in gone {
                    self.remove_locally(&name).await;
                }
                if let Some(acme) = self.acme() {
                    // Certificate changes may have been missed too.
                    acme.shared_changed_all();
                }
            }
            Change::App(record) => {
                let _changing = self.inner.cluster_changes.lock().await;
                self.apply_record_reporting(record).await;
            }
            Change::Removed(name) => {
                let _changing = self.inner.cluster_changes.lock().await;
                self.remove_locally(&name).await;
            }
            Change::Held {
                digest,
                node,
                compiled,
            } => return self.prefetch(digest, node, compiled),
        }
        self.publish_serving().await;
    }

    /// Answers (or stops answering) another node's ACME challenge, and
    /// tells it this node answers.
    fn answer_challenge(&self, id: String, answer: Option<crate::certs::acme::ChallengeAnswer>) {
        let Some(acme) = self.acme() else {
            return;
        };
        let published = answer.is_some();
        acme.learn_challenge(&id, answer);
        if let (true, Some(cluster)) = (published, self.inner.cluster.get()) {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                if let Err(err) = cluster.acknowledge_challenge(&id).await {
                    tracing::warn!("acme: cannot confirm challenge {id} to its orderer: {err}");
                }
            });
        }
    }

    /// Tells the cluster which version of each cluster app this node
    /// serves (`sockgate ls` on any node shows it).
    async fn publish_serving(&self) {
        let Some(cluster) = self.inner.cluster.get() else {
            return;
        };
        let serving = self
            .inner
            .slots
            .lock()
            .await
            .iter()
            .filter(|(_, slot)| slot.source == Source::Deployed)
            .map(|(name, slot)| (name.clone(), slot.version))
            .collect();
        cluster.set_serving(serving);
    }

    /// The cluster as this node sees it (`GET /v1/cluster`): `None` when
    /// the gateway is in no cluster.
    pub async fn cluster_status(&self) -> Option<ClusterStatus> {
        let cluster = self.inner.cluster.get()?;
        let (etcd, nodes) = match cluster.nodes().await {
            Ok(nodes) => ("reachable".to_owned(), nodes),
            Err(err) => (format!("unreachable: {err}"), Vec::new()),
        };
        // Every node's peer port probed at once: the lease says a node is
        // alive to etcd, the probe that this node can fetch from it.
        let health =
            futures::future::join_all(nodes.iter().map(|(_, info)| peer_health(&info.peer_url)))
                .await;
        Some(ClusterStatus {
            node: cluster.node().to_owned(),
            endpoints: cluster.endpoints().to_vec(),
            etcd,
            nodes: nodes
                .into_iter()
                .zip(health)
                .map(|((name, info), health)| ClusterNode {
                    name,
                    peer_url: info.peer_url,
                    sockgate: info.sockgate,
                    apps: info.apps,
                    health,
                })
                .collect(),
        })
    }

    /// [`Gateway::apply_record`], a failure reported as the app's.
    async fn apply_record_reporting(&self, record: AppRecord) {
        let (name, number) = (record.name.clone(), record.current);
        if let Err(err) = self.apply_record(record).await {
            self.record_failure(&name, number, format!("{:#}", anyhow::Error::new(err)));
        }
    }

    /// Makes this node serve the current version of cluster record
    /// `record` (nothing to do when it already does), fetching its
    /// component from a peer if this node lacks it, and saves the record
    /// as this node's cache.
    async fn apply_record(&self, record: AppRecord) -> Result<(), DeployError> {
        let cluster = self.cluster()?;
        let state = self
            .inner
            .state
            .as_ref()
            .ok_or(DeployError::NoStateDirectory {
                change: super::Change::Deploy,
            })?;
        let record = self.localised(record);
        let version = record.current_version().cloned().ok_or_else(|| {
            DeployError::State(anyhow!(
                "the cluster's record of `{}` names no version {}",
                record.name,
                record.current
            ))
        })?;
        {
            let slots = self.inner.slots.lock().await;
            if let Some(slot) = slots.get(&record.name) {
                if slot.source == Source::Config {
                    tracing::warn!(
                        app = %record.name,
                        "a cluster app has the name of an app of this node's configuration \
                         file; the configured one serves here"
                    );
                    return Ok(());
                }
                if slot.version == version.number && slot.digest == version.digest {
                    return state.save_app(&record).map_err(DeployError::State);
                }
            }
        }
        let bytes = match read_blob(&version) {
            Ok(bytes) => bytes,
            Err(_) => {
                cluster
                    .fetch_blob(&version.digest, None)
                    .await
                    .map_err(DeployError::State)?;
                read_blob(&version).map_err(DeployError::State)?
            }
        };
        let inner = self.inner.clone();
        let number = version.number;
        let blob = Arc::new(bytes);
        let stored = blob.clone();
        let persist = move |_bound: Option<SocketAddr>, world: World| -> anyhow::Result<u64> {
            let state = inner.state.as_ref().context("no state directory")?;
            // Again under the slot lock: a collection may have run since.
            state.put_blob(&stored)?;
            let mut record = record;
            if let Some(version) = record.versions.iter_mut().find(|v| v.number == number) {
                version.world = Some(world);
            }
            state.save_app(&record)?;
            Ok(number)
        };
        let name = version.config.name.to_string();
        self.switch(
            version.config.clone(),
            Source::Deployed,
            blob,
            number,
            Some(Box::new(persist)),
        )
        .await?;
        lock(&self.inner.failed).remove(&name);
        Ok(())
    }

    /// `record` as this node runs it: each version's component at its
    /// place in the state directory, and a port bound on this node's
    /// `cluster.app_address` when it has one.
    fn localised(&self, mut record: AppRecord) -> AppRecord {
        let address = self.inner.cluster.get().and_then(|c| c.app_address());
        if let Some(state) = &self.inner.state {
            for version in &mut record.versions {
                version.config.component = state.blob_path(&version.digest);
                if let (Some(listen), Some(ip)) = (version.config.listen.as_mut(), address) {
                    listen.set_ip(ip);
                }
            }
        }
        record
    }

    /// Stops serving cluster app `name` here and forgets it (it was
    /// removed from the cluster, or is not in it any more).
    async fn remove_locally(&self, name: &str) {
        let mut slots = self.inner.slots.lock().await;
        if slots
            .get(name)
            .is_some_and(|slot| slot.source == Source::Config)
        {
            return;
        }
        if let Some(state) = &self.inner.state {
            if let Err(err) = state.remove_app(name) {
                tracing::warn!(app = %name, "cannot remove the app's record: {err:#}");
            }
            collect_blobs(state);
        }
        lock(&self.inner.failed).remove(name);
        self.stop_serving(&mut slots, name).await;
        tracing::info!(app = %name, "cluster: app removed");
    }

    pub(super) fn cluster(&self) -> Result<Arc<Cluster>, DeployError> {
        self.inner
            .cluster
            .get()
            .cloned()
            .ok_or_else(|| DeployError::Internal(anyhow!("this gateway is in no cluster")))
    }

    /// A deploy on a cluster node (the checks every deploy makes are done):
    /// see [`crate::cluster`] for the steps.
    pub(super) async fn deploy_in_cluster(
        &self,
        mut config: AppConfig,
        bytes: Arc<Vec<u8>>,
        origin: Option<String>,
    ) -> Result<AppStatus, DeployError> {
        let cluster = self.cluster()?;
        let state = self
            .inner
            .state
            .as_ref()
            .ok_or(DeployError::NoStateDirectory {
                change: super::Change::Deploy,
            })?;
        if let Some(listen) = config.listen.filter(|l| l.port() == 0) {
            return Err(DeployError::InvalidSettings(anyhow!(
                "app `{}`: listen = {listen}: in a cluster an app's port must be given (every \
                 node binds the same port), or leave `listen` out to reach the app by name",
                config.name
            )));
        }
        config.component = PathBuf::from(format!("the uploaded component of `{}`", config.name));
        let digest = digest_of(&bytes);
        // etcd first: with etcd down, the deploy fails before any compile.
        let seen = cluster.read_app(config.name.as_str()).await?;
        let stored = bytes.clone();
        let stored_in = state.clone();
        tokio::task::spawn_blocking(move || stored_in.put_blob(&stored))
            .await
            .map_err(|err| DeployError::Internal(err.into()))?
            .map_err(DeployError::State)?;
        let loaded = if cluster.shares_compiled() {
            // Compiled here first, then announced with its artifact, which
            // every node fetches instead of compiling: one compile for
            // the cluster.
            let loaded = self.load(&config, bytes.clone()).await?;
            let artifact = self.compiled_artifact(&bytes).await;
            cluster
                .announce_compiled(&digest, artifact.as_ref())
                .await?;
            loaded
        } else {
            // Announced before it is compiled here, so that every node
            // fetches and compiles it while this one does: a deploy costs
            // one compile time, not two. A component refused here then
            // leaves an unused blob on the peers, collected with the
            // others.
            cluster.announce(&digest).await?;
            self.load(&config, bytes.clone()).await?
        };
        cluster.await_spread(&digest).await?;
        config.component = PathBuf::from(format!("sha256:{digest}"));
        let mut record = seen.record.unwrap_or_else(|| AppRecord {
            name: config.name.to_string(),
            current: 0,
            versions: Vec::new(),
        });
        let name = config.name.to_string();
        record.push(VersionRecord {
            number: 0,
            digest,
            deployed_at: unix_now(),
            config,
            origin,
            world: Some(loaded.world),
        });
        self.write_and_apply(&cluster, record, seen.mod_revision)
            .await?;
        self.publish_serving().await;
        self.status(&name)
            .await
            .ok_or_else(|| DeployError::Internal(anyhow!("the app vanished during its deploy")))
    }

    /// A rollback on a cluster node: the previous version of the
    /// cluster's record becomes current on every node.
    pub(super) async fn rollback_in_cluster(&self, name: &str) -> Result<AppStatus, DeployError> {
        let cluster = self.cluster()?;
        let seen = cluster.read_app(name).await?;
        let mut record = seen.record.ok_or_else(|| DeployError::NotDeployed {
            name: name.to_owned(),
        })?;
        let previous =
            record
                .previous()
                .map(|v| v.number)
                .ok_or_else(|| DeployError::NoPreviousVersion {
                    name: name.to_owned(),
                    current: record.current,
                })?;
        record.current = previous;
        self.write_and_apply(&cluster, record, seen.mod_revision)
            .await?;
        self.publish_serving().await;
        self.status(name)
            .await
            .ok_or_else(|| DeployError::Internal(anyhow!("the app vanished during its rollback")))
    }

    /// A removal on a cluster node: gone from etcd, then from every node.
    pub(super) async fn remove_in_cluster(&self, name: &str) -> Result<(), DeployError> {
        let cluster = self.cluster()?;
        let seen = cluster.read_app(name).await?;
        if seen.record.is_none() {
            let known = self.inner.slots.lock().await.contains_key(name)
                || lock(&self.inner.failed).contains_key(name);
            if !known {
                return Err(DeployError::NoSuchApp {
                    name: name.to_owned(),
                });
            }
            // Known here only (a removal this node missed): forget it.
            self.remove_locally(name).await;
            return Ok(());
        }
        let _changing = self.inner.cluster_changes.lock().await;
        cluster.delete_app(name, seen.mod_revision).await?;
        self.remove_locally(name).await;
        drop(_changing);
        self.publish_serving().await;
        Ok(())
    }

    /// Writes `record` if etcd still has it at revision `seen`, then makes
    /// this node serve it at once (the watch then finds nothing to do).
    async fn write_and_apply(
        &self,
        cluster: &Cluster,
        record: AppRecord,
        seen: i64,
    ) -> Result<(), DeployError> {
        let _changing = self.inner.cluster_changes.lock().await;
        cluster.write_app(&record, seen).await?;
        self.apply_record(record).await
    }
}

/// The cluster as one node sees it: `GET /v1/cluster`, `sockgate ls`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterStatus {
    /// This node's name.
    pub node: String,
    /// etcd's addresses, as configured.
    pub endpoints: Vec<String>,
    /// `reachable`, or why not.
    pub etcd: String,
    /// The live nodes (empty when etcd is unreachable).
    pub nodes: Vec<ClusterNode>,
}

/// One live node of the cluster.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterNode {
    /// Its name.
    pub name: String,
    /// Where peers fetch components from it.
    pub peer_url: String,
    /// The sockgate version it runs.
    pub sockgate: String,
    /// The cluster apps it serves: name → version number.
    pub apps: std::collections::BTreeMap<String, u64>,
    /// `ok` when its peer port takes a connection from this node within
    /// [`PEER_PROBE`], otherwise why not: a node can hold its lease (be
    /// live in etcd) while peers cannot fetch components from it, and an
    /// operator needs to see that before a deploy waits on it.
    pub health: String,
}

/// How long the probe of a node's peer port may take.
const PEER_PROBE: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether this node reaches the peer port at `peer_url`
/// (`http://HOST:PORT`): `ok`, or why not.
async fn peer_health(peer_url: &str) -> String {
    let authority = crate::cluster::authority_of(peer_url);
    match crate::cluster::tcp_reachable(authority, PEER_PROBE).await {
        Ok(()) => "ok".to_owned(),
        Err(why) => format!("peer port unreachable: {why}"),
    }
}

/// The components being fetched ahead, so that one announced twice is
/// fetched once.
pub(super) type Fetching = std::sync::Mutex<HashSet<String>>;
