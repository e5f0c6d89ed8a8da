//! The plain TCP listener: every connection accepted on an app's address
//! goes to that app.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::net::TcpListener;

use crate::app::App;
use crate::conn::Connection;

/// Pause after the process ran out of file descriptors, so the accept loop
/// does not spin while connections are closed and descriptors come back.
const FD_EXHAUSTED_PAUSE: Duration = Duration::from_millis(100);

/// Binds `addr`, explaining the usual failures in the user's terms.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|err| {
        let hint = match err.kind() {
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
        };
        anyhow!("cannot listen on tcp {addr}: {err}; {hint}")
    })
}

/// Accepts connections forever and dispatches each to `app`.
pub async fn serve(listener: TcpListener, app: Arc<App>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match Connection::from_tcp(stream) {
                Ok(conn) => {
                    // A refused connection is dropped here, which closes it;
                    // the app counted it and recorded the event.
                    let _ = app.dispatch(conn);
                }
                Err(err) => tracing::debug!(app = app.name(), "dropping connection: {err}"),
            },
            Err(err) if is_fd_exhaustion(&err) => {
                tracing::warn!(
                    app = app.name(),
                    "cannot accept: {err}; pausing accepts for {FD_EXHAUSTED_PAUSE:?}"
                );
                tokio::time::sleep(FD_EXHAUSTED_PAUSE).await;
            }
            // Per-connection failures (reset before accept) are the client's.
            Err(err) => tracing::debug!(app = app.name(), "accept failed: {err}"),
        }
    }
}

fn is_fd_exhaustion(err: &io::Error) -> bool {
    // EMFILE (per-process) and ENFILE (system-wide) descriptor limits.
    matches!(err.raw_os_error(), Some(24) | Some(23))
}
