//! Special-purpose addresses that both the dial policy and the node vetting must recognise in
//! every spelling (an IPv4-mapped IPv6 address is the IPv4 address). A leaf module, so that
//! `policy` and `pool` do not import each other.

use std::net::IpAddr;

/// Loopback, also as an IPv4-mapped IPv6 address.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|m| m.is_loopback()),
    }
}

/// Link-local (and so cloud metadata), also as an IPv4-mapped IPv6 address.
pub fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|m| m.is_link_local())
        }
    }
}
