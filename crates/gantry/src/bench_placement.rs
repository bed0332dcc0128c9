//! `gantry debug bench-placement`: the scheduler (placement) alone over a simulated cluster,
//! N nodes in three zones, T tasks placed in RunTask-sized batches, for each strategy.
//! Reports placements per second and the per-batch latency (median, p90). No I/O.

use gantry_control::placement::{self, Demand, InstanceView, Placement, Strategy};
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

#[derive(clap::Args)]
pub struct BenchPlacementArgs {
    /// Simulated nodes (container instances), spread over three zones.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Tasks to place.
    #[arg(long, default_value_t = 20000)]
    tasks: usize,
    /// Tasks per placement call (RunTask places up to 10 at once).
    #[arg(long, default_value_t = 10)]
    batch: usize,
}

fn cluster(n: usize) -> Vec<InstanceView> {
    (0..n)
        .map(|i| InstanceView {
            arn: format!("arn:aws:ecs:us-east-1:000000000000:container-instance/bench/{i:032x}"),
            active: true,
            cpu: 8192,
            memory: 16384,
            used_cpu: 0,
            used_memory: 0,
            used_ports: HashSet::new(),
            attributes: BTreeMap::from([(
                "ecs.availability-zone".to_string(),
                Some(["us-east-1a", "us-east-1b", "us-east-1c"][i % 3].to_string()),
            )]),
            groups: vec![],
        })
        .collect()
}

pub fn run(a: BenchPlacementArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(
        a.nodes > 0 && a.tasks > 0 && a.batch > 0,
        "--nodes, --tasks and --batch must be positive"
    );
    let strategies: Vec<(&str, Vec<Strategy>)> = vec![
        ("spread zone, instance (service default)", placement::default_strategy()),
        ("binpack memory", vec![Strategy::BinpackMemory]),
        ("random", vec![Strategy::Random]),
    ];
    println!(
        "placing {} tasks (256 CPU, 512 MiB) on {} nodes, {} per call",
        a.tasks, a.nodes, a.batch
    );
    for (label, strategy) in strategies {
        let mut nodes = cluster(a.nodes);
        // Ten services' worth of groups, as a busy cluster has.
        let demands: Vec<Demand> = (0..10)
            .map(|s| Demand {
                cpu: 256,
                memory: 512,
                group: format!("service:svc-{s}"),
                ..Default::default()
            })
            .collect();
        let (mut placed, mut failed, mut batches) = (0usize, 0usize, Vec::new());
        let start = Instant::now();
        let mut left = a.tasks;
        let mut call = 0u64;
        while left > 0 {
            let n = left.min(a.batch);
            let t = Instant::now();
            let out = placement::place(&mut nodes, &demands[call as usize % demands.len()], n, &strategy, call);
            batches.push(t.elapsed().as_secs_f64() * 1000.0);
            placed += out.iter().filter(|p| matches!(p, Placement::On(_))).count();
            failed += out.iter().filter(|p| matches!(p, Placement::Failed { .. })).count();
            left -= n;
            call += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        batches.sort_by(f64::total_cmp);
        let pct = |q: f64| batches[((batches.len() - 1) as f64 * q).round() as usize];
        println!(
            "{label:<40} {:>9.0} placements/s  per call median {:.2} ms p90 {:.2} ms  ({placed} placed, {failed} failed)",
            a.tasks as f64 / secs,
            pct(0.5),
            pct(0.9)
        );
    }
    Ok(0)
}
