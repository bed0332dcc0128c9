//! AWS Systems Manager Parameter Store (AWS JSON 1.1, target prefix AmazonSSM) over
//! `gantry_control::parameters`: the parameter operations only (the rest of SSM manages
//! EC2 instances, which Gantry has not).

use crate::api::{Api, ApiError};
use crate::protocol::Reply;
use gantry_control::parameters::{self, PVersion, Parameter, ParameterError, ParameterStore, Put, Tag};
use gantry_types::arn::Scope;
use serde_json::{json, Value};

impl From<ParameterError> for ApiError {
    fn from(e: ParameterError) -> ApiError {
        ApiError::of_shape(e.shape, e.message)
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| ApiError::client("ValidationException", format!("Invalid request: {e}")))
}

fn store(api: &Api) -> Result<&ParameterStore, ApiError> {
    api.parameters.as_ref().ok_or_else(|| {
        ApiError::new(
            "InternalServerError",
            "Parameter Store has no key to seal values with on this server.",
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        )
    })
}

fn text(input: &Value, key: &str) -> Option<String> {
    input.get(key).and_then(Value::as_str).map(str::to_string)
}

/// GetParameter's view of a version: the value, decrypted when asked (a SecureString read
/// without decryption shows its ciphertext, as AWS does).
fn value_out(
    ps: &ParameterStore,
    p: &Parameter,
    v: &PVersion,
    selector: Option<&str>,
    decrypt: bool,
) -> Result<Value, ApiError> {
    let value = if v.kind == "SecureString" && !decrypt {
        ParameterStore::ciphertext(v)
    } else {
        ps.open(p, v)?
    };
    let mut out = json!({
        "Name": p.name, "Type": v.kind, "Value": value, "Version": v.version,
        "LastModifiedDate": v.modified, "ARN": p.arn, "DataType": v.data_type,
    });
    if let Some(s) = selector {
        out["Selector"] = json!(format!(":{s}"));
    }
    Ok(out)
}

fn metadata(p: &Parameter) -> Value {
    let v = p.current();
    let mut out = json!({
        "Name": p.name, "ARN": p.arn, "Type": v.kind, "LastModifiedDate": v.modified, "LastModifiedUser": v.user,
        "Version": v.version, "Tier": v.tier, "Policies": [], "DataType": v.data_type,
    });
    for (k, val) in [
        ("Description", &v.description),
        ("AllowedPattern", &v.allowed_pattern),
        ("KeyId", &v.key_id),
    ] {
        if let Some(x) = val {
            out[k] = json!(x);
        }
    }
    out
}

/// The registry's entry point.
pub fn handler<'a>(api: &'a Api, scope: &'a Scope, op: &'a str, input: Value) -> Reply<'a> {
    Box::pin(dispatch(api, scope, op, input))
}

async fn dispatch(api: &Api, scope: &Scope, op: &str, input: Value) -> Result<Value, ApiError> {
    let ps = store(api)?;
    let decrypt = input["WithDecryption"].as_bool().unwrap_or(false);
    Ok(match op {
        "PutParameter" => {
            if input.get("Policies").is_some() {
                return Err(ApiError::client(
                    "InvalidPolicyTypeException",
                    "Parameter policies (expiration, notifications) are not supported by Gantry.",
                ));
            }
            let tags: Vec<Tag> = parse(input.get("Tags").cloned().unwrap_or(json!([])))?;
            let req = Put {
                name: text(&input, "Name").unwrap_or_default(),
                value: text(&input, "Value").unwrap_or_default(),
                kind: text(&input, "Type"),
                description: text(&input, "Description"),
                key_id: text(&input, "KeyId"),
                overwrite: input["Overwrite"].as_bool().unwrap_or(false),
                allowed_pattern: text(&input, "AllowedPattern"),
                tags,
                tier: text(&input, "Tier").filter(|t| t != "Intelligent-Tiering"),
                data_type: text(&input, "DataType"),
            };
            let (version, tier) = ps
                .put(scope, &format!("arn:aws:iam::{}:root", scope.account), req)
                .await?;
            json!({"Version": version, "Tier": tier})
        }
        "GetParameter" => {
            let id = text(&input, "Name").unwrap_or_default();
            let (name, selector) = parameters::split_selector(&id);
            let p = ps.locate(scope, name).await?;
            let v = p.select(selector).ok_or_else(|| version_not_found(&id))?;
            json!({"Parameter": value_out(ps, &p, v, selector, decrypt)?})
        }
        "GetParameters" => {
            let names: Vec<String> = parse(input.get("Names").cloned().unwrap_or(json!([])))?;
            let (mut found, mut invalid) = (Vec::new(), Vec::new());
            for id in names {
                let (name, selector) = parameters::split_selector(&id);
                match ps.locate(scope, name).await {
                    Ok(p) => match p.select(selector) {
                        Some(v) => found.push(value_out(ps, &p, v, selector, decrypt)?),
                        None => invalid.push(id.clone()),
                    },
                    Err(e) if e.shape == "ParameterNotFound" => invalid.push(id.clone()),
                    Err(e) => return Err(e.into()),
                }
            }
            json!({"Parameters": found, "InvalidParameters": invalid})
        }
        "GetParametersByPath" => by_path(ps, scope, &input, decrypt).await?,
        "DescribeParameters" => describe(ps, scope, &input).await?,
        "GetParameterHistory" => history(ps, scope, &input, decrypt).await?,
        "DeleteParameter" => {
            ps.delete(scope, &text(&input, "Name").unwrap_or_default()).await?;
            json!({})
        }
        "DeleteParameters" => {
            let names: Vec<String> = parse(input.get("Names").cloned().unwrap_or(json!([])))?;
            let (mut deleted, mut invalid) = (Vec::new(), Vec::new());
            for n in names {
                match ps.delete(scope, &n).await {
                    Ok(()) => deleted.push(n),
                    Err(e) if e.shape == "ParameterNotFound" => invalid.push(n),
                    Err(e) => return Err(e.into()),
                }
            }
            json!({"DeletedParameters": deleted, "InvalidParameters": invalid})
        }
        "LabelParameterVersion" | "UnlabelParameterVersion" => {
            let name = text(&input, "Name").unwrap_or_default();
            let labels: Vec<String> = parse(input.get("Labels").cloned().unwrap_or(json!([])))?;
            let remove = op == "UnlabelParameterVersion";
            let (invalid, version) = ps
                .label(scope, &name, input["ParameterVersion"].as_i64(), &labels, remove)
                .await?;
            if remove {
                let removed: Vec<&String> = labels.iter().filter(|l| !invalid.contains(l)).collect();
                json!({"RemovedLabels": removed, "InvalidLabels": invalid})
            } else {
                json!({"InvalidLabels": invalid, "ParameterVersion": version})
            }
        }
        "AddTagsToResource" | "RemoveTagsFromResource" | "ListTagsForResource" => {
            if input["ResourceType"].as_str() != Some("Parameter") {
                return Err(ApiError::client(
                    "InvalidResourceType",
                    "Gantry's Systems Manager has parameters only: ResourceType must be Parameter.",
                ));
            }
            let id = text(&input, "ResourceId").unwrap_or_default();
            let not_found = |e: ParameterError| -> ApiError {
                if e.shape == "ParameterNotFound" {
                    ApiError::client("InvalidResourceId", format!("The resource ID {id} is not valid."))
                } else {
                    e.into()
                }
            };
            match op {
                "AddTagsToResource" => {
                    let tags: Vec<Tag> = parse(input.get("Tags").cloned().unwrap_or(json!([])))?;
                    ps.tag(scope, &id, &tags, &[]).await.map_err(not_found)?;
                    json!({})
                }
                "RemoveTagsFromResource" => {
                    let keys: Vec<String> = parse(input.get("TagKeys").cloned().unwrap_or(json!([])))?;
                    ps.tag(scope, &id, &[], &keys).await.map_err(not_found)?;
                    json!({})
                }
                _ => {
                    let p = ps.locate(scope, &id).await.map_err(not_found)?;
                    json!({"TagList": p.tags.iter().map(|t| json!({"Key": t.key, "Value": t.value})).collect::<Vec<_>>()})
                }
            }
        }
        other => {
            return Err(ApiError::client(
                "UnknownOperationException",
                format!("Gantry's Systems Manager serves Parameter Store only; {other} is not implemented."),
            ))
        }
    })
}

fn version_not_found(id: &str) -> ApiError {
    ApiError::client(
        "ParameterVersionNotFound",
        format!("Systems Manager could not find version or label of parameter {id}."),
    )
}

/// Offset paging: the token is the index to continue from.
fn page(input: &Value, default: usize, max: usize) -> Result<(usize, usize), ApiError> {
    let n = input["MaxResults"].as_u64().map(|n| n as usize).unwrap_or(default);
    let start = match input["NextToken"].as_str() {
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| ApiError::client("InvalidNextToken", "The specified token isn't valid."))?,
        None => 0,
    };
    Ok((n.clamp(1, max), start))
}

fn paged(rows: Vec<Value>, key: &str, n: usize, start: usize) -> Value {
    let total = rows.len();
    let mut out = json!({ key: rows.into_iter().skip(start).take(n).collect::<Vec<_>>() });
    if start + n < total {
        out["NextToken"] = json!((start + n).to_string());
    }
    out
}

/// Whether a parameter passes ParameterFilters: Name, Type, KeyId, Path, Label, tag:KEY,
/// DataType, Tier; options Equals, BeginsWith, Contains (Name), OneLevel and Recursive (Path).
fn passes(p: &Parameter, filters: &[Value]) -> Result<bool, ApiError> {
    for f in filters {
        let key = f["Key"].as_str().unwrap_or("");
        let option = f["Option"]
            .as_str()
            .unwrap_or(if key == "Path" { "OneLevel" } else { "Equals" });
        let values: Vec<&str> = f["Values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let v = p.current();
        let cmp = |x: &str| {
            values.iter().any(|want| match option {
                "Equals" => x == *want,
                "BeginsWith" => x.starts_with(want),
                "Contains" => x.contains(want),
                _ => false,
            })
        };
        let ok = match key {
            "Name" => cmp(&p.name),
            "Type" => cmp(&v.kind),
            "KeyId" => v.key_id.as_deref().is_some_and(cmp),
            "DataType" => cmp(&v.data_type),
            "Tier" => cmp(&v.tier),
            "Label" => v.labels.iter().any(|l| cmp(l)),
            "Path" => {
                if !["OneLevel", "Recursive"].contains(&option) {
                    return Err(ApiError::client(
                        "InvalidFilterOption",
                        "Path takes OneLevel or Recursive.",
                    ));
                }
                values
                    .iter()
                    .any(|path| parameters::under(&p.name, path, option == "Recursive"))
            }
            k if k.starts_with("tag:") => {
                let tag = &k[4..];
                p.tags
                    .iter()
                    .any(|t| t.key == tag && (values.is_empty() || cmp(&t.value)))
            }
            other => {
                return Err(ApiError::client(
                    "InvalidFilterKey",
                    format!("The filter key {other} is not valid."),
                ))
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn by_path(ps: &ParameterStore, scope: &Scope, input: &Value, decrypt: bool) -> Result<Value, ApiError> {
    let path = input["Path"].as_str().unwrap_or_default();
    if !path.starts_with('/') {
        return Err(ApiError::client("ValidationException", "The path must begin with '/'."));
    }
    let recursive = input["Recursive"].as_bool().unwrap_or(false);
    let filters = input["ParameterFilters"].as_array().cloned().unwrap_or_default();
    if filters.iter().any(|f| f["Key"] == "Path" || f["Key"] == "Name") {
        return Err(ApiError::client(
            "InvalidFilterKey",
            "GetParametersByPath does not take the Name or Path filters.",
        ));
    }
    let mut rows = Vec::new();
    for p in ps.all(scope).await? {
        let inside = path == "/" && (recursive || !p.name.trim_start_matches('/').contains('/'));
        if (inside || parameters::under(&p.name, path, recursive)) && passes(&p, &filters)? {
            rows.push(value_out(ps, &p, p.current(), None, decrypt)?);
        }
    }
    let (n, start) = page(input, 10, 10)?;
    Ok(paged(rows, "Parameters", n, start))
}

async fn describe(ps: &ParameterStore, scope: &Scope, input: &Value) -> Result<Value, ApiError> {
    if input.get("Filters").is_some() && input.get("ParameterFilters").is_some() {
        return Err(ApiError::client(
            "InvalidParameterException",
            "You can use either Filters or ParameterFilters in a single request, not both.",
        ));
    }
    // The older Filters (Name, Type, KeyId; Values matched from the start) as ParameterFilters.
    let filters: Vec<Value> = match input["Filters"].as_array() {
        Some(old) => old
            .iter()
            .map(|f| json!({"Key": f["Key"], "Option": "BeginsWith", "Values": f["Values"]}))
            .collect(),
        None => input["ParameterFilters"].as_array().cloned().unwrap_or_default(),
    };
    let mut rows = Vec::new();
    for p in ps.all(scope).await? {
        if passes(&p, &filters)? {
            rows.push(metadata(&p));
        }
    }
    let (n, start) = page(input, 50, 50)?;
    Ok(paged(rows, "Parameters", n, start))
}

async fn history(ps: &ParameterStore, scope: &Scope, input: &Value, decrypt: bool) -> Result<Value, ApiError> {
    let p = ps.locate(scope, input["Name"].as_str().unwrap_or_default()).await?;
    let mut rows = Vec::new();
    for v in &p.versions {
        let mut row = value_out(ps, &p, v, None, decrypt)?;
        if let Value::Object(m) = &mut row {
            m.remove("ARN");
            m.insert("Labels".into(), json!(v.labels));
            m.insert("LastModifiedUser".into(), json!(v.user));
            m.insert("Tier".into(), json!(v.tier));
            m.insert("Policies".into(), json!([]));
            for (k, val) in [
                ("Description", &v.description),
                ("AllowedPattern", &v.allowed_pattern),
                ("KeyId", &v.key_id),
            ] {
                if let Some(x) = val {
                    m.insert(k.into(), json!(x));
                }
            }
        }
        rows.push(row);
    }
    let (n, start) = page(input, 50, 50)?;
    Ok(paged(rows, "Parameters", n, start))
}
