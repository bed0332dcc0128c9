//! `gantry cost`: what tasks cost over a window, by cluster, service or tag, read from the
//! `Gantry/Cost` metrics the leader meters each minute; for services behind a load balancer
//! also the cost per 1,000 requests (from AWS/ApplicationELB RequestCount).

use crate::client::Client;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct CostArgs {
    /// The window, back from now: 30m, 24h, 7d...
    #[arg(long, default_value = "24h")]
    since: String,
    /// Group by `cluster`, `service` or `tag:KEY` (cost allocation by a task tag).
    #[arg(long, default_value = "service")]
    by: String,
    /// Print JSON rows instead of a table.
    #[arg(long)]
    json: bool,
}

/// "30m", "24h", "7d" in seconds (at least a minute, at most 455 days).
fn window_secs(s: &str) -> Result<i64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = n
        .parse()
        .with_context(|| format!("--since {s}: expected a number then m, h or d"))?;
    let secs = match unit {
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => bail!("--since {s}: expected a number then m, h or d"),
    };
    if !(60..=455 * 86400).contains(&secs) {
        bail!("--since {s}: the window must be between 1 minute and 455 days");
    }
    Ok(secs)
}

/// The ListMetrics dimension filter and the dimensions that name a row, for `--by`.
fn grouping(by: &str) -> Result<(Value, Vec<String>)> {
    Ok(match by {
        "cluster" => (json!([{"Name": "ClusterName"}]), vec!["ClusterName".into()]),
        "service" => (
            json!([{"Name": "ClusterName"}, {"Name": "ServiceName"}]),
            vec!["ClusterName".into(), "ServiceName".into()],
        ),
        tag if tag.starts_with("tag:") && tag.len() > 4 => (
            json!([{"Name": "TagKey", "Value": &tag[4..]}, {"Name": "TagValue"}]),
            vec!["TagValue".into()],
        ),
        _ => bail!("--by {by}: expected cluster, service or tag:KEY"),
    })
}

/// The series of `metric` in `namespace` with exactly the dimensions `filter` names.
fn series(c: &Client, namespace: &str, metric: &str, filter: &Value) -> Result<Vec<Value>> {
    let wanted = filter.as_array().map(Vec::len).unwrap_or(0);
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = json!({"Namespace": namespace, "MetricName": metric, "Dimensions": filter});
        if let Some(t) = &token {
            req["NextToken"] = json!(t);
        }
        let page = c.cloudwatch("ListMetrics", req)?;
        for m in page["Metrics"].as_array().into_iter().flatten() {
            let dims = m["Dimensions"].as_array().map(Vec::len).unwrap_or(0);
            if dims == wanted {
                out.push(m["Dimensions"].clone());
            }
        }
        match page["NextToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => return Ok(out),
        }
    }
}

/// The Sum of each metric over [start, end) as one period.
fn sums(c: &Client, metrics: &[(String, String, Value)], start: i64, end: i64) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(metrics.len());
    for chunk in metrics.chunks(500) {
        let queries: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, (ns, name, dims))| {
                json!({"Id": format!("q{i}"), "ReturnData": true, "MetricStat": {
                    "Metric": {"Namespace": ns, "MetricName": name, "Dimensions": dims},
                    "Period": end - start, "Stat": "Sum"}})
            })
            .collect();
        let r = c.cloudwatch(
            "GetMetricData",
            json!({"MetricDataQueries": queries, "StartTime": start, "EndTime": end}),
        )?;
        let results = r["MetricDataResults"].as_array().cloned().unwrap_or_default();
        for i in 0..chunk.len() {
            let id = format!("q{i}");
            let v = results
                .iter()
                .find(|q| q["Id"] == id.as_str())
                .and_then(|q| q["Values"].as_array())
                .map(|vs| vs.iter().filter_map(Value::as_f64).sum())
                .unwrap_or(0.0);
            out.push(v);
        }
    }
    Ok(out)
}

fn dim<'a>(dims: &'a Value, name: &str) -> &'a str {
    dims.as_array()
        .into_iter()
        .flatten()
        .find(|d| d["Name"] == name)
        .and_then(|d| d["Value"].as_str())
        .unwrap_or("")
}

/// The requests a service's target groups answered over the window, or None when it has no
/// load balancer.
fn service_requests(c: &Client, cluster: &str, service: &str, start: i64, end: i64) -> Result<Option<f64>> {
    let d = c.ecs("DescribeServices", json!({"cluster": cluster, "services": [service]}))?;
    let groups: Vec<String> = d["services"][0]["loadBalancers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|lb| lb["targetGroupArn"].as_str())
        .filter_map(|arn| arn.rsplit(':').next().map(str::to_string))
        .collect();
    if groups.is_empty() {
        return Ok(None);
    }
    let mut metrics = Vec::new();
    for tg in groups {
        let filter = json!([{"Name": "TargetGroup", "Value": tg}, {"Name": "LoadBalancer"}]);
        for dims in series(c, "AWS/ApplicationELB", "RequestCount", &filter)? {
            metrics.push(("AWS/ApplicationELB".to_string(), "RequestCount".to_string(), dims));
        }
    }
    Ok(Some(sums(c, &metrics, start, end)?.iter().sum()))
}

pub fn run(a: CostArgs) -> Result<i32> {
    let c = Client::from_env()?;
    let secs = window_secs(&a.since)?;
    let (filter, names) = grouping(&a.by)?;
    let now = chrono::Utc::now().timestamp();
    let end = (now / 60 + 1) * 60;
    let start = end - secs.div_euclid(60).max(1) * 60;
    let rows = series(&c, gantry_control::cost::NAMESPACE, "Cost", &filter)?;
    let mut metrics = Vec::new();
    for dims in &rows {
        for name in ["Cost", "vCPUSeconds", "GBSeconds"] {
            metrics.push((
                gantry_control::cost::NAMESPACE.to_string(),
                name.to_string(),
                dims.clone(),
            ));
        }
    }
    let totals = sums(&c, &metrics, start, end)?;
    let mut out = Vec::new();
    for (i, dims) in rows.iter().enumerate() {
        let (dollars, vcpu_s, gb_s) = (totals[i * 3], totals[i * 3 + 1], totals[i * 3 + 2]);
        let mut row = json!({"cost": dollars, "vcpuHours": vcpu_s / 3600.0, "gbHours": gb_s / 3600.0});
        for n in &names {
            row[n] = json!(dim(dims, n));
        }
        if a.by == "service" {
            let requests = service_requests(&c, dim(dims, "ClusterName"), dim(dims, "ServiceName"), start, end)?;
            if let Some(r) = requests {
                row["requests"] = json!(r);
                if r > 0.0 {
                    row["costPer1000Requests"] = json!(dollars / r * 1000.0);
                }
            }
        }
        out.push(row);
    }
    out.sort_by(|x, y| {
        y["cost"]
            .as_f64()
            .partial_cmp(&x["cost"].as_f64())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&out, &names, &a.since);
    }
    Ok(0)
}

fn print_table(rows: &[Value], names: &[String], since: &str) {
    let mut header: Vec<String> = names.iter().map(|n| n.to_uppercase()).collect();
    header.extend(["VCPU-HOURS", "GB-HOURS", "COST ($)", "REQUESTS", "$ / 1K REQ"].map(String::from));
    println!("Cost over the last {since}:");
    println!("{}", header.join("\t"));
    for r in rows {
        let mut cells: Vec<String> = names.iter().map(|n| r[n].as_str().unwrap_or("").to_string()).collect();
        cells.push(format!("{:.3}", r["vcpuHours"].as_f64().unwrap_or(0.0)));
        cells.push(format!("{:.3}", r["gbHours"].as_f64().unwrap_or(0.0)));
        cells.push(format!("{:.4}", r["cost"].as_f64().unwrap_or(0.0)));
        cells.push(r["requests"].as_f64().map(|v| format!("{v:.0}")).unwrap_or("-".into()));
        cells.push(
            r["costPer1000Requests"]
                .as_f64()
                .map(|v| format!("{v:.4}"))
                .unwrap_or("-".into()),
        );
        println!("{}", cells.join("\t"));
    }
    let total: f64 = rows.iter().filter_map(|r| r["cost"].as_f64()).sum();
    println!("TOTAL\t{total:.4}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_with_units_and_bounds() {
        assert_eq!(window_secs("30m").unwrap(), 1800);
        assert_eq!(window_secs("24h").unwrap(), 86400);
        assert_eq!(window_secs("7d").unwrap(), 7 * 86400);
        for bad in ["", "h", "10", "5s", "0m", "456d", "-1h", "1.5h"] {
            assert!(window_secs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn groupings() {
        assert_eq!(grouping("tag:team").unwrap().1, vec!["TagValue".to_string()]);
        assert!(grouping("tag:").is_err());
        assert!(grouping("zone").is_err());
    }
}
