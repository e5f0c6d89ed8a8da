//! What each store holds: the guest's WASI context and resource table, with
//! its stdout and stderr wired into the app's log, its network access bound
//! to the app's outbound policy and budget, and its memory limiter.
//!
//! The defaults every store gets ([`HostState::new`], [`bound_store`]):
//! - no environment, arguments, files or preopens;
//! - stdout and stderr become the app's log lines ([`MAX_LOG_LINE`] bytes at
//!   most each), traced at `limits.log_lines_per_second`;
//! - TCP and UDP only when the app has an outbound rule, and only to what
//!   the rules allow; WASI 0.2 name lookups denied, WASI 0.3 ones checked
//!   (`name_lookup.rs`); every outbound socket counted against
//!   `limits.max_outbound_sockets` and the gateway's descriptor budget
//!   (`guest_sockets.rs`);
//! - host-side tables bounded: the WASI resource table (sockets, streams,
//!   pollables) at [`wasi_table_capacity`], the component model's table of
//!   tasks, streams and futures and its guest handles at
//!   [`concurrent_table_capacity`] (see [`bound_store`]).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::sockgate::gateway::types as wit;
use super::http::hooks::GatewayHooks;
use super::http::outbound::Outbound;
use super::limiter::GuestLimiter;
use crate::base::conn::ReceiveError;
use crate::limits::AppLimits;
use crate::tenant::conns::{AppAccount, ConnTracker};
use crate::tenant::guest_budget::{SocketLease, SocketRefusal};
use crate::tenant::logs::{AppLog, EventKind, Stream};
use crate::tenant::outbound::OutboundPolicy;

/// Longest line kept whole; a guest that prints without newlines has its
/// output cut into entries of this size so it cannot grow host memory.
pub const MAX_LOG_LINE: usize = 8 * 1024;

/// Entries of the WASI resource table every store starts with room for,
/// besides its sockets: stdio streams, pollables, a `conn-handler-sync`
/// connection's two streams.
const WASI_TABLE_BASE: usize = 1024;
/// Entries one outbound socket may need in the WASI resource table: the
/// socket, its two WASI 0.2 streams and their pollables.
const WASI_TABLE_PER_SOCKET: usize = 8;
/// Entries of the component model's concurrent-state table (tasks,
/// streams, futures, waitables) and guest handles a store starts with room
/// for, besides its connections.
const CONCURRENT_TABLE_BASE: usize = 4096;
/// Entries one connection of a shared instance may need there: its `handle`
/// task and subtask, the `rx` stream and the returned one, their pipes, and
/// the guest's own streams and futures for it.
const CONCURRENT_TABLE_PER_CONNECTION: usize = 16;
/// wasmtime's own default for live guest handles per store; never raised.
const DEFAULT_COMPONENT_HANDLES: usize = 100_000;

/// Capacity of a store's WASI resource table (wasmtime's default is
/// 1 000 000 entries). Threat: a guest creating resources (pollables,
/// streams, sockets) in a loop, each held in host memory outside its
/// `memory_limit_mb`; past the capacity, creating one fails (the guest
/// traps).
pub fn wasi_table_capacity(limits: &AppLimits) -> usize {
    WASI_TABLE_BASE + WASI_TABLE_PER_SOCKET * limits.max_outbound_sockets
}

/// Capacity of a store's component-model table of tasks, streams and
/// futures (wasmtime's default is 1 000 000), for a store serving
/// `connections` at most. Threat: a guest creating streams or futures in a
/// loop (`stream.new` needs no host call), each held in host memory
/// outside its `memory_limit_mb`.
pub fn concurrent_table_capacity(connections: usize) -> usize {
    CONCURRENT_TABLE_BASE
        .saturating_add(CONCURRENT_TABLE_PER_CONNECTION.saturating_mul(connections))
        .min(1_000_000)
}

/// Bounds what a store may hold on the host outside the guest's memory:
/// the component model's table of tasks, streams and futures and its live
/// guest handles, sized for `connections` (1 for a `conn-handler-sync`
/// store, `max_connections_per_instance` for a shared instance). Call it
/// right after creating the store.
pub fn bound_store(store: &mut Store<HostState>, connections: usize) {
    let capacity = concurrent_table_capacity(connections);
    if let Some(table) = store.concurrent_resource_table() {
        table.set_max_capacity(capacity);
    }
    store.set_max_component_handles(capacity.min(DEFAULT_COMPONENT_HANDLES));
}

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
    /// The outbound sockets of this store, by resource table index, each
    /// counted against the app's and the gateway's budgets until dropped
    /// (see `guest_sockets.rs`).
    socket_leases: HashMap<u32, Arc<SocketLease>>,
    /// `wasi:http`'s state (HTTP apps; unused by others).
    http: WasiHttpCtx,
    /// What `wasi:http` asks the gateway: outbound requests go through the
    /// app's policy (`runtime/http/hooks.rs`).
    http_hooks: GatewayHooks,
}

/// What a store is given of its app: the runtime's inputs, kept by
/// `tenant/` (an [`InstanceSettings`](super::instance::InstanceSettings)
/// lends them for each store it creates).
pub struct AppInputs<'a> {
    /// The app's log and events.
    pub log: &'a Arc<AppLog>,
    /// The app's outbound policy.
    pub policy: &'a Arc<OutboundPolicy>,
    /// The app's limits.
    pub limits: &'a AppLimits,
    /// The app's connection accounting.
    pub account: &'a Arc<AppAccount>,
    /// The gateway's connection accounting.
    pub tracker: &'a Arc<ConnTracker>,
}

impl HostState {
    /// Entries in the store's WASI resource table (sockets, streams,
    /// pollables): what hibernation checks is back to where the store
    /// started ([`super::instance::guest_is_quiet`]).
    pub(crate) fn table_entries(&mut self) -> usize {
        self.table.iter_mut().count()
    }

    /// State for instance `instance` of the app `app` describes
    /// ([`InstanceSettings::inputs`](super::instance::InstanceSettings::inputs)).
    /// The guest gets no environment, arguments or files; its network
    /// access is what the app's outbound policy allows.
    pub fn new(app: AppInputs<'_>, instance: u32) -> Self {
        let log = app.log.clone();
        let policy = app.policy.clone();
        let limits = app.limits;
        log.set_line_rate(limits.log_lines_per_second);
        let mut table = ResourceTable::new();
        table.set_max_capacity(wasi_table_capacity(limits));
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
            table,
            limiter: GuestLimiter::new(limits, log.clone(), instance, app.tracker.memory().clone()),
            policy,
            log,
            instance,
            account: app.account.clone(),
            tracker: app.tracker.clone(),
            socket_leases: HashMap::new(),
            http: WasiHttpCtx::new(),
            http_hooks: GatewayHooks::new(Outbound {
                policy: app.policy.clone(),
                log: app.log.clone(),
                instance,
            }),
        }
    }

    /// Counts a new outbound socket (`kind`: `tcp` or `udp`) against the
    /// app's and the gateway's budgets, or records why it is refused.
    pub(crate) fn lease_socket(&self, kind: &str) -> Result<SocketLease, SocketRefusal> {
        self.policy.budget().open_socket().inspect_err(|refusal| {
            self.log.event(
                Some(self.instance),
                EventKind::LimitHit {
                    limit: refusal.limit(),
                    detail: format!("refused a new outbound {kind} socket: {refusal}"),
                },
            );
        })
    }

    /// Keeps `lease` for as long as the socket at table index `rep` lives.
    pub(crate) fn keep_socket(&mut self, rep: u32, lease: SocketLease) {
        self.socket_leases.insert(rep, Arc::new(lease));
    }

    /// The lease of the socket at table index `rep`, for what outlives the
    /// socket resource while holding its descriptor (WASI 0.3 streams).
    pub(crate) fn socket_lease(&self, rep: u32) -> Option<Arc<SocketLease>> {
        self.socket_leases.get(&rep).cloned()
    }

    /// The socket at table index `rep` was dropped: its lease goes (the
    /// count drops once nothing else holds the descriptor).
    pub(crate) fn release_socket(&mut self, rep: u32) {
        self.socket_leases.remove(&rep);
    }

    /// The store's WASI resource table.
    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// The store's resource limiter.
    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }

    /// Tells `shard` (a long-lived instance's) what linear memory the store
    /// holds, for the gateway's memory ceiling
    /// ([`crate::tenant::memory`]).
    pub(crate) fn attach_shard(&mut self, shard: Arc<crate::tenant::conns::ShardLoad>) {
        self.limiter.attach(shard);
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

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

/// The `wasi:http` view of a store's data, as a function pointer (what
/// `wasmtime-wasi-http`'s response and body plumbing takes).
pub fn http_view(state: &mut HostState) -> WasiHttpCtxView<'_> {
    state.http()
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

/// The WIT view of a connection's info.
fn wit_info(info: &crate::base::conn::ConnInfo) -> wit::ConnInfo {
    wit_conn_info!(super::bindings::sockgate::gateway::types, info)
}
