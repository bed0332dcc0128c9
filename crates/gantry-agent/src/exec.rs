//! ECS Exec on the node: a session's command runs in its container through the runtime
//! (`crun exec`), in a terminal when asked (a pty whose other side the runtime bridges into
//! the container), its input and output carried by channels to whoever holds the stream.

use crate::supervise::container_dir_name;
use crate::Agent;
use gantry_control::exec::{ExecInput, ExecProcess, ExecRunner, ExecSession};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Stdio};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The agent as the runner of its own tasks' exec sessions.
pub struct AgentExec(pub Arc<Agent>);

#[async_trait::async_trait]
impl ExecRunner for AgentExec {
    async fn start(&self, s: &ExecSession, tty: bool) -> Result<ExecProcess, String> {
        let a = &self.0;
        // Through the link: only a task placed on this node is found.
        let (rec, _) = a
            .link
            .get_task(&s.task_key)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the task is gone")?;
        if rec.task.last_status != "RUNNING" {
            return Err(format!("the task is {}", rec.task.last_status));
        }
        let cmd = a
            .node
            .exec_command(rec.id(), &container_dir_name(&s.container), &s.command, tty);
        if tty {
            spawn_tty(cmd)
        } else {
            spawn_piped(cmd)
        }
    }
}

/// Reads `from` into `out` until it ends (EOF, or EIO once a terminal's last writer went).
fn pump_out(mut from: File, out: mpsc::Sender<Vec<u8>>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || out.blocking_send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
}

/// Reports the child's exit code, and stops it if the holder lets go first: SIGTERM (the
/// runtime passes it to the command), SIGKILL five seconds on.
fn wait_exit(mut child: Child, exit: oneshot::Sender<i32>) -> oneshot::Sender<()> {
    let pid = child.id() as i32;
    let exited = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = exited.clone();
    std::thread::spawn(move || {
        let code = match child.wait() {
            Ok(st) => st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)),
            Err(_) => 255,
        };
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = exit.send(code);
    });
    let (hold, released) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = released.await;
        for signal in [libc::SIGTERM, libc::SIGKILL] {
            // Not yet reaped, so the pid is still the child's.
            if exited.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid, signal) };
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
    });
    hold
}

fn spawn_piped(mut cmd: std::process::Command) -> Result<ExecProcess, String> {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("starting the command: {e}"))?;
    let (out_tx, out_rx) = mpsc::channel(64);
    for fd in [
        child.stdout.take().map(OwnedFd::from),
        child.stderr.take().map(OwnedFd::from),
    ]
    .into_iter()
    .flatten()
    {
        pump_out(File::from(fd), out_tx.clone());
    }
    let mut stdin = child.stdin.take().map(|s| File::from(OwnedFd::from(s)));
    let (in_tx, mut in_rx) = mpsc::channel::<ExecInput>(64);
    std::thread::spawn(move || {
        while let Some(msg) = in_rx.blocking_recv() {
            match msg {
                ExecInput::Data(d) => {
                    if stdin.as_mut().is_none_or(|s| s.write_all(&d).is_err()) {
                        break;
                    }
                }
                ExecInput::Resize(..) => {}
                ExecInput::Eof => stdin = None,
            }
        }
    });
    let (exit_tx, exit_rx) = oneshot::channel();
    let hold = wait_exit(child, exit_tx);
    Ok(ExecProcess {
        input: in_tx,
        output: out_rx,
        exit: exit_rx,
        hold,
    })
}

fn set_size(fd: i32, cols: u16, rows: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer; fd is our pty's master.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

fn spawn_tty(mut cmd: std::process::Command) -> Result<ExecProcess, String> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors; no name, termios or size is passed.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(format!("opening a terminal: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: openpty returned two fresh descriptors we now own.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    set_size(master.as_raw_fd(), 80, 24);
    let io = |fd: &OwnedFd| fd.try_clone().map(Stdio::from).map_err(|e| e.to_string());
    cmd.stdin(io(&slave)?).stdout(io(&slave)?).stderr(io(&slave)?);
    // SAFETY: only async-signal-safe calls between fork and exec: the runtime gets a session
    // of its own with the terminal as its controlling one (it resizes on SIGWINCH).
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| format!("starting the command: {e}"))?;
    drop(slave);
    let (out_tx, out_rx) = mpsc::channel(64);
    let reader = File::from(master.try_clone().map_err(|e| e.to_string())?);
    pump_out(reader, out_tx);
    let mut writer = File::from(master);
    let (in_tx, mut in_rx) = mpsc::channel::<ExecInput>(64);
    std::thread::spawn(move || {
        while let Some(msg) = in_rx.blocking_recv() {
            let ok = match msg {
                ExecInput::Data(d) => writer.write_all(&d).is_ok(),
                ExecInput::Resize(cols, rows) => {
                    set_size(writer.as_raw_fd(), cols, rows);
                    true
                }
                // End of input on a terminal is its EOF character.
                ExecInput::Eof => writer.write_all(&[4]).is_ok(),
            };
            if !ok {
                break;
            }
        }
    });
    let (exit_tx, exit_rx) = oneshot::channel();
    let hold = wait_exit(child, exit_tx);
    Ok(ExecProcess {
        input: in_tx,
        output: out_rx,
        exit: exit_rx,
        hold,
    })
}
