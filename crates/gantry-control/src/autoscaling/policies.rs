//! PutScalingPolicy, DescribeScalingPolicies, DeleteScalingPolicy. A target tracking policy
//! gets its two alarms here: AlarmHigh (the metric above the target for one 10-second period:
//! scale out now) and AlarmLow (below 90% of it for six periods: scale in, gradually), named
//! as AWS names them.

use super::decide::StepAdjustment;
use super::{check_ecs, escape, paginate, parse, scope_prefix, AutoScaling, PolicyRecord, ScalingError};
use gantry_types::arn::Scope;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// AlarmHigh: one period of this many seconds above the target scales out.
const HIGH_PERIOD_S: i64 = 10;
/// AlarmLow: this many periods below 90% of the target scale in.
const LOW_PERIODS: i64 = 6;
/// Cooldowns when a policy gives none (Application Auto Scaling's ECS defaults).
pub const DEFAULT_COOLDOWN_S: i64 = 300;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct StepConfiguration {
    pub adjustment_type: Option<String>,
    #[serde(default)]
    pub step_adjustments: Vec<StepAdjustment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_adjustment_magnitude: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_aggregation_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Predefined {
    pub predefined_metric_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_label: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TrackingConfiguration {
    pub target_value: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predefined_metric_specification: Option<Predefined>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customized_metric_specification: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_out_cooldown: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_in_cooldown: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_scale_in: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AlarmRef {
    pub alarm_name: String,
    #[serde(rename = "AlarmARN")]
    pub alarm_arn: String,
}

/// A policy as DescribeScalingPolicies shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScalingPolicy {
    #[serde(rename = "PolicyARN")]
    pub policy_arn: String,
    pub policy_name: String,
    pub service_namespace: String,
    pub resource_id: String,
    pub scalable_dimension: String,
    pub policy_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_scaling_policy_configuration: Option<StepConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_tracking_scaling_policy_configuration: Option<TrackingConfiguration>,
    pub alarms: Vec<AlarmRef>,
    pub creation_time: f64,
}

pub(super) fn policy_key(scope: &Scope, resource: &str, name: &str) -> String {
    format!("{}policies/{}/{}", scope_prefix(scope), escape(resource), escape(name))
}

/// The resource and policy name a policy ARN names
/// (`arn:aws:autoscaling:R:A:scalingPolicy:ID:resource/ecs/RESOURCE:policyName/NAME`).
pub fn parse_policy_arn<'a>(scope: &Scope, arn: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = arn.strip_prefix(&format!(
        "arn:aws:autoscaling:{}:{}:scalingPolicy:",
        scope.region, scope.account
    ))?;
    let (_, rest) = rest.split_once(":resource/ecs/")?;
    rest.rsplit_once(":policyName/")
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct PutInput {
    policy_name: String,
    service_namespace: String,
    resource_id: String,
    scalable_dimension: String,
    policy_type: Option<String>,
    step_scaling_policy_configuration: Option<StepConfiguration>,
    target_tracking_scaling_policy_configuration: Option<TrackingConfiguration>,
}

impl AutoScaling {
    pub async fn put_scaling_policy(&self, scope: &Scope, input: Value) -> Result<Value, ScalingError> {
        let i: PutInput = parse(input)?;
        check_ecs(&i.service_namespace, Some(&i.scalable_dimension))?;
        self.target(scope, &i.resource_id).await?;
        let policy_type = i.policy_type.clone().unwrap_or_else(|| "StepScaling".into());
        match policy_type.as_str() {
            "StepScaling" => check_step(&i)?,
            "TargetTrackingScaling" => check_tracking(&i)?,
            other => {
                return Err(ScalingError::invalid(format!(
                    "Unsupported policy type {other}: Gantry offers StepScaling and TargetTrackingScaling."
                )))
            }
        }
        let key = policy_key(scope, &i.resource_id, &i.policy_name);
        let existing = self.records.load::<PolicyRecord>(&key).await?.map(|(r, _)| r);
        let arn = existing
            .as_ref()
            .map(|r| r.policy.policy_arn.clone())
            .unwrap_or_else(|| {
                format!(
                    "arn:aws:autoscaling:{}:{}:scalingPolicy:{}:resource/ecs/{}:policyName/{}",
                    scope.region,
                    scope.account,
                    crate::random_uuid(),
                    i.resource_id,
                    i.policy_name
                )
            });
        let mut policy = ScalingPolicy {
            policy_arn: arn,
            policy_name: i.policy_name.clone(),
            service_namespace: "ecs".into(),
            resource_id: i.resource_id.clone(),
            scalable_dimension: i.scalable_dimension.clone(),
            policy_type: policy_type.clone(),
            step_scaling_policy_configuration: i.step_scaling_policy_configuration.clone(),
            target_tracking_scaling_policy_configuration: i.target_tracking_scaling_policy_configuration.clone(),
            alarms: vec![],
            creation_time: existing
                .as_ref()
                .map(|r| r.policy.creation_time)
                .unwrap_or_else(|| self.now()),
        };
        // The record first: the alarms name it in their actions.
        let cooldowns = existing.as_ref().map(|r| r.cooldowns.clone()).unwrap_or_default();
        let rec = PolicyRecord {
            policy: policy.clone(),
            cooldowns: cooldowns.clone(),
        };
        self.records
            .update(&key, |_: Option<PolicyRecord>| {
                Ok::<_, ScalingError>((Some(rec.clone()), ()))
            })
            .await?;
        if let Some(old) = &existing {
            self.delete_alarms(scope, &old.policy.alarms).await?;
        }
        if let Some(t) = &i.target_tracking_scaling_policy_configuration {
            policy.alarms = self.tracking_alarms(scope, &policy, t).await?;
            let rec = PolicyRecord {
                policy: policy.clone(),
                cooldowns,
            };
            self.records
                .update(&key, |_: Option<PolicyRecord>| {
                    Ok::<_, ScalingError>((Some(rec.clone()), ()))
                })
                .await?;
        }
        Ok(json!({"PolicyARN": policy.policy_arn, "Alarms": policy.alarms}))
    }

    /// AlarmHigh and (unless scale-in is disabled) AlarmLow for a target tracking policy.
    async fn tracking_alarms(
        &self,
        scope: &Scope,
        policy: &ScalingPolicy,
        t: &TrackingConfiguration,
    ) -> Result<Vec<super::policies::AlarmRef>, ScalingError> {
        let metric = tracked_metric(policy, t)?;
        let id = crate::random_uuid();
        let mut out = Vec::new();
        let mut specs = vec![("AlarmHigh", "GreaterThanThreshold", t.target_value, 1)];
        if t.disable_scale_in != Some(true) {
            specs.push(("AlarmLow", "LessThanThreshold", t.target_value * 0.9, LOW_PERIODS));
        }
        for (suffix, comparison, threshold, periods) in specs {
            let name = format!("TargetTracking-{}-{suffix}-{id}", policy.resource_id);
            let mut alarm = json!({
                "AlarmName": name,
                "AlarmDescription": format!("DO NOT EDIT OR DELETE. For TargetTrackingScaling policy {}.", policy.policy_arn),
                "AlarmActions": [policy.policy_arn],
                "EvaluationPeriods": periods,
                "DatapointsToAlarm": periods,
                "Threshold": threshold,
                "ComparisonOperator": comparison,
            });
            alarm.as_object_mut().expect("object").extend(metric.clone());
            self.alarms
                .put_metric_alarm(scope, alarm)
                .await
                .map_err(|e| ScalingError::invalid(format!("The policy's metric cannot be watched: {}", e.message)))?;
            out.push(super::policies::AlarmRef {
                alarm_arn: format!("arn:aws:cloudwatch:{}:{}:alarm:{name}", scope.region, scope.account),
                alarm_name: name,
            });
        }
        Ok(out)
    }

    pub(super) async fn delete_alarms(&self, scope: &Scope, alarms: &[AlarmRef]) -> Result<(), ScalingError> {
        let names: Vec<&str> = alarms.iter().map(|a| a.alarm_name.as_str()).collect();
        if names.is_empty() {
            return Ok(());
        }
        match self.alarms.delete_alarms(scope, json!({ "AlarmNames": names })).await {
            Err(e) if e.shape != "ResourceNotFound" => Err(e.into()),
            _ => Ok(()),
        }
    }

    pub(super) async fn delete_policy_record(&self, scope: &Scope, p: &ScalingPolicy) -> Result<(), ScalingError> {
        self.delete_alarms(scope, &p.alarms).await?;
        self.records
            .delete(&policy_key(scope, &p.resource_id, &p.policy_name))
            .await?;
        Ok(())
    }

    pub(super) async fn policies_of(&self, scope: &Scope, resource: &str) -> Result<Vec<PolicyRecord>, ScalingError> {
        let prefix = format!("{}policies/{}/", scope_prefix(scope), escape(resource));
        Ok(self.records.list(&prefix).await?)
    }

    pub async fn describe_scaling_policies(&self, scope: &Scope, input: Value) -> Result<Value, ScalingError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct In {
            policy_names: Option<Vec<String>>,
            service_namespace: String,
            resource_id: Option<String>,
            scalable_dimension: Option<String>,
            max_results: Option<i64>,
            next_token: Option<String>,
        }
        let i: In = parse(input)?;
        check_ecs(&i.service_namespace, i.scalable_dimension.as_deref())?;
        let all: Vec<PolicyRecord> = self.records.list(&format!("{}policies/", scope_prefix(scope))).await?;
        let policies: Vec<ScalingPolicy> = all
            .into_iter()
            .map(|r| r.policy)
            .filter(|p| {
                i.resource_id.as_ref().is_none_or(|r| &p.resource_id == r)
                    && i.policy_names.as_ref().is_none_or(|n| n.contains(&p.policy_name))
            })
            .collect();
        paginate(
            "ScalingPolicies",
            policies,
            |p| p.policy_arn.clone(),
            i.max_results,
            i.next_token,
        )
    }

    pub async fn delete_scaling_policy(&self, scope: &Scope, input: Value) -> Result<Value, ScalingError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct In {
            policy_name: String,
            service_namespace: String,
            resource_id: String,
            scalable_dimension: String,
        }
        let i: In = parse(input)?;
        check_ecs(&i.service_namespace, Some(&i.scalable_dimension))?;
        let key = policy_key(scope, &i.resource_id, &i.policy_name);
        let Some((rec, _)) = self.records.load::<PolicyRecord>(&key).await? else {
            return Err(ScalingError::not_found(format!(
                "No scaling policy found for service namespace: ecs, resource ID: {}, scalable dimension: {}, \
                 policy name: {}",
                i.resource_id, i.scalable_dimension, i.policy_name
            )));
        };
        self.delete_policy_record(scope, &rec.policy).await?;
        Ok(json!({}))
    }
}

fn check_step(i: &PutInput) -> Result<(), ScalingError> {
    if i.target_tracking_scaling_policy_configuration.is_some() {
        return Err(ScalingError::invalid(
            "TargetTrackingScalingPolicyConfiguration is not allowed for a StepScaling policy.",
        ));
    }
    let Some(c) = &i.step_scaling_policy_configuration else {
        return Err(ScalingError::invalid(
            "StepScalingPolicyConfiguration is required for a StepScaling policy.",
        ));
    };
    let kind = c.adjustment_type.as_deref().unwrap_or("");
    if !matches!(kind, "ChangeInCapacity" | "PercentChangeInCapacity" | "ExactCapacity") {
        return Err(ScalingError::invalid(
            "AdjustmentType must be ChangeInCapacity, PercentChangeInCapacity or ExactCapacity.",
        ));
    }
    if c.step_adjustments.is_empty() {
        return Err(ScalingError::invalid("StepAdjustments must have at least one step."));
    }
    let unbounded = |lo: bool| {
        c.step_adjustments
            .iter()
            .filter(|s| {
                if lo {
                    s.metric_interval_lower_bound.is_none()
                } else {
                    s.metric_interval_upper_bound.is_none()
                }
            })
            .count()
    };
    if unbounded(true) > 1 || unbounded(false) > 1 {
        return Err(ScalingError::invalid(
            "At most one step adjustment may have a null lower bound, and one a null upper bound.",
        ));
    }
    let mut steps = c.step_adjustments.clone();
    steps.sort_by(|a, b| {
        let k = |s: &StepAdjustment| s.metric_interval_lower_bound.unwrap_or(f64::NEG_INFINITY);
        k(a).total_cmp(&k(b))
    });
    for w in steps.windows(2) {
        if w[0].metric_interval_upper_bound != w[1].metric_interval_lower_bound {
            return Err(ScalingError::invalid(
                "Step adjustments must not overlap or leave gaps: each step's upper bound is the next one's lower bound.",
            ));
        }
    }
    if c.metric_aggregation_type
        .as_deref()
        .is_some_and(|m| !matches!(m, "Average" | "Minimum" | "Maximum"))
    {
        return Err(ScalingError::invalid(
            "MetricAggregationType must be Average, Minimum or Maximum.",
        ));
    }
    Ok(())
}

fn check_tracking(i: &PutInput) -> Result<(), ScalingError> {
    if i.step_scaling_policy_configuration.is_some() {
        return Err(ScalingError::invalid(
            "StepScalingPolicyConfiguration is not allowed for a TargetTrackingScaling policy.",
        ));
    }
    let Some(t) = &i.target_tracking_scaling_policy_configuration else {
        return Err(ScalingError::invalid(
            "TargetTrackingScalingPolicyConfiguration is required for a TargetTrackingScaling policy.",
        ));
    };
    if t.target_value <= 0.0 || !t.target_value.is_finite() {
        return Err(ScalingError::invalid("TargetValue must be greater than 0."));
    }
    for cd in [t.scale_in_cooldown, t.scale_out_cooldown].into_iter().flatten() {
        if cd < 0 {
            return Err(ScalingError::invalid("Cooldowns must not be negative."));
        }
    }
    match (&t.predefined_metric_specification, &t.customized_metric_specification) {
        (Some(_), Some(_)) | (None, None) => Err(ScalingError::invalid(
            "Exactly one of PredefinedMetricSpecification and CustomizedMetricSpecification is required.",
        )),
        _ => Ok(()),
    }
}

/// The metric a target tracking policy follows, as PutMetricAlarm members.
fn tracked_metric(
    policy: &ScalingPolicy,
    t: &TrackingConfiguration,
) -> Result<serde_json::Map<String, Value>, ScalingError> {
    let (cluster, service) = super::service_of(&policy.resource_id)?;
    let dims = json!([{"Name": "ClusterName", "Value": cluster}, {"Name": "ServiceName", "Value": service}]);
    let v = if let Some(p) = t
        .predefined_metric_specification
        .as_ref()
        .filter(|p| p.predefined_metric_type == "ALBRequestCountPerTarget")
    {
        requests_per_target(p)?
    } else if let Some(p) = &t.predefined_metric_specification {
        let name = match p.predefined_metric_type.as_str() {
            "ECSServiceAverageCPUUtilization" | "ECSServiceAverageCPUUtilizationHighResolution" => "CPUUtilization",
            "ECSServiceAverageMemoryUtilization" | "ECSServiceAverageMemoryUtilizationHighResolution" => {
                "MemoryUtilization"
            }
            other => {
                return Err(ScalingError::invalid(format!(
                "Unsupported predefined metric type {other} for ECS: Gantry tracks ECSServiceAverageCPUUtilization, \
                     ECSServiceAverageMemoryUtilization (and their HighResolution forms) and ALBRequestCountPerTarget."
            )))
            }
        };
        json!({"Namespace": "AWS/ECS", "MetricName": name, "Dimensions": dims, "Statistic": "Average", "Period": HIGH_PERIOD_S})
    } else {
        let c = t.customized_metric_specification.clone().unwrap_or_default();
        if let Some(metrics) = c.get("Metrics") {
            json!({"Metrics": metrics})
        } else {
            let mut m = json!({"Period": HIGH_PERIOD_S});
            for k in ["Namespace", "MetricName", "Dimensions", "Statistic", "Unit"] {
                if let Some(v) = c.get(k) {
                    m[k] = v.clone();
                }
            }
            m
        }
    };
    Ok(v.as_object().expect("object").clone())
}

/// ALBRequestCountPerTarget: requests per healthy target per minute (AWS's meaning of the
/// target value), from 10-second sums of AWS/ApplicationELB RequestCountPerTarget.
fn requests_per_target(p: &Predefined) -> Result<Value, ScalingError> {
    let label = p.resource_label.as_deref().ok_or_else(|| {
        ScalingError::invalid("ResourceLabel is required for ALBRequestCountPerTarget: app/LB/ID/targetgroup/TG/ID.")
    })?;
    let group = match label.split_once("/targetgroup/") {
        Some((lb, tg)) if lb.starts_with("app/") && tg.split('/').count() == 2 => format!("targetgroup/{tg}"),
        _ => {
            return Err(ScalingError::invalid(format!(
                "ResourceLabel {label} is not of the form app/LB/ID/targetgroup/TG/ID."
            )))
        }
    };
    Ok(json!({"Metrics": [
        {"Id": "requests", "ReturnData": false, "MetricStat": {
            "Metric": {"Namespace": "AWS/ApplicationELB", "MetricName": "RequestCountPerTarget",
                       "Dimensions": [{"Name": "TargetGroup", "Value": group}]},
            "Period": HIGH_PERIOD_S, "Stat": "Sum"}},
        {"Id": "per_minute", "Expression": format!("requests * {}", 60 / HIGH_PERIOD_S),
         "Label": "RequestCountPerTarget per minute"},
    ]}))
}
