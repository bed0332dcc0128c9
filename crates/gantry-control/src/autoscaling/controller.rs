//! The leader's scaling pass (every few seconds, after the alarms are evaluated): keeps each
//! scalable target's service within its bounds, then lets its policies act on their alarms.
//! Scale-out takes the largest capacity any policy asks for; scale-in happens only when no
//! policy asks to scale out, and by the least any policy asks for.

use super::decide::{self, Cooldowns};
use super::policies::{policy_key, ScalingPolicy, DEFAULT_COOLDOWN_S};
use super::scheduled::ScheduledRecord;
use super::{service_of, AutoScaling, PolicyRecord, ScalingError, TargetRecord, PREFIX};
use crate::services::UpdateServiceRequest;
use gantry_types::arn::Scope;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// What one policy asks for, and why.
struct Proposal {
    capacity: i64,
    out: bool,
    cause: String,
    policy: ScalingPolicy,
    cooldowns: Cooldowns,
}

/// A target's records by (account, region, resource id).
type ByResource<T> = HashMap<(String, String, String), Vec<T>>;

/// One listing of everything under the prefix, sorted by kind: each pass reads the store once.
struct Listed {
    targets: Vec<(Scope, TargetRecord)>,
    policies: ByResource<PolicyRecord>,
    scheduled: ByResource<ScheduledRecord>,
}

impl Listed {
    fn of(kvs: Vec<gantry_store::KeyValue>) -> Listed {
        let mut l = Listed {
            targets: vec![],
            policies: HashMap::new(),
            scheduled: HashMap::new(),
        };
        for kv in kvs {
            let mut parts = kv.key[PREFIX.len()..].splitn(4, '/');
            let (Some(account), Some(region), Some(kind)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let (account, region) = (account.to_string(), region.to_string());
            let unreadable = || tracing::warn!(key = %kv.key, "unreadable autoscaling record");
            match kind {
                "targets" => match serde_json::from_slice::<TargetRecord>(&kv.value) {
                    Ok(t) => l.targets.push((Scope { account, region }, t)),
                    Err(_) => unreadable(),
                },
                "policies" => match serde_json::from_slice::<PolicyRecord>(&kv.value) {
                    Ok(p) => {
                        let key = (account, region, p.policy.resource_id.clone());
                        l.policies.entry(key).or_default().push(p);
                    }
                    Err(_) => unreadable(),
                },
                "scheduled" => match serde_json::from_slice::<ScheduledRecord>(&kv.value) {
                    Ok(s) => {
                        let key = (account, region, s.action.resource_id.clone());
                        l.scheduled.entry(key).or_default().push(s);
                    }
                    Err(_) => unreadable(),
                },
                _ => {}
            }
        }
        l
    }
}

/// One pass over every scalable target. Returns how many services it resized.
pub async fn run_once(a: &AutoScaling) -> Result<usize, ScalingError> {
    let (kvs, _) = a
        .records
        .store
        .list(PREFIX)
        .await
        .map_err(|e| ScalingError::internal(e.to_string()))?;
    let now_ms = a.clock.now_ms();
    let listed = Listed::of(kvs);
    let mut resized = 0;
    let mut scopes = std::collections::BTreeSet::new();
    for (scope, t) in &listed.targets {
        let key = (
            scope.account.clone(),
            scope.region.clone(),
            t.target.resource_id.clone(),
        );
        let policies = listed.policies.get(&key).map(Vec::as_slice).unwrap_or_default();
        let scheduled = listed.scheduled.get(&key).map(Vec::as_slice).unwrap_or_default();
        match scale_target(a, scope, t, (policies, scheduled), now_ms).await {
            Ok(true) => resized += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!(target = %t.target.resource_id, error = %e, "scaling"),
        }
        scopes.insert((scope.account.clone(), scope.region.clone()));
    }
    if now_ms - a.pruned_at.load(Ordering::Relaxed) >= 600_000 {
        a.pruned_at.store(now_ms, Ordering::Relaxed);
        for (account, region) in scopes {
            a.prune_activities(&Scope { account, region }, now_ms).await?;
        }
    }
    Ok(resized)
}

async fn scale_target(
    a: &AutoScaling,
    scope: &Scope,
    t: &TargetRecord,
    (policies, scheduled): (&[PolicyRecord], &[ScheduledRecord]),
    now_ms: i64,
) -> Result<bool, ScalingError> {
    // Scheduled actions first: they move the bounds this pass then honours.
    let reloaded;
    let t = if a.run_scheduled(scope, t, scheduled, now_ms).await? {
        reloaded = a.target(scope, &t.target.resource_id).await?;
        &reloaded
    } else {
        t
    };
    let target = &t.target;
    let (cluster, service) = service_of(&target.resource_id)?;
    let Ok((_, svc, _)) = a.control.service_record(scope, Some(cluster), service).await else {
        return Ok(false); // the service is gone: nothing to scale
    };
    if svc.service.status != "ACTIVE" {
        return Ok(false);
    }
    let current = svc.service.desired_count;
    let running = svc.service.running_count;
    let (min, max) = (target.min_capacity, target.max_capacity);
    let bounded = decide::clamp(current, min, max);
    if bounded != current {
        let cause = format!(
            "the desired count {current} was outside the scalable target's bounds (minimum {min}, maximum {max})"
        );
        set_desired(a, scope, &target.resource_id, bounded, &cause).await?;
        return Ok(true);
    }
    let mut out: Vec<Proposal> = Vec::new();
    let mut ins: Vec<Proposal> = Vec::new();
    for p in policies {
        let proposal = match p.policy.policy_type.as_str() {
            "TargetTrackingScaling" => track(a, scope, p, (current, running), now_ms).await?,
            _ => step(a, scope, p, current, now_ms).await?,
        };
        if let Some(mut pr) = proposal {
            pr.capacity = decide::clamp(pr.capacity, min, max);
            if pr.out && pr.capacity > current && !target.suspended_state.dynamic_scaling_out_suspended {
                out.push(pr);
            } else if !pr.out && pr.capacity < current && !target.suspended_state.dynamic_scaling_in_suspended {
                ins.push(pr);
            }
        }
    }
    let chosen = match out.into_iter().max_by_key(|p| p.capacity) {
        Some(p) => Some((p, true)),
        None => ins.into_iter().max_by_key(|p| p.capacity).map(|p| (p, false)),
    };
    let Some((mut p, scaling_out)) = chosen else {
        return Ok(false);
    };
    set_desired(a, scope, &target.resource_id, p.capacity, &p.cause).await?;
    if scaling_out {
        p.cooldowns.scale_out = Some(now_ms);
    } else {
        p.cooldowns.scale_in = Some(now_ms);
    }
    let key = policy_key(scope, &p.policy.resource_id, &p.policy.policy_name);
    let cooldowns = p.cooldowns.clone();
    a.records
        .update(&key, |cur: Option<PolicyRecord>| {
            let next = cur.map(|mut r| {
                r.cooldowns = cooldowns.clone();
                r
            });
            Ok::<_, ScalingError>((next, ()))
        })
        .await?;
    Ok(true)
}

fn cooldown_of(p: &ScalingPolicy, scaling_out: bool) -> i64 {
    if let Some(t) = &p.target_tracking_scaling_policy_configuration {
        let c = if scaling_out {
            t.scale_out_cooldown
        } else {
            t.scale_in_cooldown
        };
        return c.unwrap_or(DEFAULT_COOLDOWN_S);
    }
    p.step_scaling_policy_configuration
        .as_ref()
        .and_then(|s| s.cooldown)
        .unwrap_or(DEFAULT_COOLDOWN_S)
}

fn cause(alarm: &str, policy: &str) -> String {
    format!("monitor alarm {alarm} in state ALARM triggered policy {policy}")
}

/// Target tracking: AlarmHigh in ALARM scales out to where the metric would meet the target;
/// AlarmLow in ALARM scales in toward it, a tenth at a time.
async fn track(
    a: &AutoScaling,
    scope: &Scope,
    p: &PolicyRecord,
    (current, running): (i64, i64),
    now_ms: i64,
) -> Result<Option<Proposal>, ScalingError> {
    let Some(t) = &p.policy.target_tracking_scaling_policy_configuration else {
        return Ok(None);
    };
    for alarm_ref in &p.policy.alarms {
        let Some(alarm) = a.alarms.get(scope, &alarm_ref.alarm_name).await? else {
            continue;
        };
        if alarm.state_value != "ALARM" || !alarm.actions_enabled {
            continue;
        }
        let Some(metric) = a.alarms.latest_value(scope, &alarm, now_ms)? else {
            continue;
        };
        let high = alarm_ref.alarm_name.contains("-AlarmHigh-");
        let capacity = if high {
            if p.cooldowns.scaling_out(now_ms, cooldown_of(&p.policy, true)) && running < current {
                continue;
            }
            decide::tracked(current, metric, t.target_value)
        } else {
            let cd_in = cooldown_of(&p.policy, false);
            let cd_out = cooldown_of(&p.policy, true);
            if !p.cooldowns.scale_in_allowed(now_ms, cd_in, cd_out) {
                continue;
            }
            decide::scaled_in(current, decide::tracked(current, metric, t.target_value))
        };
        return Ok(Some(Proposal {
            capacity,
            out: high,
            cause: cause(&alarm.alarm_name, &p.policy.policy_name),
            policy: p.policy.clone(),
            cooldowns: p.cooldowns.clone(),
        }));
    }
    Ok(None)
}

/// Step scaling: an alarm naming the policy, in ALARM, adjusts by the step its breach falls in,
/// once per cooldown.
async fn step(
    a: &AutoScaling,
    scope: &Scope,
    p: &PolicyRecord,
    current: i64,
    now_ms: i64,
) -> Result<Option<Proposal>, ScalingError> {
    let Some(c) = &p.policy.step_scaling_policy_configuration else {
        return Ok(None);
    };
    let cooldown = c.cooldown.unwrap_or(DEFAULT_COOLDOWN_S) * 1000;
    let last = p.cooldowns.scale_out.into_iter().chain(p.cooldowns.scale_in).max();
    if last.is_some_and(|t| now_ms < t + cooldown) {
        return Ok(None);
    }
    for alarm in a.alarms.with_action(scope, &p.policy.policy_arn).await? {
        if alarm.state_value != "ALARM" || !alarm.actions_enabled {
            continue;
        }
        let Some(metric) = a.alarms.latest_value(scope, &alarm, now_ms)? else {
            continue;
        };
        let Some(s) = decide::step_for(&c.step_adjustments, metric - alarm.threshold) else {
            continue;
        };
        let kind = c.adjustment_type.as_deref().unwrap_or("ChangeInCapacity");
        let capacity = decide::adjusted(current, kind, s.scaling_adjustment, c.min_adjustment_magnitude);
        return Ok(Some(Proposal {
            capacity,
            out: capacity > current,
            cause: cause(&alarm.alarm_name, &p.policy.policy_name),
            policy: p.policy.clone(),
            cooldowns: p.cooldowns.clone(),
        }));
    }
    Ok(None)
}

async fn set_desired(a: &AutoScaling, scope: &Scope, resource: &str, to: i64, cause: &str) -> Result<(), ScalingError> {
    let (cluster, service) = service_of(resource)?;
    let req = UpdateServiceRequest {
        cluster: Some(cluster.to_string()),
        service: Some(service.to_string()),
        desired_count: Some(to),
        ..Default::default()
    };
    a.control
        .update_service(scope, req)
        .await
        .map_err(|e| ScalingError::internal(format!("setting the desired count of {resource}: {e}")))?;
    tracing::info!(resource, desired = to, cause, "scaled");
    a.record_activity(scope, resource, to, cause).await
}
