//! A task namespace's own nftables rules: 169.254.170.2:80 forwarded to the metadata and
//! credentials endpoint, and for awsvpc tasks their security groups. A namespace gets its
//! tables, fail-closed, when the warm pool makes it (`base_namespace_rules`); a task's
//! allowances are added to them as its containers start, and replaced whenever a group's
//! rules or members change (the view is long-polled over the link, so a change applies
//! within the poll's round trip). See `gantry_runtime::net::firewall` for why a start only
//! adds.

use crate::Agent;
use gantry_control::ec2::{Peer, Rule, SecurityView};
use gantry_control::TaskRecord;
use gantry_runtime::net::firewall::{task_allowances, task_allows_all, task_filter_base, Allow, REPLACE_TASK_TABLES};
use gantry_runtime::net::{Network, Sandbox, SandboxKind};
use gantry_types::taskdef::NetworkMode;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// The rules every new bridged namespace starts with: port 80 forwarded to the endpoint, and
/// no security group's allowances yet, so nothing in or out but loopback and the node until
/// the task's own allowances are added.
pub fn base_namespace_rules(node: Ipv4Addr) -> String {
    let endpoint = crate::metadata::redirect_ruleset(crate::metadata::ADDR, 80, crate::metadata::PORT);
    endpoint + &task_filter_base(node)
}

/// The allowances of a task in `groups`, for its namespace, as the view says them.
pub fn task_ruleset(view: &SecurityView, groups: &[String]) -> String {
    let mine: Vec<_> = view.groups.iter().filter(|g| groups.contains(&g.id)).collect();
    let allows = |rules: Vec<&Rule>| -> Vec<Allow> {
        rules
            .into_iter()
            .map(|r| Allow {
                protocol: r.protocol.clone(),
                ports: (r.protocol != "-1").then_some((r.from_port, r.to_port)),
                peers: match &r.peer {
                    Peer::Cidr(c) => vec![c.clone()],
                    Peer::Group(g) => view
                        .members
                        .get(g)
                        .into_iter()
                        .flatten()
                        .map(|ip| ip.to_string())
                        .collect(),
                },
            })
            .collect()
    };
    let ingress = allows(mine.iter().flat_map(|g| &g.ingress).collect());
    let egress = allows(mine.iter().flat_map(|g| &g.egress).collect());
    task_allowances(&ingress, &egress)
}

/// The view with `ip` among the members of `groups`, as the server's view lists it once the
/// task's address is recorded (sorted, once each). A starting task's first rules then already
/// count it in its own groups (the default group lets its members in), and the view change
/// its address brings finds them applied: one `nft` run per start, not two.
fn with_member(mut view: SecurityView, groups: &[String], ip: Ipv4Addr) -> SecurityView {
    for g in groups {
        let ips = view.members.entry(g.clone()).or_default();
        ips.push(ip);
        ips.sort();
        ips.dedup();
    }
    view
}

impl Agent {
    /// Keeps the view current and every task's rules in step with it.
    pub(crate) async fn follow_security_groups(self: Arc<Self>) {
        let mut known = String::new();
        loop {
            match self.link.security_view(&known).await {
                Ok(view) => {
                    known = view.digest();
                    *self.security.lock().expect("lock") = Some(view);
                    self.enforce_all().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading security groups; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Applies a task namespace's rules if they changed since last applied (host tasks have
    /// no namespace of their own). Before its first view, or for a group its view lacks, the
    /// agent reads one.
    pub(crate) async fn secure_namespace(&self, rec: &TaskRecord) -> Result<(), String> {
        let id = rec.id().to_string();
        let Some(sb) = self.node.sandbox(&id).filter(|sb| sb.kind != SandboxKind::Host) else {
            return Ok(());
        };
        // One apply at a time per task, each from the view as it is once it may apply: a start
        // and a view change racing must not leave the older rules in place.
        let lock = self
            .securing
            .lock()
            .expect("lock")
            .entry(id.clone())
            .or_default()
            .clone();
        let _held = lock.lock().await;
        if rec.network_mode != NetworkMode::Awsvpc {
            return self.apply(&sb, id, task_allows_all()).await;
        }
        let groups = gantry_control::ec2::task_groups(rec);
        let view = self.security.lock().expect("lock").clone();
        let view = match view {
            Some(v) if groups.iter().all(|g| v.groups.iter().any(|x| &x.id == g)) => v,
            // Before the first view, or a group new to this node (the view has only its tasks'
            // groups): the view as the server has it now, which has this task's.
            _ => self
                .link
                .security_view("")
                .await
                .map_err(|e| format!("reading security groups: {e}"))?,
        };
        let allowances = task_ruleset(&with_member(view, &groups, sb.ip), &groups);
        self.apply(&sb, id, allowances).await
    }

    /// Puts a task's allowances in its namespace's chains. A namespace without the base
    /// tables (a node configured without them, or one made by an older Gantry) gets them
    /// rebuilt whole with the allowances, in one transaction.
    async fn apply(&self, sb: &Sandbox, id: String, allowances: String) -> Result<(), String> {
        if self.enforced.lock().expect("lock").get(&id) == Some(&allowances) {
            return Ok(());
        }
        let whole = REPLACE_TASK_TABLES.to_string() + &base_namespace_rules(sb.gateway) + &allowances;
        let has_base = self.node.network().config().namespace_rules.is_some();
        let (sb, s) = (sb.clone(), allowances.clone());
        tokio::task::spawn_blocking(move || {
            if has_base {
                match Network::nft_in(&sb, &s) {
                    Ok(()) => return Ok(()),
                    Err(e) => tracing::info!(error = %e, "the namespace lacks its base tables; rebuilding them"),
                }
            }
            Network::nft_in(&sb, &whole)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("applying the task's network rules: {e}"))?;
        self.enforced.lock().expect("lock").insert(id, allowances);
        Ok(())
    }

    /// Every task this agent supervises: the records it knows and those it samples (tasks it
    /// re-attached to after a restart may not have written yet).
    async fn enforce_all(&self) {
        let mut tasks: HashMap<String, TaskRecord> = HashMap::new();
        for (key, (r, _)) in self.records.lock().expect("lock").iter() {
            tasks.insert(key.clone(), r.clone());
        }
        for (key, r) in self.sampled.lock().expect("lock").iter() {
            tasks.entry(key.clone()).or_insert_with(|| r.clone());
        }
        for rec in tasks.into_values().filter(|r| r.task.last_status != "STOPPED") {
            if let Err(e) = self.secure_namespace(&rec).await {
                tracing::warn!(task = %rec.id(), error = %e, "security groups not applied");
            }
        }
    }

    /// Forgets a task's applied rules (they went with its namespace).
    pub(crate) fn forget_rules(&self, task_id: &str) {
        self.enforced.lock().expect("lock").remove(task_id);
        self.securing.lock().expect("lock").remove(task_id);
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
    fn a_task_gets_its_groups_rules_with_members_resolved() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let view = SecurityView {
            groups: vec![
                group("sg-web", vec![rule("tcp", (80, 80), Peer::Cidr("10.0.0.0/8".into()))]),
                group("sg-db", vec![rule("tcp", (5432, 5432), Peer::Group("sg-web".into()))]),
            ],
            members: [("sg-web".to_string(), vec![ip("10.1.0.5"), ip("10.1.0.6")])].into(),
        };
        let db = task_ruleset(&view, &["sg-db".into()]);
        assert!(
            db.contains("ip saddr { 10.1.0.5, 10.1.0.6 } tcp dport 5432 accept"),
            "{db}"
        );
        assert!(!db.contains("dport 80 "), "sg-web's own rules are not sg-db's");
        assert!(db.contains("ip daddr { 0.0.0.0/0 } accept"));
        let web = task_ruleset(&view, &["sg-web".into()]);
        assert!(web.contains("ip saddr { 10.0.0.0/8 } tcp dport 80 accept"));
        // A starting task counted in its own group (one that lets its members in, as the
        // default group does) gets the rules the view will have once its address is recorded.
        let own = vec![group(
            "sg-own",
            vec![rule("-1", (-1, -1), Peer::Group("sg-own".into()))],
        )];
        let g = ["sg-own".to_string()];
        let other = ("sg-own".to_string(), ip("10.1.0.7"));
        let before = SecurityView::from_members(own.clone(), [other.clone()].iter());
        let after = SecurityView::from_members(own, [other, ("sg-own".to_string(), ip("10.1.0.4"))].iter());
        let first = task_ruleset(&with_member(before, &g, ip("10.1.0.4")), &g);
        assert!(
            first.contains("allow_in ip saddr { 10.1.0.4, 10.1.0.7 } accept"),
            "{first}"
        );
        assert_eq!(first, task_ruleset(&after, &g));
        assert_eq!(
            with_member(after.clone(), &g, ip("10.1.0.7")),
            after,
            "a member listed once"
        );
        // No groups at all: the chains are emptied and nothing added.
        let none = task_ruleset(&view, &[]);
        assert!(!none.contains("add rule"), "{none}");
    }
}
