//! RunTask: from a request to task records, as ECS decides them: the launch type (launchType,
//! strategy, the cluster's default, EC2), the network (awsvpc needs a configuration, the other
//! modes refuse one), overrides applied or refused, the task's size, its tags, and placement
//! on a container instance for EC2 and EXTERNAL tasks (failures reported, not thrown).

use crate::capacity_providers::launch_for_strategy;
use crate::placement::{Demand, Placement};
use crate::tasks::{TaskRecord, TaskRoles};
use crate::{prefix, random_hex, store_err, Control};
use gantry_types::arn::Scope;
use gantry_types::fargate;
use gantry_types::model::{Attachment, Cluster, Container, Failure, Tag, Task};
use gantry_types::taskdef::{ContainerDefinition, KeyValuePair, NetworkMode};
use gantry_types::EcsError;
use serde::Deserialize;
use serde_json::Value;

/// Where and how a task runs: the launch type, and the capacity provider it came through.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub launch_type: String,
    pub capacity_provider: Option<String>,
}

/// The launch type and capacity provider of a RunTask or CreateService request, as ECS
/// resolves them: launchType, else the strategy, else the cluster's default strategy, else
/// EC2. The task definition must be compatible with the result.
/// The platform version a task runs on: Fargate's (LATEST is 1.4.0), none for other launch
/// types.
pub fn platform_version(fargate: bool, requested: Option<&str>) -> String {
    match (fargate, requested) {
        (false, _) => String::new(),
        (true, Some(p)) if p != "LATEST" => p.to_string(),
        (true, _) => "1.4.0".into(),
    }
}

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
    pub task_role_arn: Option<String>,
    pub execution_role_arn: Option<String>,
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
    /// StartTask: one task on each of these container instances (EC2 only).
    #[serde(skip)]
    pub on_instances: Option<Vec<String>>,
}

const MAX_STARTED_BY: usize = 128;

impl Control {
    pub async fn run_task(&self, scope: &Scope, req: RunTaskRequest) -> Result<(Vec<Task>, Vec<Failure>), EcsError> {
        // What every RunTask reads, read at once (on etcd each read is a round trip); ECS
        // still answers for the cluster before anything else.
        let token_key = |t: &str| format!("{}client-tokens/{t}", prefix(scope));
        let (cluster, td, nodes, long_arns, earlier_run, groups) = tokio::join!(
            self.active_cluster(scope, req.cluster.as_deref()),
            async {
                match req.task_definition.as_deref() {
                    Some(r) => Some(self.task_definition(scope, r).await),
                    None => None,
                }
            },
            self.nodes(),
            self.long_arns(scope, "taskLongArnFormat"),
            // The tasks a retry with this clientToken started (a token of a valid length only).
            async {
                match req.client_token.as_deref().filter(|t| (1..=64).contains(&t.len())) {
                    Some(t) => self.get_json::<Vec<String>>(&token_key(t)).await,
                    None => Ok(None),
                }
            },
            // An awsvpc configuration's security groups (the definition's mode is checked
            // once known): a valid request with one has an awsvpc definition.
            async {
                match req.network_configuration.as_ref() {
                    Some(c) if c.get("awsvpcConfiguration").is_some() => {
                        Some(self.security_groups_for(scope, NetworkMode::Awsvpc, Some(c)).await)
                    }
                    _ => None,
                }
            },
        );
        let cluster = cluster?;
        let count = match &req.on_instances {
            Some(on) if on.is_empty() || on.len() > 10 => {
                return Err(EcsError::invalid(
                    "containerInstances must list 1 to 10 container instances.",
                ))
            }
            Some(on) => on.len() as i64,
            None => req.count.unwrap_or(1),
        };
        if !(1..=10).contains(&count) {
            return Err(EcsError::invalid("count must be between 1 and 10."));
        }
        if let Some(s) = &req.started_by {
            if s.len() > MAX_STARTED_BY {
                return Err(EcsError::invalid("startedBy can be up to 128 characters."));
            }
        }
        let (td, _, _) = td.ok_or_else(|| EcsError::invalid("taskDefinition can not be blank."))??;
        if td.status() != "ACTIVE" && !(req.allow_inactive && td.status() == "INACTIVE") {
            return Err(EcsError::client("TaskDefinition is inactive"));
        }
        if let Some(token) = &req.client_token {
            if token.is_empty() || token.len() > 64 {
                return Err(EcsError::invalid("clientToken must be 1 to 64 characters."));
            }
            if let Some((arns, _)) = earlier_run? {
                let (tasks, _) = self
                    .describe_tasks(scope, Some(&cluster.cluster_name), &arns, &[])
                    .await?;
                return Ok((tasks, vec![]));
            }
        }
        // The account's task launch rate, spent once the request is known to launch.
        if !self.quotas.launches.admit(&scope.account, count as f64, self.now()) {
            return Err(EcsError::Throttling("Rate exceeded".into()));
        }
        let launch = resolve_launch(
            req.launch_type.as_deref(),
            req.capacity_provider_strategy.as_deref(),
            &cluster,
            &compatibilities(&td.definition),
        )?;
        let network_mode = NetworkMode::parse(td.definition["networkMode"].as_str())?;
        // One read of the nodes for the subnets' check, placement and the tasks' zones.
        let nodes = nodes?;
        let subnets = network_for(network_mode, req.network_configuration.as_ref())?;
        if let Some(s) = &subnets {
            validate_subnets(scope, s, &nodes)?;
        }
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
        let demand = Demand {
            member_of: member_of
                .into_iter()
                .chain(subnets.as_deref().map(in_subnets))
                .collect(),
            distinct_instance,
            ..crate::instances::demand_for(cpu, memory, &containers, network_mode, &group)
        };
        // The reads that need the definition, at once.
        let (security_groups, roles, placements) = tokio::join!(
            async {
                match groups {
                    Some(read) if network_mode == NetworkMode::Awsvpc => read,
                    _ => {
                        self.security_groups_for(scope, network_mode, req.network_configuration.as_ref())
                            .await
                    }
                }
            },
            self.task_roles(scope, &cluster, &td.definition, &overrides),
            self.placements(
                scope,
                &req,
                (&launch, &cluster.cluster_name),
                (&demand, count as usize),
                (subnets.as_deref(), &nodes),
            ),
        );
        let (security_groups, roles, placements) = (security_groups?, roles?, placements?);
        let template = TaskTemplate {
            scope,
            cluster: &cluster,
            td_arn: &td_arn,
            containers: &containers,
            cpu,
            memory,
            task_memory_limit,
            network_mode,
            launch: &launch,
            req: &req,
            group: &group,
            tags: &tags,
            subnets: subnets.as_deref(),
            // The override's size, else the task definition's, else (instantiate) ECS's 20 GiB.
            ephemeral_storage: overrides
                .ephemeral_storage
                .clone()
                .or_else(|| serde_json::from_value(td.definition["ephemeralStorage"].clone()).ok()),
            long_arns: long_arns?,
            roles,
            security_groups,
        };
        let zones: std::collections::HashMap<String, String> = nodes
            .iter()
            .map(|n| (n.spec.name.clone(), n.zone(&scope.region)))
            .collect();
        let now = self.now();
        let mut records = Vec::new();
        let mut failures = Vec::new();
        for (placed, node) in placements {
            let instance = match placed {
                Placement::On(_) if launch.launch_type == "FARGATE" => None,
                Placement::On(arn) => Some(arn),
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
            let zone = zones
                .get(&node)
                .cloned()
                .unwrap_or_else(|| format!("{}a", scope.region));
            let rec = template.instantiate(&id, instance, (&node, &zone), now);
            records.push((Self::task_key(scope, &cluster.cluster_name, &id), rec));
        }
        // All at once, the clientToken's record too: etcd commits concurrent writes together
        // (one fsync for the lot where one after the other costs one each, about 13 ms per
        // task here).
        let bodies: Vec<Vec<u8>> = records
            .iter()
            .map(|(_, rec)| serde_json::to_vec(rec).expect("serialises"))
            .collect();
        let creates = records
            .iter()
            .zip(&bodies)
            .map(|((key, _), body)| self.store.create(key, body));
        let arns: Vec<&str> = records.iter().map(|(_, r)| r.task.task_arn.as_str()).collect();
        let (created, token_saved) = tokio::join!(futures_util::future::join_all(creates), async {
            match &req.client_token {
                Some(token) => self.save_client_token(&token_key(token), &arns).await,
                None => Ok(()),
            }
        });
        created.into_iter().try_for_each(|r| r.map(drop)).map_err(store_err)?;
        token_saved?;
        let mut tasks: Vec<Task> = records.into_iter().map(|(_, rec)| rec.task).collect();
        for t in &mut tasks {
            t.tags = None;
        }
        Ok((tasks, failures))
    }
}

impl Control {
    /// Where each of RunTask's tasks goes: Fargate provisions capacity per task (spread over
    /// the nodes of its pool); EC2 and EXTERNAL tasks need room on an instance.
    async fn placements(
        &self,
        scope: &Scope,
        req: &RunTaskRequest,
        (launch, cluster): (&Launch, &str),
        (demand, count): (&Demand, usize),
        (subnets, nodes): (Option<&[String]>, &[crate::nodes::NodeRecord]),
    ) -> Result<Vec<(Placement, String)>, EcsError> {
        if launch.launch_type == "FARGATE" {
            let pool = (launch.capacity_provider.as_deref(), subnets);
            return self
                .place_fargate(scope, cluster, &demand.group, count, pool, nodes)
                .await;
        }
        let strategy = crate::placement::parse_strategy(req.placement_strategy.as_deref().unwrap_or_default());
        self.place_tasks(
            scope,
            cluster,
            (demand, count),
            req.on_instances.as_deref(),
            &strategy,
            launch.capacity_provider.as_deref(),
        )
        .await
    }

    /// The task's roles, RunTask's overrides over its definition's: each must be a role ECS
    /// tasks may assume (its trust policy allows ecs-tasks.amazonaws.com), as ECS checks
    /// before it starts anything.
    async fn task_roles(
        &self,
        scope: &Scope,
        cluster: &Cluster,
        definition: &Value,
        overrides: &TaskOverride,
    ) -> Result<TaskRoles, EcsError> {
        let pick = |over: &Option<String>, key: &str| {
            over.clone()
                .or_else(|| definition[key].as_str().map(String::from))
                .filter(|r| !r.is_empty())
        };
        let roles = TaskRoles {
            task: pick(&overrides.task_role_arn, "taskRoleArn"),
            execution: pick(&overrides.execution_role_arn, "executionRoleArn"),
        };
        for role in roles.task.iter().chain(&roles.execution) {
            self.iam()
                .task_role(&scope.account, role, &cluster.cluster_arn)
                .await
                .map_err(EcsError::invalid)?;
        }
        Ok(roles)
    }

    /// `validate_subnets` over the nodes as they are now.
    pub(crate) async fn check_subnets(&self, scope: &Scope, subnets: &[String]) -> Result<(), EcsError> {
        validate_subnets(scope, subnets, &self.nodes().await?)
    }

    /// An awsvpc task's security groups: its configuration's (at most 5, each existing), else
    /// the VPC's default group. Other network modes have none of their own.
    pub(crate) async fn security_groups_for(
        &self,
        scope: &Scope,
        mode: NetworkMode,
        cfg: Option<&Value>,
    ) -> Result<Vec<String>, EcsError> {
        if mode != NetworkMode::Awsvpc {
            return Ok(vec![]);
        }
        let asked: Vec<String> = cfg
            .and_then(|c| c["awsvpcConfiguration"]["securityGroups"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str().map(String::from))
            .collect();
        if asked.len() > crate::ec2::MAX_GROUPS_PER_TASK {
            return Err(EcsError::invalid(format!(
                "securityGroups can have at most {} items.",
                crate::ec2::MAX_GROUPS_PER_TASK
            )));
        }
        let ec2 = self.ec2();
        if asked.is_empty() {
            // Made on first use, so nodes enforce it from the first such task on.
            let default = ec2.group(scope, &crate::ec2::default_group_id(scope)).await;
            return Ok(vec![default.map_err(|e| EcsError::Server(e.message))?.id]);
        }
        let found = futures_util::future::join_all(asked.iter().map(|g| ec2.group(scope, g))).await;
        if let Some((g, Err(e))) = asked.iter().zip(found).find(|(_, f)| f.is_err()) {
            return Err(EcsError::invalid(format!(
                "Error retrieving security group information for [{g}]: {} (ErrorCode: {})",
                e.message, e.code
            )));
        }
        Ok(asked)
    }

    /// Remembers which tasks a clientToken started (written with them). A lost token would
    /// let a retry start them twice, so a failure here is reported.
    async fn save_client_token(&self, key: &str, arns: &[&str]) -> Result<(), EcsError> {
        match self
            .store
            .create(key, &serde_json::to_vec(arns).expect("serialises"))
            .await
        {
            Ok(_) => Ok(()),
            Err(gantry_store::StoreError::AlreadyExists { .. }) => Err(EcsError::invalid(
                "clientToken was used by a concurrent RunTask request with the same token.",
            )),
            Err(e) => Err(store_err(e)),
        }
    }
}

/// Everything a RunTask request decided that each of its new tasks shares.
struct TaskTemplate<'a> {
    scope: &'a Scope,
    cluster: &'a Cluster,
    td_arn: &'a str,
    containers: &'a [ContainerDefinition],
    cpu: i64,
    memory: i64,
    task_memory_limit: bool,
    network_mode: NetworkMode,
    launch: &'a Launch,
    req: &'a RunTaskRequest,
    group: &'a str,
    tags: &'a [Tag],
    /// awsvpc only: the subnets asked for (placement kept the task to their nodes).
    subnets: Option<&'a [String]>,
    ephemeral_storage: Option<gantry_types::taskdef::EphemeralStorage>,
    long_arns: bool,
    roles: TaskRoles,
    security_groups: Vec<String>,
}

impl TaskTemplate<'_> {
    /// A new PROVISIONING task record with this id, on this node (and its zone) and container
    /// instance (if any).
    fn instantiate(&self, id: &str, instance: Option<String>, (node, zone): (&str, &str), now: f64) -> TaskRecord {
        let (scope, cluster) = (self.scope, &self.cluster.cluster_name);
        let task_arn = if self.long_arns {
            scope.task_arn(cluster, id)
        } else {
            scope.short_task_arn(id)
        };
        let containers = self
            .containers
            .iter()
            .map(|c| Container {
                container_arn: if self.long_arns {
                    scope.container_arn(cluster, id, &random_hex(16))
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
            .collect();
        // An ENI only in awsvpc mode, in its node's subnet.
        let attachments = self
            .subnets
            .map(|asked| {
                let own = crate::ec2::subnet_id(scope, node);
                if asked.contains(&own) {
                    own
                } else {
                    asked[0].clone()
                }
            })
            .iter()
            .map(|subnet| Attachment {
                id: crate::random_uuid(),
                kind: "ElasticNetworkInterface".into(),
                status: "PRECREATED".into(),
                details: vec![KeyValuePair {
                    name: Some("subnetId".into()),
                    value: Some(subnet.to_string()),
                }],
            })
            .collect();
        let fargate = self.launch.launch_type == "FARGATE";
        let task =
            Task {
                task_arn,
                cluster_arn: self.cluster.cluster_arn.clone(),
                task_definition_arn: self.td_arn.to_string(),
                container_instance_arn: instance,
                containers,
                cpu: self.cpu.to_string(),
                memory: self.memory.to_string(),
                desired_status: "RUNNING".into(),
                last_status: "PROVISIONING".into(),
                // ECS fills the launch type even when a capacity provider chose it.
                launch_type: self.launch.launch_type.clone(),
                capacity_provider_name: self.launch.capacity_provider.clone(),
                platform_version: platform_version(fargate, self.req.platform_version.as_deref()),
                platform_family: "Linux".into(),
                availability_zone: zone.to_string(),
                created_at: now,
                started_by: self.req.started_by.clone(),
                group: Some(self.group.to_string()),
                version: 1,
                tags: Some(self.tags.to_vec()),
                attachments,
                overrides: self.req.overrides.clone().unwrap_or_else(
                    || serde_json::json!({"containerOverrides": [], "inferenceAcceleratorOverrides": []}),
                ),
                health_status: "UNKNOWN".into(),
                enable_execute_command: self.req.enable_execute_command.unwrap_or(false),
                ephemeral_storage: Some(
                    self.ephemeral_storage
                        .clone()
                        .unwrap_or(gantry_types::taskdef::EphemeralStorage { size_in_gi_b: 20 }),
                ),
                ..Default::default()
            };
        TaskRecord {
            task,
            cluster: cluster.clone(),
            node: node.to_string(),
            containers: self.containers.to_vec(),
            cpu_units: self.cpu,
            memory_mib: self.memory,
            account: scope.account.clone(),
            region: scope.region.clone(),
            protected_until: None,
            network_mode: self.network_mode,
            task_memory_limit: self.task_memory_limit,
            roles: self.roles.clone(),
            security_groups: self.security_groups.clone(),
        }
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
/// the subnets a task's ENI may be in (awsvpc only).
pub(crate) fn network_for(mode: NetworkMode, cfg: Option<&Value>) -> Result<Option<Vec<String>>, EcsError> {
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
    subnets
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| EcsError::invalid("subnets must be strings."))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// An awsvpc task's subnets must be the default VPC's (one per node network), as ECS asks
/// EC2 about them.
fn validate_subnets(scope: &Scope, subnets: &[String], nodes: &[crate::nodes::NodeRecord]) -> Result<(), EcsError> {
    let known: Vec<String> = nodes
        .iter()
        .filter(|n| n.spec.subnet.is_some())
        .map(|n| crate::ec2::subnet_id(scope, &n.spec.name))
        .collect();
    match subnets.iter().find(|s| !known.contains(s)) {
        Some(s) => Err(EcsError::invalid(format!(
            "Error retrieving subnet information for [{s}]: The subnet ID '{s}' does not exist (ErrorCode: InvalidSubnetID.NotFound)"
        ))),
        None => Ok(()),
    }
}

/// The placement condition that keeps an awsvpc task to nodes in its subnets.
pub(crate) fn in_subnets(subnets: &[String]) -> String {
    format!("attribute:ecs.subnet-id in [{}]", subnets.join(", "))
}

/// Override members Gantry cannot apply: refused, never echoed while ignored.
const UNSUPPORTED_OVERRIDES: &[(&str, &str)] = &[(
    "inferenceAcceleratorOverrides",
    "inference accelerators are not supported",
)];
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster(providers: &[&str], default: Value) -> Cluster {
        Cluster {
            capacity_providers: providers.iter().map(|p| p.to_string()).collect(),
            default_capacity_provider_strategy: default.as_array().cloned().unwrap_or_default(),
            ..Default::default()
        }
    }

    fn both() -> Vec<String> {
        vec!["EC2".into(), "FARGATE".into()]
    }

    #[test]
    fn launch_type_is_resolved_as_ecs_does() {
        let c = cluster(&["FARGATE", "FARGATE_SPOT", "pool"], json!([]));
        assert_eq!(resolve_launch(None, None, &c, &both()).unwrap().launch_type, "EC2");
        let l = resolve_launch(
            None,
            Some(&[json!({"capacityProvider": "FARGATE_SPOT", "weight": 1})]),
            &c,
            &both(),
        )
        .unwrap();
        assert_eq!(
            (l.launch_type.as_str(), l.capacity_provider.as_deref()),
            ("FARGATE", Some("FARGATE_SPOT"))
        );
        let l = resolve_launch(
            None,
            Some(&[json!({"capacityProvider": "pool", "base": 1})]),
            &c,
            &both(),
        )
        .unwrap();
        assert_eq!(
            (l.launch_type.as_str(), l.capacity_provider.as_deref()),
            ("EC2", Some("pool"))
        );
        let d = cluster(&["FARGATE"], json!([{"capacityProvider": "FARGATE", "weight": 1}]));
        assert_eq!(resolve_launch(None, None, &d, &both()).unwrap().launch_type, "FARGATE");
        let err = |r: Result<Launch, EcsError>| r.unwrap_err().to_string();
        assert_eq!(
            err(resolve_launch(Some("FARGATE"), None, &c, &["EC2".into()])),
            "Task definition does not support launch_type FARGATE."
        );
        assert!(err(resolve_launch(
            Some("EC2"),
            Some(&[json!({"capacityProvider": "FARGATE"})]),
            &c,
            &both()
        ))
        .contains("both"));
        assert!(err(resolve_launch(
            None,
            Some(&[json!({"capacityProvider": "other", "weight": 1})]),
            &c,
            &both()
        ))
        .contains("not associated"));
        let mixed = [
            json!({"capacityProvider": "FARGATE", "weight": 1}),
            json!({"capacityProvider": "pool", "weight": 1}),
        ];
        assert!(err(resolve_launch(None, Some(&mixed), &c, &both())).contains("mix"));
        assert!(err(resolve_launch(
            None,
            Some(&[json!({"capacityProvider": "FARGATE"})]),
            &c,
            &both()
        ))
        .contains("weight"));
        assert!(err(resolve_launch(Some("GPU"), None, &c, &both())).contains("not valid"));
    }

    #[test]
    fn network_configuration_follows_the_mode() {
        let cfg = json!({"awsvpcConfiguration": {"subnets": ["s-1", "s-2"]}});
        assert_eq!(
            network_for(NetworkMode::Awsvpc, Some(&cfg)).unwrap(),
            Some(vec!["s-1".to_string(), "s-2".to_string()])
        );
        assert!(network_for(
            NetworkMode::Awsvpc,
            Some(&json!({"awsvpcConfiguration": {"subnets": [7]}}))
        )
        .is_err());
        assert_eq!(
            in_subnets(&["s-1".into(), "s-2".into()]),
            "attribute:ecs.subnet-id in [s-1, s-2]"
        );
        let attrs = |s: &str| [("ecs.subnet-id".to_string(), Some(s.to_string()))].into();
        let cond = in_subnets(&["subnet-0a1".into(), "subnet-0b2".into()]);
        assert_eq!(crate::placement::matches(&cond, &attrs("subnet-0b2")), Ok(true));
        assert_eq!(crate::placement::matches(&cond, &attrs("subnet-0c3")), Ok(false));
        assert!(network_for(NetworkMode::Awsvpc, None).is_err());
        assert!(network_for(
            NetworkMode::Awsvpc,
            Some(&json!({"awsvpcConfiguration": {"subnets": []}}))
        )
        .is_err());
        assert_eq!(network_for(NetworkMode::Bridge, None).unwrap(), None);
        assert!(network_for(NetworkMode::Host, Some(&cfg)).is_err());
    }

    #[test]
    fn tags_propagate_and_managed_tags_are_added() {
        let td = vec![Tag {
            key: Some("td".into()),
            value: Some("1".into()),
        }];
        let req = |p: Option<&str>, managed: bool| RunTaskRequest {
            tags: Some(vec![Tag {
                key: Some("mine".into()),
                value: Some("x".into()),
            }]),
            propagate_tags: p.map(str::to_string),
            enable_ecs_managed_tags: Some(managed),
            ..Default::default()
        };
        let keys = |t: Vec<Tag>| t.into_iter().map(|t| t.key.unwrap()).collect::<Vec<_>>();
        assert_eq!(
            keys(task_tags(&req(None, false), &td, "c", "family:f").unwrap()),
            ["mine"]
        );
        assert_eq!(
            keys(task_tags(&req(Some("TASK_DEFINITION"), false), &td, "c", "family:f").unwrap()),
            ["mine", "td"]
        );
        assert_eq!(
            keys(task_tags(&req(None, true), &td, "c", "service:web").unwrap()),
            ["mine", "aws:ecs:clusterName", "aws:ecs:serviceName"]
        );
        assert!(task_tags(&req(Some("SERVICE"), false), &td, "c", "family:f").is_err());
    }

    #[test]
    fn placement_constraints_and_strategies_are_checked() {
        let def = json!({"placementConstraints": [{"type": "memberOf", "expression": "attribute:a == b"}]});
        let (m, d) = placement_constraints(&def, Some(&[json!({"type": "distinctInstance"})])).unwrap();
        assert_eq!((m, d), (vec!["attribute:a == b".to_string()], true));
        assert!(placement_constraints(&Value::Null, Some(&[json!({"type": "memberOf"})])).is_err());
        assert!(placement_constraints(
            &Value::Null,
            Some(&[json!({"type": "distinctInstance", "expression": "x"})])
        )
        .is_err());
        assert!(validate_strategy(Some(&[
            json!({"type": "spread", "field": "attribute:ecs.availability-zone"}),
            json!({"type": "binpack", "field": "memory"})
        ]))
        .is_ok());
        assert!(validate_strategy(Some(&[json!({"type": "binpack", "field": "disk"})])).is_err());
        assert!(validate_strategy(Some(&[json!({"type": "random", "field": "cpu"})])).is_err());
    }

    #[test]
    fn ec2_tasks_are_sized_from_their_containers_when_the_task_sets_no_size() {
        let c: Vec<ContainerDefinition> = serde_json::from_value(json!([
            {"name": "a", "image": "x", "cpu": 128, "memory": 64},
            {"name": "b", "image": "x", "memoryReservation": 32}
        ]))
        .unwrap();
        let ec2 = Launch {
            launch_type: "EC2".into(),
            capacity_provider: None,
        };
        let fargate = Launch {
            launch_type: "FARGATE".into(),
            capacity_provider: None,
        };
        assert_eq!(
            task_size(&json!({}), &TaskOverride::default(), &c, &ec2).unwrap(),
            (128, 96, false)
        );
        assert_eq!(
            task_size(
                &json!({"cpu": "256", "memory": "512"}),
                &TaskOverride::default(),
                &c,
                &ec2
            )
            .unwrap(),
            (256, 512, true)
        );
        assert!(task_size(&json!({}), &TaskOverride::default(), &c, &fargate).is_err());
        let o = TaskOverride {
            cpu: Some("1024".into()),
            memory: Some("2048".into()),
            ..Default::default()
        };
        assert_eq!(
            task_size(&json!({"cpu": "256", "memory": "512"}), &o, &c, &fargate).unwrap(),
            (1024, 2048, true)
        );
    }
}
