//! `gantry agent`: one node of a cluster. Joins with a token on first start (its key and
//! certificate stay in `<data-dir>/identity`), then runs the tasks the servers place on it,
//! over the agent protocol (mutual TLS). It never touches the store.

use crate::NodeArgs;
use anyhow::{bail, Context, Result};
use gantry_agent::link::ControlLink;
use gantry_control::nodes::{validate_node_name, NodeSpec};
use gantry_link::client::{join, Identity, RemoteLink};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct AgentArgs {
    /// Servers' agent addresses, e.g. https://10.0.0.1:4567,https://10.0.0.2:4567.
    #[arg(long, env = "GANTRY_SERVER", value_delimiter = ',', required = true)]
    server: Vec<String>,
    /// File holding the join token (needed on first start only).
    #[arg(long, env = "GANTRY_JOIN_TOKEN_FILE")]
    join_token_file: Option<PathBuf>,
    /// The node's name (default: the host name).
    #[arg(long, env = "GANTRY_NODE")]
    node: Option<String>,
    /// Availability zone (ecs.availability-zone); default: the region's first.
    #[arg(long, env = "GANTRY_ZONE")]
    zone: Option<String>,
    /// The capacity provider whose pool this node is in (FARGATE, FARGATE_SPOT or an Auto
    /// Scaling group provider's name); default: every launch type.
    #[arg(long, env = "GANTRY_CAPACITY_PROVIDER")]
    capacity_provider: Option<String>,
    /// CPU units offered to EC2 tasks (default: 1024 per core).
    #[arg(long, env = "GANTRY_NODE_CPU")]
    cpu: Option<i64>,
    /// Memory in MiB offered to EC2 tasks (default: the machine's, less 256 MiB).
    #[arg(long, env = "GANTRY_NODE_MEMORY")]
    memory: Option<i64>,
    /// Ready network namespaces and ephemeral storage filesystems kept warm.
    #[arg(long, env = "GANTRY_WARM_POOL", default_value_t = 4)]
    warm_pool: usize,
    /// The address load balancers reach this node's published host ports at (`instance`
    /// targets); without it, such targets on this node cannot be reached.
    #[arg(long, env = "GANTRY_ADVERTISE_ADDRESS")]
    advertise_address: Option<std::net::Ipv4Addr>,
    /// Resolvers that names outside Cloud Map's namespaces are relayed to, as IP[:PORT]
    /// (comma-separated; default: the nameservers of /etc/resolv.conf).
    #[arg(long, env = "GANTRY_DNS_UPSTREAM", value_delimiter = ',')]
    dns_upstream: Vec<String>,
    /// Serve this node's Prometheus metrics (task start phases, start and pull failures,
    /// essential exits) at `http://ADDR/metrics`; off unless given.
    #[arg(long, env = "GANTRY_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// A server's AWS API address (IP:PORT), relayed into each task's namespace at
    /// 169.254.170.2:51680 (AWS_ENDPOINT_URL) so the SDKs in tasks reach Gantry with their
    /// task role's credentials; without it, tasks get no relay.
    #[arg(long, env = "GANTRY_API_ENDPOINT")]
    api_endpoint: Option<std::net::SocketAddr>,
}

pub fn run(args: &NodeArgs, a: AgentArgs) -> Result<i32> {
    args.start_tracing("gantry-agent");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(args, a))
}

/// Renews the node's certificate when a third of its lifetime is left (checked hourly, and
/// at start); a failed renewal is retried at the next check.
async fn renew_certificate(link: Arc<RemoteLink>, mut cert_pem: String, dir: std::path::PathBuf) {
    loop {
        match gantry_link::pki::renewal_due(&cert_pem, chrono::Utc::now().timestamp()) {
            Ok(true) => match link.renew(&dir).await {
                Ok(id) => {
                    eprintln!("gantry agent: node certificate renewed");
                    cert_pem = id.cert_pem;
                }
                Err(e) => eprintln!("gantry agent: {e:#}; retrying within the hour"),
            },
            Ok(false) => {}
            Err(e) => eprintln!("gantry agent: checking the node certificate: {e:#}"),
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// The node's identity: from its data dir, or by joining now.
async fn identity(args: &NodeArgs, a: &AgentArgs, name: &str) -> Result<Identity> {
    let dir = args.data_dir.join("identity");
    if let Some(id) = Identity::load(&dir)? {
        if id.node()? != name {
            bail!(
                "this data dir belongs to node {}, not {name}: use another --data-dir",
                id.node()?
            );
        }
        return Ok(id);
    }
    let Some(f) = &a.join_token_file else {
        bail!("this node has not joined yet: give it --join-token-file (from `gantry server token create`)");
    };
    let token = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
    let id = join(&a.server, &token, name).await.context("joining the cluster")?;
    id.save(&dir)?;
    eprintln!("gantry agent: joined as {name}");
    Ok(id)
}

async fn serve(args: &NodeArgs, a: AgentArgs) -> Result<i32> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let name = a.node.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    });
    validate_node_name(&name).map_err(anyhow::Error::msg)?;
    let id = identity(args, &a, &name).await?;
    let remote = Arc::new(RemoteLink::new(a.server.clone(), &id)?);
    tokio::spawn(renew_certificate(
        remote.clone(),
        id.cert_pem.clone(),
        args.data_dir.join("identity"),
    ));
    let link: Arc<dyn ControlLink> = remote.clone();
    // Tasks resolve through the node's resolver (Cloud Map names over the agent protocol).
    let mut node_config = args.node_config()?;
    node_config.network.node_resolver = true;
    let gateway = node_config.network.subnet.gateway();
    // New namespaces get the metadata endpoint's redirect in the warm pool, off a start.
    node_config.network.namespace_rules = Some(gantry_agent::base_namespace_rules());
    node_config.network.security_groups = true;
    let subnet = node_config.network.subnet.to_string();
    let node = Arc::new(gantry_runtime::task::Node::open(node_config)?);

    // Startup sweep: keep what the servers still track as running here.
    let tracked = loop {
        match link.list_assigned(&Default::default()).await {
            Ok(t) => break t.changed,
            Err(e) => {
                eprintln!("gantry agent: reaching the servers: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    // (A listing knowing no record leaves the STOPPED ones out.)
    let tracked: std::collections::HashSet<String> = tracked.into_iter().map(|(_, r, _)| r.id().to_string()).collect();
    node.sweep(|t| tracked.contains(t))?;

    let (cpu, memory) = crate::dev::node_capacity(a.cpu, a.memory);
    let spec = NodeSpec {
        name: name.clone(),
        zone: a.zone.clone(),
        capacity_provider: a.capacity_provider.clone(),
        cpu,
        memory,
        address: a.advertise_address,
        subnet: Some(subnet),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let dns_link = link.clone();
    let fetch: gantry_dns::Fetch = Arc::new(move |after| {
        let link = dns_link.clone();
        Box::pin(async move { link.dns_records(after).await.map_err(|e| e.to_string()) })
    });
    crate::dev::start_resolver(gateway, &a.dns_upstream, fetch, stop_rx.clone()).await?;
    let usage_every = std::time::Duration::from_secs(args.metrics_interval);
    if let Some(addr) = a.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics listener {addr}"))?;
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(|| async { ([("content-type", gantry_prom::CONTENT_TYPE)], gantry_prom::render(&[])) }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    let agent = gantry_agent::Agent::new(link, node.clone(), spec, usage_every, a.api_endpoint);
    agent.register().await;
    // ECS Exec: the servers holding sessions' streams ask this node to dial them back.
    let runner: Arc<dyn gantry_control::exec::ExecRunner> = Arc::new(gantry_agent::AgentExec(agent.clone()));
    tokio::spawn(gantry_link::exec::serve_requests(remote, runner));
    tokio::spawn(gantry_agent::keep_pool_warm(node.clone(), a.warm_pool, stop_rx.clone()));
    let running = tokio::spawn(agent.run(stop_rx));
    println!("gantry agent: node {name} running tasks for {}", a.server.join(","));
    crate::shutdown_signal("gantry agent").await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), running).await;
    if let Err(e) = node.drain_pools() {
        eprintln!("gantry agent: removing the warm pool: {e}");
    }
    eprintln!("gantry agent: stopped; tasks keep running under their shims until the next start");
    Ok(0)
}
