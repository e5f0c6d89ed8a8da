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
//! the stream id in its info). Unidirectional streams and datagrams are
//! refused by the transport parameters (a limit of zero streams, no
//! datagram support), so a client cannot send data the guest would never
//! see.
//!
//! ```toml
//! [quic]                      # on by default with [tls]
//! enabled = true
//! listen = "0.0.0.0:443"      # UDP; default: the TLS listener's address
//! idle_timeout_ms = 30000     # a QUIC connection with no packets is closed
//! retry = "auto"              # stateless retry: "auto", "always" or "never"
//!
//! [app.limits]                # per app, see crate::limits::AppLimits
//! quic_streams_per_connection = 100
//! quic_receive_window_kb = 8192
//! ```
//!
//! Address validation: a client's first packet could come from a spoofed
//! address. With `retry = "auto"`, once more than `retry_above` handshakes
//! are in progress, unvalidated clients are first sent a stateless Retry
//! (RFC 9000, section 8.1): a spoofed flood then costs the gateway one
//! packet per packet and no state, while real clients pay one round trip.

mod crypto;
mod stream;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use quinn::{Endpoint, EndpointConfig, Incoming, TransportConfig, VarInt};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::certs::Certificates;
use crate::config::AppConfig;
use crate::conn::{ConnInfo, Connection, QuicStream, Transport, next_conn_id};
use crate::locks::lock;
use crate::route::Router;

pub use crypto::DEFAULT_ALPN;
pub use stream::codes as stream_codes;

/// Handshakes in progress at once; beyond it new clients are ignored.
const MAX_PENDING_HANDSHAKES: usize = 4096;

/// Application error codes in the `CONNECTION_CLOSE` frames the gateway
/// sends. Documented in the guest guide.
pub mod connection_codes {
    /// The app the connection was for is gone (removed).
    pub const APP_GONE: u32 = 0x5311;
    /// The negotiated ALPN protocol is not one the app accepts: the client
    /// offered several, and the gateway's preference picked another app's.
    pub const ALPN_NOT_ACCEPTED: u32 = 0x5312;
}

/// When unvalidated clients are sent a stateless Retry first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryPolicy {
    /// When more than `retry_above` handshakes are in progress.
    #[default]
    Auto,
    /// Always: every new client pays one more round trip.
    Always,
    /// Never (clients behind spoofing-safe networks only).
    Never,
}

/// `[quic]`: the QUIC endpoint. On by default when `[tls]` is configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuicSettings {
    /// Serve QUIC at all.
    pub enabled: bool,
    /// The UDP address; default: the TLS listener's address (same port,
    /// over UDP).
    pub listen: Option<SocketAddr>,
    /// A client must complete its handshake within this time (ms); default:
    /// `tls.handshake_timeout_ms`.
    pub handshake_timeout_ms: Option<u64>,
    /// A QUIC connection with no packet in either direction for this long
    /// is closed (ms). Negotiated in the handshake, before the app is
    /// known, so it is endpoint-wide.
    pub idle_timeout_ms: u64,
    /// Bytes one stream may have in flight to the gateway, unread by the
    /// guest (KiB). Endpoint-wide for the same reason.
    pub stream_window_kb: u64,
    /// QUIC connections at once, over all apps.
    pub max_connections: usize,
    /// QUIC connections at once from one IP address.
    pub max_connections_per_ip: usize,
    /// Stateless retry (address validation).
    pub retry: RetryPolicy,
    /// With `retry = "auto"`: handshakes in progress above which
    /// unvalidated clients are sent a Retry first.
    pub retry_above: usize,
}

impl Default for QuicSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            handshake_timeout_ms: None,
            idle_timeout_ms: 30_000,
            stream_window_kb: 1024,
            max_connections: 10_000,
            max_connections_per_ip: 64,
            retry: RetryPolicy::Auto,
            retry_above: 32,
        }
    }
}

impl QuicSettings {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if !(100..=3_600_000).contains(&self.idle_timeout_ms) {
            bail!("quic.idle_timeout_ms must be between 100 and 3600000");
        }
        if let Some(ms) = self.handshake_timeout_ms
            && !(100..=600_000).contains(&ms)
        {
            bail!("quic.handshake_timeout_ms must be between 100 and 600000");
        }
        if !(1..=1 << 20).contains(&self.stream_window_kb) {
            bail!("quic.stream_window_kb must be between 1 and 1048576");
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            bail!("quic.max_connections and quic.max_connections_per_ip must be positive");
        }
        Ok(())
    }
}

/// The QUIC endpoint's socket, bound before the apps start (so a busy port
/// refuses the whole start), and its settings.
pub struct PreparedQuic {
    settings: QuicSettings,
    handshake_timeout: Duration,
    socket: UdpSocket,
}

/// Binds the QUIC socket if QUIC is enabled. `tls_listen` is the TLS
/// listener's configured address (the default) and `tls_handshake_ms` its
/// handshake timeout.
pub fn prepare(
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
    pub fn port(&self) -> Option<u16> {
        self.socket.local_addr().ok().map(|a| a.port())
    }

    /// Starts serving QUIC for the apps in `router`, with the certificates
    /// of the TLS listener. Must be called within a tokio runtime.
    pub fn start(self, router: &Arc<Router>, certs: Arc<Certificates>) -> Result<Arc<Quic>> {
        let protocols = Arc::new(crypto::AppProtocols::default());
        let crypto = crypto::RoutedCrypto::new(router.clone(), certs, protocols.clone())?;
        let mut transport = TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(VarInt::from_u32(
                crate::limits::AppLimits::default().quic_streams_per_connection,
            ))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .datagram_receive_buffer_size(None)
            .stream_receive_window(kib(self.settings.stream_window_kb))
            .receive_window(kib(
                crate::limits::AppLimits::default().quic_receive_window_kb
            ))
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
        let ctx = Arc::new(QuicContext {
            router: router.clone(),
            protocols,
            settings: self.settings,
            local,
            handshake_timeout: self.handshake_timeout,
            pending: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
            per_ip: Mutex::new(HashMap::new()),
            counters: QuicCounters::default(),
        });
        tokio::spawn(serve(endpoint, ctx.clone()));
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

/// Accepts QUIC connections until the endpoint closes.
async fn serve(endpoint: Endpoint, ctx: Arc<QuicContext>) {
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = ctx.pending.clone().try_acquire_owned() else {
            ctx.counters.refused.fetch_add(1, Ordering::Relaxed);
            incoming.ignore();
            continue;
        };
        let in_progress = MAX_PENDING_HANDSHAKES - ctx.pending.available_permits();
        let retry = match ctx.settings.retry {
            RetryPolicy::Always => true,
            RetryPolicy::Auto => in_progress > ctx.settings.retry_above,
            RetryPolicy::Never => false,
        };
        if retry && !incoming.remote_address_validated() && incoming.may_retry() {
            ctx.counters.retries.fetch_add(1, Ordering::Relaxed);
            if let Err(err) = incoming.retry() {
                tracing::debug!("quic: cannot send a retry: {err}");
            }
            continue;
        }
        let peer = incoming.remote_address();
        let Some(slot) = ConnectionSlot::take(&ctx, crate::conns::client_key(peer.ip())) else {
            ctx.counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("quic: {peer}: at the connection limit; refused");
            incoming.refuse();
            continue;
        };
        tokio::spawn(serve_connection(ctx.clone(), incoming, permit, slot));
    }
}

/// A QUIC connection's place in the gateway-wide and per-IP counts.
struct ConnectionSlot {
    ctx: Arc<QuicContext>,
    ip: IpAddr,
}

impl ConnectionSlot {
    fn take(ctx: &Arc<QuicContext>, ip: IpAddr) -> Option<Self> {
        let mut counts = lock(&ctx.per_ip);
        let total = counts.get(&None).copied().unwrap_or(0);
        let from_ip = counts.get(&Some(ip)).copied().unwrap_or(0);
        if total >= ctx.settings.max_connections || from_ip >= ctx.settings.max_connections_per_ip {
            return None;
        }
        *counts.entry(None).or_default() += 1;
        *counts.entry(Some(ip)).or_default() += 1;
        Some(Self {
            ctx: ctx.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.ctx.per_ip);
        for key in [None, Some(self.ip)] {
            if let Some(count) = counts.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&key);
                }
            }
        }
    }
}

/// Completes the handshake of one client, then hands each of its
/// bidirectional streams to the app its server name selects.
async fn serve_connection(
    ctx: Arc<QuicContext>,
    incoming: Incoming,
    permit: tokio::sync::OwnedSemaphorePermit,
    _slot: ConnectionSlot,
) {
    let peer = incoming.remote_address();
    let local_ip = incoming.local_ip();
    let handshake = async { incoming.accept()?.await };
    let conn = match tokio::time::timeout(ctx.handshake_timeout, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => {
            ctx.counters
                .failed_handshakes
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("quic: {peer}: handshake failed: {err}");
            return;
        }
        Err(_) => {
            ctx.counters
                .failed_handshakes
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                "quic: {peer}: no handshake within {:?}; dropped",
                ctx.handshake_timeout
            );
            return;
        }
    };
    drop(permit);
    ctx.counters.connections.fetch_add(1, Ordering::Relaxed);
    let Some((server_name, alpn)) = handshake_data(&conn) else {
        conn.close(VarInt::from_u32(0), b"no handshake data");
        return;
    };
    let Some(app_name) = ctx.router.app_name_for_server_name(&server_name) else {
        close(&conn, connection_codes::APP_GONE, "the app is gone");
        return;
    };
    if !ctx.protocols.of(&app_name).contains(&alpn) {
        close(
            &conn,
            connection_codes::ALPN_NOT_ACCEPTED,
            &format!(
                "app `{app_name}` does not speak `{alpn}`: offer only {}",
                ctx.protocols.of(&app_name).join(", ")
            ),
        );
        return;
    }
    if let Some(app) = ctx.router.get(&app_name) {
        let (streams, window_kb) = app.account().quic_limits();
        conn.set_max_concurrent_bi_streams(VarInt::from_u32(streams));
        conn.set_receive_window(kib(window_kb));
    }
    let quic_id = next_conn_id();
    let local = SocketAddr::new(local_ip.unwrap_or(ctx.local.ip()), ctx.local.port());
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(pair) => pair,
            Err(err) => {
                tracing::debug!("quic: {peer}: connection ended: {err}");
                return;
            }
        };
        // The current version of the app: a deploy switches new streams
        // of existing connections too.
        let Some(app) = ctx.router.get(&app_name) else {
            close(&conn, connection_codes::APP_GONE, "the app was removed");
            return;
        };
        let stream_id = u64::from(send.id());
        let (reader, writer, closer) = stream::split(send, recv);
        let stream = Connection {
            info: ConnInfo {
                id: next_conn_id(),
                transport: Transport::Quic,
                peer,
                local,
                server_name: Some(server_name.clone()),
                alpn: Some(alpn.clone()),
                quic: Some(QuicStream {
                    connection_id: quic_id,
                    stream_id,
                }),
            },
            reader: Box::pin(reader),
            writer: Box::pin(writer),
            closer,
        };
        ctx.counters.streams.fetch_add(1, Ordering::Relaxed);
        // A refused stream is dropped, which resets it with
        // `stream_codes::REFUSED`; the app counted it.
        let _ = app.dispatch(stream);
    }
}

/// The server name and ALPN protocol the handshake settled on.
fn handshake_data(conn: &quinn::Connection) -> Option<(String, String)> {
    let data = conn
        .handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?;
    let name = crate::certs::normalize_name(data.server_name.as_deref()?);
    let alpn = String::from_utf8_lossy(data.protocol.as_deref()?).into_owned();
    Some((name, alpn))
}

fn close(conn: &quinn::Connection, code: u32, reason: &str) {
    tracing::debug!("quic: {}: closing: {reason}", conn.remote_address());
    conn.close(VarInt::from_u32(code), reason.as_bytes());
}
