//! One QUIC bidirectional stream as the byte reader and writer a
//! [`Connection`](crate::base::conn::Connection) carries, with the gateway's
//! stream error codes.
//!
//! Each half lives behind a mutex shared with the connection's closer, so
//! that a limit (idle timeout, maximum lifetime, end of a drain) can reset
//! the stream from outside even while the guest is not touching it, and
//! wake a guest read or write waiting on it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use quinn::{ReadError, RecvStream, SendStream, VarInt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::base::conn::StreamReset;
use crate::base::locks::lock;

/// Application error codes on streams the gateway resets or stops (in
/// `RESET_STREAM` and `STOP_SENDING`). Documented in the guest guide.
pub(super) mod codes {
    /// The stream was not served: the app is at a connection limit.
    pub(crate) const REFUSED: u32 = 0x5301;
    /// The gateway closed the stream: a limit (idle timeout, maximum
    /// lifetime) or the end of a drain after a redeploy.
    pub(crate) const CLOSED_BY_GATEWAY: u32 = 0x5302;
}

/// A half of a stream and what its closer needs.
struct Half<S> {
    stream: S,
    /// Closed from outside; further use fails.
    killed: bool,
    /// The task last waiting on this half, woken when it is killed.
    waker: Option<Waker>,
    /// The guest's side used this half (read from it, or wrote to or shut
    /// down it); a half dropped unused was refused.
    used: bool,
    /// Nothing more will happen on this half: FIN read, or finished.
    done: bool,
}

impl<S> Half<S> {
    fn new(stream: S) -> Mutex<Self> {
        Mutex::new(Self {
            stream,
            killed: false,
            waker: None,
            used: false,
            done: false,
        })
    }

    fn remember(&mut self, cx: &Context<'_>) {
        self.used = true;
        match &self.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }
}

fn killed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "stream closed by the gateway",
    )
}

/// Both halves of a stream, in one allocation shared by the reader, the
/// writer and the closer (a stream is opened per request by some clients).
struct Halves {
    recv: Mutex<Half<RecvStream>>,
    send: Mutex<Half<SendStream>>,
}

/// Splits a stream into the reader, the writer and the closer.
pub(super) fn split(
    send: SendStream,
    recv: RecvStream,
) -> (QuicReader, QuicWriter, Box<dyn Fn() + Send + Sync>) {
    let halves = Arc::new(Halves {
        recv: Half::new(recv),
        send: Half::new(send),
    });
    let closer = {
        let halves = halves.clone();
        Box::new(move || {
            let code = VarInt::from_u32(codes::CLOSED_BY_GATEWAY);
            for waker in [
                kill(&halves.recv, |s| s.stop(code)),
                kill(&halves.send, |s| s.reset(code)),
            ]
            .into_iter()
            .flatten()
            {
                waker.wake();
            }
        }) as Box<dyn Fn() + Send + Sync>
    };
    (QuicReader(halves.clone()), QuicWriter(halves), closer)
}

/// Marks a half killed, aborting its stream; returns the waker to wake.
fn kill<S, T, E>(
    half: &Mutex<Half<S>>,
    abort: impl FnOnce(&mut S) -> Result<T, E>,
) -> Option<Waker> {
    let mut half = lock(half);
    if half.killed {
        return None;
    }
    half.killed = true;
    if !half.done {
        let _ = abort(&mut half.stream);
        half.done = true;
    }
    half.waker.take()
}

/// The client-to-gateway half of a QUIC stream. A `RESET_STREAM` from the
/// client reads as an error carrying [`StreamReset`].
pub(super) struct QuicReader(Arc<Halves>);

impl AsyncRead for QuicReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut half = lock(&self.0.recv);
        if half.killed {
            return Poll::Ready(Err(killed_error()));
        }
        half.remember(cx);
        let before = buf.filled().len();
        match half.stream.poll_read_buf(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() == before && buf.remaining() > 0 {
                    half.done = true;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(ReadError::Reset(code))) => {
                half.done = true;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    StreamReset(code.into_inner()),
                )))
            }
            Poll::Ready(Err(err)) => {
                half.done = true;
                Poll::Ready(Err(err.into()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for QuicReader {
    /// Tells the client to stop sending what nobody will read: with
    /// [`codes::REFUSED`] if the stream was never served.
    fn drop(&mut self) {
        let mut half = lock(&self.0.recv);
        if half.done {
            return;
        }
        half.done = true;
        let code = if half.used { 0 } else { codes::REFUSED };
        let _ = half.stream.stop(VarInt::from_u32(code));
    }
}

/// The gateway-to-client half of a QUIC stream; shutting it down sends FIN.
pub(super) struct QuicWriter(Arc<Halves>);

impl AsyncWrite for QuicWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut half = lock(&self.0.send);
        if half.killed {
            return Poll::Ready(Err(killed_error()));
        }
        half.remember(cx);
        AsyncWrite::poll_write(Pin::new(&mut half.stream), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // quinn sends what was written without an explicit flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut half = lock(&self.0.send);
        if half.killed {
            return Poll::Ready(Err(killed_error()));
        }
        half.used = true;
        if half.done {
            return Poll::Ready(Ok(()));
        }
        half.done = true;
        Poll::Ready(half.stream.finish().map_err(io::Error::other))
    }
}

impl Drop for QuicWriter {
    /// A writer dropped without being shut down was refused (never served)
    /// or abandoned: reset rather than let quinn send a FIN that would look
    /// like a complete answer.
    fn drop(&mut self) {
        let mut half = lock(&self.0.send);
        if half.done {
            return;
        }
        half.done = true;
        let code = if half.used {
            codes::CLOSED_BY_GATEWAY
        } else {
            codes::REFUSED
        };
        let _ = half.stream.reset(VarInt::from_u32(code));
    }
}
