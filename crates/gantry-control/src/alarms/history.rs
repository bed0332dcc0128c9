//! Alarm history (DescribeAlarmHistory) and alarm tags. History items are kept 30 days, at
//! most `MAX_ITEMS` per account and region.

use super::{alarm_key, AlarmRecord, Alarms, MetricAlarm, StateChange, Tag};
use crate::metrics::MetricsError;
use crate::records::{RecordError, Records};
use gantry_types::arn::Scope;
use serde::Deserialize;
use serde_json::{json, Value};

const KEEP_MS: i64 = 30 * 86_400_000;
const MAX_ITEMS: usize = 10_000;

/// History lives apart from the alarms, so the evaluator's listing of every alarm each second
/// does not read it.
const HISTORY: &str = "/cloudwatch-history/";

fn history_prefix(scope: &Scope) -> String {
    format!("{HISTORY}{}/{}/", scope.account, scope.region)
}

async fn append(records: &Records, scope: &Scope, item: Value, now_ms: i64) -> Result<(), MetricsError> {
    let key = format!("{}{}", history_prefix(scope), crate::ordered_key(now_ms));
    records.create(&key, &item).await?;
    Ok(())
}

pub(super) async fn record_configuration(
    records: &Records,
    scope: &Scope,
    alarm: &MetricAlarm,
    summary: &str,
    now_ms: i64,
) -> Result<(), MetricsError> {
    let item = json!({
        "AlarmName": alarm.alarm_name,
        "AlarmType": "MetricAlarm",
        "Timestamp": now_ms as f64 / 1000.0,
        "HistoryItemType": "ConfigurationUpdate",
        "HistorySummary": summary,
        "HistoryData": json!({"version": "1.0", "type": summary, "updatedAlarm": alarm}).to_string(),
    });
    append(records, scope, item, now_ms).await
}

pub(super) async fn record_state(
    records: &Records,
    scope: &Scope,
    before: &MetricAlarm,
    change: &StateChange,
    now_ms: i64,
) -> Result<(), MetricsError> {
    let reason_data: Value = change
        .reason_data
        .as_deref()
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or(Value::Null);
    let data = json!({
        "version": "1.0",
        "oldState": {"stateValue": before.state_value, "stateReason": before.state_reason},
        "newState": {"stateValue": change.state, "stateReason": change.reason, "stateReasonData": reason_data},
    });
    let item = json!({
        "AlarmName": before.alarm_name,
        "AlarmType": "MetricAlarm",
        "Timestamp": now_ms as f64 / 1000.0,
        "HistoryItemType": "StateUpdate",
        "HistorySummary": format!("Alarm updated from {} to {}", before.state_value, change.state),
        "HistoryData": data.to_string(),
    });
    append(records, scope, item, now_ms).await
}

pub(super) async fn describe(records: &Records, scope: &Scope, input: Value) -> Result<Value, MetricsError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase", deny_unknown_fields)]
    struct In {
        alarm_name: Option<String>,
        alarm_types: Option<Vec<String>>,
        history_item_type: Option<String>,
        start_date: Option<f64>,
        end_date: Option<f64>,
        max_records: Option<i64>,
        next_token: Option<String>,
        scan_by: Option<String>,
    }
    let i: In = crate::metrics::parse(input)?;
    let skip: usize = match &i.next_token {
        None => 0,
        Some(t) => t.parse().map_err(|_| MetricsError {
            shape: "InvalidNextToken",
            message: format!("The NextToken {t} is invalid."),
        })?,
    };
    let metric_alarms = i
        .alarm_types
        .as_ref()
        .is_none_or(|t| t.iter().any(|t| t == "MetricAlarm"));
    let mut items: Vec<Value> = records
        .list::<Value>(&history_prefix(scope))
        .await?
        .into_iter()
        .filter(|h| {
            let ts = h["Timestamp"].as_f64().unwrap_or(0.0);
            metric_alarms
                && i.alarm_name.as_ref().is_none_or(|n| h["AlarmName"] == json!(n))
                && i.history_item_type
                    .as_ref()
                    .is_none_or(|t| h["HistoryItemType"] == json!(t))
                && i.start_date.is_none_or(|s| ts >= s)
                && i.end_date.is_none_or(|e| ts <= e)
        })
        .collect();
    if i.scan_by.as_deref() != Some("TimestampAscending") {
        items.reverse();
    }
    let max = i.max_records.unwrap_or(100) as usize;
    let page: Vec<Value> = items.iter().skip(skip).take(max).cloned().collect();
    let mut out = json!({ "AlarmHistoryItems": page });
    if items.len() > skip + max {
        out["NextToken"] = json!((skip + max).to_string());
    }
    Ok(out)
}

/// Drops history older than 30 days, and the oldest beyond `MAX_ITEMS` per scope.
pub(super) async fn prune(records: &Records, now_ms: i64) -> Result<(), MetricsError> {
    let (keys, _) = records.store.list_keys(HISTORY).await.map_err(RecordError::Store)?;
    let mut per_scope: std::collections::HashMap<String, Vec<&str>> = Default::default();
    for kv in &keys {
        if let Some((scope, stamp)) = kv.key.rsplit_once('/') {
            per_scope.entry(scope.to_string()).or_default().push(stamp);
            let ts: i64 = stamp.split('-').next().and_then(|t| t.parse().ok()).unwrap_or(0);
            if ts < now_ms - KEEP_MS {
                records.delete(&kv.key).await?;
            }
        }
    }
    for (scope, mut stamps) in per_scope {
        if stamps.len() > MAX_ITEMS {
            stamps.sort();
            for s in &stamps[..stamps.len() - MAX_ITEMS] {
                records.delete(&format!("{scope}/{s}")).await?;
            }
        }
    }
    Ok(())
}

/// TagResource, UntagResource and ListTagsForResource, for alarms.
pub(super) async fn tags(alarms: &Alarms, scope: &Scope, op: &str, input: Value) -> Result<Value, MetricsError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase", deny_unknown_fields)]
    struct In {
        #[serde(rename = "ResourceARN")]
        resource_arn: String,
        #[serde(default)]
        tags: Vec<Tag>,
        #[serde(default)]
        tag_keys: Vec<String>,
    }
    let i: In = crate::metrics::parse(input)?;
    let prefix = format!("arn:aws:cloudwatch:{}:{}:alarm:", scope.region, scope.account);
    let Some(name) = i.resource_arn.strip_prefix(&prefix) else {
        return Err(MetricsError {
            shape: "ResourceNotFoundException",
            message: format!("{} is not an alarm of this account and region.", i.resource_arn),
        });
    };
    let missing = || MetricsError {
        shape: "ResourceNotFoundException",
        message: format!("Alarm {name} does not exist."),
    };
    let key = alarm_key(scope, name);
    if op == "ListTagsForResource" {
        let (rec, _) = alarms.records.load::<AlarmRecord>(&key).await?.ok_or_else(missing)?;
        return Ok(json!({ "Tags": rec.tags }));
    }
    let found = alarms
        .records
        .update(&key, |cur: Option<AlarmRecord>| {
            let Some(mut rec) = cur else { return Ok((None, false)) };
            if op == "TagResource" {
                for t in &i.tags {
                    rec.tags.retain(|x| x.key != t.key);
                    rec.tags.push(t.clone());
                }
                if rec.tags.len() > 50 {
                    return Err(MetricsError::invalid("An alarm has at most 50 tags."));
                }
            } else {
                rec.tags.retain(|x| !i.tag_keys.contains(&x.key));
            }
            Ok((Some(rec), true))
        })
        .await?;
    if !found {
        return Err(missing());
    }
    Ok(json!({}))
}
