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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Placement {
    On(String),
    Failed { arn: Option<String>, reason: String },
}

/// A placementStrategy rule. Rules are applied in order: the first decides, the next break
/// its ties (as ECS evaluates them).
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    Random,
    /// Evenly over the values of an attribute (`attribute:NAME`), or over instances
    /// (`instanceId` / `host`), counting the tasks of the same group.
    Spread(String),
    /// Fewest instances: the one with the least of this resource left that still fits.
    BinpackCpu,
    BinpackMemory,
}

/// What ECS does for a service without a strategy: spread over availability zones, then over
/// instances.
pub fn default_strategy() -> Vec<Strategy> {
    vec![
        Strategy::Spread("attribute:ecs.availability-zone".into()),
        Strategy::Spread("instanceId".into()),
    ]
}

/// Parses placementStrategy rules (already validated by the API layer).
pub fn parse_strategy(rules: &[serde_json::Value]) -> Vec<Strategy> {
    let rules: Vec<Strategy> = rules
        .iter()
        .filter_map(|r| match (r["type"].as_str(), r["field"].as_str()) {
            (Some("random"), _) => Some(Strategy::Random),
            (Some("spread"), Some(f)) => Some(Strategy::Spread(f.to_string())),
            (Some("binpack"), Some("cpu")) => Some(Strategy::BinpackCpu),
            (Some("binpack"), Some("memory")) => Some(Strategy::BinpackMemory),
            _ => None,
        })
        .collect();
    if rules.is_empty() {
        default_strategy()
    } else {
        rules
    }
}

/// The most rules a strategy may have (ECS's limit).
const MAX_RULES: usize = 5;

/// Places `count` copies of `demand`, each reducing what is left for the next, choosing among
/// the instances that fit by `strategy`. `seed` makes `random` reproducible.
pub fn place(
    instances: &mut [InstanceView],
    demand: &Demand,
    count: usize,
    strategy: &[Strategy],
    seed: u64,
) -> Vec<Placement> {
    if instances.is_empty() {
        let none = Placement::Failed {
            arn: None,
            reason: "No Container Instances were found in your cluster.".into(),
        };
        return vec![none; count];
    }
    // What does not change while placing: status and memberOf, per instance.
    let fixed: Vec<Result<(), String>> = instances.iter().map(|i| fixed_fit(i, demand)).collect();
    let mut state = SpreadState::new(instances, demand, strategy);
    let mut out = Vec::with_capacity(count);
    for task in 0..count {
        let mut best: Option<([i64; MAX_RULES], usize)> = None;
        let mut closest = None;
        for (i, inst) in instances.iter().enumerate() {
            let fit = fixed[i].clone().and_then(|_| {
                if demand.distinct_instance && state.on_instance[i] > 0 {
                    return Err("ATTRIBUTE".to_string());
                }
                resource_fit(inst, demand)
            });
            if let Err(reason) = fit {
                closest = Some((inst.arn.clone(), reason));
                continue;
            }
            let key = state.key(i, inst, demand, strategy, seed ^ task as u64);
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, i));
            }
        }
        match best {
            Some((_, i)) => {
                let inst = &mut instances[i];
                inst.used_cpu += demand.cpu;
                inst.used_memory += demand.memory;
                inst.used_ports.extend(demand.ports.iter().cloned());
                inst.groups.push(demand.group.clone());
                state.placed(i);
                out.push(Placement::On(inst.arn.clone()));
            }
            None => {
                let (arn, reason) = closest.expect("at least one instance was tried");
                out.push(Placement::Failed { arn: Some(arn), reason });
            }
        }
    }
    out
}

/// Counts the spread rules need: this group's tasks per instance and per attribute value.
struct SpreadState {
    on_instance: Vec<i64>,
    /// For each spread-by-attribute rule: the instance's value index, and tasks per value.
    by_attribute: Vec<(Vec<usize>, Vec<i64>)>,
}

impl SpreadState {
    fn new(instances: &[InstanceView], demand: &Demand, strategy: &[Strategy]) -> SpreadState {
        let on_instance: Vec<i64> = instances
            .iter()
            .map(|i| i.groups.iter().filter(|g| **g == demand.group).count() as i64)
            .collect();
        let by_attribute = strategy
            .iter()
            .filter_map(|s| match s {
                Strategy::Spread(f) => f.strip_prefix("attribute:"),
                _ => None,
            })
            .map(|name| {
                let mut values: Vec<Option<&str>> = Vec::new();
                let index: Vec<usize> = instances
                    .iter()
                    .map(|i| {
                        let v = i.attributes.get(name).and_then(|v| v.as_deref());
                        values.iter().position(|x| *x == v).unwrap_or_else(|| {
                            values.push(v);
                            values.len() - 1
                        })
                    })
                    .collect();
                let mut counts = vec![0i64; values.len()];
                for (i, n) in on_instance.iter().enumerate() {
                    counts[index[i]] += n;
                }
                (index, counts)
            })
            .collect();
        SpreadState {
            on_instance,
            by_attribute,
        }
    }

    fn placed(&mut self, i: usize) {
        self.on_instance[i] += 1;
        for (index, counts) in &mut self.by_attribute {
            counts[index[i]] += 1;
        }
    }

    /// Lower is better, rule by rule.
    fn key(&self, i: usize, inst: &InstanceView, d: &Demand, strategy: &[Strategy], seed: u64) -> [i64; MAX_RULES] {
        let mut key = [0i64; MAX_RULES];
        let mut attribute_rule = 0;
        for (k, rule) in strategy.iter().take(MAX_RULES).enumerate() {
            key[k] = match rule {
                Strategy::Spread(f) if f.starts_with("attribute:") => {
                    let (index, counts) = &self.by_attribute[attribute_rule];
                    attribute_rule += 1;
                    counts[index[i]]
                }
                Strategy::Spread(_) => self.on_instance[i],
                Strategy::BinpackCpu => inst.cpu - inst.used_cpu - d.cpu,
                Strategy::BinpackMemory => inst.memory - inst.used_memory - d.memory,
                Strategy::Random => {
                    let h = (i as u64 ^ seed.rotate_left(17)).wrapping_mul(0x9E3779B97F4A7C15);
                    (h >> 1) as i64
                }
            };
        }
        key
    }
}

/// What placement cannot change: the instance's status and the memberOf constraints.
fn fixed_fit(inst: &InstanceView, d: &Demand) -> Result<(), String> {
    if !inst.active {
        return Err("The container instance is not ACTIVE (it is draining or deregistered).".into());
    }
    for e in &d.member_of {
        if !matches(e, &inst.attributes).unwrap_or(false) {
            return Err("ATTRIBUTE".into());
        }
    }
    Ok(())
}

/// Whether what is left on the instance takes the task, in ECS's failure reasons.
fn resource_fit(inst: &InstanceView, d: &Demand) -> Result<(), String> {
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
        let p = place(&mut n, &d, 3, &default_strategy(), 0);
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
        assert!(
            matches!(&place(&mut n, &d, 1, &[], 0)[0], Placement::Failed { reason, .. } if reason == "RESOURCE:CPU")
        );
        assert!(matches!(
            &place(&mut [], &d, 1, &[], 0)[0],
            Placement::Failed { arn: None, .. }
        ));
    }

    #[test]
    fn ports_and_distinct_instance() {
        let mut n = vec![node(4096, 4096)];
        let d = Demand {
            ports: vec![(8080, "tcp".into())],
            group: "g".into(),
            ..Default::default()
        };
        let p = place(&mut n, &d, 2, &[], 0);
        assert!(matches!(&p[1], Placement::Failed { reason, .. } if reason == "RESOURCE:PORTS"));
        let d = Demand {
            group: "g".into(),
            distinct_instance: true,
            ..Default::default()
        };
        assert!(matches!(&place(&mut n, &d, 1, &[], 0)[0], Placement::Failed { reason, .. } if reason == "ATTRIBUTE"));
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

#[cfg(test)]
mod strategy_tests {
    use super::{default_strategy, place, Demand, InstanceView, Placement, Strategy as Rule};
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashSet};

    fn zone_node(i: usize, zone: &str, cpu: i64, memory: i64) -> InstanceView {
        InstanceView {
            arn: format!("ci-{i}"),
            active: true,
            cpu,
            memory,
            used_cpu: 0,
            used_memory: 0,
            used_ports: HashSet::new(),
            attributes: [("ecs.availability-zone".to_string(), Some(zone.to_string()))]
                .into_iter()
                .collect(),
            groups: vec![],
        }
    }

    fn per_instance(p: &[Placement]) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for x in p {
            if let Placement::On(a) = x {
                *m.entry(a.clone()).or_default() += 1;
            }
        }
        m
    }

    #[test]
    fn services_spread_over_zones_by_default() {
        let mut n: Vec<_> = ["a", "b", "c", "a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, z)| zone_node(i, z, 4096, 4096))
            .collect();
        let d = Demand {
            cpu: 10,
            memory: 10,
            group: "service:web".into(),
            ..Default::default()
        };
        let p = place(&mut n, &d, 6, &default_strategy(), 0);
        // Two per zone, and within a zone one per instance.
        assert_eq!(per_instance(&p).values().copied().collect::<Vec<_>>(), vec![1; 6]);
        let p = place(&mut n, &d, 3, &default_strategy(), 0);
        let zones: Vec<&str> = p
            .iter()
            .map(|x| match x {
                Placement::On(a) => n.iter().find(|i| &i.arn == a).unwrap().attributes["ecs.availability-zone"]
                    .as_deref()
                    .unwrap(),
                _ => panic!("{x:?}"),
            })
            .collect();
        let mut z = zones.clone();
        z.sort();
        assert_eq!(z, ["a", "b", "c"], "the next three go one to each zone");
    }

    #[test]
    fn binpack_fills_the_fullest_instance_first() {
        let mut n = vec![zone_node(0, "a", 4096, 2000), zone_node(1, "a", 4096, 1000)];
        let d = Demand {
            cpu: 1,
            memory: 300,
            group: "g".into(),
            ..Default::default()
        };
        let p = place(&mut n, &d, 4, &[Rule::BinpackMemory], 0);
        let on: Vec<String> = p.iter().map(|x| format!("{x:?}")).collect();
        assert!(
            on[..3].iter().all(|x| x.contains("ci-1")) && on[3].contains("ci-0"),
            "{on:?}"
        );
    }

    #[test]
    fn random_is_reproducible_by_seed_and_varies_with_it() {
        let nodes: Vec<_> = (0..10).map(|i| zone_node(i, "a", 4096, 4096)).collect();
        let d = Demand {
            cpu: 1,
            memory: 1,
            group: "g".into(),
            ..Default::default()
        };
        let run = |seed| place(&mut nodes.clone(), &d, 5, &[Rule::Random], seed);
        assert_eq!(run(7), run(7));
        assert!((0..5).map(run).collect::<std::collections::HashSet<_>>().len() > 1);
    }

    fn arb_nodes() -> impl Strategy<Value = Vec<InstanceView>> {
        proptest::collection::vec((0usize..3, 1i64..4, 1i64..4, any::<bool>(), 0u16..3), 0..8).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (zone, cpu, mem, active, port))| {
                    let mut n = zone_node(i, ["a", "b", "c"][zone], cpu * 512, mem * 512);
                    n.active = active || i == 0;
                    if port > 0 {
                        n.used_ports.insert((8000 + port, "tcp".into()));
                    }
                    n
                })
                .collect()
        })
    }

    fn arb_strategy() -> impl Strategy<Value = Vec<Rule>> {
        proptest::collection::vec(
            prop_oneof![
                Just(Rule::Random),
                Just(Rule::Spread("attribute:ecs.availability-zone".into())),
                Just(Rule::Spread("instanceId".into())),
                Just(Rule::BinpackCpu),
                Just(Rule::BinpackMemory),
            ],
            0..3,
        )
    }

    proptest! {
        #[test]
        fn placement_never_overcommits_and_fails_only_when_nothing_fits(
            nodes in arb_nodes(),
            strategy in arb_strategy(),
            cpu in 0i64..1024,
            memory in 1i64..1024,
            port in prop_oneof![Just(None), (8001u16..8003).prop_map(Some)],
            distinct in any::<bool>(),
            zone_only in prop_oneof![Just(None), Just(Some("a")), Just(Some("b"))],
            count in 1usize..12,
            seed in any::<u64>(),
        ) {
            let d = Demand {
                cpu,
                memory,
                ports: port.iter().map(|p| (*p, "tcp".to_string())).collect(),
                group: "g".into(),
                member_of: zone_only.iter().map(|z| format!("attribute:ecs.availability-zone == {z}")).collect(),
                distinct_instance: distinct,
            };
            let mut after = nodes.clone();
            let p = place(&mut after, &d, count, &strategy, seed);
            prop_assert_eq!(p.len(), count);
            for n in &after {
                prop_assert!(n.used_cpu <= n.cpu && n.used_memory <= n.memory, "overcommitted {n:?}");
                let mine = n.groups.iter().filter(|g| *g == "g").count();
                if distinct {
                    prop_assert!(mine <= 1, "distinctInstance broken on {}", n.arn);
                }
                if port.is_some() {
                    prop_assert!(mine <= 1, "a host port placed twice on {}", n.arn);
                }
                if mine > 0 {
                    prop_assert!(n.active, "placed on an inactive instance");
                    if let Some(z) = zone_only {
                        prop_assert_eq!(n.attributes["ecs.availability-zone"].as_deref(), Some(z));
                    }
                }
            }
            // Failures come only once nothing fits any more: every later task fails too.
            if let Some(first) = p.iter().position(|x| matches!(x, Placement::Failed { .. })) {
                let all_failed = p[first..].iter().all(|x| matches!(x, Placement::Failed { .. }));
                prop_assert!(all_failed, "{:?}", p);
                let mut again = after.clone();
                let retry = place(&mut again, &d, 1, &strategy, seed);
                let failed = matches!(retry[0], Placement::Failed { .. });
                prop_assert!(failed, "a retry placed what had failed: {:?}", retry);
            }
        }

        #[test]
        fn spreading_over_zones_stays_within_one(
            per_zone in 1usize..4,
            count in 1usize..30,
        ) {
            let mut nodes: Vec<_> = (0..3 * per_zone)
                .map(|i| zone_node(i, ["a", "b", "c"][i % 3], 1 << 20, 1 << 20))
                .collect();
            let d = Demand { cpu: 1, memory: 1, group: "service:s".into(), ..Default::default() };
            place(&mut nodes, &d, count, &default_strategy(), 0);
            let mut by_zone = BTreeMap::new();
            for n in &nodes {
                *by_zone.entry(n.attributes["ecs.availability-zone"].clone()).or_insert(0usize) += n.groups.len();
            }
            let (lo, hi) = (by_zone.values().min().unwrap(), by_zone.values().max().unwrap());
            prop_assert!(hi - lo <= 1, "{by_zone:?}");
        }
    }
}
