//! What a cluster node does with the components its peers announce
//! (`held/` keys, [`crate::cluster`]): it fetches each one and compiles
//! it ahead of the deploy that will name it, so that the nodes switch
//! together. With `[cluster] share_compiled`, it fetches the compiled
//! artifact from the node that announced it instead of compiling: one
//! compile for the whole cluster.

use anyhow::Context;
use sha2::Digest;

use super::Gateway;
use super::deploy::read_blob_at;
use crate::base::locks::lock;
use crate::cluster::CompiledArtifact;

impl Gateway {
    /// Fetches and compiles component `digest`, which `node` announced
    /// (with its compiled artifact there, `compiled`), ahead of the deploy
    /// that will name it; then announces it here too.
    pub(super) fn prefetch(
        &self,
        digest: String,
        node: String,
        compiled: Option<CompiledArtifact>,
    ) {
        let Ok(cluster) = self.cluster() else {
            return;
        };
        let Some(state) = self.inner.state.clone() else {
            return;
        };
        // Held already (fetched, or deployed here): nothing to do. Every
        // announcement is a watch event on every other node, so a node
        // that acted on announcements of what it holds would announce
        // again, and the nodes would echo each other forever.
        if state.blob_path(&digest).exists() {
            return;
        }
        if !lock(&self.inner.fetching).insert(digest.clone()) {
            return;
        }
        let gateway = self.clone();
        tokio::spawn(async move {
            let path = state.blob_path(&digest);
            let fetched = async {
                cluster.fetch_blob(&digest, Some(&node)).await?;
                let bytes = read_blob_at(&path, &digest, 0)
                    .ok()
                    .context("the component fetched is not in the state directory")?;
                // The peer's artifact, when this node now has the same one.
                let mut same = None;
                if let (true, Some(artifact)) = (cluster.shares_compiled(), compiled)
                    && gateway
                        .fetch_compiled(&node, &artifact, &path, &bytes)
                        .await
                {
                    same = Some(artifact);
                }
                let runtime = gateway.inner.runtime.clone();
                let compiled_from = path.clone();
                let bytes = std::sync::Arc::new(bytes);
                let loading = bytes.clone();
                tokio::task::spawn_blocking(move || {
                    crate::runtime::load::load_component_bytes(&runtime, &compiled_from, &loading)
                })
                .await??;
                let artifact = match (cluster.shares_compiled(), same) {
                    (true, Some(same)) => Some(same),
                    (true, None) => gateway.compiled_artifact(&bytes).await,
                    (false, _) => None,
                };
                cluster
                    .announce_compiled(&digest, artifact.as_ref())
                    .await?;
                anyhow::Ok(())
            };
            if let Err(err) = fetched.await {
                tracing::warn!(
                    digest = %digest,
                    "cluster: cannot fetch and compile a component {node} announced: {err:#}"
                );
            }
            lock(&gateway.inner.fetching).remove(&digest);
        });
    }

    /// Fetches `artifact`, the compiled code of component `bytes` (kept at
    /// `path`) that `node` made, into the compile cache, when this node's
    /// engine is the same (the key says so) and it has no artifact yet;
    /// returns whether this node now has that artifact. A failure is
    /// logged: the component is then compiled here.
    async fn fetch_compiled(
        &self,
        node: &str,
        artifact: &CompiledArtifact,
        path: &std::path::Path,
        bytes: &[u8],
    ) -> bool {
        let runtime = &self.inner.runtime;
        let own = crate::runtime::load::compiled_artifact(runtime, path, bytes);
        let Ok((key, own_path)) = own else {
            return false;
        };
        if key != artifact.key {
            tracing::info!(
                "cluster: {node} compiled for another engine (another build or CPU); compiling \
                 here"
            );
            return false;
        }
        if own_path.exists() {
            // Compiled here before: announced with its own hash.
            return false;
        }
        let Ok(cluster) = self.cluster() else {
            return false;
        };
        let installed = async {
            let code = cluster.fetch_compiled(node, artifact).await?;
            crate::runtime::load::install_compiled(runtime, path, bytes, &key, &code)
        }
        .await;
        match installed {
            Ok(true) => {
                tracing::info!(
                    "cluster: compiled code of {} fetched from {node}",
                    path.display()
                );
                true
            }
            Ok(false) => false,
            Err(err) => {
                tracing::warn!(
                    "cluster: cannot fetch the compiled code from {node} ({err:#}); compiling \
                     here"
                );
                false
            }
        }
    }

    /// This node's compiled artifact of component `bytes`, for its peers,
    /// if it has one.
    pub(super) async fn compiled_artifact(&self, bytes: &[u8]) -> Option<CompiledArtifact> {
        let runtime = self.inner.runtime.clone();
        let path = std::path::Path::new("the component");
        let (key, artifact) =
            crate::runtime::load::compiled_artifact(&runtime, path, bytes).ok()?;
        let hashed = tokio::task::spawn_blocking(move || {
            let code = std::fs::read(&artifact).ok()?;
            Some(crate::state::hex(&sha2::Sha256::digest(&code)))
        })
        .await
        .ok()
        .flatten()?;
        Some(CompiledArtifact {
            key,
            sha256: hashed,
        })
    }
}
