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
}

/// The validated result: sizes in units/MiB.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidTaskDefinition {
    pub family: String,
    pub cpu: i64,
    pub memory: i64,
    pub containers: Vec<ContainerDefinition>,
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn validate(req: &RegisterTaskDefinition) -> Result<ValidTaskDefinition, EcsError> {
    let family = req
        .family
        .clone()
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
            "Too many containers: a Fargate task definition may have at most 10, got {}.",
            containers.len()
        )));
    }
    match req.network_mode.as_deref() {
        Some("awsvpc") => {}
        Some(other) => {
            return Err(EcsError::client(format!(
                "Fargate only supports network mode 'awsvpc'. Gantry runs every task on Fargate semantics; got '{other}'."
            )));
        }
        None => {
            return Err(EcsError::client(
                "Fargate only supports network mode 'awsvpc': set networkMode to awsvpc.",
            ));
        }
    }
    if let Some(rc) = &req.requires_compatibilities {
        if let Some(bad) = rc.iter().find(|c| c.as_str() != "FARGATE") {
            return Err(EcsError::client(format!(
                "Gantry runs tasks with Fargate compatibility only; requiresCompatibilities contains {bad}."
            )));
        }
    }
    let cpu_s = req.cpu.as_deref().ok_or_else(|| {
        EcsError::client(
            "Fargate requires task definition to have cpu value set (for example \"256\" or \"0.25 vCPU\").",
        )
    })?;
    let mem_s = req.memory.as_deref().ok_or_else(|| {
        EcsError::client(
            "Fargate requires task definition to have memory value set (for example \"512\" or \"0.5 GB\").",
        )
    })?;
    let cpu = fargate::parse_cpu(cpu_s)
        .ok_or_else(|| EcsError::client(format!("Invalid 'cpu' setting for task: {cpu_s:?}.")))?;
    let memory = fargate::parse_memory(mem_s)
        .ok_or_else(|| EcsError::client(format!("Invalid 'memory' setting for task: {mem_s:?}.")))?;
    if !fargate::is_valid_size(cpu, memory) {
        let opts = fargate::memory_options(cpu);
        let hint = if opts.is_empty() {
            "valid cpu values are 256, 512, 1024, 2048, 4096, 8192 and 16384".to_string()
        } else {
            format!("for {cpu} CPU units memory must be one of {opts:?} MiB")
        };
        return Err(EcsError::client(format!(
            "No Fargate configuration exists for given values: {cpu} CPU, {memory} memory. See the Amazon ECS documentation for the valid values ({hint})."
        )));
    }
    if let Some(e) = &req.ephemeral_storage {
        if !(21..=200).contains(&e.size_in_gi_b) {
            return Err(EcsError::client(format!(
                "The ephemeral storage size must be between 21 and 200 GiB, got {}.",
                e.size_in_gi_b
            )));
        }
    }

    let mut names = HashSet::new();
    let (mut cpu_sum, mut mem_sum) = (0i64, 0i64);
    for c in &containers {
        let name = c
            .name
            .as_deref()
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
            return Err(EcsError::client(format!(
                "Container.image should not be null or empty (container {name})."
            )));
        }
        if let Some(t) = c.stop_timeout {
            if !(2..=120).contains(&t) {
                return Err(EcsError::client(format!(
                    "Invalid stopTimeout value for container {name}: {t}. Fargate allows 2 to 120 seconds."
                )));
            }
        }
        if let Some(m) = c.memory {
            if m < 6 {
                return Err(EcsError::client(format!(
                    "Invalid 'memory' setting for container '{name}'. The memory must be at least 6 MiB."
                )));
            }
        }
        if let (Some(m), Some(r)) = (c.memory, c.memory_reservation) {
            if r > m {
                return Err(EcsError::client(format!(
                    "Invalid 'memoryReservation' setting for container '{name}': it must be less than 'memory'."
                )));
            }
        }
        cpu_sum += c.cpu.unwrap_or(0);
        mem_sum += c.memory.or(c.memory_reservation).unwrap_or(0);
        if let Some(h) = &c.health_check {
            validate_health_check(name, h)?;
        }
        if let Some(l) = &c.log_configuration {
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
        }
    }
    if !containers.iter().any(ContainerDefinition::is_essential) {
        return Err(EcsError::client(
            "Task definition must have at least one essential container.",
        ));
    }
    if cpu_sum > cpu {
        return Err(EcsError::client(format!(
            "The sum of container cpu ({cpu_sum}) is greater than the task cpu ({cpu})."
        )));
    }
    if mem_sum > memory {
        return Err(EcsError::client(format!(
            "The sum of container memory ({mem_sum} MiB) is greater than the task memory ({memory} MiB)."
        )));
    }
    validate_depends_on(&containers)?;
    Ok(ValidTaskDefinition {
        family,
        cpu,
        memory,
        containers,
    })
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
        validate(&serde_json::from_value(v).unwrap())
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
    fn accepts_a_minimal_fargate_definition() {
        let v = td(base()).unwrap();
        assert_eq!((v.cpu, v.memory, v.family.as_str()), (256, 512, "web"));
        let v = with(|v| {
            v["cpu"] = json!("1 vCPU");
            v["memory"] = json!("2 GB");
        })
        .unwrap();
        assert_eq!((v.cpu, v.memory), (1024, 2048));
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
