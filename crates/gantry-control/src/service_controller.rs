//! The service controller: level-triggered reconciliation of each service towards its desired
//! count and its primary deployment, with the planner from `deploy` deciding what to start and
//! stop, a crash-loop backoff, the deployment circuit breaker with rollback, and the service
//! events ECS users grep for. All state is in the service and task records, so a restarted
//! server resumes a deployment where it was.

use crate::deploy::{self, Snapshot, StopReason, TaskHealth, TaskView};
use crate::run_task::RunTaskRequest;
use crate::services::{new_deployment, ServiceRecord};
use crate::tasks::TaskRecord;
use crate::Control;
use gantry_types::model::{stop_code, Deployment};
use gantry_types::EcsError;
use std::collections::{HashMap, HashSet};

const HEALTH_REASON: &str = "Task failed container health checks";
/// Failures in a row before launches back off, and the cap of the backoff.
const BACKOFF_AFTER: i64 = 3;
const BACKOFF_MAX_SECS: f64 = 60.0;

fn short_id(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// Whether a stopped task counts as a failure of its deployment.
pub(crate) fn failed(t: &TaskRecord) -> bool {
    match t.task.stop_code.as_deref() {
        Some(stop_code::USER_INITIATED) => false,
        Some(stop_code::SERVICE_SCHEDULER_INITIATED) => t
            .task
            .stopped_reason
            .as_deref()
            .is_some_and(|r| r == HEALTH_REASON || r.starts_with(crate::service_lb::ELB_HEALTH_REASON)),
        _ => true,
    }
}

fn has_health_check(t: &TaskRecord) -> bool {
    t.containers.iter().any(|c| {
        c.is_essential()
            && c.health_check
                .as_ref()
                .is_some_and(|h| h.command.first().map(String::as_str) != Some("NONE"))
    })
}

fn threshold(rec: &ServiceRecord) -> i64 {
    let desired = rec.service.desired_count.max(1);
    let cfg = rec
        .service
        .deployment_configuration
        .deployment_circuit_breaker
        .as_ref()
        .and_then(|b| b.threshold_configuration.clone());
    match cfg {
        Some(t) if t.kind == "COUNT" => t.value.max(1),
        Some(t) if t.kind == "UNBOUNDED_PERCENT" => ((desired * t.value) as f64 / 100.0).ceil().max(1.0) as i64,
        Some(t) => (((desired * t.value) as f64 / 100.0).ceil() as i64).clamp(10, 200),
        None => ((desired as f64 * 0.5).ceil() as i64).clamp(10, 200),
    }
}

impl Control {
    /// Services under the CODE_DEPLOY or EXTERNAL controller get their tasks from task sets,
    /// which Gantry does not offer yet: the service says so once instead of staying silent.
    async fn announce_external(&self, key: &str, rec: &ServiceRecord, controller: &str) -> Result<(), EcsError> {
        let m = format!(
            "(service {}) uses the {controller} deployment controller: its tasks would come from CodeDeploy, which Gantry does not offer; no tasks are started.",
            rec.service.service_name
        );
        if rec.service.events.iter().any(|e| e.message == m) {
            return Ok(());
        }
        let now = self.now();
        self.update_service_record(key, |r| {
            r.event(now, m.clone());
            Ok(true)
        })
        .await?;
        Ok(())
    }
}

/// A live task's health for the planner: Pending until RUNNING, then its containers' health
/// checks (an unhealthy verdict within the grace period waits) and, behind a load balancer,
/// its targets' too; with the target failing its checks when that is why.
pub(crate) fn classify(
    t: &TaskRecord,
    lb: Option<&crate::service_lb::Pass>,
    now: f64,
    grace: f64,
) -> (TaskHealth, Option<(String, i64, String)>) {
    let in_grace = t.task.started_at.is_some_and(|s| now - s < grace);
    let health = if t.task.last_status != "RUNNING" {
        TaskHealth::Pending
    } else if has_health_check(t) {
        match t.task.health_status.as_str() {
            "HEALTHY" => TaskHealth::Healthy,
            "UNHEALTHY" if !in_grace => TaskHealth::Unhealthy,
            _ => TaskHealth::Starting,
        }
    } else {
        TaskHealth::Healthy
    };
    match lb {
        Some(p) if health != TaskHealth::Pending && !p.lbs.is_empty() => {
            let (targets, failing) = crate::service_lb::target_health(p, t, now, in_grace);
            (combine(health, targets), failing)
        }
        _ => (health, None),
    }
}

/// A task's health from its containers' checks and its targets' together.
fn combine(containers: TaskHealth, targets: TaskHealth) -> TaskHealth {
    use TaskHealth::*;
    match (containers, targets) {
        (Unhealthy, _) | (_, Unhealthy) => Unhealthy,
        (Healthy, Healthy) => Healthy,
        (Pending, _) => Pending,
        _ => Starting,
    }
}

/// ECS's event when a task cannot be placed.
fn unplaced_event(name: &str, f: &gantry_types::model::Failure) -> String {
    let instance = f.arn.as_deref().map(short_id).unwrap_or("");
    let why = match f.reason.as_deref().unwrap_or("") {
        "RESOURCE:MEMORY" => {
            format!("The closest matching (container-instance {instance}) has insufficient memory available.")
        }
        "RESOURCE:CPU" => {
            format!("The closest matching (container-instance {instance}) has insufficient CPU units available.")
        }
        "RESOURCE:PORTS" => format!(
            "The closest matching (container-instance {instance}) is already using a port required by your task."
        ),
        "ATTRIBUTE" => {
            format!("The closest matching (container-instance {instance}) does not meet the placement constraints.")
        }
        other => other.to_string(),
    };
    format!(
        "(service {name}) was unable to place a task because no container instance met all of its requirements. {why}"
    )
}

impl Control {
    /// One pass over every service. Errors of one service do not stop the others.
    pub async fn reconcile_services(&self) {
        let services = match self.all_services().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "listing services");
                return;
            }
        };
        let active: Vec<_> = services
            .into_iter()
            .filter(|(_, r, _)| r.service.status != "INACTIVE")
            .collect();
        if active.is_empty() {
            return;
        }
        // One listing of the tasks per pass, shared by every service.
        let tasks = match self.all_tasks().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "listing tasks");
                return;
            }
        };
        // DRAINING instances, read once per cluster per pass (EC2 tasks only: Fargate tasks
        // have no instance to drain).
        let mut draining: HashMap<(String, String, String), HashSet<String>> = HashMap::new();
        for (key, rec, rev) in active {
            let group = rec.group();
            let mine: Vec<TaskRecord> = tasks
                .iter()
                .filter(|(_, t, _)| {
                    t.account == rec.account
                        && t.region == rec.region
                        && t.cluster == rec.cluster
                        && t.task.group.as_deref() == Some(&group)
                })
                .map(|(_, t, _)| t.clone())
                .collect();
            let cluster = (rec.account.clone(), rec.region.clone(), rec.cluster.clone());
            if !draining.contains_key(&cluster) && mine.iter().any(|t| t.task.container_instance_arn.is_some()) {
                match self.draining_instances(&rec.scope(), &rec.cluster).await {
                    Ok(d) => {
                        draining.insert(cluster.clone(), d);
                    }
                    Err(e) => {
                        tracing::warn!(service = %key, error = %e, "listing draining instances");
                        continue;
                    }
                }
            }
            let none = HashSet::new();
            let drained = draining.get(&cluster).unwrap_or(&none);
            if let Err(e) = self.reconcile_service(&key, (rec, rev), mine, drained).await {
                tracing::warn!(service = %key, error = %e, "reconciling service");
            }
        }
    }

    /// Starts `count` tasks of `deployment` (RunTask calls of at most 10, as a service does):
    /// the started task ids, and the events to record (started, or why not placed).
    pub(crate) async fn launch(
        &self,
        rec: &ServiceRecord,
        td: &str,
        network: &serde_json::Value,
        deployment: &str,
        count: u32,
    ) -> Result<(Vec<String>, Vec<String>), EcsError> {
        let (svc, name) = (&rec.service, &rec.service.service_name);
        let rec_tags = svc.tags.clone().unwrap_or_default();
        let (mut started_ids, mut events, mut unplaced) = (vec![], vec![], None);
        let (mut left, mut throttled) = (count, false);
        while left > 0 {
            let n = left.min(10);
            let req = RunTaskRequest {
                cluster: Some(rec.cluster.clone()),
                task_definition: Some(td.to_string()),
                count: Some(n as i64),
                launch_type: (!svc.launch_type.is_empty()).then(|| svc.launch_type.clone()),
                capacity_provider_strategy: (!svc.capacity_provider_strategy.is_empty())
                    .then(|| svc.capacity_provider_strategy.clone()),
                platform_version: (!svc.platform_version.is_empty()).then(|| svc.platform_version.clone()),
                placement_constraints: Some(svc.placement_constraints.clone()),
                placement_strategy: Some(svc.placement_strategy.clone()),
                // Service tags are copied here; the task definition's by RunTask.
                tags: (svc.propagate_tags == "SERVICE").then(|| rec_tags.clone()),
                propagate_tags: (svc.propagate_tags == "TASK_DEFINITION").then(|| "TASK_DEFINITION".to_string()),
                enable_ecs_managed_tags: Some(svc.enable_ecs_managed_tags),
                network_configuration: (!network.is_null()).then(|| network.clone()),
                started_by: Some(deployment.to_string()),
                group: Some(rec.group()),
                allow_inactive: true,
                ..Default::default()
            };
            let (started, failures) = match self.run_task(&rec.scope(), req).await {
                Ok(r) => r,
                // The account's launch rate is used up: the rest on a later pass.
                Err(EcsError::Throttling(_)) => {
                    throttled = true;
                    break;
                }
                Err(e) => return Err(e),
            };
            started_ids.extend(started.iter().map(|t| short_id(&t.task_arn).to_string()));
            unplaced = unplaced.or(failures.into_iter().next());
            left -= n;
        }
        if !started_ids.is_empty() {
            let list: Vec<String> = started_ids.iter().map(|i| format!("(task {i})")).collect();
            events.push(format!(
                "(service {name}) has started {} tasks: {}.",
                started_ids.len(),
                list.join(" ")
            ));
        }
        let waiting = throttled.then(|| {
            format!("(service {name}) was unable to launch tasks: the account's task launch rate is used up for now; it will try again.")
        });
        if let Some(m) = unplaced.map(|f| unplaced_event(name, &f)).or(waiting) {
            // Said once while it lasts, not on every pass.
            if svc.events.first().map(|e| &e.message) != Some(&m) {
                events.push(m);
            }
        }
        Ok((started_ids, events))
    }

    async fn scheduler_stop(&self, t: &TaskRecord, reason: &str) -> Result<(), EcsError> {
        self.request_stop(&Self::key_of(t), stop_code::SERVICE_SCHEDULER_INITIATED, reason)
            .await?;
        Ok(())
    }

    /// One service, given its record and its tasks (group `service:NAME`) as just listed.
    async fn reconcile_service(
        &self,
        key: &str,
        listed: (ServiceRecord, i64),
        tasks: Vec<TaskRecord>,
        draining: &HashSet<String>,
    ) -> Result<(), EcsError> {
        let mut rec = listed.0.clone();
        let scope = rec.scope();
        let controller = rec.service.deployment_controller["type"]
            .as_str()
            .unwrap_or("ECS")
            .to_string();
        // A deleted one still drains to INACTIVE below.
        if controller == "EXTERNAL" {
            return self.reconcile_external(key, rec, tasks).await;
        }
        if controller != "ECS" && rec.service.status == "ACTIVE" {
            return self.announce_external(key, &rec, &controller).await;
        }
        // A daemon service runs one task on each ACTIVE container instance.
        let daemon_desired = if rec.service.scheduling_strategy == "DAEMON" && rec.service.status == "ACTIVE" {
            let n = self.active_instances(&scope, &rec.cluster).await?;
            rec.service.desired_count = n;
            Some(n)
        } else {
            None
        };
        let now = self.now();
        let name = rec.service.service_name.clone();
        let deployment_of = |t: &TaskRecord| t.task.started_by.clone().unwrap_or_default();
        let grace = rec.service.health_check_grace_period_seconds.unwrap_or(0) as f64;
        let primary = rec.primary().cloned();
        // Load balancing: the service's target groups as they are now, and the tasks waiting
        // for their connections to drain before they are stopped.
        let lbs = crate::service_lb::parse(&rec.service.load_balancers);
        // Blue/green, linear and canary: a new primary beside live tasks of an older
        // deployment starts shifting traffic (see traffic_shift).
        let config = rec.service.deployment_configuration.clone();
        let shifts = crate::traffic_shift::strategy(&config) != "ROLLING" && lbs.iter().any(|l| l.alternate.is_some());
        let primary_dep = primary.as_ref().map(|d| d.id.clone()).unwrap_or_default();
        let older_live = tasks
            .iter()
            .any(|t| t.task.last_status != "STOPPED" && deployment_of(t) != primary_dep);
        let mut shift = rec
            .traffic_shift
            .clone()
            .filter(|s| shifts && s.deployment == primary_dep);
        // Only a deployment that has not served yet shifts traffic to itself: blue made primary
        // again by a rollback already has production (a shift to it would move its targets to
        // the other group, leaving production with none until they pass their checks there).
        let unproven = primary.as_ref().is_some_and(|p| p.rollout_state == "IN_PROGRESS");
        if shifts && shift.is_none() && unproven && older_live && rec.service.status == "ACTIVE" {
            shift = Some(crate::traffic_shift::TrafficShift::start(&primary_dep, now));
        }
        let mut lb = if lbs.is_empty() && rec.lb_registered.is_empty() {
            None
        } else {
            let green = shift.as_ref().map(|s| s.deployment.clone());
            Some(self.lb_pass(&scope, lbs, green, rec.blue_is_alternate).await)
        };
        let mut deregistering = rec.deregistering.clone();
        let mut elb_failures = HashMap::new();

        // Classify live tasks.
        let mut views = Vec::new();
        let mut stopping = 0u32;
        let mut stopping_primary = 0u32;
        let mut healthy_deps = std::collections::BTreeSet::new();
        for t in tasks.iter().filter(|t| t.task.last_status != "STOPPED") {
            if t.task.desired_status == "STOPPED" || deregistering.contains_key(&t.task.task_arn) {
                stopping += 1;
                stopping_primary += u32::from(deployment_of(t) == primary_dep);
                continue;
            }
            let (health, failing) = classify(t, lb.as_ref(), now, grace);
            if let Some(f) = failing {
                elb_failures.insert(t.task.task_arn.clone(), f);
            }
            if health == TaskHealth::Healthy {
                healthy_deps.insert(deployment_of(t));
            }
            views.push(TaskView {
                arn: t.task.task_arn.clone(),
                deployment: deployment_of(t),
                health,
                protected: t.protected_at(now),
                draining: t
                    .task
                    .container_instance_arn
                    .as_ref()
                    .is_some_and(|a| draining.contains(a)),
            });
        }

        // A healthy task resets its deployment's failure count (resetOnHealthyTask). The time
        // only moves when there is a failure to reset, so a steady service is not rewritten.
        let mut last_healthy = rec.last_healthy_at.clone();
        for dep in healthy_deps {
            let since = last_healthy.get(&dep).copied();
            let failed_since = tasks.iter().any(|t| {
                t.task.last_status == "STOPPED"
                    && deployment_of(t) == dep
                    && failed(t)
                    && since.is_none_or(|s| t.task.stopped_at.unwrap_or(0.0) > s)
            });
            if since.is_none() || failed_since {
                last_healthy.insert(dep, now);
            }
        }
        // Failures per deployment since its last healthy task (resetOnHealthyTask, default true).
        let reset = rec
            .service
            .deployment_configuration
            .deployment_circuit_breaker
            .as_ref()
            .and_then(|b| b.reset_on_healthy_task)
            .unwrap_or(true);
        let failures = |dep: &str, since_healthy: bool| -> (i64, f64) {
            let since = if since_healthy {
                last_healthy.get(dep).copied().unwrap_or(0.0)
            } else {
                0.0
            };
            let fs: Vec<&TaskRecord> = tasks
                .iter()
                .filter(|t| {
                    t.task.last_status == "STOPPED"
                        && deployment_of(t) == dep
                        && failed(t)
                        && t.task.stopped_at.unwrap_or(0.0) > since
                })
                .collect();
            (
                fs.len() as i64,
                fs.iter().filter_map(|t| t.task.stopped_at).fold(0.0, f64::max),
            )
        };

        // Deployment alarms: any of them in ALARM fails an in-progress deployment.
        let watched = config.alarms.clone().filter(|a| a.enable).unwrap_or_default();
        let alarmed = match &primary {
            Some(p) if p.rollout_state == "IN_PROGRESS" && !watched.alarm_names.is_empty() => {
                crate::alarms::in_alarm(self.store.as_ref(), &scope, &watched.alarm_names).await
            }
            _ => vec![],
        };
        let mut failure_reason = "ECS deployment circuit breaker: tasks failed to start.".to_string();
        let mut events: Vec<String> = Vec::new();
        let mut new_primary: Option<Deployment> = None;
        let mut rollback_to_blue: Option<Deployment> = None;
        let mut rollback_reason = String::new();
        let mut primary_failed_now = false;
        let mut launch_allowed = rec.service.status == "ACTIVE";
        let mut backoff_streak = 0;
        if let Some(p) = &primary {
            let (fail_total, _) = failures(&p.id, reset);
            let (streak, last_fail) = failures(&p.id, true);
            backoff_streak = streak;
            if p.rollout_state == "FAILED" {
                launch_allowed = false;
            }
            let breaker = rec
                .service
                .deployment_configuration
                .deployment_circuit_breaker
                .clone()
                .unwrap_or_default();
            // StopServiceDeployment asks for what a tripped breaker with rollback does.
            let stop_asked = rec.stop_requested.as_deref() == Some(p.id.as_str()) && p.rollout_state == "IN_PROGRESS";
            let tripped = breaker.enable && p.rollout_state == "IN_PROGRESS" && fail_total >= threshold(&rec);
            let alarm_tripped = !alarmed.is_empty();
            if tripped || stop_asked || alarm_tripped {
                primary_failed_now = true;
                launch_allowed = false;
                let rollback = stop_asked || (tripped && breaker.rollback) || (alarm_tripped && watched.rollback);
                rollback_reason = if stop_asked {
                    "Service deployment stopped by StopServiceDeployment.".to_string()
                } else if alarm_tripped {
                    failure_reason = format!(
                        "ECS deployment {} failed: alarm(s) detected: {}.",
                        p.id,
                        alarmed.join(", ")
                    );
                    failure_reason.clone()
                } else {
                    "ECS deployment circuit breaker: tasks failed to start.".to_string()
                };
                events.push(if stop_asked {
                    format!("(service {name}) deployment {} stopped: rollback requested.", p.id)
                } else if alarm_tripped {
                    format!(
                        "(service {name}) deployment {} deployment failed: alarm(s) detected: {}.",
                        p.id,
                        alarmed.join(", ")
                    )
                } else {
                    format!(
                        "(service {name}) deployment {} deployment failed: tasks failed to start.",
                        p.id
                    )
                });
                let blue = rec.service.deployments.iter().find(|d| d.status == "ACTIVE");
                if let (true, true, Some(blue)) = (rollback, shift.is_some(), blue) {
                    // Blue is still running and serving: traffic goes back to it.
                    events.push(format!("(service {name}) rolling back to deployment {}.", blue.id));
                    rollback_to_blue = Some(blue.clone());
                    launch_allowed = true;
                } else if rollback {
                    if let Some(done) = &rec.last_completed {
                        events.push(format!("(service {name}) rolling back to deployment {}.", done.id));
                        new_primary = Some(new_deployment(
                            &rec.service,
                            &done.task_definition,
                            rec.service.desired_count,
                            &done.network_configuration,
                            now,
                        ));
                        launch_allowed = true;
                    }
                }
            } else if streak >= BACKOFF_AFTER {
                let delay = (2f64.powi((streak - BACKOFF_AFTER) as i32)).min(BACKOFF_MAX_SECS);
                if now < last_fail + delay {
                    launch_allowed = false;
                }
                if rec.backoff_announced != streak && streak == BACKOFF_AFTER {
                    events.push(format!(
                        "(service {name}) is unable to consistently start tasks successfully. Relaunching with exponential backoff (next attempt in {delay:.0}s)."
                    ));
                }
            }
        }
        let primary_id = new_primary
            .as_ref()
            .or(rollback_to_blue.as_ref())
            .map(|d| d.id.clone())
            .or_else(|| primary.as_ref().map(|d| d.id.clone()))
            .unwrap_or_default();
        if rollback_to_blue.is_some() {
            shift = None;
        }

        // While traffic shifts, the planner only keeps green at its desired count: blue stays
        // as it is until the shift's clean-up.
        let snap = match &shift {
            Some(_) => Snapshot {
                desired: rec.service.desired_count.max(0) as u32,
                minimum_healthy_percent: 0,
                maximum_percent: 100,
                primary: primary_id.clone(),
                launch_allowed,
                tasks: views.iter().filter(|v| v.deployment == primary_id).cloned().collect(),
                stopping: stopping_primary,
            },
            None => Snapshot {
                desired: rec.service.desired_count.max(0) as u32,
                minimum_healthy_percent: rec.service.deployment_configuration.minimum_healthy_percent as u32,
                maximum_percent: rec.service.deployment_configuration.maximum_percent as u32,
                primary: primary_id.clone(),
                launch_allowed,
                tasks: views.clone(),
                stopping,
            },
        };
        let mut plan = deploy::plan(&snap);
        if let Some(s) = shift.as_mut() {
            let green_healthy = views
                .iter()
                .filter(|v| v.deployment == primary_id && v.health == TaskHealth::Healthy)
                .count() as i64;
            let next = crate::traffic_shift::advance(&config, s, green_healthy == rec.service.desired_count, now);
            if next.green_weight != s.green_weight {
                events.push(format!(
                    "(service {name}) deployment {} shifted {:.0}% of production traffic to its tasks.",
                    s.deployment, next.green_weight
                ));
            }
            *s = next;
            if s.stage == "CLEAN_UP" {
                // Blue has baked: its tasks go (through draining, like any replaced task).
                for v in views.iter().filter(|v| v.deployment != primary_id) {
                    plan.stop.push((v.arn.clone(), StopReason::Replaced));
                }
            }
        }

        // Apply: stops first, then launches. A task behind a load balancer is deregistered
        // first and stopped once its connections have drained; one in Cloud Map leaves it first.
        let leaving: Vec<&TaskRecord> = tasks
            .iter()
            .filter(|t| plan.stop.iter().any(|(a, _)| *a == t.task.task_arn))
            .collect();
        if !leaving.is_empty() && !rec.registry_registered.is_empty() {
            self.deregister_instances(&rec, &leaving).await;
        }
        let mut stopped_ids = Vec::new();
        let mut draining_ids = Vec::new();
        for (arn, why) in &plan.stop {
            let Some(t) = tasks.iter().find(|t| &t.task.task_arn == arn) else {
                continue;
            };
            let reason = match (why, elb_failures.get(arn)) {
                (StopReason::FailedHealthChecks, Some((group, port, cause))) => {
                    events.push(format!(
                        "(service {name}) (task {}) (port {port}) is unhealthy in (target-group {group}) due to (reason {cause}).",
                        short_id(arn)
                    ));
                    format!("{} (target-group {group})", crate::service_lb::ELB_HEALTH_REASON)
                }
                (StopReason::FailedHealthChecks, None) => HEALTH_REASON.to_string(),
                _ => format!("Scaling activity initiated by (deployment {primary_id})"),
            };
            if let Some(p) = &lb {
                let until = self.begin_draining(&scope, p, t, now).await;
                if until > now {
                    deregistering.insert(arn.clone(), (until, reason));
                    draining_ids.push(short_id(arn).to_string());
                    continue;
                }
            }
            self.scheduler_stop(t, &reason).await?;
            stopped_ids.push(short_id(arn).to_string());
        }
        if !draining_ids.is_empty() {
            events.push(format!(
                "(service {name}) has begun draining connections on {} tasks.",
                draining_ids.len()
            ));
        }
        // Drained tasks are stopped now; ones that stopped meanwhile are forgotten.
        let mut stopping_now: HashSet<String> = plan.stop.iter().map(|(a, _)| a.clone()).collect();
        for (arn, (until, reason)) in deregistering.clone() {
            let live = tasks.iter().find(|t| {
                t.task.task_arn == arn && t.task.last_status != "STOPPED" && t.task.desired_status != "STOPPED"
            });
            match live {
                Some(t) if now >= until => {
                    self.scheduler_stop(t, &reason).await?;
                    stopped_ids.push(short_id(&arn).to_string());
                    deregistering.remove(&arn);
                    stopping_now.insert(arn);
                }
                Some(_) => {}
                None => {
                    deregistering.remove(&arn);
                }
            }
        }
        // Running tasks are registered; targets of tasks gone are deregistered.
        let registered = match lb.as_mut() {
            Some(p) => {
                let running: Vec<&TaskRecord> = tasks
                    .iter()
                    .filter(|t| t.task.last_status == "RUNNING" && t.task.desired_status == "RUNNING")
                    .filter(|t| {
                        !deregistering.contains_key(&t.task.task_arn) && !stopping_now.contains(&t.task.task_arn)
                    })
                    .collect();
                let r = self.sync_targets(&scope, &name, p, &running, &rec.lb_registered).await;
                events.append(&mut p.events);
                if shifts {
                    let green = shift.as_ref().map(|s| s.green_weight).unwrap_or(0.0);
                    self.apply_weights(&scope, p, green, shift.is_some()).await;
                }
                Some(r)
            }
            None => None,
        };
        // Healthy running tasks are in Cloud Map; every other instance the service registered
        // is not.
        let healthy_arns: HashSet<&str> = views
            .iter()
            .filter(|v| v.health == TaskHealth::Healthy)
            .map(|v| v.arn.as_str())
            .collect();
        let serving: Vec<&TaskRecord> = tasks
            .iter()
            .filter(|t| healthy_arns.contains(t.task.task_arn.as_str()))
            .filter(|t| !deregistering.contains_key(&t.task.task_arn) && !stopping_now.contains(&t.task.task_arn))
            .collect();
        let in_registry = self.sync_registries(&rec, &serving).await;
        if !stopped_ids.is_empty() {
            events.push(format!(
                "(service {name}) has stopped {} running tasks: {}.",
                stopped_ids.len(),
                stopped_ids
                    .iter()
                    .map(|i| format!("(task {i})"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        let mut started_ids = Vec::new();
        if plan.start > 0 {
            // A rollback launches the revision it returns to.
            let back_to = new_primary.as_ref().or(rollback_to_blue.as_ref());
            let td = back_to
                .or(primary.as_ref())
                .map(|d| d.task_definition.clone())
                .unwrap_or_else(|| rec.service.task_definition.clone());
            let network = back_to
                .map(|d| d.network_configuration.clone())
                .unwrap_or_else(|| rec.service.network_configuration.clone());
            let (started, said) = self.launch(&rec, &td, &network, &primary_id, plan.start).await?;
            started_ids = started;
            events.extend(said);
        }

        // Counts and rollout state, written back with CAS. As ListTasks shows them: tasks told
        // to stop are neither running nor pending.
        let live: Vec<&TaskRecord> = tasks.iter().filter(|t| t.task.last_status != "STOPPED").collect();
        let wanted: Vec<&&TaskRecord> = live.iter().filter(|t| t.task.desired_status == "RUNNING").collect();
        let count = |dep: Option<&str>, running: bool| -> i64 {
            let listed = wanted
                .iter()
                .filter(|t| dep.is_none_or(|d| deployment_of(t) == d))
                .filter(|t| (t.task.last_status == "RUNNING") == running)
                .count() as i64;
            let launched = if running || dep.is_some_and(|d| d != primary_id) {
                0
            } else {
                started_ids.len() as i64
            };
            listed + launched
        };
        let primary_healthy = views
            .iter()
            .filter(|v| v.deployment == primary_id && v.health == TaskHealth::Healthy)
            .count() as i64;
        let others_live = live.iter().filter(|t| deployment_of(t) != primary_id).count();
        let converged = new_primary.is_none()
            && !primary_failed_now
            && primary_healthy == rec.service.desired_count
            && others_live == 0
            && stopping == 0
            && plan.start == 0
            && plan.stop.is_empty()
            && views.iter().filter(|v| v.deployment == primary_id).count() as i64 == rec.service.desired_count;
        let draining_done = rec.service.status == "DRAINING" && live.is_empty();
        let fail_counts: std::collections::BTreeMap<String, i64> = rec
            .service
            .deployments
            .iter()
            .map(|d| (d.id.clone(), failures(&d.id, false).0))
            .collect();
        // From the record as listed: a steady service is neither written nor read again.
        self.update_json_from(key, Some(listed), |r: &mut ServiceRecord| {
            let mut events_out = events.clone();
            // The pass decided from the record as it was read. If UpdateService made another
            // deployment primary meanwhile, its verdicts on the old primary (completed, failed,
            // rolled back) must not land on the new one: the next pass judges that.
            let same_primary = r.primary().map(|d| &d.id) == primary.as_ref().map(|d| &d.id);
            r.deregistering = deregistering.clone();
            if let Some(reg) = &registered {
                r.lb_registered = reg.clone();
            }
            r.registry_registered = in_registry.clone();
            // A finished shift swaps the groups' roles: green is the next deployment's blue.
            r.traffic_shift = match &shift {
                Some(s) if s.stage == "CLEAN_UP" && others_live == 0 => {
                    r.blue_is_alternate = !r.blue_is_alternate;
                    None
                }
                other => other.clone(),
            };
            if let Some(n) = daemon_desired {
                r.service.desired_count = n;
                if let Some(p) = r.service.deployments.iter_mut().find(|d| d.status == "PRIMARY") {
                    p.desired_count = n;
                }
            }
            r.last_healthy_at = last_healthy.clone();
            if backoff_streak >= BACKOFF_AFTER {
                r.backoff_announced = backoff_streak;
            }
            for d in &mut r.service.deployments {
                d.running_count = count(Some(&d.id), true);
                d.pending_count = count(Some(&d.id), false);
                d.failed_tasks = fail_counts.get(&d.id).copied().unwrap_or(0);
                if d.status != "PRIMARY" {
                    d.desired_count = d.running_count + d.pending_count;
                }
            }
            if primary_failed_now && same_primary {
                if let Some(p) = r.service.deployments.iter_mut().find(|d| d.status == "PRIMARY") {
                    p.rollout_state = "FAILED".into();
                    p.rollout_state_reason = Some(failure_reason.clone());
                    p.updated_at = now;
                    if new_primary.is_some() {
                        p.status = "ACTIVE".into();
                    }
                }
            }
            let failed_id = primary.as_ref().map(|p| p.id.clone()).unwrap_or_default();
            let (new_primary, rollback_to_blue) = match same_primary {
                true => (new_primary.clone(), rollback_to_blue.clone()),
                false => (None, None),
            };
            if let Some(by) = new_primary.as_ref().or(rollback_to_blue.as_ref()) {
                crate::service_deployments::record_rollback(r, &failed_id, by, &rollback_reason, now);
                r.stop_requested = None;
            }
            if let Some(np) = &new_primary {
                r.service.task_definition = np.task_definition.clone();
                r.service.deployments.insert(0, np.clone());
            }
            // A shifting deployment rolls back by making blue, still running, primary again.
            if let Some(blue) = &rollback_to_blue {
                for d in &mut r.service.deployments {
                    if d.id == blue.id {
                        d.status = "PRIMARY".into();
                        d.updated_at = now;
                    } else if d.status == "PRIMARY" {
                        d.status = "ACTIVE".into();
                    }
                }
                r.service.task_definition = blue.task_definition.clone();
            }
            r.service.running_count = count(None, true);
            r.service.pending_count = count(None, false);
            if !stopped_ids.is_empty() || !started_ids.is_empty() {
                r.steady = false;
            }
            if converged && same_primary {
                let completed_id = r
                    .service
                    .deployments
                    .iter()
                    .find(|d| d.status == "PRIMARY" && d.rollout_state == "IN_PROGRESS")
                    .map(|d| d.id.clone());
                if let Some(id) = completed_id {
                    if let Some(p) = r.service.deployments.iter_mut().find(|d| d.id == id) {
                        p.rollout_state = "COMPLETED".into();
                        p.rollout_state_reason = Some(format!("ECS deployment {id} completed."));
                        p.updated_at = now;
                        r.last_completed = Some(p.clone());
                    }
                    events_out.push(format!("(service {name}) deployment {id} deployment completed."));
                }
                r.service.deployments.retain(|d| d.status == "PRIMARY");
                if !r.steady {
                    events_out.push(format!("(service {name}) has reached a steady state."));
                    r.steady = true;
                }
            }
            if draining_done && r.service.status == "DRAINING" {
                r.service.status = "INACTIVE".into();
                r.service.deployments.clear();
                r.service.running_count = 0;
                r.service.pending_count = 0;
            }
            for m in events_out {
                r.event(now, m);
            }
            let shift_now = r.traffic_shift.clone();
            crate::service_deployments::sync(r, shift_now.as_ref(), now);
            Ok(true)
        })
        .await?;
        Ok(())
    }
}
