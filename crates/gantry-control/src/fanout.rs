//! One watch of the task records per process, fanned out to the nodes' watchers: each event
//! is decoded once and goes only to the watchers of the node its task is placed on (a delete
//! to the node that had the task). Without it every agent's watch was its own store watch
//! over every task, each decoding every record, and deletes reached every node.
//!
//! The pump lists the records once as it starts, then watches from that listing's revision,
//! keeping an index of each node's records and their revisions. A node's re-list reads the
//! index, not the store: with every task record keyed by cluster, a store listing for one
//! node reads every node's records, so re-lists cost the servers nodes times tasks.
//!
//! A subscription returns once the first listing is in. A watcher hears every event routed
//! after it subscribed, and the index holds every one routed before, so a watcher that lists
//! after subscribing (the agent does) misses nothing.
//! A watcher that falls behind (its queue full) or a store watch that ends closes the
//! affected watches; their agents watch and list again.

use crate::recent_tasks::RecentTasks;
use crate::tasks::{Placed, TASKS_PREFIX};
use gantry_store::{Event, EventKind, KeyValue, Store, Watch};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::Notify;

/// Events a node's watcher may have queued before it is dropped as too slow.
const QUEUE: usize = 1024;
/// How long a re-list waits for the pump's first listing before reading the store itself.
const LISTING_WAIT: Duration = Duration::from_secs(5);

type Sender = mpsc::Sender<gantry_store::Result<Event>>;

enum Pumped {
    /// Nobody was listening any more.
    Idle,
    /// The store's watch ended.
    Ended,
}

/// A task record in the index: its revision, and whether it is STOPPED.
pub type Indexed = (i64, bool);

#[derive(Default)]
struct State {
    /// Watchers by node.
    watchers: HashMap<String, Vec<Sender>>,
    /// The node each task record is on (to route its delete).
    owners: HashMap<String, String>,
    /// Each node's task records: their revisions, and whether they are STOPPED.
    by_node: HashMap<String, HashMap<String, Indexed>>,
    pumping: bool,
    /// The pump's first listing is in: `owners` and `by_node` hold every record.
    listed: bool,
}

impl State {
    fn index(&mut self, key: &str, node: String, at: Indexed) {
        if let Some(old) = self.owners.insert(key.to_string(), node.clone()) {
            if old != node {
                self.unindex(key, &old);
            }
        }
        self.by_node.entry(node).or_default().insert(key.to_string(), at);
    }

    fn unindex(&mut self, key: &str, node: &str) {
        if let Some(m) = self.by_node.get_mut(node) {
            m.remove(key);
            if m.is_empty() {
                self.by_node.remove(node);
            }
        }
    }
}

#[derive(Clone)]
pub struct TaskFanout {
    store: Arc<dyn Store>,
    state: Arc<Mutex<State>>,
    /// Woken when the first listing is in, or the pump stops.
    listing: Arc<Notify>,
    /// Told every record the watch brings.
    recent: RecentTasks,
}

impl TaskFanout {
    pub fn new(store: Arc<dyn Store>, recent: RecentTasks) -> TaskFanout {
        TaskFanout {
            store,
            state: Arc::new(Mutex::new(State::default())),
            listing: Arc::new(Notify::new()),
            recent,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A watch of the task records placed on `node`, from now.
    pub async fn subscribe(&self, node: &str) -> gantry_store::Result<Watch> {
        // A failure like a store watch's when the store is unreachable.
        self.store.revision().await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let start = {
            let mut s = self.lock();
            s.watchers.entry(node.to_string()).or_default().push(tx);
            !std::mem::replace(&mut s.pumping, true)
        };
        if start {
            tokio::spawn(self.clone().pump());
        }
        // From now: what a first listing still to come holds is not sent as events.
        self.listed(|_| ()).await;
        Ok(Watch { events: rx })
    }

    /// The task records on `node` by key, from the index; None when there is no index to
    /// read (nobody watches, or the first listing is late): read the store.
    pub async fn assigned(&self, node: &str) -> Option<HashMap<String, Indexed>> {
        self.listed(|s| s.by_node.get(node).cloned().unwrap_or_default()).await
    }

    /// `f` of the index once the first listing is in; None if the pump is not running, stops,
    /// or takes longer than `LISTING_WAIT`.
    async fn listed<T>(&self, f: impl Fn(&State) -> T) -> Option<T> {
        let deadline = tokio::time::Instant::now() + LISTING_WAIT;
        loop {
            let listed = self.listing.notified();
            tokio::pin!(listed);
            listed.as_mut().enable();
            {
                let s = self.lock();
                if !s.pumping {
                    return None;
                }
                if s.listed {
                    return Some(f(&s));
                }
            }
            if tokio::time::timeout_at(deadline, listed).await.is_err() {
                return None;
            }
        }
    }

    /// Lists, then watches the store while anyone listens. A listing or store watch that
    /// fails or ends drops every watcher (they list again: events may have been missed); the
    /// next subscriber starts a new pump.
    async fn pump(self) {
        let failed = match self.list().await {
            Err(e) => Some(e),
            Ok(mut from) => loop {
                match self.pump_once(&mut from).await {
                    Ok(Pumped::Idle) if self.settle(false) => return,
                    Ok(Pumped::Idle) => {}
                    Ok(Pumped::Ended) => break None,
                    Err(e) => break Some(e),
                }
            },
        };
        if let Some(e) = failed {
            tracing::warn!(error = %e, "watching task records; watchers will list again");
        }
        self.settle(true);
    }

    /// Indexes every task record; returns the revision they were read at.
    async fn list(&self) -> gantry_store::Result<i64> {
        let (kvs, rev) = self.store.list(TASKS_PREFIX).await?;
        let mut s = self.lock();
        for kv in kvs {
            if let Some((node, stopped)) = node_of(&kv) {
                s.index(&kv.key, node, (kv.mod_revision, stopped));
            }
        }
        s.listed = true;
        drop(s);
        self.listing.notify_waiters();
        Ok(rev)
    }

    /// After a pass: drops every watcher if the store's watch ended (they may have missed
    /// events) and the closed ones anyway; stops pumping (true) when nobody is left.
    fn settle(&self, ended: bool) -> bool {
        let mut s = self.lock();
        if ended {
            s.watchers.clear();
        }
        s.watchers.retain(|_, v| {
            v.retain(|tx| !tx.is_closed());
            !v.is_empty()
        });
        if s.watchers.is_empty() {
            s.pumping = false;
            s.listed = false;
            s.owners.clear();
            s.by_node.clear();
            drop(s);
            self.listing.notify_waiters();
            return true;
        }
        false
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
        let mut s = self.lock();
        s.watchers.retain(|_, v| {
            v.retain(|tx| !tx.is_closed());
            !v.is_empty()
        });
        s.watchers.is_empty()
    }

    /// Indexes one event and sends it to the watchers of the node it concerns.
    fn route(&self, ev: Event) {
        match ev.kind {
            EventKind::Put => self.recent.remember(&ev.kv.key, ev.kv.mod_revision, &ev.kv.value),
            EventKind::Delete => self.recent.forget(&ev.kv.key),
        }
        let mut s = self.lock();
        let node = match ev.kind {
            EventKind::Put => node_of(&ev.kv).map(|(node, stopped)| {
                s.index(&ev.kv.key, node.clone(), (ev.kv.mod_revision, stopped));
                node
            }),
            EventKind::Delete => s.owners.remove(&ev.kv.key).inspect(|node| s.unindex(&ev.kv.key, node)),
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

/// The node a stored task record is placed on, and whether it is STOPPED (None for one that
/// does not decode).
fn node_of(kv: &KeyValue) -> Option<(String, bool)> {
    let p = serde_json::from_slice::<Placed>(&kv.value).ok()?;
    let stopped = p.stopped();
    Some((p.node.into_owned(), stopped))
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

    #[tokio::test]
    async fn the_index_holds_each_nodes_records_from_the_first_listing_on() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let before = store.create("/tasks/x/1", &rec("a")).await.unwrap();
        store.create("/tasks/x/2", &rec("b")).await.unwrap();
        let f = TaskFanout::new(store.clone(), RecentTasks::default());
        // Nobody watches: no index.
        assert_eq!(f.assigned("a").await, None);
        let mut a = f.subscribe("a").await.unwrap();
        let one = |key: &str, rev| HashMap::from([(key.to_string(), (rev, false))]);
        assert_eq!(f.assigned("a").await.unwrap(), one("/tasks/x/1", before));
        let third = store.create("/tasks/x/3", &rec("a")).await.unwrap();
        store.delete("/tasks/x/1", None).await.unwrap();
        next(&mut a).await.unwrap();
        next(&mut a).await.unwrap();
        assert_eq!(f.assigned("a").await.unwrap(), one("/tasks/x/3", third));
        assert_eq!(f.assigned("b").await.unwrap().len(), 1);
        assert!(f.assigned("c").await.unwrap().is_empty());
    }
}
