//! Amazon ECS operations (AWS JSON 1.1, target prefix AmazonEC2ContainerServiceV20141113).
//! Inputs and outputs are shaped as botocore's ECS model defines them.

use crate::api::{Api, ApiError};
use crate::protocol::Reply;
use gantry_types::arn::Scope;
use gantry_types::model::{ClusterSetting, Tag};
use gantry_types::EcsError;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

fn field<T: DeserializeOwned>(input: &Value, name: &str) -> Result<Option<T>, ApiError> {
    match input.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| ApiError::client("InvalidParameterException", format!("Invalid value for {name}: {e}"))),
    }
}

/// Members of a request Gantry cannot act on yet: refused when set, never ignored.
fn refuse_unsupported(input: &Value, members: &[(&str, &str)]) -> Result<(), ApiError> {
    for (m, why) in members {
        let set = match input.get(*m) {
            None | Some(Value::Null) => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(Value::String(s)) => !s.is_empty(),
            Some(_) => true,
        };
        if set {
            return Err(ApiError::client(
                "InvalidParameterException",
                format!("{m} is not supported by Gantry yet: {why}."),
            ));
        }
    }
    Ok(())
}

const SERVICE_UNSUPPORTED: &[(&str, &str)] = &[
    ("serviceConnectConfiguration", "Service Connect is not offered"),
    ("volumeConfigurations", "volumes are not supported yet"),
    ("vpcLatticeConfigurations", "VPC Lattice is not offered"),
    ("gatewayConnectors", "gateways are not offered"),
    ("monitoring", "service monitoring configuration is not offered"),
];

/// The whole request as a typed input.
fn parse<T: DeserializeOwned>(input: Value) -> Result<T, ApiError> {
    serde_json::from_value(input)
        .map_err(|e| ApiError::client("InvalidParameterException", format!("Invalid request: {e}")))
}

fn required<T: DeserializeOwned>(input: &Value, name: &str) -> Result<T, ApiError> {
    field(input, name)?
        .ok_or_else(|| ApiError::client("InvalidParameterException", format!("{name} can not be blank.")))
}

fn validate_tags(tags: &[Tag]) -> Result<(), EcsError> {
    if tags.len() > 50 {
        return Err(EcsError::invalid("A resource can have at most 50 tags."));
    }
    for t in tags {
        let k = t.key.as_deref().unwrap_or("");
        if k.is_empty() || k.len() > 128 {
            return Err(EcsError::invalid("Tag keys must be 1-128 characters."));
        }
        if t.value.as_deref().unwrap_or("").len() > 256 {
            return Err(EcsError::invalid("Tag values can be at most 256 characters."));
        }
        if k.to_ascii_lowercase().starts_with("aws:") {
            return Err(EcsError::invalid(
                "Tag keys may not start with the reserved prefix aws:.",
            ));
        }
    }
    Ok(())
}

/// What a resource ARN names: (kind, cluster, id).
/// A cluster's, service's, task's or task definition's tags, by ARN (none when it cannot be
/// found), for aws:ResourceTag.
pub async fn resource_tags(api: &Api, scope: &Scope, arn: &str) -> Vec<(String, String)> {
    let c = &api.control;
    let Ok((kind, mut cluster, id)) = parse_resource_arn(scope, arn) else {
        return vec![];
    };
    if cluster.is_empty() && (kind == "task" || kind == "service") {
        match c.cluster_of(scope, kind, &id).await {
            Ok(Some(found)) => cluster = found,
            _ => return vec![],
        }
    }
    let tags = match kind {
        "cluster" => c.cluster_tags(scope, &cluster).await,
        "service" => c.service_tags(scope, &cluster, &id).await,
        "task" => c.task_tags(scope, &cluster, &id).await,
        _ => c.task_definition(scope, arn).await.map(|t| t.0.tags),
    };
    tags.unwrap_or_default()
        .into_iter()
        .filter_map(|t| Some((t.key?, t.value.unwrap_or_default())))
        .collect()
}

fn parse_resource_arn(scope: &Scope, arn: &str) -> Result<(&'static str, String, String), EcsError> {
    let prefix = format!("arn:aws:ecs:{}:{}:", scope.region, scope.account);
    let rest = arn
        .strip_prefix(&prefix)
        .ok_or_else(|| EcsError::invalid(format!("Invalid resource ARN {arn:?} for this account and region.")))?;
    if let Some(name) = rest.strip_prefix("cluster/") {
        return Ok(("cluster", name.to_string(), String::new()));
    }
    if let Some(td) = rest.strip_prefix("task-definition/") {
        return Ok(("task-definition", String::new(), td.to_string()));
    }
    // The short ARN formats (no cluster) leave the cluster to be looked up.
    if let Some(t) = rest.strip_prefix("service/") {
        let (c, name) = t.split_once('/').unwrap_or(("", t));
        return Ok(("service", c.to_string(), name.to_string()));
    }
    if let Some(t) = rest.strip_prefix("task/") {
        let (c, id) = t.split_once('/').unwrap_or(("", t));
        return Ok(("task", c.to_string(), id.to_string()));
    }
    Err(EcsError::invalid(format!("Unsupported resource ARN {arn:?}.")))
}

/// The registry's entry point.
pub fn handler<'a>(api: &'a Api, scope: &'a Scope, op: &'a str, input: Value) -> Reply<'a> {
    Box::pin(dispatch(api, scope, op, input))
}

pub async fn dispatch(api: &Api, scope: &Scope, op: &str, input: Value) -> Result<Value, ApiError> {
    let c = &api.control;
    Ok(match op {
        "CreateCluster" => {
            refuse_unsupported(&input, &[("serviceConnectDefaults", "Service Connect is not offered")])?;
            let tags: Option<Vec<Tag>> = field(&input, "tags")?;
            if let Some(t) = &tags {
                validate_tags(t)?;
            }
            let name: Option<String> = field(&input, "clusterName")?;
            let settings: Option<Vec<ClusterSetting>> = field(&input, "settings")?;
            let providers: Option<Vec<String>> = field(&input, "capacityProviders")?;
            let strategy: Vec<Value> = field(&input, "defaultCapacityProviderStrategy")?.unwrap_or_default();
            let opts = gantry_control::ClusterOptions {
                providers,
                strategy,
                configuration: field(&input, "configuration")?,
            };
            let cl = c
                .create_cluster_with(scope, name.as_deref(), tags, settings, opts)
                .await?;
            json!({"cluster": cl})
        }
        "DescribeClusters" => {
            let include: Vec<String> = field(&input, "include")?.unwrap_or_default();
            let (clusters, failures) = c.describe_clusters(scope, field(&input, "clusters")?, &include).await?;
            json!({"clusters": clusters, "failures": failures})
        }
        "ListClusters" => {
            let token: Option<String> = field(&input, "nextToken")?;
            let (arns, next) = c
                .list_clusters(scope, token.as_deref(), field(&input, "maxResults")?)
                .await?;
            json!({"clusterArns": arns, "nextToken": next})
        }
        "UpdateCluster" => {
            refuse_unsupported(&input, &[("serviceConnectDefaults", "Service Connect is not offered")])?;
            let name: String = required(&input, "cluster")?;
            let settings: Vec<ClusterSetting> = field(&input, "settings")?.unwrap_or_default();
            let configuration = field(&input, "configuration")?;
            json!({"cluster": c.update_cluster(scope, &name, settings, configuration).await?})
        }
        "UpdateClusterSettings" => {
            let name: String = required(&input, "cluster")?;
            let settings: Vec<ClusterSetting> = required(&input, "settings")?;
            json!({"cluster": c.update_cluster_settings(scope, &name, settings).await?})
        }
        "DeleteCluster" => {
            let name: String = required(&input, "cluster")?;
            json!({"cluster": c.delete_cluster(scope, &name).await?})
        }
        "RegisterTaskDefinition" => {
            if let Some(t) = field::<Vec<Tag>>(&input, "tags")? {
                validate_tags(&t)?;
            }
            pass_roles(&scope.account, &input)?;
            let rec = c.register_task_definition(scope, input).await?;
            json!({"taskDefinition": rec.definition, "tags": rec.tags})
        }
        "DescribeTaskDefinition" => {
            let r: String = required(&input, "taskDefinition")?;
            let include: Vec<String> = field(&input, "include")?.unwrap_or_default();
            let (rec, _, _) = c.task_definition(scope, &r).await?;
            let mut out = json!({"taskDefinition": rec.definition});
            if include.iter().any(|i| i == "TAGS") {
                out["tags"] = json!(rec.tags);
            }
            out
        }
        "ListTaskDefinitions" => {
            let fam: Option<String> = field(&input, "familyPrefix")?;
            let status: Option<String> = field(&input, "status")?;
            let sort: Option<String> = field(&input, "sort")?;
            let token: Option<String> = field(&input, "nextToken")?;
            let (arns, next) = c
                .list_task_definitions(
                    scope,
                    fam.as_deref(),
                    status.as_deref(),
                    sort.as_deref(),
                    token.as_deref(),
                    field(&input, "maxResults")?,
                )
                .await?;
            json!({"taskDefinitionArns": arns, "nextToken": next})
        }
        "ListTaskDefinitionFamilies" => {
            let fam: Option<String> = field(&input, "familyPrefix")?;
            let status: Option<String> = field(&input, "status")?;
            let token: Option<String> = field(&input, "nextToken")?;
            let (families, next) = c
                .list_task_definition_families(
                    scope,
                    fam.as_deref(),
                    status.as_deref(),
                    token.as_deref(),
                    field(&input, "maxResults")?,
                )
                .await?;
            json!({"families": families, "nextToken": next})
        }
        "DeregisterTaskDefinition" => {
            let r: String = required(&input, "taskDefinition")?;
            json!({"taskDefinition": c.deregister_task_definition(scope, &r).await?.definition})
        }
        "DeleteTaskDefinitions" => {
            let refs: Vec<String> = required(&input, "taskDefinitions")?;
            let (ok, failures) = c.delete_task_definitions(scope, &refs).await?;
            let defs: Vec<Value> = ok.into_iter().map(|r| r.definition).collect();
            json!({"taskDefinitions": defs, "failures": failures})
        }
        "ExecuteCommand" => {
            if input.get("interactive").and_then(Value::as_bool) != Some(true) {
                return Err(ApiError::client(
                    "InvalidParameterException",
                    "Interactive is the only mode supported currently.",
                ));
            }
            if api.exec.is_none() {
                return Err(ApiError::client(
                    "TargetNotConnectedException",
                    "The execute command cannot run: this server has no way to reach the task's node.",
                ));
            }
            let task: String = required(&input, "task")?;
            let command: String = required(&input, "command")?;
            let container: Option<String> = field(&input, "container")?;
            let cluster: Option<String> = field(&input, "cluster")?;
            let (session, rec, token) = c
                .execute_command(scope, cluster.as_deref(), &task, container.as_deref(), &command)
                .await?;
            if let Some(log) = &session.log {
                crate::exec::create_session_stream(api, log, c.clock.now_ms()).await?;
            }
            let host = crate::api::HOST.try_with(Clone::clone).unwrap_or_default();
            let container_arn = rec
                .task
                .containers
                .iter()
                .find(|x| x.name == session.container)
                .map(|x| x.container_arn.clone())
                .unwrap_or_default();
            json!({
                "clusterArn": rec.task.cluster_arn, "taskArn": rec.task.task_arn, "containerName": session.container,
                "containerArn": container_arn, "interactive": true,
                "session": {"sessionId": session.id, "streamUrl": format!("ws://{host}/ecs-exec/{}", session.id),
                            "tokenValue": token},
            })
        }
        "RunTask" => {
            refuse_unsupported(
                &input,
                &[
                    ("volumeConfigurations", "volumes are not supported yet"),
                    ("referenceId", "reference ids belong to service deployments"),
                ],
            )?;
            pass_roles(&scope.account, &input["overrides"])?;
            if let Some(t) = field::<Vec<Tag>>(&input, "tags")? {
                validate_tags(&t)?;
            }
            let req = serde_json::from_value(input)
                .map_err(|e| ApiError::client("InvalidParameterException", format!("Invalid RunTask request: {e}")))?;
            let (tasks, failures) = c.run_task(scope, req).await?;
            json!({"tasks": tasks, "failures": failures})
        }
        "StartTask" => {
            refuse_unsupported(
                &input,
                &[
                    ("volumeConfigurations", "volumes are not supported yet"),
                    ("referenceId", "reference ids belong to service deployments"),
                ],
            )?;
            pass_roles(&scope.account, &input["overrides"])?;
            if let Some(t) = field::<Vec<Tag>>(&input, "tags")? {
                validate_tags(&t)?;
            }
            let on: Vec<String> = required(&input, "containerInstances")?;
            let mut req: gantry_control::RunTaskRequest = parse(input)?;
            // StartTask places on the named container instances: the EC2 launch type.
            req.launch_type = Some("EC2".into());
            req.on_instances = Some(on);
            let (tasks, failures) = c.run_task(scope, req).await?;
            json!({"tasks": tasks, "failures": failures})
        }
        "DescribeTasks" => {
            let cluster: Option<String> = field(&input, "cluster")?;
            let tasks: Vec<String> = required(&input, "tasks")?;
            let include: Vec<String> = field(&input, "include")?.unwrap_or_default();
            let (found, failures) = c.describe_tasks(scope, cluster.as_deref(), &tasks, &include).await?;
            json!({"tasks": found, "failures": failures})
        }
        "ListTasks" => {
            let q: gantry_control::ListTasks = parse(input)?;
            let (arns, next) = c.list_tasks(scope, q).await?;
            json!({"taskArns": arns, "nextToken": next})
        }
        "StopTask" => {
            let cluster: Option<String> = field(&input, "cluster")?;
            let task: String = required(&input, "task")?;
            let reason: Option<String> = field(&input, "reason")?;
            json!({"task": c.stop_task(scope, cluster.as_deref(), &task, reason.as_deref()).await?})
        }
        "GetTaskProtection" | "UpdateTaskProtection" => {
            let cluster: Option<String> = field(&input, "cluster")?;
            let tasks: Vec<String> = required(&input, "tasks")?;
            let enable: Option<bool> = if op == "UpdateTaskProtection" {
                Some(required(&input, "protectionEnabled")?)
            } else {
                None
            };
            let minutes: Option<i64> = field(&input, "expiresInMinutes")?;
            let (p, failures) = c
                .task_protection(scope, cluster.as_deref(), &tasks, enable, minutes)
                .await?;
            json!({"protectedTasks": p, "failures": failures})
        }
        "CreateService" => {
            refuse_unsupported(&input, SERVICE_UNSUPPORTED)?;
            if let Some(t) = field::<Vec<Tag>>(&input, "tags")? {
                validate_tags(&t)?;
            }
            let req = serde_json::from_value(input).map_err(|e| {
                ApiError::client(
                    "InvalidParameterException",
                    format!("Invalid CreateService request: {e}"),
                )
            })?;
            json!({"service": c.create_service(scope, req).await?})
        }
        "UpdateService" => {
            refuse_unsupported(&input, SERVICE_UNSUPPORTED)?;
            let req = serde_json::from_value(input).map_err(|e| {
                ApiError::client(
                    "InvalidParameterException",
                    format!("Invalid UpdateService request: {e}"),
                )
            })?;
            json!({"service": c.update_service(scope, req).await?})
        }
        "ListServiceDeployments" => c.list_service_deployments(scope, &input).await?,
        "DescribeServiceDeployments" => {
            let arns: Vec<String> = required(&input, "serviceDeploymentArns")?;
            c.describe_service_deployments(scope, &arns).await?
        }
        "DescribeServiceRevisions" => {
            let arns: Vec<String> = required(&input, "serviceRevisionArns")?;
            c.describe_service_revisions(scope, &arns).await?
        }
        "StopServiceDeployment" => {
            let arn: String = required(&input, "serviceDeploymentArn")?;
            let stop_type: Option<String> = field(&input, "stopType")?;
            c.stop_service_deployment(scope, &arn, stop_type.as_deref()).await?
        }
        "DeleteService" => {
            let cluster: Option<String> = field(&input, "cluster")?;
            let service: String = required(&input, "service")?;
            let force: bool = field(&input, "force")?.unwrap_or(false);
            json!({"service": c.delete_service(scope, cluster.as_deref(), &service, force).await?})
        }
        "DescribeServices" => {
            let cluster: Option<String> = field(&input, "cluster")?;
            let services: Vec<String> = required(&input, "services")?;
            let include: Vec<String> = field(&input, "include")?.unwrap_or_default();
            let (found, failures) = c
                .describe_services(scope, cluster.as_deref(), &services, &include)
                .await?;
            json!({"services": found, "failures": failures})
        }
        "ListServices" => {
            let q: gantry_control::services::ListServices = parse(input)?;
            let (arns, next) = c.list_services(scope, q).await?;
            json!({"serviceArns": arns, "nextToken": next})
        }
        "CreateTaskSet" => {
            let req: gantry_control::task_sets::CreateTaskSetRequest = parse(input)?;
            if let Some(tags) = &req.tags {
                validate_tags(tags)?;
            }
            json!({"taskSet": c.create_task_set(scope, req).await?})
        }
        "UpdateTaskSet" | "DeleteTaskSet" | "UpdateServicePrimaryTaskSet" => {
            let cluster: Option<String> = field(&input, "cluster")?;
            let service: Option<String> = field(&input, "service")?;
            let (cluster, service) = (cluster.as_deref(), service.as_deref());
            let ts = match op {
                "UpdateTaskSet" => {
                    let id: String = required(&input, "taskSet")?;
                    let scale: gantry_types::model::Scale = required(&input, "scale")?;
                    c.update_task_set(scope, cluster, service, &id, scale).await?
                }
                "DeleteTaskSet" => {
                    let id: String = required(&input, "taskSet")?;
                    let force: bool = field(&input, "force")?.unwrap_or(false);
                    c.delete_task_set(scope, cluster, service, &id, force).await?
                }
                _ => {
                    let id: String = required(&input, "primaryTaskSet")?;
                    c.update_service_primary_task_set(scope, cluster, service, &id).await?
                }
            };
            json!({"taskSet": ts})
        }
        "DescribeTaskSets" => {
            let cluster: Option<String> = field(&input, "cluster")?;
            let service: Option<String> = field(&input, "service")?;
            let wanted: Option<Vec<String>> = field(&input, "taskSets")?;
            let include: Vec<String> = field(&input, "include")?.unwrap_or_default();
            let (found, failures) = c
                .describe_task_sets(
                    scope,
                    cluster.as_deref(),
                    service.as_deref(),
                    wanted.as_deref(),
                    include.iter().any(|i| i == "TAGS"),
                )
                .await?;
            json!({"taskSets": found, "failures": failures})
        }
        "ListServicesByNamespace" => {
            let namespace: String = required(&input, "namespace")?;
            let next: Option<String> = field(&input, "nextToken")?;
            let max: Option<i64> = field(&input, "maxResults")?;
            let (arns, next) = c
                .list_services_by_namespace(scope, &namespace, next.as_deref(), max)
                .await?;
            json!({"serviceArns": arns, "nextToken": next})
        }
        "TagResource" | "UntagResource" | "ListTagsForResource" => {
            let arn: String = required(&input, "resourceArn")?;
            let (kind, mut cluster, id) = parse_resource_arn(scope, &arn)?;
            if cluster.is_empty() && (kind == "task" || kind == "service") {
                cluster = c
                    .cluster_of(scope, kind, &id)
                    .await?
                    .ok_or_else(|| EcsError::ResourceNotFound(format!("The specified {kind} is not found.")))?;
            }
            if op == "ListTagsForResource" {
                let tags = match kind {
                    "cluster" => c.cluster_tags(scope, &cluster).await?,
                    "service" => c.service_tags(scope, &cluster, &id).await?,
                    "task" => c.task_tags(scope, &cluster, &id).await?,
                    _ => c.task_definition(scope, &arn).await?.0.tags,
                };
                return Ok(json!({"tags": tags}));
            }
            let (add, remove): (Vec<Tag>, Vec<String>) = if op == "TagResource" {
                let t: Vec<Tag> = required(&input, "tags")?;
                validate_tags(&t)?;
                (t, vec![])
            } else {
                (vec![], required(&input, "tagKeys")?)
            };
            let apply = |tags: &mut Vec<Tag>| {
                for t in &add {
                    tags.retain(|x| x.key != t.key);
                    tags.push(t.clone());
                }
                tags.retain(|x| !remove.iter().any(|k| Some(k) == x.key.as_ref()));
            };
            match kind {
                "cluster" => c.set_cluster_tags(scope, &cluster, apply).await?,
                "service" => c.set_service_tags(scope, &cluster, &id, apply).await?,
                "task" => c.set_task_tags(scope, &cluster, &id, apply).await?,
                _ => c.set_taskdef_tags(scope, &arn, apply).await?,
            }
            json!({})
        }
        "DescribeCapacityProviders" => {
            let names: Option<Vec<String>> = field(&input, "capacityProviders")?;
            let include: Vec<String> = field(&input, "include")?.unwrap_or_default();
            let token: Option<String> = field(&input, "nextToken")?;
            let (providers, failures, next) = c
                .describe_capacity_providers(
                    scope,
                    names.as_deref(),
                    &include,
                    field(&input, "maxResults")?,
                    token.as_deref(),
                )
                .await?;
            json!({"capacityProviders": providers, "failures": failures, "nextToken": next})
        }
        "CreateCapacityProvider" => {
            refuse_unsupported(
                &input,
                &[
                    ("managedInstancesProvider", "ECS Managed Instances are not offered"),
                    ("cluster", "capacity providers are account-wide in Gantry"),
                ],
            )?;
            let name: String = required(&input, "name")?;
            let tags: Vec<Tag> = field(&input, "tags")?.unwrap_or_default();
            validate_tags(&tags)?;
            let asg: Option<Value> = field(&input, "autoScalingGroupProvider")?;
            json!({"capacityProvider": c.create_capacity_provider(scope, &name, asg.as_ref(), tags).await?})
        }
        "UpdateCapacityProvider" => {
            refuse_unsupported(
                &input,
                &[
                    ("managedInstancesProvider", "ECS Managed Instances are not offered"),
                    ("cluster", "capacity providers are account-wide in Gantry"),
                ],
            )?;
            let name: String = required(&input, "name")?;
            let asg: Value = required(&input, "autoScalingGroupProvider")?;
            json!({"capacityProvider": c.update_capacity_provider(scope, &name, &asg).await?})
        }
        "DeleteCapacityProvider" => {
            refuse_unsupported(&input, &[("cluster", "capacity providers are account-wide in Gantry")])?;
            let name: String = required(&input, "capacityProvider")?;
            json!({"capacityProvider": c.delete_capacity_provider(scope, &name).await?})
        }
        "PutClusterCapacityProviders" => {
            let cluster: String = required(&input, "cluster")?;
            let providers: Vec<String> = required(&input, "capacityProviders")?;
            let strategy: Vec<Value> = required(&input, "defaultCapacityProviderStrategy")?;
            json!({"cluster": c.put_cluster_capacity_providers(scope, &cluster, providers, strategy).await?})
        }
        "RegisterContainerInstance" => {
            let q: gantry_control::instances::RegisterContainerInstance = parse(input)?;
            json!({"containerInstance": c.register_container_instance(scope, q).await?})
        }
        "DeregisterContainerInstance" => {
            let cluster: Option<String> = field(&input, "cluster")?;
            let ci: String = required(&input, "containerInstance")?;
            let force: bool = field(&input, "force")?.unwrap_or(false);
            json!({"containerInstance": c.deregister_container_instance(scope, cluster.as_deref(), &ci, force).await?})
        }
        "DescribeContainerInstances" => {
            let cluster: Option<String> = field(&input, "cluster")?;
            let names: Vec<String> = required(&input, "containerInstances")?;
            let include: Vec<String> = field(&input, "include")?.unwrap_or_default();
            let (found, failures) = c
                .describe_container_instances(scope, cluster.as_deref(), &names, &include)
                .await?;
            json!({"containerInstances": found, "failures": failures})
        }
        "ListContainerInstances" => {
            let q: gantry_control::instances::ListContainerInstances = parse(input)?;
            let (arns, next) = c.list_container_instances(scope, q).await?;
            json!({"containerInstanceArns": arns, "nextToken": next})
        }
        "UpdateContainerInstancesState" => {
            let cluster: Option<String> = field(&input, "cluster")?;
            let names: Vec<String> = required(&input, "containerInstances")?;
            let status: String = required(&input, "status")?;
            let (found, failures) = c
                .update_container_instances_state(scope, cluster.as_deref(), &names, &status)
                .await?;
            json!({"containerInstances": found, "failures": failures})
        }
        "PutAttributes" | "DeleteAttributes" => {
            let cluster: Option<String> = field(&input, "cluster")?;
            let attrs: Vec<gantry_types::model::Attribute> = required(&input, "attributes")?;
            let put = op == "PutAttributes";
            json!({"attributes": c.change_attributes(scope, cluster.as_deref(), &attrs, put).await?})
        }
        "ListAttributes" => {
            let q: gantry_control::instances::ListAttributes = parse(input)?;
            let (attrs, next) = c.list_attributes(scope, q).await?;
            json!({"attributes": attrs, "nextToken": next})
        }
        "ListAccountSettings" => {
            let q: gantry_control::account_settings::ListAccountSettings = parse(input)?;
            let (settings, next) = c.list_account_settings(scope, q).await?;
            json!({"settings": settings, "nextToken": next})
        }
        "PutAccountSetting" | "PutAccountSettingDefault" => {
            let name: String = required(&input, "name")?;
            let value: String = required(&input, "value")?;
            let principal: Option<String> = field(&input, "principalArn")?;
            if op == "PutAccountSettingDefault" && principal.is_some() {
                return Err(EcsError::invalid("PutAccountSettingDefault takes no principalArn.").into());
            }
            let default = op == "PutAccountSettingDefault";
            let setting = c
                .put_account_setting(scope, &name, &value, principal.as_deref(), default)
                .await?;
            json!({"setting": setting})
        }
        "DeleteAccountSetting" => {
            let name: String = required(&input, "name")?;
            let principal: Option<String> = field(&input, "principalArn")?;
            json!({"setting": c.delete_account_setting(scope, &name, principal.as_deref()).await?})
        }
        other => {
            return Err(ApiError::client(
                "InvalidAction",
                format!("The action {other} is not valid for this web service (Gantry does not implement it yet)."),
            ));
        }
    })
}

/// Handing a role to tasks (a definition's, or RunTask's overrides) needs iam:PassRole on
/// it, as in AWS.
fn pass_roles(account: &str, input: &Value) -> Result<(), ApiError> {
    for key in ["taskRoleArn", "executionRoleArn"] {
        if let Some(role) = input.get(key).and_then(Value::as_str).filter(|r| !r.is_empty()) {
            crate::authz::pass_role(&crate::api::caller(account), role)?;
        }
    }
    Ok(())
}
