//! OCI bundle generation: the runtime-spec config.json for one container, with Docker's
//! default hardening (capabilities, masked and read-only /proc paths, seccomp, no_new_privs).

use crate::image::ImageConfig;
use crate::net::{Sandbox, SandboxKind};
use oci_spec::runtime::Spec;
use serde_json::{json, Value};
use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Docker's default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

pub const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Every capability a container may be given (ECS's valid names, with CAP_), for `add: ALL`.
pub const ALL_CAPS: &[&str] = &[
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_WRITE",
    "CAP_BLOCK_SUSPEND",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE",
    "CAP_SYS_NICE",
    "CAP_SYS_PACCT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
];

/// A container's capabilities from a definition's `linuxParameters.capabilities` (names as
/// ECS spells them, without CAP_), as Docker applies them: the defaults, less `drop` (all of
/// them for ALL), plus `add` (every capability for ALL).
pub fn capability_set(add: &[String], drop: &[String]) -> Vec<String> {
    let full = |n: &String| format!("CAP_{}", n.to_ascii_uppercase());
    let mut caps: Vec<String> = if drop.iter().any(|d| d.eq_ignore_ascii_case("ALL")) {
        vec![]
    } else {
        let dropped: Vec<String> = drop.iter().map(full).collect();
        DEFAULT_CAPS
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !dropped.contains(c))
            .collect()
    };
    let added: Vec<String> = if add.iter().any(|a| a.eq_ignore_ascii_case("ALL")) {
        ALL_CAPS.iter().map(|c| c.to_string()).collect()
    } else {
        add.iter().map(full).collect()
    };
    for c in added {
        if !caps.contains(&c) {
            caps.push(c);
        }
    }
    caps
}

/// Syscalls no container makes: what Docker's default profile leaves out (kernel modules,
/// clocks, mounts, namespaces, keyrings, tracing, io_uring, ...), unless a capability below
/// covers them.
pub const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_settime",
    "clock_settime64",
    "delete_module",
    "fanotify_init",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_mempolicy",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pidfd_getfd",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "syslog",
    "umount",
    "umount2",
    "unshare",
    "userfaultfd",
    "ustat",
    "vhangup",
    "vm86",
    "vm86old",
];

/// The denied syscalls a capability gives back, as Docker's profile ties them.
const CAP_SYSCALLS: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "mount",
            "umount",
            "umount2",
            "unshare",
            "setns",
            "pivot_root",
            "fanotify_init",
            "quotactl",
            "quotactl_fd",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "name_to_handle_at",
            "lookup_dcookie",
            "perf_event_open",
            "bpf",
            "swapon",
            "swapoff",
        ],
    ),
    (
        "CAP_SYS_PTRACE",
        &["ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd"],
    ),
    (
        "CAP_SYS_TIME",
        &[
            "settimeofday",
            "stime",
            "clock_settime",
            "clock_settime64",
            "clock_adjtime",
            "clock_adjtime64",
        ],
    ),
    ("CAP_SYS_MODULE", &["init_module", "finit_module", "delete_module"]),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_NICE",
        &["mbind", "set_mempolicy", "get_mempolicy", "move_pages"],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
];

/// CLONE_NEW* flags: clone(2) with any of them is refused, like unshare(2), without
/// CAP_SYS_ADMIN.
const CLONE_NS_FLAGS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000 | 0x80;

/// The seccomp profile of a container holding `caps`: default deny (EPERM), every known
/// syscall allowed except the denied ones its capabilities do not give back; clone without
/// namespace flags unless it holds CAP_SYS_ADMIN.
pub fn seccomp(caps: &[String]) -> Value {
    let holds = |c: &str| caps.iter().any(|x| x == c);
    let given: Vec<&str> = CAP_SYSCALLS
        .iter()
        .filter(|(cap, _)| holds(cap))
        .flat_map(|(_, calls)| calls.iter().copied())
        .collect();
    let admin = holds("CAP_SYS_ADMIN");
    let allowed: Vec<&str> = crate::syscalls::ALL
        .iter()
        .copied()
        .filter(|s| !DENIED_SYSCALLS.contains(s) || given.contains(s))
        .filter(|s| *s != "clone3" && (admin || *s != "clone"))
        .collect();
    let mut syscalls = vec![json!({"names": allowed, "action": "SCMP_ACT_ALLOW"})];
    if !admin {
        syscalls.push(json!({
            "names": ["clone"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": CLONE_NS_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
        }));
    }
    // clone3 hides its flags in a struct seccomp cannot read: ENOSYS makes libc fall back to clone.
    syscalls.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS}));
    // i386 for 32-bit binaries, as Docker; not x32, an ABI kernels disable by default: each
    // architecture costs the runtime ~3 ms compiling the filter at every container start.
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": syscalls,
    })
}

#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// ECS CPU units: 1024 = one core, turned into a CFS quota.
    pub cpu_units: Option<u32>,
    /// Relative weight against the task's other containers (ECS container `cpu`); defaults
    /// to `cpu_units`.
    pub cpu_shares: Option<u32>,
    /// Hard limit: the container is OOM-killed above it.
    pub memory_mib: Option<u64>,
    /// Soft limit (ECS memoryReservation): reclaimed towards it under memory pressure.
    pub memory_reservation_mib: Option<u64>,
    pub pids: Option<i64>,
}

/// A resource limit for the container's processes (ECS ulimits).
#[derive(Debug, Clone, PartialEq)]
pub struct Rlimit {
    /// Lowercase name as ECS spells it: nofile, nproc, core, ...
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// Where a container's init sees its process ID 1 helper (ECS initProcessEnabled).
pub const INIT_PATH: &str = "/dev/init";

/// The init Gantry injects: tini, statically linked (as Docker's --init), so it runs in any
/// image.
pub fn init_binary() -> Option<PathBuf> {
    ["/usr/bin/tini-static", "/usr/local/bin/tini-static"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// What a container runs and how, on top of its image config.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub hostname: String,
    pub limits: Limits,
    /// Run a minimal init as PID 1 that forwards signals and reaps zombies.
    pub init: bool,
    pub readonly_rootfs: bool,
    pub rlimits: Vec<Rlimit>,
    /// The capabilities it holds (`capability_set`); None: Docker's default set.
    pub capabilities: Option<Vec<String>>,
    /// The task's volumes it mounts (Fargate's bind mounts, on the task's ephemeral storage).
    pub volumes: Vec<VolumeMount>,
    /// Namespaced kernel parameters the runtime sets in the container's namespaces.
    pub sysctls: Vec<(String, String)>,
}

/// One volume of the task mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// The volume's name (letters, digits, `-` and `_`: it names a directory).
    pub name: String,
    /// Where the container sees it (absolute).
    pub path: String,
    pub read_only: bool,
}

/// Adds the volumes' bind mounts after the spec's own, each from `<dir>/volumes/<name>`,
/// where the shim attaches the volume in its mount namespace.
pub fn add_volumes(spec: Spec, dir: &Path, volumes: &[VolumeMount]) -> Result<Spec, BundleError> {
    if volumes.is_empty() {
        return Ok(spec);
    }
    let mut v = serde_json::to_value(&spec).map_err(|e| BundleError::Spec(e.to_string()))?;
    let mounts = v["mounts"]
        .as_array_mut()
        .ok_or_else(|| BundleError::Spec("the spec has no mounts".into()))?;
    for m in volumes {
        let mut options = vec!["rbind", "rprivate", "nosuid", "nodev"];
        if m.read_only {
            options.push("ro");
        }
        let source = dir.join(VOLUMES_DIR).join(&m.name);
        mounts.push(json!({"destination": m.path, "type": "bind", "source": source, "options": options}));
    }
    serde_json::from_value::<Spec>(v).map_err(|e| BundleError::Spec(e.to_string()))
}

/// In a container's directory: where the shim attaches the task's volumes it mounts.
pub const VOLUMES_DIR: &str = "volumes";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("container has no command: the image defines no Entrypoint or Cmd and none was given")]
    NoCommand,
    #[error("user {user:?} not found in the image's /etc/passwd")]
    UnknownUser { user: String },
    #[error("group {group:?} not found in the image's /etc/group")]
    UnknownGroup { group: String },
    #[error("initProcessEnabled needs tini-static on the node: install the tini package")]
    NoInit,
    #[error("invalid ulimit {name:?}")]
    BadRlimit { name: String },
    #[error("invalid environment variable name {name:?}")]
    BadEnv { name: String },
    #[error("generated spec is invalid: {0}")]
    Spec(String),
    #[error("writing {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Docker's rules: an overridden entrypoint drops the image's Cmd; a given command replaces Cmd.
pub fn resolve_args(img: &ImageConfig, spec: &ContainerSpec) -> Result<Vec<String>, BundleError> {
    let entrypoint = spec.entrypoint.clone().unwrap_or_else(|| img.entrypoint.clone());
    let cmd = match (&spec.command, &spec.entrypoint) {
        (Some(c), _) => c.clone(),
        (None, Some(_)) => vec![],
        (None, None) => img.cmd.clone(),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        Err(BundleError::NoCommand)
    } else {
        Ok(args)
    }
}

/// Image env, then the overrides (same name replaces), PATH defaulted, HOSTNAME set.
pub fn resolve_env(img: &ImageConfig, spec: &ContainerSpec) -> Result<Vec<String>, BundleError> {
    let mut env: Vec<(String, String)> = img
        .env
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e.clone(), String::new()),
        })
        .collect();
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(BundleError::BadEnv { name: k.clone() });
        }
        set(k, v);
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push((
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ));
    }
    if !env.iter().any(|(k, _)| k == "HOSTNAME") {
        env.push(("HOSTNAME".into(), spec.hostname.clone()));
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// Reads a file from the image as the merged rootfs would show it: the topmost layer that has
/// it wins, an overlay whiteout hides it.
fn read_image_file(lowers_top_first: &[PathBuf], rel: &str) -> Option<String> {
    for l in lowers_top_first {
        let p = l.join(rel);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_char_device() => return None,
            Ok(m) if m.is_file() => return fs::read_to_string(p).ok(),
            _ => continue,
        }
    }
    None
}

/// Resolves "user", "uid", "user:group", "uid:gid" against the image's passwd/group files.
pub fn resolve_user(user: &str, lowers_top_first: &[PathBuf]) -> Result<(u32, u32), BundleError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read_image_file(lowers_top_first, "etc/passwd").unwrap_or_default();
    let find_passwd = |pred: &dyn Fn(&[&str]) -> bool| -> Option<(u32, u32)> {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && pred(&f))
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
    };
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, find_passwd(&|f| f[2] == u).map(|(_, g)| g).unwrap_or(0)),
        Err(_) => find_passwd(&|f| f[0] == u).ok_or_else(|| BundleError::UnknownUser { user: u.to_string() })?,
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => read_image_file(lowers_top_first, "etc/group")
                .unwrap_or_default()
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 3 && f[0] == g).then(|| f[2].parse().ok()).flatten()
                })
                .ok_or_else(|| BundleError::UnknownGroup { group: g.to_string() })?,
        },
    };
    Ok((uid, gid))
}

/// Builds config.json for a container whose rootfs will be mounted at `<bundle>/rootfs`.
/// `userns`: the host id the container's root is (its user namespace maps 0 to 65535 there);
/// None: no user namespace.
pub fn build_spec(
    userns: Option<u32>,
    img: &ImageConfig,
    spec: &ContainerSpec,
    lowers_top_first: &[PathBuf],
    sandbox: &Sandbox,
    etc_dir: &Path,
    cgroup_path: &str,
) -> Result<Spec, BundleError> {
    let mut args = resolve_args(img, spec)?;
    let env = resolve_env(img, spec)?;
    let mut extra_mounts = Vec::new();
    if spec.init {
        let init = init_binary().ok_or(BundleError::NoInit)?;
        args.splice(0..0, [INIT_PATH.to_string(), "--".to_string()]);
        extra_mounts.push(json!({"destination": INIT_PATH, "type": "bind", "source": init, "options": ["bind", "ro", "nosuid", "nodev"]}));
    }
    let rlimits = spec
        .rlimits
        .iter()
        .map(|r| {
            let ok = !r.name.is_empty() && r.name.bytes().all(|b| b.is_ascii_lowercase());
            if !ok {
                return Err(BundleError::BadRlimit { name: r.name.clone() });
            }
            Ok(json!({"type": format!("RLIMIT_{}", r.name.to_ascii_uppercase()), "soft": r.soft, "hard": r.hard}))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let user = spec.user.clone().unwrap_or_else(|| img.user.clone());
    let (uid, gid) = resolve_user(&user, lowers_top_first)?;
    let cwd = spec.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| {
        if img.working_dir.is_empty() {
            "/".into()
        } else {
            img.working_dir.clone()
        }
    });
    if !cwd.starts_with('/') {
        return Err(BundleError::Spec(format!("working directory {cwd:?} must be absolute")));
    }
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    let mut cpu = serde_json::Map::new();
    if let Some(units) = spec.limits.cpu_units {
        // 1024 units = one core = a full 100 ms period.
        let quota = (units as i64 * 100_000 / 1024).max(1000);
        cpu.insert("quota".into(), json!(quota));
        cpu.insert("period".into(), json!(100_000u64));
    }
    if let Some(shares) = spec.limits.cpu_shares.or(spec.limits.cpu_units) {
        cpu.insert("shares".into(), json!(shares.max(2) as u64));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    let mut memory = serde_json::Map::new();
    if let Some(mib) = spec.limits.memory_mib {
        memory.insert("limit".into(), json!((mib * 1024 * 1024) as i64));
    }
    if let Some(mib) = spec.limits.memory_reservation_mib {
        memory.insert("reservation".into(), json!((mib * 1024 * 1024) as i64));
    }
    if !memory.is_empty() {
        resources["memory"] = Value::Object(memory);
    }
    resources["pids"] = json!({"limit": spec.limits.pids.unwrap_or(4096)});
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if sandbox.kind != SandboxKind::Host {
        namespaces.push(json!({"type": "network", "path": sandbox.path}));
    }
    let id_maps = userns.map(|base| {
        namespaces.push(json!({"type": "user"}));
        json!([{"containerID": 0, "hostID": base, "size": crate::image::unpack::IDS_PER_TASK}])
    });
    let bind = |src: PathBuf, dst: &str| json!({"destination": dst, "type": "bind", "source": src, "options": ["rbind", "rprivate"]});
    let caps: Vec<String> = spec
        .capabilities
        .clone()
        .unwrap_or_else(|| DEFAULT_CAPS.iter().map(|c| c.to_string()).collect());
    let mut v = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": rlimits,
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": spec.readonly_rootfs},
        "hostname": spec.hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            bind(etc_dir.join("hosts"), "/etc/hosts"),
            bind(etc_dir.join("resolv.conf"), "/etc/resolv.conf"),
            bind(etc_dir.join("hostname"), "/etc/hostname"),
        ],
        "linux": {
            "cgroupsPath": cgroup_path,
            "resources": resources,
            "namespaces": namespaces,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": seccomp(&caps),
        }
    });
    // The profile compiled once here rather than by crun at every start (see seccomp_bpf).
    if let Some(bpf) = crate::seccomp_bpf::annotation(&v["linux"]["seccomp"]) {
        v["annotations"] = json!({ crate::seccomp_bpf::ANNOTATION: &*bpf });
    }
    if !spec.sysctls.is_empty() {
        let sysctls: serde_json::Map<String, Value> = spec.sysctls.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        v["linux"]["sysctl"] = Value::Object(sysctls);
    }
    if let Some(maps) = id_maps {
        v["linux"]["uidMappings"] = maps.clone();
        v["linux"]["gidMappings"] = maps;
    }
    if let Some(m) = v["mounts"].as_array_mut() {
        m.extend(extra_mounts);
    }
    serde_json::from_value::<Spec>(v).map_err(|e| BundleError::Spec(e.to_string()))
}

pub fn write_spec(spec: &Spec, bundle: &Path) -> Result<(), BundleError> {
    let path = bundle.join("config.json");
    let data = serde_json::to_vec_pretty(spec).map_err(|e| BundleError::Spec(e.to_string()))?;
    fs::write(&path, data).map_err(|source| BundleError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/bin/ep".into()],
            cmd: vec!["a".into()],
            env: vec!["PATH=/bin".into(), "X=1".into()],
            ..Default::default()
        }
    }

    #[test]
    fn capabilities_drop_then_add_as_docker_does() {
        let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(capability_set(&[], &[]), v(DEFAULT_CAPS));
        let no_raw = capability_set(&v(&["SYS_PTRACE"]), &v(&["NET_RAW"]));
        assert!(!no_raw.contains(&"CAP_NET_RAW".into()) && no_raw.contains(&"CAP_SYS_PTRACE".into()));
        assert_eq!(no_raw.len(), DEFAULT_CAPS.len());
        assert_eq!(capability_set(&v(&["CHOWN"]), &v(&["ALL"])), v(&["CAP_CHOWN"]));
        assert_eq!(capability_set(&v(&["ALL"]), &[]).len(), ALL_CAPS.len());
    }

    #[test]
    fn seccomp_denies_by_default_and_capabilities_give_their_syscalls_back() {
        let allowed = |profile: &Value| -> Vec<String> {
            serde_json::from_value(profile["syscalls"][0]["names"].clone()).unwrap()
        };
        let default = seccomp(&capability_set(&[], &[]));
        assert_eq!(default["defaultAction"], "SCMP_ACT_ERRNO");
        let names = allowed(&default);
        for ok in ["read", "write", "openat", "execve", "socket", "mmap2", "socketcall"] {
            assert!(names.contains(&ok.to_string()), "{ok}");
        }
        for denied in [
            "mount",
            "unshare",
            "setns",
            "ptrace",
            "keyctl",
            "io_uring_setup",
            "kexec_load",
            "clone",
        ] {
            assert!(!names.contains(&denied.to_string()), "{denied}");
        }
        // clone only without namespace flags; clone3 falls back.
        assert_eq!(default["syscalls"][1]["args"][0]["value"], json!(CLONE_NS_FLAGS));
        assert_eq!(default["syscalls"][2]["names"], json!(["clone3"]));
        let ptrace = allowed(&seccomp(&capability_set(&["SYS_PTRACE".into()], &[])));
        assert!(ptrace.contains(&"ptrace".into()) && !ptrace.contains(&"mount".into()));
        let admin = seccomp(&capability_set(&["SYS_ADMIN".into()], &[]));
        let names = allowed(&admin);
        assert!(
            names.contains(&"mount".into()) && names.contains(&"unshare".into()) && names.contains(&"clone".into())
        );
        assert!(
            !names.contains(&"keyctl".into()),
            "keyrings stay denied even to SYS_ADMIN"
        );
    }

    #[test]
    fn docker_arg_rules() {
        let s = ContainerSpec::default();
        assert_eq!(resolve_args(&img(), &s).unwrap(), ["/bin/ep", "a"]);
        let s = ContainerSpec {
            command: Some(vec!["b".into()]),
            ..Default::default()
        };
        assert_eq!(resolve_args(&img(), &s).unwrap(), ["/bin/ep", "b"]);
        let s = ContainerSpec {
            entrypoint: Some(vec!["/bin/sh".into()]),
            ..Default::default()
        };
        assert_eq!(resolve_args(&img(), &s).unwrap(), ["/bin/sh"]);
        assert!(matches!(
            resolve_args(&ImageConfig::default(), &ContainerSpec::default()),
            Err(BundleError::NoCommand)
        ));
    }

    #[test]
    fn env_overrides() {
        let s = ContainerSpec {
            env: vec![("X".into(), "2".into()), ("Y".into(), "3".into())],
            hostname: "h".into(),
            ..Default::default()
        };
        assert_eq!(
            resolve_env(&img(), &s).unwrap(),
            ["PATH=/bin", "X=2", "Y=3", "HOSTNAME=h"]
        );
        let s = ContainerSpec {
            env: vec![("A=B".into(), "2".into())],
            ..Default::default()
        };
        assert!(resolve_env(&img(), &s).is_err());
    }

    #[test]
    fn users_from_image_files() {
        let d = tempfile::tempdir().unwrap();
        let lower = d.path().join("l1");
        fs::create_dir_all(lower.join("etc")).unwrap();
        fs::write(
            lower.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/:/bin/false\n",
        )
        .unwrap();
        fs::write(lower.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let l = [lower];
        assert_eq!(resolve_user("www", &l).unwrap(), (33, 34));
        assert_eq!(resolve_user("www:staff", &l).unwrap(), (33, 50));
        assert_eq!(resolve_user("1000:1000", &l).unwrap(), (1000, 1000));
        assert_eq!(resolve_user("33", &l).unwrap(), (33, 34));
        assert!(matches!(
            resolve_user("nobody", &l),
            Err(BundleError::UnknownUser { .. })
        ));
        assert!(matches!(
            resolve_user("www:nogroup", &l),
            Err(BundleError::UnknownGroup { .. })
        ));
    }
}
