//! AWS Cloud Map's control plane: namespaces, services, instances and their health, tags and
//! operations, kept in the store. The node's DNS resolver answers from the same records
//! (`view`), and ECS services register their tasks through `instances`.
//!
//! Store layout, under `/servicediscovery/<account>/<region>/`:
//! - `namespaces/<name>` and `services/<namespace id>/<name>`: names are unique (per account
//!   and region, per namespace), so a create is one atomic create of that key; lookups by id
//!   scan the few records of the kind;
//! - `instances/<service id>/<instance id>`: one record per instance (registration is an upsert);
//! - `operations/<id>`: the outcome of each mutating call, ids ordered by time, newest 1,000 kept.

mod instances;
mod namespaces;
mod services;
pub mod view;

pub use instances::{check_attributes, discover};
pub use namespaces::valid_dns_name;
pub use services::validate_dns_records;
pub use view::{DnsName, DnsTable, DnsZone};

use crate::records::{RecordError, Records};
use crate::{random_hex, Clock};
use gantry_store::Store;
use gantry_types::arn::Scope;
use gantry_types::cloudmap::{MapError, Operation, Tag};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;

/// A change to a resource's tags (shared across the request's await points, hence Sync).
type TagEdit<'a> = &'a (dyn Fn(&[Tag]) -> Result<Vec<Tag>, MapError> + Send + Sync);

/// Operations kept for GetOperation and ListOperations.
const KEPT_OPERATIONS: usize = 1000;
/// Tags a resource may carry.
const MAX_TAGS: usize = 50;

#[derive(Clone)]
pub struct CloudMap {
    records: Records,
    clock: Arc<dyn Clock>,
}

impl From<RecordError> for MapError {
    fn from(e: RecordError) -> MapError {
        if e.is_unavailable() {
            MapError::new("ServiceUnavailable", format!("The service is unavailable: {e}"))
        } else {
            MapError::server(e.to_string())
        }
    }
}

/// Parses a request into its typed form; members Gantry does not implement are refused by
/// name rather than ignored.
pub fn parse<T: DeserializeOwned>(v: Value) -> Result<T, MapError> {
    serde_json::from_value(v).map_err(|e| {
        let m = e.to_string();
        match m.strip_prefix("unknown field `").and_then(|r| r.split('`').next()) {
            Some(field) => MapError::invalid(format!("{field} is not supported by Gantry.")),
            None => MapError::invalid(m),
        }
    })
}

/// A namespace or service record: the resource as described, and its tags.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Tagged<T> {
    pub item: T,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

impl CloudMap {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> CloudMap {
        CloudMap {
            records: Records::new(store),
            clock,
        }
    }

    fn now(&self) -> f64 {
        self.clock.now_ms() as f64 / 1000.0
    }

    fn key(scope: &Scope, rest: &str) -> String {
        format!("/servicediscovery/{}/{}/{rest}", scope.account, scope.region)
    }

    fn arn(scope: &Scope, resource: &str) -> String {
        format!("arn:aws:servicediscovery:{}:{}:{resource}", scope.region, scope.account)
    }

    /// The id an input names, given as an id or as an ARN of this account and region.
    fn id_of<'a>(scope: &Scope, kind: &str, given: &'a str) -> &'a str {
        let prefix = Self::arn(scope, &format!("{kind}/"));
        given.strip_prefix(prefix.as_str()).unwrap_or(given)
    }

    /// Records an operation that has completed and returns its id. Ids start with the time
    /// in hex, so the store's key order is creation order and the oldest are pruned first.
    async fn operation(&self, scope: &Scope, kind: &str, targets: &[(&str, &str)]) -> Result<Value, MapError> {
        let now = self.clock.now_ms();
        let id = format!("{now:012x}{}-{}", random_hex(10), random_hex(4));
        let op = Operation {
            id: id.clone(),
            owner_account: scope.account.clone(),
            kind: kind.into(),
            status: "SUCCESS".into(),
            create_date: now as f64 / 1000.0,
            update_date: now as f64 / 1000.0,
            targets: targets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        self.records
            .create(&Self::key(scope, &format!("operations/{id}")), &op)
            .await?;
        let (keys, _) = self
            .records
            .store
            .list_keys(&Self::key(scope, "operations/"))
            .await
            .map_err(RecordError::Store)?;
        for old in keys.iter().take(keys.len().saturating_sub(KEPT_OPERATIONS)) {
            self.records.delete(&old.key).await?;
        }
        Ok(json!({ "OperationId": id }))
    }

    pub async fn get_operation(&self, scope: &Scope, input: Value) -> Result<Value, MapError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            operation_id: String,
            #[serde(default)]
            owner_account: Option<String>,
        }
        let input: Input = parse(input)?;
        own_account(scope, input.owner_account.as_deref())?;
        let key = Self::key(scope, &format!("operations/{}", input.operation_id));
        match self.records.load::<Operation>(&key).await? {
            Some((op, _)) => Ok(json!({ "Operation": op })),
            None => Err(MapError::new(
                "OperationNotFound",
                format!("Operation {} not found.", input.operation_id),
            )),
        }
    }

    pub async fn list_operations(&self, scope: &Scope, input: Value) -> Result<Value, MapError> {
        let input: ListInput = parse(input)?;
        let all: Vec<Operation> = self.records.list(&Self::key(scope, "operations/")).await?;
        let mut ops = filtered(all, &input.filters, |op, name| match name {
            "NAMESPACE_ID" => Some(op.targets.get("NAMESPACE").cloned()),
            "SERVICE_ID" => Some(op.targets.get("SERVICE").cloned()),
            "STATUS" => Some(Some(op.status.clone())),
            "TYPE" => Some(Some(op.kind.clone())),
            "UPDATE_DATE" => Some(Some(op.update_date.to_string())),
            _ => None,
        })?;
        ops.reverse();
        let (page, next) = page(ops, |o| o.id.clone(), &input)?;
        let summaries: Vec<Value> = page.iter().map(|o| json!({"Id": o.id, "Status": o.status})).collect();
        Ok(with_token(json!({ "Operations": summaries }), next))
    }

    pub async fn tag_resource(&self, scope: &Scope, input: Value) -> Result<Value, MapError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            #[serde(rename = "ResourceARN")]
            resource_arn: String,
            tags: Vec<Tag>,
        }
        let input: Input = parse(input)?;
        validate_tags(&input.tags)?;
        self.edit_tags(scope, &input.resource_arn, &|tags| merge_tags(tags, &input.tags))
            .await?;
        Ok(json!({}))
    }

    pub async fn untag_resource(&self, scope: &Scope, input: Value) -> Result<Value, MapError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            #[serde(rename = "ResourceARN")]
            resource_arn: String,
            tag_keys: Vec<String>,
        }
        let input: Input = parse(input)?;
        self.edit_tags(scope, &input.resource_arn, &|tags| {
            Ok(tags
                .iter()
                .filter(|t| !input.tag_keys.contains(&t.key))
                .cloned()
                .collect())
        })
        .await?;
        Ok(json!({}))
    }

    pub async fn list_tags_for_resource(&self, scope: &Scope, input: Value) -> Result<Value, MapError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            #[serde(rename = "ResourceARN")]
            resource_arn: String,
        }
        let input: Input = parse(input)?;
        let tags = self.edit_tags(scope, &input.resource_arn, &|t| Ok(t.to_vec())).await?;
        Ok(json!({ "Tags": tags }))
    }

    /// Applies `edit` to the tags of the namespace or service an ARN names.
    async fn edit_tags(&self, scope: &Scope, arn: &str, edit: TagEdit<'_>) -> Result<Vec<Tag>, MapError> {
        let not_found = || MapError::new("ResourceNotFoundException", format!("Resource {arn} not found."));
        let rest = arn.strip_prefix(&Self::arn(scope, "")).ok_or_else(not_found)?;
        let key = match rest.split_once('/') {
            Some(("namespace", id)) => self.namespace_key(scope, id).await?,
            Some(("service", id)) => self.service_key(scope, id).await?,
            _ => None,
        }
        .ok_or_else(not_found)?;
        self.records
            .update::<Tagged<Value>, Vec<Tag>, MapError>(&key, |cur| {
                let mut rec = cur.ok_or_else(not_found)?;
                rec.tags = edit(&rec.tags)?;
                let out = rec.tags.clone();
                Ok((Some(rec), out))
            })
            .await
    }
}

/// OwnerAccount, where an operation takes it, must be the caller's (no sharing here).
fn own_account(scope: &Scope, owner: Option<&str>) -> Result<(), MapError> {
    match owner {
        Some(a) if a != scope.account => Err(MapError::invalid(format!(
            "Account {a} has not shared any namespace with account {}.",
            scope.account
        ))),
        _ => Ok(()),
    }
}

/// A List* request: filters, and a page.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct ListInput {
    #[serde(default)]
    next_token: Option<String>,
    #[serde(default)]
    max_results: Option<i64>,
    #[serde(default)]
    filters: Vec<Filter>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Filter {
    name: String,
    values: Vec<String>,
    #[serde(default)]
    condition: Option<String>,
}

impl Filter {
    /// Whether a resource's value for the filter's field passes: EQ (the default, one value),
    /// IN (any of the values), BETWEEN (two epoch seconds, for dates), BEGINS_WITH.
    fn matches(&self, value: Option<&str>, dated: bool) -> Result<bool, MapError> {
        let cond = self.condition.as_deref().unwrap_or("EQ");
        let v = value.unwrap_or("");
        Ok(match cond {
            "EQ" if self.values.len() == 1 => v == self.values[0],
            "IN" => self.values.iter().any(|x| x == v),
            "BEGINS_WITH" if self.values.len() == 1 => v.starts_with(&self.values[0]),
            "BETWEEN" if dated && self.values.len() == 2 => {
                let n = |s: &str| {
                    s.parse::<f64>()
                        .map_err(|_| MapError::invalid(format!("{s} is not a date.")))
                };
                let (at, lo, hi) = (n(v)?, n(&self.values[0])?, n(&self.values[1])?);
                lo <= at && at <= hi
            }
            other => {
                return Err(MapError::invalid(format!(
                    "Condition {other} with {} values is not valid for filter {}.",
                    self.values.len(),
                    self.name
                )))
            }
        })
    }
}

/// The items every filter passes. `field` gives an item's value for a filter's name (None
/// for a name the operation does not know, which is refused). UPDATE_DATE compares dates.
fn filtered<T>(
    items: Vec<T>,
    filters: &[Filter],
    field: impl Fn(&T, &str) -> Option<Option<String>>,
) -> Result<Vec<T>, MapError> {
    let mut out = vec![];
    'items: for item in items {
        for f in filters {
            let value =
                field(&item, &f.name).ok_or_else(|| MapError::invalid(format!("Unknown filter name {}.", f.name)))?;
            if !f.matches(value.as_deref(), f.name == "UPDATE_DATE")? {
                continue 'items;
            }
        }
        out.push(item);
    }
    Ok(out)
}

/// One page of `items` (in the order given) after the token, and the next page's token.
fn page<T>(items: Vec<T>, id: impl Fn(&T) -> String, input: &ListInput) -> Result<(Vec<T>, Option<String>), MapError> {
    let size = match input.max_results {
        None => 100,
        Some(n @ 1..=100) => n as usize,
        Some(n) => return Err(MapError::invalid(format!("MaxResults {n} must be between 1 and 100."))),
    };
    let start = match &input.next_token {
        None => 0,
        Some(t) => items
            .iter()
            .position(|i| id(i) == *t)
            .ok_or_else(|| MapError::invalid("The NextToken is not valid."))?,
    };
    let mut rest: Vec<T> = items.into_iter().skip(start).collect();
    let next = (rest.len() > size).then(|| id(&rest[size]));
    rest.truncate(size);
    Ok((rest, next))
}

fn with_token(mut out: Value, next: Option<String>) -> Value {
    if let Some(t) = next {
        out["NextToken"] = json!(t);
    }
    out
}

/// Cloud Map's tag rules: keys 1-128, values up to 256, no `aws:` prefix, no key twice.
fn validate_tags(tags: &[Tag]) -> Result<(), MapError> {
    let mut seen = std::collections::BTreeSet::new();
    for t in tags {
        if t.key.is_empty() || t.key.chars().count() > 128 || t.value.chars().count() > 256 {
            return Err(MapError::invalid(
                "Tag keys must be 1-128 characters and values at most 256.",
            ));
        }
        if t.key.to_ascii_lowercase().starts_with("aws:") {
            return Err(MapError::invalid("Tag keys cannot start with 'aws:'."));
        }
        if !seen.insert(t.key.as_str()) {
            return Err(MapError::invalid(format!(
                "Tag key '{}' is specified more than once.",
                t.key
            )));
        }
    }
    Ok(())
}

fn merge_tags(existing: &[Tag], add: &[Tag]) -> Result<Vec<Tag>, MapError> {
    let mut out: Vec<Tag> = existing
        .iter()
        .filter(|t| !add.iter().any(|a| a.key == t.key))
        .cloned()
        .collect();
    out.extend(add.iter().cloned());
    if out.len() > MAX_TAGS {
        return Err(MapError::new(
            "TooManyTagsException",
            format!("A resource can have at most {MAX_TAGS} tags."),
        ));
    }
    out.sort();
    Ok(out)
}
