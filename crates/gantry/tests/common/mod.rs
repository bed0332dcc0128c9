//! Shared harness for the root-needing node tests: a private node (own data dir, bridge and
//! subnet) with the busybox fixture image loaded, torn down on drop even when a test fails.
//! Missing prerequisites fail loudly: these tests must never skip in CI.
#![allow(dead_code)]

pub mod registry;

use gantry_runtime::bundle::{ContainerSpec, Limits};
use gantry_runtime::image::registry::RegistryConfig;
use gantry_runtime::image::{ImageRecord, ImageStoreConfig, UnpackLimits};
use gantry_runtime::net::NetworkConfig;
use gantry_runtime::oci::RuntimeKind;
use gantry_runtime::shim::parse_log_line;
use gantry_runtime::task::{new_task_id, ContainerState, Node, NodeConfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn require_prerequisites() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "node tests need root (CI runs as root); run them with sudo"
    );
    for bin in ["crun", "python3", "ip"] {
        assert!(
            gantry_runtime::oci::find_in_path(bin).is_some(),
            "{bin} is not installed: run scripts/install-deps.sh"
        );
    }
    assert!(
        Path::new("/bin/busybox").is_file(),
        "busybox-static is not installed: run scripts/install-deps.sh"
    );
    assert!(
        shim_binary().is_file(),
        "gantry-shim is not built: run `cargo build --workspace` first"
    );
}

pub fn gantry_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gantry"))
}

pub fn shim_binary() -> PathBuf {
    gantry_binary().with_file_name("gantry-shim")
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the busybox fixture image into `out` (OCI layout in out/oci, docker save in
/// out/docker.tar) with extra mkimage.py arguments.
pub fn build_image(out: &Path, args: &[&str]) -> PathBuf {
    let st = Command::new("python3")
        .arg(repo_root().join("tests/fixtures/mkimage.py"))
        .arg(out)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running mkimage.py");
    assert!(st.success(), "mkimage.py failed");
    out.join("oci")
}

pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub cfg: NodeConfig,
    pub node: Node,
    pub image: ImageRecord,
}

impl TestNode {
    pub fn new() -> TestNode {
        Self::with_runtime(RuntimeKind::Crun)
    }

    pub fn with_runtime(runtime: RuntimeKind) -> TestNode {
        Self::build(runtime, false)
    }

    /// A node whose bridge filters tasks' traffic by security group (`Network::security_groups`).
    pub fn with_security_groups() -> TestNode {
        Self::build(RuntimeKind::Crun, true)
    }

    fn build(runtime: RuntimeKind, security_groups: bool) -> TestNode {
        require_prerequisites();
        assert!(
            gantry_runtime::oci::find_in_path(runtime.binary()).is_some(),
            "{} is not installed: run scripts/install-deps.sh",
            runtime.binary()
        );
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id() % 10000;
        let dir = tempfile::Builder::new()
            .prefix("gantry-test-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let cfg = NodeConfig {
            data_dir: dir.path().join("data"),
            run_dir: dir.path().join("run"),
            runtime,
            shim_binary: shim_binary(),
            images: ImageStoreConfig {
                root: dir.path().join("data/images"),
                limits: UnpackLimits::default(),
                registry: RegistryConfig::default(),
            },
            network: NetworkConfig {
                bridge: format!("gt{pid}x{n}"),
                subnet: format!("10.214.{}.0/24", (pid % 25) * 10 + n % 10).parse().unwrap(),
                netns_dir: dir.path().join("run/netns"),
                state_dir: dir.path().join("data/network"),
                node_resolver: false,
                namespace_rules: None,
                security_groups,
            },
        };
        let node = Node::open(cfg.clone()).expect("opening node");
        let img_dir = dir.path().join("img");
        let layout = build_image(&img_dir, &[]);
        let image = node.images().load(&layout, None).expect("loading fixture").remove(0);
        TestNode { dir, cfg, node, image }
    }

    pub fn load(&self, name: &str, args: &[&str]) -> ImageRecord {
        let out = self
            .dir
            .path()
            .join(format!("img-{}", COUNTER.fetch_add(1, Ordering::SeqCst)));
        let mut a = vec!["--name", name];
        a.extend_from_slice(args);
        let layout = build_image(&out, &a);
        self.node.images().load(&layout, None).expect("loading image").remove(0)
    }

    /// Starts a one-container task; returns its id.
    pub fn start(&self, image: &ImageRecord, spec: ContainerSpec, stop_timeout: Duration) -> String {
        let task = new_task_id();
        self.node.create_task(&task, &task[..12]).expect("create task");
        if let Err(e) = self.node.start_container(&task, "main", image, &spec, stop_timeout) {
            let _ = self.node.remove_task(&task);
            panic!("start failed: {e}");
        }
        task
    }

    pub fn logs(&self, task: &str) -> (String, String) {
        let data = std::fs::read(self.node.log_path(task, "main")).unwrap_or_default();
        let (mut out, mut err) = (String::new(), String::new());
        for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let l = parse_log_line(line).expect("well-formed log record");
            let s = if l.stream == "stderr" { &mut err } else { &mut out };
            s.push_str(&String::from_utf8_lossy(l.content));
            if !l.partial {
                s.push('\n');
            }
        }
        (out, err)
    }

    /// Waits until the task's stdout contains `needle` (e.g. a trap is installed).
    pub fn wait_for_output(&self, task: &str, needle: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.logs(task).0.contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "task {task} never printed {needle:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn wait(&self, task: &str, secs: u64) -> gantry_runtime::shim::ContainerExit {
        match self.node.wait_container(task, "main", Some(Duration::from_secs(secs))) {
            Some(ContainerState::Exited(e)) => e,
            other => panic!("task {task} did not exit within {secs}s: {other:?}"),
        }
    }

    /// Stops a task's main container, waits for it to exit and removes the task.
    pub fn stop_and_remove(&self, task: &str) {
        self.node.stop_container(task, "main");
        self.wait(task, 10);
        self.node.remove_task(task).unwrap();
    }

    /// Runs a command to completion in a fresh task: (exit, stdout, stderr).
    pub fn run(
        &self,
        image: &ImageRecord,
        spec: ContainerSpec,
    ) -> (gantry_runtime::shim::ContainerExit, String, String) {
        let task = self.start(image, spec, Duration::from_secs(10));
        let exit = self.wait(&task, 60);
        let (o, e) = self.logs(&task);
        self.node.remove_task(&task).expect("remove task");
        (exit, o, e)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.node.sweep(|_| false);
        let _ = self.node.drain_pools();
        let _ = self.node.network().teardown();
        let _ = self.node.remove_mount_template();
        let _ = self.node.ephemeral().close();
        let netns = self.cfg.network.netns_dir.clone();
        let _ = Command::new("umount")
            .arg(&netns)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

pub fn sh(cmd: &str) -> ContainerSpec {
    ContainerSpec {
        command: Some(vec!["sh".into(), "-c".into(), cmd.into()]),
        hostname: "test".into(),
        ..Default::default()
    }
}

pub fn sh_limited(cmd: &str, limits: Limits) -> ContainerSpec {
    ContainerSpec { limits, ..sh(cmd) }
}

/// Loop devices whose backing file is under `dir` (a task's ephemeral storage).
pub fn loop_devices_backed_by(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().to_string();
    std::fs::read_dir("/sys/block")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join("loop/backing_file")).ok())
                .map(|f| f.trim().to_string())
                .filter(|f| f.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}
