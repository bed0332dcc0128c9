//! One watch of the task records per process, fanned out to the nodes' watchers: each event
//! is decoded once and goes only to the watchers of the node its task is placed on (a delete
//! to the node that had the task). Without it every agent's watch was its own store watch
//! over every task, each decoding every record, and deletes reached every node.
//!
//! Subscribing watches from now: a watcher lists after subscribing (the agent does), so it
//! misses nothing. A watcher that falls behind (its queue full) or a store watch that ends
//! closes the affected watches; their agents watch and list again.

use crate::recent_tasks::RecentTasks;
use crate::tasks::{Placed, TASKS_PREFIX};
use gantry_store::{Event, EventKind, Store, Watch};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::{self, error::TrySendError};

/// Events a node's watcher may have queued before it is dropped as too slow.
const QUEUE: usize = 1024;

type Sender = mpsc::Sender<gantry_store::Result<Event>>;

enum Pumped {
    /// Nobody was listening any more.
    Idle,
    /// The store's watch ended.
    Ended,
}

#[derive(Default)]
struct State {
    /// Watchers by node.
    watchers: HashMap<String, Vec<Sender>>,
    /// The node each watched task record is on (to route its delete).
    owners: HashMap<String, String>,
    pumping: bool,
}

#[derive(Clone)]
pub struct TaskFanout {
    store: Arc<dyn Store>,
    state: Arc<Mutex<State>>,
    /// Told every record the watch brings.
    recent: RecentTasks,
}

impl TaskFanout {
    pub fn new(store: Arc<dyn Store>, recent: RecentTasks) -> TaskFanout {
        TaskFanout {
            store,
            state: Arc::new(Mutex::new(State::default())),
            recent,
        }
    }

    /// A watch of the task records placed on `node`, from now.
    pub async fn subscribe(&self, node: &str) -> gantry_store::Result<Watch> {
        // "Now", and a failure like a store watch's when the store is unreachable.
        let now = self.store.revision().await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let start = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.watchers.entry(node.to_string()).or_default().push(tx);
            !std::mem::replace(&mut s.pumping, true)
        };
        if start {
            tokio::spawn(self.clone().pump(now));
        }
        Ok(Watch { events: rx })
    }

    /// Watches the store while anyone listens. A store watch that ends or fails drops every
    /// watcher (they list again: events may have been missed); the next subscriber starts a
    /// new pump.
    async fn pump(self, mut from: i64) {
        loop {
            let ended = match self.pump_once(&mut from).await {
                Ok(Pumped::Idle) => false,
                Ok(Pumped::Ended) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "watching task records; watchers will list again");
                    true
                }
            };
            if self.settle(ended) {
                return;
            }
        }
    }

    /// After a pass: drops every watcher if the store's watch ended (they may have missed
    /// events) and the closed ones anyway; stops pumping (true) when nobody is left.
    fn settle(&self, ended: bool) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if ended {
            s.watchers.clear();
        }
        s.watchers.retain(|_, v| {
            v.retain(|tx| !tx.is_closed());
            !v.is_empty()
        });
        if s.watchers.is_empty() {
            s.pumping = false;
            s.owners.clear();
        }
        !s.pumping
    }

    /// Watches from `from` (moved along as events arrive) until nobody listens or the
    /// store's watch ends.
    async fn pump_once(&self, from: &mut i64) -> gantry_store::Result<Pumped> {
        let mut w = self.store.watch(TASKS_PREFIX, *from).await?;
        loop {
            let ev = match tokio::time::timeout(Duration::from_secs(5), w.events.recv()).await {
                Ok(Some(ev)) => ev?,
                Ok(None) => return Ok(Pumped::Ended),
                Err(_) if self.idle() => return Ok(Pumped::Idle),
                Err(_) => continue,
            };
            *from = ev.kv.mod_revision;
            self.route(ev);
        }
    }

    fn idle(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.watchers.retain(|_, v| {
            v.retain(|tx| !tx.is_closed());
            !v.is_empty()
        });
        s.watchers.is_empty()
    }

    /// Sends one event to the watchers of the node it concerns.
    fn route(&self, ev: Event) {
        match ev.kind {
            EventKind::Put => self.recent.remember(&ev.kv.key, ev.kv.mod_revision, &ev.kv.value),
            EventKind::Delete => self.recent.forget(&ev.kv.key),
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let node = match ev.kind {
            EventKind::Put => match serde_json::from_slice::<Placed>(&ev.kv.value) {
                Ok(r) => {
                    let node = r.node.into_owned();
                    s.owners.insert(ev.kv.key.clone(), node.clone());
                    Some(node)
                }
                Err(_) => None,
            },
            EventKind::Delete => s.owners.remove(&ev.kv.key),
        };
        let Some(node) = node else { return };
        if let Some(list) = s.watchers.get_mut(&node) {
            // A full queue: that watcher is too slow; dropping it makes its agent re-list.
            list.retain(|tx| match tx.try_send(Ok(ev.clone())) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Closed(_)) => false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_store::SqliteStore;

    fn rec(node: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"node": node, "task": {}})).unwrap()
    }

    async fn next(w: &mut Watch) -> Option<Event> {
        tokio::time::timeout(Duration::from_millis(500), w.events.recv())
            .await
            .ok()
            .flatten()
            .map(|e| e.unwrap())
    }

    #[tokio::test]
    async fn each_node_hears_only_its_own_tasks() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let f = TaskFanout::new(store.clone(), RecentTasks::default());
        let (mut a, mut b) = (f.subscribe("a").await.unwrap(), f.subscribe("b").await.unwrap());
        let mut a2 = f.subscribe("a").await.unwrap();
        store.create("/tasks/x/1", &rec("a")).await.unwrap();
        store.create("/tasks/x/2", &rec("b")).await.unwrap();
        store.delete("/tasks/x/1", None).await.unwrap();
        assert_eq!(next(&mut a).await.unwrap().kv.key, "/tasks/x/1");
        assert_eq!(next(&mut a2).await.unwrap().kv.key, "/tasks/x/1");
        assert_eq!(next(&mut b).await.unwrap().kv.key, "/tasks/x/2");
        // The delete goes to the node that had the task, and only there.
        let del = next(&mut a).await.unwrap();
        assert_eq!((del.kind, del.kv.key.as_str()), (EventKind::Delete, "/tasks/x/1"));
        assert!(next(&mut b).await.is_none());
        // A watcher that goes away is forgotten; the others keep hearing.
        drop(a2);
        store.create("/tasks/x/3", &rec("a")).await.unwrap();
        assert_eq!(next(&mut a).await.unwrap().kv.key, "/tasks/x/3");
    }
}
