//! Container instances: Gantry's nodes as ECS sees them. A node is registered in a cluster the
//! first time the cluster needs it (as an ECS agent registers on start), stays until
//! DeregisterContainerInstance, and can be drained. EC2 and EXTERNAL tasks are placed on
//! instances (`placement`); their resources, ports and attributes are what placement reads.

use crate::placement::{self, Demand, InstanceView, Placement};
use crate::tasks::TaskRecord;
use crate::{prefix, store_err, Control};
use gantry_store::StoreError;
use gantry_types::arn::{cluster_name, Scope};
use gantry_types::model::{Attribute, ContainerInstance, Failure, Resource, Tag};
use gantry_types::taskdef::{ContainerDefinition, NetworkMode};
use gantry_types::EcsError;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};

/// What a node offers (CPU units: 1024 per core; memory in MiB).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeCapacity {
    pub cpu: i64,
    pub memory: i64,
}

impl Default for NodeCapacity {
    fn default() -> Self {
        NodeCapacity {
            cpu: 4096,
            memory: 8192,
        }
    }
}

/// Nodes by name, and the tasks on container instances (not STOPPED).
struct NodeSnapshot {
    tasks: Vec<TaskRecord>,
    nodes: std::collections::HashMap<String, crate::nodes::NodeRecord>,
}

/// Ports ECS reserves on every container instance (ssh, docker, the ECS agent).
const RESERVED_PORTS: [u16; 5] = [22, 2375, 2376, 51678, 51679];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceRecord {
    pub arn: String,
    pub ec2_instance_id: String,
    pub node: String,
    pub cluster: String,
    /// ACTIVE, DRAINING or INACTIVE (deregistered).
    pub status: String,
    /// Custom attributes (PutAttributes), name -> value.
    pub attributes: BTreeMap<String, Option<String>>,
    pub registered_at: f64,
    pub tags: Vec<Tag>,
    pub version: i64,
}

/// A stable 32-hex id for a node (the same in every cluster, as the ARN carries the cluster).
/// The EC2-style instance id a node goes by (in DescribeContainerInstances and as an
/// `instance` load balancer target): stable, derived from its name.
pub fn ec2_instance_id(node: &str) -> String {
    format!("i-{}", &node_id(node)[..17])
}

fn node_id(node: &str) -> String {
    let h = |seed: u64| {
        node.bytes()
            .fold(seed, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
    };
    format!("{:016x}{:016x}", h(0xcbf29ce484222325), h(0x84222325cbf29ce4))
}

impl InstanceRecord {
    pub fn id(&self) -> &str {
        self.arn.rsplit('/').next().unwrap_or("")
    }

    /// Attributes ECS sets itself (the zone is the node's), then the custom ones.
    pub fn all_attributes(&self, zone: &str) -> BTreeMap<String, Option<String>> {
        let mut a: BTreeMap<String, Option<String>> = [
            ("ecs.os-type", "linux"),
            ("ecs.os-family", "LINUX"),
            (
                "ecs.cpu-architecture",
                if cfg!(target_arch = "aarch64") {
                    "arm64"
                } else {
                    "x86_64"
                },
            ),
            ("ecs.instance-type", "gantry.node"),
            ("ecs.availability-zone", zone),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Some(v.to_string())))
        .collect();
        for cap in [
            "ecs.capability.task-eni",
            "ecs.capability.container-health-check",
            "ecs.capability.task-cpu-mem-limit",
        ] {
            a.insert(cap.into(), None);
        }
        a.extend(self.attributes.clone());
        a
    }
}

/// What a task takes from its instance: CPU and memory reservations and fixed host ports.
pub fn demand_of(t: &TaskRecord) -> Demand {
    demand_for(
        t.cpu_units,
        t.memory_mib,
        &t.containers,
        t.network_mode,
        t.task.group.as_deref().unwrap_or_default(),
    )
}

/// The same, from a task's parts before it exists (placement of a new task).
pub fn demand_for(cpu: i64, memory: i64, containers: &[ContainerDefinition], mode: NetworkMode, group: &str) -> Demand {
    let ports = containers
        .iter()
        .flat_map(|c| c.port_mappings.iter().flatten())
        .filter_map(|p| {
            let hp = match mode {
                NetworkMode::Host => p.container_port,
                NetworkMode::Bridge => p.host_port.filter(|h| *h != 0),
                _ => None,
            }?;
            Some((hp as u16, p.protocol().to_string()))
        })
        .collect();
    Demand {
        cpu,
        memory,
        ports,
        group: group.to_string(),
        member_of: vec![],
        distinct_instance: false,
    }
}

impl Control {
    fn instance_key(scope: &Scope, cluster: &str, id: &str) -> String {
        format!("{}container-instances/{cluster}/{id}", prefix(scope))
    }

    /// A node's instance in the cluster, registered on first need (INACTIVE once
    /// deregistered, until RegisterContainerInstance).
    async fn node_instance(&self, scope: &Scope, cluster: &str, node: &str) -> Result<InstanceRecord, EcsError> {
        let id = node_id(node);
        let key = Self::instance_key(scope, cluster, &id);
        if let Some((r, _)) = self.get_json::<InstanceRecord>(&key).await? {
            return Ok(r);
        }
        let rec = InstanceRecord {
            arn: scope.container_instance_arn(
                self.long_arns(scope, "containerInstanceLongArnFormat")
                    .await?
                    .then_some(cluster),
                &id,
            ),
            ec2_instance_id: ec2_instance_id(node),
            node: node.to_string(),
            cluster: cluster.to_string(),
            status: "ACTIVE".into(),
            attributes: BTreeMap::new(),
            registered_at: self.now(),
            tags: vec![],
            version: 1,
        };
        match self
            .store
            .create(&key, &serde_json::to_vec(&rec).expect("serialises"))
            .await
        {
            Ok(_) => Ok(rec),
            Err(StoreError::AlreadyExists { .. }) => {
                Ok(self.get_json::<InstanceRecord>(&key).await?.map(|r| r.0).unwrap_or(rec))
            }
            Err(e) => Err(store_err(e)),
        }
    }

    /// The cluster's instances (every node's registered on first need).
    pub(crate) async fn cluster_instances(
        &self,
        scope: &Scope,
        cluster: &str,
    ) -> Result<Vec<(String, InstanceRecord)>, EcsError> {
        let prefix = format!("{}container-instances/{cluster}/", prefix(scope));
        let list = || async {
            Ok::<_, EcsError>(
                self.list_json::<InstanceRecord>(&prefix)
                    .await?
                    .into_iter()
                    .map(|(k, r, _)| (k, r))
                    .collect::<Vec<_>>(),
            )
        };
        let instances = list().await?;
        let known: HashSet<&str> = instances.iter().map(|(_, r)| r.node.as_str()).collect();
        let nodes = self.nodes().await?;
        let new: Vec<&str> = nodes
            .iter()
            .map(|n| n.spec.name.as_str())
            .filter(|n| !known.contains(n))
            .collect();
        if new.is_empty() {
            return Ok(instances);
        }
        for n in new {
            self.node_instance(scope, cluster, n).await?;
        }
        list().await
    }

    /// The node RegisterContainerInstance means: the one its containerInstanceArn names, or
    /// the only one.
    async fn node_to_register(&self, arn: Option<&str>) -> Result<String, EcsError> {
        let nodes = self.nodes().await?;
        if let Some(arn) = arn {
            let id = arn.rsplit('/').next().unwrap_or(arn);
            return nodes
                .into_iter()
                .find(|n| node_id(&n.spec.name) == id)
                .map(|n| n.spec.name)
                .ok_or_else(|| EcsError::invalid("The referenced container instance was not found."));
        }
        match nodes.as_slice() {
            [only] => Ok(only.spec.name.clone()),
            [] => Err(EcsError::client("No node has joined: start a node agent first.")),
            _ => Err(EcsError::invalid(
                "containerInstanceArn is required: several nodes can be registered.",
            )),
        }
    }

    /// The instance named by id or ARN, with its key.
    async fn instance(
        &self,
        scope: &Scope,
        cluster: &str,
        name: &str,
    ) -> Result<Option<(String, InstanceRecord)>, EcsError> {
        let id = name.rsplit('/').next().unwrap_or(name);
        Ok(self
            .cluster_instances(scope, cluster)
            .await?
            .into_iter()
            .find(|(_, r)| r.id() == id))
    }

    /// What placement and DescribeContainerInstances read: every node, and the tasks on
    /// instances, across every cluster (a node's instances share its resources).
    async fn node_snapshot(&self) -> Result<NodeSnapshot, EcsError> {
        let tasks = self
            .all_tasks()
            .await?
            .into_iter()
            .map(|(_, r, _)| r)
            .filter(|r| r.task.container_instance_arn.is_some() && r.task.last_status != "STOPPED")
            .collect();
        let nodes = self
            .nodes()
            .await?
            .into_iter()
            .map(|n| (n.spec.name.clone(), n))
            .collect();
        Ok(NodeSnapshot { tasks, nodes })
    }

    fn view(&self, scope: &Scope, r: &InstanceRecord, snap: &NodeSnapshot) -> InstanceView {
        let node = snap.nodes.get(&r.node);
        let (cpu, memory) = node.map_or((0, 0), |n| (n.spec.cpu, n.spec.memory));
        let zone = node.map_or_else(|| format!("{}a", scope.region), |n| n.zone(&scope.region));
        let tasks = &snap.tasks;
        let mut v = InstanceView {
            arn: r.arn.clone(),
            // A lost node takes nothing new, as a disconnected instance in ECS.
            active: r.status == "ACTIVE" && node.is_some_and(|n| n.placeable(self.clock.now_ms())),
            cpu,
            memory,
            used_cpu: 0,
            used_memory: 0,
            used_ports: RESERVED_PORTS
                .iter()
                .map(|p| (*p, "tcp".to_string()))
                .collect::<HashSet<_>>(),
            attributes: r.all_attributes(&zone),
            groups: vec![],
        };
        if node.is_some_and(|n| n.spec.subnet.is_some()) {
            let subnet = crate::ec2::subnet_id(scope, &r.node);
            v.attributes.insert("ecs.subnet-id".into(), Some(subnet));
        }
        for t in tasks.iter().filter(|t| t.node == r.node) {
            let d = demand_of(t);
            v.used_cpu += d.cpu;
            v.used_memory += d.memory;
            v.used_ports.extend(d.ports);
            if t.task.container_instance_arn.as_deref() == Some(&r.arn) {
                v.groups.push(d.group);
            }
        }
        v
    }

    fn describe_instance(&self, scope: &Scope, r: &InstanceRecord, snap: &NodeSnapshot) -> ContainerInstance {
        let v = self.view(scope, r, snap);
        let tasks = &snap.tasks;
        let ports = |used: &HashSet<(u16, String)>, proto: &str| {
            let mut p: Vec<u16> = used.iter().filter(|(_, pr)| pr == proto).map(|(n, _)| *n).collect();
            p.sort();
            p.into_iter().map(|n| n.to_string()).collect::<Vec<_>>()
        };
        let reserved: HashSet<(u16, String)> = RESERVED_PORTS.iter().map(|p| (*p, "tcp".to_string())).collect();
        let mine: Vec<&TaskRecord> = tasks
            .iter()
            .filter(|t| t.task.container_instance_arn.as_deref() == Some(&r.arn))
            .collect();
        ContainerInstance {
            container_instance_arn: r.arn.clone(),
            ec2_instance_id: r.ec2_instance_id.clone(),
            version: r.version,
            version_info: json!({"agentVersion": env!("CARGO_PKG_VERSION"), "agentHash": "gantry", "dockerVersion": "crun"}),
            registered_resources: vec![
                Resource::integer("CPU", v.cpu),
                Resource::integer("MEMORY", v.memory),
                Resource::string_set("PORTS", ports(&reserved, "tcp")),
                Resource::string_set("PORTS_UDP", vec![]),
            ],
            remaining_resources: vec![
                Resource::integer("CPU", (v.cpu - v.used_cpu).max(0)),
                Resource::integer("MEMORY", (v.memory - v.used_memory).max(0)),
                Resource::string_set("PORTS", ports(&v.used_ports, "tcp")),
                Resource::string_set("PORTS_UDP", ports(&v.used_ports, "udp")),
            ],
            status: r.status.clone(),
            agent_connected: r.status != "INACTIVE" && snap.nodes.get(&r.node).is_some_and(|n| n.live()),
            running_tasks_count: mine.iter().filter(|t| t.task.last_status == "RUNNING").count() as i64,
            pending_tasks_count: mine.iter().filter(|t| t.task.last_status != "RUNNING").count() as i64,
            attributes: v
                .attributes
                .iter()
                .map(|(k, val)| Attribute {
                    name: k.clone(),
                    value: val.clone(),
                    ..Default::default()
                })
                .collect(),
            registered_at: r.registered_at,
            tags: Some(r.tags.clone()),
        }
    }

    /// Places `count` tasks of `demand` on the cluster's instances whose nodes are in the
    /// capacity provider's pool. `on`: StartTask's named instances, one task on each; else
    /// RunTask's `count` tasks wherever they fit. Returns each placement with its node.
    pub(crate) async fn place_tasks(
        &self,
        scope: &Scope,
        cluster: &str,
        (demand, count): (&Demand, usize),
        on: Option<&[String]>,
        strategy: &[placement::Strategy],
        provider: Option<&str>,
    ) -> Result<Vec<(Placement, String)>, EcsError> {
        let snap = self.node_snapshot().await?;
        let instances: Vec<InstanceRecord> = self
            .cluster_instances(scope, cluster)
            .await?
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| r.status != "INACTIVE" && snap.nodes.get(&r.node).is_some_and(|n| n.serves(provider)))
            .collect();
        let node_of = |p: &Placement| match p {
            Placement::On(arn) => instances
                .iter()
                .find(|i| &i.arn == arn)
                .map(|i| i.node.clone())
                .unwrap_or_default(),
            Placement::Failed { .. } => String::new(),
        };
        let mut views: Vec<InstanceView> = instances.iter().map(|r| self.view(scope, r, &snap)).collect();
        let Some(named) = on else {
            let seed = u64::from_str_radix(&crate::random_hex(8), 16).unwrap_or(0);
            let placed = placement::place(&mut views, demand, count, strategy, seed);
            return Ok(placed
                .into_iter()
                .map(|p| (node_of(&p), p))
                .map(|(n, p)| (p, n))
                .collect());
        };
        let mut out = Vec::new();
        for n in named {
            let id = n.rsplit('/').next().unwrap_or(n);
            match views.iter().position(|v| v.arn.rsplit('/').next() == Some(id)) {
                Some(i) => out.extend(placement::place(&mut views[i..=i], demand, 1, strategy, 0)),
                None => out.push(Placement::Failed {
                    arn: Some(n.clone()),
                    reason: "MISSING".into(),
                }),
            }
        }
        Ok(out.into_iter().map(|p| (node_of(&p), p)).map(|(n, p)| (p, n)).collect())
    }

    /// Places Fargate tasks on the nodes of the provider's pool: spread over zones, then over
    /// nodes, counting the group's tasks in the cluster. Fargate sizes are not reserved
    /// against a node's registered resources (they are the task's own cgroup limits), so only
    /// a pool without a live node fails, with Fargate's capacity wording.
    pub(crate) async fn place_fargate(
        &self,
        scope: &Scope,
        cluster: &str,
        group: &str,
        count: usize,
        (provider, subnets): (Option<&str>, Option<&[String]>),
        nodes: &[crate::nodes::NodeRecord],
    ) -> Result<Vec<(Placement, String)>, EcsError> {
        let in_subnets = |n: &crate::nodes::NodeRecord| {
            subnets.is_none_or(|s| s.contains(&crate::ec2::subnet_id(scope, &n.spec.name)))
        };
        let nodes: Vec<&crate::nodes::NodeRecord> = nodes
            .iter()
            .filter(|n| n.placeable(self.clock.now_ms()) && n.serves(provider) && in_subnets(n))
            .collect();
        match nodes.as_slice() {
            [] => {
                let none = Placement::Failed {
                    arn: None,
                    reason:
                        "Capacity is unavailable at this time. Please try again later or in a different availability zone"
                            .into(),
                };
                return Ok(vec![(none, String::new()); count]);
            }
            // One node (`gantry dev`): nothing to spread over, no need to count tasks.
            [only] => {
                return Ok(vec![
                    (Placement::On(only.spec.name.clone()), only.spec.name.clone());
                    count
                ])
            }
            _ => {}
        }
        // Spreading counts the group's live tasks on each node: a group is the cluster's, so
        // only the cluster's records count. They come from the task cache: a RunTask then
        // decodes only the records changed since the last reading, not every task the cluster
        // holds (stopped ones are kept for hours).
        let mut on_node: std::collections::HashMap<String, Vec<String>> = Default::default();
        for t in self.cluster_tasks_shared(scope, cluster).await? {
            if t.task.last_status != "STOPPED" && t.task.group.as_deref() == Some(group) {
                on_node.entry(t.node.clone()).or_default().push(group.to_string());
            }
        }
        let mut views: Vec<InstanceView> = nodes
            .into_iter()
            .map(|n| InstanceView {
                arn: n.spec.name.clone(),
                active: true,
                cpu: 0,
                memory: 0,
                used_cpu: 0,
                used_memory: 0,
                used_ports: HashSet::new(),
                attributes: [("ecs.availability-zone".to_string(), Some(n.zone(&scope.region)))].into(),
                groups: on_node.remove(&n.spec.name).unwrap_or_default(),
            })
            .collect();
        let demand = Demand {
            group: group.to_string(),
            ..Default::default()
        };
        let seed = u64::from_str_radix(&crate::random_hex(8), 16).unwrap_or(0);
        let placed = placement::place(&mut views, &demand, count, &placement::default_strategy(), seed);
        Ok(placed
            .into_iter()
            .map(|p| {
                let node = match &p {
                    Placement::On(n) => n.clone(),
                    Placement::Failed { .. } => String::new(),
                };
                (p, node)
            })
            .collect())
    }

    pub async fn describe_container_instances(
        &self,
        scope: &Scope,
        cluster: Option<&str>,
        names: &[String],
        include: &[String],
    ) -> Result<(Vec<ContainerInstance>, Vec<Failure>), EcsError> {
        let cluster = self.active_cluster(scope, cluster).await?;
        if names.is_empty() || names.len() > 100 {
            return Err(EcsError::invalid(
                "containerInstances must list 1 to 100 container instances.",
            ));
        }
        let all = self.cluster_instances(scope, &cluster.cluster_name).await?;
        let tasks = self.node_snapshot().await?;
        let (mut found, mut failures) = (Vec::new(), Vec::new());
        for n in names {
            let id = n.rsplit('/').next().unwrap_or(n);
            match all.iter().find(|(_, r)| r.id() == id) {
                Some((_, r)) => {
                    let mut ci = self.describe_instance(scope, r, &tasks);
                    if !include.iter().any(|i| i == "TAGS") {
                        ci.tags = None;
                    }
                    found.push(ci);
                }
                None => failures.push(Failure {
                    arn: Some(n.clone()),
                    reason: Some("MISSING".into()),
                    detail: None,
                }),
            }
        }
        Ok((found, failures))
    }

    pub async fn list_container_instances(
        &self,
        scope: &Scope,
        q: ListContainerInstances,
    ) -> Result<(Vec<String>, Option<String>), EcsError> {
        let cluster = self.active_cluster(scope, q.cluster.as_deref()).await?;
        let size = crate::page_size(q.max_results, 100)?;
        if let Some(st) = q.status.as_deref() {
            if ![
                "ACTIVE",
                "DRAINING",
                "REGISTERING",
                "DEREGISTERING",
                "REGISTRATION_FAILED",
            ]
            .contains(&st)
            {
                return Err(EcsError::invalid(format!("Invalid status {st}.")));
            }
        }
        if let Some(f) = q.filter.as_deref() {
            placement::validate_expression(f).map_err(EcsError::invalid)?;
        }
        let after = q.next_token.as_deref().map(crate::decode_token).transpose()?;
        let mut all = self.cluster_instances(scope, &cluster.cluster_name).await?;
        let snap = self.node_snapshot().await?;
        all.retain(|(k, r)| {
            let status_ok = match q.status.as_deref() {
                Some(s) => r.status == s,
                None => r.status != "INACTIVE",
            };
            let filter_ok = q
                .filter
                .as_deref()
                .is_none_or(|f| placement::matches(f, &self.view(scope, r, &snap).attributes).unwrap_or(false));
            status_ok && filter_ok && after.as_ref().is_none_or(|a| k > a)
        });
        let token = (all.len() > size).then(|| crate::encode_token(&all[size - 1].0));
        Ok((all.into_iter().take(size).map(|(_, r)| r.arn).collect(), token))
    }

    async fn update_instance(
        &self,
        key: &str,
        f: impl FnMut(&mut InstanceRecord) -> Result<bool, EcsError>,
    ) -> Result<InstanceRecord, EcsError> {
        self.update_json(key, f)
            .await?
            .ok_or_else(|| EcsError::invalid("The referenced container instance was not found."))
    }

    /// RegisterContainerInstance: (re-)registers this node in the cluster.
    pub async fn register_container_instance(
        &self,
        scope: &Scope,
        q: RegisterContainerInstance,
    ) -> Result<ContainerInstance, EcsError> {
        let cluster = self.active_cluster(scope, q.cluster.as_deref()).await?;
        if q.total_resources.as_ref().is_some_and(|r| !r.is_empty())
            || q.platform_devices.as_ref().is_some_and(|d| !d.is_empty())
        {
            return Err(EcsError::invalid(
                "Gantry measures its nodes' resources itself: totalResources and platformDevices are not accepted.",
            ));
        }
        let attrs = validate_attributes(q.attributes.as_deref().unwrap_or_default())?;
        let node = self.node_to_register(q.container_instance_arn.as_deref()).await?;
        let r = self.node_instance(scope, &cluster.cluster_name, &node).await?;
        let key = Self::instance_key(scope, &cluster.cluster_name, r.id());
        let now = self.now();
        let r = self
            .update_instance(&key, |r| {
                if r.status == "INACTIVE" {
                    r.registered_at = now;
                }
                r.status = "ACTIVE".into();
                for (k, v) in &attrs {
                    r.attributes.insert(k.clone(), v.clone());
                }
                if let Some(t) = &q.tags {
                    r.tags = t.clone();
                }
                r.version += 1;
                Ok(true)
            })
            .await?;
        Ok(self.describe_instance(scope, &r, &self.node_snapshot().await?))
    }

    /// DeregisterContainerInstance: refused while tasks run there unless forced; forced, its
    /// tasks are stopped (services place replacements elsewhere, or say they cannot).
    pub async fn deregister_container_instance(
        &self,
        scope: &Scope,
        cluster: Option<&str>,
        name: &str,
        force: bool,
    ) -> Result<ContainerInstance, EcsError> {
        let cluster = self.active_cluster(scope, cluster).await?;
        let (key, r) = self
            .instance(scope, &cluster.cluster_name, name)
            .await?
            .ok_or_else(|| EcsError::invalid("The referenced container instance was not found."))?;
        let running: Vec<TaskRecord> = self
            .node_snapshot()
            .await?
            .tasks
            .into_iter()
            .filter(|t| t.task.container_instance_arn.as_deref() == Some(&r.arn))
            .collect();
        if !running.is_empty() && !force {
            return Err(EcsError::invalid(format!(
                "The container instance has {} running or pending tasks: stop them first, or deregister with force.",
                running.len()
            )));
        }
        for t in &running {
            self.stop_task(
                scope,
                Some(&cluster.cluster_name),
                &t.task.task_arn,
                Some("Container instance deregistration forced by user"),
            )
            .await?;
        }
        let r = self
            .update_instance(&key, |r| {
                r.status = "INACTIVE".into();
                r.version += 1;
                Ok(true)
            })
            .await?;
        Ok(self.describe_instance(scope, &r, &self.node_snapshot().await?))
    }

    /// UpdateContainerInstancesState: ACTIVE or DRAINING (no new tasks are placed there).
    pub async fn update_container_instances_state(
        &self,
        scope: &Scope,
        cluster: Option<&str>,
        names: &[String],
        status: &str,
    ) -> Result<(Vec<ContainerInstance>, Vec<Failure>), EcsError> {
        let cluster = self.active_cluster(scope, cluster).await?;
        if !["ACTIVE", "DRAINING"].contains(&status) {
            return Err(EcsError::invalid("status must be ACTIVE or DRAINING."));
        }
        if names.is_empty() || names.len() > 10 {
            return Err(EcsError::invalid(
                "containerInstances must list 1 to 10 container instances.",
            ));
        }
        let (mut out, mut failures) = (Vec::new(), Vec::new());
        for n in names {
            match self.instance(scope, &cluster.cluster_name, n).await? {
                Some((key, r)) if r.status != "INACTIVE" => {
                    let r = self
                        .update_instance(&key, |r| {
                            r.status = status.to_string();
                            r.version += 1;
                            Ok(true)
                        })
                        .await?;
                    out.push(self.describe_instance(scope, &r, &self.node_snapshot().await?));
                }
                _ => failures.push(Failure {
                    arn: Some(n.clone()),
                    reason: Some("MISSING".into()),
                    detail: None,
                }),
            }
        }
        Ok((out, failures))
    }

    /// PutAttributes / DeleteAttributes (`put` false) on container instances.
    pub async fn change_attributes(
        &self,
        scope: &Scope,
        cluster: Option<&str>,
        attributes: &[Attribute],
        put: bool,
    ) -> Result<Vec<Attribute>, EcsError> {
        let cluster = self.active_cluster(scope, cluster).await?;
        if attributes.is_empty() || attributes.len() > 10 {
            return Err(EcsError::invalid("attributes must list 1 to 10 attributes."));
        }
        for a in attributes {
            validate_attributes(std::slice::from_ref(a))?;
            if a.target_type.as_deref().is_some_and(|t| t != "container-instance") {
                return Err(EcsError::invalid("targetType must be container-instance."));
            }
            let target = a
                .target_id
                .as_deref()
                .ok_or_else(|| EcsError::invalid("targetId is required: the container instance's ID or ARN."))?;
            let Some((key, _)) = self.instance(scope, &cluster.cluster_name, target).await? else {
                return Err(EcsError::TargetNotFound(format!(
                    "Could not find {target}. Check the target and try again."
                )));
            };
            self.update_instance(&key, |r| {
                if put {
                    if r.attributes.len() >= 10 && !r.attributes.contains_key(&a.name) {
                        return Err(EcsError::AttributeLimitExceeded(
                            "A container instance can have at most 10 custom attributes.".into(),
                        ));
                    }
                    r.attributes.insert(a.name.clone(), a.value.clone());
                } else {
                    r.attributes.remove(&a.name);
                }
                Ok(true)
            })
            .await?;
        }
        Ok(attributes.to_vec())
    }

    pub async fn list_attributes(
        &self,
        scope: &Scope,
        q: ListAttributes,
    ) -> Result<(Vec<Attribute>, Option<String>), EcsError> {
        let cluster = self.active_cluster(scope, q.cluster.as_deref()).await?;
        if q.target_type.as_deref() != Some("container-instance") {
            return Err(EcsError::invalid("targetType must be container-instance."));
        }
        if q.attribute_value.is_some() && q.attribute_name.is_none() {
            return Err(EcsError::invalid("attributeValue can only be used with attributeName."));
        }
        let size = crate::page_size(q.max_results, 100)?;
        let mut out = Vec::new();
        let snap = self.node_snapshot().await?;
        for (_, r) in self.cluster_instances(scope, &cluster.cluster_name).await? {
            if r.status == "INACTIVE" {
                continue;
            }
            for (k, v) in self.view(scope, &r, &snap).attributes {
                let name_ok = q.attribute_name.as_deref().is_none_or(|n| n == k);
                let value_ok = q.attribute_value.as_deref().is_none_or(|x| v.as_deref() == Some(x));
                if name_ok && value_ok {
                    out.push(Attribute {
                        name: k,
                        value: v,
                        target_type: Some("container-instance".into()),
                        target_id: Some(r.arn.clone()),
                    });
                }
            }
        }
        let pos = |a: &Attribute| format!("{}\u{0}{}", a.target_id.as_deref().unwrap_or(""), a.name);
        if let Some(t) = &q.next_token {
            let after = crate::decode_token(t)?;
            out.retain(|a| pos(a) > after);
        }
        let token = (out.len() > size).then(|| crate::encode_token(&pos(&out[size - 1])));
        out.truncate(size);
        Ok((out, token))
    }

    /// ACTIVE container instances of a cluster (what a daemon service runs on).
    pub(crate) async fn active_instances(&self, scope: &Scope, cluster: &str) -> Result<i64, EcsError> {
        Ok(self
            .cluster_instances(scope, cluster)
            .await?
            .iter()
            .filter(|(_, r)| r.status == "ACTIVE")
            .count() as i64)
    }

    /// The ARNs of a cluster's DRAINING container instances.
    pub(crate) async fn draining_instances(&self, scope: &Scope, cluster: &str) -> Result<HashSet<String>, EcsError> {
        Ok(self
            .cluster_instances(scope, cluster)
            .await?
            .into_iter()
            .filter(|(_, r)| r.status == "DRAINING")
            .map(|(_, r)| r.arn)
            .collect())
    }

    /// Registered container instances of a cluster (DescribeClusters).
    pub(crate) async fn registered_instances(&self, scope: &Scope, cluster: &str) -> Result<i64, EcsError> {
        Ok(self
            .cluster_instances(scope, cluster)
            .await?
            .iter()
            .filter(|(_, r)| r.status != "INACTIVE")
            .count() as i64)
    }
}

fn validate_attributes(attrs: &[Attribute]) -> Result<BTreeMap<String, Option<String>>, EcsError> {
    let ok = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./@:".contains(&b))
    };
    let mut out = BTreeMap::new();
    for a in attrs {
        if !ok(&a.name, 128) {
            return Err(EcsError::invalid(format!(
                "Invalid attribute name {:?}: up to 128 letters, numbers, hyphens, underscores, periods, at signs, forward slashes and colons.",
                a.name
            )));
        }
        if a.name.starts_with("ecs.") {
            return Err(EcsError::invalid(format!(
                "Attribute names starting with ecs. are reserved: {}.",
                a.name
            )));
        }
        if let Some(v) = &a.value {
            let ok_value = !v.is_empty()
                && v.len() <= 128
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b" -_./@:".contains(&b));
            if !ok_value {
                return Err(EcsError::invalid(format!(
                    "Invalid attribute value {v:?} for {}.",
                    a.name
                )));
            }
        }
        out.insert(a.name.clone(), a.value.clone());
    }
    Ok(out)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListContainerInstances {
    pub cluster: Option<String>,
    pub filter: Option<String>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
    pub status: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterContainerInstance {
    pub cluster: Option<String>,
    pub instance_identity_document: Option<String>,
    pub instance_identity_document_signature: Option<String>,
    pub total_resources: Option<Vec<serde_json::Value>>,
    pub version_info: Option<serde_json::Value>,
    pub container_instance_arn: Option<String>,
    pub attributes: Option<Vec<Attribute>>,
    pub platform_devices: Option<Vec<serde_json::Value>>,
    pub tags: Option<Vec<Tag>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListAttributes {
    pub cluster: Option<String>,
    pub target_type: Option<String>,
    pub attribute_name: Option<String>,
    pub attribute_value: Option<String>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
}

/// The cluster name of a container instance ARN, if it is one.
pub fn instance_cluster(arn: &str) -> Option<&str> {
    let rest = arn.split_once(":container-instance/")?.1;
    Some(cluster_name(rest.split('/').next()?))
}

#[cfg(test)]
mod fargate_placement_tests {
    use crate::nodes::{NodeRecord, NodeSpec};
    use crate::placement::Placement;
    use crate::tasks::{test_record, TASKS_PREFIX};
    use crate::{Control, SystemClock};
    use gantry_store::instrumented::Instrumented;
    use gantry_store::Store;
    use gantry_types::arn::Scope;
    use std::sync::Arc;

    fn node(name: &str, zone: &str) -> NodeRecord {
        NodeRecord {
            spec: NodeSpec {
                name: name.into(),
                zone: Some(zone.into()),
                capacity_provider: None,
                cpu: 2048,
                memory: 4096,
                address: None,
                subnet: None,
            },
            epoch: 1,
            heartbeat_ms: 0,
            status: "ACTIVE".into(),
            reclaimed_until_ms: None,
        }
    }

    async fn put(store: &Instrumented, cluster: &str, id: &str, node: &str, status: &str) {
        let mut r = test_record(id);
        (r.cluster, r.node) = (cluster.into(), node.into());
        r.task.group = Some("service:web".into());
        r.task.last_status = status.into();
        let key = format!("{TASKS_PREFIX}{}/{}/{cluster}/{id}", r.account, r.region);
        store.create(&key, &serde_json::to_vec(&r).unwrap()).await.unwrap();
    }

    /// Spreading counts the group's live tasks of the cluster only, and a second placement
    /// with nothing changed decodes nothing again: it reads keys and revisions, no record.
    #[tokio::test]
    async fn spreading_counts_the_clusters_live_tasks_from_the_task_cache() {
        let store = Arc::new(Instrumented::new());
        let control = Control::new(store.clone(), Arc::new(SystemClock));
        let scope = Scope {
            account: "123456789012".into(),
            region: "us-east-1".into(),
        };
        put(&store, "c", "t1", "n1", "RUNNING").await;
        put(&store, "c", "t2", "n1", "PENDING").await;
        put(&store, "c", "t3", "n2", "STOPPED").await;
        // Another cluster's tasks on n2 are not the group's.
        put(&store, "d", "t4", "n2", "RUNNING").await;
        put(&store, "d", "t5", "n2", "RUNNING").await;
        let nodes = [node("n1", "us-east-1a"), node("n2", "us-east-1b")];
        let place = || control.place_fargate(&scope, "c", "service:web", 2, (None, None), &nodes);
        let on = |placed: Vec<(Placement, String)>| placed.into_iter().map(|(_, n)| n).collect::<Vec<_>>();
        // n1 holds two of the group's live tasks, n2 none: both new ones go to n2.
        assert_eq!(on(place().await.unwrap()), ["n2", "n2"]);
        let reads = (store.gets(), store.lists());
        assert_eq!(on(place().await.unwrap()), ["n2", "n2"]);
        assert_eq!(
            (store.gets(), store.lists()),
            reads,
            "unchanged records were read again"
        );
    }
}
