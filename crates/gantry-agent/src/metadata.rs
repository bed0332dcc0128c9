//! The task metadata endpoint v4 and the task role's credentials endpoint (169.254.170.2),
//! served inside each task's own network namespace: the listener is created in that
//! namespace, so only the task's containers can reach it, and it answers only for its own
//! containers' ids. Beside it, a relay to the Gantry API, so the AWS SDKs in a task reach the
//! platform that vended their credentials.

use crate::link::RoleCredentials;
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
use std::future::IntoFuture;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

pub const ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 170, 2);
/// The endpoint's port inside the task. Not 80: a listener on 169.254.170.2:80 in the task's
/// namespace would keep the task's own server from binding 0.0.0.0:80. 51679 is the port the
/// ECS agent serves metadata on (ECS forwards 169.254.170.2:80 there); the URIs carry it, so
/// SDKs and scripts that read them find it.
pub const PORT: u16 = 51679;
/// Where the task reaches the Gantry API (a TCP relay to it). Like PORT, a task cannot bind
/// it for itself.
pub const API_PORT: u16 = 51680;
/// A role's credentials are fetched again when less than this is left of them (they last
/// `TASK_SESSION_SECONDS`): SDKs come back 15 minutes before the expiry they were handed.
const REFRESH_BEFORE_SECS: f64 = 3600.0;

/// What the task's endpoints offer its containers.
pub struct Offered {
    /// The task has a task role: its credentials endpoint answers.
    pub credentials: bool,
    /// The Gantry API is relayed to API_PORT.
    pub api: bool,
}

/// The environment a container gets to find its metadata, its role's credentials (the SDKs'
/// container credentials provider reads the relative URI; ECS forwards 169.254.170.2:80 to
/// the endpoint, as this node does in the task's namespace) and the API.
pub fn env_for(task_id: &str, container: &str, offered: &Offered) -> Vec<(String, String)> {
    let id = Node::runtime_id(task_id, &container_dir_name(container));
    let mut env = vec![
        (
            "ECS_CONTAINER_METADATA_URI_V4".into(),
            format!("http://{ADDR}:{PORT}/v4/{id}"),
        ),
        (
            "ECS_CONTAINER_METADATA_URI".into(),
            format!("http://{ADDR}:{PORT}/v3/{id}"),
        ),
    ];
    if offered.credentials {
        env.push((
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI".into(),
            format!("/v2/credentials/{task_id}"),
        ));
    }
    if offered.api {
        env.push(("AWS_ENDPOINT_URL".into(), format!("http://{ADDR}:{API_PORT}")));
    }
    env
}

#[derive(Clone)]
struct Ctx {
    agent: Arc<Agent>,
    key: String,
    task_id: String,
    /// Previous CPU samples per container, for precpu_stats.
    prev: Arc<Mutex<HashMap<String, Value>>>,
    /// The role credentials last handed out, with their expiry (epoch seconds); one fetch
    /// at a time.
    credentials: Arc<tokio::sync::Mutex<Option<(RoleCredentials, f64)>>>,
}

/// A tokio listener on `addr:port` in the task's namespace.
fn listen(sb: &gantry_runtime::net::Sandbox, port: u16) -> Result<tokio::net::TcpListener, String> {
    let listener = Network::listen_in(sb, ADDR, port).map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())
}

/// Starts the endpoints for a task (and the API relay to `api`, if any); they stop when the
/// returned handle is aborted.
pub fn serve(
    a: &Arc<Agent>,
    key: &str,
    task_id: &str,
    api: Option<std::net::SocketAddr>,
) -> Result<tokio::task::AbortHandle, String> {
    let sb = a.node.sandbox(task_id).ok_or("task has no sandbox")?;
    let listener = listen(&sb, PORT)?;
    let relay = api.map(|to| listen(&sb, API_PORT).map(|l| (l, to))).transpose()?;
    // 169.254.170.2:80 is forwarded here by the task's own nftables rules
    // (`security::base_namespace_rules`, applied when the namespace is made).
    let ctx = Ctx {
        agent: a.clone(),
        key: key.to_string(),
        task_id: task_id.to_string(),
        prev: Default::default(),
        credentials: Default::default(),
    };
    let app = axum::Router::new()
        .route("/v4/{id}", get(container_doc))
        .route("/v3/{id}", get(container_doc))
        .route("/v4/{id}/task", get(task_doc))
        .route("/v3/{id}/task", get(task_doc))
        .route("/v4/{id}/taskWithTags", get(task_with_tags))
        .route("/v4/{id}/stats", get(container_stats))
        .route("/v4/{id}/task/stats", get(task_stats))
        .route("/v2/credentials/{id}", get(credentials))
        .with_state(ctx);
    let h = tokio::spawn(async move {
        let relay = async move {
            if let Some((l, to)) = relay {
                crate::ports::relay_tcp(l, to).await;
            }
        };
        let _ = tokio::join!(axum::serve(listener, app).into_future(), relay);
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

/// The task's record. Only the task's own containers call here, so its start is past
/// ACTIVATING; a record that does not say so yet lags behind a quick start, whose statuses
/// are written at once when it is RUNNING (`StartRecords`). Wait for that write, within a
/// bound (the start writes what it reached 100 ms in at the latest), rather than answer
/// without the task's network.
async fn record(ctx: &Ctx) -> Option<TaskRecord> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline && lags(&ctx.agent, &ctx.key) {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    ctx.agent.link.get_task(&ctx.key).await.ok()?.map(|(rec, _)| rec)
}

/// Whether the newest record this agent holds for the task is from before ACTIVATING.
fn lags(a: &Agent, key: &str) -> bool {
    let records = a.records.lock().expect("lock");
    records
        .get(key)
        .is_some_and(|(r, _)| matches!(r.task.last_status.as_str(), "PROVISIONING" | "PENDING"))
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
        "EphemeralStorageMetrics": ephemeral_storage_metrics(ctx, rec),
    })
}

/// The task's ephemeral storage in MiB, as Fargate reports it: in use (read off the task's
/// filesystem), and reserved (the task's size).
fn ephemeral_storage_metrics(ctx: &Ctx, rec: &TaskRecord) -> Value {
    let reserved = crate::supervise::storage_gib(rec) * 1024;
    let used = ctx
        .agent
        .node
        .task_storage(&ctx.task_id)
        .map(|(_, used)| used >> 20)
        .unwrap_or(0);
    json!({"Utilized": used, "Reserved": reserved})
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

/// The credentials endpoint's error, as the ECS agent words it.
fn credentials_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!({"code": code, "message": message}))).into_response()
}

/// Whether credentials expiring at `expires` may still be handed out at `now`.
fn fresh(expires: f64, now: f64) -> bool {
    expires - now > REFRESH_BEFORE_SECS
}

/// The task role's credentials (the SDKs' container credentials provider): this task's only,
/// fetched through the link when none are cached or the cached ones near their expiry.
async fn credentials(State(ctx): State<Ctx>, Path(id): Path<String>) -> Response {
    if id != ctx.task_id {
        return credentials_error(
            StatusCode::BAD_REQUEST,
            "InvalidIdInRequest",
            "CredentialsV2Request: Credentials not found",
        );
    }
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    let mut cached = ctx.credentials.lock().await;
    if let Some((c, _)) = cached.as_ref().filter(|(_, exp)| fresh(*exp, now)) {
        return axum::Json(c.clone()).into_response();
    }
    match ctx.agent.link.task_credentials(&ctx.key).await {
        Ok(Ok(c)) => {
            let expires = chrono::DateTime::parse_from_rfc3339(&c.expiration)
                .map(|d| d.timestamp() as f64)
                .unwrap_or(now);
            *cached = Some((c.clone(), expires));
            axum::Json(c).into_response()
        }
        Ok(Err(reason)) if reason.contains("no task role") => {
            credentials_error(StatusCode::BAD_REQUEST, "NoCredentialsAssociated", &reason)
        }
        Ok(Err(reason)) => credentials_error(StatusCode::INTERNAL_SERVER_ERROR, "CredentialsUninitialized", &reason),
        Err(e) => credentials_error(StatusCode::SERVICE_UNAVAILABLE, "InternalServerError", &e.to_string()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_refetched_an_hour_before_they_expire() {
        let t = 1_800_000_000.0;
        assert!(fresh(t + 6.0 * 3600.0, t));
        assert!(fresh(t + 3601.0, t));
        assert!(!fresh(t + 3600.0, t));
        assert!(!fresh(t - 1.0, t));
    }

    #[test]
    fn containers_learn_the_endpoints_their_task_has() {
        let names = |o: &Offered| -> Vec<String> { env_for("abc", "web", o).into_iter().map(|(k, _)| k).collect() };
        let all = Offered {
            credentials: true,
            api: true,
        };
        let env = env_for("abc", "web", &all);
        assert!(env.contains(&(
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI".into(),
            "/v2/credentials/abc".into()
        )));
        assert!(env.contains(&("AWS_ENDPOINT_URL".into(), "http://169.254.170.2:51680".into())));
        let none = names(&Offered {
            credentials: false,
            api: false,
        });
        assert_eq!(none, ["ECS_CONTAINER_METADATA_URI_V4", "ECS_CONTAINER_METADATA_URI"]);
    }
}
