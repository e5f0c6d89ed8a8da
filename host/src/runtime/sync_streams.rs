//! A client connection as WASI 0.2 streams, for the `conn-handler-sync`
//! world: [`ConnInput`] is the guest's `rx: input-stream`, [`ConnOutput`]
//! its `tx: output-stream`.
//!
//! Both keep the guarantees of the async world's pumps (`pump.rs`): the
//! gateway reads from the client only as the guest asks (one read of at most
//! [`READ_CHUNK`] ahead, to answer "is data ready"), and a guest's writes are
//! accepted only up to [`WRITE_BUDGET`] bytes ahead of what the client took.
//!
//! Unlike wasmtime-wasi's generic `AsyncWriteStream`, whose worker is
//! aborted (losing buffered bytes) when the stream is dropped, dropping a
//! [`ConnOutput`] — the guest drops `tx`, or `handle` returns and its
//! instance goes away — finishes the job: what the guest wrote is sent,
//! flushed, and the sending side shut down, so the client sees every byte
//! and then end of stream.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWriteExt, ReadBuf};
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError, StreamResult};

use super::pump::ConnGuard;
use super::supervisor::IoProgress;
use crate::base::conn::{ByteReader, ByteWriter};
use crate::base::locks::lock;

/// Most bytes read from the client at once (and so buffered by the
/// gateway per connection, at most).
pub(crate) const READ_CHUNK: usize = 16 * 1024;
/// Bytes a guest may write ahead of what the client took: what
/// `check-write` grants. Bounds the gateway's buffer per connection.
pub(crate) const WRITE_BUDGET: usize = 64 * 1024;
/// How long sending the rest of the guest's bytes and shutting down may
/// take once the guest is done (a client that stopped reading must not pin
/// the connection; the idle timeout closes it sooner when it is shorter).
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

/// The guest's `rx`: bytes from the client.
pub(crate) struct ConnInput {
    io: ByteReader,
    /// Read ahead by `ready`, not yet taken by `read`.
    buffer: Bytes,
    /// End of stream or an error seen; reported once the buffer is empty.
    end: Option<StreamError>,
    /// Set once `end` was reported: every later read says `closed`.
    ended: bool,
    guard: ConnGuard,
    progress: IoProgress,
}

impl ConnInput {
    /// Reads from `io` on behalf of the guest.
    pub(crate) fn new(io: ByteReader, guard: ConnGuard, progress: IoProgress) -> Self {
        Self {
            io,
            buffer: Bytes::new(),
            end: None,
            ended: false,
            guard,
            progress,
        }
    }

    /// One read from the client into the buffer (which must be empty).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut buf = BytesMut::zeroed(READ_CHUNK);
        let mut read_buf = ReadBuf::new(&mut buf);
        match self.io.as_mut().poll_read(cx, &mut read_buf) {
            Poll::Ready(Ok(())) => {
                let n = read_buf.filled().len();
                self.progress.store(true, Ordering::Relaxed);
                if n == 0 {
                    self.end = Some(StreamError::Closed);
                } else {
                    self.guard.received(n);
                    buf.truncate(n);
                    self.buffer = buf.freeze();
                }
                Poll::Ready(())
            }
            Poll::Ready(Err(err)) => {
                self.progress.store(true, Ordering::Relaxed);
                tracing::debug!("client read failed: {err}");
                self.end = Some(StreamError::LastOperationFailed(err.into()));
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn has_news(&self) -> bool {
        !self.buffer.is_empty() || self.end.is_some() || self.ended
    }
}

#[async_trait::async_trait]
impl InputStream for ConnInput {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        if !self.has_news() && size > 0 {
            // Non-blocking: try once without registering for a wakeup.
            let mut cx = Context::from_waker(Waker::noop());
            let _ = self.poll_fill(&mut cx);
        }
        if !self.buffer.is_empty() {
            let n = size.min(self.buffer.len());
            return Ok(self.buffer.split_to(n));
        }
        if self.ended {
            return Err(StreamError::Closed);
        }
        match self.end.take() {
            Some(end) => {
                self.ended = true;
                Err(end)
            }
            None => Ok(Bytes::new()),
        }
    }
}

#[async_trait::async_trait]
impl Pollable for ConnInput {
    async fn ready(&mut self) {
        if self.has_news() {
            return;
        }
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// What the guest's `tx` and its writer task share.
struct WriteState {
    /// Written by the guest, not yet sent.
    queue: VecDeque<Bytes>,
    /// Bytes in `queue`.
    queued: usize,
    /// The guest asked for a flush that has not completed.
    flush_pending: bool,
    /// The connection failed: every later operation says so.
    failed: bool,
    /// The guest dropped `tx`: send the rest, then shut down.
    finishing: bool,
    /// Wakes the guest waiting for `check-write` to grant something.
    guest: Option<Waker>,
    /// Wakes the writer task waiting for work.
    writer: Option<Waker>,
}

type Shared = Arc<Mutex<WriteState>>;

/// The guest's `tx`: bytes to the client, sent by a task that owns the
/// connection's writer.
pub(crate) struct ConnOutput {
    shared: Shared,
    progress: IoProgress,
}

impl ConnOutput {
    /// Writes the guest's bytes to `io`, from a task spawned on the current
    /// tokio runtime; the task holds `guard` until it has sent everything
    /// and shut down the sending side.
    pub(crate) fn new(io: ByteWriter, guard: ConnGuard, progress: IoProgress) -> Self {
        let shared = Arc::new(Mutex::new(WriteState {
            queue: VecDeque::new(),
            queued: 0,
            flush_pending: false,
            failed: false,
            finishing: false,
            guest: None,
            writer: None,
        }));
        tokio::spawn(write_task(io, shared.clone(), guard));
        Self { shared, progress }
    }

    fn wake_writer(state: &mut WriteState) {
        if let Some(waker) = state.writer.take() {
            waker.wake();
        }
    }
}

#[async_trait::async_trait]
impl OutputStream for ConnOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let mut state = lock(&self.shared);
        if state.failed {
            return Err(StreamError::Closed);
        }
        if state.flush_pending || bytes.len() > WRITE_BUDGET - state.queued {
            return Err(StreamError::trap(
                "write exceeds what check-write granted (wasi:io/streams contract)",
            ));
        }
        if !bytes.is_empty() {
            self.progress.store(true, Ordering::Relaxed);
            state.queued += bytes.len();
            state.queue.push_back(bytes);
            Self::wake_writer(&mut state);
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        let mut state = lock(&self.shared);
        if state.failed {
            return Err(StreamError::Closed);
        }
        state.flush_pending = true;
        Self::wake_writer(&mut state);
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        let state = lock(&self.shared);
        if state.failed {
            return Err(StreamError::Closed);
        }
        if state.flush_pending {
            return Ok(0);
        }
        Ok(WRITE_BUDGET - state.queued)
    }
}

#[async_trait::async_trait]
impl Pollable for ConnOutput {
    async fn ready(&mut self) {
        std::future::poll_fn(|cx| {
            let mut state = lock(&self.shared);
            if state.failed || (!state.flush_pending && state.queued < WRITE_BUDGET) {
                return Poll::Ready(());
            }
            state.guest = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

impl Drop for ConnOutput {
    /// The guest closed `tx` (or its instance is gone): the writer task
    /// sends what is queued, then shuts down the sending side.
    fn drop(&mut self) {
        let mut state = lock(&self.shared);
        state.finishing = true;
        Self::wake_writer(&mut state);
    }
}

/// What the writer task does next.
enum Job {
    Write(Bytes),
    Flush,
    Finish,
}

/// Sends the guest's bytes to the client until the guest is done, then
/// shuts down the sending side. Holds `guard` (the connection stays active)
/// until then.
async fn write_task(mut io: ByteWriter, shared: Shared, guard: ConnGuard) {
    loop {
        let job = std::future::poll_fn(|cx| {
            let mut state = lock(&shared);
            if let Some(bytes) = state.queue.pop_front() {
                return Poll::Ready(Job::Write(bytes));
            }
            if state.flush_pending {
                return Poll::Ready(Job::Flush);
            }
            if state.finishing {
                return Poll::Ready(Job::Finish);
            }
            state.writer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let result = match job {
            Job::Write(bytes) => {
                let len = bytes.len();
                // Flush every write: transports that buffer (TLS) must not
                // hold a reply back while the client waits for it.
                let sent = async {
                    io.write_all(&bytes).await?;
                    io.flush().await
                }
                .await;
                if sent.is_ok() {
                    guard.sent(len);
                    lock(&shared).queued -= len;
                }
                sent
            }
            Job::Flush => {
                let flushed = io.flush().await;
                lock(&shared).flush_pending = false;
                flushed
            }
            Job::Finish => {
                let _ = tokio::time::timeout(FINISH_TIMEOUT, io.shutdown()).await;
                return;
            }
        };
        let mut state = lock(&shared);
        if let Err(err) = result {
            tracing::debug!("client write failed: {err}");
            state.failed = true;
            state.queue.clear();
            state.queued = 0;
            state.flush_pending = false;
        }
        if let Some(waker) = state.guest.take() {
            waker.wake();
        }
        if state.failed {
            return;
        }
    }
}
