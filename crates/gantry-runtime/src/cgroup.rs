//! Reading a container's cgroup, on cgroup v1 (per-controller hierarchies, as on this host) and
//! v2 (unified). The runtime creates and limits the cgroup from the bundle; Gantry reads usage,
//! detects OOM kills and removes leftovers after a crash.

use std::fs;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// v2 if /sys/fs/cgroup is the unified hierarchy itself; v1 (or hybrid, which Gantry treats as
/// v1) otherwise.
pub fn version() -> CgroupVersion {
    if Path::new(ROOT).join("cgroup.controllers").exists() {
        CgroupVersion::V2
    } else {
        CgroupVersion::V1
    }
}

/// Usage and limits of one cgroup. Missing files read as None.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CgroupStats {
    pub cpu_usage_ns: Option<u64>,
    /// CFS quota and period in microseconds (None quota = unlimited).
    pub cpu_quota_us: Option<i64>,
    pub cpu_period_us: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub pids_current: Option<u64>,
    pub pids_limit: Option<u64>,
    pub oom_kills: Option<u64>,
    /// Bytes read from and written to block devices (what reached the disk, not the page
    /// cache), summed over devices.
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
}

/// Read and write bytes from cgroup v1's blkio.throttle.io_service_bytes
/// (`MAJ:MIN Read N` lines) or v2's io.stat (`MAJ:MIN rbytes=N wbytes=N ...`).
pub fn io_bytes(text: &str) -> (u64, u64) {
    let (mut read, mut write) = (0u64, 0u64);
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let (Some(_device), Some(second)) = (w.next(), w.next()) else {
            continue;
        };
        match (second, w.next()) {
            ("Read", Some(n)) => read += n.parse().unwrap_or(0),
            ("Write", Some(n)) => write += n.parse().unwrap_or(0),
            _ => {
                for kv in std::iter::once(second).chain(line.split_whitespace().skip(2)) {
                    match kv.split_once('=') {
                        Some(("rbytes", n)) => read += n.parse().unwrap_or(0),
                        Some(("wbytes", n)) => write += n.parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
        }
    }
    (read, write)
}

fn read_u64(p: PathBuf) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn keyed(p: PathBuf, key: &str) -> Option<u64> {
    fs::read_to_string(p).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Only the I/O counters, from `file` (absent: None).
fn io(file: PathBuf) -> CgroupStats {
    let Ok(text) = fs::read_to_string(file) else {
        return CgroupStats::default();
    };
    let (read, write) = io_bytes(&text);
    CgroupStats {
        io_read_bytes: Some(read),
        io_write_bytes: Some(write),
        ..Default::default()
    }
}

/// On cgroup v1, makes the cpuset parent `parent` (e.g. `/gantry`) hand its CPUs and memory
/// nodes to each new child (`cgroup.clone_children`). Without it the runtime finds a new
/// container's cpuset empty and writes the parent's values into it, and each such write
/// checks the new set against every sibling: a cost per start that grows with the containers
/// on the node. v2 (no such step) is left alone.
pub fn prepare_cpuset_parent(parent: &str) -> std::io::Result<()> {
    if version() == CgroupVersion::V2 {
        return Ok(());
    }
    let root = Path::new(ROOT).join("cpuset");
    if !root.join("cpuset.cpus").exists() {
        return Ok(()); // no cpuset hierarchy mounted: nothing to inherit
    }
    let dir = root.join(parent.trim_start_matches('/'));
    fs::create_dir_all(&dir)?;
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if fs::read_to_string(dir.join(file))?.trim().is_empty() {
            fs::write(dir.join(file), fs::read_to_string(root.join(file))?.trim())?;
        }
    }
    fs::write(dir.join("cgroup.clone_children"), "1")
}

/// `path` is the cgroupsPath given to the runtime, e.g. `/gantry/<id>`.
pub fn dirs(path: &str) -> Vec<PathBuf> {
    let rel = path.trim_start_matches('/');
    match version() {
        CgroupVersion::V2 => vec![Path::new(ROOT).join(rel)],
        CgroupVersion::V1 => [
            "cpu",
            "cpuacct",
            "memory",
            "pids",
            "cpuset",
            "devices",
            "freezer",
            "blkio",
            "net_cls",
            "net_prio",
            "perf_event",
            "hugetlb",
            "systemd",
        ]
        .iter()
        .map(|c| Path::new(ROOT).join(c).join(rel))
        .collect(),
    }
}

pub fn stats(path: &str) -> CgroupStats {
    let rel = path.trim_start_matches('/');
    let r = Path::new(ROOT);
    match version() {
        CgroupVersion::V1 => {
            let unlimited = |v: Option<u64>| v.filter(|&x| x < (1 << 62));
            CgroupStats {
                cpu_usage_ns: read_u64(r.join("cpuacct").join(rel).join("cpuacct.usage")),
                cpu_quota_us: fs::read_to_string(r.join("cpu").join(rel).join("cpu.cfs_quota_us"))
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .filter(|&q| q > 0),
                cpu_period_us: read_u64(r.join("cpu").join(rel).join("cpu.cfs_period_us")),
                memory_bytes: read_u64(r.join("memory").join(rel).join("memory.usage_in_bytes")),
                memory_limit_bytes: unlimited(read_u64(r.join("memory").join(rel).join("memory.limit_in_bytes"))),
                pids_current: read_u64(r.join("pids").join(rel).join("pids.current")),
                pids_limit: read_u64(r.join("pids").join(rel).join("pids.max")),
                oom_kills: keyed(r.join("memory").join(rel).join("memory.oom_control"), "oom_kill"),
                ..io(r.join("blkio").join(rel).join("blkio.throttle.io_service_bytes"))
            }
        }
        CgroupVersion::V2 => {
            let d = r.join(rel);
            let (quota, period) = fs::read_to_string(d.join("cpu.max"))
                .ok()
                .and_then(|s| {
                    let mut w = s.split_whitespace();
                    let q = w.next()?.parse::<i64>().ok();
                    let p = w.next()?.parse::<u64>().ok();
                    Some((q, p))
                })
                .unwrap_or((None, None));
            CgroupStats {
                cpu_usage_ns: keyed(d.join("cpu.stat"), "usage_usec").map(|u| u * 1000),
                cpu_quota_us: quota,
                cpu_period_us: period,
                memory_bytes: read_u64(d.join("memory.current")),
                memory_limit_bytes: read_u64(d.join("memory.max")),
                pids_current: read_u64(d.join("pids.current")),
                pids_limit: read_u64(d.join("pids.max")),
                oom_kills: keyed(d.join("memory.events"), "oom_kill"),
                ..io(d.join("io.stat"))
            }
        }
    }
}

/// Just the usage counters the agent samples every interval (CPU time, memory, block I/O):
/// four files where `stats` reads nine, for every container of the node each time.
pub fn usage(path: &str) -> CgroupStats {
    let rel = path.trim_start_matches('/');
    let r = Path::new(ROOT);
    match version() {
        CgroupVersion::V1 => CgroupStats {
            cpu_usage_ns: read_u64(r.join("cpuacct").join(rel).join("cpuacct.usage")),
            memory_bytes: read_u64(r.join("memory").join(rel).join("memory.usage_in_bytes")),
            ..io(r.join("blkio").join(rel).join("blkio.throttle.io_service_bytes"))
        },
        CgroupVersion::V2 => {
            let d = r.join(rel);
            CgroupStats {
                cpu_usage_ns: keyed(d.join("cpu.stat"), "usage_usec").map(|u| u * 1000),
                memory_bytes: read_u64(d.join("memory.current")),
                ..io(d.join("io.stat"))
            }
        }
    }
}

/// True if any hierarchy still has this cgroup.
pub fn exists(path: &str) -> bool {
    dirs(path).iter().any(|d| d.is_dir())
}

/// Removes an (empty) cgroup from every hierarchy; used after a crash left one behind.
pub fn remove(path: &str) {
    for d in dirs(path) {
        let _ = fs::remove_dir(d);
    }
}

/// Names of the children of the parent cgroup (e.g. all of `/gantry`), in any hierarchy.
pub fn children(parent: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in dirs(parent) {
        if let Ok(rd) = fs::read_dir(d) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    let n = e.file_name().to_string_lossy().to_string();
                    if !out.contains(&n) {
                        out.push(n);
                    }
                }
            }
        }
    }
    out
}

/// How long ago the cgroup was created (by its directory's change time in any hierarchy).
pub fn age(path: &str) -> Option<std::time::Duration> {
    dirs(path)
        .iter()
        .filter_map(|d| d.metadata().ok()?.modified().ok()?.elapsed().ok())
        .min()
}

/// The `cgroup.procs` of the cgroup this process is in, in one hierarchy, from
/// /proc/self/cgroup (v2: the `0::` line; v1: the pids hierarchy, which every v1 host has
/// mounted when Gantry's containers have pid limits).
pub fn own_procs_file(proc_self_cgroup: &str, version: CgroupVersion) -> Option<PathBuf> {
    proc_self_cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let dir = match version {
            CgroupVersion::V2 if controllers.is_empty() => Path::new(ROOT).to_path_buf(),
            CgroupVersion::V1 if controllers.split(',').any(|c| c == "pids") => Path::new(ROOT).join("pids"),
            _ => return None,
        };
        Some(dir.join(path.trim_start_matches('/')).join("cgroup.procs"))
    })
}

/// Starts, in the background, the wait a move into a cgroup has to make, so that the runtime's
/// move of a starting container does not make it. Without `favordynmods`, a move takes the
/// kernel's thread-group lock for writing, whose first writer after an idle spell waits for
/// an RCU grace period (7 ms here); writers within a grace period of an earlier one do not
/// wait. The agent calls this as a start begins: a no-op move (this process into the cgroup
/// it is in) pays the wait while the sandbox, bundle and shim are prepared, and the runtime's
/// move a few milliseconds later finds the lock's fast path already off. Coalesced: calls
/// while one move is already queued add none. Failures only cost the head start (logged once).
pub fn prime_attach() {
    use std::sync::mpsc::{sync_channel, SyncSender};
    use std::sync::{Mutex, OnceLock};
    static PRIMER: OnceLock<Option<Mutex<SyncSender<()>>>> = OnceLock::new();
    let primer = PRIMER.get_or_init(|| {
        let file = own_procs_file(&fs::read_to_string("/proc/self/cgroup").ok()?, version())?;
        let (tx, rx) = sync_channel::<()>(1);
        let spawned = std::thread::Builder::new().name("cgroup-primer".into()).spawn(move || {
            let mut warned = false;
            while rx.recv().is_ok() {
                if let Err(e) = fs::write(&file, "0") {
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!(file = %file.display(), error = %e, "no head start for cgroup moves");
                    }
                }
            }
        });
        spawned.ok().map(|_| Mutex::new(tx))
    });
    if let Some(tx) = primer {
        let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).try_send(());
    }
}

/// Where the kernel's `favordynmods` is turned on, read from /proc/self/mountinfo: the
/// cgroup2 mount (a v2 host's /sys/fs/cgroup, or the one a hybrid host keeps beside its v1
/// hierarchies). None when it is on already. A v1 hierarchy cannot take the flag on a remount
/// (the kernel refuses changed root flags), so a host with no cgroup2 mount is an error.
pub fn favordynmods_mount(mountinfo: &str) -> Result<Option<PathBuf>, String> {
    let mut found = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.get(sep + 1) != Some(&"cgroup2") {
            continue;
        }
        if fields
            .get(sep + 3)
            .is_some_and(|o| o.split(',').any(|o| o == "favordynmods"))
        {
            return Ok(None);
        }
        found = found.or_else(|| fields.get(4).map(PathBuf::from));
    }
    found
        .map(Some)
        .ok_or_else(|| "favordynmods needs a cgroup2 mount (a cgroup v2 or hybrid host); none is mounted".to_string())
}

/// Turns on `favordynmods` for the host (until it reboots; Linux 6.18 cannot turn it off
/// again): moving a process into a cgroup, which the runtime does for every container on
/// cgroup v1, then no longer waits for an RCU grace period (7 ms here when the machine had
/// been idle), at some cost to fork and exit. A setting of the whole host, so only on the
/// operator's word (`--cgroup-favordynmods`). Returns whether it was off before.
pub fn favor_dynamic_modifications() -> Result<bool, String> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("reading mountinfo: {e}"))?;
    let Some(target) = favordynmods_mount(&info)? else {
        return Ok(false);
    };
    let out = std::process::Command::new("mount")
        .args(["-o", "remount,favordynmods"])
        .arg(&target)
        .output()
        .map_err(|e| format!("running mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "turning on favordynmods on {} (needs Linux 6.0 or later): {}",
            target.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_procs_file_picks_the_pids_hierarchy_on_v1_and_the_unified_one_on_v2() {
        let v1 = "13:hugetlb:/\n9:pids:/system.slice/gantry.service\n4:cpu,cpuacct:/x\n0::/\n";
        assert_eq!(
            own_procs_file(v1, CgroupVersion::V1),
            Some(PathBuf::from(
                "/sys/fs/cgroup/pids/system.slice/gantry.service/cgroup.procs"
            ))
        );
        assert_eq!(
            own_procs_file("0::/user.slice/a\n", CgroupVersion::V2),
            Some(PathBuf::from("/sys/fs/cgroup/user.slice/a/cgroup.procs"))
        );
        assert_eq!(
            own_procs_file("0::/\n", CgroupVersion::V2),
            Some(PathBuf::from("/sys/fs/cgroup/cgroup.procs"))
        );
        // A v1 host without a pids hierarchy, and garbage: no head start, no error.
        assert_eq!(own_procs_file("4:cpu,cpuacct:/x\n", CgroupVersion::V1), None);
        assert_eq!(own_procs_file("nonsense", CgroupVersion::V1), None);
    }

    #[test]
    fn favordynmods_goes_on_the_cgroup2_mount_once() {
        let hybrid = "35 31 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            favordynmods_mount(hybrid).unwrap(),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let on = "30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,favordynmods\n";
        assert_eq!(favordynmods_mount(on).unwrap(), None);
        let v1_only = "35 31 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n";
        assert!(favordynmods_mount(v1_only).unwrap_err().contains("cgroup2 mount"));
    }

    #[test]
    fn io_bytes_from_either_version() {
        let v1 = "8:0 Read 4096\n8:0 Write 512\n8:0 Sync 0\n8:0 Total 4608\n8:16 Read 10\n8:16 Write 20\nTotal 4638\n";
        assert_eq!(io_bytes(v1), (4106, 532));
        let v2 = "8:0 rbytes=1000 wbytes=200 rios=3 wios=4 dbytes=0 dios=0\n259:0 rbytes=5 wbytes=6 rios=1 wios=1\n";
        assert_eq!(io_bytes(v2), (1005, 206));
        assert_eq!(io_bytes(""), (0, 0));
    }
}
