//! `gantry debug trace TASK`: a task's start timeline from its record (DescribeTasks), the
//! same phases the OTLP trace of the start carries: provisioning (placed, until its node
//! began pulling), image pull, sandbox (network namespace, address, port bindings), start
//! (containers started and RUNNING recorded).

use crate::client::Client;
use anyhow::{bail, Result};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct TraceArgs {
    /// The task's id or ARN.
    task: String,
    #[arg(long, default_value = "default")]
    cluster: String,
}

/// (phase, from, to) in epoch seconds, for the phases the task has been through.
pub fn phases(task: &Value) -> Vec<(&'static str, f64, f64)> {
    let at = |k: &str| task[k].as_f64();
    let marks = [
        ("provisioning", at("createdAt"), at("pullStartedAt")),
        ("image pull", at("pullStartedAt"), at("pullStoppedAt")),
        ("sandbox", at("pullStoppedAt"), at("connectivityAt")),
        ("start", at("connectivityAt"), at("startedAt")),
    ];
    marks
        .into_iter()
        .filter_map(|(name, a, b)| Some((name, a?, b?)))
        .collect()
}

/// The timeline as printed: one line per phase with its offset, length and a bar.
pub fn render(task: &Value) -> String {
    let ps = phases(task);
    let mut out = format!(
        "task {} ({}) {}\n",
        task["taskArn"]
            .as_str()
            .unwrap_or("?")
            .rsplit('/')
            .next()
            .unwrap_or("?"),
        task["taskDefinitionArn"]
            .as_str()
            .unwrap_or("?")
            .rsplit('/')
            .next()
            .unwrap_or("?"),
        task["lastStatus"].as_str().unwrap_or("?"),
    );
    let Some(t0) = task["createdAt"].as_f64() else {
        return out;
    };
    let total = ps.iter().map(|p| p.2).fold(t0, f64::max) - t0;
    const WIDTH: f64 = 40.0;
    for (name, from, to) in &ps {
        let (off, len) = ((from - t0) * 1000.0, (to - from) * 1000.0);
        let scale = if total > 0.0 { WIDTH / (total * 1000.0) } else { 0.0 };
        let pad = (off * scale).round() as usize;
        let bar = ((len * scale).round() as usize).max(1);
        out += &format!(
            "  {name:<13} +{off:>8.1} ms {len:>8.1} ms  {}{}\n",
            " ".repeat(pad),
            "#".repeat(bar)
        );
    }
    if !ps.is_empty() {
        out += &format!("  {:<13} {:>20.1} ms created to RUNNING\n", "total", total * 1000.0);
    }
    if let (Some(stopped), Some(reason)) = (task["stoppedAt"].as_f64(), task["stoppedReason"].as_str()) {
        out += &format!("  stopped after {:.1} s: {reason}\n", stopped - t0);
    }
    out
}

pub fn run(a: TraceArgs) -> Result<i32> {
    let c = Client::from_env()?;
    let d = c.ecs("DescribeTasks", json!({"cluster": a.cluster, "tasks": [a.task]}))?;
    let Some(task) = d["tasks"].as_array().and_then(|t| t.first()) else {
        let reason = d["failures"][0]["reason"].as_str().unwrap_or("not found");
        bail!("task {} in cluster {}: {reason}", a.task, a.cluster);
    };
    print!("{}", render(task));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_shows_each_phase_it_went_through() {
        let t = json!({"taskArn": "arn:aws:ecs:r:a:task/c/abc", "taskDefinitionArn": "x/web:3", "lastStatus": "RUNNING",
                       "createdAt": 100.0, "pullStartedAt": 100.010, "pullStoppedAt": 100.030,
                       "connectivityAt": 100.040, "startedAt": 100.100});
        let p = phases(&t);
        assert_eq!(
            p.iter().map(|x| x.0).collect::<Vec<_>>(),
            ["provisioning", "image pull", "sandbox", "start"]
        );
        let text = render(&t);
        assert!(text.starts_with("task abc (web:3) RUNNING\n"), "{text}");
        assert!(text.contains("image pull"), "{text}");
        assert!(text.contains("100.0 ms created to RUNNING"), "{text}");
        // A task still pulling has only the phases it finished.
        let pending = json!({"createdAt": 1.0, "pullStartedAt": 1.5, "lastStatus": "PENDING"});
        assert_eq!(phases(&pending).len(), 1);
    }
}
