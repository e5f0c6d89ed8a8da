//! What a guest may reach through `wasi:sockets`: deny by default, then a
//! per-app allowlist of `host:port` rules.
//!
//! A rule's host is one of:
//! - `*`: any *public* address ([`crate::tenant::public_ip`]): loopback, private,
//!   link-local and every other special-purpose range, IPv6 forms that lead
//!   to such an IPv4 address (NAT64, 6to4, Teredo, IPv4-mapped), and the
//!   gateway host's own addresses are never matched by `*`;
//! - an IP literal (`127.0.0.1`, `[::1]`) or a CIDR range (`10.0.0.0/8`):
//!   exactly those addresses, special ranges included (naming them is the
//!   explicit permission);
//! - a DNS name (`api.example.com`) or a wildcard name (`*.example.com`):
//!   the guest may look the name up, and may connect to the *public*
//!   addresses the lookup returned, judged as `*` judges them. A name is not
//!   a permission for whatever it resolves to: `localhost`, or a public name
//!   whose owner points it at `127.0.0.1` or `169.254.169.254`, reaches
//!   nothing unless an IP or CIDR rule names that address too.
//!
//! A rule's port is a number, a range (`8000-8999`) or `*`. Ports the
//! gateway itself listens on ([`OwnPorts`]: every app's listener, the admin
//! API, TLS, plain HTTP and QUIC) are reachable only through a rule that
//! names that port exactly, so a guest cannot loop back into the gateway (or
//! its admin port) by accident of a wildcard. The set is live: it is
//! consulted at connect time, so an app started before another (or before
//! the admin listener) is held to ports bound later.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};

use crate::base::locks::{lock, read, write};
use crate::tenant::guest_budget::AppBudget;
use crate::tenant::public_ip::is_public_and_foreign;
use anyhow::{Context, Result, bail};

pub use crate::tenant::public_ip::is_public;

/// Addresses remembered from allowed name lookups; past this, the oldest
/// lookups are forgotten (a guest can look them up again). Bounds the memory
/// a guest can make the gateway keep by resolving many names.
const RESOLVED_KEPT: usize = 1024;

/// One parsed allowlist rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    host: HostPattern,
    ports: PortPattern,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// Any public address.
    AnyPublic,
    /// Addresses within `network/prefix` (a single IP has the full prefix).
    Network { network: IpAddr, prefix: u8 },
    /// A DNS name; `wildcard` means any subdomain of `name`.
    Name { name: String, wildcard: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPattern {
    Any,
    Range(u16, u16),
}

impl PortPattern {
    fn matches(self, port: u16) -> bool {
        match self {
            PortPattern::Any => true,
            PortPattern::Range(low, high) => (low..=high).contains(&port),
        }
    }

    fn is_exactly(self, port: u16) -> bool {
        self == PortPattern::Range(port, port)
    }
}

/// The ports the gateway itself listens on (every app's listener, the
/// admin API, TLS, plain HTTP, QUIC): one live set shared by every app's
/// policy and read at connect time, so a port bound after an app started
/// is protected from that app too.
#[derive(Debug, Default)]
pub struct OwnPorts {
    ports: RwLock<BTreeSet<u16>>,
}

impl OwnPorts {
    /// An empty set, to share.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds `port` (a listener about to serve).
    pub fn insert(&self, port: u16) {
        write(&self.ports).insert(port);
    }

    /// Replaces the set with `ports` at once (after an app was removed or
    /// moved), so no port is ever briefly unprotected.
    pub fn replace(&self, ports: impl IntoIterator<Item = u16>) {
        *write(&self.ports) = ports.into_iter().collect();
    }

    /// Whether the gateway listens on `port`.
    pub fn contains(&self, port: u16) -> bool {
        read(&self.ports).contains(&port)
    }
}

/// An app's outbound policy: what its guests may reach, and how much
/// (sockets, lookups) they may hold at once while reaching it.
#[derive(Debug, Default)]
pub struct OutboundPolicy {
    rules: Vec<Rule>,
    /// Ports the gateway listens on, shared with every app.
    own_ports: Arc<OwnPorts>,
    /// Address → indices of the name rules whose lookup returned it.
    resolved: Mutex<HashMap<IpAddr, Vec<usize>>>,
    /// Outbound sockets and name lookups in flight, against the app's and
    /// the gateway's budgets.
    budget: AppBudget,
}

impl OutboundPolicy {
    /// Parses the rules of an app's `outbound` list; the error names the
    /// offending rule and says what a valid one looks like.
    pub fn parse(rules: &[String]) -> Result<Self> {
        let rules = rules
            .iter()
            .map(|rule| {
                parse_rule(rule).with_context(|| {
                    format!(
                        "`{rule}`: expected HOST:PORT with HOST one of `*`, an IP, a CIDR \
                         range, a DNS name or `*.domain`, and PORT a number, a range \
                         `low-high` or `*`"
                    )
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            rules,
            ..Self::default()
        })
    }

    /// Holds the policy to the gateway's live set of its own ports: they
    /// are reachable only by rules that name them exactly.
    pub fn with_own_ports(mut self, own_ports: Arc<OwnPorts>) -> Self {
        self.own_ports = own_ports;
        self
    }

    /// Gives the policy the app's budgets of outbound sockets and lookups
    /// (the default has the default limits).
    pub fn with_budget(mut self, limits: &crate::limits::AppLimits) -> Self {
        self.budget = AppBudget::new(limits);
        self
    }

    /// The app's outbound sockets and lookups in flight.
    pub fn budget(&self) -> &AppBudget {
        &self.budget
    }

    /// Whether any outbound access is allowed at all.
    pub fn allows_anything(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Whether the guest may connect (or send datagrams) to `addr`.
    pub fn allows_connect(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        let port = addr.port();
        let protected = self.own_ports.contains(port);
        let resolved = lock(&self.resolved);
        self.rules.iter().enumerate().any(|(index, rule)| {
            if !rule.ports.matches(port) || (protected && !rule.ports.is_exactly(port)) {
                return false;
            }
            match &rule.host {
                HostPattern::AnyPublic => is_public_and_foreign(ip),
                HostPattern::Network { network, prefix } => in_network(ip, *network, *prefix),
                // What a name resolved to is judged as `*` judges it: the
                // name is a permission to look it up, not for any address.
                HostPattern::Name { .. } => {
                    resolved
                        .get(&ip)
                        .is_some_and(|rules| rules.contains(&index))
                        && is_public_and_foreign(ip)
                }
            }
        })
    }

    /// Whether the guest may look up `name`. An IP address as it is needs
    /// no DNS (every caller takes it as the address): it is always
    /// allowed. With a trailing dot (`127.0.0.1.`) it is not an address to
    /// `IpAddr`'s parser, so the callers would ask the resolver: that is a
    /// name lookup like any other, allowed only by a rule.
    pub fn allows_lookup(&self, name: &str) -> bool {
        if name.parse::<IpAddr>().is_ok() {
            return true;
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.rules.iter().any(|rule| match &rule.host {
            HostPattern::AnyPublic => true,
            HostPattern::Name { .. } => name_matches(&rule.host, &name),
            HostPattern::Network { .. } => false,
        })
    }

    /// Records what an allowed lookup of `name` returned, so connections to
    /// those addresses match the name's rules. A `*` rule needs no record:
    /// it judges addresses by themselves.
    pub fn record_lookup(&self, name: &str, addrs: &[IpAddr]) {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let matching: Vec<usize> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| name_matches(&rule.host, &name))
            .map(|(index, _)| index)
            .collect();
        if matching.is_empty() {
            return;
        }
        let mut resolved = lock(&self.resolved);
        if resolved.len() + addrs.len() > RESOLVED_KEPT {
            resolved.clear();
        }
        for addr in addrs {
            let entry = resolved.entry(canonical(*addr)).or_default();
            for index in &matching {
                if !entry.contains(index) {
                    entry.push(*index);
                }
            }
        }
    }
}

fn name_matches(pattern: &HostPattern, name: &str) -> bool {
    match pattern {
        HostPattern::Name {
            name: pattern,
            wildcard: false,
        } => name == pattern,
        HostPattern::Name {
            name: pattern,
            wildcard: true,
        } => name
            .strip_suffix(pattern.as_str())
            .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
        _ => false,
    }
}

fn parse_rule(rule: &str) -> Result<Rule> {
    let rule = rule.trim();
    let (host, port) = rule.rsplit_once(':').context("no `:PORT`")?;
    let ports = match port {
        "*" => PortPattern::Any,
        _ => match port.split_once('-') {
            Some((low, high)) => {
                let (low, high): (u16, u16) = (low.parse()?, high.parse()?);
                if low > high || low == 0 {
                    bail!("empty port range");
                }
                PortPattern::Range(low, high)
            }
            None => {
                let port: u16 = port.parse().context("invalid port")?;
                if port == 0 {
                    bail!("port 0 cannot be connected to");
                }
                PortPattern::Range(port, port)
            }
        },
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host == "*" {
        HostPattern::AnyPublic
    } else if let Some((network, prefix)) = host.split_once('/') {
        let network: IpAddr = network.parse().context("invalid CIDR network")?;
        let prefix: u8 = prefix.parse().context("invalid CIDR prefix")?;
        network_pattern(network, prefix)?
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        // One address is the range of its full prefix.
        network_pattern(ip, if ip.is_ipv4() { 32 } else { 128 })?
    } else {
        let (name, wildcard) = match host.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (host, false),
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        crate::base::names::check_dns_name(&name).context("invalid host name")?;
        HostPattern::Name { name, wildcard }
    };
    Ok(Rule { host, ports })
}

/// A CIDR range (or one address, its full prefix) as
/// [`OutboundPolicy::allows_connect`] judges addresses: an IPv4-mapped IPv6
/// range (`[::ffff:10.0.0.0/104]`) is the IPv4 range it carries
/// (`10.0.0.0/8`), since every address connected to is judged as the IPv4
/// address it carries. (Its prefix once stayed 104 beside the
/// IPv4 network: the mask's shift underflowed, and in a release build the
/// rule matched every IPv4 address, loopback and metadata included.)
fn network_pattern(network: IpAddr, prefix: u8) -> Result<HostPattern> {
    let max = if network.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        bail!("CIDR prefix longer than {max}");
    }
    if let IpAddr::V6(v6) = network
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        let Some(v4_prefix) = prefix.checked_sub(96) else {
            bail!(
                "an IPv4-mapped range needs a prefix of 96 or more (::ffff:0:0/96 is all \
                 of IPv4): write the IPv4 range instead, as `{v4}/N`"
            );
        };
        return Ok(HostPattern::Network {
            network: IpAddr::V4(v4),
            prefix: v4_prefix,
        });
    }
    Ok(HostPattern::Network { network, prefix })
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

fn in_network(ip: IpAddr, network: IpAddr, prefix: u8) -> bool {
    match (ip, network) {
        // A prefix longer than the address matches nothing (the parser
        // makes none: this is a second lock, not the first).
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            32_u32.checked_sub(prefix.into()).is_some_and(|host_bits| {
                let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
                u32::from(ip) & mask == u32::from(net) & mask
            })
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            128_u32.checked_sub(prefix.into()).is_some_and(|host_bits| {
                let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
                u128::from(ip) & mask == u128::from(net) & mask
            })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[&str]) -> OutboundPolicy {
        OutboundPolicy::parse(&rules.iter().map(|r| r.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Regression (fuzz target `event_actions`, input
    /// `fuzz/corpus/event_actions/connect_loopback`): `127.0.0.1.` was
    /// "an IP literal" to this check but a name to every caller, which
    /// then asked the resolver — a name lookup no rule allowed.
    #[test]
    fn an_ip_address_with_a_trailing_dot_is_a_name_to_look_up() {
        let p = policy(&[]);
        assert!(p.allows_lookup("127.0.0.1"));
        assert!(p.allows_lookup("::1"));
        assert!(!p.allows_lookup("127.0.0.1."));
        assert!(!p.allows_lookup("::1."));
        let p = policy(&["127.0.0.1:80"]);
        assert!(!p.allows_lookup("127.0.0.1."));
        let p = policy(&["*:443"]);
        assert!(p.allows_lookup("127.0.0.1."));
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        let p = policy(&[]);
        assert!(!p.allows_anything());
        assert!(!p.allows_connect(addr("93.184.216.34:443")));
        assert!(!p.allows_lookup("example.com"));
    }

    #[test]
    fn a_wildcard_host_never_reaches_special_ranges() {
        let p = policy(&["*:443"]);
        assert!(p.allows_connect(addr("93.184.216.34:443")));
        assert!(!p.allows_connect(addr("93.184.216.34:80")));
        for special in [
            "127.0.0.1:443",
            "10.1.2.3:443",
            "172.20.0.1:443",
            "192.168.1.1:443",
            "169.254.169.254:443",
            "100.64.0.1:443",
            "0.0.0.0:443",
            "[::1]:443",
            "[fd00::1]:443",
            "[fe80::1]:443",
            "[::ffff:127.0.0.1]:443",
        ] {
            assert!(!p.allows_connect(addr(special)), "{special} allowed by *");
        }
    }

    #[test]
    fn explicit_addresses_and_ranges_allow_special_ranges() {
        let p = policy(&["127.0.0.1:9000", "10.0.0.0/8:5432", "[::1]:7000-7010"]);
        assert!(p.allows_connect(addr("127.0.0.1:9000")));
        assert!(p.allows_connect(addr("[::ffff:127.0.0.1]:9000")));
        assert!(!p.allows_connect(addr("127.0.0.1:9001")));
        assert!(!p.allows_connect(addr("127.0.0.2:9000")));
        assert!(p.allows_connect(addr("10.200.3.4:5432")));
        assert!(!p.allows_connect(addr("11.0.0.1:5432")));
        assert!(p.allows_connect(addr("[::1]:7005")));
        assert!(!p.allows_connect(addr("[::1]:7011")));
    }

    /// An IPv4-mapped range is the IPv4 range it carries: the fuzzer's
    /// find (`[::ffff:…/104]` kept its IPv6 prefix beside an IPv4 network;
    /// the mask's shift underflowed, and a release build let the rule
    /// match every IPv4 address).
    #[test]
    fn an_ipv4_mapped_range_is_the_ipv4_range_it_carries() {
        let p = policy(&["[::ffff:10.0.0.0/104]:*", "[::ffff:192.168.1.7/128]:80"]);
        assert!(p.allows_connect(addr("10.200.3.4:5432")));
        assert!(p.allows_connect(addr("[::ffff:10.1.2.3]:22")));
        assert!(p.allows_connect(addr("192.168.1.7:80")));
        for outside in [
            "11.0.0.1:5432",
            "127.0.0.1:443",
            "169.254.169.254:80",
            "192.168.1.8:80",
            "[::ffff:127.0.0.1]:443",
        ] {
            assert!(!p.allows_connect(addr(outside)), "{outside} allowed");
        }
        let wider = OutboundPolicy::parse(&["[::ffff:10.0.0.0/95]:*".to_owned()]);
        let error = format!("{:#}", wider.expect_err("a mapped range wider than IPv4"));
        assert!(
            error.contains("prefix of 96 or more") && error.contains("10.0.0.0/N"),
            "{error}"
        );
        // The second lock: a prefix longer than the address matches nothing.
        let ten: IpAddr = "10.0.0.0".parse().unwrap();
        assert!(!in_network("10.0.0.1".parse().unwrap(), ten, 104));
        assert!(!in_network(
            "::1".parse().unwrap(),
            "::".parse().unwrap(),
            200
        ));
    }

    #[test]
    fn the_gateways_own_ports_need_an_exact_rule() {
        let own = OwnPorts::new();
        own.insert(7001);
        let p = policy(&["127.0.0.1:*", "*:*"]).with_own_ports(own.clone());
        assert!(!p.allows_connect(addr("93.184.216.34:7001")));
        // The set is live: a port bound after the policy was made (the
        // admin API, a later app) is protected from it too.
        assert!(p.allows_connect(addr("127.0.0.1:9090")));
        own.insert(9090);
        assert!(!p.allows_connect(addr("127.0.0.1:9090")));
        assert!(p.allows_connect(addr("127.0.0.1:9091")));
        let exact = policy(&["127.0.0.1:9090"]).with_own_ports(own.clone());
        assert!(exact.allows_connect(addr("127.0.0.1:9090")));
        // A port the gateway no longer listens on is an ordinary port.
        own.replace([7001]);
        assert!(p.allows_connect(addr("127.0.0.1:9090")));
    }

    #[test]
    fn a_name_rule_reaches_only_public_addresses_of_the_name() {
        let p = policy(&["localhost:5432", "api.example.com:443", "127.0.0.1:6379"]);
        for (name, ip, port) in [
            ("localhost", "127.0.0.1", 5432),
            ("localhost", "::1", 5432),
            ("api.example.com", "10.0.0.7", 443),
            ("api.example.com", "169.254.169.254", 443),
            ("api.example.com", "64:ff9b::a9fe:a9fe", 443),
            ("api.example.com", "2002:7f00:1::1", 443),
            ("api.example.com", "::ffff:192.168.0.1", 443),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            p.record_lookup(name, &[ip]);
            assert!(
                !p.allows_connect(SocketAddr::new(ip, port)),
                "{name} -> {ip} reachable through the name rule"
            );
        }
        p.record_lookup("api.example.com", &["93.184.216.34".parse().unwrap()]);
        assert!(p.allows_connect(addr("93.184.216.34:443")));
        // An explicit IP rule still allows the special address it names.
        p.record_lookup("localhost", &["127.0.0.1".parse().unwrap()]);
        assert!(p.allows_connect(addr("127.0.0.1:6379")));
        assert!(!p.allows_connect(addr("127.0.0.1:5432")));
    }

    #[test]
    fn a_wildcard_host_never_reaches_translated_special_addresses() {
        let p = policy(&["*:*"]);
        for special in [
            "[64:ff9b::a9fe:a9fe]:80",
            "[64:ff9b::a00:1]:80",
            "[64:ff9b:1::1]:80",
            "[2002:a9fe:a9fe::1]:80",
            "[2001:0:808:808:0:0:80ff:fffe]:80",
            "[fec0::1]:80",
            "[::ffff:0:7f00:1]:80",
            "192.0.0.1:80",
            "198.51.100.1:80",
            "203.0.113.1:80",
        ] {
            assert!(!p.allows_connect(addr(special)), "{special} allowed by *");
        }
        assert!(p.allows_connect(addr("[64:ff9b::5db8:d822]:80")));
    }

    #[test]
    fn names_allow_lookups_and_the_addresses_they_returned() {
        let p = policy(&["api.example.com:443", "*.svc.test:80"]);
        assert!(p.allows_lookup("api.example.com"));
        assert!(p.allows_lookup("API.example.com."));
        assert!(!p.allows_lookup("evil.example.com"));
        assert!(p.allows_lookup("db.svc.test"));
        assert!(!p.allows_lookup("svc.test"));
        let ip: IpAddr = "93.184.216.34".parse().unwrap();
        assert!(!p.allows_connect(SocketAddr::new(ip, 443)));
        p.record_lookup("api.example.com", &[ip]);
        assert!(p.allows_connect(SocketAddr::new(ip, 443)));
        assert!(!p.allows_connect(SocketAddr::new(ip, 80)));
        p.record_lookup("evil.example.com", &["1.1.1.1".parse().unwrap()]);
        assert!(!p.allows_connect(addr("1.1.1.1:443")));
    }

    #[test]
    fn bad_rules_are_refused() {
        for bad in [
            "example.com",
            "x:0",
            "x:70000",
            "10.0.0.0/33:1",
            "a..b:1",
            "x:9-1",
            "bad host:1",
        ] {
            assert!(
                OutboundPolicy::parse(&[bad.to_string()]).is_err(),
                "{bad} accepted"
            );
        }
    }
}
