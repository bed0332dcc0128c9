//! AWS Secrets Manager (AWS JSON 1.1, target prefix secretsmanager) over
//! `gantry_control::secrets`: inputs checked against the vendored model, answers in its shapes.

use crate::api::{Api, ApiError};
use crate::protocol::Reply;
use base64::Engine as _;
use gantry_control::secrets::{self, NewValue, Secret, SecretsError, SecretsManager, Tag, Value as SecretValue};
use gantry_types::arn::Scope;
use serde::Deserialize;
use serde_json::{json, Value};

impl From<SecretsError> for ApiError {
    fn from(e: SecretsError) -> ApiError {
        ApiError::of_shape(e.shape, e.message)
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v)
        .map_err(|e| ApiError::client("InvalidParameterException", format!("Invalid request: {e}")))
}

fn manager(api: &Api) -> Result<&SecretsManager, ApiError> {
    api.secrets.as_ref().ok_or_else(|| {
        ApiError::new(
            "InternalServiceError",
            "Secrets Manager has no key to seal values with on this server.",
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        )
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ValueInput {
    secret_string: Option<String>,
    secret_binary: Option<String>,
    client_request_token: Option<String>,
    version_stages: Option<Vec<String>>,
}

impl ValueInput {
    /// The value given, if any; both kinds at once is refused, as in AWS.
    fn value(self) -> Result<Option<NewValue>, ApiError> {
        let value = match (self.secret_string, self.secret_binary) {
            (Some(_), Some(_)) => {
                return Err(ApiError::client(
                    "InvalidParameterException",
                    "You can't specify both a binary secret value and a string secret value in the same secret.",
                ))
            }
            (Some(s), None) => SecretValue::Text(s),
            (None, Some(b)) => SecretValue::Binary(secrets::binary(&b)?),
            (None, None) => return Ok(None),
        };
        Ok(Some(NewValue {
            value,
            token: self.client_request_token,
            stages: self.version_stages,
        }))
    }
}

fn secret_id(input: &Value) -> Result<String, ApiError> {
    input
        .get("SecretId")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ApiError::client("InvalidParameterException", "SecretId is required."))
}

fn ts(secs: f64) -> Value {
    json!(secs)
}

fn tags(s: &Secret) -> Value {
    json!(s
        .tags
        .iter()
        .map(|t| json!({"Key": t.key, "Value": t.value}))
        .collect::<Vec<_>>())
}

/// DescribeSecret's and ListSecrets' view of a secret.
fn describe(s: &Secret, versions_key: &str) -> Value {
    let mut out = json!({
        "ARN": s.arn, "Name": s.name, "CreatedDate": ts(s.created), "LastChangedDate": ts(s.last_changed),
        "RotationEnabled": false, "Tags": tags(s), versions_key: s.version_stages(),
    });
    for (k, v) in [
        ("Description", s.description.as_ref().map(|d| json!(d))),
        ("KmsKeyId", s.kms_key_id.as_ref().map(|k| json!(k))),
        ("LastAccessedDate", s.last_accessed.map(ts)),
        ("DeletedDate", s.deletion_date.map(ts)),
    ] {
        if let Some(v) = v {
            out[k] = v;
        }
    }
    out
}

fn value_out(s: &Secret, vid: &str, v: &SecretValue) -> Value {
    let mut out = json!({
        "ARN": s.arn, "Name": s.name, "VersionId": vid,
        "VersionStages": s.versions.get(vid).map(|x| x.stages.clone()).unwrap_or_default(),
        "CreatedDate": s.versions.get(vid).map(|x| x.created).unwrap_or(s.created),
    });
    match v {
        SecretValue::Text(t) => out["SecretString"] = json!(t),
        SecretValue::Binary(b) => out["SecretBinary"] = json!(base64::engine::general_purpose::STANDARD.encode(b)),
    }
    out
}

/// The registry's entry point.
pub fn handler<'a>(api: &'a Api, scope: &'a Scope, op: &'a str, input: Value) -> Reply<'a> {
    Box::pin(dispatch(api, scope, op, input))
}

async fn dispatch(api: &Api, scope: &Scope, op: &str, input: Value) -> Result<Value, ApiError> {
    let sm = manager(api)?;
    let named = |s: &Secret| json!({"ARN": s.arn, "Name": s.name});
    Ok(match op {
        "CreateSecret" => {
            if input.get("AddReplicaRegions").is_some() {
                return Err(ApiError::client(
                    "InvalidParameterException",
                    "Replica regions are not supported by Gantry (one region per server).",
                ));
            }
            let name = input["Name"].as_str().unwrap_or_default().to_string();
            let description = input["Description"].as_str().map(str::to_string);
            let kms = input["KmsKeyId"].as_str().map(str::to_string);
            let tags: Vec<Tag> = parse(input.get("Tags").cloned().unwrap_or(json!([])))?;
            let value = parse::<ValueInput>(input)?.value()?;
            let (s, vid) = sm.create(scope, &name, description, kms, value, tags).await?;
            let mut out = named(&s);
            if let Some(v) = vid {
                out["VersionId"] = json!(v);
            }
            out
        }
        "DescribeSecret" => {
            let s = sm.find(scope, &secret_id(&input)?).await?;
            describe(&s, "VersionIdsToStages")
        }
        "GetSecretValue" => {
            let (s, vid, v) = sm
                .get_value(
                    scope,
                    &secret_id(&input)?,
                    input["VersionId"].as_str(),
                    input["VersionStage"].as_str(),
                )
                .await?;
            value_out(&s, &vid, &v)
        }
        "PutSecretValue" => {
            let id = secret_id(&input)?;
            let v = parse::<ValueInput>(input)?.value()?.ok_or_else(|| {
                ApiError::client("InvalidParameterException", "You must provide either SecretString or SecretBinary.")
            })?;
            let (s, vid) = sm.put_value(scope, &id, v).await?;
            let stages = s.versions.get(&vid).map(|v| v.stages.clone()).unwrap_or_default();
            json!({"ARN": s.arn, "Name": s.name, "VersionId": vid, "VersionStages": stages})
        }
        "UpdateSecret" => {
            let id = secret_id(&input)?;
            let description = input["Description"].as_str().map(str::to_string);
            let kms = input["KmsKeyId"].as_str().map(str::to_string);
            let mut s = sm.update_meta(scope, &id, description, kms).await?;
            let mut out = named(&s);
            let mut value_input: ValueInput = parse(input)?;
            value_input.version_stages = None;
            if let Some(v) = value_input.value()? {
                let (after, vid) = sm.put_value(scope, &id, v).await?;
                s = after;
                out = named(&s);
                out["VersionId"] = json!(vid);
            }
            out
        }
        "DeleteSecret" => {
            let force = input["ForceDeleteWithoutRecovery"].as_bool().unwrap_or(false);
            let (s, when) = sm
                .delete(scope, &secret_id(&input)?, input["RecoveryWindowInDays"].as_i64(), force)
                .await?;
            json!({"ARN": s.arn, "Name": s.name, "DeletionDate": when})
        }
        "RestoreSecret" => named(&sm.restore(scope, &secret_id(&input)?).await?),
        "ListSecrets" => list(sm, scope, &input).await?,
        "ListSecretVersionIds" => versions(sm, scope, &input).await?,
        "BatchGetSecretValue" => batch_get(sm, scope, &input).await?,
        "UpdateSecretVersionStage" => {
            let stage = input["VersionStage"].as_str().unwrap_or_default();
            let s = sm
                .move_stage(
                    scope,
                    &secret_id(&input)?,
                    stage,
                    input["RemoveFromVersionId"].as_str(),
                    input["MoveToVersionId"].as_str(),
                )
                .await?;
            named(&s)
        }
        "TagResource" => {
            let tags: Vec<Tag> = parse(input.get("Tags").cloned().unwrap_or(json!([])))?;
            sm.tag(scope, &secret_id(&input)?, tags).await?;
            json!({})
        }
        "UntagResource" => {
            let keys: Vec<String> = parse(input.get("TagKeys").cloned().unwrap_or(json!([])))?;
            sm.untag(scope, &secret_id(&input)?, &keys).await?;
            json!({})
        }
        "PutResourcePolicy" => {
            let policy = input["ResourcePolicy"].as_str().map(str::to_string);
            let block = input["BlockPublicPolicy"].as_bool().unwrap_or(false);
            named(&sm.set_policy(scope, &secret_id(&input)?, policy, block).await?)
        }
        "DeleteResourcePolicy" => named(&sm.set_policy(scope, &secret_id(&input)?, None, false).await?),
        "GetResourcePolicy" => {
            let s = sm.find(scope, &secret_id(&input)?).await?;
            let mut out = named(&s);
            if let Some(p) = &s.resource_policy {
                out["ResourcePolicy"] = json!(p);
            }
            out
        }
        other => {
            return Err(ApiError::client(
                "UnknownOperationException",
                format!("Gantry does not implement the Secrets Manager operation {other} yet (rotation, replication and random passwords are not served)."),
            ))
        }
    })
}

/// Whether a secret passes ListSecrets' filters (every filter; any of a filter's values).
fn passes(s: &Secret, filters: &[Value]) -> bool {
    filters.iter().all(|f| {
        let values: Vec<&str> = f["Values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let key = f["Key"].as_str().unwrap_or("");
        values.iter().any(|v| {
            let (negate, v) = match v.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, *v),
            };
            let prefix = |x: &str| x.to_lowercase().starts_with(&v.to_lowercase());
            let hit = match key {
                "name" => prefix(&s.name),
                "description" => s.description.as_deref().is_some_and(prefix),
                "tag-key" => s.tags.iter().any(|t| prefix(&t.key)),
                "tag-value" => s.tags.iter().any(|t| prefix(&t.value)),
                "all" => {
                    prefix(&s.name)
                        || s.description.as_deref().is_some_and(prefix)
                        || s.tags.iter().any(|t| prefix(&t.key) || prefix(&t.value))
                }
                _ => false,
            };
            hit != negate
        })
    })
}

fn page(input: &Value) -> Result<(usize, usize), ApiError> {
    let max = input["MaxResults"].as_u64().unwrap_or(100) as usize;
    let start = match input["NextToken"].as_str() {
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| ApiError::client("InvalidNextTokenException", "The NextToken value is not valid."))?,
        None => 0,
    };
    Ok((max.clamp(1, 100), start))
}

async fn list(sm: &SecretsManager, scope: &Scope, input: &Value) -> Result<Value, ApiError> {
    let filters = input["Filters"].as_array().cloned().unwrap_or_default();
    for f in &filters {
        let key = f["Key"].as_str().unwrap_or("");
        if !["name", "description", "tag-key", "tag-value", "all"].contains(&key) {
            return Err(ApiError::client(
                "InvalidParameterException",
                format!("Filter key {key:?} is not supported (name, description, tag-key, tag-value, all)."),
            ));
        }
    }
    let planned = input["IncludePlannedDeletion"].as_bool().unwrap_or(false);
    let mut all: Vec<Secret> = sm
        .all(scope)
        .await?
        .into_iter()
        .filter(|s| planned || s.deletion_date.is_none())
        .filter(|s| passes(s, &filters))
        .collect();
    all.sort_by(|a, b| a.created.total_cmp(&b.created).then(a.name.cmp(&b.name)));
    if input["SortOrder"].as_str() == Some("desc") {
        all.reverse();
    }
    let (max, start) = page(input)?;
    let rows: Vec<Value> = all
        .iter()
        .skip(start)
        .take(max)
        .map(|s| describe(s, "SecretVersionsToStages"))
        .collect();
    let mut out = json!({"SecretList": rows});
    if start + max < all.len() {
        out["NextToken"] = json!((start + max).to_string());
    }
    Ok(out)
}

async fn versions(sm: &SecretsManager, scope: &Scope, input: &Value) -> Result<Value, ApiError> {
    let s = sm.find(scope, &secret_id(input)?).await?;
    let deprecated = input["IncludeDeprecated"].as_bool().unwrap_or(false);
    let mut vs: Vec<(&String, &secrets::Version)> = s
        .versions
        .iter()
        .filter(|(_, v)| deprecated || !v.stages.is_empty())
        .collect();
    vs.sort_by(|a, b| b.1.created.total_cmp(&a.1.created));
    let (max, start) = page(input)?;
    let rows: Vec<Value> = vs
        .iter()
        .skip(start)
        .take(max)
        .map(|(id, v)| {
            let mut row = json!({"VersionId": id, "VersionStages": v.stages, "CreatedDate": v.created});
            if let Some(a) = v.last_accessed {
                row["LastAccessedDate"] = json!(a);
            }
            row
        })
        .collect();
    let mut out = json!({"ARN": s.arn, "Name": s.name, "Versions": rows});
    if start + max < vs.len() {
        out["NextToken"] = json!((start + max).to_string());
    }
    Ok(out)
}

async fn batch_get(sm: &SecretsManager, scope: &Scope, input: &Value) -> Result<Value, ApiError> {
    let ids: Vec<String> = match (input.get("SecretIdList"), input.get("Filters")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::client(
                "InvalidParameterException",
                "Either SecretIdList or Filters must be provided, not both.",
            ))
        }
        (Some(list), None) => parse(list.clone())?,
        (None, Some(filters)) => {
            let filters = filters.as_array().cloned().unwrap_or_default();
            sm.all(scope)
                .await?
                .into_iter()
                .filter(|s| s.deletion_date.is_none() && passes(s, &filters))
                .map(|s| s.arn)
                .collect()
        }
        (None, None) => {
            return Err(ApiError::client(
                "InvalidParameterException",
                "Either SecretIdList or Filters must be provided.",
            ))
        }
    };
    if ids.len() > 20 {
        return Err(ApiError::client(
            "InvalidParameterException",
            "BatchGetSecretValue takes at most 20 secrets at a time.",
        ));
    }
    let (mut values, mut errors) = (Vec::new(), Vec::new());
    for id in ids {
        match sm.get_value(scope, &id, None, None).await {
            Ok((s, vid, v)) => values.push(value_out(&s, &vid, &v)),
            Err(e) => errors.push(json!({"SecretId": id, "ErrorCode": e.shape, "Message": e.message})),
        }
    }
    Ok(json!({"SecretValues": values, "Errors": errors}))
}
