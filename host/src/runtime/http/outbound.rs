//! Guests' outbound HTTP requests, sent by the gateway under the app's
//! outbound policy: the same rules and budgets as `wasi:sockets`
//! ([`crate::tenant::outbound`]).
//!
//! One request: the URI's host is looked up only if the policy lists the
//! name (an IP literal needs no lookup), under the app's and the gateway's
//! lookup caps; every address is checked with
//! [`OutboundPolicy::allows_connect`], and the gateway connects only to an
//! address that passed (so a name that resolves to `127.0.0.1` reaches
//! nothing a `*` rule would not); the socket is counted against
//! `limits.max_outbound_sockets` for as long as the connection lives;
//! `https` is verified against the operating system's trusted roots
//! (`SSL_CERT_FILE` / `SSL_CERT_DIR` are honoured); the request goes out
//! over HTTP/1.1 (hyper). A refusal is recorded as an app event
//! (`outbound-denied` or `limit-hit`) and reaches the guest as a
//! `wasi:http` error code.

use std::future::{Future, poll_fn};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::{Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use crate::tenant::guest_budget::SocketLease;
use crate::tenant::logs::{AppLog, EventKind};
use crate::tenant::outbound::OutboundPolicy;

/// How long establishing a connection (TCP, TLS, HTTP) may take unless the
/// guest asks for less or more (wasmtime's own default is 10 minutes).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the response head may take unless the guest says otherwise.
pub(crate) const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the response body may pause unless the guest says otherwise.
pub(crate) const BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(60);
/// Waiting for lookup permits and the lookup itself (as `wasi:sockets`
/// lookups: see `runtime::name_lookup`).
pub(crate) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What sending needs: the app's policy (rules and budgets) and its log,
/// and which instance asks (for events).
#[derive(Clone)]
pub(crate) struct Outbound {
    /// The app's outbound policy.
    pub policy: Arc<OutboundPolicy>,
    /// The app's log, for refusals.
    pub log: Arc<AppLog>,
    /// The instance that sends.
    pub instance: u32,
}

/// What the gateway will connect to for a request URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The host, lowercase, without brackets or trailing dot.
    pub host: String,
    /// The port (the scheme's default when the URI has none).
    pub port: u16,
    /// Whether it is `https`.
    pub tls: bool,
}

impl Target {
    /// The target of an absolute `http` or `https` URI.
    pub(crate) fn of(uri: &Uri) -> Result<Self, Error> {
        let tls = match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTPS => true,
            Some(scheme) if *scheme == Scheme::HTTP => false,
            _ => return Err(Error::HttpProtocolError),
        };
        let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if host.is_empty() {
            return Err(Error::HttpRequestUriInvalid);
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self { host, port, tls })
    }
}

impl Outbound {
    /// Sends `request` as the policy allows; returns the response and the
    /// future that drives the connection until the response body is done.
    pub(crate) async fn send(
        self,
        mut request: Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<
        (
            Response<WasiBody>,
            Box<dyn Future<Output = Result<(), Error>> + Send>,
        ),
        Error,
    > {
        let target = Target::of(request.uri())?;
        let connect_timeout = options
            .and_then(|o| o.connect_timeout)
            .unwrap_or(CONNECT_TIMEOUT);
        let first_byte = options
            .and_then(|o| o.first_byte_timeout)
            .unwrap_or(FIRST_BYTE_TIMEOUT);
        let between_bytes = options
            .and_then(|o| o.between_bytes_timeout)
            .unwrap_or(BETWEEN_BYTES_TIMEOUT)
            .max(Duration::from_millis(1));

        let addrs = self.allowed_addresses(&target).await?;
        let lease = self.policy.budget().open_socket().map_err(|refusal| {
            self.event(EventKind::LimitHit {
                limit: refusal.limit(),
                detail: format!(
                    "refused an outbound HTTP request to {}:{}: {refusal}",
                    target.host, target.port
                ),
            });
            Error::ConnectionLimitReached
        })?;
        let tcp = connect(&addrs, connect_timeout).await?;
        let io: Box<dyn Io> = if target.tls {
            Box::new(tls(tcp, &target.host, connect_timeout).await?)
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) = tokio::time::timeout(
            connect_timeout,
            hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(io)),
        )
        .await
        .map_err(|_| Error::ConnectionTimeout)??;

        // The request line carries the path only; the authority is in
        // `Host` (which wasmtime-wasi-http sets).
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        if !request.headers().contains_key(http::header::HOST)
            && let Some(authority) = request.uri().authority()
            && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
        {
            request.headers_mut().insert(http::header::HOST, host);
        }
        *request.uri_mut() = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;

        // Wait for the head while driving the connection.
        let mut conn = Some(conn);
        let response = {
            let mut sending = pin!(tokio::time::timeout(
                first_byte,
                sender.send_request(request)
            ));
            poll_fn(|cx| {
                if let Poll::Ready(result) = sending.as_mut().poll(cx) {
                    return Poll::Ready(result);
                }
                if let Some(driving) = conn.as_mut()
                    && let Poll::Ready(ended) = Pin::new(driving).poll(cx)
                {
                    conn = None;
                    if let Err(err) = ended {
                        return Poll::Ready(Ok(Err(err)));
                    }
                    return sending.as_mut().poll(cx);
                }
                Poll::Pending
            })
            .await
            .map_err(|_| Error::ConnectionReadTimeout)??
        };
        let lease = Arc::new(lease);
        let body_lease = lease.clone();
        let response = response.map(move |incoming| {
            Paced {
                incoming,
                pause: Box::pin(tokio::time::sleep(between_bytes)),
                between_bytes,
                _lease: body_lease,
            }
            .boxed_unsync()
        });
        let driver = async move {
            // The socket stays counted while the connection lives.
            let _lease = lease;
            match conn {
                Some(conn) => conn.await.map_err(Error::from),
                None => Ok(()),
            }
        };
        Ok((response, Box::new(driver)))
    }

    /// The addresses of `target` the policy lets the guest connect to:
    /// looked up when the policy lists the name, each checked.
    async fn allowed_addresses(&self, target: &Target) -> Result<Vec<SocketAddr>, Error> {
        let host = target.host.as_str();
        let ips = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => {
                if !self.policy.allows_lookup(host) {
                    self.event(EventKind::OutboundDenied {
                        target: format!("http request to {host}:{} (name lookup)", target.port),
                    });
                    return Err(Error::HttpRequestDenied);
                }
                let ips = self.look_up(host).await?;
                self.policy.record_lookup(host, &ips);
                ips
            }
        };
        let allowed: Vec<SocketAddr> = ips
            .iter()
            .map(|&ip| SocketAddr::new(ip, target.port))
            .filter(|&addr| self.policy.allows_connect(addr))
            .collect();
        if allowed.is_empty() {
            let ips: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
            self.event(EventKind::OutboundDenied {
                target: format!(
                    "http request to {host}:{} ({})",
                    target.port,
                    ips.join(", ")
                ),
            });
            return Err(Error::DestinationIpProhibited);
        }
        Ok(allowed)
    }

    /// Resolves `host` on the blocking pool, under the app's and the
    /// gateway's lookup caps, within [`LOOKUP_TIMEOUT`].
    async fn look_up(&self, host: &str) -> Result<Vec<IpAddr>, Error> {
        let started = tokio::time::Instant::now();
        let permit = self
            .policy
            .budget()
            .lookup_permit(LOOKUP_TIMEOUT)
            .await
            .map_err(|refusal| {
                self.event(EventKind::LimitHit {
                    limit: refusal.limit(),
                    detail: format!("name lookup {host:?} for an HTTP request: {refusal}"),
                });
                Error::DnsTimeout
            })?;
        let name = host.to_owned();
        let resolving = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            (name.as_str(), 0)
                .to_socket_addrs()
                .map(|found| found.map(|a| a.ip()).collect::<Vec<IpAddr>>())
        });
        let left = LOOKUP_TIMEOUT.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, resolving).await {
            Err(_) => Err(Error::DnsTimeout),
            Ok(Err(_)) => Err(Error::DnsTimeout),
            Ok(Ok(Err(err))) => Err(Error::DnsError {
                rcode: Some(err.to_string()),
                info_code: None,
            }),
            Ok(Ok(Ok(mut ips))) => {
                ips.sort();
                ips.dedup();
                Ok(ips)
            }
        }
    }

    fn event(&self, kind: EventKind) {
        self.log.event(Some(self.instance), kind);
    }
}

/// A byte stream the HTTP client can run over (TCP or TLS over TCP).
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Connects to the first of `addrs` that answers.
async fn connect(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, Error> {
    let mut last = Error::ConnectionRefused;
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(err)) => last = Error::Connect(err),
            Err(_) => last = Error::ConnectionTimeout,
        }
    }
    Err(last)
}

/// TLS to `host` over `tcp`, verified against the system's roots.
async fn tls(
    tcp: TcpStream,
    host: &str,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
    let name = match host.parse::<IpAddr>() {
        Ok(ip) => ServerName::from(ip),
        Err(_) => {
            ServerName::try_from(host.to_owned()).map_err(|_| Error::HttpRequestUriInvalid)?
        }
    };
    let connector = tokio_rustls::TlsConnector::from(client_config()?);
    tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(Error::Tls)
}

/// The TLS client configuration: the operating system's trusted roots,
/// read once.
fn client_config() -> Result<Arc<rustls::ClientConfig>, Error> {
    crate::certs::system_roots::https_client_config().map_err(|why| {
        static LOGGED: std::sync::Once = std::sync::Once::new();
        LOGGED.call_once(|| tracing::error!("outbound https: {why}"));
        Error::InternalError(Some(why))
    })
}

/// A response body that fails when the server pauses for longer than
/// `between_bytes`, and holds the socket's lease until it is dropped.
struct Paced {
    incoming: hyper::body::Incoming,
    pause: Pin<Box<tokio::time::Sleep>>,
    between_bytes: Duration,
    _lease: Arc<SocketLease>,
}

impl HttpBody for Paced {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let deadline = tokio::time::Instant::now() + self.between_bytes;
                self.pause.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(Error::from(err)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.pause.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_comes_from_the_absolute_uri() {
        let t = |uri: &str| Target::of(&uri.parse().unwrap());
        assert_eq!(
            t("https://API.example.com/x").unwrap(),
            Target {
                host: "api.example.com".into(),
                port: 443,
                tls: true
            }
        );
        assert_eq!(
            t("http://[::1]:8080/").unwrap(),
            Target {
                host: "::1".into(),
                port: 8080,
                tls: false
            }
        );
        assert!(matches!(t("/relative"), Err(Error::HttpProtocolError)));
        assert!(matches!(t("ftp://x/"), Err(Error::HttpProtocolError)));
    }
}
