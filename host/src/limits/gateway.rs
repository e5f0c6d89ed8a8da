//! The gateway-wide side of the limits: [`GatewayLimits`] (`[gateway]`),
//! the operator's [`Ceilings`] on what a deploy may ask for (`[ceilings]`),
//! and the sizes of the pools all apps share ([`GATEWAY_LOOKUPS`],
//! [`PER_CONNECTION_POOL`]).

use serde::{Deserialize, Serialize};

use super::app::{
    AppLimits, HARD_MAX_DOMAINS, HARD_MAX_INSTANCES, HARD_MAX_OUTBOUND_RULES,
    MAX_CONCURRENT_LOOKUPS, NONE_AT_ZERO,
};

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

/// `[ceilings]`: the most a deploy through the admin API may ask for, set
/// by the operator. Apps of the configuration file are the operator's own
/// and held to the hard maxima only; a deployed app over a ceiling is
/// refused (and one restored over a lowered ceiling is reported and not
/// started). Threat: a deployer (anyone with the admin token) choosing
/// limits that take the host's memory, descriptors or CPU from every other
/// app: thousands of instances, a 4 GiB memory limit on each, connections
/// that never time out.
///
/// ```toml
/// [ceilings]                 # defaults shown
/// instances = 16             # or the number of cores, if more
/// app_memory_mb = 4096       # instances × memory_limit_mb
/// memory_limit_mb = 1024
/// domains = 16
/// outbound_rules = 64
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ceilings {
    /// Instances of one app.
    pub instances: usize,
    /// Memory of one app over all its instances, in MiB
    /// (`instances × memory_limit_mb`).
    pub app_memory_mb: u64,
    /// Custom domains of one app.
    pub domains: usize,
    /// Outbound rules of one app.
    pub outbound_rules: usize,
    /// `limits.cpu_budget_ms`.
    pub cpu_budget_ms: u64,
    /// `limits.wall_budget_ms`.
    pub wall_budget_ms: u64,
    /// `limits.memory_limit_mb`.
    pub memory_limit_mb: u64,
    /// `limits.max_connections`.
    pub max_connections: usize,
    /// `limits.max_connections_per_instance`.
    pub max_connections_per_instance: usize,
    /// `limits.max_connections_per_ip`.
    pub max_connections_per_ip: usize,
    /// `limits.idle_timeout_secs` (a deploy may not ask for 0, never).
    pub idle_timeout_secs: u64,
    /// `limits.max_connection_secs` (a deploy may not ask for 0, never).
    pub max_connection_secs: u64,
    /// `limits.quic_streams_per_connection`.
    pub quic_streams_per_connection: u32,
    /// `limits.quic_receive_window_kb`.
    pub quic_receive_window_kb: u64,
    /// `limits.max_outbound_sockets`.
    pub max_outbound_sockets: usize,
    /// `limits.max_concurrent_lookups`.
    pub max_concurrent_lookups: usize,
    /// `limits.log_lines_per_second`.
    pub log_lines_per_second: u32,
    /// `limits.max_sync_instances`.
    pub max_sync_instances: usize,
    /// `limits.http_max_body_kb`.
    pub http_max_body_kb: u64,
    /// `limits.http_max_header_kb`.
    pub http_max_header_kb: u32,
    /// `limits.http_request_timeout_ms`.
    pub http_request_timeout_ms: u64,
    /// `limits.http2_max_streams`.
    pub http2_max_streams: u32,
}

impl Default for Ceilings {
    fn default() -> Self {
        let app = AppLimits::default();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            instances: cores.max(16),
            app_memory_mb: 4096,
            domains: 16,
            outbound_rules: 64,
            cpu_budget_ms: 1000,
            wall_budget_ms: 10_000,
            memory_limit_mb: 1024,
            max_connections: app.max_connections,
            max_connections_per_instance: app.max_connections_per_instance,
            max_connections_per_ip: app.max_connections_per_ip,
            idle_timeout_secs: 3600,
            max_connection_secs: 7 * 86_400,
            quic_streams_per_connection: app.quic_streams_per_connection,
            quic_receive_window_kb: 8 * 1024,
            max_outbound_sockets: 1000,
            max_concurrent_lookups: MAX_CONCURRENT_LOOKUPS.min(16),
            log_lines_per_second: 1000,
            max_sync_instances: app.max_sync_instances,
            http_max_body_kb: 100 * 1024,
            http_max_header_kb: 256,
            http_request_timeout_ms: 300_000,
            http2_max_streams: 250,
        }
    }
}

impl Ceilings {
    /// The ceiling of limit `name` (as [`AppLimits`] names it).
    pub(super) fn limit(&self, name: &str) -> Option<u64> {
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        Some(match name {
            "cpu_budget_ms" => self.cpu_budget_ms,
            "wall_budget_ms" => self.wall_budget_ms,
            "memory_limit_mb" => self.memory_limit_mb,
            "max_connections" => n(self.max_connections),
            "max_connections_per_instance" => n(self.max_connections_per_instance),
            "max_connections_per_ip" => n(self.max_connections_per_ip),
            "idle_timeout_secs" => self.idle_timeout_secs,
            "max_connection_secs" => self.max_connection_secs,
            "quic_streams_per_connection" => u64::from(self.quic_streams_per_connection),
            "quic_receive_window_kb" => self.quic_receive_window_kb,
            "max_outbound_sockets" => n(self.max_outbound_sockets),
            "max_concurrent_lookups" => n(self.max_concurrent_lookups),
            "log_lines_per_second" => u64::from(self.log_lines_per_second),
            "max_sync_instances" => n(self.max_sync_instances),
            "http_max_body_kb" => self.http_max_body_kb,
            "http_max_header_kb" => u64::from(self.http_max_header_kb),
            "http_request_timeout_ms" => self.http_request_timeout_ms,
            "http2_max_streams" => u64::from(self.http2_max_streams),
            _ => return None,
        })
    }

    /// Checks the ceilings themselves: each within the hard maxima.
    pub fn validate(&self) -> anyhow::Result<()> {
        let as_limits = AppLimits {
            cpu_budget_ms: self.cpu_budget_ms,
            wall_budget_ms: self.wall_budget_ms,
            memory_limit_mb: self.memory_limit_mb,
            max_connections: self.max_connections,
            max_connections_per_instance: self.max_connections_per_instance,
            max_connections_per_ip: self.max_connections_per_ip,
            idle_timeout_secs: self.idle_timeout_secs,
            max_connection_secs: self.max_connection_secs,
            quic_streams_per_connection: self.quic_streams_per_connection,
            quic_receive_window_kb: self.quic_receive_window_kb,
            max_outbound_sockets: self.max_outbound_sockets,
            max_concurrent_lookups: self.max_concurrent_lookups,
            log_lines_per_second: self.log_lines_per_second,
            max_sync_instances: self.max_sync_instances,
            http_max_body_kb: self.http_max_body_kb,
            http_max_header_kb: self.http_max_header_kb,
            http_request_timeout_ms: self.http_request_timeout_ms,
            http2_max_streams: self.http2_max_streams,
        };
        as_limits
            .http()
            .validate()
            .map_err(|err| anyhow::anyhow!("[ceilings]: {err:#}"))?;
        for (name, value, max) in as_limits.rows() {
            if (value == 0 && !NONE_AT_ZERO.contains(&name)) || value > max {
                anyhow::bail!("[ceilings] {name} = {value} must be between 1 and {max}");
            }
        }
        for (name, value, max) in [
            ("instances", self.instances, HARD_MAX_INSTANCES),
            ("domains", self.domains, HARD_MAX_DOMAINS),
            (
                "outbound_rules",
                self.outbound_rules,
                HARD_MAX_OUTBOUND_RULES,
            ),
        ] {
            if value > max {
                anyhow::bail!("[ceilings] {name} = {value} is over its maximum {max}");
            }
        }
        if self.instances == 0 {
            anyhow::bail!("[ceilings] instances must be at least 1");
        }
        if self.app_memory_mb == 0 {
            anyhow::bail!("[ceilings] app_memory_mb must be at least 1");
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
