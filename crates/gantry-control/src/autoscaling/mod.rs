//! Application Auto Scaling for ECS services (`ecs:service:DesiredCount`): scalable targets,
//! target tracking and step scaling policies, and scaling activities. Policies act through
//! CloudWatch alarms, as in AWS: target tracking creates its own pair (AlarmHigh, AlarmLow),
//! step scaling is named in a user's alarm's AlarmActions; the leader's controller (`run`)
//! looks at the alarms and moves desired counts.
//!
//! Store layout, under `/autoscaling/<account>/<region>/`: `targets/<resource>`,
//! `policies/<resource>/<name>`, `scheduled/<resource>/<name>` (resource ids escaped: they
//! hold '/'); activities under `/autoscaling-activities/<account>/<region>/<ms>-<seq>-<random>`
//! (kept 6 weeks, 5,000 per region).

mod activities;
mod controller;
pub mod decide;
mod policies;
pub mod schedule;
mod scheduled;

pub use controller::run_once;

/// The store key of the policy an ARN names, if it is a scaling policy ARN of this scope.
pub fn policy_of_arn(scope: &Scope, arn: &str) -> Option<String> {
    let (resource, name) = policies::parse_policy_arn(scope, arn)?;
    Some(policies::policy_key(scope, resource, name))
}

use crate::alarms::Alarms;
use crate::records::{RecordError, Records};
use crate::{Clock, Control};
use decide::Cooldowns;
use gantry_types::arn::Scope;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

pub const PREFIX: &str = "/autoscaling/";
const DIMENSION: &str = "ecs:service:DesiredCount";

/// An error in Application Auto Scaling's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingError {
    pub shape: &'static str,
    pub message: String,
}

impl ScalingError {
    pub fn invalid(m: impl Into<String>) -> ScalingError {
        ScalingError {
            shape: "ValidationException",
            message: m.into(),
        }
    }
    pub fn not_found(m: impl Into<String>) -> ScalingError {
        ScalingError {
            shape: "ObjectNotFoundException",
            message: m.into(),
        }
    }
    pub fn internal(m: impl Into<String>) -> ScalingError {
        ScalingError {
            shape: "InternalServiceException",
            message: m.into(),
        }
    }
}

impl std::fmt::Display for ScalingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.shape, self.message)
    }
}

impl From<RecordError> for ScalingError {
    fn from(e: RecordError) -> ScalingError {
        ScalingError::internal(e.to_string())
    }
}

impl From<crate::metrics::MetricsError> for ScalingError {
    fn from(e: crate::metrics::MetricsError) -> ScalingError {
        ScalingError::internal(format!("CloudWatch: {e}"))
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ScalingError> {
    crate::metrics::parse(v).map_err(|e| ScalingError::invalid(e.message))
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SuspendedState {
    #[serde(default)]
    pub dynamic_scaling_in_suspended: bool,
    #[serde(default)]
    pub dynamic_scaling_out_suspended: bool,
    #[serde(default)]
    pub scheduled_scaling_suspended: bool,
}

/// A scalable target as DescribeScalableTargets shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScalableTarget {
    pub service_namespace: String,
    pub resource_id: String,
    pub scalable_dimension: String,
    pub min_capacity: i64,
    pub max_capacity: i64,
    #[serde(rename = "RoleARN")]
    pub role_arn: String,
    pub creation_time: f64,
    pub suspended_state: SuspendedState,
    #[serde(rename = "ScalableTargetARN")]
    pub scalable_target_arn: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetRecord {
    pub target: ScalableTarget,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// Resource ids hold '/': keys escape it so one service's records never nest in another's.
fn escape(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F")
}

fn scope_prefix(scope: &Scope) -> String {
    format!("{PREFIX}{}/{}/", scope.account, scope.region)
}

fn target_key(scope: &Scope, resource: &str) -> String {
    format!("{}targets/{}", scope_prefix(scope), escape(resource))
}

/// An ECS service's cluster and name from its resource id (`service/CLUSTER/SERVICE`).
fn service_of(resource: &str) -> Result<(&str, &str), ScalingError> {
    let mut parts = resource.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("service"), Some(c), Some(s), None) if !c.is_empty() && !s.is_empty() => Ok((c, s)),
        _ => Err(ScalingError::invalid(format!(
            "Unsupported resource id {resource}: an ECS service's is service/CLUSTER/SERVICE."
        ))),
    }
}

/// Checks the namespace and dimension of a request (Gantry scales ECS services only).
fn check_ecs(namespace: &str, dimension: Option<&str>) -> Result<(), ScalingError> {
    if namespace != "ecs" {
        return Err(ScalingError::invalid(format!(
            "Unsupported service namespace {namespace}: Gantry scales ECS services (ecs) only."
        )));
    }
    if let Some(d) = dimension.filter(|d| *d != DIMENSION) {
        return Err(ScalingError::invalid(format!(
            "Unsupported scalable dimension {d} for service namespace ecs: {DIMENSION}."
        )));
    }
    Ok(())
}

#[derive(Clone)]
pub struct AutoScaling {
    pub(crate) control: Control,
    pub(crate) alarms: Alarms,
    pub(crate) records: Records,
    pub(crate) clock: Arc<dyn Clock>,
    /// When activities were last pruned (ms): every 10 minutes.
    pub(crate) pruned_at: Arc<std::sync::atomic::AtomicI64>,
}

impl AutoScaling {
    pub fn new(control: Control, alarms: Alarms) -> AutoScaling {
        AutoScaling {
            records: Records::new(control.store.clone()),
            clock: control.clock.clone(),
            control,
            alarms,
            pruned_at: Arc::new(std::sync::atomic::AtomicI64::new(0)),
        }
    }

    fn now(&self) -> f64 {
        self.clock.now_ms() as f64 / 1000.0
    }

    pub(crate) async fn target(&self, scope: &Scope, resource: &str) -> Result<TargetRecord, ScalingError> {
        match self.records.load::<TargetRecord>(&target_key(scope, resource)).await? {
            Some((t, _)) => Ok(t),
            None => Err(ScalingError::not_found(format!(
                "No scalable target registered for service namespace: ecs, resource ID: {resource}, scalable \
                 dimension: {DIMENSION}"
            ))),
        }
    }

    /// The ARN of the scalable target of `resource` (an ECS service's resource id), if one is
    /// registered: what a request about it names for authorisation.
    pub async fn target_arn(&self, scope: &Scope, resource: &str) -> Option<String> {
        self.target(scope, resource)
            .await
            .ok()
            .map(|t| t.target.scalable_target_arn)
    }

    pub async fn register_scalable_target(&self, scope: &Scope, input: Value) -> Result<Value, ScalingError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct In {
            service_namespace: String,
            resource_id: String,
            scalable_dimension: String,
            min_capacity: Option<i64>,
            max_capacity: Option<i64>,
            #[serde(rename = "RoleARN")]
            role_arn: Option<String>,
            suspended_state: Option<SuspendedState>,
            tags: Option<BTreeMap<String, String>>,
        }
        let i: In = parse(input)?;
        check_ecs(&i.service_namespace, Some(&i.scalable_dimension))?;
        let (cluster, service) = service_of(&i.resource_id)?;
        if self
            .control
            .service_record(scope, Some(cluster), service)
            .await
            .is_err()
        {
            return Err(ScalingError::invalid(format!(
                "ECS service doesn't exist: {}",
                i.resource_id
            )));
        }
        let now = self.now();
        let role = i.role_arn.clone().unwrap_or_else(|| {
            format!(
                "arn:aws:iam::{}:role/aws-service-role/ecs.application-autoscaling.amazonaws.com/\
                 AWSServiceRoleForApplicationAutoScaling_ECSService",
                scope.account
            )
        });
        let arn = format!(
            "arn:aws:application-autoscaling:{}:{}:scalable-target/{}",
            scope.region,
            scope.account,
            crate::random_hex(16)
        );
        let rec = self
            .records
            .update(&target_key(scope, &i.resource_id), |cur: Option<TargetRecord>| {
                let mut rec = match cur {
                    Some(r) => r,
                    None => {
                        let (Some(min), Some(max)) = (i.min_capacity, i.max_capacity) else {
                            return Err(ScalingError::invalid(
                                "MinCapacity and MaxCapacity are required for registering a new scalable target.",
                            ));
                        };
                        TargetRecord {
                            target: ScalableTarget {
                                service_namespace: "ecs".into(),
                                resource_id: i.resource_id.clone(),
                                scalable_dimension: DIMENSION.into(),
                                min_capacity: min,
                                max_capacity: max,
                                role_arn: role.clone(),
                                creation_time: now,
                                suspended_state: SuspendedState::default(),
                                scalable_target_arn: arn.clone(),
                            },
                            tags: BTreeMap::new(),
                        }
                    }
                };
                let t = &mut rec.target;
                t.min_capacity = i.min_capacity.unwrap_or(t.min_capacity);
                t.max_capacity = i.max_capacity.unwrap_or(t.max_capacity);
                if let Some(s) = &i.suspended_state {
                    t.suspended_state = s.clone();
                }
                if t.min_capacity < 0 || t.min_capacity > t.max_capacity {
                    return Err(ScalingError::invalid(format!(
                        "Minimum capacity ({}) cannot be negative or greater than maximum capacity ({}).",
                        t.min_capacity, t.max_capacity
                    )));
                }
                if let Some(tags) = &i.tags {
                    rec.tags.extend(tags.clone());
                }
                Ok((Some(rec.clone()), rec))
            })
            .await?;
        Ok(json!({"ScalableTargetARN": rec.target.scalable_target_arn}))
    }

    pub async fn describe_scalable_targets(&self, scope: &Scope, input: Value) -> Result<Value, ScalingError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct In {
            service_namespace: String,
            resource_ids: Option<Vec<String>>,
            scalable_dimension: Option<String>,
            max_results: Option<i64>,
            next_token: Option<String>,
        }
        let i: In = parse(input)?;
        check_ecs(&i.service_namespace, i.scalable_dimension.as_deref())?;
        let targets: Vec<ScalableTarget> = self
            .records
            .list::<TargetRecord>(&format!("{}targets/", scope_prefix(scope)))
            .await?
            .into_iter()
            .map(|r| r.target)
            .filter(|t| i.resource_ids.as_ref().is_none_or(|ids| ids.contains(&t.resource_id)))
            .collect();
        paginate(
            "ScalableTargets",
            targets,
            |t| t.resource_id.clone(),
            i.max_results,
            i.next_token,
        )
    }

    pub async fn deregister_scalable_target(&self, scope: &Scope, input: Value) -> Result<Value, ScalingError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct In {
            service_namespace: String,
            resource_id: String,
            scalable_dimension: String,
        }
        let i: In = parse(input)?;
        check_ecs(&i.service_namespace, Some(&i.scalable_dimension))?;
        self.target(scope, &i.resource_id).await?;
        // Its policies (and their alarms) go with it, as in AWS.
        for p in self.policies_of(scope, &i.resource_id).await? {
            self.delete_policy_record(scope, &p.policy).await?;
        }
        for s in self.scheduled_of(scope, &i.resource_id).await? {
            let a = &s.action;
            self.records
                .delete(&format!(
                    "{}scheduled/{}/{}",
                    scope_prefix(scope),
                    escape(&a.resource_id),
                    escape(&a.scheduled_action_name)
                ))
                .await?;
        }
        self.records.delete(&target_key(scope, &i.resource_id)).await?;
        Ok(json!({}))
    }

    pub async fn describe_scaling_activities(&self, scope: &Scope, input: Value) -> Result<Value, ScalingError> {
        activities::describe(self, scope, input).await
    }

    pub async fn tags(&self, scope: &Scope, op: &str, input: Value) -> Result<Value, ScalingError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct In {
            #[serde(rename = "ResourceARN")]
            resource_arn: String,
            #[serde(default)]
            tags: BTreeMap<String, String>,
            #[serde(default)]
            tag_keys: Vec<String>,
        }
        let i: In = parse(input)?;
        let all = self
            .records
            .list::<TargetRecord>(&format!("{}targets/", scope_prefix(scope)))
            .await?;
        let Some(found) = all.into_iter().find(|t| t.target.scalable_target_arn == i.resource_arn) else {
            return Err(ScalingError {
                shape: "ResourceNotFoundException",
                message: format!("No scalable target with ARN {}.", i.resource_arn),
            });
        };
        if op == "ListTagsForResource" {
            return Ok(json!({ "Tags": found.tags }));
        }
        let key = target_key(scope, &found.target.resource_id);
        self.records
            .update(&key, |cur: Option<TargetRecord>| {
                let next = cur.map(|mut r| {
                    if op == "TagResource" {
                        r.tags.extend(i.tags.clone());
                    } else {
                        r.tags.retain(|k, _| !i.tag_keys.contains(k));
                    }
                    r
                });
                if next.as_ref().is_some_and(|r| r.tags.len() > 50) {
                    return Err(ScalingError {
                        shape: "TooManyTagsException",
                        message: "A scalable target has at most 50 tags.".into(),
                    });
                }
                Ok((next, ()))
            })
            .await?;
        Ok(json!({}))
    }
}

/// One page of `items` in key order after `token`, as `{list: [...], NextToken}`.
fn paginate<T: Serialize>(
    list: &str,
    mut items: Vec<T>,
    key: impl Fn(&T) -> String,
    max: Option<i64>,
    token: Option<String>,
) -> Result<Value, ScalingError> {
    let max = max.unwrap_or(50).clamp(1, 50) as usize;
    items.sort_by_key(|i| key(i));
    if let Some(t) = &token {
        items.retain(|i| &key(i) > t);
    }
    let next = (items.len() > max).then(|| key(&items[max - 1]));
    items.truncate(max);
    let mut out = json!({ list: items });
    if let Some(n) = next {
        out["NextToken"] = json!(n);
    }
    Ok(out)
}

/// The policy and what the controller remembers of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub policy: policies::ScalingPolicy,
    #[serde(default)]
    pub cooldowns: Cooldowns,
}

pub use policies::ScalingPolicy;
