//! Container health checks, as ECS runs them: the command inside the container every
//! `interval` seconds (first after one interval), `timeout` per run, `retries` consecutive
//! failures to become UNHEALTHY (failures during `startPeriod` do not count), HEALTHY on a
//! success. The task's healthStatus rolls up its essential containers'.

use crate::supervise::container_dir_name;
use crate::Agent;
use gantry_control::{TaskRecord, TaskSpecContainer};
use gantry_runtime::task::ContainerState;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// HEALTHY when every essential container with a health check is, UNHEALTHY when any is,
/// UNKNOWN otherwise.
pub fn rollup(rec: &TaskRecord) -> String {
    let statuses: Vec<&str> = rec
        .containers
        .iter()
        .filter(|c| {
            c.is_essential()
                && c.health_check
                    .as_ref()
                    .is_some_and(|h| h.command.first().map(String::as_str) != Some("NONE"))
        })
        .filter_map(|c| {
            rec.task
                .containers
                .iter()
                .find(|x| x.name == c.name())
                .map(|x| x.health_status.as_str())
        })
        .collect();
    if statuses.contains(&"UNHEALTHY") {
        "UNHEALTHY".into()
    } else if !statuses.is_empty() && statuses.iter().all(|s| *s == "HEALTHY") {
        "HEALTHY".into()
    } else {
        "UNKNOWN".into()
    }
}

pub fn spawn(a: &Arc<Agent>, key: &str, task_id: &str, c: &TaskSpecContainer) {
    let Some(hc) = c.health_check.clone() else { return };
    let argv: Vec<String> = match hc.command.first().map(String::as_str) {
        Some("CMD-SHELL") => vec!["/bin/sh".into(), "-c".into(), hc.command[1..].join(" ")],
        Some("CMD") => hc.command[1..].to_vec(),
        _ => return,
    };
    let (a, key, task_id, name) = (a.clone(), key.to_string(), task_id.to_string(), c.name().to_string());
    let interval = Duration::from_secs(hc.interval.unwrap_or(30) as u64);
    let timeout = Duration::from_secs(hc.timeout.unwrap_or(5) as u64);
    let retries = hc.retries.unwrap_or(3) as u32;
    let start_period = Duration::from_secs(hc.start_period.unwrap_or(0) as u64);
    tokio::spawn(async move {
        let started = Instant::now();
        let dir = container_dir_name(&name);
        let mut failures = 0u32;
        let mut status = "UNKNOWN".to_string();
        loop {
            tokio::time::sleep(interval).await;
            if !matches!(a.node.container_state(&task_id, &dir), ContainerState::Running(_)) {
                return;
            }
            let node = a.node.clone();
            let (t, d, args) = (task_id.clone(), dir.clone(), argv.clone());
            let ok = tokio::task::spawn_blocking(move || node.exec(&t, &d, &args, timeout))
                .await
                .map(|r| matches!(r, Ok(Some(0))))
                .unwrap_or(false);
            let next = if ok {
                failures = 0;
                "HEALTHY".to_string()
            } else if started.elapsed() < start_period {
                status.clone()
            } else {
                failures += 1;
                if failures >= retries {
                    "UNHEALTHY".to_string()
                } else {
                    status.clone()
                }
            };
            if next != status {
                status = next.clone();
                let r = crate::supervise::update(&a, &key, |r| {
                    if let Some(ct) = r.task.containers.iter_mut().find(|x| x.name == name) {
                        ct.health_status = next.clone();
                    }
                    r.task.health_status = rollup(r);
                    true
                })
                .await;
                if let Err(e) = r {
                    tracing::warn!(task = %task_id, error = %e, "recording health");
                }
            }
        }
    });
}
