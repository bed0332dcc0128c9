//! ECS services behind ELBv2 target groups: CreateService's checks of `loadBalancers`, and
//! what the service controller does each pass: register running tasks, count a task healthy
//! only once its targets are, deregister a task before it is stopped and stop it only after
//! the group's deregistration delay (connections drain), and replace a task whose target
//! fails its health checks, in ECS's words.

use crate::deploy::TaskHealth;
use crate::elb::{Elb, GroupState};
use crate::tasks::TaskRecord;
use crate::Control;
use gantry_types::arn::Scope;
use gantry_types::EcsError;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Load balancers one service may use (as ECS).
const MAX_LOAD_BALANCERS: usize = 5;
pub const ELB_HEALTH_REASON: &str = "Task failed ELB health checks in";

/// One `loadBalancers` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceLb {
    pub target_group_arn: String,
    pub container_name: String,
    pub container_port: i64,
}

pub fn parse(lbs: &[Value]) -> Vec<ServiceLb> {
    lbs.iter()
        .filter_map(|l| {
            Some(ServiceLb {
                target_group_arn: l["targetGroupArn"].as_str()?.to_string(),
                container_name: l["containerName"].as_str()?.to_string(),
                container_port: l["containerPort"].as_i64()?,
            })
        })
        .collect()
}

/// A target as the service's record remembers it: "group arn|ip:port".
fn target_key(arn: &str, ip: &str, port: i64) -> String {
    format!("{arn}|{ip}:{port}")
}

/// The task's address (awsvpc), once it has one.
fn task_ip(t: &TaskRecord) -> Option<String> {
    t.task
        .containers
        .iter()
        .flat_map(|c| c.network_interfaces.iter())
        .map(|n| n.private_ipv4_address.clone())
        .find(|ip| !ip.is_empty())
}

/// The (group, ip, port) targets a task is registered as.
pub fn task_targets(t: &TaskRecord, lbs: &[ServiceLb]) -> Vec<(String, String, i64)> {
    let Some(ip) = task_ip(t) else { return vec![] };
    lbs.iter()
        .map(|l| (l.target_group_arn.clone(), ip.clone(), l.container_port))
        .collect()
}

/// A task's health as its targets report it, and the first failing target's details (group,
/// port, why) for the stop reason and event.
pub fn target_health(
    t: &TaskRecord,
    lbs: &[ServiceLb],
    groups: &HashMap<String, GroupState>,
    now: f64,
    in_grace: bool,
) -> (TaskHealth, Option<(String, i64, String)>) {
    let mut health = TaskHealth::Healthy;
    for (arn, ip, port) in task_targets(t, lbs) {
        let Some(g) = groups.get(&arn) else {
            health = TaskHealth::Starting;
            continue;
        };
        let s = g.state_of(&ip, port, now);
        match s.state.as_str() {
            // Nothing to wait for: the group is not checked or not used by a listener.
            "healthy" | "unavailable" | "unused" if g.serving(&ip, port) || !g.in_use => {}
            "unhealthy" if !in_grace => {
                let why = s.description.unwrap_or_else(|| "Health checks failed".into());
                return (TaskHealth::Unhealthy, Some((arn, port, why)));
            }
            _ => health = TaskHealth::Starting,
        }
    }
    if task_ip(t).is_none() {
        health = TaskHealth::Starting;
    }
    (health, None)
}

/// A pass's view of a service's load balancing: its groups and what changed.
pub struct Pass {
    pub lbs: Vec<ServiceLb>,
    pub groups: HashMap<String, GroupState>,
    pub events: Vec<String>,
}

impl Control {
    fn elb(&self) -> Elb {
        Elb::new(self.store.clone(), self.clock.clone())
    }

    /// CreateService's checks: each entry names an existing target group a load balancer
    /// uses, and a container of the task definition with that container port.
    pub(crate) async fn validate_load_balancers(
        &self,
        scope: &Scope,
        lbs: &[Value],
        td: &Value,
    ) -> Result<Vec<Value>, EcsError> {
        if lbs.len() > MAX_LOAD_BALANCERS {
            return Err(EcsError::invalid(format!(
                "A service can have at most {MAX_LOAD_BALANCERS} load balancers."
            )));
        }
        let mut out = vec![];
        for l in lbs {
            if l.get("loadBalancerName").is_some_and(|v| !v.is_null()) {
                return Err(EcsError::invalid(
                    "Classic Load Balancers (loadBalancerName) are not supported by Gantry: use targetGroupArn.",
                ));
            }
            let arn = l["targetGroupArn"]
                .as_str()
                .ok_or_else(|| EcsError::invalid("loadBalancers: targetGroupArn can not be blank."))?;
            let name = l["containerName"]
                .as_str()
                .ok_or_else(|| EcsError::invalid("loadBalancers: containerName can not be blank."))?;
            let port = l["containerPort"]
                .as_i64()
                .ok_or_else(|| EcsError::invalid("loadBalancers: containerPort can not be blank."))?;
            if td["networkMode"].as_str() != Some("awsvpc") {
                return Err(EcsError::invalid(
                    "Gantry load balancers reach tasks at their own addresses: the task definition must use the awsvpc network mode.",
                ));
            }
            let (_, in_use) = self.elb().target_group(scope, arn).await.map_err(|_| {
                EcsError::invalid(format!("Unable to find the target group with targetGroupArn {arn}."))
            })?;
            if !in_use {
                return Err(EcsError::invalid(format!(
                    "The target group with targetGroupArn {arn} does not have an associated load balancer."
                )));
            }
            let containers = td["containerDefinitions"].as_array().cloned().unwrap_or_default();
            let container = containers
                .iter()
                .find(|c| c["name"].as_str() == Some(name))
                .ok_or_else(|| {
                    EcsError::invalid(format!("The container {name} does not exist in the task definition."))
                })?;
            let mapped = container["portMappings"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["containerPort"].as_i64() == Some(port));
            if !mapped {
                return Err(EcsError::invalid(format!(
                    "The container {name} did not have a container port {port} defined."
                )));
            }
            out.push(json!({"targetGroupArn": arn, "containerName": name, "containerPort": port}));
        }
        Ok(out)
    }

    /// The service's target groups as they are now (a group that went away is left out, and
    /// its tasks simply never count as healthy through it).
    pub(crate) async fn lb_pass(&self, scope: &Scope, lbs: Vec<ServiceLb>) -> Pass {
        let mut groups = HashMap::new();
        for l in &lbs {
            match self.elb().group_state(scope, &l.target_group_arn).await {
                Ok(g) => {
                    groups.insert(l.target_group_arn.clone(), g);
                }
                Err(e) => tracing::warn!(group = %l.target_group_arn, error = %e, "reading a service's target group"),
            }
        }
        Pass {
            lbs,
            groups,
            events: vec![],
        }
    }

    /// Registers the targets of `running` tasks that are not registered yet and deregisters
    /// the ones this service registered for tasks no longer running. Returns the targets the
    /// service has registered after the pass.
    pub(crate) async fn sync_targets(
        &self,
        scope: &Scope,
        name: &str,
        pass: &mut Pass,
        running: &[&TaskRecord],
        registered: &BTreeSet<String>,
    ) -> BTreeSet<String> {
        let mut wanted: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
        let mut now_registered = BTreeSet::new();
        for t in running {
            for (arn, ip, port) in task_targets(t, &pass.lbs) {
                now_registered.insert(target_key(&arn, &ip, port));
                let serving = pass.groups.get(&arn).is_some_and(|g| g.serving(&ip, port));
                if !serving {
                    wanted.entry(arn).or_default().push((ip, port));
                }
            }
        }
        for (arn, targets) in wanted {
            match self.elb().register_ips(scope, &arn, &targets).await {
                Ok(()) => pass.events.push(format!(
                    "(service {name}) registered {} targets in (target-group {arn})",
                    targets.len()
                )),
                Err(e) => {
                    tracing::warn!(group = %arn, error = %e, "registering a service's targets");
                    for (ip, port) in &targets {
                        now_registered.remove(&target_key(&arn, ip, *port));
                    }
                }
            }
        }
        // Targets of tasks that stopped on their own (or were replaced) go.
        let mut stale: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
        for key in registered.difference(&now_registered) {
            let Some((arn, target)) = key.split_once('|') else {
                continue;
            };
            let Some((ip, port)) = target.rsplit_once(':') else {
                continue;
            };
            stale
                .entry(arn.to_string())
                .or_default()
                .push((ip.to_string(), port.parse().unwrap_or(0)));
        }
        for (arn, targets) in stale {
            match self.elb().deregister_ips(scope, &arn, &targets).await {
                Ok(0) => {}
                Ok(n) => pass.events.push(format!(
                    "(service {name}) deregistered {n} targets in (target-group {arn})"
                )),
                Err(e) => {
                    tracing::warn!(group = %arn, error = %e, "deregistering a service's targets");
                    for (ip, port) in &targets {
                        now_registered.insert(target_key(&arn, ip, *port));
                    }
                }
            }
        }
        now_registered
    }

    /// Starts draining a task the service is about to stop: its targets are deregistered and
    /// the time it may be stopped is returned (now, when nothing has to drain).
    pub(crate) async fn begin_draining(&self, scope: &Scope, pass: &Pass, t: &TaskRecord, now: f64) -> f64 {
        let mut until = now;
        for (arn, ip, port) in task_targets(t, &pass.lbs) {
            let Some(g) = pass.groups.get(&arn) else { continue };
            if !g.serving(&ip, port) {
                continue;
            }
            match self.elb().deregister_ips(scope, &arn, &[(ip, port)]).await {
                Ok(_) if g.in_use => until = until.max(now + g.delay),
                Ok(_) => {}
                Err(e) => tracing::warn!(group = %arn, error = %e, "deregistering a task before stopping it"),
            }
        }
        until
    }
}
