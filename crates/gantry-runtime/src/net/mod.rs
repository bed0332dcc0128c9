//! Task sandboxes: one network namespace per task, with `lo` and an `eth0` veth to the node's
//! bridge, an address leased from the task subnet and a default route via the bridge. A warm
//! pool of ready sandboxes keeps namespace creation off the task start path.

pub mod firewall;
pub mod ipam;
pub mod netlink;

use crate::sys;
use ipam::{Ipam, IpamError, Subnet};
use netlink::{Netlink, NetlinkError};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Interface index requested for the task's eth0 (lo is always 1 in a new namespace).
const ETH0_INDEX: u32 = 2;

#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub bridge: String,
    pub subnet: Subnet,
    /// Where namespaces are bind-mounted (like /run/netns for `ip netns`).
    pub netns_dir: PathBuf,
    /// Lease file and pool markers.
    pub state_dir: PathBuf,
    /// Whether a DNS resolver serves tasks on the gateway address (port 53): bridged tasks'
    /// resolv.conf then names it, and the node's firewall lets DNS through to it.
    pub node_resolver: bool,
    /// nftables rules every new bridged namespace starts with, applied when it is made (in
    /// the warm pool, off a task's start): the agent's fail-closed base.
    pub namespace_rules: Option<String>,
    /// Whether the bridge filters its tasks' traffic by security group (an agent keeps the
    /// groups: `firewall::security_changes`); without one, tasks reach each other freely.
    pub security_groups: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Firewall(#[from] firewall::FirewallError),
    #[error(
        "the kernel's br_netfilter is not loaded (no /proc/sys/net/bridge), so security groups could not \
         filter traffic between tasks: load it (modprobe br_netfilter) and start again"
    )]
    NoBridgeNetfilter,
    #[error("bridge {bridge} already has 1024 ports, the Linux limit: no more bridged tasks fit on this node")]
    BridgeFull { bridge: String },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error(
        "subnet {subnet} overlaps {address}/{prefix} on {interface}: tasks would be unreachable; choose another \
         --subnet (or remove {interface} if a stopped Gantry left it)"
    )]
    SubnetInUse {
        subnet: String,
        address: Ipv4Addr,
        prefix: u8,
        interface: String,
    },
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> NetworkError {
    let context = context.into();
    move |source| NetworkError::Io { context, source }
}

/// How a task's network is set up (ECS network modes map onto these).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SandboxKind {
    /// Its own namespace with a veth on the node bridge and an address (awsvpc, bridge).
    #[default]
    Bridged,
    /// Its own namespace with loopback only (none).
    Loopback,
    /// No namespace of its own: the node's (host).
    Host,
}

/// A ready network namespace and its address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sandbox {
    pub name: String,
    pub path: PathBuf,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    pub host_veth: String,
    #[serde(default)]
    pub kind: SandboxKind,
}

impl Sandbox {
    /// The node's own network: nothing to create or destroy.
    pub fn host() -> Sandbox {
        Sandbox {
            name: "host".into(),
            path: PathBuf::new(),
            ip: Ipv4Addr::LOCALHOST,
            gateway: Ipv4Addr::UNSPECIFIED,
            prefix: 8,
            host_veth: String::new(),
            kind: SandboxKind::Host,
        }
    }
}

pub struct Network {
    cfg: NetworkConfig,
    ipam: Ipam,
}

/// Turns br_netfilter on for the bridge, so the node's security group chains see traffic
/// bridged between its tasks; loads the module first if the kernel has not (as Docker and
/// Kubernetes nodes need it too).
fn bridge_netfilter(bridge: &str) -> Result<(), NetworkError> {
    if !Path::new("/proc/sys/net/bridge").exists() {
        let _ = std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .stderr(std::process::Stdio::null())
            .status();
        if !Path::new("/proc/sys/net/bridge").exists() {
            return Err(NetworkError::NoBridgeNetfilter);
        }
    }
    let idx = netlink::link_index(bridge)
        .ok_or_else(|| io_ctx(format!("bridge {bridge}"))(io::Error::from(io::ErrorKind::NotFound)))?;
    Ok(Netlink::open()?.bridge_calls_netfilter(idx)?)
}

/// True if `path` is itself a mount point (listed in our mountinfo).
pub(crate) fn is_mount_point(path: &Path) -> bool {
    let p = path.to_string_lossy();
    fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(&p)))
        .unwrap_or(false)
}

impl Network {
    /// Prepares the node: bridge with the gateway address, and a shared mount for the
    /// namespace directory so that unmounting a namespace also drops the copies that shims'
    /// mount namespaces hold (otherwise they would pin every namespace alive).
    pub fn new(cfg: NetworkConfig) -> Result<Network, NetworkError> {
        for d in [&cfg.netns_dir, &cfg.state_dir.join("pool")] {
            fs::create_dir_all(d).map_err(io_ctx(format!("creating {}", d.display())))?;
        }
        if !is_mount_point(&cfg.netns_dir) {
            sys::bind_mount(&cfg.netns_dir, &cfg.netns_dir).map_err(io_ctx("bind-mounting the netns directory"))?;
        }
        sys::mount_propagation(&cfg.netns_dir, libc::MS_SHARED | libc::MS_REC)
            .map_err(io_ctx("making the netns directory shared"))?;
        // Another interface in the same subnet would take the tasks' traffic: refuse.
        let addresses = sys::ipv4_addresses().map_err(io_ctx("listing the node's addresses"))?;
        if let Some((interface, address, prefix)) = addresses
            .into_iter()
            .find(|(name, a, p)| *name != cfg.bridge && cfg.subnet.overlaps(*a, *p))
        {
            return Err(NetworkError::SubnetInUse {
                subnet: format!("{}/{}", cfg.subnet.network, cfg.subnet.prefix),
                address,
                prefix,
                interface,
            });
        }
        if netlink::link_index(&cfg.bridge).is_none() {
            let mut nl = Netlink::open()?;
            match nl.create_bridge(&cfg.bridge) {
                Err(NetlinkError::Io { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {}
                r => {
                    r?;
                    let idx = netlink::link_index(&cfg.bridge)
                        .ok_or_else(|| io_ctx("bridge")(io::Error::other("bridge vanished")))?;
                    match nl.add_ipv4(idx, cfg.subnet.gateway(), cfg.subnet.prefix) {
                        Err(NetlinkError::Io { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {}
                        r => r?,
                    }
                    nl.set_up(idx)?;
                }
            }
        }
        if cfg.security_groups {
            bridge_netfilter(&cfg.bridge)?;
        }
        firewall::isolate_node(
            &cfg.bridge,
            cfg.node_resolver.then(|| cfg.subnet.gateway()),
            cfg.security_groups,
        )?;
        let ipam = Ipam::new(&cfg.state_dir.join("leases.json"), cfg.subnet, &cfg.netns_dir);
        let network = Network { cfg, ipam };
        network.drain_stale_pool()?;
        Ok(network)
    }

    /// Empties the warm pool when its namespaces were made with other rules than this node's
    /// (by an older Gantry, or another configuration): a task must not start in one.
    fn drain_stale_pool(&self) -> Result<(), NetworkError> {
        let stamp = self.cfg.state_dir.join("pool-rules");
        let rules = self.cfg.namespace_rules.clone().unwrap_or_default();
        if fs::read_to_string(&stamp).ok().as_deref() == Some(rules.as_str()) {
            return Ok(());
        }
        let drained = self.drain_pool()?;
        if drained > 0 {
            tracing::info!(drained, "warm pool namespaces made with other rules removed");
        }
        fs::create_dir_all(&self.cfg.state_dir).map_err(io_ctx("creating the network state directory"))?;
        fs::write(&stamp, rules).map_err(io_ctx(format!("writing {}", stamp.display())))?;
        Ok(())
    }

    /// Takes the bridge's security group rules from enforcing `from` to `to`, in one
    /// transaction (`firewall::security_changes`). A bridge without security groups has
    /// nothing to change.
    pub fn security_groups(&self, from: &firewall::Enforced, to: &firewall::Enforced) -> Result<(), NetworkError> {
        if !self.cfg.security_groups {
            return Ok(());
        }
        let script = firewall::security_changes(&self.cfg.bridge, from, to)?;
        if script.is_empty() {
            return Ok(());
        }
        Ok(firewall::nft(&script)?)
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// Lets this network's tasks reach host ports the node publishes ("tcp"/"udp", port), or
    /// (`open` false) no longer.
    pub fn published_ports(&self, ports: &[(String, u16)], open: bool) -> Result<(), NetworkError> {
        Ok(firewall::published_ports(&self.cfg.bridge, ports, open)?)
    }

    /// Builds a new sandbox from scratch (~ a millisecond or two of netlink work).
    pub fn create(&self) -> Result<Sandbox, NetworkError> {
        let id = crate::random_hex(12);
        let name = format!("gn-{id}");
        let host_veth = format!("gv{id}");
        let path = self.cfg.netns_dir.join(&name);
        let ip = self.ipam.acquire(&name)?;
        let sb = Sandbox {
            name: name.clone(),
            path: path.clone(),
            ip,
            gateway: self.cfg.subnet.gateway(),
            prefix: self.cfg.subnet.prefix,
            host_veth,
            kind: SandboxKind::Bridged,
        };
        let built = self.build(&sb).and_then(|()| match &self.cfg.namespace_rules {
            Some(rules) => Self::nft_in(&sb, rules),
            None => Ok(()),
        });
        match built {
            Ok(()) => Ok(sb),
            Err(e) => {
                let _ = self.destroy(&sb);
                Err(e)
            }
        }
    }

    /// A namespace with loopback only (network mode none): no veth, no address lease.
    pub fn create_loopback(&self) -> Result<Sandbox, NetworkError> {
        let name = format!("gn-{}", crate::random_hex(12));
        let sb = Sandbox {
            path: self.cfg.netns_dir.join(&name),
            name,
            ip: Ipv4Addr::LOCALHOST,
            gateway: Ipv4Addr::UNSPECIFIED,
            prefix: 8,
            host_veth: String::new(),
            kind: SandboxKind::Loopback,
        };
        match self.new_netns(&sb).and_then(|(_, mut inside)| Ok(inside.set_up(1)?)) {
            Ok(()) => Ok(sb),
            Err(e) => {
                let _ = self.destroy(&sb);
                Err(e)
            }
        }
    }

    /// A fresh namespace mounted at the sandbox's path, and a netlink socket acting inside it.
    fn new_netns(&self, sb: &Sandbox) -> Result<(OwnedFd, Netlink), NetworkError> {
        // A short-lived thread enters a fresh namespace and opens a netlink socket there; the
        // socket keeps acting in that namespace after the thread is gone.
        let (nsfd, inside) = std::thread::spawn(|| -> Result<(OwnedFd, Netlink), NetworkError> {
            sys::unshare(libc::CLONE_NEWNET).map_err(io_ctx("unshare(CLONE_NEWNET)"))?;
            let fd = File::open("/proc/thread-self/ns/net").map_err(io_ctx("opening the new netns"))?;
            Ok((fd.into(), Netlink::open()?))
        })
        .join()
        .expect("netns thread panicked")?;
        File::create(&sb.path).map_err(io_ctx(format!("creating {}", sb.path.display())))?;
        let src = PathBuf::from(format!("/proc/self/fd/{}", nsfd.as_raw_fd()));
        sys::bind_mount(&src, &sb.path).map_err(io_ctx(format!("bind-mounting netns at {}", sb.path.display())))?;
        Ok((nsfd, inside))
    }

    fn build(&self, sb: &Sandbox) -> Result<(), NetworkError> {
        let (nsfd, mut inside) = self.new_netns(sb)?;
        let bridge = netlink::link_index(&self.cfg.bridge)
            .ok_or_else(|| io_ctx(format!("bridge {}", self.cfg.bridge))(io::Error::from(io::ErrorKind::NotFound)))?;
        let mut host = Netlink::open()?;
        let mac = netlink::task_mac(sb.ip);
        match host.create_veth(&sb.host_veth, bridge, "eth0", ETH0_INDEX, nsfd.as_raw_fd(), mac) {
            Err(NetlinkError::Io { source, .. }) if source.raw_os_error() == Some(libc::EXFULL) => {
                return Err(NetworkError::BridgeFull {
                    bridge: self.cfg.bridge.clone(),
                })
            }
            r => r?,
        }
        let hidx = netlink::link_index(&sb.host_veth)
            .ok_or_else(|| io_ctx(format!("veth {}", sb.host_veth))(io::Error::from(io::ErrorKind::NotFound)))?;
        host.no_ipv6_addresses(hidx)?;
        host.set_up(hidx)?;
        inside.set_up(1)?;
        inside.no_ipv6_addresses(ETH0_INDEX)?;
        inside.set_up(ETH0_INDEX)?;
        inside.add_ipv4(ETH0_INDEX, sb.ip, sb.prefix)?;
        inside.add_default_route(sb.gateway, ETH0_INDEX)?;
        Ok(())
    }

    /// Tears a sandbox down: the veth pair (synchronously, rather than waiting for the kernel's
    /// asynchronous namespace cleanup), the namespace mount and file, and the lease.
    pub fn destroy(&self, sb: &Sandbox) -> Result<(), NetworkError> {
        if sb.kind == SandboxKind::Host {
            return Ok(());
        }
        if let Some(idx) = (!sb.host_veth.is_empty())
            .then(|| netlink::link_index(&sb.host_veth))
            .flatten()
        {
            Netlink::open()?.delete_link(idx)?;
        }
        self.remove_netns(&sb.name)?;
        self.ipam.release(&sb.name)?;
        let _ = fs::remove_file(self.pool_marker(&sb.name));
        Ok(())
    }

    fn remove_netns(&self, name: &str) -> Result<(), NetworkError> {
        let path = self.cfg.netns_dir.join(name);
        match sys::umount(&path, libc::MNT_DETACH) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(io_ctx(format!("unmounting {}", path.display()))(e)),
        }
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_ctx(format!("removing {}", path.display()))(e)),
            _ => Ok(()),
        }
    }

    fn pool_marker(&self, name: &str) -> PathBuf {
        self.cfg.state_dir.join("pool").join(name)
    }

    fn pool_names(&self) -> Vec<String> {
        fs::read_dir(self.cfg.state_dir.join("pool"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn pool_len(&self) -> usize {
        self.pool_names().len()
    }

    /// Creates sandboxes until `size` wait in the pool. Returns how many were added.
    pub fn fill_pool(&self, size: usize) -> Result<usize, NetworkError> {
        let mut added = 0;
        while self.pool_len() < size {
            let sb = self.create()?;
            let data = serde_json::to_vec(&sb).expect("sandbox serialises");
            let tmp = self.cfg.state_dir.join(format!(".{}", sb.name));
            fs::write(&tmp, data).map_err(io_ctx("writing pool marker"))?;
            fs::rename(&tmp, self.pool_marker(&sb.name)).map_err(io_ctx("writing pool marker"))?;
            added += 1;
        }
        Ok(added)
    }

    /// A ready sandbox: from the warm pool when one waits there, else built now. Claiming is
    /// an unlink of the pool marker, which exactly one claimer wins.
    pub fn acquire(&self) -> Result<Sandbox, NetworkError> {
        for name in self.pool_names() {
            let marker = self.pool_marker(&name);
            let Ok(data) = fs::read(&marker) else { continue };
            if fs::remove_file(&marker).is_ok() {
                if let Ok(sb) = serde_json::from_slice::<Sandbox>(&data) {
                    return Ok(sb);
                }
            }
        }
        self.create()
    }

    /// Removes what the node made on the host beyond its sandboxes: the bridge and its
    /// firewall table, the namespace directory's own mount (for `gantry debug sweep --all`
    /// and tests). Absent is fine.
    pub fn teardown(&self) -> Result<(), NetworkError> {
        firewall::remove(&self.cfg.bridge)?;
        if let Some(idx) = netlink::link_index(&self.cfg.bridge) {
            match Netlink::open()?.delete_link(idx) {
                Err(NetlinkError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => {}
                r => r?,
            }
        }
        if is_mount_point(&self.cfg.netns_dir) {
            sys::umount(&self.cfg.netns_dir, libc::MNT_DETACH).map_err(io_ctx("unmounting the netns directory"))?;
        }
        Ok(())
    }

    /// Removes pool sandboxes (used at shutdown and by tests).
    pub fn drain_pool(&self) -> Result<usize, NetworkError> {
        let mut n = 0;
        for name in self.pool_names() {
            let marker = self.pool_marker(&name);
            if let Ok(data) = fs::read(&marker) {
                if fs::remove_file(&marker).is_ok() {
                    if let Ok(sb) = serde_json::from_slice::<Sandbox>(&data) {
                        self.destroy(&sb)?;
                        n += 1;
                    }
                }
            }
        }
        Ok(n)
    }

    /// Crash recovery: destroys every sandbox neither in the pool nor vouched for by `live`,
    /// and every lease whose namespace is gone. Returns the number of sandboxes removed.
    pub fn sweep(&self, live: impl Fn(&str) -> bool) -> Result<usize, NetworkError> {
        let pooled = self.pool_names();
        let keep = |name: &str| pooled.iter().any(|p| p == name) || live(name);
        let mut removed = 0;
        let entries: Vec<String> = fs::read_dir(&self.cfg.netns_dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        for name in entries.iter().filter(|n| n.starts_with("gn-")) {
            if keep(name) {
                continue;
            }
            let veth = format!("gv{}", &name[3..]);
            if let Some(idx) = netlink::link_index(&veth) {
                Netlink::open()?.delete_link(idx)?;
            }
            self.remove_netns(name)?;
            removed += 1;
        }
        let netns_dir = self.cfg.netns_dir.clone();
        self.ipam
            .retain(|owner| keep(owner) && netns_dir.join(owner).exists())?;
        // Host veths on our bridge whose namespace is gone. Veths on other bridges belong to
        // other Gantry nodes on this host (or other tests) and are none of our business.
        if let Ok(rd) = fs::read_dir("/sys/class/net") {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                let master = fs::read_link(e.path().join("master"))
                    .ok()
                    .and_then(|m| m.file_name().map(|f| f.to_string_lossy().to_string()));
                if master.as_deref() != Some(self.cfg.bridge.as_str()) {
                    continue;
                }
                if let Some(id) = n.strip_prefix("gv") {
                    let ns = format!("gn-{id}");
                    if !keep(&ns) {
                        if let Some(idx) = netlink::link_index(&n) {
                            let _ = Netlink::open()?.delete_link(idx);
                        }
                    }
                }
            }
        }
        Ok(removed)
    }

    /// A TCP listener inside the sandbox's namespace on `addr:port`, with `addr` added to its
    /// `lo`: reachable from that task's containers only (the task metadata endpoint). A
    /// short-lived thread enters the namespace to create it; the socket stays there.
    pub fn listen_in(sb: &Sandbox, addr: Ipv4Addr, port: u16) -> Result<std::net::TcpListener, NetworkError> {
        let path = sb.path.clone();
        std::thread::spawn(move || -> Result<std::net::TcpListener, NetworkError> {
            let ns = File::open(&path).map_err(io_ctx(format!("opening {}", path.display())))?;
            sys::setns(ns.as_raw_fd(), libc::CLONE_NEWNET).map_err(io_ctx("entering the task namespace"))?;
            let mut nl = Netlink::open()?;
            match nl.add_ipv4(1, addr, 32) {
                Err(NetlinkError::Io { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {}
                r => r?,
            }
            std::net::TcpListener::bind((addr, port))
                .map_err(io_ctx(format!("binding {addr}:{port} in the task namespace")))
        })
        .join()
        .expect("listener thread panicked")
    }

    /// Applies an nft script inside the sandbox's namespace: rules of the task alone, which
    /// go with its namespace. `nft` runs from a short-lived thread that entered it.
    pub fn nft_in(sb: &Sandbox, script: &str) -> Result<(), NetworkError> {
        let (path, script) = (sb.path.clone(), script.to_string());
        std::thread::spawn(move || -> Result<(), NetworkError> {
            let ns = File::open(&path).map_err(io_ctx(format!("opening {}", path.display())))?;
            sys::setns(ns.as_raw_fd(), libc::CLONE_NEWNET).map_err(io_ctx("entering the task namespace"))?;
            Ok(firewall::nft(&script)?)
        })
        .join()
        .expect("nft thread panicked")
    }

    /// Writes the files a task's containers mount: /etc/hosts, /etc/resolv.conf, /etc/hostname.
    /// With `node_resolver`, a bridged task's only nameserver is the node's resolver on its
    /// gateway (Cloud Map names, and everything else relayed); otherwise the host's.
    pub fn write_etc_files(sb: &Sandbox, hostname: &str, dir: &Path, node_resolver: bool) -> Result<(), NetworkError> {
        fs::create_dir_all(dir).map_err(io_ctx(format!("creating {}", dir.display())))?;
        let hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{hostname}\n",
            sb.ip
        );
        fs::write(dir.join("hosts"), hosts).map_err(io_ctx("writing hosts"))?;
        fs::write(dir.join("hostname"), format!("{hostname}\n")).map_err(io_ctx("writing hostname"))?;
        // The host's resolvers minus loopback ones, which mean nothing inside a namespace of
        // its own (in the host's network they do).
        let host = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let own = node_resolver && sb.kind == SandboxKind::Bridged;
        let mut resolv: String = host
            .lines()
            .filter(|l| {
                let mut w = l.split_whitespace();
                let nameserver = w.next() == Some("nameserver");
                let local = w.next().is_some_and(|a| a.starts_with("127.") || a == "::1");
                sb.kind == SandboxKind::Host || !(nameserver && (own || local))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        if own {
            resolv = format!("nameserver {}\n{resolv}", sb.gateway);
        }
        fs::write(dir.join("resolv.conf"), resolv).map_err(io_ctx("writing resolv.conf"))?;
        Ok(())
    }
}
