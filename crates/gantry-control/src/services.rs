//! Services: the API side (create, update, delete, describe, list). The controller that keeps
//! them at their desired count lives in `service_controller`.

use crate::run_task::{compatibilities, resolve_launch};
use crate::{random_hex, store_err, Control};
use gantry_store::StoreError;
use gantry_types::arn::Scope;
use gantry_types::model::{Deployment, DeploymentConfiguration, Failure, Service, ServiceEvent, Tag};
use gantry_types::taskdef::NetworkMode;
use gantry_types::EcsError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A service as stored: its ECS shape plus the controller's bookkeeping.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceRecord {
    pub service: Service,
    pub cluster: String,
    pub account: String,
    pub region: String,
    /// Last deployment that completed: the rollback target.
    #[serde(default)]
    pub last_completed: Option<Deployment>,
    /// A steady-state event was emitted and nothing changed since.
    #[serde(default)]
    pub steady: bool,
    /// When a task of each deployment was last seen healthy (circuit breaker reset).
    #[serde(default)]
    pub last_healthy_at: std::collections::BTreeMap<String, f64>,
    /// The failure streak the backoff event was emitted for.
    #[serde(default)]
    pub backoff_announced: i64,
    /// CreateService's clientToken: a retry with it returns this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
    /// Tasks deregistered from their target groups, to be stopped once their connections
    /// have drained: task ARN -> (when, the stop reason).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub deregistering: std::collections::BTreeMap<String, (f64, String)>,
    /// Targets the service registered, as "group ARN|ip:port".
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub lb_registered: std::collections::BTreeSet<String>,
    /// Cloud Map instances the service registered, as "service id|task id".
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub registry_registered: std::collections::BTreeSet<String>,
    /// A blue/green, linear or canary deployment moving traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_shift: Option<crate::traffic_shift::TrafficShift>,
    /// Whether the current (blue) tasks are in the alternate target groups.
    #[serde(default)]
    pub blue_is_alternate: bool,
    /// The service's deployments as ListServiceDeployments reports them, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<crate::service_deployments::HistoryEntry>,
    /// EXTERNAL services: each task set's registered targets ("group ARN|ip:port").
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub task_set_registered: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    /// CreateTaskSet's clientTokens: a retry with one returns the task set it created.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub task_set_tokens: std::collections::BTreeMap<String, String>,
    /// A deployment StopServiceDeployment asked to roll back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_requested: Option<String>,
}

impl ServiceRecord {
    pub fn scope(&self) -> Scope {
        Scope {
            account: self.account.clone(),
            region: self.region.clone(),
        }
    }
    pub fn group(&self) -> String {
        format!("service:{}", self.service.service_name)
    }
    pub fn event(&mut self, now: f64, message: String) {
        let id = crate::random_uuid();
        self.service.events.insert(
            0,
            ServiceEvent {
                id,
                created_at: now,
                message,
            },
        );
        self.service.events.truncate(100);
    }
    pub fn primary(&self) -> Option<&Deployment> {
        self.service.deployments.iter().find(|d| d.status == "PRIMARY")
    }
}

/// Key prefix of every service record (the controller lists them all).
pub const SERVICES_PREFIX: &str = "/services/";

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CreateServiceRequest {
    pub cluster: Option<String>,
    pub service_name: Option<String>,
    pub task_definition: Option<String>,
    pub desired_count: Option<i64>,
    pub launch_type: Option<String>,
    pub capacity_provider_strategy: Option<Vec<Value>>,
    pub platform_version: Option<String>,
    pub deployment_configuration: Option<DeploymentConfiguration>,
    pub network_configuration: Option<Value>,
    pub health_check_grace_period_seconds: Option<i64>,
    pub scheduling_strategy: Option<String>,
    pub deployment_controller: Option<Value>,
    pub tags: Option<Vec<Tag>>,
    pub enable_execute_command: Option<bool>,
    pub propagate_tags: Option<String>,
    pub load_balancers: Option<Vec<Value>>,
    pub service_registries: Option<Vec<Value>>,
    pub placement_constraints: Option<Vec<Value>>,
    pub placement_strategy: Option<Vec<Value>>,
    pub role: Option<String>,
    #[serde(rename = "enableECSManagedTags")]
    pub enable_ecs_managed_tags: Option<bool>,
    pub client_token: Option<String>,
    pub availability_zone_rebalancing: Option<String>,
}

/// The launch type a (valid) capacity provider strategy means.
pub fn strategy_launch_type(s: &[Value]) -> &'static str {
    let fargate = s
        .iter()
        .any(|i| crate::capacity_providers::FARGATE_PROVIDERS.contains(&i["capacityProvider"].as_str().unwrap_or("")));
    if fargate {
        "FARGATE"
    } else {
        "EC2"
    }
}

/// ListServices' filters.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ListServices {
    pub cluster: Option<String>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
    pub launch_type: Option<String>,
    pub scheduling_strategy: Option<String>,
    pub resource_management_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpdateServiceRequest {
    pub cluster: Option<String>,
    pub service: Option<String>,
    pub desired_count: Option<i64>,
    pub task_definition: Option<String>,
    pub deployment_configuration: Option<DeploymentConfiguration>,
    pub network_configuration: Option<Value>,
    pub force_new_deployment: Option<bool>,
    pub health_check_grace_period_seconds: Option<i64>,
    pub platform_version: Option<String>,
    pub capacity_provider_strategy: Option<Vec<Value>>,
    pub placement_constraints: Option<Vec<Value>>,
    pub placement_strategy: Option<Vec<Value>>,
    pub propagate_tags: Option<String>,
    #[serde(rename = "enableECSManagedTags")]
    pub enable_ecs_managed_tags: Option<bool>,
    pub enable_execute_command: Option<bool>,
    pub deployment_controller: Option<Value>,
    pub availability_zone_rebalancing: Option<String>,
    pub load_balancers: Option<Vec<Value>>,
    pub service_registries: Option<Vec<Value>>,
}

/// A new PRIMARY deployment of the service's current launch settings.
pub fn new_deployment(svc: &Service, td: &str, desired: i64, network: &Value, now: f64) -> Deployment {
    let id = new_deployment_id();
    Deployment {
        rollout_state_reason: Some(format!("ECS deployment {id} in progress.")),
        id,
        status: "PRIMARY".into(),
        task_definition: td.to_string(),
        desired_count: desired,
        created_at: now,
        updated_at: now,
        launch_type: svc.launch_type.clone(),
        platform_version: svc.platform_version.clone(),
        platform_family: "Linux".into(),
        network_configuration: network.clone(),
        rollout_state: "IN_PROGRESS".into(),
        ..Default::default()
    }
}

pub fn new_deployment_id() -> String {
    let digits: String = random_hex(10).bytes().map(|b| char::from(b'0' + b % 10)).collect();
    let more: String = random_hex(5).bytes().map(|b| char::from(b'0' + b % 10)).collect();
    format!("ecs-svc/{}", &format!("{digits}{more}")[..19])
}

fn validate_config(c: &DeploymentConfiguration) -> Result<(), EcsError> {
    if let Some(a) = &c.alarms {
        if a.enable && a.alarm_names.is_empty() {
            return Err(EcsError::invalid(
                "deploymentConfiguration.alarms.alarmNames must name at least one alarm when enable is true.",
            ));
        }
        if a.alarm_names.len() > 10 || a.alarm_names.iter().any(|n| n.is_empty() || n.len() > 255) {
            return Err(EcsError::invalid(
                "deploymentConfiguration.alarms.alarmNames holds at most 10 alarm names of 1 to 255 characters.",
            ));
        }
    }
    if c.lifecycle_hooks
        .as_ref()
        .is_some_and(|h| h.as_array().is_none_or(|a| !a.is_empty()))
    {
        return Err(EcsError::invalid(
            "deploymentConfiguration.lifecycleHooks call AWS Lambda functions, which Gantry does not have.",
        ));
    }
    if c.early_success_criteria.as_ref().is_some_and(|e| !e.is_null()) {
        return Err(EcsError::invalid(
            "deploymentConfiguration.earlySuccessCriteria is not supported by Gantry.",
        ));
    }
    crate::traffic_shift::validate(c)?;
    if !(0..=100).contains(&c.minimum_healthy_percent) {
        return Err(EcsError::invalid("minimumHealthyPercent must be between 0 and 100."));
    }
    if !(100..=200).contains(&c.maximum_percent) {
        return Err(EcsError::invalid("maximumPercent must be between 100 and 200."));
    }
    if let Some(t) = c
        .deployment_circuit_breaker
        .as_ref()
        .and_then(|b| b.threshold_configuration.as_ref())
    {
        if !["COUNT", "BOUNDED_PERCENT", "UNBOUNDED_PERCENT"].contains(&t.kind.as_str()) || t.value < 1 {
            return Err(EcsError::invalid("thresholdConfiguration needs type COUNT, BOUNDED_PERCENT or UNBOUNDED_PERCENT and a value of at least 1."));
        }
    }
    Ok(())
}

/// A service's networkConfiguration checked against its task definition's network mode:
/// required for awsvpc, refused otherwise (Null then).
fn service_network(def: &Value, cfg: Option<&Value>) -> Result<Value, EcsError> {
    let mode = NetworkMode::parse(def["networkMode"].as_str())?;
    crate::run_task::network_for(mode, cfg)?;
    Ok(cfg.cloned().unwrap_or(Value::Null))
}

impl Control {
    /// A service's subnets and security groups must exist, as its tasks' will be checked.
    async fn check_service_groups(&self, scope: &Scope, def: &Value, network: &Value) -> Result<(), EcsError> {
        let mode = NetworkMode::parse(def["networkMode"].as_str())?;
        if let Some(subnets) = crate::run_task::network_for(mode, Some(network).filter(|n| !n.is_null()))? {
            self.check_subnets(scope, &subnets).await?;
        }
        self.security_groups_for(scope, mode, Some(network)).await.map(drop)
    }
}

/// The options CreateService and UpdateService share.
fn validate_service_options(
    propagate_tags: Option<&str>,
    az_rebalancing: Option<&str>,
    constraints: Option<&[Value]>,
    strategy: Option<&[Value]>,
) -> Result<(), EcsError> {
    if propagate_tags.is_some_and(|p| !["TASK_DEFINITION", "SERVICE", "NONE"].contains(&p)) {
        return Err(EcsError::invalid(
            "propagateTags must be TASK_DEFINITION, SERVICE or NONE.",
        ));
    }
    if az_rebalancing.is_some_and(|z| !["ENABLED", "DISABLED"].contains(&z)) {
        return Err(EcsError::invalid(
            "availabilityZoneRebalancing must be ENABLED or DISABLED.",
        ));
    }
    crate::run_task::validate_constraints(constraints)?;
    crate::run_task::validate_strategy(strategy)
}

impl Control {
    pub(crate) fn service_key(scope: &Scope, cluster: &str, name: &str) -> String {
        format!("{SERVICES_PREFIX}{}/{}/{cluster}/{name}", scope.account, scope.region)
    }

    /// A new service must fit the quota of services per cluster (INACTIVE ones not counted).
    async fn check_services_quota(&self, scope: &Scope, cluster: &str) -> Result<(), EcsError> {
        let prefix = format!("{SERVICES_PREFIX}{}/{}/{cluster}/", scope.account, scope.region);
        let all = self.list_json::<ServiceRecord>(&prefix).await?;
        let active = all.iter().filter(|(_, r, _)| r.service.status != "INACTIVE").count();
        let quota = self.quotas.services_per_cluster;
        if active >= quota {
            return Err(EcsError::client(format!(
                "The cluster {cluster} has {active} services, its quota of services per cluster ({quota})."
            )));
        }
        Ok(())
    }

    /// desiredCount within 0 and the quota of tasks per service.
    fn check_desired(&self, desired: i64) -> Result<(), EcsError> {
        let quota = self.quotas.tasks_per_service;
        if !(0..=quota).contains(&desired) {
            return Err(EcsError::invalid(format!(
                "desiredCount must be between 0 and {quota} (the quota of tasks per service)."
            )));
        }
        Ok(())
    }

    pub async fn create_service(&self, scope: &Scope, req: CreateServiceRequest) -> Result<Service, EcsError> {
        // ECS answers for the cluster before anything else.
        let cluster = self.active_cluster(scope, req.cluster.as_deref()).await?;
        let name = req
            .service_name
            .clone()
            .ok_or_else(|| EcsError::invalid("serviceName can not be blank."))?;
        if name.is_empty()
            || name.len() > 255
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(EcsError::invalid(
                "Service name must be 1-255 letters, numbers, hyphens and underscores.",
            ));
        }
        let strategy = req.scheduling_strategy.clone().unwrap_or_else(|| "REPLICA".into());
        let desired = match strategy.as_str() {
            "REPLICA" => req
                .desired_count
                .ok_or_else(|| EcsError::invalid("desiredCount must be specified for the REPLICA scheduling strategy."))?,
            "DAEMON" if req.desired_count.is_some() => {
                return Err(EcsError::invalid(
                    "desiredCount must not be specified for the DAEMON scheduling strategy: one task runs on each container instance.",
                ))
            }
            // The controller keeps it at the number of ACTIVE container instances.
            "DAEMON" => self.active_instances(scope, &cluster.cluster_name).await?,
            other => return Err(EcsError::invalid(format!("schedulingStrategy {other} is not valid: REPLICA or DAEMON."))),
        };
        self.check_desired(desired)?;
        let controller = req
            .deployment_controller
            .as_ref()
            .map(|d| d["type"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| "ECS".into());
        if !["ECS", "CODE_DEPLOY", "EXTERNAL"].contains(&controller.as_str()) {
            return Err(EcsError::invalid(format!(
                "deploymentController type {controller} is not valid: ECS, CODE_DEPLOY or EXTERNAL."
            )));
        }
        if strategy == "DAEMON" && controller != "ECS" {
            return Err(EcsError::invalid(
                "The DAEMON scheduling strategy needs the ECS deployment controller.",
            ));
        }
        validate_service_options(
            req.propagate_tags.as_deref(),
            req.availability_zone_rebalancing.as_deref(),
            req.placement_constraints.as_deref(),
            req.placement_strategy.as_deref(),
        )?;
        if let Some(r) = &req.role {
            if !r.starts_with("arn:aws:iam::") && (r.is_empty() || r.contains(':')) {
                return Err(EcsError::invalid(format!(
                    "role {r:?} is not a role name or IAM role ARN."
                )));
            }
        }
        if req
            .health_check_grace_period_seconds
            .is_some_and(|g| !(0..=2_147_483_647).contains(&g))
        {
            return Err(EcsError::invalid(
                "healthCheckGracePeriodSeconds must be between 0 and 2147483647.",
            ));
        }
        let config = req.deployment_configuration.clone().unwrap_or_default();
        validate_config(&config)?;
        // An EXTERNAL service's tasks come from its task sets, which name their own task
        // definition, network and load balancers; the service may name a definition.
        let external = controller == "EXTERNAL";
        let given = |v: &Option<Vec<Value>>| v.as_ref().is_some_and(|l| !l.is_empty());
        if external && (given(&req.load_balancers) || given(&req.service_registries)) {
            return Err(EcsError::invalid(
                "With the EXTERNAL deployment controller, loadBalancers and serviceRegistries are given on each task set (CreateTaskSet).",
            ));
        }
        let td = match (&req.task_definition, external) {
            (Some(r), _) => {
                let (td, _, _) = self.task_definition(scope, r).await?;
                if td.status() != "ACTIVE" {
                    return Err(EcsError::client("TaskDefinition is inactive"));
                }
                Some(td.definition)
            }
            (None, true) => None,
            (None, false) => return Err(EcsError::invalid("taskDefinition can not be blank.")),
        };
        let all_kinds = ["EC2", "FARGATE", "EXTERNAL"].map(String::from).to_vec();
        let launch = resolve_launch(
            req.launch_type.as_deref(),
            req.capacity_provider_strategy.as_deref(),
            &cluster,
            &td.as_ref().map(compatibilities).unwrap_or(all_kinds),
        )?;
        if strategy == "DAEMON" && launch.launch_type == "FARGATE" {
            return Err(EcsError::invalid(
                "The DAEMON scheduling strategy is not supported with the FARGATE launch type.",
            ));
        }
        let (network, load_balancers, service_registries, td_arn) = match &td {
            None => (
                req.network_configuration.clone().unwrap_or(Value::Null),
                vec![],
                vec![],
                String::new(),
            ),
            Some(td) => {
                let network = service_network(td, req.network_configuration.as_ref())?;
                self.check_service_groups(scope, td, &network).await?;
                let load_balancers = match req.load_balancers.as_deref() {
                    Some(l) if !l.is_empty() => {
                        self.validate_load_balancers(scope, l, td, crate::traffic_shift::strategy(&config))
                            .await?
                    }
                    _ => vec![],
                };
                let registries = self
                    .validate_registries(scope, req.service_registries.as_deref().unwrap_or_default(), td)
                    .await?;
                let arn = td["taskDefinitionArn"].as_str().unwrap_or_default().to_string();
                (network, load_balancers, registries, arn)
            }
        };
        let key = Self::service_key(scope, &cluster.cluster_name, &name);
        if let Some((existing, rev)) = self.get_json::<ServiceRecord>(&key).await? {
            // A retry with the same clientToken gets the service it created.
            if existing.service.status != "INACTIVE"
                && req.client_token.is_some()
                && existing.client_token == req.client_token
            {
                let mut s = existing.service;
                s.tags = None;
                return Ok(s);
            }
            if existing.service.status != "INACTIVE" {
                return Err(EcsError::invalid("Creation of service was not idempotent."));
            }
            self.store.delete(&key, Some(rev)).await.map_err(store_err)?;
        }
        self.check_services_quota(scope, &cluster.cluster_name).await?;
        let platform =
            crate::run_task::platform_version(launch.launch_type == "FARGATE", req.platform_version.as_deref());
        let mut service = Service {
            service_arn: scope.service_arn(
                self.long_arns(scope, "serviceLongArnFormat")
                    .await?
                    .then_some(cluster.cluster_name.as_str()),
                &name,
            ),
            service_name: name.clone(),
            cluster_arn: cluster.cluster_arn.clone(),
            status: "ACTIVE".into(),
            desired_count: desired,
            launch_type: if launch.capacity_provider.is_some() {
                String::new()
            } else {
                launch.launch_type.clone()
            },
            capacity_provider_strategy: req.capacity_provider_strategy.clone().unwrap_or_default(),
            platform_version: platform,
            platform_family: "Linux".into(),
            task_definition: td_arn,
            deployment_configuration: config,
            deployments: vec![],
            events: vec![],
            created_at: self.now(),
            network_configuration: network,
            health_check_grace_period_seconds: req.health_check_grace_period_seconds,
            scheduling_strategy: strategy,
            deployment_controller: json!({"type": controller}),
            tags: Some(req.tags.clone().unwrap_or_default()),
            created_by: format!("arn:aws:iam::{}:root", scope.account),
            propagate_tags: req.propagate_tags.clone().unwrap_or_else(|| "NONE".into()),
            enable_ecs_managed_tags: req.enable_ecs_managed_tags.unwrap_or(false),
            enable_execute_command: req.enable_execute_command.unwrap_or(false),
            placement_constraints: req.placement_constraints.clone().unwrap_or_default(),
            placement_strategy: req.placement_strategy.clone().unwrap_or_default(),
            role_arn: req.role.as_ref().map(|r| {
                if r.starts_with("arn:") {
                    r.clone()
                } else {
                    format!("arn:aws:iam::{}:role/{r}", scope.account)
                }
            }),
            availability_zone_rebalancing: req.availability_zone_rebalancing.clone(),
            load_balancers,
            service_registries,
            ..Default::default()
        };
        let dep = new_deployment(
            &service,
            &service.task_definition,
            desired,
            &service.network_configuration,
            self.now(),
        );
        // An EXTERNAL service's tasks come from task sets: it has no deployments.
        service.deployments = if external { vec![] } else { vec![dep] };
        let rec = ServiceRecord {
            service: service.clone(),
            cluster: cluster.cluster_name.clone(),
            account: scope.account.clone(),
            region: scope.region.clone(),
            last_completed: None,
            steady: false,
            last_healthy_at: Default::default(),
            backoff_announced: 0,
            client_token: req.client_token.clone(),
            deregistering: Default::default(),
            lb_registered: Default::default(),
            registry_registered: Default::default(),
            traffic_shift: None,
            blue_is_alternate: false,
            history: vec![],
            stop_requested: None,
            task_set_registered: Default::default(),
            task_set_tokens: Default::default(),
        };
        let mut rec = rec;
        crate::service_deployments::sync(&mut rec, None, self.now());
        match self
            .store
            .create(&key, &serde_json::to_vec(&rec).expect("serialises"))
            .await
        {
            Ok(_) => {}
            Err(StoreError::AlreadyExists { .. }) => {
                return Err(EcsError::invalid("Creation of service was not idempotent."))
            }
            Err(e) => return Err(store_err(e)),
        }
        let mut s = service;
        s.tags = None;
        Ok(s)
    }

    pub(crate) async fn service_record(
        &self,
        scope: &Scope,
        cluster: Option<&str>,
        name: &str,
    ) -> Result<(String, ServiceRecord, i64), EcsError> {
        let cluster = self.active_cluster(scope, cluster).await?;
        let name = name.rsplit('/').next().unwrap_or(name);
        let key = Self::service_key(scope, &cluster.cluster_name, name);
        match self.get_json::<ServiceRecord>(&key).await? {
            Some((r, rev)) => Ok((key, r, rev)),
            None => Err(EcsError::ServiceNotFound("Service not found.".into())),
        }
    }

    /// Read-modify-write of a service record.
    pub async fn update_service_record(
        &self,
        key: &str,
        f: impl FnMut(&mut ServiceRecord) -> Result<bool, EcsError>,
    ) -> Result<Option<ServiceRecord>, EcsError> {
        self.update_json(key, f).await
    }

    pub async fn update_service(&self, scope: &Scope, req: UpdateServiceRequest) -> Result<Service, EcsError> {
        let name = req
            .service
            .clone()
            .ok_or_else(|| EcsError::invalid("service can not be blank."))?;
        let (key, current, _) = self.service_record(scope, req.cluster.as_deref(), &name).await?;
        if current.service.status != "ACTIVE" {
            return Err(EcsError::ServiceNotActive("Service was not ACTIVE.".into()));
        }
        if current.service.scheduling_strategy == "DAEMON" && req.desired_count.is_some() {
            return Err(EcsError::invalid(
                "desiredCount cannot be set on a DAEMON service: one task runs on each container instance.",
            ));
        }
        let external = current.service.deployment_controller["type"].as_str() == Some("EXTERNAL");
        let launch_change = req.task_definition.is_some()
            || req.network_configuration.is_some()
            || req.load_balancers.is_some()
            || req.service_registries.is_some()
            || req.platform_version.is_some()
            || req.capacity_provider_strategy.is_some()
            || req.force_new_deployment == Some(true);
        if external && launch_change {
            return Err(EcsError::invalid(
                "With the EXTERNAL deployment controller, the task definition, network, load balancers and launch settings are given on task sets (CreateTaskSet).",
            ));
        }
        if let Some(d) = &req.deployment_controller {
            if *d != current.service.deployment_controller {
                return Err(EcsError::invalid(
                    "Changing the deployment controller of a service is not supported by Gantry.",
                ));
            }
        }
        validate_service_options(
            req.propagate_tags.as_deref(),
            req.availability_zone_rebalancing.as_deref(),
            req.placement_constraints.as_deref(),
            req.placement_strategy.as_deref(),
        )?;
        if let Some(d) = req.desired_count {
            self.check_desired(d)?;
        }
        if let Some(c) = &req.deployment_configuration {
            validate_config(c)?;
        }
        let new_td = match &req.task_definition {
            Some(r) => {
                let (td, _, _) = self.task_definition(scope, r).await?;
                if td.status() != "ACTIVE" {
                    return Err(EcsError::client("TaskDefinition is inactive"));
                }
                Some(td)
            }
            None => None,
        };
        // The definition the service will run must suit its launch type and network.
        let target = match &new_td {
            Some(td) => td.clone(),
            None => self.task_definition(scope, &current.service.task_definition).await?.0,
        };
        let launch_type = (!current.service.launch_type.is_empty()).then_some(current.service.launch_type.as_str());
        let strategy = match &req.capacity_provider_strategy {
            Some(s) if !s.is_empty() => {
                if launch_type.is_some() {
                    return Err(EcsError::invalid(
                        "A service with a launch type cannot switch to a capacity provider strategy in Gantry; recreate it.",
                    ));
                }
                Some(s.as_slice())
            }
            _ => (!current.service.capacity_provider_strategy.is_empty())
                .then_some(current.service.capacity_provider_strategy.as_slice()),
        };
        let cluster = self.active_cluster(scope, req.cluster.as_deref()).await?;
        resolve_launch(launch_type, strategy, &cluster, &compatibilities(&target.definition))?;
        let network = match &req.network_configuration {
            Some(n) => {
                let network = service_network(&target.definition, Some(n))?;
                self.check_service_groups(scope, &target.definition, &network).await?;
                Some(network)
            }
            None => {
                service_network(
                    &target.definition,
                    Some(&current.service.network_configuration).filter(|n| !n.is_null()),
                )?;
                None
            }
        };
        // New load balancers, or the current ones checked against a new definition.
        let config = req
            .deployment_configuration
            .clone()
            .unwrap_or_else(|| current.service.deployment_configuration.clone());
        let strategy = crate::traffic_shift::strategy(&config);
        let load_balancers = match (&req.load_balancers, &new_td) {
            (Some(l), _) if !l.is_empty() => Some(
                self.validate_load_balancers(scope, l, &target.definition, strategy)
                    .await?,
            ),
            (Some(_), _) => Some(vec![]),
            (None, _) if !current.service.load_balancers.is_empty() => {
                let td = new_td.as_ref().unwrap_or(&target);
                self.validate_load_balancers(scope, &current.service.load_balancers, &td.definition, strategy)
                    .await?;
                None
            }
            (None, _) => None,
        };
        // New registries, or the current ones checked against a new definition.
        let registries = match (&req.service_registries, &new_td) {
            (Some(r), _) => Some(self.validate_registries(scope, r, &target.definition).await?),
            (None, Some(td)) => {
                self.validate_registries(scope, &current.service.service_registries, &td.definition)
                    .await?;
                None
            }
            (None, None) => None,
        };
        let new_td = new_td.map(|td| {
            td.definition["taskDefinitionArn"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        });
        let platform = req
            .platform_version
            .clone()
            .filter(|_| !current.service.platform_version.is_empty())
            .map(|p| if p == "LATEST" { "1.4.0".to_string() } else { p });
        let now = self.now();
        let rec = self
            .update_service_record(&key, |r| {
                if r.service.status != "ACTIVE" {
                    return Err(EcsError::ServiceNotActive("Service was not ACTIVE.".into()));
                }
                if let Some(d) = req.desired_count {
                    if d != r.service.desired_count {
                        r.steady = false;
                    }
                    r.service.desired_count = d;
                    if let Some(p) = r.service.deployments.iter_mut().find(|d| d.status == "PRIMARY") {
                        p.desired_count = d;
                    }
                }
                if let Some(c) = &req.deployment_configuration {
                    r.service.deployment_configuration = c.clone();
                }
                if let Some(g) = req.health_check_grace_period_seconds {
                    r.service.health_check_grace_period_seconds = Some(g);
                }
                let td_changed = new_td.as_ref().is_some_and(|t| *t != r.service.task_definition);
                let net_changed = network.as_ref().is_some_and(|n| *n != r.service.network_configuration);
                let platform_changed = platform.as_ref().is_some_and(|p| *p != r.service.platform_version);
                let lbs_changed = load_balancers.as_ref().is_some_and(|l| *l != r.service.load_balancers);
                if let Some(l) = &load_balancers {
                    r.service.load_balancers = l.clone();
                }
                // Registrations follow at once (the controller registers and deregisters).
                if let Some(g) = &registries {
                    r.service.service_registries = g.clone();
                }
                let svc = &mut r.service;
                let mut placement_changed = false;
                if let Some(c) = &req.placement_constraints {
                    placement_changed |= *c != svc.placement_constraints;
                    svc.placement_constraints = c.clone();
                }
                if let Some(c) = &req.placement_strategy {
                    placement_changed |= *c != svc.placement_strategy;
                    svc.placement_strategy = c.clone();
                }
                if let Some(c) = req.capacity_provider_strategy.as_ref().filter(|c| !c.is_empty()) {
                    placement_changed |= *c != svc.capacity_provider_strategy;
                    svc.capacity_provider_strategy = c.clone();
                }
                if let Some(p) = &req.propagate_tags {
                    svc.propagate_tags = p.clone();
                }
                if let Some(m) = req.enable_ecs_managed_tags {
                    svc.enable_ecs_managed_tags = m;
                }
                if let Some(e) = req.enable_execute_command {
                    svc.enable_execute_command = e;
                }
                if let Some(z) = &req.availability_zone_rebalancing {
                    svc.availability_zone_rebalancing = Some(z.clone());
                }
                if td_changed
                    || net_changed
                    || lbs_changed
                    || platform_changed
                    || placement_changed
                    || req.force_new_deployment.unwrap_or(false)
                {
                    if let Some(p) = &platform {
                        r.service.platform_version = p.clone();
                    }
                    if let Some(t) = &new_td {
                        r.service.task_definition = t.clone();
                    }
                    if let Some(n) = &network {
                        r.service.network_configuration = n.clone();
                    }
                    for d in r.service.deployments.iter_mut().filter(|d| d.status == "PRIMARY") {
                        d.status = "ACTIVE".into();
                        d.updated_at = now;
                    }
                    let d = new_deployment(
                        &r.service,
                        &r.service.task_definition,
                        r.service.desired_count,
                        &r.service.network_configuration,
                        now,
                    );
                    r.service.deployments.insert(0, d);
                    r.steady = false;
                    r.backoff_announced = 0;
                }
                let shift = r.traffic_shift.clone();
                crate::service_deployments::sync(r, shift.as_ref(), now);
                Ok(true)
            })
            .await?
            .ok_or_else(|| EcsError::ServiceNotFound("Service not found.".into()))?;
        let mut s = rec.service;
        s.tags = None;
        Ok(s)
    }

    pub async fn delete_service(
        &self,
        scope: &Scope,
        cluster: Option<&str>,
        name: &str,
        force: bool,
    ) -> Result<Service, EcsError> {
        let (key, _, _) = self.service_record(scope, cluster, name).await?;
        let now = self.now();
        let rec = self
            .update_service_record(&key, |r| {
                match r.service.status.as_str() {
                    "ACTIVE" => {}
                    "DRAINING" => return Ok(false),
                    _ => return Err(EcsError::ServiceNotActive("Service was not ACTIVE.".into())),
                }
                if r.service.desired_count > 0 && !force {
                    return Err(EcsError::invalid(
                        "The service cannot be stopped while it is scaled above 0.",
                    ));
                }
                r.service.status = "DRAINING".into();
                r.service.desired_count = 0;
                for d in &mut r.service.deployments {
                    d.desired_count = 0;
                    d.updated_at = now;
                }
                r.steady = false;
                Ok(true)
            })
            .await?
            .ok_or_else(|| EcsError::ServiceNotFound("Service not found.".into()))?;
        let mut s = rec.service;
        s.tags = None;
        Ok(s)
    }

    pub async fn describe_services(
        &self,
        scope: &Scope,
        cluster: Option<&str>,
        names: &[String],
        include: &[String],
    ) -> Result<(Vec<Service>, Vec<Failure>), EcsError> {
        let cluster = self.active_cluster(scope, cluster).await?;
        if names.is_empty() || names.len() > 10 {
            return Err(EcsError::invalid("services must list 1 to 10 services."));
        }
        let (mut found, mut failures) = (Vec::new(), Vec::new());
        for n in names {
            let name = n.rsplit('/').next().unwrap_or(n);
            match self
                .get_json::<ServiceRecord>(&Self::service_key(scope, &cluster.cluster_name, name))
                .await?
            {
                Some((mut r, _)) => {
                    if !include.iter().any(|i| i == "TAGS") {
                        r.service.tags = None;
                    }
                    found.push(r.service)
                }
                None => failures.push(Failure {
                    arn: Some(format!(
                        "arn:aws:ecs:{}:{}:service/{}/{name}",
                        scope.region, scope.account, cluster.cluster_name
                    )),
                    reason: Some("MISSING".into()),
                    detail: None,
                }),
            }
        }
        Ok((found, failures))
    }

    pub async fn list_services(
        &self,
        scope: &Scope,
        q: ListServices,
    ) -> Result<(Vec<String>, Option<String>), EcsError> {
        let cluster = self.active_cluster(scope, q.cluster.as_deref()).await?;
        let size = crate::page_size(q.max_results, 10)?;
        if let Some(lt) = q.launch_type.as_deref() {
            if !["EC2", "FARGATE", "EXTERNAL"].contains(&lt) {
                return Err(EcsError::invalid(format!(
                    "launchType {lt} is not valid: EC2, FARGATE or EXTERNAL."
                )));
            }
        }
        if let Some(st) = q.scheduling_strategy.as_deref() {
            if !["REPLICA", "DAEMON"].contains(&st) {
                return Err(EcsError::invalid(format!(
                    "schedulingStrategy {st} is not valid: REPLICA or DAEMON."
                )));
            }
        }
        let after = q.next_token.as_deref().map(crate::decode_token).transpose()?;
        let mut all = self
            .list_json::<ServiceRecord>(&format!(
                "{SERVICES_PREFIX}{}/{}/{}/",
                scope.account, scope.region, cluster.cluster_name
            ))
            .await?;
        all.retain(|(k, r, _)| {
            let s = &r.service;
            // A service whose strategy chose the launch type runs on FARGATE (Gantry's providers).
            let launch = if s.launch_type.is_empty() {
                "FARGATE"
            } else {
                s.launch_type.as_str()
            };
            s.status != "INACTIVE"
                && q.launch_type.as_deref().is_none_or(|l| l == launch)
                && q.scheduling_strategy
                    .as_deref()
                    .is_none_or(|st| st == s.scheduling_strategy)
                && after.as_ref().is_none_or(|a| k > a)
        });
        let token = (all.len() > size).then(|| crate::encode_token(&all[size - 1].0));
        Ok((
            all.into_iter()
                .take(size)
                .map(|(_, r, _)| r.service.service_arn)
                .collect(),
            token,
        ))
    }

    /// Every service record of a cluster (any status).
    pub(crate) async fn cluster_services(&self, scope: &Scope, cluster: &str) -> Result<Vec<Service>, EcsError> {
        Ok(self
            .list_json::<ServiceRecord>(&format!(
                "{SERVICES_PREFIX}{}/{}/{cluster}/",
                scope.account, scope.region
            ))
            .await?
            .into_iter()
            .map(|(_, r, _)| r.service)
            .collect())
    }

    /// Every service record with its key and revision, in key order (records unchanged since
    /// the last call are not read or decoded again).
    pub async fn all_services(&self) -> Result<Vec<(String, ServiceRecord, i64)>, EcsError> {
        self.service_cache.all(self.store.as_ref(), None).await
    }

    pub async fn set_service_tags(
        &self,
        scope: &Scope,
        cluster: &str,
        name: &str,
        f: impl Fn(&mut Vec<Tag>),
    ) -> Result<(), EcsError> {
        let key = Self::service_key(scope, cluster, name);
        let r = self
            .update_service_record(&key, |r| {
                let mut tags = r.service.tags.take().unwrap_or_default();
                f(&mut tags);
                r.service.tags = Some(tags);
                Ok(true)
            })
            .await?;
        r.map(|_| ())
            .ok_or_else(|| EcsError::ResourceNotFound("The specified service is not found.".into()))
    }

    pub async fn service_tags(&self, scope: &Scope, cluster: &str, name: &str) -> Result<Vec<Tag>, EcsError> {
        match self
            .get_json::<ServiceRecord>(&Self::service_key(scope, cluster, name))
            .await?
        {
            Some((r, _)) => Ok(r.service.tags.unwrap_or_default()),
            None => Err(EcsError::ResourceNotFound("The specified service is not found.".into())),
        }
    }
}
