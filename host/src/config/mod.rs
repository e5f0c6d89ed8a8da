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

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::base::names::check_app_name;
use crate::limits::{AppLimits, Ceilings, GatewayLimits};

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
    /// listener when absent. See [`crate::listen::tls`].
    pub tls: Option<crate::listen::tls::TlsSettings>,
    /// The plain-HTTP port (`[http]`), with `[tls]` only: ACME HTTP-01
    /// challenges and redirects to https. See [`crate::listen::http`].
    pub http: Option<crate::listen::http::HttpSettings>,
    /// The QUIC endpoint (`[quic]`), with `[tls]` only; on by default when
    /// `[tls]` is there. See [`crate::listen::quic`].
    pub quic: Option<crate::listen::quic::QuicSettings>,
    /// The most an app deployed through the admin API may ask for
    /// (`[ceilings]`). See [`Ceilings`].
    #[serde(default)]
    pub ceilings: Ceilings,
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
        }
    }
}

fn default_max_connections() -> usize {
    GatewayLimits::default().max_connections
}

/// One app: a component and where it is served.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The app's name: a DNS label, as it will become a subdomain.
    pub name: String,
    /// Path to the component (`.wasm`); relative paths are relative to the
    /// configuration file.
    pub component: PathBuf,
    /// The TCP address to accept connections on (port 0 picks a free port,
    /// which the gateway prints when it starts).
    pub listen: SocketAddr,
    /// How many instances serve the app (shards), default 1: one long-lived
    /// instance serves every connection, so state the guest keeps in
    /// ordinary variables (a chat room, a cache) is shared by all of them.
    /// `instances = N` or `"auto"` (one per core) opts into shards, which
    /// spread the app's guest work over several threads and contain a trap
    /// to the connections of one shard, but each shard has its own state: a
    /// connection sees the state of the shard it was assigned to.
    /// Meaningless for a `conn-handler-sync` component, which gets an
    /// instance per connection (the gateway logs a warning when it is set).
    #[serde(default)]
    pub instances: Option<Instances>,
    /// Outbound destinations the guest may reach through `wasi:sockets`, as
    /// `host:port` patterns (see [`crate::tenant::outbound`]); empty: none.
    #[serde(default)]
    pub outbound: Vec<String>,
    /// CPU, memory and connection limits.
    #[serde(default)]
    pub limits: AppLimits,
    /// Extra names the app is served at over TLS (custom domains), besides
    /// `<name>.<domain>` for each of `[tls]`'s base domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// ALPN protocols the app speaks over TLS, preferred first (e.g.
    /// `["h2", "http/1.1"]`); empty: no ALPN negotiation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
}

impl AppConfig {
    /// An app with default settings.
    pub fn new(name: &str, component: PathBuf, listen: SocketAddr) -> Self {
        Self {
            name: name.to_owned(),
            component,
            listen,
            instances: None,
            outbound: Vec::new(),
            limits: AppLimits::default(),
            domains: Vec::new(),
            alpn: Vec::new(),
        }
    }

    /// The number of instances to run, resolving the default.
    pub fn instance_count(&self) -> usize {
        self.instances.unwrap_or_default().count()
    }

    /// The one check of an app's settings, for apps of the configuration
    /// file (`ceilings` = `None`: the operator's own, held to the hard
    /// maxima) and apps deployed through the admin API (held to the
    /// operator's `ceilings` too). Errors name the setting, the bound and
    /// what to do. Who owns the app's `domains` is checked by the gateway,
    /// which knows the other apps ([`crate::apps::route::NamePolicy`]).
    pub fn check(&self, ceilings: Option<&Ceilings>) -> Result<()> {
        use crate::limits::{HARD_MAX_ALPN, HARD_MAX_DOMAINS, HARD_MAX_INSTANCES};
        check_app_name(&self.name)?;
        let name = &self.name;
        // (Through `instance_count`, whatever form `instances` takes.)
        let instances = self.instance_count();
        let over = |what: &str, value: usize, hard: usize, ceiling: Option<usize>| -> Result<()> {
            if value > hard {
                bail!("app `{name}`: {value} {what} is over the maximum {hard}");
            }
            if let Some(ceiling) = ceiling
                && value > ceiling
            {
                bail!(
                    "app `{name}`: {value} {what} is over this gateway's ceiling {ceiling} \
                     ([ceilings] in its configuration): ask for fewer, or ask the operator"
                );
            }
            Ok(())
        };
        over(
            "instances",
            instances,
            HARD_MAX_INSTANCES,
            ceilings.map(|c| c.instances),
        )?;
        self.limits
            .check(ceilings)
            .with_context(|| format!("app `{name}`"))?;
        if let Some(ceilings) = ceilings {
            let total = self.limits.memory_limit_mb.saturating_mul(instances as u64);
            if total > ceilings.app_memory_mb {
                bail!(
                    "app `{name}`: {instances} instances × limits.memory_limit_mb {} = {total} \
                     MiB is over this gateway's ceiling of {} MiB per app \
                     ([ceilings] app_memory_mb): ask for fewer instances or less memory",
                    self.limits.memory_limit_mb,
                    ceilings.app_memory_mb
                );
            }
        }
        over(
            "outbound rules",
            self.outbound.len(),
            crate::limits::HARD_MAX_OUTBOUND_RULES,
            ceilings.map(|c| c.outbound_rules),
        )?;
        crate::tenant::outbound::OutboundPolicy::parse(&self.outbound)
            .with_context(|| format!("app `{name}`: invalid outbound rule"))?;
        over(
            "custom domains",
            self.domains.len(),
            HARD_MAX_DOMAINS,
            ceilings.map(|c| c.domains),
        )?;
        for domain in &self.domains {
            crate::base::names::check_dns_name(domain)
                .with_context(|| format!("app `{name}`: domains"))?;
        }
        over("ALPN protocols", self.alpn.len(), HARD_MAX_ALPN, None)?;
        crate::listen::tls::check_alpn(self)
    }
}

/// How many instances serve an app: `instances = N` (at least 1) or
/// `instances = "auto"` (one per core) in the configuration, `--instances
/// N|auto` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instances {
    /// This many instances.
    Count(NonZeroUsize),
    /// One per core the process may run on.
    Auto,
}

impl Default for Instances {
    /// One instance: state shared by every connection.
    fn default() -> Self {
        Instances::Count(NonZeroUsize::MIN)
    }
}

impl Instances {
    /// The number of instances, resolving `auto`.
    pub fn count(self) -> usize {
        match self {
            Instances::Count(n) => n.get(),
            Instances::Auto => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }

    fn from_number(n: u64) -> Result<Self, String> {
        usize::try_from(n)
            .ok()
            .and_then(NonZeroUsize::new)
            .map(Instances::Count)
            .ok_or_else(|| INSTANCES_EXPECTED.to_owned())
    }
}

/// What `instances` may be, for error messages.
const INSTANCES_EXPECTED: &str =
    "instances must be a number of instances, at least 1, or \"auto\" (one per core)";

impl std::str::FromStr for Instances {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "auto" {
            return Ok(Instances::Auto);
        }
        match text.parse::<u64>() {
            Ok(n) => Instances::from_number(n),
            Err(_) => Err(format!("{INSTANCES_EXPECTED}, not `{text}`")),
        }
    }
}

impl std::fmt::Display for Instances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Instances::Count(n) => write!(f, "{n}"),
            Instances::Auto => f.write_str("auto"),
        }
    }
}

impl Serialize for Instances {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Instances::Count(n) => serializer.serialize_u64(n.get() as u64),
            Instances::Auto => serializer.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Instances {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = Instances;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of instances (at least 1) or \"auto\"")
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Instances, E> {
                Instances::from_number(n).map_err(E::custom)
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Instances, E> {
                Instances::from_number(u64::try_from(n).unwrap_or(0)).map_err(E::custom)
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Instances, E> {
                text.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

impl Config {
    /// Reads and checks a configuration file. Errors name the file and,
    /// where it applies, the app.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read configuration file {}", path.display()))?;
        let mut config: Config = toml::from_str(&text)
            .with_context(|| format!("invalid configuration file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for app in &mut config.apps {
            if app.component.is_relative() {
                app.component = base.join(&app.component);
            }
        }
        for dir in [&mut config.gateway.cache_dir, &mut config.gateway.state_dir]
            .into_iter()
            .flatten()
        {
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
        }
        if let Some(tls) = &mut config.tls {
            tls.resolve_paths(base);
        }
        config
            .validate()
            .with_context(|| format!("invalid configuration file {}", path.display()))?;
        Ok(config)
    }

    /// Checks what serde cannot: names, duplicates, limits.
    pub fn validate(&self) -> Result<()> {
        if self.gateway.max_connections == 0 {
            bail!("gateway.max_connections must be at least 1");
        }
        if self.gateway.reserved_connections_percent > 90 {
            bail!(
                "gateway.reserved_connections_percent must be at most 90 (every app may hold \
                 the rest of gateway.max_connections)"
            );
        }
        if !(32..=128).contains(&self.gateway.client_ipv6_prefix) {
            bail!(
                "gateway.client_ipv6_prefix must be between 32 and 128 (64: one client per \
                 /64, the usual assignment of one host)"
            );
        }
        if let Some(admin) = self.gateway.admin
            && !admin.ip().is_loopback()
            && !self.gateway.allow_remote_admin
        {
            bail!(
                "gateway.admin = {admin} is not a loopback address: the admin API speaks plain \
                 HTTP and deploys code, so its token would cross the network in clear text. \
                 Listen on 127.0.0.1 (and reach it over SSH or a TLS-terminating proxy), or set \
                 gateway.allow_remote_admin = true if the network is trusted"
            );
        }
        self.ceilings.validate()?;
        if self.apps.is_empty() && self.gateway.admin.is_none() {
            bail!(
                "no apps configured and no admin API to deploy any: add an [[app]] table with \
                 name, component and listen, or set gateway.admin"
            );
        }
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        for app in &self.apps {
            check_app_name(&app.name)?;
            if !names.insert(app.name.as_str()) {
                bail!(
                    "app `{}` is configured twice: app names must be unique",
                    app.name
                );
            }
            if app.listen.port() != 0 && !addresses.insert(app.listen) {
                bail!(
                    "app `{}`: listen address {} is already used by another app",
                    app.name,
                    app.listen
                );
            }
            app.check(None)?;
        }
        crate::listen::tls::validate(self)?;
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

    #[test]
    fn relative_component_paths_resolve_against_the_file() {
        let dir = std::env::temp_dir().join(format!("sockgate-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sockgate.toml");
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
    fn one_instance_by_default_and_shards_on_request() {
        let app = |extra: &str| -> Result<AppConfig, String> {
            let text = format!(
                "[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\nlisten = \"127.0.0.1:1\"\n{extra}"
            );
            toml::from_str::<Config>(&text)
                .map(|mut c| c.apps.remove(0))
                .map_err(|e| e.to_string())
        };
        assert_eq!(app("").unwrap().instance_count(), 1);
        assert_eq!(app("instances = 3").unwrap().instance_count(), 3);
        let auto = app("instances = \"auto\"").unwrap();
        assert_eq!(auto.instances, Some(Instances::Auto));
        assert_eq!(
            auto.instance_count(),
            std::thread::available_parallelism().unwrap().get()
        );
        for bad in ["instances = 0", "instances = -2", "instances = \"many\""] {
            let err = app(bad).unwrap_err();
            assert!(
                err.contains("at least 1") && err.contains("auto"),
                "{bad}: {err}"
            );
        }
        assert_eq!("auto".parse(), Ok(Instances::Auto));
        assert_eq!("2".parse::<Instances>().unwrap().count(), 2);
        assert!("0".parse::<Instances>().is_err());
        // Written back as it was read (deployed apps are persisted as JSON).
        for instances in [Instances::Auto, "4".parse().unwrap()] {
            let json = serde_json::to_string(&instances).unwrap();
            assert_eq!(serde_json::from_str::<Instances>(&json).unwrap(), instances);
        }
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
    fn one_check_for_file_and_deploy_with_ceilings_for_deploys() {
        let count = |n: usize| Instances::Count(NonZeroUsize::new(n).unwrap());
        let mut app = AppConfig::new("a", PathBuf::from("a.wasm"), "127.0.0.1:0".parse().unwrap());
        app.instances = Some(count(64));
        app.check(None).unwrap();
        let ceilings = Ceilings {
            instances: 16,
            ..Ceilings::default()
        };
        let err = format!("{:#}", app.check(Some(&ceilings)).unwrap_err());
        assert!(
            err.contains("64 instances") && err.contains("ceiling 16"),
            "{err}"
        );
        app.instances = Some(count(8));
        app.limits.memory_limit_mb = 1024;
        let err = format!("{:#}", app.check(Some(&ceilings)).unwrap_err());
        assert!(err.contains("app_memory_mb"), "{err}");
        app.instances = Some(count(100_000));
        assert!(app.check(None).is_err());
        app.instances = Some(count(1));
        app.domains = (0..17).map(|i| format!("d{i}.example.com")).collect();
        assert!(app.check(Some(&ceilings)).is_err());
        app.check(None).unwrap();
        app.domains = vec!["not a name".into()];
        assert!(app.check(None).is_err());
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
