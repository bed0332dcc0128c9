//! `gantry debug bench-retention`: how much disk a metric series costs under CloudWatch's
//! retention, measured: S series get a datapoint every 10 seconds for D simulated days, with
//! the rollups run every simulated hour as the housekeeping runs them, in a scratch
//! metrics.db. Reports bytes and rows per series and extrapolates to 1,000 series.

use gantry_control::metrics::stats::Agg;
use gantry_control::metrics::{MetricKey, MetricStore, MetricWrite, Published};

#[derive(clap::Args)]
pub struct BenchRetentionArgs {
    /// Series written (each a task's metric: one datapoint every 10 seconds).
    #[arg(long, default_value_t = 20)]
    series: usize,
    /// Simulated days.
    #[arg(long, default_value_t = 30)]
    days: i64,
}

pub fn run(a: BenchRetentionArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(a.series > 0 && a.days > 0, "--series and --days must be positive");
    let dir = std::env::temp_dir().join(format!("gantry-bench-retention-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("metrics.db");
    let result = measure(&a, &path);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(a: &BenchRetentionArgs, path: &std::path::Path) -> anyhow::Result<i32> {
    let store = MetricStore::open(path)?;
    let start: i64 = 1_767_225_600_000;
    let hour = 3_600_000;
    let began = std::time::Instant::now();
    for h in 0..(a.days * 24) {
        let t0 = start + h * hour;
        let data = (0..a.series)
            .flat_map(|s| {
                (0..360).map(move |k| Published {
                    key: MetricKey {
                        namespace: "Bench".into(),
                        name: "CPUUtilization".into(),
                        dims: vec![("TaskId".into(), format!("{s:032x}"))],
                    },
                    ts_ms: t0 + k * 10_000,
                    unit: "Percent".into(),
                    resolution: 1,
                    agg: Agg::single(((k * 7 + s as i64) % 100) as f64, 1.0),
                })
            })
            .collect();
        store.apply(
            &MetricWrite {
                account: "000000000000".into(),
                region: "us-east-1".into(),
                data,
            },
            None,
        )?;
        store.roll_up(t0 + hour)?;
    }
    store.vacuum()?;
    let bytes = std::fs::metadata(path)?.len() as f64;
    let rows = store.point_count()? as f64;
    let per = bytes / a.series as f64;
    println!(
        "{} series x {} days of 10-second points, rolled up hourly: {:.1} MB, {:.0} rows and {:.0} KB per series \
         ({:.1} s)",
        a.series,
        a.days,
        bytes / 1e6,
        rows / a.series as f64,
        per / 1e3,
        began.elapsed().as_secs_f64()
    );
    println!("1,000 such series: {:.2} GB", per * 1000.0 / 1e9);
    Ok(0)
}
