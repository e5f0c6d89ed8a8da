//! `[http]`: the settings of the plain-HTTP port (ACME HTTP-01 challenges
//! and redirects to https), read by [`crate::listen::http`].
//!
//! ```toml
//! [http]
//! listen = "0.0.0.0:80"   # default
//! enabled = true          # default when [tls] is configured
//! list_apps = false       # default: the bare base domain lists no app names
//! ```

use std::net::SocketAddr;

use serde::Deserialize;

/// `[http]`: the plain-HTTP port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Whether to listen at all (default: yes, when `[tls]` is configured).
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// The address to listen on (default `0.0.0.0:80`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Whether the bare base domain (`http://example.org/`) answers with a
    /// page listing every app's name (default: no, 404). Off by default:
    /// app names can say who the tenants are, and with the dev CA or
    /// static certificates nothing else publishes them (ACME certificates
    /// are public in Certificate Transparency logs anyway).
    #[serde(default)]
    pub list_apps: bool,
}

fn enabled_by_default() -> bool {
    true
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 80))
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_listen(),
            list_apps: false,
        }
    }
}
