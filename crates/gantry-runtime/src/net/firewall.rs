//! The node's own firewall for its task bridge: tasks must not reach the node itself (Fargate
//! tasks cannot reach their host, and a node runs the agent, API and etcd ports). Packets that
//! arrive on the bridge for the node are dropped unless they answer a connection the node
//! opened. Task-to-task traffic is bridged, never delivered to the node, so it is untouched;
//! the endpoints meant for tasks (169.254.170.2) live inside each task's own namespace. The
//! one exception is DNS to the node's resolver on the gateway address, when it runs.
//!
//! One nftables table per bridge (`gantry_<bridge>`), replaced atomically in one `nft -f`
//! transaction, so several Gantry nodes on one host never touch each other's rules.

use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("nft not found: install nftables (scripts/install-deps.sh)")]
    NftMissing,
    #[error("bridge name {0:?} cannot name an nftables table")]
    BadName(String),
    #[error("nft -f failed: {stderr}")]
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
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"{bridge}\" ct state established,related accept\n\
         {dns}\
         \t\tiifname \"{bridge}\" counter drop comment \"tasks may not reach the node\"\n\
         \t}}\n\
         }}\n"
    ))
}

/// The task-side rules of its endpoints on `addr`: connections to `addr:from` go to
/// `addr:to`, inside the task's own namespace (as ECS forwards 169.254.170.2:80 to its agent's
/// port), so nothing listens on `from` and the task's own servers may bind it.
pub fn redirect_ruleset(addr: std::net::Ipv4Addr, from: u16, to: u16) -> String {
    format!(
        "add table ip gantry_task\n\
         delete table ip gantry_task\n\
         table ip gantry_task {{\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\tip daddr {addr} tcp dport {from} dnat to {addr}:{to}\n\
         \t}}\n\
         }}\n"
    )
}

pub(crate) fn nft(script: &str) -> Result<(), FirewallError> {
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

/// Removes the bridge's rules (absent is fine).
pub fn remove(bridge: &str) -> Result<(), FirewallError> {
    let t = table_name(bridge)?;
    nft(&format!("add table inet {t}\ndelete table inet {t}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_redirect_replaces_itself() {
        let r = redirect_ruleset(std::net::Ipv4Addr::new(169, 254, 170, 2), 80, 51679);
        assert!(r.starts_with("add table ip gantry_task\ndelete table ip gantry_task\n"));
        assert!(r.contains("ip daddr 169.254.170.2 tcp dport 80 dnat to 169.254.170.2:51679"));
        assert!(r.contains("type nat hook output priority -100;"));
    }

    #[test]
    fn one_table_per_bridge_and_hostile_names_refused() {
        let r = ruleset("gantry0", None).unwrap();
        assert!(!r.contains("dport 53"));
        let with_dns = ruleset("gantry0", Some("10.1.0.1".parse().unwrap())).unwrap();
        assert!(with_dns.contains("ip daddr 10.1.0.1 meta l4proto { tcp, udp } th dport 53 accept"));
        assert!(r.contains("table inet gantry_gantry0 {"));
        assert!(r.contains("iifname \"gantry0\" ct state established,related accept"));
        assert!(r.starts_with("add table inet gantry_gantry0\ndelete table inet gantry_gantry0\n"));
        assert_eq!(table_name("ge1-x").unwrap(), "gantry_ge1_x");
        for bad in ["", "a b", "x\";flush ruleset;\"", "br/0"] {
            assert!(table_name(bad).is_err(), "{bad:?}");
        }
    }
}
