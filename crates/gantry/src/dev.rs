//! `gantry dev`: the whole platform in one process on one machine: the AWS API front, the
//! control plane over an embedded SQLite store (or etcd with `--store`), and an in-process
//! node agent.

use crate::NodeArgs;
use anyhow::{Context, Result};
use gantry_agent::link::LocalLink;
use gantry_aws::server::{key_path, StoredKey};
use gantry_control::logfeed::Logs;
use gantry_control::logstore::LogStore;
use gantry_control::metrics::{MetricData, MetricStore, Metrics};
use gantry_control::nodes::NodeSpec;
use gantry_control::{Control, SystemClock};
use gantry_store::{SqliteStore, Store};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct DevArgs {
    /// Address the API listens on.
    #[arg(long, env = "GANTRY_LISTEN", default_value = "127.0.0.1:4566")]
    listen: SocketAddr,
    /// Region the written AWS profile uses.
    #[arg(long, env = "GANTRY_REGION", default_value = "us-east-1")]
    region: String,
    /// Ready network namespaces and ephemeral storage filesystems kept warm.
    #[arg(long, env = "GANTRY_WARM_POOL", default_value_t = 4)]
    warm_pool: usize,
    /// Do not write the `gantry` profile into the AWS config files.
    #[arg(long)]
    no_profile: bool,
    /// A bearer token `GET /metrics` (Prometheus) requires; open to the API's listeners
    /// when unset.
    #[arg(long, env = "GANTRY_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// CPU units the node offers EC2 tasks (default: 1024 per core).
    #[arg(long, env = "GANTRY_NODE_CPU")]
    cpu: Option<i64>,
    /// Memory in MiB the node offers EC2 tasks (default: the machine's, less 256 MiB).
    #[arg(long, env = "GANTRY_NODE_MEMORY")]
    memory: Option<i64>,
    /// Where the state lives: `sqlite:PATH` (default: state.db in the data dir) or
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
    #[arg(long, env = "GANTRY_STORE")]
    store: Option<String>,
    #[command(flatten)]
    lb: LbArgs,
    #[command(flatten)]
    limits: crate::api_limits::ApiLimitArgs,
    /// Resolvers that names outside Cloud Map's namespaces are relayed to, as IP[:PORT]
    /// (comma-separated; default: the nameservers of /etc/resolv.conf).
    #[arg(long, env = "GANTRY_DNS_UPSTREAM", value_delimiter = ',')]
    pub dns_upstream: Vec<String>,
}

/// Starts the tasks' DNS resolver on the node bridge's gateway, answering Cloud Map names
/// from `fetch` and relaying the rest to `--dns-upstream` (or the host's resolvers).
pub async fn start_resolver(
    gateway: std::net::Ipv4Addr,
    upstream: &[String],
    fetch: gantry_dns::Fetch,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let opts = gantry_dns::Options {
        listen: gantry_dns::listen_on(gateway),
        upstreams: dns_upstreams(upstream)?,
    };
    let listen = opts.listen;
    gantry_dns::bind_and_run(fetch, opts, stop)
        .await
        .with_context(|| format!("binding the tasks' DNS resolver on {listen}"))?;
    Ok(())
}

/// The resolvers `--dns-upstream` names, or the host's.
fn dns_upstreams(given: &[String]) -> Result<Vec<SocketAddr>> {
    if given.is_empty() {
        let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        return Ok(gantry_dns::upstreams_from_resolv_conf(&conf));
    }
    given
        .iter()
        .map(|g| {
            g.parse::<SocketAddr>()
                .or_else(|_| g.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .with_context(|| format!("--dns-upstream {g:?} is not IP or IP:PORT"))
        })
        .collect()
}

/// Where load balancers listen and how their names resolve.
#[derive(clap::Args, Clone)]
pub struct LbArgs {
    /// Loopback block load balancers get their addresses from; each Gantry instance sharing
    /// a host needs its own.
    #[arg(long, env = "GANTRY_LB_NETWORK", default_value = "127.77.0.0/16")]
    pub lb_network: gantry_control::elb::LbNetwork,
    /// Hosts file the load balancers' DNS names are written to.
    #[arg(long, env = "GANTRY_HOSTS_FILE", default_value = "/etc/hosts")]
    pub hosts_file: PathBuf,
}

impl LbArgs {
    pub fn elb(&self, control: &Control) -> gantry_control::elb::Elb {
        gantry_control::elb::Elb::new(control.store.clone(), control.clock.clone()).with_network(self.lb_network)
    }

    /// Runs the load balancer data plane until `stop`.
    /// Serves the load balancers; their AWS/ApplicationELB metrics go to `metrics` every
    /// `every`.
    pub fn spawn_data_plane(
        &self,
        control: &Control,
        (metrics, every): (Metrics, Duration),
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let opts = gantry_lb::Options {
            hosts_file: Some(self.hosts_file.clone()),
            tag: self.lb_network.to_string(),
            metrics: Some(metrics),
            metrics_every: every,
        };
        tokio::spawn(gantry_lb::run(self.elb(control), control.store.clone(), opts, stop))
    }
}

/// The state store a `--store` names, and the etcd client when it is etcd (for elections).
pub struct Opened {
    pub store: Arc<dyn Store>,
    pub etcd: Option<Arc<gantry_store::EtcdStore>>,
}

/// Opens the state store a `--store` names.
pub async fn open_store(spec: Option<&str>, data_dir: &Path) -> Result<Opened> {
    let spec = spec.unwrap_or("");
    if let Some(rest) = spec.strip_prefix("etcd://") {
        let (hosts, prefix) = match rest.split_once('/') {
            Some((h, p)) => (h, format!("/{}", p.trim_end_matches('/'))),
            None => (rest, String::new()),
        };
        let endpoints: Vec<String> = hosts.split(',').filter(|h| !h.is_empty()).map(str::to_string).collect();
        anyhow::ensure!(!endpoints.is_empty(), "--store etcd:// needs at least one HOST:PORT");
        let store = gantry_store::EtcdStore::connect(&endpoints, &prefix).await?;
        // Fail now, clearly, rather than on the first request.
        store
            .revision()
            .await
            .with_context(|| format!("reaching etcd at {hosts}"))?;
        let store = Arc::new(store);
        return Ok(Opened {
            store: store.clone(),
            etcd: Some(store),
        });
    }
    let path = match spec.strip_prefix("sqlite:") {
        Some(p) => PathBuf::from(p),
        None if spec.is_empty() => data_dir.join("state.db"),
        None => anyhow::bail!("--store must be sqlite:PATH or etcd://HOST:PORT[,...][/PREFIX], got {spec:?}"),
    };
    Ok(Opened {
        store: Arc::new(SqliteStore::open(&path)?),
        etcd: None,
    })
}

/// What this machine offers: 1024 CPU units per core, its memory less what the node itself
/// keeps (as the ECS agent reserves memory for the OS).
pub fn node_capacity(cpu: Option<i64>, memory: Option<i64>) -> (i64, i64) {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as i64;
    let mem_kib: i64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1 << 20);
    (
        cpu.unwrap_or(cores * 1024),
        memory.unwrap_or((mem_kib / 1024 - 256).max(256)),
    )
}

#[derive(serde::Serialize, serde::Deserialize, Clone)]
pub struct DevCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub account_id: String,
}

fn random_from(alphabet: &[u8], n: usize) -> String {
    let hex = gantry_control::random_hex(n);
    hex.as_bytes()
        .chunks(2)
        .map(|c| {
            alphabet
                [u8::from_str_radix(std::str::from_utf8(c).unwrap_or("0"), 16).unwrap_or(0) as usize % alphabet.len()]
                as char
        })
        .collect()
}

/// Credentials: from the environment if set (scripts, CI), else those made on first start.
pub async fn credentials(store: &dyn Store) -> Result<DevCredentials> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let creds = match (env("GANTRY_ACCESS_KEY_ID"), env("GANTRY_SECRET_ACCESS_KEY")) {
        (Some(a), Some(s)) => DevCredentials {
            access_key_id: a,
            secret_access_key: s,
            account_id: env("GANTRY_ACCOUNT_ID").unwrap_or_else(|| "000000000000".into()),
        },
        _ => match store.get("/iam/dev-credentials").await? {
            Some(kv) => serde_json::from_slice(&kv.value)?,
            None => {
                let c = DevCredentials {
                    access_key_id: format!("AKIA{}", random_from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)),
                    secret_access_key: random_from(
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
                        40,
                    ),
                    account_id: env("GANTRY_ACCOUNT_ID").unwrap_or_else(|| {
                        format!(
                            "{}",
                            100_000_000_000u64
                                + u64::from_str_radix(&gantry_control::random_hex(5), 16).unwrap_or(0)
                                    % 899_999_999_999
                        )
                    }),
                };
                match store.create("/iam/dev-credentials", &serde_json::to_vec(&c)?).await {
                    Ok(_) => c,
                    // Another server made them at the same moment: use those.
                    Err(gantry_store::StoreError::AlreadyExists { .. }) => {
                        match store.get("/iam/dev-credentials").await? {
                            Some(kv) => serde_json::from_slice(&kv.value)?,
                            None => anyhow::bail!("the bootstrap credentials vanished while starting"),
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        },
    };
    if creds.account_id.len() != 12 || !creds.account_id.bytes().all(|b| b.is_ascii_digit()) {
        anyhow::bail!("GANTRY_ACCOUNT_ID must be 12 digits");
    }
    let key = StoredKey {
        secret_access_key: creds.secret_access_key.clone(),
        account_id: creds.account_id.clone(),
        session_token: None,
        user: None,
        status: "Active".into(),
        created: 0.0,
        role: None,
    };
    let path = key_path(&creds.access_key_id);
    let data = serde_json::to_vec(&key)?;
    match store.get(&path).await? {
        Some(kv) if kv.value != data => {
            store.update(&path, &data, kv.mod_revision).await?;
        }
        Some(_) => {}
        None => match store.create(&path, &data).await {
            Ok(_) | Err(gantry_store::StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        },
    }
    Ok(creds)
}

/// Replaces one `[section]` of an INI file, keeping every other section as it was.
pub fn merge_ini(existing: &str, section: &str, body: &[(&str, String)]) -> String {
    let header = format!("[{section}]");
    let mut out = String::new();
    let mut skipping = false;
    for line in existing.lines() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            skipping = t == header;
            if skipping {
                continue;
            }
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str(&header);
    out.push('\n');
    for (k, v) in body {
        out.push_str(&format!("{k} = {v}\n"));
    }
    out
}

pub fn write_profile(creds: &DevCredentials, region: &str, endpoint: &str) -> Result<(PathBuf, PathBuf)> {
    let cred_file = crate::client::aws_file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
    let conf_file = crate::client::aws_file("AWS_CONFIG_FILE", "config");
    let write = |p: &Path, section: &str, body: &[(&str, String)], mode: u32| -> Result<()> {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        let existing = std::fs::read_to_string(p).unwrap_or_default();
        let tmp = p.with_extension("gantry-tmp");
        std::fs::write(&tmp, merge_ini(&existing, section, body))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, p)?;
        Ok(())
    };
    write(
        &cred_file,
        "gantry",
        &[
            ("aws_access_key_id", creds.access_key_id.clone()),
            ("aws_secret_access_key", creds.secret_access_key.clone()),
        ],
        0o600,
    )?;
    write(
        &conf_file,
        "profile gantry",
        &[
            ("region", region.to_string()),
            ("output", "json".into()),
            ("endpoint_url", endpoint.to_string()),
        ],
        0o644,
    )?;
    Ok((cred_file, conf_file))
}

/// A TCP socket bound to `addr` but not yet accepting connections.
fn bind_unlistened(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As TcpListener::bind does: a restart can rebind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

pub fn run(args: &NodeArgs, a: DevArgs) -> Result<i32> {
    args.start_tracing("gantry-dev");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(args, a))
}

async fn serve(args: &NodeArgs, a: DevArgs) -> Result<i32> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let store = open_store(a.store.as_deref(), &args.data_dir).await?.store;
    let logs = Arc::new(Logs::local(Arc::new(LogStore::open(&args.data_dir.join("logs.db"))?)));
    let metric_data = Arc::new(MetricData::local(Arc::new(MetricStore::open(
        &args.data_dir.join("metrics.db"),
    )?)));
    let creds = credentials(store.as_ref()).await?;
    let mut node_config = args.node_config()?;
    node_config.network.node_resolver = true;
    let gateway = node_config.network.subnet.gateway();
    // New namespaces get the metadata endpoint's redirect in the warm pool, off a start.
    node_config.network.namespace_rules = Some(gantry_agent::base_namespace_rules());
    node_config.network.security_groups = true;
    let subnet = node_config.network.subnet.to_string();
    let node = Arc::new(gantry_runtime::task::Node::open(node_config)?);
    let mut control = Control::new(store.clone(), Arc::new(SystemClock));
    control.prices = args.prices.prices()?;
    control.quotas = Arc::new(a.limits.quotas());

    // Startup sweep: keep tasks the control plane still tracks (their exit codes are
    // collected by the agent); remove everything else a crash left behind.
    let tracked: std::collections::HashSet<String> = control
        .all_tasks()
        .await?
        .into_iter()
        .filter(|(_, r, _)| r.task.last_status != "STOPPED")
        .map(|(_, r, _)| r.id().to_string())
        .collect();
    let report = node.sweep(|t| tracked.contains(t))?;
    if report.tasks_removed + report.netns_removed + report.cgroups_removed > 0 {
        eprintln!(
            "gantry: startup sweep removed {} tasks, {} namespaces, {} cgroups left by a crash",
            report.tasks_removed, report.netns_removed, report.cgroups_removed
        );
    }

    // Bound now (the profile names the port), listening only once the API serves: a client
    // that connects is then answered, and finds the profile already written.
    let socket = bind_unlistened(a.listen).with_context(|| format!("binding {}", a.listen))?;
    let addr = socket.local_addr()?;
    let endpoint = format!("http://{addr}");
    if !a.no_profile {
        let (c, f) = write_profile(&creds, &a.region, &endpoint)?;
        eprintln!("gantry: wrote profile 'gantry' to {} and {}", c.display(), f.display());
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let dns_control = control.clone();
    let fetch: gantry_dns::Fetch = Arc::new(move |after| {
        let control = dns_control.clone();
        Box::pin(async move {
            gantry_agent::link::dns_records(&control, after)
                .await
                .map_err(|e| e.to_string())
        })
    });
    start_resolver(gateway, &a.dns_upstream, fetch, stop_rx.clone()).await?;
    // The node: registered as "local", driven by an in-process agent over the local link.
    let (cpu, memory) = node_capacity(a.cpu, a.memory);
    let spec = NodeSpec {
        name: LOCAL_NODE.into(),
        zone: None,
        capacity_provider: None,
        cpu,
        memory,
        // Published host ports are relayed on every host address, loopback included.
        address: Some(std::net::Ipv4Addr::LOCALHOST),
        subnet: Some(subnet),
    };
    let metrics = Metrics::new(metric_data.clone(), Arc::new(SystemClock));
    let (secrets, parameters) = args
        .secrets(store.clone(), false)?
        .expect("an unshared store always has a key");
    let stores = Arc::new(gantry_agent::link::SecretStores {
        secrets: secrets.clone(),
        parameters: parameters.clone(),
    });
    let link =
        Arc::new(LocalLink::new(control.clone(), logs.clone(), metrics.clone(), LOCAL_NODE).with_secrets(stores));
    let usage_every = Duration::from_secs(args.metrics_interval);
    // Tasks reach this process's API through a relay (a wildcard listen address is reached
    // on loopback).
    let mut api = a.listen;
    if api.ip().is_unspecified() {
        api.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let agent = gantry_agent::Agent::new(link, node.clone(), spec, usage_every, Some(api));
    // Registered before anything can place a task, and before the controllers judge it.
    agent.register().await;
    let exec: Arc<dyn gantry_control::exec::ExecRunner> = Arc::new(gantry_agent::AgentExec(agent.clone()));
    let agent_task = tokio::spawn(agent.run(stop_rx.clone()));
    tokio::spawn(gantry_agent::keep_pool_warm(node.clone(), a.warm_pool, stop_rx.clone()));
    tokio::spawn(housekeeping(logs.clone(), metric_data.clone(), stop_rx.clone()));
    tokio::spawn(gantry_control::controllers::run(
        control.clone(),
        metrics.clone(),
        Default::default(),
        stop_rx.clone(),
    ));
    let data_plane =
        a.lb.spawn_data_plane(&control, (metrics.clone(), usage_every), stop_rx.clone());
    let control_for_exit = control.clone();
    let elb = a.lb.elb(&control);
    let api = gantry_aws::Api {
        control,
        logs,
        metrics,
        metrics_token: a.metrics_token.clone(),
        throttle: Arc::new(gantry_control::quotas::TokenBuckets::new(a.limits.request_rate())),
        elb,
        secrets: Some(secrets),
        parameters: Some(parameters),
        exec: Some(exec),
    };
    println!(
        "gantry dev: listening on {endpoint} (account {}, region {})",
        creds.account_id, a.region
    );
    println!("  try: aws --profile gantry ecs list-clusters");
    gantry_aws::front::serve(
        socket.listen(1024)?,
        gantry_aws::router(api),
        a.limits.front(),
        crate::shutdown_signal("gantry dev"),
    )
    .await?;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), agent_task).await;
    // Its hosts file lines are removed on the way out.
    let _ = tokio::time::timeout(Duration::from_secs(5), data_plane).await;
    shutdown_report(&control_for_exit, &node, args).await;
    Ok(0)
}

/// The node `gantry dev` runs its tasks on (the name its task records have always carried).
const LOCAL_NODE: &str = "local";

/// Expires log events past their groups' retention and rolls metric datapoints up to their
/// age's resolution (each copy on its own: both only depend on the data and the clock, so
/// copies agree again once each has swept).
pub async fn housekeeping(logs: Arc<Logs>, metrics: Arc<MetricData>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let now = chrono::Utc::now().timestamp_millis();
        if let Err(e) = logs.local_copy().expire(now) {
            tracing::warn!(error = %e, "expiring log events");
        }
        if let Err(e) = metrics.local_copy().roll_up(now) {
            tracing::warn!(error = %e, "rolling up metric datapoints");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A clean exit is like an agent restart: tasks keep running under their shims and the next
/// `gantry dev` picks them up. Say so, with the count and how to stop them; the warm pool's
/// namespaces are not tasks and go now.
async fn shutdown_report(control: &Control, node: &gantry_runtime::task::Node, args: &NodeArgs) {
    if let Err(e) = node.drain_pools() {
        eprintln!("gantry dev: removing the warm pool: {e}");
    }
    let running = control
        .all_tasks()
        .await
        .map(|ts| ts.iter().filter(|(_, r, _)| r.task.last_status != "STOPPED").count())
        .unwrap_or(0);
    if running == 0 {
        eprintln!("gantry dev: stopped; no tasks are running");
        return;
    }
    eprintln!(
        "gantry dev: stopped; {running} task(s) keep running under their shims and are picked up by the next `gantry dev`.\n  \
         To stop them all and remove everything Gantry made on this node: gantry --data-dir {} --run-dir {} --bridge {} debug sweep --all",
        args.data_dir.display(),
        args.run_dir.display(),
        args.bridge
    );
}

#[cfg(test)]
mod tests {
    use super::merge_ini;

    #[test]
    fn profile_merge_keeps_other_profiles() {
        let existing = "[default]\naws_access_key_id = A\n\n[gantry]\naws_access_key_id = OLD\n\n[other]\nx = 1\n";
        let out = merge_ini(existing, "gantry", &[("aws_access_key_id", "NEW".into())]);
        assert!(out.contains("[default]\naws_access_key_id = A"));
        assert!(out.contains("[other]\nx = 1"));
        assert!(out.contains("[gantry]\naws_access_key_id = NEW"));
        assert!(!out.contains("OLD"));
        assert_eq!(merge_ini("", "gantry", &[("k", "v".into())]), "[gantry]\nk = v\n");
    }
}
