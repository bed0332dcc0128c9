//! CloudWatch metrics without root: statistics, percentiles, math, PutMetricData's checks,
//! the queries and retention, over an in-memory metric store and a fixed clock.

use gantry_control::feed::Replica;
use gantry_control::metrics::math::{evaluate, Env, Series, Val};
use gantry_control::metrics::stats::{Agg, Statistic};
use gantry_control::metrics::{MetricStore, Metrics};
use gantry_control::Clock;
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

/// 2026-01-01T00:00:00Z, a whole hour.
const T0: i64 = 1_767_225_600_000;

fn setup() -> (Metrics, Arc<FixedClock>, Scope) {
    let clock = Arc::new(FixedClock(AtomicI64::new(T0 + 3_600_000)));
    let data = Arc::new(Replica::local(Arc::new(MetricStore::in_memory().unwrap())));
    let scope = Scope {
        account: "000000000000".into(),
        region: "us-east-1".into(),
    };
    (Metrics::new(data, clock.clone()), clock, scope)
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

#[test]
fn percentiles_are_nearest_rank_and_need_raw_values() {
    let mut a = Agg::single(1.0, 1.0);
    for v in 2..=100 {
        a.merge(&Agg::single(v as f64, 1.0));
    }
    assert_eq!(a.percentile(50.0), Some(50.0));
    assert_eq!(a.percentile(90.0), Some(90.0));
    assert_eq!(a.percentile(99.9), Some(100.0));
    assert_eq!(a.average(), 50.5);
    // A statistic set of many distinct samples hides the values: no percentile.
    a.merge(&Agg::set(10.0, 50.0, 1.0, 9.0));
    assert_eq!(a.percentile(50.0), None);
    // One sample, or min == max, is as good as a value.
    assert_eq!(Agg::set(4.0, 12.0, 3.0, 3.0).percentile(10.0), Some(3.0));
    // Negative values: CloudWatch has no percentiles.
    assert_eq!(Agg::single(-1.0, 1.0).percentile(50.0), None);
}

#[test]
fn distinct_values_stay_bounded() {
    let mut a = Agg::single(0.0, 1.0);
    for v in 1..10_000 {
        a.merge(&Agg::single(v as f64, 1.0));
    }
    assert!(a.values.as_ref().unwrap().len() <= gantry_control::metrics::stats::MAX_DISTINCT);
    assert_eq!(a.count, 10_000.0);
    let p90 = a.percentile(90.0).unwrap();
    assert!((p90 - 9000.0).abs() < 20.0, "p90 {p90}");
}

#[test]
fn statistic_names() {
    assert_eq!(Statistic::parse("p99.9"), Some(Statistic::Percentile(99.9)));
    assert_eq!(Statistic::parse("Average"), Some(Statistic::Average));
    for bad in ["p0", "p101", "p99.999", "tm99", "average", "p"] {
        assert_eq!(Statistic::parse(bad), None, "{bad}");
    }
}

fn series(points: &[(i64, f64)]) -> Series {
    points.iter().copied().collect()
}

#[test]
fn metric_math() {
    let a = series(&[(0, 1.0), (60, 2.0), (120, 4.0)]);
    let b = series(&[(0, 10.0), (120, 0.0)]);
    let lookup = |id: &str| match id {
        "a" => Some(a.clone()),
        "b" => Some(b.clone()),
        _ => None,
    };
    let grid = [0, 60, 120];
    let env = Env {
        series: &lookup,
        grid: &grid,
    };
    let eval = |e: &str| evaluate(e, &env);
    assert_eq!(
        eval("a * 2 + 1").unwrap(),
        Val::Series(series(&[(0, 3.0), (60, 5.0), (120, 9.0)]))
    );
    // Series combine where both have a value; x/0 yields none.
    assert_eq!(eval("a / b").unwrap(), Val::Series(series(&[(0, 0.1)])));
    assert_eq!(
        eval("SUM([a, b])").unwrap(),
        Val::Series(series(&[(0, 11.0), (60, 2.0), (120, 4.0)]))
    );
    assert_eq!(eval("MAX(a)").unwrap(), Val::Scalar(4.0));
    assert_eq!(
        eval("-(a - 5)").unwrap(),
        Val::Series(series(&[(0, 4.0), (60, 3.0), (120, 1.0)]))
    );
    assert_eq!(
        eval("FILL(b, 7)").unwrap(),
        Val::Series(series(&[(0, 10.0), (60, 7.0), (120, 0.0)]))
    );
    for bad in ["a +", "c * 2", "LOG(a)", "a $ b", "(a"] {
        assert!(eval(bad).is_err(), "{bad}");
    }
}

async fn put(m: &Metrics, s: &Scope, input: Value) -> Result<Value, String> {
    m.put_metric_data(s, input)
        .await
        .map_err(|e| format!("{}: {}", e.shape, e.message))
}

#[tokio::test]
async fn put_metric_data_is_checked_as_cloudwatch_checks_it() {
    let (m, _, s) = setup();
    let datum = |extra: Value| {
        let mut d = json!({"MetricName": "Latency", "Timestamp": secs(T0)});
        d.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"Namespace": "App", "MetricData": [d]})
    };
    let refused = [
        (
            datum(
                json!({"Value": 1.0, "StatisticValues": {"SampleCount": 1.0, "Sum": 1.0, "Minimum": 1.0, "Maximum": 1.0}}),
            ),
            "InvalidParameterCombinationException",
        ),
        (datum(json!({})), "MissingRequiredParameterException"),
        (datum(json!({"Value": 1e200})), "InvalidParameterValueException"),
        (
            datum(json!({"Values": [1.0, 2.0], "Counts": [1.0]})),
            "InvalidParameterValueException",
        ),
        (datum(json!({"Counts": [1.0]})), "InvalidParameterCombinationException"),
        (
            datum(json!({"Value": 1.0, "StorageResolution": 5})),
            "InvalidParameterValueException",
        ),
        (
            datum(json!({"Value": 1.0, "Dimensions": [{"Name": "a", "Value": "1"}, {"Name": "a", "Value": "2"}]})),
            "InvalidParameterValueException",
        ),
        (
            datum(json!({"StatisticValues": {"SampleCount": 2.0, "Sum": 1.0, "Minimum": 3.0, "Maximum": 1.0}})),
            "InvalidParameterValueException",
        ),
        (
            json!({"Namespace": "App", "MetricData": [{"MetricName": "x", "Value": 1.0, "Timestamp": secs(T0 - 15 * 86_400_000)}]}),
            "InvalidParameterValueException",
        ),
        (
            json!({"Namespace": "App", "MetricData": [{"MetricName": "x", "Value": 1.0, "Timestamp": secs(T0 + 4 * 3_600_000)}]}),
            "InvalidParameterValueException",
        ),
        (
            json!({"Namespace": "AWS/ECS", "MetricData": [{"MetricName": "x", "Value": 1.0}]}),
            "InvalidParameterValueException",
        ),
        (
            json!({"Namespace": "App", "MetricData": [{"MetricName": "x", "Value": 1.0, "Bogus": 1}]}),
            "InvalidParameterValueException",
        ),
        (json!({"Namespace": "App"}), "MissingRequiredParameterException"),
    ];
    for (input, shape) in refused {
        let e = put(&m, &s, input.clone()).await.expect_err(&input.to_string());
        assert!(e.starts_with(shape), "{input}: {e}");
    }
    put(&m, &s, datum(json!({"Value": 1.0}))).await.unwrap();
}

async fn stats(m: &Metrics, s: &Scope, extra: Value) -> Value {
    let mut input = json!({
        "Namespace": "App", "MetricName": "Latency", "StartTime": secs(T0), "EndTime": secs(T0 + 180_000), "Period": 60,
    });
    input
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    m.get_metric_statistics(s, input).await.unwrap()
}

#[tokio::test]
async fn statistics_per_period_unit_and_dimensions() {
    let (m, _, s) = setup();
    // Minute 0: values 1..100 (as Values); minute 1: a statistic set; minute 2: nothing.
    let values: Vec<f64> = (1..=100).map(f64::from).collect();
    put(&m, &s, json!({"Namespace": "App", "MetricData": [
        {"MetricName": "Latency", "Timestamp": secs(T0 + 5_000), "Values": values, "Unit": "Milliseconds"},
        {"MetricName": "Latency", "Timestamp": secs(T0 + 65_000), "Unit": "Milliseconds",
         "StatisticValues": {"SampleCount": 4.0, "Sum": 40.0, "Minimum": 5.0, "Maximum": 15.0}},
        {"MetricName": "Latency", "Timestamp": secs(T0 + 70_000), "Value": 1.0, "Unit": "Seconds"},
        {"MetricName": "Latency", "Timestamp": secs(T0 + 5_000), "Value": 1000.0, "Dimensions": [{"Name": "Service", "Value": "web"}]},
    ]})).await.unwrap();
    let out = stats(
        &m,
        &s,
        json!({"Statistics": ["SampleCount", "Average", "Maximum"], "Unit": "Milliseconds"}),
    )
    .await;
    let mut dps = out["Datapoints"].as_array().unwrap().clone();
    dps.sort_by(|a, b| a["Timestamp"].as_f64().partial_cmp(&b["Timestamp"].as_f64()).unwrap());
    assert_eq!(out["Label"], "Latency");
    assert_eq!(dps.len(), 2, "{out}");
    assert_eq!(
        (dps[0]["SampleCount"].as_f64(), dps[0]["Average"].as_f64()),
        (Some(100.0), Some(50.5))
    );
    assert_eq!(
        (dps[1]["SampleCount"].as_f64(), dps[1]["Maximum"].as_f64()),
        (Some(4.0), Some(15.0))
    );
    assert_eq!(dps[1]["Timestamp"].as_f64(), Some(secs(T0 + 60_000)));
    // Without a unit, each unit is its own datapoint; the dimensioned metric is another metric.
    let all = stats(&m, &s, json!({"Statistics": ["Sum"]})).await;
    assert_eq!(all["Datapoints"].as_array().unwrap().len(), 3, "{all}");
    // Percentiles where the values are known, left out where only a statistic set is.
    let p = stats(
        &m,
        &s,
        json!({"ExtendedStatistics": ["p90", "p50"], "Unit": "Milliseconds"}),
    )
    .await;
    let by_t: Vec<&Value> = p["Datapoints"].as_array().unwrap().iter().collect();
    let first = by_t.iter().find(|d| d["Timestamp"].as_f64() == Some(secs(T0))).unwrap();
    assert_eq!(first["ExtendedStatistics"], json!({"p90": 90.0, "p50": 50.0}));
    let second = by_t
        .iter()
        .find(|d| d["Timestamp"].as_f64() == Some(secs(T0 + 60_000)))
        .unwrap();
    assert_eq!(second["ExtendedStatistics"], json!({}));
}

#[tokio::test]
async fn statistics_requests_are_checked() {
    let (m, _, s) = setup();
    let base = json!({"Namespace": "App", "MetricName": "L", "StartTime": secs(T0), "EndTime": secs(T0 + 60_000), "Period": 60});
    let with = |extra: Value| {
        let mut i = base.clone();
        i.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        i
    };
    let cases = [
        (
            with(json!({"Statistics": ["Sum"], "ExtendedStatistics": ["p50"]})),
            "InvalidParameterCombinationException",
        ),
        (with(json!({})), "MissingRequiredParameterException"),
        (
            with(json!({"ExtendedStatistics": ["p101"]})),
            "InvalidParameterValueException",
        ),
        (
            with(json!({"Statistics": ["Sum"], "Period": 45})),
            "InvalidParameterValueException",
        ),
        (
            with(json!({"Statistics": ["Sum"], "EndTime": secs(T0)})),
            "InvalidParameterValueException",
        ),
        (
            with(json!({"Statistics": ["Sum"], "Period": 1, "EndTime": secs(T0 + 1_441_000)})),
            "InvalidParameterValueException",
        ),
    ];
    for (input, shape) in cases {
        let e = m
            .get_metric_statistics(&s, input.clone())
            .await
            .expect_err(&input.to_string());
        assert_eq!(e.shape, shape, "{input}: {}", e.message);
    }
}

#[tokio::test]
async fn metric_data_with_math_order_and_pages() {
    let (m, _, s) = setup();
    let mut data = Vec::new();
    for minute in 0..5 {
        let t = secs(T0 + minute * 60_000);
        data.push(json!({"MetricName": "Requests", "Timestamp": t, "Value": 10.0 * (minute + 1) as f64}));
        data.push(json!({"MetricName": "Errors", "Timestamp": t, "Value": (minute + 1) as f64}));
    }
    put(&m, &s, json!({"Namespace": "App", "MetricData": data}))
        .await
        .unwrap();
    let stat = |name: &str| json!({"Metric": {"Namespace": "App", "MetricName": name}, "Period": 60, "Stat": "Sum"});
    let input = |extra: Value| {
        let mut i = json!({
            "StartTime": secs(T0), "EndTime": secs(T0 + 300_000),
            "MetricDataQueries": [
                {"Id": "r", "MetricStat": stat("Requests"), "ReturnData": false},
                {"Id": "e", "MetricStat": stat("Errors")},
                {"Id": "rate", "Expression": "100 * e / r", "Label": "Error rate"},
            ],
        });
        i.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        i
    };
    let out = m.get_metric_data(&s, input(json!({}))).await.unwrap();
    let results = out["MetricDataResults"].as_array().unwrap();
    assert_eq!(results.len(), 2, "ReturnData false is not returned: {out}");
    assert_eq!(results[1]["Label"], "Error rate");
    assert_eq!(results[1]["Values"], json!([10.0, 10.0, 10.0, 10.0, 10.0]));
    // Newest first by default.
    assert_eq!(results[0]["Values"], json!([5.0, 4.0, 3.0, 2.0, 1.0]));
    assert_eq!(results[0]["Timestamps"][0].as_f64(), Some(secs(T0 + 240_000)));
    let asc = m
        .get_metric_data(&s, input(json!({"ScanBy": "TimestampAscending"})))
        .await
        .unwrap();
    assert_eq!(asc["MetricDataResults"][0]["Values"], json!([1.0, 2.0, 3.0, 4.0, 5.0]));
    // Pages of 3 datapoints: all 10 come back exactly once, in order.
    let mut got = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..5 {
        let mut extra = json!({"MaxDatapoints": 3, "ScanBy": "TimestampAscending"});
        if let Some(t) = &token {
            extra["NextToken"] = json!(t);
        }
        let page = m.get_metric_data(&s, input(extra)).await.unwrap();
        for r in page["MetricDataResults"].as_array().unwrap() {
            for v in r["Values"].as_array().unwrap() {
                got.push((r["Id"].as_str().unwrap().to_string(), v.as_f64().unwrap()));
            }
        }
        token = page["NextToken"].as_str().map(String::from);
        if token.is_none() {
            break;
        }
    }
    let ids: Vec<&str> = got.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(ids, ["e", "e", "e", "e", "e", "rate", "rate", "rate", "rate", "rate"]);
    // Bad queries.
    for (q, shape) in [
        (
            json!([{"Id": "Bad", "Expression": "1"}]),
            "InvalidParameterValueException",
        ),
        (
            json!([{"Id": "a", "Expression": "1"}, {"Id": "a", "Expression": "2"}]),
            "InvalidParameterValueException",
        ),
        (json!([{"Id": "a"}]), "InvalidParameterValueException"),
        (
            json!([{"Id": "a", "Expression": "SELECT AVG(x) FROM y"}]),
            "InvalidParameterValueException",
        ),
        (
            json!([{"Id": "a", "Expression": "b * 2"}]),
            "InvalidParameterValueException",
        ),
        (
            json!([{"Id": "a", "MetricStat": {"Metric": {"Namespace": "App", "MetricName": "x"}, "Period": 60, "Stat": "tm90"}}]),
            "InvalidParameterValueException",
        ),
    ] {
        let i = json!({"StartTime": secs(T0), "EndTime": secs(T0 + 60_000), "MetricDataQueries": q});
        let e = m.get_metric_data(&s, i.clone()).await.expect_err(&i.to_string());
        assert_eq!(e.shape, shape, "{i}: {}", e.message);
    }
}

#[tokio::test]
async fn list_metrics_filters_and_activity() {
    let (m, clock, s) = setup();
    let d = |name: &str, svc: &str, t: i64| json!({"MetricName": name, "Timestamp": secs(t), "Value": 1.0, "Dimensions": [{"Name": "Service", "Value": svc}]});
    put(&m, &s, json!({"Namespace": "App", "MetricData": [d("CPU", "web", T0), d("CPU", "api", T0 + 3_000_000), d("Mem", "web", T0)]}))
        .await
        .unwrap();
    put(
        &m,
        &s,
        json!({"Namespace": "Other", "MetricData": [{"MetricName": "CPU", "Value": 2.0}]}),
    )
    .await
    .unwrap();
    let list = |input: Value| {
        let m = m.clone();
        let s = s.clone();
        async move {
            let out = m.list_metrics(&s, input).await.unwrap();
            let mut names: Vec<String> = out["Metrics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| {
                    format!(
                        "{}/{}/{}",
                        x["Namespace"].as_str().unwrap(),
                        x["MetricName"].as_str().unwrap(),
                        x["Dimensions"]
                            .get(0)
                            .map(|d| d["Value"].as_str().unwrap())
                            .unwrap_or("-")
                    )
                })
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(
        list(json!({"Namespace": "App", "MetricName": "CPU"})).await,
        ["App/CPU/api", "App/CPU/web"]
    );
    assert_eq!(
        list(json!({"Dimensions": [{"Name": "Service", "Value": "web"}]})).await,
        ["App/CPU/web", "App/Mem/web"]
    );
    assert_eq!(
        list(json!({"Dimensions": [{"Name": "Service"}], "MetricName": "Mem"})).await,
        ["App/Mem/web"]
    );
    assert_eq!(list(json!({"MetricName": "CPU"})).await.len(), 3);
    // Three hours on, only the later series counts as recently active.
    clock.0.store(T0 + 3 * 3_600_000 + 60_000, Ordering::Relaxed);
    assert_eq!(
        list(json!({"RecentlyActive": "PT3H", "Namespace": "App"})).await,
        ["App/CPU/api"]
    );
}

#[test]
fn retention_rolls_points_up_and_keeps_the_sums() {
    let store = MetricStore::in_memory().unwrap();
    let key = gantry_control::metrics::MetricKey {
        namespace: "App".into(),
        name: "CPU".into(),
        dims: vec![],
    };
    // Six hours of 10-second points: 2,160 rows.
    let data = (0..2160)
        .map(|i| gantry_control::metrics::Published {
            key: key.clone(),
            ts_ms: T0 + i * 10_000,
            unit: "Percent".into(),
            resolution: 1,
            agg: Agg::single((i % 100) as f64, 1.0),
        })
        .collect();
    let w = gantry_control::metrics::MetricWrite {
        account: "a".into(),
        region: "r".into(),
        data,
    };
    store.apply(&w, None).unwrap();
    let now = T0 + 6 * 3_600_000;
    store.roll_up(now).unwrap();
    // The three hours older than 3 h are now per minute (180 rows); the rest untouched.
    assert_eq!(store.point_count().unwrap(), 180 + 1080);
    let points = store.points(("a", "r"), &key, T0, now).unwrap();
    let sum: f64 = points.iter().map(|p| p.agg.sum).sum();
    let count: f64 = points.iter().map(|p| p.agg.count).sum();
    assert_eq!(count, 2160.0);
    assert_eq!(sum, (0..2160).map(|i| (i % 100) as f64).sum::<f64>());
    // Fifteen days on, those hours are 5-minute points; after 455 days nothing is left.
    store.roll_up(now + 15 * 86_400_000).unwrap();
    assert_eq!(store.point_count().unwrap(), 72);
    store.roll_up(now + 456 * 86_400_000).unwrap();
    assert_eq!(store.point_count().unwrap(), 0);
}

/// A cluster's servers each hold a copy of the metric data through the feed: a datapoint put
/// on one server is read on another, and the feed trims what both applied.
#[tokio::test]
async fn copies_follow_one_feed() {
    use gantry_store::{SqliteStore, Store};
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let clock = Arc::new(FixedClock(AtomicI64::new(T0 + 3_600_000)));
    let copy = |id: &str| {
        let data = Arc::new(Replica::replicated(
            Arc::new(MetricStore::in_memory().unwrap()),
            store.clone(),
            id,
            None,
        ));
        let (d, stop) = (data.clone(), stop.clone());
        tokio::spawn(async move { d.follow(stop).await });
        Metrics::new(data, clock.clone())
    };
    let (a, b) = (copy("a"), copy("b"));
    let scope = Scope {
        account: "000000000000".into(),
        region: "us-east-1".into(),
    };
    put(
        &a,
        &scope,
        json!({"Namespace": "App", "MetricData": [{"MetricName": "Q", "Value": 3.0, "Timestamp": secs(T0)}]}),
    )
    .await
    .unwrap();
    let query = json!({"Namespace": "App", "MetricName": "Q", "StartTime": secs(T0), "EndTime": secs(T0 + 60_000),
                       "Period": 60, "Statistics": ["Sum"]});
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = b.get_metric_statistics(&scope, query.clone()).await.unwrap();
        if out["Datapoints"].as_array().unwrap().len() == 1 {
            assert_eq!(out["Datapoints"][0]["Sum"], 3.0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the other copy never applied the datapoint"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Once both copies report their position, the entry is trimmed (and only then).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gantry_control::metrics::trim(store.as_ref(), 0).await.unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "the feed was never trimmed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
