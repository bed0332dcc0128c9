//! Thin wrappers over the Linux system calls Gantry makes directly. All of the crate's `unsafe`
//! lives here, so that every other module is safe Rust.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Creates an overlayfs whiteout: a character device with number 0/0.
pub fn mknod_whiteout(path: &Path) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: p is a valid NUL-terminated string for the duration of the call.
    check(unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o000, libc::makedev(0, 0)) })
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

pub fn mount(source: &str, target: &Path, fstype: &str, flags: libc::c_ulong, data: Option<&str>) -> io::Result<()> {
    let s = CString::new(source).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let t = cstr(target)?;
    let f = CString::new(fstype).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let d = data.map(|d| CString::new(d).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))).transpose()?;
    let dp = d.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast());
    // SAFETY: all pointers are valid NUL-terminated strings or null where the kernel allows it.
    check(unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, dp) })
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
    check(unsafe { libc::mount(s.as_ptr(), t.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) })
}

pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: t is valid.
    check(unsafe { libc::umount2(t.as_ptr(), flags) })
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare has no memory-safety preconditions.
    check(unsafe { libc::unshare(flags) })
}

pub fn setns(fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: setns on an fd we own; no memory is touched.
    check(unsafe { libc::setns(fd, nstype) })
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

/// Non-blocking attempt at an exclusive lock; Ok(false) if someone else holds it.
pub fn try_flock_exclusive(fd: &impl AsRawFd) -> io::Result<bool> {
    // SAFETY: flock on a valid fd.
    let rc = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(false) } else { Err(e) }
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
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
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

