//! CloudWatch alarms without root: configuration checks, evaluation against published data
//! with a fixed clock, state changes with history, SetAlarmState, deletes and tags.

use gantry_control::alarms::Alarms;
use gantry_control::feed::Replica;
use gantry_control::metrics::{MetricStore, Metrics};
use gantry_control::Clock;
use gantry_store::{SqliteStore, Store};
use gantry_types::arn::Scope;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

struct FixedClock(AtomicI64);

impl Clock for FixedClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600_000;

struct Fixture {
    alarms: Alarms,
    metrics: Metrics,
    clock: Arc<FixedClock>,
    scope: Scope,
}

fn fixture() -> Fixture {
    let clock = Arc::new(FixedClock(AtomicI64::new(T0)));
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let data = Arc::new(Replica::local(Arc::new(MetricStore::in_memory().unwrap())));
    let metrics = Metrics::new(data, clock.clone());
    Fixture {
        alarms: Alarms::new(store, metrics.clone(), clock.clone()),
        metrics,
        clock,
        scope: Scope {
            account: "000000000000".into(),
            region: "us-east-1".into(),
        },
    }
}

impl Fixture {
    async fn put_value(&self, value: f64, at_ms: i64) {
        let input = json!({"Namespace": "App", "MetricData": [
            {"MetricName": "CPU", "Value": value, "Timestamp": at_ms as f64 / 1000.0, "StorageResolution": 1}]});
        self.metrics.put_metric_data(&self.scope, input).await.unwrap();
    }

    async fn alarm(&self, name: &str) -> Value {
        let out = self
            .alarms
            .describe_alarms(&self.scope, json!({"AlarmNames": [name]}))
            .await
            .unwrap();
        out["MetricAlarms"][0].clone()
    }

    fn at(&self, ms: i64) {
        self.clock.0.store(ms, Ordering::Relaxed);
    }
}

fn cpu_alarm(extra: Value) -> Value {
    let mut v = json!({
        "AlarmName": "high-cpu", "Namespace": "App", "MetricName": "CPU", "Statistic": "Average",
        "Period": 10, "EvaluationPeriods": 3, "DatapointsToAlarm": 2, "Threshold": 70.0,
        "ComparisonOperator": "GreaterThanThreshold",
    });
    v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    v
}

#[tokio::test]
async fn an_alarm_follows_its_metric_and_keeps_history() {
    let f = fixture();
    f.alarms.put_metric_alarm(&f.scope, cpu_alarm(json!({}))).await.unwrap();
    let a = f.alarm("high-cpu").await;
    assert_eq!(a["StateValue"], "INSUFFICIENT_DATA");
    assert_eq!(a["StateReason"], "Unchecked: Initial alarm creation");
    assert_eq!(
        a["AlarmArn"],
        "arn:aws:cloudwatch:us-east-1:000000000000:alarm:high-cpu"
    );
    // 30 s of data: 50, 80, 90 in three 10-second periods.
    for (i, v) in [50.0, 80.0, 90.0].iter().enumerate() {
        f.put_value(*v, T0 + i as i64 * 10_000 + 1_000).await;
    }
    f.at(T0 + 32_500);
    assert_eq!(f.alarms.evaluate_all().await.unwrap(), 1);
    let a = f.alarm("high-cpu").await;
    assert_eq!(a["StateValue"], "ALARM", "{a}");
    let reason = a["StateReason"].as_str().unwrap();
    assert!(
        reason.starts_with("Threshold Crossed: 2 out of the last 3 datapoints"),
        "{reason}"
    );
    // Evaluating again changes nothing.
    assert_eq!(f.alarms.evaluate_all().await.unwrap(), 0);
    // Low values bring it back to OK.
    for i in 3..6 {
        f.put_value(10.0, T0 + i * 10_000 + 1_000).await;
    }
    f.at(T0 + 62_500);
    assert_eq!(f.alarms.evaluate_all().await.unwrap(), 1);
    assert_eq!(f.alarm("high-cpu").await["StateValue"], "OK");
    // No data at all for three periods: INSUFFICIENT_DATA (missing is the default).
    f.at(T0 + 102_500);
    f.alarms.evaluate_all().await.unwrap();
    assert_eq!(f.alarm("high-cpu").await["StateValue"], "INSUFFICIENT_DATA");
    let h = f
        .alarms
        .describe_alarm_history(
            &f.scope,
            json!({"AlarmName": "high-cpu", "HistoryItemType": "StateUpdate"}),
        )
        .await
        .unwrap();
    let summaries: Vec<&str> = h["AlarmHistoryItems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["HistorySummary"].as_str().unwrap())
        .collect();
    assert_eq!(
        summaries,
        [
            "Alarm updated from OK to INSUFFICIENT_DATA",
            "Alarm updated from ALARM to OK",
            "Alarm updated from INSUFFICIENT_DATA to ALARM"
        ]
    );
    let all = f
        .alarms
        .describe_alarm_history(&f.scope, json!({"MaxRecords": 2}))
        .await
        .unwrap();
    assert_eq!(all["AlarmHistoryItems"].as_array().unwrap().len(), 2);
    assert_eq!(all["NextToken"], "2");
}

#[tokio::test]
async fn metric_math_alarms_and_updates_keep_state() {
    let f = fixture();
    let queries = json!([
        {"Id": "cpu", "MetricStat": {"Metric": {"Namespace": "App", "MetricName": "CPU"}, "Period": 10, "Stat": "Maximum"}, "ReturnData": false},
        {"Id": "half", "Expression": "cpu / 2"},
    ]);
    let alarm = json!({"AlarmName": "math", "Metrics": queries, "EvaluationPeriods": 1, "Threshold": 40.0,
                       "ComparisonOperator": "GreaterThanOrEqualToThreshold"});
    f.alarms.put_metric_alarm(&f.scope, alarm.clone()).await.unwrap();
    f.put_value(100.0, T0 + 1_000).await;
    f.at(T0 + 12_500);
    f.alarms.evaluate_all().await.unwrap();
    assert_eq!(f.alarm("math").await["StateValue"], "ALARM");
    // Updating the configuration keeps the state.
    let mut updated = alarm.clone();
    updated["AlarmDescription"] = json!("half the CPU");
    f.alarms.put_metric_alarm(&f.scope, updated).await.unwrap();
    let a = f.alarm("math").await;
    assert_eq!(
        (a["StateValue"].as_str(), a["AlarmDescription"].as_str()),
        (Some("ALARM"), Some("half the CPU"))
    );
    // SetAlarmState moves it until the next evaluation says otherwise.
    f.alarms
        .set_alarm_state(
            &f.scope,
            json!({"AlarmName": "math", "StateValue": "OK", "StateReason": "testing"}),
        )
        .await
        .unwrap();
    assert_eq!(f.alarm("math").await["StateReason"], "testing");
    f.alarms.evaluate_all().await.unwrap();
    assert_eq!(f.alarm("math").await["StateValue"], "ALARM");
}

#[tokio::test]
async fn bad_alarms_are_refused_in_cloudwatch_terms() {
    let f = fixture();
    let cases = [
        (
            cpu_alarm(json!({"ExtendedStatistic": "p90"})),
            "InvalidParameterCombinationException",
        ),
        (cpu_alarm(json!({"Period": 45})), "InvalidParameterValueException"),
        (
            cpu_alarm(json!({"DatapointsToAlarm": 4})),
            "InvalidParameterValueException",
        ),
        (
            cpu_alarm(json!({"Period": 86_400, "EvaluationPeriods": 8})),
            "InvalidParameterValueException",
        ),
        (
            cpu_alarm(json!({"TreatMissingData": "sometimes"})),
            "InvalidParameterValueException",
        ),
        (
            cpu_alarm(json!({"AlarmActions": ["arn:aws:sns:us-east-1:000000000000:topic"]})),
            "InvalidParameterValueException",
        ),
        (
            cpu_alarm(json!({"ComparisonOperator": "LessThanLowerThreshold"})),
            "InvalidParameterValueException",
        ),
        (
            cpu_alarm(json!({"ThresholdMetricId": "ad"})),
            "InvalidParameterValueException",
        ),
        (
            cpu_alarm(json!({"Metrics": [{"Id": "m", "Expression": "1"}]})),
            "InvalidParameterCombinationException",
        ),
        (
            json!({"AlarmName": "x", "EvaluationPeriods": 1, "Threshold": 1.0, "ComparisonOperator": "GreaterThanThreshold",
                "Metrics": [{"Id": "a", "Expression": "1"}, {"Id": "b", "Expression": "2"}]}),
            "InvalidParameterValueException",
        ),
        (
            json!({"AlarmName": "x", "EvaluationPeriods": 1, "Threshold": 1.0, "ComparisonOperator": "GreaterThanThreshold"}),
            "MissingRequiredParameterException",
        ),
    ];
    for (input, shape) in cases {
        let e = f
            .alarms
            .put_metric_alarm(&f.scope, input.clone())
            .await
            .expect_err(&input.to_string());
        assert_eq!(e.shape, shape, "{input}: {}", e.message);
    }
    let e = f
        .alarms
        .set_alarm_state(
            &f.scope,
            json!({"AlarmName": "nope", "StateValue": "OK", "StateReason": "x"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.shape, "ResourceNotFound");
    f.alarms.put_metric_alarm(&f.scope, cpu_alarm(json!({}))).await.unwrap();
    let e = f
        .alarms
        .set_alarm_state(
            &f.scope,
            json!({"AlarmName": "high-cpu", "StateValue": "OK", "StateReason": "x", "StateReasonData": "{"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.shape, "InvalidFormatFault");
    // Deleting names one that does not exist: nothing is deleted.
    let e = f
        .alarms
        .delete_alarms(&f.scope, json!({"AlarmNames": ["high-cpu", "nope"]}))
        .await
        .unwrap_err();
    assert_eq!(e.shape, "ResourceNotFound");
    assert_eq!(f.alarm("high-cpu").await["AlarmName"], "high-cpu");
    f.alarms
        .delete_alarms(&f.scope, json!({"AlarmNames": ["high-cpu"]}))
        .await
        .unwrap();
    assert_eq!(f.alarm("high-cpu").await, Value::Null);
}

#[tokio::test]
async fn filters_actions_and_tags() {
    let f = fixture();
    for name in ["api/errors", "api/latency", "db"] {
        f.alarms
            .put_metric_alarm(
                &f.scope,
                cpu_alarm(json!({"AlarmName": name, "Tags": [{"Key": "team", "Value": "core"}]})),
            )
            .await
            .unwrap();
    }
    let names = |v: Value| -> Vec<String> {
        v["MetricAlarms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["AlarmName"].as_str().unwrap().to_string())
            .collect()
    };
    let prefixed = f
        .alarms
        .describe_alarms(&f.scope, json!({"AlarmNamePrefix": "api/"}))
        .await
        .unwrap();
    assert_eq!(names(prefixed), ["api/errors", "api/latency"]);
    let paged = f
        .alarms
        .describe_alarms(&f.scope, json!({"MaxRecords": 2}))
        .await
        .unwrap();
    assert_eq!(paged["NextToken"], "api/latency");
    let rest = f
        .alarms
        .describe_alarms(&f.scope, json!({"MaxRecords": 2, "NextToken": "api/latency"}))
        .await
        .unwrap();
    assert_eq!(names(rest), ["db"]);
    let for_metric = f
        .alarms
        .describe_alarms_for_metric(&f.scope, json!({"Namespace": "App", "MetricName": "CPU", "Period": 10}))
        .await
        .unwrap();
    assert_eq!(names(for_metric).len(), 3);
    f.alarms
        .set_actions_enabled(&f.scope, json!({"AlarmNames": ["db"]}), false)
        .await
        .unwrap();
    assert_eq!(f.alarm("db").await["ActionsEnabled"], false);
    let arn = "arn:aws:cloudwatch:us-east-1:000000000000:alarm:api/errors";
    f.alarms
        .tags(
            &f.scope,
            "TagResource",
            json!({"ResourceARN": arn, "Tags": [{"Key": "tier", "Value": "1"}]}),
        )
        .await
        .unwrap();
    f.alarms
        .tags(
            &f.scope,
            "UntagResource",
            json!({"ResourceARN": arn, "TagKeys": ["team"]}),
        )
        .await
        .unwrap();
    let tags = f
        .alarms
        .tags(&f.scope, "ListTagsForResource", json!({"ResourceARN": arn}))
        .await
        .unwrap();
    assert_eq!(tags["Tags"], json!([{"Key": "tier", "Value": "1"}]));
    let e = f
        .alarms
        .tags(
            &f.scope,
            "ListTagsForResource",
            json!({"ResourceARN": "arn:aws:cloudwatch:us-east-1:000000000000:alarm:gone"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.shape, "ResourceNotFoundException");
}
