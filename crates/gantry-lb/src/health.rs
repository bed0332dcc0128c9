//! Target health checks as the group configures them (protocol, port, path, interval,
//! timeout, thresholds, matcher), with ELBv2's states and reason codes. A new target becomes
//! healthy after one passed check; a healthy one unhealthy after UnhealthyThresholdCount
//! failures in a row; an unhealthy one healthy again after HealthyThresholdCount passes.
//! Verdicts are written to the store only when they change.

use crate::Shared;
use gantry_control::elb::{GroupView, TargetState};
use gantry_types::elbv2::RegisteredTarget;
use http_body_util::{BodyExt, Empty};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// One check's outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Pass,
    /// The target answered with a code the matcher does not accept.
    Code(u16),
    Timeout,
    Failed,
}

/// What the checker remembers of one target.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tracker {
    pub state: Option<TargetState>,
    passes: u32,
    failures: u32,
}

fn state(s: &str, reason: Option<&str>, description: Option<String>) -> TargetState {
    TargetState {
        state: s.into(),
        reason: reason.map(Into::into),
        description,
    }
}

impl Tracker {
    /// Folds one outcome in; returns the new verdict when it changed.
    pub fn observe(&mut self, o: &Outcome, healthy_after: u32, unhealthy_after: u32) -> Option<TargetState> {
        let current = self.state.as_ref().map(|s| s.state.clone());
        let next = if *o == Outcome::Pass {
            self.passes += 1;
            self.failures = 0;
            let needed = if current.as_deref() == Some("unhealthy") {
                healthy_after
            } else {
                1
            };
            (self.passes >= needed).then(|| state("healthy", None, None))
        } else {
            self.failures += 1;
            self.passes = 0;
            let (reason, description) = match o {
                Outcome::Code(c) => (
                    "Target.ResponseCodeMismatch",
                    format!("Health checks failed with these codes: [{c}]"),
                ),
                Outcome::Timeout => ("Target.Timeout", "Request timed out".to_string()),
                _ => ("Target.FailedHealthChecks", "Health checks failed".to_string()),
            };
            (self.failures >= unhealthy_after).then(|| state("unhealthy", Some(reason), Some(description)))
        };
        match next {
            Some(n) if self.state.as_ref() != Some(&n) => {
                self.state = Some(n.clone());
                Some(n)
            }
            _ => None,
        }
    }
}

fn matcher_accepts(spec: &str, code: u16) -> bool {
    spec.split(',').any(|part| {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        matches!((lo.trim().parse::<u16>(), hi.trim().parse::<u16>()), (Ok(l), Ok(h)) if l <= code && code <= h)
    })
}

/// One check of one target.
async fn check(g: &GroupView, addr: SocketAddr) -> Outcome {
    let timeout = Duration::from_secs(g.group.health_check_timeout_seconds as u64);
    // A group whose targets expect the PROXY protocol header gets it on checks too (LOCAL).
    let proxy_protocol = g.attribute("proxy_protocol_v2.enabled") == "true";
    let connect = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        if proxy_protocol {
            stream.write_all(&crate::proxy_protocol::local()).await?;
        }
        Ok::<_, std::io::Error>(stream)
    };
    if g.group.health_check_protocol == "TCP" {
        return match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(_)) => Outcome::Pass,
            Ok(Err(_)) => Outcome::Failed,
            Err(_) => Outcome::Timeout,
        };
    }
    let path = g.group.health_check_path.clone().unwrap_or_else(|| "/".into());
    let matcher = g
        .group
        .matcher
        .as_ref()
        .and_then(|m| m.http_code.clone())
        .unwrap_or_else(|| "200".into());
    let attempt = async {
        let stream = connect.await.ok()?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
        // The connection lives no longer than the check.
        tokio::spawn(tokio::time::timeout(timeout, conn));
        let req = hyper::Request::get(path)
            .header("host", addr.to_string())
            .header("user-agent", "ELB-HealthChecker/2.0")
            .body(Empty::<bytes::Bytes>::new())
            .ok()?;
        let resp = send.send_request(req).await.ok()?;
        let code = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        Some(code)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Some(code)) if matcher_accepts(&matcher, code) => Outcome::Pass,
        Ok(Some(code)) => Outcome::Code(code),
        Ok(None) => Outcome::Failed,
        Err(_) => Outcome::Timeout,
    }
}

/// A check the security groups would drop: it times out.
async fn blocked(g: &GroupView) -> Outcome {
    tokio::time::sleep(Duration::from_secs(g.group.health_check_timeout_seconds as u64)).await;
    Outcome::Timeout
}

pub(crate) fn target_addr(g: &GroupView, t: &RegisteredTarget) -> Option<SocketAddr> {
    let port = match g.group.health_check_port.as_str() {
        "traffic-port" => u16::try_from(t.port).ok()?,
        p => p.parse().ok()?,
    };
    Some(SocketAddr::new(g.target_ip(t)?, port))
}

/// Checks every registered target of every group a listener uses, each on its group's
/// interval, until `stop`.
pub async fn run(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut trackers: HashMap<(String, String), (Tracker, Instant)> = HashMap::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<((String, String), Outcome)>(256);
    let mut in_flight = std::collections::HashSet::new();
    loop {
        let now = Instant::now();
        let pools = shared.groups_in_use();
        let groups: Vec<&GroupView> = pools.iter().map(|p| &p.view).collect();
        let mut live = std::collections::HashSet::new();
        for pool in &pools {
            let g = &pool.view;
            if !g.group.health_check_enabled {
                continue;
            }
            let interval = Duration::from_secs(g.group.health_check_interval_seconds as u64);
            for t in g.targets.iter().filter(|t| t.draining_until.is_none()) {
                let key = (g.group.target_group_arn.clone(), t.health_key());
                live.insert(key.clone());
                let due = trackers
                    .get(&key)
                    .is_none_or(|(_, last)| now.duration_since(*last) >= interval);
                let Some(addr) = target_addr(g, t) else { continue };
                if due && in_flight.insert(key.clone()) {
                    trackers
                        .entry(key.clone())
                        .or_insert_with(|| (Tracker::default(), now))
                        .1 = now;
                    let (g, tx) = (g.clone(), tx.clone());
                    let admitted = !pool.shut_out.contains(&addr);
                    tokio::spawn(async move {
                        let outcome = match admitted {
                            true => check(&g, addr).await,
                            false => blocked(&g).await,
                        };
                        let _ = tx.send((key, outcome)).await;
                    });
                }
            }
        }
        trackers.retain(|k, _| live.contains(k) || in_flight.contains(k));
        tokio::select! {
            Some((key, outcome)) = rx.recv() => {
                in_flight.remove(&key);
                let Some(g) = groups.iter().find(|g| g.group.target_group_arn == key.0) else { continue };
                let (tracker, _) = trackers.entry(key.clone()).or_insert_with(|| (Tracker::default(), Instant::now()));
                // A verdict already in the store (from before a restart) is where we start from.
                if tracker.state.is_none() {
                    tracker.state = g.health.get(&key.1).cloned();
                }
                let before = tracker.state.clone();
                let changed = tracker.observe(&outcome, g.group.healthy_threshold_count as u32, g.group.unhealthy_threshold_count as u32);
                if let Some(s) = changed {
                    // Routed by first, reported after: nothing reads a verdict the proxy has not acted on.
                    shared.adopt_verdict(&key.0, &key.1, &s);
                    if let Err(e) = shared.elb.record_health(&g.scope, &g.group.target_group_name, &key.1, &s).await {
                        tracing::warn!(error = %e, "recording target health");
                        // The next check reaches the verdict again and records it then.
                        tracker.state = before;
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_thresholds() {
        let mut t = Tracker::default();
        assert_eq!(
            t.observe(&Outcome::Pass, 3, 2).unwrap().state,
            "healthy",
            "one pass makes a new target healthy"
        );
        assert_eq!(t.observe(&Outcome::Pass, 3, 2), None);
        assert_eq!(t.observe(&Outcome::Code(500), 3, 2), None, "one failure is not enough");
        let s = t.observe(&Outcome::Code(500), 3, 2).unwrap();
        assert_eq!(
            (s.state.as_str(), s.reason.as_deref()),
            ("unhealthy", Some("Target.ResponseCodeMismatch"))
        );
        assert_eq!(
            s.description.as_deref(),
            Some("Health checks failed with these codes: [500]")
        );
        assert_eq!(t.observe(&Outcome::Pass, 3, 2), None);
        assert_eq!(t.observe(&Outcome::Pass, 3, 2), None);
        assert_eq!(
            t.observe(&Outcome::Pass, 3, 2).unwrap().state,
            "healthy",
            "recovery takes the healthy threshold"
        );
        let mut t = Tracker::default();
        t.observe(&Outcome::Timeout, 5, 2);
        assert_eq!(
            t.observe(&Outcome::Timeout, 5, 2).unwrap().reason.as_deref(),
            Some("Target.Timeout")
        );
    }

    #[test]
    fn matchers() {
        assert!(matcher_accepts("200", 200));
        assert!(matcher_accepts("200,202", 202));
        assert!(matcher_accepts("200-299", 204));
        assert!(!matcher_accepts("200-299", 301));
    }
}
