//! The seccomp program Gantry compiles (and hands crun in `run.oci.seccomp_bpf_data`) is the
//! one crun compiles from the same profile: two real crun containers, one given the profile
//! only and one given the annotation too, and the filter each has installed read back from
//! the kernel (PTRACE_SECCOMP_GET_FILTER). Root, crun and busybox, as the node needs.

use gantry_runtime::bundle::{capability_set, seccomp};
use gantry_runtime::seccomp_bpf;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;

/// A bundle running busybox `sleep` under `profile` (and the annotation, if given).
fn bundle(dir: &Path, profile: &Value, annotation: Option<&str>) {
    let rootfs = dir.join("rootfs/bin");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("busybox")).expect("busybox-static is installed");
    std::os::unix::fs::symlink("busybox", rootfs.join("sleep")).unwrap();
    let ok = Command::new("crun").arg("spec").current_dir(dir).status().unwrap();
    assert!(ok.success(), "crun spec");
    let path = dir.join("config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cfg["process"]["args"] = serde_json::json!(["/bin/sleep", "60"]);
    cfg["process"]["terminal"] = Value::Bool(false);
    cfg["linux"]["seccomp"] = profile.clone();
    if let Some(a) = annotation {
        cfg["annotations"] = serde_json::json!({ seccomp_bpf::ANNOTATION: a });
    }
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
}

/// Deletes the container however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("crun").args(["delete", "-f", &self.0]).output();
    }
}

/// Starts the bundle detached (in a mount namespace without the hybrid host's cgroup2
/// mount, which crun refuses) and returns the container and its process.
fn start(dir: &Path, id: &str) -> (Container, i32) {
    let script = format!(
        "umount -l /sys/fs/cgroup/unified 2>/dev/null; exec crun run --detach --bundle {} {id}",
        dir.display()
    );
    // The container's stdio is not ours to wait on: it would hold a pipe open for its life.
    let null = std::process::Stdio::null;
    let status = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .stdin(null())
        .stdout(null())
        .stderr(null())
        .status()
        .unwrap();
    let c = Container(id.to_string());
    assert!(status.success(), "crun run {id} failed");
    let state = Command::new("crun").args(["state", id]).output().unwrap();
    let state: Value = serde_json::from_slice(&state.stdout).expect("crun state");
    let pid = state["pid"].as_i64().expect("a pid") as i32;
    // Running `sleep` means the filter is in place (it is loaded just before the exec).
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default() != "sleep\n" {
        assert!(Instant::now() < deadline, "the container never ran sleep");
        std::thread::sleep(Duration::from_millis(10));
    }
    (c, pid)
}

/// The process's (one) seccomp filter, as the kernel holds it.
fn installed_filter(pid: i32) -> Vec<u8> {
    // SAFETY: ptrace on a process of our own making, waited for, read, then detached.
    unsafe {
        assert_eq!(libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0), 0, "attach");
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, libc::__WALL), pid);
        let n = libc::ptrace(PTRACE_SECCOMP_GET_FILTER, pid, 0, std::ptr::null_mut::<libc::c_void>());
        assert!(n > 0, "no filter: {}", std::io::Error::last_os_error());
        let mut buf = vec![0u8; n as usize * 8];
        let got = libc::ptrace(PTRACE_SECCOMP_GET_FILTER, pid, 0, buf.as_mut_ptr());
        assert_eq!(got, n);
        libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
        buf
    }
}

#[test]
fn the_program_gantry_compiles_is_the_one_crun_compiles() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    for caps in [capability_set(&[], &[]), capability_set(&["SYS_ADMIN".into()], &[])] {
        let profile = seccomp(&caps);
        let ours = seccomp_bpf::compile(&profile).expect("libseccomp.so.2 is installed with crun");
        let encoded = seccomp_bpf::annotation(&profile).unwrap();
        let work = tempfile::tempdir_in("/var/tmp").unwrap();
        let id = |what: &str| format!("gantry-test-bpf-{}-{what}", std::process::id());
        let (by_crun, by_gantry) = (work.path().join("crun"), work.path().join("gantry"));
        bundle(&by_crun, &profile, None);
        bundle(&by_gantry, &profile, Some(&encoded));
        let (_a, crun_pid) = start(&by_crun, &id("crun"));
        let (_b, gantry_pid) = start(&by_gantry, &id("gantry"));
        let crun_filter = installed_filter(crun_pid);
        assert_eq!(crun_filter, ours, "crun compiled another program from the profile");
        assert_eq!(
            installed_filter(gantry_pid),
            ours,
            "crun loaded another program than the annotation's"
        );
    }
}
