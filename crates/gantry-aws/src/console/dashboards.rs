//! The console's dashboards: executive (availability against each service's SLO, error budget
//! left, cost), on-call (burning SLOs, failing deployments, unhealthy targets, recent task
//! failures, restart loops, alarms) and one service's debug view. Each is gathered through the
//! same read-only handlers the APIs answer with (`super::dispatch`), then computed by pure
//! functions over that snapshot (tested below without a server).
//!
//! A service's SLI is its requests' success ratio when it is behind a load balancer (target
//! 5XX and the load balancer's own 5XX are failures), else its task availability (running
//! over desired). Its SLO is its `gantry:slo` tag (a percentage), 99.9 when untagged.

use super::dispatch;
use crate::api::{Api, ApiError};
use gantry_types::arn::{cluster_name, Scope};
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const DEFAULT_SLO: f64 = 99.9;
const INSIGHTS: &str = gantry_control::metrics::insights::NAMESPACE;
/// Buckets a window's charts are drawn with.
const BUCKETS: i64 = 24;
/// The SRE workbook's fast-burn threshold (2% of a 30-day budget in an hour).
pub const FAST_BURN: f64 = 14.4;
/// Task stops within this span that make a restart loop, and how many.
const LOOP_SPAN_SECS: f64 = 900.0;
const LOOP_STOPS: usize = 3;

/// "1h", "24h", "7d" (5 minutes to 30 days) in seconds.
pub fn window_secs(s: &str) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::client(
            "ValidationException",
            format!("window {s:?}: expected 1h, 6h, 24h, 7d or 30d."),
        )
    };
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(bad()),
    };
    if !(300..=30 * 86400).contains(&secs) {
        return Err(bad());
    }
    Ok(secs)
}

async fn ecs(api: &Api, scope: &Scope, op: &str, input: Value) -> Result<Value, ApiError> {
    dispatch(api, scope, "ecs", op, input).await
}

async fn cloudwatch(api: &Api, scope: &Scope, op: &str, input: Value) -> Result<Value, ApiError> {
    dispatch(api, scope, "monitoring", op, input).await
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

/// Every ACTIVE service of every cluster, described (with tags).
async fn all_services(api: &Api, scope: &Scope) -> Result<Vec<Value>, ApiError> {
    let clusters = strings(&ecs(api, scope, "ListClusters", json!({"maxResults": 100})).await?["clusterArns"]);
    let mut out = Vec::new();
    for cluster in clusters {
        let mut token: Option<String> = None;
        loop {
            let mut req = json!({"cluster": cluster, "maxResults": 100});
            if let Some(t) = &token {
                req["nextToken"] = json!(t);
            }
            let page = ecs(api, scope, "ListServices", req).await?;
            for chunk in strings(&page["serviceArns"]).chunks(10) {
                let d = ecs(
                    api,
                    scope,
                    "DescribeServices",
                    json!({"cluster": cluster, "services": chunk, "include": ["TAGS"]}),
                )
                .await?;
                out.extend(d["services"].as_array().cloned().unwrap_or_default());
            }
            match page["nextToken"].as_str() {
                Some(t) => token = Some(t.into()),
                None => break,
            }
        }
    }
    Ok(out)
}

/// A service's SLO from its `gantry:slo` tag, as a fraction.
pub fn slo_of(service: &Value) -> f64 {
    let tagged = service["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["key"] == "gantry:slo")
        .and_then(|t| t["value"].as_str())
        .and_then(|v| v.trim_end_matches('%').parse::<f64>().ok())
        .filter(|p| (0.0..100.0).contains(p));
    tagged.unwrap_or(DEFAULT_SLO) / 100.0
}

/// A metric series: (epoch seconds, value), oldest first.
pub type Points = Vec<(i64, f64)>;

/// One GetMetricData query's key: namespace, metric, dimensions, statistic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Query {
    namespace: String,
    metric: String,
    dims: Vec<(String, String)>,
    stat: String,
}

fn query(namespace: &str, metric: &str, dims: &[(&str, &str)], stat: &str) -> Query {
    Query {
        namespace: namespace.into(),
        metric: metric.into(),
        dims: dims.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        stat: stat.into(),
    }
}

/// Runs `queries` over [start, end) at `period`, in batches of 500.
async fn fetch(
    api: &Api,
    scope: &Scope,
    queries: &[Query],
    start: i64,
    end: i64,
    period: i64,
) -> Result<BTreeMap<Query, Points>, ApiError> {
    let mut out = BTreeMap::new();
    for chunk in queries.chunks(500) {
        let qs: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let dims: Vec<Value> = q.dims.iter().map(|(k, v)| json!({"Name": k, "Value": v})).collect();
                json!({"Id": format!("q{i}"), "MetricStat": {
                    "Metric": {"Namespace": q.namespace, "MetricName": q.metric, "Dimensions": dims},
                    "Period": period, "Stat": q.stat}})
            })
            .collect();
        let input =
            json!({"MetricDataQueries": qs, "StartTime": start, "EndTime": end, "ScanBy": "TimestampAscending"});
        let r = cloudwatch(api, scope, "GetMetricData", input).await?;
        for res in r["MetricDataResults"].as_array().into_iter().flatten() {
            let Some(i) = res["Id"].as_str().and_then(|id| id[1..].parse::<usize>().ok()) else {
                continue;
            };
            let ts = res["Timestamps"].as_array().cloned().unwrap_or_default();
            let vs = res["Values"].as_array().cloned().unwrap_or_default();
            let points = ts
                .iter()
                .zip(vs.iter())
                .filter_map(|(t, v)| Some((t.as_f64()? as i64, v.as_f64()?)))
                .collect();
            if let Some(q) = chunk.get(i) {
                out.insert(q.clone(), points);
            }
        }
    }
    Ok(out)
}

/// A service's load balancer series: its target groups' and their load balancers' dimension
/// values, from ListMetrics (so only what has been published).
async fn lb_dimensions(api: &Api, scope: &Scope, service: &Value) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for lb in service["loadBalancers"].as_array().into_iter().flatten() {
        let Some(tg) = lb["targetGroupArn"].as_str().and_then(|a| a.rsplit(':').next()) else {
            continue;
        };
        let filter = json!([{"Name": "TargetGroup", "Value": tg}, {"Name": "LoadBalancer"}]);
        let listed = cloudwatch(
            api,
            scope,
            "ListMetrics",
            json!({"Namespace": "AWS/ApplicationELB", "MetricName": "RequestCount", "Dimensions": filter}),
        )
        .await?;
        for m in listed["Metrics"].as_array().into_iter().flatten() {
            let dims = m["Dimensions"].as_array().cloned().unwrap_or_default();
            let lb = dims
                .iter()
                .find(|d| d["Name"] == "LoadBalancer")
                .and_then(|d| d["Value"].as_str());
            if let Some(lb) = lb {
                out.push((lb.to_string(), tg.to_string()));
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Sums several series bucket by bucket.
pub fn add(series: &[&Points]) -> Points {
    let mut by_ts: BTreeMap<i64, f64> = BTreeMap::new();
    for s in series {
        for (t, v) in s.iter() {
            *by_ts.entry(*t).or_default() += v;
        }
    }
    by_ts.into_iter().collect()
}

fn total(p: &Points) -> f64 {
    p.iter().map(|(_, v)| v).sum()
}

/// Availability and error budget from request and failure counts: (availability, budget
/// left as a fraction of the window's budget; negative when overspent). None without requests.
pub fn request_slo(requests: f64, failures: f64, slo: f64) -> Option<(f64, f64)> {
    if requests <= 0.0 {
        return None;
    }
    let availability = 1.0 - (failures / requests).min(1.0);
    let allowed = (1.0 - slo) * requests;
    let left = if allowed > 0.0 {
        1.0 - failures / allowed
    } else if failures > 0.0 {
        -1.0
    } else {
        1.0
    };
    Some((availability, left))
}

/// Availability per bucket: 1 - failures/requests where there were requests.
pub fn availability_series(requests: &Points, failures: &Points) -> Points {
    let failed: BTreeMap<i64, f64> = failures.iter().copied().collect();
    requests
        .iter()
        .filter(|(_, r)| *r > 0.0)
        .map(|(t, r)| (*t, 1.0 - (failed.get(t).copied().unwrap_or(0.0) / r).min(1.0)))
        .collect()
}

/// The request series of a service's target groups: (requests, failures).
fn request_queries(dims: &[(String, String)]) -> (Vec<Query>, Vec<Query>) {
    let ns = "AWS/ApplicationELB";
    let (mut requests, mut failures) = (Vec::new(), Vec::new());
    let mut lbs: Vec<&str> = Vec::new();
    for (lb, tg) in dims {
        let d = [("LoadBalancer", lb.as_str()), ("TargetGroup", tg.as_str())];
        requests.push(query(ns, "RequestCount", &d, "Sum"));
        failures.push(query(ns, "HTTPCode_Target_5XX_Count", &d, "Sum"));
        lbs.push(lb);
    }
    lbs.sort();
    lbs.dedup();
    // The load balancer's own 5XX (no healthy target, say) are failed requests too.
    for lb in lbs {
        let q = query(ns, "HTTPCode_ELB_5XX_Count", &[("LoadBalancer", lb)], "Sum");
        requests.push(q.clone());
        failures.push(q);
    }
    (requests, failures)
}

fn pick<'a>(got: &'a BTreeMap<Query, Points>, qs: &[Query]) -> Vec<&'a Points> {
    qs.iter().filter_map(|q| got.get(q)).collect()
}

fn task_availability(service: &Value) -> f64 {
    let desired = service["desiredCount"].as_f64().unwrap_or(0.0);
    let running = service["runningCount"].as_f64().unwrap_or(0.0);
    if desired <= 0.0 {
        1.0
    } else {
        (running / desired).min(1.0)
    }
}

fn bounds(window: i64) -> (i64, i64, i64) {
    let period = ((window / BUCKETS).max(60) / 60) * 60;
    let end = (chrono::Utc::now().timestamp() / period + 1) * period;
    (end - period * (window / period).max(1), end, period)
}

/// The executive dashboard over the last `window` seconds.
pub async fn executive(api: &Api, scope: &Scope, window: i64) -> Result<Value, ApiError> {
    let services = all_services(api, scope).await?;
    let (start, end, period) = bounds(window);
    let mut queries = Vec::new();
    let mut per_service = Vec::new();
    for s in &services {
        let cluster = cluster_name(s["clusterArn"].as_str().unwrap_or("")).to_string();
        let name = s["serviceName"].as_str().unwrap_or("").to_string();
        let cost = query(
            gantry_control::cost::NAMESPACE,
            "Cost",
            &[("ClusterName", &cluster), ("ServiceName", &name)],
            "Sum",
        );
        let (requests, failures) = request_queries(&lb_dimensions(api, scope, s).await?);
        queries.push(cost.clone());
        queries.extend(requests.iter().cloned());
        queries.extend(failures.iter().cloned());
        per_service.push((s, cluster, name, cost, requests, failures));
    }
    queries.sort();
    queries.dedup();
    let got = fetch(api, scope, &queries, start, end, period).await?;
    let rows: Vec<Value> = per_service
        .into_iter()
        .map(|(s, cluster, name, cost, requests, failures)| {
            let r = add(&pick(&got, &requests));
            let f = add(&pick(&got, &failures));
            let cost = got.get(&cost).cloned().unwrap_or_default();
            executive_row(s, &cluster, &name, &r, &f, &cost)
        })
        .collect();
    Ok(json!({"window": window, "start": start, "end": end, "period": period, "services": rows}))
}

/// One service's executive row from its request, failure and cost series.
pub fn executive_row(
    s: &Value,
    cluster: &str,
    name: &str,
    requests: &Points,
    failures: &Points,
    cost: &Points,
) -> Value {
    let slo = slo_of(s);
    let (availability, budget_left, source, series) = match request_slo(total(requests), total(failures), slo) {
        Some((a, left)) => (a, Some(left), "requests", availability_series(requests, failures)),
        None => (task_availability(s), None, "tasks", Vec::new()),
    };
    json!({
        "cluster": cluster, "service": name, "slo": slo, "availability": availability,
        "meetsSlo": availability >= slo, "errorBudgetLeft": budget_left, "source": source,
        "availabilitySeries": series, "requests": total(requests), "failures": total(failures),
        "cost": total(cost), "costSeries": cost,
        "desiredCount": s["desiredCount"], "runningCount": s["runningCount"],
    })
}

/// Stopped tasks of every cluster (ECS keeps them a while), described.
async fn stopped_tasks(api: &Api, scope: &Scope) -> Result<Vec<Value>, ApiError> {
    let clusters = strings(&ecs(api, scope, "ListClusters", json!({"maxResults": 100})).await?["clusterArns"]);
    let mut out = Vec::new();
    for cluster in clusters {
        let arns = strings(
            &ecs(
                api,
                scope,
                "ListTasks",
                json!({"cluster": cluster, "desiredStatus": "STOPPED", "maxResults": 100}),
            )
            .await?["taskArns"],
        );
        if arns.is_empty() {
            continue;
        }
        let d = ecs(api, scope, "DescribeTasks", json!({"cluster": cluster, "tasks": arns})).await?;
        out.extend(d["tasks"].as_array().cloned().unwrap_or_default());
    }
    Ok(out)
}

/// Whether a stopped task failed (as opposed to being stopped on purpose or finishing well).
pub fn failed(task: &Value) -> bool {
    let code = task["stopCode"].as_str().unwrap_or("");
    let reason = task["stoppedReason"].as_str().unwrap_or("");
    let nonzero = task["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["exitCode"].as_i64().is_some_and(|e| e != 0));
    code == "TaskFailedToStart" || code == "SpotInterruption" || nonzero || reason.contains("health check")
}

/// Failed tasks, newest first, and the services with at least LOOP_STOPS of them within
/// LOOP_SPAN_SECS of `now` (restart loops).
pub fn failures_and_loops(stopped: &[Value], now: f64) -> (Vec<Value>, Vec<Value>) {
    let mut failures: Vec<&Value> = stopped.iter().filter(|t| failed(t)).collect();
    failures.sort_by(|a, b| {
        let at = |t: &Value| t["stoppedAt"].as_f64().unwrap_or(0.0);
        at(b).partial_cmp(&at(a)).unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut recent: BTreeMap<(String, String), usize> = BTreeMap::new();
    for t in &failures {
        let (Some(group), Some(at)) = (t["group"].as_str(), t["stoppedAt"].as_f64()) else {
            continue;
        };
        if let Some(service) = group.strip_prefix("service:") {
            if now - at <= LOOP_SPAN_SECS {
                let cluster = cluster_name(t["clusterArn"].as_str().unwrap_or("")).to_string();
                *recent.entry((cluster, service.to_string())).or_default() += 1;
            }
        }
    }
    let loops = recent
        .into_iter()
        .filter(|(_, n)| *n >= LOOP_STOPS)
        .map(|((cluster, service), n)| json!({"cluster": cluster, "service": service, "failedStops": n, "withinSeconds": LOOP_SPAN_SECS}))
        .collect();
    let rows = failures
        .iter()
        .take(50)
        .map(|t| {
            let exit: Vec<Value> = t["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| json!({"name": c["name"], "exitCode": c["exitCode"], "reason": c["reason"]}))
                .collect();
            json!({
                "taskArn": t["taskArn"], "cluster": cluster_name(t["clusterArn"].as_str().unwrap_or("")),
                "group": t["group"], "stopCode": t["stopCode"], "stoppedReason": t["stoppedReason"],
                "stoppedAt": t["stoppedAt"], "containers": exit,
            })
        })
        .collect();
    (rows, loops)
}

/// Deployments that failed, or are failing tasks, per service.
pub fn failing_deployments(services: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for s in services {
        for d in s["deployments"].as_array().into_iter().flatten() {
            let state = d["rolloutState"].as_str().unwrap_or("");
            let failed_tasks = d["failedTasks"].as_i64().unwrap_or(0);
            if state == "FAILED" || (state == "IN_PROGRESS" && failed_tasks > 0) {
                out.push(json!({
                    "cluster": cluster_name(s["clusterArn"].as_str().unwrap_or("")),
                    "service": s["serviceName"], "deployment": d["id"], "rolloutState": state,
                    "rolloutStateReason": d["rolloutStateReason"], "failedTasks": failed_tasks,
                    "taskDefinition": d["taskDefinition"], "updatedAt": d["updatedAt"],
                }));
            }
        }
    }
    out
}

/// Burn rate: the error ratio over what the SLO allows (1 spends the budget exactly over the
/// SLO's period).
pub fn burn_rate(requests: f64, failures: f64, slo: f64) -> Option<f64> {
    (requests > 0.0 && slo < 1.0).then(|| (failures / requests) / (1.0 - slo))
}

/// Every target that is not healthy, with its group and reason.
async fn unhealthy_targets(api: &Api, scope: &Scope) -> Result<Vec<Value>, ApiError> {
    let elb = "elasticloadbalancing";
    let groups = dispatch(api, scope, elb, "DescribeTargetGroups", json!({})).await?;
    let mut out = Vec::new();
    for g in groups["TargetGroups"].as_array().into_iter().flatten() {
        let Some(arn) = g["TargetGroupArn"].as_str() else {
            continue;
        };
        let h = dispatch(api, scope, elb, "DescribeTargetHealth", json!({"TargetGroupArn": arn})).await?;
        for t in h["TargetHealthDescriptions"].as_array().into_iter().flatten() {
            let state = t["TargetHealth"]["State"].as_str().unwrap_or("");
            if state != "healthy" {
                out.push(json!({
                    "targetGroup": g["TargetGroupName"], "target": t["Target"]["Id"], "port": t["Target"]["Port"],
                    "state": state, "reason": t["TargetHealth"]["Reason"], "description": t["TargetHealth"]["Description"],
                }));
            }
        }
    }
    Ok(out)
}

/// The on-call dashboard: what needs a person now.
pub async fn oncall(api: &Api, scope: &Scope) -> Result<Value, ApiError> {
    let services = all_services(api, scope).await?;
    let now = chrono::Utc::now().timestamp();
    let end = (now / 60 + 1) * 60;
    // Burn rates over the SRE workbook's windows, from one-minute sums.
    let windows = [("5m", 300), ("1h", 3600), ("6h", 21600)];
    let mut burning = Vec::new();
    for s in &services {
        let dims = lb_dimensions(api, scope, s).await?;
        if dims.is_empty() {
            continue;
        }
        let (requests, failures) = request_queries(&dims);
        let mut queries = requests.clone();
        queries.extend(failures.iter().cloned());
        let got = fetch(api, scope, &queries, end - 21600, end, 300).await?;
        let (r, f) = (add(&pick(&got, &requests)), add(&pick(&got, &failures)));
        let slo = slo_of(s);
        let mut rates = serde_json::Map::new();
        for (label, secs) in windows {
            let since = |p: &Points| p.iter().filter(|(t, _)| *t >= end - secs).map(|(_, v)| v).sum::<f64>();
            rates.insert(label.into(), json!(burn_rate(since(&r), since(&f), slo)));
        }
        let fast = ["5m", "1h"]
            .iter()
            .all(|w| rates[*w].as_f64().is_some_and(|b| b > FAST_BURN));
        let any = rates.values().any(|b| b.as_f64().is_some_and(|b| b > 1.0));
        if any {
            burning.push(json!({
                "cluster": cluster_name(s["clusterArn"].as_str().unwrap_or("")), "service": s["serviceName"],
                "slo": slo, "burnRates": rates, "page": fast,
            }));
        }
    }
    let (failures, loops) = failures_and_loops(&stopped_tasks(api, scope).await?, now as f64);
    let alarms = cloudwatch(api, scope, "DescribeAlarms", json!({"StateValue": "ALARM"})).await?;
    Ok(json!({
        "burningSlos": burning,
        "failingDeployments": failing_deployments(&services),
        "unhealthyTargets": unhealthy_targets(api, scope).await?,
        "taskFailures": failures,
        "restartLoops": loops,
        "alarms": alarms["MetricAlarms"],
    }))
}

/// One service's debug view: the service itself, its tasks, and its CPU, memory, request,
/// latency and cost series over the window.
pub async fn service(api: &Api, scope: &Scope, cluster: &str, name: &str, window: i64) -> Result<Value, ApiError> {
    let d = ecs(
        api,
        scope,
        "DescribeServices",
        json!({"cluster": cluster, "services": [name], "include": ["TAGS"]}),
    )
    .await?;
    let Some(s) = d["services"].as_array().and_then(|a| a.first()).cloned() else {
        return Err(ApiError::client(
            "ServiceNotFoundException",
            format!("Service not found: {name}."),
        ));
    };
    let cluster = cluster_name(s["clusterArn"].as_str().unwrap_or(cluster)).to_string();
    let mut tasks = Vec::new();
    for status in ["RUNNING", "STOPPED"] {
        let input = json!({"cluster": cluster, "serviceName": name, "desiredStatus": status, "maxResults": 100});
        let arns = strings(&ecs(api, scope, "ListTasks", input).await?["taskArns"]);
        if !arns.is_empty() {
            let t = ecs(api, scope, "DescribeTasks", json!({"cluster": cluster, "tasks": arns})).await?;
            tasks.extend(t["tasks"].as_array().cloned().unwrap_or_default());
        }
    }
    let (start, end, period) = bounds(window);
    let sd = [("ClusterName", cluster.as_str()), ("ServiceName", name)];
    let mut named = vec![
        ("cpu", query("AWS/ECS", "CPUUtilization", &sd, "Average")),
        ("memory", query("AWS/ECS", "MemoryUtilization", &sd, "Average")),
        ("cost", query(gantry_control::cost::NAMESPACE, "Cost", &sd, "Sum")),
        // Container Insights (when the cluster has it on): per-task network rates, and the
        // disk bytes of all tasks per period.
        ("networkRx", query(INSIGHTS, "NetworkRxBytes", &sd, "Average")),
        ("networkTx", query(INSIGHTS, "NetworkTxBytes", &sd, "Average")),
        ("storageRead", query(INSIGHTS, "StorageReadBytes", &sd, "Sum")),
        ("storageWrite", query(INSIGHTS, "StorageWriteBytes", &sd, "Sum")),
    ];
    let dims = lb_dimensions(api, scope, &s).await?;
    let (requests, failures) = request_queries(&dims);
    for (lb, tg) in &dims {
        let d = [("LoadBalancer", lb.as_str()), ("TargetGroup", tg.as_str())];
        named.push((
            "latencyP95",
            query("AWS/ApplicationELB", "TargetResponseTime", &d, "p95"),
        ));
    }
    let mut queries: Vec<Query> = named.iter().map(|(_, q)| q.clone()).collect();
    queries.extend(requests.iter().cloned());
    queries.extend(failures.iter().cloned());
    let got = fetch(api, scope, &queries, start, end, period).await?;
    let mut series = serde_json::Map::new();
    for (label, q) in &named {
        series.insert(label.to_string(), json!(got.get(q).cloned().unwrap_or_default()));
    }
    series.insert("requests".into(), json!(add(&pick(&got, &requests))));
    series.insert("failures".into(), json!(add(&pick(&got, &failures))));
    Ok(json!({"service": s, "tasks": tasks, "series": series, "start": start, "end": end, "period": period}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn slo_and_error_budget_follow_the_tag_and_the_counts() {
        assert!(close(slo_of(&json!({})), 0.999));
        let tagged = |v: &str| slo_of(&json!({"tags": [{"key": "gantry:slo", "value": v}]}));
        assert!(close(tagged("99.5"), 0.995));
        // Nonsense tags fall back to the default.
        assert!(close(tagged("150"), 0.999) && close(tagged("x"), 0.999));
        // 10,000 requests at 99.9%: 10 failures allowed; 5 spent leaves half.
        let (a, left) = request_slo(10_000.0, 5.0, 0.999).unwrap();
        assert!((a - 0.9995).abs() < 1e-12 && (left - 0.5).abs() < 1e-9);
        // 20 failures: the budget is overspent (negative).
        assert!(request_slo(10_000.0, 20.0, 0.999).unwrap().1 < 0.0);
        assert!(request_slo(0.0, 0.0, 0.999).is_none());
    }

    #[test]
    fn executive_rows_use_requests_when_there_are_some_else_tasks() {
        let s = json!({"desiredCount": 4, "runningCount": 3});
        let row = executive_row(&s, "c", "web", &vec![], &vec![], &vec![(0, 0.5), (60, 0.25)]);
        assert_eq!(row["source"], "tasks");
        assert_eq!(row["availability"], 0.75);
        assert_eq!(row["cost"], 0.75);
        assert_eq!(row["meetsSlo"], false);
        let requests = vec![(0, 100.0), (60, 100.0)];
        let failures = vec![(60, 50.0)];
        let row = executive_row(&s, "c", "web", &requests, &failures, &vec![]);
        assert_eq!(row["source"], "requests");
        assert_eq!(row["availability"], 0.75);
        assert_eq!(row["availabilitySeries"], json!([[0, 1.0], [60, 0.5]]));
    }

    #[test]
    fn failures_and_restart_loops() {
        let stop = |group: &str, at: f64, code: &str, exit: i64| {
            json!({"taskArn": format!("t{at}"), "clusterArn": "arn:aws:ecs:r:a:cluster/prod", "group": group,
                   "stoppedAt": at, "stopCode": code, "containers": [{"name": "app", "exitCode": exit}]})
        };
        let now = 10_000.0;
        let stopped = vec![
            stop("service:api", now - 10.0, "EssentialContainerExited", 1),
            stop("service:api", now - 100.0, "EssentialContainerExited", 137),
            stop("service:api", now - 200.0, "TaskFailedToStart", 0),
            stop("service:api", now - 5000.0, "EssentialContainerExited", 1),
            stop("service:web", now - 10.0, "UserInitiated", 0),
            stop("service:web", now - 20.0, "ServiceSchedulerInitiated", 0),
        ];
        let (failures, loops) = failures_and_loops(&stopped, now);
        assert_eq!(failures.len(), 4);
        assert_eq!(failures[0]["taskArn"], format!("t{}", now - 10.0));
        assert_eq!(
            loops,
            vec![json!({"cluster": "prod", "service": "api", "failedStops": 3, "withinSeconds": 900.0})]
        );
    }

    #[test]
    fn burn_rates_and_failing_deployments() {
        assert!(close(burn_rate(1000.0, 1.0, 0.999).unwrap(), 1.0));
        assert!(burn_rate(1000.0, 20.0, 0.999).unwrap() > FAST_BURN);
        assert_eq!(burn_rate(0.0, 0.0, 0.999), None);
        let services = vec![json!({"clusterArn": "x/prod", "serviceName": "api", "deployments": [
            {"id": "d1", "rolloutState": "FAILED", "failedTasks": 3},
            {"id": "d2", "rolloutState": "IN_PROGRESS", "failedTasks": 0},
            {"id": "d3", "rolloutState": "IN_PROGRESS", "failedTasks": 2},
            {"id": "d4", "rolloutState": "COMPLETED", "failedTasks": 9}]})];
        let ids: Vec<Value> = failing_deployments(&services)
            .iter()
            .map(|d| d["deployment"].clone())
            .collect();
        assert_eq!(ids, vec![json!("d1"), json!("d3")]);
    }

    #[test]
    fn windows() {
        assert_eq!(window_secs("24h").unwrap(), 86400);
        assert_eq!(window_secs("30d").unwrap(), 30 * 86400);
        for bad in ["", "1m", "31d", "h", "24x", "-1h"] {
            assert!(window_secs(bad).is_err(), "{bad}");
        }
    }
}
