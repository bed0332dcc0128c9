//! The node agent: watches the task records placed on this node and drives each through the
//! ECS lifecycle with gantry-runtime (pull, sandbox, containers in dependsOn order, health,
//! stop, cleanup), shipping awslogs output to the log store. Re-attaches after a restart:
//! containers keep running under their shims and the agent picks them up from disk.

mod health;
mod logship;
mod metadata;
mod ports;
mod supervise;
mod wake;

use gantry_control::logstore::LogStore;
use gantry_control::Control;
use gantry_runtime::task::Node;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

pub struct Agent {
    pub control: Control,
    pub node: Arc<Node>,
    pub logs: Arc<LogStore>,
    supervised: Mutex<HashSet<String>>,
    /// Running metadata endpoints by task id.
    metadata: Mutex<std::collections::HashMap<String, tokio::task::AbortHandle>>,
    /// Port relays of bridge-mode tasks by task id.
    published: Mutex<std::collections::HashMap<String, Vec<tokio::task::AbortHandle>>>,
}

impl Agent {
    pub fn new(control: Control, node: Arc<Node>, logs: Arc<LogStore>) -> Arc<Agent> {
        Arc::new(Agent {
            control,
            node,
            logs,
            supervised: Mutex::new(HashSet::new()),
            metadata: Mutex::new(Default::default()),
            published: Mutex::new(Default::default()),
        })
    }

    /// Runs until `shutdown` flips to true. Reacts to task record changes through a watch and
    /// re-checks every second in any case (level-triggered).
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut wake = wake::Wake::new(gantry_control::TASKS_PREFIX);
        loop {
            self.reconcile().await;
            tokio::select! {
                _ = wake.wait(self.control.store.as_ref()) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Starts the task's metadata endpoint (idempotent).
    pub(crate) fn start_metadata(self: &Arc<Self>, key: &str, task_id: &str) {
        let mut m = self.metadata.lock().expect("lock");
        if m.contains_key(task_id) {
            return;
        }
        match metadata::serve(self, key, task_id) {
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
        for (container, w) in wanted {
            let (bindings, handles) = match ports::publish(ip, w).await {
                Ok(r) => r,
                Err(e) => {
                    self.unpublish_ports(task_id);
                    return Err(e);
                }
            };
            self.published
                .lock()
                .expect("lock")
                .entry(task_id.to_string())
                .or_default()
                .extend(handles);
            out.push((container.clone(), bindings));
        }
        Ok(out)
    }

    pub(crate) fn unpublish_ports(&self, task_id: &str) {
        for h in self.published.lock().expect("lock").remove(task_id).unwrap_or_default() {
            h.abort();
        }
    }

    pub(crate) fn stop_metadata(&self, task_id: &str) {
        if let Some(h) = self.metadata.lock().expect("lock").remove(task_id) {
            h.abort();
        }
    }

    async fn reconcile(self: &Arc<Self>) {
        let tasks = match self.control.all_tasks().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "listing tasks");
                return;
            }
        };
        for (key, rec, _) in &tasks {
            if rec.node != self.control.node || rec.task.last_status == "STOPPED" {
                continue;
            }
            if !self.supervised.lock().expect("lock").insert(key.clone()) {
                continue;
            }
            let me = self.clone();
            let key = key.clone();
            tokio::spawn(async move {
                if let Err(e) = supervise::supervise(&me, &key).await {
                    tracing::error!(task = %key, error = %e, "task supervision failed");
                }
                me.supervised.lock().expect("lock").remove(&key);
            });
        }
        // Stopped tasks are visible for an hour or more, as in ECS; then they go.
        // from the same listing: no second scan of every task each second.
        let _ = self.control.expire_stopped_tasks(&tasks, 3.0 * 3600.0).await;
    }
}
