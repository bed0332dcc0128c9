//! The PROXY protocol version 2 header a network load balancer's target group sends first on
//! each connection to a target when `proxy_protocol_v2.enabled` is set, as NLB does: the
//! client's address and port and the address and port it connected to, so a target behind
//! the proxy still learns who its client is. Health check connections carry the header too,
//! as the LOCAL command without addresses (NLB sends no client information on them).
//! Format: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt, section 2.2.

use std::net::{IpAddr, SocketAddr};

const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2 with the PROXY command, or with LOCAL.
const PROXY: u8 = 0x21;
const LOCAL: u8 = 0x20;
/// Address family and transport: TCP over IPv4 or IPv6, or unspecified.
const TCP4: u8 = 0x11;
const TCP6: u8 = 0x21;
const UNSPEC: u8 = 0x00;

/// The header for a client's connection from `client` to the listener at `local`.
pub fn proxied(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let mut addresses = Vec::with_capacity(36);
    let family = match (client.ip(), local.ip()) {
        (IpAddr::V4(c), IpAddr::V4(l)) => {
            addresses.extend_from_slice(&c.octets());
            addresses.extend_from_slice(&l.octets());
            TCP4
        }
        // One of each: both as IPv6 (an IPv4 address mapped), as a dual-stack socket sees them.
        (c, l) => {
            addresses.extend_from_slice(&v6(c).octets());
            addresses.extend_from_slice(&v6(l).octets());
            TCP6
        }
    };
    addresses.extend_from_slice(&client.port().to_be_bytes());
    addresses.extend_from_slice(&local.port().to_be_bytes());
    header(PROXY, family, &addresses)
}

/// The header of a health check's connection: LOCAL, no addresses.
pub fn local() -> Vec<u8> {
    header(LOCAL, UNSPEC, &[])
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

fn header(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(16 + addresses.len());
    h.extend_from_slice(SIGNATURE);
    h.push(command);
    h.push(family);
    h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    h.extend_from_slice(addresses);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_client_is_sent_as_the_specification_lays_it_out() {
        let h = proxied("192.0.2.7:40000".parse().unwrap(), "127.0.0.1:9000".parse().unwrap());
        let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        want.extend([0x21, 0x11, 0, 12, 192, 0, 2, 7, 127, 0, 0, 1, 0x9c, 0x40, 0x23, 0x28]);
        assert_eq!(h, want);
    }

    #[test]
    fn ipv6_and_mixed_families_are_sent_as_ipv6() {
        let h = proxied("[2001:db8::1]:443".parse().unwrap(), "127.0.0.1:9000".parse().unwrap());
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[16..18], &[0x20, 0x01]);
        // 127.0.0.1 mapped: ::ffff:127.0.0.1.
        assert_eq!(
            &h[32..48],
            &"::ffff:127.0.0.1".parse::<std::net::Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(&h[48..52], &[0x01, 0xbb, 0x23, 0x28]);
    }

    #[test]
    fn a_health_check_says_local_and_nothing_else() {
        assert_eq!(local(), [&SIGNATURE[..], &[0x20, 0x00, 0, 0]].concat());
    }
}
