//! Authorisation of every API call: who signed, what the request asks (the action, the ARNs
//! of the resources it names, the service's condition keys), and whether the caller's
//! policies allow it, in IAM's words when they do not.

mod arns;
mod ecs;
mod iam;

use crate::api::{Api, ApiError};
use axum::http::StatusCode;
use gantry_control::iam::{Caller, StoredKey};
use gantry_types::arn::Scope;
use serde_json::Value;

/// Resource ARNs and condition keys (with their values) of one request.
pub type Named = (Vec<String>, Vec<(String, Vec<String>)>);

/// Who signed with `key`: its user, role session or the root.
pub async fn caller(api: &Api, key: &StoredKey) -> Result<Caller, ApiError> {
    api.control.iam().caller(key).await.map_err(|e| {
        ApiError::new(
            "UnrecognizedClientException",
            format!("The access key's user cannot be read: {e}"),
            StatusCode::FORBIDDEN,
        )
    })
}

/// Whether `caller` may do what is `asked`, or AccessDenied in the wire's words.
pub async fn authorize(api: &Api, caller: &Caller, asked: &Asked<'_>) -> Result<(), ApiError> {
    // Resource tags cost a read per resource: only read when a policy asks about them.
    let tags = if caller.mentions("aws:ResourceTag") {
        let scope = Scope {
            account: caller.account().to_string(),
            region: asked.region.to_string(),
        };
        let mut tags = Vec::with_capacity(asked.resources.len());
        for arn in &asked.resources {
            tags.push(resource_tags(api, &scope, asked.service, arn).await);
        }
        tags
    } else {
        vec![]
    };
    let mut policies = Vec::new();
    if asked.service == "secretsmanager" {
        let scope = Scope {
            account: caller.account().to_string(),
            region: asked.region.to_string(),
        };
        for arn in &asked.resources {
            policies.push(secret_policy(api, &scope, arn).await);
        }
    }
    permit_with(caller, asked, &tags, &policies)
}

/// A secret's resource policy, if it has one (and exists).
async fn secret_policy(api: &Api, scope: &Scope, arn: &str) -> Option<String> {
    if arn == "*" {
        return None;
    }
    api.secrets.as_ref()?.find(scope, arn).await.ok()?.resource_policy
}

/// A resource's tags, for aws:ResourceTag (none for what Gantry does not tag or cannot find).
async fn resource_tags(api: &Api, scope: &Scope, service: &str, arn: &str) -> Vec<(String, String)> {
    match service {
        "ecs" => crate::ecs::resource_tags(api, scope, arn).await,
        "secretsmanager" => match &api.secrets {
            Some(sm) => sm
                .find(scope, arn)
                .await
                .map(|s| s.tags.into_iter().map(|t| (t.key, t.value)).collect())
                .unwrap_or_default(),
            None => vec![],
        },
        "iam" => iam_tags(api, &scope.account, arn).await,
        _ => vec![],
    }
}

/// An IAM user's or role's tags, by its ARN.
async fn iam_tags(api: &Api, account: &str, arn: &str) -> Vec<(String, String)> {
    let iam = api.control.iam();
    let name = arn.rsplit('/').next().unwrap_or_default();
    let tags = if arn.contains(":user/") {
        iam.user(account, name).await.map(|u| u.tags)
    } else if arn.contains(":role/") {
        iam.role(account, name).await.map(|r| r.tags)
    } else {
        return vec![];
    };
    tags.unwrap_or_default().into_iter().map(|t| (t.key, t.value)).collect()
}

/// What a request asks to do, for authorisation.
pub struct Asked<'a> {
    /// The service's signing name.
    pub service: &'a str,
    pub operation: &'a str,
    /// The ARNs of the resources the request names where Gantry resolves them ("*"
    /// otherwise); each must be allowed.
    pub resources: Vec<String>,
    /// The service's condition keys the request carries (ecs:cluster, aws:RequestTag/...).
    pub context: Vec<(String, Vec<String>)>,
    pub region: &'a str,
    /// Query services answer AccessDenied, JSON ones AccessDeniedException.
    pub query_wire: bool,
}

impl<'a> Asked<'a> {
    pub async fn new(
        api: &Api,
        scope: &'a Scope,
        (service, operation): (&'a str, &'a str),
        input: &Value,
        query_wire: bool,
        caller: &Caller,
    ) -> Asked<'a> {
        // The account's root has no identity policies: it may do whatever no resource policy
        // denies, and only secrets have resource policies here. Its other requests skip the
        // reads that would name their resources (a family's latest revision, an entity's path).
        let unbounded = matches!(caller, Caller::Root { .. }) && service != "secretsmanager";
        let (resources, context) = match unbounded {
            true => (vec!["*".to_string()], vec![]),
            false => resources_of(api, scope, (service, operation), input, caller).await,
        };
        Asked {
            service,
            operation,
            resources,
            context,
            region: &scope.region,
            query_wire,
        }
    }
}

/// The resource ARNs a request acts on, where Gantry knows them (AssumeRole's role, the
/// secrets and parameters it names by name or ARN, ECS's clusters, task definitions,
/// services and tasks, IAM's entities, and what `arns` reads from other services' requests)
/// and its condition keys. Everything else is checked against "*".
async fn resources_of(
    api: &Api,
    scope: &Scope,
    (service, operation): (&str, &str),
    input: &Value,
    caller: &Caller,
) -> Named {
    let (resources, context) = match service {
        "ecs" => ecs::named(api, scope, operation, input).await,
        "iam" => iam::named(api, caller, operation, input).await,
        "sts" | "secretsmanager" | "ssm" => (named_secrets(api, scope, (service, operation), input).await, vec![]),
        "application-autoscaling" => scalable_target(api, scope, operation, input).await,
        _ => arns::named(scope, service, operation, input),
    };
    (star_if_empty(resources), context)
}

/// Application Auto Scaling names a scalable target by its ARN (`scalable-target/ID`, the
/// id its registration drew; `*` for one being registered); its Describe* operations name
/// none. Tags come as a map.
async fn scalable_target(api: &Api, scope: &Scope, operation: &str, input: &Value) -> Named {
    let tags: Vec<(String, String)> = input
        .get("Tags")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    let context = tag_context(tags);
    if let Some(arn) = input.get("ResourceARN").and_then(Value::as_str) {
        return (vec![arn.to_string()], context);
    }
    let resource = input.get("ResourceId").and_then(Value::as_str);
    let Some(resource) = resource.filter(|_| !operation.starts_with("Describe")) else {
        return (vec![], context);
    };
    let alarms = gantry_control::alarms::Alarms::new(
        api.control.store.clone(),
        api.metrics.clone(),
        api.control.clock.clone(),
    );
    let scaling = gantry_control::autoscaling::AutoScaling::new(api.control.clone(), alarms);
    let arn = match scaling.target_arn(scope, resource).await {
        Some(arn) => arn,
        None => format!(
            "arn:aws:application-autoscaling:{}:{}:scalable-target/*",
            scope.region, scope.account
        ),
    };
    (vec![arn], context)
}

/// AssumeRole's role, and the secrets and parameters a request names.
async fn named_secrets(api: &Api, scope: &Scope, (service, operation): (&str, &str), input: &Value) -> Vec<String> {
    let one = |key: &str| input.get(key).and_then(Value::as_str).map(String::from);
    let many = |key: &str| -> Vec<String> {
        let list = input.get(key).and_then(Value::as_array).into_iter().flatten();
        list.filter_map(|v| v.as_str().map(String::from)).collect()
    };
    match (service, operation) {
        ("sts", "AssumeRole") => one("RoleArn").into_iter().collect(),
        ("secretsmanager", _) => {
            let ids = one("SecretId").into_iter().chain(many("SecretIdList"));
            let mut arns = Vec::new();
            for id in ids {
                arns.push(secret_arn(api, scope, &id).await);
            }
            arns
        }
        ("ssm", _) => {
            let names = one("Name").into_iter().chain(many("Names")).chain(one("Path"));
            names.map(|n| parameter_arn(scope, &n)).collect()
        }
        _ => vec![],
    }
}

/// aws:RequestTag/KEY and aws:TagKeys from a request's tags: a list under `list` of objects
/// with `key` and `value` members (their spelling differs between services).
fn request_tags(input: &Value, list: &str, key: &str, value: &str) -> Vec<(String, Vec<String>)> {
    let tags: Vec<(String, String)> = input
        .get(list)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let k = t.get(key)?.as_str()?.to_string();
            Some((k, t.get(value).and_then(Value::as_str).unwrap_or_default().to_string()))
        })
        .collect();
    tag_context(tags)
}

/// aws:RequestTag/KEY for each tag and aws:TagKeys (nothing for no tags).
fn tag_context(tags: Vec<(String, String)>) -> Vec<(String, Vec<String>)> {
    if tags.is_empty() {
        return vec![];
    }
    let mut ctx: Vec<(String, Vec<String>)> = tags
        .iter()
        .map(|(k, v)| (format!("aws:RequestTag/{k}"), vec![v.clone()]))
        .collect();
    ctx.push(("aws:TagKeys".into(), tags.into_iter().map(|(k, _)| k).collect()));
    ctx
}

fn star_if_empty(resources: Vec<String>) -> Vec<String> {
    if resources.is_empty() {
        vec!["*".into()]
    } else {
        resources
    }
}

/// A secret's ARN, from its ARN or name (a secret that does not exist: its name's ARN without
/// the random suffix, which the request then fails to find).
async fn secret_arn(api: &Api, scope: &Scope, id: &str) -> String {
    if id.starts_with("arn:") {
        return id.to_string();
    }
    if let Some(sm) = &api.secrets {
        if let Ok(secret) = sm.find(scope, id).await {
            return secret.arn;
        }
    }
    format!("arn:aws:secretsmanager:{}:{}:secret:{id}", scope.region, scope.account)
}

/// A parameter's ARN from its name or ARN, without a `:version` or `:label` selector.
fn parameter_arn(scope: &Scope, name: &str) -> String {
    if let Some((head, rest)) = name.split_once(":parameter").filter(|_| name.starts_with("arn:")) {
        let bare = rest.split(':').next().unwrap_or_default();
        let slash = if bare.starts_with('/') { "" } else { "/" };
        return format!("{head}:parameter{slash}{bare}");
    }
    gantry_control::parameters::ParameterStore::arn(scope, name.split(':').next().unwrap_or_default())
}

/// Whether `caller`'s policies allow what is `asked`.
pub fn permit(caller: &Caller, asked: &Asked) -> Result<(), ApiError> {
    permit_with(caller, asked, &[], &[])
}

/// `permit`, with each resource's tags as aws:ResourceTag/KEY and its resource policy (both
/// aligned with `asked.resources`, or empty).
fn permit_with(
    caller: &Caller,
    asked: &Asked,
    tags: &[Vec<(String, String)>],
    policies: &[Option<String>],
) -> Result<(), ApiError> {
    let (operation, region, query_wire) = (asked.operation, asked.region, asked.query_wire);
    let action = format!("{}:{operation}", gantry_control::iam::action_prefix(asked.service));
    // Who am I needs no permission in AWS, and not even a Deny refuses it.
    if action == "sts:GetCallerIdentity" {
        return Ok(());
    }
    let mut ctx = gantry_control::iam::principal_context(caller);
    let now = chrono::Utc::now();
    ctx.set(
        "aws:CurrentTime",
        now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
    .set("aws:EpochTime", now.timestamp().to_string())
    .set("aws:SecureTransport", "false")
    .set("aws:RequestedRegion", region);
    for (key, values) in &asked.context {
        ctx.set_many(key, values.clone());
    }
    for (i, resource) in asked.resources.iter().enumerate() {
        let mut ctx = ctx.clone();
        for (k, v) in tags.get(i).into_iter().flatten() {
            ctx.set(&format!("aws:ResourceTag/{k}"), v.clone());
        }
        let policy = policies.get(i).and_then(Option::as_deref);
        gantry_control::iam::authorize_with(caller, (&action, resource), &ctx, policy).map_err(|message| {
            let kind = if query_wire {
                "AccessDenied"
            } else {
                "AccessDeniedException"
            };
            ApiError::new(kind, message, StatusCode::FORBIDDEN)
        })?;
    }
    Ok(())
}

/// Whether `caller` may pass `role_arn` to ECS tasks (iam:PassRole, iam:PassedToService
/// ecs-tasks.amazonaws.com): AccessDeniedException in IAM's words otherwise.
pub fn pass_role(caller: &Caller, role_arn: &str) -> Result<(), ApiError> {
    let mut ctx = gantry_policy::Context::new();
    ctx.set("aws:PrincipalArn", caller.arn())
        .set("aws:PrincipalAccount", caller.account())
        .set("iam:PassedToService", "ecs-tasks.amazonaws.com");
    gantry_control::iam::authorize(caller, "iam:PassRole", role_arn, &ctx)
        .map_err(|message| ApiError::new("AccessDeniedException", message, StatusCode::FORBIDDEN))
}
