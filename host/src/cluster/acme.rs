//! ACME shared through etcd ([`SharedAcme`], certmagic's distributed
//! pattern on etcd's primitives; `shared/research/cluster.md` §5):
//!
//! - **the lock** of a name is a key created only if absent
//!   (`create_revision == 0`), under the node's lease: never waited for,
//!   and gone with the node (a node that dies mid-order frees the name
//!   within the lease's time to live, and the watch wakes the others);
//! - **the certificate** is written only while the writer's lock is the
//!   one it took (its create revision is the fence), so a node that lost
//!   its lock cannot overwrite a newer certificate; its key is sealed with
//!   the cluster's key (`seal.rs`);
//! - **the back-off** after a failed order is shared, so that a second node
//!   does not retry at once what the first just failed;
//! - **challenge answers** go to every node under the orderer's lease; each
//!   node acknowledges under its own, and the orderer asks the CA to
//!   validate only once every live node answers (or after
//!   [`ANSWERS_SPREAD`], reported).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use sha2::{Digest, Sha256};

use super::keys::AcmeKey;
use super::seal::Seal;
use super::{Cluster, ClusterError};
use crate::certs::acme::{ChallengeAnswer, OrderLock, SharedAcme, SharedRetry};

/// How long an orderer waits for every live node to answer its challenge.
const ANSWERS_SPREAD: Duration = Duration::from_secs(5);

/// One CA's certificates in the cluster.
pub(crate) struct ClusterAcme {
    cluster: Arc<Cluster>,
    /// The CA's id in keys.
    ca: String,
    seal: Seal,
}

/// The id of the CA at `directory_url` in keys.
fn ca_id(directory_url: &str) -> String {
    let digest = Sha256::digest(directory_url.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl Cluster {
    /// The shared store of the certificates of the CA at `directory_url`
    /// (the watch reports that CA's changes from now on).
    pub(crate) fn acme_store(self: &Arc<Self>, directory_url: &str) -> Arc<ClusterAcme> {
        let ca = ca_id(directory_url);
        let _ = self.acme_ca.set(ca.clone());
        Arc::new(ClusterAcme {
            cluster: self.clone(),
            ca,
            seal: Seal::new(&self.token),
        })
    }

    /// Tells the orderer of challenge `id` that this node answers it.
    pub(crate) async fn acknowledge_challenge(&self, id: &str) -> Result<(), ClusterError> {
        let Some(ca) = self.acme_ca.get() else {
            return Ok(());
        };
        let lease = self.registered_lease()?;
        self.client
            .clone()
            .put(
                self.keys.challenge_seen(ca, id, &self.node),
                Vec::new(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(ClusterError::unavailable)?;
        Ok(())
    }

    /// The node's lease, or why there is none.
    pub(super) fn registered_lease(&self) -> Result<i64, ClusterError> {
        match self.lease.load(Ordering::Acquire) {
            0 => Err(ClusterError::unavailable(
                "this node is not registered in etcd yet",
            )),
            lease => Ok(lease),
        }
    }
}

impl ClusterAcme {
    fn key(&self, kind: AcmeKey, name: &str) -> String {
        self.cluster.keys.acme(&self.ca, kind, name)
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.cluster.authenticate().await?;
        let response = self
            .cluster
            .client
            .clone()
            .get(key, None)
            .await
            .map_err(ClusterError::unavailable)?;
        Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Runs `ops` if this node still holds `name`'s lock `fence`.
    async fn fenced(&self, name: &str, fence: i64, ops: Vec<TxnOp>) -> Result<bool> {
        let held = Compare::create_revision(self.key(AcmeKey::Lock, name), CompareOp::Equal, fence);
        let response = self
            .cluster
            .client
            .clone()
            .txn(Txn::new().when([held]).and_then(ops))
            .await
            .map_err(ClusterError::unavailable)?;
        Ok(response.succeeded())
    }

    /// The nodes that acknowledged challenge `id`.
    async fn answering(&self, id: &str) -> Result<Vec<String>> {
        let prefix = self.cluster.keys.challenge_seen_all(&self.ca, id);
        let response = self
            .cluster
            .client
            .clone()
            .get(
                prefix.as_str(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(ClusterError::unavailable)?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| Some(kv.key_str().ok()?.strip_prefix(&prefix)?.to_owned()))
            .collect())
    }
}

#[async_trait::async_trait]
impl SharedAcme for ClusterAcme {
    async fn certificate(&self, name: &str) -> Result<Option<String>> {
        let key = self.key(AcmeKey::Cert, name);
        let Some(sealed) = self.get(&key).await? else {
            return Ok(None);
        };
        match self.seal.open(&key, &sealed) {
            Ok(plain) => Ok(Some(
                String::from_utf8(plain).context("the shared certificate is not PEM text")?,
            )),
            Err(err) => {
                tracing::error!("acme: the cluster's certificate for {name}: {err:#}");
                Ok(None)
            }
        }
    }

    async fn retry(&self, name: &str) -> Result<Option<SharedRetry>> {
        let Some(json) = self.get(&self.key(AcmeKey::Retry, name)).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&json).ok())
    }

    async fn try_lock(&self, name: &str) -> Result<OrderLock> {
        self.cluster.authenticate().await?;
        let lease = self.cluster.registered_lease()?;
        let key = self.key(AcmeKey::Lock, name);
        let free = Compare::create_revision(key.as_str(), CompareOp::Equal, 0);
        let take = TxnOp::put(
            key.as_str(),
            self.cluster.node.as_bytes(),
            Some(PutOptions::new().with_lease(lease)),
        );
        let holder = TxnOp::get(key.as_str(), None);
        let response = self
            .cluster
            .client
            .clone()
            .txn(Txn::new().when([free]).and_then([take]).or_else([holder]))
            .await
            .map_err(ClusterError::unavailable)?;
        if response.succeeded() {
            let revision = response.header().map_or(0, |h| h.revision());
            return Ok(OrderLock::Mine(revision));
        }
        let node = response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(get) => get
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            })
            .unwrap_or_else(|| "another node".to_owned());
        Ok(OrderLock::HeldBy(node))
    }

    async fn store_certificate(&self, name: &str, pem: &str, fence: i64) -> Result<()> {
        let key = self.key(AcmeKey::Cert, name);
        let sealed = self.seal.seal(&key, pem.as_bytes())?;
        let ops = vec![
            TxnOp::put(key, sealed, None),
            TxnOp::delete(self.key(AcmeKey::Retry, name), None),
        ];
        if !self.fenced(name, fence, ops).await? {
            bail!("this node lost the order lock of {name} (its lease expired) meanwhile");
        }
        Ok(())
    }

    async fn store_retry(&self, name: &str, retry: SharedRetry, fence: i64) -> Result<()> {
        let json = serde_json::to_vec(&retry)?;
        let ops = vec![TxnOp::put(self.key(AcmeKey::Retry, name), json, None)];
        if !self.fenced(name, fence, ops).await? {
            bail!("this node lost the order lock of {name} (its lease expired) meanwhile");
        }
        Ok(())
    }

    async fn unlock(&self, name: &str, fence: i64) {
        let ops = vec![TxnOp::delete(self.key(AcmeKey::Lock, name), None)];
        if let Err(err) = self.fenced(name, fence, ops).await {
            tracing::warn!(
                "acme: cannot release the order lock of {name} ({err:#}); it goes with this \
                 node's lease"
            );
        }
    }

    async fn publish_challenge(&self, answer: &ChallengeAnswer) -> Result<()> {
        let lease = self.cluster.registered_lease()?;
        let id = answer.id();
        self.cluster
            .client
            .clone()
            .put(
                self.cluster.keys.challenge(&self.ca, &id),
                serde_json::to_vec(answer)?,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(ClusterError::unavailable)?;
        let started = Instant::now();
        loop {
            let live = self.cluster.live_nodes().await?;
            let answering = self.answering(&id).await?;
            let missing: Vec<&str> = live
                .iter()
                .map(|(node, _)| node.as_str())
                .filter(|node| *node != self.cluster.node && !answering.iter().any(|a| a == node))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= ANSWERS_SPREAD {
                tracing::warn!(
                    "acme: node(s) {} did not confirm the challenge answer within {} s; asking \
                     the CA to validate anyway (it fails if the CA reaches one of them)",
                    missing.join(", "),
                    ANSWERS_SPREAD.as_secs()
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn withdraw_challenge(&self, answer: &ChallengeAnswer) {
        let id = answer.id();
        let keys = &self.cluster.keys;
        let seen = keys.challenge_seen_all(&self.ca, &id);
        let ops = [
            TxnOp::delete(keys.challenge(&self.ca, &id), None),
            TxnOp::delete(
                seen.as_str(),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            ),
        ];
        let result = self
            .cluster
            .client
            .clone()
            .txn(Txn::new().and_then(ops))
            .await;
        if let Err(err) = result {
            tracing::debug!("acme: challenge {id} not withdrawn ({err}); it goes with the lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ca_has_its_own_short_id() {
        let production = ca_id("https://acme-v02.api.letsencrypt.org/directory");
        let staging = ca_id("https://acme-staging-v02.api.letsencrypt.org/directory");
        assert_eq!(production.len(), 16);
        assert_ne!(production, staging);
    }
}
