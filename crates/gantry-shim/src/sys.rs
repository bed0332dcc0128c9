//! The shim's system calls. All of the shim's `unsafe` lives here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: the kernel just gave us these two descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub enum Fork {
    Parent,
    Child,
}

/// fork(2). Only called while the process is single-threaded.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: the shim forks before it starts any thread, so the child is a faithful copy.
    let pid = check(unsafe { libc::fork() })?;
    Ok(if pid == 0 { Fork::Child } else { Fork::Parent })
}

pub fn setsid() -> io::Result<()> {
    // SAFETY: no memory-safety preconditions.
    check(unsafe { libc::setsid() }).map(|_| ())
}

pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }).map(|_| ())
}

pub fn dup2(from: &impl AsRawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: both are valid descriptor numbers; dup2 replaces `to` atomically.
    check(unsafe { libc::dup2(from.as_raw_fd(), to) }).map(|_| ())
}

pub fn signal_set(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for s in signals {
        // SAFETY: set is valid and initialised.
        unsafe { libc::sigaddset(&mut set, *s) };
    }
    set
}

/// Blocks the signals so that they queue for `signal_fd` (children get the mask reset by
/// std's spawn).
pub fn block_signals(set: &libc::sigset_t) -> io::Result<()> {
    // SAFETY: set is a valid sigset_t.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, set, std::ptr::null_mut()) };
    if rc != 0 {
        Err(io::Error::from_raw_os_error(rc))
    } else {
        Ok(())
    }
}

/// A descriptor that reads the blocked signals in `set` as they come (non-blocking), so the
/// shim waits for them and for its container's output in one `poll`.
pub fn signal_fd(set: &libc::sigset_t) -> io::Result<OwnedFd> {
    // SAFETY: set is a valid sigset_t; -1 asks for a new descriptor.
    let fd = check(unsafe { libc::signalfd(-1, set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The signals queued on a `signal_fd`, oldest first (none if none is queued).
pub fn read_signals(fd: &OwnedFd) -> Vec<i32> {
    let mut signals = Vec::new();
    loop {
        // SAFETY: an all-zero signalfd_siginfo is valid; read fills at most its size.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: info is valid for writes of `size` bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
        if n != size as isize {
            return signals; // EAGAIN: nothing more queued
        }
        signals.push(info.ssi_signo as i32);
    }
}

/// Waits until one of `fds` is ready (their `revents` say which), for at most `timeout_ms`
/// (None: with no limit).
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: Option<u64>) -> io::Result<()> {
    let timeout = timeout_ms.map_or(-1, |t| t.min(i32::MAX as u64) as libc::c_int);
    // SAFETY: fds is a valid, writable array of fds.len() pollfd structs.
    match check(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) }) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
        r => r.map(drop),
    }
}

pub enum Reaped {
    None,
    Exited { pid: i32, code: i32 },
    Signaled { pid: i32, signal: i32 },
}

/// Reaps one child or re-parented orphan without blocking.
pub fn reap() -> Reaped {
    let mut status = 0;
    // SAFETY: status is a valid int to write the wait status into.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid <= 0 {
        return Reaped::None;
    }
    if libc::WIFEXITED(status) {
        Reaped::Exited {
            pid,
            code: libc::WEXITSTATUS(status),
        }
    } else if libc::WIFSIGNALED(status) {
        Reaped::Signaled {
            pid,
            signal: libc::WTERMSIG(status),
        }
    } else {
        Reaped::Exited { pid, code: -1 }
    }
}

pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: no memory-safety preconditions.
    check(unsafe { libc::kill(pid, sig) }).map(|_| ())
}

pub fn unshare_mount_ns() -> io::Result<()> {
    // SAFETY: no memory-safety preconditions; the shim is single-threaded here.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) }).map(|_| ())
}

/// Joins the mount namespace the file names (the shim is single-threaded here, as setns of a
/// mount namespace requires).
pub fn join_mount_ns(file: &std::fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: setns on a descriptor we hold open; no memory is touched.
    check(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNS) }).map(|_| ())
}

fn cstr(s: &str) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

pub fn make_rslave(target: &str) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: t is valid; null source/fstype/data are allowed for propagation changes.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_SLAVE | libc::MS_REC,
            std::ptr::null(),
        )
    })
    .map(|_| ())
}

pub fn umount_detach(target: &str) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: t is valid.
    check(unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) }).map(|_| ())
}

/// Mounts a tmpfs (nosuid, nodev, noexec) at `target`.
pub fn mount_tmpfs(target: &str, options: &str) -> io::Result<()> {
    let (s, t, f, d) = (cstr("tmpfs")?, cstr(target)?, cstr("tmpfs")?, cstr(options)?);
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: all strings are valid for the call.
    check(unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) }).map(|_| ())
}

pub fn mount_overlay(target: &str, options: &str) -> io::Result<()> {
    let (s, t, f, d) = (cstr("overlay")?, cstr(target)?, cstr("overlay")?, cstr(options)?);
    // SAFETY: all strings are valid for the call.
    check(unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, d.as_ptr().cast()) }).map(|_| ())
}

/// A detached copy of the mount tree at `source` (open_tree with OPEN_TREE_CLONE): taken in
/// the namespace that has the mount, attached later in another with `attach_mount`.
pub fn clone_mount(source: &str) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let s = cstr(source)?;
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    // SAFETY: s is valid; open_tree returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, s.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is new and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Attaches a detached mount tree (from `clone_mount`) at `target` (move_mount).
pub fn attach_mount(tree: &OwnedFd, target: &str) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    let (empty, t) = (cstr("")?, cstr(target)?);
    // SAFETY: the strings are valid and the descriptor is open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
