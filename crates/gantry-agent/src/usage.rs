//! Usage reports: every interval, the CPU time and memory of this node's running tasks, read
//! from their containers' cgroups and sent through the link (the AWS/ECS metrics).

use crate::link::TaskUsage;
use crate::supervise::container_dir_name;
use crate::Agent;
use gantry_control::metrics::ecs::cpu_units;
use gantry_control::TaskRecord;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A task's cumulative CPU time (ns) at a moment (epoch ms).
type Reading = (u64, i64);

impl Agent {
    /// Keeps a supervised task in the sampled set while its record says RUNNING.
    pub(crate) fn track_usage(&self, key: &str, rec: &TaskRecord) {
        let mut sampled = self.sampled.lock().expect("lock");
        if rec.task.last_status == "RUNNING" {
            sampled.insert(key.to_string(), rec.clone());
        } else {
            sampled.remove(key);
        }
    }

    /// Samples and reports until the task is aborted (with the agent's run loop).
    pub(crate) async fn report_usage(self: Arc<Self>, every: Duration) {
        let mut last: HashMap<String, Reading> = HashMap::new();
        loop {
            tokio::time::sleep(every).await;
            let running: Vec<(String, TaskRecord)> = self
                .sampled
                .lock()
                .expect("lock")
                .iter()
                .map(|(k, r)| (k.clone(), r.clone()))
                .collect();
            let node = self.node.clone();
            let readings = tokio::task::spawn_blocking(move || {
                running
                    .into_iter()
                    .map(|(k, r)| {
                        let (cpu, memory) = read_task(&node, &r);
                        (k, cpu, memory)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            let now = chrono::Utc::now().timestamp_millis();
            let usage = next_usage(&mut last, readings, now);
            if usage.is_empty() {
                continue;
            }
            if let Err(e) = self.link.put_usage(&usage).await {
                tracing::warn!(error = %e, tasks = usage.len(), "usage report not delivered");
            }
        }
    }
}

/// A task's CPU time (ns) and memory in use (MiB), summed over its containers.
fn read_task(node: &gantry_runtime::task::Node, rec: &TaskRecord) -> (u64, f64) {
    let id = rec.id();
    let (mut cpu, mut memory) = (0u64, 0u64);
    for c in &rec.containers {
        let s = node.container_stats(id, &container_dir_name(c.name()));
        cpu += s.cpu_usage_ns.unwrap_or(0);
        memory += s.memory_bytes.unwrap_or(0);
    }
    (cpu, memory as f64 / (1024.0 * 1024.0))
}

/// Usage since each task's previous reading; a task's first reading only starts its count,
/// and tasks no longer read are forgotten.
fn next_usage(last: &mut HashMap<String, Reading>, readings: Vec<(String, u64, f64)>, now_ms: i64) -> Vec<TaskUsage> {
    let mut next = HashMap::with_capacity(readings.len());
    let mut usage = Vec::new();
    for (key, cpu_ns, memory_mib) in readings {
        if let Some(&(prev_ns, prev_ms)) = last.get(&key) {
            usage.push(TaskUsage {
                key: key.clone(),
                at_ms: now_ms,
                from_ms: prev_ms,
                cpu_units: cpu_units(prev_ns, cpu_ns, now_ms - prev_ms),
                memory_mib,
            });
        }
        next.insert(key, (cpu_ns, now_ms));
    }
    *last = next;
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_the_difference_between_readings() {
        let mut last = HashMap::new();
        assert!(next_usage(&mut last, vec![("a".into(), 1_000_000_000, 10.0)], 0).is_empty());
        // Half a vCPU over 10 s: 5 s of CPU time = 512 units.
        let u = next_usage(&mut last, vec![("a".into(), 6_000_000_000, 12.0)], 10_000);
        assert_eq!(u.len(), 1);
        assert_eq!((u[0].cpu_units, u[0].memory_mib), (512.0, 12.0));
        // A task gone from the readings is forgotten; a new one starts counting.
        assert!(next_usage(&mut last, vec![("b".into(), 5, 1.0)], 20_000).is_empty());
        assert!(!last.contains_key("a"));
    }
}
