//! Task volumes as Fargate offers them: bind mounts on the task's ephemeral storage. A task
//! definition names its volumes (`volumes[].name`), containers mount them (`mountPoints`) or
//! take every mount of another container (`volumesFrom`), and the containers of one task share
//! what is written there for the task's life. Volumes of other kinds (a host path, Docker
//! volumes, EFS, FSx, EBS configured at launch) need what Gantry does not have, and are refused
//! by name rather than run as something else.

use crate::error::EcsError;
use crate::taskdef::{is_set, ContainerDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// A task-level volume, as sent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Every other member (host, dockerVolumeConfiguration, ...), refused when set.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MountPoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_volume: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VolumeFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// One mount of a volume into a container, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub volume: String,
    pub path: String,
    pub read_only: bool,
}

/// Volume members Gantry cannot honour, and why.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("dockerVolumeConfiguration", "Docker volumes are not offered"),
    ("efsVolumeConfiguration", "Amazon EFS is not offered"),
    ("fsxWindowsFileServerVolumeConfiguration", "Amazon FSx is not offered"),
    (
        "configuredAtLaunch",
        "Amazon EBS volumes configured at launch are not offered",
    ),
];

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks the task's volumes and every container's mounts of them.
pub fn validate(volumes: &[Volume], containers: &[ContainerDefinition]) -> Result<(), EcsError> {
    let mut names = HashSet::new();
    for v in volumes {
        let name = v.name.as_deref().unwrap_or("");
        if !valid_name(name) {
            return Err(EcsError::client(format!(
                "Volume name {name:?} is invalid: up to 255 letters (uppercase and lowercase), numbers, hyphens, and underscores are allowed."
            )));
        }
        if !names.insert(name) {
            return Err(EcsError::client(format!(
                "Volume names must be unique: {name} appears more than once."
            )));
        }
        if v.other
            .get("host")
            .and_then(|h| h.get("sourcePath"))
            .is_some_and(is_set)
        {
            return Err(EcsError::client(format!(
                "Volume {name}: host.sourcePath is not supported: Gantry runs tasks as Fargate does, on their own ephemeral storage, never on a node's paths."
            )));
        }
        if let Some((field, why)) = UNSUPPORTED.iter().find(|(f, _)| v.other.get(*f).is_some_and(is_set)) {
            return Err(EcsError::client(format!("Volume {name}: {field}: {why}.")));
        }
    }
    for c in containers {
        let mut paths = HashSet::new();
        for m in c.mount_points.iter().flatten() {
            let volume = m.source_volume.as_deref().unwrap_or("");
            if !names.contains(volume) {
                return Err(EcsError::client(format!(
                    "Container {}: mountPoints: the source volume {volume:?} is not one of the task definition's volumes.",
                    c.name()
                )));
            }
            let path = m.container_path.as_deref().unwrap_or("");
            check_path(c.name(), path)?;
            if !paths.insert(normal(path)) {
                return Err(EcsError::client(format!(
                    "Container {}: mountPoints: {path} is mounted more than once.",
                    c.name()
                )));
            }
        }
        for f in c.volumes_from.iter().flatten() {
            let source = f.source_container.as_deref().unwrap_or("");
            if source == c.name() || !containers.iter().any(|o| o.name() == source) {
                return Err(EcsError::client(format!(
                    "Container {}: volumesFrom: {source:?} is not another container of the task definition.",
                    c.name()
                )));
            }
        }
        let mounts = mounts_of(containers, c.name()).map_err(EcsError::client)?;
        let mut seen = HashSet::new();
        if let Some(m) = mounts.iter().find(|m| !seen.insert(m.path.as_str())) {
            return Err(EcsError::client(format!(
                "Container {}: {} is mounted more than once (mountPoints and volumesFrom).",
                c.name(),
                m.path
            )));
        }
    }
    Ok(())
}

/// An absolute path without `.` or `..` parts, not the root.
fn check_path(container: &str, path: &str) -> Result<(), EcsError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let ok = path.starts_with('/') && !parts.is_empty() && !parts.iter().any(|p| *p == "." || *p == "..");
    match ok && !path.contains('\0') && path.len() <= 4096 {
        true => Ok(()),
        false => Err(EcsError::client(format!(
            "Container {container}: mountPoints: containerPath {path:?} must be an absolute path other than / and without . or .. parts."
        ))),
    }
}

/// The path with empty parts (doubled or trailing slashes) left out.
fn normal(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

/// What `name` mounts: its own mount points, then every mount of each container it takes
/// volumes from (read-only when either says so), as Docker's volumes-from does.
pub fn mounts_of(containers: &[ContainerDefinition], name: &str) -> Result<Vec<Mount>, String> {
    resolve(containers, name, &mut Vec::new())
}

fn resolve(containers: &[ContainerDefinition], name: &str, path: &mut Vec<String>) -> Result<Vec<Mount>, String> {
    if path.iter().any(|p| p == name) {
        path.push(name.to_string());
        return Err(format!("volumesFrom goes round in a circle: {}.", path.join(" -> ")));
    }
    let Some(c) = containers.iter().find(|c| c.name() == name) else {
        return Ok(vec![]);
    };
    let mut out: Vec<Mount> = c
        .mount_points
        .iter()
        .flatten()
        .map(|m| Mount {
            volume: m.source_volume.clone().unwrap_or_default(),
            path: normal(m.container_path.as_deref().unwrap_or_default()),
            read_only: m.read_only.unwrap_or(false),
        })
        .collect();
    path.push(name.to_string());
    for f in c.volumes_from.iter().flatten() {
        let source = f.source_container.as_deref().unwrap_or("");
        for mut m in resolve(containers, source, path)? {
            m.read_only |= f.read_only.unwrap_or(false);
            out.push(m);
        }
    }
    path.pop();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn containers(v: serde_json::Value) -> Vec<ContainerDefinition> {
        serde_json::from_value(v).unwrap()
    }

    fn volumes(v: serde_json::Value) -> Vec<Volume> {
        serde_json::from_value(v).unwrap()
    }

    fn refusal(vols: serde_json::Value, cs: serde_json::Value) -> String {
        match validate(&volumes(vols), &containers(cs)) {
            Err(e) => e.to_string(),
            Ok(()) => panic!("accepted"),
        }
    }

    #[test]
    fn mounts_resolve_through_volumes_from() {
        let cs = containers(json!([
            {"name": "writer", "mountPoints": [{"sourceVolume": "data", "containerPath": "/data"}]},
            {"name": "reader", "volumesFrom": [{"sourceContainer": "writer", "readOnly": true}],
             "mountPoints": [{"sourceVolume": "scratch", "containerPath": "/scratch"}]},
            {"name": "third", "volumesFrom": [{"sourceContainer": "reader"}]},
        ]));
        validate(
            &volumes(json!([{"name": "data"}, {"name": "scratch", "host": {}}])),
            &cs,
        )
        .unwrap();
        let m = |v: &str, p: &str, ro| Mount {
            volume: v.into(),
            path: p.into(),
            read_only: ro,
        };
        assert_eq!(mounts_of(&cs, "writer").unwrap(), [m("data", "/data", false)]);
        assert_eq!(
            mounts_of(&cs, "reader").unwrap(),
            [m("scratch", "/scratch", false), m("data", "/data", true)]
        );
        // Read-only stays read-only further down the chain.
        assert_eq!(
            mounts_of(&cs, "third").unwrap(),
            [m("scratch", "/scratch", false), m("data", "/data", true)]
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let none = json!([{"name": "a"}]);
        assert!(refusal(json!([{"name": "v", "host": {"sourcePath": "/etc"}}]), none.clone()).contains("sourcePath"));
        assert!(refusal(
            json!([{"name": "v", "efsVolumeConfiguration": {"fileSystemId": "fs-1"}}]),
            none.clone()
        )
        .contains("EFS"));
        assert!(refusal(json!([{"name": "v", "configuredAtLaunch": true}]), none.clone()).contains("EBS"));
        assert!(refusal(json!([{"name": "v"}, {"name": "v"}]), none.clone()).contains("unique"));
        assert!(refusal(json!([{"name": "../v"}]), none).contains("invalid"));
        let vols = json!([{"name": "v"}]);
        let mount = |path: &str| json!([{"name": "a", "mountPoints": [{"sourceVolume": "v", "containerPath": path}]}]);
        for bad in ["relative", "/", "/a/../etc", "/./x", ""] {
            assert!(refusal(vols.clone(), mount(bad)).contains("absolute path"), "{bad}");
        }
        let unknown = json!([{"name": "a", "mountPoints": [{"sourceVolume": "w", "containerPath": "/w"}]}]);
        assert!(refusal(vols.clone(), unknown).contains("not one of the task definition's volumes"));
        let twice = json!([{"name": "a", "mountPoints": [
            {"sourceVolume": "v", "containerPath": "/w"}, {"sourceVolume": "v", "containerPath": "/w/"}]}]);
        assert!(refusal(vols.clone(), twice).contains("mounted more than once"));
        let itself = json!([{"name": "a", "volumesFrom": [{"sourceContainer": "a"}]}]);
        assert!(refusal(vols.clone(), itself).contains("not another container"));
        let circle = json!([
            {"name": "a", "volumesFrom": [{"sourceContainer": "b"}]},
            {"name": "b", "volumesFrom": [{"sourceContainer": "a"}]},
        ]);
        assert!(refusal(vols.clone(), circle).contains("circle"));
        let clash = json!([
            {"name": "a", "mountPoints": [{"sourceVolume": "v", "containerPath": "/w"}]},
            {"name": "b", "mountPoints": [{"sourceVolume": "v", "containerPath": "/w"}],
             "volumesFrom": [{"sourceContainer": "a"}]},
        ]);
        assert!(refusal(vols, clash).contains("more than once"));
    }
}
