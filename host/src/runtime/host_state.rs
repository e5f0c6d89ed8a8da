//! What each store holds: the guest's WASI context and resource table, with
//! its stdout and stderr wired into the app's log.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::logs::{AppLog, Stream};

/// Longest line kept whole; a guest that prints without newlines has its
/// output cut into entries of this size so it cannot grow host memory.
const MAX_LOG_LINE: usize = 8 * 1024;

/// The data of one instance's store.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl HostState {
    /// State for instance `instance` of the app logging to `log`. The guest
    /// gets no environment, arguments, files or network access.
    pub fn new(log: Arc<AppLog>, instance: u32) -> Self {
        let wasi = WasiCtx::builder()
            .stdout(GuestOutput {
                log: log.clone(),
                instance,
                stream: Stream::Stdout,
            })
            .stderr(GuestOutput {
                log,
                instance,
                stream: Stream::Stderr,
            })
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A guest output stream (stdout or stderr) that becomes app log lines.
struct GuestOutput {
    log: Arc<AppLog>,
    instance: u32,
    stream: Stream,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            log: self.log.clone(),
            instance: self.instance,
            stream: self.stream,
            partial: Vec::new(),
        })
    }
}

/// Splits written bytes into lines and records each in the app log. Every
/// write completes at once: logging never blocks a guest.
struct LineWriter {
    log: Arc<AppLog>,
    instance: u32,
    stream: Stream,
    /// The current unfinished line.
    partial: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self, end: usize) {
        let mut line: Vec<u8> = self.partial.drain(..end).collect();
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        self.log.line(self.instance, self.stream, text);
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        for chunk in buf.split_inclusive(|&b| b == b'\n') {
            this.partial.extend_from_slice(chunk);
            if chunk.ends_with(b"\n") {
                let end = this.partial.len();
                this.emit(end);
            }
            while this.partial.len() >= MAX_LOG_LINE {
                this.emit(MAX_LOG_LINE);
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            let end = self.partial.len();
            self.emit(end);
        }
    }
}
