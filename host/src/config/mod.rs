//! The gateway's configuration: the TOML file `sockgate serve --config`
//! reads, and the same structure built in code by `sockgate run`.
//!
//! ```toml
//! [gateway]
//! cache_dir = "/var/cache/sockgate"   # optional
//!
//! [[app]]
//! name = "echo"
//! component = "echo.wasm"             # relative to this file
//! listen = "127.0.0.1:7001"
//! instances = 1                       # optional, default 1 (shared state); N or "auto" shard it
//! outbound = ["api.example.com:443"]  # optional, default: no outbound access
//!
//! [app.limits]                         # optional, see `AppLimits`
//! cpu_budget_ms = 50
//!
//! [ceilings]                           # optional: the most a deploy may ask for
//! memory_limit_mb = 512                # see `Ceilings`
//! ```
//!
//! [`AppConfig::check`] is the one validator of an app's settings, for
//! apps of this file and apps deployed through the admin API alike.

mod app;
pub mod cluster;
pub(crate) mod file;
pub mod http;
pub mod quic;
pub mod tls;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

pub use app::{AppConfig, Instances};
pub use cluster::ClusterSettings;
pub use file::app_location;
pub use http::HttpSettings;
pub use quic::{QuicSettings, RetryPolicy};
pub use tls::TlsSettings;

use crate::limits::{Ceilings, GatewayLimits};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Settings for the gateway as a whole.
    #[serde(default)]
    pub gateway: GatewaySettings,
    /// The apps to serve, in the file as `[[app]]` tables.
    #[serde(default, rename = "app")]
    pub apps: Vec<AppConfig>,
    /// TLS termination, base domains and certificates (`[tls]`); no TLS
    /// listener when absent. See [`tls`].
    pub tls: Option<TlsSettings>,
    /// The plain-HTTP port (`[http]`), with `[tls]` only: ACME HTTP-01
    /// challenges and redirects to https. See [`http`].
    pub http: Option<HttpSettings>,
    /// The QUIC endpoint (`[quic]`), with `[tls]` only; on by default when
    /// `[tls]` is there. See [`quic`].
    pub quic: Option<QuicSettings>,
    /// The most an app deployed through the admin API may ask for
    /// (`[ceilings]`). See [`Ceilings`].
    #[serde(default)]
    pub ceilings: Ceilings,
    /// Cluster mode (`[cluster]`): deployed apps shared with other
    /// gateways through etcd; none when absent. See [`cluster`].
    pub cluster: Option<ClusterSettings>,
}

/// Settings that apply to the whole gateway.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    /// Where compiled components are cached; default
    /// `$XDG_CACHE_HOME/sockgate` or `~/.cache/sockgate`.
    pub cache_dir: Option<PathBuf>,
    /// Concurrent connections over all apps.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Where deployed apps are kept (see [`crate::state`]); default
    /// `$XDG_DATA_HOME/sockgate` or `~/.local/share/sockgate`.
    pub state_dir: Option<PathBuf>,
    /// Address of the admin API and dashboard. No admin API when unset.
    /// It speaks plain HTTP and deploys code, so it must be a loopback
    /// address unless `allow_remote_admin` is set.
    pub admin: Option<SocketAddr>,
    /// Lets `admin` be a non-loopback address. Threat: the admin token and
    /// the dashboard's session cookie crossing a network in clear text;
    /// set it only behind a TLS-terminating proxy or on a trusted network.
    #[serde(default)]
    pub allow_remote_admin: bool,
    /// How long connections of a replaced or removed version may go on
    /// before they are closed, in seconds.
    #[serde(default = "default_drain_secs")]
    pub drain_secs: u64,
    /// The top share of `max_connections`, in percent, kept for apps that
    /// hold less than an equal share of it; no app holds more than the
    /// rest (see [`crate::tenant::conns`]). Threat: one app taking every
    /// gateway-wide connection slot. 0 turns the reserve off.
    #[serde(default = "default_reserved_percent")]
    pub reserved_connections_percent: u8,
    /// IPv6 clients are counted per prefix of this length by every per-IP
    /// limit (connections, handshakes, QUIC). Threat: a host owning a /64
    /// (the usual assignment) counting as 2^64 clients.
    #[serde(default = "default_ipv6_prefix")]
    pub client_ipv6_prefix: u8,
    /// How `sockgate serve` writes its own log (stderr): `"text"` (the
    /// default) or `"json"`, one object a line for log collectors.
    /// `--log-format` wins over it.
    #[serde(default)]
    pub log_format: Option<LogFormat>,
    /// The most linear memory all guests' instances may hold together, in
    /// MiB; unset: no ceiling. When starting or waking an instance would
    /// pass it, the least recently used idle instances of apps that
    /// hibernate are hibernated first, and only then is the connection
    /// refused, with an event (see [`crate::tenant::memory`]). Threat: many
    /// apps, each within its own `memory_limit_mb`, together exhausting the
    /// machine's memory.
    #[serde(default)]
    pub max_guest_memory_mb: Option<u64>,
}

/// The format of the gateway's own log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object a line (`timestamp`, `level`, `fields.message`,
    /// `target`, and the event's other fields).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => bail!("log format `{other}`: expected `text` or `json`"),
        }
    }
}

fn default_drain_secs() -> u64 {
    30
}

fn default_reserved_percent() -> u8 {
    crate::tenant::conns::DEFAULT_RESERVED_PERCENT
}

fn default_ipv6_prefix() -> u8 {
    crate::tenant::conns::DEFAULT_IPV6_PREFIX
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            cache_dir: None,
            max_connections: default_max_connections(),
            state_dir: None,
            admin: None,
            allow_remote_admin: false,
            drain_secs: default_drain_secs(),
            reserved_connections_percent: default_reserved_percent(),
            client_ipv6_prefix: default_ipv6_prefix(),
            log_format: None,
            max_guest_memory_mb: None,
        }
    }
}

fn default_max_connections() -> usize {
    GatewayLimits::default().max_connections
}

/// A refusal of [`Config::check`], with where in the file it points.
struct Invalid {
    place: Place,
    error: anyhow::Error,
}

/// A place in the configuration file, found again in its text by
/// `file::locate`.
enum Place {
    /// The file as a whole.
    File,
    /// A table (`[ceilings]`, `[tls]`).
    Table(&'static str),
    /// A key of a table (`[gateway]`'s `max_connections`).
    Key(&'static str, &'static str),
    /// The n-th `[[app]]` table.
    App(usize),
}

impl Config {
    /// Reads and checks a configuration file. Errors name the file and the
    /// line and column they concern (`FILE:LINE:COLUMN: reason`), and the
    /// app where one is at fault; see [`file`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read configuration file {}", path.display()))?;
        file::parse(path, &text)
    }

    /// Checks what serde cannot: names, duplicates, limits.
    pub fn validate(&self) -> Result<()> {
        self.check().map_err(|invalid| invalid.error)
    }

    /// [`Config::validate`], saying where in the file the fault is.
    fn check(&self) -> Result<(), Invalid> {
        let gateway = |key, error| Invalid {
            place: Place::Key("gateway", key),
            error,
        };
        if self.gateway.max_connections == 0 {
            return Err(gateway(
                "max_connections",
                anyhow!("gateway.max_connections must be at least 1"),
            ));
        }
        if self.gateway.reserved_connections_percent > 90 {
            return Err(gateway(
                "reserved_connections_percent",
                anyhow!(
                    "gateway.reserved_connections_percent must be at most 90 (every app may \
                     hold the rest of gateway.max_connections)"
                ),
            ));
        }
        if !(32..=128).contains(&self.gateway.client_ipv6_prefix) {
            return Err(gateway(
                "client_ipv6_prefix",
                anyhow!(
                    "gateway.client_ipv6_prefix must be between 32 and 128 (64: one client per \
                     /64, the usual assignment of one host)"
                ),
            ));
        }
        if let Some(admin) = self.gateway.admin
            && !admin.ip().is_loopback()
            && !self.gateway.allow_remote_admin
        {
            return Err(gateway(
                "admin",
                anyhow!(
                    "gateway.admin = {admin} is not a loopback address: the admin API speaks \
                     plain HTTP and deploys code, so its token would cross the network in clear \
                     text. Listen on 127.0.0.1 (and reach it over SSH or a TLS-terminating \
                     proxy), or set gateway.allow_remote_admin = true if the network is trusted"
                ),
            ));
        }
        self.ceilings.validate().map_err(|error| Invalid {
            place: Place::Table("ceilings"),
            error,
        })?;
        if self.apps.is_empty() && self.gateway.admin.is_none() {
            return Err(Invalid {
                place: Place::File,
                error: anyhow!(
                    "no apps configured and no admin API to deploy any: add an [[app]] table \
                     with name, component and listen, or set gateway.admin"
                ),
            });
        }
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        for (index, app) in self.apps.iter().enumerate() {
            let app_error = |error| Invalid {
                place: Place::App(index),
                error,
            };
            if !names.insert(app.name.as_str()) {
                return Err(app_error(anyhow!(
                    "app `{}` is configured twice: app names must be unique",
                    app.name
                )));
            }
            if let Some(listen) = app.listen.filter(|addr| addr.port() != 0)
                && !addresses.insert(listen)
            {
                return Err(app_error(anyhow!(
                    "app `{}`: listen address {listen} is already used by another app",
                    app.name,
                )));
            }
            app.check(None).map_err(app_error)?;
        }
        tls::validate(self).map_err(|error| Invalid {
            place: Place::Table("tls"),
            error,
        })?;
        if let Some(cluster) = &self.cluster {
            if self.gateway.admin.is_none() {
                return Err(Invalid {
                    place: Place::Table("cluster"),
                    error: anyhow!(
                        "[cluster] needs gateway.admin: cluster apps are deployed through the \
                         admin API (and kept in the state directory as this node's cache)"
                    ),
                });
            }
            cluster.validate().map_err(|error| Invalid {
                place: Place::Table("cluster"),
                error,
            })?;
        }
        Ok(())
    }

    /// The state directory to use, resolving the default.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.gateway.state_dir {
            return dir.clone();
        }
        if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir).join("sockgate");
        }
        if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(home).join(".local/share/sockgate");
        }
        PathBuf::from("sockgate-state")
    }

    /// The cache directory to use, resolving the default. There is no
    /// fallback to a shared temporary directory: another local user could
    /// create it first and plant compiled code the gateway would load.
    pub fn cache_dir(&self) -> Result<PathBuf> {
        if let Some(dir) = &self.gateway.cache_dir {
            return Ok(dir.clone());
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(dir).join("sockgate"));
        }
        if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(home).join(".cache").join("sockgate"));
        }
        bail!(
            "no directory for the compile cache: set gateway.cache_dir (`--cache-dir` for \
             `sockgate run`), or HOME or XDG_CACHE_HOME, to a directory of the gateway's own user"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::AppLimits;

    #[test]
    fn relative_component_paths_resolve_against_the_file() {
        let dir = std::env::temp_dir().join(format!("sockgate-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sockgate.toml");
        std::fs::write(dir.join("echo.wasm"), b"").unwrap();
        std::fs::write(
            &file,
            "[[app]]\nname = \"echo\"\ncomponent = \"echo.wasm\"\nlisten = \"127.0.0.1:0\"\n",
        )
        .unwrap();
        let config = Config::load(&file).unwrap();
        assert_eq!(config.apps[0].component, dir.join("echo.wasm"));
        assert_eq!(
            config.apps[0].limits.cpu_budget_ms,
            AppLimits::default().cpu_budget_ms
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_admin_api_stays_on_loopback_unless_allowed() {
        let remote = "[gateway]\nadmin = \"0.0.0.0:9900\"\n";
        let config: Config = toml::from_str(remote).unwrap();
        let err = format!("{:#}", config.validate().unwrap_err());
        assert!(err.contains("allow_remote_admin"), "{err}");
        let allowed: Config =
            toml::from_str(&format!("{remote}allow_remote_admin = true\n")).unwrap();
        allowed.validate().unwrap();
    }

    #[test]
    fn duplicate_apps_and_unknown_keys_are_refused() {
        let dup = "[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\nlisten = \"127.0.0.1:1\"\n\
                   [[app]]\nname = \"a\"\ncomponent = \"b.wasm\"\nlisten = \"127.0.0.1:2\"\n";
        let config: Config = toml::from_str(dup).unwrap();
        assert!(config.validate().unwrap_err().to_string().contains("twice"));
        let unknown =
            "[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\nlisten = \"127.0.0.1:1\"\nport = 3\n";
        assert!(toml::from_str::<Config>(unknown).is_err());
    }
}
