//! Container Insights' counts (ECS/ContainerInsights) for clusters whose containerInsights
//! setting is enabled or enhanced, published by the leader from the service and task records:
//! per cluster and service DesiredTaskCount, RunningTaskCount, PendingTaskCount,
//! DeploymentCount, TaskSetCount, CpuReserved and MemoryReserved; per cluster ServiceCount,
//! TaskCount, CpuReserved and MemoryReserved. Utilisation comes from the AWS/ECS metrics.

use super::stats::Agg;
use super::store::{MetricKey, Published};
use crate::services::ServiceRecord;
use crate::TaskRecord;
use gantry_types::arn::{cluster_name, Scope};
use std::collections::{BTreeMap, BTreeSet};

pub const NAMESPACE: &str = "ECS/ContainerInsights";

fn point(name: &str, dims: &[(String, String)], ts_ms: i64, unit: &str, v: f64) -> Published {
    Published {
        key: MetricKey {
            namespace: NAMESPACE.into(),
            name: name.into(),
            dims: dims.to_vec(),
        },
        ts_ms,
        unit: unit.into(),
        resolution: 1,
        agg: Agg::set(1.0, v, v, v),
    }
}

/// A cluster's services, running tasks, reserved CPU units and reserved MiB.
type Totals = (f64, f64, f64, f64);

/// The counts of the clusters in `enabled` ((account, region, cluster name)), at `ts_ms`.
pub fn datapoints(
    enabled: &BTreeSet<(String, String, String)>,
    services: &[ServiceRecord],
    tasks: &[TaskRecord],
    ts_ms: i64,
) -> Vec<(Scope, Published)> {
    let on = |account: &str, region: &str, cluster: &str| {
        enabled.contains(&(account.to_string(), region.to_string(), cluster.to_string()))
    };
    // Per cluster: services, running tasks, reserved CPU units and MiB.
    let mut clusters: BTreeMap<(String, String, String), Totals> = BTreeMap::new();
    for key in enabled {
        clusters.insert(key.clone(), Default::default());
    }
    let mut out = Vec::new();
    for s in services.iter().filter(|s| s.service.status == "ACTIVE") {
        let cluster = cluster_name(&s.cluster);
        if !on(&s.account, &s.region, cluster) {
            continue;
        }
        let group = format!("service:{}", s.service.service_name);
        let running: Vec<&TaskRecord> = tasks
            .iter()
            .filter(|t| {
                t.account == s.account
                    && t.region == s.region
                    && t.cluster == s.cluster
                    && t.task.group.as_deref() == Some(&group)
                    && t.task.last_status == "RUNNING"
            })
            .collect();
        let cpu: f64 = running.iter().map(|t| t.cpu_units as f64).sum();
        let memory: f64 = running.iter().map(|t| t.memory_mib as f64).sum();
        let dims = [
            ("ClusterName".to_string(), cluster.to_string()),
            ("ServiceName".to_string(), s.service.service_name.clone()),
        ];
        let scope = Scope {
            account: s.account.clone(),
            region: s.region.clone(),
        };
        for (name, unit, v) in [
            ("DesiredTaskCount", "Count", s.service.desired_count as f64),
            ("RunningTaskCount", "Count", s.service.running_count as f64),
            ("PendingTaskCount", "Count", s.service.pending_count as f64),
            ("DeploymentCount", "Count", s.service.deployments.len() as f64),
            ("TaskSetCount", "Count", s.service.task_sets.len() as f64),
            ("CpuReserved", "None", cpu),
            ("MemoryReserved", "Megabytes", memory),
        ] {
            out.push((scope.clone(), point(name, &dims, ts_ms, unit, v)));
        }
        if let Some(c) = clusters.get_mut(&(s.account.clone(), s.region.clone(), cluster.to_string())) {
            c.0 += 1.0;
        }
    }
    for t in tasks.iter().filter(|t| t.task.last_status == "RUNNING") {
        let key = (
            t.account.clone(),
            t.region.clone(),
            cluster_name(&t.cluster).to_string(),
        );
        if let Some(c) = clusters.get_mut(&key) {
            c.1 += 1.0;
            c.2 += t.cpu_units as f64;
            c.3 += t.memory_mib as f64;
        }
    }
    for ((account, region, cluster), (services, running, cpu, memory)) in clusters {
        let dims = [("ClusterName".to_string(), cluster)];
        let scope = Scope { account, region };
        for (name, unit, v) in [
            ("ServiceCount", "Count", services),
            ("TaskCount", "Count", running),
            ("CpuReserved", "None", cpu),
            ("MemoryReserved", "Megabytes", memory),
        ] {
            out.push((scope.clone(), point(name, &dims, ts_ms, unit, v)));
        }
    }
    out
}
