//! CloudWatch metric alarms: PutMetricAlarm, DescribeAlarms(ForMetric), DeleteAlarms,
//! SetAlarmState, Enable/DisableAlarmActions, DescribeAlarmHistory and alarm tags, with the
//! alarms kept in the store and evaluated by the leader's controller (`evaluate_all`) against
//! the metric data.
//!
//! Store layout: `/cloudwatch/<account>/<region>/alarms/<name>` (the alarm as DescribeAlarms
//! shows it, and its tags) and `/cloudwatch-history/<account>/<region>/<ms>-<seq>-<random>`
//! (one item per state or configuration change, kept 30 days).

pub mod evaluate;
mod history;

use crate::metrics::{Metrics, MetricsError};
use crate::records::{RecordError, Records};
use crate::Clock;
use gantry_store::Store;
use gantry_types::arn::Scope;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;

/// Most alarms one account may have in a region (CloudWatch's default quota is higher; each
/// alarm costs an evaluation every 10 seconds here).
const MAX_ALARMS: usize = 5000;
/// A period is evaluated this long after its end, for reports still in flight (usage reports
/// are stamped with the start of what they measured, so they complete a period on arrival).
const REPORT_GRACE_MS: i64 = 1_000;
/// The longest evaluation range: periods times evaluation periods.
const MAX_RANGE_S: i64 = 7 * 86_400;

pub const PREFIX: &str = "/cloudwatch/";

impl From<RecordError> for MetricsError {
    fn from(e: RecordError) -> MetricsError {
        MetricsError::internal(e.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Dimension {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// An alarm as DescribeAlarms shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetricAlarm {
    pub alarm_name: String,
    pub alarm_arn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm_description: Option<String>,
    pub alarm_configuration_updated_timestamp: f64,
    pub actions_enabled: bool,
    #[serde(rename = "OKActions")]
    pub ok_actions: Vec<String>,
    pub alarm_actions: Vec<String>,
    pub insufficient_data_actions: Vec<String>,
    pub state_value: String,
    pub state_reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason_data: Option<String>,
    pub state_updated_timestamp: f64,
    pub state_transitioned_timestamp: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_statistic: Option<String>,
    #[serde(default)]
    pub dimensions: Vec<Dimension>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub evaluation_periods: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapoints_to_alarm: Option<i64>,
    pub threshold: f64,
    pub comparison_operator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub treat_missing_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluate_low_sample_count_percentile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlarmRecord {
    pub alarm: MetricAlarm,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct PutInput {
    alarm_name: String,
    alarm_description: Option<String>,
    actions_enabled: Option<bool>,
    #[serde(rename = "OKActions", default)]
    ok_actions: Vec<String>,
    #[serde(default)]
    alarm_actions: Vec<String>,
    #[serde(default)]
    insufficient_data_actions: Vec<String>,
    metric_name: Option<String>,
    namespace: Option<String>,
    statistic: Option<String>,
    extended_statistic: Option<String>,
    #[serde(default)]
    dimensions: Vec<Dimension>,
    period: Option<i64>,
    unit: Option<String>,
    evaluation_periods: i64,
    datapoints_to_alarm: Option<i64>,
    threshold: Option<f64>,
    comparison_operator: String,
    treat_missing_data: Option<String>,
    evaluate_low_sample_count_percentile: Option<String>,
    metrics: Option<Value>,
    #[serde(default)]
    tags: Vec<Tag>,
}

#[derive(Clone)]
pub struct Alarms {
    records: Records,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    /// When history was last pruned (ms): pruning lists all of it, so it runs every 10 minutes.
    pruned_at: Arc<std::sync::atomic::AtomicI64>,
}

const PRUNE_EVERY_MS: i64 = 600_000;

/// Alarm names may hold '/': keys escape it (and '%') so names never nest.
fn key_segment(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

fn alarm_key(scope: &Scope, name: &str) -> String {
    format!(
        "{PREFIX}{}/{}/alarms/{}",
        scope.account,
        scope.region,
        key_segment(name)
    )
}

fn alarms_prefix(scope: &Scope) -> String {
    format!("{PREFIX}{}/{}/alarms/", scope.account, scope.region)
}

fn not_found(what: String) -> MetricsError {
    MetricsError {
        shape: "ResourceNotFound",
        message: what,
    }
}

impl Alarms {
    pub fn new(store: Arc<dyn Store>, metrics: Metrics, clock: Arc<dyn Clock>) -> Alarms {
        Alarms {
            records: Records::new(store),
            metrics,
            clock,
            pruned_at: Arc::new(std::sync::atomic::AtomicI64::new(0)),
        }
    }

    fn now(&self) -> f64 {
        self.clock.now_ms() as f64 / 1000.0
    }

    pub async fn put_metric_alarm(&self, scope: &Scope, input: Value) -> Result<Value, MetricsError> {
        let input: PutInput = crate::metrics::parse(input)?;
        self.check_actions(scope, &input).await?;
        let now = self.now();
        let arn = format!(
            "arn:aws:cloudwatch:{}:{}:alarm:{}",
            scope.region, scope.account, input.alarm_name
        );
        let config = self.configured(scope, &input, arn, now)?;
        let count = self
            .records
            .store
            .list_keys(&alarms_prefix(scope))
            .await
            .map_err(RecordError::Store)?
            .0
            .len();
        let key = alarm_key(scope, &input.alarm_name);
        let tags = input.tags.clone();
        let created = self
            .records
            .update(&key, |cur: Option<AlarmRecord>| {
                let Some(cur) = cur else {
                    if count >= MAX_ALARMS {
                        return Err(MetricsError {
                            shape: "LimitExceededFault",
                            message: format!("The maximum number of alarms ({MAX_ALARMS}) is reached."),
                        });
                    }
                    let rec = AlarmRecord {
                        alarm: config.clone(),
                        tags: tags.clone(),
                    };
                    return Ok((Some(rec), true));
                };
                // An update keeps the alarm's state and overwrites its configuration.
                let mut alarm = config.clone();
                for (field, value) in [
                    (&mut alarm.state_value, &cur.alarm.state_value),
                    (&mut alarm.state_reason, &cur.alarm.state_reason),
                ] {
                    *field = value.clone();
                }
                alarm.state_reason_data = cur.alarm.state_reason_data.clone();
                alarm.state_updated_timestamp = cur.alarm.state_updated_timestamp;
                alarm.state_transitioned_timestamp = cur.alarm.state_transitioned_timestamp;
                let tags = if tags.is_empty() { cur.tags } else { tags.clone() };
                Ok((Some(AlarmRecord { alarm, tags }), false))
            })
            .await?;
        let summary = if created { "Alarm created" } else { "Alarm updated" };
        history::record_configuration(&self.records, scope, &config, summary, self.clock.now_ms()).await?;
        Ok(json!({}))
    }

    /// The alarm a PutMetricAlarm describes, checked, in its initial state.
    /// Actions Gantry can run: an ALARM action naming an existing Application Auto Scaling
    /// policy of this account and region. SNS, EC2 and OK/INSUFFICIENT_DATA actions are refused.
    async fn check_actions(&self, scope: &Scope, i: &PutInput) -> Result<(), MetricsError> {
        for (list, name) in [
            (&i.ok_actions, "OKActions"),
            (&i.insufficient_data_actions, "InsufficientDataActions"),
        ] {
            if let Some(a) = list.first() {
                return Err(MetricsError::invalid(format!(
                    "The value {a} for parameter {name} is invalid: Gantry runs ALARM actions on scaling policies only \
                     (no SNS or EC2 actions)."
                )));
            }
        }
        for a in &i.alarm_actions {
            let exists = match crate::autoscaling::policy_of_arn(scope, a) {
                Some(key) => self
                    .records
                    .store
                    .get(&key)
                    .await
                    .map_err(RecordError::Store)?
                    .is_some(),
                None => false,
            };
            if !exists {
                return Err(MetricsError::invalid(format!(
                    "The value {a} for parameter AlarmActions is invalid: Gantry runs Application Auto Scaling \
                     policies of this account and region (arn:aws:autoscaling:...:scalingPolicy:...), and no such \
                     policy exists."
                )));
            }
        }
        Ok(())
    }

    fn configured(&self, scope: &Scope, i: &PutInput, arn: String, now: f64) -> Result<MetricAlarm, MetricsError> {
        let single = i.metric_name.is_some() || i.namespace.is_some();
        let metrics = match (&i.metrics, single) {
            (Some(_), true) => {
                return Err(MetricsError::combination(
                    "Metrics cannot be given together with MetricName, Namespace, Statistic or Period.",
                ))
            }
            (Some(m), false) => Some(self.metrics.check_alarm_queries(scope, m.clone())?),
            (None, _) => None,
        };
        let period = match &metrics {
            Some((_, p)) => *p,
            None => check_single(i)?,
        };
        check_evaluation(i, period)?;
        let threshold = i.threshold.ok_or_else(|| {
            MetricsError::missing("The parameter Threshold is required (anomaly detection bands are not supported).")
        })?;
        Ok(MetricAlarm {
            alarm_name: i.alarm_name.clone(),
            alarm_arn: arn,
            alarm_description: i.alarm_description.clone(),
            alarm_configuration_updated_timestamp: now,
            actions_enabled: i.actions_enabled.unwrap_or(true),
            ok_actions: i.ok_actions.clone(),
            alarm_actions: i.alarm_actions.clone(),
            insufficient_data_actions: i.insufficient_data_actions.clone(),
            state_value: "INSUFFICIENT_DATA".into(),
            state_reason: "Unchecked: Initial alarm creation".into(),
            state_reason_data: None,
            state_updated_timestamp: now,
            state_transitioned_timestamp: now,
            metric_name: i.metric_name.clone(),
            namespace: i.namespace.clone(),
            statistic: i.statistic.clone(),
            extended_statistic: i.extended_statistic.clone(),
            dimensions: i.dimensions.clone(),
            period: metrics.is_none().then_some(period),
            unit: i.unit.clone(),
            evaluation_periods: i.evaluation_periods,
            datapoints_to_alarm: i.datapoints_to_alarm,
            threshold,
            comparison_operator: i.comparison_operator.clone(),
            treat_missing_data: i.treat_missing_data.clone(),
            evaluate_low_sample_count_percentile: i.evaluate_low_sample_count_percentile.clone(),
            metrics: metrics.map(|(q, _)| q),
        })
    }

    /// An alarm by name, if it exists.
    pub async fn get(&self, scope: &Scope, name: &str) -> Result<Option<MetricAlarm>, MetricsError> {
        Ok(self
            .records
            .load::<AlarmRecord>(&alarm_key(scope, name))
            .await?
            .map(|(r, _)| r.alarm))
    }

    /// The alarms whose ALARM actions name `action`.
    pub async fn with_action(&self, scope: &Scope, action: &str) -> Result<Vec<MetricAlarm>, MetricsError> {
        Ok(self
            .all(scope)
            .await?
            .into_iter()
            .map(|r| r.alarm)
            .filter(|a| a.alarm_actions.iter().any(|x| x == action))
            .collect())
    }

    /// The alarm's metric over its last complete period (what its actions act on).
    pub fn latest_value(&self, scope: &Scope, a: &MetricAlarm, now_ms: i64) -> Result<Option<f64>, MetricsError> {
        let (queries, period_s, _) = alarm_queries(a);
        let period_ms = period_s * 1000;
        let end = (now_ms - REPORT_GRACE_MS).div_euclid(period_ms) * period_ms;
        let series = self.metrics.alarm_series(scope, queries, end - period_ms, end)?;
        Ok(series.get(&(end - period_ms)).copied())
    }

    async fn all(&self, scope: &Scope) -> Result<Vec<AlarmRecord>, MetricsError> {
        Ok(self.records.list(&alarms_prefix(scope)).await?)
    }

    async fn one(&self, scope: &Scope, name: &str) -> Result<AlarmRecord, MetricsError> {
        match self.records.load::<AlarmRecord>(&alarm_key(scope, name)).await? {
            Some((r, _)) => Ok(r),
            None => Err(not_found(format!("Alarm {name} does not exist."))),
        }
    }

    pub async fn describe_alarms(&self, scope: &Scope, input: Value) -> Result<Value, MetricsError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct In {
            #[serde(default)]
            alarm_names: Vec<String>,
            alarm_name_prefix: Option<String>,
            alarm_types: Option<Vec<String>>,
            children_of_alarm_name: Option<String>,
            parents_of_alarm_name: Option<String>,
            state_value: Option<String>,
            action_prefix: Option<String>,
            max_records: Option<i64>,
            next_token: Option<String>,
        }
        let i: In = crate::metrics::parse(input)?;
        if !i.alarm_names.is_empty() && i.alarm_name_prefix.is_some() {
            return Err(MetricsError::combination(
                "AlarmNames and AlarmNamePrefix cannot be given together.",
            ));
        }
        let metric_alarms_wanted = i
            .alarm_types
            .as_ref()
            .is_none_or(|t| t.iter().any(|t| t == "MetricAlarm"));
        // Gantry has no composite alarms: no alarm has children or parents.
        let related = i.children_of_alarm_name.is_some() || i.parents_of_alarm_name.is_some();
        let max = i.max_records.unwrap_or(50) as usize;
        let mut alarms: Vec<MetricAlarm> = self
            .all(scope)
            .await?
            .into_iter()
            .map(|r| r.alarm)
            .filter(|a| {
                metric_alarms_wanted
                    && !related
                    && (i.alarm_names.is_empty() || i.alarm_names.contains(&a.alarm_name))
                    && i.alarm_name_prefix
                        .as_ref()
                        .is_none_or(|p| a.alarm_name.starts_with(p.as_str()))
                    && i.state_value.as_ref().is_none_or(|s| &a.state_value == s)
                    && i.action_prefix.as_ref().is_none_or(|p| {
                        a.alarm_actions
                            .iter()
                            .chain(&a.ok_actions)
                            .chain(&a.insufficient_data_actions)
                            .any(|x| x.starts_with(p.as_str()))
                    })
                    && i.next_token.as_ref().is_none_or(|t| &a.alarm_name > t)
            })
            .collect();
        alarms.sort_by(|a, b| a.alarm_name.cmp(&b.alarm_name));
        let mut out = json!({"CompositeAlarms": [], "MetricAlarms": []});
        if alarms.len() > max {
            alarms.truncate(max);
            out["NextToken"] = json!(alarms[max - 1].alarm_name);
        }
        out["MetricAlarms"] = serde_json::to_value(&alarms).expect("serialises");
        Ok(out)
    }

    pub async fn describe_alarms_for_metric(&self, scope: &Scope, input: Value) -> Result<Value, MetricsError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct In {
            metric_name: String,
            namespace: String,
            statistic: Option<String>,
            extended_statistic: Option<String>,
            dimensions: Option<Vec<Dimension>>,
            period: Option<i64>,
            unit: Option<String>,
        }
        let i: In = crate::metrics::parse(input)?;
        let sorted = |d: &[Dimension]| {
            let mut v: Vec<(String, String)> = d.iter().map(|d| (d.name.clone(), d.value.clone())).collect();
            v.sort();
            v
        };
        let alarms: Vec<MetricAlarm> = self
            .all(scope)
            .await?
            .into_iter()
            .map(|r| r.alarm)
            .filter(|a| {
                a.metric_name.as_deref() == Some(i.metric_name.as_str())
                    && a.namespace.as_deref() == Some(i.namespace.as_str())
                    && i.statistic.as_ref().is_none_or(|s| a.statistic.as_ref() == Some(s))
                    && i.extended_statistic
                        .as_ref()
                        .is_none_or(|s| a.extended_statistic.as_ref() == Some(s))
                    && i.dimensions.as_ref().is_none_or(|d| sorted(d) == sorted(&a.dimensions))
                    && i.period.is_none_or(|p| a.period == Some(p))
                    && i.unit.as_ref().is_none_or(|u| a.unit.as_ref() == Some(u))
            })
            .collect();
        Ok(json!({ "MetricAlarms": alarms }))
    }

    pub async fn delete_alarms(&self, scope: &Scope, input: Value) -> Result<Value, MetricsError> {
        let names = names_of(input)?;
        let mut missing = Vec::new();
        for n in &names {
            if self.records.load::<AlarmRecord>(&alarm_key(scope, n)).await?.is_none() {
                missing.push(n.clone());
            }
        }
        if !missing.is_empty() {
            return Err(not_found(format!(
                "The following alarms were not found: {}",
                missing.join(", ")
            )));
        }
        for n in &names {
            self.records.delete(&alarm_key(scope, n)).await?;
        }
        Ok(json!({}))
    }

    pub async fn set_actions_enabled(&self, scope: &Scope, input: Value, enabled: bool) -> Result<Value, MetricsError> {
        for n in names_of(input)? {
            self.records
                .update(&alarm_key(scope, &n), |cur: Option<AlarmRecord>| {
                    let next = cur.map(|mut r| {
                        r.alarm.actions_enabled = enabled;
                        r
                    });
                    Ok::<_, MetricsError>((next, ()))
                })
                .await?;
        }
        Ok(json!({}))
    }

    pub async fn set_alarm_state(&self, scope: &Scope, input: Value) -> Result<Value, MetricsError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct In {
            alarm_name: String,
            state_value: String,
            state_reason: String,
            state_reason_data: Option<String>,
        }
        let i: In = crate::metrics::parse(input)?;
        if let Some(d) = &i.state_reason_data {
            if serde_json::from_str::<Value>(d).is_err() {
                return Err(MetricsError {
                    shape: "InvalidFormatFault",
                    message: "StateReasonData is not valid JSON.".into(),
                });
            }
        }
        self.one(scope, &i.alarm_name).await?;
        let change = StateChange {
            state: i.state_value,
            reason: i.state_reason,
            reason_data: i.state_reason_data,
        };
        self.change_state(scope, &i.alarm_name, None, change).await?;
        Ok(json!({}))
    }

    pub async fn describe_alarm_history(&self, scope: &Scope, input: Value) -> Result<Value, MetricsError> {
        history::describe(&self.records, scope, input).await
    }

    pub async fn tags(&self, scope: &Scope, op: &str, input: Value) -> Result<Value, MetricsError> {
        history::tags(self, scope, op, input).await
    }

    /// Moves an alarm to a state (with history), unless its configuration changed since
    /// `configured_at` (the evaluation then no longer applies). Returns whether it moved.
    async fn change_state(
        &self,
        scope: &Scope,
        name: &str,
        configured_at: Option<f64>,
        change: StateChange,
    ) -> Result<Option<MetricAlarm>, MetricsError> {
        let now = self.now();
        let moved = self
            .records
            .update(&alarm_key(scope, name), |cur: Option<AlarmRecord>| {
                let Some(mut rec) = cur else { return Ok((None, None)) };
                if configured_at.is_some_and(|t| t != rec.alarm.alarm_configuration_updated_timestamp) {
                    return Ok((Some(rec), None));
                }
                let before = rec.alarm.clone();
                let a = &mut rec.alarm;
                a.state_reason = change.reason.clone();
                a.state_reason_data = change.reason_data.clone();
                a.state_updated_timestamp = now;
                if a.state_value != change.state {
                    a.state_value = change.state.clone();
                    a.state_transitioned_timestamp = now;
                }
                Ok::<_, MetricsError>((Some(rec), Some(before)))
            })
            .await?;
        let Some(before) = moved else { return Ok(None) };
        if before.state_value != change.state {
            history::record_state(&self.records, scope, &before, &change, self.clock.now_ms()).await?;
        }
        Ok(Some(before))
    }

    /// Evaluates every alarm (the leader's controller, every few seconds) and moves those
    /// whose evaluation says so. Returns how many moved.
    pub async fn evaluate_all(&self) -> Result<usize, MetricsError> {
        let (kvs, _) = self.records.store.list(PREFIX).await.map_err(RecordError::Store)?;
        let now_ms = self.clock.now_ms();
        let mut moved = 0;
        for kv in kvs {
            let mut parts = kv.key[PREFIX.len()..].splitn(4, '/');
            let (Some(account), Some(region), Some("alarms")) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let scope = Scope {
                account: account.into(),
                region: region.into(),
            };
            let Ok(rec) = serde_json::from_slice::<AlarmRecord>(&kv.value) else {
                tracing::warn!(key = %kv.key, "unreadable alarm record");
                continue;
            };
            match self.evaluate_one(&scope, &rec.alarm, now_ms).await {
                Ok(true) => moved += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(alarm = %rec.alarm.alarm_name, error = %e, "evaluating an alarm"),
            }
        }
        let last = self.pruned_at.load(std::sync::atomic::Ordering::Relaxed);
        if now_ms - last >= PRUNE_EVERY_MS {
            self.pruned_at.store(now_ms, std::sync::atomic::Ordering::Relaxed);
            history::prune(&self.records, now_ms).await?;
        }
        Ok(moved)
    }

    async fn evaluate_one(&self, scope: &Scope, a: &MetricAlarm, now_ms: i64) -> Result<bool, MetricsError> {
        let (queries, period_s, statistic) = alarm_queries(a);
        let period_ms = period_s * 1000;
        // The last complete periods.
        let end = (now_ms - REPORT_GRACE_MS).div_euclid(period_ms) * period_ms;
        let n = a.evaluation_periods.max(1);
        let start = end - n * period_ms;
        let series = self.metrics.alarm_series(scope, queries, start, end)?;
        let periods: Vec<(i64, Option<f64>)> = (0..n)
            .map(|k| {
                let t = start + k * period_ms;
                (t, series.get(&t).copied())
            })
            .collect();
        let rule = evaluate::Rule {
            threshold: a.threshold,
            comparison: a.comparison_operator.clone(),
            evaluation_periods: n as usize,
            datapoints_to_alarm: a.datapoints_to_alarm.unwrap_or(n) as usize,
            treat_missing: a.treat_missing_data.clone().unwrap_or_else(|| "missing".into()),
            statistic,
            period_s,
        };
        let e = evaluate::evaluate(&rule, &a.state_value, &periods, now_ms);
        if e.state == a.state_value {
            return Ok(false);
        }
        let change = StateChange {
            state: e.state.into(),
            reason: e.reason,
            reason_data: Some(e.reason_data.to_string()),
        };
        let moved = self
            .change_state(
                scope,
                &a.alarm_name,
                Some(a.alarm_configuration_updated_timestamp),
                change,
            )
            .await?;
        Ok(moved.is_some())
    }
}

/// Which of `names` are in ALARM (for deployment alarms). An alarm that does not exist, or a
/// store that cannot be read, counts as not in ALARM: the deployment goes on, and says so in
/// the log.
pub async fn in_alarm(store: &dyn Store, scope: &Scope, names: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for n in names {
        match store.get(&alarm_key(scope, n)).await {
            Ok(Some(kv)) => match serde_json::from_slice::<AlarmRecord>(&kv.value) {
                Ok(r) if r.alarm.state_value == "ALARM" => out.push(n.clone()),
                Ok(_) => {}
                Err(e) => tracing::warn!(alarm = %n, error = %e, "unreadable alarm record"),
            },
            Ok(None) => tracing::debug!(alarm = %n, "a deployment watches an alarm that does not exist"),
            Err(e) => tracing::warn!(alarm = %n, error = %e, "reading a deployment alarm"),
        }
    }
    out
}

/// A state an alarm moves to, and why.
#[derive(Debug, Clone)]
pub struct StateChange {
    pub state: String,
    pub reason: String,
    pub reason_data: Option<String>,
}

/// The queries an alarm evaluates, their period and the statistic's name for reasons.
fn alarm_queries(a: &MetricAlarm) -> (Vec<Value>, i64, String) {
    if let Some(m) = &a.metrics {
        let period = m
            .iter()
            .find_map(|q| q["MetricStat"]["Period"].as_i64().or(q["Period"].as_i64()))
            .unwrap_or(60);
        return (m.clone(), period, "expression".into());
    }
    let stat = a.statistic.clone().or(a.extended_statistic.clone()).unwrap_or_default();
    let period = a.period.unwrap_or(60);
    let mut metric_stat = json!({
        "Metric": {"Namespace": a.namespace, "MetricName": a.metric_name, "Dimensions": a.dimensions},
        "Period": period,
        "Stat": stat,
    });
    if let Some(u) = &a.unit {
        metric_stat["Unit"] = json!(u);
    }
    (vec![json!({"Id": "m", "MetricStat": metric_stat})], period, stat)
}

/// A single-metric alarm's checks; returns its period.
fn check_single(i: &PutInput) -> Result<i64, MetricsError> {
    let (Some(_), Some(_)) = (&i.metric_name, &i.namespace) else {
        return Err(MetricsError::missing(
            "An alarm names a metric (MetricName and Namespace) or gives Metrics.",
        ));
    };
    match (&i.statistic, &i.extended_statistic) {
        (Some(_), Some(_)) => {
            return Err(MetricsError::combination(
                "Statistic and ExtendedStatistic cannot be given together.",
            ))
        }
        (None, None) => {
            return Err(MetricsError::missing(
                "One of Statistic or ExtendedStatistic is required.",
            ))
        }
        (None, Some(e)) => {
            if !matches!(
                crate::metrics::stats::Statistic::parse(e),
                Some(crate::metrics::stats::Statistic::Percentile(_))
            ) {
                return Err(MetricsError::invalid(format!(
                    "The value {e} for parameter ExtendedStatistic is not a valid percentile."
                )));
            }
        }
        (Some(_), None) => {}
    }
    let period = i
        .period
        .ok_or_else(|| MetricsError::missing("The parameter Period is required."))?;
    if !(period == 10 || period == 30 || (period > 0 && period % 60 == 0)) {
        return Err(MetricsError::invalid(format!(
            "The value {period} for parameter Period is invalid: an alarm's period is 10, 30 or a multiple of 60 seconds."
        )));
    }
    Ok(period)
}

fn check_evaluation(i: &PutInput, period: i64) -> Result<(), MetricsError> {
    if !matches!(
        i.comparison_operator.as_str(),
        "GreaterThanOrEqualToThreshold" | "GreaterThanThreshold" | "LessThanThreshold" | "LessThanOrEqualToThreshold"
    ) {
        return Err(MetricsError::invalid(format!(
            "The value {} for parameter ComparisonOperator is invalid: anomaly detection bands are not supported by Gantry.",
            i.comparison_operator
        )));
    }
    if i.evaluation_periods < 1 {
        return Err(MetricsError::invalid(
            "The parameter EvaluationPeriods must be at least 1.",
        ));
    }
    if let Some(m) = i.datapoints_to_alarm {
        if m < 1 || m > i.evaluation_periods {
            return Err(MetricsError::invalid(
                "DatapointsToAlarm must be between 1 and EvaluationPeriods.",
            ));
        }
    }
    if period * i.evaluation_periods > MAX_RANGE_S {
        return Err(MetricsError::invalid(
            "The evaluation range (Period multiplied by EvaluationPeriods) must not exceed 7 days.",
        ));
    }
    if let Some(t) = &i.treat_missing_data {
        if !matches!(t.as_str(), "breaching" | "notBreaching" | "ignore" | "missing") {
            return Err(MetricsError::invalid(format!(
                "The value {t} for parameter TreatMissingData is invalid: breaching, notBreaching, ignore or missing."
            )));
        }
    }
    if let Some(e) = &i.evaluate_low_sample_count_percentile {
        if e != "evaluate" {
            return Err(MetricsError::invalid(format!(
                "The value {e} for parameter EvaluateLowSampleCountPercentile is not supported by Gantry: percentiles \
                 are evaluated whatever their sample count (evaluate)."
            )));
        }
    }
    Ok(())
}

fn names_of(input: Value) -> Result<Vec<String>, MetricsError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase", deny_unknown_fields)]
    struct In {
        alarm_names: Vec<String>,
    }
    Ok(crate::metrics::parse::<In>(input)?.alarm_names)
}
