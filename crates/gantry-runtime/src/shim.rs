//! The contract between Gantry and `gantry-shim`, the per-container supervisor: what it is
//! told (shim.json in the container directory) and what it reports (started.json, exit.json,
//! the log file). Files rather than a socket, so that anything that restarts can re-attach by
//! reading them, and a pidfd on the shim tells when it is done.

use crate::oci::RuntimeKind;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub const SPEC_FILE: &str = "shim.json";
pub const STARTED_FILE: &str = "started.json";
pub const EXIT_FILE: &str = "exit.json";
pub const LOG_FILE: &str = "container.log";
/// Where the shim binds its task's network namespace in its own mount namespace.
pub const NETNS_FILE: &str = "netns";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimSpec {
    pub id: String,
    pub runtime: RuntimeKind,
    /// The runtime's state directory (--root).
    pub runtime_root: PathBuf,
    /// Overlay lower directories, topmost first.
    pub lowers: Vec<PathBuf>,
    pub cgroup_path: String,
    pub stop_signal: i32,
    pub stop_timeout_secs: u64,
    /// The task's network namespace (None: the node's own) and the shared directory of every
    /// task's namespace mounts, which the shim detaches after binding its own privately.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    #[serde(default)]
    pub netns_dir: Option<PathBuf>,
    /// The node's template mount namespace (`mntns`): joined, then copied, instead of copying
    /// the node's namespace and detaching what a task must not see.
    #[serde(default)]
    pub mount_template: Option<PathBuf>,
    /// The container has secret environment variables: the starter writes them (a JSON list
    /// of `NAME=value`) to the shim's stdin, never to a file.
    #[serde(default)]
    pub secret_env: bool,
    /// The container's directory on its task's ephemeral storage (`ephemeral`), holding its
    /// overlay upper and work directories: cloned by the shim before it leaves the node's
    /// mount namespace and attached at `STORAGE_MOUNT` in its own. The node's directory of
    /// every task's storage, which a shim without a template detaches. None: the upper and
    /// work directories are in the container's directory (a shim spec from before).
    #[serde(default)]
    pub storage: Option<PathBuf>,
    #[serde(default)]
    pub storage_dir: Option<PathBuf>,
    /// The task's volumes the container mounts: each volume's name and directory on the
    /// task's storage, cloned like `storage` and attached at `bundle::VOLUMES_DIR/<name>`.
    #[serde(default)]
    pub volumes: Vec<(String, PathBuf)>,
}

/// In the container's directory, inside the shim's mount namespace only: the container's
/// part of the task's ephemeral storage.
pub const STORAGE_MOUNT: &str = "storage";

/// The bundle directory the shim covers with a private tmpfs holding the config with the
/// secret variables; on disk it holds the same config without them.
pub const SECRET_BUNDLE: &str = "secret-bundle";
/// Most bytes of secret environment a shim reads.
pub const MAX_SECRET_ENV: usize = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShimStarted {
    pub shim_pid: i32,
    pub container_pid: i32,
    pub started_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerExit {
    /// Exit code; 128+N for a signal, 137 for OOM kills.
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// The stop signal was ignored and SIGKILL followed after the stop timeout.
    pub killed_after_timeout: bool,
    pub exited_at_ms: i64,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Writes JSON atomically (temp file + fsync + rename): readers never see half a file, and
/// a crash leaves either the old or the new content.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    write_json(path, value, true)
}

/// Writes JSON atomically (temp file + rename) without an fsync, for a file that describes
/// kernel state (a sandbox, a shim's spec, a started container, the node's address leases):
/// a process crash loses nothing (the page cache holds the file), and a crash that loses the
/// page cache (power loss) also ends every namespace and process it describes. The sandbox
/// and container readers take a missing or unreadable file as gone (no sandbox,
/// `ContainerState::Lost`). Three fsyncs were on every task start's path, each waiting for
/// the filesystem's journal (and so for the store's own fsyncs on the same disk).
pub fn write_json_volatile<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    write_json(path, value, false)
}

fn write_json<T: Serialize>(path: &Path, value: &T, durable: bool) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let data = serde_json::to_vec(value).map_err(io::Error::other)?;
    let f = fs::File::create(&tmp)?;
    io::Write::write_all(&mut &f, &data)?;
    if durable {
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// One line of the container log, in the CRI format: `<RFC3339Nano> <stream> <P|F> <bytes>`.
/// P marks a partial line (split because it was too long), F the end of one.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub content: &'a [u8],
}

pub fn parse_log_line(line: &[u8]) -> Option<LogLine<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or(b"");
    Some(LogLine {
        time,
        stream,
        partial: tag == b"P",
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cri_lines() {
        let l = parse_log_line(b"2026-01-01T00:00:00.000000001Z stdout F hello world").unwrap();
        assert_eq!((l.stream, l.partial, l.content), ("stdout", false, &b"hello world"[..]));
        let l = parse_log_line(b"2026-01-01T00:00:00Z stderr P ").unwrap();
        assert!(l.partial && l.content.is_empty());
    }
}
