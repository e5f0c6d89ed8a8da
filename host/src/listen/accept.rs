//! Accepting TCP connections, once for every listener (apps' TCP ports,
//! TLS, plain HTTP, the admin API): the accept loop with its pause when the
//! process is out of file descriptors, and [`ClientSlots`], the shares of
//! connections that have not proven anything yet (a TLS handshake, a
//! plain-HTTP request head, an admin request) with the deadline for their
//! first byte.
//!
//! Threat: clients that connect and then send nothing (or a byte now and
//! then). Without shares, 4,200 idle connections from one address held all
//! 4,096 TLS handshake slots of the gateway for their whole 10 s deadline,
//! and every other client was turned away; ~420 connections a second kept
//! TLS (and ACME HTTP-01 on port 80) down. With them, one client (an IPv4
//! address or an IPv6 /64, [`crate::tenant::conns::client_key`]) holds at most its
//! share, and a connection that sends nothing for [`FIRST_BYTE_TIMEOUT`]
//! gives its slot back.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::base::locks::lock;
use crate::tenant::conns::client_key;

/// Pause after the process ran out of file descriptors, so an accept loop
/// does not spin while connections are closed and descriptors come back.
pub(crate) const FD_EXHAUSTED_PAUSE: Duration = Duration::from_millis(100);

/// How long a new connection may stay silent before its first byte: a
/// TLS client sends its ClientHello, an HTTP client its request line, at
/// once. Threat: idle connections holding slots for the whole handshake
/// or request deadline.
pub(crate) const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(3);

/// Accepts connections on `listener` forever, handing each to `on_accept`
/// with the peer's address. Out of file descriptors (EMFILE, ENFILE), it
/// pauses for [`FD_EXHAUSTED_PAUSE`] instead of spinning; other errors are
/// the client's (a reset before accept) and only logged. `what` names the
/// listener in the log.
pub(crate) async fn accept_loop(
    listener: &TcpListener,
    what: &str,
    mut on_accept: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => on_accept(stream, peer),
            Err(err) if is_fd_exhaustion(&err) => {
                tracing::warn!(
                    "{what}: cannot accept: {err}; pausing accepts for {FD_EXHAUSTED_PAUSE:?}"
                );
                tokio::time::sleep(FD_EXHAUSTED_PAUSE).await;
            }
            Err(err) => tracing::debug!("{what}: accept failed: {err}"),
        }
    }
}

/// Whether an accept failed because the process (EMFILE) or the system
/// (ENFILE) is out of file descriptors.
pub(crate) fn is_fd_exhaustion(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Waits for the first byte of `stream` (without consuming it), at most
/// `within`. An error: nothing came in time, or the client closed first.
pub(crate) async fn first_byte(stream: &TcpStream, within: Duration) -> io::Result<()> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(within, stream.peek(&mut byte)).await {
        Ok(Ok(0)) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed before sending anything",
        )),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("sent nothing within {within:?}"),
        )),
    }
}

/// A bounded number of slots, of which one client may hold only a share.
pub(crate) struct ClientSlots {
    total: usize,
    per_client: usize,
    /// Slots taken over all clients, and by client.
    taken: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoSlot {
    /// Every slot is taken.
    Full,
    /// The client holds its share.
    ClientShare,
}

impl ClientSlots {
    /// `total` slots, at most `per_client` of them for one client.
    pub(crate) fn new(total: usize, per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            total,
            per_client,
            taken: Mutex::new((0, HashMap::new())),
        })
    }

    /// A slot for a connection from `peer`, given back when dropped.
    pub(crate) fn take(self: &Arc<Self>, peer: IpAddr) -> Result<ClientSlot, NoSlot> {
        let client = client_key(peer);
        let mut taken = lock(&self.taken);
        if taken.0 >= self.total {
            return Err(NoSlot::Full);
        }
        let held = taken.1.entry(client).or_insert(0);
        if *held >= self.per_client {
            return Err(NoSlot::ClientShare);
        }
        *held += 1;
        taken.0 += 1;
        Ok(ClientSlot {
            slots: self.clone(),
            client,
        })
    }
}

/// One taken slot of [`ClientSlots`].
pub(crate) struct ClientSlot {
    slots: Arc<ClientSlots>,
    client: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut taken = lock(&self.slots.taken);
        taken.0 = taken.0.saturating_sub(1);
        if let Some(held) = taken.1.get_mut(&self.client) {
            *held -= 1;
            if *held == 0 {
                taken.1.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_holds_its_share_and_no_more() {
        let slots = ClientSlots::new(4, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let a1 = slots.take(a).unwrap();
        let _a2 = slots.take(a).unwrap();
        assert_eq!(slots.take(a).err(), Some(NoSlot::ClientShare));
        let _b1 = slots.take(b).unwrap();
        let _b2 = slots.take(b).unwrap();
        assert_eq!(slots.take(c).err(), Some(NoSlot::Full));
        drop(a1);
        assert!(slots.take(c).is_ok());
        // An IPv6 /64 is one client.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let slots = ClientSlots::new(10, 1);
        let _x = slots.take(v6("2001:db8::1")).unwrap();
        assert_eq!(
            slots.take(v6("2001:db8::2")).err(),
            Some(NoSlot::ClientShare)
        );
        assert!(slots.take(v6("2001:db8:0:1::1")).is_ok());
    }

    #[tokio::test]
    async fn a_silent_connection_misses_its_first_byte_deadline() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _silent = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let err = first_byte(&stream, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let mut talker = TcpStream::connect(addr).await.unwrap();
        talker.write_all(b"x").await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        first_byte(&stream, Duration::from_secs(5)).await.unwrap();
    }
}
