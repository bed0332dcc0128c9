//! `gantry debug run`: one task in the foreground, like `docker run` without the API.

use crate::NodeArgs;
use anyhow::{Context, Result};
use gantry_runtime::bundle::{ContainerSpec, Limits};
use gantry_runtime::shim::parse_log_line;
use gantry_runtime::task::{new_task_id, ContainerState};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct RunArgs {
    /// Image reference (pulled if not in the store).
    #[arg(long)]
    image: String,
    /// CPU units (1024 = one core).
    #[arg(long)]
    cpu: Option<u32>,
    /// Memory hard limit in MiB.
    #[arg(long)]
    memory: Option<u64>,
    /// Maximum number of processes.
    #[arg(long)]
    pids: Option<i64>,
    /// Environment variable K=V (repeatable).
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// Override the image's Entrypoint (one word; the command follows as arguments).
    #[arg(long)]
    entrypoint: Option<String>,
    /// Working directory inside the container.
    #[arg(long, short = 'w')]
    workdir: Option<String>,
    /// User (name, uid, name:group or uid:gid).
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Seconds between the stop signal and SIGKILL.
    #[arg(long, default_value_t = 30)]
    stop_timeout: u64,
    /// Command, replacing the image's Cmd.
    #[arg(last = true)]
    command: Vec<String>,
}

impl RunArgs {
    pub fn container_spec(&self, hostname: &str) -> Result<ContainerSpec> {
        let mut env = Vec::new();
        for e in &self.env {
            let (k, v) = e
                .split_once('=')
                .with_context(|| format!("--env {e:?} must be KEY=VALUE"))?;
            env.push((k.to_string(), v.to_string()));
        }
        if !(2..=120).contains(&self.stop_timeout) && self.stop_timeout != 0 {
            anyhow::bail!("--stop-timeout must be between 2 and 120 seconds");
        }
        Ok(ContainerSpec {
            entrypoint: self.entrypoint.clone().map(|e| vec![e]),
            command: (!self.command.is_empty()).then(|| self.command.clone()),
            env,
            working_dir: self.workdir.clone(),
            user: self.user.clone(),
            hostname: hostname.to_string(),
            limits: Limits {
                cpu_units: self.cpu,
                memory_mib: self.memory,
                pids: self.pids,
                ..Default::default()
            },
            ..Default::default()
        })
    }
}

/// Prints new complete log records; returns how far it got.
fn pump_logs(reader: &mut BufReader<File>, buf: &mut Vec<u8>) {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    loop {
        let before = buf.len();
        match reader.read_until(b'\n', buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if !buf.ends_with(b"\n") {
            // A record still being written: keep it for the next round.
            let _ = before;
            break;
        }
        if let Some(l) = parse_log_line(&buf[..buf.len() - 1]) {
            let w: &mut dyn Write = if l.stream == "stderr" { &mut err } else { &mut out };
            let _ = w.write_all(l.content);
            if !l.partial {
                let _ = w.write_all(b"\n");
            }
        }
        buf.clear();
    }
    let _ = out.flush();
    let _ = err.flush();
}

pub fn run(args: &NodeArgs, a: RunArgs) -> Result<i32> {
    gantry_runtime::block_termination_signals();
    let node = Arc::new(args.node()?);
    let image = node.images().resolve(&a.image, true)?;
    let task = new_task_id();
    let hostname = task[..12].to_string();
    let spec = a.container_spec(&hostname)?;
    node.create_task(&task, &hostname)?;
    let started = node.start_container(&task, "main", &image, &spec, Duration::from_secs(a.stop_timeout));
    if let Err(e) = started {
        let _ = node.remove_task(&task);
        return Err(e.into());
    }
    {
        let node = node.clone();
        let task = task.clone();
        std::thread::spawn(move || loop {
            gantry_runtime::wait_termination_signal();
            node.stop_container(&task, "main");
        });
    }
    let mut reader = BufReader::new(File::open(node.log_path(&task, "main")).context("opening the container log")?);
    let mut pending = Vec::new();
    let state = loop {
        pump_logs(&mut reader, &mut pending);
        if let Some(s) = node.wait_container(&task, "main", Some(Duration::from_millis(50))) {
            break s;
        }
    };
    pump_logs(&mut reader, &mut pending);
    let code = match state {
        ContainerState::Exited(e) => {
            if e.oom_killed {
                eprintln!("gantry: container killed: out of memory (OutOfMemoryError)");
            } else if e.killed_after_timeout {
                eprintln!(
                    "gantry: container ignored its stop signal and was killed after {}s",
                    a.stop_timeout
                );
            }
            e.exit_code
        }
        ContainerState::Lost => {
            eprintln!("gantry: the container's shim disappeared without recording an exit");
            125
        }
        ContainerState::Running(_) => unreachable!("wait_container returns only ended states"),
    };
    node.remove_task(&task)?;
    Ok(code)
}
