//! The load balancer data plane: serves every ELBv2 listener in the store on its load
//! balancer's loopback address (HTTP for application load balancers, TCP for network ones),
//! checks target health, and keeps the load balancers' DNS names in /etc/hosts. It follows the
//! store with a watch: a change to any load balancer, listener, rule, target group, target or
//! health verdict is live within milliseconds.
//!
//! It runs inside `gantry dev` and `gantry server` (see ARCHITECTURE "The load balancer data
//! plane" for why there and not in the agents).

mod balance;
mod health;
pub mod hosts;
mod http;
mod matching;
mod proxy_protocol;
mod security;
mod settings;
mod tcp;
mod tls;
mod traffic;
pub mod upstream;
pub mod workers;

pub use matching::wildcard;

use balance::Pool;
use gantry_control::elb::{forwarded_groups, Elb, TargetState, View};
use gantry_store::Store;
use settings::Served;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub struct Options {
    /// The hosts file DNS names go into (/etc/hosts), or None to leave it alone.
    pub hosts_file: Option<PathBuf>,
    /// What this instance's hosts lines are tagged with (its load balancer network).
    pub tag: String,
    /// Where AWS/ApplicationELB metrics are published (None: Prometheus only), and how often.
    pub metrics: Option<gantry_control::metrics::Metrics>,
    pub metrics_every: Duration,
}

/// What every listener and the health checker share: the current view and the clients.
pub struct Shared {
    view: RwLock<Arc<Snapshot>>,
    balancer: balance::Balancer,
    elb: Elb,
    /// Keys sticky cookies (new each start: sessions are rebalanced after a restart).
    cookie_key: u64,
    /// Request counts of every load balancer and target group.
    traffic: Arc<traffic::Traffic>,
    /// The security groups as last read (targets' verdicts are in the snapshot's pools).
    security: RwLock<Arc<security::Guard>>,
    /// The health checker's verdicts, by group ARN then "id:port". The proxy routes by a
    /// verdict as soon as it is reached, before the store (and so DescribeTargetHealth and the
    /// deployment planner) hears of it: a target reported healthy is already taking requests,
    /// one reported unhealthy already is not. Held while a snapshot is built and installed, so
    /// a reload and a verdict never undo each other.
    verdicts: Mutex<Verdicts>,
}

type Verdicts = HashMap<String, HashMap<String, TargetState>>;

#[derive(Default)]
pub(crate) struct Snapshot {
    listeners: HashMap<SocketAddr, Arc<Served>>,
    groups: HashMap<String, Arc<Pool>>,
}

impl Snapshot {
    /// The snapshot of a view read from the store, with the checker's own `verdicts` over the
    /// store's (those on targets no longer registered are forgotten).
    fn from(
        mut view: View,
        verdicts: &mut Verdicts,
        traffic: &traffic::Traffic,
        balancer: &balance::Balancer,
        guard: &security::Guard,
    ) -> Snapshot {
        verdicts.retain(|arn, _| view.groups.contains_key(arn));
        for (arn, own) in verdicts.iter_mut() {
            let g = view.groups.get_mut(arn).expect("kept only groups in the view");
            let registered: BTreeSet<String> = g.targets.iter().map(|t| t.health_key()).collect();
            own.retain(|key, _| registered.contains(key));
            g.health.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let fronting = fronting(&view);
        Snapshot {
            listeners: view
                .listeners
                .into_iter()
                .map(|l| {
                    let counters = traffic.of(&l.load_balancer.load_balancer_arn);
                    (
                        SocketAddr::new(l.address.into(), l.listener.port as u16),
                        Arc::new(Served::new(l, counters)),
                    )
                })
                .collect(),
            groups: view
                .groups
                .into_iter()
                .map(|(k, g)| {
                    let counters = (traffic.of(&k), balancer.counters(&k));
                    let front = fronting.get(&k);
                    let shut_out = front.map(|f| shut_out(&g, f, guard)).unwrap_or_default();
                    let mut pool = Pool::new(g, counters, shut_out);
                    pool.front = front.cloned();
                    (k, Arc::new(pool))
                })
                .collect(),
        }
    }

    /// Each target group's load balancer (the one whose listener forwards to it) and health,
    /// for the metrics.
    fn health(&self) -> HashMap<String, traffic::GroupHealth> {
        let mut lb_of: HashMap<String, String> = HashMap::new();
        for l in self.listeners.values() {
            let l = &l.view;
            let mut groups = forwarded_groups(l.default_actions());
            for r in &l.rules {
                groups.extend(forwarded_groups(&r.actions));
            }
            for g in groups {
                lb_of
                    .entry(g)
                    .or_insert_with(|| l.load_balancer.load_balancer_arn.clone());
            }
        }
        self.groups
            .iter()
            .map(|(arn, p)| {
                let states = p.view.health.values();
                let (healthy, unhealthy) = states.fold((0, 0), |(h, u), s| match s.state.as_str() {
                    "healthy" => (h + 1, u),
                    "unhealthy" => (h, u + 1),
                    _ => (h, u),
                });
                let load_balancer = lb_of.get(arn).cloned();
                (
                    arn.clone(),
                    traffic::GroupHealth {
                        load_balancer,
                        healthy,
                        unhealthy,
                    },
                )
            })
            .collect()
    }
}

/// Each target group's load balancer (the first whose listener forwards to it: ELBv2 lets a
/// group serve one load balancer) as its targets' security groups see it.
fn fronting(view: &View) -> HashMap<String, security::Fronting> {
    let mut out = HashMap::new();
    for l in &view.listeners {
        let mut groups = forwarded_groups(l.default_actions());
        for r in &l.rules {
            groups.extend(forwarded_groups(&r.actions));
        }
        for g in groups {
            let Some(scope) = view.groups.get(&g).map(|v| &v.scope) else {
                continue;
            };
            out.entry(g)
                .or_insert_with(|| security::Fronting::of(&l.load_balancer, scope));
        }
    }
    out
}

/// The addresses of a group's targets (traffic and health check ports) that its load
/// balancer's connections may not reach, as the security groups say.
fn shut_out(
    g: &gantry_control::elb::GroupView,
    front: &security::Fronting,
    guard: &security::Guard,
) -> std::collections::HashSet<SocketAddr> {
    g.targets
        .iter()
        .flat_map(|t| {
            let traffic = g
                .target_ip(t)
                .zip(u16::try_from(t.port).ok())
                .map(|(ip, port)| SocketAddr::new(ip, port));
            [traffic, health::target_addr(g, t)]
        })
        .flatten()
        .filter(|addr| !guard.target_admitted(front, *addr))
        .collect()
}

impl Shared {
    fn current(&self) -> Arc<Snapshot> {
        self.view.read().expect("not poisoned").clone()
    }

    /// Whether a client may use a listener, as its load balancer's groups say.
    fn client_admitted(&self, served: &Served, client: SocketAddr) -> bool {
        let port = served.view.listener.port as u16;
        let guard = self.security.read().expect("not poisoned").clone();
        guard.client_admitted(&served.view.load_balancer, port, client.ip())
    }

    /// Serves a view read from the store from now on (with the checker's own verdicts).
    fn install(&self, view: View, guard: &security::Guard) {
        let mut verdicts = self.verdicts.lock().expect("not poisoned");
        let snapshot = Snapshot::from(view, &mut verdicts, &self.traffic, &self.balancer, guard);
        for pool in snapshot.groups.values() {
            pool.note_eligible();
        }
        *self.view.write().expect("not poisoned") = Arc::new(snapshot);
    }

    /// Routes by a verdict the checker has just reached (it is recorded in the store after).
    fn adopt_verdict(&self, group: &str, target: &str, state: &TargetState) {
        let mut verdicts = self.verdicts.lock().expect("not poisoned");
        let snap = self.current();
        let Some(pool) = snap.groups.get(group) else { return };
        verdicts
            .entry(group.to_string())
            .or_default()
            .insert(target.to_string(), state.clone());
        let pool = Arc::new(pool.with_verdict(target, state));
        pool.note_eligible();
        let mut groups = snap.groups.clone();
        groups.insert(group.to_string(), pool);
        let listeners = snap.listeners.clone();
        *self.view.write().expect("not poisoned") = Arc::new(Snapshot { listeners, groups });
    }

    fn listener(&self, local: SocketAddr) -> Option<Arc<Served>> {
        self.current().listeners.get(&local).cloned()
    }

    fn group(&self, arn: &str) -> Option<Arc<Pool>> {
        self.current().groups.get(arn).cloned()
    }

    /// Groups some listener or rule forwards to: the ones worth health checking.
    fn groups_in_use(&self) -> Vec<Arc<Pool>> {
        let snap = self.current();
        let used: BTreeSet<String> = snap
            .listeners
            .values()
            .flat_map(|l| {
                let l = &l.view;
                let mut g = forwarded_groups(l.default_actions());
                for r in &l.rules {
                    g.extend(forwarded_groups(&r.actions));
                }
                g
            })
            .collect();
        used.iter().filter_map(|arn| snap.groups.get(arn).cloned()).collect()
    }
}

/// A bound listener socket and how to stop serving it.
struct Bound {
    protocol: String,
    stop: tokio::sync::watch::Sender<bool>,
}

/// Runs the data plane until `stop`.
pub async fn run(elb: Elb, store: Arc<dyn Store>, opts: Options, mut stop: tokio::sync::watch::Receiver<bool>) {
    let source = Arc::new(gantry_control::ec2::SecuritySource::new(store.clone()));
    let Some(guard) = security::first(&source, &mut stop).await else {
        return;
    };
    let (guard_tx, mut guards) = tokio::sync::watch::channel(Arc::new(guard));
    tokio::spawn(security::keep(source, guard_tx, stop.clone()));
    let shared = Arc::new(Shared {
        view: RwLock::new(Arc::new(Snapshot::default())),
        balancer: balance::Balancer::default(),
        elb: elb.clone(),
        cookie_key: random_key(),
        traffic: Arc::new(traffic::Traffic::default()),
        security: RwLock::new(guards.borrow().clone()),
        verdicts: Mutex::new(HashMap::new()),
    });
    let reader = shared.clone();
    tokio::spawn(traffic::flush(
        shared.traffic.clone(),
        opts.metrics.clone(),
        move || reader.current().health(),
        opts.metrics_every,
        stop.clone(),
    ));
    let workers = match workers::Workers::start() {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "starting the load balancer workers");
            return;
        }
    };
    tokio::spawn(health::run(shared.clone(), stop.clone()));
    let mut bound: HashMap<SocketAddr, Bound> = HashMap::new();
    let mut hosts_written: Option<Vec<(std::net::Ipv4Addr, String)>> = None;
    // A change of the groups alone (every task start and stop changes their members) re-works
    // the verdicts over the configuration already read: it has not changed.
    let mut unchanged: Option<View> = None;
    loop {
        let read = match unchanged.take() {
            Some(v) => Ok(v),
            None => elb.data_plane_view().await,
        };
        let view = match read {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "reading load balancer configuration");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.changed() => break,
                }
            }
        };
        let revision = view.revision;
        let names = dns_entries(&view);
        let guard = guards.borrow_and_update().clone();
        *shared.security.write().expect("not poisoned") = guard.clone();
        shared.install(view.clone(), &guard);
        reconcile(&shared, &workers, &mut bound);
        if let Some(path) = &opts.hosts_file {
            if hosts_written.as_ref() != Some(&names) {
                match hosts::sync(path, &opts.tag, &names) {
                    Ok(()) => hosts_written = Some(names),
                    Err(e) => tracing::warn!(error = %e, path = %path.display(), "writing load balancer names"),
                }
            }
        }
        match wait_for_change(store.as_ref(), revision, &mut guards, &mut stop).await {
            Change::Stop => break,
            Change::Configuration => {}
            Change::Groups => unchanged = Some(view),
        }
    }
    for (_, b) in bound.drain() {
        let _ = b.stop.send(true);
    }
    if let Some(path) = &opts.hosts_file {
        if let Err(e) = hosts::sync(path, &opts.tag, &[]) {
            tracing::warn!(error = %e, "removing load balancer names");
        }
    }
}

/// The next connection on a listener, or None once `stop` says so. Accept errors (out of
/// descriptors, say) back off briefly instead of spinning.
async fn next_connection(
    listener: &tokio::net::TcpListener,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return None,
        }
    }
}

fn random_key() -> u64 {
    let mut b = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    u64::from_ne_bytes(b)
}

/// Every load balancer's DNS name and address, once each.
fn dns_entries(view: &View) -> Vec<(std::net::Ipv4Addr, String)> {
    let mut names: Vec<(std::net::Ipv4Addr, String)> = view
        .listeners
        .iter()
        .map(|l| (l.address, l.load_balancer.dns_name.clone()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Binds listeners that are new (one socket per worker), stops those that are gone (their
/// open connections finish).
fn reconcile(shared: &Arc<Shared>, workers: &workers::Workers, bound: &mut HashMap<SocketAddr, Bound>) {
    let snap = shared.current();
    bound.retain(|addr, b| {
        let keep = snap
            .listeners
            .get(addr)
            .is_some_and(|l| l.view.listener.protocol == b.protocol);
        if !keep {
            let _ = b.stop.send(true);
        }
        keep
    });
    for (addr, served) in &snap.listeners {
        let l = &served.view;
        if bound.contains_key(addr) {
            continue;
        }
        let sockets: std::io::Result<Vec<std::net::TcpListener>> = (0..workers.count())
            .map(|_| workers::reuseport_listener(*addr))
            .collect();
        let sockets = match sockets {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(%addr, error = %e, load_balancer = %l.load_balancer.load_balancer_name, "cannot listen");
                continue;
            }
        };
        let (tx, rx) = tokio::sync::watch::channel(false);
        let tcp = matches!(l.listener.protocol.as_str(), "TCP" | "TLS");
        for (i, socket) in sockets.into_iter().enumerate() {
            let (shared, rx) = (shared.clone(), rx.clone());
            workers.run(
                i,
                Box::new(move || {
                    let socket = match tokio::net::TcpListener::from_std(socket) {
                        Ok(s) => s,
                        Err(e) => return tracing::error!(error = %e, "registering a listener"),
                    };
                    if tcp {
                        tokio::spawn(tcp::serve(socket, shared, rx));
                    } else {
                        tokio::spawn(http::serve(socket, shared, rx));
                    }
                }),
            );
        }
        bound.insert(
            *addr,
            Bound {
                protocol: l.listener.protocol.clone(),
                stop: tx,
            },
        );
    }
}

/// What `wait_for_change` saw.
enum Change {
    Stop,
    /// The configuration changed (or a safety re-read is due).
    Configuration,
    /// Only the security groups changed.
    Groups,
}

/// Waits until the configuration changes after `revision` (a short pause gathers a burst of
/// changes into one reload), the security groups change, 30 s pass (a safety re-read), or
/// `stop`.
async fn wait_for_change(
    store: &dyn Store,
    revision: i64,
    guards: &mut tokio::sync::watch::Receiver<Arc<security::Guard>>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Change {
    let watches = async {
        let elb = store.watch("/elbv2/", revision).await?;
        let certs = store.watch(gantry_control::acm::PREFIX, revision).await?;
        Ok::<_, gantry_store::StoreError>((elb, certs))
    };
    let (mut watch, mut certs) = match watches.await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "watching load balancer configuration");
            return tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => Change::Configuration,
                _ = stop.changed() => Change::Stop,
            };
        }
    };
    tokio::select! {
        _ = async { tokio::select! { _ = watch.events.recv() => {}, _ = certs.events.recv() => {} } } => {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Change::Configuration
        }
        r = guards.changed() => match r {
            Ok(()) => Change::Groups,
            // The groups' follower ends only at stop.
            Err(_) => Change::Stop,
        },
        _ = tokio::time::sleep(Duration::from_secs(30)) => Change::Configuration,
        _ = stop.changed() => Change::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_control::elb::GroupView;

    fn group(targets: &[&str]) -> GroupView {
        let group = serde_json::from_value(serde_json::json!({
            "TargetGroupArn": "tg", "TargetGroupName": "tg", "HealthCheckProtocol": "HTTP",
            "HealthCheckPort": "traffic-port", "HealthCheckEnabled": true,
            "HealthCheckIntervalSeconds": 5, "HealthCheckTimeoutSeconds": 2,
            "HealthyThresholdCount": 2, "UnhealthyThresholdCount": 2,
            "TargetType": "ip", "IpAddressType": "ipv4"}))
        .expect("a target group");
        GroupView {
            scope: gantry_types::arn::Scope {
                account: "1".into(),
                region: "r".into(),
            },
            group,
            attributes: Default::default(),
            targets: targets
                .iter()
                .map(|ip| gantry_types::elbv2::RegisteredTarget {
                    id: ip.to_string(),
                    port: 80,
                    availability_zone: None,
                    draining_until: None,
                })
                .collect(),
            health: Default::default(),
            instance_addresses: Default::default(),
        }
    }

    fn verdict(s: &str) -> TargetState {
        TargetState {
            state: s.into(),
            reason: None,
            description: None,
        }
    }

    fn shared() -> Shared {
        Shared {
            view: RwLock::new(Arc::new(Snapshot::default())),
            balancer: balance::Balancer::default(),
            elb: Elb::new(
                Arc::new(gantry_store::SqliteStore::in_memory().unwrap()),
                Arc::new(gantry_control::SystemClock),
            ),
            cookie_key: 1,
            traffic: Arc::new(traffic::Traffic::default()),
            security: RwLock::new(Arc::new(security::Guard::default())),
            verdicts: Mutex::new(HashMap::new()),
        }
    }

    fn reload(shared: &Shared, g: GroupView) {
        let view = View {
            listeners: vec![],
            groups: [("tg".to_string(), g)].into(),
            revision: 1,
        };
        shared.install(view, &Default::default());
    }

    fn routed(shared: &Shared) -> Vec<String> {
        let addrs = shared
            .group("tg")
            .unwrap()
            .addrs
            .iter()
            .map(|a| a.ip().to_string())
            .collect();
        addrs
    }

    #[test]
    fn the_proxy_routes_by_a_verdict_before_the_store_has_it_and_a_reload_keeps_it() {
        let shared = shared();
        let mut g = group(&["10.0.0.1", "10.0.0.2"]);
        g.health.insert("10.0.0.1:80".into(), verdict("healthy"));
        reload(&shared, g.clone());
        assert_eq!(routed(&shared), ["10.0.0.1"], "healthy targets only");
        shared.adopt_verdict("tg", "10.0.0.2:80", &verdict("healthy"));
        assert_eq!(routed(&shared), ["10.0.0.1", "10.0.0.2"], "at once, with no reload");
        // A reload of a view read before the verdict reached the store does not undo it.
        reload(&shared, g.clone());
        assert_eq!(routed(&shared), ["10.0.0.1", "10.0.0.2"]);
        shared.adopt_verdict("tg", "10.0.0.1:80", &verdict("unhealthy"));
        assert_eq!(routed(&shared), ["10.0.0.2"]);
        // Deregistered, then registered again: it starts from the store's word, not ours.
        shared.adopt_verdict("tg", "10.0.0.1:80", &verdict("healthy"));
        reload(&shared, group(&["10.0.0.1"]));
        g.health.insert("10.0.0.2:80".into(), verdict("unhealthy"));
        reload(&shared, g);
        assert_eq!(routed(&shared), ["10.0.0.1"]);
    }
}
