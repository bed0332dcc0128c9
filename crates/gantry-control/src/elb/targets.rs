//! Registered targets and their health as DescribeTargetHealth reports it. Deregistered
//! targets drain for the group's deregistration delay before they are gone.

use super::{attributes, parse, Elb};
use gantry_types::arn::Scope;
use gantry_types::elbv2::{ElbError, Record, RegisteredTarget, TargetDescription, TargetGroup};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::Ipv4Addr;

/// Targets one group may hold (ELBv2's quota).
const MAX_TARGETS: usize = 1000;

/// A target's health as a health checker records it and DescribeTargetHealth reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct TargetState {
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl TargetState {
    fn new(state: &str, reason: &str, description: &str) -> TargetState {
        TargetState {
            state: state.into(),
            reason: Some(reason.into()),
            description: Some(description.into()),
        }
    }
}

/// What DescribeTargetHealth says of a target, from what is known of it: whether it is
/// registered and until when it drains, whether its group receives traffic, whether health
/// checks are on, and the last health check verdict (None before the first).
pub fn target_state(
    target: Option<&RegisteredTarget>,
    now: f64,
    group_in_use: bool,
    checks_enabled: bool,
    checked: Option<&TargetState>,
) -> TargetState {
    let Some(t) = target else {
        return TargetState::new(
            "unused",
            "Target.NotRegistered",
            "Target is not registered to the target group",
        );
    };
    if t.draining_until.is_some_and(|until| until > now) {
        return TargetState::new(
            "draining",
            "Target.DeregistrationInProgress",
            "Target deregistration is in progress",
        );
    }
    if !group_in_use {
        return TargetState::new(
            "unused",
            "Target.NotInUse",
            "Target group is not configured to receive traffic from the load balancer",
        );
    }
    if !checks_enabled {
        return TargetState::new(
            "unavailable",
            "Target.HealthCheckDisabled",
            "Health checks are disabled",
        );
    }
    match checked {
        Some(s) => s.clone(),
        None => TargetState::new(
            "initial",
            "Elb.RegistrationInProgress",
            "Target registration is in progress",
        ),
    }
}

/// Addresses an `ip` target may have: the private ranges Gantry's task networks use (RFC 1918
/// and RFC 6598), never public addresses or loopback.
fn allowed_ip(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private() || (o[0] == 100 && (64..128).contains(&o[1]))
}

fn check_target(tg: &TargetGroup, t: &TargetDescription) -> Result<RegisteredTarget, ElbError> {
    let invalid = |m: String| Err(ElbError::new("InvalidTargetException", m));
    if tg.target_type == "ip" {
        match t.id.parse::<Ipv4Addr>() {
            Ok(ip) if allowed_ip(ip) => {}
            Ok(_) => {
                return invalid(format!(
                    "The IP address '{}' is not in a private range (RFC 1918 or RFC 6598)",
                    t.id
                ))
            }
            Err(_) => return invalid(format!("The IP address '{}' is not a valid IPv4 address", t.id)),
        }
    } else {
        let hex = t.id.strip_prefix("i-").unwrap_or("");
        if hex.len() < 8 || hex.len() > 17 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return invalid(format!("The instance ID '{}' is not valid", t.id));
        }
    }
    let port = t.port.or(tg.port).unwrap_or(0);
    if !(1..=65535).contains(&port) {
        return invalid(format!(
            "The port '{port}' of target '{}' must be between 1 and 65535",
            t.id
        ));
    }
    Ok(RegisteredTarget {
        id: t.id.clone(),
        port,
        availability_zone: t.availability_zone.clone(),
        draining_until: None,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct TargetsInput {
    target_group_arn: String,
    targets: Vec<TargetDescription>,
}

impl Elb {
    pub(super) fn targets_key(scope: &Scope, tg_name: &str) -> String {
        Self::key(scope, &format!("targets/{tg_name}"))
    }

    fn health_key(scope: &Scope, tg_name: &str, id: &str, port: i64) -> String {
        Self::key(scope, &format!("health/{tg_name}/{id}:{port}"))
    }

    pub async fn register_targets(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        let input: TargetsInput = parse(input)?;
        let (tg, _) = self.find_tg(scope, &input.target_group_arn).await?;
        if input.targets.is_empty() {
            return Err(ElbError::validation("At least one target must be specified"));
        }
        let new: Vec<RegisteredTarget> = input
            .targets
            .iter()
            .map(|t| check_target(&tg.item, t))
            .collect::<Result<_, _>>()?;
        if tg.item.target_type == "instance" {
            self.check_instances(&new).await?;
        }
        let now = self.now();
        let name = &tg.item.target_group_name;
        let fresh = self
            .update::<Vec<RegisteredTarget>, _>(&Self::targets_key(scope, name), |cur| {
                let mut all: Vec<RegisteredTarget> = cur.unwrap_or_default();
                all.retain(|t| t.draining_until.is_none_or(|u| u > now));
                let mut fresh = vec![];
                for n in &new {
                    match all.iter_mut().find(|t| t.id == n.id && t.port == n.port) {
                        // Registering a draining target again takes it back.
                        Some(t) => t.draining_until = None,
                        None => {
                            all.push(n.clone());
                            fresh.push(format!("{}:{}", n.id, n.port));
                        }
                    }
                }
                if all.len() > MAX_TARGETS {
                    return Err(ElbError::new(
                        "TooManyTargetsException",
                        format!("A target group can have at most {MAX_TARGETS} targets"),
                    ));
                }
                Ok((Some(all), fresh))
            })
            .await?;
        // A new target starts from no verdict, whatever an earlier one at its address had
        // (addresses are reused as tasks come and go).
        for target in fresh {
            self.forget_health(scope, name, &target).await?;
        }
        Ok(json!({}))
    }

    /// `instance` targets must name Gantry nodes (by their instance ids).
    async fn check_instances(&self, targets: &[RegisteredTarget]) -> Result<(), ElbError> {
        let (kvs, _) = self
            .store
            .list_keys(crate::nodes::NODES_PREFIX)
            .await
            .map_err(super::store_err)?;
        let known: Vec<String> = kvs
            .iter()
            .map(|kv| crate::instances::ec2_instance_id(kv.key.trim_start_matches(crate::nodes::NODES_PREFIX)))
            .collect();
        let unknown: Vec<String> = targets
            .iter()
            .filter(|t| !known.contains(&t.id))
            .map(|t| format!("'{}'", t.id))
            .collect();
        if !unknown.is_empty() {
            return Err(ElbError::new(
                "InvalidTargetException",
                format!(
                    "The following targets are not instances of Gantry's nodes: {}",
                    unknown.join(", ")
                ),
            ));
        }
        Ok(())
    }

    pub async fn deregister_targets(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        let input: TargetsInput = parse(input)?;
        let (tg, _) = self.find_tg(scope, &input.target_group_arn).await?;
        let table = attributes::tg_attribute_defaults(tg.item.protocol.as_deref().unwrap_or(""));
        let delay: f64 = attributes::value_of(&table, &tg.attributes, "deregistration_delay.timeout_seconds")
            .parse()
            .unwrap_or(300.0);
        // A group no load balancer uses has no connections to drain.
        let in_use = self.tg_usage(scope).await?.contains_key(&tg.item.target_group_arn);
        let now = self.now();
        let arn = input.target_group_arn.clone();
        self.update::<Vec<RegisteredTarget>, _>(&Self::targets_key(scope, &tg.item.target_group_name), |cur| {
            let mut all: Vec<RegisteredTarget> = cur.unwrap_or_default();
            for t in &input.targets {
                let port = t.port.or(tg.item.port).unwrap_or(0);
                let found = all
                    .iter_mut()
                    .find(|r| r.id == t.id && r.port == port && r.draining_until.is_none());
                let Some(r) = found else {
                    return Err(ElbError::new(
                        "InvalidTargetException",
                        format!("The target '{}:{port}' is not registered in target group '{arn}'", t.id),
                    ));
                };
                r.draining_until = Some(now + if in_use { delay } else { 0.0 });
            }
            all.retain(|t| t.draining_until.is_none_or(|u| u > now));
            Ok((Some(all), ()))
        })
        .await?;
        Ok(json!({}))
    }

    pub async fn describe_target_health(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            target_group_arn: String,
            #[serde(default)]
            targets: Option<Vec<TargetDescription>>,
        }
        let input: Input = parse(input)?;
        let (tg, _) = self.find_tg(scope, &input.target_group_arn).await?;
        let now = self.now();
        let registered: Vec<RegisteredTarget> = self
            .load(&Self::targets_key(scope, &tg.item.target_group_name))
            .await?
            .map(|(t, _)| t)
            .unwrap_or_default();
        let live: Vec<&RegisteredTarget> = registered
            .iter()
            .filter(|t| t.draining_until.is_none_or(|u| u > now))
            .collect();
        let asked: Vec<(TargetDescription, Option<&RegisteredTarget>)> = match &input.targets {
            Some(ts) => ts
                .iter()
                .map(|t| {
                    let port = t.port.or(tg.item.port).unwrap_or(0);
                    let found = live.iter().find(|r| r.id == t.id && r.port == port).copied();
                    (
                        TargetDescription {
                            id: t.id.clone(),
                            port: Some(port),
                            availability_zone: t.availability_zone.clone(),
                        },
                        found,
                    )
                })
                .collect(),
            None => live
                .iter()
                .map(|r| {
                    (
                        TargetDescription {
                            id: r.id.clone(),
                            port: Some(r.port),
                            availability_zone: r.availability_zone.clone(),
                        },
                        Some(*r),
                    )
                })
                .collect(),
        };
        let in_use = self.tg_usage(scope).await?.contains_key(&tg.item.target_group_arn);
        let mut out = vec![];
        for (target, found) in asked {
            let port = target.port.unwrap_or(0);
            let checked = match found {
                Some(_) => self
                    .load::<TargetState>(&Self::health_key(scope, &tg.item.target_group_name, &target.id, port))
                    .await?
                    .map(|(s, _)| s),
                None => None,
            };
            let state = target_state(found, now, in_use, tg.item.health_check_enabled, checked.as_ref());
            let hc_port = match tg.item.health_check_port.as_str() {
                "traffic-port" => port.to_string(),
                p => p.to_string(),
            };
            out.push(json!({"Target": target, "HealthCheckPort": hc_port, "TargetHealth": state}));
        }
        Ok(json!({"TargetHealthDescriptions": out}))
    }

    /// The registered targets of a group as the data plane and ECS services see them.
    pub async fn registered_targets(
        &self,
        scope: &Scope,
        tg: &Record<TargetGroup>,
    ) -> Result<Vec<RegisteredTarget>, ElbError> {
        Ok(self
            .load(&Self::targets_key(scope, &tg.item.target_group_name))
            .await?
            .map(|(t, _)| t)
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(draining_until: Option<f64>) -> RegisteredTarget {
        RegisteredTarget {
            id: "10.0.0.5".into(),
            port: 80,
            availability_zone: None,
            draining_until,
        }
    }

    #[test]
    fn states_follow_registration_use_checks_and_verdicts() {
        assert_eq!(
            target_state(None, 0.0, true, true, None).reason.as_deref(),
            Some("Target.NotRegistered")
        );
        let r = reg(None);
        assert_eq!(
            target_state(Some(&r), 0.0, false, true, None).reason.as_deref(),
            Some("Target.NotInUse")
        );
        assert_eq!(target_state(Some(&r), 0.0, true, false, None).state, "unavailable");
        assert_eq!(target_state(Some(&r), 0.0, true, true, None).state, "initial");
        let healthy = TargetState {
            state: "healthy".into(),
            reason: None,
            description: None,
        };
        assert_eq!(target_state(Some(&r), 0.0, true, true, Some(&healthy)), healthy);
        let d = reg(Some(100.0));
        assert_eq!(
            target_state(Some(&d), 50.0, true, true, Some(&healthy)).state,
            "draining"
        );
    }

    #[test]
    fn only_private_addresses_are_targets() {
        for ok in ["10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.9"] {
            assert!(allowed_ip(ok.parse().unwrap()), "{ok}");
        }
        for bad in ["8.8.8.8", "127.0.0.1", "100.128.0.1", "169.254.170.2", "0.0.0.0"] {
            assert!(!allowed_ip(bad.parse().unwrap()), "{bad}");
        }
    }
}

/// A target group as an ECS service's controller sees it in one pass.
#[derive(Debug, Clone)]
pub struct GroupState {
    pub arn: String,
    pub targets: Vec<RegisteredTarget>,
    /// Last verdicts by "id:port".
    pub health: std::collections::BTreeMap<String, TargetState>,
    pub checks_enabled: bool,
    /// Whether a load balancer forwards to the group (else targets neither drain nor check).
    pub in_use: bool,
    /// deregistration_delay.timeout_seconds.
    pub delay: f64,
}

impl GroupState {
    /// Registered and not draining.
    pub fn serving(&self, id: &str, port: i64) -> bool {
        self.targets
            .iter()
            .any(|t| t.id == id && t.port == port && t.draining_until.is_none())
    }

    /// What DescribeTargetHealth would say of a target now.
    pub fn state_of(&self, id: &str, port: i64, now: f64) -> TargetState {
        let t = self.targets.iter().find(|t| t.id == id && t.port == port);
        target_state(
            t,
            now,
            self.in_use,
            self.checks_enabled,
            self.health.get(&format!("{id}:{port}")),
        )
    }
}

impl Elb {
    /// A group and whether a load balancer uses it (for CreateService's checks).
    pub async fn target_group(&self, scope: &Scope, arn: &str) -> Result<(TargetGroup, bool), ElbError> {
        let (tg, _) = self.find_tg(scope, arn).await?;
        let in_use = self.tg_usage(scope).await?.contains_key(arn);
        Ok((tg.item, in_use))
    }

    pub async fn group_state(&self, scope: &Scope, arn: &str) -> Result<GroupState, ElbError> {
        let (tg, _) = self.find_tg(scope, arn).await?;
        let name = &tg.item.target_group_name;
        let targets = self.registered_targets(scope, &tg).await?;
        let (kvs, _) = self
            .store
            .list(&Self::key(scope, &format!("health/{name}/")))
            .await
            .map_err(super::store_err)?;
        let mut health = std::collections::BTreeMap::new();
        for kv in kvs {
            let target = kv.key.rsplit('/').next().unwrap_or("").to_string();
            if let Ok(s) = serde_json::from_slice::<TargetState>(&kv.value) {
                health.insert(target, s);
            }
        }
        let table = attributes::tg_attribute_defaults(tg.item.protocol.as_deref().unwrap_or(""));
        let delay = attributes::value_of(&table, &tg.attributes, "deregistration_delay.timeout_seconds")
            .parse()
            .unwrap_or(300.0);
        Ok(GroupState {
            arn: arn.to_string(),
            targets,
            health,
            checks_enabled: tg.item.health_check_enabled,
            in_use: self.tg_usage(scope).await?.contains_key(arn),
            delay,
        })
    }

    /// Registers ip targets (a service's running tasks).
    pub async fn register_ips(&self, scope: &Scope, arn: &str, targets: &[(String, i64)]) -> Result<(), ElbError> {
        let targets: Vec<Value> = targets
            .iter()
            .map(|(id, port)| json!({"Id": id, "Port": port}))
            .collect();
        self.register_targets(scope, json!({"TargetGroupArn": arn, "Targets": targets}))
            .await
            .map(drop)
    }

    /// Deregisters ip targets; ones not registered any more are skipped, not refused. Returns
    /// how many were deregistered.
    pub async fn deregister_ips(&self, scope: &Scope, arn: &str, targets: &[(String, i64)]) -> Result<usize, ElbError> {
        let state = self.group_state(scope, arn).await?;
        let present: Vec<Value> = targets
            .iter()
            .filter(|(id, port)| state.serving(id, *port))
            .map(|(id, port)| json!({"Id": id, "Port": port}))
            .collect();
        if present.is_empty() {
            return Ok(0);
        }
        let n = present.len();
        self.deregister_targets(scope, json!({"TargetGroupArn": arn, "Targets": present}))
            .await
            .map(|_| n)
    }
}
