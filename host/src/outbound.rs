//! What a guest may reach through `wasi:sockets`: deny by default, then a
//! per-app allowlist of `host:port` rules.
//!
//! A rule's host is one of:
//! - `*`: any *public* address; loopback, private, link-local and other
//!   special ranges are never matched by `*`;
//! - an IP literal (`127.0.0.1`, `[::1]`) or a CIDR range (`10.0.0.0/8`):
//!   exactly those addresses, special ranges included (naming them is the
//!   explicit permission);
//! - a DNS name (`api.example.com`) or a wildcard name (`*.example.com`):
//!   the guest may look the name up, and may connect to the addresses the
//!   lookup returned.
//!
//! A rule's port is a number, a range (`8000-8999`) or `*`. Ports the
//! gateway itself listens on are reachable only through a rule that names
//! that port exactly, so a guest cannot loop back into the gateway (or its
//! admin port) by accident of a wildcard.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;

use crate::locks::lock;
use anyhow::{Context, Result, bail};

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

/// An app's outbound policy.
#[derive(Debug, Default)]
pub struct OutboundPolicy {
    rules: Vec<Rule>,
    /// Ports the gateway listens on.
    protected_ports: Vec<u16>,
    /// Address → indices of the name rules whose lookup returned it.
    resolved: Mutex<HashMap<IpAddr, Vec<usize>>>,
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

    /// Marks the gateway's own listening ports as reachable only by rules
    /// that name them exactly.
    pub fn protect_ports(&mut self, ports: impl IntoIterator<Item = u16>) {
        self.protected_ports.extend(ports);
    }

    /// Whether any outbound access is allowed at all.
    pub fn allows_anything(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Whether the guest may connect (or send datagrams) to `addr`.
    pub fn allows_connect(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        let port = addr.port();
        let protected = self.protected_ports.contains(&port);
        let resolved = lock(&self.resolved);
        self.rules.iter().enumerate().any(|(index, rule)| {
            if !rule.ports.matches(port) || (protected && !rule.ports.is_exactly(port)) {
                return false;
            }
            match &rule.host {
                HostPattern::AnyPublic => is_public(ip),
                HostPattern::Network { network, prefix } => in_network(ip, *network, *prefix),
                HostPattern::Name { .. } => resolved
                    .get(&ip)
                    .is_some_and(|rules| rules.contains(&index)),
            }
        })
    }

    /// Whether the guest may look up `name`.
    pub fn allows_lookup(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        name.parse::<IpAddr>().is_ok()
            || self.rules.iter().any(|rule| match &rule.host {
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
        let max = if network.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            bail!("CIDR prefix longer than {max}");
        }
        HostPattern::Network {
            network: canonical(network),
            prefix,
        }
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        let ip = canonical(ip);
        HostPattern::Network {
            network: ip,
            prefix: if ip.is_ipv4() { 32 } else { 128 },
        }
    } else {
        let (name, wildcard) = match host.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (host, false),
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        crate::certs::check_dns_name(&name).context("invalid host name")?;
        HostPattern::Name { name, wildcard }
    };
    Ok(Rule { host, ports })
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
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Whether an address is on the public internet: not loopback, private,
/// link-local, shared (CGNAT), unspecified, multicast, broadcast or
/// reserved for documentation.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let special: [(Ipv4Addr, u8); 11] = [
        (Ipv4Addr::new(0, 0, 0, 0), 8),
        (Ipv4Addr::new(10, 0, 0, 0), 8),
        (Ipv4Addr::new(100, 64, 0, 0), 10),
        (Ipv4Addr::new(127, 0, 0, 0), 8),
        (Ipv4Addr::new(169, 254, 0, 0), 16),
        (Ipv4Addr::new(172, 16, 0, 0), 12),
        (Ipv4Addr::new(192, 0, 2, 0), 24),
        (Ipv4Addr::new(192, 168, 0, 0), 16),
        (Ipv4Addr::new(198, 18, 0, 0), 15),
        (Ipv4Addr::new(224, 0, 0, 0), 4),
        (Ipv4Addr::new(240, 0, 0, 0), 4),
    ];
    !special
        .iter()
        .any(|(net, prefix)| in_network(IpAddr::V4(ip), IpAddr::V4(*net), *prefix))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let special: [(Ipv6Addr, u8); 6] = [
        (Ipv6Addr::UNSPECIFIED, 128),
        (Ipv6Addr::LOCALHOST, 128),
        (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
        (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
    ];
    !special
        .iter()
        .any(|(net, prefix)| in_network(IpAddr::V6(ip), IpAddr::V6(*net), *prefix))
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

    #[test]
    fn the_gateways_own_ports_need_an_exact_rule() {
        let mut p = policy(&["127.0.0.1:*", "*:*"]);
        p.protect_ports([7001, 9090]);
        assert!(!p.allows_connect(addr("127.0.0.1:9090")));
        assert!(!p.allows_connect(addr("93.184.216.34:7001")));
        assert!(p.allows_connect(addr("127.0.0.1:9091")));
        let mut p = policy(&["127.0.0.1:9090"]);
        p.protect_ports([9090]);
        assert!(p.allows_connect(addr("127.0.0.1:9090")));
    }

    #[test]
    fn names_allow_lookups_and_the_addresses_they_returned() {
        let p = policy(&["api.example.com:443", "*.svc.test:80"]);
        assert!(p.allows_lookup("api.example.com"));
        assert!(p.allows_lookup("API.example.com."));
        assert!(!p.allows_lookup("evil.example.com"));
        assert!(p.allows_lookup("db.svc.test"));
        assert!(!p.allows_lookup("svc.test"));
        let ip: IpAddr = "10.9.8.7".parse().unwrap();
        assert!(!p.allows_connect(SocketAddr::new(ip, 443)));
        p.record_lookup("api.example.com", &[ip]);
        assert!(p.allows_connect(SocketAddr::new(ip, 443)));
        assert!(!p.allows_connect(SocketAddr::new(ip, 80)));
        p.record_lookup("evil.example.com", &["10.0.0.1".parse().unwrap()]);
        assert!(!p.allows_connect(addr("10.0.0.1:443")));
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
