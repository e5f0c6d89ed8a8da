//! Every bound a guest or a client is held to, with the threat each one
//! bounds. Apps set them in their `[app.limits]` table; the gateway-wide
//! ones live in `[gateway]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Per-app limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppLimits {
    /// CPU a guest may compute for without calling the host, in
    /// milliseconds (as fuel: `FUEL_PER_MS` wasm operators per ms). Threat:
    /// a guest that computes forever (a bug, or a tenant mining coins)
    /// would hold a gateway thread and starve every app scheduled on it.
    /// The guest traps when it is spent.
    pub cpu_budget_ms: u64,
    /// Wall-clock time a guest may run before handing control back to the
    /// gateway's event loop, in milliseconds, even while it calls imports.
    /// Threat: a guest spinning on a cheap import (a clock, a zero-length
    /// read), which keeps refilling its fuel. Enforced by epoch deadlines;
    /// the guest traps when it is spent.
    pub wall_budget_ms: u64,
    /// Linear memory one instance may grow to, in MiB. Threat: a guest
    /// allocating without bound would exhaust the host's memory; past the
    /// limit `memory.grow` fails (most languages then abort, trapping the
    /// instance).
    pub memory_limit_mb: u64,
    /// Concurrent connections to the app over all its instances. Threat: one
    /// app's flood taking every file descriptor of the gateway.
    pub max_connections: usize,
    /// Concurrent connections served by one instance. Bounds the latency
    /// and guest memory that connections sharing an instance impose on
    /// each other.
    pub max_connections_per_instance: usize,
    /// Concurrent connections to the app from one client IP address.
    /// Threat: a single client holding all of the app's connections.
    pub max_connections_per_ip: usize,
    /// A connection with no bytes in either direction for this long is
    /// closed (0: never). Threat: idle or abandoned connections pinning
    /// descriptors and memory forever.
    pub idle_timeout_secs: u64,
    /// A connection is closed this long after it was accepted, busy or not
    /// (0: never). Threat: slow-drip clients (slowloris) that stay just
    /// active enough to dodge the idle timeout.
    pub max_connection_secs: u64,
    /// Bidirectional streams one QUIC connection may have open to the app
    /// at once (each is a guest `handle` call). Threat: one client
    /// multiplexing thousands of streams over a single connection, which
    /// the per-IP connection count alone would see only as they open.
    pub quic_streams_per_connection: u32,
    /// Bytes a QUIC connection may have in flight to the app over all its
    /// streams, unread by the guest, in KiB (at most
    /// [`MAX_QUIC_RECEIVE_WINDOW_KB`]). Threat: a client filling the
    /// gateway's memory with data the guest does not read. Granted only
    /// while the gateway's QUIC receive budget (`quic.receive_budget_mb`)
    /// has room; a connection past it keeps the 64 KiB it started with.
    pub quic_receive_window_kb: u64,
    /// Outbound sockets (TCP and UDP, WASI 0.2 and 0.3) the app's guests
    /// may hold open at once, over all its instances (at most
    /// [`MAX_OUTBOUND_SOCKETS`]). Threat: a guest opening sockets until the
    /// gateway process runs out of file descriptors, when every listener
    /// and the admin API stop accepting. All apps together are also held to
    /// half of the process's descriptor limit.
    pub max_outbound_sockets: usize,
    /// Name lookups the app's guests may have in flight at once (at most
    /// [`MAX_CONCURRENT_LOOKUPS`]); more wait, up to the lookup timeout.
    /// Threat: lookups (each a blocked thread until the resolver answers)
    /// filling the blocking pool that compiles deploys for every app.
    pub max_concurrent_lookups: usize,
    /// Lines of guest stdout/stderr per second written to the gateway's own
    /// log (at most [`MAX_LOG_LINES_PER_SECOND`]); lines beyond it are
    /// counted and reported as "N lines dropped", and still kept in the
    /// app's log (`sockgate logs`). Threat: one chatty guest drowning every
    /// other app's lines (and events) in a slow log sink.
    pub log_lines_per_second: u32,
    /// Instances a `conn-handler-sync` app (one instance per connection)
    /// may have at once, out of the gateway's shared pool of
    /// `PER_CONNECTION_POOL` (1000) (at most [`MAX_SYNC_INSTANCES`], half of
    /// the pool). Threat: one app's flood taking every slot of the pool,
    /// so no other `conn-handler-sync` app can serve a connection.
    pub max_sync_instances: usize,
}

/// Largest `quic_receive_window_kb`: 16 MiB, twice what a 1 Gbit/s path
/// with 100 ms of round trip needs.
pub const MAX_QUIC_RECEIVE_WINDOW_KB: u64 = 16 * 1024;
/// Largest `quic_streams_per_connection`. Each open stream is a guest
/// `handle` call with its buffers.
pub const MAX_QUIC_STREAMS_PER_CONNECTION: u32 = 1000;
/// Largest `max_outbound_sockets` an app may ask for.
pub const MAX_OUTBOUND_SOCKETS: usize = 10_000;
/// Largest `max_concurrent_lookups`: the gateway-wide cap.
pub const MAX_CONCURRENT_LOOKUPS: usize = crate::guest_budget::GATEWAY_LOOKUPS;
/// Largest `log_lines_per_second`.
pub const MAX_LOG_LINES_PER_SECOND: u32 = 10_000;
/// Largest `max_sync_instances`: half of the per-connection instance pool,
/// so one app never holds all of it.
pub const MAX_SYNC_INSTANCES: usize = crate::runtime::engine::PER_CONNECTION_POOL as usize / 2;

impl Default for AppLimits {
    fn default() -> Self {
        Self {
            cpu_budget_ms: 50,
            wall_budget_ms: 1000,
            memory_limit_mb: 128,
            max_connections: 20_000,
            max_connections_per_instance: 10_000,
            max_connections_per_ip: 512,
            idle_timeout_secs: 300,
            max_connection_secs: 24 * 3600,
            quic_streams_per_connection: 100,
            quic_receive_window_kb: 1024,
            max_outbound_sockets: 100,
            max_concurrent_lookups: 4,
            log_lines_per_second: 200,
            max_sync_instances: crate::runtime::engine::PER_CONNECTION_POOL as usize / 4,
        }
    }
}

impl AppLimits {
    /// The idle timeout, if any.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_secs > 0).then(|| Duration::from_secs(self.idle_timeout_secs))
    }

    /// The maximum connection lifetime, if any.
    pub fn max_connection_time(&self) -> Option<Duration> {
        (self.max_connection_secs > 0).then(|| Duration::from_secs(self.max_connection_secs))
    }

    /// Checks that every limit is usable; the error names the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        let positive = [
            ("cpu_budget_ms", self.cpu_budget_ms as usize),
            ("wall_budget_ms", self.wall_budget_ms as usize),
            ("memory_limit_mb", self.memory_limit_mb as usize),
            ("max_connections", self.max_connections),
            (
                "max_connections_per_instance",
                self.max_connections_per_instance,
            ),
            ("max_connections_per_ip", self.max_connections_per_ip),
            (
                "quic_streams_per_connection",
                self.quic_streams_per_connection as usize,
            ),
            (
                "quic_receive_window_kb",
                self.quic_receive_window_kb as usize,
            ),
            ("max_concurrent_lookups", self.max_concurrent_lookups),
            ("log_lines_per_second", self.log_lines_per_second as usize),
            ("max_sync_instances", self.max_sync_instances),
        ];
        for (name, value) in positive {
            if value == 0 {
                anyhow::bail!("limits.{name} must be at least 1");
            }
        }
        if self.cpu_budget_ms > 60_000 || self.wall_budget_ms > 60_000 {
            anyhow::bail!(
                "limits.cpu_budget_ms and limits.wall_budget_ms must be at most 60000 (one minute)"
            );
        }
        if self.memory_limit_mb > 4096 {
            anyhow::bail!("limits.memory_limit_mb must be at most 4096 (wasm32 addresses 4 GiB)");
        }
        let at_most = [
            (
                "quic_receive_window_kb",
                self.quic_receive_window_kb,
                MAX_QUIC_RECEIVE_WINDOW_KB,
            ),
            (
                "quic_streams_per_connection",
                u64::from(self.quic_streams_per_connection),
                u64::from(MAX_QUIC_STREAMS_PER_CONNECTION),
            ),
            (
                "max_outbound_sockets",
                self.max_outbound_sockets as u64,
                MAX_OUTBOUND_SOCKETS as u64,
            ),
            (
                "max_concurrent_lookups",
                self.max_concurrent_lookups as u64,
                MAX_CONCURRENT_LOOKUPS as u64,
            ),
            (
                "log_lines_per_second",
                u64::from(self.log_lines_per_second),
                u64::from(MAX_LOG_LINES_PER_SECOND),
            ),
            (
                "max_sync_instances",
                self.max_sync_instances as u64,
                MAX_SYNC_INSTANCES as u64,
            ),
        ];
        for (name, value, max) in at_most {
            if value > max {
                anyhow::bail!("limits.{name} must be at most {max} (it is {value})");
            }
        }
        Ok(())
    }
}

/// Gateway-wide limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayLimits {
    /// Concurrent connections over all apps. Threat: the process running
    /// out of file descriptors or memory under a flood spread over apps.
    pub max_connections: usize,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        Self {
            max_connections: 50_000,
        }
    }
}
