//! What one client is, for every per-client count of the process
//! (connections, handshakes, QUIC connections, dashboard sessions): an
//! IPv4 address, or an IPv6 prefix (a /64 by default, because one host
//! usually owns a whole /64: counting exact IPv6 addresses would give it
//! 2^64 "clients").

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU8, Ordering};

/// The default IPv6 prefix length that makes one client
/// (`gateway.client_ipv6_prefix`).
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The IPv6 prefix length per client for [`client_key`]; set once at start
/// from `gateway.client_ipv6_prefix` (a process serves one gateway).
static IPV6_PREFIX: AtomicU8 = AtomicU8::new(DEFAULT_IPV6_PREFIX);

/// Sets the IPv6 prefix length that makes one client, for every per-client
/// count of the process (connections, handshakes, QUIC). `len` is checked
/// by the configuration (32 to 128).
pub fn set_client_ipv6_prefix(len: u8) {
    IPV6_PREFIX.store(len.clamp(1, 128), Ordering::Relaxed);
}

/// The key per-client limits count under: an IPv4 address as it is (an
/// IPv4-mapped IPv6 address as its IPv4 address), an IPv6 address reduced
/// to its prefix (a /64 unless configured otherwise).
pub fn client_key(ip: IpAddr) -> IpAddr {
    client_key_with(ip, IPV6_PREFIX.load(Ordering::Relaxed))
}

pub(super) fn client_key_with(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6);
                let mask = match prefix {
                    0 => 0,
                    p if p >= 128 => u128::MAX,
                    p => u128::MAX << (128 - u32::from(p)),
                };
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        },
    }
}
