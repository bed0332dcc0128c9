//! Elastic Load Balancing v2's control plane: load balancers, target groups, listeners and
//! their rules, registered targets, tags and attributes, kept in the store.
//!
//! Store layout, under `/elbv2/<account>/<region>/`:
//! - `lb/<name>` and `tg/<name>`: one record each (names are unique per account and region,
//!   so a create is an atomic create of that key);
//! - `listeners/<lb id>`: all listeners of a load balancer in one record, so a port is
//!   checked and taken in one compare-and-swap;
//! - `rules/<listener id>`: all non-default rules of a listener in one record, for the same
//!   reason with priorities (SetRulePriorities swaps them atomically);
//! - `targets/<tg name>`: the registered and draining targets of a group.

mod attributes;
mod listeners;
mod load_balancers;
mod rules;
mod target_groups;
mod targets;
mod view;

pub use attributes::{lb_attribute_defaults, tg_attribute_defaults};
pub use listeners::forwarded_groups;
pub use load_balancers::Vpc;
pub use rules::{check_conditions, parse_cidr};
pub use targets::{target_state, GroupState, TargetState};
pub use view::{GroupView, ListenerView, View};

use crate::{random_hex, Clock};
use gantry_store::{Store, StoreError};
use gantry_types::arn::Scope;
use gantry_types::elbv2::{ElbError, Tag};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

/// A change to a resource's tags (shared across the request's await points, hence Sync).
pub(crate) type TagEdit<'a> = &'a (dyn Fn(&[Tag]) -> Result<Vec<Tag>, ElbError> + Send + Sync);

/// Most items one Describe page holds, and the default page size (as ELBv2).
pub const MAX_PAGE: usize = 400;
/// Tags a resource may carry.
const MAX_TAGS: usize = 50;

#[derive(Clone)]
pub struct Elb {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    network: LbNetwork,
}

/// The loopback block load balancers get their addresses from. Loopback because the data
/// plane serves them on this host only; every Gantry instance sharing a host needs its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbNetwork {
    base: u32,
    prefix: u8,
}

impl Default for LbNetwork {
    fn default() -> LbNetwork {
        "127.77.0.0/16".parse().expect("static")
    }
}

impl std::str::FromStr for LbNetwork {
    type Err = String;
    fn from_str(s: &str) -> Result<LbNetwork, String> {
        let bad = || format!("{s:?} is not a block of 127.0.0.0/8 between /8 and /30 (for example 127.77.0.0/16)");
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: std::net::Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) || addr.octets()[0] != 127 {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(LbNetwork {
            base: u32::from(addr) & mask,
            prefix,
        })
    }
}

impl std::fmt::Display for LbNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", std::net::Ipv4Addr::from(self.base), self.prefix)
    }
}

impl LbNetwork {
    /// Host addresses, lowest first (network and broadcast excluded).
    pub fn hosts(&self) -> impl Iterator<Item = std::net::Ipv4Addr> + use<> {
        let (base, size) = (self.base, 1u32 << (32 - self.prefix));
        (1..size - 1).map(move |i| std::net::Ipv4Addr::from(base + i))
    }

    pub fn contains(&self, ip: std::net::Ipv4Addr) -> bool {
        u32::from(ip) & (u32::MAX << (32 - self.prefix)) == self.base
    }
}

impl From<crate::records::RecordError> for ElbError {
    fn from(e: crate::records::RecordError) -> ElbError {
        match e {
            crate::records::RecordError::Store(e) => store_err(e),
            corrupt => ElbError::server(corrupt.to_string()),
        }
    }
}

pub(crate) fn store_err(e: StoreError) -> ElbError {
    match e {
        StoreError::Backend(m) => ElbError::new("ServiceUnavailable", format!("The service is unavailable: {m}")),
        other => ElbError::server(format!("state store: {other}")),
    }
}

/// Parses a request (or part of one) into its typed form; members Gantry does not implement
/// are refused by name rather than ignored.
pub fn parse<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, ElbError> {
    serde_json::from_value(v).map_err(|e| {
        let m = e.to_string();
        match m.strip_prefix("unknown field `").and_then(|r| r.split('`').next()) {
            Some(field) => ElbError::validation(format!("{field} is not supported by Gantry.")),
            None => ElbError::validation(m),
        }
    })
}

/// Refuses members outside `allowed` by name (for inputs parsed with flattened parts).
pub fn only(input: &serde_json::Value, allowed: &[&str]) -> Result<(), ElbError> {
    let obj = input.as_object().into_iter().flatten();
    for (k, _) in obj {
        if !allowed.contains(&k.as_str()) {
            return Err(ElbError::validation(format!("{k} is not supported by Gantry.")));
        }
    }
    Ok(())
}

/// What an ELBv2 ARN names, parsed back to the ids the store keys use.
#[derive(Debug, Clone, PartialEq)]
pub enum Named {
    LoadBalancer {
        kind: String,
        name: String,
        id: String,
    },
    TargetGroup {
        name: String,
        id: String,
    },
    Listener {
        lb: (String, String, String),
        id: String,
    },
    Rule {
        lb: (String, String, String),
        listener: String,
        id: String,
    },
}

impl Elb {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Elb {
        Elb {
            store,
            clock,
            network: LbNetwork::default(),
        }
    }

    pub fn with_network(mut self, network: LbNetwork) -> Elb {
        self.network = network;
        self
    }

    fn acm(&self) -> crate::acm::Acm {
        crate::acm::Acm::new(self.store.clone(), self.clock.clone())
    }

    fn now(&self) -> f64 {
        self.clock.now_ms() as f64 / 1000.0
    }

    fn key(scope: &Scope, rest: &str) -> String {
        format!("/elbv2/{}/{}/{rest}", scope.account, scope.region)
    }

    fn arn(scope: &Scope, resource: &str) -> String {
        format!(
            "arn:aws:elasticloadbalancing:{}:{}:{resource}",
            scope.region, scope.account
        )
    }

    fn new_id() -> String {
        random_hex(8)
    }

    /// Parses an ARN of this account and region; `None` when it is not an ELBv2 ARN here.
    pub fn parse_arn(scope: &Scope, arn: &str) -> Option<Named> {
        let rest = arn.strip_prefix(&Self::arn(scope, ""))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let own = |s: &&str| s.to_string();
        match parts.as_slice() {
            ["loadbalancer", kind @ ("app" | "net"), name, id] => Some(Named::LoadBalancer {
                kind: own(kind),
                name: own(name),
                id: own(id),
            }),
            ["targetgroup", name, id] => Some(Named::TargetGroup {
                name: own(name),
                id: own(id),
            }),
            ["listener", kind @ ("app" | "net"), lb, lbid, id] => Some(Named::Listener {
                lb: (own(kind), own(lb), own(lbid)),
                id: own(id),
            }),
            ["listener-rule", kind @ ("app" | "net"), lb, lbid, lid, id] => Some(Named::Rule {
                lb: (own(kind), own(lb), own(lbid)),
                listener: own(lid),
                id: own(id),
            }),
            _ => None,
        }
    }

    fn records(&self) -> crate::records::Records {
        crate::records::Records::new(self.store.clone())
    }

    async fn load<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, i64)>, ElbError> {
        Ok(self.records().load(key).await?)
    }

    async fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, ElbError> {
        Ok(self.records().list(prefix).await?)
    }

    /// Creates `key`; `Ok(false)` when it already exists.
    async fn create<T: Serialize>(&self, key: &str, v: &T) -> Result<bool, ElbError> {
        Ok(self.records().create(key, v).await?)
    }

    /// Read-modify-write of one record with compare-and-swap, retried on conflict. `f` sees
    /// the current value (None when absent) and returns the new one (None deletes) and a result.
    async fn update<T, R>(
        &self,
        key: &str,
        f: impl FnMut(Option<T>) -> Result<(Option<T>, R), ElbError>,
    ) -> Result<R, ElbError>
    where
        T: Serialize + DeserializeOwned,
    {
        self.records().update(key, f).await
    }

    /// `update` of an existing record that must still be the one an ARN named (a record of
    /// the same name may have been deleted and made again); `f` edits it and returns a result.
    async fn edit<T, R>(
        &self,
        key: &str,
        is_it: impl Fn(&T) -> bool,
        not_found: impl Fn() -> ElbError,
        mut f: impl FnMut(&mut T) -> Result<R, ElbError>,
    ) -> Result<R, ElbError>
    where
        T: Serialize + DeserializeOwned,
    {
        self.update::<T, R>(key, |cur| {
            let mut r = cur.filter(|r| is_it(r)).ok_or_else(&not_found)?;
            let out = f(&mut r)?;
            Ok((Some(r), out))
        })
        .await
    }

    /// The records `names` name under `kind/`, or `missing(name)` for the first absent.
    async fn by_names<T: DeserializeOwned>(
        &self,
        scope: &Scope,
        kind: &str,
        names: &[String],
        missing: impl Fn(&str) -> ElbError,
    ) -> Result<Vec<T>, ElbError> {
        let mut out = vec![];
        for name in names {
            match self.load::<T>(&Self::key(scope, &format!("{kind}/{name}"))).await? {
                Some((r, _)) => out.push(r),
                None => return Err(missing(name)),
            }
        }
        Ok(out)
    }

    async fn delete_key(&self, key: &str) -> Result<(), ElbError> {
        Ok(self.records().delete(key).await?)
    }
}

/// Tag rules ELBv2 applies: keys 1-128, values up to 256, no `aws:` prefix, no key twice.
fn validate_tags(tags: &[Tag]) -> Result<(), ElbError> {
    let mut seen = std::collections::BTreeSet::new();
    for t in tags {
        if t.key.is_empty() || t.key.chars().count() > 128 {
            return Err(ElbError::validation("Tag keys must be between 1 and 128 characters."));
        }
        if t.value.as_deref().unwrap_or("").chars().count() > 256 {
            return Err(ElbError::validation("Tag values can be at most 256 characters."));
        }
        if t.key.to_ascii_lowercase().starts_with("aws:") {
            return Err(ElbError::validation("Tag keys cannot start with 'aws:'."));
        }
        if !seen.insert(t.key.as_str()) {
            return Err(ElbError::new(
                "DuplicateTagKeysException",
                format!("Tag key '{}' is specified more than once.", t.key),
            ));
        }
    }
    Ok(())
}

/// Tags after adding `add` (replacing values of keys already there).
fn merge_tags(existing: &[Tag], add: &[Tag]) -> Result<Vec<Tag>, ElbError> {
    let mut out: Vec<Tag> = existing
        .iter()
        .filter(|t| !add.iter().any(|a| a.key == t.key))
        .cloned()
        .collect();
    out.extend(add.iter().cloned());
    if out.len() > MAX_TAGS {
        return Err(ElbError::new(
            "TooManyTagsException",
            format!("A resource can have at most {MAX_TAGS} tags."),
        ));
    }
    out.sort();
    Ok(out)
}

/// One page of `items` (sorted by `name`) after `marker`, and the next page's marker.
fn page<T>(
    mut items: Vec<T>,
    name: impl Fn(&T) -> String,
    marker: Option<&str>,
    size: Option<i64>,
) -> (Vec<T>, Option<String>) {
    items.sort_by_key(|i| name(i));
    let size = size.map(|s| s.clamp(1, MAX_PAGE as i64) as usize).unwrap_or(MAX_PAGE);
    let start = marker
        .map(|m| items.partition_point(|i| name(i).as_str() < m))
        .unwrap_or(0);
    let mut rest: Vec<T> = items.into_iter().skip(start).collect();
    let next = (rest.len() > size).then(|| name(&rest[size]));
    rest.truncate(size);
    (rest, next)
}

impl Elb {
    /// Applies `edit` to the tags of the resource an ARN names, returning the new tags.
    async fn edit_tags(&self, scope: &Scope, arn: &str, edit: TagEdit<'_>) -> Result<Vec<Tag>, ElbError> {
        match Self::parse_arn(scope, arn) {
            Some(Named::LoadBalancer { .. }) => self.lb_tags(scope, arn, edit).await,
            Some(Named::TargetGroup { .. }) => self.tg_tags(scope, arn, edit).await,
            Some(Named::Listener { .. }) => self.listener_tags(scope, arn, edit).await,
            Some(Named::Rule { .. }) => self.rule_tags(scope, arn, edit).await,
            None => Err(ElbError::validation(format!(
                "'{arn}' is not a valid load balancer, target group, listener or rule ARN"
            ))),
        }
    }

    pub async fn add_tags(&self, scope: &Scope, input: serde_json::Value) -> Result<serde_json::Value, ElbError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            resource_arns: Vec<String>,
            tags: Vec<Tag>,
        }
        let input: Input = parse(input)?;
        validate_tags(&input.tags)?;
        for arn in &input.resource_arns {
            self.edit_tags(scope, arn, &|t| merge_tags(t, &input.tags)).await?;
        }
        Ok(serde_json::json!({}))
    }

    pub async fn remove_tags(&self, scope: &Scope, input: serde_json::Value) -> Result<serde_json::Value, ElbError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            resource_arns: Vec<String>,
            tag_keys: Vec<String>,
        }
        let input: Input = parse(input)?;
        for arn in &input.resource_arns {
            self.edit_tags(scope, arn, &|t| {
                Ok(t.iter().filter(|t| !input.tag_keys.contains(&t.key)).cloned().collect())
            })
            .await?;
        }
        Ok(serde_json::json!({}))
    }

    pub async fn describe_tags(&self, scope: &Scope, input: serde_json::Value) -> Result<serde_json::Value, ElbError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            resource_arns: Vec<String>,
        }
        let input: Input = parse(input)?;
        if input.resource_arns.len() > 20 {
            return Err(ElbError::validation(
                "At most 20 resource ARNs can be described at once",
            ));
        }
        let mut out = vec![];
        for arn in &input.resource_arns {
            // Reading is an edit that changes nothing; it finds the resource the same way.
            let tags = self.edit_tags(scope, arn, &|t| Ok(t.to_vec())).await?;
            out.push(serde_json::json!({"ResourceArn": arn, "Tags": tags}));
        }
        Ok(serde_json::json!({"TagDescriptions": out}))
    }
}
