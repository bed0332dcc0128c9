//! Thin wrappers over the Linux system calls Gantry makes directly. All of the crate's `unsafe`
//! lives here, so that every other module is safe Rust.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Creates an overlayfs whiteout: a character device with number 0/0.
pub fn mknod_whiteout(path: &Path) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: p is a valid NUL-terminated string for the duration of the call.
    check(unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) })
}

pub fn mkfifo(path: &Path, mode: u32) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: p is a valid NUL-terminated string.
    check(unsafe { libc::mkfifo(p.as_ptr(), mode as libc::mode_t) })
}

pub fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = cstr(path)?;
    let n = CString::new(name).expect("xattr names are static strings");
    // SAFETY: pointers are valid for the given lengths during the call.
    check(unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
}

pub fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: p is a valid NUL-terminated string.
    check(unsafe { libc::lchown(p.as_ptr(), uid, gid) })
}

/// ext4's "top of a directory hierarchy" inode flag (`chattr +T`; not in the libc crate).
const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;

/// Marks `dir` as the top of unrelated directory trees (`chattr +T`): ext4's allocator then
/// spreads the directories made in it over the filesystem's block groups instead of packing
/// them next to `dir`. Ok(false) where the filesystem has no such flag (tmpfs, overlay, XFS).
pub fn mark_top_directory(dir: &Path) -> io::Result<bool> {
    let d = std::fs::File::open(dir)?;
    let flags = match inode_flags(&d) {
        Ok(f) if f & FS_TOPDIR_FL != 0 => return Ok(true),
        Ok(f) => f | FS_TOPDIR_FL,
        Err(e) => return unsupported_flags(e),
    };
    // SAFETY: FS_IOC_SETFLAGS reads one int through the pointer, valid for the call.
    match check(unsafe { libc::ioctl(d.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) }) {
        Ok(()) => Ok(true),
        Err(e) => unsupported_flags(e),
    }
}

/// An open file's inode flags (`lsattr`).
fn inode_flags(f: &std::fs::File) -> io::Result<libc::c_int> {
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int through the pointer, valid for the call.
    check(unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) })?;
    Ok(flags)
}

/// Ok(false) for the errors a filesystem without inode flags (or without this one) answers.
fn unsupported_flags(e: io::Error) -> io::Result<bool> {
    match e.raw_os_error() {
        Some(libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL) => Ok(false),
        _ => Err(e),
    }
}

/// Whether `dir` carries the flag `mark_top_directory` sets (false where flags are unsupported).
#[cfg(test)]
fn is_top_directory(dir: &Path) -> io::Result<bool> {
    match inode_flags(&std::fs::File::open(dir)?) {
        Ok(flags) => Ok(flags & FS_TOPDIR_FL != 0),
        Err(e) => unsupported_flags(e),
    }
}

/// Changes propagation of an existing mount (MS_SHARED, MS_SLAVE, MS_PRIVATE, with MS_REC).
pub fn mount_propagation(target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: t is valid; the other arguments may be null for a propagation change.
    check(unsafe { libc::mount(std::ptr::null(), t.as_ptr(), std::ptr::null(), flags, std::ptr::null()) })
}

pub fn bind_mount(source: &Path, target: &Path) -> io::Result<()> {
    let s = cstr(source)?;
    let t = cstr(target)?;
    // SAFETY: both strings are valid.
    check(unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })
}

pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: t is valid.
    check(unsafe { libc::umount2(t.as_ptr(), flags) })
}

pub fn setns(fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: setns on a descriptor the caller keeps open; no memory is touched.
    check(unsafe { libc::setns(fd, nstype) })
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare has no memory-safety preconditions.
    check(unsafe { libc::unshare(flags) })
}

/// Exclusive advisory lock on an open file (released when the file is closed).
pub fn flock_exclusive(fd: &impl AsRawFd) -> io::Result<()> {
    loop {
        // SAFETY: flock on a valid fd.
        let rc = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A pidfd for any process (not only children): lets us wait for a shim we did not spawn.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: raw syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Waits until the fd is readable (a pidfd becomes readable when its process exits).
/// Returns false on timeout.
pub fn poll_readable(fd: &impl AsRawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: p is a valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    check(unsafe { libc::kill(pid, sig) })
}

/// True if a process with this pid exists (it may be a zombie).
pub fn process_exists(pid: i32) -> bool {
    pid > 0 && (kill(pid, 0).is_ok() || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Restores the default SIGPIPE action (the Rust runtime ignores it), so a command line tool
/// whose output pipe closes (`gantry logs -f T | head`) ends quietly as Unix tools do, instead
/// of failing its next write. Not for servers: a peer closing a socket must not kill them.
pub fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
    }
    set
}

/// Blocks SIGINT and SIGTERM in the calling thread (and threads it spawns later) so that one
/// thread can take them with `wait_termination_signal`.
pub fn block_termination_signals() {
    let set = termination_set();
    // SAFETY: set is valid; a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Waits for SIGINT or SIGTERM (which must be blocked) and returns it.
pub fn wait_termination_signal() -> i32 {
    let set = termination_set();
    let mut sig = 0;
    // SAFETY: set and sig are valid for the call.
    unsafe { libc::sigwait(&set, &mut sig) };
    sig
}

/// Makes `cmd` run in a private mount namespace (slave of ours) with every cgroup2 mount
/// detached: how a bare runtime invocation copes with a hybrid cgroup host, as the shim does.
pub fn run_in_private_mount_ns(cmd: &mut std::process::Command, hide: &[std::path::PathBuf]) -> io::Result<()> {
    use std::os::unix::process::CommandExt;
    let targets: Vec<CString> = hide.iter().map(|p| cstr(p)).collect::<io::Result<_>>()?;
    let root = CString::new("/").expect("static");
    // SAFETY: the closure runs between fork and exec and only makes raw system calls on
    // strings allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) < 0
                || libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_SLAVE | libc::MS_REC,
                    std::ptr::null(),
                ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            for t in &targets {
                libc::umount2(t.as_ptr(), libc::MNT_DETACH);
            }
            Ok(())
        });
    }
    Ok(())
}

/// A new memory file (memfd_create with `flags`).
pub fn memfd(name: &std::ffi::CStr, flags: libc::c_uint) -> io::Result<std::fs::File> {
    // SAFETY: memfd_create with a NUL-terminated name; the descriptor is owned below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// A close-on-exec memfd holding a copy of the file at `path`, sealed against any change
/// (writes, growing, shrinking, further seals): a binary that can be executed through
/// /proc/self/fd and never modified.
pub fn sealed_memfd_copy(path: &Path, name: &std::ffi::CStr) -> io::Result<OwnedFd> {
    let mut copy = memfd(name, libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)?;
    io::copy(&mut std::fs::File::open(path)?, &mut copy)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on a descriptor this function owns.
    if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(copy.into())
}

/// Every interface's IPv4 addresses with their prefix lengths (getifaddrs).
pub fn ipv4_addresses() -> io::Result<Vec<(String, std::net::Ipv4Addr, u8)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list, valid until freeifaddrs; an AF_INET address and
        // netmask are sockaddr_in, and the name is a NUL-terminated string.
        unsafe {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let addr = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                let prefix = if ifa.ifa_netmask.is_null() {
                    32
                } else {
                    let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                    u32::from_be(m.sin_addr.s_addr).count_ones() as u8
                };
                let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
                out.push((name, addr, prefix));
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

// Loop devices (linux/loop.h): the control device's "give me a free one", and the
// one-call setup of a device over a file.
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Attaches `image` to a free loop device; returns the device's path and an open handle.
/// The device detaches itself once nothing holds it (autoclear): after its filesystem is
/// unmounted, or when the handle is dropped without a mount. Direct I/O, so the image's
/// pages are not cached twice (once by the filesystem on the device, once by the host's).
pub fn loop_attach(image: &Path) -> io::Result<(std::path::PathBuf, OwnedFd)> {
    use std::os::unix::fs::OpenOptionsExt;
    let backing = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(image)?;
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // The kernel offers every caller the same free device until one configures it: this
    // process's attaches take turns (a burst of task starts would otherwise retry each
    // other out), and another process taking it between our two calls means trying again.
    static ATTACHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ATTACHING.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..32 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let path = std::path::PathBuf::from(format!("/dev/loop{n}"));
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)?;
        let mut name = [0u8; 64];
        let src = image.as_os_str().as_bytes();
        let len = src.len().min(63);
        name[..len].copy_from_slice(&src[..len]);
        let cfg = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 4096,
            info: LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset: 0,
                sizelimit: 0,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags: LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO,
                file_name: name,
                crypt_name: [0; 64],
                encrypt_key: [0; 32],
                init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: cfg is a valid loop_config that outlives the call; the kernel takes its own
        // reference to the backing file.
        match check(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) }) {
            Ok(()) => return Ok((path, dev.into())),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free loop device after 32 tries"))
}

/// Mounts the filesystem on `source` (a block device) at `target`.
pub fn mount_device(source: &Path, target: &Path, fstype: &str, data: &str) -> io::Result<()> {
    let s = cstr(source)?;
    let t = cstr(target)?;
    let f = CString::new(fstype).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let d = CString::new(data).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: all four strings are valid and NUL-terminated.
    check(unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            libc::MS_NOSUID,
            d.as_ptr() as *const libc::c_void,
        )
    })
}

/// Bytes a filesystem holds in all and has in use (statfs).
pub fn fs_usage(path: &Path) -> io::Result<(u64, u64)> {
    let p = cstr(path)?;
    // SAFETY: statfs fills the zeroed struct; p is valid.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    check(unsafe { libc::statfs(p.as_ptr(), &mut s) })?;
    let bsize = s.f_bsize as u64;
    Ok((s.f_blocks * bsize, (s.f_blocks - s.f_bfree) * bsize))
}

/// Copies `from` to a new file `to` of the same length, writing only `from`'s data (its
/// holes stay holes: SEEK_DATA and SEEK_HOLE find them).
pub fn copy_sparse(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let src = std::fs::File::open(from)?;
    let len = src.metadata()?.len();
    let dst = std::fs::OpenOptions::new().write(true).create_new(true).open(to)?;
    dst.set_len(len)?;
    let seek = |offset: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
        // SAFETY: lseek on a descriptor we hold; no memory is touched.
        let r = unsafe { libc::lseek(src.as_raw_fd(), offset as libc::off_t, whence) };
        match r {
            r if r >= 0 => Ok(Some(r as u64)),
            _ if io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) => Ok(None),
            _ => Err(io::Error::last_os_error()),
        }
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    while let Some(data) = seek(offset, libc::SEEK_DATA)? {
        let end = seek(data, libc::SEEK_HOLE)?.unwrap_or(len);
        let mut at = data;
        while at < end {
            let want = ((end - at) as usize).min(buf.len());
            let n = src.read_at(&mut buf[..want], at)?;
            if n == 0 {
                break;
            }
            dst.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        offset = end;
    }
    Ok(())
}

type NftCtx = *mut libc::c_void;
type NftCtxNew = unsafe extern "C" fn(u32) -> NftCtx;
type NftCtxFree = unsafe extern "C" fn(NftCtx);
type NftCtxFlag = unsafe extern "C" fn(NftCtx) -> libc::c_int;
type NftCtxBuffer = unsafe extern "C" fn(NftCtx) -> *const libc::c_char;
type NftRun = unsafe extern "C" fn(NftCtx, *const libc::c_char) -> libc::c_int;

/// Debian's libnftables (libnftables1, the library the `nft` command is built on), loaded at
/// run time. A script run through it costs about 0.25 ms of CPU where an `nft` process costs
/// about 2.8 ms (mostly loading the program and its libraries): a task's start and end each
/// run one or two (its namespace's redirect when the warm pool makes it, and its admission
/// to the bridge's security groups).
pub struct Nftables {
    ctx_new: NftCtxNew,
    ctx_free: NftCtxFree,
    buffer_output: NftCtxFlag,
    buffer_error: NftCtxFlag,
    error_buffer: NftCtxBuffer,
    run: NftRun,
    /// The thread that runs every script (`run`), one at a time: the library keeps
    /// process-wide state (its xtables and gmp set-up).
    worker: std::sync::Mutex<Option<std::sync::mpsc::Sender<NftJob>>>,
}

/// A script for the libnftables thread, the network namespace to run it in (a path that names
/// it from any thread of the process), and where its outcome goes.
struct NftJob {
    script: CString,
    netns: std::path::PathBuf,
    reply: std::sync::mpsc::SyncSender<Result<(), String>>,
}

impl Nftables {
    /// The library, loaded on first use; None when it is not installed.
    pub fn get() -> Option<&'static Nftables> {
        static LIB: std::sync::OnceLock<Option<Nftables>> = std::sync::OnceLock::new();
        LIB.get_or_init(Nftables::load).as_ref()
    }

    fn load() -> Option<Nftables> {
        // SAFETY: dlopen and dlsym with NUL-terminated names; the handle is never closed, so
        // the symbols stay valid for the life of the process, and each is cast to the
        // signature libnftables.h (1.0) declares for it.
        unsafe {
            let handle = libc::dlopen(c"libnftables.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            if handle.is_null() {
                tracing::warn!("libnftables.so.1 not found: firewall scripts run through the nft command (slower)");
                return None;
            }
            let sym = |name: &std::ffi::CStr| {
                let f = libc::dlsym(handle, name.as_ptr());
                (!f.is_null()).then_some(f)
            };
            Some(Nftables {
                ctx_new: std::mem::transmute::<*mut libc::c_void, NftCtxNew>(sym(c"nft_ctx_new")?),
                ctx_free: std::mem::transmute::<*mut libc::c_void, NftCtxFree>(sym(c"nft_ctx_free")?),
                buffer_output: std::mem::transmute::<*mut libc::c_void, NftCtxFlag>(sym(c"nft_ctx_buffer_output")?),
                buffer_error: std::mem::transmute::<*mut libc::c_void, NftCtxFlag>(sym(c"nft_ctx_buffer_error")?),
                error_buffer: std::mem::transmute::<*mut libc::c_void, NftCtxBuffer>(sym(c"nft_ctx_get_error_buffer")?),
                run: std::mem::transmute::<*mut libc::c_void, NftRun>(sym(c"nft_run_cmd_from_buffer")?),
                worker: std::sync::Mutex::new(None),
            })
        }
    }

    /// Runs an nft script as one transaction, in the calling thread's network namespace. The
    /// error is what `nft` would print.
    ///
    /// libnftables (1.0) waits on its netlink socket with select(), which aborts the process
    /// when the socket's number is FD_SETSIZE (1024) or more, as it is on a node with a few
    /// hundred tasks (each holds a few of this process's descriptors). So scripts run on one
    /// thread whose descriptor table is a private one holding only 0 to 2, made when the
    /// thread starts: the socket gets a low number. It enters the caller's network namespace
    /// for the script (the context's socket is opened there) and returns to the process's.
    /// A thread made per script cost each script a copy of the process's descriptor table
    /// and closing it again, a few thousand descriptors on a busy node.
    pub fn run(&'static self, script: &str) -> Result<(), String> {
        let script = CString::new(script).map_err(|_| "the script contains NUL".to_string())?;
        // SAFETY: gettid has no preconditions.
        let netns = format!("/proc/self/task/{}/ns/net", unsafe { libc::gettid() }).into();
        let (reply, outcome) = std::sync::mpsc::sync_channel(1);
        let mut job = NftJob { script, netns, reply };
        {
            let mut worker = self.worker.lock().unwrap_or_else(|p| p.into_inner());
            let tx = match worker.as_ref() {
                Some(tx) => tx.clone(),
                None => worker.insert(self.spawn_worker()?).clone(),
            };
            if let Err(std::sync::mpsc::SendError(j)) = tx.send(job) {
                // The thread ended (it could not return to the process's namespace): a new one.
                job = j;
                let tx = worker.insert(self.spawn_worker()?).clone();
                tx.send(job)
                    .map_err(|_| "the libnftables thread ended at once".to_string())?;
            }
        }
        // The caller waits here, so the namespace path keeps naming its thread.
        outcome
            .recv()
            .unwrap_or_else(|_| Err("the libnftables thread ended".into()))
    }

    fn spawn_worker(&'static self) -> Result<std::sync::mpsc::Sender<NftJob>, String> {
        let (tx, rx) = std::sync::mpsc::channel::<NftJob>();
        std::thread::Builder::new()
            .name("nftables".into())
            .spawn(move || {
                let home = only_standard_descriptors()
                    .map_err(|e| format!("a descriptor table for libnftables: {e}"))
                    .and_then(|()| enter_netns("/proc/self/ns/net".as_ref()));
                for job in rx {
                    let r = match &home {
                        Ok(home) => self.run_in(home, &job.netns, &job.script),
                        Err(e) => Err(e.clone()),
                    };
                    let _ = job.reply.send(r);
                }
            })
            .map_err(|e| format!("starting the libnftables thread: {e}"))?;
        Ok(tx)
    }

    /// Runs the script in `netns`, entered from `home` (this thread's namespace) and left
    /// again; a thread that cannot return ends rather than run later scripts elsewhere.
    fn run_in(&self, home: &std::fs::File, netns: &std::path::Path, script: &CStr) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let id = |f: &std::fs::File| f.metadata().map(|m| (m.dev(), m.ino())).map_err(|e| e.to_string());
        let ns = std::fs::File::open(netns).map_err(|e| format!("opening {}: {e}", netns.display()))?;
        if id(&ns)? == id(home)? {
            return self.run_here(script);
        }
        setns_fd(&ns)?;
        let r = self.run_here(script);
        setns_fd(home).expect("returning the libnftables thread to the process's network namespace");
        r
    }

    fn run_here(&self, script: &CStr) -> Result<(), String> {
        // SAFETY: the context is made, used and freed here, by this thread alone; the script
        // and the error buffer are NUL-terminated, and the error is copied before the free.
        unsafe {
            let ctx = (self.ctx_new)(0);
            if ctx.is_null() {
                return Err("libnftables could not make a context".into());
            }
            (self.buffer_output)(ctx);
            (self.buffer_error)(ctx);
            let rc = (self.run)(ctx, script.as_ptr());
            let err = (self.error_buffer)(ctx);
            let message = if err.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(err).to_string_lossy().trim().to_string()
            };
            (self.ctx_free)(ctx);
            if rc == 0 {
                Ok(())
            } else {
                Err(message)
            }
        }
    }
}

fn setns_fd(ns: &std::fs::File) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    setns(ns.as_raw_fd(), libc::CLONE_NEWNET).map_err(|e| format!("entering a network namespace: {e}"))
}

/// Moves the calling thread into the network namespace at `path`; its handle.
fn enter_netns(path: &std::path::Path) -> Result<std::fs::File, String> {
    let ns = std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    setns_fd(&ns)?;
    Ok(ns)
}

/// Gives the calling thread a descriptor table of its own and closes everything in it but 0
/// to 2. The process's table, which the other threads share, keeps every descriptor; so must
/// the thread: it can never share the process's table again, so it is one made for this.
pub fn only_standard_descriptors() -> io::Result<()> {
    // SAFETY: unshare(CLONE_FILES) copies the table for this thread alone; close_range then
    // closes descriptors in that copy only.
    unsafe {
        if libc::unshare(libc::CLONE_FILES) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileExt, MetadataExt};

    #[test]
    fn a_sparse_copy_has_the_same_bytes_and_keeps_the_holes() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        let f = std::fs::File::create(&from).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(&[7u8; 10_000], 40 << 20).unwrap();
        drop(f);
        super::copy_sparse(&from, &to).unwrap();
        assert_eq!(std::fs::read(&from).unwrap(), std::fs::read(&to).unwrap());
        // Two small extents, not 64 MiB.
        assert!(std::fs::metadata(&to).unwrap().blocks() * 512 < 1 << 20);
        // It never overwrites.
        assert!(super::copy_sparse(&from, &to).is_err());
    }

    #[test]
    fn a_directory_is_marked_top_on_ext4_and_left_alone_where_there_is_no_such_flag() {
        // /var/tmp is on disk on Debian (ext4 on the CI machine); /dev/shm is a tmpfs.
        let disk = tempfile::tempdir_in("/var/tmp").unwrap();
        let ext4 = statfs_type(disk.path()) == 0xEF53;
        assert!(!super::is_top_directory(disk.path()).unwrap());
        assert_eq!(super::mark_top_directory(disk.path()).unwrap(), ext4);
        assert_eq!(super::is_top_directory(disk.path()).unwrap(), ext4);
        // Marking twice is harmless.
        assert_eq!(super::mark_top_directory(disk.path()).unwrap(), ext4);
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        assert!(!super::mark_top_directory(shm.path()).unwrap());
        assert!(!super::is_top_directory(shm.path()).unwrap());
        // A path that is not there is an error, not "unsupported".
        assert!(super::mark_top_directory(&disk.path().join("absent")).is_err());
    }

    fn statfs_type(p: &std::path::Path) -> i64 {
        let c = super::cstr(p).unwrap();
        // SAFETY: statfs fills the struct it is given; the path is NUL-terminated.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
        st.f_type as i64
    }

    #[test]
    fn a_sealed_copy_runs_and_cannot_be_changed() {
        use std::os::fd::AsRawFd;
        let sh = crate::oci::find_in_path("sh").expect("sh on PATH");
        let copy = super::sealed_memfd_copy(&sh, c"sh-copy").unwrap();
        let fd = copy.as_raw_fd();
        // SAFETY: fcntl on a descriptor the test owns.
        let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
        let all = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
        assert_eq!(seals, all, "crun takes only a fully sealed copy as its own");
        let mut f = std::fs::File::from(copy.try_clone().unwrap());
        assert!(
            std::io::Write::write_all(&mut f, b"x").is_err(),
            "a sealed copy was written"
        );
        assert!(f.set_len(1).is_err(), "a sealed copy was truncated");
        assert_eq!(f.metadata().unwrap().len(), std::fs::metadata(&sh).unwrap().len());
        // Close-on-exec, and still executable through /proc/self/fd: the shell run from it
        // holds no descriptor of it.
        let out = std::process::Command::new(format!("/proc/self/fd/{fd}"))
            .args(["-c", "ls -l /proc/$$/fd/"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let held = String::from_utf8_lossy(&out.stdout);
        assert!(
            !held.contains("sh-copy"),
            "the copy (fd {fd}) leaked into the child: {held}"
        );
    }
}
