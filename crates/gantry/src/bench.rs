//! `gantry debug bench`: task start-to-exit latency of Gantry against `crun run` of an
//! equivalent bundle (same rootfs layers, same spec, a warm network namespace), measured
//! interleaved in one process so both see the same machine noise.

use crate::NodeArgs;
use anyhow::Result;
use gantry_runtime::bundle::{self, ContainerSpec};
use gantry_runtime::task::{new_task_id, ContainerState};
use std::path::PathBuf;
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

    // Baseline bundle: the same layers as a read-only overlay, the same generated spec.
    let base = cfg.data_dir.join("bench");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(base.join("rootfs"))?;
    let img = node.images().config(&image)?;
    let mut lowers: Vec<PathBuf> = image.layers.iter().map(|l| node.images().layer_path(l)).collect();
    lowers.reverse();
    let base_sb = node.network().create()?;
    gantry_runtime::net::Network::write_etc_files(&base_sb, "bench", &base.join("etc"), false)?;
    let mut oci = bundle::build_spec(
        None,
        &img,
        &spec,
        &lowers,
        &base_sb,
        &base.join("etc"),
        "/gantry/bench-crun",
    )?;
    // A bare crun compiles the seccomp profile itself: the program Gantry compiled once is
    // Gantry's own saving, not the baseline's.
    oci.set_annotations(None);
    bundle::write_spec(&oci, &base)?;
    // The same layers as an overlay with its own upper dir, prepared once: crun only runs.
    std::fs::create_dir_all(base.join("upper"))?;
    std::fs::create_dir_all(base.join("work"))?;
    let lower_opt: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower_opt.join(":"),
        base.join("upper").display(),
        base.join("work").display()
    );
    let mnt = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(base.join("rootfs"))
        .status()?;
    anyhow::ensure!(mnt.success(), "mounting the baseline rootfs failed");
    let hide = gantry_runtime::oci::hybrid_cgroup2_mounts();
    let runtime_root = cfg.run_dir.join("bench-runtime");

    let mut crun_ms = Vec::new();
    let (mut primed, mut unprimed) = (Phases::default(), Phases::default());
    let result = (|| -> Result<()> {
        for i in 0..a.runs {
            // Baseline: crun run, wall time from spawn to exit.
            let mut c = Command::new(cfg.runtime.binary());
            c.arg("--root")
                .arg(&runtime_root)
                .args(["run", "--bundle"])
                .arg(&base)
                .arg(format!("bench-crun-{i}"));
            c.stdout(std::process::Stdio::null());
            gantry_runtime::run_in_private_mount_ns(&mut c, &hide)?;
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
    let _ = Command::new("umount").arg(base.join("rootfs")).status();
    node.network().destroy(&base_sb)?;
    node.drain_pools()?;
    let _ = std::fs::remove_dir_all(&base);
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
