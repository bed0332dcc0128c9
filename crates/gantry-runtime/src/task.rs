//! Tasks on a node: a sandbox (network namespace) shared by one or more containers, each run
//! by its own gantry-shim. Everything a task owns lives under `<data>/tasks/<task-id>/`, so
//! recovery after a crash is a walk over that directory.

use crate::bundle::{self, BundleError, ContainerSpec, VolumeMount};
use crate::cgroup::{self, CgroupStats};
use crate::ephemeral::{EphemeralError, EphemeralStore};
use crate::image::{ImageError, ImageRecord, ImageStore, ImageStoreConfig};
use crate::net::{Network, NetworkConfig, NetworkError, Sandbox, SandboxKind};
use crate::oci::{CliRuntime, Runtime, RuntimeKind};
use crate::shim::{self, ContainerExit, ShimSpec, ShimStarted};
use crate::sys;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// In a task's directory: the id of its ephemeral storage filesystem.
const EPHEMERAL_FILE: &str = "ephemeral";

/// Parent cgroup of every container Gantry runs.
pub const CGROUP_PARENT: &str = "/gantry";

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub runtime: RuntimeKind,
    pub shim_binary: PathBuf,
    pub images: ImageStoreConfig,
    pub network: NetworkConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Ephemeral(#[from] EphemeralError),
    #[error("container {id} failed to start: {message}")]
    Start { id: String, message: String },
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> TaskError {
    let context = context.into();
    move |source| TaskError::Io { context, source }
}

/// On a task's ephemeral storage, the directory of its volumes (a container's directory
/// there never starts with a dot: `validate_name`).
const VOLUMES_ON_STORAGE: &str = ".volumes";

/// A volume name as task definitions allow it; it names a directory.
fn valid_volume_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Names that become path components and runtime ids: short, lowercase, no separators.
pub fn validate_name(what: &'static str, s: &str) -> Result<(), TaskError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && s.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(TaskError::Invalid {
            what,
            value: s.to_string(),
            reason: "must be 1-64 of [a-z0-9_-], starting with a letter or digit",
        })
    }
}

pub fn new_task_id() -> String {
    crate::random_hex(32)
}

pub struct Node {
    cfg: NodeConfig,
    images: ImageStore,
    network: Network,
    /// Each task's writable layers, on a filesystem of the task's size.
    ephemeral: EphemeralStore,
    /// The shims' template mount namespace, made on the first start (None: it could not be,
    /// and shims copy the node's namespace instead).
    mount_template: std::sync::OnceLock<Option<PathBuf>>,
    /// Whether a task's creation starts the wait of its containers' cgroup moves
    /// (`cgroup::prime_attach`); on, except where the benchmark measures what it saves.
    prime_moves: std::sync::atomic::AtomicBool,
    /// The host's cgroup2 mounts the runtime must not see (`oci::hybrid_cgroup2_mounts`),
    /// read once: the mount table grows by a few lines per task.
    hide_from_runtime: Vec<PathBuf>,
}

/// A container as its shim reports it.
#[derive(Debug)]
pub enum ContainerState {
    Running(ShimStarted),
    Exited(ContainerExit),
    /// The shim is gone without recording an exit (killed, or the node crashed).
    Lost,
}

impl Node {
    pub fn open(cfg: NodeConfig) -> Result<Node, TaskError> {
        for d in [cfg.data_dir.join("tasks"), cfg.run_dir.join("runtime")] {
            fs::create_dir_all(&d).map_err(io_ctx(format!("creating {}", d.display())))?;
            spread_subdirectories(&d);
        }
        let images = ImageStore::open(cfg.images.clone())?;
        let network = Network::new(cfg.network.clone())?;
        let ephemeral = EphemeralStore::open(&cfg.data_dir)?;
        if let Err(e) = cgroup::prepare_cpuset_parent(CGROUP_PARENT) {
            // Only a cost: the runtime fills each container's cpuset itself.
            tracing::warn!(error = %e, "cpuset children will not inherit their parent's CPUs");
        }
        Ok(Node {
            cfg,
            images,
            network,
            ephemeral,
            mount_template: std::sync::OnceLock::new(),
            prime_moves: std::sync::atomic::AtomicBool::new(true),
            hide_from_runtime: crate::oci::hybrid_cgroup2_mounts(),
        })
    }

    /// Turns the head start of cgroup moves off or on (`debug bench` compares the two).
    pub fn set_prime_cgroup_moves(&self, on: bool) {
        self.prime_moves.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The head start of this start's cgroup moves (`cgroup::prime_attach`), unless turned off.
    fn prime_cgroup_moves(&self) {
        if self.prime_moves.load(std::sync::atomic::Ordering::Relaxed) {
            crate::cgroup::prime_attach();
        }
    }

    /// The shims' template mount namespace, made on first need.
    pub fn mount_template(&self) -> Option<PathBuf> {
        self.mount_template
            .get_or_init(|| {
                match crate::mntns::ensure(&self.cfg.run_dir, &[&self.cfg.network.netns_dir, self.ephemeral.root()]) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::warn!(error = %e, "no template mount namespace; shims copy the node's");
                        None
                    }
                }
            })
            .clone()
    }

    /// Removes the template mount namespace (`debug sweep --all`, tests' teardown).
    pub fn remove_mount_template(&self) -> std::io::Result<()> {
        crate::mntns::remove(&self.cfg.run_dir)
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    pub fn ephemeral(&self) -> &EphemeralStore {
        &self.ephemeral
    }

    /// Keeps `size` network namespaces and `size` default-size ephemeral filesystems ready.
    /// Returns how many of each were made.
    pub fn fill_pools(&self, size: usize) -> Result<(usize, usize), TaskError> {
        Ok((self.network.fill_pool(size)?, self.ephemeral.fill_pool(size)?))
    }

    /// Removes what the warm pools hold. Returns how many namespaces and filesystems.
    pub fn drain_pools(&self) -> Result<(usize, usize), TaskError> {
        Ok((self.network.drain_pool()?, self.ephemeral.drain_pool()?))
    }

    /// The id of the task's ephemeral storage filesystem (an id, never a path: it names
    /// what `remove` unmounts and deletes). None: it has none, or not yet.
    pub fn ephemeral_id(&self, task: &str) -> Option<String> {
        let id = fs::read_to_string(self.task_dir(task).join(EPHEMERAL_FILE)).ok()?;
        let id = id.trim();
        crate::ephemeral::is_id(id).then(|| id.to_string())
    }

    /// The task's ephemeral storage: bytes in all and in use.
    pub fn task_storage(&self, task: &str) -> Option<(u64, u64)> {
        self.storage_usage(&self.ephemeral_id(task)?)
    }

    /// Ephemeral filesystem `id`'s bytes in all and in use (`ephemeral_id`).
    pub fn storage_usage(&self, id: &str) -> Option<(u64, u64)> {
        self.ephemeral.usage(id)
    }

    pub fn task_dir(&self, task: &str) -> PathBuf {
        self.cfg.data_dir.join("tasks").join(task)
    }

    pub fn container_dir(&self, task: &str, name: &str) -> PathBuf {
        self.task_dir(task).join(name)
    }

    pub fn runtime_id(task: &str, name: &str) -> String {
        format!("{task}-{name}")
    }

    fn runtime(&self, dir: &Path) -> CliRuntime {
        CliRuntime::new(
            self.cfg.runtime,
            self.cfg.run_dir.join("runtime"),
            dir.join("runtime.log"),
            self.hide_from_runtime.clone(),
        )
    }

    /// Sets up a task's sandbox (from the warm pool when possible), its /etc files and its
    /// ephemeral storage of the default size.
    pub fn create_task(&self, task: &str, hostname: &str) -> Result<Sandbox, TaskError> {
        self.create_task_with(task, hostname, SandboxKind::Bridged, crate::ephemeral::DEFAULT_GIB)
    }

    /// As `create_task`, with the kind of network the task gets and its storage size in GiB.
    pub fn create_task_with(
        &self,
        task: &str,
        hostname: &str,
        kind: SandboxKind,
        storage_gib: u32,
    ) -> Result<Sandbox, TaskError> {
        validate_name("task id", task)?;
        self.prime_cgroup_moves();
        let dir = self.task_dir(task);
        fs::create_dir(&dir).map_err(io_ctx(format!("creating {}", dir.display())))?;
        let storage = self.ephemeral.acquire(storage_gib).and_then(|id| {
            let written = fs::write(dir.join(EPHEMERAL_FILE), &id);
            written.map_err(|e| {
                let _ = self.ephemeral.remove(&id);
                EphemeralError::Io {
                    context: format!("writing {EPHEMERAL_FILE}"),
                    source: e,
                }
            })
        });
        if let Err(e) = storage {
            let _ = fs::remove_dir_all(&dir);
            return Err(e.into());
        }
        let sb = match kind {
            SandboxKind::Bridged => self.network.acquire(),
            SandboxKind::Loopback => self.network.create_loopback(),
            SandboxKind::Host => Ok(Sandbox::host()),
        };
        let sb = match sb {
            Ok(sb) => sb,
            Err(e) => {
                self.discard_task_dir(task);
                return Err(e.into());
            }
        };
        let result = (|| {
            shim::write_json_volatile(&dir.join("sandbox.json"), &sb).map_err(io_ctx("writing sandbox.json"))?;
            Network::write_etc_files(&sb, hostname, &dir.join("etc"), self.network.config().node_resolver)?;
            Ok(sb.clone())
        })();
        if result.is_err() {
            let _ = self.network.destroy(&sb);
            self.discard_task_dir(task);
        }
        result
    }

    /// Undoes a task's creation before any container: its storage and directory.
    fn discard_task_dir(&self, task: &str) {
        if let Some(id) = self.ephemeral_id(task) {
            let _ = self.ephemeral.remove(&id);
        }
        let _ = fs::remove_dir_all(self.task_dir(task));
    }

    pub fn sandbox(&self, task: &str) -> Option<Sandbox> {
        shim::read_json(&self.task_dir(task).join("sandbox.json"))
            .ok()
            .flatten()
    }

    /// The host end of the task's veth, whose counters are the task's (`veth_bytes`). None
    /// for tasks on the host's network or without a sandbox.
    pub fn task_veth(&self, task: &str) -> Option<String> {
        let sb = self.sandbox(task)?;
        let named = !sb.host_veth.is_empty() && sb.host_veth.bytes().all(|b| b.is_ascii_alphanumeric());
        (named && sb.kind != crate::net::SandboxKind::Host).then_some(sb.host_veth)
    }

    /// Bytes a task has received and sent over its own network interface, read from host veth
    /// `name` (`task_veth`): what the host end receives, the task sent.
    pub fn veth_bytes(name: &str) -> Option<(u64, u64)> {
        let stat = |counter: &str| -> Option<u64> {
            let p = format!("/sys/class/net/{name}/statistics/{counter}");
            fs::read_to_string(p).ok()?.trim().parse().ok()
        };
        Some((stat("tx_bytes")?, stat("rx_bytes")?))
    }

    /// Prepares the bundle and starts one container of the task under a new shim. Returns once
    /// the container's process is running.
    pub fn start_container(
        &self,
        task: &str,
        name: &str,
        image: &ImageRecord,
        spec: &ContainerSpec,
        stop_timeout: Duration,
    ) -> Result<ShimStarted, TaskError> {
        self.start_container_with_secrets(task, name, image, spec, stop_timeout, &[])
    }

    /// `start_container`, with environment variables that must never be written to disk:
    /// they go to the shim through a pipe, and reach the runtime only through a config held
    /// in the shim's private tmpfs (`shim::SECRET_BUNDLE`). The config.json on disk never has
    /// them.
    pub fn start_container_with_secrets(
        &self,
        task: &str,
        name: &str,
        image: &ImageRecord,
        spec: &ContainerSpec,
        stop_timeout: Duration,
        secret_env: &[(String, String)],
    ) -> Result<ShimStarted, TaskError> {
        validate_name("container name", name)?;
        // Again for a container started later than its task (dependsOn).
        self.prime_cgroup_moves();
        let sb = self.sandbox(task).ok_or_else(|| TaskError::Invalid {
            what: "task",
            value: task.into(),
            reason: "has no sandbox",
        })?;
        let dir = self.container_dir(task, name);
        let id = Self::runtime_id(task, name);
        let storage = self.writable_layer(task, name, &dir)?;
        let volumes = self.volumes(task, &dir, &spec.volumes)?;
        let img = self.images.config(image)?;
        let mut lowers = Vec::new();
        for (i, l) in image.layers.iter().enumerate() {
            lowers.push(self.images.ensure_layer(l, img.diff_ids.get(i))?);
        }
        lowers.reverse();
        let cgroup_path = format!("{CGROUP_PARENT}/{id}");
        // The container joins its namespace through the shim's private bind of it (see the
        // shim's `isolate_netns`), not through the shared directory every task's mount is in.
        let netns = (sb.kind != SandboxKind::Host).then(|| sb.path.clone());
        let mut private = sb.clone();
        if netns.is_some() {
            private.path = dir.join(shim::NETNS_FILE);
            fs::File::create(&private.path).map_err(io_ctx(format!("creating {}", private.path.display())))?;
        }
        let userns = self.cfg.images.limits.id_base;
        if let Some(base) = userns {
            // The container's root (the range's base on the host) owns its writable layer.
            let upper = storage.join("upper");
            crate::sys::lchown(&upper, base, base).map_err(io_ctx(format!("chowning {}", upper.display())))?;
        }
        let oci = bundle::build_spec(
            userns,
            &img,
            spec,
            &lowers,
            &private,
            &self.task_dir(task).join("etc"),
            &cgroup_path,
        )?;
        let oci = bundle::add_volumes(oci, &dir, &spec.volumes)?;
        bundle::write_spec(&oci, &dir)?;
        let secret_lines = secret_env_lines(secret_env)?;
        if !secret_lines.is_empty() {
            // The runtime's view from outside the shim (delete, state): the same config with
            // the rootfs by absolute path, and no secret in it.
            let secret_dir = dir.join(shim::SECRET_BUNDLE);
            fs::create_dir_all(&secret_dir).map_err(io_ctx(format!("creating {}", secret_dir.display())))?;
            let mut v = serde_json::to_value(&oci).map_err(|e| TaskError::Invalid {
                what: "spec",
                value: e.to_string(),
                reason: "does not serialise",
            })?;
            v["root"]["path"] = serde_json::json!(dir.join("rootfs"));
            let data = serde_json::to_vec(&v).expect("a JSON value serialises");
            fs::write(secret_dir.join("config.json"), data)
                .map_err(io_ctx("writing the secret bundle's config.json"))?;
        }
        let stop_signal = img
            .stop_signal
            .as_deref()
            .and_then(crate::oci::parse_signal)
            .unwrap_or(libc::SIGTERM);
        let shim_spec = ShimSpec {
            id: id.clone(),
            runtime: self.cfg.runtime,
            runtime_root: self.cfg.run_dir.join("runtime"),
            lowers,
            cgroup_path,
            stop_signal,
            stop_timeout_secs: stop_timeout.as_secs(),
            netns,
            netns_dir: Some(self.cfg.network.netns_dir.clone()),
            mount_template: self.mount_template(),
            secret_env: !secret_lines.is_empty(),
            storage: Some(storage),
            storage_dir: Some(self.ephemeral.root().to_path_buf()),
            volumes,
        };
        shim::write_json_volatile(&dir.join(shim::SPEC_FILE), &shim_spec).map_err(io_ctx("writing shim.json"))?;
        let out = self.run_shim(&dir, &secret_lines)?;
        if !out.status.success() {
            return Err(TaskError::Start {
                id,
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        match shim::read_json::<ShimStarted>(&dir.join(shim::STARTED_FILE)) {
            Ok(Some(s)) => Ok(s),
            _ => Err(TaskError::Start {
                id,
                message: "shim reported success but wrote no started.json".into(),
            }),
        }
    }

    /// The container's directory on the task's ephemeral storage with its overlay upper and
    /// work directories, and in the container's directory the mount points of its rootfs and
    /// of that storage in the shim's namespace. Returns the directory on the storage.
    fn writable_layer(&self, task: &str, name: &str, dir: &Path) -> Result<PathBuf, TaskError> {
        let id = self.ephemeral_id(task).ok_or_else(|| TaskError::Invalid {
            what: "task",
            value: task.into(),
            reason: "has no ephemeral storage",
        })?;
        if !self.ephemeral.mounted(&id) {
            return Err(TaskError::Invalid {
                what: "task",
                value: task.into(),
                reason: "has no ephemeral storage mounted",
            });
        }
        let on_storage = self.ephemeral.path(&id).join(name);
        let dirs = [
            dir.join("rootfs"),
            dir.join(shim::STORAGE_MOUNT),
            on_storage.join("upper"),
            on_storage.join("work"),
        ];
        for d in &dirs {
            fs::create_dir_all(d).map_err(io_ctx(format!("creating {}", d.display())))?;
        }
        Ok(on_storage)
    }

    /// The task's volumes a container mounts: each a directory on the task's ephemeral
    /// storage (`.volumes/<name>`), made by the first
    /// container that mounts it and shared by the others, with a mount point for it in the
    /// container's directory. Returns each volume's name and directory on the storage.
    fn volumes(&self, task: &str, dir: &Path, mounts: &[VolumeMount]) -> Result<Vec<(String, PathBuf)>, TaskError> {
        let mut out: Vec<(String, PathBuf)> = Vec::new();
        for m in mounts {
            if !valid_volume_name(&m.name) {
                return Err(TaskError::Invalid {
                    what: "volume name",
                    value: m.name.clone(),
                    reason: "must be 1-255 of [A-Za-z0-9_-]",
                });
            }
            if out.iter().any(|(n, _)| n == &m.name) {
                continue;
            }
            let id = self.ephemeral_id(task).ok_or_else(|| TaskError::Invalid {
                what: "task",
                value: task.into(),
                reason: "has no ephemeral storage",
            })?;
            let on_storage = self.ephemeral.path(&id).join(VOLUMES_ON_STORAGE).join(&m.name);
            let point = dir.join(bundle::VOLUMES_DIR).join(&m.name);
            for d in [&on_storage, &point] {
                fs::create_dir_all(d).map_err(io_ctx(format!("creating {}", d.display())))?;
            }
            if let Some(base) = self.cfg.images.limits.id_base {
                // The container's root (the range's base on the host) owns the volume.
                crate::sys::lchown(&on_storage, base, base)
                    .map_err(io_ctx(format!("chowning {}", on_storage.display())))?;
            }
            out.push((m.name.clone(), on_storage));
        }
        Ok(out)
    }

    /// Runs the shim for `dir`, handing it the secret environment (if any) on its stdin.
    fn run_shim(&self, dir: &Path, secret_lines: &[String]) -> Result<std::process::Output, TaskError> {
        use std::io::Write as _;
        let running = || io_ctx(format!("running {}", self.cfg.shim_binary.display()));
        let mut child = Command::new(&self.cfg.shim_binary)
            .arg(dir)
            .stdin(if secret_lines.is_empty() {
                std::process::Stdio::null()
            } else {
                std::process::Stdio::piped()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(running())?;
        if let Some(mut stdin) = child.stdin.take() {
            let data = serde_json::to_vec(secret_lines).expect("strings serialise");
            stdin.write_all(&data).map_err(running())?;
        }
        child.wait_with_output().map_err(running())
    }

    /// What the container's shim says now (works after a restart of the caller).
    pub fn container_state(&self, task: &str, name: &str) -> ContainerState {
        let dir = self.container_dir(task, name);
        if let Ok(Some(exit)) = shim::read_json::<ContainerExit>(&dir.join(shim::EXIT_FILE)) {
            return ContainerState::Exited(exit);
        }
        match shim::read_json::<ShimStarted>(&dir.join(shim::STARTED_FILE)) {
            Ok(Some(s)) if shim_alive(s.shim_pid, &dir) => ContainerState::Running(s),
            _ => {
                // The shim may have written exit.json between our two reads.
                match shim::read_json::<ContainerExit>(&dir.join(shim::EXIT_FILE)) {
                    Ok(Some(exit)) => ContainerState::Exited(exit),
                    _ => ContainerState::Lost,
                }
            }
        }
    }

    /// Waits up to `timeout` for the container to end. None if it is still running.
    /// A pidfd of the container's shim, readable once the shim has exited (after recording
    /// the container's exit): for event loops that wait on many containers at once. None if
    /// the container is not running.
    pub fn exit_fd(&self, task: &str, name: &str) -> Option<OwnedFd> {
        match self.container_state(task, name) {
            ContainerState::Running(s) => sys::pidfd_open(s.shim_pid).ok(),
            _ => None,
        }
    }

    pub fn wait_container(&self, task: &str, name: &str, timeout: Option<Duration>) -> Option<ContainerState> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let pidfd: OwnedFd = match self.container_state(task, name) {
                ContainerState::Running(s) => match sys::pidfd_open(s.shim_pid) {
                    Ok(fd) => fd,
                    Err(_) => continue,
                },
                other => return Some(other),
            };
            let ms = match deadline {
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(i32::MAX as u128) as i32,
                None => -1,
            };
            match sys::poll_readable(&pidfd, ms) {
                Ok(true) => continue,
                _ => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return None;
                    }
                }
            }
        }
    }

    /// Asks the shim to stop its container: stop signal, then SIGKILL after the stop timeout.
    pub fn stop_container(&self, task: &str, name: &str) {
        if let ContainerState::Running(s) = self.container_state(task, name) {
            let _ = sys::kill(s.shim_pid, libc::SIGTERM);
        }
    }

    /// Runs a command inside a running container (health checks): its exit code, or None if
    /// it ran past `timeout`.
    pub fn exec(&self, task: &str, name: &str, args: &[String], timeout: Duration) -> Result<Option<i32>, TaskError> {
        let id = Self::runtime_id(task, name);
        self.runtime(&self.container_dir(task, name))
            .exec(&id, args, timeout)
            .map_err(|e| TaskError::Start {
                id,
                message: e.to_string(),
            })
    }

    /// The command that runs `args` inside a running container with the caller's stdio
    /// (see `Runtime::exec_command`).
    pub fn exec_command(&self, task: &str, name: &str, args: &[String], tty: bool) -> std::process::Command {
        let id = Self::runtime_id(task, name);
        self.runtime(&self.container_dir(task, name))
            .exec_command(&id, args, tty)
    }

    pub fn container_stats(&self, task: &str, name: &str) -> CgroupStats {
        cgroup::stats(&format!("{CGROUP_PARENT}/{}", Self::runtime_id(task, name)))
    }

    /// `container_stats` with only the usage counters (`cgroup::usage`).
    pub fn container_usage(&self, task: &str, name: &str) -> CgroupStats {
        cgroup::usage(&format!("{CGROUP_PARENT}/{}", Self::runtime_id(task, name)))
    }

    pub fn log_path(&self, task: &str, name: &str) -> PathBuf {
        self.container_dir(task, name).join(shim::LOG_FILE)
    }

    /// Removes everything the task owns. Containers still running are killed first.
    pub fn remove_task(&self, task: &str) -> Result<(), TaskError> {
        validate_name("task id", task)?;
        let dir = self.task_dir(task);
        let names: Vec<String> = fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().join(shim::SPEC_FILE).exists())
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        for name in &names {
            let cdir = self.container_dir(task, name);
            if let ContainerState::Running(s) = self.container_state(task, name) {
                let _ = sys::kill(s.shim_pid, libc::SIGKILL);
                let _ = sys::kill(s.container_pid, libc::SIGKILL);
            }
            // Idempotent: removes the runtime's record and cgroup if a dead shim left them. A
            // shim deletes its container as it exits, so there is usually no record, and the
            // runtime is not run for nothing (a crun run copies its own binary first: ~5 ms).
            let id = Self::runtime_id(task, name);
            if self.cfg.runtime.may_hold(&self.cfg.run_dir.join("runtime"), &id) {
                let _ = self.runtime(&cdir).delete(&id);
            }
            cgroup::remove(&format!("{CGROUP_PARENT}/{id}"));
        }
        if let Some(sb) = self.sandbox(task) {
            self.network.destroy(&sb)?;
        }
        if let Some(id) = self.ephemeral_id(task) {
            self.ephemeral.remove(&id)?;
        }
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_ctx(format!("removing {}", dir.display()))(e)),
            _ => Ok(()),
        }
    }

    pub fn task_ids(&self) -> Vec<String> {
        fs::read_dir(self.cfg.data_dir.join("tasks"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// True if any container of the task has a live shim.
    pub fn task_running(&self, task: &str) -> bool {
        fs::read_dir(self.task_dir(task))
            .map(|rd| {
                rd.flatten().any(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    e.path().join(shim::SPEC_FILE).exists()
                        && matches!(self.container_state(task, &n), ContainerState::Running(_))
                })
            })
            .unwrap_or(false)
    }

    /// Startup sweep: removes what a crash left behind. Tasks for which `keep` says true are
    /// left alone (a control plane keeps the tasks it still tracks, to collect their exit
    /// codes; `gantry debug sweep` keeps the running ones); every other task is removed, and
    /// so are namespaces, leases, runtime containers and cgroups that belong to no kept task.
    pub fn sweep(&self, keep: impl Fn(&str) -> bool) -> Result<SweepReport, TaskError> {
        let mut report = SweepReport::default();
        let mut live_tasks = Vec::new();
        for t in self.task_ids() {
            if validate_name("task id", &t).is_err() {
                continue;
            }
            if keep(&t) {
                live_tasks.push(t);
            } else {
                self.remove_task(&t)?;
                report.tasks_removed += 1;
            }
        }
        let live_netns: Vec<String> = live_tasks
            .iter()
            .filter_map(|t| self.sandbox(t))
            .filter(|s| s.kind != SandboxKind::Host)
            .map(|s| s.name)
            .collect();
        report.netns_removed = self.network.sweep(|n| live_netns.iter().any(|l| l == n))?;
        let live_storage: Vec<String> = live_tasks.iter().filter_map(|t| self.ephemeral_id(t)).collect();
        report.ephemeral_removed = self.ephemeral.sweep(|id| live_storage.iter().any(|l| l == id))?;
        // Runtime containers and cgroups named for tasks that are gone.
        let is_live = |id: &str| live_tasks.iter().any(|t| id.starts_with(&format!("{t}-")));
        let state_dir = self.cfg.run_dir.join("runtime");
        if let Ok(rd) = fs::read_dir(&state_dir) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().to_string();
                if !is_live(&id) {
                    let _ = self.runtime(&state_dir).delete(&id);
                    report.containers_removed += 1;
                }
            }
        }
        for id in cgroup::children(CGROUP_PARENT) {
            // The cgroup tree is shared by every Gantry node on the host: only empty cgroups
            // can go (rmdir refuses others), and only old ones, so that a container another
            // node is creating right now keeps its fresh cgroup.
            if !is_live(&id)
                && cgroup::age(&format!("{CGROUP_PARENT}/{id}")).is_some_and(|a| a > Duration::from_secs(60))
            {
                cgroup::remove(&format!("{CGROUP_PARENT}/{id}"));
                report.cgroups_removed += 1;
            }
        }
        Ok(report)
    }
}

#[derive(Debug, Default)]
pub struct SweepReport {
    pub tasks_removed: usize,
    pub netns_removed: usize,
    pub ephemeral_removed: usize,
    pub containers_removed: usize,
    pub cgroups_removed: usize,
}

/// A live process that is this container's shim (guards against pid reuse).
fn shim_alive(pid: i32, dir: &Path) -> bool {
    if !sys::process_exists(pid) {
        return false;
    }
    // A zombie shim (exited, not yet reaped by its starter) is not alive.
    if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
        if stat
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().starts_with('Z'))
            .unwrap_or(false)
        {
            return false;
        }
    }
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let d = dir.as_os_str().as_encoded_bytes();
            c.split(|b| *b == 0).any(|arg| arg == d)
        })
        .unwrap_or(false)
}

/// Secret variables as `NAME=value` lines, names checked as any environment variable's.
fn secret_env_lines(secret_env: &[(String, String)]) -> Result<Vec<String>, TaskError> {
    secret_env
        .iter()
        .map(|(k, v)| {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                Err(TaskError::Invalid {
                    what: "secret environment variable",
                    value: k.clone(),
                    reason: "is not a valid variable name or value",
                })
            } else {
                Ok(format!("{k}={v}"))
            }
        })
        .collect()
}

/// Each task's directories (here and the runtime's state) are one task's tree, unrelated to
/// the others': on ext4 they are spread over the block groups (`chattr +T`). Packed into one
/// group, a filesystem without a journal makes every new inode skip, one by one, each inode
/// of that group deleted in the last 30 seconds: a burst after a teardown spent a third of
/// the agents' CPU there (ARCHITECTURE, "A task on a node"). Only a hint: failing is logged.
pub(crate) fn spread_subdirectories(dir: &Path) {
    match crate::sys::mark_top_directory(dir) {
        Ok(true) => {}
        Ok(false) => tracing::debug!(dir = %dir.display(), "the filesystem has no top-directory flag"),
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "could not mark a top directory"),
    }
}
