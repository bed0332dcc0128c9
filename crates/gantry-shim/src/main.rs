//! gantry-shim: the per-container supervisor (the conmon / containerd-shim pattern).
//!
//! `gantry-shim <container-dir>` reads shim.json there, detaches (fork + setsid, so it outlives
//! whoever started it), becomes a child subreaper, mounts the container's overlay rootfs in a
//! private mount namespace (which also hides the hybrid host's cgroup2 mount from crun, and
//! makes the mount vanish with the shim whatever happens), creates the container with its
//! stdio on pipes, starts it, and reports "ok <pid>" to the starter. It then logs output line
//! by line, implements stop (stop signal, stop timeout, SIGKILL) on SIGTERM, reaps, records the
//! exit (with OOM detection) in exit.json, deletes the container and exits.

mod sys;

use gantry_runtime::cgroup;
use gantry_runtime::oci::{CliRuntime, Runtime, Stdio3};
use gantry_runtime::shim::{self, ContainerExit, ShimSpec, ShimStarted};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Lines longer than this are split into partial (P) records.
const MAX_LINE: usize = 16 * 1024;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: gantry-shim <container-dir>");
        return ExitCode::from(2);
    };
    let spec: ShimSpec = match shim::read_json(&dir.join(shim::SPEC_FILE)) {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!("gantry-shim: {} not found", dir.join(shim::SPEC_FILE).display());
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("gantry-shim: reading {}: {e}", dir.join(shim::SPEC_FILE).display());
            return ExitCode::from(2);
        }
    };
    // Secret variables come on stdin (never from a file), read before detaching.
    let secret_env = match read_secret_env(&spec) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("gantry-shim: {e}");
            return ExitCode::from(2);
        }
    };
    let (ready_r, ready_w) = match sys::pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("gantry-shim: pipe: {e}");
            return ExitCode::from(1);
        }
    };
    match sys::fork() {
        Err(e) => {
            eprintln!("gantry-shim: fork: {e}");
            ExitCode::from(1)
        }
        Ok(sys::Fork::Parent) => {
            drop(ready_w);
            let mut msg = String::new();
            let _ = File::from(ready_r).read_to_string(&mut msg);
            match msg.strip_prefix("ok ") {
                Some(pid) => {
                    println!("{}", pid.trim());
                    ExitCode::SUCCESS
                }
                None => {
                    let m = msg
                        .strip_prefix("err ")
                        .unwrap_or("shim exited before starting the container");
                    eprintln!("{}", m.trim());
                    ExitCode::from(1)
                }
            }
        }
        Ok(sys::Fork::Child) => {
            drop(ready_r);
            let mut ready = File::from(ready_w);
            if let Err(e) = supervise(&dir, &spec, &secret_env, &mut ready) {
                let _ = write!(ready, "err {e}");
                eprintln!("gantry-shim {}: {e}", spec.id);
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
    }
}

/// The shim's own diagnostics go to shim.log; stdin/stdout to /dev/null.
fn redirect_stdio(dir: &Path) -> std::io::Result<()> {
    let null = OpenOptions::new().read(true).write(true).open("/dev/null")?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("shim.log"))?;
    sys::dup2(&null, 0)?;
    sys::dup2(&null, 1)?;
    sys::dup2(&log, 2)
}

/// Hybrid hosts have a cgroup2 mount next to the v1 hierarchies, which crun refuses; detach
/// every cgroup2 mount in our private namespace when /sys/fs/cgroup itself is not cgroup2.
fn hide_hybrid_cgroup2() -> std::io::Result<()> {
    for mount in gantry_runtime::oci::hybrid_cgroup2_mounts() {
        sys::umount_detach(&mount.to_string_lossy())?;
    }
    Ok(())
}

/// Enters a private mount namespace. From the node's template (`mntns`) when there is one:
/// it has no task namespace mounts to copy or detach. The task's network namespace is opened
/// first (the template does not show it) and bound privately from that descriptor.
fn private_mount_ns(dir: &Path, spec: &ShimSpec) -> Result<(), String> {
    let netns = match &spec.netns {
        Some(p) => Some(File::open(p).map_err(|e| format!("opening {}: {e}", p.display()))?),
        None => None,
    };
    let template = match &spec.mount_template {
        Some(p) => Some(File::open(p).map_err(|e| format!("opening {}: {e}", p.display()))?),
        None => None,
    };
    // Taken here: a mount can be cloned only in the namespace that has it, and the template
    // does not show any task's storage.
    let storage = match &spec.storage {
        Some(p) => Some(sys::clone_mount(&p.to_string_lossy()).map_err(|e| format!("cloning {}: {e}", p.display()))?),
        None => None,
    };
    let mut volumes = Vec::new();
    for (name, p) in &spec.volumes {
        let tree = sys::clone_mount(&p.to_string_lossy()).map_err(|e| format!("cloning {}: {e}", p.display()))?;
        volumes.push((name, tree));
    }
    if let Some(t) = &template {
        sys::join_mount_ns(t).map_err(|e| format!("joining the template mount namespace: {e}"))?;
    }
    sys::unshare_mount_ns().map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
    // Slave: the host's unmounts (of task namespaces, say) still reach us; ours never leak out.
    sys::make_rslave("/").map_err(|e| format!("making / rslave: {e}"))?;
    if let Some(ns) = &netns {
        use std::os::fd::AsRawFd;
        let source = PathBuf::from(format!("/proc/self/fd/{}", ns.as_raw_fd()));
        gantry_runtime::bind_mount(&source, &dir.join(shim::NETNS_FILE))
            .map_err(|e| format!("binding the task's network namespace: {e}"))?;
    }
    if template.is_none() {
        detach_task_namespaces(spec)?;
    }
    if let Some(tree) = &storage {
        let target = dir.join(shim::STORAGE_MOUNT);
        sys::attach_mount(tree, &target.to_string_lossy())
            .map_err(|e| format!("attaching the task's storage at {}: {e}", target.display()))?;
    }
    for (name, tree) in &volumes {
        let target = dir.join(gantry_runtime::bundle::VOLUMES_DIR).join(name);
        sys::attach_mount(tree, &target.to_string_lossy())
            .map_err(|e| format!("attaching volume {name} at {}: {e}", target.display()))?;
    }
    Ok(())
}

/// Without a template: detaches the shared directory of every task's namespace mounts from
/// this mount namespace. Otherwise each shim's namespace would hold every other task's
/// namespace mount and receive every later one by propagation.
fn detach_task_namespaces(spec: &ShimSpec) -> Result<(), String> {
    let netns_dir = spec.netns_dir.as_ref().filter(|_| spec.netns.is_some());
    // Likewise every task's ephemeral storage.
    for shared in netns_dir.into_iter().chain(&spec.storage_dir) {
        sys::umount_detach(&shared.to_string_lossy()).map_err(|e| format!("detaching {}: {e}", shared.display()))?;
    }
    Ok(())
}

/// The secret `NAME=value` lines on stdin, when the spec says there are some.
fn read_secret_env(spec: &ShimSpec) -> Result<Vec<String>, String> {
    if !spec.secret_env {
        return Ok(vec![]);
    }
    let mut data = Vec::new();
    std::io::stdin()
        .take(shim::MAX_SECRET_ENV as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("reading the secret environment: {e}"))?;
    if data.len() > shim::MAX_SECRET_ENV {
        return Err(format!(
            "the secret environment is larger than {} bytes",
            shim::MAX_SECRET_ENV
        ));
    }
    let lines: Vec<String> =
        serde_json::from_slice(&data).map_err(|e| format!("the secret environment is not a JSON list: {e}"))?;
    if lines.iter().any(|l| !l.contains('=') || l.starts_with('=')) {
        return Err("a secret environment line is not NAME=value".into());
    }
    Ok(lines)
}

/// Covers the secret bundle directory with a tmpfs private to this shim's mount namespace and
/// writes there the on-disk config (rootfs by absolute path) with the secret variables set:
/// the runtime reads them from memory that vanishes with the shim.
fn secret_bundle(dir: &Path, secret_env: &[String]) -> Result<PathBuf, String> {
    let target = dir.join(shim::SECRET_BUNDLE);
    let on_disk =
        fs::read(target.join("config.json")).map_err(|e| format!("reading the secret bundle's config: {e}"))?;
    let mut config: serde_json::Value =
        serde_json::from_slice(&on_disk).map_err(|e| format!("the secret bundle's config is not JSON: {e}"))?;
    let env = config["process"]["env"]
        .as_array_mut()
        .ok_or("the secret bundle's config has no process.env")?;
    for line in secret_env {
        let name = line.split('=').next().unwrap_or_default();
        env.retain(|e| e.as_str().and_then(|e| e.split('=').next()) != Some(name));
        env.push(serde_json::Value::String(line.clone()));
    }
    sys::mount_tmpfs(&target.to_string_lossy(), "mode=0700,size=4m")
        .map_err(|e| format!("mounting the secret bundle's tmpfs: {e}"))?;
    let data = serde_json::to_vec(&config).expect("a JSON value serialises");
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target.join("config.json"))
        .and_then(|mut f| f.write_all(&data))
        .map_err(|e| format!("writing the secret bundle's config: {e}"))?;
    Ok(target)
}

/// The runtime keeps a copy of the config in its state directory (crun's config.json,
/// runc's state.json): once the container runs, the secret lines are dropped from it, so they
/// live on only in the container's memory. Processes the runtime execs later (health checks)
/// do not get them.
fn scrub_runtime_state(state_dir: &Path, secret_env: &[String]) -> Result<(), String> {
    fn drop_lines(v: &mut serde_json::Value, secret: &[String]) {
        match v {
            serde_json::Value::Array(items) => {
                items.retain(|i| i.as_str().is_none_or(|s| !secret.iter().any(|l| l == s)));
                items.iter_mut().for_each(|i| drop_lines(i, secret));
            }
            serde_json::Value::Object(m) => m.values_mut().for_each(|i| drop_lines(i, secret)),
            _ => {}
        }
    }
    for name in ["config.json", "state.json"] {
        let path = state_dir.join(name);
        let Ok(data) = fs::read(&path) else { continue };
        let mut v: serde_json::Value = match serde_json::from_slice(&data) {
            Ok(v) => v,
            Err(_) => continue,
        };
        drop_lines(&mut v, secret_env);
        let tmp = state_dir.join(format!(".{name}.scrubbed"));
        let mode = fs::metadata(&path).map(|m| m.permissions());
        fs::write(&tmp, serde_json::to_vec(&v).expect("a JSON value serialises"))
            .and_then(|_| mode.and_then(|m| fs::set_permissions(&tmp, m)))
            .and_then(|_| fs::rename(&tmp, &path))
            .map_err(|e| format!("removing the secrets from {}: {e}", path.display()))?;
    }
    Ok(())
}

fn mount_rootfs(dir: &Path, spec: &ShimSpec) -> Result<(), String> {
    let lowers: Vec<String> = spec.lowers.iter().map(|p| p.display().to_string()).collect();
    let writable = match spec.storage {
        Some(_) => dir.join(shim::STORAGE_MOUNT),
        None => dir.to_path_buf(),
    };
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        writable.join("upper").display(),
        writable.join("work").display()
    );
    if opts.len() >= 4096 {
        return Err(format!(
            "too many image layers for one overlay mount ({} bytes of options)",
            opts.len()
        ));
    }
    let target = dir.join("rootfs");
    sys::mount_overlay(&target.to_string_lossy(), &opts).map_err(|e| format!("mounting overlay rootfs: {e}"))
}

fn supervise(dir: &Path, spec: &ShimSpec, secret_env: &[String], ready: &mut File) -> Result<(), String> {
    sys::setsid().map_err(|e| format!("setsid: {e}"))?;
    redirect_stdio(dir).map_err(|e| format!("redirecting stdio: {e}"))?;
    sys::set_child_subreaper().map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
    // The task namespaces' mounts go first: the mount table left to read is then small
    // (reading it costs a formatted line per mount, one per task on the node).
    private_mount_ns(dir, spec)?;
    hide_hybrid_cgroup2().map_err(|e| format!("hiding the hybrid cgroup2 mount: {e}"))?;
    mount_rootfs(dir, spec)?;

    let signals = sys::signal_set(&[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
    sys::block_signals(&signals).map_err(|e| format!("blocking signals: {e}"))?;

    let signal_fd = sys::signal_fd(&signals).map_err(|e| format!("signalfd: {e}"))?;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(shim::LOG_FILE))
        .map_err(|e| format!("opening log: {e}"))?;
    let (out_r, out_w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    let mut streams = [Stream::new("stdout", out_r), Stream::new("stderr", err_r)];

    // Nothing to hide: `hide_hybrid_cgroup2` detached them from this namespace.
    let runtime = CliRuntime::new(spec.runtime, spec.runtime_root.clone(), dir.join("runtime.log"), vec![]);
    let pid_file = dir.join("container.pid");
    let stdio = Stdio3 {
        stdin: Stdio::null(),
        stdout: Stdio::from(out_w),
        stderr: Stdio::from(err_w),
    };
    let fail = |e: String| {
        let _ = runtime.delete(&spec.id);
        e
    };
    let bundle = if secret_env.is_empty() {
        dir.to_path_buf()
    } else {
        secret_bundle(dir, secret_env)?
    };
    runtime
        .run_detached(&spec.id, &bundle, &pid_file, stdio)
        .map_err(|e| fail(e.to_string()))?;
    if !secret_env.is_empty() {
        scrub_runtime_state(&spec.runtime_root.join(&spec.id), secret_env).map_err(fail)?;
    }
    let container_pid: i32 = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| fail("runtime wrote no container pid".to_string()))?;
    let started = ShimStarted {
        shim_pid: std::process::id() as i32,
        container_pid,
        started_at_ms: shim::now_ms(),
    };
    shim::write_json_volatile(&dir.join(shim::STARTED_FILE), &started)
        .map_err(|e| fail(format!("writing started.json: {e}")))?;
    let _ = write!(ready, "ok {container_pid}");
    // Closing our end tells the starter we are up.
    drop(std::mem::replace(
        ready,
        File::open("/dev/null").map_err(|e| e.to_string())?,
    ));

    let (code, signal, killed_after_timeout) = follow(spec, container_pid, &signal_fd, &mut streams, &mut log);
    let oom_killed = signal == Some(libc::SIGKILL) && cgroup::stats(&spec.cgroup_path).oom_kills.unwrap_or(0) > 0;
    let _ = runtime.delete(&spec.id);
    let exit = ContainerExit {
        exit_code: if oom_killed { 137 } else { code },
        signal,
        oom_killed,
        killed_after_timeout,
        exited_at_ms: shim::now_ms(),
    };
    shim::write_json_atomic(&dir.join(shim::EXIT_FILE), &exit).map_err(|e| format!("writing exit.json: {e}"))?;
    Ok(())
}

/// What the shim waits for, on one thread: its signals (a stop, a child's exit) and the
/// container's output, logged as it comes. Returns the container's exit code, the signal that
/// ended it if one did, and whether the stop timeout ran out (SIGKILL sent). Its exit is
/// returned once both streams have ended (the pid namespace is gone with its init, so the
/// pipes close), or 2 s after it at most.
fn follow(
    spec: &ShimSpec,
    container_pid: i32,
    signal_fd: &OwnedFd,
    streams: &mut [Stream; 2],
    log: &mut File,
) -> (i32, Option<i32>, bool) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut stop_deadline: Option<Instant> = None;
    let mut killed_after_timeout = false;
    let mut exited: Option<((i32, Option<i32>), Instant)> = None;
    loop {
        let open = streams.iter().any(|s| s.fd.is_some());
        let timeout = match exited {
            Some((status, logs_until)) => {
                let left = logs_until.saturating_duration_since(Instant::now());
                if !open || left.is_zero() {
                    streams.iter_mut().for_each(|s| s.flush(log));
                    return (status.0, status.1, killed_after_timeout);
                }
                Some(left)
            }
            // Without a stop under way nothing is due: only a signal (a stop, the container's
            // exit: SIGCHLD was blocked before it started, so none is missed) or its output
            // wakes the shim. A timed wake of every shim on a node is a steady cost per task.
            None => stop_deadline.map(|d| d.saturating_duration_since(Instant::now())),
        };
        // The signals, then each stream (-1 once it ended: poll skips a negative descriptor).
        let stream_fd = |s: &Stream| s.fd.as_ref().map_or(-1, |f| f.as_raw_fd());
        let mut fds = [signal_fd.as_raw_fd(), stream_fd(&streams[0]), stream_fd(&streams[1])].map(pollfd);
        let _ = sys::poll(&mut fds, timeout.map(|t| t.as_millis().max(1) as u64));
        for sig in sys::read_signals(signal_fd) {
            if matches!(sig, libc::SIGTERM | libc::SIGINT) && stop_deadline.is_none() && exited.is_none() {
                let _ = sys::kill(container_pid, spec.stop_signal);
                stop_deadline = Some(Instant::now() + Duration::from_secs(spec.stop_timeout_secs));
            }
        }
        if stop_deadline.is_some_and(|d| Instant::now() >= d) && !killed_after_timeout && exited.is_none() {
            let _ = sys::kill(container_pid, libc::SIGKILL);
            killed_after_timeout = true;
        }
        if exited.is_none() {
            exited = reap_container(container_pid).map(|status| (status, Instant::now() + Duration::from_secs(2)));
        }
        for (p, stream) in fds[1..].iter().zip(streams.iter_mut()) {
            if p.revents != 0 {
                stream.read(log, &mut buf);
            }
        }
    }
}

fn pollfd(fd: std::os::fd::RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Reaps every child that has exited (re-parented orphans too); the container's exit code
/// and signal if it is one of them.
fn reap_container(container_pid: i32) -> Option<(i32, Option<i32>)> {
    let mut result = None;
    loop {
        match sys::reap() {
            sys::Reaped::None => return result,
            sys::Reaped::Exited { pid, code } if pid == container_pid => result = Some((code, None)),
            sys::Reaped::Signaled { pid, signal } if pid == container_pid => {
                result = Some((128 + signal, Some(signal)))
            }
            _ => {}
        }
    }
}

/// One of the container's output streams: its pipe until it ends, and the start of a line
/// not ended yet.
struct Stream {
    name: &'static str,
    fd: Option<File>,
    pending: Vec<u8>,
}

impl Stream {
    fn new(name: &'static str, fd: OwnedFd) -> Stream {
        Stream {
            name,
            fd: Some(File::from(fd)),
            pending: Vec::new(),
        }
    }

    /// Logs what one read of the pipe brings, a record per line (longer lines split into
    /// partial records); at its end, the last unfinished line, and the pipe is closed.
    fn read(&mut self, log: &mut File, buf: &mut [u8]) {
        let Some(mut pipe) = self.fd.as_ref() else { return };
        let n = match read_retrying(&mut pipe, buf) {
            Ok(0) | Err(_) => {
                self.flush(log);
                self.fd = None;
                return;
            }
            Ok(n) => n,
        };
        self.pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(i) = self.pending[start..].iter().position(|b| *b == b'\n') {
            write_record(log, self.name, false, &self.pending[start..start + i]);
            start += i + 1;
        }
        self.pending.drain(..start);
        while self.pending.len() >= MAX_LINE {
            write_record(log, self.name, true, &self.pending[..MAX_LINE]);
            self.pending.drain(..MAX_LINE);
        }
    }

    /// Logs the unfinished line, if any.
    fn flush(&mut self, log: &mut File) {
        if !self.pending.is_empty() {
            write_record(log, self.name, false, &self.pending);
            self.pending.clear();
        }
    }
}

/// One read of a pipe that poll said is ready (so it does not block); EINTR is retried.
fn read_retrying(pipe: &mut &File, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match pipe.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn write_record(log: &mut File, stream: &str, partial: bool, content: &[u8]) {
    let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let mut rec = Vec::with_capacity(content.len() + 48);
    rec.extend_from_slice(ts.as_bytes());
    rec.push(b' ');
    rec.extend_from_slice(stream.as_bytes());
    rec.extend_from_slice(if partial { b" P " } else { b" F " });
    rec.extend_from_slice(content);
    rec.push(b'\n');
    let _ = log.write_all(&rec);
}
