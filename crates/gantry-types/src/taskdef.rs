//! Task definitions: the typed view Gantry runs from, and validation against Fargate's rules
//! with the error messages ECS gives (or, where ECS's are vague, ones that say exactly what is
//! wrong).

use crate::error::EcsError;
use crate::fargate;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyValuePair {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LogConfiguration {
    pub log_driver: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    pub command: Vec<String>,
    #[serde(default)]
    pub interval: Option<i64>,
    #[serde(default)]
    pub timeout: Option<i64>,
    #[serde(default)]
    pub retries: Option<i64>,
    #[serde(default)]
    pub start_period: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDependency {
    pub container_name: String,
    pub condition: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDefinition {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub cpu: Option<i64>,
    #[serde(default)]
    pub memory: Option<i64>,
    #[serde(default)]
    pub memory_reservation: Option<i64>,
    #[serde(default)]
    pub essential: Option<bool>,
    #[serde(default)]
    pub entry_point: Option<Vec<String>>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub environment: Option<Vec<KeyValuePair>>,
    #[serde(default)]
    pub working_directory: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub stop_timeout: Option<i64>,
    #[serde(default)]
    pub start_timeout: Option<i64>,
    #[serde(default)]
    pub log_configuration: Option<LogConfiguration>,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub depends_on: Option<Vec<ContainerDependency>>,
    #[serde(default)]
    pub port_mappings: Option<Vec<PortMapping>>,
    #[serde(default)]
    pub linux_parameters: Option<LinuxParameters>,
    #[serde(default)]
    pub ulimits: Option<Vec<Ulimit>>,
    #[serde(default)]
    pub readonly_root_filesystem: Option<bool>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub docker_labels: Option<BTreeMap<String, String>>,
    /// Environment variables whose values come from Secrets Manager or Parameter Store at
    /// start (never stored with the task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<SecretRef>>,
    /// A Secrets Manager secret holding the private registry's username and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_credentials: Option<RepositoryCredentials>,
    /// Volumes of the task mounted into the container (`crate::volumes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_points: Option<Vec<crate::volumes::MountPoint>>,
    /// Containers whose every mount this one takes too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes_from: Option<Vec<crate::volumes::VolumeFrom>>,
    /// Namespaced kernel parameters set in the container (`docker run --sysctl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_controls: Option<Vec<SystemControl>>,
    /// Every other member, kept as sent so the definition round-trips. Validation refuses
    /// the ones Gantry cannot honour (`UNSUPPORTED_CONTAINER_FIELDS`).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SystemControl {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Kernel parameters a container may set: those of its own IPC namespace, and of its network
/// namespace unless it shares the node's (Docker's namespaced sysctls).
fn check_system_controls(name: &str, c: &ContainerDefinition, mode: NetworkMode) -> Result<(), EcsError> {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let mut seen = HashSet::new();
    for s in c.system_controls.iter().flatten() {
        let key = s.namespace.as_deref().unwrap_or("");
        let value = s.value.as_deref().unwrap_or("");
        let well_formed = !key.is_empty()
            && key.len() <= 256
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !key.split('.').any(str::is_empty);
        let net = key.starts_with("net.");
        let namespaced = IPC.contains(&key) || key.starts_with("fs.mqueue.") || net;
        if !well_formed || !namespaced {
            return Err(EcsError::client(format!(
                "Container {name}: systemControls: {key:?} is not a namespaced kernel parameter a container can set \
                 (net.*, fs.mqueue.* and the kernel IPC ones)."
            )));
        }
        if net && mode == NetworkMode::Host {
            return Err(EcsError::client(format!(
                "Container {name}: systemControls: {key} is not supported with network mode host (it would change the node's)."
            )));
        }
        if value.is_empty() || value.len() > 4096 || value.contains(['\n', '\0']) {
            return Err(EcsError::client(format!(
                "Container {name}: systemControls: {key} needs a value on one line."
            )));
        }
        if !seen.insert(key) {
            return Err(EcsError::client(format!(
                "Container {name}: systemControls: {key} is set more than once."
            )));
        }
    }
    Ok(())
}

/// Where a container's image pull credentials are: a secret whose value is
/// `{"username": ..., "password": ...}`, read as the task's execution role.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryCredentials {
    pub credentials_parameter: String,
}

/// A container secret: the variable's name and where its value comes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub value_from: Option<String>,
}

/// Where a secret's value comes from, as ECS reads `valueFrom`.
#[derive(Debug, Clone, PartialEq)]
pub enum SecretSource {
    /// A Secrets Manager secret (its ARN, full or without the random suffix) and, optionally,
    /// a JSON key of its value, a staging label and a version id.
    SecretsManager {
        secret_arn: String,
        json_key: Option<String>,
        version_stage: Option<String>,
        version_id: Option<String>,
    },
    /// A Parameter Store parameter, by name or ARN.
    Parameter(String),
}

impl SecretSource {
    /// Parses `valueFrom`: `arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME[:json-key:version-stage:version-id]`,
    /// `arn:aws:ssm:REGION:ACCOUNT:parameter/NAME`, or a parameter name.
    pub fn parse(value_from: &str) -> Result<SecretSource, String> {
        if value_from.is_empty() || value_from.len() > 2048 {
            return Err("valueFrom must be 1 to 2048 characters".into());
        }
        if let Some(rest) = value_from.strip_prefix("arn:aws:secretsmanager:") {
            let parts: Vec<&str> = rest.split(':').collect();
            if parts.len() < 4 || parts.len() > 7 || parts[2] != "secret" || parts[3].is_empty() {
                return Err(format!(
                    "{value_from} is not a Secrets Manager secret ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME[:json-key:version-stage:version-id])"
                ));
            }
            let part = |i: usize| parts.get(i).filter(|p| !p.is_empty()).map(|p| p.to_string());
            let (stage, id) = (part(5), part(6));
            if stage.is_some() && id.is_some() {
                return Err(format!("{value_from}: give a version stage or a version id, not both"));
            }
            return Ok(SecretSource::SecretsManager {
                secret_arn: format!("arn:aws:secretsmanager:{}", parts[..4].join(":")),
                json_key: part(4),
                version_stage: stage,
                version_id: id,
            });
        }
        if value_from.starts_with("arn:") && !value_from.starts_with("arn:aws:ssm:") {
            return Err(format!(
                "{value_from} is neither a Secrets Manager secret nor a Parameter Store parameter"
            ));
        }
        Ok(SecretSource::Parameter(value_from.to_string()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    #[serde(default)]
    pub container_port: Option<i64>,
    #[serde(default)]
    pub host_port: Option<i64>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub app_protocol: Option<String>,
    #[serde(default)]
    pub container_port_range: Option<String>,
}

impl PortMapping {
    pub fn protocol(&self) -> &str {
        self.protocol.as_deref().unwrap_or("tcp")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LinuxParameters {
    #[serde(default)]
    pub init_process_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<KernelCapabilities>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// Capabilities added to and dropped from Docker's default set (names without CAP_).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct KernelCapabilities {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<Vec<String>>,
}

/// The capability names ECS accepts in `linuxParameters.capabilities`.
pub const KERNEL_CAPABILITIES: &[&str] = &[
    "ALL",
    "AUDIT_CONTROL",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "SYSLOG",
    "WAKE_ALARM",
];

impl KernelCapabilities {
    pub fn added(&self) -> &[String] {
        self.add.as_deref().unwrap_or_default()
    }
    pub fn dropped(&self) -> &[String] {
        self.drop.as_deref().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Ulimit {
    pub name: String,
    pub soft_limit: i64,
    pub hard_limit: i64,
}

/// Container members ECS defines that Gantry cannot honour yet: refused when set (an empty
/// list or object is the same as absent), never accepted and ignored.
pub const UNSUPPORTED_CONTAINER_FIELDS: &[(&str, &str)] = &[
    ("links", "container links are not supported"),
    ("restartPolicy", "container restart policies are not supported yet"),
    ("environmentFiles", "environment files from S3 are not supported"),
    ("disableNetworking", "disableNetworking is not supported"),
    ("privileged", "privileged containers are not supported"),
    ("dnsServers", "custom DNS servers are not supported"),
    ("dnsSearchDomains", "custom DNS search domains are not supported"),
    ("extraHosts", "extraHosts is not supported"),
    ("dockerSecurityOptions", "dockerSecurityOptions is not supported"),
    ("interactive", "interactive containers are not supported"),
    ("pseudoTerminal", "pseudo terminals are not supported"),
    (
        "resourceRequirements",
        "GPU and accelerator resource requirements are not supported",
    ),
    ("firelensConfiguration", "FireLens log routing is not supported"),
    ("credentialSpecs", "credential specs are not supported"),
];

/// Task-level members likewise.
pub const UNSUPPORTED_TASK_FIELDS: &[(&str, &str)] = &[
    ("pidMode", "pidMode is not supported yet"),
    ("ipcMode", "ipcMode is not supported"),
    ("proxyConfiguration", "App Mesh proxy configuration is not supported"),
    ("inferenceAccelerators", "inference accelerators are not supported"),
    ("trustedExecutionConfiguration", "trusted execution is not supported"),
];

/// Whether a member counts as given: null, false, `[]` and `{}` are the same as absent.
pub(crate) fn is_set(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null | serde_json::Value::Bool(false) => false,
        serde_json::Value::Array(a) => !a.is_empty(),
        serde_json::Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

/// Refuses members Gantry cannot honour, naming the member and the container.
pub fn refuse_unsupported(raw: &serde_json::Value) -> Result<(), EcsError> {
    for (field, why) in UNSUPPORTED_TASK_FIELDS {
        if raw.get(*field).is_some_and(is_set) {
            return Err(EcsError::client(format!(
                "Gantry cannot run this task definition: {field}: {why}."
            )));
        }
    }
    if raw.get("enableFaultInjection").and_then(serde_json::Value::as_bool) == Some(true) {
        return Err(EcsError::client(
            "Gantry cannot run this task definition: enableFaultInjection: fault injection is not supported.",
        ));
    }
    for c in raw["containerDefinitions"].as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("");
        for (field, why) in UNSUPPORTED_CONTAINER_FIELDS {
            if c.get(*field).is_some_and(is_set) {
                return Err(EcsError::client(format!(
                    "Gantry cannot run container {name}: {field}: {why}."
                )));
            }
        }
        if let Some(lp) = c.get("linuxParameters").and_then(serde_json::Value::as_object) {
            let supported = ["initProcessEnabled", "capabilities"];
            if let Some((k, _)) = lp.iter().find(|(k, v)| !supported.contains(&k.as_str()) && is_set(v)) {
                return Err(EcsError::client(format!(
                    "Gantry cannot run container {name}: linuxParameters.{k} is not supported yet (initProcessEnabled and capabilities are)."
                )));
            }
        }
    }
    Ok(())
}

impl ContainerDefinition {
    pub fn is_essential(&self) -> bool {
        self.essential.unwrap_or(true)
    }
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EphemeralStorage {
    pub size_in_gi_b: i64,
}

/// RegisterTaskDefinition's request, the parts Gantry interprets.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RegisterTaskDefinition {
    #[serde(default)]
    pub family: Option<String>,
    #[serde(default)]
    pub container_definitions: Option<Vec<ContainerDefinition>>,
    #[serde(default)]
    pub cpu: Option<String>,
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub network_mode: Option<String>,
    #[serde(default)]
    pub requires_compatibilities: Option<Vec<String>>,
    #[serde(default)]
    pub ephemeral_storage: Option<EphemeralStorage>,
    #[serde(default)]
    pub runtime_platform: Option<RuntimePlatform>,
    #[serde(default)]
    pub execution_role_arn: Option<String>,
    #[serde(default)]
    pub volumes: Option<Vec<crate::volumes::Volume>>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RuntimePlatform {
    #[serde(default)]
    pub cpu_architecture: Option<String>,
    #[serde(default)]
    pub operating_system_family: Option<String>,
}

/// How a task's containers are networked (ECS networkMode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Its own namespace and address, reported as an ENI attachment (Fargate's only mode).
    Awsvpc,
    /// Its own namespace on the node's bridge; port mappings published on the node.
    #[default]
    Bridge,
    /// The node's own network namespace.
    Host,
    /// Its own namespace with loopback only.
    None,
}

impl NetworkMode {
    pub fn parse(s: Option<&str>) -> Result<NetworkMode, EcsError> {
        Ok(match s {
            // EC2 Linux's default.
            None => NetworkMode::Bridge,
            Some("awsvpc") => NetworkMode::Awsvpc,
            Some("bridge") => NetworkMode::Bridge,
            Some("host") => NetworkMode::Host,
            Some("none") => NetworkMode::None,
            Some(other) => {
                return Err(EcsError::client(format!(
                    "Invalid networkMode {other}: valid values are bridge, host, awsvpc and none."
                )))
            }
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Awsvpc => "awsvpc",
            NetworkMode::Bridge => "bridge",
            NetworkMode::Host => "host",
            NetworkMode::None => "none",
        }
    }
}

/// The validated result: sizes in units/MiB where the definition sets them.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidTaskDefinition {
    pub family: String,
    pub cpu: Option<i64>,
    pub memory: Option<i64>,
    pub network_mode: NetworkMode,
    /// Where it can run: EC2 always, FARGATE when it meets Fargate's rules, EXTERNAL when
    /// asked for.
    pub compatibilities: Vec<String>,
    pub containers: Vec<ContainerDefinition>,
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Validates a RegisterTaskDefinition request as ECS does: the rules every definition must
/// meet, then Fargate's only when FARGATE is required.
pub fn validate_json(raw: &serde_json::Value) -> Result<ValidTaskDefinition, EcsError> {
    let req: RegisterTaskDefinition =
        serde_json::from_value(raw.clone()).map_err(|e| EcsError::client(format!("Invalid task definition: {e}")))?;
    refuse_unsupported(raw)?;
    validate(&req)
}

pub fn validate(req: &RegisterTaskDefinition) -> Result<ValidTaskDefinition, EcsError> {
    let family = req
        .family
        .clone()
        .filter(|f| !f.is_empty())
        .ok_or_else(|| EcsError::client("Family must not be empty."))?;
    if !valid_name(&family, 255) {
        return Err(EcsError::client(
            "Family contains invalid characters or is too long: up to 255 letters (uppercase and lowercase), numbers, hyphens, and underscores are allowed.",
        ));
    }
    let containers = req.container_definitions.clone().unwrap_or_default();
    if containers.is_empty() {
        return Err(EcsError::client("Container list cannot be empty."));
    }
    if containers.len() > 10 {
        return Err(EcsError::client(format!(
            "Too many containers: a task definition may have at most 10, got {}.",
            containers.len()
        )));
    }
    let network_mode = NetworkMode::parse(req.network_mode.as_deref())?;
    let required = req.requires_compatibilities.clone().unwrap_or_default();
    if let Some(bad) = required
        .iter()
        .find(|c| !["EC2", "FARGATE", "EXTERNAL", "MANAGED_INSTANCES"].contains(&c.as_str()))
    {
        return Err(EcsError::client(format!(
            "Invalid requiresCompatibilities value {bad}: valid values are EC2, FARGATE, EXTERNAL and MANAGED_INSTANCES."
        )));
    }
    if required.iter().any(|c| c == "MANAGED_INSTANCES") {
        return Err(EcsError::client(
            "Gantry does not offer ECS Managed Instances: require EC2, FARGATE or EXTERNAL.",
        ));
    }
    let cpu = match req.cpu.as_deref() {
        None => None,
        Some(s) => Some(
            fargate::parse_cpu(s)
                .filter(|c| (128..=196_608).contains(c))
                .ok_or_else(|| EcsError::client(format!("Invalid 'cpu' setting for task: {s:?}.")))?,
        ),
    };
    let memory = match req.memory.as_deref() {
        None => None,
        Some(s) => Some(
            fargate::parse_memory(s)
                .filter(|m| *m >= 6)
                .ok_or_else(|| EcsError::client(format!("Invalid 'memory' setting for task: {s:?}.")))?,
        ),
    };
    if let Some(e) = &req.ephemeral_storage {
        if !(21..=200).contains(&e.size_in_gi_b) {
            return Err(EcsError::client(format!(
                "The ephemeral storage size must be between 21 and 200 GiB, got {}.",
                e.size_in_gi_b
            )));
        }
    }
    if let Some(p) = &req.runtime_platform {
        validate_platform(p)?;
    }
    validate_containers(&containers, network_mode, cpu, memory)?;
    validate_depends_on(&containers)?;
    crate::volumes::validate(req.volumes.as_deref().unwrap_or_default(), &containers)?;
    // The node reads secrets and registry credentials as the execution role: there must be one.
    let no_role = req.execution_role_arn.as_deref().is_none_or(str::is_empty);
    let has_secrets = containers.iter().any(|c| c.secrets.iter().flatten().next().is_some());
    if has_secrets && no_role {
        return Err(EcsError::client(
            "When you are specifying container secrets, you must also specify a value for 'executionRoleArn'.",
        ));
    }
    for c in &containers {
        let Some(rc) = &c.repository_credentials else { continue };
        if !rc.credentials_parameter.starts_with("arn:aws:secretsmanager:") {
            return Err(EcsError::client(format!(
                "Container {}: repositoryCredentials.credentialsParameter must be a Secrets Manager secret ARN.",
                c.name()
            )));
        }
        if no_role {
            return Err(EcsError::client(
                "When you are specifying repository credentials, you must also specify a value for 'executionRoleArn'.",
            ));
        }
    }

    let fargate_problem = fargate_problem(req, network_mode, cpu, memory, &containers);
    if required.iter().any(|c| c == "FARGATE") {
        if let Some(problem) = fargate_problem.clone() {
            return Err(EcsError::client(problem));
        }
    }
    let mut compatibilities = vec!["EC2".to_string()];
    if fargate_problem.is_none() {
        compatibilities.push("FARGATE".into());
    }
    if required.iter().any(|c| c == "EXTERNAL") {
        compatibilities.push("EXTERNAL".into());
    }
    Ok(ValidTaskDefinition {
        family,
        cpu,
        memory,
        network_mode,
        compatibilities,
        containers,
    })
}

fn validate_platform(p: &RuntimePlatform) -> Result<(), EcsError> {
    let host_arch = match std::env::consts::ARCH {
        "aarch64" => "ARM64",
        _ => "X86_64",
    };
    if let Some(a) = &p.cpu_architecture {
        if a != host_arch {
            return Err(EcsError::client(format!(
                "runtimePlatform.cpuArchitecture {a} is not available: Gantry's nodes are {host_arch}."
            )));
        }
    }
    if let Some(os) = &p.operating_system_family {
        if os != "LINUX" {
            return Err(EcsError::client(format!(
                "runtimePlatform.operatingSystemFamily {os} is not available: Gantry runs LINUX tasks."
            )));
        }
    }
    Ok(())
}

/// The rules every container meets, whatever it runs on.
/// Each secret names a variable once (and not one `environment` also sets) and a source
/// ECS can read.
fn validate_secrets(container: &str, c: &ContainerDefinition) -> Result<(), EcsError> {
    let env: HashSet<&str> = c
        .environment
        .iter()
        .flatten()
        .filter_map(|kv| kv.name.as_deref())
        .collect();
    let mut seen = HashSet::new();
    for s in c.secrets.iter().flatten() {
        let name = s.name.as_deref().filter(|n| !n.is_empty()).ok_or_else(|| {
            EcsError::client(format!(
                "Container {container}: secrets: name should not be null or empty."
            ))
        })?;
        let from = s.value_from.as_deref().ok_or_else(|| {
            EcsError::client(format!(
                "Container {container}: secrets: {name}: valueFrom should not be null."
            ))
        })?;
        if !seen.insert(name) || env.contains(name) {
            return Err(EcsError::client(format!(
                "Container {container}: the variable {name} is set more than once (secrets and environment)."
            )));
        }
        SecretSource::parse(from)
            .map_err(|e| EcsError::client(format!("Container {container}: secrets: {name}: {e}.")))?;
    }
    Ok(())
}

fn validate_containers(
    containers: &[ContainerDefinition],
    mode: NetworkMode,
    task_cpu: Option<i64>,
    task_memory: Option<i64>,
) -> Result<(), EcsError> {
    let mut names = HashSet::new();
    let mut host_ports = HashSet::new();
    let (mut cpu_sum, mut mem_sum) = (0i64, 0i64);
    for c in containers {
        let name = c
            .name
            .as_deref()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| EcsError::client("Container.name should not be null or empty."))?;
        if !valid_name(name, 255) {
            return Err(EcsError::client(format!(
                "Container name {name:?} is invalid: up to 255 letters (uppercase and lowercase), numbers, hyphens, and underscores are allowed."
            )));
        }
        if !names.insert(name.to_string()) {
            return Err(EcsError::client(format!(
                "Container names must be unique: {name} appears more than once."
            )));
        }
        if c.image.as_deref().is_none_or(str::is_empty) {
            return Err(EcsError::client("Container.image should not be null or empty."));
        }
        if let Some(t) = c.stop_timeout {
            if !(2..=120).contains(&t) {
                return Err(EcsError::client(format!(
                    "Invalid stopTimeout value for container {name}: {t}. It must be between 2 and 120 seconds."
                )));
            }
        }
        for (what, v) in [("memory", c.memory), ("memoryReservation", c.memory_reservation)] {
            if v.is_some_and(|m| m < 6) {
                return Err(EcsError::client(format!(
                    "Invalid '{what}' setting for container '{name}'. The memory must be at least 6 MiB."
                )));
            }
        }
        if task_memory.is_none() && c.memory.is_none() && c.memory_reservation.is_none() {
            return Err(EcsError::client(format!(
                "Invalid setting for container '{name}'. At least one of 'memory' or 'memoryReservation' must be specified."
            )));
        }
        if let (Some(m), Some(r)) = (c.memory, c.memory_reservation) {
            if r > m {
                return Err(EcsError::client(format!(
                    "Invalid 'memoryReservation' setting for container '{name}': it must be less than 'memory'."
                )));
            }
        }
        if c.cpu.is_some_and(|x| x < 0) {
            return Err(EcsError::client(format!(
                "Invalid 'cpu' setting for container '{name}'."
            )));
        }
        cpu_sum += c.cpu.unwrap_or(0);
        mem_sum += c.memory.or(c.memory_reservation).unwrap_or(0);
        if c.hostname.is_some() && matches!(mode, NetworkMode::Awsvpc | NetworkMode::Host) {
            return Err(EcsError::client(format!(
                "Container {name}: hostname is not supported with network mode {}.",
                mode.as_str()
            )));
        }
        validate_ports(name, c, mode, &mut host_ports)?;
        for u in c.ulimits.iter().flatten() {
            validate_ulimit(name, u)?;
        }
        if let Some(h) = &c.health_check {
            validate_health_check(name, h)?;
        }
        if let Some(l) = &c.log_configuration {
            validate_log_configuration(name, l)?;
        }
        validate_secrets(name, c)?;
        validate_capabilities(name, c)?;
        check_system_controls(name, c, mode)?;
    }
    if !containers.iter().any(ContainerDefinition::is_essential) {
        return Err(EcsError::client(
            "Task definition must have at least one essential container.",
        ));
    }
    if let Some(cpu) = task_cpu.filter(|cpu| cpu_sum > *cpu) {
        return Err(EcsError::client(format!(
            "The sum of container cpu ({cpu_sum}) is greater than the task cpu ({cpu})."
        )));
    }
    if let Some(memory) = task_memory.filter(|m| mem_sum > *m) {
        return Err(EcsError::client(format!(
            "The sum of container memory ({mem_sum} MiB) is greater than the task memory ({memory} MiB)."
        )));
    }
    Ok(())
}

fn validate_ports(
    name: &str,
    c: &ContainerDefinition,
    mode: NetworkMode,
    host_ports: &mut HashSet<(i64, String)>,
) -> Result<(), EcsError> {
    for p in c.port_mappings.iter().flatten() {
        if p.container_port_range.is_some() {
            return Err(EcsError::client(format!(
                "Container {name}: containerPortRange is not supported yet; map each port."
            )));
        }
        let cp = p
            .container_port
            .ok_or_else(|| EcsError::client(format!("Container {name}: a port mapping needs a containerPort.")))?;
        if !(1..=65535).contains(&cp) {
            return Err(EcsError::client(format!(
                "Container {name}: invalid containerPort {cp}: it must be between 1 and 65535."
            )));
        }
        if !["tcp", "udp"].contains(&p.protocol()) {
            return Err(EcsError::client(format!(
                "Container {name}: invalid protocol {}: tcp or udp.",
                p.protocol()
            )));
        }
        if let Some(hp) = p.host_port {
            if !(0..=65535).contains(&hp) {
                return Err(EcsError::client(format!(
                    "Container {name}: invalid hostPort {hp}: it must be between 0 and 65535."
                )));
            }
            if matches!(mode, NetworkMode::Awsvpc | NetworkMode::Host) && hp != cp {
                return Err(EcsError::client(format!(
                    "When networkMode={}, the host ports and container ports in port mappings must match.",
                    mode.as_str()
                )));
            }
        }
        if mode == NetworkMode::None {
            return Err(EcsError::client(format!(
                "Container {name}: port mappings are not valid with network mode none."
            )));
        }
        let published = match mode {
            NetworkMode::Bridge => p.host_port.filter(|h| *h != 0),
            _ => Some(cp),
        };
        if let Some(hp) = published {
            if !host_ports.insert((hp, p.protocol().to_string())) {
                return Err(EcsError::client(format!(
                    "Host port {hp}/{} is mapped more than once in the task definition.",
                    p.protocol()
                )));
            }
        }
    }
    Ok(())
}

fn validate_ulimit(name: &str, u: &Ulimit) -> Result<(), EcsError> {
    const NAMES: &[&str] = &[
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
    ];
    if !NAMES.contains(&u.name.as_str()) {
        return Err(EcsError::client(format!(
            "Container {name}: invalid ulimit name {}.",
            u.name
        )));
    }
    if u.soft_limit < 0 || u.hard_limit < 0 || u.soft_limit > u.hard_limit {
        return Err(EcsError::client(format!(
            "Container {name}: ulimit {} needs 0 <= softLimit <= hardLimit.",
            u.name
        )));
    }
    Ok(())
}

fn validate_log_configuration(name: &str, l: &LogConfiguration) -> Result<(), EcsError> {
    if l.log_driver != "awslogs" {
        return Err(EcsError::client(format!(
            "Log driver {} is not supported for container {name}: Gantry supports awslogs.",
            l.log_driver
        )));
    }
    if l.options.get("awslogs-group").is_none_or(|g| g.is_empty()) {
        return Err(EcsError::client(format!(
            "Log driver awslogs requires options: awslogs-group (container {name})."
        )));
    }
    Ok(())
}

/// Why the definition cannot run on Fargate, if it cannot (Fargate's rules on top of ECS's).
fn validate_capabilities(container: &str, c: &ContainerDefinition) -> Result<(), EcsError> {
    let Some(caps) = c.linux_parameters.as_ref().and_then(|l| l.capabilities.as_ref()) else {
        return Ok(());
    };
    for name in caps.added().iter().chain(caps.dropped()) {
        if !KERNEL_CAPABILITIES.contains(&name.as_str()) {
            return Err(EcsError::client(format!(
                "Container {container}: linuxParameters.capabilities: {name} is not a valid kernel capability (valid: {}).",
                KERNEL_CAPABILITIES.join(", ")
            )));
        }
    }
    Ok(())
}

fn fargate_problem(
    req: &RegisterTaskDefinition,
    mode: NetworkMode,
    cpu: Option<i64>,
    memory: Option<i64>,
    containers: &[ContainerDefinition],
) -> Option<String> {
    if mode != NetworkMode::Awsvpc {
        return Some(format!(
            "Fargate only supports network mode 'awsvpc'; this task definition uses '{}'.",
            req.network_mode.as_deref().unwrap_or("bridge")
        ));
    }
    let Some(cpu) = cpu else {
        return Some(
            "Fargate requires task definition to have cpu value set (for example \"256\" or \"0.25 vCPU\").".into(),
        );
    };
    let Some(memory) = memory else {
        return Some(
            "Fargate requires task definition to have memory value set (for example \"512\" or \"0.5 GB\").".into(),
        );
    };
    if !fargate::is_valid_size(cpu, memory) {
        let opts = fargate::memory_options(cpu);
        let hint = if opts.is_empty() {
            "valid cpu values are 256, 512, 1024, 2048, 4096, 8192 and 16384".to_string()
        } else {
            format!("for {cpu} CPU units memory must be one of {opts:?} MiB")
        };
        return Some(format!(
            "No Fargate configuration exists for given values: {cpu} CPU, {memory} memory. See the Amazon ECS documentation for the valid values ({hint})."
        ));
    }
    let beyond_ptrace = |c: &&ContainerDefinition| {
        let caps = c.linux_parameters.as_ref().and_then(|l| l.capabilities.as_ref());
        caps.is_some_and(|k| k.added().iter().any(|a| a != "SYS_PTRACE"))
    };
    if let Some(c) = containers.iter().find(beyond_ptrace) {
        return Some(format!(
            "Fargate only supports adding the SYS_PTRACE kernel capability (container {}).",
            c.name()
        ));
    }
    if let Some(c) = containers
        .iter()
        .find(|c| c.ulimits.iter().flatten().any(|u| u.name != "nofile"))
    {
        return Some(format!(
            "Fargate only supports the nofile ulimit (container {}).",
            c.name()
        ));
    }
    None
}

fn validate_health_check(name: &str, h: &HealthCheck) -> Result<(), EcsError> {
    match h.command.first().map(String::as_str) {
        Some("CMD") | Some("CMD-SHELL") if h.command.len() > 1 => {}
        Some("NONE") => {}
        _ => {
            return Err(EcsError::client(format!(
                "Health check command for container {name} must start with CMD or CMD-SHELL followed by the command."
            )));
        }
    }
    let check = |what: &str, v: Option<i64>, lo: i64, hi: i64| match v {
        Some(x) if !(lo..=hi).contains(&x) => Err(EcsError::client(format!(
            "Invalid health check {what} for container {name}: {x}. It must be between {lo} and {hi}."
        ))),
        _ => Ok(()),
    };
    check("interval", h.interval, 5, 300)?;
    check("timeout", h.timeout, 2, 60)?;
    check("retries", h.retries, 1, 10)?;
    check("startPeriod", h.start_period, 0, 300)
}

fn validate_depends_on(containers: &[ContainerDefinition]) -> Result<(), EcsError> {
    let by_name: BTreeMap<&str, &ContainerDefinition> = containers.iter().map(|c| (c.name(), c)).collect();
    for c in containers {
        for d in c.depends_on.iter().flatten() {
            let target = by_name.get(d.container_name.as_str()).ok_or_else(|| {
                EcsError::client(format!(
                    "Container {} depends on container {}, which is not in the task definition.",
                    c.name(),
                    d.container_name
                ))
            })?;
            if d.container_name == c.name() {
                return Err(EcsError::client(format!(
                    "Container {} cannot depend on itself.",
                    c.name()
                )));
            }
            match d.condition.as_str() {
                "START" => {}
                "COMPLETE" | "SUCCESS" if target.is_essential() => {
                    return Err(EcsError::client(format!(
                        "Dependency condition {} cannot be set on essential container {}.",
                        d.condition, d.container_name
                    )));
                }
                "COMPLETE" | "SUCCESS" => {}
                "HEALTHY" if target.health_check.is_none() => {
                    return Err(EcsError::client(format!(
                        "Dependency condition HEALTHY requires container {} to have a health check.",
                        d.container_name
                    )));
                }
                "HEALTHY" => {}
                other => {
                    return Err(EcsError::client(format!(
                        "Invalid dependency condition {other}: expected START, COMPLETE, SUCCESS or HEALTHY."
                    )));
                }
            }
        }
    }
    // No cycles: repeatedly remove containers whose dependencies are all removed.
    let mut left: Vec<&ContainerDefinition> = containers.iter().collect();
    while !left.is_empty() {
        let before = left.len();
        let names: HashSet<&str> = left.iter().map(|c| c.name()).collect();
        left.retain(|c| {
            c.depends_on
                .iter()
                .flatten()
                .any(|d| names.contains(d.container_name.as_str()))
        });
        if left.len() == before {
            let cycle: Vec<&str> = left.iter().map(|c| c.name()).collect();
            return Err(EcsError::client(format!(
                "Container dependencies form a cycle among: {}.",
                cycle.join(", ")
            )));
        }
    }
    Ok(())
}

/// Container start order respecting dependsOn (dependencies first).
pub fn start_order(containers: &[ContainerDefinition]) -> Vec<String> {
    let mut done: Vec<String> = Vec::new();
    while done.len() < containers.len() {
        let before = done.len();
        for c in containers {
            if done.iter().any(|d| d == c.name()) {
                continue;
            }
            if c.depends_on.iter().flatten().all(|d| done.contains(&d.container_name)) {
                done.push(c.name().to_string());
            }
        }
        if done.len() == before {
            break; // validated definitions have no cycles
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn td(v: serde_json::Value) -> Result<ValidTaskDefinition, EcsError> {
        validate_json(&v)
    }

    fn base() -> serde_json::Value {
        json!({"family": "web", "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"], "cpu": "256", "memory": "512",
               "containerDefinitions": [{"name": "app", "image": "busybox"}]})
    }

    fn with(f: impl FnOnce(&mut serde_json::Value)) -> Result<ValidTaskDefinition, EcsError> {
        let mut v = base();
        f(&mut v);
        td(v)
    }

    #[test]
    fn only_namespaced_kernel_parameters_are_set() {
        let sysctls = |list: serde_json::Value| {
            with(|v| v["containerDefinitions"][0]["systemControls"] = list).map_err(|e| e.to_string())
        };
        let ok = sysctls(json!([{"namespace": "net.ipv4.tcp_keepalive_time", "value": "300"},
                                {"namespace": "kernel.shmmni", "value": "8192"},
                                {"namespace": "fs.mqueue.msg_max", "value": "20"}]))
        .unwrap();
        assert_eq!(ok.containers[0].system_controls.as_ref().unwrap().len(), 3);
        for (bad, why) in [
            (
                json!([{"namespace": "vm.swappiness", "value": "1"}]),
                "not a namespaced",
            ),
            (
                json!([{"namespace": "kernel.hostname", "value": "x"}]),
                "not a namespaced",
            ),
            (json!([{"namespace": "net..ipv4", "value": "1"}]), "not a namespaced"),
            (
                json!([{"namespace": "net/ipv4/ip_forward", "value": "1"}]),
                "not a namespaced",
            ),
            (
                json!([{"namespace": "net.core.somaxconn", "value": ""}]),
                "needs a value",
            ),
            (
                json!([{"namespace": "net.core.somaxconn", "value": "1\nnet.x=1"}]),
                "needs a value",
            ),
            (
                json!([{"namespace": "net.core.somaxconn", "value": "1"}, {"namespace": "net.core.somaxconn", "value": "2"}]),
                "more than once",
            ),
        ] {
            let e = sysctls(bad.clone()).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let host = with(|v| {
            v["networkMode"] = json!("host");
            v["requiresCompatibilities"] = json!(["EC2"]);
            v["containerDefinitions"][0]["systemControls"] = json!([{"namespace": "net.core.somaxconn", "value": "1"}]);
        });
        assert!(host.unwrap_err().to_string().contains("network mode host"));
    }

    #[test]
    fn accepts_a_minimal_fargate_definition() {
        let v = td(base()).unwrap();
        assert_eq!((v.cpu, v.memory, v.family.as_str()), (Some(256), Some(512), "web"));
        assert_eq!(v.compatibilities, ["EC2", "FARGATE"]);
        let v = with(|v| {
            v["cpu"] = json!("1 vCPU");
            v["memory"] = json!("2 GB");
        })
        .unwrap();
        assert_eq!((v.cpu, v.memory), (Some(1024), Some(2048)));
    }

    #[test]
    fn refuses_every_class_of_invalid_definition() {
        type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|v| v["family"] = json!("bad name!")),
                "Family contains invalid characters",
            ),
            (
                Box::new(|v| v["containerDefinitions"] = json!([])),
                "Container list cannot be empty",
            ),
            (
                Box::new(|v| v["networkMode"] = json!("bridge")),
                "network mode 'awsvpc'",
            ),
            (Box::new(|v| v["cpu"] = json!("256")), ""),
            (
                Box::new(|v| v["memory"] = json!("4096")),
                "No Fargate configuration exists for given values: 256 CPU, 4096 memory",
            ),
            (Box::new(|v| v["cpu"] = json!("300")), "No Fargate configuration exists"),
            (
                Box::new(|v| v.as_object_mut().unwrap().remove("cpu").map(|_| ()).unwrap()),
                "cpu value set",
            ),
            (
                Box::new(|v| v["containerDefinitions"][0]["essential"] = json!(false)),
                "at least one essential",
            ),
            (
                Box::new(|v| v["containerDefinitions"][0]["cpu"] = json!(512)),
                "sum of container cpu",
            ),
            (
                Box::new(|v| v["containerDefinitions"][0]["memory"] = json!(1024)),
                "sum of container memory",
            ),
            (
                Box::new(|v| v["containerDefinitions"][0]["stopTimeout"] = json!(121)),
                "stopTimeout",
            ),
            (
                Box::new(|v| {
                    v["containerDefinitions"][0]["healthCheck"] =
                        json!({"command": ["CMD-SHELL", "true"], "interval": 1})
                }),
                "interval",
            ),
            (
                Box::new(|v| v["containerDefinitions"][0]["healthCheck"] = json!({"command": ["true"]})),
                "CMD or CMD-SHELL",
            ),
            (
                Box::new(|v| v["ephemeralStorage"] = json!({"sizeInGiB": 20})),
                "between 21 and 200",
            ),
            (
                Box::new(|v| {
                    v["containerDefinitions"][0]["dependsOn"] =
                        json!([{"containerName": "ghost", "condition": "START"}])
                }),
                "not in the task definition",
            ),
            (
                Box::new(|v| {
                    v["containerDefinitions"] = json!([{"name": "a", "image": "x"}, {"name": "a", "image": "y"}])
                }),
                "unique",
            ),
            (
                Box::new(|v| v["containerDefinitions"][0]["image"] = json!("")),
                "image should not be null",
            ),
            (
                Box::new(|v| {
                    v["containerDefinitions"] = json!((0..11)
                        .map(|i| json!({"name": format!("c{i}"), "image": "x"}))
                        .collect::<Vec<_>>())
                }),
                "at most 10",
            ),
            (
                Box::new(|v| v["containerDefinitions"][0]["logConfiguration"] = json!({"logDriver": "splunk"})),
                "supports awslogs",
            ),
        ];
        for (i, (f, msg)) in cases.into_iter().enumerate() {
            let r = with(f);
            if msg.is_empty() {
                assert!(r.is_ok(), "case {i}");
                continue;
            }
            match r {
                Err(EcsError::Client(m)) => assert!(m.contains(msg), "case {i}: {m:?} should contain {msg:?}"),
                other => panic!("case {i}: expected ClientException containing {msg:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn definitions_ecs_registers_for_ec2_are_accepted() {
        // No requiresCompatibilities, bridge by default, memory only at container level.
        let v = td(json!({"family": "ec2", "containerDefinitions": [
            {"name": "web", "image": "x", "memory": 128, "portMappings": [{"containerPort": 80, "hostPort": 0}]}]}))
        .unwrap();
        assert_eq!((v.network_mode, v.cpu, v.memory), (NetworkMode::Bridge, None, None));
        assert_eq!(v.compatibilities, ["EC2"]);
        for mode in ["host", "none"] {
            let v = td(json!({"family": "m", "networkMode": mode, "containerDefinitions": [
                {"name": "a", "image": "x", "memoryReservation": 64}]}))
            .unwrap();
            assert_eq!(v.network_mode.as_str(), mode);
        }
        // A Fargate-shaped definition without requiresCompatibilities can run on both.
        let mut b = base();
        b.as_object_mut().unwrap().remove("requiresCompatibilities");
        assert_eq!(td(b).unwrap().compatibilities, ["EC2", "FARGATE"]);
        let v = td(
            json!({"family": "e", "requiresCompatibilities": ["EXTERNAL"], "cpu": "128", "memory": "64",
                          "containerDefinitions": [{"name": "a", "image": "x"}]}),
        )
        .unwrap();
        assert_eq!(v.compatibilities, ["EC2", "EXTERNAL"]);
    }

    #[test]
    fn ec2_and_port_rules() {
        let err = |v: serde_json::Value| match td(v) {
            Err(EcsError::Client(m)) => m,
            other => panic!("expected ClientException, got {other:?}"),
        };
        let m = err(json!({"family": "f", "containerDefinitions": [{"name": "a", "image": "x"}]}));
        assert_eq!(
            m,
            "Invalid setting for container 'a'. At least one of 'memory' or 'memoryReservation' must be specified."
        );
        let m = err(json!({"family": "f", "containerDefinitions": [{"name": "", "image": "x", "memory": 64}]}));
        assert_eq!(m, "Container.name should not be null or empty.");
        let m = err(json!({"family": "f", "containerDefinitions": [{"name": "a", "memory": 64}]}));
        assert_eq!(m, "Container.image should not be null or empty.");
        let m =
            with(|v| v["containerDefinitions"][0]["portMappings"] = json!([{"containerPort": 80, "hostPort": 8080}]))
                .unwrap_err();
        assert_eq!(
            m.to_string(),
            "When networkMode=awsvpc, the host ports and container ports in port mappings must match."
        );
        let m = err(json!({"family": "f", "networkMode": "bridge", "containerDefinitions": [
            {"name": "a", "image": "x", "memory": 64, "portMappings": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81, "hostPort": 8080}]}]}));
        assert!(m.contains("Host port 8080/tcp is mapped more than once"), "{m}");
        let m = err(
            json!({"family": "f", "networkMode": "bridge", "requiresCompatibilities": ["FARGATE"], "cpu": "256", "memory": "512",
                           "containerDefinitions": [{"name": "a", "image": "x"}]}),
        );
        assert!(m.starts_with("Fargate only supports network mode 'awsvpc'"), "{m}");
        let m = err(
            json!({"family": "f", "networkMode": "mesh", "containerDefinitions": [{"name": "a", "image": "x", "memory": 64}]}),
        );
        assert!(m.contains("Invalid networkMode mesh"), "{m}");
    }

    #[test]
    fn secrets_name_their_sources() {
        let mut v = base();
        v["executionRoleArn"] = json!("arn:aws:iam::1:role/exec");
        v["containerDefinitions"][0]["secrets"] = json!([
            {"name": "DB", "valueFrom": "arn:aws:ssm:us-east-1:1:parameter/db"},
            {"name": "PW", "valueFrom": "arn:aws:secretsmanager:us-east-1:1:secret:app-AbCdEf:password::"},
            {"name": "P2", "valueFrom": "/plain/param"}
        ]);
        let ok = validate_json(&v).unwrap();
        assert_eq!(ok.containers[0].secrets.as_ref().unwrap().len(), 3);
        for (bad, why) in [
            (
                json!([{"name": "A", "valueFrom": "arn:aws:s3:::bucket/key"}]),
                "neither",
            ),
            (
                json!([{"name": "A", "valueFrom": "arn:aws:secretsmanager:us-east-1:1:notsecret:x"}]),
                "not a Secrets Manager",
            ),
            (
                json!([{"name": "A", "valueFrom": "x"}, {"name": "A", "valueFrom": "y"}]),
                "more than once",
            ),
            (json!([{"name": "A"}]), "valueFrom should not be null"),
            (json!([{"valueFrom": "x"}]), "name should not be null"),
        ] {
            let mut v = base();
            v["executionRoleArn"] = json!("arn:aws:iam::1:role/exec");
            v["containerDefinitions"][0]["secrets"] = bad;
            let m = validate_json(&v).unwrap_err().to_string();
            assert!(m.contains(why), "{m}");
        }
        let mut v = base();
        v["containerDefinitions"][0]["secrets"] = json!([{"name": "DB", "valueFrom": "/db"}]);
        let m = validate_json(&v).unwrap_err().to_string();
        assert!(
            m.contains("you must also specify a value for 'executionRoleArn'"),
            "{m}"
        );
        assert_eq!(
            SecretSource::parse("arn:aws:secretsmanager:r:1:secret:db-AbCdEf:user:AWSPREVIOUS:").unwrap(),
            SecretSource::SecretsManager {
                secret_arn: "arn:aws:secretsmanager:r:1:secret:db-AbCdEf".into(),
                json_key: Some("user".into()),
                version_stage: Some("AWSPREVIOUS".into()),
                version_id: None,
            }
        );
        assert!(SecretSource::parse("arn:aws:secretsmanager:r:1:secret:db:k:AWSCURRENT:v1").is_err());
    }

    #[test]
    fn capabilities_are_ecs_names_and_fargate_adds_only_sys_ptrace() {
        let mut v = base();
        v["containerDefinitions"][0]["linuxParameters"] =
            json!({"capabilities": {"add": ["SYS_PTRACE"], "drop": ["ALL"]}});
        let ok = validate_json(&v).unwrap();
        let caps = ok.containers[0]
            .linux_parameters
            .as_ref()
            .unwrap()
            .capabilities
            .as_ref()
            .unwrap();
        assert_eq!(
            (caps.added(), caps.dropped()),
            (&["SYS_PTRACE".to_string()][..], &["ALL".to_string()][..])
        );
        v["containerDefinitions"][0]["linuxParameters"] = json!({"capabilities": {"add": ["CAP_NET_ADMIN"]}});
        assert!(validate_json(&v)
            .unwrap_err()
            .to_string()
            .contains("CAP_NET_ADMIN is not a valid kernel capability"));
        v["requiresCompatibilities"] = json!(["FARGATE"]);
        v["networkMode"] = json!("awsvpc");
        v["cpu"] = json!("256");
        v["memory"] = json!("512");
        v["containerDefinitions"][0]["linuxParameters"] = json!({"capabilities": {"add": ["NET_ADMIN"]}});
        let m = validate_json(&v).unwrap_err().to_string();
        assert!(
            m.contains("Fargate only supports adding the SYS_PTRACE kernel capability"),
            "{m}"
        );
    }

    #[test]
    fn fields_gantry_cannot_honour_are_refused_and_unknown_ones_kept() {
        let mut v = base();
        v["containerDefinitions"][0]["linuxParameters"] =
            json!({"initProcessEnabled": true, "devices": [{"hostPath": "/dev/kvm"}]});
        assert!(validate_json(&v)
            .unwrap_err()
            .to_string()
            .contains("linuxParameters.devices"));
        let mut v = base();
        v["volumes"] = json!([{"name": "data", "efsVolumeConfiguration": {"fileSystemId": "fs-1"}}]);
        assert!(validate_json(&v)
            .unwrap_err()
            .to_string()
            .contains("EFS is not offered"));
        v["volumes"] = json!([{"name": "data"}]);
        v["containerDefinitions"][0]["mountPoints"] = json!([{"sourceVolume": "data", "containerPath": "/data"}]);
        let ok = validate_json(&v).unwrap();
        let back = serde_json::to_value(&ok.containers[0]).unwrap();
        assert_eq!(
            back["mountPoints"],
            json!([{"sourceVolume": "data", "containerPath": "/data"}])
        );
        // Empty lists are the same as absent (the console and CLI send them).
        let mut v = base();
        v["volumes"] = json!([]);
        v["containerDefinitions"][0]["mountPoints"] = json!([]);
        v["containerDefinitions"][0]["secrets"] = json!([]);
        v["containerDefinitions"][0]["linuxParameters"] = json!({"initProcessEnabled": true});
        v["containerDefinitions"][0]["futureField"] = json!({"x": 1});
        let ok = validate_json(&v).unwrap();
        let c = &ok.containers[0];
        assert_eq!(c.linux_parameters.as_ref().unwrap().init_process_enabled, Some(true));
        let back = serde_json::to_value(c).unwrap();
        assert_eq!(back["futureField"], json!({"x": 1}), "unknown members round-trip");
    }

    #[test]
    fn depends_on_rules() {
        let r = with(|v| {
            v["containerDefinitions"] = json!([
                {"name": "app", "image": "x", "dependsOn": [{"containerName": "init", "condition": "SUCCESS"}, {"containerName": "db", "condition": "HEALTHY"}]},
                {"name": "init", "image": "x", "essential": false},
                {"name": "db", "image": "x", "healthCheck": {"command": ["CMD-SHELL", "true"]}}
            ])
        })
        .unwrap();
        assert_eq!(start_order(&r.containers), ["init", "db", "app"]);
        let e = with(|v| {
            v["containerDefinitions"] = json!([
                {"name": "a", "image": "x", "dependsOn": [{"containerName": "b", "condition": "START"}]},
                {"name": "b", "image": "x", "dependsOn": [{"containerName": "a", "condition": "START"}]}
            ])
        });
        assert!(matches!(e, Err(EcsError::Client(m)) if m.contains("cycle")));
        let e = with(|v| {
            v["containerDefinitions"] = json!([
                {"name": "a", "image": "x", "dependsOn": [{"containerName": "b", "condition": "COMPLETE"}]},
                {"name": "b", "image": "x"}
            ])
        });
        assert!(matches!(e, Err(EcsError::Client(m)) if m.contains("essential container b")));
        let e = with(|v| {
            v["containerDefinitions"] = json!([
                {"name": "a", "image": "x", "dependsOn": [{"containerName": "b", "condition": "HEALTHY"}]},
                {"name": "b", "image": "x"}
            ])
        });
        assert!(matches!(e, Err(EcsError::Client(m)) if m.contains("health check")));
    }
}
