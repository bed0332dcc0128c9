//! `GET /metrics` on the API listener, in Prometheus' text format: the API's own request
//! counts and latencies, what this process's node and load balancers recorded (the same
//! registry), and gauges read from the state at scrape time: tasks by status, each service's
//! desired and running counts and availability, its hourly cost at the configured prices, and
//! nodes by status. A bearer token (`GANTRY_METRICS_TOKEN`) guards it when set.

use crate::api::Api;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use gantry_prom::{Metric, Sample, SECONDS};
use gantry_types::arn::cluster_name;
use std::collections::BTreeMap;

static API_REQUESTS: Metric = Metric::counter(
    "gantry_api_requests_total",
    "AWS API requests answered, by service (signing name), operation and HTTP status.",
    &["service", "operation", "code"],
);

static API_LATENCY: Metric = Metric::histogram(
    "gantry_api_request_duration_seconds",
    "Time to answer an AWS API request, by service and operation.",
    &["service", "operation"],
    SECONDS,
);

/// Records one answered request.
pub fn record(service: &str, operation: &str, status: u16, seconds: f64) {
    API_REQUESTS.inc(&[service, operation, &status.to_string()]);
    API_LATENCY.observe(&[service, operation], seconds);
}

fn sample(name: &'static str, help: &'static str, labels: Vec<(&'static str, String)>, value: f64) -> Sample {
    Sample {
        name,
        help,
        labels,
        value,
    }
}

/// The state-derived gauges, or why they could not be read.
async fn state(api: &Api) -> Result<Vec<Sample>, String> {
    let c = &api.control;
    let tasks = c.all_tasks().await.map_err(|e| e.to_string())?;
    let mut by_status: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    // What running tasks cost per hour, per service.
    let mut hourly: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    for (_, t, _) in &tasks {
        let cluster = cluster_name(&t.cluster).to_string();
        *by_status
            .entry((t.account.clone(), cluster.clone(), t.task.last_status.clone()))
            .or_default() += 1.0;
        if t.task.last_status == "RUNNING" {
            let service = t.task.group.clone().unwrap_or_default();
            let spot = t.task.capacity_provider_name.as_deref() == Some("FARGATE_SPOT");
            let (vcpu, gb) = (t.cpu_units as f64 / 1024.0, t.memory_mib as f64 / 1024.0);
            *hourly.entry((t.account.clone(), cluster, service)).or_default() +=
                c.prices.dollars(vcpu * 3600.0, gb * 3600.0, spot);
        }
    }
    let mut out = Vec::new();
    for ((account, cluster, status), n) in by_status {
        let labels = vec![("account", account), ("cluster", cluster), ("status", status)];
        out.push(sample("gantry_tasks", "Tasks by last status.", labels, n));
    }
    let services = c.all_services().await.map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for (_, s, _) in services.iter().filter(|(_, s, _)| s.service.status == "ACTIVE") {
        let labels = vec![
            ("account", s.account.clone()),
            ("cluster", cluster_name(&s.cluster).to_string()),
            ("service", s.service.service_name.clone()),
        ];
        let (desired, running) = (s.service.desired_count as f64, s.service.running_count as f64);
        let availability = if desired == 0.0 {
            1.0
        } else {
            (running / desired).min(1.0)
        };
        let group = format!("service:{}", s.service.service_name);
        let cost = hourly
            .get(&(s.account.clone(), cluster_name(&s.cluster).to_string(), group))
            .copied()
            .unwrap_or_default();
        rows.push((labels, desired, running, availability, cost));
    }
    // Grouped by metric, as the text format wants.
    for (labels, desired, ..) in &rows {
        out.push(sample(
            "gantry_service_desired_tasks",
            "A service's desired count.",
            labels.clone(),
            *desired,
        ));
    }
    for (labels, _, running, ..) in &rows {
        out.push(sample(
            "gantry_service_running_tasks",
            "A service's running tasks.",
            labels.clone(),
            *running,
        ));
    }
    for (labels, _, _, availability, _) in &rows {
        let help = "Running over desired tasks (1 when none are desired): the task availability SLI.";
        out.push(sample(
            "gantry_service_task_availability",
            help,
            labels.clone(),
            *availability,
        ));
    }
    for (labels, .., cost) in &rows {
        let help =
            "What the service's running tasks cost per hour at the configured prices (Spot discounted), in dollars.";
        out.push(sample(
            "gantry_service_cost_dollars_per_hour",
            help,
            labels.clone(),
            *cost,
        ));
    }
    let mut nodes: BTreeMap<String, f64> = BTreeMap::new();
    for n in c.nodes().await.map_err(|e| e.to_string())? {
        *nodes.entry(n.status.clone()).or_default() += 1.0;
    }
    for (status, n) in nodes {
        out.push(sample("gantry_nodes", "Nodes by status.", vec![("status", status)], n));
    }
    Ok(out)
}

pub async fn scrape(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Some(token) = &api.metrics_token {
        let given = headers.get("authorization").and_then(|v| v.to_str().ok());
        if given != Some(format!("Bearer {token}").as_str()) {
            return (StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response();
        }
    }
    let (samples, up) = match state(&api).await {
        Ok(s) => (s, 1.0),
        Err(e) => {
            tracing::warn!(error = %e, "reading state for /metrics");
            (vec![], 0.0)
        }
    };
    let mut all = vec![sample(
        "gantry_state_readable",
        "1 when the state store answered this scrape (the state gauges are missing otherwise).",
        vec![],
        up,
    )];
    all.extend(samples);
    let body = gantry_prom::render(&all);
    ([("content-type", gantry_prom::CONTENT_TYPE)], body).into_response()
}
