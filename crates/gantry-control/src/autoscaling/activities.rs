//! Scaling activities: what the controller did and why, in Application Auto Scaling's words.

use super::{check_ecs, parse, AutoScaling, ScalingError, DIMENSION};
use gantry_types::arn::Scope;
use serde::Deserialize;
use serde_json::{json, Value};

const KEEP_MS: i64 = 42 * 86_400_000;
const MAX_ITEMS: usize = 5000;

/// Activities live apart from the targets and policies the controller lists every second.
fn prefix(scope: &Scope) -> String {
    format!("/autoscaling-activities/{}/{}/", scope.account, scope.region)
}

impl AutoScaling {
    /// Records a completed activity: the desired count of `resource` set to `to`, because of
    /// `cause`.
    pub(super) async fn record_activity(
        &self,
        scope: &Scope,
        resource: &str,
        to: i64,
        cause: &str,
    ) -> Result<(), ScalingError> {
        let done = format!("Successfully set desired count to {to}. Change successfully fulfilled by ecs.");
        self.record(
            scope,
            resource,
            &format!("Setting desired count to {to}."),
            cause,
            &done,
        )
        .await
    }

    pub(super) async fn record(
        &self,
        scope: &Scope,
        resource: &str,
        description: &str,
        cause: &str,
        status_message: &str,
    ) -> Result<(), ScalingError> {
        let now = self.clock.now_ms();
        let id = crate::random_uuid();
        let item = json!({
            "ActivityId": id,
            "ServiceNamespace": "ecs",
            "ResourceId": resource,
            "ScalableDimension": DIMENSION,
            "Description": description,
            "Cause": cause,
            "StartTime": now as f64 / 1000.0,
            "EndTime": now as f64 / 1000.0,
            "StatusCode": "Successful",
            "StatusMessage": status_message,
        });
        self.records
            .create(&format!("{}{}", prefix(scope), crate::ordered_key(now)), &item)
            .await?;
        Ok(())
    }

    /// Drops activities older than six weeks, and the oldest beyond `MAX_ITEMS` per region.
    pub(super) async fn prune_activities(&self, scope: &Scope, now_ms: i64) -> Result<(), ScalingError> {
        let (keys, _) = self
            .records
            .store
            .list_keys(&prefix(scope))
            .await
            .map_err(|e| ScalingError::internal(e.to_string()))?;
        let excess = keys.len().saturating_sub(MAX_ITEMS);
        for (n, kv) in keys.iter().enumerate() {
            let stamp = kv.key[prefix(scope).len()..].split('-').next().unwrap_or("");
            let old = stamp.parse::<i64>().is_ok_and(|t| t < now_ms - KEEP_MS);
            if n < excess || old {
                self.records.delete(&kv.key).await?;
            }
        }
        Ok(())
    }
}

pub(super) async fn describe(a: &AutoScaling, scope: &Scope, input: Value) -> Result<Value, ScalingError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase", deny_unknown_fields)]
    struct In {
        service_namespace: String,
        resource_id: Option<String>,
        scalable_dimension: Option<String>,
        max_results: Option<i64>,
        next_token: Option<String>,
        include_not_scaled_activities: Option<bool>,
    }
    let i: In = parse(input)?;
    check_ecs(&i.service_namespace, i.scalable_dimension.as_deref())?;
    let skip: usize = match &i.next_token {
        None => 0,
        Some(t) => t.parse().map_err(|_| ScalingError {
            shape: "InvalidNextTokenException",
            message: format!("Invalid token {t}"),
        })?,
    };
    let mut items: Vec<Value> = a
        .records
        .list::<Value>(&prefix(scope))
        .await?
        .into_iter()
        .filter(|x| i.resource_id.as_ref().is_none_or(|r| x["ResourceId"] == json!(r)))
        .collect();
    // Newest first, as AWS lists them. Gantry records only activities that scaled, so
    // IncludeNotScaledActivities adds nothing.
    let _ = i.include_not_scaled_activities;
    items.reverse();
    let max = i.max_results.unwrap_or(50).clamp(1, 50) as usize;
    let page: Vec<Value> = items.iter().skip(skip).take(max).cloned().collect();
    let mut out = json!({ "ScalingActivities": page });
    if items.len() > skip + max {
        out["NextToken"] = json!((skip + max).to_string());
    }
    Ok(out)
}
