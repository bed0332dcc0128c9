//! A minimal rtnetlink client: just the messages a sandbox needs (bridge, veth with its peer
//! created directly inside the task's namespace, link up, address, default route, delete).
//! Done in-process because forking `ip` costs ~30 ms per task (DESIGN.md decision 3).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_BR_NF_CALL_IPTABLES: u16 = 36;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_INET6_ADDR_GEN_MODE: u16 = 8;
const IN6_ADDR_GEN_MODE_NONE: u8 = 1;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_GATEWAY: u16 = 5;
const RTA_OIF: u16 = 4;
const NLA_F_NESTED: u16 = 0x8000;
const IFF_UP: u32 = 0x1;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink {op}: {source}")]
    Io { op: &'static str, source: io::Error },
}

/// Builds one netlink message with nested attributes.
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

impl Msg {
    fn new(ty: u16, flags: u16) -> Msg {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        Msg { buf, nests: Vec::new() }
    }

    fn pad(&mut self) {
        let n = align(self.buf.len());
        self.buf.resize(n, 0);
    }

    fn raw(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// struct ifinfomsg: family, pad, type, index, flags, change.
    fn ifinfo(&mut self, index: i32, flags: u32, change: u32) {
        let mut b = [0u8; 16];
        b[4..8].copy_from_slice(&index.to_ne_bytes());
        b[8..12].copy_from_slice(&flags.to_ne_bytes());
        b[12..16].copy_from_slice(&change.to_ne_bytes());
        self.raw(&b);
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn attr_str(&mut self, ty: u16, s: &str) {
        let mut d = s.as_bytes().to_vec();
        d.push(0);
        self.attr(ty, &d);
    }

    fn begin(&mut self, ty: u16) {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }

    fn end(&mut self) {
        let start = self.nests.pop().expect("balanced nesting");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// A NETLINK_ROUTE socket. It acts in the network namespace it was created in, whatever
/// thread later uses it.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Opens a socket in the calling thread's current network namespace.
    pub fn open() -> Result<Netlink, NetlinkError> {
        // SAFETY: plain socket(2) call; the returned fd is checked and then owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(NetlinkError::Io {
                op: "socket",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Netlink { fd, seq: 1 })
    }

    fn request(&mut self, op: &'static str, msg: Msg) -> Result<(), NetlinkError> {
        self.seq += 1;
        let seq = self.seq;
        let data = msg.finish(seq);
        let err = |source| NetlinkError::Io { op, source };
        // SAFETY: data is a valid buffer of data.len() bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) };
        if n < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: buf is a valid writable buffer of buf.len() bytes.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err(e));
            }
            let mut off = 0usize;
            let n = n as usize;
            while off + NLMSG_HDRLEN <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
                let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2 bytes"));
                let rseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().expect("4 bytes"));
                if len < NLMSG_HDRLEN {
                    return Err(err(io::Error::other("malformed netlink reply")));
                }
                if ty == NLMSG_ERROR && rseq == seq {
                    let code = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4 bytes"));
                    return if code == 0 {
                        Ok(())
                    } else {
                        Err(err(io::Error::from_raw_os_error(-code)))
                    };
                }
                off += align(len);
            }
        }
    }

    /// Creates a bridge with a fixed MAC address. Without one the kernel gives the bridge the
    /// lowest MAC of its ports, so it changes as task veths come and go, and every task's
    /// cached neighbour entry for its gateway goes stale: traffic between the node and running
    /// tasks stalls for seconds whenever a task starts (seen as load balancer requests timing
    /// out during deployments).
    pub fn create_bridge(&mut self, name: &str) -> Result<(), NetlinkError> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        m.ifinfo(0, 0, 0);
        m.attr_str(IFLA_IFNAME, name);
        m.attr(IFLA_ADDRESS, &bridge_mac(name));
        m.begin(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, "bridge");
        m.end();
        self.request("create bridge", m)
    }

    /// Makes IPv4 traffic bridged between the bridge's ports pass the host's netfilter hooks
    /// (br_netfilter), whatever the host-wide `net.bridge.bridge-nf-call-iptables` says: the
    /// node's security group chains see task-to-task traffic there.
    pub fn bridge_calls_netfilter(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut m = Msg::new(RTM_NEWLINK, 0);
        m.ifinfo(index as i32, 0, 0);
        m.begin(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, "bridge");
        m.begin(IFLA_INFO_DATA);
        m.attr(IFLA_BR_NF_CALL_IPTABLES, &[1u8]);
        m.end();
        m.end();
        self.request("turn on br_netfilter for the bridge", m)
    }

    /// Gives an interface (before it is up) no IPv6 addresses: tasks get IPv4 only, and with
    /// a link-local address every new veth sent duplicate-address and router solicitations
    /// that the bridge flooded to every task. One message, where writing
    /// /proc/sys/net/ipv6/conf/<if>/disable_ipv6 costs a lookup among every namespace's and
    /// interface's entries of that name (thousands on a busy node).
    pub fn no_ipv6_addresses(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut m = Msg::new(RTM_NEWLINK, 0);
        m.ifinfo(index as i32, 0, 0);
        m.begin(IFLA_AF_SPEC);
        m.begin(libc::AF_INET6 as u16);
        m.attr(IFLA_INET6_ADDR_GEN_MODE, &[IN6_ADDR_GEN_MODE_NONE]);
        m.end();
        m.end();
        self.request("turn off IPv6 addresses", m)
    }

    /// Creates a veth pair: `host_name` here, attached to `master`, and its peer `peer_name`
    /// created directly inside the namespace `peer_netns` (no slow move between namespaces)
    /// with interface index `peer_index`.
    pub fn create_veth(
        &mut self,
        host_name: &str,
        master: u32,
        peer_name: &str,
        peer_index: u32,
        peer_netns: RawFd,
        peer_mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        m.ifinfo(0, 0, 0);
        m.attr_str(IFLA_IFNAME, host_name);
        m.attr(IFLA_MASTER, &master.to_ne_bytes());
        m.begin(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, "veth");
        m.begin(IFLA_INFO_DATA);
        m.begin(VETH_INFO_PEER);
        m.ifinfo(peer_index as i32, 0, 0);
        m.attr_str(IFLA_IFNAME, peer_name);
        m.attr(IFLA_ADDRESS, &peer_mac);
        m.attr(IFLA_NET_NS_FD, &(peer_netns as u32).to_ne_bytes());
        m.end();
        m.end();
        m.end();
        self.request("create veth", m)
    }

    pub fn set_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut m = Msg::new(RTM_NEWLINK, 0);
        m.ifinfo(index as i32, IFF_UP, IFF_UP);
        self.request("set link up", m)
    }

    pub fn delete_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut m = Msg::new(RTM_DELLINK, 0);
        m.ifinfo(index as i32, 0, 0);
        self.request("delete link", m)
    }

    pub fn add_ipv4(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError> {
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
        // struct ifaddrmsg: family, prefixlen, flags, scope, index
        let mut b = [0u8; 8];
        b[0] = libc::AF_INET as u8;
        b[1] = prefix;
        b[4..8].copy_from_slice(&index.to_ne_bytes());
        m.raw(&b);
        m.attr(IFA_LOCAL, &addr.octets());
        m.attr(IFA_ADDRESS, &addr.octets());
        self.request("add address", m)
    }

    pub fn add_default_route(&mut self, gateway: Ipv4Addr, oif: u32) -> Result<(), NetlinkError> {
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
        let mut b = [0u8; 12];
        b[0] = libc::AF_INET as u8;
        b[4] = libc::RT_TABLE_MAIN;
        b[5] = libc::RTPROT_BOOT;
        b[6] = libc::RT_SCOPE_UNIVERSE;
        b[7] = libc::RTN_UNICAST;
        m.raw(&b);
        m.attr(RTA_GATEWAY, &gateway.octets());
        m.attr(RTA_OIF, &oif.to_ne_bytes());
        self.request("add default route", m)
    }
}

/// The interface index of `name` in the calling thread's namespace, if it exists.
pub fn link_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// A locally administered unicast MAC address derived from the bridge's name (stable across
/// restarts, distinct per bridge on one host); 06: never one of the tasks' 02:42: addresses.
pub fn bridge_mac(name: &str) -> [u8; 6] {
    // FNV-1a: small, and good enough to spread names over 40 bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x06, b[3], b[4], b[5], b[6], b[7]]
}

/// A task's MAC address, derived from its IPv4 address as Docker does (02:42:a.b.c.d): when an
/// address is reused by a new task, the node's cached neighbour entry for it stays right.
/// With random MACs the node would keep sending to the old task's for up to half a minute,
/// and health checks and load balancer requests to the new task would time out.
pub fn task_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

#[cfg(test)]
mod bridge_mac_tests {
    use super::bridge_mac;

    #[test]
    fn bridge_macs_are_local_unicast_stable_and_distinct() {
        let a = bridge_mac("gantry0");
        assert_eq!(a[0] & 0b11, 0b10, "locally administered, unicast");
        assert_eq!(a, bridge_mac("gantry0"));
        assert_ne!(a, bridge_mac("gantry1"));
        assert_eq!(super::task_mac("10.1.2.3".parse().unwrap()), [0x02, 0x42, 10, 1, 2, 3]);
    }
}
