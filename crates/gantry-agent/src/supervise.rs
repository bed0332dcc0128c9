//! One task's journey on this node: launch (pull, sandbox, containers in dependsOn order),
//! watch (exits, StopTask, essential container exits), and finish (exit codes, cleanup,
//! STOPPED). Every step is written to the task record, so a restarted agent resumes.

use crate::link::{awslogs_target, Written};
use crate::logship::Shipper;
use crate::telemetry::TASK_START;
use crate::{ports, Agent};
use gantry_control::{TaskRecord, TaskSpecContainer};
use gantry_runtime::bundle::{ContainerSpec, Limits, Rlimit, VolumeMount};
use gantry_runtime::image::ImageRecord;
use gantry_runtime::net::SandboxKind;
use gantry_runtime::task::ContainerState;
use gantry_types::model::{stop_code, NetworkInterface};
use gantry_types::taskdef::NetworkMode;
use gantry_types::taskdef::{start_order, KeyValuePair};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

const OOM_REASON: &str = "OutOfMemoryError: Container killed due to memory usage";

fn now() -> f64 {
    chrono::Utc::now().timestamp_millis() as f64 / 1000.0
}

type Result<T> = std::result::Result<T, String>;

/// Read-modify-write of the task record through the link, retried on conflict; bumps
/// `version` when `f` changed something. A record the control plane has already STOPPED
/// (its node was declared lost) is final: nothing is written, the agent only cleans up.
/// The first try starts from the newest record this agent knows (no read: one round trip
/// to the server instead of two); the revision check catches any change since, and then the
/// record is read. Deciding *not* to write is only ever done on a freshly read record.
pub(crate) async fn update(a: &Agent, key: &str, mut f: impl FnMut(&mut TaskRecord) -> bool) -> Result<TaskRecord> {
    let mut known = a.records.lock().expect("lock").get(key).cloned();
    loop {
        let from_cache = known.is_some();
        let (mut rec, rev) = match known.take() {
            Some(w) => w,
            None => get(a, key).await?.ok_or_else(|| format!("task {key} vanished"))?,
        };
        if rec.task.last_status == "STOPPED" {
            return Ok(rec);
        }
        let before = rec.clone();
        if !f(&mut rec) || rec == before {
            if from_cache {
                continue;
            }
            return Ok(rec);
        }
        rec.task.version += 1;
        match a.link.put_task(key, &rec, rev).await? {
            Written::Ok(new_rev) => {
                a.learn_if_supervised(key, rec.clone(), new_rev);
                return Ok(rec);
            }
            Written::Conflict => continue,
            Written::Gone => return Err(format!("task {key} vanished")),
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task panicked")
}

/// Supervises the task from `seed` (the record and its revision, as a watch event brought
/// it) or from a fresh read. A seed that is stale by now is safe: the start's writes check the
/// revision and read again on a conflict, and the change that made it stale wakes `changed`.
pub async fn supervise(a: &Arc<Agent>, key: &str, seed: Option<(TaskRecord, i64)>, changed: &Notify) -> Result<()> {
    let (rec, rev) = match seed {
        Some(s) => s,
        None => match get(a, key).await? {
            Some(s) => s,
            None => return Ok(()),
        },
    };
    // The first write starts from this record (`update`).
    a.learn(key, rec.clone(), rev);
    let id = rec.id().to_string();
    let started_here = a.node.task_dir(&id).exists();
    let mut shippers: HashMap<String, Shipper> = HashMap::new();
    if !started_here {
        match rec.task.last_status.as_str() {
            "PROVISIONING" | "PENDING" | "ACTIVATING" if rec.task.desired_status == "RUNNING" => {
                if let Err(reason) = launch(a, key, &rec, &mut shippers).await {
                    return fail(a, key, &id, &reason, shippers, changed).await;
                }
            }
            "PROVISIONING" | "PENDING" | "ACTIVATING" => {
                // Stopped before it ever started.
                return finish(a, key, &id, shippers).await;
            }
            _ => {
                // Its containers are gone (the node rebooted or its directory was removed).
                update(a, key, |r| {
                    r.task.desired_status = "STOPPED".into();
                    r.task
                        .stopped_reason
                        .get_or_insert_with(|| "Task stopped: its containers were lost on the node".into());
                    true
                })
                .await?;
                return finish(a, key, &id, shippers).await;
            }
        }
    } else if rec.task.desired_status == "RUNNING" && lifecycle_before(&rec.task.last_status, "RUNNING") {
        // The agent went away halfway through starting this task: some containers may be up,
        // others never started. Fail it cleanly (a service replaces it).
        return fail(
            a,
            key,
            &id,
            "TaskFailedToStart: the node agent restarted while the task was starting",
            shippers,
            changed,
        )
        .await;
    } else {
        if rec.network_mode != NetworkMode::Host {
            a.start_metadata(key, &id);
        }
        a.readmit(&rec).await;
        republish(a, &rec, &id).await;
        // Re-attach: resume shipping logs and health checks of containers still running.
        for c in &rec.containers {
            if matches!(
                a.node.container_state(&id, &container_dir_name(c.name())),
                ContainerState::Running(_)
            ) {
                crate::health::spawn(a, key, &id, c);
            }
            if let Some((t, _)) = awslogs_target(&rec, c) {
                if a.node.container_dir(&id, &container_dir_name(c.name())).exists() {
                    shippers.insert(
                        c.name().to_string(),
                        Shipper::start(a.link.clone(), a.node.log_path(&id, &container_dir_name(c.name())), t),
                    );
                }
            }
        }
    }
    watch(a, key, &id, shippers, changed).await
}

/// Container names in ECS allow upper case; runtime directory names are lowercase-safe.
pub fn container_dir_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if s.len() > 40 {
        s.truncate(40);
    }
    // Keep distinct ECS names distinct after lowering.
    let h: u32 = name
        .bytes()
        .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619));
    format!("{s}-{h:08x}")
}

/// The task's record as stored now (and so the newest this agent knows).
async fn get(a: &Agent, key: &str) -> Result<Option<(TaskRecord, i64)>> {
    let got = a.link.get_task(key).await?;
    if let Some((rec, rev)) = &got {
        a.learn_if_supervised(key, rec.clone(), *rev);
    }
    Ok(got)
}

/// The newest record of the task this agent knows, read only when it knows none.
async fn known(a: &Agent, key: &str) -> Result<Option<(TaskRecord, i64)>> {
    let held = a.records.lock().expect("lock").get(key).cloned();
    match held {
        Some(r) => Ok(Some(r)),
        None => get(a, key).await,
    }
}

/// The task's container secrets as (container, name, value), read through the link when it
/// has any; the reason its start fails otherwise.
async fn task_secrets(
    a: &Agent,
    key: &str,
    rec: &TaskRecord,
) -> std::result::Result<Vec<(String, String, String)>, String> {
    if !rec
        .containers
        .iter()
        .any(|c| c.secrets.iter().flatten().next().is_some())
    {
        return Ok(vec![]);
    }
    match a.link.task_secrets(key).await {
        Ok(resolved) => resolved,
        Err(e) => Err(format!(
            "ResourceInitializationError: unable to pull secrets or registry auth: the control plane could not be reached: {e}"
        )),
    }
}

/// Waits for the task's namespace rules (if not waited for already): a task whose rules
/// cannot be applied does not run.
async fn secured(
    securing: Option<tokio::task::JoinHandle<std::result::Result<(), String>>>,
) -> std::result::Result<(), String> {
    let Some(h) = securing else { return Ok(()) };
    h.await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("ResourceInitializationError: failed to configure ENI: {e}"))
}

/// The pull credentials of the task's containers that name repositoryCredentials, read
/// through the link as the execution role; the reason the start fails otherwise.
async fn registry_credentials(
    a: &Agent,
    key: &str,
    rec: &TaskRecord,
) -> std::result::Result<HashMap<String, gantry_runtime::image::registry::Credentials>, String> {
    if !rec.containers.iter().any(|c| c.repository_credentials.is_some()) {
        return Ok(HashMap::new());
    }
    let read = match a.link.registry_credentials(key).await {
        Ok(r) => r?,
        Err(e) => return Err(format!(
            "ResourceInitializationError: unable to pull secrets or registry auth: the control plane could not be reached: {e}"
        )),
    };
    Ok(read
        .into_iter()
        .map(|(c, username, password)| (c, gantry_runtime::image::registry::Credentials { username, password }))
        .collect())
}

/// A record change made by the start's writer task.
type Change = Box<dyn FnMut(&mut TaskRecord) -> bool + Send>;

/// What the start asks of its writer task.
enum Ask {
    /// Write this change after the ones before it.
    Write(Change),
    /// Hand back whatever is not written yet: the caller writes it with its own change.
    HandBack,
}

/// The start's PENDING and ACTIVATING records, written by a task of their own while the task
/// starts rather than before each step: each is a round trip to the server and, in a cluster,
/// a replicated etcd write (5 ms and more here), and no step of the start needs them. A start
/// that is done within WRITE_AFTER writes none of them: the RUNNING write carries them (their
/// timestamps included), as a status that lasted less than a poll needs no write of its own,
/// and on two cores each write's work in etcd and the server slows the start it reports. A
/// restarted agent goes by the task's directory, not by these statuses (`supervise`).
struct StartRecords {
    asks: Option<tokio::sync::mpsc::UnboundedSender<Ask>>,
    writer: Option<tokio::task::JoinHandle<Result<Vec<Change>>>>,
}

/// How long a start may go on before what it has reached so far is written. From cached
/// images a task is RUNNING in about 20 ms here; a pull or a dependency wait takes longer,
/// and then its PENDING and ACTIVATING show while it lasts.
const WRITE_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

impl StartRecords {
    /// Queues PENDING, written through the agent's link as described above.
    fn begin(a: &Arc<Agent>, key: &str) -> StartRecords {
        let t = now();
        let pending: Change = Box::new(move |r: &mut TaskRecord| {
            r.task.last_status = "PENDING".into();
            r.task.pull_started_at.get_or_insert(t);
            true
        });
        let (a, key) = (a.clone(), key.to_string());
        StartRecords::with_writer(pending, move |mut changes: Vec<Change>| {
            let (a, key) = (a.clone(), key.clone());
            async move { update(&a, &key, |r| apply(&mut changes, r)).await.map(drop) }
        })
    }

    /// Queues `first`; `write` writes what is queued at WRITE_AFTER, and each change handed
    /// over later at once.
    fn with_writer<F>(first: Change, mut write: impl FnMut(Vec<Change>) -> F + Send + 'static) -> StartRecords
    where
        F: std::future::Future<Output = Result<()>> + Send,
    {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Ask>();
        let writer = tokio::spawn(async move {
            let mut queued = vec![first];
            let deadline = tokio::time::sleep(WRITE_AFTER);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    ask = rx.recv() => match ask {
                        Some(Ask::Write(change)) => queued.push(change),
                        // The start is done (or gone): the caller writes what is left.
                        Some(Ask::HandBack) | None => return Ok(queued),
                    },
                    _ = &mut deadline, if !deadline.is_elapsed() => {}
                }
                if deadline.is_elapsed() && !queued.is_empty() {
                    write(std::mem::take(&mut queued)).await?;
                }
            }
        });
        StartRecords {
            asks: Some(tx),
            writer: Some(writer),
        }
    }

    fn activating(&mut self, change: impl FnMut(&mut TaskRecord) -> bool + Send + 'static) {
        if let Some(tx) = &self.asks {
            let _ = tx.send(Ask::Write(Box::new(change)));
        }
    }

    /// Stops the writer and returns the changes it has not written (none once it has
    /// written them all); after this, the caller writes every change itself.
    async fn hand_back(&mut self) -> Result<Vec<Change>> {
        if let Some(tx) = self.asks.take() {
            let _ = tx.send(Ask::HandBack);
        }
        match self.writer.take() {
            Some(w) => w.await.map_err(|e| format!("writing the task's status: {e}"))?,
            None => Ok(Vec::new()),
        }
    }

    /// Writes every change handed over so far (at once if they are written).
    async fn landed(&mut self, a: &Agent, key: &str) -> Result<()> {
        let mut left = self.hand_back().await?;
        if !left.is_empty() {
            update(a, key, |r| apply(&mut left, r)).await?;
        }
        Ok(())
    }
}

/// Applies the changes in order; true when any of them changed the record.
fn apply(changes: &mut [Change], r: &mut TaskRecord) -> bool {
    changes.iter_mut().fold(false, |changed, c| c(r) | changed)
}

async fn launch(
    a: &Arc<Agent>,
    key: &str,
    rec: &TaskRecord,
    shippers: &mut HashMap<String, Shipper>,
) -> std::result::Result<(), String> {
    let mut records = StartRecords::begin(a, key);
    let started = start(a, key, rec, shippers, &mut records).await;
    // Whatever happened, no write of the start is left in flight when the caller writes next.
    let landed = records.landed(a, key).await;
    started.and(landed)
}

async fn start(
    a: &Arc<Agent>,
    key: &str,
    rec: &TaskRecord,
    shippers: &mut HashMap<String, Shipper>,
    records: &mut StartRecords,
) -> std::result::Result<(), String> {
    let began_at = now();
    let began = std::time::Instant::now();
    // Secrets first, as ECS reads them while provisioning: a task whose secrets cannot be
    // read pulls nothing. The values stay in memory (never in the record or a file).
    let secrets = task_secrets(a, key, rec).await?;
    let registry = registry_credentials(a, key, rec).await?;
    // Pull every image first: a task whose image cannot be pulled never gets a sandbox.
    let mut images: HashMap<String, ImageRecord> = HashMap::new();
    for c in &rec.containers {
        let image = c.image.clone().unwrap_or_default();
        if images.contains_key(&image) {
            continue;
        }
        let node = a.node.clone();
        let im = image.clone();
        let creds = registry.get(c.name()).cloned();
        match blocking(move || node.images().resolve_as(&im, false, creds)).await {
            Ok(r) => {
                images.insert(image, r);
            }
            Err(e) => return Err(format!("CannotPullContainerError: pull image manifest has been retried 1 time(s): failed to resolve ref {image}: {e}")),
        }
    }
    // awslogs destinations must exist (or be creatable) before anything starts.
    for c in &rec.containers {
        if let Some((t, create)) = awslogs_target(rec, c) {
            if let Err(e) = a.link.ensure_log_stream(&t, create).await {
                return Err(format!(
                    "ResourceInitializationError: failed to validate logger args: create stream has been retried 1 times: failed to create Cloudwatch log stream: {e}"
                ));
            }
        }
    }
    // Written with ACTIVATING below: the start writes PENDING, ACTIVATING and RUNNING only.
    let pulled_at = now();
    let pulled = std::time::Instant::now();
    TASK_START.observe(&["pull"], pulled.duration_since(began).as_secs_f64());
    let digests: HashMap<String, String> = images
        .iter()
        .map(|(k, v)| (k.clone(), v.manifest.to_string()))
        .collect();

    let id = rec.id().to_string();
    let hostname = format!("ip-{}", &id[..12]);
    let node = a.node.clone();
    let (tid, hn) = (id.clone(), hostname.clone());
    let kind = sandbox_kind(rec.network_mode);
    let storage_gib = storage_gib(rec);
    let sandbox = blocking(move || node.create_task_with(&tid, &hn, kind, storage_gib))
        .await
        .map_err(|e| format!("ResourceInitializationError: {e}"))?;
    if kind != SandboxKind::Host {
        a.start_metadata(key, &id);
    }
    // The task's security groups. The bridge lets nothing of an awsvpc task in or out but
    // the node until its address is admitted, so that happens while its containers start (one
    // `nft` transaction on the node); a bridge-mode task, let in and out, is admitted before
    // anything of it runs.
    let securing = {
        let (a, rec) = (a.clone(), rec.clone());
        tokio::spawn(async move { a.admit(&rec).await })
    };
    let fail_closed = kind == SandboxKind::Bridged
        && rec.network_mode == gantry_types::taskdef::NetworkMode::Awsvpc
        && a.node.network().config().namespace_rules.is_some();
    let mut securing = Some(securing);
    if !fail_closed {
        secured(securing.take()).await?;
    }
    let bindings = network_bindings(a, rec, &id, sandbox.ip).await?;
    let sandboxed = std::time::Instant::now();
    TASK_START.observe(&["sandbox"], sandboxed.duration_since(pulled).as_secs_f64());
    let t = now();
    let sandboxed_at = t;
    let ip = sandbox.ip.to_string();
    let mac_seed = id[..10].to_string();
    let (activating_id, activating_host) = (id.clone(), hostname.clone());
    records.activating(move |r| {
        let (id, hostname) = (&activating_id, &activating_host);
        r.task.pull_stopped_at.get_or_insert(pulled_at);
        for c in &mut r.task.containers {
            c.image_digest = digests.get(&c.image).cloned();
            if let Some((_, b)) = bindings.iter().find(|(n, _)| *n == c.name) {
                c.network_bindings = b.iter().map(ports::Binding::to_json).collect();
            }
        }
        r.task.last_status = "ACTIVATING".into();
        r.task.connectivity = "CONNECTED".into();
        r.task.connectivity_at.get_or_insert(t);
        if let Some(att) = r.task.attachments.first_mut() {
            att.status = "ATTACHED".into();
            att.details.retain(|d| d.name.as_deref() == Some("subnetId"));
            for (n, v) in [
                ("networkInterfaceId", format!("eni-{}", &id[..17])),
                (
                    "macAddress",
                    format!(
                        "02:{}:{}:{}:{}:{}",
                        &mac_seed[0..2],
                        &mac_seed[2..4],
                        &mac_seed[4..6],
                        &mac_seed[6..8],
                        &mac_seed[8..10]
                    ),
                ),
                ("privateDnsName", format!("{hostname}.ec2.internal")),
                ("privateIPv4Address", ip.clone()),
            ] {
                att.details.push(KeyValuePair {
                    name: Some(n.into()),
                    value: Some(v),
                });
            }
            let aid = att.id.clone();
            for c in &mut r.task.containers {
                c.network_interfaces = vec![NetworkInterface {
                    attachment_id: aid.clone(),
                    private_ipv4_address: ip.clone(),
                }];
            }
        }
        true
    });

    let by_name: HashMap<&str, &TaskSpecContainer> = rec.containers.iter().map(|c| (c.name(), c)).collect();
    // Containers started and not yet recorded RUNNING: written before any wait on a
    // dependency, else together with the task's RUNNING.
    let mut running: Vec<(String, String)> = Vec::new();
    for name in start_order(&rec.containers) {
        let c = by_name[name.as_str()];
        if c.depends_on.iter().flatten().any(|d| d.condition != "START") {
            records.landed(a, key).await?;
            record_running(a, key, &mut running).await?;
        }
        // dependsOn: wait for each dependency's condition.
        for d in c.depends_on.iter().flatten() {
            let dep = container_dir_name(&d.container_name);
            match d.condition.as_str() {
                "START" => {}
                "COMPLETE" | "SUCCESS" => {
                    // Bounded by the dependent container's startTimeout, and by StopTask.
                    let limit = Duration::from_secs(c.start_timeout.unwrap_or(120).max(1) as u64);
                    let deadline = std::time::Instant::now() + limit;
                    let state = loop {
                        match a.node.container_state(&id, &dep) {
                            ContainerState::Running(_) => {}
                            other => break Some(other),
                        }
                        if get(a, key)
                            .await?
                            .is_none_or(|(r, _)| r.task.desired_status == "STOPPED")
                        {
                            return Err(
                                "CannotStartContainerError: the task was stopped while waiting for a dependency".into(),
                            );
                        }
                        if std::time::Instant::now() >= deadline {
                            return Err(format!(
                                "CannotStartContainerError: dependency {} of container {name} did not exit within {}s (condition {})",
                                d.container_name,
                                limit.as_secs(),
                                d.condition
                            ));
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    };
                    if let (Some(ContainerState::Exited(e)), "SUCCESS") = (&state, d.condition.as_str()) {
                        if e.exit_code != 0 {
                            return Err(format!(
                                "CannotStartContainerError: dependency {} of container {} exited with code {} (condition SUCCESS)",
                                d.container_name, name, e.exit_code
                            ));
                        }
                    }
                }
                "HEALTHY" => {
                    // Bounded by the dependent container's startTimeout (ECS's rule).
                    let limit = Duration::from_secs(c.start_timeout.unwrap_or(120).max(1) as u64);
                    let deadline = std::time::Instant::now() + limit;
                    loop {
                        let Some((cur, _)) = get(a, key).await? else {
                            return Err("task vanished".into());
                        };
                        if cur.task.desired_status == "STOPPED" {
                            return Err(
                                "CannotStartContainerError: the task was stopped while waiting for a dependency".into(),
                            );
                        }
                        let h = cur
                            .task
                            .containers
                            .iter()
                            .find(|x| x.name == d.container_name)
                            .map(|x| x.health_status.clone());
                        match h.as_deref() {
                            Some("HEALTHY") => break,
                            Some("UNHEALTHY") => {
                                return Err(format!(
                                    "CannotStartContainerError: dependency {} of container {name} is UNHEALTHY (condition HEALTHY)",
                                    d.container_name
                                ));
                            }
                            _ => {}
                        }
                        if !matches!(a.node.container_state(&id, &dep), ContainerState::Running(_)) {
                            return Err(format!(
                                "CannotStartContainerError: dependency {} of container {name} exited before becoming HEALTHY",
                                d.container_name
                            ));
                        }
                        if std::time::Instant::now() >= deadline {
                            return Err(format!(
                                "CannotStartContainerError: dependency {} of container {name} did not become HEALTHY within {}s",
                                d.container_name,
                                limit.as_secs()
                            ));
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                _ => {}
            }
        }
        let image = images[c.image.as_deref().unwrap_or_default()].clone();
        let mut spec = container_spec(rec, c, &id, kind, &hostname, a.api.is_some());
        spec.volumes =
            volume_mounts(rec, c).map_err(|e| format!("CannotStartContainerError: container {name}: {e}"))?;
        let stop_timeout = Duration::from_secs(c.stop_timeout.unwrap_or(30) as u64);
        let node = a.node.clone();
        let (tid, dn) = (id.clone(), container_dir_name(&name));
        let secret_env: Vec<(String, String)> = secrets
            .iter()
            .filter(|(container, _, _)| *container == name)
            .map(|(_, k, v)| (k.clone(), v.clone()))
            .collect();
        let started =
            blocking(move || node.start_container_with_secrets(&tid, &dn, &image, &spec, stop_timeout, &secret_env))
                .await;
        if let Err(e) = started {
            return Err(format!("CannotStartContainerError: {e}"));
        }
        if let Some((t, _)) = awslogs_target(rec, c) {
            shippers.insert(
                name.clone(),
                Shipper::start(a.link.clone(), a.node.log_path(&id, &container_dir_name(&name)), t),
            );
        }
        crate::health::spawn(a, key, &id, c);
        let runtime_id = gantry_runtime::task::Node::runtime_id(&id, &container_dir_name(&name));
        running.push((name.clone(), runtime_id));
    }
    TASK_START.observe(&["containers"], sandboxed.elapsed().as_secs_f64());
    secured(securing).await?;
    // PENDING and ACTIVATING, when the start was quicker than WRITE_AFTER: one write says all.
    let mut unwritten = records.hand_back().await?;
    let t = now();
    update(a, key, |r| {
        apply(&mut unwritten, r);
        mark_running(r, &running);
        if r.task.last_status == "ACTIVATING" {
            r.task.last_status = "RUNNING".into();
            r.task.started_at.get_or_insert(t);
        }
        true
    })
    .await?;
    TASK_START.observe(&["start"], sandboxed.elapsed().as_secs_f64());
    TASK_START.observe(&["total"], began.elapsed().as_secs_f64());
    crate::telemetry::trace_start(rec, [began_at, pulled_at, sandboxed_at, t]);
    Ok(())
}

/// The task's ephemeral storage size: validated to 21-200 GiB by the API; absent means
/// ECS's default.
pub(crate) fn storage_gib(rec: &TaskRecord) -> u32 {
    rec.task
        .ephemeral_storage
        .as_ref()
        .and_then(|e| u32::try_from(e.size_in_gi_b).ok())
        .unwrap_or(gantry_runtime::ephemeral::DEFAULT_GIB)
}

fn mark_running(r: &mut TaskRecord, started: &[(String, String)]) {
    for (name, runtime_id) in started {
        if let Some(ct) = r.task.containers.iter_mut().find(|x| &x.name == name) {
            ct.last_status = "RUNNING".into();
            ct.runtime_id = Some(runtime_id.clone());
        }
    }
}

/// Records the containers started so far as RUNNING.
async fn record_running(a: &Agent, key: &str, started: &mut Vec<(String, String)>) -> std::result::Result<(), String> {
    if started.is_empty() {
        return Ok(());
    }
    update(a, key, |r| {
        mark_running(r, started);
        true
    })
    .await?;
    started.clear();
    Ok(())
}

async fn fail(
    a: &Arc<Agent>,
    key: &str,
    id: &str,
    reason: &str,
    shippers: HashMap<String, Shipper>,
    changed: &Notify,
) -> Result<()> {
    crate::telemetry::start_failed(reason);
    let t = now();
    update(a, key, |r| {
        // A StopTask that interrupted the start keeps its own code and reason.
        let user_stopped = r.task.desired_status == "STOPPED" && r.task.stop_code.is_some();
        r.task.desired_status = "STOPPED".into();
        r.task.stopping_at.get_or_insert(t);
        if !user_stopped {
            r.task.stop_code = Some(stop_code::TASK_FAILED_TO_START.into());
            r.task.stopped_reason = Some(reason.to_string());
        }
        for c in &mut r.task.containers {
            if c.last_status != "RUNNING" {
                c.reason.get_or_insert_with(|| reason.to_string());
            }
        }
        true
    })
    .await?;
    // Stop whatever did start.
    watch(a, key, id, shippers, changed).await
}

/// Watches the containers until the task is over, then finishes it.
async fn watch(
    a: &Arc<Agent>,
    key: &str,
    id: &str,
    mut shippers: HashMap<String, Shipper>,
    changed: &Notify,
) -> Result<()> {
    let mut stop_sent = false;
    loop {
        let Some((rec, _)) = known(a, key).await? else {
            return Ok(());
        };
        a.track_usage(key, &rec);
        let mut all_done = true;
        let mut essential_exited = None;
        let mut exits = Vec::new();
        for c in &rec.containers {
            let dn = container_dir_name(c.name());
            if !a
                .node
                .container_dir(id, &dn)
                .join(gantry_runtime::shim::SPEC_FILE)
                .exists()
            {
                continue; // never started
            }
            match a.node.container_state(id, &dn) {
                ContainerState::Running(_) => all_done = false,
                ContainerState::Exited(e) => {
                    if c.is_essential() {
                        essential_exited.get_or_insert(c.name().to_string());
                    }
                    exits.push((c.name().to_string(), Some(e)));
                }
                ContainerState::Lost => {
                    if c.is_essential() {
                        essential_exited.get_or_insert(c.name().to_string());
                    }
                    exits.push((c.name().to_string(), None));
                }
            }
        }
        // Record exits as they happen (those the record does not show yet).
        exits.retain(|(name, _)| {
            rec.task
                .containers
                .iter()
                .any(|x| &x.name == name && x.last_status != "STOPPED")
        });
        let t = now();
        let stopping_for_essential = essential_exited.is_some() && rec.task.desired_status == "RUNNING";
        if !exits.is_empty() || stopping_for_essential {
            record_exits(a, key, &exits, stopping_for_essential, t).await?;
        }
        let desired_stop = rec.task.desired_status == "STOPPED" || stopping_for_essential;
        if stopping_for_essential && !stop_sent {
            crate::telemetry::ESSENTIAL_EXITS.inc(&[]);
        }
        if desired_stop && !stop_sent {
            stop_sent = true;
            let t = now();
            update(a, key, |r| {
                if lifecycle_before(&r.task.last_status, "DEACTIVATING") {
                    r.task.last_status = "DEACTIVATING".into();
                }
                r.task.stopping_at.get_or_insert(t);
                true
            })
            .await?;
            for c in &rec.containers {
                let node = a.node.clone();
                let (tid, dn) = (id.to_string(), container_dir_name(c.name()));
                blocking(move || node.stop_container(&tid, &dn)).await;
            }
            update(a, key, |r| {
                if lifecycle_before(&r.task.last_status, "STOPPING") {
                    r.task.last_status = "STOPPING".into();
                }
                true
            })
            .await?;
        }
        if all_done && (desired_stop || rec.containers.iter().all(|c| !c.is_essential())) {
            for (_, s) in shippers.drain() {
                blocking(move || s.finish()).await;
            }
            return finish(a, key, id, HashMap::new()).await;
        }
        wait_for_change(a, id, &rec, changed).await;
    }
}

/// Writes containers' exits, and the task's stop for an essential one's.
async fn record_exits(
    a: &Agent,
    key: &str,
    exits: &[(String, Option<gantry_runtime::shim::ContainerExit>)],
    stopping_for_essential: bool,
    t: f64,
) -> Result<()> {
    update(a, key, |r| {
        for (name, e) in exits {
            if let Some(ct) = r.task.containers.iter_mut().find(|x| &x.name == name) {
                if ct.last_status != "STOPPED" {
                    ct.last_status = "STOPPED".into();
                    match e {
                        Some(e) => {
                            ct.exit_code = Some(e.exit_code);
                            if e.oom_killed {
                                ct.reason = Some(OOM_REASON.into());
                            }
                        }
                        None => {
                            ct.reason = Some("The container's supervisor exited without recording an exit code".into())
                        }
                    }
                }
            }
        }
        if stopping_for_essential {
            r.task.desired_status = "STOPPED".into();
            r.task.stopping_at.get_or_insert(t);
            r.task
                .stop_code
                .get_or_insert_with(|| stop_code::ESSENTIAL_CONTAINER_EXITED.into());
            r.task
                .stopped_reason
                .get_or_insert_with(|| "Essential container in task exited".into());
        }
        true
    })
    .await
    .map(drop)
}

/// Registers a pidfd with the runtime's reactor, to await its readiness (the process's exit).
fn watch_readable(fd: OwnedFd) -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor is open, is the same one, and
    // stays so for as long as the AsyncFd lives.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
}

/// A task's supervisor sleeps until its record changes (StopTask, health), one of its
/// containers exits, or a safety interval passes: an idle task costs nothing meanwhile. Exits
/// arrive through the shims' pidfds and record changes through the watch, so the interval
/// only bounds how long a missed event could go unseen; each wake reads every container's
/// state files, which 5 s made a third of an idle node's CPU at 800 tasks.
async fn wait_for_change(a: &Agent, id: &str, rec: &TaskRecord, changed: &Notify) {
    const SAFETY: Duration = Duration::from_secs(30);
    let exits: Vec<AsyncFd<OwnedFd>> = rec
        .containers
        .iter()
        .filter_map(|c| a.node.exit_fd(id, &container_dir_name(c.name())))
        .filter_map(watch_readable)
        .collect();
    let any_exit = std::future::poll_fn(|cx| {
        if exits.iter().any(|fd| fd.poll_read_ready(cx).is_ready()) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    });
    tokio::select! {
        _ = changed.notified() => {}
        _ = any_exit => {}
        _ = tokio::time::sleep(SAFETY) => {}
    }
}

fn lifecycle_before(cur: &str, target: &str) -> bool {
    gantry_types::model::lifecycle_rank(cur) < gantry_types::model::lifecycle_rank(target)
}

async fn finish(a: &Arc<Agent>, key: &str, id: &str, shippers: HashMap<String, Shipper>) -> Result<()> {
    for (_, s) in shippers {
        blocking(move || s.finish()).await;
    }
    let t = now();
    update(a, key, |r| {
        if lifecycle_before(&r.task.last_status, "DEPROVISIONING") {
            r.task.last_status = "DEPROVISIONING".into();
        }
        r.task.desired_status = "STOPPED".into();
        r.task.execution_stopped_at.get_or_insert(t);
        true
    })
    .await?;
    a.stop_metadata(id);
    a.unpublish_ports(id);
    a.forget_rules(id).await;
    let node = a.node.clone();
    let tid = id.to_string();
    if let Err(e) = blocking(move || node.remove_task(&tid)).await {
        tracing::warn!(task = %id, error = %e, "cleaning up task");
    }
    let t = now();
    update(a, key, |r| {
        r.task.last_status = "STOPPED".into();
        r.task.stopped_at.get_or_insert(t);
        r.task.stopping_at.get_or_insert(t);
        for c in &mut r.task.containers {
            c.last_status = "STOPPED".into();
        }
        for att in &mut r.task.attachments {
            att.status = "DELETED".into();
        }
        true
    })
    .await?;
    Ok(())
}

fn sandbox_kind(mode: NetworkMode) -> SandboxKind {
    match mode {
        NetworkMode::Awsvpc | NetworkMode::Bridge => SandboxKind::Bridged,
        NetworkMode::None => SandboxKind::Loopback,
        NetworkMode::Host => SandboxKind::Host,
    }
}

/// The ports a task's containers answer on at the node: published (bridge mode) or the
/// container ports themselves (host mode).
async fn network_bindings(
    a: &Arc<Agent>,
    rec: &TaskRecord,
    id: &str,
    ip: std::net::Ipv4Addr,
) -> Result<Vec<(String, Vec<ports::Binding>)>> {
    let wanted: Vec<(String, Vec<ports::Binding>)> = rec
        .containers
        .iter()
        .map(|c| {
            (
                c.name().to_string(),
                ports::wanted(c.port_mappings.as_deref().unwrap_or_default()),
            )
        })
        .filter(|(_, w)| !w.is_empty())
        .collect();
    match rec.network_mode {
        NetworkMode::Bridge => a
            .publish_ports(id, ip, &wanted)
            .await
            .map_err(|e| format!("ResourceInitializationError: publishing ports: {e}")),
        NetworkMode::Host => Ok(wanted
            .into_iter()
            .map(|(n, w)| {
                let b = w
                    .into_iter()
                    .map(|b| ports::Binding {
                        host_port: b.container_port,
                        ..b
                    })
                    .collect();
                (n, b)
            })
            .collect()),
        _ => Ok(vec![]),
    }
}

/// After an agent restart: the bridge-mode relays went with the old process; bind the same
/// host ports again.
async fn republish(a: &Arc<Agent>, rec: &TaskRecord, id: &str) {
    if rec.network_mode != NetworkMode::Bridge {
        return;
    }
    let Some(sb) = a.node.sandbox(id) else { return };
    let recorded: Vec<(String, Vec<ports::Binding>)> = rec
        .task
        .containers
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                c.network_bindings
                    .iter()
                    .filter_map(ports::Binding::from_json)
                    .collect(),
            )
        })
        .filter(|(_, b): &(String, Vec<ports::Binding>)| !b.is_empty())
        .collect();
    if let Err(e) = a.publish_ports(id, sb.ip, &recorded).await {
        tracing::warn!(task = %id, error = %e, "re-publishing ports after a restart");
    }
}

/// What the runtime runs for a container: its definition, the environment ECS gives every
/// container (metadata URIs where there is a task namespace for the endpoint, execution
/// environment, region), limits, init, read-only root and ulimits.
fn container_spec(
    rec: &TaskRecord,
    c: &TaskSpecContainer,
    id: &str,
    kind: SandboxKind,
    hostname: &str,
    api_relay: bool,
) -> ContainerSpec {
    let offered = crate::metadata::Offered {
        credentials: rec.roles.task.is_some(),
        api: api_relay,
    };
    let mut env = if kind == SandboxKind::Host {
        vec![]
    } else {
        crate::metadata::env_for(id, c.name(), &offered)
    };
    let exec_env = match rec.task.launch_type.as_str() {
        "FARGATE" => "AWS_ECS_FARGATE",
        "EXTERNAL" => "AWS_ECS_EXTERNAL",
        _ => "AWS_ECS_EC2",
    };
    env.push(("AWS_EXECUTION_ENV".into(), exec_env.into()));
    env.push(("AWS_REGION".into(), rec.region.clone()));
    env.push(("AWS_DEFAULT_REGION".into(), rec.region.clone()));
    env.extend(
        c.environment
            .iter()
            .flatten()
            .filter_map(|kv| Some((kv.name.clone()?, kv.value.clone().unwrap_or_default()))),
    );
    ContainerSpec {
        entrypoint: c.entry_point.clone(),
        command: c.command.clone(),
        env,
        working_dir: c.working_directory.clone(),
        user: c.user.clone(),
        hostname: hostname.to_string(),
        limits: container_limits(rec, c),
        init: c
            .linux_parameters
            .as_ref()
            .and_then(|l| l.init_process_enabled)
            .unwrap_or(false),
        readonly_rootfs: c.readonly_root_filesystem.unwrap_or(false),
        capabilities: c
            .linux_parameters
            .as_ref()
            .and_then(|l| l.capabilities.as_ref())
            .map(|k| gantry_runtime::bundle::capability_set(k.added(), k.dropped())),
        rlimits: c
            .ulimits
            .iter()
            .flatten()
            .map(|u| Rlimit {
                name: u.name.clone(),
                soft: u.soft_limit.max(0) as u64,
                hard: u.hard_limit.max(0) as u64,
            })
            .collect(),
        volumes: vec![],
        sysctls: c
            .system_controls
            .iter()
            .flatten()
            .filter_map(|s| Some((s.namespace.clone()?, s.value.clone()?)))
            .collect(),
    }
}

/// The task's volumes the container mounts, its own and through volumesFrom.
fn volume_mounts(rec: &TaskRecord, c: &TaskSpecContainer) -> std::result::Result<Vec<VolumeMount>, String> {
    let mounts = gantry_types::volumes::mounts_of(&rec.containers, c.name())?;
    let mounts = mounts.into_iter().map(|m| VolumeMount {
        name: m.volume,
        path: m.path,
        read_only: m.read_only,
    });
    Ok(mounts.collect())
}

/// A container's cgroup limits: the task's CPU as the quota (if it has one), the container's
/// `cpu` as its weight, its `memory` as the hard limit (else the task's), `memoryReservation`
/// as the soft one.
fn container_limits(rec: &TaskRecord, c: &TaskSpecContainer) -> Limits {
    Limits {
        cpu_units: (rec.cpu_units > 0).then_some(rec.cpu_units as u32),
        cpu_shares: c.cpu.filter(|x| *x > 0).map(|x| x as u32),
        memory_mib: c
            .memory
            .or(rec.task_memory_limit.then_some(rec.memory_mib))
            .map(|m| m as u64),
        memory_reservation_mib: c.memory_reservation.map(|m| m as u64),
        pids: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change setting lastStatus.
    fn status(s: &'static str) -> Change {
        Box::new(move |r: &mut TaskRecord| {
            r.task.last_status = s.into();
            true
        })
    }

    fn blank() -> TaskRecord {
        TaskRecord {
            task: gantry_types::model::Task::default(),
            cluster: "c".into(),
            node: "n1".into(),
            containers: vec![],
            cpu_units: 256,
            memory_mib: 512,
            account: String::new(),
            region: String::new(),
            protected_until: None,
            network_mode: NetworkMode::Awsvpc,
            task_memory_limit: true,
            roles: Default::default(),
            security_groups: vec![],
        }
    }

    type Writes = Arc<std::sync::Mutex<Vec<Vec<String>>>>;

    /// A writer that keeps the statuses each write carried.
    fn recording() -> (
        Writes,
        impl FnMut(Vec<Change>) -> std::future::Ready<Result<()>> + Send + 'static,
    ) {
        let writes: Writes = Arc::default();
        let w = writes.clone();
        let write = move |mut changes: Vec<Change>| {
            w.lock().unwrap().push(names(&mut changes));
            std::future::ready(Ok(()))
        };
        (writes, write)
    }

    /// The statuses the changes set, in order.
    fn names(changes: &mut [Change]) -> Vec<String> {
        let mut r = blank();
        changes
            .iter_mut()
            .map(|c| {
                c(&mut r);
                r.task.last_status.clone()
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_quicker_than_write_after_writes_nothing_before_running() {
        let (writes, write) = recording();
        let mut records = StartRecords::with_writer(status("PENDING"), write);
        tokio::time::sleep(WRITE_AFTER / 2).await;
        records.activating(status("ACTIVATING"));
        tokio::time::sleep(WRITE_AFTER / 4).await;
        let mut left = records.hand_back().await.unwrap();
        assert_eq!(
            names(&mut left),
            ["PENDING", "ACTIVATING"],
            "handed to the RUNNING write"
        );
        assert!(writes.lock().unwrap().is_empty());
        // Nothing is written after the hand-back, even past the deadline.
        tokio::time::sleep(WRITE_AFTER * 2).await;
        assert!(writes.lock().unwrap().is_empty());
        assert!(records.hand_back().await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_start_shows_pending_at_write_after_and_each_status_after_it() {
        let (writes, write) = recording();
        let mut records = StartRecords::with_writer(status("PENDING"), write);
        tokio::time::sleep(WRITE_AFTER + Duration::from_millis(1)).await;
        assert_eq!(*writes.lock().unwrap(), [["PENDING"]]);
        records.activating(status("ACTIVATING"));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(*writes.lock().unwrap(), [["PENDING"], ["ACTIVATING"]]);
        assert!(records.hand_back().await.unwrap().is_empty(), "all written already");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_write_is_the_starts_error() {
        let write = |_: Vec<Change>| std::future::ready(Err::<(), _>("the server refused".to_string()));
        let mut records = StartRecords::with_writer(status("PENDING"), write);
        tokio::time::sleep(WRITE_AFTER * 2).await;
        assert_eq!(records.hand_back().await.err().as_deref(), Some("the server refused"));
    }
}
