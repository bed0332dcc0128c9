//! Ephemeral storage (ECS's `ephemeralStorage.sizeInGiB`): a task's writable layers live on a
//! filesystem of the task's own size, so a write past it fails with ENOSPC and `df /` in the
//! task shows that size. Each is an ext4 filesystem in a sparse image file on a loop device,
//! mounted at `<data>/ephemeral/<id>`; the task's containers put their overlay upper and work
//! directories on it. Project quotas on one shared filesystem would cost less per task, but
//! they need a kernel built with quota support and a filesystem mounted with them, which this
//! class of host does not have (ARCHITECTURE.md, "Ephemeral storage"). Making one costs a
//! sparse copy of a template image, a loop device and a mount (about 3 ms): a warm pool of
//! default-size filesystems keeps that off a task's start, and removing one (an unmount, an
//! unlink) happens after the task ended.
//!
//! `<data>/ephemeral` is a private mount that the shims' template mount namespace hides: a
//! shim clones only its own container's directory of its task's filesystem into its namespace
//! (otherwise every shim's namespace would hold a copy of every task's mount).

use crate::sys;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// ECS's default size, and the size the warm pool keeps ready.
pub const DEFAULT_GIB: u32 = 20;

/// Names the templates' format: bumped when `format`'s options change, so a node does not
/// copy a template an older version made.
const TEMPLATE_VERSION: &str = "v1";

pub struct EphemeralStore {
    /// Mount points, one per filesystem.
    mounts: PathBuf,
    /// Image files, and `pool/` markers of the filesystems waiting for a task.
    images: PathBuf,
    mkfs: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum EphemeralError {
    #[error(
        "ephemeral storage cannot be enforced on this host: {0} (Gantry bounds each task's writable \
         layers with a filesystem of the task's size on a loop device; it needs /dev/loop-control, \
         mkfs.ext4 from e2fsprogs and ext4 in the kernel)"
    )]
    Unsupported(String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> EphemeralError {
    let context = context.into();
    move |source| EphemeralError::Io { context, source }
}

impl EphemeralStore {
    /// Opens the node's store under `data_dir`, refusing a host that cannot enforce sizes.
    pub fn open(data_dir: &Path) -> Result<EphemeralStore, EphemeralError> {
        if !Path::new("/dev/loop-control").exists() {
            return Err(EphemeralError::Unsupported("there is no /dev/loop-control".into()));
        }
        let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !filesystems.lines().any(|l| l.split_whitespace().last() == Some("ext4")) {
            return Err(EphemeralError::Unsupported("the kernel has no ext4".into()));
        }
        let mkfs = find_program("mkfs.ext4")
            .ok_or_else(|| EphemeralError::Unsupported("mkfs.ext4 is not installed".into()))?;
        let store = EphemeralStore {
            mounts: data_dir.join("ephemeral"),
            images: data_dir.join("ephemeral-images"),
            mkfs,
        };
        for d in [&store.mounts, &store.images.join("pool")] {
            fs::create_dir_all(d).map_err(io_ctx(format!("creating {}", d.display())))?;
        }
        crate::task::spread_subdirectories(&store.mounts);
        if !crate::net::is_mount_point(&store.mounts) {
            sys::bind_mount(&store.mounts, &store.mounts).map_err(io_ctx("bind-mounting the ephemeral directory"))?;
        }
        sys::mount_propagation(&store.mounts, libc::MS_PRIVATE)
            .map_err(io_ctx("making the ephemeral directory private"))?;
        Ok(store)
    }

    /// The directory every filesystem is mounted in.
    pub fn root(&self) -> &Path {
        &self.mounts
    }

    /// Where filesystem `id` is mounted.
    pub fn path(&self, id: &str) -> PathBuf {
        self.mounts.join(id)
    }

    fn image(&self, id: &str) -> PathBuf {
        self.images.join(format!("{id}.img"))
    }

    fn pool_marker(&self, id: &str) -> PathBuf {
        self.images.join("pool").join(id)
    }

    /// A filesystem of `gib` GiB for a task: from the warm pool when one of that size waits
    /// there (claimed by unlinking its marker, which exactly one claimer wins), else made now.
    pub fn acquire(&self, gib: u32) -> Result<String, EphemeralError> {
        for id in self.pool_ids() {
            let marker = self.pool_marker(&id);
            let size = fs::read_to_string(&marker)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            if size == Some(gib) && fs::remove_file(&marker).is_ok() {
                if self.mounted(&id) {
                    return Ok(id);
                }
                // Its mount is gone (the host rebooted): its image is of no use.
                let _ = self.remove(&id);
            }
        }
        self.create(gib)
    }

    /// Makes and mounts a new filesystem of `gib` GiB: a copy of the size's template (the
    /// blocks mkfs wrote, about 300 KB, the rest sparse), so only a size's first
    /// filesystem pays for a `mkfs.ext4` run.
    pub fn create(&self, gib: u32) -> Result<String, EphemeralError> {
        let id = crate::random_hex(16);
        let image = self.image(&id);
        let made = self.template(gib).and_then(|template| {
            sys::copy_sparse(&template, &image).map_err(io_ctx(format!("copying {}", template.display())))?;
            let target = self.path(&id);
            fs::create_dir(&target).map_err(io_ctx(format!("creating {}", target.display())))?;
            let (device, _hold) = sys::loop_attach(&image).map_err(io_ctx("attaching a loop device"))?;
            // The lazily initialised inode tables stay unwritten (they read as zeros from
            // the sparse image): no background zeroing of every new task's 20 GiB. No
            // flushes: a task's writable layer need not survive the host.
            sys::mount_device(&device, &target, "ext4", "noinit_itable,discard,nobarrier").map_err(io_ctx(format!(
                "mounting {} at {}",
                device.display(),
                target.display()
            )))
        });
        match made {
            Ok(()) => Ok(id),
            Err(e) => {
                let _ = self.remove(&id);
                Err(e)
            }
        }
    }

    /// The freshly formatted image every filesystem of `gib` GiB is copied from, made on
    /// first need. (The copies share its UUID and directory hash seed: each is a task's own.)
    fn template(&self, gib: u32) -> Result<PathBuf, EphemeralError> {
        let dir = self.images.join("templates");
        let template = dir.join(format!("{TEMPLATE_VERSION}-{gib}.img"));
        if template.exists() {
            return Ok(template);
        }
        fs::create_dir_all(&dir).map_err(io_ctx(format!("creating {}", dir.display())))?;
        let tmp = dir.join(format!(".{}.img", crate::random_hex(8)));
        let made = self
            .format(&tmp, gib)
            .and_then(|()| fs::rename(&tmp, &template).map_err(io_ctx("placing an ephemeral storage template")));
        if made.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        made.map(|()| template)
    }

    /// A sparse image of `gib` GiB with an ext4 filesystem: no journal (a task's writable
    /// layer does not outlive a host crash), no blocks reserved for root (the task's root
    /// must get exactly its size), none reserved for growing it (4 MB of a 20 GiB image
    /// otherwise), inode tables left for the kernel to treat as zeroed.
    fn format(&self, image: &Path, gib: u32) -> Result<(), EphemeralError> {
        let file = fs::File::create(image).map_err(io_ctx(format!("creating {}", image.display())))?;
        file.set_len(u64::from(gib) << 30)
            .map_err(io_ctx(format!("sizing {}", image.display())))?;
        drop(file);
        let out = Command::new(&self.mkfs)
            .args([
                "-q",
                "-F",
                "-m",
                "0",
                "-O",
                "^has_journal,^resize_inode",
                "-E",
                "lazy_itable_init=1,nodiscard",
            ])
            .arg(image)
            .output()
            .map_err(io_ctx(format!("running {}", self.mkfs.display())))?;
        if !out.status.success() {
            return Err(EphemeralError::Io {
                context: format!("formatting {}", image.display()),
                source: io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
            });
        }
        Ok(())
    }

    /// Unmounts filesystem `id` and deletes its image (idempotent). The loop device detaches
    /// itself once the filesystem is gone from every mount namespace.
    pub fn remove(&self, id: &str) -> Result<(), EphemeralError> {
        let target = self.path(id);
        match sys::umount(&target, libc::MNT_DETACH) {
            Err(e) if e.raw_os_error() != Some(libc::EINVAL) && e.kind() != io::ErrorKind::NotFound => {
                return Err(io_ctx(format!("unmounting {}", target.display()))(e));
            }
            _ => {}
        }
        for r in [fs::remove_dir(&target), fs::remove_file(self.image(id))] {
            if let Err(e) = r {
                if e.kind() != io::ErrorKind::NotFound {
                    return Err(io_ctx(format!("removing ephemeral storage {id}"))(e));
                }
            }
        }
        let _ = fs::remove_file(self.pool_marker(id));
        Ok(())
    }

    /// Whether filesystem `id` is mounted: its mount point is on another device than the
    /// directory it is in. (Writing to an unmounted one would write to the host's disk,
    /// unbounded.)
    pub fn mounted(&self, id: &str) -> bool {
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &Path| fs::metadata(p).map(|m| m.dev()).ok();
        let target = dev(&self.path(id));
        target.is_some() && target != dev(&self.mounts)
    }

    /// Bytes filesystem `id` holds in all and has in use.
    pub fn usage(&self, id: &str) -> Option<(u64, u64)> {
        self.mounted(id).then(|| sys::fs_usage(&self.path(id)).ok()).flatten()
    }

    fn pool_ids(&self) -> Vec<String> {
        list(&self.images.join("pool"))
    }

    /// Makes default-size filesystems until `size` wait in the pool. Returns how many.
    pub fn fill_pool(&self, size: usize) -> Result<usize, EphemeralError> {
        let mut added = 0;
        while self.pool_ids().len() < size {
            let id = self.create(DEFAULT_GIB)?;
            let tmp = self.images.join(format!(".{id}.pool"));
            fs::write(&tmp, DEFAULT_GIB.to_string())
                .and_then(|()| fs::rename(&tmp, self.pool_marker(&id)))
                .map_err(io_ctx("writing an ephemeral pool marker"))?;
            added += 1;
        }
        Ok(added)
    }

    /// Removes the pool's filesystems. Returns how many.
    pub fn drain_pool(&self) -> Result<usize, EphemeralError> {
        let mut n = 0;
        for id in self.pool_ids() {
            if fs::remove_file(self.pool_marker(&id)).is_ok() {
                self.remove(&id)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Crash recovery: removes every filesystem (mounted or only an image) neither in the
    /// pool nor vouched for by `live`. Returns how many.
    pub fn sweep(&self, live: impl Fn(&str) -> bool) -> Result<usize, EphemeralError> {
        let pooled = self.pool_ids();
        let mut ids: Vec<String> = list(&self.mounts);
        ids.extend(
            list(&self.images)
                .iter()
                .filter_map(|n| n.strip_suffix(".img").map(str::to_string)),
        );
        ids.sort();
        ids.dedup();
        let mut removed = 0;
        for id in ids {
            if is_id(&id) && !pooled.contains(&id) && !live(&id) {
                self.remove(&id)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Unmounts the directory's own bind mount (after `sweep` and `drain_pool`: a node's
    /// teardown).
    pub fn close(&self) -> Result<(), EphemeralError> {
        if crate::net::is_mount_point(&self.mounts) {
            sys::umount(&self.mounts, libc::MNT_DETACH).map_err(io_ctx("unmounting the ephemeral directory"))?;
        }
        Ok(())
    }
}

/// Whether `s` is a filesystem id as `create` draws them (16 hex digits; never a path).
pub fn is_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn list(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// `name` in PATH or the sbin directories (a root shell's PATH may lack them).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}
