//! One GET to a registry or its token service, over HTTPS (rustls, the
//! system's trusted roots, which honour `SSL_CERT_FILE`) or plain HTTP,
//! one connection a request (a pull is a handful of them), every wait and
//! every body bounded.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// Connecting (TCP and TLS) must finish within this time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A whole request, body included, must finish within this time. Threat:
/// a registry that trickles a body to hold the deploy forever. (As long
/// as the admin API's upload timeout: the component is as large.)
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// At most this many redirects are followed (registries send blobs to
/// their storage with one).
const MAX_REDIRECTS: usize = 5;

/// Where a request goes: scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// HTTPS, else plain HTTP.
    pub(crate) https: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub(crate) host: String,
    /// TCP port.
    pub(crate) port: u16,
}

impl Endpoint {
    /// The endpoint and the path-and-query of an absolute `http(s)://` URL.
    pub(crate) fn of_url(url: &str) -> Result<(Self, String)> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("`{url}` is not a URL"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => bail!("`{url}` is not an http:// or https:// URL"),
        };
        let host = uri
            .host()
            .ok_or_else(|| anyhow!("`{url}` names no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        Ok((Self { https, host, port }, path))
    }

    /// `host[:port]` as the `Host` header has it.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.https, self.port) {
            (true, 443) | (false, 80) => host,
            (_, port) => format!("{host}:{port}"),
        }
    }

    /// `https://host:port` (for messages).
    pub(crate) fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority()
        )
    }
}

/// A response whose body is still to be read.
pub(crate) struct Response {
    /// The status.
    pub(crate) status: StatusCode,
    /// The headers.
    pub(crate) headers: HeaderMap,
    body: Incoming,
    /// Where it came from (after redirects).
    pub(crate) from: Endpoint,
}

impl Response {
    /// The body, failing if it is longer than `limit` bytes; `what` names
    /// it in errors.
    pub(crate) async fn bytes(self, limit: usize, what: &str) -> Result<Bytes> {
        let declared = self
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            bail!("{what} is larger than {limit} bytes; refused");
        }
        let body = tokio::time::timeout(REQUEST_TIMEOUT, Limited::new(self.body, limit).collect())
            .await
            .map_err(|_| {
                anyhow!(
                    "{what} did not arrive within {} s",
                    REQUEST_TIMEOUT.as_secs()
                )
            })?;
        match body {
            Ok(body) => Ok(body.to_bytes()),
            Err(err) if err.is::<http_body_util::LengthLimitError>() => {
                bail!("{what} is larger than {limit} bytes; refused")
            }
            Err(err) => Err(anyhow!(
                "reading {what} from {} failed: {err}",
                self.from.url()
            )),
        }
    }

    /// A header as text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// GETs `path` from `endpoint` with `headers`, following redirects. The
/// `authorization` header goes only to `endpoint` itself (never to the
/// storage a redirect names), and a redirect from HTTPS to plain HTTP is
/// refused.
pub(crate) async fn get(
    endpoint: &Endpoint,
    path: &str,
    headers: &[(&str, String)],
    authorization: Option<&str>,
) -> Result<Response> {
    let mut target = endpoint.clone();
    let mut path = path.to_owned();
    for _ in 0..=MAX_REDIRECTS {
        let mut request = Request::get(path.as_str())
            .header("host", target.authority())
            .header(
                "user-agent",
                concat!("sockgate/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(authorization) = authorization.filter(|_| target == *endpoint) {
            let mut value = HeaderValue::from_str(authorization)
                .context("the credentials hold characters HTTP headers cannot carry")?;
            value.set_sensitive(true);
            request = request.header("authorization", value);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .with_context(|| format!("cannot build a request for `{path}`"))?;
        let response = send(&target, request).await?;
        if !response.status().is_redirection() || response.status() == StatusCode::NOT_MODIFIED {
            let (parts, body) = response.into_parts();
            return Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body,
                from: target,
            });
        }
        let location = response
            .headers()
            .get(hyper::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow!("{} redirected `{path}` without a Location", target.url()))?
            .to_owned();
        if location.starts_with('/') {
            path = location;
        } else {
            let (next, next_path) = Endpoint::of_url(&location)
                .with_context(|| format!("{} redirected to a bad location", target.url()))?;
            if target.https && !next.https {
                bail!(
                    "{} redirected to plain HTTP ({location}); refused",
                    target.url()
                );
            }
            target = next;
            path = next_path;
        }
    }
    bail!(
        "{} redirected more than {MAX_REDIRECTS} times; refused",
        endpoint.url()
    )
}

/// One request on a new connection.
async fn send(
    endpoint: &Endpoint,
    request: Request<Empty<Bytes>>,
) -> Result<hyper::Response<Incoming>> {
    let url = endpoint.url();
    let slow = || {
        anyhow!(
            "{url} did not answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        )
    };
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((endpoint.host.as_str(), endpoint.port)),
    )
    .await
    .map_err(|_| slow())?
    .with_context(|| format!("cannot reach {url}"))?;
    if !endpoint.https {
        return exchange(TokioIo::new(tcp), request, &url).await;
    }
    let name = ServerName::try_from(endpoint.host.clone())
        .with_context(|| format!("`{}` is not a TLS server name", endpoint.host))?;
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(tls_config()?).connect(name, tcp),
    )
    .await
    .map_err(|_| slow())?
    .with_context(|| {
        format!(
            "the TLS handshake with {url} failed (a registry serving plain HTTP needs \
             --plain-http; one with a private CA, SSL_CERT_FILE)"
        )
    })?;
    exchange(TokioIo::new(tls), request, &url).await
}

/// The HTTP/1.1 exchange on a connected stream, up to the response's head.
async fn exchange<T>(
    io: T,
    request: Request<Empty<Bytes>>,
    url: &str,
) -> Result<hyper::Response<Incoming>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .with_context(|| format!("request to {url} failed"))?;
    tokio::spawn(connection);
    tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(request))
        .await
        .map_err(|_| {
            anyhow!(
                "{url} did not answer within {} s",
                REQUEST_TIMEOUT.as_secs()
            )
        })?
        .with_context(|| format!("request to {url} failed"))
}

/// The TLS client configuration: the system's trusted roots, read once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>> {
    sockgate_host::certs::system_roots::https_client_config().map_err(|why| anyhow!(why))
}
