//! The node's own firewall for its task bridge: tasks must not reach the node itself (Fargate
//! tasks cannot reach their host, and a node runs the agent, API and etcd ports). Packets that
//! arrive on the bridge for the node are dropped unless they answer a connection the node
//! opened. Task-to-task traffic is bridged, never delivered to the node: the table's security
//! group chains filter it on the forward hook (`security_base`, `security_changes`). The
//! endpoints meant for tasks (169.254.170.2) live inside each task's own namespace. The
//! exceptions are DNS to the node's resolver on the gateway address, when it runs, and the
//! host ports the node publishes for bridge-mode tasks (the set `published`, kept by the agent
//! as it binds and unbinds them): as on an ECS instance, tasks reach each other's published
//! ports at the node's addresses.
//!
//! One nftables table per bridge (`gantry_<bridge>`), replaced atomically in one `nft -f`
//! transaction, so several Gantry nodes on one host never touch each other's rules.
//!
//! Several nodes on one host (a cluster tried on one machine) share its ports: a port one
//! node publishes is bound on every address of the host, and another node's tasks reach it
//! there (at that node's gateway, as its SRV records say). A drop in any table is final, so
//! each node's table marks, before any table filters, the packets bound for a port it
//! publishes (one bit of the packet mark, `PUBLISHED_MARK`), and every node's table lets a
//! marked packet through. The mark lives only on the packet; nothing routes by it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("nft not found: install nftables (scripts/install-deps.sh)")]
    NftMissing,
    #[error("bridge name {0:?} cannot name an nftables table")]
    BadName(String),
    #[error("cannot write a rule for {0}")]
    BadRule(String),
    #[error("nft failed: {stderr}")]
    Nft { stderr: String },
    #[error("running nft: {0}")]
    Io(#[from] std::io::Error),
}

pub fn table_name(bridge: &str) -> Result<String, FirewallError> {
    if bridge.is_empty()
        || !bridge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(FirewallError::BadName(bridge.into()));
    }
    Ok(format!("gantry_{}", bridge.replace('-', "_")))
}

/// The packet-mark bit meaning "bound for a port some Gantry node on this host publishes"
/// (kube-proxy uses 0x4000 and 0x8000, Calico the top 16 bits, Cilium 0x0f00).
pub const PUBLISHED_MARK: u32 = 0x0010_0000;

/// The ruleset for one bridge; with `resolver`, DNS to that address (the node's resolver on
/// the gateway) is let through. With `security_groups`, its security group chains start with
/// no group, so nothing reaches or leaves a task but replies until `security_changes` admits
/// it.
pub fn ruleset(bridge: &str, resolver: Option<Ipv4Addr>, security_groups: bool) -> Result<String, FirewallError> {
    let t = table_name(bridge)?;
    let dns = match resolver {
        Some(ip) => format!(
            "\t\tiifname \"{bridge}\" ip daddr {ip} meta l4proto {{ tcp, udp }} th dport 53 accept comment \"the node's resolver\"\n"
        ),
        None => String::new(),
    };
    Ok(format!(
        "add table inet {t}\n\
         delete table inet {t}\n\
         table inet {t} {{\n\
         \tset published {{\n\
         \t\ttype inet_proto . inet_service\n\
         \t}}\n\
         \tchain mark_published {{\n\
         \t\ttype filter hook input priority filter - 10; policy accept;\n\
         \t\tmeta l4proto . th dport @published meta mark set meta mark | {mark:#x}\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"{bridge}\" ct state established,related accept\n\
         {dns}\
         \t\tiifname \"{bridge}\" meta mark & {mark:#x} != 0 accept comment \"ports published on this host\"\n\
         \t\tiifname \"{bridge}\" counter drop comment \"tasks may not reach the node\"\n\
         \t}}\n\
         {groups}\
         }}\n",
        mark = PUBLISHED_MARK,
        groups = if security_groups {
            security_base(bridge)
        } else {
            String::new()
        }
    ))
}

/// The security group part of a bridge's table: tasks' traffic through the bridge (between
/// two of its tasks, bridged, or routed to and from elsewhere) passes the sender's egress
/// check, then the receiver's ingress check, each a jump to the chain of every group the
/// task's address is a local member of; a group's chain accepts what one of its rules allows.
/// Replies pass (stateful, as security groups are); the node's own connections to its tasks
/// (load balancers, health checks, published ports) are not forwarded and pass too.
/// Bridged traffic reaches the forward hook through br_netfilter (`Network::new` turns it on
/// for the bridge).
fn security_base(bridge: &str) -> String {
    // One forward-hook chain per side: the packet's interface on the bridge, its address in
    // the task's sets, the dispatch to the task's groups' chains.
    let side = |chain: &str, priority: u8, interface: &str, addr: &str, groups: &str, whose: &str| {
        format!(
            "\tchain {chain} {{\n\
             \t\ttype filter hook forward priority filter - {priority}; policy accept;\n\
             \t\t{interface} != \"{bridge}\" accept\n\
             \t\tct state established,related accept\n\
             \t\tip {addr} @open accept\n\
             \t\tjump {groups}\n\
             \t\tcounter drop comment \"no security group of the {whose}\"\n\
             \t}}\n"
        )
    };
    format!(
        "\tset open {{\n\
         \t\ttype ipv4_addr\n\
         \t}}\n\
         \tchain ingress_groups {{\n\
         \t}}\n\
         \tchain egress_groups {{\n\
         \t}}\n\
         {}{}",
        side(
            "tasks_out",
            5,
            "iifname",
            "saddr",
            "egress_groups",
            "sender lets it out"
        ),
        side(
            "tasks_in",
            4,
            "oifname",
            "daddr",
            "ingress_groups",
            "receiver lets it in"
        )
    )
}

/// The table of a task's own endpoints on `addr`: connections to `addr:from` go to
/// `addr:to`, inside the task's own namespace (as ECS forwards 169.254.170.2:80 to its agent's
/// port), so nothing listens on `from` and the task's own servers may bind it. For a new
/// namespace (it only adds: deleting anything in an nftables transaction makes the commit wait
/// for an RCU grace period, about 13 ms here; `scripts/bench-nft.sh`).
pub fn redirect_ruleset(addr: std::net::Ipv4Addr, from: u16, to: u16) -> String {
    format!(
        "table ip gantry_task {{\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\tip daddr {addr} tcp dport {from} dnat to {addr}:{to}\n\
         \t}}\n\
         }}\n"
    )
}

/// The tables a task namespace may hold, removed: for a namespace made without the redirect,
/// or by an older Gantry, which also kept the task's security groups there (`gantry_sg`,
/// fail-closed: left in place it would drop what the node's rules now allow).
pub const REPLACE_TASK_TABLES: &str = "add table ip gantry_task\ndelete table ip gantry_task\n\
     add table inet gantry_sg\ndelete table inet gantry_sg\n";

// Security groups are enforced in the node's table, on its bridge, rather than in each task's
// namespace: a rule naming a group matches one set of that group's members, so a task joining
// or leaving a group is one element added or removed on each node, where rules listing the
// members' addresses in every task's namespace cost every start a rewrite of every namespace
// beside it (the default group admits its own members). A task's start only adds (elements,
// and a group's chains and set when it is the group's first task on the node), so its commit
// does not wait for a grace period.

/// Whom a rule admits (ingress) or reaches (egress): an IPv4 block, or the members of a group.
#[derive(Debug, Clone, PartialEq)]
pub enum Peers {
    Cidr(String),
    Group(String),
}

/// Traffic a security group allows in one direction: a protocol ("tcp", "udp", "icmp", or
/// "-1" for all), ports (ICMP: type and code; None or -1: any), and the peers.
#[derive(Debug, Clone, PartialEq)]
pub struct Allow {
    pub protocol: String,
    pub ports: Option<(i64, i64)>,
    pub peers: Peers,
}

/// A security group as one node enforces it: its rules, and the addresses of its members
/// among the node's tasks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupRules {
    pub ingress: Vec<Allow>,
    pub egress: Vec<Allow>,
    pub local: BTreeSet<Ipv4Addr>,
}

/// What a node's table enforces: the groups of its awsvpc tasks, the members (on any node) of
/// each group their rules name, and its bridged tasks outside awsvpc mode, which have no
/// groups and are let in and out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Enforced {
    pub groups: BTreeMap<String, GroupRules>,
    pub named: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    pub open: BTreeSet<Ipv4Addr>,
}

/// The part of a group id ("sg-" and hex digits) that names its sets and chains. Anything
/// else is refused: it would be spliced into an nft script.
fn group_key(id: &str) -> Result<&str, FirewallError> {
    match id.strip_prefix("sg-") {
        Some(k) if !k.is_empty() && k.len() <= 64 && k.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(k),
        _ => Err(FirewallError::BadRule(format!("security group id {id:?}"))),
    }
}

/// An IPv4 block or address as nft writes it; anything else is refused.
fn cidr(s: &str) -> Result<String, FirewallError> {
    let bad = || FirewallError::BadRule(format!("CIDR block {s:?}"));
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, p.parse::<u8>().map_err(|_| bad())?),
        None => (s, 32),
    };
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    // nft refuses a block with host bits set; EC2 takes 10.1.2.3/8 as 10.0.0.0/8.
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Ok(format!("{}/{prefix}", Ipv4Addr::from(u32::from(addr) & mask)))
}

fn allow_line(table: &str, chain: &str, dir: &str, a: &Allow) -> Result<String, FirewallError> {
    let peers = match &a.peers {
        Peers::Cidr(c) => cidr(c)?,
        Peers::Group(g) => format!("@members_{}", group_key(g)?),
    };
    let matcher = match (a.protocol.as_str(), a.ports) {
        ("-1", _) => String::new(),
        ("icmp", Some((t, _))) if (0..=255).contains(&t) => format!(" icmp type {t}"),
        ("icmp", _) => " meta l4proto icmp".to_string(),
        (p @ ("tcp" | "udp"), Some((from, to))) if (0..=65535).contains(&from) && (from..=65535).contains(&to) => {
            if from == to {
                format!(" {p} dport {from}")
            } else {
                format!(" {p} dport {from}-{to}")
            }
        }
        (p @ ("tcp" | "udp"), _) => format!(" meta l4proto {p}"),
        (p, _) => return Err(FirewallError::BadRule(format!("protocol {p:?}"))),
    };
    Ok(format!(
        "add rule inet {table} {chain} ip {dir} {peers}{matcher} accept\n"
    ))
}

fn elements(table: &str, verb: &str, set: &str, ips: impl Iterator<Item = Ipv4Addr>) -> String {
    let ips: Vec<String> = ips.map(|ip| ip.to_string()).collect();
    if ips.is_empty() {
        return String::new();
    }
    format!("{verb} element inet {table} {set} {{ {} }}\n", ips.join(", "))
}

fn group_rules(table: &str, k: &str, g: &GroupRules) -> Result<String, FirewallError> {
    let mut s = String::new();
    for a in &g.ingress {
        s += &allow_line(table, &format!("ingress_{k}"), "saddr", a)?;
    }
    for a in &g.egress {
        s += &allow_line(table, &format!("egress_{k}"), "daddr", a)?;
    }
    Ok(s)
}

fn dispatch(table: &str, k: &str) -> String {
    format!(
        "add rule inet {table} ingress_groups ip daddr @local_{k} jump ingress_{k}\n\
         add rule inet {table} egress_groups ip saddr @local_{k} jump egress_{k}\n"
    )
}

/// The nft script that takes a bridge's table from enforcing `from` to enforcing `to`, in one
/// transaction. What a task's start changes only adds; what leaves is deleted last.
pub fn security_changes(bridge: &str, from: &Enforced, to: &Enforced) -> Result<String, FirewallError> {
    let t = table_name(bridge)?;
    let empty = GroupRules::default();
    let no_ips = BTreeSet::new();
    let mut s = String::new();
    for (id, g) in &to.groups {
        let k = group_key(id)?;
        let was = from.groups.get(id);
        if was.is_none() {
            s += &format!(
                "add set inet {t} local_{k} {{ type ipv4_addr; }}\nadd chain inet {t} ingress_{k}\nadd chain inet {t} egress_{k}\n"
            );
        }
        let known = &was.unwrap_or(&empty).local;
        s += &elements(&t, "add", &format!("local_{k}"), g.local.difference(known).copied());
    }
    for (id, ips) in &to.named {
        let k = group_key(id)?;
        if !from.named.contains_key(id) {
            s += &format!("add set inet {t} members_{k} {{ type ipv4_addr; }}\n");
        }
        let known = from.named.get(id).unwrap_or(&no_ips);
        s += &elements(&t, "add", &format!("members_{k}"), ips.difference(known).copied());
    }
    s += &elements(&t, "add", "open", to.open.difference(&from.open).copied());
    for (id, g) in &to.groups {
        let k = group_key(id)?;
        match from.groups.get(id) {
            None => s += &group_rules(&t, k, g)?,
            Some(f) if f.ingress != g.ingress || f.egress != g.egress => {
                s += &format!("flush chain inet {t} ingress_{k}\nflush chain inet {t} egress_{k}\n");
                s += &group_rules(&t, k, g)?;
            }
            Some(_) => {}
        }
    }
    let gone: Vec<&str> = from
        .groups
        .keys()
        .filter(|id| !to.groups.contains_key(*id))
        .map(|id| id.as_str())
        .collect();
    if gone.is_empty() {
        for id in to.groups.keys().filter(|id| !from.groups.contains_key(*id)) {
            s += &dispatch(&t, group_key(id)?);
        }
    } else {
        s += &format!("flush chain inet {t} ingress_groups\nflush chain inet {t} egress_groups\n");
        for id in to.groups.keys() {
            s += &dispatch(&t, group_key(id)?);
        }
    }
    for (id, g) in &to.groups {
        if let Some(f) = from.groups.get(id) {
            s += &elements(
                &t,
                "delete",
                &format!("local_{}", group_key(id)?),
                f.local.difference(&g.local).copied(),
            );
        }
    }
    for (id, ips) in &to.named {
        if let Some(was) = from.named.get(id) {
            s += &elements(
                &t,
                "delete",
                &format!("members_{}", group_key(id)?),
                was.difference(ips).copied(),
            );
        }
    }
    s += &elements(&t, "delete", "open", from.open.difference(&to.open).copied());
    for id in gone {
        let k = group_key(id)?;
        s += &format!(
            "flush chain inet {t} ingress_{k}\nflush chain inet {t} egress_{k}\n\
             delete chain inet {t} ingress_{k}\ndelete chain inet {t} egress_{k}\ndelete set inet {t} local_{k}\n"
        );
    }
    for id in from.named.keys().filter(|id| !to.named.contains_key(*id)) {
        s += &format!("delete set inet {t} members_{}\n", group_key(id)?);
    }
    Ok(s)
}

/// Runs an nft script as one transaction in the calling thread's network namespace: through
/// libnftables when it is installed (in the process, a tenth of the CPU), else the `nft`
/// command.
pub fn nft(script: &str) -> Result<(), FirewallError> {
    match crate::sys::Nftables::get() {
        Some(lib) => lib.run(script).map_err(|stderr| FirewallError::Nft { stderr }),
        None => nft_command(script),
    }
}

/// Whether scripts run through libnftables (else through the `nft` command).
pub fn library_loaded() -> bool {
    crate::sys::Nftables::get().is_some()
}

/// Runs an nft script through the `nft` command.
pub fn nft_command(script: &str) -> Result<(), FirewallError> {
    let mut child = match Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(FirewallError::NftMissing),
        Err(e) => return Err(e.into()),
    };
    child.stdin.take().expect("piped").write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(FirewallError::Nft {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Installs (or replaces) the bridge's rules.
pub fn isolate_node(bridge: &str, resolver: Option<Ipv4Addr>, security_groups: bool) -> Result<(), FirewallError> {
    nft(&ruleset(bridge, resolver, security_groups)?)
}

/// Lets the bridge's tasks reach host ports the node publishes ("tcp" or "udp", port), or
/// (`open` false) no longer.
pub fn published_ports(bridge: &str, ports: &[(String, u16)], open: bool) -> Result<(), FirewallError> {
    if ports.is_empty() {
        return Ok(());
    }
    let t = table_name(bridge)?;
    let mut elements = Vec::new();
    for (protocol, port) in ports {
        if !matches!(protocol.as_str(), "tcp" | "udp") {
            return Err(FirewallError::Nft {
                stderr: format!("cannot publish protocol {protocol:?}"),
            });
        }
        elements.push(format!("{protocol} . {port}"));
    }
    let verb = if open { "add" } else { "delete" };
    nft(&format!(
        "{verb} element inet {t} published {{ {} }}\n",
        elements.join(", ")
    ))
}

/// Removes the bridge's rules (absent is fine).
pub fn remove(bridge: &str) -> Result<(), FirewallError> {
    let t = table_name(bridge)?;
    nft(&format!("add table inet {t}\ndelete table inet {t}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(protocol: &str, ports: Option<(i64, i64)>, peers: Peers) -> Allow {
        Allow {
            protocol: protocol.into(),
            ports,
            peers,
        }
    }

    fn ips(list: &[&str]) -> BTreeSet<Ipv4Addr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// A node with one web task (sg-aa: port 80 from sg-bb's members, everything from
    /// 10.0.0.0/8, out anywhere), sg-bb having one member on another node.
    fn one_web_task() -> Enforced {
        let web = GroupRules {
            ingress: vec![
                allow("tcp", Some((80, 80)), Peers::Group("sg-bb".into())),
                allow("-1", None, Peers::Cidr("10.0.0.0/8".into())),
            ],
            egress: vec![allow("-1", None, Peers::Cidr("0.0.0.0/0".into()))],
            local: ips(&["10.1.0.5"]),
        };
        Enforced {
            groups: [("sg-aa".to_string(), web)].into(),
            named: [("sg-bb".to_string(), ips(&["10.2.0.7"]))].into(),
            open: ips(&["10.1.0.9"]),
        }
    }

    #[test]
    fn a_start_only_adds_and_a_member_joining_is_one_element() {
        let first = security_changes("br0", &Enforced::default(), &one_web_task()).unwrap();
        for line in [
            "add set inet gantry_br0 local_aa { type ipv4_addr; }\n",
            "add chain inet gantry_br0 ingress_aa\nadd chain inet gantry_br0 egress_aa\n",
            "add element inet gantry_br0 local_aa { 10.1.0.5 }\n",
            "add set inet gantry_br0 members_bb { type ipv4_addr; }\n",
            "add element inet gantry_br0 members_bb { 10.2.0.7 }\n",
            "add element inet gantry_br0 open { 10.1.0.9 }\n",
            "add rule inet gantry_br0 ingress_aa ip saddr @members_bb tcp dport 80 accept\n",
            "add rule inet gantry_br0 ingress_aa ip saddr 10.0.0.0/8 accept\n",
            "add rule inet gantry_br0 egress_aa ip daddr 0.0.0.0/0 accept\n",
            "add rule inet gantry_br0 ingress_groups ip daddr @local_aa jump ingress_aa\n",
            "add rule inet gantry_br0 egress_groups ip saddr @local_aa jump egress_aa\n",
        ] {
            assert!(first.contains(line), "{line:?} missing from\n{first}");
        }
        assert!(
            !first.contains("delete") && !first.contains("flush"),
            "a start only adds:\n{first}"
        );
        // A second web task, and a member of sg-bb starting elsewhere: one element each,
        // however many tasks already run.
        let mut more = one_web_task();
        more.groups
            .get_mut("sg-aa")
            .unwrap()
            .local
            .insert("10.1.0.6".parse().unwrap());
        more.named.get_mut("sg-bb").unwrap().insert("10.2.0.8".parse().unwrap());
        assert_eq!(
            security_changes("br0", &one_web_task(), &more).unwrap(),
            "add element inet gantry_br0 local_aa { 10.1.0.6 }\nadd element inet gantry_br0 members_bb { 10.2.0.8 }\n"
        );
        assert_eq!(security_changes("br0", &more, &more).unwrap(), "");
    }

    #[test]
    fn leaving_members_changed_rules_and_gone_groups_are_deleted_last() {
        let before = one_web_task();
        let mut left = before.clone();
        left.named.get_mut("sg-bb").unwrap().clear();
        left.open.clear();
        assert_eq!(
            security_changes("br0", &before, &left).unwrap(),
            "delete element inet gantry_br0 members_bb { 10.2.0.7 }\ndelete element inet gantry_br0 open { 10.1.0.9 }\n"
        );
        // sg-aa's rules change: its chains are refilled, and the set only its old rule named goes.
        let mut changed = before.clone();
        changed.groups.get_mut("sg-aa").unwrap().ingress =
            vec![allow("tcp", Some((8000, 8080)), Peers::Cidr("10.9.0.1".into()))];
        changed.named.clear();
        let s = security_changes("br0", &before, &changed).unwrap();
        assert!(
            s.starts_with("flush chain inet gantry_br0 ingress_aa\nflush chain inet gantry_br0 egress_aa\n"),
            "{s}"
        );
        assert!(s.contains("add rule inet gantry_br0 ingress_aa ip saddr 10.9.0.1/32 tcp dport 8000-8080 accept\n"));
        assert!(s.ends_with("delete set inet gantry_br0 members_bb\n"), "{s}");
        // The group's last task on the node goes: its dispatch, chains and set go with it.
        let mut gone = before.clone();
        gone.groups.clear();
        gone.named.clear();
        let s = security_changes("br0", &before, &gone).unwrap();
        assert!(s.contains("flush chain inet gantry_br0 ingress_groups\nflush chain inet gantry_br0 egress_groups\n"));
        assert!(!s.contains("jump"), "no group left to dispatch to:\n{s}");
        let deletes = s.find("delete chain inet gantry_br0 ingress_aa").unwrap();
        assert!(
            s.find("flush chain inet gantry_br0 ingress_aa").unwrap() < deletes,
            "a chain is emptied before it is deleted"
        );
        assert!(
            s.contains("delete set inet gantry_br0 local_aa\n")
                && s.contains("delete set inet gantry_br0 members_bb\n")
        );
    }

    #[test]
    fn rules_and_ids_that_would_change_the_script_are_refused() {
        let with = |f: &dyn Fn(&mut GroupRules)| {
            let mut e = one_web_task();
            f(e.groups.get_mut("sg-aa").unwrap());
            security_changes("br0", &Enforced::default(), &e)
        };
        for bad in ["10.0.0.0/8 accept; flush ruleset", "10.0.0.0/33", "any", "10.0.0.256/8"] {
            let r = with(&|g| g.ingress = vec![allow("-1", None, Peers::Cidr(bad.into()))]);
            assert!(matches!(r, Err(FirewallError::BadRule(_))), "{bad:?}: {r:?}");
        }
        for bad in ["sg-aa }; flush ruleset", "sg-", "default", "sg-zz"] {
            let r = with(&|g| g.egress = vec![allow("-1", None, Peers::Group(bad.into()))]);
            assert!(matches!(r, Err(FirewallError::BadRule(_))), "{bad:?}: {r:?}");
        }
        let r = with(&|g| g.ingress = vec![allow("-1", None, Peers::Cidr("10.1.2.3/8".into()))]);
        assert!(
            r.unwrap().contains("ingress_aa ip saddr 10.0.0.0/8 accept\n"),
            "host bits cleared"
        );
        let r = with(&|g| g.ingress = vec![allow("gre", None, Peers::Cidr("10.0.0.0/8".into()))]);
        assert!(matches!(r, Err(FirewallError::BadRule(_))));
        let r = with(&|g| g.ingress = vec![allow("icmp", Some((8, -1)), Peers::Cidr("10.0.0.0/8".into()))]);
        assert!(r
            .unwrap()
            .contains("ingress_aa ip saddr 10.0.0.0/8 icmp type 8 accept\n"));
        let r = with(&|g| g.ingress = vec![allow("udp", Some((-1, -1)), Peers::Cidr("10.0.0.0/8".into()))]);
        assert!(r
            .unwrap()
            .contains("ingress_aa ip saddr 10.0.0.0/8 meta l4proto udp accept\n"));
    }

    #[test]
    fn a_new_namespace_gets_its_redirect_without_deleting() {
        let r = redirect_ruleset(std::net::Ipv4Addr::new(169, 254, 170, 2), 80, 51679);
        assert!(!r.contains("delete"), "deleting costs the commit a grace period");
        assert!(r.contains("ip daddr 169.254.170.2 tcp dport 80 dnat to 169.254.170.2:51679"));
        assert!(r.contains("type nat hook output priority -100;"));
        assert!(REPLACE_TASK_TABLES.contains("delete table inet gantry_sg\n"));
        assert!(REPLACE_TASK_TABLES.contains("delete table ip gantry_task\n"));
    }

    #[test]
    fn one_table_per_bridge_and_hostile_names_refused() {
        assert!(
            !ruleset("gantry0", None, false).unwrap().contains("forward"),
            "no groups, no filter"
        );
        let r = ruleset("gantry0", None, true).unwrap();
        assert!(!r.contains("dport 53"));
        let with_dns = ruleset("gantry0", Some("10.1.0.1".parse().unwrap()), true).unwrap();
        assert!(with_dns.contains("ip daddr 10.1.0.1 meta l4proto { tcp, udp } th dport 53 accept"));
        assert!(r.contains("table inet gantry_gantry0 {"));
        assert!(r.contains("iifname \"gantry0\" ct state established,related accept"));
        assert!(r.contains("set published {\n\t\ttype inet_proto . inet_service\n\t}"));
        assert!(r.contains(
            "priority filter - 10; policy accept;\n\t\tmeta l4proto . th dport @published meta mark set meta mark | 0x100000\n"
        ));
        assert!(r.contains("iifname \"gantry0\" meta mark & 0x100000 != 0 accept"));
        assert!(r.starts_with("add table inet gantry_gantry0\ndelete table inet gantry_gantry0\n"));
        // Tasks' forwarded traffic: the sender's egress, then the receiver's ingress; replies
        // and tasks outside awsvpc pass; nothing else until a group admits it.
        assert!(r.contains(
            "type filter hook forward priority filter - 5; policy accept;\n\t\tiifname != \"gantry0\" accept\n\t\tct state established,related accept\n\t\tip saddr @open accept\n\t\tjump egress_groups\n\t\tcounter drop"
        ));
        assert!(r.contains(
            "type filter hook forward priority filter - 4; policy accept;\n\t\toifname != \"gantry0\" accept\n\t\tct state established,related accept\n\t\tip daddr @open accept\n\t\tjump ingress_groups\n\t\tcounter drop"
        ));
        assert_eq!(table_name("ge1-x").unwrap(), "gantry_ge1_x");
        for bad in ["", "a b", "x\";flush ruleset;\"", "br/0"] {
            assert!(table_name(bad).is_err(), "{bad:?}");
        }
    }
}
