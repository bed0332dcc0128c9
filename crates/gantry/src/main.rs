//! `gantry`: the single binary: `dev` (everything on one machine), `server` and `agent` (a
//! cluster), task commands for users, `image`, and `debug` tools.

mod agent_cmd;
mod api_limits;
mod bench;
mod bench_burst;
mod bench_placement;
mod bench_policy;
mod bench_retention;
mod client;
mod cost_cmd;
mod debug_run;
mod dev;
mod exec_cmd;
mod image_cmd;
mod node_cmd;
mod server;
mod tasks_cmd;
mod trace_cmd;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use gantry_runtime::image::registry::{Credentials, RegistryConfig};
use gantry_runtime::image::{ImageStoreConfig, UnpackLimits};
use gantry_runtime::net::NetworkConfig;
use gantry_runtime::oci::RuntimeKind;
use gantry_runtime::task::{Node, NodeConfig};
use std::path::PathBuf;

/// Resolves on Ctrl-C or SIGTERM, saying `who` is shutting down.
pub async fn shutdown_signal(who: &str) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("{who}: shutting down");
}

#[derive(Parser)]
#[command(name = "gantry", version, about = "Self-hosted serverless containers")]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
pub struct NodeArgs {
    /// Where images, tasks and leases live.
    #[arg(long, global = true, env = "GANTRY_DATA_DIR", default_value = "/var/lib/gantry")]
    data_dir: PathBuf,
    /// Runtime state (network namespaces, OCI runtime state).
    #[arg(long, global = true, env = "GANTRY_RUN_DIR", default_value = "/run/gantry")]
    run_dir: PathBuf,
    /// OCI runtime: crun (default when installed), runc or runsc.
    #[arg(long, global = true, env = "GANTRY_RUNTIME")]
    runtime: Option<RuntimeKind>,
    /// Subnet tasks get their addresses from; the first address is the bridge's.
    #[arg(long, global = true, env = "GANTRY_SUBNET", default_value = "10.213.0.0/16")]
    subnet: String,
    /// Host bridge the task veths attach to.
    #[arg(long, global = true, env = "GANTRY_BRIDGE", default_value = "gantry0")]
    bridge: String,
    /// Registries (host:port) to reach over plain HTTP / without TLS verification.
    #[arg(
        long = "insecure-registry",
        global = true,
        env = "GANTRY_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,
    /// Registry credentials, host=user:password (repeatable).
    #[arg(
        long = "registry-auth",
        global = true,
        env = "GANTRY_REGISTRY_AUTH",
        value_delimiter = ',',
        hide_env_values = true
    )]
    registry_auth: Vec<String>,
    /// Cap on the uncompressed size of one image layer, in MiB.
    #[arg(long, global = true, env = "GANTRY_MAX_LAYER_MIB", default_value_t = 16384)]
    max_layer_mib: u64,
    /// How often, in seconds, the node samples its running tasks' CPU and memory for the
    /// AWS/ECS metrics (1 to 60).
    #[arg(long, global = true, env = "GANTRY_METRICS_INTERVAL", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=60))]
    metrics_interval: u64,
    /// Turn on the kernel's cgroup `favordynmods` for the whole host, until it reboots: a
    /// container's start then no longer waits for an RCU grace period to join its cgroups
    /// (cgroup v1), at some cost to every fork and exit. Needs a cgroup2 mount (a v2 or
    /// hybrid host). See README, "Tuning a node".
    #[arg(long, global = true, env = "GANTRY_CGROUP_FAVORDYNMODS",
          value_parser = clap::builder::FalseyValueParser::new())]
    cgroup_favordynmods: bool,
    /// Run every task in a user namespace: its root (and ids up to 65535) become host ids
    /// from BASE on, so root in a task is no one on the host. Image layers are unpacked with
    /// their owners moved into the range (a separate layer directory). A node setting, as
    /// Docker's userns-remap; BASE must leave room for 65,536 ids (for example 1000000).
    #[arg(long, global = true, env = "GANTRY_USERNS_REMAP",
          value_parser = clap::value_parser!(u32).range(65_536..=4_294_901_759))]
    userns_remap: Option<u32>,
    #[command(flatten)]
    prices: PriceArgs,
    /// The key secret values are sealed with at rest (32 random bytes, mode 0600; created
    /// when absent). Every server of a cluster needs the same file. Default: DATA_DIR/secrets.key.
    #[arg(long, global = true, env = "GANTRY_SECRETS_KEY_FILE")]
    secrets_key_file: Option<PathBuf>,
    /// Export task starts and API requests as OpenTelemetry traces to this OTLP/HTTP
    /// endpoint (spans are posted to ENDPOINT/v1/traces, JSON-encoded).
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

/// Secrets Manager and Parameter Store, sealing with one key.
pub type SecretStores = (
    gantry_control::secrets::SecretsManager,
    gantry_control::parameters::ParameterStore,
);

impl NodeArgs {
    /// Secrets Manager and Parameter Store over `store`, sealing with the key file (made on
    /// first use). With a `shared` store (etcd: several servers) the file must be named: each
    /// server needs the same one, and a key made in each data dir would not open another's
    /// values. Without one, the secrets APIs say so and tasks with secrets fail to start.
    pub fn secrets(
        &self,
        store: std::sync::Arc<dyn gantry_store::Store>,
        shared: bool,
    ) -> anyhow::Result<Option<SecretStores>> {
        use gantry_control::{parameters::ParameterStore, secrets::seal::Sealer, secrets::SecretsManager};
        if shared && self.secrets_key_file.is_none() {
            eprintln!(
                "gantry: no --secrets-key-file: Secrets Manager and Parameter Store are off (give every server the same key file)"
            );
            return Ok(None);
        }
        let path = self
            .secrets_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("secrets.key"));
        let sealer = std::sync::Arc::new(Sealer::load_or_create(&path)?);
        let clock = std::sync::Arc::new(gantry_control::SystemClock);
        Ok(Some((
            SecretsManager::new(store.clone(), clock.clone(), sealer.clone()),
            ParameterStore::new(store, clock, sealer),
        )))
    }

    /// Starts the trace exporter when an endpoint is configured.
    pub fn start_tracing(&self, service_name: &str) {
        if let Some(e) = self.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
            gantry_otlp::init(e, service_name);
        }
    }
}

/// What tasks cost, for `gantry cost` and the cost metrics (defaults: Fargate's Linux/x86
/// on-demand prices in us-east-1).
#[derive(clap::Args, Clone, Copy)]
pub struct PriceArgs {
    /// Dollars per vCPU-hour.
    #[arg(long, global = true, env = "GANTRY_PRICE_VCPU_HOUR", default_value_t = 0.04048)]
    price_vcpu_hour: f64,
    /// Dollars per GB-hour of memory.
    #[arg(long, global = true, env = "GANTRY_PRICE_GB_HOUR", default_value_t = 0.004445)]
    price_gb_hour: f64,
    /// The fraction FARGATE_SPOT tasks are discounted by (0 to 1).
    #[arg(long, global = true, env = "GANTRY_SPOT_DISCOUNT", default_value_t = 0.7)]
    spot_discount: f64,
}

impl PriceArgs {
    /// The prices, or why they are not prices.
    pub fn prices(&self) -> anyhow::Result<gantry_control::cost::Prices> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if !ok(self.price_vcpu_hour) || !ok(self.price_gb_hour) {
            anyhow::bail!("--price-vcpu-hour and --price-gb-hour must be non-negative numbers");
        }
        if !(0.0..=1.0).contains(&self.spot_discount) {
            anyhow::bail!("--spot-discount must be between 0 and 1");
        }
        Ok(gantry_control::cost::Prices {
            vcpu_hour: self.price_vcpu_hour,
            gb_hour: self.price_gb_hour,
            spot_discount: self.spot_discount,
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole platform on this machine: ECS and CloudWatch Logs APIs, control plane
    /// (SQLite), and the node agent.
    Dev(dev::DevArgs),
    /// Serve the AWS APIs and the control plane of a cluster (state in etcd), and the agent
    /// protocol for its nodes. `gantry server token create` prints a join token.
    Server(server::ServerArgs),
    /// Run one node of a cluster: join with a token, run the tasks the servers place here.
    Agent(agent_cmd::AgentArgs),
    /// A cluster's nodes: list them, reclaim Spot capacity.
    Node(node_cmd::NodeCmdArgs),
    /// Run an image as a task (registers or reuses a task definition), stream its output and
    /// exit with its exit code, like `docker run`.
    Run(tasks_cmd::RunArgs),
    /// List tasks.
    Ps {
        #[arg(long, default_value = "default")]
        cluster: String,
        /// Include stopped tasks.
        #[arg(long, short = 'a')]
        all: bool,
    },
    /// Print a task's output.
    Logs {
        task: String,
        #[arg(long, default_value = "default")]
        cluster: String,
        /// Keep printing until the task stops.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Run a command in a running task's container (ECS Exec), `-it` for a terminal; exits
    /// with the command's exit code.
    Exec(exec_cmd::ExecArgs),
    /// Stop a task.
    Stop {
        task: String,
        #[arg(long, default_value = "default")]
        cluster: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// What tasks cost over a window, by cluster, service or tag, with the cost per 1,000
    /// requests of services behind a load balancer.
    Cost(cost_cmd::CostArgs),
    /// Manage the node's image store.
    #[command(subcommand)]
    Image(image_cmd::ImageCmd),
    /// Low-level tools for checking the node runtime by hand.
    #[command(subcommand)]
    Debug(DebugCmd),
}

#[derive(Subcommand)]
enum DebugCmd {
    /// Run one task in the foreground, print its output, exit with its exit code.
    Run(debug_run::RunArgs),
    /// Print a task's start timeline (provisioning, image pull, sandbox, start) from its
    /// record, as the API reports it.
    Trace(trace_cmd::TraceArgs),
    /// Remove what crashed runs left behind (tasks, namespaces, leases, cgroups).
    Sweep {
        /// Also kill and remove running tasks, the warm pool, the bridge and its firewall.
        #[arg(long)]
        all: bool,
    },
    /// Benchmark task start to exit against `crun run` of an equivalent bundle.
    Bench(bench::BenchArgs),
    /// Benchmark a burst of long-running tasks started a few at a time against the runtime's
    /// own `run --detach` of prepared bundles.
    BenchBurst(bench_burst::BenchBurstArgs),
    /// Benchmark the scheduler alone over a simulated cluster of many nodes.
    BenchPlacement(bench_placement::BenchPlacementArgs),
    /// Measure the disk a metric series costs over a month of CloudWatch retention.
    BenchRetention(bench_retention::BenchRetentionArgs),
    /// Benchmark IAM policy evaluation (N attached policies) against SigV4 verification.
    BenchPolicy(bench_policy::BenchPolicyArgs),
    /// Print the seccomp profile a container with Docker's default capabilities gets.
    Seccomp {
        /// Print the compiled program instead, in base64 (crun's `run.oci.seccomp_bpf_data`).
        #[arg(long)]
        bpf: bool,
    },
}

impl NodeArgs {
    pub fn node_config(&self) -> Result<NodeConfig> {
        let runtime = match self.runtime {
            Some(r) => r,
            None => RuntimeKind::detect().context("no OCI runtime found: install crun or runc")?,
        };
        let exe = std::env::current_exe().context("locating the gantry binary")?;
        let shim_binary = exe.with_file_name("gantry-shim");
        if !shim_binary.is_file() {
            anyhow::bail!("gantry-shim not found next to {}", exe.display());
        }
        let mut credentials = std::collections::HashMap::new();
        for a in &self.registry_auth {
            let (host, up) = a
                .split_once('=')
                .context("--registry-auth must be host=user:password")?;
            let (u, p) = up
                .split_once(':')
                .context("--registry-auth must be host=user:password")?;
            credentials.insert(
                host.to_string(),
                Credentials {
                    username: u.into(),
                    password: p.into(),
                },
            );
        }
        Ok(NodeConfig {
            data_dir: self.data_dir.clone(),
            run_dir: self.run_dir.clone(),
            runtime,
            shim_binary,
            images: ImageStoreConfig {
                root: self.data_dir.join("images"),
                limits: UnpackLimits {
                    max_bytes: self.max_layer_mib << 20,
                    id_base: self.userns_remap,
                },
                registry: RegistryConfig {
                    insecure: self.insecure_registries.clone(),
                    credentials,
                    stall_timeout: None,
                },
            },
            network: NetworkConfig {
                bridge: self.bridge.clone(),
                subnet: self.subnet.parse()?,
                netns_dir: self.run_dir.join("netns"),
                state_dir: self.data_dir.join("network"),
                node_resolver: false,
                namespace_rules: None,
                security_groups: false,
            },
        })
    }

    pub fn node(&self) -> Result<Node> {
        if self.cgroup_favordynmods
            && gantry_runtime::cgroup::favor_dynamic_modifications().map_err(anyhow::Error::msg)?
        {
            tracing::warn!("turned on the kernel's cgroup favordynmods for this host, until it reboots");
        }
        Ok(Node::open(self.node_config()?)?)
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .init();
    let cli = Cli::parse();
    if matches!(
        cli.cmd,
        Cmd::Run(_) | Cmd::Ps { .. } | Cmd::Logs { .. } | Cmd::Stop { .. } | Cmd::Cost(_) | Cmd::Image(_)
    ) {
        gantry_runtime::default_sigpipe();
    }
    let result = match cli.cmd {
        Cmd::Dev(a) => dev::run(&cli.node, a),
        Cmd::Server(a) => server::run(&cli.node, a),
        Cmd::Agent(a) => agent_cmd::run(&cli.node, a),
        Cmd::Node(a) => node_cmd::run(&cli.node, a),
        Cmd::Run(a) => tasks_cmd::run(a),
        Cmd::Exec(a) => exec_cmd::run(a),
        Cmd::Ps { cluster, all } => tasks_cmd::ps(&cluster, all),
        Cmd::Logs { task, cluster, follow } => tasks_cmd::logs(&cluster, &task, follow),
        Cmd::Stop { task, cluster, reason } => tasks_cmd::stop(&cluster, &task, reason.as_deref()),
        Cmd::Cost(a) => cost_cmd::run(a),
        Cmd::Image(c) => image_cmd::run(&cli.node, c),
        Cmd::Debug(DebugCmd::Run(a)) => debug_run::run(&cli.node, a),
        Cmd::Debug(DebugCmd::Trace(a)) => trace_cmd::run(a),
        Cmd::Debug(DebugCmd::Sweep { all }) => (|| {
            let node = cli.node.node()?;
            let r = node.sweep(|t| !all && node.task_running(t))?;
            let mut pooled = (0, 0);
            if all {
                // Everything the node made: warm pools, bridge and its firewall table, the
                // shared mounts too.
                pooled = node.drain_pools()?;
                node.network().teardown()?;
                node.remove_mount_template()?;
                node.ephemeral().close()?;
            }
            println!(
                "removed {} tasks, {} namespaces ({} from the warm pool), {} ephemeral filesystems, {} runtime containers, {} cgroups",
                r.tasks_removed,
                r.netns_removed + pooled.0,
                pooled.0,
                r.ephemeral_removed + pooled.1,
                r.containers_removed,
                r.cgroups_removed
            );
            Ok(0)
        })(),
        Cmd::Debug(DebugCmd::Bench(a)) => bench::run(&cli.node, a),
        Cmd::Debug(DebugCmd::BenchBurst(a)) => bench_burst::run(&cli.node, a),
        Cmd::Debug(DebugCmd::BenchPlacement(a)) => bench_placement::run(a),
        Cmd::Debug(DebugCmd::BenchRetention(a)) => bench_retention::run(a),
        Cmd::Debug(DebugCmd::BenchPolicy(a)) => bench_policy::run(a),
        Cmd::Debug(DebugCmd::Seccomp { bpf }) => {
            let caps = gantry_runtime::bundle::capability_set(&[], &[]);
            let profile = gantry_runtime::bundle::seccomp(&caps);
            match bpf {
                false => println!("{profile}"),
                true => match gantry_runtime::seccomp_bpf::annotation(&profile) {
                    Some(b64) => println!("{b64}"),
                    None => {
                        eprintln!("gantry: the profile could not be compiled (is libseccomp.so.2 installed?)");
                        std::process::exit(1);
                    }
                },
            }
            Ok(0)
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("gantry: {e:#}");
            std::process::exit(125);
        }
    }
}
