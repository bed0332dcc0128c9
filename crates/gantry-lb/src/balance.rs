//! Choosing where a request goes: a target group by the forward action's weights, then a
//! target of the group: healthy ones only, or every registered one when none is healthy
//! (ALB fails open), by round robin or least outstanding requests. With slow start, a target
//! that has just become eligible gets a share growing linearly over the duration.

use gantry_control::elb::{GroupView, TargetState};
use gantry_types::elbv2::{Action, RegisteredTarget};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Per-group counters that outlive configuration reloads.
#[derive(Default)]
pub struct Balancer {
    groups: Mutex<HashMap<String, Arc<GroupCounters>>>,
    rotation: AtomicUsize,
}

/// A group's turn counter, requests in flight and slow start entries.
#[derive(Default)]
pub struct GroupCounters {
    next: AtomicUsize,
    outstanding: Mutex<HashMap<SocketAddr, usize>>,
    /// When each eligible target became eligible (slow start counts from there).
    entered: Mutex<HashMap<SocketAddr, Instant>>,
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
    /// The target group's request counts.
    pub counters: std::sync::Arc<crate::traffic::Counters>,
    /// Its balancing state (kept by the `Balancer` across reloads; held here so a request
    /// needs no lookup).
    balancing: Arc<GroupCounters>,
    pub addrs: Vec<SocketAddr>,
    pub least_outstanding: bool,
    /// How a client keeps its target.
    pub sticky: Sticky,
    /// `slow_start.duration_seconds`, when on.
    pub slow_start: Option<Duration>,
    /// The load balancer it serves, as security groups see it (None: no listener uses it).
    pub front: Option<crate::security::Fronting>,
    /// Target addresses (traffic and health check ports) the security groups shut the load
    /// balancer out of.
    pub shut_out: std::collections::HashSet<SocketAddr>,
    /// Whether each connection to a target starts with a PROXY protocol v2 header (network
    /// load balancers' `proxy_protocol_v2.enabled`).
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sticky {
    No,
    /// ALB's AWSALB cookie, valid this long.
    Cookie(std::time::Duration),
    /// NLB's: the same client address goes to the same target.
    SourceIp,
}

impl Pool {
    pub fn new(
        view: GroupView,
        (counters, balancing): (Arc<crate::traffic::Counters>, Arc<GroupCounters>),
        shut_out: std::collections::HashSet<SocketAddr>,
    ) -> Pool {
        let addrs = eligible(&view)
            .iter()
            .filter_map(|t| Some(SocketAddr::new(view.target_ip(t)?, u16::try_from(t.port).ok()?)))
            .collect();
        let least_outstanding = view.attribute("load_balancing.algorithm.type") == "least_outstanding_requests";
        let sticky = match (
            view.attribute("stickiness.enabled").as_str(),
            view.attribute("stickiness.type").as_str(),
        ) {
            ("true", "lb_cookie") => {
                let secs = view
                    .attribute("stickiness.lb_cookie.duration_seconds")
                    .parse()
                    .unwrap_or(86400);
                Sticky::Cookie(std::time::Duration::from_secs(secs))
            }
            ("true", "source_ip") => Sticky::SourceIp,
            _ => Sticky::No,
        };
        let proxy_protocol = view.attribute("proxy_protocol_v2.enabled") == "true";
        let slow_start = match view.attribute("slow_start.duration_seconds").parse::<u64>() {
            Ok(0) | Err(_) => None,
            Ok(s) => Some(Duration::from_secs(s)),
        };
        Pool {
            view,
            counters,
            balancing,
            addrs,
            least_outstanding,
            sticky,
            slow_start,
            front: None,
            shut_out,
            proxy_protocol,
        }
    }

    /// The pool again with one target's verdict changed.
    pub fn with_verdict(&self, target: &str, state: &TargetState) -> Pool {
        let mut view = self.view.clone();
        view.health.insert(target.to_string(), state.clone());
        let counters = (self.counters.clone(), self.balancing.clone());
        let mut pool = Pool::new(view, counters, self.shut_out.clone());
        pool.front = self.front.clone();
        pool
    }

    /// Notes which targets of a group may take requests now, after a reload: ones new to the
    /// set start their slow start now; ones that left it start again when they return. As in
    /// ALB, targets joining a group that had none to take requests do not slow start (there
    /// is nothing to shift load from).
    pub fn note_eligible(&self) {
        let Some(duration) = self.slow_start else { return };
        let mut entered = self.balancing.entered.lock().expect("not poisoned");
        entered.retain(|a, _| self.addrs.contains(a));
        let now = Instant::now();
        let start = match entered.is_empty() {
            true => now.checked_sub(duration).unwrap_or(now),
            false => now,
        };
        for a in &self.addrs {
            entered.entry(*a).or_insert(start);
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
        .filter(|t| g.health.get(&t.health_key()).is_some_and(|s| s.state == "healthy"))
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

    /// A target of the group for one request, or None when it has no registered targets. A
    /// `preferred` target (the client's sticky one) is taken while it may take requests.
    pub fn choose_target(&self, g: &Pool, preferred: Option<SocketAddr>) -> Option<Pick> {
        let addrs = &g.addrs;
        if addrs.is_empty() {
            return None;
        }
        if let Some(p) = preferred.filter(|p| addrs.contains(p)) {
            return Some(Pick {
                addr: p,
                counters: None,
            });
        }
        let counters = &g.balancing;
        let start = counters.next.fetch_add(1, Ordering::Relaxed);
        if !g.least_outstanding {
            let slot = match g.slow_start.and_then(|d| ramp_weights(counters, addrs, d)) {
                Some(weights) => weighted_index(&weights, unit(start)),
                None => start % addrs.len(),
            };
            return Some(Pick {
                addr: addrs[slot],
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
            counters: Some(counters.clone()),
        })
    }

    /// A group's balancing state: made on first use, the same across reloads.
    pub fn counters(&self, arn: &str) -> Arc<GroupCounters> {
        let mut groups = self.groups.lock().expect("not poisoned");
        if let Some(c) = groups.get(arn) {
            return c.clone();
        }
        groups.entry(arn.to_string()).or_default().clone()
    }
}

/// A slow-starting target's share relative to a settled one: growing linearly from a small
/// start to 1 at the end of the duration.
pub fn ramp(elapsed: Duration, duration: Duration) -> f64 {
    (elapsed.as_secs_f64() / duration.as_secs_f64().max(1e-9)).clamp(0.05, 1.0)
}

/// Each target's weight, or None when no target is still in slow start (plain round robin).
fn ramp_weights(c: &GroupCounters, addrs: &[SocketAddr], duration: Duration) -> Option<Vec<f64>> {
    let entered = c.entered.lock().expect("not poisoned");
    let now = Instant::now();
    let weights: Vec<f64> = addrs
        .iter()
        .map(|a| entered.get(a).map_or(1.0, |t| ramp(now - *t, duration)))
        .collect();
    weights.iter().any(|w| *w < 1.0).then_some(weights)
}

/// The index `r` (in [0, 1)) falls on when the weights are laid end to end.
pub fn weighted_index(weights: &[f64], r: f64) -> usize {
    let total: f64 = weights.iter().sum();
    let mut at = r * total;
    for (i, w) in weights.iter().enumerate() {
        if at < *w {
            return i;
        }
        at -= w;
    }
    weights.len() - 1
}

/// A counter spread into [0, 1) (splitmix64): evenly distributed picks without a shared RNG.
fn unit(n: usize) -> f64 {
    let mut z = (n as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The opaque value of a sticky cookie for a target: a keyed hash, so clients learn nothing of
/// the target's address and cannot forge a cookie for another target.
pub fn cookie_token(key: u64, group: &str, addr: SocketAddr) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&(key, group, addr), &mut h);
    format!("{:016x}", std::hash::Hasher::finish(&h))
}

/// The value of an AWSALBTG cookie for a target group (keyed like `cookie_token`).
pub fn group_token(key: u64, group: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&(key, "group", group), &mut h);
    format!("{:016x}", std::hash::Hasher::finish(&h))
}

/// The target a sticky cookie names, if it is still in the pool.
pub fn cookie_target(key: u64, g: &Pool, token: &str) -> Option<SocketAddr> {
    let group = &g.view.group.target_group_arn;
    g.addrs.iter().copied().find(|a| cookie_token(key, group, *a) == token)
}

/// NLB source-IP stickiness: a client address always hashes to the same target while the
/// pool is unchanged.
pub fn source_ip_target(g: &Pool, client: std::net::IpAddr) -> Option<SocketAddr> {
    if g.addrs.is_empty() {
        return None;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&client, &mut h);
    Some(g.addrs[(std::hash::Hasher::finish(&h) % g.addrs.len() as u64) as usize])
}

#[cfg(test)]
mod tests {
    use super::{ramp, unit, weighted_index};
    use std::time::Duration;

    #[test]
    fn slow_start_ramps_linearly_and_picks_follow_the_weights() {
        let d = Duration::from_secs(100);
        assert_eq!(ramp(Duration::ZERO, d), 0.05);
        assert!((ramp(Duration::from_secs(50), d) - 0.5).abs() < 1e-9);
        assert_eq!(ramp(Duration::from_secs(500), d), 1.0);
        // One settled target and one a quarter of the way in: about 1 request in 5 for it.
        let weights = [1.0, 0.25];
        let new = (0..10_000).filter(|n| weighted_index(&weights, unit(*n)) == 1).count();
        assert!((1_800..2_200).contains(&new), "{new}");
        assert_eq!(weighted_index(&[1.0, 1.0], 0.0), 0);
        assert_eq!(weighted_index(&[1.0, 1.0], 0.99), 1);
    }
}
