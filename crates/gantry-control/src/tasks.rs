//! Tasks: RunTask creates PROVISIONING records placed on the node; the agent moves them
//! through the lifecycle; StopTask sets desiredStatus STOPPED. Every change bumps `version`.

use crate::capacity_providers::launch_for_strategy;
use crate::placement::{Demand, Placement};
use crate::{prefix, random_hex, store_err, Control};
use gantry_types::arn::{task_id, Scope};
use gantry_types::fargate;
use gantry_types::model::{stop_code, Attachment, Cluster, Container, Failure, Tag, Task};
use gantry_types::taskdef::{ContainerDefinition, KeyValuePair, NetworkMode};
use gantry_types::EcsError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A container as the agent runs it: its definition with RunTask's overrides applied.
pub type TaskSpecContainer = ContainerDefinition;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskRecord {
    pub task: Task,
    pub cluster: String,
    pub node: String,
    pub containers: Vec<TaskSpecContainer>,
    pub cpu_units: i64,
    pub memory_mib: i64,
    #[serde(default)]
    pub account: String,
    #[serde(default)]
    pub region: String,
    /// Scale-in protection until this time (epoch seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected_until: Option<f64>,
    /// How the agent networks the task (records from before network modes were awsvpc).
    #[serde(default = "awsvpc")]
    pub network_mode: NetworkMode,
    /// Whether `memory_mib` is a hard limit for the task (a task-level size), or only the sum
    /// of its containers' (EC2 definitions without one).
    #[serde(default = "yes")]
    pub task_memory_limit: bool,
}

fn yes() -> bool {
    true
}

fn awsvpc() -> NetworkMode {
    NetworkMode::Awsvpc
}

/// Where and how a task runs: the launch type, and the capacity provider it came through.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub launch_type: String,
    pub capacity_provider: Option<String>,
}

/// The launch type and capacity provider of a RunTask or CreateService request, as ECS
/// resolves them: launchType, else the strategy, else the cluster's default strategy, else
/// EC2. The task definition must be compatible with the result.
pub fn resolve_launch(
    launch_type: Option<&str>,
    strategy: Option<&[Value]>,
    cluster: &Cluster,
    compatibilities: &[String],
) -> Result<Launch, EcsError> {
    let strategy = strategy.filter(|s| !s.is_empty());
    if launch_type.is_some() && strategy.is_some() {
        return Err(EcsError::invalid(
            "Specifying both a launch type and capacity provider strategy is not supported.",
        ));
    }
    let launch = match (launch_type, strategy) {
        (Some(lt), _) => {
            if !["EC2", "FARGATE", "EXTERNAL"].contains(&lt) {
                return Err(EcsError::invalid(format!(
                    "launchType {lt} is not valid: EC2, FARGATE or EXTERNAL."
                )));
            }
            Launch {
                launch_type: lt.to_string(),
                capacity_provider: None,
            }
        }
        (None, Some(s)) => launch_for_strategy(s, &cluster.capacity_providers)?,
        (None, None) if !cluster.default_capacity_provider_strategy.is_empty() => {
            launch_for_strategy(&cluster.default_capacity_provider_strategy, &cluster.capacity_providers)?
        }
        (None, None) => Launch {
            launch_type: "EC2".into(),
            capacity_provider: None,
        },
    };
    if !compatibilities.contains(&launch.launch_type) {
        return Err(EcsError::client(format!(
            "Task definition does not support launch_type {}.",
            launch.launch_type
        )));
    }
    Ok(launch)
}

impl TaskRecord {
    pub fn protected_at(&self, now: f64) -> bool {
        self.protected_until.is_some_and(|t| t > now)
    }

    pub fn id(&self) -> &str {
        task_id(&self.task.task_arn)
    }
    pub fn scope(&self) -> Scope {
        Scope {
            account: self.account.clone(),
            region: self.region.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerOverride {
    pub name: Option<String>,
    pub command: Option<Vec<String>>,
    pub environment: Option<Vec<KeyValuePair>>,
    pub cpu: Option<i64>,
    pub memory: Option<i64>,
    pub memory_reservation: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct TaskOverride {
    pub container_overrides: Option<Vec<ContainerOverride>>,
    pub cpu: Option<String>,
    pub memory: Option<String>,
    pub ephemeral_storage: Option<gantry_types::taskdef::EphemeralStorage>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RunTaskRequest {
    pub cluster: Option<String>,
    pub task_definition: Option<String>,
    pub count: Option<i64>,
    pub launch_type: Option<String>,
    pub capacity_provider_strategy: Option<Vec<Value>>,
    pub network_configuration: Option<Value>,
    pub overrides: Option<Value>,
    pub started_by: Option<String>,
    pub group: Option<String>,
    pub tags: Option<Vec<Tag>>,
    pub client_token: Option<String>,
    pub platform_version: Option<String>,
    pub enable_execute_command: Option<bool>,
    pub placement_constraints: Option<Vec<Value>>,
    pub placement_strategy: Option<Vec<Value>>,
    pub propagate_tags: Option<String>,
    #[serde(rename = "enableECSManagedTags")]
    pub enable_ecs_managed_tags: Option<bool>,
    /// Services keep running a task definition that was deregistered after they started.
    #[serde(skip)]
    pub allow_inactive: bool,
}

const MAX_STARTED_BY: usize = 128;

/// ListTasks' filters.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ListTasks {
    pub cluster: Option<String>,
    pub container_instance: Option<String>,
    pub family: Option<String>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
    pub started_by: Option<String>,
    pub service_name: Option<String>,
    pub desired_status: Option<String>,
    pub launch_type: Option<String>,
    pub daemon_name: Option<String>,
}

impl ListTasks {
    fn matches(&self, r: &TaskRecord, desired: &str) -> bool {
        let t = &r.task;
        let status_ok = match desired {
            "STOPPED" => t.desired_status == "STOPPED",
            "PENDING" => t.desired_status == "RUNNING" && t.last_status != "RUNNING",
            _ => t.desired_status == "RUNNING",
        };
        let family_ok = self.family.as_deref().is_none_or(|f| {
            t.task_definition_arn
                .rsplit_once("task-definition/")
                .and_then(|(_, fr)| fr.rsplit_once(':'))
                .is_some_and(|(fam, _)| fam == f)
        });
        let service_ok = self.service_name.as_deref().is_none_or(|s| {
            let name = s.rsplit('/').next().unwrap_or(s);
            t.group.as_deref() == Some(&format!("service:{name}"))
        });
        let instance_ok = self.container_instance.as_deref().is_none_or(|ci| {
            let id = ci.rsplit('/').next().unwrap_or(ci);
            t.container_instance_arn
                .as_deref()
                .is_some_and(|a| a.rsplit('/').next() == Some(id))
        });
        // Daemons do not exist in Gantry: no task belongs to one.
        let daemon_ok = self.daemon_name.is_none();
        let launch_ok = self.launch_type.as_deref().is_none_or(|l| t.launch_type == l);
        let by_ok = self
            .started_by
            .as_deref()
            .is_none_or(|s| t.started_by.as_deref() == Some(s));
        status_ok && family_ok && service_ok && instance_ok && daemon_ok && launch_ok && by_ok
    }
}

/// Key prefix of every task record.
pub const TASKS_PREFIX: &str = "/tasks/";

impl Control {
    /// Tasks live under their own top-level prefix so the agent can list and watch them all.
    fn task_key(scope: &Scope, cluster: &str, id: &str) -> String {
        format!("{TASKS_PREFIX}{}/{}/{cluster}/{id}", scope.account, scope.region)
    }

    pub(crate) async fn list_task_records(&self, scope: &Scope, cluster: &str) -> Result<Vec<TaskRecord>, EcsError> {
        Ok(self
            .list_json::<TaskRecord>(&format!("{TASKS_PREFIX}{}/{}/{cluster}/", scope.account, scope.region))
            .await?
            .into_iter()
            .map(|(_, r, _)| r)
            .collect())
    }

    /// The cluster of a task or service named by a short-format ARN (which has none).
    pub async fn cluster_of(&self, scope: &Scope, kind: &str, id: &str) -> Result<Option<String>, EcsError> {
        let base = match kind {
            "task" => TASKS_PREFIX,
            _ => crate::services::SERVICES_PREFIX,
        };
        let (kvs, _) = self
            .store
            .list(&format!("{base}{}/{}/", scope.account, scope.region))
            .await
            .map_err(store_err)?;
        Ok(kvs.iter().find_map(|kv| {
            let (cluster_path, last) = kv.key.rsplit_once('/')?;
            (last == id).then(|| cluster_path.rsplit('/').next().unwrap_or("").to_string())
        }))
    }

    /// Every task record in the store with its key and revision (for the agent).
    pub async fn all_tasks(&self) -> Result<Vec<(String, TaskRecord, i64)>, EcsError> {
        self.list_json::<TaskRecord>(TASKS_PREFIX).await
    }

    pub fn key_of(rec: &TaskRecord) -> String {
        Self::task_key(&rec.scope(), &rec.cluster, rec.id())
    }

    /// Read-modify-write of a task record; `f` returns false to leave it unchanged. Bumps
    /// `version` on every change. Returns the record as stored.
    pub async fn update_task(
        &self,
        key: &str,
        mut f: impl FnMut(&mut TaskRecord) -> bool,
    ) -> Result<Option<TaskRecord>, EcsError> {
        self.update_json(key, |r: &mut TaskRecord| {
            let before = r.clone();
            if !f(r) || *r == before {
                return Ok(false);
            }
            r.task.version += 1;
            Ok(true)
        })
        .await
    }

    pub async fn run_task(&self, scope: &Scope, req: RunTaskRequest) -> Result<(Vec<Task>, Vec<Failure>), EcsError> {
        // ECS answers for the cluster before anything else.
        let cluster = self.active_cluster(scope, req.cluster.as_deref()).await?;
        let count = req.count.unwrap_or(1);
        if !(1..=10).contains(&count) {
            return Err(EcsError::invalid("count must be between 1 and 10."));
        }
        if let Some(s) = &req.started_by {
            if s.len() > MAX_STARTED_BY {
                return Err(EcsError::invalid("startedBy can be up to 128 characters."));
            }
        }
        let td_ref = req
            .task_definition
            .as_deref()
            .ok_or_else(|| EcsError::invalid("taskDefinition can not be blank."))?;
        let (td, _, _) = self.task_definition(scope, td_ref).await?;
        if td.status() != "ACTIVE" && !(req.allow_inactive && td.status() == "INACTIVE") {
            return Err(EcsError::client("TaskDefinition is inactive"));
        }
        if let Some(token) = &req.client_token {
            if token.is_empty() || token.len() > 64 {
                return Err(EcsError::invalid("clientToken must be 1 to 64 characters."));
            }
            let tkey = format!("{}client-tokens/{token}", prefix(scope));
            if let Some((arns, _)) = self.get_json::<Vec<String>>(&tkey).await? {
                let (tasks, _) = self
                    .describe_tasks(scope, Some(&cluster.cluster_name), &arns, &[])
                    .await?;
                return Ok((tasks, vec![]));
            }
        }
        let launch = resolve_launch(
            req.launch_type.as_deref(),
            req.capacity_provider_strategy.as_deref(),
            &cluster,
            &compatibilities(&td.definition),
        )?;
        let network_mode = NetworkMode::parse(td.definition["networkMode"].as_str())?;
        let subnet = network_for(network_mode, req.network_configuration.as_ref())?;
        let def: Vec<ContainerDefinition> = serde_json::from_value(td.definition["containerDefinitions"].clone())
            .map_err(|e| EcsError::Server(format!("stored task definition is corrupt: {e}")))?;
        let overrides = parse_overrides(req.overrides.as_ref())?;
        let containers = apply_container_overrides(def, &overrides)?;
        let (cpu, memory, task_memory_limit) = task_size(&td.definition, &overrides, &containers, &launch)?;
        if let Some(e) = &overrides.ephemeral_storage {
            if !(21..=200).contains(&e.size_in_gi_b) {
                return Err(EcsError::invalid(
                    "ephemeralStorage sizeInGiB must be between 21 and 200.",
                ));
            }
        }
        let td_arn = td.definition["taskDefinitionArn"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let group = req
            .group
            .clone()
            .unwrap_or_else(|| format!("family:{}", td.definition["family"].as_str().unwrap_or("")));
        let tags = task_tags(&req, &td.tags, &cluster.cluster_name, &group)?;
        let (member_of, distinct_instance) =
            placement_constraints(&td.definition, req.placement_constraints.as_deref())?;
        validate_strategy(req.placement_strategy.as_deref())?;
        // Fargate provisions capacity per task; EC2 and EXTERNAL tasks need room on an instance.
        let placements = if launch.launch_type == "FARGATE" {
            vec![Placement::On(String::new()); count as usize]
        } else {
            let demand = Demand {
                member_of,
                distinct_instance,
                ..crate::instances::demand_for(cpu, memory, &containers, network_mode, &group)
            };
            self.place_tasks(scope, &cluster.cluster_name, &demand, count as usize)
                .await?
        };
        let long_arns = self.long_arns(scope, "taskLongArnFormat").await?;
        let now = self.now();
        let mut tasks = Vec::new();
        let mut failures = Vec::new();
        for placed in placements {
            let instance = match placed {
                Placement::On(arn) => (!arn.is_empty()).then_some(arn),
                Placement::Failed { arn, reason } => {
                    failures.push(Failure {
                        arn,
                        reason: Some(reason),
                        detail: None,
                    });
                    continue;
                }
            };
            let id = random_hex(16);
            let task_arn = if long_arns {
                scope.task_arn(&cluster.cluster_name, &id)
            } else {
                scope.short_task_arn(&id)
            };
            let attachment_id = crate::random_uuid();
            let task = Task {
                task_arn: task_arn.clone(),
                cluster_arn: cluster.cluster_arn.clone(),
                task_definition_arn: td_arn.clone(),
                container_instance_arn: instance,
                containers: containers
                    .iter()
                    .map(|c| Container {
                        container_arn: if long_arns {
                            scope.container_arn(&cluster.cluster_name, &id, &random_hex(16))
                        } else {
                            scope.short_container_arn(&crate::random_uuid())
                        },
                        task_arn: task_arn.clone(),
                        name: c.name().to_string(),
                        image: c.image.clone().unwrap_or_default(),
                        last_status: "PENDING".into(),
                        health_status: "UNKNOWN".into(),
                        cpu: c.cpu.unwrap_or(0).to_string(),
                        memory: c.memory.map(|m| m.to_string()),
                        memory_reservation: c.memory_reservation.map(|m| m.to_string()),
                        ..Default::default()
                    })
                    .collect(),
                cpu: cpu.to_string(),
                memory: memory.to_string(),
                desired_status: "RUNNING".into(),
                last_status: "PROVISIONING".into(),
                // ECS fills the launch type even when a capacity provider chose it.
                launch_type: launch.launch_type.clone(),
                capacity_provider_name: launch.capacity_provider.clone(),
                // Platform versions are Fargate's.
                platform_version: if launch.launch_type == "FARGATE" {
                    req.platform_version
                        .clone()
                        .filter(|p| p != "LATEST")
                        .unwrap_or_else(|| "1.4.0".into())
                } else {
                    String::new()
                },
                platform_family: "Linux".into(),
                availability_zone: format!("{}a", scope.region),
                created_at: now,
                started_by: req.started_by.clone(),
                group: Some(group.clone()),
                version: 1,
                tags: Some(tags.clone()),
                // An ENI only in awsvpc mode.
                attachments: subnet
                    .iter()
                    .map(|subnet| Attachment {
                        id: attachment_id.clone(),
                        kind: "ElasticNetworkInterface".into(),
                        status: "PRECREATED".into(),
                        details: vec![KeyValuePair {
                            name: Some("subnetId".into()),
                            value: Some(subnet.clone()),
                        }],
                    })
                    .collect(),
                overrides: req.overrides.clone().unwrap_or_else(
                    || serde_json::json!({"containerOverrides": [], "inferenceAcceleratorOverrides": []}),
                ),
                health_status: "UNKNOWN".into(),
                enable_execute_command: req.enable_execute_command.unwrap_or(false),
                ephemeral_storage: Some(
                    overrides
                        .ephemeral_storage
                        .clone()
                        .unwrap_or(gantry_types::taskdef::EphemeralStorage { size_in_gi_b: 20 }),
                ),
                ..Default::default()
            };
            let rec = TaskRecord {
                task: task.clone(),
                cluster: cluster.cluster_name.clone(),
                node: self.node.clone(),
                containers: containers.clone(),
                cpu_units: cpu,
                memory_mib: memory,
                account: scope.account.clone(),
                region: scope.region.clone(),
                protected_until: None,
                network_mode,
                task_memory_limit,
            };
            self.store
                .create(
                    &Self::task_key(scope, &cluster.cluster_name, &id),
                    &serde_json::to_vec(&rec).expect("serialises"),
                )
                .await
                .map_err(store_err)?;
            tasks.push(task);
        }
        if let Some(token) = &req.client_token {
            let arns: Vec<String> = tasks.iter().map(|t| t.task_arn.clone()).collect();
            // The tasks exist; a lost token would let a retry start them twice, so say so.
            match self
                .store
                .create(
                    &format!("{}client-tokens/{token}", prefix(scope)),
                    &serde_json::to_vec(&arns).expect("serialises"),
                )
                .await
            {
                Ok(_) => {}
                Err(gantry_store::StoreError::AlreadyExists { .. }) => {
                    return Err(EcsError::invalid(
                        "clientToken was used by a concurrent RunTask request with the same token.",
                    ))
                }
                Err(e) => return Err(store_err(e)),
            }
        }
        for t in &mut tasks {
            t.tags = None;
        }
        Ok((tasks, failures))
    }

    pub async fn describe_tasks(
        &self,
        scope: &Scope,
        cluster: Option<&str>,
        ids: &[String],
        include: &[String],
    ) -> Result<(Vec<Task>, Vec<Failure>), EcsError> {
        let cluster = self.active_cluster(scope, cluster).await?;
        if ids.is_empty() || ids.len() > 100 {
            return Err(EcsError::invalid(
                "Tasks cannot be empty and can have at most 100 items.",
            ));
        }
        let (mut found, mut failures) = (Vec::new(), Vec::new());
        for i in ids {
            let id = task_id(i);
            match self
                .get_json::<TaskRecord>(&Self::task_key(scope, &cluster.cluster_name, id))
                .await?
            {
                Some((mut rec, _)) => {
                    if !include.iter().any(|x| x == "TAGS") {
                        rec.task.tags = None;
                    }
                    found.push(rec.task)
                }
                None => failures.push(Failure {
                    arn: Some(if i.starts_with("arn:") {
                        i.clone()
                    } else {
                        scope.task_arn(&cluster.cluster_name, id)
                    }),
                    reason: Some("MISSING".into()),
                    detail: None,
                }),
            }
        }
        Ok((found, failures))
    }

    pub async fn list_tasks(&self, scope: &Scope, q: ListTasks) -> Result<(Vec<String>, Option<String>), EcsError> {
        let cluster = self.active_cluster(scope, q.cluster.as_deref()).await?;
        let desired = q.desired_status.as_deref().unwrap_or("RUNNING");
        if !["RUNNING", "PENDING", "STOPPED"].contains(&desired) {
            return Err(EcsError::invalid("desiredStatus must be RUNNING, PENDING or STOPPED."));
        }
        let others = q.family.is_some()
            || q.service_name.is_some()
            || q.container_instance.is_some()
            || q.launch_type.is_some()
            || q.desired_status.is_some();
        if q.started_by.is_some() && others {
            return Err(EcsError::invalid(
                "When you specify startedBy as the filter, it must be the only filter that you use.",
            ));
        }
        if let Some(lt) = q.launch_type.as_deref() {
            if !["EC2", "FARGATE", "EXTERNAL"].contains(&lt) {
                return Err(EcsError::invalid(format!(
                    "launchType {lt} is not valid: EC2, FARGATE or EXTERNAL."
                )));
            }
        }
        let size = crate::page_size(q.max_results, 100)?;
        let after = q.next_token.as_deref().map(crate::decode_token).transpose()?;
        let mut all = self
            .list_json::<TaskRecord>(&format!(
                "{TASKS_PREFIX}{}/{}/{}/",
                scope.account, scope.region, cluster.cluster_name
            ))
            .await?;
        all.retain(|(k, r, _)| q.matches(r, desired) && after.as_ref().is_none_or(|a| k > a));
        let token = (all.len() > size).then(|| crate::encode_token(&all[size - 1].0));
        Ok((
            all.into_iter().take(size).map(|(_, r, _)| r.task.task_arn).collect(),
            token,
        ))
    }

    pub async fn stop_task(
        &self,
        scope: &Scope,
        cluster: Option<&str>,
        task: &str,
        reason: Option<&str>,
    ) -> Result<Task, EcsError> {
        let cluster = self.active_cluster(scope, cluster).await?;
        if reason.is_some_and(|r| r.len() > 255) {
            return Err(EcsError::invalid("reason can be up to 255 characters."));
        }
        let key = Self::task_key(scope, &cluster.cluster_name, task_id(task));
        let now = self.now();
        let rec = self
            .update_task(&key, |r| {
                if r.task.desired_status == "STOPPED" {
                    return false;
                }
                r.task.desired_status = "STOPPED".into();
                r.task.stopping_at.get_or_insert(now);
                r.task.stop_code = Some(stop_code::USER_INITIATED.into());
                r.task.stopped_reason = Some(
                    reason
                        .map(str::to_string)
                        .unwrap_or_else(|| "Task stopped by user".into()),
                );
                true
            })
            .await?
            .ok_or_else(|| EcsError::invalid("The referenced task was not found."))?;
        let mut t = rec.task;
        t.tags = None;
        Ok(t)
    }

    pub async fn set_task_tags(
        &self,
        scope: &Scope,
        cluster: &str,
        id: &str,
        f: impl Fn(&mut Vec<Tag>),
    ) -> Result<(), EcsError> {
        let key = Self::task_key(scope, cluster, id);
        let r = self
            .update_task(&key, |r| {
                let mut tags = r.task.tags.take().unwrap_or_default();
                f(&mut tags);
                r.task.tags = Some(tags);
                true
            })
            .await?;
        r.map(|_| ())
            .ok_or_else(|| EcsError::ResourceNotFound("The specified task is not found.".into()))
    }

    pub async fn task_tags(&self, scope: &Scope, cluster: &str, id: &str) -> Result<Vec<Tag>, EcsError> {
        match self.get_json::<TaskRecord>(&Self::task_key(scope, cluster, id)).await? {
            Some((r, _)) => Ok(r.task.tags.unwrap_or_default()),
            None => Err(EcsError::ResourceNotFound("The specified task is not found.".into())),
        }
    }

    /// GetTaskProtection / UpdateTaskProtection: `enable` None reads, Some(on) writes.
    pub async fn task_protection(
        &self,
        scope: &Scope,
        cluster: Option<&str>,
        tasks: &[String],
        enable: Option<bool>,
        expires_in_minutes: Option<i64>,
    ) -> Result<(Vec<Value>, Vec<Failure>), EcsError> {
        let cluster = self.active_cluster(scope, cluster).await?;
        if tasks.is_empty() || tasks.len() > 10 {
            return Err(EcsError::invalid("tasks must list 1 to 10 tasks."));
        }
        let minutes = expires_in_minutes.unwrap_or(120);
        if !(1..=2880).contains(&minutes) {
            return Err(EcsError::invalid("expiresInMinutes must be between 1 and 2880."));
        }
        let now = self.now();
        let (mut out, mut failures) = (Vec::new(), Vec::new());
        for t in tasks {
            let key = Self::task_key(scope, &cluster.cluster_name, task_id(t));
            let rec = match enable {
                None => self.get_json::<TaskRecord>(&key).await?.map(|(r, _)| r),
                Some(on) => {
                    self.update_task(&key, |r| {
                        if r.task.last_status == "STOPPED" {
                            return false;
                        }
                        r.protected_until = on.then_some(now + minutes as f64 * 60.0);
                        true
                    })
                    .await?
                }
            };
            match rec {
                Some(r) if r.task.last_status != "STOPPED" => {
                    let on = r.protected_at(now);
                    let mut v = serde_json::json!({"taskArn": r.task.task_arn, "protectionEnabled": on});
                    if on {
                        v["expirationDate"] = serde_json::json!(r.protected_until);
                    }
                    out.push(v);
                }
                Some(r) => failures.push(Failure {
                    arn: Some(r.task.task_arn),
                    reason: Some("TASK_NOT_VALID".into()),
                    detail: Some("The task is stopped.".into()),
                }),
                None => failures.push(Failure {
                    arn: Some(t.clone()),
                    reason: Some("MISSING".into()),
                    detail: None,
                }),
            }
        }
        Ok((out, failures))
    }

    /// Deletes STOPPED tasks older than `keep_secs` (ECS keeps them visible about an hour).
    /// `tasks` is a listing from `all_tasks` the caller already has.
    pub async fn expire_stopped_tasks(
        &self,
        tasks: &[(String, TaskRecord, i64)],
        keep_secs: f64,
    ) -> Result<usize, EcsError> {
        let now = self.now();
        let mut n = 0;
        for (key, rec, rev) in tasks {
            let expired = rec.task.last_status == "STOPPED" && rec.task.stopped_at.is_some_and(|t| now - t > keep_secs);
            if expired && self.store.delete(key, Some(*rev)).await.is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The tags a new task gets: the request's, the task definition's when propagated, and ECS's
/// managed tags when enabled.
fn task_tags(req: &RunTaskRequest, td_tags: &[Tag], cluster: &str, group: &str) -> Result<Vec<Tag>, EcsError> {
    let mut tags = req.tags.clone().unwrap_or_default();
    let mut add = |k: &str, v: &str| {
        if !tags.iter().any(|t| t.key.as_deref() == Some(k)) {
            tags.push(Tag {
                key: Some(k.into()),
                value: Some(v.into()),
            });
        }
    };
    match req.propagate_tags.as_deref() {
        None | Some("NONE") => {}
        Some("TASK_DEFINITION") => {
            for t in td_tags {
                add(t.key.as_deref().unwrap_or(""), t.value.as_deref().unwrap_or(""));
            }
        }
        Some("SERVICE") => {
            return Err(EcsError::invalid(
                "propagateTags SERVICE is only valid for services; RunTask takes TASK_DEFINITION or NONE.",
            ))
        }
        Some(other) => return Err(EcsError::invalid(format!("propagateTags {other} is not valid."))),
    }
    if req.enable_ecs_managed_tags.unwrap_or(false) {
        add("aws:ecs:clusterName", cluster);
        if let Some(svc) = group.strip_prefix("service:") {
            add("aws:ecs:serviceName", svc);
        }
    }
    if tags.len() > 50 {
        return Err(EcsError::invalid(
            "A task can have at most 50 tags, counting propagated and managed ones.",
        ));
    }
    Ok(tags)
}

/// Checks placementConstraints (CreateService, UpdateService).
pub(crate) fn validate_constraints(c: Option<&[Value]>) -> Result<(), EcsError> {
    placement_constraints(&Value::Null, c).map(|_| ())
}

/// memberOf expressions and whether distinctInstance applies, from the task definition's and
/// the request's placementConstraints (at most 10, as ECS).
fn placement_constraints(def: &Value, request: Option<&[Value]>) -> Result<(Vec<String>, bool), EcsError> {
    let from_def = def["placementConstraints"].as_array().cloned().unwrap_or_default();
    let all: Vec<Value> = from_def
        .into_iter()
        .chain(request.unwrap_or_default().iter().cloned())
        .collect();
    if all.len() > 10 {
        return Err(EcsError::invalid("A task can have at most 10 placement constraints."));
    }
    let (mut member_of, mut distinct) = (Vec::new(), false);
    for c in &all {
        match (c["type"].as_str(), c["expression"].as_str()) {
            (Some("memberOf"), Some(e)) => {
                crate::placement::validate_expression(e).map_err(EcsError::invalid)?;
                member_of.push(e.to_string());
            }
            (Some("distinctInstance"), None) => distinct = true,
            (Some("distinctInstance"), Some(_)) => {
                return Err(EcsError::invalid(
                    "A distinctInstance placement constraint takes no expression.",
                ))
            }
            (t, _) => {
                return Err(EcsError::invalid(format!(
                    "Invalid placement constraint {c}: type memberOf with an expression, or distinctInstance{}.",
                    t.map(|t| format!(" (got {t})")).unwrap_or_default()
                )))
            }
        }
    }
    Ok((member_of, distinct))
}

/// placementStrategy: random, spread (by an attribute or instanceId) or binpack (cpu or memory).
/// Gantry's single node makes every strategy place the same way; invalid ones are refused.
pub(crate) fn validate_strategy(s: Option<&[Value]>) -> Result<(), EcsError> {
    let s = s.unwrap_or_default();
    if s.len() > 5 {
        return Err(EcsError::invalid("A placement strategy can have at most 5 rules."));
    }
    for r in s {
        let field = r["field"].as_str();
        let ok = match r["type"].as_str() {
            Some("random") => field.is_none(),
            Some("spread") => field.is_some_and(|f| f == "instanceId" || f == "host" || f.starts_with("attribute:")),
            Some("binpack") => field.is_some_and(|f| f == "cpu" || f == "memory"),
            _ => false,
        };
        if !ok {
            return Err(EcsError::invalid(format!(
                "Invalid placement strategy {r}: random (no field), spread (instanceId or attribute:NAME) or binpack (cpu or memory)."
            )));
        }
    }
    Ok(())
}

/// The definition's compatibilities (records from before they were computed ran anywhere).
pub(crate) fn compatibilities(def: &Value) -> Vec<String> {
    match def["compatibilities"].as_array() {
        Some(a) => a.iter().filter_map(|c| c.as_str().map(str::to_string)).collect(),
        None => vec!["EC2".into(), "FARGATE".into()],
    }
}

/// networkConfiguration is required for awsvpc and refused otherwise, as ECS does. Returns
/// the subnet the task's ENI is in (awsvpc only).
pub(crate) fn network_for(mode: NetworkMode, cfg: Option<&Value>) -> Result<Option<String>, EcsError> {
    let awsvpc = cfg.and_then(|n| n.get("awsvpcConfiguration"));
    if mode != NetworkMode::Awsvpc {
        if awsvpc.is_some() {
            return Err(EcsError::invalid(
                "Network Configuration is not valid for the given networkMode of this task definition.",
            ));
        }
        return Ok(None);
    }
    let Some(awsvpc) = awsvpc else {
        return Err(EcsError::invalid(
            "Network Configuration must be provided when networkMode 'awsvpc' is specified.",
        ));
    };
    let subnets = awsvpc["subnets"].as_array().cloned().unwrap_or_default();
    if subnets.is_empty() || subnets.len() > 16 {
        return Err(EcsError::invalid(
            "subnets can not be empty and can have at most 16 items.",
        ));
    }
    Ok(Some(subnets[0].as_str().unwrap_or("subnet-gantry").to_string()))
}

/// Override members Gantry cannot apply: refused, never echoed while ignored.
const UNSUPPORTED_OVERRIDES: &[(&str, &str)] = &[
    ("taskRoleArn", "task roles arrive with IAM"),
    ("executionRoleArn", "execution roles arrive with IAM"),
    (
        "inferenceAcceleratorOverrides",
        "inference accelerators are not supported",
    ),
];
const UNSUPPORTED_CONTAINER_OVERRIDES: &[(&str, &str)] = &[
    ("environmentFiles", "environment files from S3 are not supported"),
    (
        "resourceRequirements",
        "GPU and accelerator resource requirements are not supported",
    ),
];

fn parse_overrides(raw: Option<&Value>) -> Result<TaskOverride, EcsError> {
    let Some(raw) = raw else {
        return Ok(TaskOverride::default());
    };
    let set = |v: &Value| !(v.is_null() || v.as_array().is_some_and(|a| a.is_empty()) || v.as_str() == Some(""));
    for (k, why) in UNSUPPORTED_OVERRIDES {
        if raw.get(*k).is_some_and(set) {
            return Err(EcsError::invalid(format!("overrides.{k} is not supported yet: {why}.")));
        }
    }
    for c in raw["containerOverrides"].as_array().into_iter().flatten() {
        for (k, why) in UNSUPPORTED_CONTAINER_OVERRIDES {
            if c.get(*k).is_some_and(set) {
                return Err(EcsError::invalid(format!(
                    "containerOverrides.{k} is not supported: {why}."
                )));
            }
        }
    }
    serde_json::from_value(raw.clone()).map_err(|e| EcsError::invalid(format!("Invalid overrides: {e}")))
}

fn apply_container_overrides(
    mut containers: Vec<ContainerDefinition>,
    overrides: &TaskOverride,
) -> Result<Vec<ContainerDefinition>, EcsError> {
    for o in overrides.container_overrides.iter().flatten() {
        let name = o.name.as_deref().unwrap_or("");
        let c = containers.iter_mut().find(|c| c.name() == name).ok_or_else(|| {
            EcsError::invalid(format!(
                "Override for container named {name} is not a container in the TaskDefinition."
            ))
        })?;
        if let Some(cmd) = &o.command {
            c.command = Some(cmd.clone());
        }
        if let Some(env) = &o.environment {
            let mut merged = c.environment.clone().unwrap_or_default();
            for kv in env {
                merged.retain(|e| e.name != kv.name);
                merged.push(kv.clone());
            }
            c.environment = Some(merged);
        }
        if o.cpu.is_some() {
            c.cpu = o.cpu;
        }
        if o.memory.is_some() {
            c.memory = o.memory;
        }
        if o.memory_reservation.is_some() {
            c.memory_reservation = o.memory_reservation;
        }
    }
    Ok(containers)
}

/// The task's CPU units and MiB: the definition's or the overrides'; on Fargate one of its
/// sizes, on EC2 the containers' sums when the task sets none. The flag says whether the
/// memory is the task's own limit.
fn task_size(
    def: &Value,
    overrides: &TaskOverride,
    containers: &[ContainerDefinition],
    launch: &Launch,
) -> Result<(i64, i64, bool), EcsError> {
    let mut cpu = def["cpu"].as_str().and_then(fargate::parse_cpu);
    let mut memory = def["memory"].as_str().and_then(fargate::parse_memory);
    if let Some(c) = &overrides.cpu {
        cpu = Some(fargate::parse_cpu(c).ok_or_else(|| EcsError::invalid(format!("Invalid cpu override {c:?}.")))?);
    }
    if let Some(m) = &overrides.memory {
        memory =
            Some(fargate::parse_memory(m).ok_or_else(|| EcsError::invalid(format!("Invalid memory override {m:?}.")))?);
    }
    if launch.launch_type == "FARGATE" {
        let (c, m) = (cpu.unwrap_or(0), memory.unwrap_or(0));
        if !fargate::is_valid_size(c, m) {
            return Err(EcsError::client(format!(
                "No Fargate configuration exists for given values: {c} CPU, {m} memory. See the Amazon ECS documentation for the valid values."
            )));
        }
        return Ok((c, m, true));
    }
    let limited = memory.is_some();
    let cpu = cpu.unwrap_or_else(|| containers.iter().map(|c| c.cpu.unwrap_or(0)).sum());
    let memory = memory.unwrap_or_else(|| {
        containers
            .iter()
            .map(|c| c.memory.or(c.memory_reservation).unwrap_or(0))
            .sum()
    });
    Ok((cpu, memory, limited))
}
