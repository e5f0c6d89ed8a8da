//! Which addresses count as "the public internet" for an outbound rule
//! that does not name them: `*`, and every address reached through a DNS
//! name rule (a name can resolve to anything, so the name is not a
//! permission for what it resolves to).
//!
//! An address is public when it is in no special-purpose range (loopback,
//! private, link-local, shared, documentation, benchmarking, multicast,
//! reserved, …; the IANA special-purpose registries for IPv4 and IPv6), and
//! when it is not one of the gateway host's own interface addresses. IPv6
//! addresses that carry an IPv4 address (IPv4-mapped and -translated,
//! NAT64 `64:ff9b::/96`, 6to4 `2002::/16`, Teredo `2001::/32`) are judged
//! by the IPv4 address they lead to: on a NAT64 network `[64:ff9b::a9fe:a9fe]`
//! *is* `169.254.169.254`.
//!
//! Threat: server-side request forgery. A guest (or whoever talks to it)
//! reaching the gateway host's loopback services, the cloud metadata
//! endpoint, or the operator's private network through a rule meant for
//! the internet; the host's own public addresses are excluded because a
//! connection to them is routed over loopback, where interface-based
//! firewall rules do not apply.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use crate::base::locks::{read, write};

/// How long the host's interface addresses are trusted before they are read
/// again: addresses come and go (DHCP, SLAAC privacy addresses, a VPN).
const HOST_ADDRESSES_REFRESH: Duration = Duration::from_secs(30);

/// Whether an address is on the public internet (see the module doc):
/// outside every special-purpose range, judged by the IPv4 address an IPv6
/// address embeds. Does not look at the host's own addresses; see
/// [`is_public_and_foreign`].
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// Whether `*` (and a DNS name rule) may reach `ip`: public, and not one of
/// the gateway host's own interface addresses.
pub(crate) fn is_public_and_foreign(ip: IpAddr) -> bool {
    is_public(ip) && !HostAddresses::global().contains(ip)
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    // IANA IPv4 Special-Purpose Address Registry, plus multicast and the
    // 6to4 relay anycast prefix (deprecated, RFC 7526).
    const SPECIAL: [([u8; 4], u8); 17] = [
        ([0, 0, 0, 0], 8),       // "this network"
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // shared address space (CGNAT)
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local (cloud metadata)
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // documentation (TEST-NET-1)
        ([192, 31, 196, 0], 24), // AS112
        ([192, 52, 193, 0], 24), // AMT
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // documentation (TEST-NET-2)
        ([203, 0, 113, 0], 24),  // documentation (TEST-NET-3)
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, and broadcast
    ];
    let bits = u32::from(ip);
    !SPECIAL.iter().any(|(net, prefix)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
        bits & mask == u32::from(Ipv4Addr::from(*net)) & mask
    })
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(embedded) = embedded_ipv4(ip) {
        return embedded.iter().all(|v4| is_public_v4(*v4));
    }
    // IANA IPv6 Special-Purpose Address Registry (the ranges that carry an
    // IPv4 address are handled above), plus multicast and the deprecated
    // site-local range.
    const SPECIAL: [(u128, u8); 12] = [
        (0, 96),                      // ::/96: unspecified, loopback, IPv4-compatible
        (0x0064_ff9b_0001 << 80, 48), // local-use NAT64 (RFC 8215)
        (0x0100 << 112, 64),          // discard-only
        (0x2001 << 112, 23),          // IETF protocol assignments (benchmarking, ORCHID, …)
        (0x2001_0db8 << 96, 32),      // documentation
        (0x2620_004f_8000 << 80, 48), // AS112-v6
        (0x3fff << 112, 20),          // documentation (RFC 9637)
        (0x5f00 << 112, 16),          // segment routing SIDs
        (0xfc00 << 112, 7),           // unique local
        (0xfe80 << 112, 10),          // link-local
        (0xfec0 << 112, 10),          // site-local (deprecated)
        (0xff00 << 112, 8),           // multicast
    ];
    let bits = u128::from(ip);
    !SPECIAL.iter().any(|(net, prefix)| {
        let mask = u128::MAX.checked_shl(128 - u32::from(*prefix)).unwrap_or(0);
        bits & mask == net & mask
    })
}

/// The IPv4 addresses an IPv6 address leads to, when it is one of the
/// forms that carry one; every one of them must be public. Teredo carries
/// two (the server, and the client obfuscated by inversion) and reaches
/// both.
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Vec<Ipv4Addr>> {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from(bits as u32);
    let prefix = |net: u128, len: u32| bits >> (128 - len) == net >> (128 - len);
    if prefix(0xffff << 32, 96) || prefix(0xffff << 48, 96) || prefix(0x0064_ff9b << 96, 96) {
        // IPv4-mapped ::ffff:a.b.c.d, IPv4-translated ::ffff:0:a.b.c.d
        // (SIIT), NAT64 well-known prefix 64:ff9b::a.b.c.d.
        return Some(vec![low32]);
    }
    if prefix(0x2002 << 112, 16) {
        // 6to4: 2002:AABB:CCDD::/48 for a.b.c.d = AA.BB.CC.DD.
        return Some(vec![Ipv4Addr::from((bits >> 80) as u32)]);
    }
    if prefix(0x2001_0000 << 96, 32) {
        // Teredo: 2001:0:<server>:<flags>:<port>:<client XOR 0xffffffff>.
        let server = Ipv4Addr::from((bits >> 64) as u32);
        let client = Ipv4Addr::from(!(bits as u32));
        return Some(vec![server, client]);
    }
    None
}

/// The addresses of the gateway host's own interfaces, read at start and
/// again when older than [`HOST_ADDRESSES_REFRESH`].
struct HostAddresses {
    known: RwLock<(Instant, HashSet<IpAddr>)>,
}

impl HostAddresses {
    fn global() -> &'static Self {
        static GLOBAL: OnceLock<HostAddresses> = OnceLock::new();
        GLOBAL.get_or_init(|| Self {
            known: RwLock::new((Instant::now(), interface_addresses())),
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        {
            let known = read(&self.known);
            if known.0.elapsed() < HOST_ADDRESSES_REFRESH {
                return known.1.contains(&ip);
            }
        }
        let fresh = interface_addresses();
        let found = fresh.contains(&ip);
        *write(&self.known) = (Instant::now(), fresh);
        found
    }
}

/// Reads the addresses of every interface of this host (`getifaddrs`).
/// An error leaves the set empty: the special ranges still hold, and the
/// next refresh tries again.
fn interface_addresses() -> HashSet<IpAddr> {
    let mut found = HashSet::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a linked list we own to `list`; it is read
    // only while alive and freed exactly once below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        tracing::warn!(
            "cannot read this host's interface addresses (getifaddrs: {}); outbound rules \
             still refuse every special-purpose range",
            std::io::Error::last_os_error()
        );
        return found;
    }
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the live list; `ifa_addr` is null or
        // points to a sockaddr whose family says which struct it is.
        unsafe {
            let entry = &*cursor;
            if !entry.ifa_addr.is_null() {
                match i32::from((*entry.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let addr = &*(entry.ifa_addr as *const libc::sockaddr_in);
                        found.insert(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            addr.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let addr = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                        found.insert(IpAddr::V6(Ipv6Addr::from(addr.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            cursor = entry.ifa_next;
        }
    }
    // SAFETY: `list` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public(s.parse().unwrap())
    }

    #[test]
    fn ipv4_special_ranges_are_not_public() {
        for special in [
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.31.196.1",
            "192.52.193.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!public(special), "{special} judged public");
        }
        for open in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.3.1",
            "198.17.255.255",
            "198.20.0.1",
            "203.0.114.1",
            "223.255.255.254",
        ] {
            assert!(public(open), "{open} judged special");
        }
    }

    #[test]
    fn ipv6_special_ranges_are_not_public() {
        for special in [
            "::",
            "::1",
            "::10.0.0.1",
            "64:ff9b:1::1",
            "100::1",
            "2001:2::1",
            "2001:10::1",
            "2001:db8::1",
            "3fff::1",
            "5f00::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "feff::1",
            "ff02::1",
            "2620:4f:8000::1",
        ] {
            assert!(!public(special), "{special} judged public");
        }
        for open in ["2606:4700:4700::1111", "2a00:1450:4001::1", "2400::1"] {
            assert!(public(open), "{open} judged special");
        }
    }

    #[test]
    fn ipv6_forms_carrying_ipv4_are_judged_by_that_address() {
        // IPv4-mapped and -translated.
        assert!(!public("::ffff:127.0.0.1"));
        assert!(!public("::ffff:10.0.0.1"));
        assert!(public("::ffff:93.184.216.34"));
        assert!(!public("::ffff:0:169.254.169.254"));
        assert!(public("::ffff:0:8.8.8.8"));
        // NAT64 well-known prefix: 64:ff9b::a9fe:a9fe is 169.254.169.254.
        assert!(!public("64:ff9b::a9fe:a9fe"));
        assert!(!public("64:ff9b::7f00:1"));
        assert!(!public("64:ff9b::c0a8:101"));
        assert!(public("64:ff9b::808:808"));
        // 6to4: 2002:AABB:CCDD:: carries AA.BB.CC.DD.
        assert!(!public("2002:7f00:1::1"));
        assert!(!public("2002:a9fe:a9fe::"));
        assert!(!public("2002:c0a8:101::1"));
        assert!(public("2002:808:808::1"));
        // Teredo: the server and the (inverted) client must both be public.
        // Client 127.0.0.1 = !0x7f000001 = 0x80fffffe.
        assert!(!public("2001:0:808:808:0:0:80ff:fffe"));
        // Server 10.0.0.1 with a public client 8.8.4.4 (= !0xf7f7fbfb).
        assert!(!public("2001:0:a00:1:0:0:f7f7:fbfb"));
        assert!(public("2001:0:808:808:0:0:f7f7:fbfb"));
    }

    #[test]
    fn the_hosts_own_addresses_are_not_foreign() {
        // Loopback is always an interface address, and special anyway.
        assert!(!is_public_and_foreign("127.0.0.1".parse().unwrap()));
        for ip in interface_addresses() {
            assert!(
                !is_public_and_foreign(ip),
                "own address {ip} reachable by *"
            );
        }
        assert!(is_public_and_foreign("93.184.216.34".parse().unwrap()));
    }
}
