//! Usage reports: every interval, the CPU time and memory of this node's running tasks, read
//! from their containers' cgroups and sent through the link (the AWS/ECS metrics).

use crate::link::TaskUsage;
use crate::supervise::container_dir_name;
use crate::Agent;
use gantry_control::metrics::ecs::cpu_units;
use gantry_control::metrics::ecs::TaskIo;
use gantry_control::TaskRecord;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A task's cumulative counters at a moment (epoch ms): CPU time (ns); network bytes received
/// and sent, disk bytes read and written (None: not readable).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    at_ms: i64,
    cpu_ns: u64,
    io: [Option<u64>; 4],
}

/// What one sampling read of a task: its record's key, cumulative CPU ns, memory MiB, I/O
/// counters, and bytes in use on its ephemeral storage.
struct Sample {
    key: String,
    cpu_ns: u64,
    memory_mib: f64,
    io: [Option<u64>; 4],
    storage_bytes: Option<u64>,
}

/// What sampling needs of a running task: its id and its containers' directory names.
#[derive(Debug)]
pub(crate) struct Sampled {
    id: String,
    containers: Vec<String>,
}

/// Where a sampled task's counters are beside its cgroups, looked up on its first sampling
/// (they stay for its life): its host veth and its ephemeral filesystem.
struct Counters {
    veth: Option<String>,
    storage: Option<String>,
}

impl Agent {
    /// Keeps a supervised task in the sampled set while its record says RUNNING.
    pub(crate) fn track_usage(&self, key: &str, rec: &TaskRecord) {
        let mut sampled = self.sampled.lock().expect("lock");
        if rec.task.last_status != "RUNNING" {
            sampled.remove(key);
        } else if !sampled.contains_key(key) {
            let s = Sampled {
                id: rec.id().to_string(),
                containers: rec.containers.iter().map(|c| container_dir_name(c.name())).collect(),
            };
            sampled.insert(key.to_string(), Arc::new(s));
        }
    }

    /// Samples and reports until the task is aborted (with the agent's run loop).
    pub(crate) async fn report_usage(self: Arc<Self>, every: Duration) {
        let mut last: HashMap<String, Reading> = HashMap::new();
        let mut counters: HashMap<String, Counters> = HashMap::new();
        loop {
            tokio::time::sleep(every).await;
            let running: Vec<(String, Arc<Sampled>)> = self
                .sampled
                .lock()
                .expect("lock")
                .iter()
                .map(|(k, s)| (k.clone(), s.clone()))
                .collect();
            let node = self.node.clone();
            let read = tokio::task::spawn_blocking(move || {
                // Tasks no longer running are left behind with the old map.
                let mut kept = HashMap::with_capacity(running.len());
                let readings = running
                    .into_iter()
                    .map(|(key, s)| {
                        let at = counters.remove(&key).unwrap_or_else(|| Counters {
                            veth: node.task_veth(&s.id),
                            storage: node.ephemeral_id(&s.id),
                        });
                        let sample = read_task(&node, &s, &at, key.clone());
                        kept.insert(key, at);
                        sample
                    })
                    .collect::<Vec<_>>();
                (readings, kept)
            })
            .await;
            let Ok((readings, kept)) = read else {
                counters = HashMap::new();
                continue;
            };
            counters = kept;
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

/// A task's CPU time (ns), memory in use (MiB) and I/O counters, summed over its containers,
/// and its ephemeral storage in use.
fn read_task(node: &gantry_runtime::task::Node, task: &Sampled, at: &Counters, key: String) -> Sample {
    let (mut cpu, mut memory) = (0u64, 0u64);
    let (mut read, mut write) = (None::<u64>, None::<u64>);
    for dir in &task.containers {
        let s = node.container_usage(&task.id, dir);
        cpu += s.cpu_usage_ns.unwrap_or(0);
        memory += s.memory_bytes.unwrap_or(0);
        if let Some(r) = s.io_read_bytes {
            *read.get_or_insert(0) += r;
        }
        if let Some(w) = s.io_write_bytes {
            *write.get_or_insert(0) += w;
        }
    }
    let (rx, tx) = at
        .veth
        .as_deref()
        .and_then(gantry_runtime::task::Node::veth_bytes)
        .unzip();
    Sample {
        key,
        cpu_ns: cpu,
        memory_mib: memory as f64 / (1024.0 * 1024.0),
        io: [rx, tx, read, write],
        storage_bytes: at
            .storage
            .as_deref()
            .and_then(|id| node.storage_usage(id))
            .map(|(_, used)| used),
    }
}

/// Each counter's growth between two readings (None when unreadable either time, or when
/// it went backwards: a reset).
fn io_delta(prev: [Option<u64>; 4], now: [Option<u64>; 4]) -> Option<TaskIo> {
    let d = |i: usize| match (prev[i], now[i]) {
        (Some(a), Some(b)) if b >= a => Some((b - a) as f64),
        _ => None,
    };
    let io = TaskIo {
        network_rx_bytes: d(0),
        network_tx_bytes: d(1),
        storage_read_bytes: d(2),
        storage_write_bytes: d(3),
    };
    (io != TaskIo::default()).then_some(io)
}

/// Usage since each task's previous reading; a task's first reading only starts its count,
/// and tasks no longer read are forgotten.
fn next_usage(last: &mut HashMap<String, Reading>, readings: Vec<Sample>, now_ms: i64) -> Vec<TaskUsage> {
    let mut next = HashMap::with_capacity(readings.len());
    let mut usage = Vec::new();
    for Sample {
        key,
        cpu_ns,
        memory_mib,
        io,
        storage_bytes,
    } in readings
    {
        if let Some(prev) = last.get(&key) {
            usage.push(TaskUsage {
                key: key.clone(),
                at_ms: now_ms,
                from_ms: prev.at_ms,
                cpu_units: cpu_units(prev.cpu_ns, cpu_ns, now_ms - prev.at_ms),
                memory_mib,
                io: io_delta(prev.io, io),
                ephemeral_storage_bytes: storage_bytes.map(|b| b as f64),
            });
        }
        next.insert(
            key,
            Reading {
                at_ms: now_ms,
                cpu_ns,
                io,
            },
        );
    }
    *last = next;
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(key: &str, cpu_ns: u64, memory_mib: f64, io: [Option<u64>; 4]) -> Sample {
        Sample {
            key: key.into(),
            cpu_ns,
            memory_mib,
            io,
            storage_bytes: None,
        }
    }

    #[test]
    fn usage_is_the_difference_between_readings() {
        let mut last = HashMap::new();
        let none = [None; 4];
        assert!(next_usage(&mut last, vec![sample("a", 1_000_000_000, 10.0, none)], 0).is_empty());
        // Half a vCPU over 10 s: 5 s of CPU time = 512 units.
        let u = next_usage(&mut last, vec![sample("a", 6_000_000_000, 12.0, none)], 10_000);
        assert_eq!(u.len(), 1);
        assert_eq!((u[0].cpu_units, u[0].memory_mib, u[0].io), (512.0, 12.0, None));
        // A task gone from the readings is forgotten; a new one starts counting.
        assert!(next_usage(&mut last, vec![sample("b", 5, 1.0, none)], 20_000).is_empty());
        assert!(!last.contains_key("a"));
    }

    #[test]
    fn io_is_the_growth_of_each_counter() {
        let mut last = HashMap::new();
        let first = [Some(100), Some(50), Some(0), None];
        next_usage(&mut last, vec![sample("a", 0, 1.0, first)], 0);
        // rx grew 900, tx went backwards (a reset: unknown), read grew 4096, write unreadable.
        let then = [Some(1000), Some(10), Some(4096), Some(7)];
        let u = next_usage(&mut last, vec![sample("a", 0, 1.0, then)], 10_000);
        let io = u[0].io.unwrap();
        assert_eq!(io.network_rx_bytes, Some(900.0));
        assert_eq!(io.network_tx_bytes, None);
        assert_eq!(io.storage_read_bytes, Some(4096.0));
        assert_eq!(io.storage_write_bytes, None);
    }
}
