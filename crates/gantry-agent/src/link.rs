//! The agent's one seam to the control plane. Everything a node needs goes through
//! `ControlLink`: register and heartbeat, its own task records (list, watch, read, write),
//! log shipping and usage reports. `LocalLink` is the in-process implementation (`gantry dev`); the remote
//! one (`gantry agent`) speaks the same operations over mutual TLS (gantry-link). The agent
//! never sees the store.

use async_trait::async_trait;
use gantry_control::logfeed::Logs;
use gantry_control::logstore::{LogOp, LogWrite};
pub use gantry_control::metrics::ecs::TaskUsage;
use gantry_control::metrics::Metrics;
use gantry_control::nodes::{NodeRecord, NodeSpec};
use gantry_control::{Control, TaskRecord, TASKS_PREFIX};
use gantry_store::{KeyValue, Watch};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where one container's awslogs output goes, and the task (its record's key) it is of.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogTarget {
    pub task: String,
    pub account: String,
    pub region: String,
    pub group: String,
    pub stream: String,
}

/// Where a container's awslogs output goes (its stream `prefix/container/task id`, as ECS
/// names it), and whether its group may be created.
pub fn awslogs_target(rec: &TaskRecord, c: &gantry_control::TaskSpecContainer) -> Option<(LogTarget, bool)> {
    let lc = c.log_configuration.as_ref().filter(|l| l.log_driver == "awslogs")?;
    let group = lc.options.get("awslogs-group")?.clone();
    let stream = match lc.options.get("awslogs-stream-prefix") {
        Some(p) => format!("{p}/{}/{}", c.name(), rec.id()),
        None => format!("{}/{}", c.name(), rec.id()),
    };
    let region = lc
        .options
        .get("awslogs-region")
        .cloned()
        .unwrap_or_else(|| rec.region.clone());
    let create = lc.options.get("awslogs-create-group").is_some_and(|v| v == "true");
    let target = LogTarget {
        task: Control::key_of(rec),
        account: rec.account.clone(),
        region,
        group,
        stream,
    };
    Some((target, create))
}

/// The server side's check of a log write: the target must be one of the task's containers'
/// own, the task placed on `node`. Making the stream (`ensure`: Some(create the group)) also
/// needs the task's execution role's permission, when it has one (without one the node's own
/// identity writes, as an EC2 container instance's role does); ECS fails the start otherwise.
pub async fn check_log_target(control: &Control, node: &str, t: &LogTarget, ensure: Option<bool>) -> LinkResult<()> {
    let Some((rec, _)) = get_assigned(control, node, &t.task).await? else {
        return Err(LinkError::Forbidden(format!("task {} is gone", t.task)));
    };
    let own = rec
        .containers
        .iter()
        .filter_map(|c| awslogs_target(&rec, c))
        .find(|(mine, _)| mine == t);
    let Some((_, may_create)) = own else {
        return Err(LinkError::Forbidden(format!(
            "task {} does not log to {}:{}",
            rec.id(),
            t.group,
            t.stream
        )));
    };
    let Some(create_group) = ensure else {
        return Ok(());
    };
    if create_group && !may_create {
        return Err(LinkError::Forbidden(format!(
            "task {} may not create log group {}",
            rec.id(),
            t.group
        )));
    }
    if rec.roles.execution.is_none() {
        return Ok(());
    }
    let caller = execution_role(control, &rec).await.map_err(LinkError::Forbidden)?;
    let ctx = gantry_control::iam::principal_context(&caller);
    let group_arn = format!(
        "arn:aws:logs:{}:{}:log-group:{}:log-stream:",
        t.region, t.account, t.group
    );
    let mut asked = vec![("logs:CreateLogStream", format!("{group_arn}{}", t.stream))];
    if create_group {
        asked.push(("logs:CreateLogGroup", group_arn));
    }
    for (action, arn) in asked {
        gantry_control::iam::authorize(&caller, action, &arn, &ctx)
            .map_err(|m| LinkError::Forbidden(format!("AccessDeniedException: {m}")))?;
    }
    Ok(())
}

/// The outcome of a conditional write of a task record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Written {
    /// Stored at this revision.
    Ok(i64),
    /// The record changed since it was read: read it again.
    Conflict,
    /// The record is gone.
    Gone,
}

/// Why a link operation failed: what the agent does next depends on the kind.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum LinkError {
    /// The node's epoch is stale (it was declared lost): register again.
    Fenced(String),
    /// Not this node's to read or write: a bug or an impostor, never retried into success.
    Forbidden(String),
    /// The control plane or the network could not do it now: retry.
    Unavailable(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Fenced(m) | LinkError::Forbidden(m) | LinkError::Unavailable(m) => f.write_str(m),
        }
    }
}

impl From<LinkError> for String {
    fn from(e: LinkError) -> String {
        e.to_string()
    }
}

impl LinkError {
    /// The control plane's answer to a node operation: fenced, or unavailable.
    pub fn from_control(e: gantry_types::EcsError) -> LinkError {
        let m = e.to_string();
        if m == gantry_control::nodes::FENCED {
            LinkError::Fenced(m)
        } else {
            LinkError::Unavailable(m)
        }
    }

    pub fn unavailable(e: impl std::fmt::Display) -> LinkError {
        LinkError::Unavailable(e.to_string())
    }
}

pub type LinkResult<T> = Result<T, LinkError>;

#[async_trait]
pub trait ControlLink: Send + Sync {
    /// The node this link speaks for.
    fn node(&self) -> &str;
    /// Registers the node (or registers it again): a new epoch, under which it writes.
    async fn register(&self, spec: &NodeSpec) -> LinkResult<NodeRecord>;
    /// Says the node is alive. Fails once the node has been declared lost (fenced).
    async fn heartbeat(&self) -> LinkResult<()>;
    /// The task records placed on this node that are not among those `known` (key to
    /// revision), with their store keys and revisions, and the known ones that are gone.
    async fn list_assigned(&self, known: &HashMap<String, i64>) -> LinkResult<Assigned>;
    /// Changes to this node's task records from now on (puts carry the new record). The
    /// watch ends when the link breaks; the agent re-lists and watches again.
    async fn watch_assigned(&self) -> LinkResult<Watch>;
    /// One of this node's task records and its revision.
    async fn get_task(&self, key: &str) -> LinkResult<Option<(TaskRecord, i64)>>;
    /// Writes a record read at `rev`. Only status the node owns may change (see
    /// `gantry_control::tasks::agent_may_write`); a record already STOPPED is final.
    async fn put_task(&self, key: &str, rec: &TaskRecord, rev: i64) -> LinkResult<Written>;
    /// Makes sure the stream exists (creating the group if `create_group`).
    async fn ensure_log_stream(&self, target: &LogTarget, create_group: bool) -> LinkResult<()>;
    /// Appends events (time ms, message) to a stream.
    async fn put_log_events(&self, target: &LogTarget, events: &[(i64, String)]) -> LinkResult<()>;
    /// The Cloud Map records the node's DNS resolver answers from, and the revision they were
    /// read at: at once when `after` is 0, else once they change after `after` (or after a
    /// while without change, the same records again).
    async fn dns_records(&self, after: i64) -> LinkResult<(Vec<KeyValue>, i64)>;
    /// The usage the agent sampled of its running tasks, for the AWS/ECS metrics.
    async fn put_usage(&self, usage: &[TaskUsage]) -> LinkResult<()>;
    /// The values of one of this node's task's container secrets, or why they cannot be read
    /// (ECS's ResourceInitializationError wording: the task then fails to start).
    async fn task_secrets(&self, key: &str) -> LinkResult<TaskSecrets>;
    /// Temporary credentials of one of this node's task's task role, for its credentials
    /// endpoint, or why there are none.
    async fn task_credentials(&self, key: &str) -> LinkResult<TaskCredentials>;
    /// The registry credentials of one of this node's task's containers (repositoryCredentials)
    /// as (container, username, password), or why they cannot be read.
    async fn registry_credentials(&self, key: &str) -> LinkResult<TaskSecrets>;
    /// The groups of this node's tasks and the members their rules name, once they differ
    /// from the view whose digest is `known` (at once when it is empty; after a while without
    /// change, the same view).
    async fn security_view(&self, known: &str) -> LinkResult<SecurityView>;
}

pub use gantry_control::ec2::SecurityView;

/// The server side of `security_view` (`gantry_control::ec2::SecuritySource::follow`), for
/// one poll: the groups of `node`'s tasks and the members their rules name.
pub async fn security_view(control: &Control, node: &str, known: &str) -> LinkResult<SecurityView> {
    let deadline = tokio::time::Instant::now() + DNS_POLL;
    control
        .security
        .follow(Some(node), known, deadline)
        .await
        .map_err(LinkError::unavailable)
}

/// A task role's temporary credentials, in the credentials endpoint's JSON (ECS's names).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RoleCredentials {
    pub role_arn: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub token: String,
    /// RFC 3339, UTC.
    pub expiration: String,
}

/// A task's role credentials, or why it has none.
pub type TaskCredentials = Result<RoleCredentials, String>;

/// The server side of `task_credentials`: a new session of the task's role, only for a task
/// placed on `node` and not stopped.
pub async fn resolve_task_credentials(control: &Control, node: &str, key: &str) -> LinkResult<TaskCredentials> {
    let Some((rec, _)) = get_assigned(control, node, key).await? else {
        return Ok(Err("the task record is gone".into()));
    };
    if rec.task.last_status == "STOPPED" {
        return Ok(Err("the task has stopped".into()));
    }
    let Some(role) = &rec.roles.task else {
        return Ok(Err("the task has no task role".into()));
    };
    let (id, key) = match control.iam().task_session(&rec.account, role, &rec.task.task_arn).await {
        Ok(k) => k,
        Err(reason) => return Ok(Err(reason)),
    };
    let expires = key.role.as_ref().map(|r| r.expires).unwrap_or_default();
    let expiration = chrono::DateTime::from_timestamp(expires as i64, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    Ok(Ok(RoleCredentials {
        role_arn: role.clone(),
        access_key_id: id,
        secret_access_key: key.secret_access_key,
        token: key.session_token.unwrap_or_default(),
        expiration,
    }))
}

/// A task's secrets as (container, variable, value), or the reason its start fails.
pub type TaskSecrets = Result<Vec<(String, String, String)>, String>;

/// Where secret values are read from (the servers', holding the sealing key).
pub struct SecretStores {
    pub secrets: gantry_control::secrets::SecretsManager,
    pub parameters: gantry_control::parameters::ParameterStore,
}

/// The server side of `task_secrets`: only for a task placed on `node`, read as the task's
/// account and region.
pub async fn resolve_task_secrets(
    control: &Control,
    stores: Option<&SecretStores>,
    node: &str,
    key: &str,
) -> LinkResult<TaskSecrets> {
    let Some((rec, _)) = get_assigned(control, node, key).await? else {
        return Ok(Err("the task record is gone".into()));
    };
    let wanted: Vec<(String, String, String)> = rec
        .containers
        .iter()
        .flat_map(|c| {
            c.secrets
                .iter()
                .flatten()
                .filter_map(move |s| Some((c.name().to_string(), s.name.clone()?, s.value_from.clone()?)))
        })
        .collect();
    Ok(read_as_execution_role(control, stores, &rec, wanted).await)
}

/// The server side of `registry_credentials`: each container's repositoryCredentials secret,
/// read as the task's execution role, as (container, username, password).
pub async fn resolve_registry_credentials(
    control: &Control,
    stores: Option<&SecretStores>,
    node: &str,
    key: &str,
) -> LinkResult<TaskSecrets> {
    let Some((rec, _)) = get_assigned(control, node, key).await? else {
        return Ok(Err("the task record is gone".into()));
    };
    let wanted: Vec<(String, String, String)> = rec
        .containers
        .iter()
        .filter_map(|c| {
            let rc = c.repository_credentials.as_ref()?;
            Some((c.name().to_string(), String::new(), rc.credentials_parameter.clone()))
        })
        .collect();
    let read = match read_as_execution_role(control, stores, &rec, wanted).await {
        Ok(r) => r,
        Err(reason) => return Ok(Err(reason)),
    };
    let mut out = Vec::with_capacity(read.len());
    for (container, _, value) in read {
        let doc: serde_json::Value = serde_json::from_str(&value).unwrap_or_default();
        match (doc["username"].as_str(), doc["password"].as_str()) {
            (Some(u), Some(p)) => out.push((container, u.to_string(), p.to_string())),
            _ => {
                return Ok(Err(format!(
                    "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval failed: the repository credentials secret of container {container} is not JSON with a username and a password"
                )))
            }
        }
    }
    Ok(Ok(out))
}

/// Reads (container, name, valueFrom) as the task's execution role: the values, or the
/// reason the task cannot start in ECS's words.
async fn read_as_execution_role(
    control: &Control,
    stores: Option<&SecretStores>,
    rec: &TaskRecord,
    wanted: Vec<(String, String, String)>,
) -> TaskSecrets {
    if wanted.is_empty() {
        return Ok(vec![]);
    }
    let failed =
        |reason: &str| format!("ResourceInitializationError: unable to pull secrets or registry auth: {reason}");
    let Some(stores) = stores else {
        return Err(failed("this server has no secrets key"));
    };
    let caller = execution_role(control, rec).await.map_err(|r| failed(&r))?;
    let ctx = gantry_control::iam::principal_context(&caller);
    let authorize = |action: &str, arn: &str, policy: Option<&str>| {
        gantry_control::iam::authorize_with(&caller, (action, arn), &ctx, policy)
    };
    let scope = rec.scope();
    let mut out = Vec::with_capacity(wanted.len());
    for (container, name, from) in wanted {
        let v =
            gantry_control::secrets::resolve(&stores.secrets, &stores.parameters, &scope, &from, &authorize).await?;
        out.push((container, name, v));
    }
    Ok(out)
}

/// The session the node acts as for a task (its execution role's, named by the task id), or
/// why it has none.
async fn execution_role(control: &Control, rec: &TaskRecord) -> Result<gantry_control::iam::Caller, String> {
    let arn = rec.roles.execution.as_ref().ok_or("the task has no execution role")?;
    control.iam().task_caller(rec, arn).await
}

/// The in-process link: the control plane and log store of this very process.
pub struct LocalLink {
    control: Control,
    logs: Arc<Logs>,
    metrics: Metrics,
    node: String,
    epoch: AtomicU64,
    secrets: Option<Arc<SecretStores>>,
}

impl LocalLink {
    pub fn new(control: Control, logs: Arc<Logs>, metrics: Metrics, node: &str) -> LocalLink {
        LocalLink {
            control,
            logs,
            metrics,
            node: node.to_string(),
            epoch: AtomicU64::new(0),
            secrets: None,
        }
    }

    /// Reads container secrets from these stores.
    pub fn with_secrets(mut self, stores: Arc<SecretStores>) -> LocalLink {
        self.secrets = Some(stores);
        self
    }
}

#[async_trait]
impl ControlLink for LocalLink {
    fn node(&self) -> &str {
        &self.node
    }

    async fn register(&self, spec: &NodeSpec) -> LinkResult<NodeRecord> {
        let rec = self
            .control
            .register_node(spec.clone())
            .await
            .map_err(LinkError::from_control)?;
        self.epoch.store(rec.epoch, Ordering::SeqCst);
        Ok(rec)
    }

    async fn heartbeat(&self) -> LinkResult<()> {
        self.control
            .heartbeat(&self.node, self.epoch.load(Ordering::SeqCst))
            .await
            .map_err(LinkError::from_control)
    }

    async fn list_assigned(&self, known: &HashMap<String, i64>) -> LinkResult<Assigned> {
        assigned(&self.control, &self.node, known).await
    }

    async fn watch_assigned(&self) -> LinkResult<Watch> {
        watch_assigned(&self.control, &self.node).await
    }

    async fn get_task(&self, key: &str) -> LinkResult<Option<(TaskRecord, i64)>> {
        get_assigned(&self.control, &self.node, key).await
    }

    async fn put_task(&self, key: &str, rec: &TaskRecord, rev: i64) -> LinkResult<Written> {
        put_assigned(&self.control, &self.node, key, rec, rev).await
    }

    async fn ensure_log_stream(&self, t: &LogTarget, create_group: bool) -> LinkResult<()> {
        check_log_target(&self.control, &self.node, t, Some(create_group)).await?;
        let op = LogOp::EnsureStream {
            stream: t.stream.clone(),
            create_group,
        };
        let w = LogWrite::new((&t.account, &t.region), &t.group, self.control.clock.now_ms(), op);
        self.logs.write(w).await.map_err(LinkError::unavailable)
    }

    async fn put_log_events(&self, t: &LogTarget, events: &[(i64, String)]) -> LinkResult<()> {
        check_log_target(&self.control, &self.node, t, None).await?;
        let op = LogOp::Put {
            stream: t.stream.clone(),
            events: events.to_vec(),
        };
        let w = LogWrite::new((&t.account, &t.region), &t.group, self.control.clock.now_ms(), op);
        self.logs.write(w).await.map_err(LinkError::unavailable)
    }

    async fn dns_records(&self, after: i64) -> LinkResult<(Vec<KeyValue>, i64)> {
        dns_records(&self.control, after).await
    }

    async fn put_usage(&self, usage: &[TaskUsage]) -> LinkResult<()> {
        publish_usage(&self.control, &self.metrics, &self.node, usage).await
    }

    async fn task_secrets(&self, key: &str) -> LinkResult<TaskSecrets> {
        resolve_task_secrets(&self.control, self.secrets.as_deref(), &self.node, key).await
    }

    async fn task_credentials(&self, key: &str) -> LinkResult<TaskCredentials> {
        resolve_task_credentials(&self.control, &self.node, key).await
    }

    async fn security_view(&self, known: &str) -> LinkResult<SecurityView> {
        security_view(&self.control, &self.node, known).await
    }

    async fn registry_credentials(&self, key: &str) -> LinkResult<TaskSecrets> {
        resolve_registry_credentials(&self.control, self.secrets.as_deref(), &self.node, key).await
    }
}

/// How long a DNS records request waits for a change before answering with the same records.
pub const DNS_POLL: std::time::Duration = std::time::Duration::from_secs(25);

/// The server side of `dns_records`: a watch from `after` (a compacted start re-lists at
/// once), then one listing of the Cloud Map records. Cloud Map names are the account's, not a
/// node's: every node's resolver answers them all, as every task in a VPC may resolve them.
pub async fn dns_records(control: &Control, after: i64) -> LinkResult<(Vec<KeyValue>, i64)> {
    let prefix = gantry_control::cloudmap::view::PREFIX;
    if after > 0 {
        if let Ok(mut w) = control.store.watch(prefix, after).await {
            let _ = tokio::time::timeout(DNS_POLL, w.events.recv()).await;
        }
    }
    control.store.list(prefix).await.map_err(LinkError::unavailable)
}

// The server side of each operation, shared by the local link and the remote one's server:
// a node sees and writes only its own records.

/// Most tasks one usage report may name (a node runs far fewer).
pub const MAX_USAGE_TASKS: usize = 2000;

/// Publishes a node's usage report: only for tasks placed on that node, with the cluster,
/// service and account their records say (never what the report claims).
pub async fn publish_usage(control: &Control, metrics: &Metrics, node: &str, usage: &[TaskUsage]) -> LinkResult<()> {
    if usage.len() > MAX_USAGE_TASKS {
        return Err(LinkError::Forbidden(format!(
            "a usage report names {} tasks; at most {MAX_USAGE_TASKS}",
            usage.len()
        )));
    }
    let (joined, keys) = reported(control, node, usage).await?;
    // Container Insights utilisation for the clusters that turned it on (read once per report).
    let mut on = std::collections::BTreeSet::new();
    let clusters: std::collections::BTreeSet<_> = joined
        .iter()
        .map(|(r, _)| (r.account.clone(), r.region.clone(), r.cluster.clone()))
        .collect();
    for (account, region, cluster) in clusters {
        let scope = gantry_types::arn::Scope { account, region };
        if control.container_insights_on(&scope, &cluster).await.is_some() {
            on.insert((scope.account, scope.region, cluster));
        }
    }
    let enabled = |r: &TaskRecord| on.contains(&(r.account.clone(), r.region.clone(), r.cluster.clone()));
    let published = metrics.publish_usage(&joined, &enabled).await;
    // The records are kept for the next report, taken back rather than copied.
    let records = joined.into_iter().zip(keys).map(|((rec, _), key)| (key, rec));
    control.reported_tasks.keep(node, records.collect());
    published.map_err(LinkError::unavailable)
}

/// Each reported task's record (tasks whose record is gone are left out): held since the
/// node's last report, else read (all at once); with each record's key, to hold it for the
/// next report once published.
async fn reported(
    control: &Control,
    node: &str,
    usage: &[TaskUsage],
) -> LinkResult<(Vec<(TaskRecord, TaskUsage)>, Vec<String>)> {
    let mut held = control.reported_tasks.take(node);
    let new: Vec<&str> = usage
        .iter()
        .map(|u| u.key.as_str())
        .filter(|k| !held.contains_key(*k))
        .collect();
    let read = futures_util::future::join_all(new.iter().map(|k| get_assigned(control, node, k))).await;
    for (key, r) in new.into_iter().zip(read) {
        if let Some((rec, _)) = r? {
            held.insert(key.to_string(), rec);
        }
    }
    let mut joined = Vec::with_capacity(usage.len());
    let mut keys = Vec::with_capacity(usage.len());
    for u in usage {
        if let Some(rec) = held.remove(&u.key) {
            joined.push((rec, u.clone()));
            keys.push(u.key.clone());
        }
    }
    Ok((joined, keys))
}

/// A node's re-list: its task records other than the ones it knows (new, or at another
/// revision), and the ones it knows that are gone. Records new to the node that are already
/// STOPPED are left out: there is nothing to run or clean up for them.
#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Assigned {
    pub changed: Vec<(String, TaskRecord, i64)>,
    pub gone: Vec<String>,
}

/// The server side of a node's re-list. The records' keys and revisions come from the task
/// watch's index, so a re-list that finds nothing changed reads nothing from the store; the
/// changed records come from the records held in memory, or the store. Without an index
/// (nobody watches), or with many records changed, one listing.
pub async fn assigned(control: &Control, node: &str, known: &HashMap<String, i64>) -> LinkResult<Assigned> {
    let wanted = |key: &String, rev: i64, stopped: bool| match known.get(key) {
        Some(k) => *k != rev,
        None => !stopped,
    };
    let gone = |present: &dyn Fn(&String) -> bool| known.keys().filter(|k| !present(k)).cloned().collect();
    if let Some(index) = control.task_watches.assigned(node).await {
        let stale: Vec<_> = index
            .iter()
            .filter(|(k, (rev, stopped))| wanted(k, *rev, *stopped))
            .collect();
        if stale.len() <= gantry_control::record_cache::READ_ONE_BY_ONE {
            let mut changed = Vec::with_capacity(stale.len());
            for (key, (rev, _)) in stale {
                if let Some((rec, rev)) = replaced(control, node, key, *rev).await? {
                    changed.push((key.clone(), rec, rev));
                }
            }
            let gone = gone(&|k| index.contains_key(k));
            return Ok(Assigned { changed, gone });
        }
    }
    let all = control.node_tasks(node).await.map_err(LinkError::from_control)?;
    let present: HashSet<&String> = all.iter().map(|(k, _, _)| k).collect();
    let gone = gone(&|k| present.contains(k));
    let changed = all
        .into_iter()
        .filter(|(k, r, rev)| wanted(k, *rev, r.task.last_status == "STOPPED"))
        .collect();
    Ok(Assigned { changed, gone })
}

/// A watch on the task records, passing on only the node's (deletes pass: the key alone
/// does not say whose record it was, and the agent ignores keys it does not supervise).
pub async fn watch_assigned(control: &Control, node: &str) -> LinkResult<Watch> {
    control
        .task_watches
        .subscribe(node)
        .await
        .map_err(LinkError::unavailable)
}

pub async fn get_assigned(control: &Control, node: &str, key: &str) -> LinkResult<Option<(TaskRecord, i64)>> {
    if !key.starts_with(TASKS_PREFIX) {
        return Err(LinkError::Forbidden(format!("{key} is not a task record")));
    }
    match control.store.get(key).await.map_err(LinkError::unavailable)? {
        None => Ok(None),
        Some(kv) => Ok(Some((owned(node, key, &kv.value)?, kv.mod_revision))),
    }
}

/// A stored task record, if it is placed on `node`.
fn owned(node: &str, key: &str, value: &[u8]) -> LinkResult<TaskRecord> {
    let rec: TaskRecord = serde_json::from_slice(value).map_err(LinkError::unavailable)?;
    if rec.node != node {
        return Err(LinkError::Forbidden(format!("task {key} is not placed on node {node}")));
    }
    Ok(rec)
}

/// The record a node's write at `rev` replaces: held in memory when this process wrote or
/// watched that revision last, else read.
async fn replaced(control: &Control, node: &str, key: &str, rev: i64) -> LinkResult<Option<(TaskRecord, i64)>> {
    match control.recent_tasks.at(key, rev) {
        Some(value) if key.starts_with(TASKS_PREFIX) => Ok(Some((owned(node, key, &value)?, rev))),
        _ => get_assigned(control, node, key).await,
    }
}

pub async fn put_assigned(control: &Control, node: &str, key: &str, rec: &TaskRecord, rev: i64) -> LinkResult<Written> {
    let Some((current, current_rev)) = replaced(control, node, key, rev).await? else {
        return Ok(Written::Gone);
    };
    if current_rev != rev {
        return Ok(Written::Conflict);
    }
    gantry_control::tasks::agent_may_write(&current, rec).map_err(LinkError::Forbidden)?;
    let data = serde_json::to_vec(rec).map_err(LinkError::unavailable)?;
    match control.store.update(key, &data, rev).await {
        Ok(r) => {
            control.recent_tasks.remember(key, r, &data);
            Ok(Written::Ok(r))
        }
        Err(gantry_store::StoreError::Conflict { .. }) => Ok(Written::Conflict),
        Err(gantry_store::StoreError::NotFound { .. }) => Ok(Written::Gone),
        Err(e) => Err(LinkError::unavailable(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_control::iam::NewRole;
    use serde_json::json;

    const ACCOUNT: &str = "123456789012";

    /// A task on node n1 logging to /app with the given execution role.
    async fn placed(control: &Control, execution: Option<&str>) -> TaskRecord {
        let container = json!({"name": "web", "image": "x", "logConfiguration": {"logDriver": "awslogs",
            "options": {"awslogs-group": "/app", "awslogs-stream-prefix": "ecs"}}});
        let rec = TaskRecord {
            task: gantry_types::model::Task {
                task_arn: format!("arn:aws:ecs:us-east-1:{ACCOUNT}:task/c/0123456789abcdef"),
                last_status: "RUNNING".into(),
                ..Default::default()
            },
            cluster: "c".into(),
            node: "n1".into(),
            containers: vec![serde_json::from_value(container).unwrap()],
            cpu_units: 256,
            memory_mib: 512,
            account: ACCOUNT.into(),
            region: "us-east-1".into(),
            protected_until: None,
            network_mode: gantry_types::taskdef::NetworkMode::Awsvpc,
            task_memory_limit: true,
            roles: gantry_control::tasks::TaskRoles {
                task: None,
                execution: execution.map(String::from),
            },
            security_groups: vec![],
        };
        let key = Control::key_of(&rec);
        let _ = control.store.delete(&key, None).await;
        control
            .store
            .create(&key, &serde_json::to_vec(&rec).unwrap())
            .await
            .unwrap();
        rec
    }

    #[tokio::test]
    async fn a_node_lists_only_its_own_tasks_with_their_revisions() {
        let store: Arc<dyn gantry_store::Store> = Arc::new(gantry_store::SqliteStore::in_memory().unwrap());
        let control = Control::new(store, Arc::new(gantry_control::SystemClock));
        let rec = placed(&control, None).await;
        let mut other = rec.clone();
        other.node = "n2".into();
        other.task.task_arn = format!("arn:aws:ecs:us-east-1:{ACCOUNT}:task/c/fedcba9876543210");
        let other_key = Control::key_of(&other);
        control
            .store
            .create(&other_key, &serde_json::to_vec(&other).unwrap())
            .await
            .unwrap();
        let key = Control::key_of(&rec);
        let rev = control.store.get(&key).await.unwrap().unwrap().mod_revision;
        let none = HashMap::new();
        let mine = assigned(&control, "n1", &none).await.unwrap();
        assert_eq!(mine.changed, vec![(key, rec, rev)]);
        let theirs = assigned(&control, "n2", &none).await.unwrap().changed;
        assert_eq!(theirs.iter().map(|(k, _, _)| k).collect::<Vec<_>>(), [&other_key]);
        assert_eq!(assigned(&control, "n3", &none).await.unwrap(), Assigned::default());
    }

    /// With the task watch running (an agent watches), a re-list reads the index: nothing
    /// from the store when nothing changed, only the changed records otherwise.
    #[tokio::test]
    async fn a_relist_reads_only_what_changed_since_the_revisions_the_node_knows() {
        let counted = Arc::new(gantry_store::instrumented::Instrumented::new());
        let store: Arc<dyn gantry_store::Store> = counted.clone();
        let control = Control::new(store, Arc::new(gantry_control::SystemClock));
        let reads = || (counted.gets(), counted.lists());
        let rec = placed(&control, None).await;
        let key = Control::key_of(&rec);
        let rev = control.store.get(&key).await.unwrap().unwrap().mod_revision;
        let mut watch = watch_assigned(&control, "n1").await.unwrap();

        let before = reads();
        let known = HashMap::from([(key.clone(), rev)]);
        assert_eq!(assigned(&control, "n1", &known).await.unwrap(), Assigned::default());
        assert_eq!(reads(), before, "an unchanged re-list reads nothing");

        // Changed and watched: the new record, from memory.
        let mut next = rec.clone();
        next.task.last_status = "STOPPED".into();
        let rev2 = control
            .store
            .update(&key, &serde_json::to_vec(&next).unwrap(), rev)
            .await
            .unwrap();
        watch.events.recv().await.unwrap().unwrap();
        let listed = assigned(&control, "n1", &known).await.unwrap();
        assert_eq!(listed.changed, vec![(key.clone(), next, rev2)]);
        assert_eq!(reads(), before);
        // STOPPED and unknown to the node: left out.
        assert_eq!(
            assigned(&control, "n1", &HashMap::new()).await.unwrap(),
            Assigned::default()
        );

        // Gone: named.
        control.store.delete(&key, None).await.unwrap();
        watch.events.recv().await.unwrap().unwrap();
        let listed = assigned(&control, "n1", &known).await.unwrap();
        assert_eq!((listed.changed.len(), listed.gone), (0, vec![key]));
        assert_eq!(reads(), before);
    }

    #[tokio::test]
    async fn a_nodes_write_after_its_own_needs_no_read_and_is_checked_the_same() {
        let counted = Arc::new(gantry_store::instrumented::Instrumented::new());
        let store: Arc<dyn gantry_store::Store> = counted.clone();
        let control = Control::new(store, Arc::new(gantry_control::SystemClock));
        let reads = || counted.gets();
        let rec = placed(&control, None).await;
        let key = Control::key_of(&rec);
        let rev = control.store.get(&key).await.unwrap().unwrap().mod_revision;
        let mut next = rec.clone();
        next.task.health_status = "HEALTHY".into();
        // Not held: read first.
        let before = reads();
        let Written::Ok(rev2) = put_assigned(&control, "n1", &key, &next, rev).await.unwrap() else {
            panic!("refused")
        };
        assert_eq!(reads(), before + 1);
        // Its own write held: no read, and the same checks.
        let before = reads();
        let mut moved = next.clone();
        moved.node = "n2".into();
        assert!(matches!(
            put_assigned(&control, "n1", &key, &moved, rev2).await,
            Err(LinkError::Forbidden(_))
        ));
        assert!(
            matches!(
                put_assigned(&control, "n2", &key, &next, rev2).await,
                Err(LinkError::Forbidden(_))
            ),
            "another node's write is refused"
        );
        next.task.last_status = "RUNNING".into();
        assert!(matches!(
            put_assigned(&control, "n1", &key, &next, rev2).await.unwrap(),
            Written::Ok(_)
        ));
        assert_eq!(reads(), before, "the records held were used");
        // A write from a revision since replaced conflicts, as before.
        assert!(matches!(
            put_assigned(&control, "n1", &key, &next, rev2).await.unwrap(),
            Written::Conflict
        ));
    }

    #[tokio::test]
    async fn a_node_writes_only_its_own_tasks_streams_with_their_execution_roles_permission() {
        let store: Arc<dyn gantry_store::Store> = Arc::new(gantry_store::SqliteStore::in_memory().unwrap());
        let control = Control::new(store, Arc::new(gantry_control::SystemClock));
        let rec = placed(&control, None).await;
        let (target, may_create) = awslogs_target(&rec, &rec.containers[0]).unwrap();
        assert_eq!(target.stream, "ecs/web/0123456789abcdef");
        assert!(!may_create);
        check_log_target(&control, "n1", &target, Some(false)).await.unwrap();
        check_log_target(&control, "n1", &target, None).await.unwrap();
        let forbidden = |r: LinkResult<()>| matches!(r, Err(LinkError::Forbidden(_)));
        // Another node, another stream or group, another account, creating the group unasked.
        assert!(forbidden(check_log_target(&control, "n2", &target, None).await));
        for t in [
            LogTarget {
                stream: "ecs/web/other".into(),
                ..target.clone()
            },
            LogTarget {
                group: "/other".into(),
                ..target.clone()
            },
            LogTarget {
                account: "999999999999".into(),
                ..target.clone()
            },
        ] {
            assert!(forbidden(check_log_target(&control, "n1", &t, None).await), "{t:?}");
        }
        assert!(forbidden(check_log_target(&control, "n1", &target, Some(true)).await));

        // With an execution role, making the stream needs its logs:CreateLogStream.
        let trust = r#"{"Statement": {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}}"#;
        let new = NewRole {
            name: "exec".into(),
            path: None,
            trust: trust.into(),
            description: None,
            max_session: None,
            tags: vec![],
        };
        let role = control.iam().create_role(ACCOUNT, new).await.unwrap();
        let rec = placed(&control, Some(&role.arn)).await;
        let (target, _) = awslogs_target(&rec, &rec.containers[0]).unwrap();
        match check_log_target(&control, "n1", &target, Some(false)).await {
            Err(LinkError::Forbidden(m)) => assert!(
                m.starts_with("AccessDeniedException: User: arn:aws:sts::123456789012:assumed-role/exec/0123456789abcdef is not authorized to perform: logs:CreateLogStream on resource: arn:aws:logs:us-east-1:123456789012:log-group:/app:log-stream:ecs/web/0123456789abcdef"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        let allow = r#"{"Statement": {"Effect": "Allow", "Action": "logs:CreateLogStream", "Resource": "arn:aws:logs:*:*:log-group:/app:*"}}"#;
        control
            .iam()
            .change_role(ACCOUNT, "exec", None, Some(("logs", Some(allow))))
            .await
            .unwrap();
        check_log_target(&control, "n1", &target, Some(false)).await.unwrap();
    }
}
