//! One app's settings (`[[app]]` in the file, a deploy through the admin
//! API) and [`AppConfig::check`], the one validator of them for both.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::tls::ACME_TLS_ALPN;
use crate::base::names::{AppName, DnsName};
use crate::limits::{AppLimits, Ceilings};

/// One app: a component and where it is served.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The app's name: a DNS label, as it will become a subdomain
    /// (checked when the file is read or the deploy arrives).
    pub name: AppName,
    /// Path to the component (`.wasm`); relative paths are relative to the
    /// configuration file.
    pub component: PathBuf,
    /// The TCP address to accept connections on (port 0 picks a free port,
    /// which the gateway prints when it starts). None: the app has no port
    /// of its own and is served by name only, on the gateway's shared TLS
    /// and QUIC listeners (`<name>.<base domain>` and its `domains`), so
    /// thousands of apps need no thousands of ports. Needs `[tls]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
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
    pub domains: Vec<DnsName>,
    /// ALPN protocols the app speaks over TLS, preferred first (e.g.
    /// `["h2", "http/1.1"]`); empty: no ALPN negotiation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
}

impl AppConfig {
    /// An app with default settings.
    pub fn new(name: AppName, component: PathBuf, listen: Option<SocketAddr>) -> Self {
        Self {
            name,
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
        over("ALPN protocols", self.alpn.len(), HARD_MAX_ALPN, None)?;
        self.check_alpn()
    }

    /// Checks an app's ALPN protocol names: 1 to 255 bytes, not ACME's,
    /// each listed once.
    pub fn check_alpn(&self) -> Result<()> {
        let app = self;
        let mut seen = HashSet::new();
        for protocol in &app.alpn {
            if protocol.is_empty() || protocol.len() > 255 {
                bail!(
                    "app `{}`: ALPN protocol names are 1 to 255 bytes, got {protocol:?}",
                    app.name
                );
            }
            if protocol == ACME_TLS_ALPN {
                bail!(
                    "app `{}`: `{ACME_TLS_ALPN}` is reserved for ACME challenges",
                    app.name
                );
            }
            if !seen.insert(protocol) {
                bail!(
                    "app `{}`: ALPN protocol `{protocol}` is listed twice",
                    app.name
                );
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
    fn one_check_for_file_and_deploy_with_ceilings_for_deploys() {
        let count = |n: usize| Instances::Count(NonZeroUsize::new(n).unwrap());
        let mut app = AppConfig::new(
            AppName::parse("a").unwrap(),
            PathBuf::from("a.wasm"),
            Some("127.0.0.1:0".parse().unwrap()),
        );
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
        app.domains = (0..17)
            .map(|i| DnsName::parse(&format!("d{i}.example.com")).unwrap())
            .collect();
        assert!(app.check(Some(&ceilings)).is_err());
        app.check(None).unwrap();
        // A bad domain cannot reach `check`: it is refused when parsed.
        assert!(DnsName::parse("not a name").is_err());
    }
}
