//! Reads and guarded writes of the cluster's records and holders. Every
//! write of an app record is a transaction conditioned on the revision the
//! writer read, so that of two concurrent changes of one app exactly one
//! lands and the other is told ([`ClusterError::Conflict`]).

use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::keys::prefix_end;
use super::membership::NodeInfo;
use super::{Cluster, ClusterError};
use crate::state::AppRecord;

/// How often a deploy waiting for its holders announces its component
/// again ([`Cluster::await_spread`]).
const REANNOUNCE_EVERY: Duration = Duration::from_secs(1);

/// Records read per request of a snapshot (tonic decodes at most 4 MiB a
/// message; a record is a few KiB).
const PAGE: i64 = 256;

/// What a change read of an app before changing it: its record and the
/// revision its write must still find.
pub(crate) struct Seen {
    /// The record, if the app is deployed.
    pub(crate) record: Option<AppRecord>,
    /// Its key's modification revision (0: no such key).
    pub(crate) mod_revision: i64,
}

impl Cluster {
    /// App `name`'s record as etcd has it now.
    pub(crate) async fn read_app(&self, name: &str) -> Result<Seen, ClusterError> {
        // The first request of every change: a node that just started may
        // not have authenticated yet.
        self.authenticate().await?;
        let response = self
            .client
            .clone()
            .get(self.keys.app(name), None)
            .await
            .map_err(ClusterError::unavailable)?;
        let Some(kv) = response.kvs().first() else {
            return Ok(Seen {
                record: None,
                mod_revision: 0,
            });
        };
        let record = serde_json::from_slice(kv.value()).map_err(|err| {
            ClusterError::unavailable(format!("the record of `{name}` in etcd is damaged: {err}"))
        })?;
        Ok(Seen {
            record: Some(record),
            mod_revision: kv.mod_revision(),
        })
    }

    /// Writes `record` if its key is still at revision `seen` (0: absent).
    pub(crate) async fn write_app(
        &self,
        record: &AppRecord,
        seen: i64,
    ) -> Result<(), ClusterError> {
        let key = self.keys.app(&record.name);
        let json = serde_json::to_vec(record).map_err(ClusterError::unavailable)?;
        self.guarded(&record.name, seen, TxnOp::put(key, json, None))
            .await
    }

    /// Deletes app `name`'s record if its key is still at revision `seen`.
    pub(crate) async fn delete_app(&self, name: &str, seen: i64) -> Result<(), ClusterError> {
        self.guarded(name, seen, TxnOp::delete(self.keys.app(name), None))
            .await
    }

    /// Runs `op` on app `name`'s key if the key is still at revision
    /// `seen` (0: still absent).
    async fn guarded(&self, name: &str, seen: i64, op: TxnOp) -> Result<(), ClusterError> {
        let key = self.keys.app(name);
        let unchanged = if seen == 0 {
            Compare::create_revision(key, CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key, CompareOp::Equal, seen)
        };
        let response = self
            .client
            .clone()
            .txn(Txn::new().when([unchanged]).and_then([op]))
            .await
            .map_err(ClusterError::unavailable)?;
        if response.succeeded() {
            Ok(())
        } else {
            Err(ClusterError::Conflict {
                name: name.to_owned(),
            })
        }
    }

    /// Every app record at one revision, and that revision (a watch from
    /// the next one misses nothing). Records that cannot be parsed are
    /// reported and left out.
    pub(crate) async fn snapshot(&self) -> Result<(Vec<AppRecord>, i64), ClusterError> {
        let mut records = Vec::new();
        let revision = self
            .scan(&self.keys.apps(), None, |kv| {
                match serde_json::from_slice::<AppRecord>(kv.value()) {
                    Ok(record) => records.push(record),
                    Err(err) => tracing::error!(
                        key = %String::from_utf8_lossy(kv.key()),
                        "skipping a damaged app record in etcd: {err}"
                    ),
                }
            })
            .await?;
        Ok((records, revision))
    }

    /// The challenge answers of this node's CA that stood at `revision`:
    /// a watch from `revision + 1` shows only later ones, and a node that
    /// joined (or resynced) just after an answer was published must serve
    /// it too, since the CA may reach any node. (Announcements of held
    /// components are not replayed: a joining node would fetch and compile
    /// every component any peer holds, old versions included. A deploy
    /// that waits for its holders announces again instead, see
    /// [`Cluster::await_spread`].)
    pub(crate) async fn standing_challenges(
        &self,
        revision: i64,
    ) -> Result<Vec<etcd_client::KeyValue>, ClusterError> {
        let mut standing = Vec::new();
        if let Some(ca) = self.acme_ca.get() {
            self.scan(&self.keys.challenges(ca), Some(revision), |kv| {
                standing.push(kv.clone())
            })
            .await?;
        }
        Ok(standing)
    }

    /// Reads every key under `prefix` page by page, all at one revision
    /// (`at`, or the first page's), giving each to `each`; returns that
    /// revision.
    async fn scan(
        &self,
        prefix: &str,
        at: Option<i64>,
        mut each: impl FnMut(&etcd_client::KeyValue),
    ) -> Result<i64, ClusterError> {
        let end = prefix_end(prefix);
        let mut from = prefix.as_bytes().to_vec();
        let mut revision = at.unwrap_or(0);
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision != 0 {
                options = options.with_revision(revision);
            }
            let response = self
                .client
                .clone()
                .get(from.clone(), Some(options))
                .await
                .map_err(ClusterError::unavailable)?;
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            for kv in response.kvs() {
                each(kv);
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(revision)
    }

    /// The nodes alive now: name and where peers reach it.
    pub(crate) async fn live_nodes(&self) -> Result<Vec<(String, String)>, ClusterError> {
        Ok(self
            .nodes()
            .await?
            .into_iter()
            .map(|(node, info)| (node, info.peer_url))
            .collect())
    }

    /// The nodes alive now, with what each says of itself.
    pub(crate) async fn nodes(&self) -> Result<Vec<(String, NodeInfo)>, ClusterError> {
        self.authenticate().await?;
        let response = self
            .client
            .clone()
            .get(self.keys.nodes(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(ClusterError::unavailable)?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = kv.key_str().ok()?;
                let super::keys::Key::Node(node) = self.keys.parse(key)? else {
                    return None;
                };
                let info: NodeInfo = serde_json::from_slice(kv.value()).ok()?;
                Some((node.to_owned(), info))
            })
            .collect())
    }

    /// The nodes that hold component `digest`.
    pub(crate) async fn holders(&self, digest: &str) -> Result<Vec<String>, ClusterError> {
        let response = self
            .client
            .clone()
            .get(
                self.keys.holders(digest),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(ClusterError::unavailable)?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| match self.keys.parse(kv.key_str().ok()?)? {
                super::keys::Key::Held { node, .. } => Some(node.to_owned()),
                _ => None,
            })
            .collect())
    }

    /// Tells the cluster this node holds (and compiled) component `digest`,
    /// under its lease.
    pub(crate) async fn announce(&self, digest: &str) -> Result<(), ClusterError> {
        self.announce_compiled(digest, None).await
    }

    /// Writes this node's announcement of `digest` again, as it is, so
    /// that the watches of every node show it once more.
    async fn announce_again(&self, digest: &str) -> Result<(), ClusterError> {
        let key = self.keys.held(digest, &self.node);
        let response = self
            .client
            .clone()
            .get(key, None)
            .await
            .map_err(ClusterError::unavailable)?;
        let Some(kv) = response.kvs().first() else {
            return Ok(());
        };
        let value = kv.value().to_vec();
        self.put_held(digest, value).await
    }

    /// Like [`announce`](Self::announce), saying where its compiled
    /// artifact is, for the peers to fetch (`share_compiled`).
    pub(crate) async fn announce_compiled(
        &self,
        digest: &str,
        compiled: Option<&super::CompiledArtifact>,
    ) -> Result<(), ClusterError> {
        let value = match compiled {
            Some(artifact) => serde_json::to_vec(artifact).map_err(ClusterError::unavailable)?,
            None => Vec::new(),
        };
        self.put_held(digest, value).await
    }

    /// Writes this node's announcement that it holds component `digest`
    /// (`value`: where its compiled artifact is, or empty), under the
    /// node's lease, so it goes when the node does.
    async fn put_held(&self, digest: &str, value: Vec<u8>) -> Result<(), ClusterError> {
        let lease = self.registered_lease().await?;
        self.client
            .clone()
            .put(
                self.keys.held(digest, &self.node),
                value,
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(ClusterError::unavailable)?;
        Ok(())
    }

    /// Waits until every live node holds component `digest`, or until
    /// `spread_timeout_secs`; fails when fewer than two nodes (or every
    /// node, when fewer are alive) hold it by then.
    ///
    /// While some live node lacks it, the announcement is written again
    /// every [`REANNOUNCE_EVERY`]: a node that registered just before the
    /// deploy but took its first snapshot after the announcement never
    /// saw it (its watch starts after that snapshot), and would otherwise
    /// never fetch the component this deploy waits for.
    pub(crate) async fn await_spread(&self, digest: &str) -> Result<(), ClusterError> {
        let started = Instant::now();
        let patience = Duration::from_secs(self.settings.spread_timeout_secs);
        let mut announced = Instant::now();
        loop {
            let live = self.live_nodes().await?;
            let holders = self.holders(digest).await?;
            let all = live.iter().all(|(node, _)| holders.contains(node));
            let needed = live.len().clamp(1, 2);
            if all && holders.len() >= needed {
                return Ok(());
            }
            if announced.elapsed() >= REANNOUNCE_EVERY {
                self.announce_again(digest).await?;
                announced = Instant::now();
            }
            if started.elapsed() >= patience {
                if holders.len() >= needed {
                    tracing::warn!(
                        digest,
                        "{} of {} nodes hold the new component after {} s; switching anyway, \
                         the others fetch it when they can",
                        holders.len(),
                        live.len(),
                        patience.as_secs()
                    );
                    return Ok(());
                }
                return Err(ClusterError::TooFewHolders {
                    holders: holders.len(),
                    live: live.len(),
                    needed,
                    waited_secs: patience.as_secs(),
                    peer_url: self.peer_url.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
