//! The node agent: watches the task records placed on this node and drives each through the
//! ECS lifecycle with gantry-runtime (pull, sandbox, containers in dependsOn order, health,
//! stop, cleanup), shipping awslogs output. Everything it knows of the control plane comes
//! through one `ControlLink` (in-process or remote). Re-attaches after a restart: containers
//! keep running under their shims and the agent picks them up from disk.

mod exec;
mod health;
pub mod link;
pub use exec::AgentExec;
pub use security::base_namespace_rules;
mod logship;
mod metadata;
mod ports;
mod security;
mod supervise;
pub mod telemetry;
mod usage;
mod wake;

use gantry_control::nodes::NodeSpec;
use gantry_control::TaskRecord;
use gantry_runtime::task::Node;
use link::ControlLink;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Keeps `size` network namespaces and ephemeral filesystems ready so a task start never
/// waits for one.
pub async fn keep_pool_warm(node: Arc<Node>, size: usize, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let n = node.clone();
        let _ = tokio::task::spawn_blocking(move || n.fill_pools(size)).await;
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// How often the agent says it is alive (the server declares a node lost after 15 s by
/// default).
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(3);

/// A bridge-mode task's published ports: their relays, and (protocol, host port) each.
#[derive(Default)]
struct Published {
    relays: Vec<tokio::task::AbortHandle>,
    ports: Vec<(String, u16)>,
}

pub struct Agent {
    pub link: Arc<dyn ControlLink>,
    pub node: Arc<Node>,
    /// What this node offers; registered on start and again after being fenced.
    spec: NodeSpec,
    /// Supervised tasks by key, each with what wakes its supervisor when its record changes.
    supervised: Mutex<HashMap<String, Arc<Notify>>>,
    /// Running metadata endpoints by task id.
    metadata: Mutex<std::collections::HashMap<String, tokio::task::AbortHandle>>,
    /// Port relays of bridge-mode tasks by task id.
    published: Mutex<std::collections::HashMap<String, Published>>,
    /// Each supervised task's newest record this agent knows, with its revision: as it last
    /// wrote it, or as the watch (or a re-list) brought it since. The supervisor looks at it
    /// instead of reading, and the next write is tried against it without reading first (a
    /// conflict reads and retries): an idle task costs no store reads.
    pub(crate) records: Mutex<HashMap<String, (TaskRecord, i64)>>,
    /// How often the running tasks' usage is sampled and reported.
    usage_every: std::time::Duration,
    /// The running tasks whose usage is sampled, by key (kept by their supervisors).
    sampled: Mutex<HashMap<String, Arc<usage::Sampled>>>,
    /// The Gantry API, relayed into each task's namespace (None: tasks get no relay).
    api: Option<std::net::SocketAddr>,
    /// The security groups and members, as last read.
    security: Mutex<Option<gantry_control::ec2::SecurityView>>,
    /// The tasks in the bridge's security group rules, and what those rules enforce.
    enforcement: tokio::sync::Mutex<security::Enforcement>,
}

impl Agent {
    pub fn new(
        link: Arc<dyn ControlLink>,
        node: Arc<Node>,
        spec: NodeSpec,
        usage_every: std::time::Duration,
        api: Option<std::net::SocketAddr>,
    ) -> Arc<Agent> {
        Arc::new(Agent {
            link,
            node,
            spec,
            supervised: Mutex::new(HashMap::new()),
            metadata: Mutex::new(Default::default()),
            published: Mutex::new(Default::default()),
            records: Mutex::new(HashMap::new()),
            usage_every,
            sampled: Mutex::new(HashMap::new()),
            api,
            security: Mutex::new(None),
            enforcement: Default::default(),
        })
    }

    /// Runs until `shutdown` flips to true (call `register` first). Watch events say which
    /// task records changed: new ones get a supervisor, supervised ones wake theirs. A full re-list (at start, after a
    /// watch is re-established, and every few seconds as a safety net) keeps it
    /// level-triggered. An idle task costs nothing between events.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let heartbeats = tokio::spawn(self.clone().heartbeat());
        let usage = tokio::spawn(self.clone().report_usage(self.usage_every));
        let security = tokio::spawn(self.clone().follow_security_groups());
        let mut wake = wake::Wake::new();
        self.reconcile().await;
        loop {
            let woke = tokio::select! {
                w = wake.wait(self.link.as_ref()) => w,
                _ = shutdown.changed() => {
                    heartbeats.abort();
                    usage.abort();
                    security.abort();
                    return;
                }
            };
            match woke {
                wake::Woke::Resync => self.reconcile().await,
                wake::Woke::Changed(events) => {
                    for e in events {
                        if e.kind == gantry_store::EventKind::Delete {
                            self.deleted(&e.kv.key);
                            continue;
                        }
                        match serde_json::from_slice::<TaskRecord>(&e.kv.value) {
                            Ok(rec) => self.consider(&e.kv.key, rec, e.kv.mod_revision, true),
                            Err(err) => tracing::warn!(key = %e.kv.key, error = %err, "unreadable task record"),
                        }
                    }
                }
            }
        }
    }

    /// A task record at revision `rev`: its supervisor learns it and is woken (a re-list
    /// wakes it only when the record is newer than the one it knows: `always` false), or
    /// one is started from it if the task has none.
    fn consider(self: &Arc<Self>, key: &str, rec: TaskRecord, rev: i64, always: bool) {
        if rec.node != self.link.node() {
            return;
        }
        let mut supervised = self.supervised.lock().expect("lock");
        if let Some(n) = supervised.get(key) {
            if self.learn(key, rec, rev) || always {
                n.notify_one();
            }
            return;
        }
        if rec.task.last_status == "STOPPED" {
            return;
        }
        let notify = Arc::new(Notify::new());
        supervised.insert(key.to_string(), notify.clone());
        let me = self.clone();
        let key = key.to_string();
        let seed = Some((rec, rev)).filter(|_| rev > 0);
        tokio::spawn(async move {
            if let Err(e) = supervise::supervise(&me, &key, seed, &notify).await {
                tracing::error!(task = %key, error = %e, "task supervision failed");
            }
            me.supervised.lock().expect("lock").remove(&key);
            me.records.lock().expect("lock").remove(&key);
            me.sampled.lock().expect("lock").remove(&key);
        });
    }

    /// Keeps `rec` as the newest record known of `key` unless one as new is known; whether it
    /// was newer.
    pub(crate) fn learn(&self, key: &str, rec: TaskRecord, rev: i64) -> bool {
        let mut records = self.records.lock().expect("lock");
        if records.get(key).is_some_and(|(_, known)| *known >= rev) {
            return false;
        }
        records.insert(key.to_string(), (rec, rev));
        true
    }

    /// `learn`, for a task still supervised (a write after its supervisor ended is not kept).
    pub(crate) fn learn_if_supervised(&self, key: &str, rec: TaskRecord, rev: i64) {
        // Held across the learning: a supervisor that ends removes its task here first.
        let supervised = self.supervised.lock().expect("lock");
        if supervised.contains_key(key) {
            self.learn(key, rec, rev);
        }
    }

    /// A task record was deleted: its supervisor, if any, reads it (finds it gone) and ends.
    fn deleted(&self, key: &str) {
        self.records.lock().expect("lock").remove(key);
        if let Some(n) = self.supervised.lock().expect("lock").get(key) {
            n.notify_one();
        }
    }

    /// Starts the task's metadata endpoint (idempotent).
    pub(crate) fn start_metadata(self: &Arc<Self>, key: &str, task_id: &str) {
        let mut m = self.metadata.lock().expect("lock");
        if m.contains_key(task_id) {
            return;
        }
        match metadata::serve(self, key, task_id, self.api) {
            Ok(h) => {
                m.insert(task_id.to_string(), h);
            }
            Err(e) => tracing::warn!(task = %task_id, error = %e, "starting the metadata endpoint"),
        }
    }

    /// Publishes a bridge-mode task's ports (`wanted`: from its definition, or the bindings
    /// recorded before a restart). Returns the bindings per container.
    pub(crate) async fn publish_ports(
        &self,
        task_id: &str,
        ip: std::net::Ipv4Addr,
        wanted: &[(String, Vec<ports::Binding>)],
    ) -> Result<Vec<(String, Vec<ports::Binding>)>, String> {
        let mut out = Vec::new();
        let mut opened: Vec<(String, u16)> = Vec::new();
        for (container, w) in wanted {
            let (bindings, handles) = match ports::publish(ip, w).await {
                Ok(r) => r,
                Err(e) => {
                    self.unpublish_ports(task_id);
                    return Err(e);
                }
            };
            let ports: Vec<(String, u16)> = bindings.iter().map(|b| (b.protocol.clone(), b.host_port)).collect();
            let mut published = self.published.lock().expect("lock");
            let entry = published.entry(task_id.to_string()).or_default();
            entry.relays.extend(handles);
            entry.ports.extend(ports.iter().cloned());
            opened.extend(ports);
            out.push((container.clone(), bindings));
        }
        // Other tasks reach them at the node's addresses, as on an ECS instance.
        let node = self.node.clone();
        let opened = tokio::task::spawn_blocking(move || node.network().published_ports(&opened, true))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = opened {
            self.unpublish_ports(task_id);
            return Err(format!("opening the published ports to tasks: {e}"));
        }
        Ok(out)
    }

    /// Stops a task's relays and closes its ports to tasks (in the background: a delete in
    /// nftables waits for an RCU grace period).
    pub(crate) fn unpublish_ports(&self, task_id: &str) {
        let Some(p) = self.published.lock().expect("lock").remove(task_id) else {
            return;
        };
        for h in p.relays {
            h.abort();
        }
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = node.network().published_ports(&p.ports, false) {
                tracing::warn!(error = %e, ports = ?p.ports, "closing published ports to tasks");
            }
        });
    }

    pub(crate) fn stop_metadata(&self, task_id: &str) {
        if let Some(h) = self.metadata.lock().expect("lock").remove(task_id) {
            h.abort();
        }
    }

    async fn reconcile(self: &Arc<Self>) {
        let known: HashMap<String, i64> = {
            let records = self.records.lock().expect("lock");
            records.iter().map(|(k, (_, rev))| (k.clone(), *rev)).collect()
        };
        match self.link.list_assigned(&known).await {
            Ok(listed) => {
                for key in listed.gone {
                    self.deleted(&key);
                }
                for (key, rec, rev) in listed.changed {
                    self.consider(&key, rec, rev, false);
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing this node's tasks"),
        }
    }

    /// Registers the node, retrying until the control plane answers.
    pub async fn register(&self) {
        let mut delay = std::time::Duration::from_millis(200);
        loop {
            match self.link.register(&self.spec).await {
                Ok(r) => {
                    tracing::info!(node = %r.spec.name, epoch = r.epoch, "node registered");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "registering the node; retrying in {delay:?}"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(5));
        }
    }

    /// Heartbeats; a fenced node (declared lost while it was silent) registers again. Its
    /// tasks were stopped meanwhile: their supervisors see the STOPPED records and clean up.
    async fn heartbeat(self: Arc<Self>) {
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            if let Err(e) = self.link.heartbeat().await {
                tracing::warn!(error = %e, "heartbeat refused or failed");
                if matches!(e, link::LinkError::Fenced(_)) {
                    self.register().await;
                    self.reconcile().await;
                }
            }
        }
    }
}
