//! One connection of an event-world instance: its transport halves, the
//! queue of bytes the guest sent and not yet written, and the flags that
//! decide whether the gateway reads from it. Every operation here is a
//! non-blocking poll with the connection's own waker ([`ConnWaker`]), so
//! one task serves every connection of the instance and touches only
//! those that are ready.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::ReadBuf;

use super::bindings::CloseReason;
use super::ready::ReadyList;
use crate::base::conn::{ByteReader, ByteWriter, ReceiveError};
use crate::runtime::pump::ConnGuard;
use crate::tenant::guest_budget::SocketLease;

/// Bytes queued for a connection above which the gateway stops reading
/// from it (and tells the guest `writable` once the queue is below half).
/// Threat: a client that sends without reading the replies, making the
/// gateway hold everything the guest answers.
pub(crate) const SEND_HIGH_WATER: usize = 64 * 1024;
/// Bytes queued for a connection at which the connection is closed.
/// Threat: a guest that ignores backpressure and keeps sending to a client
/// that does not read, growing the gateway's memory without bound.
pub(crate) const SEND_HARD_CAP: usize = 1024 * 1024;
/// Most bytes read from one connection per read.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// Wakes the instance's task for one connection: puts its id on the ready
/// list once until the task takes it.
pub(crate) struct ConnWaker {
    id: u64,
    queued: AtomicBool,
    ready: Arc<ReadyList>,
}

impl ConnWaker {
    /// The waker of connection `id`, reporting to `ready`.
    pub(crate) fn new(id: u64, ready: Arc<ReadyList>) -> Arc<Self> {
        Arc::new(Self {
            id,
            queued: AtomicBool::new(false),
            ready,
        })
    }

    /// The task took the id off the ready list: the next wake-up queues it
    /// again.
    pub(crate) fn taken(&self) {
        self.queued.store(false, Ordering::Release);
    }
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.push(self.id);
        }
    }
}

/// The state of one connection in the instance.
pub(crate) struct EventConn {
    reader: Option<ByteReader>,
    writer: Option<ByteWriter>,
    /// Counts the connection as active (client connections); `None` for
    /// an outbound connection, which holds a socket lease instead.
    guard: Option<ConnGuard>,
    _lease: Option<SocketLease>,
    waker: Arc<ConnWaker>,
    std_waker: Waker,
    /// Bytes the guest sent, not yet written; the front one from `written`.
    queue: VecDeque<Vec<u8>>,
    written: usize,
    queued: usize,
    /// A write went out and its flush is not done yet.
    flushing: bool,
    /// The guest asked to shut down the sending side.
    shutdown_asked: bool,
    /// The sending side is shut down (or failed).
    send_done: bool,
    /// The peer finished sending (or reading failed).
    receive_done: bool,
    /// The guest paused reading.
    paused: bool,
    /// The queue passed the high-water mark: reading stops, and the guest
    /// hears `writable` when the queue is below half of it.
    above_high_water: bool,
}

/// What reading from a connection gave.
pub(crate) enum ReadOutcome {
    /// Bytes (in the caller's buffer); more may be ready at once when the
    /// buffer was filled.
    Bytes(usize),
    /// The peer finished sending.
    Ended,
    /// Reading failed: the connection is gone.
    Failed(CloseReason),
    /// Nothing now (the waker will say), or reading is not wanted.
    Nothing,
}

/// What writing the queue (or sending) gave.
#[derive(Default)]
pub(crate) struct Flushed {
    /// The queue came back below half the high-water mark after passing it.
    pub(crate) writable: bool,
    /// Writing failed: the connection is gone.
    pub(crate) failed: Option<CloseReason>,
    /// The queue passed [`SEND_HARD_CAP`] (only when sending).
    pub(crate) over_cap: bool,
}

impl EventConn {
    /// A connection with both halves open.
    pub(crate) fn new(
        reader: ByteReader,
        writer: ByteWriter,
        guard: Option<ConnGuard>,
        lease: Option<SocketLease>,
        waker: Arc<ConnWaker>,
    ) -> Self {
        Self {
            reader: Some(reader),
            writer: Some(writer),
            guard,
            _lease: lease,
            std_waker: Waker::from(waker.clone()),
            waker,
            queue: VecDeque::new(),
            written: 0,
            queued: 0,
            flushing: false,
            shutdown_asked: false,
            send_done: false,
            receive_done: false,
            paused: false,
            above_high_water: false,
        }
    }

    /// The connection's waker (to mark it ready without I/O).
    pub(crate) fn waker(&self) -> &Arc<ConnWaker> {
        &self.waker
    }

    /// Bytes the guest sent that are not written yet.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn queued(&self) -> usize {
        self.queued
    }

    /// Whether the gateway should read from the connection now.
    pub(crate) fn wants_read(&self) -> bool {
        !self.receive_done && !self.paused && !self.above_high_water
    }

    /// Both directions are over: the connection can go.
    pub(crate) fn finished(&self) -> bool {
        self.receive_done && self.send_done
    }

    /// Reads once into `buf` (when reading is wanted).
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> ReadOutcome {
        self.read_with(|reader, cx| {
            let mut read_buf = ReadBuf::new(buf);
            reader
                .poll_read(cx, &mut read_buf)
                .map_ok(|()| read_buf.filled().len())
        })
    }

    /// Reads once, appending to `into` up to its capacity (when reading is
    /// wanted): a busy connection's bytes go straight into the event that
    /// carries them, with no copy through a scratch buffer.
    pub(crate) fn read_appending(&mut self, into: &mut Vec<u8>) -> ReadOutcome {
        self.read_with(|reader, cx| {
            let mut spare = into.spare_capacity_mut().len();
            if spare == 0 {
                into.reserve(READ_CHUNK);
                spare = READ_CHUNK;
            }
            let mut limited = bytes::BufMut::limit(into, spare);
            tokio_util::io::poll_read_buf(reader, cx, &mut limited)
        })
    }

    /// One read with `poll` (which gives the bytes read), and what it
    /// means for the connection.
    fn read_with(
        &mut self,
        poll: impl FnOnce(
            Pin<&mut (dyn tokio::io::AsyncRead + Send + Sync)>,
            &mut Context<'_>,
        ) -> Poll<std::io::Result<usize>>,
    ) -> ReadOutcome {
        if !self.wants_read() {
            return ReadOutcome::Nothing;
        }
        let Some(reader) = self.reader.as_mut() else {
            return ReadOutcome::Nothing;
        };
        let mut cx = Context::from_waker(&self.std_waker);
        match poll(reader.as_mut(), &mut cx) {
            Poll::Ready(Ok(n)) => {
                if n == 0 {
                    self.receive_done = true;
                    self.reader = None;
                    return ReadOutcome::Ended;
                }
                if let Some(guard) = &self.guard {
                    guard.received(n);
                }
                ReadOutcome::Bytes(n)
            }
            Poll::Ready(Err(err)) => {
                let error = ReceiveError::from_io(&err);
                let reason = self.close_reason(&error);
                if let Some(guard) = &self.guard {
                    guard.set_receive_error(error);
                }
                self.receive_done = true;
                self.reader = None;
                ReadOutcome::Failed(reason)
            }
            Poll::Pending => ReadOutcome::Nothing,
        }
    }

    /// Why a connection whose read failed with `error` ended: a limit when
    /// the gateway closed it itself.
    fn close_reason(&self, error: &ReceiveError) -> CloseReason {
        if self.guard.as_ref().is_some_and(|g| g.closed_by_gateway()) {
            return CloseReason::Limit(match error {
                ReceiveError::Aborted(text) => text.clone(),
                ReceiveError::Reset(code) => format!("reset with code {code}"),
            });
        }
        match error {
            ReceiveError::Reset(code) => CloseReason::Reset(*code),
            ReceiveError::Aborted(text) => CloseReason::Aborted(text.clone()),
        }
    }

    /// Sends bytes the guest sent: written at once when nothing is queued
    /// before them and the transport takes them (no copy, no turn's wait),
    /// and what it does not take is queued. [`Flushed::over_cap`] when the
    /// queue passed the hard cap (the caller closes the connection).
    pub(crate) fn send(&mut self, bytes: Cow<'_, [u8]>) -> Flushed {
        let mut sent = Flushed::default();
        if self.shutdown_asked || self.send_done || bytes.is_empty() {
            return sent;
        }
        let mut taken = 0;
        if self.queue.is_empty()
            && let Some(writer) = self.writer.as_mut()
        {
            let mut cx = Context::from_waker(&self.std_waker);
            let wrote = write_slice(writer.as_mut(), &mut cx, &bytes, self.guard.as_deref())
                .and_then(|n| {
                    taken = n;
                    self.flushing |= n > 0;
                    poll_flush(writer.as_mut(), &mut cx, &mut self.flushing)
                });
            if let Err(err) = wrote {
                self.fail_sending(&err, &mut sent);
                return sent;
            }
        }
        if taken < bytes.len() {
            let rest = match bytes {
                Cow::Owned(owned) if taken == 0 => owned,
                Cow::Owned(mut owned) => {
                    owned.drain(..taken);
                    owned
                }
                Cow::Borrowed(slice) => slice[taken..].to_vec(),
            };
            self.queued += rest.len();
            self.queue.push_back(rest);
            // Above the mark only by what the transport did not take.
            self.above_high_water |= self.queued >= SEND_HIGH_WATER;
            sent.over_cap = self.queued >= SEND_HARD_CAP;
        }
        sent
    }

    /// The guest asked to finish sending once the queue is out.
    pub(crate) fn shutdown(&mut self) {
        self.shutdown_asked = true;
    }

    /// The guest paused (or resumed) reading.
    pub(crate) fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Writes as much of the queue as the transport takes now, flushes,
    /// and shuts the sending side down once asked and the queue is out.
    pub(crate) fn flush(&mut self) -> Flushed {
        let mut flushed = Flushed::default();
        if self.send_done {
            return flushed;
        }
        let Some(writer) = self.writer.as_mut() else {
            return flushed;
        };
        let mut cx = Context::from_waker(&self.std_waker);
        if let Err(err) = write_queue(
            writer.as_mut(),
            &mut cx,
            &mut self.queue,
            &mut self.written,
            &mut self.queued,
            &mut self.flushing,
            self.guard.as_deref(),
        ) {
            self.fail_sending(&err, &mut flushed);
            return flushed;
        }
        if self.above_high_water && self.queued < SEND_HIGH_WATER / 2 {
            self.above_high_water = false;
            flushed.writable = true;
        }
        if self.shutdown_asked && self.queue.is_empty() && !self.flushing {
            match writer.as_mut().poll_shutdown(&mut cx) {
                Poll::Ready(_) => {
                    self.send_done = true;
                    self.writer = None;
                }
                Poll::Pending => {}
            }
        }
        flushed
    }

    /// Writing failed with `err`: the sending side is gone, and so is the
    /// connection.
    fn fail_sending(&mut self, err: &std::io::Error, flushed: &mut Flushed) {
        self.send_done = true;
        self.writer = None;
        flushed.failed = Some(CloseReason::Aborted(format!("writing failed: {err}")));
    }

    /// Aborts the transport in both directions (the guest's `close`, a
    /// limit), releasing the connection's counts once dropped.
    pub(crate) fn abort(self) {
        if let Some(guard) = &self.guard {
            guard.abort();
        }
    }
}

/// Writes queued chunks until the transport would block, then flushes
/// (transports that buffer, TLS, must not keep a reply). Counts what went.
fn write_queue(
    mut writer: Pin<&mut (dyn tokio::io::AsyncWrite + Send + Sync)>,
    cx: &mut Context<'_>,
    queue: &mut VecDeque<Vec<u8>>,
    written: &mut usize,
    queued: &mut usize,
    flushing: &mut bool,
    guard: Option<&crate::tenant::conns::ActiveConn>,
) -> std::io::Result<()> {
    while let Some(front) = queue.front() {
        let n = write_slice(writer.as_mut(), cx, &front[*written..], guard)?;
        *written += n;
        *queued -= n;
        *flushing |= n > 0;
        if *written < front.len() {
            break;
        }
        queue.pop_front();
        *written = 0;
    }
    poll_flush(writer, cx, flushing)
}

/// Writes `bytes` until the transport would block; the bytes it took.
fn write_slice(
    mut writer: Pin<&mut (dyn tokio::io::AsyncWrite + Send + Sync)>,
    cx: &mut Context<'_>,
    bytes: &[u8],
    guard: Option<&crate::tenant::conns::ActiveConn>,
) -> std::io::Result<usize> {
    let mut taken = 0;
    while taken < bytes.len() {
        match writer.as_mut().poll_write(cx, &bytes[taken..]) {
            Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => {
                taken += n;
                if let Some(guard) = guard {
                    guard.sent(n);
                }
            }
            Poll::Ready(Err(err)) => return Err(err),
            Poll::Pending => break,
        }
    }
    Ok(taken)
}

/// Flushes when a write went out since the last flush finished.
fn poll_flush(
    writer: Pin<&mut (dyn tokio::io::AsyncWrite + Send + Sync)>,
    cx: &mut Context<'_>,
    flushing: &mut bool,
) -> std::io::Result<()> {
    if *flushing {
        match writer.poll_flush(cx) {
            Poll::Ready(Ok(())) => *flushing = false,
            Poll::Ready(Err(err)) => return Err(err),
            Poll::Pending => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
