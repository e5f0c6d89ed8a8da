//! The WebAssembly side: one wasmtime [`Engine`](wasmtime::Engine) for the
//! process, components compiled once and cached on disk, long-lived
//! instances that serve many connections concurrently — and, for
//! components of the WASI 0.2 world `conn-handler-sync`, a second engine
//! with the pooling allocator that creates an instance per connection.
//!
//! - [`engine`]: the engines' configuration and linkers.
//! - [`cache`]: compiled components on disk, keyed by a hash of the input.
//! - [`images`]: compiled components in memory, shared by the apps of the
//!   same bytes.
//! - [`load`]: reading a component file, finding which world it implements
//!   and checking it against that world.
//! - [`bindings`]: the host side of the WIT world.
//! - [`host_state`]: what each store holds (WASI context, guest output).
//! - [`pump`]: moving bytes between a client connection and guest streams.
//! - [`instance`]: one instance's task, serving the connections sent to it.
//! - `hibernate`: an instance's sleep and wake, and the room a start needs
//!   under the gateway's memory ceiling.
//! - [`supervisor`]: time slices, CPU and wall-clock budgets (the epoch
//!   ticker), memory limits.
//! - [`budget`]: the budgets' policy, a plain struct driven by samples.
//! - [`thread_clock`]: the samples: a thread's CPU time and its wait for a
//!   core.
//! - [`ticker`]: the epoch ticker thread and the coarse clock.
//! - [`slow_lane`]: the low-priority threads where guests that compute for
//!   more than a time slice go on.
//! - [`trap`]: why an instance trapped, explained in the app's terms.
//! - [`name_lookup`]: name lookups checked against the outbound policy.
//! - [`guest_sockets`]: outbound sockets counted against the app's and the
//!   gateway's budgets.
//! - [`sync_bindings`]: the host side of the WASI 0.2 world
//!   `conn-handler-sync`.
//! - [`sync_streams`]: a client connection as WASI 0.2 input/output streams.
//! - [`per_connection`]: serving a `conn-handler-sync` app, one instance per
//!   connection.
//! - [`events`]: the `conn-events` world, a guest called once per batch of
//!   socket events.

/// Converts a [`ConnInfo`](crate::base::conn::ConnInfo) into the `conn-info`
/// record of a generated bindings module (`$wit`): both worlds' records
/// have the same fields, in their own generated types.
macro_rules! wit_conn_info {
    ($wit:path, $info:expr) => {{
        use $wit as wit;
        let info: &crate::base::conn::ConnInfo = $info;
        wit::ConnInfo {
            id: info.id,
            transport: match info.transport {
                crate::base::conn::Transport::Tcp => wit::Transport::Tcp,
                crate::base::conn::Transport::Tls => wit::Transport::Tls,
                crate::base::conn::Transport::Quic => wit::Transport::Quic,
            },
            peer: info.peer.into(),
            local: info.local.into(),
            server_name: info.server_name.as_deref().map(str::to_owned),
            alpn: info.alpn.as_deref().map(str::to_owned),
            quic: info.quic.map(|q| wit::QuicStream {
                connection_id: q.connection_id,
                stream_id: q.stream_id,
            }),
        }
    }};
}

pub mod bindings;
pub(crate) mod budget;
pub mod cache;
pub mod engine;
pub mod events;
pub(crate) mod guest_sockets;
mod hibernate;
pub mod host_state;
pub(crate) mod http;
pub mod images;
pub mod instance;
pub(crate) mod limiter;
pub mod load;
mod load_error;
pub(crate) mod name_lookup;
pub mod per_connection;
pub(crate) mod pump;
pub(crate) mod shard;
pub mod slow_lane;
pub mod supervisor;
pub(crate) mod sync_bindings;
pub(crate) mod sync_streams;
pub(crate) mod thread_clock;
pub(crate) mod ticker;
pub(crate) mod trap;

pub use engine::Runtime;
