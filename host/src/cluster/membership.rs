//! This node's membership: a lease kept alive, its `nodes/<node>` key (how
//! peers reach it) and a `held/` key per component it holds, all under the
//! lease. When the node dies, or loses etcd for longer than the lease's
//! time to live, its keys go with the lease; when it comes back it
//! registers anew and announces its components again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::PutOptions;

use super::Cluster;
use crate::base::backoff::ExponentialBackoff;

/// The lease's time to live (seconds): how long a dead node still counts
/// as alive (a deploy waits for it at most `spread_timeout_secs`).
const LEASE_TTL: i64 = 10;

/// How often the lease is renewed: a third of its life, so two renewals
/// may be lost before it expires.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(3);

/// Keeps this node registered for as long as the gateway runs.
pub(super) async fn keep(cluster: Arc<Cluster>) {
    let backoff = ExponentialBackoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut attempt = 0;
    let mut was_registered = true;
    loop {
        match register(&cluster).await {
            Ok((lease, mut keeper, mut responses)) => {
                cluster.lease.store(lease, Ordering::Release);
                tracing::info!(
                    node = %cluster.node,
                    "cluster: registered in etcd (lease {lease:x}, peers fetch from {})",
                    cluster.peer_url
                );
                attempt = 0;
                was_registered = true;
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(KEEP_ALIVE_EVERY) => {}
                        () = cluster.serving_changed.notified() => {
                            if let Err(err) = put_node(&cluster, lease).await {
                                tracing::warn!("cluster: cannot publish what this node serves: {err}");
                                break;
                            }
                            continue;
                        }
                    }
                    let renewed = match keeper.keep_alive().await {
                        Ok(()) => responses.message().await,
                        Err(err) => Err(err),
                    };
                    match renewed {
                        Ok(Some(answer)) if answer.ttl() > 0 => {}
                        Ok(_) => {
                            tracing::warn!("cluster: this node's lease expired; registering anew");
                            break;
                        }
                        Err(err) => {
                            tracing::warn!("cluster: cannot renew this node's lease: {err}");
                            break;
                        }
                    }
                }
                cluster.lease.store(0, Ordering::Release);
            }
            Err(err) => {
                if was_registered {
                    tracing::warn!(
                        "cluster: cannot register this node in etcd ({err}); serving what it \
                         has, retrying"
                    );
                }
                was_registered = false;
            }
        }
        tokio::time::sleep(backoff.delay(attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

/// Grants a lease and puts the node's keys under it.
async fn register(
    cluster: &Cluster,
) -> Result<
    (
        i64,
        etcd_client::LeaseKeeper,
        etcd_client::LeaseKeepAliveStream,
    ),
    etcd_client::Error,
> {
    if let Err(err) = cluster.authenticate().await {
        return Err(etcd_client::Error::InvalidArgs(err.to_string()));
    }
    let mut client = cluster.client.clone();
    let lease = client.lease_grant(LEASE_TTL, None).await?.id();
    put_node(cluster, lease).await?;
    let held = cluster.state.blob_digests().unwrap_or_else(|err| {
        tracing::warn!("cluster: cannot list the components held here: {err:#}");
        Vec::new()
    });
    for digest in held {
        client
            .put(
                cluster.keys.held(&digest, &cluster.node),
                Vec::new(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
    }
    let (keeper, responses) = client.lease_keep_alive(lease).await?;
    Ok((lease, keeper, responses))
}

/// Puts this node's key: how peers reach it, and what it serves.
async fn put_node(cluster: &Cluster, lease: i64) -> Result<(), etcd_client::Error> {
    let apps = crate::base::locks::lock(&cluster.serving).clone();
    let info = NodeInfo {
        peer_url: cluster.peer_url.clone(),
        sockgate: env!("CARGO_PKG_VERSION").to_owned(),
        apps,
    };
    let json = serde_json::to_string(&info).unwrap_or_default();
    cluster
        .client
        .clone()
        .put(
            cluster.keys.node(&cluster.node),
            json,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
    Ok(())
}

/// What a node publishes about itself in its `nodes/` key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct NodeInfo {
    /// Where peers fetch components from it.
    pub(crate) peer_url: String,
    /// The sockgate version it runs.
    #[serde(default)]
    pub(crate) sockgate: String,
    /// The cluster apps it serves: name → version number.
    #[serde(default)]
    pub(crate) apps: std::collections::BTreeMap<String, u64>,
}
