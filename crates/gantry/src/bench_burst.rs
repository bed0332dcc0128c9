//! `gantry debug bench-burst`: how fast a burst of long-running tasks gets started on this
//! machine, `P` at a time, by the runtime alone (`crun run --detach` of prepared bundles:
//! the ceiling any platform on the machine can reach) and by Gantry's node runtime (sandbox
//! from the warm pool, ephemeral storage, bundle, shim, container), in alternating rounds so
//! both see the same machine noise. The API's bursts (scripts/bench-*.py) are measured
//! against the first.

use crate::bench::Baseline;
use crate::NodeArgs;
use anyhow::Result;
use gantry_runtime::bundle::ContainerSpec;
use gantry_runtime::task::{new_task_id, Node};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BenchBurstArgs {
    /// Image to run (must contain the command).
    #[arg(long)]
    image: String,
    /// Tasks in each burst.
    #[arg(long, default_value_t = 300)]
    tasks: usize,
    /// Starts in flight at once (three agents start three at a time, one each).
    #[arg(long, default_value_t = 3)]
    parallel: usize,
    /// Bursts of each side.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Warm namespace pool size, filled before each of Gantry's bursts.
    #[arg(long, default_value_t = 16)]
    pool: usize,
    /// Command to run: it must keep running (default: a shell sleeping in a loop).
    #[arg(last = true)]
    command: Vec<String>,
}

/// Runs `start(i)` for i in 0..n, `parallel` at a time; the seconds until all returned.
fn burst(n: usize, parallel: usize, start: impl Fn(usize) -> Result<()> + Sync) -> Result<f64> {
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..parallel.max(1))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(());
                        }
                        start(i)?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("a burst worker panicked"))
    })?;
    Ok(t.elapsed().as_secs_f64())
}

/// Prepares one bundle per baseline container (its own overlay of the image, a cgroup of its
/// own), so the runtime's burst does nothing but run them.
fn runtime_bundles(baseline: &Baseline, n: usize) -> Result<Vec<std::path::PathBuf>> {
    (0..n)
        .map(|i| {
            let dir = baseline.dir.join("burst").join(i.to_string());
            baseline.mount_rootfs(&dir)?;
            let mut oci = baseline.oci.clone();
            oci["linux"]["cgroupsPath"] = serde_json::json!(format!("/gantry/bench-burst-{i}"));
            std::fs::write(dir.join("config.json"), serde_json::to_vec(&oci)?)?;
            Ok(dir)
        })
        .collect()
}

/// Busy CPU seconds of the whole machine so far: /proc/stat's first line, all but idle and
/// iowait (in USER_HZ, 100 a second on Linux's ABI).
fn machine_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    anyhow::ensure!(ticks.len() >= 5, "/proc/stat has no cpu line");
    Ok((ticks.iter().sum::<u64>() - ticks[3] - ticks[4]) as f64 / 100.0)
}

/// A burst's seconds and the machine's busy CPU seconds meanwhile.
struct Took {
    secs: f64,
    cpu: f64,
}

/// `f` (a burst returning its seconds) with the machine's CPU it took.
fn with_cpu(f: impl FnOnce() -> Result<f64>) -> Result<Took> {
    let before = machine_cpu_seconds()?;
    let secs = f()?;
    Ok(Took {
        secs,
        cpu: machine_cpu_seconds()? - before,
    })
}

fn runtime_burst(baseline: &Baseline, bundles: &[std::path::PathBuf], parallel: usize) -> Result<Took> {
    let id = |i: usize| format!("bench-burst-{i}");
    let took = with_cpu(|| {
        burst(bundles.len(), parallel, |i| {
            let st = baseline.run(&bundles[i], &id(i), true)?.status()?;
            anyhow::ensure!(st.success(), "{} run --detach failed: {st}", baseline.runtime());
            Ok(())
        })
    });
    // Every container goes, whether or not the burst completed.
    let removed = burst(bundles.len(), parallel, |i| baseline.delete(&id(i)).or(Ok(())));
    let took = took?;
    removed?;
    Ok(took)
}

fn gantry_burst(
    node: &Node,
    a: &BenchBurstArgs,
    image: &gantry_runtime::image::ImageRecord,
    spec: &ContainerSpec,
) -> Result<Took> {
    node.fill_pools(a.pool)?;
    let tasks: Vec<String> = (0..a.tasks).map(|_| new_task_id()).collect();
    let took = with_cpu(|| {
        burst(a.tasks, a.parallel, |i| {
            node.create_task(&tasks[i], "bench")?;
            node.start_container(&tasks[i], "main", image, spec, Duration::from_secs(2))?;
            Ok(())
        })
    });
    let removed = burst(a.tasks, a.parallel, |i| match node.task_dir(&tasks[i]).exists() {
        true => Ok(node.remove_task(&tasks[i])?),
        false => Ok(()),
    });
    let took = took?;
    removed?;
    Ok(took)
}

pub fn run(args: &NodeArgs, a: BenchBurstArgs) -> Result<i32> {
    anyhow::ensure!(a.tasks > 0 && a.rounds > 0, "--tasks and --rounds must be at least 1");
    let cfg = args.node_config()?;
    let node = args.node()?;
    let image = node.images().resolve(&a.image, false)?;
    let command = match a.command.is_empty() {
        true => ["/bin/sh", "-c", "while :; do sleep 1; done"]
            .map(String::from)
            .to_vec(),
        false => a.command.clone(),
    };
    let spec = ContainerSpec {
        command: Some(command.clone()),
        hostname: "bench".into(),
        ..Default::default()
    };
    let baseline = Baseline::prepare(&cfg, &node, &image, &spec)?;
    let (mut runtime_rates, mut gantry_rates) = (Vec::new(), Vec::new());
    let (mut runtime_cpu, mut gantry_cpu) = (Vec::new(), Vec::new());
    let result = (|| -> Result<()> {
        let bundles = runtime_bundles(&baseline, a.tasks)?;
        for round in 0..a.rounds {
            // Alternate which side goes first.
            for runtime_side in [round % 2 == 0, round % 2 == 1] {
                let took = match runtime_side {
                    true => runtime_burst(&baseline, &bundles, a.parallel)?,
                    false => gantry_burst(&node, &a, &image, &spec)?,
                };
                let rate = a.tasks as f64 / took.secs;
                let cpu_ms = took.cpu / a.tasks as f64 * 1000.0;
                let who = if runtime_side { baseline.runtime() } else { "gantry" };
                println!(
                    "round {round}: {who:<8} {} tasks in {:.2} s = {rate:.1} tasks/s, {cpu_ms:.1} ms of CPU per task",
                    a.tasks, took.secs
                );
                let (rates, cpu) = match runtime_side {
                    true => (&mut runtime_rates, &mut runtime_cpu),
                    false => (&mut gantry_rates, &mut gantry_cpu),
                };
                rates.push(rate);
                cpu.push(cpu_ms);
            }
        }
        Ok(())
    })();
    baseline.remove(&node)?;
    node.drain_pools()?;
    result?;
    println!("bursts of {} tasks, {} at a time, {:?}", a.tasks, a.parallel, command);
    let runtime = cfg.runtime.binary();
    let rm = median_rate(&format!("{runtime} run --detach"), runtime_rates);
    let gm = median_rate("gantry node tasks", gantry_rates);
    println!("ratio gantry/{runtime}: median {:.2}x", gm / rm);
    // What bounds a burst: the machine's cores over what each start costs them.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for (name, cpu) in [(runtime, runtime_cpu), ("gantry node tasks", gantry_cpu)] {
        let m = median(cpu);
        println!(
            "{name:<34} median {m:>7.1} ms of CPU per task (the machine: all {cores} cores busy, this is {:.0} tasks/s)",
            cores * 1000.0 / m
        );
    }
    Ok(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
}

fn median_rate(name: &str, rates: Vec<f64>) -> f64 {
    let (n, min) = (rates.len(), rates.iter().copied().fold(f64::INFINITY, f64::min));
    let m = median(rates);
    println!("{name:<34} n={n:<3} median {m:>7.1} tasks/s   min {min:>7.1} tasks/s");
    m
}
