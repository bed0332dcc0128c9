//! `gantry node`: the operator's view of a cluster's nodes, through the store the servers share.

use crate::dev::open_store;
use crate::NodeArgs;
use anyhow::Result;
use gantry_control::{Control, SystemClock};
use std::sync::Arc;

#[derive(clap::Args)]
pub struct NodeCmdArgs {
    #[command(subcommand)]
    cmd: NodeCmd,
    /// The cluster's store: `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`, as the servers'.
    #[arg(long, env = "GANTRY_STORE", global = true)]
    store: Option<String>,
}

#[derive(clap::Subcommand)]
enum NodeCmd {
    /// List the nodes: pool, zone, capacity, status, epoch.
    Ls,
    /// Reclaim a FARGATE_SPOT node as Fargate Spot does: its tasks are interrupted (SIGTERM,
    /// stopCode SpotInterruption) and replaced elsewhere; nothing is placed on it for two
    /// minutes.
    Reclaim { node: String },
    /// Revoke every certificate of a node: every server refuses it within a second, so the
    /// node is declared lost and its tasks replaced. It may join again with a new token.
    Revoke { node: String },
}

pub fn run(args: &NodeArgs, a: NodeCmdArgs) -> Result<i32> {
    let spec = a.store.as_deref().unwrap_or("");
    // A SQLite store belongs to the one process that has it open (its watchers would not see
    // another process's writes).
    anyhow::ensure!(
        spec.starts_with("etcd://"),
        "gantry node acts on a cluster: give the servers' store, --store etcd://HOST:PORT[/PREFIX]"
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let store = open_store(Some(spec), &args.data_dir).await?.store;
        let control = Control::new(store, Arc::new(SystemClock));
        match a.cmd {
            NodeCmd::Ls => list(&control).await,
            NodeCmd::Reclaim { node } => {
                let tasks = control.reclaim_node(&node).await?;
                println!(
                    "node {node}: reclaiming; {} task(s) interrupted (SpotInterruption), no placements for 2 minutes",
                    tasks.len()
                );
                for t in tasks {
                    println!("{t}");
                }
                Ok(0)
            }
            NodeCmd::Revoke { node } => {
                let now = chrono::Utc::now().timestamp_millis();
                let revoked = gantry_link::revocation::revoke(control.store.as_ref(), &node, now).await?;
                anyhow::ensure!(revoked, "no certificate was ever issued to node {node}");
                println!("node {node}: certificates revoked; every server refuses them within a second");
                Ok(0)
            }
        }
    })
}

async fn list(control: &Control) -> Result<i32> {
    let now = chrono::Utc::now().timestamp_millis();
    println!(
        "{:<20} {:<14} {:<14} {:>6} {:>8} {:<10} {:>5}",
        "NODE", "ZONE", "POOL", "CPU", "MEMORY", "STATUS", "EPOCH"
    );
    for n in control.nodes().await? {
        let status = if n.live() && !n.placeable(now) {
            "RECLAIMING"
        } else {
            n.status.as_str()
        };
        println!(
            "{:<20} {:<14} {:<14} {:>6} {:>8} {:<10} {:>5}",
            n.spec.name,
            n.spec.zone.as_deref().unwrap_or("-"),
            n.spec.capacity_provider.as_deref().unwrap_or("-"),
            n.spec.cpu,
            n.spec.memory,
            status,
            n.epoch
        );
    }
    Ok(0)
}
