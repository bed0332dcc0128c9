//! `gantry server`: the AWS APIs and the control plane over a shared store, with the agent
//! protocol for remote nodes. Any number of servers may share one etcd: each answers the APIs;
//! the controllers run only on the one holding the etcd lease (`--store sqlite:` means a single
//! server, always leading).

use crate::dev::{credentials, open_store, write_profile};
use crate::NodeArgs;
use anyhow::{Context, Result};
use gantry_control::controllers::{self, Settings};
use gantry_control::feed::Seeder;
use gantry_control::logfeed::Logs;
use gantry_control::logstore::LogStore;
use gantry_control::metrics::{MetricData, MetricStore, Metrics};
use gantry_control::{Control, SystemClock};
use gantry_link::pki::{self, Ca};
use gantry_link::seed;
use gantry_link::server::LinkServer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    #[command(subcommand)]
    cmd: Option<ServerCmd>,
    /// Where the state lives: `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (shared by every
    /// server) or `sqlite:PATH` (one server).
    #[arg(long, env = "GANTRY_STORE", global = true)]
    store: Option<String>,
    /// Address the AWS APIs listen on.
    #[arg(long, env = "GANTRY_LISTEN", default_value = "127.0.0.1:4566")]
    listen: SocketAddr,
    /// Address agents connect to (mutual TLS).
    #[arg(long, env = "GANTRY_AGENT_LISTEN", default_value = "127.0.0.1:4567")]
    agent_listen: SocketAddr,
    /// Names and addresses agents dial this server by (its certificate's); the agent
    /// address, localhost and 127.0.0.1 are always included.
    #[arg(long = "agent-san", value_delimiter = ',')]
    agent_san: Vec<String>,
    /// The URL agents and the other servers reach this server's agent listener by: for ECS
    /// Exec (an agent dials the server holding the session's stream) and for re-seeding a
    /// server's copy of the logs and metrics. Default: https:// and the first --agent-san, or
    /// the agent listen address, with its port.
    #[arg(long, env = "GANTRY_AGENT_ADVERTISE")]
    agent_advertise: Option<String>,
    /// Seconds without a heartbeat after which a node is lost.
    #[arg(long, env = "GANTRY_NODE_TIMEOUT", default_value_t = 15)]
    node_timeout: u64,
    /// With etcd: how long, in seconds, the logs and metrics feeds keep entries for a server
    /// that is away (one away longer re-seeds its copies from another server's).
    #[arg(long, env = "GANTRY_LOG_FEED_WINDOW", default_value_t = 3600)]
    log_feed_window: u64,
    /// Region the written AWS profile uses.
    #[arg(long, env = "GANTRY_REGION", default_value = "us-east-1")]
    region: String,
    #[command(flatten)]
    lb: crate::dev::LbArgs,
    #[command(flatten)]
    limits: crate::api_limits::ApiLimitArgs,
    /// Serve the load balancers' listeners on this host (one server per host can).
    #[arg(long)]
    serve_load_balancers: bool,
    /// Do not write the `gantry` profile into the AWS config files.
    #[arg(long)]
    no_profile: bool,
    /// A bearer token `GET /metrics` (Prometheus) requires; open to the API's listeners
    /// when unset.
    #[arg(long, env = "GANTRY_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
}

#[derive(clap::Subcommand)]
enum ServerCmd {
    /// Join tokens for agents.
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(clap::Subcommand)]
enum TokenCmd {
    /// Print a new join token.
    Create {
        /// How long it can be used, in hours.
        #[arg(long, default_value_t = 24)]
        ttl_hours: u64,
    },
}

pub fn run(args: &NodeArgs, a: ServerArgs) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        match a.cmd {
            Some(ServerCmd::Token(TokenCmd::Create { ttl_hours })) => {
                let store = open_store(a.store.as_deref(), &args.data_dir).await?.store;
                let ca = Ca::load_or_create(store.as_ref()).await?;
                let ttl = Duration::from_secs(ttl_hours * 3600);
                let now = chrono::Utc::now().timestamp_millis();
                println!("{}", pki::create_token(store.as_ref(), &ca, ttl, now).await?);
                Ok(0)
            }
            None => {
                args.start_tracing("gantry-server");
                serve(args, a).await
            }
        }
    })
}

async fn serve(args: &NodeArgs, a: ServerArgs) -> Result<i32> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let opened = open_store(a.store.as_deref(), &args.data_dir).await?;
    let store = opened.store.clone();
    let ca = Ca::load_or_create(store.as_ref()).await?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !a.agent_listen.ip().is_unspecified() {
        names.push(a.agent_listen.ip().to_string());
    }
    names.extend(a.agent_san.iter().cloned());
    let (chain, key) = ca.server_cert(&names)?;
    let advertise = a.agent_advertise.clone().unwrap_or_else(|| {
        let host = match a.agent_san.first() {
            Some(san) => san.clone(),
            None => a.agent_listen.ip().to_string(),
        };
        format!("https://{host}:{}", a.agent_listen.port())
    });

    let local_logs = Arc::new(LogStore::open(&args.data_dir.join("logs.db"))?);
    // With etcd every server holds a copy of the logs, kept identical through the feed.
    let local_metrics = Arc::new(MetricStore::open(&args.data_dir.join("metrics.db"))?);
    // So does every server hold a copy of the metric data, through a feed of its own.
    let (logs, metric_data) = match &opened.etcd {
        Some(_) => {
            let replica = replica_id(&args.data_dir)?;
            // A copy that misses trimmed entries fetches another server's, which finds this
            // one by its announcement.
            seed::announce(store.as_ref(), &replica, &advertise).await?;
            let seeder: Arc<dyn Seeder> = Arc::new(seed::PeerSeeder::new(
                store.clone(),
                &replica,
                &ca.cert_pem,
                &chain,
                &key,
            )?);
            (
                Logs::replicated(local_logs, store.clone(), &replica, Some(seeder.clone())),
                MetricData::replicated(local_metrics, store.clone(), &replica, Some(seeder)),
            )
        }
        None => (Logs::local(local_logs), MetricData::local(local_metrics)),
    };
    let (logs, metric_data) = (Arc::new(logs), Arc::new(metric_data));
    let creds = credentials(store.as_ref()).await?;
    let mut control = Control::new(store.clone(), Arc::new(SystemClock));
    control.prices = args.prices.prices()?;
    control.quotas = Arc::new(a.limits.quotas());
    let metrics = Metrics::new(metric_data.clone(), Arc::new(SystemClock));
    let secret_stores = args.secrets(store.clone(), opened.etcd.is_some())?;
    let stores = secret_stores
        .clone()
        .map(|(secrets, parameters)| Arc::new(gantry_agent::link::SecretStores { secrets, parameters }));
    let rendezvous = Arc::new(gantry_link::exec::Rendezvous::default());
    let link = LinkServer {
        secrets: stores,
        control: control.clone(),
        logs: logs.clone(),
        metrics: metrics.clone(),
        ca,
        exec: rendezvous.clone(),
    };
    let exec = gantry_link::exec::RemoteExec {
        control: control.clone(),
        rendezvous,
        advertise,
    };
    let tls = link.tls_config(&chain, &key)?;
    let agent_listener = tokio::net::TcpListener::bind(a.agent_listen)
        .await
        .with_context(|| format!("binding {}", a.agent_listen))?;
    let link_task = tokio::spawn(link.serve(agent_listener, tls));

    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    if !a.no_profile {
        write_profile(&creds, &a.region, &endpoint)?;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let settings = Settings {
        node_timeout: Duration::from_secs(a.node_timeout),
        log_feed_window: opened.etcd.is_some().then(|| Duration::from_secs(a.log_feed_window)),
    };
    let leading = tokio::spawn(lead(
        control.clone(),
        metrics.clone(),
        opened.etcd.clone(),
        settings,
        stop_rx.clone(),
    ));
    tokio::spawn(crate::dev::housekeeping(
        logs.clone(),
        metric_data.clone(),
        stop_rx.clone(),
    ));
    let (following, follow_stop) = (logs.clone(), stop_rx.clone());
    tokio::spawn(async move { following.follow(follow_stop).await });
    let (following, follow_stop) = (metric_data.clone(), stop_rx.clone());
    tokio::spawn(async move { following.follow(follow_stop).await });
    println!(
        "gantry server: APIs on {endpoint}, agents on https://{} (account {}, region {})",
        a.agent_listen, creds.account_id, a.region
    );
    let data_plane = a.serve_load_balancers.then(|| {
        let every = Duration::from_secs(args.metrics_interval);
        a.lb.spawn_data_plane(&control, (metrics.clone(), every), stop_rx.clone())
    });
    let elb = a.lb.elb(&control);
    let api = gantry_aws::Api {
        control,
        logs,
        metrics,
        metrics_token: a.metrics_token.clone(),
        throttle: Arc::new(gantry_control::quotas::TokenBuckets::new(a.limits.request_rate())),
        elb,
        secrets: secret_stores.as_ref().map(|s| s.0.clone()),
        parameters: secret_stores.map(|s| s.1),
        // The agents run the tasks: the task's agent dials this server back.
        exec: Some(Arc::new(exec)),
    };
    gantry_aws::front::serve(
        listener,
        gantry_aws::router(api),
        a.limits.front(),
        crate::shutdown_signal("gantry server"),
    )
    .await?;
    let _ = stop_tx.send(true);
    if let Some(d) = data_plane {
        let _ = tokio::time::timeout(Duration::from_secs(5), d).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), leading).await;
    link_task.abort();
    Ok(0)
}

/// How long a dead leader keeps the role: the lease's TTL. Another server takes the
/// controllers over within this, plus its campaign.
const LEADER_TTL: Duration = Duration::from_secs(5);

/// Runs the controllers while this server leads. With etcd: campaign, run until the lease is
/// lost (or shutdown, which resigns so the next leader need not wait), campaign again.
async fn lead(
    control: Control,
    metrics: Metrics,
    etcd: Option<Arc<gantry_store::EtcdStore>>,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
) {
    let Some(etcd) = etcd else {
        controllers::run(control, metrics, settings, stop).await;
        return;
    };
    let id = format!("{}-{}", hostname(), std::process::id());
    loop {
        let leader = tokio::select! {
            l = etcd.campaign("controllers", &id, LEADER_TTL) => l,
            _ = stop.changed() => return,
        };
        let leader = match leader {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "campaigning for the controllers; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        eprintln!("gantry server: {id} leads the controllers");
        let (run_tx, run_rx) = watch::channel(false);
        let running = tokio::spawn(controllers::run(control.clone(), metrics.clone(), settings, run_rx));
        let mut lost = leader.lost();
        let shutting_down = tokio::select! {
            _ = lost.wait_for(|l| *l) => false,
            _ = stop.changed() => true,
        };
        if !shutting_down {
            eprintln!("gantry server: {id} lost the lead; campaigning again");
        }
        stop_controllers(running, run_tx).await;
        if shutting_down {
            let _ = leader.resign().await;
            return;
        }
    }
}

/// Asks the controllers to stop and waits a moment for their pass to finish; a pass stuck on
/// an unreachable store is dropped instead, since without the lease it must not act at all.
async fn stop_controllers(mut running: tokio::task::JoinHandle<()>, stop: watch::Sender<bool>) {
    let _ = stop.send(true);
    if tokio::time::timeout(Duration::from_secs(2), &mut running)
        .await
        .is_err()
    {
        running.abort();
        let _ = running.await;
    }
}

/// This server's name for its logs copy: made once, kept in the data dir with logs.db.
fn replica_id(data_dir: &std::path::Path) -> Result<String> {
    let path = data_dir.join("replica-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = gantry_control::random_uuid();
            std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
            Ok(id)
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "server".into())
}
