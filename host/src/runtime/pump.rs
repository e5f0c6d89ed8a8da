//! Moving bytes between a client connection and a guest's streams.
//!
//! [`ClientReader`] is the host end of the guest's `rx: stream<u8>`: each
//! guest read becomes one read from the connection straight into guest
//! memory, so the gateway reads from the client only as fast as the guest
//! does (backpressure) and holds no buffer of its own. [`ClientWriter`]
//! consumes the stream the guest returns and writes it to the connection,
//! completing a guest write only once the connection took the bytes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWriteExt, ReadBuf};
use wasmtime::StoreContextMut;
use wasmtime::component::{Destination, Source, StreamConsumer, StreamProducer, StreamResult};

use super::supervisor::IoProgress;
use crate::base::conn::{ByteReader, ByteWriter};
use crate::tenant::conns::ActiveConn;

/// Most bytes moved per guest read when the reader is the host itself
/// (guest reads use the guest's own buffer size).
const HOST_READ_CHUNK: usize = 16 * 1024;
/// Bytes read ahead to answer a zero-length "are you ready" read.
const READINESS_CHUNK: usize = 4 * 1024;
/// How long closing the sending side may take (a TLS close_notify to a
/// client that stopped reading must not pin the socket forever).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Held by everything that keeps a connection alive (its reader, its
/// writer, the pending `handle` call); the connection counts as active
/// until the last holder is gone, and every transfer marks it as busy.
pub(crate) type ConnGuard = Arc<ActiveConn>;

/// The host end of the guest's `rx` stream: bytes from the client.
pub(crate) struct ClientReader {
    io: ByteReader,
    guard: ConnGuard,
    /// Set when bytes reach the guest: I/O renews its CPU budget
    /// ([`super::supervisor::Activation::EventLoop`]).
    progress: IoProgress,
}

impl ClientReader {
    /// Reads from `io` on behalf of the guest, setting `progress` whenever
    /// bytes move.
    pub(crate) fn new(io: ByteReader, guard: ConnGuard, progress: IoProgress) -> Self {
        Self {
            io,
            guard,
            progress,
        }
    }
}

impl<D> StreamProducer<D> for ClientReader {
    type Item = u8;
    type Buffer = BytesMut;

    fn poll_produce<'a>(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut store: StoreContextMut<'a, D>,
        mut dst: Destination<'a, Self::Item, Self::Buffer>,
        finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        let result = if dst.remaining(&mut store) == Some(0) {
            // A zero-length read asks whether data is ready. A generic byte
            // stream cannot be asked without reading, so read a little and
            // hand it over as a host buffer for the next real read.
            let mut buf = BytesMut::zeroed(READINESS_CHUNK);
            let mut read_buf = ReadBuf::new(&mut buf);
            match self.io.as_mut().poll_read(cx, &mut read_buf) {
                Poll::Ready(Ok(())) => {
                    let n = read_buf.filled().len();
                    buf.truncate(n);
                    if n > 0 {
                        dst.set_buffer(buf);
                    }
                    Poll::Ready(Ok(n))
                }
                other => other.map_ok(|()| 0),
            }
        } else {
            let mut direct = dst.as_direct(store, HOST_READ_CHUNK);
            let mut read_buf = ReadBuf::new(direct.remaining());
            match self.io.as_mut().poll_read(cx, &mut read_buf) {
                Poll::Ready(Ok(())) => {
                    let n = read_buf.filled().len();
                    direct.mark_written(n);
                    Poll::Ready(Ok(n))
                }
                other => other.map_ok(|()| 0),
            }
        };
        Poll::Ready(Ok(match result {
            Poll::Ready(Ok(0)) => StreamResult::Dropped,
            Poll::Ready(Ok(n)) => {
                self.guard.received(n);
                self.progress.store(true, Ordering::Relaxed);
                StreamResult::Completed
            }
            Poll::Ready(Err(err)) => {
                tracing::debug!("client read failed: {err}");
                self.guard
                    .set_receive_error(crate::base::conn::ReceiveError::from_io(&err));
                StreamResult::Dropped
            }
            Poll::Pending if finish => StreamResult::Cancelled,
            Poll::Pending => return Poll::Pending,
        }))
    }
}

/// The consumer of the stream the guest returns: bytes to the client.
pub(crate) struct ClientWriter {
    io: Option<ByteWriter>,
    /// A write went out but its flush did not finish yet.
    flushing: bool,
    guard: ConnGuard,
    /// Set when the client takes the guest's bytes (see [`ClientReader`]).
    progress: IoProgress,
}

impl ClientWriter {
    /// Writes the guest's bytes to `io`, setting `progress` whenever bytes
    /// move.
    pub(crate) fn new(io: ByteWriter, guard: ConnGuard, progress: IoProgress) -> Self {
        Self {
            io: Some(io),
            flushing: false,
            guard,
            progress,
        }
    }
}

impl<D> StreamConsumer<D> for ClientWriter {
    type Item = u8;

    fn poll_consume(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        store: StoreContextMut<D>,
        src: Source<'_, Self::Item>,
        finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        let this = &mut *self;
        let Some(io) = this.io.as_mut() else {
            return Poll::Ready(Ok(StreamResult::Dropped));
        };
        // Transports that buffer (TLS) must get every write flushed, or a
        // reply could sit in a buffer while the client waits for it.
        if this.flushing {
            match io.as_mut().poll_flush(cx) {
                Poll::Ready(Ok(())) => this.flushing = false,
                Poll::Ready(Err(err)) => return Poll::Ready(Ok(this.fail(err))),
                Poll::Pending if finish => return Poll::Ready(Ok(StreamResult::Cancelled)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let mut src = src.as_direct(store);
        let bytes = src.remaining();
        if bytes.is_empty() {
            // A zero-length write asks whether we can take data: we can.
            return Poll::Ready(Ok(StreamResult::Completed));
        }
        match io.as_mut().poll_write(cx, bytes) {
            Poll::Ready(Ok(0)) => Poll::Ready(Ok(StreamResult::Dropped)),
            Poll::Ready(Ok(n)) => {
                src.mark_read(n);
                this.guard.sent(n);
                this.progress.store(true, Ordering::Relaxed);
                match io.as_mut().poll_flush(cx) {
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(StreamResult::Completed)),
                    Poll::Ready(Err(err)) => Poll::Ready(Ok(this.fail(err))),
                    Poll::Pending => {
                        // Report completion once the flush is done.
                        this.flushing = true;
                        Poll::Pending
                    }
                }
            }
            Poll::Ready(Err(err)) => Poll::Ready(Ok(this.fail(err))),
            Poll::Pending if finish => Poll::Ready(Ok(StreamResult::Cancelled)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl ClientWriter {
    fn fail(&mut self, err: std::io::Error) -> StreamResult {
        tracing::debug!("client write failed: {err}");
        self.io = None;
        StreamResult::Dropped
    }
}

impl Drop for ClientWriter {
    /// The guest closed its end: shut down the sending side, so the client
    /// sees end of stream while it may still send.
    fn drop(&mut self) {
        let Some(mut io) = self.io.take() else {
            return;
        };
        // Most transports (TCP) shut down at once; only those that must
        // send something first (TLS close_notify) need a task.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if io.as_mut().poll_shutdown(&mut cx).is_ready() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, io.shutdown()).await;
            });
        }
    }
}
