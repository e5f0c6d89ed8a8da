//! A gateway connection's two halves as one duplex stream for hyper,
//! reporting every transfer to the connection's record (so the idle
//! timeout sees a busy keep-alive connection as busy, and the app's byte
//! counters count HTTP traffic as they count raw traffic).

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::base::conn::{ByteReader, ByteWriter};
use crate::tenant::conns::ActiveConn;

/// A connection's reader and writer, metered into its record.
pub(crate) struct ConnIo {
    reader: ByteReader,
    writer: ByteWriter,
    record: std::sync::Arc<ActiveConn>,
}

impl ConnIo {
    /// Joins `reader` and `writer`, reporting transfers to `record`.
    pub(crate) fn new(
        reader: ByteReader,
        writer: ByteWriter,
        record: std::sync::Arc<ActiveConn>,
    ) -> Self {
        Self {
            reader,
            writer,
            record,
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.reader.as_mut().poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.record.received(read);
        }
        polled
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = self.writer.as_mut().poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled
            && written > 0
        {
            self.record.sent(written);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.writer.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.writer.as_mut().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = self.writer.as_mut().poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(written)) = polled
            && written > 0
        {
            self.record.sent(written);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.writer.is_write_vectored()
    }
}
