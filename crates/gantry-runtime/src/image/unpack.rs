//! Safe layer unpacking into a directory usable as an overlayfs lower layer.
//!
//! Every entry is checked before anything is written: no absolute paths, no `..`, no writing
//! through a symlink (each parent component must be a real directory, checked with lstat), no
//! symlink or hardlink that points outside the layer, no device nodes, and a cap on the bytes
//! decompressed (decompression bombs). OCI whiteouts become overlayfs whiteouts: `.wh.NAME`
//! becomes a 0/0 character device, `.wh..wh..opq` the `trusted.overlay.opaque` xattr.

use crate::digest::{Digest, HashingReader};
use crate::sys;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    /// Maximum bytes of uncompressed tar stream per layer.
    pub max_bytes: u64,
    /// With user namespaces: the host id a layer's uid and gid 0 become; the layer's ids
    /// must then be below `IDS_PER_TASK`, the size of a task's id range.
    pub id_base: Option<u32>,
}

/// The ids a task's user namespace maps (0 to 65535, as Docker's userns-remap).
pub const IDS_PER_TASK: u32 = 65_536;

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: 16 << 30,
            id_base: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer {layer}: entry {path:?} refused: {reason}")]
    Refused {
        layer: String,
        path: String,
        reason: String,
    },
    #[error("layer {layer}: uncompressed size exceeds the limit of {limit} bytes (decompression bomb?)")]
    TooLarge { layer: String, limit: u64 },
    #[error("layer {layer}: uncompressed digest {actual} does not match the image config's diff_id {expected}")]
    DiffIdMismatch {
        layer: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("layer {layer}: {source}")]
    Io { layer: String, source: io::Error },
}

/// Errors out once more than `limit` bytes have been read.
struct CappedReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.remaining {
            return Err(io::Error::other(CapExceeded));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[derive(Debug)]
struct CapExceeded;
impl std::fmt::Display for CapExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("size cap exceeded")
    }
}
impl std::error::Error for CapExceeded {}

/// Picks the decompressor from the stream's magic bytes: media types lie more often than
/// magic numbers do (docker save archives hold plain tars under gzip-looking names).
pub fn decompressed<'a, R: Read + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::with_capacity(256 * 1024, reader);
    let head = br.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(br)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(br)?))
    } else {
        Ok(Box::new(br))
    }
}

/// Unpacks one (possibly compressed) layer tar into `dest`, which must exist and be empty.
/// Returns the digest of the uncompressed tar (the layer's diff_id).
pub fn unpack_layer(reader: impl Read, dest: &Path, layer: &str, limits: UnpackLimits) -> Result<Digest, UnpackError> {
    let io_err = |source: io::Error| {
        if source.get_ref().is_some_and(|e| e.is::<CapExceeded>()) {
            UnpackError::TooLarge {
                layer: layer.to_string(),
                limit: limits.max_bytes,
            }
        } else {
            UnpackError::Io {
                layer: layer.to_string(),
                source,
            }
        }
    };
    let plain = decompressed(reader).map_err(io_err)?;
    let hashing = HashingReader::new(CappedReader {
        inner: plain,
        remaining: limits.max_bytes,
    });
    let mut archive = tar::Archive::new(hashing);
    let mut u = Unpacker {
        dest,
        layer,
        id_base: limits.id_base,
    };
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        u.entry(&mut entry).map_err(|e| match e {
            EntryError::Refused { path, reason } => UnpackError::Refused {
                layer: layer.to_string(),
                path,
                reason,
            },
            EntryError::Io(e) => io_err(e),
        })?;
    }
    // Drain the end-of-archive padding so the digest covers the whole stream.
    let mut hashing = archive.into_inner();
    io::copy(&mut hashing, &mut io::sink()).map_err(io_err)?;
    let (digest, _, _) = hashing.finish();
    Ok(digest)
}

enum EntryError {
    Refused { path: String, reason: String },
    Io(io::Error),
}

impl From<io::Error> for EntryError {
    fn from(e: io::Error) -> Self {
        EntryError::Io(e)
    }
}

struct Unpacker<'a> {
    dest: &'a Path,
    #[allow(dead_code)]
    layer: &'a str,
    id_base: Option<u32>,
}

/// Normalises an archive path to a relative path with only normal components, or None if it is
/// absolute or climbs with `..`. `./` prefixes and `.` components are dropped.
pub fn clean_relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) | Component::ParentDir => return None,
        }
    }
    Some(out)
}

/// True if a relative symlink target, resolved lexically from `link_dir` (relative to the layer
/// root), stays inside the root. Absolute targets are resolved inside the container's root by
/// the kernel after pivot_root, so they are fine.
fn symlink_stays_inside(link_dir: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return true;
    }
    let mut depth: i64 = link_dir.components().count() as i64;
    for c in target.components() {
        match c {
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    true
}

impl Unpacker<'_> {
    /// The host ids of a layer's owner ids: as they are, or moved into the user namespace
    /// range (None when they do not fit it).
    fn shifted(&self, uid: u64, gid: u64) -> Option<(u32, u32)> {
        let fits = |id: u64| u32::try_from(id).ok();
        match self.id_base {
            None => Some((fits(uid)?, fits(gid)?)),
            Some(base) => {
                let inside = |id: u64| (id < u64::from(IDS_PER_TASK)).then(|| base + id as u32);
                Some((inside(uid)?, inside(gid)?))
            }
        }
    }

    fn refuse<T>(&self, path: &Path, reason: impl Into<String>) -> Result<T, EntryError> {
        Err(EntryError::Refused {
            path: path.display().to_string(),
            reason: reason.into(),
        })
    }

    /// Makes sure every parent directory of `rel` exists as a real directory (never a symlink),
    /// creating missing ones.
    fn ensure_parents(&self, rel: &Path) -> Result<(), EntryError> {
        let mut cur = self.dest.to_path_buf();
        let parent = rel.parent().unwrap_or(Path::new(""));
        for c in parent.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return self.refuse(rel, format!("path traverses the symlink {:?}", c.as_os_str()));
                }
                Ok(_) => {
                    return self.refuse(rel, format!("parent {:?} is not a directory", c.as_os_str()));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&cur)?;
                    // A directory the layer does not list is its root's: the task's root.
                    if let Some(base) = self.id_base {
                        sys::lchown(&cur, base, base)?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Checks, without creating anything, that every parent of `rel` is a real directory.
    fn existing_real_dirs(&self, rel: &Path) -> Result<(), String> {
        let mut cur = self.dest.to_path_buf();
        for c in rel.parent().unwrap_or(Path::new("")).components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(format!("traverses the symlink {:?}", c.as_os_str()))
                }
                _ => return Err("is not in this layer".into()),
            }
        }
        Ok(())
    }

    /// Removes whatever is at `full` unless it is a directory we are about to reuse.
    fn clear(full: &Path, keep_dir: bool) -> io::Result<()> {
        match fs::symlink_metadata(full) {
            Ok(m) if m.is_dir() => {
                if keep_dir {
                    Ok(())
                } else {
                    fs::remove_dir_all(full)
                }
            }
            Ok(_) => fs::remove_file(full),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<(), EntryError> {
        let raw = entry.path()?.into_owned();
        let Some(rel) = clean_relative(&raw) else {
            return self.refuse(&raw, "absolute path or '..' component escapes the layer");
        };
        if rel.as_os_str().is_empty() {
            return Ok(()); // the root directory itself
        }
        self.ensure_parents(&rel)?;
        let full = self.dest.join(&rel);
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode()? & 0o7777;
        let (uid, gid) = match self.shifted(header.uid()?, header.gid()?) {
            Some(ids) => ids,
            None => return self.refuse(&rel, "owner ids out of range (with user namespaces, 0 to 65535)"),
        };

        if let Some(hidden) = name.strip_prefix(".wh.") {
            let parent = full.parent().expect("rel has a file name");
            if hidden == ".wh..opq" {
                sys::lsetxattr(parent, "trusted.overlay.opaque", b"y")?;
            } else if hidden.is_empty() || hidden == "." || hidden == ".." {
                return self.refuse(&rel, "malformed whiteout");
            } else {
                let target = parent.join(hidden);
                Self::clear(&target, false)?;
                sys::mknod_whiteout(&target)?;
            }
            return Ok(());
        }

        match kind {
            tar::EntryType::Directory => {
                Self::clear(&full, true)?;
                if !full.is_dir() {
                    fs::create_dir(&full)?;
                }
                fs::set_permissions(&full, fs::Permissions::from_mode(mode))?;
                sys::lchown(&full, uid, gid)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                Self::clear(&full, false)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&full)?;
                io::copy(entry, &mut f)?;
                sys::lchown(&full, uid, gid)?;
                // chmod after chown: chown clears setuid bits.
                fs::set_permissions(&full, fs::Permissions::from_mode(mode))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| io::Error::other("symlink without target"))?
                    .into_owned();
                let dir = rel.parent().unwrap_or(Path::new(""));
                if !symlink_stays_inside(dir, &target) {
                    return self.refuse(&rel, format!("symlink target {target:?} escapes the layer"));
                }
                Self::clear(&full, false)?;
                std::os::unix::fs::symlink(&target, &full)?;
                sys::lchown(&full, uid, gid)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| io::Error::other("hardlink without target"))?
                    .into_owned();
                let Some(trel) = clean_relative(&target) else {
                    return self.refuse(&rel, format!("hardlink target {target:?} escapes the layer"));
                };
                if let Err(why) = self.existing_real_dirs(&trel) {
                    return self.refuse(&rel, format!("hardlink target {target:?} {why}"));
                }
                let tfull = self.dest.join(&trel);
                match fs::symlink_metadata(&tfull) {
                    Ok(m) if m.is_file() => {}
                    Ok(_) => return self.refuse(&rel, format!("hardlink target {target:?} is not a regular file")),
                    Err(_) => return self.refuse(&rel, format!("hardlink target {target:?} is not in this layer")),
                }
                Self::clear(&full, false)?;
                fs::hard_link(&tfull, &full)?;
            }
            tar::EntryType::Fifo => {
                Self::clear(&full, false)?;
                sys::mkfifo(&full, mode)?;
                sys::lchown(&full, uid, gid)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return self.refuse(&rel, "device nodes are not allowed in image layers");
            }
            // pax/GNU long-name headers are consumed by the tar crate before we see entries.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => return self.refuse(&rel, format!("unsupported tar entry type {other:?}")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_relative_rejects_escapes() {
        assert_eq!(clean_relative(Path::new("./a/b")), Some(PathBuf::from("a/b")));
        assert_eq!(clean_relative(Path::new("/etc/passwd")), None);
        assert_eq!(clean_relative(Path::new("a/../../b")), None);
    }

    #[test]
    fn symlink_containment() {
        assert!(symlink_stays_inside(Path::new("bin"), Path::new("busybox")));
        assert!(symlink_stays_inside(Path::new("usr/bin"), Path::new("../../bin/sh")));
        assert!(!symlink_stays_inside(Path::new("usr/bin"), Path::new("../../../etc")));
        assert!(symlink_stays_inside(Path::new(""), Path::new("/etc/passwd")));
    }
}
