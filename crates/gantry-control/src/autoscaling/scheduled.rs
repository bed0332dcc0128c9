//! Scheduled actions: PutScheduledAction, DescribeScheduledActions, DeleteScheduledAction,
//! and the controller's part: at each action's time, the target's minimum and maximum change
//! (the next pass then brings the desired count within them).

use super::schedule::{self, Schedule};
use super::{check_ecs, escape, paginate, parse, scope_prefix, target_key, AutoScaling, ScalingError, TargetRecord};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use gantry_types::arn::Scope;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TargetAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_capacity: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_capacity: Option<i64>,
}

/// A scheduled action as DescribeScheduledActions shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScheduledAction {
    pub scheduled_action_name: String,
    #[serde(rename = "ScheduledActionARN")]
    pub scheduled_action_arn: String,
    pub service_namespace: String,
    pub schedule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    pub resource_id: String,
    pub scalable_dimension: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scalable_target_action: Option<TargetAction>,
    pub creation_time: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduledRecord {
    pub action: ScheduledAction,
    /// When it fires next (ms); None once it never will.
    pub next_ms: Option<i64>,
}

fn scheduled_key(scope: &Scope, resource: &str, name: &str) -> String {
    format!("{}scheduled/{}/{}", scope_prefix(scope), escape(resource), escape(name))
}

fn time_zone(a: &ScheduledAction) -> Result<Tz, ScalingError> {
    let name = a.timezone.as_deref().unwrap_or("UTC");
    name.parse()
        .map_err(|_| ScalingError::invalid(format!("Timezone {name} is not an IANA time zone name.")))
}

fn at_ms(t: Option<f64>) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis((t? * 1000.0) as i64)
}

/// When the action fires next after `after_ms`, within its start and end.
fn next_run(a: &ScheduledAction, s: &Schedule, after_ms: i64) -> Result<Option<i64>, ScalingError> {
    let tz = time_zone(a)?;
    let after = DateTime::from_timestamp_millis(after_ms).unwrap_or_default();
    let start = at_ms(a.start_time);
    let anchor = start.unwrap_or_else(|| at_ms(Some(a.creation_time)).unwrap_or(after));
    let from = start
        .filter(|s| *s > after)
        .map(|s| s - chrono::Duration::milliseconds(1))
        .unwrap_or(after);
    let next = schedule::next_after(s, tz, anchor, from);
    Ok(next
        .filter(|t| at_ms(a.end_time).is_none_or(|e| *t <= e))
        .map(|t| t.timestamp_millis()))
}

impl AutoScaling {
    pub async fn put_scheduled_action(&self, scope: &Scope, input: Value) -> Result<Value, ScalingError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct In {
            service_namespace: String,
            schedule: Option<String>,
            timezone: Option<String>,
            scheduled_action_name: String,
            resource_id: String,
            scalable_dimension: String,
            start_time: Option<f64>,
            end_time: Option<f64>,
            scalable_target_action: Option<TargetAction>,
        }
        let i: In = parse(input)?;
        check_ecs(&i.service_namespace, Some(&i.scalable_dimension))?;
        self.target(scope, &i.resource_id).await?;
        let key = scheduled_key(scope, &i.resource_id, &i.scheduled_action_name);
        let existing = self.records.load::<ScheduledRecord>(&key).await?.map(|(r, _)| r.action);
        let schedule = i
            .schedule
            .clone()
            .or(existing.as_ref().map(|e| e.schedule.clone()))
            .ok_or_else(|| ScalingError::invalid("Schedule is required for a new scheduled action."))?;
        let parsed = schedule::parse(&schedule).map_err(|m| ScalingError::invalid(format!("Invalid schedule: {m}")))?;
        if let Some(t) = &i.scalable_target_action {
            if let (Some(min), Some(max)) = (t.min_capacity, t.max_capacity) {
                if min > max {
                    return Err(ScalingError::invalid("MinCapacity cannot be greater than MaxCapacity."));
                }
            }
        }
        if let (Some(s), Some(e)) = (i.start_time, i.end_time) {
            if s >= e {
                return Err(ScalingError::invalid("StartTime must be before EndTime."));
            }
        }
        let now_ms = self.clock.now_ms();
        let action = ScheduledAction {
            scheduled_action_name: i.scheduled_action_name.clone(),
            scheduled_action_arn: existing
                .as_ref()
                .map(|e| e.scheduled_action_arn.clone())
                .unwrap_or_else(|| {
                    format!(
                        "arn:aws:autoscaling:{}:{}:scheduledAction:{}:resource/ecs/{}:scheduledActionName/{}",
                        scope.region,
                        scope.account,
                        crate::random_uuid(),
                        i.resource_id,
                        i.scheduled_action_name
                    )
                }),
            service_namespace: "ecs".into(),
            schedule,
            timezone: i
                .timezone
                .clone()
                .or(existing.as_ref().and_then(|e| e.timezone.clone())),
            resource_id: i.resource_id.clone(),
            scalable_dimension: i.scalable_dimension.clone(),
            start_time: i.start_time,
            end_time: i.end_time,
            scalable_target_action: i.scalable_target_action.clone(),
            creation_time: existing
                .as_ref()
                .map(|e| e.creation_time)
                .unwrap_or(now_ms as f64 / 1000.0),
        };
        let next_ms = next_run(&action, &parsed, now_ms)?;
        let rec = ScheduledRecord { action, next_ms };
        self.records
            .update(&key, |_: Option<ScheduledRecord>| {
                Ok::<_, ScalingError>((Some(rec.clone()), ()))
            })
            .await?;
        Ok(json!({}))
    }

    pub async fn describe_scheduled_actions(&self, scope: &Scope, input: Value) -> Result<Value, ScalingError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct In {
            scheduled_action_names: Option<Vec<String>>,
            service_namespace: String,
            resource_id: Option<String>,
            scalable_dimension: Option<String>,
            max_results: Option<i64>,
            next_token: Option<String>,
        }
        let i: In = parse(input)?;
        check_ecs(&i.service_namespace, i.scalable_dimension.as_deref())?;
        let all: Vec<ScheduledRecord> = self.records.list(&format!("{}scheduled/", scope_prefix(scope))).await?;
        let actions: Vec<ScheduledAction> = all
            .into_iter()
            .map(|r| r.action)
            .filter(|a| {
                i.resource_id.as_ref().is_none_or(|r| &a.resource_id == r)
                    && i.scheduled_action_names
                        .as_ref()
                        .is_none_or(|n| n.contains(&a.scheduled_action_name))
            })
            .collect();
        paginate(
            "ScheduledActions",
            actions,
            |a| a.scheduled_action_arn.clone(),
            i.max_results,
            i.next_token,
        )
    }

    pub async fn delete_scheduled_action(&self, scope: &Scope, input: Value) -> Result<Value, ScalingError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct In {
            service_namespace: String,
            scheduled_action_name: String,
            resource_id: String,
            scalable_dimension: String,
        }
        let i: In = parse(input)?;
        check_ecs(&i.service_namespace, Some(&i.scalable_dimension))?;
        let key = scheduled_key(scope, &i.resource_id, &i.scheduled_action_name);
        if self.records.load::<ScheduledRecord>(&key).await?.is_none() {
            return Err(ScalingError::not_found(format!(
                "No scheduled action found for service namespace: ecs, resource ID: {}, scalable dimension: {}, \
                 scheduled action name: {}",
                i.resource_id, i.scalable_dimension, i.scheduled_action_name
            )));
        }
        self.records.delete(&key).await?;
        Ok(json!({}))
    }

    pub(super) async fn scheduled_of(
        &self,
        scope: &Scope,
        resource: &str,
    ) -> Result<Vec<ScheduledRecord>, ScalingError> {
        Ok(self
            .records
            .list(&format!("{}scheduled/{}/", scope_prefix(scope), escape(resource)))
            .await?)
    }

    /// Runs those of the target's scheduled actions (`actions`) that are due. Returns whether
    /// one ran.
    pub(super) async fn run_scheduled(
        &self,
        scope: &Scope,
        t: &TargetRecord,
        actions: &[ScheduledRecord],
        now_ms: i64,
    ) -> Result<bool, ScalingError> {
        let mut ran = false;
        for rec in actions {
            let Some(due) = rec.next_ms.filter(|n| *n <= now_ms) else {
                continue;
            };
            let a = &rec.action;
            let parsed = schedule::parse(&a.schedule).map_err(ScalingError::invalid)?;
            let next_ms = next_run(a, &parsed, now_ms.max(due))?;
            let key = scheduled_key(scope, &a.resource_id, &a.scheduled_action_name);
            let advanced = ScheduledRecord {
                action: a.clone(),
                next_ms,
            };
            self.records
                .update(&key, |_: Option<ScheduledRecord>| {
                    Ok::<_, ScalingError>((Some(advanced.clone()), ()))
                })
                .await?;
            if t.target.suspended_state.scheduled_scaling_suspended {
                continue;
            }
            let Some(change) = &a.scalable_target_action else {
                continue;
            };
            self.apply_bounds(scope, &t.target.resource_id, change).await?;
            let description = match (change.min_capacity, change.max_capacity) {
                (Some(min), Some(max)) => format!("Setting min capacity to {min} and max capacity to {max}"),
                (Some(min), None) => format!("Setting min capacity to {min}"),
                (None, Some(max)) => format!("Setting max capacity to {max}"),
                (None, None) => continue,
            };
            let cause = format!("scheduled action name {} was triggered", a.scheduled_action_name);
            let done = format!("Successfully {}.", description.replacen("Setting", "set", 1));
            self.record(scope, &t.target.resource_id, &description, &cause, &done)
                .await?;
            ran = true;
        }
        Ok(ran)
    }

    async fn apply_bounds(&self, scope: &Scope, resource: &str, change: &TargetAction) -> Result<(), ScalingError> {
        self.records
            .update(&target_key(scope, resource), |cur: Option<TargetRecord>| {
                let next = cur.map(|mut r| {
                    let t = &mut r.target;
                    t.min_capacity = change.min_capacity.unwrap_or(t.min_capacity);
                    t.max_capacity = change.max_capacity.unwrap_or(t.max_capacity);
                    // A minimum above the maximum lifts the maximum (bounds stay ordered).
                    t.max_capacity = t.max_capacity.max(t.min_capacity);
                    r
                });
                Ok::<_, ScalingError>((next, ()))
            })
            .await
    }
}
