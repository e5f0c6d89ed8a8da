//! The transport-neutral connection that every listener produces and the
//! runtime consumes: a duplex byte stream plus what is known about it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
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
    /// TLS SNI, when there was one. Shared, not copied, by every stream
    /// of a QUIC connection and by the connection's record.
    pub server_name: Option<Arc<str>>,
    /// Negotiated ALPN protocol, when there was one (shared as
    /// `server_name` is).
    pub alpn: Option<Arc<str>>,
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

/// `addr` as text, as `Display` writes it (`203.0.113.7:443`,
/// `[2001:db8::1]:443`). An IPv4 address is written digit by digit: guests
/// get their peer's and their own address as text with every connection
/// (and every QUIC stream), where `Display`'s formatting machinery cost
/// more than the rest of the connection's description.
pub fn socket_addr_text(addr: SocketAddr) -> String {
    let SocketAddr::V4(v4) = addr else {
        return addr.to_string();
    };
    let mut text = String::with_capacity(21);
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        push_decimal(&mut text, u32::from(octet));
    }
    text.push(':');
    push_decimal(&mut text, u32::from(v4.port()));
    text
}

/// Appends `n` in decimal, without leading zeros.
fn push_decimal(text: &mut String, n: u32) {
    if n < 10 {
        text.push(char::from(b'0' + n as u8));
    } else {
        push_decimal(text, n / 10);
        text.push(char::from(b'0' + (n % 10) as u8));
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    #[test]
    fn addresses_as_text_are_what_display_writes() {
        let mut samples: Vec<SocketAddr> = vec![
            "0.0.0.0:0".parse().unwrap(),
            "255.255.255.255:65535".parse().unwrap(),
            "[2001:db8::1]:443".parse().unwrap(),
            "[::ffff:10.0.0.1]:8080".parse().unwrap(),
        ];
        for octet in [0u8, 1, 9, 10, 99, 100, 109, 199, 200, 250, 255] {
            for port in [0u16, 7, 10, 80, 443, 1000, 9999, 10000, 65535] {
                samples.push(SocketAddr::from(([octet, 10, 100, octet], port)));
            }
        }
        for addr in samples {
            let mut expected = String::new();
            write!(expected, "{addr}").unwrap();
            assert_eq!(socket_addr_text(addr), expected);
        }
    }
}
