//! Choosing where a request goes: a target group by the forward action's weights, then a
//! target of the group: healthy ones only, or every registered one when none is healthy
//! (ALB fails open), by round robin or least outstanding requests.

use gantry_control::elb::GroupView;
use gantry_types::elbv2::{Action, RegisteredTarget};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Per-group counters that outlive configuration reloads.
#[derive(Default)]
pub struct Balancer {
    groups: Mutex<HashMap<String, Arc<GroupCounters>>>,
    rotation: AtomicUsize,
}

#[derive(Default)]
struct GroupCounters {
    next: AtomicUsize,
    outstanding: Mutex<HashMap<SocketAddr, usize>>,
}

/// A chosen target; dropping it ends its outstanding request (counted only for groups that
/// balance by outstanding requests).
pub struct Pick {
    pub addr: SocketAddr,
    counters: Option<Arc<GroupCounters>>,
}

impl Drop for Pick {
    fn drop(&mut self) {
        let Some(c) = &self.counters else { return };
        let mut o = c.outstanding.lock().expect("not poisoned");
        if let Some(n) = o.get_mut(&self.addr) {
            *n = n.saturating_sub(1);
        }
    }
}

/// A group as the balancer uses it, worked out once per configuration reload rather than per
/// request: the addresses that may take new requests and how to choose among them.
pub struct Pool {
    pub view: GroupView,
    pub addrs: Vec<SocketAddr>,
    pub least_outstanding: bool,
}

impl Pool {
    pub fn new(view: GroupView) -> Pool {
        let addrs = eligible(&view)
            .iter()
            .filter_map(|t| Some(SocketAddr::new(t.id.parse().ok()?, u16::try_from(t.port).ok()?)))
            .collect();
        let least_outstanding = view.attribute("load_balancing.algorithm.type") == "least_outstanding_requests";
        Pool {
            view,
            addrs,
            least_outstanding,
        }
    }
}

/// Targets that may take new requests.
pub fn eligible(g: &GroupView) -> Vec<&RegisteredTarget> {
    let live: Vec<&RegisteredTarget> = g.targets.iter().filter(|t| t.draining_until.is_none()).collect();
    if !g.group.health_check_enabled {
        return live;
    }
    let healthy: Vec<&RegisteredTarget> = live
        .iter()
        .copied()
        .filter(|t| {
            g.health
                .get(&format!("{}:{}", t.id, t.port))
                .is_some_and(|s| s.state == "healthy")
        })
        .collect();
    if healthy.is_empty() {
        live
    } else {
        healthy
    }
}

impl Balancer {
    /// The target group a forward action sends this request to (weights as shares of a
    /// rotating counter, so 90/10 is exactly 9 in 10).
    pub fn choose_group<'a>(&self, action: &'a Action) -> Option<&'a str> {
        let groups = &action.forward_config.as_ref()?.target_groups;
        let total: i64 = groups.iter().map(|g| g.weight.unwrap_or(1)).sum();
        if total <= 0 {
            return None;
        }
        let mut slot = (self.rotation.fetch_add(1, Ordering::Relaxed) as i64) % total;
        for g in groups {
            let w = g.weight.unwrap_or(1);
            if slot < w {
                return Some(&g.target_group_arn);
            }
            slot -= w;
        }
        None
    }

    /// A target of the group for one request, or None when it has no registered targets.
    pub fn choose_target(&self, g: &Pool) -> Option<Pick> {
        let addrs = &g.addrs;
        if addrs.is_empty() {
            return None;
        }
        let counters = self.counters(&g.view.group.target_group_arn);
        let start = counters.next.fetch_add(1, Ordering::Relaxed);
        if !g.least_outstanding {
            return Some(Pick {
                addr: addrs[start % addrs.len()],
                counters: None,
            });
        }
        let mut outstanding = counters.outstanding.lock().expect("not poisoned");
        // Fewest in flight; ties broken by rotation so equal targets share the load.
        let addr = (0..addrs.len())
            .map(|i| addrs[(start + i) % addrs.len()])
            .min_by_key(|a| outstanding.get(a).copied().unwrap_or(0))
            .expect("not empty");
        *outstanding.entry(addr).or_default() += 1;
        drop(outstanding);
        Some(Pick {
            addr,
            counters: Some(counters),
        })
    }

    fn counters(&self, arn: &str) -> Arc<GroupCounters> {
        let mut groups = self.groups.lock().expect("not poisoned");
        if let Some(c) = groups.get(arn) {
            return c.clone();
        }
        groups.entry(arn.to_string()).or_default().clone()
    }
}
