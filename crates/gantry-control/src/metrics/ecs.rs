//! What Gantry publishes for ECS, as AWS does: AWS/ECS CPUUtilization and MemoryUtilization
//! per ClusterName and per ClusterName + ServiceName, from the usage each agent samples of its
//! running tasks. Every task's utilisation is one value, so Average, Minimum, Maximum,
//! SampleCount (tasks sampled) and percentiles over tasks all come out of the one series.

use super::stats::Agg;
use super::store::{MetricKey, Published};
use crate::TaskRecord;
use gantry_types::arn::{cluster_name, Scope};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const NAMESPACE: &str = "AWS/ECS";

/// One running task's usage over the agent's last sampling interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskUsage {
    /// The task record's key.
    pub key: String,
    /// When the interval ended (epoch ms, the agent's clock).
    pub at_ms: i64,
    /// When it began: the datapoint's timestamp, so the period holding it is complete as soon
    /// as the report arrives (0 from agents before this field: `at_ms` is used).
    #[serde(default)]
    pub from_ms: i64,
    /// CPU time used over the interval, in CPU units (1024 = one vCPU busy throughout).
    pub cpu_units: f64,
    /// Memory in use at the end of the interval, MiB.
    pub memory_mib: f64,
    /// Bytes over the interval (absent from agents that do not read them, or for tasks on
    /// the host's network): received and sent on the task's interface, read from and
    /// written to disk by its containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<TaskIo>,
    /// Bytes in use on the task's ephemeral storage at the end of the interval (absent from
    /// agents that do not read it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage_bytes: Option<f64>,
}

/// A task's network and disk bytes over one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskIo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_rx_bytes: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_tx_bytes: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_read_bytes: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_write_bytes: Option<f64>,
}

/// CPU units used between two readings of a cgroup's cumulative CPU time.
pub fn cpu_units(prev_ns: u64, now_ns: u64, elapsed_ms: i64) -> f64 {
    if elapsed_ms <= 0 {
        return 0.0;
    }
    now_ns.saturating_sub(prev_ns) as f64 / (elapsed_ms as f64 * 1e6) * 1024.0
}

/// The service a task belongs to, from its group ("service:NAME").
fn service_of(rec: &TaskRecord) -> Option<&str> {
    rec.task.group.as_deref()?.strip_prefix("service:")
}

/// The datapoints a batch of usage makes, by account and region: each task's utilisation of
/// what it reserved, as a value of its cluster's and its service's series.
pub fn datapoints(usage: &[(TaskRecord, TaskUsage)]) -> Vec<(Scope, Published)> {
    let mut series: BTreeMap<(String, String, MetricKey), (i64, Agg)> = BTreeMap::new();
    for (rec, u) in usage {
        let cpu = 100.0 * u.cpu_units / rec.cpu_units.max(1) as f64;
        let memory = 100.0 * u.memory_mib / rec.memory_mib.max(1) as f64;
        let cluster = ("ClusterName".to_string(), cluster_name(&rec.cluster).to_string());
        let mut dimension_sets = vec![vec![cluster.clone()]];
        if let Some(service) = service_of(rec) {
            dimension_sets.push(vec![cluster, ("ServiceName".into(), service.to_string())]);
        }
        for dims in dimension_sets {
            for (name, value) in [("CPUUtilization", cpu), ("MemoryUtilization", memory)] {
                let key = MetricKey {
                    namespace: NAMESPACE.into(),
                    name: name.into(),
                    dims: dims.clone(),
                };
                let start = if u.from_ms > 0 { u.from_ms } else { u.at_ms };
                let at = start.div_euclid(1000) * 1000;
                let one = Agg::single(value, 1.0);
                series
                    .entry((rec.account.clone(), rec.region.clone(), key))
                    .and_modify(|(t, a)| {
                        *t = (*t).max(at);
                        a.merge(&one);
                    })
                    .or_insert((at, one));
            }
        }
    }
    series
        .into_iter()
        .map(|((account, region, key), (ts_ms, agg))| {
            let published = Published {
                key,
                ts_ms,
                unit: "Percent".into(),
                resolution: 1,
                agg,
            };
            (Scope { account, region }, published)
        })
        .collect()
}

/// The ECS/ContainerInsights utilisation a batch of usage makes, for tasks of clusters where
/// `enabled` says Container Insights is on: CpuUtilized (CPU units), MemoryUtilized (MiB),
/// NetworkRxBytes and NetworkTxBytes (bytes/second over the interval), StorageReadBytes and
/// StorageWriteBytes (bytes), EphemeralStorageUtilized and EphemeralStorageReserved (GB,
/// where the node reads the task's storage), each task one sample of its cluster's, service's and task
/// family's series (Sum over a period adds the tasks up; Average is per task).
pub fn insights_datapoints(
    usage: &[(TaskRecord, TaskUsage)],
    enabled: &dyn Fn(&TaskRecord) -> bool,
) -> Vec<(Scope, Published)> {
    let mut series: BTreeMap<(String, String, MetricKey), (i64, String, Agg)> = BTreeMap::new();
    for (rec, u) in usage.iter().filter(|(r, _)| enabled(r)) {
        let cluster = ("ClusterName".to_string(), cluster_name(&rec.cluster).to_string());
        let mut dimension_sets = vec![vec![cluster.clone()]];
        if let Some(service) = service_of(rec) {
            dimension_sets.push(vec![cluster.clone(), ("ServiceName".into(), service.to_string())]);
        }
        let family = rec.task.task_definition_arn.rsplit('/').next().unwrap_or("");
        let family = family.split(':').next().unwrap_or(family);
        dimension_sets.push(vec![cluster, ("TaskDefinitionFamily".into(), family.to_string())]);
        let start = if u.from_ms > 0 { u.from_ms } else { u.at_ms };
        let secs = ((u.at_ms - start) as f64 / 1000.0).max(1e-3);
        let io = u.io.unwrap_or_default();
        let per_sec = |b: Option<f64>| b.map(|b| b / secs);
        // Fargate's storage metrics, in GB: what the task uses and the size it has.
        let reserved = rec.task.ephemeral_storage.as_ref().map_or(20, |e| e.size_in_gi_b);
        let storage_gb = |b: f64| b / 1e9;
        let values = [
            ("CpuUtilized", "None", Some(u.cpu_units)),
            (
                "EphemeralStorageUtilized",
                "Gigabytes",
                u.ephemeral_storage_bytes.map(storage_gb),
            ),
            (
                "EphemeralStorageReserved",
                "Gigabytes",
                u.ephemeral_storage_bytes.map(|_| storage_gb((reserved << 30) as f64)),
            ),
            ("MemoryUtilized", "Megabytes", Some(u.memory_mib)),
            ("NetworkRxBytes", "Bytes/Second", per_sec(io.network_rx_bytes)),
            ("NetworkTxBytes", "Bytes/Second", per_sec(io.network_tx_bytes)),
            ("StorageReadBytes", "Bytes", io.storage_read_bytes),
            ("StorageWriteBytes", "Bytes", io.storage_write_bytes),
        ];
        let at = start.div_euclid(1000) * 1000;
        for dims in &dimension_sets {
            for (name, unit, value) in values {
                let Some(v) = value else { continue };
                let key = MetricKey {
                    namespace: super::insights::NAMESPACE.into(),
                    name: name.into(),
                    dims: dims.clone(),
                };
                let one = Agg::single(v, 1.0);
                series
                    .entry((rec.account.clone(), rec.region.clone(), key))
                    .and_modify(|(t, _, a)| {
                        *t = (*t).max(at);
                        a.merge(&one);
                    })
                    .or_insert((at, unit.to_string(), one));
            }
        }
    }
    series
        .into_iter()
        .map(|((account, region, key), (ts_ms, unit, agg))| {
            let published = Published {
                key,
                ts_ms,
                unit,
                resolution: 1,
                agg,
            };
            (Scope { account, region }, published)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_types::model::Task;

    fn rec(id: &str, group: Option<&str>, account: &str) -> TaskRecord {
        TaskRecord {
            task: Task {
                task_arn: format!("arn:aws:ecs:us-east-1:{account}:task/prod/{id}"),
                group: group.map(String::from),
                ..Default::default()
            },
            cluster: format!("arn:aws:ecs:us-east-1:{account}:cluster/prod"),
            cpu_units: 512,
            memory_mib: 1024,
            account: account.into(),
            ..crate::tasks::test_record("")
        }
    }

    fn usage(cpu_units: f64, memory_mib: f64) -> TaskUsage {
        TaskUsage {
            key: String::new(),
            at_ms: 11_500,
            from_ms: 1_500,
            cpu_units,
            memory_mib,
            io: None,
            ephemeral_storage_bytes: None,
        }
    }

    #[test]
    fn utilisation_per_cluster_and_service() {
        let batch = vec![
            (rec("a", Some("service:web"), "1"), usage(512.0, 256.0)),
            (rec("b", Some("service:web"), "1"), usage(256.0, 512.0)),
            (rec("c", None, "1"), usage(0.0, 102.4)),
            (rec("d", Some("service:web"), "2"), usage(128.0, 0.0)),
        ];
        let out = datapoints(&batch);
        let find = |account: &str, name: &str, service: Option<&str>| {
            out.iter()
                .find(|(s, p)| {
                    s.account == account
                        && p.key.name == name
                        && p.key.dims.iter().find(|d| d.0 == "ServiceName").map(|d| d.1.as_str()) == service
                })
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| panic!("no {account} {name} {service:?}"))
        };
        let web_cpu = find("1", "CPUUtilization", Some("web"));
        assert_eq!(
            (web_cpu.agg.count, web_cpu.agg.max, web_cpu.agg.min),
            (2.0, 100.0, 50.0)
        );
        assert_eq!(web_cpu.key.dims[0], ("ClusterName".into(), "prod".into()));
        assert_eq!(
            (web_cpu.ts_ms, web_cpu.unit.as_str(), web_cpu.resolution),
            (1_000, "Percent", 1)
        );
        let cluster_mem = find("1", "MemoryUtilization", None);
        assert_eq!(cluster_mem.agg.count, 3.0);
        assert_eq!(cluster_mem.agg.sum, 25.0 + 50.0 + 10.0);
        // Another account's task stays in its own account.
        assert_eq!(find("2", "CPUUtilization", Some("web")).agg.sum, 25.0);
        assert_eq!(out.len(), 2 * 2 + 2 * 2);
    }

    #[test]
    fn container_insights_utilisation_only_where_enabled() {
        let mut a = rec("a", Some("service:web"), "1");
        a.task.task_definition_arn = "arn:aws:ecs:us-east-1:1:task-definition/web:7".into();
        let mut with_io = usage(512.0, 256.0);
        with_io.io = Some(TaskIo {
            network_rx_bytes: Some(20_000.0),
            network_tx_bytes: None,
            storage_read_bytes: Some(4096.0),
            storage_write_bytes: Some(0.0),
        });
        with_io.ephemeral_storage_bytes = Some(3e9);
        let b = rec("b", Some("service:web"), "2");
        let batch = vec![(a, with_io), (b, usage(1.0, 1.0))];
        let out = insights_datapoints(&batch, &|r| r.account == "1");
        assert!(out
            .iter()
            .all(|(s, p)| s.account == "1" && p.key.namespace == "ECS/ContainerInsights"));
        let get = |name: &str, dim: &str| {
            out.iter()
                .find(|(_, p)| p.key.name == name && p.key.dims.iter().any(|d| d.0 == dim))
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| panic!("no {name} by {dim}"))
        };
        // 20,000 bytes over the 10-second interval.
        let rx = get("NetworkRxBytes", "ServiceName");
        assert_eq!((rx.agg.sum, rx.unit.as_str()), (2_000.0, "Bytes/Second"));
        assert_eq!(get("StorageReadBytes", "TaskDefinitionFamily").agg.sum, 4096.0);
        assert_eq!(get("CpuUtilized", "ServiceName").agg.sum, 512.0);
        let family = get("MemoryUtilized", "TaskDefinitionFamily");
        assert_eq!(family.key.dims[1], ("TaskDefinitionFamily".into(), "web".into()));
        // The task's storage in GB: 3 used of the default 20 GiB.
        let used = get("EphemeralStorageUtilized", "ServiceName");
        assert_eq!((used.agg.sum, used.unit.as_str()), (3.0, "Gigabytes"));
        let reserved = get("EphemeralStorageReserved", "ClusterName").agg.sum;
        assert!((reserved - 21.474_836_48).abs() < 1e-9, "{reserved}");
        // Unknown counters are left out rather than published as zeros.
        assert!(!out.iter().any(|(_, p)| p.key.name == "NetworkTxBytes"));
    }

    #[test]
    fn cpu_units_from_readings() {
        assert_eq!(cpu_units(0, 2_000_000_000, 2_000), 1024.0);
        assert_eq!(cpu_units(5, 1, 1_000), 0.0);
        assert_eq!(cpu_units(0, 1, 0), 0.0);
    }
}
