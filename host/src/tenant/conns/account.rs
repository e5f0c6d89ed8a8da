//! One app's accounting: its connection limits (copied from its
//! [`crate::limits::AppLimits`]), its live counts (connections, and
//! connections per client), and the counters operators and metrics read.
//! Admission ([`super::admission`]) and the live record
//! ([`super::active`]) move the counts; this file owns them and records
//! refusals.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::tenant::logs::{AppLog, EventKind};

/// Why a connection was refused, named as the limit is in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `gateway.max_connections`.
    #[error("gateway.max_connections")]
    GatewayFull,
    /// The app's share of `gateway.max_connections` (see
    /// `gateway.reserved_connections_percent`).
    #[error("gateway.reserved_connections_percent")]
    GatewayShare,
    /// The app's `limits.max_connections`.
    #[error("max_connections")]
    AppFull,
    /// The app's `limits.max_connections_per_ip`.
    #[error("max_connections_per_ip")]
    PerIp,
    /// Every instance at `limits.max_connections_per_instance`.
    #[error("max_connections_per_instance")]
    InstancesFull,
}

/// One app's accounting.
pub struct AppAccount {
    pub(super) log: Arc<AppLog>,
    pub(super) max_connections: usize,
    pub(super) max_per_ip: usize,
    pub(super) idle_timeout_ms: u64,
    pub(super) max_lifetime_ms: u64,
    /// Concurrent QUIC streams per QUIC connection, and the connection's
    /// receive window in KiB (applied once a QUIC connection is routed).
    quic_limits: (u32, u64),
    pub(super) active: AtomicUsize,
    /// Connections by client ([`client_key`]).
    pub(super) per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Counters for operators and metrics.
    pub counters: AppCounters,
}

/// What happened to an app's connections so far.
#[derive(Default)]
pub struct AppCounters {
    /// Connections handed to an instance.
    pub accepted: AtomicU64,
    /// Refused: gateway-wide cap.
    pub refused_gateway_full: AtomicU64,
    /// Refused: the app holds its share of the gateway-wide cap.
    pub refused_gateway_share: AtomicU64,
    /// Refused: the app's cap.
    pub refused_app_full: AtomicU64,
    /// Refused: the per-IP cap.
    pub refused_per_ip: AtomicU64,
    /// Refused: every instance at its cap.
    pub refused_instances_full: AtomicU64,
    /// Closed by the idle timeout.
    pub closed_idle: AtomicU64,
    /// Closed at the maximum lifetime.
    pub closed_lifetime: AtomicU64,
    /// Bytes received from clients.
    pub bytes_in: AtomicU64,
    /// Bytes sent to clients.
    pub bytes_out: AtomicU64,
    /// Instance traps, by cause: CPU budget, wall-clock budget, memory
    /// limit, anything else.
    pub traps: [AtomicU64; 4],
    /// How long the wakes of hibernated instances took.
    pub wakes: crate::tenant::hibernation::WakeStats,
}

impl AppCounters {
    /// All refusals.
    pub fn refused(&self) -> u64 {
        [
            &self.refused_gateway_full,
            &self.refused_gateway_share,
            &self.refused_app_full,
            &self.refused_per_ip,
            &self.refused_instances_full,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

impl AppAccount {
    /// Accounting for one app with its limits.
    pub fn new(log: Arc<AppLog>, limits: &crate::limits::AppLimits) -> Arc<Self> {
        let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis() as u64);
        Arc::new(Self {
            log,
            max_connections: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            idle_timeout_ms: ms(limits.idle_timeout()),
            max_lifetime_ms: ms(limits.max_connection_time()),
            quic_limits: (
                limits.quic_streams_per_connection,
                limits.quic_receive_window_kb,
            ),
            active: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            counters: AppCounters::default(),
        })
    }

    /// The app's QUIC limits: concurrent bidirectional streams per QUIC
    /// connection, and the connection's receive window in KiB.
    pub fn quic_limits(&self) -> (u32, u64) {
        self.quic_limits
    }

    /// Connections active in the app.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Records a refusal: counted, and an event naming the limit.
    pub fn refuse(&self, why: Refused, peer: IpAddr) -> Refused {
        let counter = match why {
            Refused::GatewayFull => &self.counters.refused_gateway_full,
            Refused::GatewayShare => &self.counters.refused_gateway_share,
            Refused::AppFull => &self.counters.refused_app_full,
            Refused::PerIp => &self.counters.refused_per_ip,
            Refused::InstancesFull => &self.counters.refused_instances_full,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let limit = match why {
            Refused::GatewayFull => "gateway.max_connections",
            Refused::GatewayShare => "gateway.reserved_connections_percent",
            Refused::AppFull => "max_connections",
            Refused::PerIp => "max_connections_per_ip",
            Refused::InstancesFull => "max_connections_per_instance",
        };
        self.log.event(
            None,
            EventKind::LimitHit {
                limit,
                detail: format!("refused a connection from {peer}"),
            },
        );
        why
    }
}
