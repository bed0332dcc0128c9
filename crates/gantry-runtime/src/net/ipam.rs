//! IPv4 address leases from the node's task subnet, persisted in a JSON file under a lock so
//! that concurrent processes never hand out the same address.

use crate::sys;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("invalid subnet {value:?}: expected an IPv4 CIDR with a prefix between /8 and /30")]
    BadSubnet { value: String },
    #[error("subnet {subnet} has no free addresses left ({leased} leased)")]
    Exhausted { subnet: String, leased: usize },
    #[error("lease file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "lease file {path} is unreadable ({reason}) while the node's namespace {live} is mounted: \
         its addresses cannot be told free; stop the node's tasks or rebuild the file by hand"
    )]
    Unreadable {
        path: PathBuf,
        reason: String,
        live: String,
    },
}

impl std::str::FromStr for Subnet {
    type Err = IpamError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IpamError::BadSubnet { value: s.to_string() };
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Subnet {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Subnet {
    /// The first host address, used by the bridge as the tasks' gateway.
    /// Whether this subnet and `addr/prefix` share any address.
    pub fn overlaps(&self, addr: Ipv4Addr, prefix: u8) -> bool {
        let shorter = self.prefix.min(prefix).min(32);
        let mask = if shorter == 0 { 0 } else { u32::MAX << (32 - shorter) };
        u32::from(self.network) & mask == u32::from(addr) & mask
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.network);
        let size = 1u32 << (32 - self.prefix);
        // Skip network, gateway and broadcast.
        (2..size - 1).map(move |i| Ipv4Addr::from(base + i))
    }
}

#[derive(Serialize, Deserialize, Default)]
struct LeaseFile {
    subnet: String,
    /// address -> owner (the sandbox's name)
    leases: BTreeMap<Ipv4Addr, String>,
}

pub struct Ipam {
    path: PathBuf,
    subnet: Subnet,
    /// Where the node's sandbox namespaces are mounted (`gn-*`): the leases' owners.
    netns_dir: PathBuf,
    /// The address leased last: the next lease is the first free one after it (round robin,
    /// as CNI's host-local does), so an address just released is not handed out again at
    /// once while its task's rules may still name it (`security::forget_rules` removes a
    /// stopped task from its groups' sets in batches, off the start path).
    last: std::sync::Mutex<Option<Ipv4Addr>>,
}

impl Ipam {
    pub fn new(path: &Path, subnet: Subnet, netns_dir: &Path) -> Ipam {
        Ipam {
            path: path.to_path_buf(),
            subnet,
            netns_dir: netns_dir.to_path_buf(),
            last: std::sync::Mutex::new(None),
        }
    }

    fn err(&self) -> impl Fn(io::Error) -> IpamError + '_ {
        move |source| IpamError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Runs `f` on the lease table under an exclusive lock and saves it atomically.
    fn with_leases<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<Ipv4Addr, String>) -> Result<T, IpamError>,
    ) -> Result<T, IpamError> {
        let lock_path = self.path.with_extension("lock");
        let lock = File::create(&lock_path).map_err(self.err())?;
        sys::flock_exclusive(&lock).map_err(self.err())?;
        let mut file: LeaseFile = match fs::read(&self.path) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(file) => file,
                Err(e) => self.unreadable(&e.to_string())?,
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => LeaseFile::default(),
            Err(e) => return Err(self.err()(e)),
        };
        if file.subnet != self.subnet.to_string() {
            // A changed subnet makes old leases meaningless; only keep those inside it.
            let s = self.subnet;
            file.leases.retain(|ip, _| s.hosts().any(|h| h == *ip));
            file.subnet = s.to_string();
        }
        let out = f(&mut file.leases)?;
        // Atomic (rename) but not fsynced: the leases describe namespaces, which are kernel
        // state. A crash that loses the page cache (power loss, reboot) also loses every
        // namespace, and the sweep then drops their leases; a process crash loses nothing.
        // An fsync per lease was a few ms on every task start and end.
        crate::shim::write_json_volatile(&self.path, &file).map_err(self.err())?;
        Ok(out)
    }

    /// An unreadable table: the file is only ever replaced whole (rename), so only a power
    /// loss before the page cache reached the disk (the file is not fsynced), or a damaged
    /// disk, leaves one. A power loss also ends every namespace, and every lease with it: when
    /// none of the node's namespaces is mounted the table starts empty (the old file kept
    /// beside it); while one is, its address cannot be told free, and the node refuses.
    fn unreadable(&self, reason: &str) -> Result<LeaseFile, IpamError> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(self.err())?;
        // As the mount table spells it (a run dir under /var/run is under /run there).
        let netns_dir = fs::canonicalize(&self.netns_dir).unwrap_or_else(|_| self.netns_dir.clone());
        if let Some(live) = mounted_namespace(&mountinfo, &netns_dir) {
            return Err(IpamError::Unreadable {
                path: self.path.clone(),
                reason: reason.to_string(),
                live,
            });
        }
        let aside = self.path.with_extension("json.unreadable");
        fs::rename(&self.path, &aside).map_err(self.err())?;
        tracing::warn!(
            "lease file {} was unreadable ({reason}) and no namespace of the node is mounted: starting \
             with no leases; the old file is kept as {}",
            self.path.display(),
            aside.display()
        );
        Ok(LeaseFile::default())
    }

    pub fn acquire(&self, owner: &str) -> Result<Ipv4Addr, IpamError> {
        let subnet = self.subnet;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let ip = self.with_leases(|leases| {
            if let Some((ip, _)) = leases.iter().find(|(_, o)| *o == owner) {
                return Ok(*ip);
            }
            let after = |h: &Ipv4Addr| last.is_some_and(|l| *h > l);
            let ip = subnet
                .hosts()
                .filter(after)
                .chain(subnet.hosts().filter(|h| !after(h)))
                .find(|h| !leases.contains_key(h))
                .ok_or(IpamError::Exhausted {
                    subnet: subnet.to_string(),
                    leased: leases.len(),
                })?;
            leases.insert(ip, owner.to_string());
            Ok(ip)
        })?;
        *last = Some(ip);
        Ok(ip)
    }

    pub fn release(&self, owner: &str) -> Result<(), IpamError> {
        self.with_leases(|leases| {
            leases.retain(|_, o| o != owner);
            Ok(())
        })
    }

    /// Drops every lease whose owner `keep` does not vouch for (crash recovery).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> Result<usize, IpamError> {
        self.with_leases(|leases| {
            let before = leases.len();
            leases.retain(|_, o| keep(o));
            Ok(before - leases.len())
        })
    }

    pub fn leases(&self) -> Result<BTreeMap<Ipv4Addr, String>, IpamError> {
        self.with_leases(|l| Ok(l.clone()))
    }
}

/// The first sandbox namespace (`gn-*`) mounted in `netns_dir`, from a mountinfo listing.
fn mounted_namespace(mountinfo: &str, netns_dir: &Path) -> Option<String> {
    let prefix = format!("{}/gn-", netns_dir.display());
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .find(|mount_point| mount_point.starts_with(&prefix))
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_table_starts_empty_when_no_namespace_is_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.json");
        fs::write(&path, b"{\"subnet\": \"10.1.2.0/29\", \"lea").unwrap();
        let ipam = Ipam::new(&path, "10.1.2.0/29".parse().unwrap(), &dir.path().join("netns"));
        assert_eq!(ipam.acquire("a").unwrap(), Ipv4Addr::new(10, 1, 2, 2));
        assert_eq!(ipam.leases().unwrap().len(), 1);
        assert_eq!(
            fs::read(dir.path().join("leases.json.unreadable")).unwrap(),
            b"{\"subnet\": \"10.1.2.0/29\", \"lea",
            "the old file is kept"
        );
    }

    #[test]
    fn a_mounted_namespace_is_found_in_mountinfo() {
        let mountinfo = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 0:4 / /var/tmp/g/run/netns rw shared:40 - nsfs nsfs rw
91 90 0:4 net:[4026532301] /var/tmp/g/run/netns/gn-0123abcd rw shared:41 - nsfs nsfs rw
92 22 0:4 net:[4026532302] /var/tmp/other/run/netns/gn-ffff rw shared:42 - nsfs nsfs rw
";
        assert_eq!(
            mounted_namespace(mountinfo, Path::new("/var/tmp/g/run/netns")).as_deref(),
            Some("/var/tmp/g/run/netns/gn-0123abcd")
        );
        assert_eq!(mounted_namespace(mountinfo, Path::new("/var/tmp/h/run/netns")), None);
        let bare = mountinfo.lines().take(2).collect::<Vec<_>>().join("\n");
        assert_eq!(
            mounted_namespace(&bare, Path::new("/var/tmp/g/run/netns")),
            None,
            "the directory's own mount is no namespace"
        );
    }

    #[test]
    fn leases_are_unique_persisted_and_freed() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(
            &dir.path().join("leases.json"),
            "10.1.2.0/29".parse().unwrap(),
            dir.path(),
        );
        let a = ipam.acquire("a").unwrap();
        let b = ipam.acquire("b").unwrap();
        assert_ne!(a, b);
        assert_eq!(a, Ipv4Addr::new(10, 1, 2, 2));
        assert_eq!(ipam.acquire("a").unwrap(), a, "same owner, same lease");
        // A /29 has 6 hosts, one is the gateway: 5 leases.
        for o in ["c", "d", "e"] {
            ipam.acquire(o).unwrap();
        }
        assert!(matches!(ipam.acquire("f"), Err(IpamError::Exhausted { .. })));
        let reopened = Ipam::new(
            &dir.path().join("leases.json"),
            "10.1.2.0/29".parse().unwrap(),
            dir.path(),
        );
        reopened.release("b").unwrap();
        assert_eq!(reopened.acquire("f").unwrap(), b);
        assert_eq!(reopened.retain(|o| o == "f").unwrap(), 4);
        assert_eq!(reopened.leases().unwrap().len(), 1);
    }

    #[test]
    fn a_released_address_is_handed_out_again_only_after_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(
            &dir.path().join("leases.json"),
            "10.1.2.0/29".parse().unwrap(),
            dir.path(),
        );
        let ip = |last: u8| Ipv4Addr::new(10, 1, 2, last);
        assert_eq!((ipam.acquire("a").unwrap(), ipam.acquire("b").unwrap()), (ip(2), ip(3)));
        ipam.release("a").unwrap();
        assert_eq!(ipam.acquire("c").unwrap(), ip(4), "not the address just released");
        assert_eq!((ipam.acquire("d").unwrap(), ipam.acquire("e").unwrap()), (ip(5), ip(6)));
        assert_eq!(ipam.acquire("f").unwrap(), ip(2), "round the subnet, the free one");
    }

    #[test]
    fn rejects_bad_subnets() {
        for s in ["10.0.0.0", "10.0.0.0/31", "10.0.0.0/4", "x/16"] {
            assert!(s.parse::<Subnet>().is_err(), "{s}");
        }
    }
}

#[cfg(test)]
mod overlap_tests {
    use super::*;

    #[test]
    fn subnets_overlap_when_they_share_an_address() {
        let s = Subnet {
            network: Ipv4Addr::new(10, 217, 0, 0),
            prefix: 24,
        };
        assert!(s.overlaps(Ipv4Addr::new(10, 217, 0, 1), 24));
        assert!(s.overlaps(Ipv4Addr::new(10, 0, 0, 1), 8), "a wider network holds it");
        assert!(s.overlaps(Ipv4Addr::new(10, 217, 0, 77), 32));
        assert!(!s.overlaps(Ipv4Addr::new(10, 217, 1, 1), 24));
        assert!(!s.overlaps(Ipv4Addr::new(127, 0, 0, 1), 8));
        let loopback = crate::sys::ipv4_addresses().unwrap();
        assert!(loopback
            .iter()
            .any(|(n, a, p)| n == "lo" && *a == Ipv4Addr::LOCALHOST && *p == 8));
    }
}
