//! HTTP apps, the protocol side: HTTP/1.1 and HTTP/2 (hyper) over a
//! gateway [`Connection`](crate::base::conn::Connection), HTTP/3 (`h3` over quinn)
//! over a whole QUIC connection, and what every request goes through before
//! and after an app serves it.
//!
//! **Architecture invariant:** this module knows nothing about WebAssembly.
//! It turns bytes into [`http::Request`]s and back, and hands each request to
//! an [`Origin`]: the thing that serves an app's requests (in the gateway,
//! the app's `wasi:http` component, `runtime::http`). Tests drive it with
//! origins written in Rust, over in-memory pipes.
//!
//! The path of one request ([`front::Front::serve`]):
//! 1. **Normalise** ([`request::prepare`]): the URI is made absolute
//!    (`https://authority/path?query`), since WASI 0.3 guests read the scheme
//!    and authority only from the URI and `Host` is a forbidden header; an
//!    authority that names another app than the connection's (TLS SNI)
//!    gets `421 Misdirected Request`; the client's address is set in
//!    [`request::CLIENT_ADDR_HEADER`], inbound copies removed; `CONNECT`
//!    and the asterisk form are refused (no tunnels through `wasi:http`).
//! 2. **Caps** ([`HttpLimits`]): a declared body over
//!    `http_max_body_kb` gets `413` before the app sees it, an undeclared
//!    one is cut at that size; header sizes and HTTP/2 streams are bounded by
//!    the protocol stacks.
//! 3. **Serve** with a deadline: no response head within
//!    `http_request_timeout_ms` gets `504`; an origin that cannot take the
//!    request answers `503`, one that failed (a guest trap) `500`.
//! 4. **Answer**: `Alt-Svc` advertises HTTP/3 on HTTP/1.1 and HTTP/2 when
//!    the QUIC endpoint serves the app (a guest's own value is kept); the
//!    response body is metered, and when it ends the origin gets an
//!    [`Exchange`] (the access line and metrics, [`stats`]).

pub(crate) mod answer;
pub(crate) mod body;
pub(crate) mod front;
pub(crate) mod h3;
pub(crate) mod io;
pub(crate) mod request;
pub(crate) mod server;
pub(crate) mod stats;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::combinators::UnsyncBoxBody;

pub(crate) use crate::limits::http::HttpLimits;
pub(crate) use front::Front;

/// An error inside a request or response body, of any origin.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a request an origin receives and of a response it returns.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Which HTTP version carried a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1, over TLS or cleartext.
    Http1,
    /// HTTP/2, over TLS (ALPN `h2`) or cleartext (prior knowledge, h2c).
    Http2,
    /// HTTP/3, over QUIC (ALPN `h3`).
    Http3,
}

impl Protocol {
    /// Every protocol, in the order of metrics tables.
    pub const ALL: [Protocol; 3] = [Protocol::Http1, Protocol::Http2, Protocol::Http3];

    /// The label of metrics and access lines: `h1`, `h2` or `h3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "h1",
            Protocol::Http2 => "h2",
            Protocol::Http3 => "h3",
        }
    }
}

/// What the gateway knows about the connection a request came on.
#[derive(Debug, Clone)]
pub(crate) struct ConnMeta {
    /// The client's address.
    pub peer: SocketAddr,
    /// The gateway's address the client reached.
    pub local: SocketAddr,
    /// The TLS (or QUIC) server name; `None` on cleartext, where the
    /// connection is the app's by its port and any authority is served.
    pub server_name: Option<String>,
    /// The HTTP version of the connection.
    pub protocol: Protocol,
}

impl ConnMeta {
    /// Whether the connection is encrypted (TLS or QUIC): the scheme of its
    /// requests is `https`.
    pub(crate) fn secure(&self) -> bool {
        self.server_name.is_some()
    }
}

/// What serves an app's requests, seen from the protocol side.
pub(crate) trait Origin: Send + Sync + 'static {
    /// Whether a request for `host` (lowercase, without port) may be
    /// served on a connection that was routed to this origin by its server
    /// name: the name must select the same app. `false` answers `421`.
    fn serves_host(&self, host: &str) -> bool;

    /// Serves one request, already normalised. The future is dropped when
    /// the request's deadline passes (the client gets `504`), so it must
    /// not own anything that cannot be abandoned.
    fn serve(&self, request: http::Request<Body>) -> BoxFuture<'static, Result<Served, Refusal>>;

    /// Called once per request when its exchange is over (the response
    /// body ended or was abandoned, or the gateway answered for the app):
    /// the access line and the metrics.
    fn record(&self, exchange: &Exchange);
}

/// A response from an origin.
pub(crate) type Served = http::Response<Body>;

/// Why an origin did not produce a response; each becomes a status the
/// gateway answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No capacity now (every instance at its request cap, the instance
    /// pool full): `503` with `Retry-After`.
    Busy(String),
    /// The app is gone (removed while the request waited): `503`.
    Gone,
    /// The guest failed on this request (a trap, or no response): `500`.
    /// The text is for the app's log, not for the client.
    Failed(String),
    /// The guest gave up on the request with an error of its own (a
    /// `wasi:http` `error-code`): `500`.
    GuestError(String),
    /// The request's deadline passed inside the origin: `504`.
    Expired,
}

/// One finished request, as the access line and the metrics see it.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The request method.
    pub method: http::Method,
    /// The path and query, as the client sent them.
    pub path: String,
    /// The status the client got.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// From the request head to the end of the response body.
    pub duration: Duration,
    /// The HTTP version.
    pub protocol: Protocol,
    /// The client's address.
    pub peer: SocketAddr,
    /// Why the gateway answered for the app, when it did (a timeout, a
    /// refusal, a trap), or why the response body broke off.
    pub note: Option<String>,
}
