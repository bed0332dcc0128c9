//! The mount namespace shims start from. Each shim needs a private mount namespace without
//! the node's task network-namespace and ephemeral storage mounts (and, on hybrid hosts,
//! without the cgroup2 mount crun refuses). Copying the node's own namespace and then detaching those costs a copy of
//! every task's mount and a detach, each waiting for an RCU grace period, on every start.
//! The template is made once per node: a namespace that is a slave of the node's (mounts made
//! later still reach it), with those mounts already detached, pinned by a bind mount of its
//! namespace file under `<run-dir>/mntns/` (on a private mount: a namespace file may not be
//! propagated into the namespace it names). A shim joins it, then copies it.

use crate::sys;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

const NSFS_MAGIC: i64 = 0x6e73_6673;

/// The template's namespace file, made if the node has none, without the mounts at `hidden`.
pub fn ensure(run_dir: &Path, hidden: &[&Path]) -> io::Result<PathBuf> {
    let dir = run_dir.join("mntns");
    let file = dir.join("template");
    if is_nsfs(&file) {
        return Ok(file);
    }
    fs::create_dir_all(&dir)?;
    if !crate::net::is_mount_point(&dir) {
        sys::bind_mount(&dir, &dir)?;
    }
    sys::mount_propagation(&dir, libc::MS_PRIVATE)?;
    fs::File::create(&file)?;
    let hide: Vec<PathBuf> = hidden
        .iter()
        .map(|p| p.to_path_buf())
        .chain(crate::oci::hybrid_cgroup2_mounts())
        .collect();
    // A thread makes the namespace (a thread may unshare its mount namespace; the process
    // keeps its own) and waits while this one pins it.
    let (made_tx, made_rx) = mpsc::channel::<io::Result<i32>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let maker = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let made = make(&hide).map(|()| unsafe { libc::gettid() });
        let _ = made_tx.send(made);
        let _ = done_rx.recv();
    });
    let pinned = match made_rx.recv() {
        Ok(Ok(tid)) => sys::bind_mount(Path::new(&format!("/proc/self/task/{tid}/ns/mnt")), &file),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::other("the template namespace thread died")),
    };
    let _ = done_tx.send(());
    let _ = maker.join();
    pinned.map(|()| file)
}

/// In the calling thread: a new mount namespace, slave of the node's, without `hide`.
fn make(hide: &[PathBuf]) -> io::Result<()> {
    sys::unshare(libc::CLONE_NEWNS)?;
    sys::mount_propagation(Path::new("/"), libc::MS_SLAVE | libc::MS_REC)?;
    for p in hide {
        match sys::umount(p, libc::MNT_DETACH) {
            // Not a mount point here (a node without tasks' namespaces yet): nothing to hide.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) || e.kind() == io::ErrorKind::NotFound => {}
            r => r?,
        }
    }
    Ok(())
}

/// Unpins the template (the namespace goes once no shim is in it).
pub fn remove(run_dir: &Path) -> io::Result<()> {
    let dir = run_dir.join("mntns");
    let file = dir.join("template");
    if is_nsfs(&file) {
        sys::umount(&file, libc::MNT_DETACH)?;
    }
    if crate::net::is_mount_point(&dir) {
        sys::umount(&dir, libc::MNT_DETACH)?;
    }
    match fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn is_nsfs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid path string and st a valid buffer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == NSFS_MAGIC }
}
