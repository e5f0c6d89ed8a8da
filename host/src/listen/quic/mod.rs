//! The QUIC listener: serves every app over QUIC (quinn) on one UDP
//! address, with the TLS listener's certificates (ACME, static files or the
//! dev CA), so one certificate serves `chat.example.org:443` over TCP and
//! UDP alike.
//!
//! A QUIC connection is routed by its server name (SNI) exactly as a TLS
//! connection is; ALPN is mandatory in QUIC, so each app accepts the
//! protocols in its `alpn` list, or [`DEFAULT_ALPN`] when it declares none.
//! Each bidirectional stream the client opens becomes one guest `handle`
//! call (transport `quic`, with the QUIC connection's gateway-wide id and
//! the stream id in its info). Datagrams are refused by the transport
//! parameters; a client may open the 3 unidirectional streams HTTP/3
//! needs (transport parameters are fixed before the app is known), and a
//! connection that is not HTTP/3 is closed as soon as it opens one
//! ([`connection_codes::UNI_STREAM_REFUSED`]), so a client cannot send data
//! the guest would never see. An HTTP app (`wasi:http`) accepts ALPN `h3`
//! and gets the whole connection (`crate::http::h3`).
//!
//! ```toml
//! [quic]                      # on by default with [tls]
//! enabled = true
//! listen = "0.0.0.0:443"      # UDP; default: the TLS listener's address
//! idle_timeout_ms = 30000     # a QUIC connection with no packets is closed
//! retry = "auto"              # stateless retry: "auto", "always" or "never"
//!
//! receive_budget_mb = 1024    # unread client data, over all connections
//!
//! [app.limits]                # per app, see crate::limits::AppLimits
//! quic_streams_per_connection = 100
//! quic_receive_window_kb = 1024
//! ```
//!
//! Memory: a QUIC connection buffers what the client sent and the guest
//! has not read, up to its connection receive window, and what the guest
//! wrote and the client has not acknowledged, up to [`SEND_WINDOW`]. Every
//! connection starts with [`INITIAL_RECEIVE_WINDOW`] (the app is not known
//! before the handshake): `max_connections` × 64 KiB is set aside from
//! `receive_budget_mb` for those, and the start refuses settings where it
//! does not fit. Once routed, a connection's window is raised to its app's
//! `quic_receive_window_kb` only while the rest of the budget has room for
//! the difference, and stays at 64 KiB otherwise (slower, still served:
//! raised windows never keep a client from being admitted). So unread
//! client data never exceeds `receive_budget_mb` over the endpoint. With
//! the defaults: 10 000 × 64 KiB = 625 MiB set aside, 399 MiB for raised
//! windows (about 400 connections at the default 1 MiB); one address holds
//! at most 64 connections. Unsent data: at most `max_connections` × 1 MiB,
//! only while guests write to clients that do not read (a TCP socket's
//! kernel send buffer holds as much).

mod budget;
pub(crate) mod client_hello;
mod connection;
pub(crate) mod crypto;
mod stream;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use quinn::{Endpoint, EndpointConfig, TransportConfig, VarInt};
use tokio::sync::Semaphore;

use crate::apps::route::Router;
use crate::certs::Certificates;
use crate::config::AppConfig;
use crate::config::QuicSettings;
pub(crate) use crate::config::quic::INITIAL_RECEIVE_WINDOW;

pub(crate) use crypto::DEFAULT_ALPN;

/// Handshakes in progress at once; beyond it new clients are ignored.
const MAX_PENDING_HANDSHAKES: usize = 4096;
/// Data the guest wrote that one QUIC connection may hold unacknowledged
/// (quinn's default is 10 MB). Threat: a client that stops reading while
/// a guest writes, keeping the gateway's memory instead of a socket's.
pub(crate) const SEND_WINDOW: u64 = 1 << 20;

/// Application error codes in the `CONNECTION_CLOSE` frames the gateway
/// sends. Documented in the guest guide.
pub(crate) mod connection_codes {
    /// The app the connection was for is gone (removed).
    pub(crate) const APP_GONE: u32 = 0x5311;
    /// The negotiated ALPN protocol is not one the app accepts. Handshakes
    /// are started on the app's own protocol list once the ClientHello is
    /// read, so this happens only to a ClientHello the gateway could not
    /// read ahead (malformed, or over 16 KiB), negotiated on the union of
    /// all apps' protocols.
    pub(crate) const ALPN_NOT_ACCEPTED: u32 = 0x5312;
    /// The client opened a unidirectional stream on a connection that is
    /// not HTTP/3: only HTTP/3 uses them (the endpoint allows the three
    /// its control and QPACK streams need), no guest ever sees one.
    pub(crate) const UNI_STREAM_REFUSED: u32 = 0x5313;
    /// The app refused the connection at one of its limits (an HTTP/3
    /// connection counts as one connection of its app).
    pub(crate) const REFUSED: u32 = 0x5314;
}

/// The QUIC endpoint's socket, bound before the apps start (so a busy port
/// refuses the whole start), and its settings.
pub(crate) struct PreparedQuic {
    settings: QuicSettings,
    handshake_timeout: Duration,
    socket: UdpSocket,
}

/// Binds the QUIC socket if QUIC is enabled. `tls_listen` is the TLS
/// listener's configured address (the default) and `tls_handshake_ms` its
/// handshake timeout.
pub(crate) fn prepare(
    settings: Option<&QuicSettings>,
    tls_listen: SocketAddr,
    tls_handshake_ms: u64,
) -> Result<Option<PreparedQuic>> {
    let settings = settings.cloned().unwrap_or_default();
    if !settings.enabled {
        return Ok(None);
    }
    let addr = settings.listen.unwrap_or(tls_listen);
    let socket = UdpSocket::bind(addr).map_err(|err| {
        anyhow!(
            "cannot listen on udp {addr} for QUIC: {err}; {} (or set [quic] enabled = false)",
            super::tcp::bind_hint(&err)
        )
    })?;
    let handshake_timeout =
        Duration::from_millis(settings.handshake_timeout_ms.unwrap_or(tls_handshake_ms));
    Ok(Some(PreparedQuic {
        settings,
        handshake_timeout,
        socket,
    }))
}

impl PreparedQuic {
    /// The UDP port.
    pub(crate) fn port(&self) -> Option<u16> {
        self.socket.local_addr().ok().map(|a| a.port())
    }

    /// Starts serving QUIC for the apps in `router`, with the certificates
    /// of the TLS listener. Must be called within a tokio runtime.
    pub(crate) fn start(self, router: &Arc<Router>, certs: Arc<Certificates>) -> Result<Arc<Quic>> {
        let protocols = Arc::new(crypto::AppProtocols::default());
        let crypto = crypto::RoutedCrypto::new(router.clone(), certs, protocols.clone())?;
        let mut transport = TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(VarInt::from_u32(
                crate::limits::AppLimits::default().quic_streams_per_connection,
            ))
            // HTTP/3 needs 3 (RFC 9114 §6.2: control, QPACK encoder and
            // decoder). Transport parameters are fixed before the app is
            // known, so every connection may open 3; a connection that is
            // not HTTP/3 is closed when it opens one (`serve_connection`).
            .max_concurrent_uni_streams(VarInt::from_u32(3))
            .datagram_receive_buffer_size(None)
            .stream_receive_window(kib(self.settings.stream_window_kb))
            .receive_window(VarInt::from_u64(INITIAL_RECEIVE_WINDOW).unwrap_or(VarInt::MAX))
            .send_window(SEND_WINDOW)
            .max_idle_timeout(Some(
                VarInt::from_u64(self.settings.idle_timeout_ms)
                    .context("quic.idle_timeout_ms")?
                    .into(),
            ));
        let mut server = quinn::ServerConfig::with_crypto(crypto.clone());
        server
            .transport_config(Arc::new(transport))
            .max_incoming(MAX_PENDING_HANDSHAKES);
        let local = self.socket.local_addr()?;
        let endpoint = Endpoint::new(
            EndpointConfig::default(),
            Some(server),
            self.socket,
            Arc::new(quinn::TokioRuntime),
        )
        .context("cannot start the QUIC endpoint")?;
        // What the initial windows of `max_connections` leave (validated to
        // be what they need at least).
        let receive_budget =
            budget::ReceiveBudget::new((self.settings.receive_budget_mb << 20).saturating_sub(
                (self.settings.max_connections as u64).saturating_mul(INITIAL_RECEIVE_WINDOW),
            ));
        let ctx = Arc::new(QuicContext {
            router: router.clone(),
            protocols,
            settings: self.settings,
            local,
            handshake_timeout: self.handshake_timeout,
            pending: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
            per_ip: Mutex::new(HashMap::new()),
            receive_budget,
            counters: QuicCounters::default(),
        });
        tokio::spawn(connection::serve(endpoint, ctx.clone()));
        Ok(Arc::new(Quic { ctx, crypto, local }))
    }
}

fn kib(kb: u64) -> VarInt {
    VarInt::from_u64(kb.saturating_mul(1024)).unwrap_or(VarInt::MAX)
}

/// What the QUIC listener counted, for logs and metrics.
#[derive(Debug, Default)]
pub struct QuicCounters {
    /// Handshakes completed.
    pub connections: AtomicU64,
    /// Streams handed to apps.
    pub streams: AtomicU64,
    /// Clients sent a stateless Retry.
    pub retries: AtomicU64,
    /// Clients refused (connection caps) or ignored (handshake cap).
    pub refused: AtomicU64,
    /// Handshakes that failed or timed out.
    pub failed_handshakes: AtomicU64,
    /// Connections that kept the initial receive window because
    /// `quic.receive_budget_mb` had no room for their app's.
    pub windows_held_back: AtomicU64,
}

/// What the accept loop and the connections share.
struct QuicContext {
    router: Arc<Router>,
    protocols: Arc<crypto::AppProtocols>,
    settings: QuicSettings,
    /// The endpoint's address.
    local: SocketAddr,
    handshake_timeout: Duration,
    pending: Arc<Semaphore>,
    /// QUIC connections per client IP, and in total under key `None`.
    per_ip: Mutex<HashMap<Option<IpAddr>, usize>>,
    /// Receive windows raised over all connections.
    receive_budget: budget::ReceiveBudget,
    counters: QuicCounters,
}

/// The running QUIC endpoint.
pub struct Quic {
    ctx: Arc<QuicContext>,
    crypto: Arc<crypto::RoutedCrypto>,
    local: SocketAddr,
}

impl Quic {
    /// The UDP address the endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serves `app` over QUIC: records the ALPN protocols it accepts and
    /// offers them to new handshakes.
    pub fn add_app(&self, app: &AppConfig) -> Result<()> {
        self.ctx.protocols.set(&app.name, &app.alpn);
        self.crypto.refresh()
    }

    /// Serves HTTP app `app` over QUIC: it accepts ALPN `h3` only.
    pub fn serve_http(&self, app: &str) -> Result<()> {
        self.ctx
            .protocols
            .set(app, &[crate::http::h3::ALPN_H3.to_owned()]);
        self.crypto.refresh()
    }

    /// The ALPN protocols `app` accepts over QUIC.
    pub fn protocols_of(&self, app: &str) -> Vec<String> {
        self.ctx.protocols.of(app)
    }

    /// What the listener counted.
    pub fn counters(&self) -> &QuicCounters {
        &self.ctx.counters
    }

    /// The start-up line: tests parse `quic listening on ADDR`.
    pub fn describe(&self) -> String {
        format!(
            "quic listening on {}  (udp; apps without `alpn` accept ALPN `{DEFAULT_ALPN}`)",
            self.local
        )
    }
}
