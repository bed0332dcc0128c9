//! Security groups on a node: the agent keeps its bridge's table (`gantry_runtime::net::
//! firewall::security_changes`) in step with its tasks and the view of their groups. A task
//! is admitted while its containers start (its address joins its groups' sets; the bridge
//! drops its traffic until then), forgotten when it stops, and every change of a group's
//! rules or members the view brings (long-polled over the link, so within the poll's round
//! trip) is one transaction. Each task namespace keeps only its endpoint redirect.

use crate::Agent;
use gantry_control::ec2::{Peer, Rule, SecurityView};
use gantry_control::TaskRecord;
use gantry_runtime::net::firewall::{redirect_ruleset, Allow, Enforced, GroupRules, Peers, REPLACE_TASK_TABLES};
use gantry_runtime::net::{Network, SandboxKind};
use gantry_types::taskdef::NetworkMode;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// The rules every new bridged namespace starts with (applied in the warm pool, off a task's
/// start): 169.254.170.2:80 forwarded to the metadata and credentials endpoint.
pub fn base_namespace_rules() -> String {
    redirect_ruleset(crate::metadata::ADDR, 80, crate::metadata::PORT)
}

/// Where an older Gantry kept a task's security groups, in its namespace.
const LEGACY_TABLE_DELETE: &str = "delete table inet gantry_sg\n";

/// A task on this node as its bridge's rules see it: its address, and its groups (None: a
/// bridged task outside awsvpc mode, which has none and is let in and out).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member {
    pub ip: Ipv4Addr,
    pub groups: Option<Vec<String>>,
    /// Stopped: its address leaves its sets at the next sweep.
    pub leaving: bool,
}

/// What the node enforces and for whom, changed under one lock so that what the table holds
/// is always `applied`.
#[derive(Default)]
pub(crate) struct Enforcement {
    tasks: HashMap<String, Member>,
    applied: Enforced,
    sweep_pending: bool,
}

/// How long stopped tasks' addresses stay in their sets before they are swept out together.
/// Removing anything in an nftables transaction makes the commit wait for an RCU grace period
/// (about 10 ms here), during which no other transaction runs: one sweep for a batch of stops
/// keeps that wait off the starts around them. An address is not handed out again meanwhile
/// (the node leases addresses round robin), and a start that gets one anyway takes it out of
/// the leaving task's sets first.
const SWEEP_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

fn allows(rules: &[Rule]) -> Vec<Allow> {
    rules
        .iter()
        .map(|r| Allow {
            protocol: r.protocol.clone(),
            ports: (r.protocol != "-1").then_some((r.from_port, r.to_port)),
            peers: match &r.peer {
                Peer::Cidr(c) => Peers::Cidr(c.clone()),
                Peer::Group(g) => Peers::Group(g.clone()),
            },
        })
        .collect()
}

/// What the bridge should enforce for `tasks` as the view has their groups: each group's
/// rules and local members, and the members of every group those rules name, counting this
/// node's tasks (a starting task's address is in its groups before the view lists it). A
/// group the view lacks has no rules: its members are let nothing in or out.
///
/// Groups in `kept` (what the table holds) that the view still has stay, even with no local
/// member left: deleting their chains and sets would cost a grace period (`SWEEP_AFTER`) and
/// the group's next task on the node would make them again. (A node's view lists only the
/// groups of its tasks not stopped, so today that is until the view drops the group.)
pub(crate) fn desired(view: &SecurityView, tasks: &HashMap<String, Member>, kept: &Enforced) -> Enforced {
    let mut e = Enforced::default();
    let rules = |id: &String| {
        let found = view.groups.iter().find(|g| &g.id == id);
        GroupRules {
            ingress: found.map(|g| allows(&g.ingress)).unwrap_or_default(),
            egress: found.map(|g| allows(&g.egress)).unwrap_or_default(),
            local: Default::default(),
        }
    };
    for id in kept.groups.keys().filter(|id| view.groups.iter().any(|g| &g.id == *id)) {
        e.groups.insert(id.clone(), rules(id));
    }
    for m in tasks.values() {
        let Some(groups) = &m.groups else {
            e.open.insert(m.ip);
            continue;
        };
        for id in groups {
            e.groups
                .entry(id.clone())
                .or_insert_with(|| rules(id))
                .local
                .insert(m.ip);
        }
    }
    let named: Vec<String> = e
        .groups
        .values()
        .flat_map(|g| g.ingress.iter().chain(&g.egress))
        .filter_map(|a| match &a.peers {
            Peers::Group(g) => Some(g.clone()),
            Peers::Cidr(_) => None,
        })
        .collect();
    for id in named {
        let mut ips: std::collections::BTreeSet<Ipv4Addr> =
            view.members.get(&id).into_iter().flatten().copied().collect();
        ips.extend(e.groups.get(&id).into_iter().flat_map(|g| g.local.iter().copied()));
        e.named.insert(id, ips);
    }
    e
}

impl Agent {
    /// Keeps the view current and the bridge's rules in step with it.
    pub(crate) async fn follow_security_groups(self: Arc<Self>) {
        let mut known = String::new();
        loop {
            match self.link.security_view(&known).await {
                Ok(view) => {
                    known = view.digest();
                    *self.security.lock().expect("lock") = Some(view);
                    if let Err(e) = self.enforce(|_| {}).await {
                        tracing::warn!(error = %e, "security groups not applied; retrying at the next change");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading security groups; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Admits a task to its bridge's rules: its address joins its groups (or, outside awsvpc
    /// mode, the tasks let in and out). Tasks without a namespace on the bridge have none.
    /// Before its first view, or for a group its view lacks, the agent reads one.
    pub(crate) async fn admit(&self, rec: &TaskRecord) -> Result<(), String> {
        let id = rec.id().to_string();
        let Some(sb) = self.node.sandbox(&id).filter(|sb| sb.kind == SandboxKind::Bridged) else {
            return Ok(());
        };
        if self.node.network().config().namespace_rules.is_none() {
            // A namespace made without the redirect gets it now.
            let script = REPLACE_TASK_TABLES.to_string() + &base_namespace_rules();
            let sb = sb.clone();
            tokio::task::spawn_blocking(move || Network::nft_in(&sb, &script))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("applying the task's endpoint rules: {e}"))?;
        }
        let groups = (rec.network_mode == NetworkMode::Awsvpc).then(|| gantry_control::ec2::task_groups(rec));
        let view = self.security.lock().expect("lock").clone();
        let lacking = |v: &SecurityView| groups.iter().flatten().any(|g| !v.groups.iter().any(|x| &x.id == g));
        if view.as_ref().is_none_or(lacking) {
            // Before the first view, or a group new to this node (the view has only its tasks'
            // groups): the view as the server has it now, which has this task's.
            let fresh = self
                .link
                .security_view("")
                .await
                .map_err(|e| format!("reading security groups: {e}"))?;
            *self.security.lock().expect("lock") = Some(fresh);
        }
        let member = Member {
            ip: sb.ip,
            groups,
            leaving: false,
        };
        self.enforce(|tasks| {
            // A stopped task not yet swept out that had this address leaves its groups now.
            tasks.retain(|_, m| !(m.leaving && m.ip == member.ip));
            tasks.insert(id, member);
        })
        .await
        .map_err(|e| format!("applying the task's security groups: {e}"))
    }

    /// Re-admits a task this agent found running after a restart. An older Gantry kept the
    /// task's security groups in its namespace (`inet gantry_sg`, which would go on dropping
    /// what the bridge allows): that table goes. Absent, as it is for tasks this Gantry
    /// started, the deletion fails without changing anything (and without a grace period).
    pub(crate) async fn readmit(&self, rec: &TaskRecord) {
        let id = rec.id().to_string();
        if let Some(sb) = self.node.sandbox(&id).filter(|sb| sb.kind == SandboxKind::Bridged) {
            let gone = tokio::task::spawn_blocking(move || Network::nft_in(&sb, LEGACY_TABLE_DELETE)).await;
            if let Ok(Ok(())) = gone {
                tracing::info!(task = %id, "an older Gantry's security group table removed from the task's namespace");
            }
        }
        if let Err(e) = self.admit(rec).await {
            tracing::warn!(task = %id, error = %e, "security groups not applied");
        }
    }

    /// Applies `change` to the node's tasks and brings the bridge's rules in step with them
    /// and the view, in one transaction. When it fails the tasks are left as they were.
    async fn enforce(&self, change: impl FnOnce(&mut HashMap<String, Member>)) -> Result<(), String> {
        let mut held = self.enforcement.lock().await;
        let mut tasks = held.tasks.clone();
        change(&mut tasks);
        let view = self.security.lock().expect("lock").clone().unwrap_or_default();
        let want = desired(&view, &tasks, &held.applied);
        if want == held.applied {
            held.tasks = tasks;
            return Ok(());
        }
        let node = self.node.clone();
        let from = held.applied.clone();
        let (to, applied) = (
            want.clone(),
            tokio::task::spawn_blocking(move || node.network().security_groups(&from, &want)),
        );
        applied.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
        held.tasks = tasks;
        held.applied = to;
        Ok(())
    }

    /// Takes a stopping task out of the bridge's rules: it is marked leaving, and a sweep
    /// `SWEEP_AFTER` later removes it with every other task stopped meanwhile.
    pub(crate) async fn forget_rules(self: &Arc<Self>, task_id: &str) {
        let mut held = self.enforcement.lock().await;
        let Some(m) = held.tasks.get_mut(task_id) else {
            return;
        };
        m.leaving = true;
        if std::mem::replace(&mut held.sweep_pending, true) {
            return;
        }
        let me = self.clone();
        drop(held);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_AFTER).await;
                let swept = me.enforce(|tasks| tasks.retain(|_, m| !m.leaving)).await;
                if let Err(e) = swept {
                    tracing::warn!(error = %e, "removing stopped tasks from their security groups; retrying");
                    continue;
                }
                let mut held = me.enforcement.lock().await;
                // Tasks that stopped during the sweep go in the next one.
                if !held.tasks.values().any(|m| m.leaving) {
                    held.sweep_pending = false;
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_control::ec2::SecurityGroup;

    fn rule(protocol: &str, ports: (i64, i64), peer: Peer) -> Rule {
        Rule {
            id: "sgr-1".into(),
            protocol: protocol.into(),
            from_port: ports.0,
            to_port: ports.1,
            peer,
            description: None,
        }
    }

    fn group(id: &str, ingress: Vec<Rule>) -> SecurityGroup {
        SecurityGroup {
            id: id.into(),
            name: id.into(),
            description: String::new(),
            vpc_id: "vpc-1".into(),
            owner: "1".into(),
            ingress,
            egress: vec![rule("-1", (-1, -1), Peer::Cidr("0.0.0.0/0".into()))],
            tags: vec![],
        }
    }

    #[test]
    fn the_bridge_enforces_the_tasks_groups_with_their_members_counted() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let view = SecurityView {
            groups: vec![
                group("sg-0e", vec![rule("tcp", (80, 80), Peer::Cidr("10.0.0.0/8".into()))]),
                group("sg-0d", vec![rule("tcp", (5432, 5432), Peer::Group("sg-0e".into()))]),
                group("sg-0f", vec![rule("-1", (-1, -1), Peer::Group("sg-0f".into()))]),
            ],
            members: [
                ("sg-0e".to_string(), vec![ip("10.2.0.5")]),
                ("sg-0f".to_string(), vec![ip("10.2.0.9")]),
            ]
            .into(),
        };
        let member = |s: &str, groups: Option<&[&str]>| Member {
            ip: ip(s),
            groups: groups.map(|g| g.iter().map(|x| x.to_string()).collect()),
            leaving: false,
        };
        let tasks: HashMap<String, Member> = [
            ("db".to_string(), member("10.1.0.4", Some(&["sg-0d"]))),
            ("own".to_string(), member("10.1.0.6", Some(&["sg-0f"]))),
            ("bridge".to_string(), member("10.1.0.7", None)),
            ("lost".to_string(), member("10.1.0.8", Some(&["sg-0123"]))),
        ]
        .into();
        let e = desired(&view, &tasks, &Enforced::default());
        let db = &e.groups["sg-0d"];
        assert_eq!(
            db.ingress,
            vec![Allow {
                protocol: "tcp".into(),
                ports: Some((5432, 5432)),
                peers: Peers::Group("sg-0e".into())
            }]
        );
        assert_eq!(db.local, [ip("10.1.0.4")].into());
        assert!(
            !e.groups.contains_key("sg-0e"),
            "no task here is in sg-0e; its members are named only"
        );
        assert_eq!(e.named["sg-0e"], [ip("10.2.0.5")].into());
        // A starting task is among its own group's members before the view lists it (the
        // default group admits its own members).
        assert_eq!(e.named["sg-0f"], [ip("10.1.0.6"), ip("10.2.0.9")].into());
        assert_eq!(e.open, [ip("10.1.0.7")].into(), "a bridge-mode task has no groups");
        let lost = &e.groups["sg-0123"];
        assert!(
            lost.ingress.is_empty() && lost.egress.is_empty(),
            "a group the view lacks lets nothing through"
        );
        assert_eq!(e.named.len(), 2);
        // No tasks, nothing enforced.
        assert_eq!(
            desired(&view, &HashMap::new(), &Enforced::default()),
            Enforced::default()
        );
        // The table's groups stay when their last task here goes (deleting costs a grace
        // period), but not once the view no longer has them.
        let after = desired(&view, &HashMap::new(), &e);
        assert_eq!(after.groups.keys().collect::<Vec<_>>(), ["sg-0d", "sg-0f"]);
        assert!(after.groups.values().all(|g| g.local.is_empty()));
        assert_eq!(
            after.named["sg-0f"],
            [ip("10.2.0.9")].into(),
            "the view's members stay named"
        );
    }
}
