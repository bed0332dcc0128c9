//! The node's own firewall for its task bridge: tasks must not reach the node itself (Fargate
//! tasks cannot reach their host, and a node runs the agent, API and etcd ports). Packets that
//! arrive on the bridge for the node are dropped unless they answer a connection the node
//! opened. Task-to-task traffic is bridged, never delivered to the node, so it is untouched;
//! the endpoints meant for tasks (169.254.170.2) live inside each task's own namespace. The
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

use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("nft not found: install nftables (scripts/install-deps.sh)")]
    NftMissing,
    #[error("bridge name {0:?} cannot name an nftables table")]
    BadName(String),
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
/// the gateway) is let through.
pub fn ruleset(bridge: &str, resolver: Option<std::net::Ipv4Addr>) -> Result<String, FirewallError> {
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
         }}\n",
        mark = PUBLISHED_MARK
    ))
}

// A task namespace's rules are built so that a task's start only adds: deleting anything in
// an nftables transaction (a rule, a chain, a table) makes the commit wait for an RCU grace
// period, about 13 ms here, where a transaction that only adds commits in well under one
// (`scripts/bench-nft.sh`). So a new namespace gets its tables once, with empty allowance
// chains, and a task's allowances are added to those chains; only a later change of its
// groups flushes them.

/// The table of a task's own endpoints on `addr`: connections to `addr:from` go to
/// `addr:to`, inside the task's own namespace (as ECS forwards 169.254.170.2:80 to its agent's
/// port), so nothing listens on `from` and the task's own servers may bind it. For a new
/// namespace (it only adds).
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

/// The tables a task namespace holds, removed first: for a namespace whose tables may be
/// missing or laid out otherwise (made without the base rules, or by an older Gantry). The
/// deletion costs the commit a grace period, so a new namespace does without it.
pub const REPLACE_TASK_TABLES: &str = "add table ip gantry_task\ndelete table ip gantry_task\n\
     add table inet gantry_sg\ndelete table inet gantry_sg\n";

/// Traffic a task's security groups allow in one direction: a protocol ("tcp", "udp",
/// "icmp", or "-1" for all), ports (ICMP: type and code; None or -1: any), and the peers (CIDR
/// blocks and addresses).
#[derive(Debug, Clone, PartialEq)]
pub struct Allow {
    pub protocol: String,
    pub ports: Option<(i64, i64)>,
    pub peers: Vec<String>,
}

fn allow_line(chain: &str, dir: &str, a: &Allow) -> Option<String> {
    if a.peers.is_empty() {
        return None;
    }
    let peers = format!("{{ {} }}", a.peers.join(", "));
    let matcher = match (a.protocol.as_str(), a.ports) {
        ("-1", _) => String::new(),
        ("icmp", Some((t, _))) if t >= 0 => format!(" icmp type {t}"),
        ("icmp", _) => " meta l4proto icmp".to_string(),
        (p @ ("tcp" | "udp"), Some((from, to))) if from >= 0 => {
            if from == to {
                format!(" {p} dport {from}")
            } else {
                format!(" {p} dport {from}-{to}")
            }
        }
        (p @ ("tcp" | "udp"), _) => format!(" meta l4proto {p}"),
        _ => return None,
    };
    Some(format!(
        "add rule inet gantry_sg {chain} ip {dir} {peers}{matcher} accept\n"
    ))
}

/// A task namespace's filter, fail-closed: nothing in or out but loopback, replies (stateful)
/// and the node itself (load balancers, health checks and published ports come from it; its
/// resolver is on it), then what the `allow_in` and `allow_out` chains accept, which start
/// empty. For a new namespace (it only adds).
pub fn task_filter_base(node: std::net::Ipv4Addr) -> String {
    format!(
        "table inet gantry_sg {{\n\
         \tchain allow_in {{\n\
         \t}}\n\
         \tchain allow_out {{\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy drop;\n\
         \t\tiifname \"lo\" accept\n\
         \t\tct state established,related accept\n\
         \t\tip saddr {node} accept comment \"the node\"\n\
         \t\tjump allow_in\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority filter; policy drop;\n\
         \t\toifname \"lo\" accept\n\
         \t\tct state established,related accept\n\
         \t\tip daddr {node} accept comment \"the node\"\n\
         \t\tjump allow_out\n\
         \t}}\n\
         }}\n"
    )
}

/// A task's security group allowances, replacing what its allowance chains held (flushing an
/// empty chain deletes nothing, so a task's first allowances commit without the wait).
pub fn task_allowances(ingress: &[Allow], egress: &[Allow]) -> String {
    let rules = |chain: &str, dir: &str, allows: &[Allow]| -> String {
        allows.iter().filter_map(|a| allow_line(chain, dir, a)).collect()
    };
    format!(
        "flush chain inet gantry_sg allow_in\n\
         flush chain inet gantry_sg allow_out\n\
         {}{}",
        rules("allow_in", "saddr", ingress),
        rules("allow_out", "daddr", egress)
    )
}

/// Everything allowed both ways: a task outside awsvpc mode has no security groups.
pub fn task_allows_all() -> String {
    "flush chain inet gantry_sg allow_in\n\
     flush chain inet gantry_sg allow_out\n\
     add rule inet gantry_sg allow_in accept\n\
     add rule inet gantry_sg allow_out accept\n"
        .to_string()
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
pub fn isolate_node(bridge: &str, resolver: Option<std::net::Ipv4Addr>) -> Result<(), FirewallError> {
    nft(&ruleset(bridge, resolver)?)
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

    #[test]
    fn security_group_rules_go_in_the_allowance_chains() {
        let allow = |p: &str, ports, peers: &[&str]| Allow {
            protocol: p.into(),
            ports,
            peers: peers.iter().map(|x| x.to_string()).collect(),
        };
        let r = task_allowances(
            &[
                allow("tcp", Some((80, 80)), &["10.1.0.5", "10.1.0.6"]),
                allow("udp", Some((5000, 5010)), &["0.0.0.0/0"]),
                allow("icmp", Some((8, -1)), &["10.0.0.0/8"]),
                allow("tcp", Some((22, 22)), &[]),
            ],
            &[allow("-1", None, &["0.0.0.0/0"])],
        );
        assert!(r.starts_with("flush chain inet gantry_sg allow_in\nflush chain inet gantry_sg allow_out\n"));
        assert!(r.contains("add rule inet gantry_sg allow_in ip saddr { 10.1.0.5, 10.1.0.6 } tcp dport 80 accept\n"));
        assert!(r.contains("allow_in ip saddr { 0.0.0.0/0 } udp dport 5000-5010 accept\n"));
        assert!(r.contains("allow_in ip saddr { 10.0.0.0/8 } icmp type 8 accept\n"));
        assert!(!r.contains("dport 22"), "a group with no members allows nothing");
        assert!(r.contains("add rule inet gantry_sg allow_out ip daddr { 0.0.0.0/0 } accept\n"));
        assert!(!r.contains("delete"), "a task's allowances only add to its chains");
    }

    #[test]
    fn a_new_namespace_is_fail_closed_and_built_without_deleting() {
        let node = std::net::Ipv4Addr::new(10, 1, 0, 1);
        let r = task_filter_base(node) + &redirect_ruleset(std::net::Ipv4Addr::new(169, 254, 170, 2), 80, 51679);
        assert!(!r.contains("delete"), "deleting costs the commit a grace period");
        assert_eq!(r.matches("policy drop;").count(), 2);
        assert!(r.contains("ip saddr 10.1.0.1 accept") && r.contains("ip daddr 10.1.0.1 accept"));
        assert!(r.contains("\t\tjump allow_in\n") && r.contains("\t\tjump allow_out\n"));
        assert!(r.contains("ip daddr 169.254.170.2 tcp dport 80 dnat to 169.254.170.2:51679"));
        assert!(r.contains("type nat hook output priority -100;"));
        assert!(REPLACE_TASK_TABLES.contains("delete table inet gantry_sg\n"));
        assert!(REPLACE_TASK_TABLES.contains("delete table ip gantry_task\n"));
    }

    #[test]
    fn one_table_per_bridge_and_hostile_names_refused() {
        let r = ruleset("gantry0", None).unwrap();
        assert!(!r.contains("dport 53"));
        let with_dns = ruleset("gantry0", Some("10.1.0.1".parse().unwrap())).unwrap();
        assert!(with_dns.contains("ip daddr 10.1.0.1 meta l4proto { tcp, udp } th dport 53 accept"));
        assert!(r.contains("table inet gantry_gantry0 {"));
        assert!(r.contains("iifname \"gantry0\" ct state established,related accept"));
        assert!(r.contains("set published {\n\t\ttype inet_proto . inet_service\n\t}"));
        assert!(r.contains(
            "priority filter - 10; policy accept;\n\t\tmeta l4proto . th dport @published meta mark set meta mark | 0x100000\n"
        ));
        assert!(r.contains("iifname \"gantry0\" meta mark & 0x100000 != 0 accept"));
        assert!(r.starts_with("add table inet gantry_gantry0\ndelete table inet gantry_gantry0\n"));
        assert_eq!(table_name("ge1-x").unwrap(), "gantry_ge1_x");
        for bad in ["", "a b", "x\";flush ruleset;\"", "br/0"] {
            assert!(table_name(bad).is_err(), "{bad:?}");
        }
    }
}
