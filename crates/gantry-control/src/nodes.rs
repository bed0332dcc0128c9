//! The nodes of a Gantry installation: what each offers (CPU, memory, zone, capacity provider
//! pool), when it last reported, and its epoch. A node's agent registers on start (epoch + 1)
//! and heartbeats; the leader declares a silent node lost, stops its tasks as ECS does for a
//! lost host, and services replace them elsewhere. Status writes carry the writer's epoch, so
//! an agent that was declared lost cannot write until it has registered again (fencing).

use crate::{store_err, Control};
use gantry_store::StoreError;
use gantry_types::model::stop_code;
use gantry_types::EcsError;
use serde::{Deserialize, Serialize};

pub const NODES_PREFIX: &str = "/nodes/";

/// What a node's agent says about itself when it registers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeSpec {
    pub name: String,
    /// Availability zone (`ecs.availability-zone`); default: the region's first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The capacity provider whose pool the node is in; none: it serves every launch type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_provider: Option<String>,
    /// CPU units (1024 per core) and memory (MiB) it offers EC2 and EXTERNAL tasks.
    pub cpu: i64,
    pub memory: i64,
    /// Where the host ports it publishes (bridge mode) are reached: what `instance` load
    /// balancer targets on it connect to. None: such targets cannot be reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::Ipv4Addr>,
    /// The CIDR block its tasks' addresses come from: its subnet of the default VPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
}

impl NodeSpec {
    /// Where tasks reach the host ports this node publishes: its address, unless that is
    /// loopback (`gantry dev` gives load balancers 127.0.0.1, which inside a task is the
    /// task's own), then its task network's gateway (the first address of its subnet).
    pub fn task_facing_address(&self) -> Option<std::net::Ipv4Addr> {
        match self.address {
            Some(a) if !a.is_loopback() => Some(a),
            _ => {
                let (net, _) = crate::ec2::check_cidr(self.subnet.as_deref()?).ok()?;
                Some(std::net::Ipv4Addr::from(u32::from(net) + 1))
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    #[serde(flatten)]
    pub spec: NodeSpec,
    /// Bumped by every registration: writes from an older epoch are refused.
    pub epoch: u64,
    pub heartbeat_ms: i64,
    /// ACTIVE, or LOST once silent past the timeout (until it registers again).
    pub status: String,
    /// Spot capacity being reclaimed (`gantry node reclaim`): nothing is placed here until
    /// then (the warning's two minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaimed_until_ms: Option<i64>,
}

impl NodeRecord {
    pub fn live(&self) -> bool {
        self.status == "ACTIVE"
    }

    /// Whether new tasks may be placed here now.
    pub fn placeable(&self, now_ms: i64) -> bool {
        self.live() && self.reclaimed_until_ms.is_none_or(|until| now_ms >= until)
    }

    pub fn zone(&self, region: &str) -> String {
        self.spec.zone.clone().unwrap_or_else(|| format!("{region}a"))
    }

    /// Whether tasks launched through this capacity provider (none: EC2 or a launch type
    /// without one) may run here.
    pub fn serves(&self, provider: Option<&str>) -> bool {
        match (&self.spec.capacity_provider, provider) {
            (None, _) => true,
            (Some(mine), Some(p)) => mine == p,
            (Some(_), None) => false,
        }
    }
}

/// A node name: what an agent is known by (and its certificate's name).
pub fn validate_node_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid node name {name:?}: 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        ))
    }
}

/// Why a task on a lost node stopped (ECS's wording for a host that went away).
pub fn lost_reason(node: &str) -> String {
    format!("Host EC2 (instance {node}) stopped/terminated")
}

/// The capacity provider whose nodes can be reclaimed, and the warning Fargate Spot gives.
pub const SPOT_PROVIDER: &str = "FARGATE_SPOT";
pub const SPOT_WARNING_MS: i64 = 120_000;
/// Fargate Spot's stoppedReason for an interrupted task.
pub const SPOT_REASON: &str = "Your Spot Task was interrupted.";

/// When this process last saw each node's heartbeat change (by its own clock).
#[derive(Debug, Default)]
pub struct Liveness {
    seen: std::collections::HashMap<String, ((u64, i64), i64)>,
}

impl Liveness {
    /// Whether the node has been silent for `timeout_ms` as observed from here.
    pub fn silent(&mut self, n: &NodeRecord, now_ms: i64, timeout_ms: i64) -> bool {
        let beat = (n.epoch, n.heartbeat_ms);
        let entry = self.seen.entry(n.spec.name.clone()).or_insert((beat, now_ms));
        if entry.0 != beat {
            *entry = (beat, now_ms);
        }
        now_ms - entry.1 > timeout_ms
    }
}

/// Writes from an agent are refused with this when its epoch is stale.
pub const FENCED: &str = "node epoch is stale: the node was declared lost and must register again";

impl Control {
    fn node_key(name: &str) -> String {
        format!("{NODES_PREFIX}{name}")
    }

    /// Registers (or re-registers) a node: a new epoch, ACTIVE, heard from now.
    pub async fn register_node(&self, spec: NodeSpec) -> Result<NodeRecord, EcsError> {
        validate_node_name(&spec.name).map_err(EcsError::invalid)?;
        let key = Self::node_key(&spec.name);
        loop {
            let current = self.get_json::<NodeRecord>(&key).await?;
            let rec = NodeRecord {
                spec: spec.clone(),
                epoch: current.as_ref().map_or(1, |(r, _)| r.epoch + 1),
                heartbeat_ms: self.clock.now_ms(),
                status: "ACTIVE".into(),
                // A reclaim outlives a restart of the agent: the capacity is going away.
                reclaimed_until_ms: current.as_ref().and_then(|(r, _)| r.reclaimed_until_ms),
            };
            let data = serde_json::to_vec(&rec).expect("serialises");
            let res = match current {
                Some((_, rev)) => self.store.update(&key, &data, rev).await,
                None => self.store.create(&key, &data).await,
            };
            match res {
                Ok(_) => return Ok(rec),
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
    }

    pub async fn node(&self, name: &str) -> Result<Option<NodeRecord>, EcsError> {
        Ok(self
            .get_json::<NodeRecord>(&Self::node_key(name))
            .await?
            .map(|(r, _)| r))
    }

    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, EcsError> {
        Ok(self
            .list_json::<NodeRecord>(NODES_PREFIX)
            .await?
            .into_iter()
            .map(|(_, r, _)| r)
            .collect())
    }

    /// Checks that `epoch` is the node's current one and the node is not lost.
    pub async fn check_epoch(&self, name: &str, epoch: u64) -> Result<NodeRecord, EcsError> {
        match self.node(name).await? {
            Some(r) if r.epoch == epoch && r.live() => Ok(r),
            Some(_) => Err(EcsError::client(FENCED)),
            None => Err(EcsError::client(format!("node {name} is not registered"))),
        }
    }

    /// A heartbeat: the node is alive at this epoch. Refused (fenced) from a stale epoch.
    pub async fn heartbeat(&self, name: &str, epoch: u64) -> Result<(), EcsError> {
        let now = self.clock.now_ms();
        let mut fenced = false;
        let found = self
            .update_json(&Self::node_key(name), |r: &mut NodeRecord| {
                if r.epoch != epoch || !r.live() {
                    fenced = true;
                    return Ok(false);
                }
                r.heartbeat_ms = now;
                Ok(true)
            })
            .await?;
        match (found, fenced) {
            (None, _) => Err(EcsError::client(format!("node {name} is not registered"))),
            (_, true) => Err(EcsError::client(FENCED)),
            _ => Ok(()),
        }
    }

    /// The leader's sweep: nodes whose heartbeat has not moved for `timeout_ms`, as this
    /// process observed it (`liveness`), are lost, and their tasks stopped
    /// (TerminationNotice, "Host EC2 (instance ...) stopped/terminated"). Judging by when this
    /// process saw a heartbeat change, not by the time written in it, a new leader gives every
    /// node a full timeout (after an outage of every server, agents had no one to report to)
    /// and servers' clocks need not agree (Kubernetes' node controller does the same).
    /// Returns the nodes declared lost now. Stragglers (a task placed while its node was
    /// being declared lost) are left to `stop_tasks_on_lost_nodes`, which runs less often: a
    /// task list every second for a node that stays lost would be waste.
    pub async fn sweep_lost_nodes(&self, liveness: &mut Liveness, timeout_ms: i64) -> Result<Vec<String>, EcsError> {
        let now = self.clock.now_ms();
        let nodes = self.list_json::<NodeRecord>(NODES_PREFIX).await?;
        let mut lost_now = Vec::new();
        for (key, rec, _) in &nodes {
            if !rec.live() || !liveness.silent(rec, now, timeout_ms) {
                continue;
            }
            let heard = (rec.epoch, rec.heartbeat_ms);
            let changed = self
                .update_json(key, |r: &mut NodeRecord| {
                    // Only if nothing was heard since the read.
                    if !r.live() || (r.epoch, r.heartbeat_ms) != heard {
                        return Ok(false);
                    }
                    r.status = "LOST".into();
                    Ok(true)
                })
                .await?;
            if changed.is_some_and(|r| !r.live()) {
                tracing::warn!(node = %rec.spec.name, "node lost: no heartbeat for {timeout_ms} ms");
                lost_now.push(rec.spec.name.clone());
            }
        }
        if !lost_now.is_empty() {
            self.stop_tasks_of_lost(&lost_now).await?;
        }
        Ok(lost_now)
    }

    /// Reclaims a FARGATE_SPOT node as Fargate Spot does: its tasks get the interruption
    /// (stopCode SpotInterruption, SIGTERM now, then their stopTimeout), services replace them
    /// elsewhere, and nothing is placed on the node for the two-minute warning. Returns the
    /// ARNs of the tasks interrupted.
    pub async fn reclaim_node(&self, name: &str) -> Result<Vec<String>, EcsError> {
        let node = self
            .node(name)
            .await?
            .ok_or_else(|| EcsError::invalid(format!("node {name} is not registered")))?;
        if node.spec.capacity_provider.as_deref() != Some(SPOT_PROVIDER) {
            return Err(EcsError::invalid(format!(
                "node {name} is not in the {SPOT_PROVIDER} pool (--capacity-provider): only Spot capacity is reclaimed"
            )));
        }
        if !node.live() {
            return Err(EcsError::invalid(format!(
                "node {name} is lost: there is nothing to reclaim"
            )));
        }
        let until = self.clock.now_ms() + SPOT_WARNING_MS;
        self.update_json(&Self::node_key(name), |r: &mut NodeRecord| {
            r.reclaimed_until_ms = Some(until);
            Ok(true)
        })
        .await?;
        let mut interrupted = Vec::new();
        for (key, rec, _) in self.all_tasks().await? {
            if rec.node != name || rec.task.desired_status == "STOPPED" {
                continue;
            }
            if self
                .request_stop(&key, stop_code::SPOT_INTERRUPTION, SPOT_REASON)
                .await?
                .is_some()
            {
                interrupted.push(rec.task.task_arn);
            }
        }
        Ok(interrupted)
    }

    /// Stops whatever is still live on a lost node.
    pub async fn stop_tasks_on_lost_nodes(&self) -> Result<(), EcsError> {
        let lost: Vec<String> = self
            .nodes()
            .await?
            .into_iter()
            .filter(|n| !n.live())
            .map(|n| n.spec.name)
            .collect();
        if lost.is_empty() {
            return Ok(());
        }
        self.stop_tasks_of_lost(&lost).await
    }

    async fn stop_tasks_of_lost(&self, lost: &[String]) -> Result<(), EcsError> {
        let now = self.now();
        for (key, rec, _) in self.all_tasks().await? {
            if rec.task.last_status == "STOPPED" || !lost.contains(&rec.node) {
                continue;
            }
            let reason = lost_reason(&rec.node);
            self.update_task(&key, |r| {
                if r.task.last_status == "STOPPED" {
                    return false;
                }
                r.task.desired_status = "STOPPED".into();
                r.task.last_status = "STOPPED".into();
                r.task
                    .stop_code
                    .get_or_insert_with(|| stop_code::TERMINATION_NOTICE.into());
                r.task.stopped_reason.get_or_insert_with(|| reason.clone());
                r.task.stopping_at.get_or_insert(now);
                r.task.execution_stopped_at.get_or_insert(now);
                r.task.stopped_at = Some(now);
                for c in &mut r.task.containers {
                    if c.last_status != "STOPPED" {
                        c.last_status = "STOPPED".into();
                        c.reason.get_or_insert_with(|| reason.clone());
                    }
                }
                true
            })
            .await?;
        }
        Ok(())
    }
}
