//! Placement of EC2 and EXTERNAL tasks on container instances: a pure function from the
//! instances (registered resources, what their tasks use, attributes) and the tasks to place
//! to placements or ECS-style failures. memberOf expressions use a subset of ECS's cluster
//! query language: `attribute:NAME == V`, `!=`, `in [A, B]`, `not_in [...]`, `exists`,
//! `!exists`, joined with `and` / `or` (and binds tighter), parentheses not supported.

use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceView {
    pub arn: String,
    pub active: bool,
    pub cpu: i64,
    pub memory: i64,
    pub used_cpu: i64,
    pub used_memory: i64,
    /// Host ports in use (number, protocol).
    pub used_ports: HashSet<(u16, String)>,
    pub attributes: BTreeMap<String, Option<String>>,
    /// Task groups of the tasks running there (distinctInstance).
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Demand {
    pub cpu: i64,
    pub memory: i64,
    /// Fixed host ports (number, protocol).
    pub ports: Vec<(u16, String)>,
    pub group: String,
    pub member_of: Vec<String>,
    pub distinct_instance: bool,
}

/// Where a task goes, or why it could not go anywhere.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    On(String),
    Failed { arn: Option<String>, reason: String },
}

/// Places `count` copies of `demand`, each reducing what is left for the next.
pub fn place(instances: &mut [InstanceView], demand: &Demand, count: usize) -> Vec<Placement> {
    let mut out = Vec::new();
    for _ in 0..count {
        if instances.is_empty() {
            out.push(Placement::Failed {
                arn: None,
                reason: "No Container Instances were found in your cluster.".into(),
            });
            continue;
        }
        let mut last_reason = None;
        let mut placed = None;
        for (i, inst) in instances.iter().enumerate() {
            match fits(inst, demand) {
                Ok(()) => {
                    placed = Some(i);
                    break;
                }
                Err(reason) => last_reason = Some((inst.arn.clone(), reason)),
            }
        }
        match placed {
            Some(i) => {
                let inst = &mut instances[i];
                inst.used_cpu += demand.cpu;
                inst.used_memory += demand.memory;
                inst.used_ports.extend(demand.ports.iter().cloned());
                inst.groups.push(demand.group.clone());
                out.push(Placement::On(inst.arn.clone()));
            }
            None => {
                let (arn, reason) = last_reason.expect("at least one instance was tried");
                out.push(Placement::Failed { arn: Some(arn), reason });
            }
        }
    }
    out
}

/// Why a task does not fit an instance, in ECS's failure reasons.
fn fits(inst: &InstanceView, d: &Demand) -> Result<(), String> {
    if !inst.active {
        return Err("The container instance is not ACTIVE (it is draining or deregistered).".into());
    }
    for e in &d.member_of {
        if !matches(e, &inst.attributes).unwrap_or(false) {
            return Err("ATTRIBUTE".into());
        }
    }
    if d.distinct_instance && inst.groups.contains(&d.group) {
        return Err("ATTRIBUTE".into());
    }
    if inst.cpu - inst.used_cpu < d.cpu {
        return Err("RESOURCE:CPU".into());
    }
    if inst.memory - inst.used_memory < d.memory {
        return Err("RESOURCE:MEMORY".into());
    }
    if d.ports.iter().any(|p| inst.used_ports.contains(p)) {
        return Err("RESOURCE:PORTS".into());
    }
    Ok(())
}

/// Checks a memberOf expression's syntax (RegisterTaskDefinition, RunTask, CreateService).
pub fn validate_expression(e: &str) -> Result<(), String> {
    matches(e, &BTreeMap::new()).map(|_| ())
}

/// Evaluates a memberOf expression against an instance's attributes.
pub fn matches(e: &str, attrs: &BTreeMap<String, Option<String>>) -> Result<bool, String> {
    let e = e.trim();
    if e.is_empty() {
        return Err("empty expression".into());
    }
    let mut any = false;
    for alternative in split_words(e, " or ") {
        let mut all = true;
        for term in split_words(alternative, " and ") {
            all &= term_matches(term.trim(), attrs)?;
        }
        any |= all;
    }
    Ok(any)
}

fn split_words<'a>(s: &'a str, sep: &str) -> Vec<&'a str> {
    // Separators inside [...] lists do not split.
    let mut parts = Vec::new();
    let (mut depth, mut start, mut i) = (0i32, 0usize, 0usize);
    let bytes = s.as_bytes();
    while i < s.len() {
        match bytes[i] {
            b'[' => depth += 1,
            b']' => depth -= 1,
            _ => {}
        }
        if depth == 0 && s[i..].to_ascii_lowercase().starts_with(sep) {
            parts.push(&s[start..i]);
            i += sep.len();
            start = i;
            continue;
        }
        i += 1;
    }
    parts.push(&s[start..]);
    parts
}

fn term_matches(term: &str, attrs: &BTreeMap<String, Option<String>>) -> Result<bool, String> {
    let bad = || {
        format!("unsupported memberOf expression {term:?}: use attribute:NAME ==, !=, in [..], not_in [..], exists or !exists")
    };
    let rest = term.strip_prefix("attribute:").ok_or_else(bad)?;
    let (name, op_and_value) = rest.split_once(char::is_whitespace).ok_or_else(bad)?;
    let op_and_value = op_and_value.trim();
    let value = attrs.get(name);
    let list = |s: &str| -> Result<Vec<String>, String> {
        let inner = s
            .trim()
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .ok_or_else(bad)?;
        Ok(inner
            .split(',')
            .map(|v| v.trim().trim_matches('"').to_string())
            .collect())
    };
    let v = || value.cloned().flatten();
    if op_and_value == "exists" {
        return Ok(value.is_some());
    }
    if op_and_value == "!exists" {
        return Ok(value.is_none());
    }
    if let Some(x) = op_and_value.strip_prefix("==") {
        return Ok(v().as_deref() == Some(x.trim().trim_matches('"')));
    }
    if let Some(x) = op_and_value.strip_prefix("!=") {
        return Ok(v().as_deref() != Some(x.trim().trim_matches('"')));
    }
    if let Some(x) = op_and_value.strip_prefix("not_in") {
        let l = list(x)?;
        return Ok(!v().is_some_and(|v| l.contains(&v)));
    }
    if let Some(x) = op_and_value.strip_prefix("in") {
        let l = list(x)?;
        return Ok(v().is_some_and(|v| l.contains(&v)));
    }
    Err(bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cpu: i64, memory: i64) -> InstanceView {
        InstanceView {
            arn: "ci-1".into(),
            active: true,
            cpu,
            memory,
            used_cpu: 0,
            used_memory: 0,
            used_ports: HashSet::new(),
            attributes: [
                ("ecs.os-type".to_string(), Some("linux".to_string())),
                ("stack".to_string(), Some("prod".to_string())),
                ("gpu".to_string(), None),
            ]
            .into_iter()
            .collect(),
            groups: vec![],
        }
    }

    #[test]
    fn resources_run_out_task_by_task() {
        let mut n = vec![node(2048, 1024)];
        let d = Demand {
            cpu: 512,
            memory: 400,
            group: "family:x".into(),
            ..Default::default()
        };
        let p = place(&mut n, &d, 3);
        assert_eq!(p[0], Placement::On("ci-1".into()));
        assert_eq!(p[1], Placement::On("ci-1".into()));
        assert_eq!(
            p[2],
            Placement::Failed {
                arn: Some("ci-1".into()),
                reason: "RESOURCE:MEMORY".into()
            }
        );
        let d = Demand {
            cpu: 4096,
            memory: 1,
            ..Default::default()
        };
        assert!(matches!(&place(&mut n, &d, 1)[0], Placement::Failed { reason, .. } if reason == "RESOURCE:CPU"));
        assert!(matches!(&place(&mut [], &d, 1)[0], Placement::Failed { arn: None, .. }));
    }

    #[test]
    fn ports_and_distinct_instance() {
        let mut n = vec![node(4096, 4096)];
        let d = Demand {
            ports: vec![(8080, "tcp".into())],
            group: "g".into(),
            ..Default::default()
        };
        let p = place(&mut n, &d, 2);
        assert!(matches!(&p[1], Placement::Failed { reason, .. } if reason == "RESOURCE:PORTS"));
        let d = Demand {
            group: "g".into(),
            distinct_instance: true,
            ..Default::default()
        };
        assert!(matches!(&place(&mut n, &d, 1)[0], Placement::Failed { reason, .. } if reason == "ATTRIBUTE"));
    }

    #[test]
    fn member_of_expressions() {
        let a = node(1, 1).attributes;
        for (e, want) in [
            ("attribute:stack == prod", true),
            ("attribute:stack != prod", false),
            ("attribute:stack in [dev, prod]", true),
            ("attribute:stack not_in [dev, prod]", false),
            ("attribute:gpu exists", true),
            ("attribute:ssd exists", false),
            ("attribute:ssd !exists", true),
            ("attribute:stack == dev or attribute:ecs.os-type == linux", true),
            ("attribute:stack == prod and attribute:ecs.os-type == windows", false),
        ] {
            assert_eq!(matches(e, &a), Ok(want), "{e}");
        }
        for bad in ["", "stack == prod", "attribute:stack ~= x", "attribute:stack in dev"] {
            assert!(validate_expression(bad).is_err(), "{bad:?}");
        }
    }
}
