//! Load balancers' security groups, applied by the data plane (ARCHITECTURE "The load
//! balancer data plane"). A client's connection is served only when its load balancer's groups
//! let it in on the listener's port. A target is reached (checked or sent requests) only when
//! the load balancer's groups let the connection out and, for a target in groups (an awsvpc
//! task), those let it in: from one of the load balancer's groups, or from a block holding the
//! address the connection comes from.
//!
//! Why here and not in the tasks' nftables: the proxy connects from the node's own address,
//! which a task's namespace always lets in (the node checks and serves it); only the proxy
//! knows which load balancer a connection is for.

use gantry_control::ec2::{default_group_id, Endpoint, SecuritySource, SecurityView};
use gantry_types::arn::Scope;
use gantry_types::elbv2::LoadBalancer;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A load balancer as its targets' groups see it: its own groups, or its VPC's default group
/// when it has none (where AWS puts an application load balancer created without any).
#[derive(Debug, Clone)]
pub struct Fronting {
    pub groups: Vec<String>,
}

impl Fronting {
    pub fn of(lb: &LoadBalancer, scope: &Scope) -> Fronting {
        let groups = match lb.security_groups.is_empty() {
            true => vec![default_group_id(scope)],
            false => lb.security_groups.clone(),
        };
        Fronting { groups }
    }
}

/// The groups as last read, and the verdicts worked out from them.
#[derive(Default)]
pub struct Guard {
    view: SecurityView,
    /// Target verdicts by (load balancer's groups, target), until the view changes (a
    /// reload asks about each target of each group).
    verdicts: Mutex<HashMap<(Vec<String>, SocketAddr), bool>>,
}

impl Guard {
    pub fn new(view: SecurityView) -> Guard {
        Guard {
            view,
            verdicts: Mutex::default(),
        }
    }

    /// Whether a client may connect to a listener on `port`: always, for a load balancer
    /// without groups (nothing on the host could reach one otherwise; see ARCHITECTURE).
    pub fn client_admitted(&self, lb: &LoadBalancer, port: u16, client: IpAddr) -> bool {
        if lb.security_groups.is_empty() {
            return true;
        }
        let IpAddr::V4(address) = client else {
            return false;
        };
        let groups = self.view.groups_of(address);
        let peer = Endpoint {
            address,
            groups: &groups,
        };
        self.view.admits(&lb.security_groups, false, port, peer)
    }

    /// Whether the load balancer may open a connection to `target`.
    pub fn target_admitted(&self, front: &Fronting, target: SocketAddr) -> bool {
        let key = (front.groups.clone(), target);
        if let Some(v) = self.verdicts.lock().expect("lock").get(&key) {
            return *v;
        }
        let verdict = self.decide(front, target);
        self.verdicts.lock().expect("lock").insert(key, verdict);
        verdict
    }

    fn decide(&self, front: &Fronting, target: SocketAddr) -> bool {
        let IpAddr::V4(address) = target.ip() else {
            return false;
        };
        let target_groups = self.view.groups_of(address);
        let to = Endpoint {
            address,
            groups: &target_groups,
        };
        if !self.view.admits(&front.groups, true, target.port(), to) {
            return false;
        }
        if target_groups.is_empty() {
            return true;
        }
        let Some(source) = source_towards(address) else {
            return false;
        };
        let from = Endpoint {
            address: source,
            groups: &front.groups,
        };
        self.view.admits(&target_groups, false, target.port(), from)
    }
}

/// The address this host's connections to `ip` come from, as routing picks it (connecting a
/// UDP socket sends nothing).
fn source_towards(ip: Ipv4Addr) -> Option<Ipv4Addr> {
    let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    s.connect((ip, 9)).ok()?;
    match s.local_addr().ok()?.ip() {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

/// The first view (retried until read, or None on `stop`).
pub async fn first(source: &SecuritySource, stop: &mut tokio::sync::watch::Receiver<bool>) -> Option<Guard> {
    loop {
        match source
            .follow(None, "", tokio::time::Instant::now() + Duration::from_secs(5))
            .await
        {
            Ok(v) => return Some(Guard::new(v)),
            Err(e) => tracing::warn!(error = %e, "reading security groups"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return None,
        }
    }
}

/// Keeps `guard` on the current view until `stop`: a change lands within a watch's delay.
pub async fn keep(
    source: Arc<SecuritySource>,
    guard: tokio::sync::watch::Sender<Arc<Guard>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let known = guard.borrow().view.digest();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        tokio::select! {
            r = source.follow(None, &known, deadline) => match r {
                Ok(v) if v.digest() != known => {
                    let _ = guard.send(Arc::new(Guard::new(v)));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "following security groups");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_control::ec2::SecurityGroup;
    use serde_json::{json, Value};

    fn scope() -> Scope {
        Scope {
            account: "123456789012".into(),
            region: "us-east-1".into(),
        }
    }

    /// A group letting TCP in on each (port, peer) and everything out; peers as stored:
    /// {"cidr": BLOCK} or {"group": ID}.
    fn group(id: &str, ingress: &[(i64, Value)]) -> SecurityGroup {
        let rule = |proto: &str, port: i64, peer: &Value| json!({"id": "", "protocol": proto, "from_port": port, "to_port": port, "peer": peer});
        let ingress: Vec<Value> = ingress.iter().map(|(port, peer)| rule("tcp", *port, peer)).collect();
        serde_json::from_value(json!({
            "id": id, "name": id, "description": "", "vpc_id": "vpc-1", "owner": "123456789012",
            "ingress": ingress, "egress": [rule("-1", -1, &json!({"cidr": "0.0.0.0/0"}))],
        }))
        .unwrap()
    }

    fn lb(groups: &[&str]) -> LoadBalancer {
        serde_json::from_value(json!({
            "LoadBalancerArn": "arn", "DNSName": "lb", "CanonicalHostedZoneId": "Z", "CreatedTime": 0.0,
            "LoadBalancerName": "lb", "Scheme": "internal", "State": {"Code": "active"}, "Type": "application",
            "AvailabilityZones": [], "SecurityGroups": groups, "IpAddressType": "ipv4",
        }))
        .unwrap()
    }

    #[test]
    fn clients_and_targets_pass_as_the_groups_say() {
        let default = default_group_id(&scope());
        let (app, open): (Ipv4Addr, Ipv4Addr) = ("127.0.0.5".parse().unwrap(), "127.0.0.6".parse().unwrap());
        let view = SecurityView::from_members(
            vec![
                group("sg-lb", &[(80, json!({"cidr": "127.0.0.1/32"}))]),
                group("sg-app", &[(8080, json!({"group": "sg-lb"}))]),
                // Routing picks 127.0.0.1 as the source towards 127/8.
                group("sg-open", &[(8080, json!({"cidr": "127.0.0.0/8"}))]),
                group(&default, &[(8080, json!({ "group": default }))]),
            ],
            [("sg-app".to_string(), app), ("sg-open".to_string(), open)].iter(),
        );
        let guard = Guard::new(view);
        let with_groups = lb(&["sg-lb"]);
        let client = |ip: &str| ip.parse::<IpAddr>().unwrap();
        assert!(guard.client_admitted(&with_groups, 80, client("127.0.0.1")));
        assert!(!guard.client_admitted(&with_groups, 81, client("127.0.0.1")));
        assert!(!guard.client_admitted(&with_groups, 80, client("127.0.0.2")));
        assert!(
            guard.client_admitted(&lb(&[]), 80, client("127.0.0.2")),
            "no groups: anyone"
        );

        let front = Fronting::of(&with_groups, &scope());
        let target = |ip: Ipv4Addr, port| SocketAddr::new(ip.into(), port);
        assert!(
            guard.target_admitted(&front, target(app, 8080)),
            "by the load balancer's group"
        );
        assert!(!guard.target_admitted(&front, target(app, 8081)), "not on that port");
        assert!(
            guard.target_admitted(&front, target(open, 8080)),
            "by the block its address is in"
        );
        // Without groups it is in the default group, which app does not let in.
        let bare = Fronting::of(&lb(&[]), &scope());
        assert_eq!(bare.groups, [default]);
        assert!(!guard.target_admitted(&bare, target(app, 8080)));
        // An address no task has is in no group: only the load balancer's egress applies.
        assert!(guard.target_admitted(&bare, target("127.0.0.9".parse().unwrap(), 1)));
        // Verdicts are remembered per load balancer's groups.
        assert!(guard.target_admitted(&front, target(app, 8080)));
        assert!(!guard.target_admitted(&bare, target(app, 8080)));
    }
}
