//! What nodes and load balancers enforce: every security group with each group's members'
//! addresses, how a server keeps it current for them, and whether a group's rules let a
//! TCP connection through.

use super::{check_cidr, default_group_id, Peer, Rule, SecurityGroup, GROUPS_PREFIX};
use crate::{TaskRecord, TASKS_PREFIX};
use gantry_store::{EventKind, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// What nodes enforce: every group, and each group's members' addresses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SecurityView {
    pub groups: Vec<SecurityGroup>,
    pub members: BTreeMap<String, Vec<Ipv4Addr>>,
}

impl SecurityView {
    /// The view from the groups and (group, member address) pairs (`task_membership`).
    pub fn from_members<'a>(
        groups: Vec<SecurityGroup>,
        pairs: impl Iterator<Item = &'a (String, Ipv4Addr)>,
    ) -> SecurityView {
        let mut members: BTreeMap<String, Vec<Ipv4Addr>> = Default::default();
        for (g, ip) in pairs {
            members.entry(g.clone()).or_default().push(*ip);
        }
        for ips in members.values_mut() {
            ips.sort();
            ips.dedup();
        }
        let mut groups = groups;
        groups.sort_by(|a, b| a.id.cmp(&b.id));
        SecurityView { groups, members }
    }

    /// A digest of the view, for "tell me when it differs from what I have".
    pub fn digest(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, &serde_json::to_vec(self).expect("json"));
        d.as_ref()[..12].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What one task record contributes to views: its node, its groups while it is not stopped
/// (a starting task's rules are needed before it has an address), and its (group, address)
/// pairs once it has one.
#[derive(PartialEq)]
struct Contribution {
    node: String,
    groups: Vec<String>,
    members: Vec<(String, Ipv4Addr)>,
}

impl Contribution {
    fn of(t: &TaskRecord) -> Contribution {
        let live = t.task.last_status != "STOPPED";
        Contribution {
            node: t.node.clone(),
            groups: if live { task_groups(t) } else { vec![] },
            members: task_membership(t),
        }
    }
}

/// Every security group and every task record's contribution, read once and then kept current
/// from the store's watches by one task, for all of a process's followers (each node's poll on
/// a server, a load balancer): a task record's write costs parsing that record once, where
/// each follower used to list every task record on each change it saw.
#[derive(Clone)]
pub struct SecuritySource {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    state: Mutex<Sources>,
    /// Bumped on every change of `state`.
    changed: tokio::sync::watch::Sender<u64>,
    started: std::sync::OnceLock<()>,
}

#[derive(Default)]
struct Sources {
    groups: BTreeMap<String, SecurityGroup>,
    tasks: HashMap<String, Contribution>,
    /// Whether the listings have been read.
    loaded: bool,
    /// Why the last attempt to read or follow them failed.
    error: Option<String>,
}

impl SecuritySource {
    pub fn new(store: Arc<dyn Store>) -> SecuritySource {
        SecuritySource {
            inner: Arc::new(Inner {
                store,
                state: Mutex::new(Sources::default()),
                changed: tokio::sync::watch::channel(0).0,
                started: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The view once it differs from the one whose digest is `known` (at once when that is
    /// empty; at `deadline`, the same view). With `node`, the view that node needs
    /// (`SecurityView::for_tasks` of its tasks' groups), so changes elsewhere that do not
    /// touch it do not wake it. Fails only if the store could not be read by `deadline`.
    pub async fn follow(&self, node: Option<&str>, known: &str, deadline: Instant) -> Result<SecurityView, StoreError> {
        self.start();
        let mut changes = self.inner.changed.subscribe();
        loop {
            changes.borrow_and_update();
            let (view, error) = self.view(node);
            let due = Instant::now() >= deadline;
            match view {
                Some(v) if due || v.digest() != known => return Ok(v),
                None if due => {
                    let why = error.unwrap_or_else(|| "not read yet".into());
                    return Err(StoreError::Backend(format!("reading security groups: {why}")));
                }
                _ => {}
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// The current view (None before the first reading) and the last error.
    fn view(&self, node: Option<&str>) -> (Option<SecurityView>, Option<String>) {
        let s = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        if !s.loaded {
            return (None, s.error.clone());
        }
        let all = SecurityView::from_members(
            s.groups.values().cloned().collect(),
            s.tasks.values().flat_map(|c| &c.members),
        );
        let view = match node {
            None => all,
            Some(n) => all.for_tasks(s.tasks.values().filter(|c| c.node == n).flat_map(|c| &c.groups)),
        };
        (Some(view), s.error.clone())
    }

    fn start(&self) {
        self.inner.started.get_or_init(|| {
            tokio::spawn(maintain(Arc::downgrade(&self.inner)));
        });
    }
}

/// Reads and follows the groups and task records while the source exists; after a failure
/// (a watch that ended or fell behind a compaction, a store that did not answer), reads
/// them again a second later.
async fn maintain(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(store) = inner.upgrade().map(|i| i.store.clone()) else {
            return;
        };
        let error = match sync(store.as_ref(), &inner).await {
            Ok(()) => return,
            Err(e) => e.to_string(),
        };
        let Some(i) = inner.upgrade() else { return };
        i.state.lock().unwrap_or_else(|p| p.into_inner()).error = Some(error);
        i.changed.send_modify(|v| *v += 1);
        drop(i);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// One listing of each, then their watches until one fails (Err) or the source is dropped.
async fn sync(store: &dyn Store, inner: &std::sync::Weak<Inner>) -> Result<(), StoreError> {
    let (group_kvs, group_rev) = store.list(GROUPS_PREFIX).await?;
    let (task_kvs, task_rev) = store.list(TASKS_PREFIX).await?;
    let mut group_watch = store.watch(GROUPS_PREFIX, group_rev).await?;
    let mut task_watch = store.watch(TASKS_PREFIX, task_rev).await?;
    let fresh = Sources {
        groups: group_kvs
            .iter()
            .filter_map(|kv| Some((kv.key.clone(), serde_json::from_slice(&kv.value).ok()?)))
            .collect(),
        tasks: task_kvs
            .iter()
            .filter_map(|kv| {
                Some((
                    kv.key.clone(),
                    Contribution::of(&serde_json::from_slice(&kv.value).ok()?),
                ))
            })
            .collect(),
        loaded: true,
        error: None,
    };
    if !apply(inner, |s| {
        *s = fresh;
        true
    }) {
        return Ok(());
    }
    loop {
        let applied = tokio::select! {
            // A source dropped while nothing changes does not keep its watches open.
            _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => inner.strong_count() > 0,
            e = group_watch.events.recv() => {
                let e = e.ok_or_else(|| StoreError::Backend("the security groups' watch ended".into()))??;
                apply(inner, |s| {
                    match e.kind {
                        EventKind::Put => match serde_json::from_slice(&e.kv.value) {
                            Ok(g) => drop(s.groups.insert(e.kv.key, g)),
                            Err(_) => drop(s.groups.remove(&e.kv.key)),
                        },
                        EventKind::Delete => drop(s.groups.remove(&e.kv.key)),
                    }
                    true
                })
            }
            e = task_watch.events.recv() => {
                let e = e.ok_or_else(|| StoreError::Backend("the task records' watch ended".into()))??;
                let now = match e.kind {
                    EventKind::Put => serde_json::from_slice::<TaskRecord>(&e.kv.value).ok().map(|r| Contribution::of(&r)),
                    EventKind::Delete => None,
                };
                apply(inner, |s| {
                    // Most writes of a task's record (its status, its containers') change
                    // nothing here: followers are told only of those that do.
                    if s.tasks.get(&e.kv.key) == now.as_ref() {
                        return false;
                    }
                    match now {
                        Some(c) => drop(s.tasks.insert(e.kv.key, c)),
                        None => drop(s.tasks.remove(&e.kv.key)),
                    }
                    true
                })
            }
        };
        if !applied {
            return Ok(());
        }
    }
}

/// Changes the source's state and, when `f` says it changed, tells its followers; false once
/// the source is gone.
fn apply(inner: &std::sync::Weak<Inner>, f: impl FnOnce(&mut Sources) -> bool) -> bool {
    let Some(i) = inner.upgrade() else { return false };
    if f(&mut i.state.lock().unwrap_or_else(|p| p.into_inner())) {
        i.changed.send_modify(|v| *v += 1);
    }
    true
}

/// One end of a TCP connection, as a rule's peer is matched against it.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    pub address: Ipv4Addr,
    /// The groups it is in besides those the view lists it in (a load balancer's own).
    pub groups: &'a [String],
}

impl SecurityView {
    /// Whether some rule of `groups` (ingress, or egress) lets a TCP connection to `port`
    /// through with `peer` at the other end: a rule for TCP or all traffic whose port range
    /// holds `port`, and whose peer is a block holding the peer's address or a group the
    /// peer is in.
    pub fn admits(&self, groups: &[String], egress: bool, port: u16, peer: Endpoint) -> bool {
        let port = i64::from(port);
        self.groups
            .iter()
            .filter(|g| groups.contains(&g.id))
            .flat_map(|g| if egress { &g.egress } else { &g.ingress })
            .any(|r| carries_tcp(r, port) && self.matches(&r.peer, peer))
    }

    /// What a node enforcing tasks in `groups` needs: those groups, and the members of the
    /// groups their rules name as peers.
    pub fn for_tasks<'a>(&self, groups: impl IntoIterator<Item = &'a String>) -> SecurityView {
        let wanted: std::collections::BTreeSet<&String> = groups.into_iter().collect();
        let kept: Vec<SecurityGroup> = self.groups.iter().filter(|g| wanted.contains(&g.id)).cloned().collect();
        let named: std::collections::BTreeSet<&String> = kept
            .iter()
            .flat_map(|g| g.ingress.iter().chain(&g.egress))
            .filter_map(|r| match &r.peer {
                Peer::Group(id) => Some(id),
                Peer::Cidr(_) => None,
            })
            .collect();
        let members = self
            .members
            .iter()
            .filter(|(id, _)| named.contains(id))
            .map(|(id, ips)| (id.clone(), ips.clone()))
            .collect();
        SecurityView { groups: kept, members }
    }

    /// The groups an address is in, as the view's members list it.
    pub fn groups_of(&self, address: Ipv4Addr) -> Vec<String> {
        self.members
            .iter()
            .filter(|(_, ips)| ips.binary_search(&address).is_ok())
            .map(|(g, _)| g.clone())
            .collect()
    }

    fn matches(&self, rule_peer: &Peer, peer: Endpoint) -> bool {
        match rule_peer {
            Peer::Cidr(c) => check_cidr(c).is_ok_and(|(net, len)| in_block(peer.address, net, len)),
            Peer::Group(g) => {
                peer.groups.contains(g)
                    || self
                        .members
                        .get(g)
                        .is_some_and(|ips| ips.binary_search(&peer.address).is_ok())
            }
        }
    }
}

fn carries_tcp(r: &Rule, port: i64) -> bool {
    r.protocol == "-1" || (r.protocol == "tcp" && r.from_port <= port && port <= r.to_port)
}

fn in_block(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
    u32::from(ip) & mask == u32::from(net) & mask
}

/// The (group, address) pairs a task contributes: none until its ENI has an address, none
/// once stopped.
pub fn task_membership(t: &TaskRecord) -> Vec<(String, Ipv4Addr)> {
    if t.task.last_status == "STOPPED" {
        return vec![];
    }
    let Some(ip) = task_address(t) else {
        return vec![];
    };
    task_groups(t).into_iter().map(|g| (g, ip)).collect()
}

/// A task's security groups; an awsvpc task recorded before tasks had any is in its VPC's
/// default group.
pub fn task_groups(t: &TaskRecord) -> Vec<String> {
    if t.security_groups.is_empty() && t.network_mode == gantry_types::taskdef::NetworkMode::Awsvpc {
        return vec![default_group_id(&t.scope())];
    }
    t.security_groups.clone()
}

/// An awsvpc task's address, once its ENI is attached.
pub fn task_address(t: &TaskRecord) -> Option<Ipv4Addr> {
    t.task
        .attachments
        .first()?
        .details
        .iter()
        .find(|d| d.name.as_deref() == Some("privateIPv4Address"))?
        .value
        .as_deref()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_store::instrumented::{Instrumented, Watches};

    fn scope() -> gantry_types::arn::Scope {
        gantry_types::arn::Scope {
            account: "123456789012".into(),
            region: "us-east-1".into(),
        }
    }

    fn group(id: &str, ingress: Vec<Rule>, egress: Vec<Rule>) -> SecurityGroup {
        SecurityGroup {
            id: id.into(),
            name: id.into(),
            description: String::new(),
            vpc_id: "vpc-1".into(),
            owner: "123456789012".into(),
            ingress,
            egress,
            tags: vec![],
        }
    }

    fn rule(protocol: &str, ports: (i64, i64), peer: Peer) -> Rule {
        Rule {
            id: String::new(),
            protocol: protocol.into(),
            from_port: ports.0,
            to_port: ports.1,
            peer,
            description: None,
        }
    }

    #[test]
    fn rules_admit_by_protocol_port_block_and_group() {
        let web: Ipv4Addr = "10.1.0.5".parse().unwrap();
        let db: Ipv4Addr = "10.1.0.9".parse().unwrap();
        let view = SecurityView::from_members(
            vec![
                group(
                    "sg-db",
                    vec![
                        rule("tcp", (5432, 5432), Peer::Group("sg-web".into())),
                        rule("tcp", (9000, 9100), Peer::Cidr("192.168.0.0/16".into())),
                        rule("udp", (53, 53), Peer::Cidr("0.0.0.0/0".into())),
                    ],
                    vec![],
                ),
                group(
                    "sg-web",
                    vec![],
                    vec![rule("-1", (-1, -1), Peer::Cidr("0.0.0.0/0".into()))],
                ),
                group(
                    "sg-lb",
                    vec![rule("tcp", (80, 80), Peer::Cidr("127.0.0.1/32".into()))],
                    vec![],
                ),
            ],
            [("sg-web".to_string(), web), ("sg-db".to_string(), db)].iter(),
        );
        fn at<'a>(address: &str, groups: &'a [String]) -> Endpoint<'a> {
            Endpoint {
                address: address.parse().unwrap(),
                groups,
            }
        }
        let db_in = |port, peer| view.admits(&["sg-db".into()], false, port, peer);
        // By group membership, as the view lists it, on the rule's port only.
        assert!(db_in(5432, at("10.1.0.5", &[])));
        assert!(!db_in(5433, at("10.1.0.5", &[])));
        assert!(!db_in(5432, at("10.1.0.6", &[])), "not a member");
        // By a group the peer says it is in (a load balancer's).
        let lb_groups = ["sg-web".to_string()];
        assert!(db_in(5432, at("10.9.9.9", &lb_groups)));
        // By block, within the port range; a UDP rule lets no TCP through.
        assert!(db_in(9050, at("192.168.3.4", &[])));
        assert!(!db_in(9050, at("192.169.0.1", &[])));
        assert!(!db_in(53, at("1.2.3.4", &[])));
        // All traffic to anywhere; a group's egress is not its ingress.
        assert!(view.admits(&["sg-web".into()], true, 1, at("8.8.8.8", &[])));
        assert!(!view.admits(&["sg-web".into()], false, 1, at("8.8.8.8", &[])));
        // A /32 and a /0; no group at all admits nothing.
        assert!(view.admits(&["sg-lb".into()], false, 80, at("127.0.0.1", &[])));
        assert!(!view.admits(&["sg-lb".into()], false, 80, at("127.0.0.2", &[])));
        assert!(!view.admits(&[], false, 80, at("127.0.0.1", &[])));
        assert_eq!(view.groups_of(db), ["sg-db"]);
        assert!(view.groups_of("10.1.0.6".parse().unwrap()).is_empty());
    }

    #[test]
    fn a_nodes_view_has_its_tasks_groups_and_the_members_their_rules_name() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let all = SecurityView::from_members(
            vec![
                group(
                    "sg-api",
                    vec![rule("tcp", (80, 80), Peer::Group("sg-web".into()))],
                    vec![],
                ),
                group("sg-web", vec![], vec![]),
                group(
                    "sg-batch",
                    vec![rule("tcp", (22, 22), Peer::Group("sg-ops".into()))],
                    vec![],
                ),
                group("sg-ops", vec![], vec![]),
            ],
            [
                ("sg-web".to_string(), ip("10.0.0.2")),
                ("sg-api".to_string(), ip("10.0.0.3")),
                ("sg-ops".to_string(), ip("10.0.1.9")),
            ]
            .iter(),
        );
        let api = "sg-api".to_string();
        let node = all.for_tasks([&api]);
        assert_eq!(
            node.groups.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
            ["sg-api"]
        );
        assert_eq!(
            node.members.keys().collect::<Vec<_>>(),
            ["sg-web"],
            "only the members its rules name"
        );
        // A member joining a group this node's rules do not name leaves its view as it was.
        let more = SecurityView::from_members(
            all.groups.clone(),
            [
                ("sg-web".to_string(), ip("10.0.0.2")),
                ("sg-api".to_string(), ip("10.0.0.3")),
                ("sg-ops".to_string(), ip("10.0.1.9")),
                ("sg-ops".to_string(), ip("10.0.1.10")),
            ]
            .iter(),
        );
        assert_eq!(more.for_tasks([&api]).digest(), node.digest());
        assert_ne!(more.digest(), all.digest());
        // The same task rules come out of the node's view as out of the whole one.
        let peer = Endpoint {
            address: ip("10.0.0.2"),
            groups: &[],
        };
        let groups = [api];
        assert!(node.admits(&groups, false, 80, peer) && all.admits(&groups, false, 80, peer));
    }

    /// A PENDING awsvpc task on `node` in `groups`, with its ENI's address when given.
    fn task(node: &str, groups: &[&str], address: Option<&str>) -> TaskRecord {
        let mut t = crate::tasks::test_record("");
        t.task.task_arn.clear();
        t.node = node.into();
        t.security_groups = groups.iter().map(|g| g.to_string()).collect();
        if let Some(a) = address {
            t.task.attachments = vec![gantry_types::model::Attachment {
                id: "a".into(),
                kind: "ElasticNetworkInterface".into(),
                status: "ATTACHED".into(),
                details: vec![gantry_types::taskdef::KeyValuePair {
                    name: Some("privateIPv4Address".into()),
                    value: Some(a.into()),
                }],
            }];
        }
        t
    }

    async fn put<T: Serialize>(store: &dyn Store, key: String, value: &T) {
        store.create(&key, &serde_json::to_vec(value).unwrap()).await.unwrap();
    }

    #[tokio::test]
    async fn a_node_follows_only_what_its_tasks_need() {
        let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(gantry_store::SqliteStore::in_memory().unwrap());
        let s = store.as_ref();
        let from_web = rule("tcp", (80, 80), Peer::Group("sg-web".into()));
        for g in [
            group("sg-api", vec![from_web], vec![]),
            group("sg-web", vec![], vec![]),
            group("sg-batch", vec![], vec![]),
        ] {
            put(s, format!("{GROUPS_PREFIX}123456789012/us-east-1/{}", g.id), &g).await;
        }
        put(s, format!("{TASKS_PREFIX}t1"), &task("n1", &["sg-api"], None)).await;
        put(
            s,
            format!("{TASKS_PREFIX}t2"),
            &task("n2", &["sg-web"], Some("10.0.0.2")),
        )
        .await;
        put(
            s,
            format!("{TASKS_PREFIX}t3"),
            &task("n2", &["sg-batch"], Some("10.0.0.4")),
        )
        .await;
        // n1's task has no address yet; its group's rules are in n1's view all the same.
        let source = SecuritySource::new(store.clone());
        let soon = || Instant::now() + std::time::Duration::from_secs(5);
        let n1 = source.follow(Some("n1"), "", soon()).await.unwrap();
        assert_eq!(n1.groups.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(), ["sg-api"]);
        assert_eq!(
            n1.members,
            BTreeMap::from([("sg-web".to_string(), vec!["10.0.0.2".parse().unwrap()])])
        );
        assert_eq!(source.follow(None, "", soon()).await.unwrap().groups.len(), 3);
        // Another batch task elsewhere does not wake n1: its poll ends at the deadline, unchanged.
        let later = |key: &'static str, t: TaskRecord| {
            let store = store.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                put(store.as_ref(), format!("{TASKS_PREFIX}{key}"), &t).await;
            })
        };
        later("t4", task("n2", &["sg-batch"], Some("10.0.0.6")));
        let deadline = Instant::now() + std::time::Duration::from_millis(400);
        let same = source.follow(Some("n1"), &n1.digest(), deadline).await.unwrap();
        assert_eq!(same.digest(), n1.digest());
        assert!(Instant::now() >= deadline);
        // A web task does, at once.
        later("t5", task("n2", &["sg-web"], Some("10.0.0.5")));
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let woke = source.follow(Some("n1"), &n1.digest(), deadline).await.unwrap();
        assert!(Instant::now() < deadline);
        assert_eq!(woke.members["sg-web"].len(), 2);
        // A second source over the same store sees the same.
        let other = SecuritySource::new(store.clone());
        assert_eq!(other.follow(Some("n1"), "", soon()).await.unwrap(), woke);
    }

    #[tokio::test]
    async fn only_writes_that_change_a_contribution_wake_followers() {
        let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(gantry_store::SqliteStore::in_memory().unwrap());
        let key = format!("{TASKS_PREFIX}t1");
        let mut t = task("n1", &["sg-web"], Some("10.0.0.2"));
        put(store.as_ref(), key.clone(), &t).await;
        let source = SecuritySource::new(store.clone());
        let soon = || Instant::now() + std::time::Duration::from_secs(5);
        let first = source.follow(None, "", soon()).await.unwrap();
        let wakes = || *source.inner.changed.borrow();
        let before = wakes();
        let rewrite = |t: &TaskRecord| {
            let (store, key, value) = (store.clone(), key.clone(), serde_json::to_vec(t).unwrap());
            async move {
                let rev = store.get(&key).await.unwrap().unwrap().mod_revision;
                store.update(&key, &value, rev).await.unwrap();
            }
        };
        // Its status changes: no follower needs to know.
        t.task.last_status = "RUNNING".into();
        rewrite(&t).await;
        // Its address changes: they do (and the status write was seen before it).
        t = task("n1", &["sg-web"], Some("10.0.0.3"));
        t.task.last_status = "RUNNING".into();
        rewrite(&t).await;
        let after = source.follow(None, &first.digest(), soon()).await.unwrap();
        assert_eq!(after.members["sg-web"], ["10.0.0.3".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(wakes(), before + 1, "one wake, for the address");
    }

    #[tokio::test]
    async fn a_watch_that_ends_is_followed_by_a_new_reading() {
        let store: std::sync::Arc<dyn Store> =
            // Its watches end at once, as one that fell behind a compaction does.
            std::sync::Arc::new(Instrumented::new().with_watches(Watches::End));
        let web = group("sg-web", vec![], vec![]);
        put(
            store.as_ref(),
            format!("{GROUPS_PREFIX}123456789012/us-east-1/sg-web"),
            &web,
        )
        .await;
        let source = SecuritySource::new(store.clone());
        let soon = || Instant::now() + std::time::Duration::from_secs(5);
        let before = source.follow(None, "", soon()).await.unwrap();
        assert!(before.members.is_empty());
        put(
            store.as_ref(),
            format!("{TASKS_PREFIX}t1"),
            &task("n1", &["sg-web"], Some("10.0.0.9")),
        )
        .await;
        // No watch delivers it: the source's next reading does, within its second's pause.
        let after = source.follow(None, &before.digest(), soon()).await.unwrap();
        assert_eq!(after.members["sg-web"], ["10.0.0.9".parse::<Ipv4Addr>().unwrap()]);
    }

    #[test]
    fn members_are_networked_tasks_not_stopped() {
        let mut t = task("n", &[], Some("10.1.0.7"));
        t.task.attachments.clear();
        assert!(task_membership(&t).is_empty(), "no address yet");
        t = task("n", &[], Some("10.1.0.7"));
        let ip: Ipv4Addr = "10.1.0.7".parse().unwrap();
        // A record from before groups: the default group.
        assert_eq!(task_membership(&t), [(default_group_id(&scope()), ip)]);
        t.security_groups = vec!["sg-a".into(), "sg-b".into()];
        let pairs = task_membership(&t);
        let view = SecurityView::from_members(vec![], pairs.iter());
        assert_eq!(view.members["sg-a"], [ip]);
        t.task.last_status = "STOPPED".into();
        assert!(task_membership(&t).is_empty());
    }
}
