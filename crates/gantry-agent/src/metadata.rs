//! The task metadata endpoint v4 (169.254.170.2), served inside each task's own network
//! namespace: the listener is created in that namespace, so only the task's containers can
//! reach it, and it answers only for its own containers' ids.

use crate::supervise::container_dir_name;
use crate::Agent;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gantry_control::TaskRecord;
use gantry_runtime::net::Network;
use gantry_runtime::task::{ContainerState, Node};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

pub const ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 170, 2);
/// The endpoint's port inside the task. Not 80: a listener on 169.254.170.2:80 in the task's
/// namespace would keep the task's own server from binding 0.0.0.0:80. 51679 is the port the
/// ECS agent serves metadata on (ECS forwards 169.254.170.2:80 there); the URIs carry it, so
/// SDKs and scripts that read them find it.
pub const PORT: u16 = 51679;

/// The environment a container gets to find its metadata.
pub fn env_for(task_id: &str, container: &str) -> Vec<(String, String)> {
    let id = Node::runtime_id(task_id, &container_dir_name(container));
    vec![
        (
            "ECS_CONTAINER_METADATA_URI_V4".into(),
            format!("http://{ADDR}:{PORT}/v4/{id}"),
        ),
        (
            "ECS_CONTAINER_METADATA_URI".into(),
            format!("http://{ADDR}:{PORT}/v3/{id}"),
        ),
    ]
}

#[derive(Clone)]
struct Ctx {
    agent: Arc<Agent>,
    key: String,
    task_id: String,
    /// Previous CPU samples per container, for precpu_stats.
    prev: Arc<Mutex<HashMap<String, Value>>>,
}

/// Starts the endpoint for a task; the server stops when the returned handle is aborted.
pub fn serve(a: &Arc<Agent>, key: &str, task_id: &str) -> Result<tokio::task::AbortHandle, String> {
    let sb = a.node.sandbox(task_id).ok_or("task has no sandbox")?;
    let listener = Network::listen_in(&sb, ADDR, PORT).map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    let ctx = Ctx {
        agent: a.clone(),
        key: key.to_string(),
        task_id: task_id.to_string(),
        prev: Default::default(),
    };
    let app = axum::Router::new()
        .route("/v4/{id}", get(container_doc))
        .route("/v3/{id}", get(container_doc))
        .route("/v4/{id}/task", get(task_doc))
        .route("/v3/{id}/task", get(task_doc))
        .route("/v4/{id}/taskWithTags", get(task_with_tags))
        .route("/v4/{id}/stats", get(container_stats))
        .route("/v4/{id}/task/stats", get(task_stats))
        .with_state(ctx);
    let h = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(h.abort_handle())
}

fn not_found(id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("unknown container id {id}: this endpoint serves its own task only\n"),
    )
        .into_response()
}

async fn record(ctx: &Ctx) -> Option<TaskRecord> {
    ctx.agent.link.get_task(&ctx.key).await.ok()?.map(|(rec, _)| rec)
}

/// The ECS container name whose runtime id is `id`, if it belongs to this task.
fn container_of<'a>(ctx: &Ctx, rec: &'a TaskRecord, id: &str) -> Option<&'a gantry_control::TaskSpecContainer> {
    rec.containers
        .iter()
        .find(|c| Node::runtime_id(&ctx.task_id, &container_dir_name(c.name())) == id)
}

fn iso(t: Option<f64>) -> Value {
    t.and_then(|s| chrono::DateTime::from_timestamp_millis((s * 1000.0) as i64))
        .map(|d| json!(d.to_rfc3339()))
        .unwrap_or(Value::Null)
}

fn container_json(ctx: &Ctx, rec: &TaskRecord, c: &gantry_control::TaskSpecContainer) -> Value {
    let runtime_id = Node::runtime_id(&ctx.task_id, &container_dir_name(c.name()));
    let st = rec.task.containers.iter().find(|x| x.name == c.name());
    let (family, revision) = rec
        .task
        .task_definition_arn
        .rsplit('/')
        .next()
        .and_then(|s| s.rsplit_once(':'))
        .unwrap_or(("", ""));
    let details: HashMap<String, String> = rec
        .task
        .attachments
        .first()
        .map(|a| {
            a.details
                .iter()
                .filter_map(|d| Some((d.name.clone()?, d.value.clone()?)))
                .collect()
        })
        .unwrap_or_default();
    let mut v = json!({
        "DockerId": runtime_id,
        "Name": c.name(),
        "DockerName": runtime_id,
        "Image": c.image,
        "ImageID": st.and_then(|s| s.image_digest.clone()),
        "Labels": {
            "com.amazonaws.ecs.cluster": rec.task.cluster_arn,
            "com.amazonaws.ecs.container-name": c.name(),
            "com.amazonaws.ecs.task-arn": rec.task.task_arn,
            "com.amazonaws.ecs.task-definition-family": family,
            "com.amazonaws.ecs.task-definition-version": revision,
        },
        "DesiredStatus": rec.task.desired_status,
        "KnownStatus": st.map(|s| s.last_status.clone()).unwrap_or_default(),
        "Limits": {"CPU": c.cpu.unwrap_or(0), "Memory": c.memory.unwrap_or(rec.memory_mib)},
        "CreatedAt": iso(Some(rec.task.created_at)),
        "StartedAt": iso(rec.task.started_at),
        "Type": "NORMAL",
        "ContainerARN": st.map(|s| s.container_arn.clone()).unwrap_or_default(),
        "Networks": [{
            "NetworkMode": "awsvpc",
            "IPv4Addresses": [details.get("privateIPv4Address").cloned().unwrap_or_default()],
            "AttachmentIndex": 0,
            "MACAddress": details.get("macAddress").cloned().unwrap_or_default(),
            "PrivateDNSName": details.get("privateDNSName").cloned().unwrap_or_default(),
        }],
    });
    if let Some(h) = st.map(|s| s.health_status.clone()).filter(|h| h != "UNKNOWN") {
        v["Health"] = json!({"status": h});
    }
    if let Some(code) = st.and_then(|s| s.exit_code) {
        v["ExitCode"] = json!(code);
    }
    if let Some(l) = &c.log_configuration {
        v["LogDriver"] = json!(l.log_driver);
        v["LogOptions"] = json!(l.options);
    }
    v
}

fn task_json(ctx: &Ctx, rec: &TaskRecord) -> Value {
    let (family, revision) = rec
        .task
        .task_definition_arn
        .rsplit('/')
        .next()
        .and_then(|s| s.rsplit_once(':'))
        .unwrap_or(("", ""));
    json!({
        "Cluster": rec.task.cluster_arn,
        "TaskARN": rec.task.task_arn,
        "Family": family,
        "Revision": revision,
        "DesiredStatus": rec.task.desired_status,
        "KnownStatus": rec.task.last_status,
        "Limits": {"CPU": rec.cpu_units as f64 / 1024.0, "Memory": rec.memory_mib},
        "PullStartedAt": iso(rec.task.pull_started_at),
        "PullStoppedAt": iso(rec.task.pull_stopped_at),
        "AvailabilityZone": rec.task.availability_zone,
        "LaunchType": "FARGATE",
        "Containers": rec.containers.iter().map(|c| container_json(ctx, rec, c)).collect::<Vec<_>>(),
        "ClockDrift": {"ClockErrorBound": 0.5, "ReferenceTimestamp": chrono::Utc::now().to_rfc3339(), "ClockSynchronizationStatus": "SYNCHRONIZED"},
        "EphemeralStorageMetrics": {"Utilized": 0, "Reserved": rec.task.ephemeral_storage.as_ref().map(|e| e.size_in_gi_b * 1024).unwrap_or(20480)},
    })
}

/// This task's record and the ECS name of the container `id` names, or a 404 for any id that
/// is not one of this task's containers.
async fn lookup(ctx: &Ctx, id: &str) -> Result<(TaskRecord, String), Response> {
    let rec = record(ctx).await.ok_or_else(|| not_found(id))?;
    let name = container_of(ctx, &rec, id)
        .map(|c| c.name().to_string())
        .ok_or_else(|| not_found(id))?;
    Ok((rec, name))
}

async fn container_doc(State(ctx): State<Ctx>, Path(id): Path<String>) -> Response {
    match lookup(&ctx, &id).await {
        Ok((rec, name)) => {
            let c = rec
                .containers
                .iter()
                .find(|c| c.name() == name)
                .expect("lookup found it");
            axum::Json(container_json(&ctx, &rec, c)).into_response()
        }
        Err(r) => r,
    }
}

async fn task_doc(State(ctx): State<Ctx>, Path(id): Path<String>) -> Response {
    match lookup(&ctx, &id).await {
        Ok((rec, _)) => axum::Json(task_json(&ctx, &rec)).into_response(),
        Err(r) => r,
    }
}

async fn task_with_tags(State(ctx): State<Ctx>, Path(id): Path<String>) -> Response {
    let rec = match lookup(&ctx, &id).await {
        Ok((rec, _)) => rec,
        Err(r) => return r,
    };
    let mut v = task_json(&ctx, &rec);
    let tags: HashMap<String, String> = rec
        .task
        .tags
        .iter()
        .flatten()
        .filter_map(|t| Some((t.key.clone()?, t.value.clone().unwrap_or_default())))
        .collect();
    v["TaskTags"] = json!(tags);
    axum::Json(v).into_response()
}

/// Network counters of the namespace a process lives in (the host's view of its net/dev).
fn net_dev(pid: i32) -> Value {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_default();
    let mut nets = serde_json::Map::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name == "lo" {
            continue;
        }
        let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if f.len() >= 12 {
            nets.insert(
                name.to_string(),
                json!({"rx_bytes": f[0], "rx_packets": f[1], "rx_errors": f[2], "rx_dropped": f[3],
                       "tx_bytes": f[8], "tx_packets": f[9], "tx_errors": f[10], "tx_dropped": f[11]}),
            );
        }
    }
    Value::Object(nets)
}

fn system_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .map(|l| l.split_whitespace().skip(1).filter_map(|x| x.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    ticks * 10_000_000 // USER_HZ is 100 on Linux
}

fn stats_json(ctx: &Ctx, container: &str) -> Value {
    let dir = container_dir_name(container);
    let runtime_id = Node::runtime_id(&ctx.task_id, &dir);
    let s = ctx.agent.node.container_stats(&ctx.task_id, &dir);
    let pid = match ctx.agent.node.container_state(&ctx.task_id, &dir) {
        ContainerState::Running(st) => st.container_pid,
        _ => 0,
    };
    let now = chrono::Utc::now().to_rfc3339();
    let cpu = json!({
        "cpu_usage": {"total_usage": s.cpu_usage_ns.unwrap_or(0), "usage_in_kernelmode": 0, "usage_in_usermode": 0},
        "system_cpu_usage": system_cpu_ns(),
        "online_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
    });
    let mut prev = ctx.prev.lock().expect("stats lock");
    let (pre, preread) = prev
        .get(&runtime_id)
        .cloned()
        .map(|p| (p["cpu"].clone(), p["read"].clone()))
        .unwrap_or((
            json!({"cpu_usage": {"total_usage": 0}, "system_cpu_usage": 0, "online_cpus": 0}),
            json!("0001-01-01T00:00:00Z"),
        ));
    prev.insert(runtime_id.clone(), json!({"cpu": cpu, "read": now}));
    json!({
        "read": now,
        "preread": preread,
        "name": runtime_id,
        "id": runtime_id,
        "pids_stats": {"current": s.pids_current.unwrap_or(0), "limit": s.pids_limit},
        "cpu_stats": cpu,
        "precpu_stats": pre,
        "memory_stats": {"usage": s.memory_bytes.unwrap_or(0), "limit": s.memory_limit_bytes.unwrap_or(0), "stats": {}},
        "networks": if pid > 0 { net_dev(pid) } else { json!({}) },
    })
}

async fn container_stats(State(ctx): State<Ctx>, Path(id): Path<String>) -> Response {
    match lookup(&ctx, &id).await {
        Ok((_, name)) => axum::Json(stats_json(&ctx, &name)).into_response(),
        Err(r) => r,
    }
}

async fn task_stats(State(ctx): State<Ctx>, Path(id): Path<String>) -> Response {
    let rec = match lookup(&ctx, &id).await {
        Ok((rec, _)) => rec,
        Err(r) => return r,
    };
    let all: serde_json::Map<String, Value> = rec
        .containers
        .iter()
        .map(|c| {
            (
                Node::runtime_id(&ctx.task_id, &container_dir_name(c.name())),
                stats_json(&ctx, c.name()),
            )
        })
        .collect();
    axum::Json(Value::Object(all)).into_response()
}
