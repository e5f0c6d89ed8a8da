//! Components between nodes: each node serves the components it holds on
//! `cluster.peer_listen` (`GET /v1/blobs/<sha256>`, HTTP/1.1, the cluster
//! token as a bearer token) and fetches those it lacks from a node that
//! announced it. Nothing fetched is trusted: the bytes must have the SHA-256
//! they were asked by, or they are thrown away.

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
    let digest = request.uri().path().strip_prefix("/v1/blobs/");
    let Some(digest) = digest.filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
    else {
        return status(StatusCode::NOT_FOUND, "GET /v1/blobs/<sha256> only");
    };
    if request.method() != Method::GET {
        return status(StatusCode::METHOD_NOT_ALLOWED, "GET only");
    }
    let path = cluster.state.blob_path(digest);
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

    /// Fetches component `digest` from the peer at `url` and checks it.
    async fn fetch_from(&self, url: &str, digest: &str) -> Result<Vec<u8>> {
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
        let request = Request::get(format!("/v1/blobs/{digest}"))
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
        let body = Limited::new(response.into_body(), MAX_BLOB_BYTES)
            .collect()
            .await
            .map_err(|err| anyhow!("reading the component: {err}"))?
            .to_bytes();
        let got = crate::state::hex(&Sha256::digest(&body));
        if got != digest {
            bail!("the peer sent bytes whose SHA-256 is {got}, not {digest}; discarded");
        }
        Ok(body.to_vec())
    }
}
