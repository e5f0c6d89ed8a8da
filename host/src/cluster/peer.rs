//! Components between nodes: each node serves the components it holds on
//! `cluster.peer_listen` (`GET /v1/blobs/<sha256>`, HTTP/1.1, the cluster
//! token as a bearer token) and fetches those it lacks from a node that
//! announced it. Nothing fetched is trusted: the bytes must have the SHA-256
//! they were asked by, or they are thrown away. With `share_compiled`, a
//! node serves its compiled artifacts too (`GET /v1/compiled/<key>`), each
//! checked against the SHA-256 its compiler published in etcd.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};

use super::Cluster;

/// The largest component a peer may send (the gateway's own upload
/// limit). Threat: a compromised peer filling this node's memory.
const MAX_BLOB_BYTES: usize = 64 << 20;

/// The largest compiled artifact a peer may send (a 64 MiB component
/// compiles to a few times its size). Threat: a peer filling this node's
/// memory.
const MAX_ARTIFACT_BYTES: usize = 1 << 30;

/// A compiled artifact as a node announces it (the value of its `held/`
/// key): its compile cache key, which says which engine made it, and the
/// SHA-256 of the artifact, which a fetched copy must have.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct CompiledArtifact {
    /// The compile cache key (SHA-256 of engine and component, hex).
    pub(crate) key: String,
    /// The artifact's SHA-256, hex.
    pub(crate) sha256: String,
}

/// One fetch, connect to last byte. Threat: a peer that stalls a deploy.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// A peer's request must arrive whole within this time. Threat: slowloris
/// on the peer port.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves this node's components to its peers, for as long as the gateway
/// runs.
pub(super) async fn serve(cluster: Arc<Cluster>, listener: TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!("cluster: peer listener: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let cluster = cluster.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&cluster, &request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(REQUEST_HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The answer to one peer request.
async fn answer<B>(cluster: &Cluster, request: &Request<B>) -> Response<Full<Bytes>> {
    let status = |code: StatusCode, text: &str| {
        let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
        *response.status_mut() = code;
        response
    };
    let authorized = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| constant_time_eq(token.as_bytes(), cluster.token.as_bytes()));
    if !authorized {
        return status(StatusCode::UNAUTHORIZED, "the cluster token is required");
    }
    if request.method() != Method::GET {
        return status(StatusCode::METHOD_NOT_ALLOWED, "GET only");
    }
    let hex64 = |d: &&str| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit());
    let path = request.uri().path();
    let path = if let Some(digest) = path.strip_prefix("/v1/blobs/").filter(hex64) {
        cluster.state.blob_path(digest)
    } else if let (Some(key), Some(dir)) = (
        path.strip_prefix("/v1/compiled/").filter(hex64),
        &cluster.compiled,
    ) {
        dir.join(format!("{key}.cwasm"))
    } else {
        return status(
            StatusCode::NOT_FOUND,
            "GET /v1/blobs/<sha256> or /v1/compiled/<key> only",
        );
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => Response::new(Full::new(Bytes::from(bytes))),
        Err(_) => status(
            StatusCode::NOT_FOUND,
            "this node does not hold that component",
        ),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Cluster {
    /// Fetches component `digest` from a node that holds it (`preferred`
    /// first), checks it and stores it in the state directory.
    pub(crate) async fn fetch_blob(&self, digest: &str, preferred: Option<&str>) -> Result<()> {
        let nodes = self.live_nodes().await?;
        let mut holders = self.holders(digest).await?;
        holders.retain(|node| node != &self.node);
        holders.sort_by_key(|node| Some(node.as_str()) != preferred);
        let mut errors = Vec::new();
        for node in holders {
            let Some((_, url)) = nodes.iter().find(|(name, _)| *name == node) else {
                continue;
            };
            match tokio::time::timeout(FETCH_TIMEOUT, self.fetch_from(url, digest)).await {
                Ok(Ok(bytes)) => {
                    let state = self.state.clone();
                    tokio::task::spawn_blocking(move || state.put_blob(&bytes))
                        .await
                        .context("storing a fetched component")??;
                    return Ok(());
                }
                Ok(Err(err)) => errors.push(format!("{node} ({url}): {err:#}")),
                Err(_) => errors.push(format!(
                    "{node} ({url}): no answer within {FETCH_TIMEOUT:?}"
                )),
            }
        }
        if errors.is_empty() {
            bail!("no live node holds component {digest}");
        }
        bail!(
            "cannot fetch component {digest} from any node: {}",
            errors.join("; ")
        )
    }

    /// Fetches compiled artifact `artifact` from node `node` and checks
    /// its SHA-256.
    pub(crate) async fn fetch_compiled(
        &self,
        node: &str,
        artifact: &CompiledArtifact,
    ) -> Result<Vec<u8>> {
        let nodes = self.live_nodes().await?;
        let (_, url) = nodes
            .iter()
            .find(|(name, _)| name == node)
            .with_context(|| format!("node {node} is not alive"))?;
        let path = format!("/v1/compiled/{}", artifact.key);
        tokio::time::timeout(
            FETCH_TIMEOUT,
            self.get_checked(url, &path, &artifact.sha256, MAX_ARTIFACT_BYTES),
        )
        .await
        .map_err(|_| anyhow!("no answer from {node} within {FETCH_TIMEOUT:?}"))?
    }

    /// Fetches component `digest` from the peer at `url` and checks it.
    async fn fetch_from(&self, url: &str, digest: &str) -> Result<Vec<u8>> {
        self.get_checked(url, &format!("/v1/blobs/{digest}"), digest, MAX_BLOB_BYTES)
            .await
    }

    /// `GET path` from the peer at `url`: at most `limit` bytes, which
    /// must have SHA-256 `digest`.
    async fn get_checked(
        &self,
        url: &str,
        path: &str,
        digest: &str,
        limit: usize,
    ) -> Result<Vec<u8>> {
        let authority = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("a peer URL must be http://HOST:PORT, not {url}"))?
            .trim_end_matches('/');
        let stream = TcpStream::connect(authority)
            .await
            .with_context(|| format!("cannot connect to {authority}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header(http::header::HOST, authority)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .body(Full::new(Bytes::new()))?;
        let response = sender.send_request(request).await?;
        if response.status() != StatusCode::OK {
            bail!("the peer answered {}", response.status());
        }
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|err| anyhow!("reading {path}: {err}"))?
            .to_bytes();
        let got = crate::state::hex(&Sha256::digest(&body));
        if got != digest {
            bail!("the peer sent bytes whose SHA-256 is {got}, not {digest}; discarded");
        }
        Ok(body.to_vec())
    }
}
