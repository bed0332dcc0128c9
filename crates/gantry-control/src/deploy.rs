//! The deployment planner: a pure function from a snapshot of a service's tasks to the tasks
//! to start and stop, honouring minimumHealthyPercent and maximumPercent at every step (the
//! ECS rolling update). No I/O; property-tested.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskHealth {
    /// Not RUNNING yet.
    Pending,
    /// RUNNING, health not established yet (checks pending, or within the grace period).
    Starting,
    /// RUNNING and healthy (or without health checks).
    Healthy,
    /// RUNNING and failing its container health checks past the grace period.
    Unhealthy,
}

#[derive(Debug, Clone)]
pub struct TaskView {
    pub arn: String,
    pub deployment: String,
    pub health: TaskHealth,
    /// Scale-in protection (UpdateTaskProtection).
    pub protected: bool,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub desired: u32,
    pub minimum_healthy_percent: u32,
    pub maximum_percent: u32,
    /// The deployment new tasks belong to.
    pub primary: String,
    /// Whether new tasks may be launched now (crash-loop backoff, failed deployment).
    pub launch_allowed: bool,
    /// Tasks that are not STOPPED and not already told to stop.
    pub tasks: Vec<TaskView>,
    /// Tasks told to stop that have not stopped yet: they still count against the maximum.
    pub stopping: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    FailedHealthChecks,
    ScaleIn,
    Replaced,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub start: u32,
    pub stop: Vec<(String, StopReason)>,
    /// Why the plan cannot progress, when it cannot.
    pub blocked: Option<String>,
}

pub fn max_tasks(s: &Snapshot) -> u32 {
    (s.desired as u64 * s.maximum_percent as u64 / 100) as u32
}

pub fn min_healthy(s: &Snapshot) -> u32 {
    (s.desired as u64 * s.minimum_healthy_percent as u64).div_ceil(100) as u32
}

fn stop<'a>(t: &'a TaskView, why: StopReason, p: &mut Plan, total: &mut u32, stopped: &mut Vec<&'a str>) {
    p.stop.push((t.arn.clone(), why));
    *total -= 1;
    stopped.push(&t.arn);
}

pub fn plan(s: &Snapshot) -> Plan {
    let mut p = Plan::default();
    // With a desired count, at least one task may always exist.
    let max_total = max_tasks(s).max(s.desired.min(1));
    let min_h = min_healthy(s);
    let mut total = s.tasks.len() as u32 + s.stopping;
    let mut healthy = s.tasks.iter().filter(|t| t.health == TaskHealth::Healthy).count() as u32;
    let mut stopped: Vec<&str> = Vec::new();
    let is_primary = |t: &TaskView| t.deployment == s.primary;

    // 1. Tasks failing health checks are replaced; they do not count as healthy anyway.
    for t in s.tasks.iter().filter(|t| t.health == TaskHealth::Unhealthy) {
        stop(t, StopReason::FailedHealthChecks, &mut p, &mut total, &mut stopped);
    }
    // 2. Old deployments' tasks that are not healthy yet are obsolete.
    for t in s
        .tasks
        .iter()
        .filter(|t| !is_primary(t) && !t.protected && matches!(t.health, TaskHealth::Pending | TaskHealth::Starting))
    {
        stop(t, StopReason::Replaced, &mut p, &mut total, &mut stopped);
    }
    // 3. The primary above the desired count scales in: least useful first, protected never,
    //    healthy ones only while the floor holds.
    let mut primary: Vec<&TaskView> = s
        .tasks
        .iter()
        .filter(|t| is_primary(t) && t.health != TaskHealth::Unhealthy)
        .collect();
    let mut primary_live = primary.len() as u32;
    if primary_live > s.desired {
        primary.sort_by_key(|t| match t.health {
            TaskHealth::Pending => 0,
            TaskHealth::Starting => 1,
            _ => 2,
        });
        for t in primary {
            if primary_live <= s.desired {
                break;
            }
            if t.protected {
                continue;
            }
            if t.health == TaskHealth::Healthy {
                if healthy <= min_h {
                    continue;
                }
                healthy -= 1;
            }
            stop(t, StopReason::ScaleIn, &mut p, &mut total, &mut stopped);
            primary_live -= 1;
        }
        if primary_live > s.desired {
            p.blocked = Some(format!(
                "{} tasks above the desired count cannot stop (scale-in protection or minimumHealthyPercent)",
                primary_live - s.desired
            ));
        }
    }
    // 4. Old healthy tasks go once the primary covers for them, or to make room for it, never
    //    below the healthy floor.
    let primary_healthy = s
        .tasks
        .iter()
        .filter(|t| is_primary(t) && t.health == TaskHealth::Healthy && !stopped.contains(&t.arn.as_str()))
        .count() as u32;
    let old_healthy: Vec<&TaskView> = s
        .tasks
        .iter()
        .filter(|t| !is_primary(t) && t.health == TaskHealth::Healthy && !t.protected)
        .collect();
    let old_healthy_all = s
        .tasks
        .iter()
        .filter(|t| !is_primary(t) && t.health == TaskHealth::Healthy)
        .count() as u32;
    let missing = s.desired.saturating_sub(primary_live);
    let room = max_total.saturating_sub(total);
    let surplus = old_healthy_all.saturating_sub(s.desired.saturating_sub(primary_healthy));
    let want = surplus.max(if s.launch_allowed {
        missing.saturating_sub(room)
    } else {
        0
    });
    let can = want.min(healthy.saturating_sub(min_h)).min(old_healthy.len() as u32);
    for t in old_healthy.iter().take(can as usize) {
        stop(t, StopReason::Replaced, &mut p, &mut total, &mut stopped);
        healthy -= 1;
    }
    // 5. Launch what the primary lacks, within the maximum.
    if missing > 0 {
        let room = max_total.saturating_sub(total);
        if !s.launch_allowed {
            p.blocked = Some("task launches are paused (crash-loop backoff or failed deployment)".into());
        } else if room > 0 {
            p.start = missing.min(room);
        }
    }
    let converged =
        s.tasks.iter().all(|t| is_primary(t) && t.health == TaskHealth::Healthy) && s.tasks.len() as u32 == s.desired;
    let waiting = s.stopping > 0
        || s.tasks
            .iter()
            .any(|t| matches!(t.health, TaskHealth::Pending | TaskHealth::Starting));
    if p.start == 0 && p.stop.is_empty() && !converged && !waiting && p.blocked.is_none() {
        p.blocked = Some(format!(
            "no task can start or stop: {total} tasks (maximumPercent {} allows {max_total}), {healthy} healthy (minimumHealthyPercent {} needs {min_h}), protected tasks are kept",
            s.maximum_percent, s.minimum_healthy_percent
        ));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn task(i: usize, dep: &str, h: TaskHealth) -> TaskView {
        TaskView {
            arn: format!("t{i}"),
            deployment: dep.into(),
            health: h,
            protected: false,
        }
    }

    fn snap(desired: u32, min: u32, max: u32, tasks: Vec<TaskView>) -> Snapshot {
        Snapshot {
            desired,
            minimum_healthy_percent: min,
            maximum_percent: max,
            primary: "new".into(),
            launch_allowed: true,
            tasks,
            stopping: 0,
        }
    }

    #[test]
    fn fresh_service_starts_desired() {
        let p = plan(&snap(3, 100, 200, vec![]));
        assert_eq!((p.start, p.stop.len()), (3, 0));
    }

    #[test]
    fn rolling_update_100_200_keeps_all_old_until_new_are_healthy() {
        let old: Vec<_> = (0..3).map(|i| task(i, "old", TaskHealth::Healthy)).collect();
        let p = plan(&snap(3, 100, 200, old.clone()));
        assert_eq!((p.start, p.stop.len()), (3, 0));
        let mut t = old.clone();
        t.push(task(10, "new", TaskHealth::Healthy));
        t.push(task(11, "new", TaskHealth::Starting));
        t.push(task(12, "new", TaskHealth::Pending));
        let p = plan(&snap(3, 100, 200, t));
        assert_eq!(p.start, 0);
        assert_eq!(p.stop.len(), 1, "one old task may go per new healthy one: {p:?}");
    }

    #[test]
    fn rolling_update_with_max_100_stops_before_starting() {
        let old: Vec<_> = (0..4).map(|i| task(i, "old", TaskHealth::Healthy)).collect();
        let p = plan(&snap(4, 50, 100, old));
        assert_eq!(p.stop.len(), 2);
        assert_eq!(p.start, 2);
    }

    #[test]
    fn unhealthy_tasks_are_replaced() {
        let t = vec![
            task(0, "new", TaskHealth::Healthy),
            task(1, "new", TaskHealth::Unhealthy),
        ];
        let p = plan(&snap(2, 100, 200, t));
        assert_eq!(p.stop, vec![("t1".to_string(), StopReason::FailedHealthChecks)]);
        assert_eq!(p.start, 1);
    }

    #[test]
    fn scale_to_zero_and_protection() {
        let mut t: Vec<_> = (0..3).map(|i| task(i, "new", TaskHealth::Healthy)).collect();
        t[0].protected = true;
        let p = plan(&snap(0, 100, 200, t));
        assert_eq!(p.stop.len(), 2);
        assert!(p.blocked.as_deref().unwrap_or("").contains("protection"));
    }

    #[test]
    fn backoff_blocks_launches_and_says_so() {
        let mut s = snap(2, 100, 200, vec![]);
        s.launch_allowed = false;
        let p = plan(&s);
        assert_eq!(p.start, 0);
        assert!(p.blocked.is_some());
    }

    fn health() -> impl Strategy<Value = TaskHealth> {
        prop_oneof![
            Just(TaskHealth::Pending),
            Just(TaskHealth::Starting),
            Just(TaskHealth::Healthy),
            Just(TaskHealth::Unhealthy)
        ]
    }

    proptest! {
        #[test]
        fn never_breaks_bounds_and_always_progresses(
            desired in 0u32..12,
            min in 0u32..=100,
            max in 100u32..=200,
            tasks in proptest::collection::vec((health(), any::<bool>(), any::<bool>()), 0..20),
        ) {
            let tasks: Vec<TaskView> = tasks.iter().enumerate()
                .map(|(i, (h, primary, protected))| TaskView { arn: format!("t{i}"), deployment: if *primary { "new".into() } else { "old".into() }, health: *h, protected: *protected })
                .collect();
            let s = snap(desired, min, max, tasks.clone());
            let p = plan(&s);
            let max_total = max_tasks(&s).max(desired.min(1));
            let healthy_before = tasks.iter().filter(|t| t.health == TaskHealth::Healthy).count() as u32;
            let stopped_healthy = p.stop.iter().filter(|(a, _)| tasks.iter().any(|t| &t.arn == a && t.health == TaskHealth::Healthy)).count() as u32;
            let healthy_after = healthy_before - stopped_healthy;
            // Never below the floor by our own hand (scale-in may go down to the new desired count).
            prop_assert!(healthy_after >= min_healthy(&s).min(healthy_before).min(desired.max(min_healthy(&s).min(healthy_before))),
                "healthy {healthy_before} -> {healthy_after}, floor {}", min_healthy(&s));
            // Never above the maximum by our own hand.
            let total_after = tasks.len() as u32 - p.stop.len() as u32 + p.start;
            if p.start > 0 {
                prop_assert!(total_after <= max_total, "total {total_after} > max {max_total}");
            }
            // No task is stopped twice.
            let mut arns: Vec<&String> = p.stop.iter().map(|(a, _)| a).collect();
            arns.sort();
            arns.dedup();
            prop_assert_eq!(arns.len(), p.stop.len());
            // Progress or a reason: unless converged or waiting on tasks that are coming up.
            let converged = tasks.iter().all(|t| t.deployment == "new" && t.health == TaskHealth::Healthy) && tasks.len() as u32 == desired;
            let waiting = tasks.iter().any(|t| matches!(t.health, TaskHealth::Pending | TaskHealth::Starting));
            if !converged && !waiting {
                prop_assert!(p.start > 0 || !p.stop.is_empty() || p.blocked.is_some(), "stuck without a reason: {:?} -> {:?}", tasks, p);
            }
        }
    }
}

#[cfg(test)]
mod protection_tests {
    use super::*;

    #[test]
    fn scale_in_keeps_the_protected_task() {
        let mut tasks: Vec<TaskView> = (0..3)
            .map(|i| TaskView {
                arn: format!("t{i}"),
                deployment: "new".into(),
                health: TaskHealth::Healthy,
                protected: false,
            })
            .collect();
        tasks[0].protected = true;
        let s = Snapshot {
            desired: 1,
            minimum_healthy_percent: 100,
            maximum_percent: 200,
            primary: "new".into(),
            launch_allowed: true,
            tasks,
            stopping: 0,
        };
        let p = plan(&s);
        let stopped: Vec<&str> = p.stop.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(stopped, ["t1", "t2"]);
    }
}
