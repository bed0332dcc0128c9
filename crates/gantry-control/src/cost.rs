//! Cost metering: what each task's reservation costs at Fargate's prices, metered per minute
//! by the leader and published as metrics (namespace `Gantry/Cost`), so the cost history gets
//! the metric store's retention, rollups and replication, and is read with GetMetricData like
//! any other series (`gantry cost`, the console).
//!
//! A task is billed, as Fargate bills, from when its image pull started until it stopped, for
//! its task-level vCPU and memory; FARGATE_SPOT tasks at the Spot discount. Each minute yields
//! `Cost` (dollars), `vCPUSeconds` and `GBSeconds` per ClusterName, per ClusterName and
//! ServiceName, and per TagKey and TagValue of the task's tags (cost allocation).

use crate::metrics::stats::Agg;
use crate::metrics::store::{MetricKey, Published};
use crate::TaskRecord;
use gantry_types::arn::{cluster_name, Scope};
use std::collections::BTreeMap;

pub const NAMESPACE: &str = "Gantry/Cost";
const MINUTE_MS: i64 = 60_000;
/// How far back a new leader catches up on minutes nobody metered: stopped tasks stay in the
/// store three hours, so older minutes could not be metered whole.
pub const CATCH_UP_MS: i64 = 2 * 3600 * 1000;
/// Where the first minute not yet metered is kept.
const CURSOR_KEY: &str = "/cost/metered-until";

/// Prices per hour. The defaults are Fargate's Linux/x86 on-demand prices in us-east-1; Spot
/// is about 70% off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    pub vcpu_hour: f64,
    pub gb_hour: f64,
    /// The fraction FARGATE_SPOT tasks are discounted by (0 to 1).
    pub spot_discount: f64,
}

impl Default for Prices {
    fn default() -> Prices {
        Prices {
            vcpu_hour: 0.04048,
            gb_hour: 0.004445,
            spot_discount: 0.7,
        }
    }
}

impl Prices {
    /// Dollars for `vcpu_seconds` and `gb_seconds`, on Spot or not.
    pub fn dollars(&self, vcpu_seconds: f64, gb_seconds: f64, spot: bool) -> f64 {
        let full = (vcpu_seconds * self.vcpu_hour + gb_seconds * self.gb_hour) / 3600.0;
        if spot {
            full * (1.0 - self.spot_discount)
        } else {
            full
        }
    }
}

/// The span a task is billed for, in epoch ms: pull start (or start) to stop, or to `now_ms`
/// while it has not stopped. None for a task that never began pulling.
pub fn billed_span(t: &TaskRecord, now_ms: i64) -> Option<(i64, i64)> {
    let task = &t.task;
    let begin = task.pull_started_at.or(task.started_at)?;
    let end = task
        .stopped_at
        .or(task.execution_stopped_at)
        .or((task.last_status == "STOPPED").then_some(task.stopping_at).flatten());
    let end_ms = end.map(|s| (s * 1000.0) as i64).unwrap_or(now_ms).min(now_ms);
    Some(((begin * 1000.0) as i64, end_ms))
}

fn is_spot(t: &TaskRecord) -> bool {
    t.task.capacity_provider_name.as_deref() == Some("FARGATE_SPOT")
}

/// What one series accrued in a minute.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Accrued {
    pub vcpu_seconds: f64,
    pub gb_seconds: f64,
    pub dollars: f64,
}

impl Accrued {
    fn add(&mut self, o: &Accrued) {
        self.vcpu_seconds += o.vcpu_seconds;
        self.gb_seconds += o.gb_seconds;
        self.dollars += o.dollars;
    }
}

/// The dimension sets a task's cost is counted under.
fn dimension_sets(t: &TaskRecord) -> Vec<Vec<(String, String)>> {
    let cluster = ("ClusterName".to_string(), cluster_name(&t.cluster).to_string());
    let mut sets = vec![vec![cluster.clone()]];
    if let Some(service) = t.task.group.as_deref().and_then(|g| g.strip_prefix("service:")) {
        sets.push(vec![cluster, ("ServiceName".into(), service.into())]);
    }
    for tag in t.task.tags.iter().flatten() {
        if let (Some(k), Some(v)) = (&tag.key, &tag.value) {
            sets.push(vec![("TagKey".into(), k.clone()), ("TagValue".into(), v.clone())]);
        }
    }
    sets
}

/// The cost datapoints of the minute starting at `minute_ms`, for every task billed in it.
pub fn minute(tasks: &[TaskRecord], minute_ms: i64, now_ms: i64, prices: &Prices) -> Vec<(Scope, Published)> {
    let mut series: BTreeMap<(Scope, Vec<(String, String)>), Accrued> = BTreeMap::new();
    for t in tasks {
        let Some((begin, end)) = billed_span(t, now_ms) else {
            continue;
        };
        let overlap = (end.min(minute_ms + MINUTE_MS) - begin.max(minute_ms)).max(0) as f64 / 1000.0;
        if overlap <= 0.0 {
            continue;
        }
        let vcpu_seconds = overlap * t.cpu_units as f64 / 1024.0;
        let gb_seconds = overlap * t.memory_mib as f64 / 1024.0;
        let accrued = Accrued {
            vcpu_seconds,
            gb_seconds,
            dollars: prices.dollars(vcpu_seconds, gb_seconds, is_spot(t)),
        };
        for dims in dimension_sets(t) {
            let scope = Scope {
                account: t.account.clone(),
                region: t.region.clone(),
            };
            let key = (scope, dims);
            series.entry(key).or_default().add(&accrued);
        }
    }
    let mut out = Vec::new();
    for ((scope, dims), a) in series {
        for (name, unit, v) in [
            ("Cost", "None", a.dollars),
            ("vCPUSeconds", "Seconds", a.vcpu_seconds),
            ("GBSeconds", "Seconds", a.gb_seconds),
        ] {
            let key = MetricKey {
                namespace: NAMESPACE.into(),
                name: name.into(),
                dims: dims.clone(),
            };
            let published = Published {
                key,
                ts_ms: minute_ms,
                unit: unit.into(),
                resolution: 60,
                agg: Agg::set(1.0, v, v, v),
            };
            out.push((scope.clone(), published));
        }
    }
    out
}

/// The minutes to meter now: from the first not yet metered (or the last whole minute, the
/// first time; at most CATCH_UP_MS back) to the last whole minute.
pub fn due_minutes(cursor: Option<i64>, now_ms: i64) -> std::ops::Range<i64> {
    let last_whole = now_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
    let from = cursor.unwrap_or(last_whole - MINUTE_MS).max(last_whole - CATCH_UP_MS);
    from / MINUTE_MS..last_whole / MINUTE_MS
}

/// Meters every whole minute not yet metered and moves the cursor past them. A crash between
/// publishing and moving the cursor meters those minutes again on the next pass (counted
/// twice, never lost).
pub async fn meter(control: &crate::Control, metrics: &crate::metrics::Metrics) -> Result<usize, String> {
    let store = control.store.as_ref();
    let stored = store.get(CURSOR_KEY).await.map_err(|e| e.to_string())?;
    let cursor = stored
        .as_ref()
        .and_then(|kv| String::from_utf8_lossy(&kv.value).parse::<i64>().ok());
    let now = control.clock.now_ms();
    let due = due_minutes(cursor, now);
    if due.is_empty() {
        return Ok(0);
    }
    let tasks: Vec<TaskRecord> = control
        .all_tasks()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(_, t, _)| t)
        .collect();
    let mut published = 0;
    for m in due.clone() {
        let mut by_scope: BTreeMap<Scope, Vec<Published>> = BTreeMap::new();
        for (scope, p) in minute(&tasks, m * MINUTE_MS, now, &control.prices) {
            by_scope.entry(scope).or_default().push(p);
        }
        for (scope, data) in by_scope {
            published += data.len();
            metrics.publish(&scope, data).await.map_err(|e| e.to_string())?;
        }
    }
    // Compare-and-set: a deposed leader still metering cannot move the cursor back.
    let until = (due.end * MINUTE_MS).to_string();
    match stored {
        Some(kv) => store.update(CURSOR_KEY, until.as_bytes(), kv.mod_revision).await,
        None => store.create(CURSOR_KEY, until.as_bytes()).await,
    }
    .map_err(|e| e.to_string())?;
    Ok(published)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_types::model::{Tag, Task};

    const T0: i64 = 1_767_225_600_000; // a whole hour

    /// A 1 vCPU, 2 GB task billed from `from_s` to `to_s` (seconds after T0; None: running).
    fn rec(group: Option<&str>, from_s: i64, to_s: Option<i64>) -> TaskRecord {
        let at = |s: i64| (T0 + s * 1000) as f64 / 1000.0;
        TaskRecord {
            task: Task {
                group: group.map(String::from),
                pull_started_at: Some(at(from_s)),
                stopped_at: to_s.map(at),
                last_status: if to_s.is_some() { "STOPPED" } else { "RUNNING" }.into(),
                tags: Some(vec![Tag {
                    key: Some("team".into()),
                    value: Some("web".into()),
                }]),
                ..Default::default()
            },
            cluster: "arn:aws:ecs:us-east-1:000000000000:cluster/prod".into(),
            cpu_units: 1024,
            memory_mib: 2048,
            account: "000000000000".into(),
            ..crate::tasks::test_record("")
        }
    }

    fn value(points: &[(Scope, Published)], name: &str, dims: &[(&str, &str)]) -> Option<f64> {
        let dims: Vec<(String, String)> = dims.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        points
            .iter()
            .find(|(_, p)| p.key.name == name && p.key.dims == dims)
            .map(|(_, p)| p.agg.sum)
    }

    #[test]
    fn a_minute_bills_each_tasks_overlap_under_every_grouping() {
        let prices = Prices::default();
        // Whole minute; half the minute (started 30 s in); stopped 15 s into it; not yet.
        let tasks = [
            rec(Some("service:web"), -600, None),
            rec(Some("service:web"), 30, None),
            rec(None, -60, Some(15)),
            rec(Some("service:web"), 120, None),
        ];
        let points = minute(&tasks, T0, T0 + 600_000, &prices);
        let cluster = [("ClusterName", "prod")];
        // 60 + 30 + 15 vCPU-seconds; twice that in GB-seconds.
        assert_eq!(value(&points, "vCPUSeconds", &cluster), Some(105.0));
        assert_eq!(value(&points, "GBSeconds", &cluster), Some(210.0));
        let web = [("ClusterName", "prod"), ("ServiceName", "web")];
        assert_eq!(value(&points, "vCPUSeconds", &web), Some(90.0));
        let tag = [("TagKey", "team"), ("TagValue", "web")];
        assert_eq!(value(&points, "vCPUSeconds", &tag), Some(105.0));
        let dollars = value(&points, "Cost", &cluster).unwrap();
        let expected = (105.0 * 0.04048 + 210.0 * 0.004445) / 3600.0;
        assert!((dollars - expected).abs() < 1e-12, "{dollars} vs {expected}");
        // Every series is stamped with the minute, at one-minute resolution.
        assert!(points.iter().all(|(_, p)| p.ts_ms == T0 && p.resolution == 60));
    }

    #[test]
    fn running_tasks_are_billed_only_up_to_now_and_spot_is_discounted() {
        let prices = Prices::default();
        let running = rec(None, -60, None);
        let points = minute(std::slice::from_ref(&running), T0, T0 + 20_000, &prices);
        assert_eq!(value(&points, "vCPUSeconds", &[("ClusterName", "prod")]), Some(20.0));
        let mut spot = rec(None, -60, None);
        spot.task.capacity_provider_name = Some("FARGATE_SPOT".into());
        let on_demand = prices.dollars(60.0, 120.0, false);
        let points = minute(&[spot], T0, T0 + 60_000, &prices);
        let d = value(&points, "Cost", &[("ClusterName", "prod")]).unwrap();
        assert!((d - on_demand * 0.3).abs() < 1e-12);
        // A task that never began pulling costs nothing.
        let mut never = rec(None, 0, None);
        never.task.pull_started_at = None;
        assert!(minute(&[never], T0, T0 + 60_000, &prices).is_empty());
    }

    #[test]
    fn due_minutes_catch_up_but_not_past_the_stopped_tasks_kept() {
        // First pass: only the last whole minute.
        assert_eq!(due_minutes(None, T0 + 65_000), (T0 / 60_000)..(T0 / 60_000 + 1));
        // Up to date: nothing.
        assert!(due_minutes(Some(T0 + 60_000), T0 + 65_000).is_empty());
        // Behind by three minutes: those three.
        assert_eq!(due_minutes(Some(T0), T0 + 185_000).count(), 3);
        // Behind by a day: the catch-up window only.
        let r = due_minutes(Some(T0 - 86_400_000), T0);
        assert_eq!(r.count() as i64, CATCH_UP_MS / MINUTE_MS);
    }
}
