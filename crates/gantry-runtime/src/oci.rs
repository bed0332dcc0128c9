//! The OCI runtime driver: a `Runtime` trait and its implementation over the crun / runc /
//! runsc command lines (create, start, kill, delete), as containerd and Podman drive them.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Crun,
    Runc,
    Runsc,
}

impl RuntimeKind {
    pub fn binary(&self) -> &'static str {
        match self {
            RuntimeKind::Crun => "crun",
            RuntimeKind::Runc => "runc",
            RuntimeKind::Runsc => "runsc",
        }
    }

    /// Whether the runtime may still hold a record of container `id` under its state
    /// directory `root`: crun and runc keep one directory per container there; runsc names
    /// its files otherwise, so it always may.
    pub fn may_hold(&self, root: &Path, id: &str) -> bool {
        match self {
            RuntimeKind::Crun | RuntimeKind::Runc => root.join(id).exists(),
            RuntimeKind::Runsc => true,
        }
    }

    /// crun if installed, else runc.
    pub fn detect() -> Option<RuntimeKind> {
        [RuntimeKind::Crun, RuntimeKind::Runc]
            .into_iter()
            .find(|k| find_in_path(k.binary()).is_some())
    }
}

impl std::str::FromStr for RuntimeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "crun" => Ok(RuntimeKind::Crun),
            "runc" => Ok(RuntimeKind::Runc),
            "runsc" => Ok(RuntimeKind::Runsc),
            other => Err(format!("unknown runtime {other:?}: expected crun, runc or runsc")),
        }
    }
}

/// crun guards against CVE-2019-5736 (a container overwriting the runtime's binary through
/// /proc/PID/exe) on every invocation: unless its binary is a sealed memfd, it makes a
/// read-only copy of itself (a bind mount, else a memfd) and executes itself again from it,
/// about 1.5 ms of each `crun run` here. Run from a sealed copy Gantry makes (0.2 ms: a
/// copy from the page cache, no mount, no second exec), it skips that, with the same
/// protection: a sealed memfd cannot be written. One copy per call, not one per process: a
/// shim lives as long as its container, and a copy held by each would cost every task half
/// a MiB. None for other runtimes (runc 1.2 and runsc protect themselves otherwise) or when
/// the copy cannot be made (then the runtime makes its own).
fn sealed_copy(kind: RuntimeKind) -> Option<OwnedFd> {
    if kind != RuntimeKind::Crun {
        return None;
    }
    // Looked up once: every run, kill, delete and health check would walk PATH again.
    static CRUN: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let path = CRUN.get_or_init(|| find_in_path(RuntimeKind::Crun.binary())).as_ref()?;
    crate::sys::sealed_memfd_copy(path, c"crun").ok()
}

pub fn find_in_path(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(bin)).find(|p| p.is_file()))
        .unwrap_or(None)
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{runtime} {op} {id}: {message}")]
    Failed {
        runtime: &'static str,
        op: &'static str,
        id: String,
        message: String,
    },
    #[error("{runtime} {op} {id}: {source}")]
    Spawn {
        runtime: &'static str,
        op: &'static str,
        id: String,
        source: io::Error,
    },
}

/// The container's stdio handed to `create`.
pub struct Stdio3 {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

pub trait Runtime {
    /// Creates and starts the container in one runtime process (`run --detach`: one exec of
    /// the runtime instead of two for create and start); its pid is in `pid_file` on return.
    /// stdio becomes the container's.
    fn run_detached(&self, id: &str, bundle: &Path, pid_file: &Path, stdio: Stdio3) -> Result<(), RuntimeError>;
    fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError>;
    /// Force-deletes the container (killing what is left) and its cgroup.
    fn delete(&self, id: &str) -> Result<(), RuntimeError>;
    /// Runs a process inside the running container; its exit code, or None if it outlived
    /// `timeout` (it is then killed).
    fn exec(&self, id: &str, args: &[String], timeout: std::time::Duration) -> Result<Option<i32>, RuntimeError>;
    /// The command that runs a process inside the running container with the caller's
    /// stdio (ECS Exec); with `tty`, in a terminal the runtime makes inside the container and
    /// bridges to its own stdio (which should then be a terminal too).
    fn exec_command(&self, id: &str, args: &[String], tty: bool) -> Command;
}

/// Drives a runtime binary. State lives under `root`; the runtime's own diagnostics go to
/// `log` so they never mix with the container's output.
pub struct CliRuntime {
    pub kind: RuntimeKind,
    pub root: PathBuf,
    pub log: PathBuf,
    /// cgroup2 mounts to hide from the runtime on a hybrid host (see `hybrid_cgroup2_mounts`).
    hide: Vec<PathBuf>,
}

/// On a hybrid host (v1 hierarchies plus a cgroup2 mount), the cgroup2 mount points: crun
/// refuses such hosts, so every runtime invocation runs in a private mount namespace where
/// they are detached. Empty on pure v1 or v2 hosts, and inside the shim's own namespace.
pub fn hybrid_cgroup2_mounts() -> Vec<PathBuf> {
    if crate::cgroup::version() == crate::cgroup::CgroupVersion::V2 {
        return vec![];
    }
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            (f.get(sep + 1) == Some(&"cgroup2")).then(|| PathBuf::from(f[4]))
        })
        .collect()
}

impl CliRuntime {
    /// `hide`: `hybrid_cgroup2_mounts()`, read once by the caller (reading the mount table
    /// costs a line per mount, and a node has a few per task), or nothing where they are
    /// already hidden.
    pub fn new(kind: RuntimeKind, root: PathBuf, log: PathBuf, hide: Vec<PathBuf>) -> CliRuntime {
        CliRuntime { kind, root, log, hide }
    }

    /// The runtime's command line, the binary as installed.
    fn cmd(&self) -> Command {
        self.cmd_of(Command::new(self.kind.binary()))
    }

    /// The runtime's command line run from a sealed copy of its binary when one can be made
    /// (`sealed_copy`), for the calls on a task's path (run, kill, delete, health-check
    /// execs). The copy must outlive the spawn, so it comes with the command; it is
    /// close-on-exec (the kernel opens the path before it closes the descriptor), so the
    /// runtime does not inherit it, and it is gone once the runtime exits.
    fn sealed_cmd(&self) -> (Command, Option<OwnedFd>) {
        let Some(copy) = sealed_copy(self.kind) else {
            return (self.cmd(), None);
        };
        let mut c = Command::new(format!("/proc/self/fd/{}", copy.as_raw_fd()));
        std::os::unix::process::CommandExt::arg0(&mut c, self.kind.binary());
        (self.cmd_of(c), Some(copy))
    }

    fn cmd_of(&self, mut c: Command) -> Command {
        c.arg("--root").arg(&self.root).arg("--log").arg(&self.log);
        if !self.hide.is_empty() {
            // Only fails on paths with NUL bytes, which mountinfo cannot contain.
            let _ = crate::sys::run_in_private_mount_ns(&mut c, &self.hide);
        }
        c
    }

    fn last_log_line(&self) -> String {
        std::fs::read_to_string(&self.log)
            .ok()
            .and_then(|s| {
                s.lines().rev().find(|l| !l.trim().is_empty()).map(|l| {
                    // crun/runc log JSON lines: {"msg":"...","level":"error",...}
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_string))
                        .unwrap_or_else(|| l.to_string())
                })
            })
            .unwrap_or_default()
    }

    fn run(&self, op: &'static str, id: &str, mut c: Command) -> Result<(), RuntimeError> {
        let rt = self.kind.binary();
        let out = c.stdin(Stdio::null()).output().map_err(|source| RuntimeError::Spawn {
            runtime: rt,
            op,
            id: id.into(),
            source,
        })?;
        if out.status.success() {
            return Ok(());
        }
        let mut message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if message.is_empty() {
            message = self.last_log_line();
        }
        if message.is_empty() {
            message = format!("exited with {}", out.status);
        }
        Err(RuntimeError::Failed {
            runtime: rt,
            op,
            id: id.into(),
            message,
        })
    }
}

impl Runtime for CliRuntime {
    fn run_detached(&self, id: &str, bundle: &Path, pid_file: &Path, stdio: Stdio3) -> Result<(), RuntimeError> {
        let rt = self.kind.binary();
        let (mut c, _copy) = self.sealed_cmd();
        c.arg("run")
            .arg("--detach")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id);
        c.stdin(stdio.stdin).stdout(stdio.stdout).stderr(stdio.stderr);
        let status = c.status().map_err(|source| RuntimeError::Spawn {
            runtime: rt,
            op: "run",
            id: id.into(),
            source,
        })?;
        if status.success() {
            Ok(())
        } else {
            let m = self.last_log_line();
            Err(RuntimeError::Failed {
                runtime: rt,
                op: "run",
                id: id.into(),
                message: if m.is_empty() {
                    format!("exited with {status}")
                } else {
                    m
                },
            })
        }
    }

    fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        let (mut c, _copy) = self.sealed_cmd();
        c.arg("kill").arg(id).arg(signal.to_string()).stdout(Stdio::null());
        self.run("kill", id, c)
    }

    fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        let (mut c, _copy) = self.sealed_cmd();
        c.arg("delete").arg("--force").arg(id).stdout(Stdio::null());
        self.run("delete", id, c)
    }

    fn exec_command(&self, id: &str, args: &[String], tty: bool) -> Command {
        let mut c = self.cmd();
        c.arg("exec");
        if tty {
            c.arg("--tty");
        }
        c.arg(id).args(args);
        c
    }

    fn exec(&self, id: &str, args: &[String], timeout: std::time::Duration) -> Result<Option<i32>, RuntimeError> {
        let rt = self.kind.binary();
        let (mut c, _copy) = self.sealed_cmd();
        c.arg("exec")
            .arg(id)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = c.spawn().map_err(|source| RuntimeError::Spawn {
            runtime: rt,
            op: "exec",
            id: id.into(),
            source,
        })?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    return Ok(Some(st.code().unwrap_or(
                        128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0),
                    )))
                }
                Ok(None) if std::time::Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(None);
                }
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(10)),
                Err(source) => {
                    return Err(RuntimeError::Spawn {
                        runtime: rt,
                        op: "exec",
                        id: id.into(),
                        source,
                    })
                }
            }
        }
    }
}

/// Opens /dev/null for a runtime's stdin.
pub fn dev_null() -> io::Result<File> {
    File::open("/dev/null")
}

/// Parses a StopSignal as images give it ("SIGTERM", "TERM", "15").
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        "PWR" => libc::SIGPWR,
        _ => {
            let n = name.strip_prefix("RTMIN+")?.parse::<i32>().ok()?;
            libc::SIGRTMIN() + n
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_looked_for_where_the_runtime_keeps_it() {
        let root = std::env::temp_dir().join(format!("gantry-oci-test-{}", std::process::id()));
        std::fs::create_dir_all(root.join("present")).unwrap();
        assert!(RuntimeKind::Crun.may_hold(&root, "present"));
        assert!(RuntimeKind::Runc.may_hold(&root, "present"));
        assert!(!RuntimeKind::Crun.may_hold(&root, "absent"));
        assert!(!RuntimeKind::Runc.may_hold(&root, "absent"));
        assert!(
            RuntimeKind::Runsc.may_hold(&root, "absent"),
            "runsc's files are named otherwise"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn crun_runs_from_a_sealed_copy_that_it_does_not_inherit() {
        assert!(
            find_in_path("crun").is_some(),
            "crun is not installed: run scripts/install-deps.sh"
        );
        let dir = tempfile::tempdir().unwrap();
        let rt = CliRuntime::new(
            RuntimeKind::Crun,
            dir.path().join("root"),
            dir.path().join("log"),
            vec![],
        );
        let (mut c, copy) = rt.sealed_cmd();
        let fd = copy.as_ref().expect("a sealed copy of crun").as_raw_fd();
        assert_eq!(c.get_program().to_string_lossy(), format!("/proc/self/fd/{fd}"));
        let out = c.arg("--version").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("crun version"));
        // Other runtimes run as installed.
        let runc = CliRuntime::new(
            RuntimeKind::Runc,
            dir.path().join("root"),
            dir.path().join("log"),
            vec![],
        );
        assert!(runc.sealed_cmd().1.is_none());
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM"), Some(15));
        assert_eq!(parse_signal("quit"), Some(3));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGBOGUS"), None);
        assert_eq!(parse_signal("0"), None);
    }
}
