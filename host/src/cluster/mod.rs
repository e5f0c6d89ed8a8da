//! Cluster mode: several gateways share the apps deployed through any of
//! them, through etcd (`[cluster]`, [`crate::config::cluster`]).
//!
//! **What lives where.** etcd holds small values only (a request is at
//! most 1.5 MiB, components reach 64 MiB): each app's record (versions,
//! digests, settings; no local path) and, under each node's lease, which
//! nodes are alive and which components each holds (`keys.rs`). The
//! components themselves go from node to node (`peer.rs`: an HTTP server
//! on `cluster.peer_listen`, a bearer token shared by the nodes, every byte
//! checked against its SHA-256), the way Kubernetes nodes pull images by
//! digest. Each node's state directory is its cache: a node that cannot
//! reach etcd keeps serving what it last knew, across restarts too.
//!
//! **A deploy** (on any node; `gateway/cluster.rs`): the component is
//! stored and announced (`held/<sha>/<node>`), then checked and compiled
//! while every live node fetches and compiles it and announces it too (one
//! compile time for the cluster, not two in a row); once all
//! have (or `spread_timeout_secs` passed with at least two holders, so a
//! `kill -9` of the deploying node loses nothing), the record is written in
//! one transaction guarded by the revision the deploy read — a concurrent
//! deploy of the same app loses with [`ClusterError::Conflict`]. Every
//! node's watch (`watch.rs`) then switches the app, with the component
//! already compiled, so the nodes switch together.
//!
//! **Watches** are applied idempotently (a node compares the version it
//! serves with the record's); after any interruption — a lost connection,
//! a compacted revision, the periodic reconcile — the node re-reads every
//! record (a *snapshot*) and applies the difference, so it cannot drift
//! through a missed event.
//!
//! **Certificates** (`acme.rs`) are ordered once per name: the node that
//! takes the name's lock orders, and every node serves the result, sealed
//! in etcd with a key derived from the cluster's token (`seal.rs`).
//!
//! The files: `mod.rs` the [`Cluster`] handle and its errors; `keys.rs`
//! the key layout; `store.rs` the reads and guarded writes of records and
//! holders; `membership.rs` this node's lease and liveness; `watch.rs`
//! the changes as a stream; `peer.rs` components between nodes; `acme.rs`
//! and `seal.rs` certificates shared; `endpoints.rs` keeps requests off
//! etcd members that refuse connections.

mod acme;
mod endpoints;
mod keys;
mod membership;
mod peer;
mod seal;
mod store;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use anyhow::{Context, Result};

pub(crate) use self::endpoints::{authority_of, tcp_reachable};
pub(crate) use self::peer::CompiledArtifact;
pub(crate) use self::watch::Change;
use crate::config::ClusterSettings;
use crate::state::StateDir;

/// How long one request to etcd may take before the cluster counts as
/// unavailable for it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a change through the cluster was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd did not answer (down, partitioned, no leader).
    #[error(
        "cluster store unavailable ({reason}); nothing was changed. Every node keeps serving \
         what it has: retry once etcd answers"
    )]
    Unavailable {
        /// What failed.
        reason: String,
    },
    /// Another change of the same app won the race.
    #[error(
        "conflict: app `{name}` was changed by another deploy, rollback or removal (on this or \
         another node) while this one ran; nothing was changed by this one. Look at `sockgate \
         ls` and try again"
    )]
    Conflict {
        /// The app.
        name: String,
    },
    /// Too few nodes hold the new component to survive the loss of this
    /// one.
    #[error(
        "only {holders} node(s) of {live} hold the new component after {waited_secs} s: a \
         deploy needs at least {needed}, so that losing this node loses nothing. Check that \
         the other nodes run and reach this node's peer address ({peer_url})"
    )]
    TooFewHolders {
        /// Nodes that hold it.
        holders: usize,
        /// Live nodes.
        live: usize,
        /// Holders needed.
        needed: usize,
        /// How long the deploy waited.
        waited_secs: u64,
        /// Where peers fetch from this node.
        peer_url: String,
    },
}

impl ClusterError {
    fn unavailable(err: impl std::fmt::Display) -> Self {
        Self::Unavailable {
            reason: err.to_string(),
        }
    }
}

/// This node's handle on the cluster: the etcd client, its name and
/// lease, and the components it holds (the state directory).
pub(crate) struct Cluster {
    client: etcd_client::Client,
    settings: ClusterSettings,
    node: String,
    keys: keys::Keys,
    token: String,
    state: StateDir,
    /// How peers reach this node, once its component server is bound.
    peer_url: String,
    /// The node's current lease (0: not registered, etcd unreachable).
    lease: AtomicI64,
    /// Signalled when the node registers (a new lease).
    registered: tokio::sync::Notify,
    /// The cluster apps this node serves, by name: their version numbers,
    /// published in its `nodes/` key so that operators see which version
    /// each node serves.
    serving: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Wakes the membership loop to publish `serving` anew.
    serving_changed: tokio::sync::Notify,
    /// The id of the ACME CA whose certificates this node shares, once
    /// set (`acme.rs`): the watch reports that CA's changes only.
    acme_ca: std::sync::OnceLock<String>,
    /// The compile cache's directory, when compiled artifacts are shared
    /// (`share_compiled`).
    compiled: Option<std::path::PathBuf>,
    /// The etcd user and password, when etcd's auth is on.
    user: Option<(String, String)>,
    /// Whether the client holds a token for `user` (then renewed by the
    /// client itself when refused as expired).
    authenticated: std::sync::atomic::AtomicBool,
}

impl Cluster {
    /// Prepares the connection to etcd (made lazily: etcd may be down, and
    /// the node still serves its cache) and binds the component server.
    /// `compiled` is the compile cache's directory, whose artifacts this
    /// node serves to its peers when `share_compiled` is on.
    pub(crate) async fn connect(
        settings: &ClusterSettings,
        state: StateDir,
        compiled: std::path::PathBuf,
    ) -> Result<Arc<Self>> {
        if settings.endpoints.is_empty() {
            anyhow::bail!(
                "cluster.endpoints is empty: name etcd's client addresses (HOST:PORT), or pass \
                 --cluster etcd://HOST:PORT"
            );
        }
        let token = settings.read_token()?;
        let listener = tokio::net::TcpListener::bind(settings.peer_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on cluster.peer_listen {} (where peers fetch components)",
                    settings.peer_listen
                )
            })?;
        let bound: SocketAddr = listener.local_addr()?;
        let credentials = settings.etcd_credentials()?;
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some(ca) = &credentials.ca_pem {
            let mut tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(ca));
            if let Some((cert, key)) = &credentials.identity {
                tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(tls);
        }
        if credentials.user.is_some() {
            // The user authenticates once etcd answers (`authenticate`),
            // not here: a node must start while etcd is down. Tokens of
            // etcd's auth expire (5 min by default): renewed on refusal.
            options = options.with_auto_token_refresh(true);
        }
        let client = etcd_client::Client::connect(&settings.endpoints, Some(options))
            .await
            .with_context(|| format!("cluster.endpoints {:?}", settings.endpoints))?;
        tokio::spawn(endpoints::keep_live(
            client.clone(),
            settings.endpoints.clone(),
            credentials.ca_pem.is_some(),
        ));
        let cluster = Arc::new(Self {
            client,
            node: settings.node_name(),
            keys: keys::Keys::new(&settings.prefix),
            peer_url: settings.peer_url(bound),
            settings: settings.clone(),
            token,
            state,
            lease: AtomicI64::new(0),
            registered: tokio::sync::Notify::new(),
            serving: std::sync::Mutex::default(),
            serving_changed: tokio::sync::Notify::new(),
            acme_ca: std::sync::OnceLock::new(),
            user: credentials.user,
            compiled: settings.share_compiled.then_some(compiled),
            authenticated: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(peer::serve(cluster.clone(), listener));
        tokio::spawn(membership::keep(cluster.clone()));
        Ok(cluster)
    }

    /// Whether nodes share compiled artifacts (`share_compiled`).
    pub(crate) fn shares_compiled(&self) -> bool {
        self.compiled.is_some()
    }

    /// This node's name.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// etcd's addresses, as configured.
    pub(crate) fn endpoints(&self) -> &[String] {
        &self.settings.endpoints
    }

    /// Where peers fetch components from this node.
    pub(crate) fn peer_url(&self) -> &str {
        &self.peer_url
    }

    /// The address cluster apps' ports bind on here, if configured.
    pub(crate) fn app_address(&self) -> Option<std::net::IpAddr> {
        self.settings.app_address
    }

    /// Publishes which version of each cluster app this node serves (when
    /// it changed).
    pub(crate) fn set_serving(&self, apps: std::collections::BTreeMap<String, u64>) {
        let mut serving = crate::base::locks::lock(&self.serving);
        if *serving != apps {
            *serving = apps;
            self.serving_changed.notify_one();
        }
    }

    /// Authenticates as the configured etcd user, once etcd answers (the
    /// membership and watch loops call it before anything else).
    pub(crate) async fn authenticate(&self) -> Result<(), ClusterError> {
        use std::sync::atomic::Ordering;
        let Some(user) = &self.user else {
            return Ok(());
        };
        if self.authenticated.load(Ordering::Acquire) {
            return Ok(());
        }
        self.client
            .clone()
            .update_user(Some(user.clone()))
            .await
            .map_err(|err| {
                ClusterError::unavailable(format!(
                    "cannot authenticate to etcd as cluster.etcd_user {:?}: {err}",
                    user.0
                ))
            })?;
        self.authenticated.store(true, Ordering::Release);
        Ok(())
    }

    /// The stream of changes to apply, starting with a snapshot.
    pub(crate) fn changes(self: &Arc<Self>) -> tokio::sync::mpsc::Receiver<Change> {
        watch::spawn(self.clone())
    }
}
