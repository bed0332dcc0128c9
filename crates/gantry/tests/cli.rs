//! The `gantry` binary: image load/ls/rm/gc and `debug run`, as a user drives them.

mod common;

use common::*;
use std::process::{Command, Output};

struct Cli {
    dir: tempfile::TempDir,
    bridge: String,
}

impl Cli {
    fn new() -> Cli {
        require_prerequisites();
        let dir = tempfile::Builder::new()
            .prefix("gantry-cli-")
            .tempdir_in("/var/tmp")
            .unwrap();
        Cli {
            dir,
            bridge: format!("gc{}", std::process::id() % 100000),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(gantry_binary())
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--run-dir")
            .arg(self.dir.path().join("run"))
            .args(["--bridge", &self.bridge, "--subnet", "10.215.7.0/24"])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        // --all: also the warm pool, the bridge and its firewall table.
        let _ = self.run(&["debug", "sweep", "--all"]);
        let _ = Command::new("umount")
            .arg(self.dir.path().join("run/netns"))
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[test]
fn load_run_rm_gc() {
    let c = Cli::new();
    build_image(&c.dir.path().join("img"), &["--name", "example.com/demo/app:1.0"]);
    let tar = c.dir.path().join("img/docker.tar");
    let out = c.run(&["image", "load", tar.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("example.com/demo/app:1.0 sha256:"));
    let ls = text(&c.run(&["image", "ls"]).stdout);
    assert!(ls.contains("example.com/demo/app:1.0"), "{ls}");

    let out = c.run(&[
        "debug",
        "run",
        "--image",
        "example.com/demo/app:1.0",
        "-e",
        "X=42",
        "--",
        "sh",
        "-c",
        "echo x=$X; echo err >&2; exit 9",
    ]);
    assert_eq!(
        out.status.code(),
        Some(9),
        "exit code passes through: {}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "x=42\n");
    assert!(text(&out.stderr).contains("err\n"));
    let out = c.run(&[
        "debug",
        "run",
        "--image",
        "example.com/demo/app:1.0",
        "--memory",
        "16",
        "--",
        "sh",
        "-c",
        "x=$(head -c 100000000 /dev/zero | tr '\\0' a)",
    ]);
    assert_eq!(out.status.code(), Some(137));
    assert!(text(&out.stderr).contains("out of memory"), "{}", text(&out.stderr));
    let out = c.run(&["debug", "run", "--image", "nope/missing:1", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).starts_with("gantry: "), "{}", text(&out.stderr));

    let images = c.dir.path().join("data/images");
    assert!(std::fs::read_dir(images.join("layers")).unwrap().count() == 2);
    let out = c.run(&["image", "rm", "example.com/demo/app:1.0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = c.run(&["image", "gc"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("blobs and 2 layers"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(std::fs::read_dir(images.join("layers")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(images.join("blobs/sha256")).unwrap().count(), 0);
}

#[test]
fn a_malicious_archive_is_refused_by_name_and_nothing_is_kept() {
    let c = Cli::new();
    // A docker save archive whose single layer climbs out with '..'.
    let mut layer = Vec::new();
    {
        let mut h = tar::Header::new_gnu();
        let name = b"../../../../tmp/gantry-pwned";
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_size(5);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        layer.extend_from_slice(h.as_bytes());
        layer.extend_from_slice(b"pwned");
        layer.resize(1024 + 1024, 0);
    }
    let layer_hex = gantry_runtime::digest::Digest::of_bytes(&layer).hex().to_string();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["true"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{layer_hex}"]}}}}"#
    );
    let manifest = r#"[{"Config":"config.json","RepoTags":["evil/app:1"],"Layers":["layer.tar"]}]"#;
    let archive = c.dir.path().join("evil.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    for (name, data) in [
        ("config.json", config.as_bytes()),
        ("manifest.json", manifest.as_bytes()),
        ("layer.tar", &layer[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    }
    b.finish().unwrap();
    drop(b);

    let out = c.run(&["image", "load", archive.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("layer sha256:{layer_hex}")) && err.contains("../../../../tmp/gantry-pwned"),
        "{err}"
    );
    assert!(!std::path::Path::new("/tmp/gantry-pwned").exists());
    assert!(!text(&c.run(&["image", "ls"]).stdout).contains("evil"));
    let images = c.dir.path().join("data/images");
    assert_eq!(
        std::fs::read_dir(images.join("layers")).unwrap().count(),
        0,
        "no half-unpacked layer"
    );
    assert_eq!(std::fs::read_dir(images.join("tmp")).unwrap().count(), 0);
}
