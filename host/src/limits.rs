//! Every bound a guest or a client is held to, with the threat each one
//! bounds. Apps set them in their `[app.limits]` table; the gateway-wide
//! ones live in `[gateway]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Per-app limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppLimits {
    /// CPU time a guest may use in one activation — from the gateway
    /// handing it control (an event for its event loop, a new call; for a
    /// `conn-handler-sync` guest also the end of a wait for I/O) to the
    /// guest handing it back — in milliseconds of its thread's CPU time,
    /// whatever it computes (integer or float work, memory-bound loops,
    /// recursion, cheap imports in a loop). Threat: a guest that computes
    /// forever (a bug, or a tenant mining coins) would hold its instance
    /// (every connection on it waits) and a share of the gateway's cores.
    /// Measured on epoch ticks (1 ms); the guest traps when it is spent.
    pub cpu_budget_ms: u64,
    /// Wall-clock time a guest may run in one activation, in milliseconds,
    /// whether it computes, is blocked in an import or waits for a core.
    /// Threat: a guest holding its instance (and every connection on it)
    /// without computing, e.g. blocked in a synchronous sleep, or starved
    /// of CPU; the backstop to the CPU budget. The guest traps when it is
    /// spent.
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
    /// streams, unread by the guest, in KiB. Threat: a client filling the
    /// gateway's memory with data the guest does not read.
    pub quic_receive_window_kb: u64,
}

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
            quic_receive_window_kb: 8 * 1024,
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
