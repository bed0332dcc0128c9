//! Service deployments and service revisions (ListServiceDeployments,
//! DescribeServiceDeployments, DescribeServiceRevisions, StopServiceDeployment): the history of
//! a service's deployments as ECS reports it. Each deployment the service record holds gets a
//! history entry, kept in the same record (so it is written in the same compare-and-swap as
//! the change it reports), at most `MAX_HISTORY` of them; `sync` derives each entry's status
//! from the deployments every controller pass.

use crate::services::ServiceRecord;
use crate::traffic_shift::TrafficShift;
use crate::Control;
use gantry_types::arn::Scope;
use gantry_types::model::{Deployment, Failure};
use gantry_types::EcsError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const MAX_HISTORY: usize = 50;

/// One deployment's history: its ServiceDeployment and the ServiceRevision it deploys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub deployment_id: String,
    pub service_deployment: Value,
    pub service_revision: Value,
    /// The deployment carrying out this one's rollback, once it is rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_by: Option<String>,
}

/// Drops null members at every depth: ECS omits absent members rather than sending null.
fn compact(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, compact(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(compact).collect()),
        other => other,
    }
}

fn short(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

fn arn(rec: &ServiceRecord, kind: &str, deployment_id: &str) -> String {
    format!(
        "arn:aws:ecs:{}:{}:{kind}/{}/{}/{}",
        rec.region,
        rec.account,
        rec.cluster,
        rec.service.service_name,
        short(deployment_id)
    )
}

fn new_entry(rec: &ServiceRecord, d: &Deployment, source: Option<&HistoryEntry>) -> HistoryEntry {
    let revision_arn = arn(rec, "service-revision", &d.id);
    let svc = &rec.service;
    let revision = json!({
        "serviceRevisionArn": revision_arn, "serviceArn": svc.service_arn, "clusterArn": svc.cluster_arn,
        "taskDefinition": d.task_definition, "launchType": (!d.launch_type.is_empty()).then(|| d.launch_type.clone()),
        "capacityProviderStrategy": svc.capacity_provider_strategy, "platformVersion": d.platform_version,
        "platformFamily": d.platform_family, "loadBalancers": svc.load_balancers,
        "networkConfiguration": d.network_configuration, "createdAt": d.created_at,
    });
    let sources: Vec<Value> = source
        .map(|s| vec![json!({"arn": s.service_revision["serviceRevisionArn"]})])
        .unwrap_or_default();
    let deployment = json!({
        "serviceDeploymentArn": arn(rec, "service-deployment", &d.id), "serviceArn": svc.service_arn,
        "clusterArn": svc.cluster_arn, "createdAt": d.created_at, "startedAt": d.created_at, "updatedAt": d.created_at,
        "sourceServiceRevisions": sources, "status": "PENDING",
        "targetServiceRevision": {"arn": revision_arn},
        "deploymentConfiguration": svc.deployment_configuration,
    });
    HistoryEntry {
        deployment_id: d.id.clone(),
        service_deployment: compact(deployment),
        service_revision: compact(revision),
        rolled_back_by: None,
    }
}

/// Brings the history up to date with the record's deployments (pure; called by every writer
/// of the record that changes deployments).
pub fn sync(r: &mut ServiceRecord, shift: Option<&TrafficShift>, now: f64) {
    let deployments = r.service.deployments.clone();
    for d in &deployments {
        let carries_rollback = r.history.iter().any(|h| h.rolled_back_by.as_deref() == Some(&d.id));
        if !carries_rollback && !r.history.iter().any(|h| h.deployment_id == d.id) {
            let source = r
                .history
                .iter()
                .rev()
                .find(|h| h.service_deployment["status"] == "SUCCESSFUL");
            let e = new_entry(r, d, source);
            r.history.push(e);
        }
    }
    let find = |id: &str| deployments.iter().find(|d| d.id == id);
    for h in &mut r.history {
        let sd = &mut h.service_deployment;
        let old = sd["status"].as_str().unwrap_or("").to_string();
        // Counts follow the deployment while the record holds it, finished or not (the pass
        // that completes it may have counted before its last task was seen running).
        if let Some(d) = find(&h.deployment_id) {
            sd["targetServiceRevision"]["requestedTaskCount"] = json!(d.desired_count);
            sd["targetServiceRevision"]["runningTaskCount"] = json!(d.running_count);
            sd["targetServiceRevision"]["pendingTaskCount"] = json!(d.pending_count);
        }
        if matches!(
            old.as_str(),
            "SUCCESSFUL" | "STOPPED" | "ROLLBACK_SUCCESSFUL" | "ROLLBACK_FAILED"
        ) {
            continue;
        }
        let (status, reason) = match (&h.rolled_back_by, find(&h.deployment_id)) {
            (Some(by), _) => match find(by) {
                Some(b) if b.status == "PRIMARY" && b.rollout_state == "COMPLETED" => ("ROLLBACK_SUCCESSFUL", None),
                Some(b) if b.rollout_state == "FAILED" => ("ROLLBACK_FAILED", b.rollout_state_reason.clone()),
                _ => ("ROLLBACK_IN_PROGRESS", None),
            },
            (None, Some(d)) if d.rollout_state == "COMPLETED" => ("SUCCESSFUL", None),
            (None, Some(d)) if d.rollout_state == "FAILED" => ("STOPPED", d.rollout_state_reason.clone()),
            (None, Some(d)) if d.status == "PRIMARY" => ("IN_PROGRESS", None),
            _ => ("STOPPED", Some("Superseded by a newer deployment.".to_string())),
        };
        if status != old {
            sd["status"] = json!(status);
            sd["updatedAt"] = json!(now);
            if let Some(r) = reason {
                sd["statusReason"] = json!(r);
            }
            match status {
                "SUCCESSFUL" | "ROLLBACK_SUCCESSFUL" | "ROLLBACK_FAILED" => sd["finishedAt"] = json!(now),
                "STOPPED" => sd["stoppedAt"] = json!(now),
                _ => {}
            }
        }
        let stage = shift.filter(|s| s.deployment == h.deployment_id);
        if let Some(s) = stage {
            sd["lifecycleStage"] = json!(s.stage);
            sd["targetServiceRevision"]["requestedProductionTrafficWeight"] = json!(s.green_weight);
        }
    }
    let excess = r.history.len().saturating_sub(MAX_HISTORY);
    r.history.drain(..excess);
    let primary = deployments.iter().find(|d| d.status == "PRIMARY").map(|d| d.id.clone());
    let current = primary.and_then(|id| {
        // A deployment carrying a rollback reports as the one it rolls back.
        let h = r
            .history
            .iter()
            .find(|h| h.deployment_id == id || h.rolled_back_by.as_deref() == Some(&id))?;
        h.service_deployment["serviceDeploymentArn"]
            .as_str()
            .map(str::to_string)
    });
    r.service.current_service_deployment = current;
}

/// Marks `failed`'s history entry as rolled back by `by`, with the reason.
pub fn record_rollback(r: &mut ServiceRecord, failed: &str, by: &Deployment, reason: &str, now: f64) {
    let target = arn(r, "service-revision", &by.id);
    let existing = r
        .history
        .iter()
        .find(|h| h.deployment_id == by.id)
        .map(|h| h.service_revision["serviceRevisionArn"].clone());
    if let Some(h) = r.history.iter_mut().find(|h| h.deployment_id == failed) {
        h.rolled_back_by = Some(by.id.clone());
        h.service_deployment["rollback"] = json!({"reason": reason, "startedAt": now,
            "serviceRevisionArn": existing.unwrap_or(json!(target))});
    }
}

/// What a service-deployment or service-revision ARN names: (cluster, service, id).
fn parse_arn<'a>(scope: &Scope, arn: &'a str, kind: &str) -> Option<(&'a str, &'a str, &'a str)> {
    let prefix = format!("arn:aws:ecs:{}:{}:{kind}/", scope.region, scope.account);
    let rest = arn.strip_prefix(&prefix)?;
    let mut p = rest.splitn(3, '/');
    Some((p.next()?, p.next()?, p.next()?))
}

impl Control {
    pub async fn list_service_deployments(&self, scope: &Scope, input: &Value) -> Result<Value, EcsError> {
        let service = input["service"]
            .as_str()
            .ok_or_else(|| EcsError::invalid("service can not be blank."))?;
        let (_, rec, _) = self.service_record(scope, input["cluster"].as_str(), service).await?;
        let max = input["maxResults"].as_i64().unwrap_or(20);
        if !(1..=100).contains(&max) {
            return Err(EcsError::invalid("maxResults must be between 1 and 100."));
        }
        let statuses: Vec<&str> = input["status"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let (after, before) = (
            input["createdAt"]["after"].as_f64(),
            input["createdAt"]["before"].as_f64(),
        );
        let mut found: Vec<&HistoryEntry> = rec
            .history
            .iter()
            .filter(|h| {
                statuses.is_empty() || statuses.contains(&h.service_deployment["status"].as_str().unwrap_or(""))
            })
            .filter(|h| {
                let at = h.service_deployment["createdAt"].as_f64().unwrap_or(0.0);
                after.is_none_or(|a| at >= a) && before.is_none_or(|b| at <= b)
            })
            .collect();
        found.reverse(); // newest first
        let start: usize = match input["nextToken"].as_str() {
            Some(t) => t
                .parse()
                .map_err(|_| EcsError::invalid("The specified nextToken is invalid."))?,
            None => 0,
        };
        let page: Vec<Value> = found
            .iter()
            .skip(start)
            .take(max as usize)
            .map(|h| {
                let sd = &h.service_deployment;
                compact(json!({"serviceDeploymentArn": sd["serviceDeploymentArn"], "serviceArn": sd["serviceArn"],
                       "clusterArn": sd["clusterArn"], "startedAt": sd["startedAt"], "createdAt": sd["createdAt"],
                       "finishedAt": sd.get("finishedAt"), "status": sd["status"], "statusReason": sd.get("statusReason"),
                       "targetServiceRevisionArn": sd["targetServiceRevision"]["arn"]}))
            })
            .collect();
        let next = (start + page.len() < found.len()).then(|| (start + page.len()).to_string());
        Ok(json!({"serviceDeployments": page, "nextToken": next}))
    }

    /// The history entries the ARNs name, and failures for the rest (ECS's "MISSING").
    async fn entries(
        &self,
        scope: &Scope,
        arns: &[String],
        kind: &str,
    ) -> Result<(Vec<HistoryEntry>, Vec<Failure>), EcsError> {
        let (mut found, mut failures) = (vec![], vec![]);
        for a in arns {
            let entry = match parse_arn(scope, a, kind) {
                Some((cluster, service, id)) => match self.service_record(scope, Some(cluster), service).await {
                    Ok((_, rec, _)) => rec.history.into_iter().find(|h| short(&h.deployment_id) == id),
                    Err(_) => None,
                },
                None => None,
            };
            match entry {
                Some(e) => found.push(e),
                None => failures.push(Failure {
                    arn: Some(a.clone()),
                    reason: Some("MISSING".into()),
                    detail: None,
                }),
            }
        }
        Ok((found, failures))
    }

    pub async fn describe_service_deployments(&self, scope: &Scope, arns: &[String]) -> Result<Value, EcsError> {
        let (found, failures) = self.entries(scope, arns, "service-deployment").await?;
        let out: Vec<Value> = found.into_iter().map(|h| h.service_deployment).collect();
        Ok(json!({"serviceDeployments": out, "failures": failures}))
    }

    pub async fn describe_service_revisions(&self, scope: &Scope, arns: &[String]) -> Result<Value, EcsError> {
        let (found, failures) = self.entries(scope, arns, "service-revision").await?;
        let out: Vec<Value> = found.into_iter().map(|h| h.service_revision).collect();
        Ok(json!({"serviceRevisions": out, "failures": failures}))
    }

    /// StopServiceDeployment: an in-progress deployment is rolled back by the controller's
    /// next pass (as if its circuit breaker had tripped).
    pub async fn stop_service_deployment(
        &self,
        scope: &Scope,
        arn: &str,
        stop_type: Option<&str>,
    ) -> Result<Value, EcsError> {
        if let Some(t) = stop_type.filter(|t| *t != "ROLLBACK") {
            return Err(EcsError::invalid(format!(
                "stopType {t} is not supported by Gantry: use ROLLBACK."
            )));
        }
        let not_found = || EcsError::ServiceDeploymentNotFound(format!("Service deployment {arn} not found."));
        let (cluster, service, id) = parse_arn(scope, arn, "service-deployment").ok_or_else(not_found)?;
        let (key, rec, _) = self
            .service_record(scope, Some(cluster), service)
            .await
            .map_err(|_| not_found())?;
        let entry = rec
            .history
            .iter()
            .find(|h| short(&h.deployment_id) == id)
            .ok_or_else(not_found)?;
        let deployment_id = entry.deployment_id.clone();
        self.update_service_record(&key, |r| {
            let d = r.service.deployments.iter().find(|d| d.id == deployment_id);
            let in_progress = d.is_some_and(|d| d.status == "PRIMARY" && d.rollout_state == "IN_PROGRESS");
            let has_previous = r.last_completed.is_some() || r.service.deployments.iter().any(|d| d.status == "ACTIVE");
            if !in_progress || !has_previous {
                return Err(EcsError::Conflict(format!(
                    "Service deployment {arn} is not in progress with a previous revision to roll back to."
                )));
            }
            r.stop_requested = Some(deployment_id.clone());
            if let Some(h) = r.history.iter_mut().find(|h| h.deployment_id == deployment_id) {
                h.service_deployment["status"] = json!("ROLLBACK_REQUESTED");
            }
            Ok(true)
        })
        .await?;
        Ok(json!({"serviceDeploymentArn": arn}))
    }
}
