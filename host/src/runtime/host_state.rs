//! What each store holds: the guest's WASI context and resource table, with
//! its stdout and stderr wired into the app's log, its network access bound
//! to the app's outbound policy, and its memory limiter.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::sockgate::gateway::types as wit;
use super::instance::{InstanceSettings, wit_info};
use super::supervisor::GuestLimiter;
use crate::conn::ReceiveError;
use crate::conns::{AppAccount, ConnTracker};
use crate::logs::{AppLog, EventKind, Stream};
use crate::outbound::OutboundPolicy;

/// Longest line kept whole; a guest that prints without newlines has its
/// output cut into entries of this size so it cannot grow host memory.
const MAX_LOG_LINE: usize = 8 * 1024;

/// The data of one instance's store.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: GuestLimiter,
    /// The app's outbound policy (also consulted by name lookups).
    pub policy: Arc<OutboundPolicy>,
    /// The app's log, for events the host records on the guest's behalf.
    pub log: Arc<AppLog>,
    /// This instance's index within the app.
    pub instance: u32,
    account: Arc<AppAccount>,
    tracker: Arc<ConnTracker>,
}

impl HostState {
    /// State for instance `instance` of the app `settings` describe. The
    /// guest gets no environment, arguments or files; its network access is
    /// what the app's outbound policy allows.
    pub fn new(settings: &InstanceSettings, instance: u32) -> Self {
        let log = settings.log.clone();
        let policy = settings.policy.clone();
        let limits = &settings.limits;
        let mut builder = WasiCtx::builder();
        builder
            .stdout(GuestOutput {
                log: log.clone(),
                instance,
                stream: Stream::Stdout,
            })
            .stderr(GuestOutput {
                log: log.clone(),
                instance,
                stream: Stream::Stderr,
            })
            // WASI 0.2 lookups cannot be checked name by name: denied. WASI
            // 0.3 lookups go through the policy (see `engine.rs`).
            .allow_ip_name_lookup(false)
            .allow_tcp(policy.allows_anything())
            .allow_udp(policy.allows_anything());
        let check_policy = policy.clone();
        let check_log = log.clone();
        builder.socket_addr_check(move |addr, usage| {
            let allowed = match usage {
                // Binding is only the implicit "any address, any port" bind
                // that precedes a connect or a datagram: guests do not
                // accept connections or pick local ports.
                SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
                    addr.ip().is_unspecified() && addr.port() == 0
                }
                SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => false,
                SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => {
                    check_policy.allows_connect(addr)
                }
            };
            if !allowed {
                check_log.event(
                    Some(instance),
                    EventKind::OutboundDenied {
                        target: format!("{usage:?} {addr}"),
                    },
                );
            }
            Box::pin(async move { allowed })
        });
        Self {
            wasi: builder.build(),
            table: ResourceTable::new(),
            limiter: GuestLimiter::new(limits, log.clone(), instance),
            policy,
            log,
            instance,
            account: settings.account.clone(),
            tracker: settings.tracker.clone(),
        }
    }

    /// The store's resource limiter.
    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }

    /// The size of the last memory growth refused at the limit, if any.
    pub fn refused_memory(&self) -> Option<usize> {
        self.limiter.refused_memory
    }
}

impl super::bindings::sockgate::gateway::connection::Host for HostState {
    fn info(&mut self, id: u64) -> wasmtime::Result<Option<wit::ConnInfo>> {
        Ok(self
            .tracker
            .info(id, &self.account)
            .map(|info| wit_info(&info)))
    }

    fn receive_error(&mut self, id: u64) -> wasmtime::Result<Option<wit::RxError>> {
        Ok(self
            .tracker
            .receive_error(id, &self.account)
            .map(|error| match error {
                ReceiveError::Reset(code) => wit::RxError::Reset(code),
                ReceiveError::Aborted(why) => wit::RxError::Aborted(why),
            }))
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
