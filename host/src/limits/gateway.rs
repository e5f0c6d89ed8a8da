//! The gateway-wide side of the limits: [`GatewayLimits`] (`[gateway]`)
//! and the sizes of the pools all apps share ([`GATEWAY_LOOKUPS`],
//! [`PER_CONNECTION_POOL`]).

use serde::{Deserialize, Serialize};

/// Name lookups in flight over all apps. Each blocks a thread of tokio's
/// blocking pool (512 threads) in `getaddrinfo`, for as long as the
/// resolver takes, even after the guest stopped waiting. Threat: guests
/// filling the pool that deploys (compiles) and certificate saves need.
pub const GATEWAY_LOOKUPS: usize = 32;

/// Per-connection instances that may exist at once, over all
/// `conn-handler-sync` apps: the size of the instance pool. Threat: every
/// slot reserves address space (a memory reservation per memory) and a
/// fiber stack, so the pool is bounded; a connection that finds it full is
/// closed and counted as a limit hit (`per-connection instance pool`).
pub const PER_CONNECTION_POOL: u32 = 1000;

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
