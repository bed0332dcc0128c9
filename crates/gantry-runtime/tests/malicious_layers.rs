//! Hostile image layers: every escape is refused with an error naming the layer and the path,
//! and nothing is written outside the destination. Needs root (lchown, overlay whiteouts).

use gantry_runtime::image::unpack::{unpack_layer, UnpackError, UnpackLimits};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A raw tar entry: we write the header bytes ourselves, because honest tar builders refuse
/// to produce these paths.
fn entry(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, data: &[u8], mode: u32) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], v: u64| {
        let s = format!("{:0width$o}\0", v, width = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    };
    octal(&mut h[100..108], mode as u64);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], data.len() as u64);
    octal(&mut h[136..148], 0);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    if kind == b'3' || kind == b'4' {
        octal(&mut h[329..337], 8);
        octal(&mut h[337..345], 1);
    }
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn file(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    entry(out, name, b'0', "", data, 0o644);
}

fn finish(mut t: Vec<u8>) -> Vec<u8> {
    t.extend_from_slice(&[0u8; 1024]);
    t
}

struct Sandbox {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    dest: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "layer tests need root (CI runs as root)");
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let dest = root.join("store/layer");
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::create_dir_all(root.join("outside")).unwrap();
        Sandbox { _tmp: tmp, root, dest }
    }

    fn unpack(&self, tar: &[u8]) -> Result<(), UnpackError> {
        unpack_layer(
            tar,
            &self.dest,
            "sha256:test",
            UnpackLimits {
                max_bytes: 10 << 20,
                ..Default::default()
            },
        )
        .map(|_| ())
    }

    /// Everything under the sandbox root except the destination: must stay as created.
    fn outside_untouched(&self) {
        let mut seen = Vec::new();
        walk(&self.root, &mut seen);
        let stray: Vec<_> = seen
            .iter()
            .filter(|p| !p.starts_with(&self.dest) && !p.ends_with("store") && !p.ends_with("outside"))
            .collect();
        assert!(stray.is_empty(), "written outside the layer: {stray:?}");
        assert_eq!(
            std::fs::read_dir(self.root.join("outside")).unwrap().count(),
            0,
            "written into outside/"
        );
    }
}

fn walk(p: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(p).unwrap().flatten() {
        out.push(e.path());
        if e.file_type().unwrap().is_dir() {
            walk(&e.path(), out);
        }
    }
}

fn assert_refused(r: Result<(), UnpackError>, path: &str, reason: &str) {
    match r {
        Err(UnpackError::Refused {
            layer,
            path: p,
            reason: why,
        }) => {
            assert_eq!(layer, "sha256:test");
            assert_eq!(p, path);
            assert!(why.contains(reason), "reason {why:?} should mention {reason:?}");
            let msg = UnpackError::Refused {
                layer,
                path: p,
                reason: why,
            }
            .to_string();
            assert!(msg.starts_with("layer sha256:test: entry"), "{msg}");
        }
        other => panic!("expected refusal of {path}, got {other:?}"),
    }
}

#[test]
fn traversal_is_refused() {
    let s = Sandbox::new();
    let mut t = Vec::new();
    file(&mut t, "ok.txt", b"fine");
    file(&mut t, "a/../../outside/escape.txt", b"pwned");
    assert_refused(s.unpack(&finish(t)), "a/../../outside/escape.txt", "escapes the layer");
    s.outside_untouched();
}

#[test]
fn absolute_paths_are_refused() {
    let s = Sandbox::new();
    let mut t = Vec::new();
    let target = format!("{}/outside/abs.txt", s.root.display());
    file(&mut t, &target, b"pwned");
    assert_refused(s.unpack(&finish(t)), &target, "absolute path");
    s.outside_untouched();
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let s = Sandbox::new();
    let mut t = Vec::new();
    // An absolute symlink is legal (it resolves inside the container)...
    entry(
        &mut t,
        "evil",
        b'2',
        &format!("{}/outside", s.root.display()),
        b"",
        0o777,
    );
    // ...but the unpacker never follows it.
    file(&mut t, "evil/pwned", b"pwned");
    assert_refused(s.unpack(&finish(t)), "evil/pwned", "traverses the symlink");
    s.outside_untouched();
}

#[test]
fn symlinks_climbing_out_of_the_layer_are_refused() {
    let s = Sandbox::new();
    let mut t = Vec::new();
    entry(&mut t, "dir/up", b'2', "../../../../outside", b"", 0o777);
    assert_refused(s.unpack(&finish(t)), "dir/up", "escapes the layer");
    s.outside_untouched();
}

#[test]
fn hardlink_escapes_are_refused() {
    for (target, reason) in [
        ("../outside/x", "escapes the layer"),
        ("/etc/passwd", "escapes the layer"),
        ("missing", "not in this layer"),
    ] {
        let s = Sandbox::new();
        let mut t = Vec::new();
        entry(&mut t, "hl", b'1', target, b"", 0o644);
        assert_refused(s.unpack(&finish(t)), "hl", reason);
        s.outside_untouched();
    }
    // A hardlink through a symlinked directory is refused too.
    let s = Sandbox::new();
    std::fs::write(s.root.join("outside/secret"), "x").unwrap();
    let mut t = Vec::new();
    entry(&mut t, "d", b'2', &format!("{}/outside", s.root.display()), b"", 0o777);
    entry(&mut t, "hl", b'1', "d/secret", b"", 0o644);
    assert_refused(s.unpack(&finish(t)), "hl", "traverses the symlink");
    std::fs::remove_file(s.root.join("outside/secret")).unwrap();
    s.outside_untouched();
}

#[test]
fn device_nodes_are_refused() {
    for kind in [b'3', b'4'] {
        let s = Sandbox::new();
        let mut t = Vec::new();
        entry(&mut t, "dev/sda", kind, "", b"", 0o600);
        assert_refused(s.unpack(&finish(t)), "dev/sda", "device nodes");
        s.outside_untouched();
    }
}

#[test]
fn decompression_bombs_hit_the_cap() {
    let s = Sandbox::new();
    // 64 MiB of zeros compresses to ~64 KiB; the cap is 10 MiB.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut t = Vec::new();
    entry(&mut t, "bomb", b'0', "", &[], 0o644);
    let size = 64u64 << 20;
    let s_oct = format!("{size:011o}\0");
    t[124..136].copy_from_slice(s_oct.as_bytes());
    // Recompute the checksum after changing the size.
    t[148..156].copy_from_slice(b"        ");
    let sum: u32 = t[..512].iter().map(|b| *b as u32).sum();
    t[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    gz.write_all(&t).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        gz.write_all(&zeros).unwrap();
    }
    gz.write_all(&[0u8; 1024]).unwrap();
    let data = gz.finish().unwrap();
    assert!(data.len() < 1 << 20);
    match s.unpack(&data) {
        Err(e @ UnpackError::TooLarge { .. }) => {
            assert!(e.to_string().contains("exceeds the limit of 10485760 bytes"), "{e}")
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    s.outside_untouched();
}

#[test]
fn malformed_archives_fail_cleanly() {
    let s = Sandbox::new();
    let mut t = Vec::new();
    file(&mut t, "ok", b"data");
    t[148] = b'9'; // corrupt the checksum
    assert!(matches!(s.unpack(&finish(t)), Err(UnpackError::Io { .. })));
    // Truncated gzip.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut t = Vec::new();
    file(&mut t, "ok", &vec![7u8; 100_000]);
    gz.write_all(&finish(t)).unwrap();
    let data = gz.finish().unwrap();
    assert!(s.unpack(&data[..data.len() / 2]).is_err());
    s.outside_untouched();
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let s = Sandbox::new();
    let mut t = Vec::new();
    entry(&mut t, "dir/", b'5', "", b"", 0o755);
    file(&mut t, "dir/.wh..wh..opq", b"");
    file(&mut t, ".wh.gone", b"");
    entry(&mut t, "setuid", b'0', "", b"#!", 0o4755);
    let zstd = zstd::encode_all(&finish(t)[..], 3).unwrap();
    s.unpack(&zstd).unwrap();
    let m = std::fs::symlink_metadata(s.dest.join("gone")).unwrap();
    assert!(m.file_type().is_char_device() && m.rdev() == 0, "0/0 char device");
    let mut buf = [0u8; 8];
    let name = std::ffi::CString::new(s.dest.join("dir").to_str().unwrap()).unwrap();
    // SAFETY: valid path and buffer.
    let n = unsafe {
        libc::lgetxattr(
            name.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(&buf[..n.max(0) as usize], b"y");
    assert_eq!(
        std::fs::metadata(s.dest.join("setuid")).unwrap().mode() & 0o7777,
        0o4755,
        "modes kept"
    );
}

/// A file owned by `uid`:`gid`, written by the tar crate (honest ids, for the id shift).
fn owned(name: &str, uid: u64, gid: u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_cksum();
    b.append_data(&mut h, name, &b"x"[..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn with_user_namespaces_owners_move_into_the_range_and_others_are_refused() {
    use std::os::unix::fs::MetadataExt;
    let s = Sandbox::new();
    let shifted = UnpackLimits {
        id_base: Some(1_000_000),
        ..Default::default()
    };
    unpack_layer(&owned("etc/shadow", 0, 42)[..], &s.dest, "sha256:test", shifted).unwrap();
    let m = std::fs::metadata(s.dest.join("etc/shadow")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1_000_000, 1_000_042));
    // The parent the layer did not list is made for the task's root too.
    let d = std::fs::metadata(s.dest.join("etc")).unwrap();
    assert_eq!((d.uid(), d.gid()), (1_000_000, 1_000_000));
    let r = unpack_layer(&owned("far", 70_000, 0)[..], &s.dest, "sha256:test", shifted);
    assert_refused(r.map(|_| ()), "far", "owner ids out of range");
    s.outside_untouched();
}
