//! The transport-neutral connection that every listener produces and the
//! runtime consumes: a duplex byte stream plus what is known about it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncWrite};

/// How the client reached the gateway (mirrors the WIT `transport` enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS terminated by the gateway.
    Tls,
    /// One bidirectional QUIC stream.
    Quic,
}

/// Which QUIC connection and stream a connection is, for QUIC only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicStream {
    /// Gateway-unique id of the QUIC connection.
    pub connection_id: u64,
    /// The stream id within that connection.
    pub stream_id: u64,
}

/// What the gateway knows about a connection when it hands it to a guest.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Unique among the connections this process accepted.
    pub id: u64,
    /// How the client reached the gateway.
    pub transport: Transport,
    /// The client's address.
    pub peer: SocketAddr,
    /// The gateway's address the client connected to.
    pub local: SocketAddr,
    /// TLS SNI, when there was one.
    pub server_name: Option<String>,
    /// Negotiated ALPN protocol, when there was one.
    pub alpn: Option<String>,
    /// QUIC connection and stream, for QUIC streams.
    pub quic: Option<QuicStream>,
}

/// Why the bytes from a client stopped before a clean end of stream
/// (mirrors the WIT `receive-error` variant, which guests query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiveError {
    /// A QUIC client reset its sending side with this error code.
    Reset(u64),
    /// The connection was lost or aborted; the text says how.
    Aborted(String),
}

impl ReceiveError {
    /// Classifies a read error from a transport: transports that can say
    /// "the peer reset this stream" wrap a [`StreamReset`] in the error.
    pub fn from_io(err: &std::io::Error) -> Self {
        match err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<StreamReset>())
        {
            Some(reset) => ReceiveError::Reset(reset.0),
            None => ReceiveError::Aborted(err.to_string()),
        }
    }
}

/// The error a transport's reader returns when the peer reset the stream
/// (QUIC `RESET_STREAM`), carrying the peer's application error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamReset(pub u64);

impl std::fmt::Display for StreamReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the peer reset the stream with error code {}", self.0)
    }
}

impl std::error::Error for StreamReset {}

/// Hands out connection ids; process-wide so ids never repeat across apps.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh, process-unique connection id.
pub fn next_conn_id() -> u64 {
    NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)
}

/// The client-to-gateway half of a connection.
pub type ByteReader = Pin<Box<dyn AsyncRead + Send + Sync>>;
/// The gateway-to-client half of a connection; shutting it down sends end
/// of stream (TCP FIN, TLS close_notify, QUIC FIN).
pub type ByteWriter = Pin<Box<dyn AsyncWrite + Send + Sync>>;

/// An accepted client connection, ready to be handed to an app.
pub struct Connection {
    /// What is known about it.
    pub info: ConnInfo,
    /// Bytes from the client.
    pub reader: ByteReader,
    /// Bytes to the client.
    pub writer: ByteWriter,
    /// Aborts the transport in both directions, from outside (limits).
    pub closer: Closer,
}

/// Aborts a connection's transport from outside (both directions), so a
/// connection can be closed even while its guest is not reading or writing.
pub type Closer = Box<dyn Fn() + Send + Sync>;
