//! The plain TCP listener: every connection accepted on an app's address
//! goes to that app.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use anyhow::{Result, anyhow};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::apps::route::Router;
use crate::base::conn::{ConnInfo, Connection, Transport, next_conn_id};

/// Binds `addr`, explaining the usual failures in the user's terms.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow!("cannot listen on tcp {addr}: {err}; {}", bind_hint(&err)))
}

/// What to do about a failed bind, for the error message.
pub(crate) fn bind_hint(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::AddrInUse => {
            "the address is already in use: stop the process that holds it or choose \
             another `listen` address"
        }
        io::ErrorKind::PermissionDenied => {
            "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE"
        }
        io::ErrorKind::AddrNotAvailable => {
            "the address is not available on this machine: listen on one of its own \
             addresses (or 0.0.0.0)"
        }
        _ => "",
    }
}

/// Accepts connections forever and dispatches each to the version of app
/// `name` that `router` holds at that moment (so a deploy switches new
/// connections at once). The app's own caps admit them
/// ([`crate::tenant::conns`]): a connection here is already the app's.
pub(crate) async fn serve(listener: TcpListener, name: String, router: Arc<Router>) {
    let what = format!("app {name}");
    super::accept::accept_loop(&listener, &what, |stream, _| {
        match (tcp_connection(stream), router.get(&name)) {
            (Ok(conn), Some(app)) => {
                // A refused connection is dropped here, which closes it;
                // the app counted it and recorded the event.
                let _ = app.dispatch(conn);
            }
            (Ok(_), None) => tracing::debug!(app = %name, "app removed: closing connection"),
            (Err(err), _) => tracing::debug!(app = %name, "dropping connection: {err}"),
        }
    })
    .await
}

/// Turns an accepted TCP stream into a transport-neutral connection whose
/// halves and closer share the socket.
pub(crate) fn tcp_connection(stream: TcpStream) -> io::Result<Connection> {
    let peer = stream.peer_addr()?;
    let local = stream.local_addr()?;
    // Small request/response exchanges must not wait for Nagle's timer.
    stream.set_nodelay(true)?;
    let stream = Arc::new(stream);
    let closer_stream = stream.clone();
    Ok(Connection {
        info: ConnInfo {
            id: next_conn_id(),
            transport: Transport::Tcp,
            peer,
            local,
            server_name: None,
            alpn: None,
            quic: None,
        },
        reader: Box::pin(SharedTcp(stream.clone())),
        writer: Box::pin(SharedTcp(stream)),
        closer: Box::new(move || {
            let _ = socket2::SockRef::from(&*closer_stream).shutdown(Shutdown::Both);
        }),
    })
}

/// One half of a TCP stream shared with the other half and the closer, so
/// the connection can be shut down from outside while the socket stays
/// valid until every holder is gone.
pub(crate) struct SharedTcp(pub Arc<TcpStream>);

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale; `try_read` cleared it, poll again.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Sends FIN: the client sees end of stream and may still send.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(Shutdown::Write))
    }
}
