//! `[quic]`: the settings of the QUIC endpoint, read by
//! [`crate::listen::quic`] (whose module doc has the memory arithmetic the
//! receive budget rests on).
//!
//! ```toml
//! [quic]                      # on by default with [tls]
//! enabled = true
//! listen = "0.0.0.0:443"      # UDP; default: the TLS listener's address
//! idle_timeout_ms = 30000     # a QUIC connection with no packets is closed
//! retry = "auto"              # stateless retry: "auto", "always" or "never"
//! receive_budget_mb = 1024    # unread client data, over all connections
//! ```

use std::net::SocketAddr;

use anyhow::{Result, bail};
use serde::Deserialize;

/// The connection receive window every QUIC connection starts with, before
/// its app (and so its `quic_receive_window_kb`) is known; `max_connections`
/// of them are set aside from `quic.receive_budget_mb`.
pub const INITIAL_RECEIVE_WINDOW: u64 = 64 * 1024;

/// When unvalidated clients are sent a stateless Retry first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryPolicy {
    /// When more than `retry_above` handshakes are in progress.
    #[default]
    Auto,
    /// Always: every new client pays one more round trip.
    Always,
    /// Never (clients behind spoofing-safe networks only).
    Never,
}

/// `[quic]`: the QUIC endpoint. On by default when `[tls]` is configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuicSettings {
    /// Serve QUIC at all.
    pub enabled: bool,
    /// The UDP address; default: the TLS listener's address (same port,
    /// over UDP).
    pub listen: Option<SocketAddr>,
    /// A client must complete its handshake within this time (ms); default:
    /// `tls.handshake_timeout_ms`.
    pub handshake_timeout_ms: Option<u64>,
    /// A QUIC connection with no packet in either direction for this long
    /// is closed (ms). Negotiated in the handshake, before the app is
    /// known, so it is endpoint-wide.
    pub idle_timeout_ms: u64,
    /// Bytes one stream may have in flight to the gateway, unread by the
    /// guest (KiB). Endpoint-wide for the same reason.
    pub stream_window_kb: u64,
    /// QUIC connections at once, over all apps.
    pub max_connections: usize,
    /// QUIC connections at once from one IP address.
    pub max_connections_per_ip: usize,
    /// Client data all QUIC connections together may hold unread by the
    /// guests, in MiB (see the module doc for the arithmetic). Threat: a
    /// client (or many) filling the gateway's memory with data no guest
    /// reads: 10 000 connections at an 8 MiB window were ~78 GiB.
    pub receive_budget_mb: u64,
    /// Stateless retry (address validation).
    pub retry: RetryPolicy,
    /// With `retry = "auto"`: handshakes in progress above which
    /// unvalidated clients are sent a Retry first.
    pub retry_above: usize,
}

impl Default for QuicSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            handshake_timeout_ms: None,
            idle_timeout_ms: 30_000,
            stream_window_kb: 1024,
            max_connections: 10_000,
            max_connections_per_ip: 64,
            receive_budget_mb: 1024,
            retry: RetryPolicy::Auto,
            retry_above: 32,
        }
    }
}

impl QuicSettings {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if !(100..=3_600_000).contains(&self.idle_timeout_ms) {
            bail!("quic.idle_timeout_ms must be between 100 and 3600000");
        }
        if let Some(ms) = self.handshake_timeout_ms
            && !(100..=600_000).contains(&ms)
        {
            bail!("quic.handshake_timeout_ms must be between 100 and 600000");
        }
        if !(1..=1 << 20).contains(&self.stream_window_kb) {
            bail!("quic.stream_window_kb must be between 1 and 1048576");
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            bail!("quic.max_connections and quic.max_connections_per_ip must be positive");
        }
        if !(1..=1 << 20).contains(&self.receive_budget_mb) {
            bail!("quic.receive_budget_mb must be between 1 and 1048576");
        }
        let initial_mib =
            (self.max_connections as u64).saturating_mul(INITIAL_RECEIVE_WINDOW) >> 20;
        if initial_mib > self.receive_budget_mb {
            bail!(
                "quic.max_connections ({}) × the {} KiB receive window every connection starts \
                 with is {initial_mib} MiB, over quic.receive_budget_mb ({}): raise the budget \
                 or lower max_connections",
                self.max_connections,
                INITIAL_RECEIVE_WINDOW >> 10,
                self.receive_budget_mb
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initial_windows_of_every_connection_must_fit_the_budget() {
        let defaults = QuicSettings::default();
        defaults.validate().unwrap();
        let too_many = QuicSettings {
            max_connections: 100_000,
            ..QuicSettings::default()
        };
        let err = too_many.validate().unwrap_err().to_string();
        assert!(err.contains("quic.receive_budget_mb"), "{err}");
        let fits = QuicSettings {
            max_connections: 16,
            receive_budget_mb: 1,
            ..QuicSettings::default()
        };
        fits.validate().unwrap();
    }
}
