//! The cluster's changes as a stream for the gateway to apply: first a
//! snapshot of every record, then each change from an etcd watch that
//! starts at the snapshot's next revision (so nothing falls in between).
//!
//! etcd-client does not resume a watch (since 0.18), and etcd 3.4.23 has
//! known watch bugs (duplicated events, events lost around a compaction;
//! `shared/research/cluster.md`). So this loop owns the resumption, and
//! simply: after *any* interruption — the connection lost, the watch
//! cancelled because its revision was compacted, or every
//! [`RECONCILE_EVERY`] — it takes a new snapshot, which the gateway applies
//! as a difference. Applying is idempotent (a node compares what it
//! serves with each record), so a duplicated or replayed event is
//! harmless.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc;

use super::keys::Key;
use super::{Cluster, ClusterError};
use crate::base::backoff::ExponentialBackoff;
use crate::certs::acme::ChallengeAnswer;
use crate::state::AppRecord;

/// A full re-read this often guards against an event the watch lost.
const RECONCILE_EVERY: Duration = Duration::from_secs(600);

/// Changes queued for the gateway; a full queue holds the watch back
/// (etcd keeps the events meanwhile).
const QUEUE: usize = 1024;

/// One change to apply.
#[derive(Debug)]
pub(crate) enum Change {
    /// Every app record: apply each, and remove the deployed apps it does
    /// not name. Why it was taken is for the log.
    Snapshot {
        /// The records.
        records: Vec<AppRecord>,
        /// Why a snapshot was taken.
        why: &'static str,
    },
    /// An app's record was written.
    App(AppRecord),
    /// An app was removed.
    Removed(String),
    /// A peer holds a component (it may be about to be deployed: fetch and
    /// compile it ahead).
    Held {
        /// The component's SHA-256, hex.
        digest: String,
        /// The node that announced it.
        node: String,
        /// Its compiled artifact there, when it shares it.
        compiled: Option<super::CompiledArtifact>,
    },
    /// A name's certificate, back-off or order lock changed.
    Certificate(String),
    /// A challenge answer was published (`Some`) or withdrawn.
    Challenge {
        /// The answer's id.
        id: String,
        /// The answer.
        answer: Option<ChallengeAnswer>,
    },
}

/// Starts following the cluster.
pub(super) fn spawn(cluster: Arc<Cluster>) -> mpsc::Receiver<Change> {
    let (sender, receiver) = mpsc::channel(QUEUE);
    tokio::spawn(follow(cluster, sender));
    receiver
}

async fn follow(cluster: Arc<Cluster>, changes: mpsc::Sender<Change>) {
    // Capped low: while etcd is back and this node is not, deploys miss it.
    let backoff = ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut failures = 0;
    let mut why = "joined";
    loop {
        match follow_once(&cluster, &changes, why).await {
            Ok(Ended::GatewayGone) => return,
            Ok(Ended::Resync(reason)) => {
                failures = 0;
                why = reason;
                continue;
            }
            Err(err) => {
                if failures == 0 {
                    let reason = match &err {
                        ClusterError::Unavailable { reason } => reason.clone(),
                        other => other.to_string(),
                    };
                    tracing::warn!(
                        "cluster: cannot follow etcd ({reason}); this node keeps serving what \
                         it has and retries"
                    );
                }
                failures += 1;
                why = "resync after etcd came back";
            }
        }
        tokio::time::sleep(backoff.delay(failures)).await;
    }
}

/// Why one snapshot-and-watch ended without an error.
enum Ended {
    /// Nobody applies changes any more.
    GatewayGone,
    /// Take a new snapshot, for this reason.
    Resync(&'static str),
}

/// One snapshot, then the watch from its next revision until it ends.
async fn follow_once(
    cluster: &Cluster,
    changes: &mpsc::Sender<Change>,
    why: &'static str,
) -> Result<Ended, ClusterError> {
    cluster.authenticate().await?;
    let (records, revision) = cluster.snapshot().await?;
    let mut stream = cluster
        .client
        .clone()
        .watch(
            cluster.keys.all(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1)
                    .with_progress_notify(),
            ),
        )
        .await
        .map_err(ClusterError::unavailable)?;
    if changes
        .send(Change::Snapshot { records, why })
        .await
        .is_err()
    {
        return Ok(Ended::GatewayGone);
    }
    // Challenge answers published before the snapshot: the watch shows
    // only what comes after it.
    for kv in cluster.standing_challenges(revision).await? {
        let Some(change) = change_of_kv(cluster, &kv, true) else {
            continue;
        };
        if changes.send(change).await.is_err() {
            return Ok(Ended::GatewayGone);
        }
    }
    let reconcile = tokio::time::sleep(RECONCILE_EVERY);
    tokio::pin!(reconcile);
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            () = &mut reconcile => return Ok(Ended::Resync("periodic reconcile")),
        };
        let Some(response) = message.map_err(ClusterError::unavailable)? else {
            return Err(ClusterError::unavailable("the watch ended"));
        };
        if response.canceled() {
            if response.compact_revision() > 0 {
                tracing::warn!(
                    "cluster: resync: the revisions this node had not seen were compacted \
                     (now at {}); re-reading every record",
                    response.compact_revision()
                );
                return Ok(Ended::Resync("resync after compaction"));
            }
            return Err(ClusterError::unavailable(format!(
                "the watch was cancelled ({})",
                response.cancel_reason()
            )));
        }
        for event in response.events() {
            let Some(change) = change_of(cluster, event) else {
                continue;
            };
            if changes.send(change).await.is_err() {
                return Ok(Ended::GatewayGone);
            }
        }
    }
}

/// What one watch event means for this node, if anything.
fn change_of(cluster: &Cluster, event: &etcd_client::Event) -> Option<Change> {
    change_of_kv(cluster, event.kv()?, event.event_type() == EventType::Put)
}

/// What key-value `kv`, written (`put`) or deleted, means for this node.
fn change_of_kv(cluster: &Cluster, kv: &etcd_client::KeyValue, put: bool) -> Option<Change> {
    let key = cluster.keys.parse(kv.key_str().ok()?)?;
    match key {
        Key::App(name) if put => match serde_json::from_slice(kv.value()) {
            Ok(record) => Some(Change::App(record)),
            Err(err) => {
                tracing::error!(app = name, "cluster: ignoring a damaged app record: {err}");
                None
            }
        },
        Key::App(name) => Some(Change::Removed(name.to_owned())),
        Key::Held { digest, node } if put && node != cluster.node => Some(Change::Held {
            digest: digest.to_owned(),
            node: node.to_owned(),
            compiled: serde_json::from_slice(kv.value()).ok(),
        }),
        Key::AcmeName { ca, name } if cluster.acme_ca.get().is_some_and(|c| c == ca) => {
            Some(Change::Certificate(name.to_owned()))
        }
        Key::Challenge { ca, id } if cluster.acme_ca.get().is_some_and(|c| c == ca) => {
            let answer = if put {
                match serde_json::from_slice(kv.value()) {
                    Ok(answer) => Some(answer),
                    Err(err) => {
                        tracing::error!("cluster: ignoring a damaged challenge answer: {err}");
                        return None;
                    }
                }
            } else {
                None
            };
            Some(Change::Challenge {
                id: id.to_owned(),
                answer,
            })
        }
        Key::Held { .. }
        | Key::Node(_)
        | Key::AcmeName { .. }
        | Key::Challenge { .. }
        | Key::ChallengeSeen => None,
    }
}
