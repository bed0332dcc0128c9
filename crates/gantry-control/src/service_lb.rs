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
    /// Blue/green: the other target group, and the rules whose weights move traffic.
    pub alternate: Option<String>,
    pub production_rule: Option<String>,
    pub test_rule: Option<String>,
}

pub fn parse(lbs: &[Value]) -> Vec<ServiceLb> {
    lbs.iter()
        .filter_map(|l| {
            let adv = &l["advancedConfiguration"];
            let s = |v: &Value| v.as_str().map(str::to_string);
            Some(ServiceLb {
                target_group_arn: l["targetGroupArn"].as_str()?.to_string(),
                container_name: l["containerName"].as_str()?.to_string(),
                container_port: l["containerPort"].as_i64()?,
                alternate: s(&adv["alternateTargetGroupArn"]),
                production_rule: s(&adv["productionListenerRule"]),
                test_rule: s(&adv["testListenerRule"]),
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

/// The (group, id, port) targets a task is registered as, in the blue or the green group:
/// its address and the container port (awsvpc), or its node's instance id and the host port
/// published for the container port (bridge). None until the task has them.
pub fn task_targets(t: &TaskRecord, lbs: &[ServiceLb], alternate: bool) -> Vec<(String, String, i64)> {
    lbs.iter()
        .filter_map(|l| {
            let group = match (&l.alternate, alternate) {
                (Some(a), true) => a.clone(),
                _ => l.target_group_arn.clone(),
            };
            let (id, port) = target_of(t, l)?;
            Some((group, id, port))
        })
        .collect()
}

fn target_of(t: &TaskRecord, l: &ServiceLb) -> Option<(String, i64)> {
    if let Some(ip) = task_ip(t) {
        return Some((ip, l.container_port));
    }
    let host_port = t
        .task
        .containers
        .iter()
        .filter(|c| c.name == l.container_name)
        .flat_map(|c| c.network_bindings.iter())
        .find(|b| b["containerPort"].as_i64() == Some(l.container_port))?["hostPort"]
        .as_i64()?;
    Some((crate::instances::ec2_instance_id(&t.node), host_port))
}

/// A task's health as its targets report it, and the first failing target's details (group,
/// port, why) for the stop reason and event.
pub fn target_health(
    pass: &Pass,
    t: &TaskRecord,
    now: f64,
    in_grace: bool,
) -> (TaskHealth, Option<(String, i64, String)>) {
    let groups = &pass.groups;
    let mut health = TaskHealth::Healthy;
    for (arn, ip, port) in pass.targets_of(t) {
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
    if pass.targets_of(t).len() < pass.lbs.len() {
        health = TaskHealth::Starting;
    }
    (health, None)
}

/// A pass's view of a service's load balancing: its groups and what changed.
pub struct Pass {
    pub lbs: Vec<ServiceLb>,
    pub groups: HashMap<String, GroupState>,
    pub events: Vec<String>,
    /// The deployment whose tasks go into the green groups, while one shifts traffic.
    pub green: Option<String>,
    /// Whether blue (production) is in the alternate groups now.
    pub blue_is_alternate: bool,
}

impl Pass {
    /// A task's targets: green deployment's tasks in the green groups, the rest in blue.
    pub fn targets_of(&self, t: &TaskRecord) -> Vec<(String, String, i64)> {
        let green = self.green.is_some() && t.task.started_by == self.green;
        task_targets(t, &self.lbs, green != self.blue_is_alternate)
    }

    /// (blue, green) group of each load balancer that has an alternate.
    pub fn pairs(&self) -> Vec<(&ServiceLb, String, String)> {
        self.lbs
            .iter()
            .filter_map(|l| {
                let alt = l.alternate.clone()?;
                let main = l.target_group_arn.clone();
                Some(if self.blue_is_alternate {
                    (l, alt, main)
                } else {
                    (l, main, alt)
                })
            })
            .collect()
    }
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
        strategy: &str,
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
            let (tg, in_use) = self.elb().target_group(scope, arn).await.map_err(|_| {
                EcsError::invalid(format!("Unable to find the target group with targetGroupArn {arn}."))
            })?;
            // awsvpc tasks are `ip` targets; bridge tasks are reached at the host ports their
            // node publishes (`instance` targets).
            let mode = td["networkMode"].as_str().unwrap_or("bridge");
            let fits = matches!(
                (mode, tg.target_type.as_str()),
                ("awsvpc", "ip") | ("bridge", "instance")
            );
            if !fits {
                return Err(EcsError::invalid(format!(
                    "The provided target group {arn} has target type {}, which is incompatible with the {mode} network mode specified in the task definition.",
                    tg.target_type
                )));
            }
            if !in_use {
                return Err(EcsError::invalid(format!(
                    "The target group with targetGroupArn {arn} does not have an associated load balancer."
                )));
            }
            crate::service_registry::check_container(td, name, port)?;
            let mut entry = json!({"targetGroupArn": arn, "containerName": name, "containerPort": port});
            let adv = &l["advancedConfiguration"];
            if !adv.is_null() {
                entry["advancedConfiguration"] = self.validate_advanced(scope, arn, adv).await?;
            } else if strategy != "ROLLING" {
                return Err(EcsError::invalid(format!(
                    "The {strategy} deployment strategy needs advancedConfiguration (alternateTargetGroupArn and productionListenerRule) on each load balancer."
                )));
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// A blue/green advancedConfiguration: an alternate group used by the same load balancer,
    /// and production (and test) rules or listeners of that load balancer.
    async fn validate_advanced(&self, scope: &Scope, main: &str, adv: &Value) -> Result<Value, EcsError> {
        let bad = |m: String| EcsError::invalid(m);
        let alt = adv["alternateTargetGroupArn"]
            .as_str()
            .ok_or_else(|| bad("advancedConfiguration.alternateTargetGroupArn can not be blank.".into()))?;
        if alt == main {
            return Err(bad("alternateTargetGroupArn must differ from targetGroupArn.".into()));
        }
        let elb = self.elb();
        let (_, in_use) = elb
            .target_group(scope, alt)
            .await
            .map_err(|_| bad(format!("Unable to find the target group with targetGroupArn {alt}.")))?;
        if !in_use {
            return Err(bad(format!(
                "The target group with targetGroupArn {alt} does not have an associated load balancer."
            )));
        }
        let production = adv["productionListenerRule"]
            .as_str()
            .ok_or_else(|| bad("advancedConfiguration.productionListenerRule can not be blank.".into()))?;
        let mut rules = vec![production];
        rules.extend(adv["testListenerRule"].as_str());
        for rule in rules {
            let found = if rule.contains(":listener/") {
                elb.describe_listeners(scope, json!({"ListenerArns": [rule]}))
                    .await
                    .is_ok()
            } else {
                elb.describe_rules(scope, json!({"RuleArns": [rule]})).await.is_ok()
            };
            if !found {
                return Err(bad(format!("The listener rule {rule} could not be found.")));
            }
        }
        let mut out = json!({"alternateTargetGroupArn": alt, "productionListenerRule": production});
        for k in ["testListenerRule", "roleArn"] {
            if let Some(v) = adv[k].as_str() {
                out[k] = json!(v);
            }
        }
        Ok(out)
    }

    /// The service's target groups as they are now (a group that went away is left out, and
    /// its tasks simply never count as healthy through it).
    pub(crate) async fn lb_pass(
        &self,
        scope: &Scope,
        lbs: Vec<ServiceLb>,
        green: Option<String>,
        blue_is_alternate: bool,
    ) -> Pass {
        let mut groups = HashMap::new();
        // Collected first: an iterator with a closure held across the awaits below would make
        // the controller's future not provably Send.
        let arns: Vec<String> = lbs
            .iter()
            .flat_map(|l| std::iter::once(l.target_group_arn.clone()).chain(l.alternate.clone()))
            .collect();
        for arn in &arns {
            match self.elb().group_state(scope, arn).await {
                Ok(g) => {
                    groups.insert(arn.clone(), g);
                }
                Err(e) => tracing::warn!(group = %arn, error = %e, "reading a service's target group"),
            }
        }
        Pass {
            lbs,
            groups,
            events: vec![],
            green,
            blue_is_alternate,
        }
    }

    /// Sets the production rules' forward weights (and the test rules': all to green while a
    /// deployment shifts), rewriting a rule only when it differs.
    pub(crate) async fn apply_weights(&self, scope: &Scope, pass: &Pass, green_percent: f64, shifting: bool) {
        let (blue_w, green_w) = crate::traffic_shift::weights(green_percent);
        for (l, blue, green) in pass.pairs() {
            let test = if shifting { (0, 100) } else { (100, 0) };
            let rules = [
                (l.production_rule.as_ref(), (blue_w, green_w)),
                (l.test_rule.as_ref(), test),
            ];
            for (rule, (b, g)) in rules {
                let Some(rule) = rule else { continue };
                if let Err(e) = self.set_rule_weights(scope, rule, (&blue, b), (&green, g)).await {
                    tracing::warn!(rule = %rule, error = %e, "moving traffic");
                }
            }
        }
    }

    async fn set_rule_weights(
        &self,
        scope: &Scope,
        rule: &str,
        blue: (&str, i64),
        green: (&str, i64),
    ) -> Result<(), gantry_types::elbv2::ElbError> {
        let elb = self.elb();
        let action = json!([{"Type": "forward", "ForwardConfig": {"TargetGroups": [
            {"TargetGroupArn": blue.0, "Weight": blue.1}, {"TargetGroupArn": green.0, "Weight": green.1}]}}]);
        let is_listener = rule.contains(":listener/");
        let current = if is_listener {
            elb.describe_listeners(scope, json!({"ListenerArns": [rule]})).await?["Listeners"][0]["DefaultActions"]
                .clone()
        } else {
            elb.describe_rules(scope, json!({"RuleArns": [rule]})).await?["Rules"][0]["Actions"].clone()
        };
        let weight_of = |arn: &str| {
            current[0]["ForwardConfig"]["TargetGroups"]
                .as_array()
                .and_then(|g| g.iter().find(|t| t["TargetGroupArn"] == arn))
                .and_then(|t| t["Weight"].as_i64())
                .unwrap_or(-1)
        };
        if weight_of(blue.0) == blue.1 && weight_of(green.0) == green.1 {
            return Ok(());
        }
        if is_listener {
            elb.modify_listener(scope, json!({"ListenerArn": rule, "DefaultActions": action}))
                .await?;
        } else {
            elb.modify_rule(scope, json!({"RuleArn": rule, "Actions": action}))
                .await?;
        }
        Ok(())
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
            for (arn, ip, port) in pass.targets_of(t) {
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
        for (arn, ip, port) in pass.targets_of(t) {
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
