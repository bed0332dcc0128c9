//! ECS services in Cloud Map (`serviceRegistries`): each task is an instance of the Cloud Map
//! service while it is RUNNING and healthy, with the attributes ECS gives it, and is
//! deregistered before it is stopped, so the node resolvers answer with healthy tasks only.

use crate::services::ServiceRecord;
use crate::tasks::TaskRecord;
use crate::Control;
use gantry_types::arn::Scope;
use gantry_types::cloudmap::Service as MapService;
use gantry_types::taskdef::NetworkMode;
use gantry_types::EcsError;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// One `serviceRegistries` entry, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Registry {
    pub arn: String,
    pub port: Option<i64>,
    pub container: Option<(String, i64)>,
}

pub fn parse(entries: &[Value]) -> Vec<Registry> {
    entries
        .iter()
        .filter_map(|e| {
            Some(Registry {
                arn: e["registryArn"].as_str()?.to_string(),
                port: e["port"].as_i64(),
                container: e["containerName"]
                    .as_str()
                    .zip(e["containerPort"].as_i64())
                    .map(|(n, p)| (n.to_string(), p)),
            })
        })
        .collect()
}

/// A bridge-mode task is registered at its node's address and the host port published for a
/// container port: ECS asks for the container and port, and only an SRV record carries the port.
fn check_bridge_registry(srv: bool, port: Option<i64>, container: Option<(&str, i64)>) -> Result<(), EcsError> {
    if container.is_none() || port.is_some() {
        return Err(EcsError::invalid(
            "When the task definition uses the bridge network mode, the service registry must specify a containerName and containerPort combination from the task definition (not a port value).",
        ));
    }
    if !srv {
        return Err(EcsError::invalid(
            "When the task definition uses the bridge network mode, the service registry must have an SRV record: the tasks answer at their node's address on a host port.",
        ));
    }
    Ok(())
}

/// A registered instance as the service record remembers it: "Cloud Map service id|task id".
fn instance_key(service_id: &str, task_id: &str) -> String {
    format!("{service_id}|{task_id}")
}

/// The attributes ECS registers a task with: an awsvpc task at its own address, a bridge one
/// at its node's (`node`: as tasks reach it) with the host port published for the registry's
/// container port. None when there is no address (or port) yet.
pub fn attributes(
    rec: &ServiceRecord,
    svc: &MapService,
    reg: &Registry,
    t: &TaskRecord,
    node: Option<std::net::Ipv4Addr>,
) -> Option<BTreeMap<String, String>> {
    let bridge = t.network_mode == NetworkMode::Bridge;
    let ip = match bridge {
        true => node?.to_string(),
        false => t
            .task
            .containers
            .iter()
            .flat_map(|c| c.network_interfaces.iter())
            .map(|n| n.private_ipv4_address.clone())
            .find(|ip| !ip.is_empty())?,
    };
    let mut a = BTreeMap::from([
        ("AWS_INSTANCE_IPV4".to_string(), ip),
        ("AVAILABILITY_ZONE".to_string(), t.task.availability_zone.clone()),
        ("REGION".to_string(), rec.region.clone()),
        ("ECS_CLUSTER_NAME".to_string(), rec.cluster.clone()),
        ("ECS_SERVICE_NAME".to_string(), rec.service.service_name.clone()),
        (
            "ECS_TASK_DEFINITION_FAMILY".to_string(),
            family(&t.task.task_definition_arn),
        ),
    ]);
    let srv = svc
        .dns_config
        .iter()
        .flat_map(|d| &d.dns_records)
        .any(|r| r.kind == "SRV");
    if srv {
        let port = match bridge {
            true => host_port(t, reg.container.as_ref()?)?,
            false => reg.port.or(reg.container.as_ref().map(|c| c.1))?,
        };
        a.insert("AWS_INSTANCE_PORT".into(), port.to_string());
    }
    if svc.health_check_custom_config.is_some() {
        a.insert("AWS_INIT_HEALTH_STATUS".into(), "HEALTHY".into());
    }
    Some(a)
}

/// The host port a bridge task's container port is published on (its `networkBindings`).
fn host_port(t: &TaskRecord, (container, port): &(String, i64)) -> Option<i64> {
    t.task
        .containers
        .iter()
        .filter(|c| &c.name == container)
        .flat_map(|c| &c.network_bindings)
        .find(|b| b["containerPort"].as_i64() == Some(*port) && b["protocol"].as_str().unwrap_or("tcp") == "tcp")?
        ["hostPort"]
        .as_i64()
}

fn family(task_definition_arn: &str) -> String {
    let name = task_definition_arn.rsplit('/').next().unwrap_or(task_definition_arn);
    name.split(':').next().unwrap_or(name).to_string()
}

fn task_id(t: &TaskRecord) -> String {
    t.task.task_arn.rsplit('/').next().unwrap_or_default().to_string()
}

impl Control {
    /// CreateService and UpdateService's checks, in ECS's words: one registry, a Cloud Map
    /// service that exists, an awsvpc task definition, and a port for SRV records (`port`, or
    /// a container and one of its mapped ports).
    pub(crate) async fn validate_registries(
        &self,
        scope: &Scope,
        entries: &[Value],
        td: &Value,
    ) -> Result<Vec<Value>, EcsError> {
        if entries.len() > 1 {
            return Err(EcsError::invalid(
                "Each service may be associated with one service registry. Multiple service registries for each service isn't supported.",
            ));
        }
        let mut out = vec![];
        for e in entries {
            let arn = e["registryArn"]
                .as_str()
                .ok_or_else(|| EcsError::invalid("serviceRegistries: registryArn can not be blank."))?;
            let svc = self
                .cloud_map()
                .service(scope, arn)
                .await
                .map_err(|_| EcsError::invalid(format!("The service registry {arn} does not exist.")))?;
            let mode = td["networkMode"].as_str().unwrap_or("bridge");
            if !matches!(mode, "awsvpc" | "bridge") {
                return Err(EcsError::invalid(format!(
                    "Gantry registers tasks in Cloud Map with the awsvpc or bridge network mode, not {mode}."
                )));
            }
            let container = match (e["containerName"].as_str(), e["containerPort"].as_i64()) {
                (Some(name), Some(port)) => {
                    check_container(td, name, port)?;
                    Some((name, port))
                }
                (None, None) => None,
                _ => {
                    return Err(EcsError::invalid(
                        "serviceRegistries: containerName and containerPort must be given together.",
                    ))
                }
            };
            let port = e["port"].as_i64();
            if port.is_some_and(|p| !(0..=65535).contains(&p)) {
                return Err(EcsError::invalid(
                    "serviceRegistries: port must be between 0 and 65535.",
                ));
            }
            let srv = svc
                .dns_config
                .iter()
                .flat_map(|d| &d.dns_records)
                .any(|r| r.kind == "SRV");
            if mode == "bridge" {
                check_bridge_registry(srv, port, container)?;
            } else if srv && port.is_none() && container.is_none() {
                return Err(EcsError::invalid(
                    "When specifying a service registry with an SRV record, you must specify either a containerName and containerPort combination or a port value.",
                ));
            }
            if port.is_some() && container.is_some() {
                return Err(EcsError::invalid(
                    "serviceRegistries: specify either a containerName and containerPort combination or a port value, not both.",
                ));
            }
            let mut entry = json!({ "registryArn": svc.arn });
            if let Some(p) = port {
                entry["port"] = json!(p);
            }
            if let Some((n, p)) = container {
                entry["containerName"] = json!(n);
                entry["containerPort"] = json!(p);
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Deregisters these tasks' instances, before they are stopped (a failure is retried by
    /// the next `sync_registries`).
    pub(crate) async fn deregister_instances(&self, rec: &ServiceRecord, tasks: &[&TaskRecord]) {
        let map = self.cloud_map();
        let scope = rec.scope();
        let ids: BTreeSet<String> = tasks.iter().map(|t| task_id(t)).collect();
        for key in &rec.registry_registered {
            let Some((srv, task)) = key.split_once('|') else {
                continue;
            };
            if ids.contains(task) {
                if let Err(e) = map.deregister(&scope, srv, task).await {
                    tracing::warn!(error = %e, instance = %key, "deregistering a task from Cloud Map");
                }
            }
        }
    }

    /// Registers the healthy running tasks and deregisters every other instance the service
    /// registered (tasks stopped, unhealthy, or in a registry no longer configured). Returns
    /// what is registered now.
    pub(crate) async fn sync_registries(&self, rec: &ServiceRecord, healthy: &[&TaskRecord]) -> BTreeSet<String> {
        if rec.service.service_registries.is_empty() && rec.registry_registered.is_empty() {
            return BTreeSet::new();
        }
        let map = self.cloud_map();
        let scope = rec.scope();
        let mut now = BTreeSet::new();
        for reg in parse(&rec.service.service_registries) {
            // A registry deleted under the service: its tasks are not registered (every pass
            // would say so; DescribeServices still names the registry).
            let Ok(svc) = map.service(&scope, &reg.arn).await else {
                tracing::debug!(registry = %reg.arn, "the service registry is gone; tasks are not registered");
                continue;
            };
            for t in healthy {
                let key = instance_key(&svc.id, &task_id(t));
                if rec.registry_registered.contains(&key) {
                    now.insert(key);
                    continue;
                }
                let node = match t.network_mode {
                    NetworkMode::Bridge => self
                        .node(&t.node)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|n| n.spec.task_facing_address()),
                    _ => None,
                };
                let Some(attrs) = attributes(rec, &svc, &reg, t, node) else {
                    continue;
                };
                match map.register(&scope, &svc, &task_id(t), attrs, None).await {
                    Ok(()) => {
                        now.insert(key);
                    }
                    Err(e) => tracing::warn!(error = %e, task = %t.task.task_arn, "registering a task in Cloud Map"),
                }
            }
        }
        let gone: Vec<String> = rec.registry_registered.difference(&now).cloned().collect();
        for key in gone {
            let Some((srv, task)) = key.split_once('|') else {
                continue;
            };
            if let Err(e) = map.deregister(&scope, srv, task).await {
                tracing::warn!(error = %e, instance = %key, "deregistering a task from Cloud Map");
                now.insert(key);
            }
        }
        now
    }
}

impl Control {
    /// ListServicesByNamespace: the services, in any cluster, whose registry is a Cloud Map
    /// service of the namespace (named by name or ARN).
    pub async fn list_services_by_namespace(
        &self,
        scope: &Scope,
        namespace: &str,
        next_token: Option<&str>,
        max_results: Option<i64>,
    ) -> Result<(Vec<String>, Option<String>), EcsError> {
        let map = self.cloud_map();
        let ns = map
            .namespace_named(scope, namespace)
            .await
            .map_err(|_| EcsError::NamespaceNotFound(format!("The namespace {namespace} was not found.")))?;
        let size = crate::page_size(max_results, 10)?;
        let after = next_token.map(crate::decode_token).transpose()?;
        let mut out = vec![];
        for (key, rec, _) in self.all_services().await? {
            let here = rec.account == scope.account && rec.region == scope.region && rec.service.status != "INACTIVE";
            if !here || after.as_ref().is_some_and(|a| key <= *a) {
                continue;
            }
            for reg in parse(&rec.service.service_registries) {
                if map
                    .service(scope, &reg.arn)
                    .await
                    .is_ok_and(|s| s.namespace_id == ns.id)
                {
                    out.push((key.clone(), rec.service.service_arn.clone()));
                    break;
                }
            }
        }
        let token = (out.len() > size).then(|| crate::encode_token(&out[size - 1].0));
        Ok((out.into_iter().take(size).map(|(_, arn)| arn).collect(), token))
    }
}

/// The task definition has the container, and it maps the port.
pub(crate) fn check_container(td: &Value, name: &str, port: i64) -> Result<(), EcsError> {
    let containers = td["containerDefinitions"].as_array().cloned().unwrap_or_default();
    let c = containers
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .ok_or_else(|| EcsError::invalid(format!("The container {name} does not exist in the task definition.")))?;
    let mapped = c["portMappings"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["containerPort"].as_i64() == Some(port));
    if !mapped {
        return Err(EcsError::invalid(format!(
            "The container {name} did not have a container port {port} defined."
        )));
    }
    Ok(())
}
