//! [`AppLimits`]: the `[app.limits]` table, the bounds every app's guests
//! and clients are held to, each with its threat, its default and its hard
//! maximum (what no configuration, not even the operator's, goes beyond);
//! and [`AppLimits::check`], which holds a deploy to the operator's
//! [`Ceilings`] (`[ceilings]`, defined here with the maxima it lowers) as
//! well.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::gateway::{GATEWAY_LOOKUPS, PER_CONNECTION_POOL};
use super::http::{self, HttpLimits};

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
    /// Measured on epoch ticks (1 to 4 ms apart); the guest traps when it
    /// is spent.
    pub cpu_budget_ms: u64,
    /// Wall-clock time a guest may hold a thread in one activation, in
    /// milliseconds, whether it computes, is blocked in an import or its
    /// thread waits for a core. Threat: a guest holding its instance (and
    /// every connection on it) without computing, e.g. blocked in a
    /// synchronous sleep; the backstop to the CPU budget. The guest traps
    /// when it is spent. Time it waits for its next time slice (the slow
    /// lane runs the guests it holds in turn) is the gateway's scheduling
    /// and not counted: many guests computing at once on a busy machine
    /// must not trap for taking turns.
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
    /// HTTP apps: request body bytes an app receives at most, in KiB
    /// (see [`http::HttpLimits::max_body_kb`] for the threat).
    pub http_max_body_kb: u64,
    /// HTTP apps: request head bytes at most, in KiB (see
    /// [`http::HttpLimits::max_header_kb`]).
    pub http_max_header_kb: u32,
    /// HTTP apps: time from a request's head to its response's head, in
    /// milliseconds; past it the client gets `504` (see
    /// [`http::HttpLimits::request_timeout_ms`]).
    pub http_request_timeout_ms: u64,
    /// HTTP apps: requests one HTTP/2 connection may have in flight (see
    /// [`http::HttpLimits::max_streams`]).
    pub http2_max_streams: u32,
    /// Seconds without a connection, pending guest work or traffic after
    /// which an app's long-lived instances (`conn-handler`, `conn-events`,
    /// `wasi:http` 0.3 services) are dropped — their linear memory goes
    /// back to the system — until the next connection starts a fresh one
    /// (0: never; at most a year). Unset: [`DEPLOYED_HIBERNATE_AFTER_SECS`]
    /// for apps deployed through the admin API, never for the
    /// configuration file's apps and `sockgate run`. Threat addressed: a
    /// gateway hosting many small apps paying for the memory of idle ones.
    /// Instance state is lost, as on a trap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hibernate_after_secs: Option<u64>,
}

/// `hibernate_after_secs` of a deployed app that does not set it: ten
/// minutes. Deployed apps are the many small ones (previews, one per
/// customer) whose idle memory hibernation is for; ten minutes keeps an
/// app that is used every few minutes awake, so only apps really left idle
/// pay a wake. The configuration file's apps are the operator's own,
/// usually few and busy: they hibernate only when asked to.
pub const DEPLOYED_HIBERNATE_AFTER_SECS: u64 = 600;

/// Largest `quic_receive_window_kb`: 16 MiB, twice what a 1 Gbit/s path
/// with 100 ms of round trip needs.
pub const MAX_QUIC_RECEIVE_WINDOW_KB: u64 = 16 * 1024;
/// Largest `quic_streams_per_connection`. Each open stream is a guest
/// `handle` call with its buffers.
pub const MAX_QUIC_STREAMS_PER_CONNECTION: u32 = 1000;
/// Largest `max_outbound_sockets` an app may ask for.
pub const MAX_OUTBOUND_SOCKETS: usize = 10_000;
/// Largest `max_concurrent_lookups`: the gateway-wide cap.
pub const MAX_CONCURRENT_LOOKUPS: usize = GATEWAY_LOOKUPS;
/// Largest `log_lines_per_second`.
pub const MAX_LOG_LINES_PER_SECOND: u32 = 10_000;
/// Largest `max_sync_instances`: half of the per-connection instance pool,
/// so one app never holds all of it.
pub const MAX_SYNC_INSTANCES: usize = PER_CONNECTION_POOL as usize / 2;

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
            max_sync_instances: PER_CONNECTION_POOL as usize / 4,
            http_max_body_kb: HttpLimits::default().max_body_kb,
            http_max_header_kb: HttpLimits::default().max_header_kb,
            http_request_timeout_ms: HttpLimits::default().request_timeout_ms,
            http2_max_streams: HttpLimits::default().max_streams,
            hibernate_after_secs: None,
        }
    }
}

impl AppLimits {
    /// The idle timeout, if any.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_secs > 0).then(|| Duration::from_secs(self.idle_timeout_secs))
    }

    /// How long the app's instances stay idle before they hibernate, if
    /// they do: the setting, or its default for a `deployed` app or one of
    /// the configuration file ([`AppLimits::hibernate_after_secs`]).
    pub fn hibernate_after(&self, deployed: bool) -> Option<Duration> {
        let default = if deployed {
            DEPLOYED_HIBERNATE_AFTER_SECS
        } else {
            0
        };
        let secs = self.hibernate_after_secs.unwrap_or(default);
        (secs > 0).then(|| Duration::from_secs(secs))
    }

    /// The HTTP bounds of an HTTP app (`http_*` and `http2_*`).
    pub fn http(&self) -> HttpLimits {
        HttpLimits {
            max_body_kb: self.http_max_body_kb,
            max_header_kb: self.http_max_header_kb,
            request_timeout_ms: self.http_request_timeout_ms,
            max_streams: self.http2_max_streams,
        }
    }

    /// The maximum connection lifetime, if any.
    pub fn max_connection_time(&self) -> Option<Duration> {
        (self.max_connection_secs > 0).then(|| Duration::from_secs(self.max_connection_secs))
    }

    /// Checks every limit against its hard bounds (what any configuration
    /// may set); the error names the field. See [`AppLimits::check`].
    pub fn validate(&self) -> anyhow::Result<()> {
        self.check(None)
    }

    /// Checks every limit against its hard bounds and, for a deploy through
    /// the admin API, the operator's `ceilings`; the error names the field,
    /// the bound and what to do.
    pub fn check(&self, ceilings: Option<&Ceilings>) -> anyhow::Result<()> {
        self.http().validate()?;
        if let Some(secs) = self.hibernate_after_secs.filter(|&s| s > HARD_MAX_SECS) {
            anyhow::bail!(
                "limits.hibernate_after_secs must be at most {HARD_MAX_SECS} (it is {secs}): \
                 a year (0 means never)"
            );
        }
        for (name, value, hard_max) in self.rows() {
            let never = value == 0 && NEVER_AT_ZERO.contains(&name);
            if value == 0 && !never && !NONE_AT_ZERO.contains(&name) {
                anyhow::bail!("limits.{name} must be at least 1");
            }
            if value > hard_max {
                anyhow::bail!(
                    "limits.{name} must be at most {hard_max} (it is {value}){}",
                    hard_reason(name)
                );
            }
            if let Some(ceiling) = ceilings.and_then(|c| c.limit(name)) {
                if never {
                    anyhow::bail!(
                        "limits.{name} = 0 (never) is over this gateway's ceiling {ceiling} \
                         (`[ceilings] {name}` in its configuration): set a value up to {ceiling}"
                    );
                }
                if value > ceiling {
                    anyhow::bail!(
                        "limits.{name} = {value} is over this gateway's ceiling {ceiling} \
                         (`[ceilings] {name}` in its configuration): lower it, or ask the \
                         operator to raise the ceiling"
                    );
                }
            }
        }
        Ok(())
    }

    /// Every limit as `(name, value, hard maximum)`, in the units of the
    /// configuration.
    pub(super) fn rows(&self) -> [(&'static str, u64, u64); 18] {
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        [
            ("cpu_budget_ms", self.cpu_budget_ms, HARD_MAX_BUDGET_MS),
            ("wall_budget_ms", self.wall_budget_ms, HARD_MAX_BUDGET_MS),
            ("memory_limit_mb", self.memory_limit_mb, HARD_MAX_MEMORY_MB),
            (
                "max_connections",
                n(self.max_connections),
                HARD_MAX_CONNECTIONS,
            ),
            (
                "max_connections_per_instance",
                n(self.max_connections_per_instance),
                HARD_MAX_CONNECTIONS,
            ),
            (
                "max_connections_per_ip",
                n(self.max_connections_per_ip),
                HARD_MAX_CONNECTIONS,
            ),
            ("idle_timeout_secs", self.idle_timeout_secs, HARD_MAX_SECS),
            (
                "max_connection_secs",
                self.max_connection_secs,
                HARD_MAX_SECS,
            ),
            (
                "quic_streams_per_connection",
                u64::from(self.quic_streams_per_connection),
                u64::from(MAX_QUIC_STREAMS_PER_CONNECTION),
            ),
            (
                "quic_receive_window_kb",
                self.quic_receive_window_kb,
                MAX_QUIC_RECEIVE_WINDOW_KB,
            ),
            (
                "max_outbound_sockets",
                n(self.max_outbound_sockets),
                n(MAX_OUTBOUND_SOCKETS),
            ),
            (
                "max_concurrent_lookups",
                n(self.max_concurrent_lookups),
                n(MAX_CONCURRENT_LOOKUPS),
            ),
            (
                "log_lines_per_second",
                u64::from(self.log_lines_per_second),
                u64::from(MAX_LOG_LINES_PER_SECOND),
            ),
            (
                "max_sync_instances",
                n(self.max_sync_instances),
                n(MAX_SYNC_INSTANCES),
            ),
            ("http_max_body_kb", self.http_max_body_kb, http::MAX_BODY_KB),
            (
                "http_max_header_kb",
                u64::from(self.http_max_header_kb),
                u64::from(http::MAX_HEADER_KB),
            ),
            (
                "http_request_timeout_ms",
                self.http_request_timeout_ms,
                http::MAX_REQUEST_TIMEOUT_MS,
            ),
            (
                "http2_max_streams",
                u64::from(self.http2_max_streams),
                u64::from(http::MAX_STREAMS),
            ),
        ]
    }
}

/// Limits where 0 means "never" (no timeout) rather than nothing.
const NEVER_AT_ZERO: [&str; 2] = ["idle_timeout_secs", "max_connection_secs"];
/// Limits where 0 means none at all (no outbound socket), which is below
/// any ceiling.
pub(super) const NONE_AT_ZERO: [&str; 1] = ["max_outbound_sockets"];

/// Hard maxima: no configuration, not even the operator's, goes beyond
/// them (with the `MAX_*` bounds above). Each bounds a host resource a
/// value near `u64::MAX` would break (a channel sized by
/// `max_connections_per_instance` panics beyond `usize::MAX >> 3`; a whole
/// start then fails on the stored record). CPU and wall-clock budgets: one
/// minute.
pub const HARD_MAX_BUDGET_MS: u64 = 60_000;
/// Linear memory: wasm32 addresses 4 GiB.
pub const HARD_MAX_MEMORY_MB: u64 = 4096;
/// Connections of one app (and per instance, per client): a million.
pub const HARD_MAX_CONNECTIONS: u64 = 1_000_000;
/// Idle timeout and lifetime: a year (0 = never stays allowed).
pub const HARD_MAX_SECS: u64 = 365 * 86_400;
/// Instances of one app.
pub const HARD_MAX_INSTANCES: usize = 1024;
/// Custom domains of one app.
pub const HARD_MAX_DOMAINS: usize = 100;
/// Outbound rules of one app.
pub const HARD_MAX_OUTBOUND_RULES: usize = 256;
/// ALPN protocols of one app.
pub const HARD_MAX_ALPN: usize = 32;

fn hard_reason(name: &str) -> &'static str {
    match name {
        "memory_limit_mb" => ": wasm32 addresses 4 GiB",
        "cpu_budget_ms" | "wall_budget_ms" => ": one minute",
        "idle_timeout_secs" | "max_connection_secs" => ": a year (0 means never)",
        _ => "",
    }
}

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
            hibernate_after_secs: None,
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
