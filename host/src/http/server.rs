//! HTTP/1.1 and HTTP/2 over one gateway connection, served by hyper.
//!
//! Over TLS the ALPN result decides ([`Mode::for_alpn`]): `h2` is HTTP/2,
//! `http/1.1` (or no ALPN at all) HTTP/1.1. On an app's own cleartext port
//! both are served: HTTP/2 by prior knowledge (h2c, as load balancers and
//! `curl --http2-prior-knowledge` speak it), recognised by its preface,
//! else HTTP/1.1. (h2c by `Upgrade` is not offered: no browser uses it.)

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{BoxError, Front};
use crate::limits::http::{HEADER_READ_TIMEOUT, MAX_LOCAL_RESETS, MAX_PENDING_RESETS};

/// The ALPN protocol of HTTP/2 over TLS.
pub(crate) const ALPN_H2: &str = "h2";
/// The ALPN protocol of HTTP/1.1.
pub(crate) const ALPN_HTTP1: &str = "http/1.1";
/// The ALPN protocols an HTTP app's TLS handshakes offer, preferred first.
pub(crate) const TLS_ALPN: [&str; 2] = [ALPN_H2, ALPN_HTTP1];

/// Which HTTP versions a connection is served with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only.
    Http2,
    /// HTTP/2 when the client starts with its preface, else HTTP/1.1.
    Sniff,
}

impl Mode {
    /// The mode of a connection: by its ALPN result on TLS (`h2` → HTTP/2;
    /// `http/1.1` or none → HTTP/1.1), both on cleartext.
    pub(crate) fn for_alpn(alpn: Option<&str>, tls: bool) -> Self {
        match (alpn, tls) {
            (Some(ALPN_H2), _) => Mode::Http2,
            (_, true) => Mode::Http1,
            (Some(ALPN_HTTP1), false) => Mode::Http1,
            (_, false) => Mode::Sniff,
        }
    }
}

/// Serves the requests of one connection through `front` until the client
/// closes it, it fails, or `shutdown` resolves: then the connection is
/// closed gracefully (HTTP/2 `GOAWAY`; HTTP/1.1 ends after the request in
/// flight) and the requests in flight finish.
pub(crate) async fn serve<I>(
    io: I,
    mode: Mode,
    front: Arc<Front>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = *front.limits();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder = match mode {
        Mode::Http1 => builder.http1_only(),
        Mode::Http2 => builder.http2_only(),
        Mode::Sniff => builder,
    };
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(limits.max_header_bytes().max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes()).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_RESETS);
    let service = service_fn(move |request: Request<Incoming>| {
        let front = front.clone();
        async move {
            let request = request.map(|body| body.map_err(BoxError::from).boxed_unsync());
            Ok::<_, Infallible>(front.serve(request).await)
        }
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::pin!(shutdown);
    tokio::select! {
        served = connection.as_mut() => served,
        () = &mut shutdown => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_picks_the_version() {
        assert_eq!(Mode::for_alpn(Some("h2"), true), Mode::Http2);
        assert_eq!(Mode::for_alpn(Some("http/1.1"), true), Mode::Http1);
        assert_eq!(Mode::for_alpn(None, true), Mode::Http1);
        assert_eq!(Mode::for_alpn(None, false), Mode::Sniff);
    }
}
