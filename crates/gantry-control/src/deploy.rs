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
    /// On a DRAINING container instance: replaced like an old deployment's task.
    pub draining: bool,
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

/// Tasks that count as the service's capacity: old deployments' tasks that have not failed
/// (they are still wanted until replaced), and the primary's healthy tasks. A stop the planner
/// chooses never takes this below the healthy floor (Kubernetes' deployment controller budget:
/// all pods - minAvailable - the new replica set's unavailable pods).
pub fn proven(s: &Snapshot, t: &TaskView) -> bool {
    if in_primary(s, t) {
        t.health == TaskHealth::Healthy
    } else {
        t.health != TaskHealth::Unhealthy
    }
}

/// A task the primary deployment keeps. A task on a draining instance is not: like an old
/// deployment's task it stays until a replacement covers for it (ECS drains within
/// minimumHealthyPercent and maximumPercent).
pub fn in_primary(s: &Snapshot, t: &TaskView) -> bool {
    t.deployment == s.primary && !t.draining
}

/// The plan as it is built: what is stopped so far and what is left.
struct Builder<'a> {
    s: &'a Snapshot,
    plan: Plan,
    stopped: Vec<&'a str>,
    /// Live tasks against the maximum. A task told to stop counts until it has stopped: it
    /// still holds its resources (ECS counts RUNNING and PENDING tasks).
    total: u32,
    /// Proven tasks left: against the floor.
    proven: u32,
}

impl<'a> Builder<'a> {
    fn stop(&mut self, t: &'a TaskView, why: StopReason) {
        self.plan.stop.push((t.arn.clone(), why));
        self.stopped.push(&t.arn);
        if proven(self.s, t) {
            self.proven -= 1;
        }
    }

    /// How many more proven tasks may stop without going below the floor.
    fn budget(&self) -> u32 {
        self.proven.saturating_sub(min_healthy(self.s))
    }
}

/// Least useful first: not running yet, then starting, then healthy.
fn usefulness(t: &TaskView) -> u8 {
    match t.health {
        TaskHealth::Pending => 0,
        TaskHealth::Starting => 1,
        TaskHealth::Unhealthy => 2,
        TaskHealth::Healthy => 3,
    }
}

pub fn plan(s: &Snapshot) -> Plan {
    let mut b = Builder {
        s,
        plan: Plan::default(),
        stopped: Vec::new(),
        total: s.tasks.len() as u32 + s.stopping,
        proven: s.tasks.iter().filter(|t| proven(s, t)).count() as u32,
    };
    // With a desired count, at least one task may always exist.
    let max_total = max_tasks(s).max(s.desired.min(1));
    let is_primary = |t: &TaskView| in_primary(s, t);

    // 1. Tasks failing health checks are replaced; they are no capacity anyway.
    for t in s.tasks.iter().filter(|t| t.health == TaskHealth::Unhealthy) {
        b.stop(t, StopReason::FailedHealthChecks);
    }
    // 2. The primary above the desired count scales in: least useful first, protected never,
    //    healthy ones only within the budget.
    let mut primary: Vec<&TaskView> = s
        .tasks
        .iter()
        .filter(|t| is_primary(t) && t.health != TaskHealth::Unhealthy)
        .collect();
    let mut primary_live = primary.len() as u32;
    if primary_live > s.desired {
        primary.sort_by_key(|t| usefulness(t));
        for t in primary {
            if primary_live <= s.desired {
                break;
            }
            if t.protected || (proven(s, t) && b.budget() == 0) {
                continue;
            }
            b.stop(t, StopReason::ScaleIn);
            primary_live -= 1;
        }
        if primary_live > s.desired {
            b.plan.blocked = Some(format!(
                "{} tasks above the desired count cannot stop (scale-in protection or minimumHealthyPercent)",
                primary_live - s.desired
            ));
        }
    }
    // 3. Old deployments' tasks go once the primary's healthy tasks cover for them, or to make
    //    room for the primary within the maximum; least useful first, within the budget.
    let primary_healthy = s
        .tasks
        .iter()
        .filter(|t| is_primary(t) && t.health == TaskHealth::Healthy && !b.stopped.contains(&t.arn.as_str()))
        .count() as u32;
    let mut old: Vec<&TaskView> = s
        .tasks
        .iter()
        .filter(|t| !is_primary(t) && t.health != TaskHealth::Unhealthy)
        .collect();
    old.sort_by_key(|t| usefulness(t));
    let missing = s.desired.saturating_sub(primary_live);
    let surplus = (old.len() as u32).saturating_sub(s.desired.saturating_sub(primary_healthy));
    let make_room = if s.launch_allowed {
        missing.saturating_sub(max_total.saturating_sub(b.total))
    } else {
        0
    };
    let mut want = surplus.max(make_room);
    for t in old.into_iter().filter(|t| !t.protected) {
        if want == 0 || b.budget() == 0 {
            break;
        }
        b.stop(t, StopReason::Replaced);
        want -= 1;
    }
    // 4. Launch what the primary lacks, within the maximum.
    if missing > 0 {
        let room = max_total.saturating_sub(b.total);
        if !s.launch_allowed {
            b.plan.blocked = Some("task launches are paused (crash-loop backoff or failed deployment)".into());
        } else if room > 0 {
            b.plan.start = missing.min(room);
        }
    }
    let mut p = b.plan;
    let converged =
        s.tasks.iter().all(|t| is_primary(t) && t.health == TaskHealth::Healthy) && s.tasks.len() as u32 == s.desired;
    let waiting = s.stopping > 0
        || s.tasks
            .iter()
            .any(|t| matches!(t.health, TaskHealth::Pending | TaskHealth::Starting));
    if p.start == 0 && p.stop.is_empty() && !converged && !waiting && p.blocked.is_none() {
        p.blocked = Some(format!(
            "no task can start or stop: {} tasks (maximumPercent {} allows {max_total}), {} proven (minimumHealthyPercent {} needs {})",
            b.total,
            s.maximum_percent,
            b.proven,
            s.minimum_healthy_percent,
            min_healthy(s)
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
            draining: false,
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

    /// The reported defect: a deployment that starts while the previous one's tasks are still
    /// starting must not stop them before anything has proven itself.
    #[test]
    fn deployment_during_startup_keeps_starting_old_tasks() {
        let old = vec![
            task(0, "old", TaskHealth::Starting),
            task(1, "old", TaskHealth::Starting),
            task(2, "old", TaskHealth::Pending),
        ];
        let p = plan(&snap(3, 100, 200, old.clone()));
        assert_eq!((p.start, p.stop.len()), (3, 0), "{p:?}");
        let mut t = old;
        t.extend((10..13).map(|i| task(i, "new", TaskHealth::Starting)));
        let p = plan(&snap(3, 100, 200, t.clone()));
        assert_eq!((p.start, p.stop.len()), (0, 0), "{p:?}");
        // One new task proves itself: one old task may go, the least useful one.
        t[3].health = TaskHealth::Healthy;
        let p = plan(&snap(3, 100, 200, t.clone()));
        assert_eq!(p.stop, vec![("t2".to_string(), StopReason::Replaced)]);
        // An old task that failed its checks may be replaced at once.
        t[0].health = TaskHealth::Unhealthy;
        let p = plan(&snap(3, 100, 200, t));
        assert!(
            p.stop.contains(&("t0".to_string(), StopReason::FailedHealthChecks)),
            "{p:?}"
        );
    }

    #[test]
    fn rolling_update_with_max_100_stops_before_starting() {
        let old: Vec<_> = (0..4).map(|i| task(i, "old", TaskHealth::Healthy)).collect();
        let p = plan(&snap(4, 50, 100, old.clone()));
        assert_eq!((p.stop.len(), p.start), (2, 0), "room only once they have stopped");
        let mut s = snap(4, 50, 100, old[2..].to_vec());
        s.stopping = 2;
        assert_eq!((plan(&s).stop.len(), plan(&s).start), (0, 0));
        s.stopping = 0;
        assert_eq!((plan(&s).stop.len(), plan(&s).start), (0, 2));
    }

    #[test]
    fn a_draining_instance_s_task_is_replaced_within_the_bounds() {
        let mut tasks: Vec<TaskView> = (0..3).map(|i| task(i, "new", TaskHealth::Healthy)).collect();
        tasks[0].draining = true;
        // 100/200: the replacement starts first; the drained task stays until it is healthy.
        let p = plan(&snap(3, 100, 200, tasks.clone()));
        assert_eq!((p.start, p.stop.len()), (1, 0));
        tasks.push(task(3, "new", TaskHealth::Healthy));
        let p = plan(&snap(3, 100, 200, tasks.clone()));
        assert_eq!((p.start, p.stop), (0, vec![("t0".to_string(), StopReason::Replaced)]));
        // 0/100: no room above the desired count, so the drained task stops first.
        tasks.pop();
        let p = plan(&snap(3, 0, 100, tasks));
        assert_eq!((p.start, p.stop), (0, vec![("t0".to_string(), StopReason::Replaced)]));
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
            tasks in proptest::collection::vec((health(), any::<bool>(), any::<bool>(), any::<bool>()), 0..20),
        ) {
            let tasks: Vec<TaskView> = tasks.iter().enumerate()
                .map(|(i, (h, primary, protected, draining))| TaskView {
                    arn: format!("t{i}"),
                    deployment: if *primary { "new".into() } else { "old".into() },
                    health: *h,
                    protected: *protected,
                    draining: *draining,
                })
                .collect();
            let s = snap(desired, min, max, tasks.clone());
            let p = plan(&s);
            let max_total = max_tasks(&s).max(desired.min(1));
            // Proven capacity never goes below the floor because of a stop the planner chose.
            let proven_before = tasks.iter().filter(|t| proven(&s, t)).count() as u32;
            let proven_stopped = p.stop.iter().filter(|(a, _)| tasks.iter().any(|t| &t.arn == a && proven(&s, t))).count() as u32;
            if proven_stopped > 0 {
                prop_assert!(proven_before - proven_stopped >= min_healthy(&s),
                    "proven {proven_before} -> {}, floor {}: {:?} -> {:?}", proven_before - proven_stopped, min_healthy(&s), tasks, p);
            }
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
                draining: false,
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

/// The planner driven over time: random start, health and exit timings, deployments arriving
/// at random moments (also while the previous one is still starting), stops taking effect a
/// few steps later. Checks the floor and the maximum at every step, and convergence at the end.
#[cfg(test)]
mod simulation {
    use super::*;
    use proptest::prelude::*;

    /// The invariant's own definition, independent of the planner's: old tasks still wanted
    /// and the primary's healthy tasks.
    fn has_proven_itself(primary: &str, t: &TaskView) -> bool {
        if t.deployment == primary {
            t.health == TaskHealth::Healthy
        } else {
            t.health != TaskHealth::Unhealthy
        }
    }

    struct Sim {
        rng: u64,
        next_id: u32,
        live: Vec<TaskView>,
        /// Told to stop: steps until they are gone.
        stopping: Vec<u32>,
    }

    impl Sim {
        fn roll(&mut self, n: u64) -> u64 {
            self.rng = self
                .rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.rng >> 33) % n
        }

        /// Tasks move on by themselves: start, pass or fail checks, exit.
        fn advance(&mut self, chaos: bool) {
            let mut live = std::mem::take(&mut self.live);
            live.retain_mut(|t| {
                let r = self.roll(100);
                match t.health {
                    TaskHealth::Pending if r < 50 => t.health = TaskHealth::Starting,
                    TaskHealth::Starting if r < 40 => t.health = TaskHealth::Healthy,
                    TaskHealth::Starting if chaos && r < 45 => t.health = TaskHealth::Unhealthy,
                    TaskHealth::Healthy if chaos && r < 3 => t.health = TaskHealth::Unhealthy,
                    _ => {}
                }
                !(chaos && self.roll(100) < 2) // exits on its own
            });
            self.live = live;
            self.stopping.iter_mut().for_each(|s| *s = s.saturating_sub(1));
            self.stopping.retain(|s| *s > 0);
        }

        fn step(&mut self, desired: u32, min: u32, max: u32, primary: &str) -> Result<Plan, TestCaseError> {
            let s = Snapshot {
                desired,
                minimum_healthy_percent: min,
                maximum_percent: max,
                primary: primary.into(),
                launch_allowed: true,
                tasks: self.live.clone(),
                stopping: self.stopping.len() as u32,
            };
            let p = plan(&s);
            let before = s.tasks.iter().filter(|t| has_proven_itself(primary, t)).count() as u32;
            let stopped_proven = p
                .stop
                .iter()
                .filter(|(a, _)| s.tasks.iter().any(|t| &t.arn == a && has_proven_itself(primary, t)))
                .count() as u32;
            if stopped_proven > 0 {
                prop_assert!(
                    before - stopped_proven >= min_healthy(&s),
                    "floor broken: proven {before} -> {}, floor {}: {:?} -> {p:?}",
                    before - stopped_proven,
                    min_healthy(&s),
                    s.tasks
                );
            }
            for (arn, _) in &p.stop {
                self.live.retain(|t| &t.arn != arn);
                let delay = 1 + self.roll(3) as u32;
                self.stopping.push(delay);
            }
            let total = (self.live.len() + self.stopping.len()) as u32 + p.start;
            if p.start > 0 {
                prop_assert!(total <= max_tasks(&s).max(desired.min(1)), "above the maximum: {total}");
            }
            for _ in 0..p.start {
                self.next_id += 1;
                self.live.push(TaskView {
                    arn: format!("t{}", self.next_id),
                    deployment: primary.into(),
                    health: TaskHealth::Pending,
                    protected: false,
                    draining: false,
                });
            }
            Ok(p)
        }
    }

    proptest! {
        #[test]
        fn floor_holds_over_time_and_rollouts_converge(
            seed in any::<u64>(),
            desired in 1u32..8,
            min in prop_oneof![Just(0u32), Just(50), Just(100), 0u32..=100],
            max in prop_oneof![Just(100u32), Just(150), Just(200), 100u32..=200],
            deploy_at in proptest::collection::vec(1u32..40, 0..4),
        ) {
            let mut sim = Sim { rng: seed, next_id: 0, live: vec![], stopping: vec![] };
            let mut deployment = 0;
            for step in 0..60u32 {
                deployment += deploy_at.iter().filter(|d| **d == step).count();
                let primary = format!("d{deployment}");
                sim.step(desired, min, max, &primary)?;
                sim.advance(true);
            }
            // Calm: nothing fails any more; the rollout must finish.
            let primary = format!("d{deployment}");
            let mut last = Plan::default();
            for _ in 0..80 {
                last = sim.step(desired, min, max, &primary)?;
                sim.advance(false);
            }
            let max_total = (desired as u64 * max as u64 / 100) as u32;
            let floor = (desired as u64 * min as u64).div_ceil(100) as u32;
            if max_total <= floor && deployment > 0 && sim.live.iter().any(|t| t.deployment != primary) {
                // No room above the floor (e.g. 100/100): ECS cannot roll either; it must say so.
                prop_assert!(last.blocked.is_some(), "stuck without a reason: {:?}", sim.live);
                return Ok(());
            }
            prop_assert!(
                sim.stopping.is_empty()
                    && sim.live.len() as u32 == desired
                    && sim.live.iter().all(|t| t.deployment == primary && t.health == TaskHealth::Healthy),
                "not converged: {:?}, {} stopping", sim.live, sim.stopping.len()
            );
        }
    }
}
