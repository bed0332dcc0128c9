//! `gantry debug bench`: task start-to-exit latency of Gantry against `crun run` of an
//! equivalent bundle (same rootfs layers, same spec, a warm network namespace), measured
//! interleaved in one process so both see the same machine noise.

use crate::NodeArgs;
use anyhow::Result;
use gantry_runtime::bundle::{self, ContainerSpec};
use gantry_runtime::task::{new_task_id, ContainerState};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Image to run (must contain the command).
    #[arg(long)]
    image: String,
    /// Iterations of each side.
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Warm namespace pool size.
    #[arg(long, default_value_t = 4)]
    pool: usize,
    /// Command to run.
    #[arg(last = true)]
    command: Vec<String>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let (m, p90) = (percentile(&v, 0.5), percentile(&v, 0.9));
    println!(
        "{name:<34} n={:<4} median {m:>7.2} ms   p90 {p90:>7.2} ms   min {:>7.2} ms",
        v.len(),
        v[0]
    );
    (m, p90)
}

/// The runtime's side of a benchmark: a bundle of the same layers as a read-only overlay and
/// the same generated spec as Gantry's, in a warm network namespace, prepared once so that
/// the runtime only runs.
pub struct Baseline {
    /// The bundle: config.json, the overlay's rootfs, upper and work dirs, /etc files.
    pub dir: PathBuf,
    /// config.json as written, for variants of it.
    pub oci: serde_json::Value,
    /// The image's layers, top first.
    lowers: Vec<PathBuf>,
    sandbox: gantry_runtime::net::Sandbox,
    /// The runtime with the baseline's state directory (its `run` is built here, bare).
    cli: gantry_runtime::oci::CliRuntime,
    hide: Vec<PathBuf>,
}

impl Baseline {
    pub fn prepare(
        cfg: &gantry_runtime::task::NodeConfig,
        node: &gantry_runtime::task::Node,
        image: &gantry_runtime::image::ImageRecord,
        spec: &ContainerSpec,
    ) -> Result<Baseline> {
        let dir = cfg.data_dir.join("bench");
        let _ = std::fs::remove_dir_all(&dir);
        let img = node.images().config(image)?;
        let mut lowers: Vec<PathBuf> = image.layers.iter().map(|l| node.images().layer_path(l)).collect();
        lowers.reverse();
        let sandbox = node.network().create()?;
        gantry_runtime::net::Network::write_etc_files(&sandbox, "bench", &dir.join("etc"), false)?;
        let mut oci = bundle::build_spec(
            None,
            &img,
            spec,
            &lowers,
            &sandbox,
            &dir.join("etc"),
            "/gantry/bench-crun",
        )?;
        // A bare crun compiles the seccomp profile itself: the program Gantry compiled once is
        // Gantry's own saving, not the baseline's.
        oci.set_annotations(None);
        bundle::write_spec(&oci, &dir)?;
        let hide = gantry_runtime::oci::hybrid_cgroup2_mounts();
        let baseline = Baseline {
            dir,
            oci: serde_json::to_value(&oci)?,
            lowers,
            sandbox,
            cli: gantry_runtime::oci::CliRuntime::new(
                cfg.runtime,
                cfg.run_dir.join("bench-runtime"),
                cfg.run_dir.join("bench-runtime.log"),
                hide.clone(),
            ),
            hide,
        };
        if let Err(e) = baseline.mount_rootfs(&baseline.dir) {
            baseline.remove(node)?;
            return Err(e);
        }
        Ok(baseline)
    }

    /// Mounts the image's layers at `<dir>/rootfs` as an overlay with its own upper and work
    /// dirs in `dir` (a container's writes never reach the layers or another container).
    pub fn mount_rootfs(&self, dir: &Path) -> Result<()> {
        for d in ["rootfs", "upper", "work"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let lower_opt: Vec<String> = self.lowers.iter().map(|p| p.display().to_string()).collect();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower_opt.join(":"),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        let mnt = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(dir.join("rootfs"))
            .status()?;
        anyhow::ensure!(mnt.success(), "mounting a baseline rootfs failed");
        Ok(())
    }

    /// The runtime's `run` of the bundle in `bundle` as container `id` (`--detach`: returns
    /// once the container's process runs), as Gantry's shim runs it: in a private mount
    /// namespace that hides a hybrid host's cgroup2 mount.
    pub fn run(&self, bundle: &Path, id: &str, detach: bool) -> Result<Command> {
        let mut c = Command::new(self.runtime());
        c.arg("--root").arg(&self.cli.root).arg("run");
        if detach {
            c.arg("--detach");
        }
        c.arg("--bundle").arg(bundle).arg(id);
        c.stdout(std::process::Stdio::null());
        gantry_runtime::run_in_private_mount_ns(&mut c, &self.hide)?;
        Ok(c)
    }

    /// The runtime's forced delete of container `id` (kills it first).
    pub fn delete(&self, id: &str) -> Result<()> {
        use gantry_runtime::oci::Runtime;
        Ok(self.cli.delete(id)?)
    }

    /// Unmounts the rootfs and removes the bundle (and any bundle made in it) and its
    /// namespace.
    pub fn remove(self, node: &gantry_runtime::task::Node) -> Result<()> {
        let _ = Command::new("umount").arg(self.dir.join("rootfs")).status();
        let burst = self.dir.join("burst");
        for e in std::fs::read_dir(&burst).into_iter().flatten().flatten() {
            let _ = Command::new("umount").arg(e.path().join("rootfs")).status();
        }
        node.network().destroy(&self.sandbox)?;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }

    pub fn runtime(&self) -> &'static str {
        self.cli.kind.binary()
    }
}

/// One side's measurements, in milliseconds since the task's creation began.
#[derive(Default)]
struct Phases {
    created: Vec<f64>,
    started: Vec<f64>,
    exited: Vec<f64>,
    cleanup: Vec<f64>,
}

impl Phases {
    /// Prints the side's summary; returns the median and p90 of start to exit.
    fn report(self, name: &str) -> (f64, f64) {
        let total = summary(name, self.exited);
        summary("  task created, since the start", self.created);
        summary("  container started, since the start", self.started);
        summary("  cleanup (not in the above)", self.cleanup);
        total
    }
}

/// A Gantry task of the benchmark's command: sandbox from the warm pool, bundle, shim,
/// container, exit observed, then removed.
fn gantry_run(
    node: &gantry_runtime::task::Node,
    a: &BenchArgs,
    image: &gantry_runtime::image::ImageRecord,
    spec: &ContainerSpec,
    out: &mut Phases,
) -> Result<()> {
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    node.fill_pools(a.pool)?;
    let task = new_task_id();
    let t = Instant::now();
    node.create_task(&task, "bench")?;
    out.created.push(ms(t));
    node.start_container(&task, "main", image, spec, Duration::from_secs(10))?;
    out.started.push(ms(t));
    let state = node.wait_container(&task, "main", Some(Duration::from_secs(30)));
    out.exited.push(ms(t));
    match state {
        Some(ContainerState::Exited(e)) if e.exit_code == 0 => {}
        other => anyhow::bail!("gantry run of {task} did not exit 0: {other:?}"),
    }
    let t = Instant::now();
    node.remove_task(&task)?;
    out.cleanup.push(ms(t));
    Ok(())
}

pub fn run(args: &NodeArgs, a: BenchArgs) -> Result<i32> {
    let cfg = args.node_config()?;
    let node = args.node()?;
    let image = node.images().resolve(&a.image, false)?;
    let command = if a.command.is_empty() {
        vec!["/bin/true".to_string()]
    } else {
        a.command.clone()
    };
    let spec = ContainerSpec {
        command: Some(command.clone()),
        hostname: "bench".into(),
        ..Default::default()
    };

    let baseline = Baseline::prepare(&cfg, &node, &image, &spec)?;

    let mut crun_ms = Vec::new();
    let (mut primed, mut unprimed) = (Phases::default(), Phases::default());
    let result = (|| -> Result<()> {
        for i in 0..a.runs {
            // Baseline: crun run, wall time from spawn to exit.
            let mut c = baseline.run(&baseline.dir, &format!("bench-crun-{i}"), false)?;
            let t = Instant::now();
            let st = c.status()?;
            crun_ms.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(st.success(), "baseline {} run failed: {st}", cfg.runtime.binary());

            // Gantry with and without the head start of cgroup moves, in alternating order.
            for on in [i % 2 == 0, i % 2 == 1] {
                node.set_prime_cgroup_moves(on);
                let phases = if on { &mut primed } else { &mut unprimed };
                gantry_run(&node, &a, &image, &spec, phases)?;
            }
        }
        node.set_prime_cgroup_moves(true);
        Ok(())
    })();
    baseline.remove(&node)?;
    node.drain_pools()?;
    result?;
    println!("task start to exit, {:?}, warm namespace pool of {}", command, a.pool);
    let (cm, cp) = summary(&format!("{} run (baseline)", cfg.runtime.binary()), crun_ms);
    let (gm, gp) = primed.report("gantry task (shim, netns, overlay)");
    println!(
        "ratio gantry/{}: median {:.2}x, p90 {:.2}x",
        cfg.runtime.binary(),
        gm / cm,
        gp / cp
    );
    let (um, up) = unprimed.report("gantry, no head start of cgroup moves");
    println!(
        "ratio without/with the head start: median {:.2}x, p90 {:.2}x",
        um / gm,
        up / gp
    );
    Ok(0)
}
