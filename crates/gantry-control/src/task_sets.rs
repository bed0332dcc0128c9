//! Task sets: how a service under the EXTERNAL deployment controller runs its tasks. An
//! outside deployment tool creates task sets (each a task definition, network, load
//! balancers and a scale, a percentage of the service's desired count), moves traffic between
//! their target groups with listener rule weights, picks the primary and deletes the old one.
//! The controller keeps each set at its computed count: failing tasks replaced, excess ones
//! drained from their target groups and stopped, running ones registered.

use crate::deploy::TaskHealth;
use crate::service_controller::{classify, failed};
use crate::services::ServiceRecord;
use crate::tasks::TaskRecord;
use crate::Control;
use gantry_types::arn::Scope;
use gantry_types::model::{stop_code, Failure, Scale, Tag, TaskSet};
use gantry_types::EcsError;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CreateTaskSetRequest {
    pub service: Option<String>,
    pub cluster: Option<String>,
    pub external_id: Option<String>,
    pub task_definition: Option<String>,
    pub network_configuration: Option<Value>,
    pub load_balancers: Option<Vec<Value>>,
    pub service_registries: Option<Vec<Value>>,
    pub launch_type: Option<String>,
    pub capacity_provider_strategy: Option<Vec<Value>>,
    pub platform_version: Option<String>,
    pub scale: Option<Scale>,
    pub client_token: Option<String>,
    pub tags: Option<Vec<Tag>>,
}

/// How far back failed tasks count against launching more.
const FAILURE_WINDOW: f64 = 30.0;

fn check_scale(scale: &Scale) -> Result<(), EcsError> {
    if scale.unit != "PERCENT" {
        return Err(EcsError::invalid(format!(
            "scale unit {} is not valid: PERCENT.",
            scale.unit
        )));
    }
    if !(0.0..=100.0).contains(&scale.value) {
        return Err(EcsError::invalid("scale value must be between 0 and 100."));
    }
    Ok(())
}

fn not_found(id: &str) -> EcsError {
    EcsError::TaskSetNotFound(format!("The specified task set {id} does not exist."))
}

/// Whether `given` (an id or ARN) names the task set.
fn names(ts: &TaskSet, given: &str) -> bool {
    ts.id == given || ts.task_set_arn == given
}

impl Control {
    /// The EXTERNAL service a task set request names.
    async fn external_service(
        &self,
        scope: &Scope,
        cluster: Option<&str>,
        service: Option<&str>,
    ) -> Result<(String, ServiceRecord), EcsError> {
        let name = service.ok_or_else(|| EcsError::invalid("service can not be blank."))?;
        let (key, rec, _) = self.service_record(scope, cluster, name).await?;
        if rec.service.status != "ACTIVE" {
            return Err(EcsError::ServiceNotActive("Service was not ACTIVE.".into()));
        }
        if rec.service.deployment_controller["type"].as_str() != Some("EXTERNAL") {
            return Err(EcsError::invalid(
                "Task sets are only for services whose deployment controller is EXTERNAL.",
            ));
        }
        Ok((key, rec))
    }

    pub async fn create_task_set(&self, scope: &Scope, req: CreateTaskSetRequest) -> Result<TaskSet, EcsError> {
        let (key, rec) = self
            .external_service(scope, req.cluster.as_deref(), req.service.as_deref())
            .await?;
        if let Some(token) = &req.client_token {
            if let Some(ts) = rec
                .task_set_tokens
                .get(token)
                .and_then(|id| rec.service.task_sets.iter().find(|t| &t.id == id))
            {
                return Ok(ts.clone());
            }
        }
        let td_ref = req
            .task_definition
            .clone()
            .ok_or_else(|| EcsError::invalid("taskDefinition can not be blank."))?;
        let (td, _, _) = self.task_definition(scope, &td_ref).await?;
        if td.status() != "ACTIVE" {
            return Err(EcsError::client("TaskDefinition is inactive"));
        }
        let cluster = self.active_cluster(scope, Some(&rec.cluster)).await?;
        let launch = crate::run_task::resolve_launch(
            req.launch_type.as_deref(),
            req.capacity_provider_strategy.as_deref(),
            &cluster,
            &crate::run_task::compatibilities(&td.definition),
        )?;
        let mode = gantry_types::taskdef::NetworkMode::parse(td.definition["networkMode"].as_str())?;
        if let Some(subnets) = crate::run_task::network_for(mode, req.network_configuration.as_ref())? {
            self.check_subnets(scope, &subnets).await?;
        }
        let load_balancers = match req.load_balancers.as_deref() {
            Some(l) if !l.is_empty() => {
                self.validate_load_balancers(scope, l, &td.definition, "ROLLING")
                    .await?
            }
            _ => vec![],
        };
        if req.service_registries.as_ref().is_some_and(|r| !r.is_empty()) {
            return Err(EcsError::invalid(
                "serviceRegistries on task sets are not supported by Gantry yet.",
            ));
        }
        let scale = req.scale.clone().unwrap_or(Scale {
            value: 100.0,
            unit: "PERCENT".into(),
        });
        check_scale(&scale)?;
        let now = self.now();
        let digits: String = crate::random_hex(10)
            .bytes()
            .map(|b| char::from(b'0' + b % 10))
            .take(19)
            .collect();
        let id = format!("ecs-svc/{digits}");
        let ts = TaskSet {
            task_set_arn: format!(
                "arn:aws:ecs:{}:{}:task-set/{}/{}/{id}",
                scope.region, scope.account, rec.cluster, rec.service.service_name
            ),
            started_by: id.clone(),
            id,
            service_arn: rec.service.service_arn.clone(),
            cluster_arn: rec.service.cluster_arn.clone(),
            external_id: req.external_id.clone(),
            status: "ACTIVE".into(),
            task_definition: td.definition["taskDefinitionArn"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            computed_desired_count: 0,
            pending_count: 0,
            running_count: 0,
            created_at: now,
            updated_at: now,
            launch_type: if launch.capacity_provider.is_some() {
                String::new()
            } else {
                launch.launch_type.clone()
            },
            capacity_provider_strategy: req.capacity_provider_strategy.clone().unwrap_or_default(),
            platform_version: crate::run_task::platform_version(
                launch.launch_type == "FARGATE",
                req.platform_version.as_deref(),
            ),
            platform_family: "Linux".into(),
            network_configuration: req.network_configuration.clone().unwrap_or(Value::Null),
            load_balancers,
            service_registries: vec![],
            scale,
            stability_status: "STABILIZING".into(),
            stability_status_at: now,
            tags: req.tags.clone(),
        };
        let mut out = ts.clone();
        out.computed_desired_count = ts.computed_desired(rec.service.desired_count);
        self.update_service_record(&key, |r| {
            let mut t = ts.clone();
            t.computed_desired_count = t.computed_desired(r.service.desired_count);
            r.service.task_sets.push(t);
            if let Some(token) = &req.client_token {
                r.task_set_tokens.insert(token.clone(), ts.id.clone());
            }
            r.steady = false;
            Ok(true)
        })
        .await?;
        Ok(out)
    }

    /// Edits one task set of an EXTERNAL service and returns it.
    async fn edit_task_set(
        &self,
        scope: &Scope,
        cluster: Option<&str>,
        service: Option<&str>,
        task_set: &str,
        f: impl Fn(&mut ServiceRecord, usize) -> Result<(), EcsError>,
    ) -> Result<TaskSet, EcsError> {
        let (key, _) = self.external_service(scope, cluster, service).await?;
        let mut out = None;
        self.update_service_record(&key, |r| {
            let i = r
                .service
                .task_sets
                .iter()
                .position(|t| names(t, task_set))
                .ok_or_else(|| not_found(task_set))?;
            f(r, i)?;
            let desired = r.service.desired_count;
            let t = &mut r.service.task_sets[i];
            t.computed_desired_count = t.computed_desired(desired);
            t.updated_at = self.now();
            out = Some(t.clone());
            r.steady = false;
            Ok(true)
        })
        .await?;
        out.ok_or_else(|| not_found(task_set))
    }

    pub async fn update_task_set(
        &self,
        scope: &Scope,
        cluster: Option<&str>,
        service: Option<&str>,
        task_set: &str,
        scale: Scale,
    ) -> Result<TaskSet, EcsError> {
        check_scale(&scale)?;
        self.edit_task_set(scope, cluster, service, task_set, |r, i| {
            if r.service.task_sets[i].status == "DRAINING" {
                return Err(EcsError::invalid("The task set is being deleted."));
            }
            r.service.task_sets[i].scale = scale.clone();
            Ok(())
        })
        .await
    }

    /// DeleteTaskSet: the set drains (its tasks leave their target groups and stop) and goes
    /// once none is left. The primary set goes only with `force`.
    pub async fn delete_task_set(
        &self,
        scope: &Scope,
        cluster: Option<&str>,
        service: Option<&str>,
        task_set: &str,
        force: bool,
    ) -> Result<TaskSet, EcsError> {
        self.edit_task_set(scope, cluster, service, task_set, |r, i| {
            let t = &mut r.service.task_sets[i];
            if t.status == "PRIMARY" && !force {
                return Err(EcsError::invalid(
                    "The primary task set cannot be deleted; make another task set primary first, or use force.",
                ));
            }
            t.status = "DRAINING".into();
            Ok(())
        })
        .await
    }

    pub async fn update_service_primary_task_set(
        &self,
        scope: &Scope,
        cluster: Option<&str>,
        service: Option<&str>,
        task_set: &str,
    ) -> Result<TaskSet, EcsError> {
        self.edit_task_set(scope, cluster, service, task_set, |r, i| {
            if r.service.task_sets[i].status == "DRAINING" {
                return Err(EcsError::invalid("A draining task set cannot become the primary."));
            }
            for (j, t) in r.service.task_sets.iter_mut().enumerate() {
                if j == i {
                    t.status = "PRIMARY".into();
                } else if t.status == "PRIMARY" {
                    t.status = "ACTIVE".into();
                }
            }
            // The primary's settings become the service's, as ECS describes it.
            let p = r.service.task_sets[i].clone();
            r.service.task_definition = p.task_definition;
            r.service.network_configuration = p.network_configuration;
            r.service.load_balancers = p.load_balancers;
            r.service.launch_type = p.launch_type;
            r.service.platform_version = p.platform_version;
            Ok(())
        })
        .await
    }

    pub async fn describe_task_sets(
        &self,
        scope: &Scope,
        cluster: Option<&str>,
        service: Option<&str>,
        wanted: Option<&[String]>,
        include_tags: bool,
    ) -> Result<(Vec<TaskSet>, Vec<Failure>), EcsError> {
        let (_, rec) = self.external_service(scope, cluster, service).await?;
        let hide = |mut t: TaskSet| {
            if !include_tags {
                t.tags = None;
            }
            t
        };
        let Some(wanted) = wanted.filter(|w| !w.is_empty()) else {
            return Ok((rec.service.task_sets.into_iter().map(hide).collect(), vec![]));
        };
        let (mut found, mut failures) = (vec![], vec![]);
        for w in wanted {
            match rec.service.task_sets.iter().find(|t| names(t, w)) {
                Some(t) => found.push(hide(t.clone())),
                None => failures.push(Failure {
                    arn: Some(w.clone()),
                    reason: Some("MISSING".into()),
                    detail: None,
                }),
            }
        }
        Ok((found, failures))
    }
}

/// What one pass decided for one task set.
#[derive(Default)]
struct SetPass {
    running: i64,
    pending: i64,
    registered: BTreeSet<String>,
    settled: bool,
}

impl Control {
    /// One pass over an EXTERNAL service: each task set at its computed count.
    pub(crate) async fn reconcile_external(
        &self,
        key: &str,
        rec: ServiceRecord,
        tasks: Vec<TaskRecord>,
    ) -> Result<(), EcsError> {
        let now = self.now();
        let mut deregistering = rec.deregistering.clone();
        let mut events = vec![];
        let mut passes: BTreeMap<String, SetPass> = BTreeMap::new();
        let active = rec.service.status == "ACTIVE";
        for ts in &rec.service.task_sets {
            let desired = if active {
                ts.computed_desired(rec.service.desired_count)
            } else {
                0
            };
            let p = self
                .reconcile_task_set(&rec, ts, desired, &tasks, &mut deregistering, &mut events, now)
                .await?;
            passes.insert(ts.id.clone(), p);
        }
        // Drained tasks are stopped now; ones that stopped meanwhile are forgotten.
        for (arn, (until, reason)) in deregistering.clone() {
            let live = tasks.iter().find(|t| {
                t.task.task_arn == arn && t.task.last_status != "STOPPED" && t.task.desired_status != "STOPPED"
            });
            match live {
                Some(t) if now >= until => {
                    self.request_stop(&Self::key_of(t), stop_code::SERVICE_SCHEDULER_INITIATED, &reason)
                        .await?;
                    deregistering.remove(&arn);
                }
                Some(_) => {}
                None => {
                    deregistering.remove(&arn);
                }
            }
        }
        let live_of = |id: &str| {
            tasks
                .iter()
                .any(|t| t.task.started_by.as_deref() == Some(id) && t.task.last_status != "STOPPED")
        };
        let gone: BTreeSet<String> = rec
            .service
            .task_sets
            .iter()
            .filter(|t| (t.status == "DRAINING" || !active) && !live_of(&t.id))
            .map(|t| t.id.clone())
            .collect();
        self.update_service_record(key, |r| {
            let before = r.clone();
            r.deregistering = deregistering.clone();
            r.service.task_sets.retain(|t| !gone.contains(&t.id));
            r.task_set_registered.retain(|id, _| !gone.contains(id));
            let desired = r.service.desired_count;
            for t in &mut r.service.task_sets {
                let Some(p) = passes.get(&t.id) else { continue };
                t.computed_desired_count = t.computed_desired(desired);
                t.running_count = p.running;
                t.pending_count = p.pending;
                let status = if p.settled { "STEADY_STATE" } else { "STABILIZING" };
                if t.stability_status != status {
                    t.stability_status = status.into();
                    t.stability_status_at = now;
                }
                r.task_set_registered.insert(t.id.clone(), p.registered.clone());
            }
            r.service.running_count = passes.values().map(|p| p.running).sum();
            r.service.pending_count = passes.values().map(|p| p.pending).sum();
            for e in &events {
                r.event(now, e.clone());
            }
            if r.service.status == "DRAINING" && r.service.task_sets.is_empty() {
                r.service.status = "INACTIVE".into();
            }
            Ok(*r != before)
        })
        .await?;
        Ok(())
    }

    /// Keeps one task set at `desired`: replaces failing tasks, drains and stops excess ones,
    /// starts missing ones, registers running ones in the set's target groups.
    #[allow(clippy::too_many_arguments)]
    async fn reconcile_task_set(
        &self,
        rec: &ServiceRecord,
        ts: &TaskSet,
        desired: i64,
        tasks: &[TaskRecord],
        deregistering: &mut BTreeMap<String, (f64, String)>,
        events: &mut Vec<String>,
        now: f64,
    ) -> Result<SetPass, EcsError> {
        let scope = rec.scope();
        let name = &rec.service.service_name;
        let grace = rec.service.health_check_grace_period_seconds.unwrap_or(0) as f64;
        let registered = rec.task_set_registered.get(&ts.id).cloned().unwrap_or_default();
        let lbs = crate::service_lb::parse(&ts.load_balancers);
        let mut lb = if lbs.is_empty() && registered.is_empty() {
            None
        } else {
            Some(self.lb_pass(&scope, lbs, None, false).await)
        };
        let mut live: Vec<(&TaskRecord, TaskHealth)> = tasks
            .iter()
            .filter(|t| t.task.started_by.as_deref() == Some(&ts.id))
            .filter(|t| t.task.last_status != "STOPPED" && t.task.desired_status == "RUNNING")
            .filter(|t| !deregistering.contains_key(&t.task.task_arn))
            .map(|t| (t, classify(t, lb.as_ref(), now, grace).0))
            .collect();
        // Failing tasks go; then the excess, least useful first (pending, then newest).
        let mut stop: Vec<(&TaskRecord, &str)> = vec![];
        live.retain(|(t, h)| {
            let failing = *h == TaskHealth::Unhealthy;
            if failing {
                stop.push((t, "Task failed health checks."));
            }
            !failing
        });
        live.sort_by(|a, b| {
            let rank = |h: &TaskHealth| u8::from(*h != TaskHealth::Pending);
            rank(&a.1).cmp(&rank(&b.1)).then(
                b.0.task
                    .created_at
                    .partial_cmp(&a.0.task.created_at)
                    .unwrap_or(std::cmp::Ordering::Equal),
            )
        });
        let excess = (live.len() as i64 - desired).max(0) as usize;
        for (t, _) in live.drain(..excess) {
            stop.push((t, "Scaling activity initiated by (task set)"));
        }
        for (t, why) in &stop {
            let reason = why.replace("(task set)", &format!("(task set {})", ts.id));
            if let Some(p) = &lb {
                let until = self.begin_draining(&scope, p, t, now).await;
                if until > now {
                    deregistering.insert(t.task.task_arn.clone(), (until, reason));
                    continue;
                }
            }
            self.request_stop(&Self::key_of(t), stop_code::SERVICE_SCHEDULER_INITIATED, &reason)
                .await?;
        }
        if !stop.is_empty() {
            events.push(format!(
                "(service {name}) (task set {}) has stopped {} tasks.",
                ts.id,
                stop.len()
            ));
        }
        let missing = (desired - live.len() as i64).max(0) as u32;
        // Tasks that keep failing are not relaunched at once: after three failures within
        // FAILURE_WINDOW, launches wait until the oldest of them leaves the window.
        let recent_failures = tasks
            .iter()
            .filter(|t| t.task.started_by.as_deref() == Some(&ts.id) && t.task.last_status == "STOPPED")
            .filter(|t| t.task.stopped_at.is_some_and(|at| now - at < FAILURE_WINDOW) && failed(t))
            .count();
        let mut started = 0;
        if missing > 0 && recent_failures >= 3 {
            let m = format!(
                "(service {name}) (task set {}) is waiting before starting tasks: its last 3 failed to start or run.",
                ts.id
            );
            if rec.service.events.first().map(|e| &e.message) != Some(&m) {
                events.push(m);
            }
        } else if missing > 0 {
            let mut as_set = rec.clone();
            as_set.service.launch_type = ts.launch_type.clone();
            as_set.service.capacity_provider_strategy = ts.capacity_provider_strategy.clone();
            as_set.service.platform_version = ts.platform_version.clone();
            let (ids, said) = self
                .launch(&as_set, &ts.task_definition, &ts.network_configuration, &ts.id, missing)
                .await?;
            started = ids.len() as i64;
            events.extend(said);
        }
        let running: Vec<&TaskRecord> = live
            .iter()
            .filter(|(t, _)| t.task.last_status == "RUNNING")
            .map(|(t, _)| *t)
            .collect();
        let now_registered = match lb.as_mut() {
            Some(p) => {
                let r = self.sync_targets(&scope, name, p, &running, &registered).await;
                events.append(&mut p.events);
                r
            }
            None => BTreeSet::new(),
        };
        let healthy = live.iter().filter(|(_, h)| *h == TaskHealth::Healthy).count() as i64;
        Ok(SetPass {
            running: running.len() as i64,
            pending: live.len() as i64 - running.len() as i64 + started,
            registered: now_registered,
            settled: healthy == desired && stop.is_empty() && started == 0,
        })
    }
}
