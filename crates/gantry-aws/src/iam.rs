//! IAM (AWS Query, version 2010-05-08) and STS (GetCallerIdentity, AssumeRole), over
//! `gantry_control::iam`: users and their access keys, roles, inline policies, and managed
//! policies with versions and attachments.

use crate::api::{caller, Api, ApiError};
use crate::protocol::Reply;
use gantry_control::iam::groups::Group;
use gantry_control::iam::managed::Principal;
use gantry_control::iam::tags::TagChange;
use gantry_control::iam::{
    chaining::SessionAsked, Caller, Iam, IamError, ManagedPolicy, NewRole, PolicyScope, PolicyVersion, Role,
    SessionPolicies, StoredKey, Tag, User,
};
use gantry_types::arn::Scope;
use serde_json::{json, Value};

impl From<IamError> for ApiError {
    fn from(e: IamError) -> ApiError {
        ApiError::of_shape(e.shape, e.message)
    }
}

fn text<'a>(input: &'a Value, key: &str) -> Option<&'a str> {
    input.get(key).and_then(Value::as_str)
}

fn required<'a>(input: &'a Value, key: &str) -> Result<&'a str, ApiError> {
    text(input, key).ok_or_else(|| {
        ApiError::client(
            "ValidationError",
            format!("1 validation error detected: Value null at '{key}' failed to satisfy constraint: Member must not be null"),
        )
    })
}

fn user_out(u: &User) -> Value {
    let mut out = json!({"Path": u.path, "UserName": u.name, "UserId": u.id, "Arn": u.arn, "CreateDate": u.created});
    if !u.tags.is_empty() {
        out["Tags"] = json!(tags_out(&u.tags));
    }
    out
}

fn tags_out(tags: &[Tag]) -> Vec<Value> {
    tags.iter().map(|t| json!({"Key": t.key, "Value": t.value})).collect()
}

/// A request's `Tags` (none: empty).
fn tags_in(input: &Value) -> Result<Vec<Tag>, ApiError> {
    serde_json::from_value(input.get("Tags").cloned().unwrap_or(json!([])))
        .map_err(|e| ApiError::client("InvalidInputException", format!("Tags: {e}")))
}

fn key_out(id: &str, k: &StoredKey, user_name: &str, with_secret: bool) -> Value {
    let mut out = json!({"UserName": user_name, "AccessKeyId": id, "Status": k.status, "CreateDate": k.created});
    if with_secret {
        out["SecretAccessKey"] = json!(k.secret_access_key);
    }
    out
}

/// The user an operation is about: the one named, else the caller (None: the root). A role
/// session must name one, as in IAM.
fn subject(input: &Value, who: &Caller) -> Result<Option<String>, ApiError> {
    match (text(input, "UserName"), who) {
        (Some(n), _) => Ok(Some(n.to_string())),
        (None, Caller::User { user, .. }) => Ok(Some(user.name.clone())),
        (None, Caller::Root { .. }) => Ok(None),
        (None, Caller::Role { .. }) => Err(ApiError::client(
            "ValidationError",
            "Must specify userName when calling with non-User credentials",
        )),
    }
}

/// Marker paging over an ordered list: the marker is the index to continue from.
fn paged(items: Vec<Value>, key: &str, input: &Value) -> Result<Value, ApiError> {
    let max = input["MaxItems"].as_u64().unwrap_or(100).clamp(1, 1000) as usize;
    let start = match text(input, "Marker") {
        Some(m) => m
            .parse::<usize>()
            .map_err(|_| ApiError::client("ValidationError", "The Marker is not valid."))?,
        None => 0,
    };
    let total = items.len();
    let mut out =
        json!({ key: items.into_iter().skip(start).take(max).collect::<Vec<_>>(), "IsTruncated": start + max < total });
    if start + max < total {
        out["Marker"] = json!((start + max).to_string());
    }
    Ok(out)
}

/// The registry's entry point for IAM.
pub fn handler<'a>(api: &'a Api, scope: &'a Scope, op: &'a str, input: Value) -> Reply<'a> {
    Box::pin(dispatch(api, scope, op, input))
}

async fn dispatch(api: &Api, scope: &Scope, op: &str, input: Value) -> Result<Value, ApiError> {
    let iam = api.control.iam();
    let account = scope.account.as_str();
    let who = caller(account);
    Ok(match op {
        "CreateUser" => {
            let tags: Vec<Tag> = serde_json::from_value(input.get("Tags").cloned().unwrap_or(json!([])))
                .map_err(|e| ApiError::client("InvalidInputException", format!("Tags: {e}")))?;
            let u = iam
                .create_user(account, required(&input, "UserName")?, text(&input, "Path"), tags)
                .await?;
            json!({"User": user_out(&u)})
        }
        "GetUser" => match subject(&input, &who)? {
            Some(name) => json!({"User": user_out(&iam.user(account, &name).await?)}),
            // The root has no user name (AWS answers the same).
            None => json!({"User": {"Path": "/", "UserId": account, "Arn": who.arn(), "CreateDate": 0}}),
        },
        "TagUser" | "UntagUser" | "TagRole" | "UntagRole" => {
            let (name, tags) = (
                required(&input, if op.ends_with("User") { "UserName" } else { "RoleName" })?,
                tags_in(&input)?,
            );
            let keys: Vec<String> = input["TagKeys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str().map(String::from))
                .collect();
            let change = if op.starts_with("Tag") {
                TagChange::Add(&tags)
            } else {
                TagChange::Remove(&keys)
            };
            match op.ends_with("User") {
                true => iam.change_user_tags(account, name, change).await?,
                false => iam.change_role_tags(account, name, change).await?,
            }
            json!({})
        }
        "ListUserTags" => {
            let u = iam.user(account, required(&input, "UserName")?).await?;
            paged(tags_out(&u.tags), "Tags", &input)?
        }
        "ListRoleTags" => {
            let r = iam.role(account, required(&input, "RoleName")?).await?;
            paged(tags_out(&r.tags), "Tags", &input)?
        }
        "ListUsers" => {
            let users = iam.users(account, text(&input, "PathPrefix")).await?;
            paged(users.iter().map(user_out).collect(), "Users", &input)?
        }
        "DeleteUser" => {
            iam.delete_user(account, required(&input, "UserName")?).await?;
            json!({})
        }
        "CreateAccessKey" => {
            let name = subject(&input, &who)?;
            let (id, k) = iam.create_key(account, name.as_deref()).await?;
            json!({"AccessKey": key_out(&id, &k, name.as_deref().unwrap_or(""), true)})
        }
        "ListAccessKeys" => {
            let name = subject(&input, &who)?;
            if let Some(n) = &name {
                iam.user(account, n).await?;
            }
            let keys = iam.keys(account, name.as_deref()).await?;
            let rows = keys
                .iter()
                .map(|(id, k)| key_out(id, k, name.as_deref().unwrap_or(""), false))
                .collect();
            paged(rows, "AccessKeyMetadata", &input)?
        }
        "UpdateAccessKey" | "DeleteAccessKey" => {
            let name = subject(&input, &who)?;
            let id = required(&input, "AccessKeyId")?;
            let status = if op == "UpdateAccessKey" {
                Some(required(&input, "Status")?)
            } else {
                None
            };
            iam.change_key(account, name.as_deref(), id, status).await?;
            // Answered once this server checks requests against the change.
            let keys = &api.control.signing_keys;
            keys.settled(id, |k| k.map(|k| k.status.as_str()) == status).await;
            json!({})
        }
        "PutUserPolicy" => {
            let user = required(&input, "UserName")?;
            let doc = required(&input, "PolicyDocument")?;
            iam.put_policy(account, user, required(&input, "PolicyName")?, Some(doc))
                .await?;
            json!({})
        }
        "DeleteUserPolicy" => {
            let user = required(&input, "UserName")?;
            iam.put_policy(account, user, required(&input, "PolicyName")?, None)
                .await?;
            json!({})
        }
        "GetUserPolicy" => {
            let u = iam.user(account, required(&input, "UserName")?).await?;
            let name = required(&input, "PolicyName")?;
            let doc = u.policies.get(name).ok_or_else(|| {
                ApiError::of_shape(
                    "NoSuchEntityException",
                    format!("The user policy with name {name} cannot be found."),
                )
            })?;
            json!({"UserName": u.name, "PolicyName": name, "PolicyDocument": url_encoded(doc)})
        }
        "ListUserPolicies" => {
            let u = iam.user(account, required(&input, "UserName")?).await?;
            paged(u.policies.keys().map(|k| json!(k)).collect(), "PolicyNames", &input)?
        }
        "CreateRole" => {
            let tags: Vec<Tag> = serde_json::from_value(input.get("Tags").cloned().unwrap_or(json!([])))
                .map_err(|e| ApiError::client("InvalidInputException", format!("Tags: {e}")))?;
            if input.get("PermissionsBoundary").is_some() {
                return Err(ApiError::client(
                    "InvalidInputException",
                    "Permissions boundaries are not supported by Gantry yet.",
                ));
            }
            let req = NewRole {
                name: required(&input, "RoleName")?.to_string(),
                path: text(&input, "Path").map(str::to_string),
                trust: required(&input, "AssumeRolePolicyDocument")?.to_string(),
                description: text(&input, "Description").map(str::to_string),
                max_session: input["MaxSessionDuration"].as_i64(),
                tags,
            };
            json!({"Role": role_out(&iam.create_role(account, req).await?)})
        }
        "GetRole" => json!({"Role": role_out(&iam.role(account, required(&input, "RoleName")?).await?)}),
        "ListRoles" => {
            let roles = iam.roles(account, text(&input, "PathPrefix")).await?;
            paged(roles.iter().map(role_out).collect(), "Roles", &input)?
        }
        "DeleteRole" => {
            iam.delete_role(account, required(&input, "RoleName")?).await?;
            json!({})
        }
        "UpdateAssumeRolePolicy" => {
            let doc = required(&input, "PolicyDocument")?;
            iam.change_role(account, required(&input, "RoleName")?, Some(doc), None)
                .await?;
            json!({})
        }
        "PutRolePolicy" | "DeleteRolePolicy" => {
            let name = required(&input, "PolicyName")?;
            let doc = if op == "PutRolePolicy" {
                Some(required(&input, "PolicyDocument")?)
            } else {
                None
            };
            iam.change_role(account, required(&input, "RoleName")?, None, Some((name, doc)))
                .await?;
            json!({})
        }
        "GetRolePolicy" => {
            let r = iam.role(account, required(&input, "RoleName")?).await?;
            let name = required(&input, "PolicyName")?;
            let doc = r.policies.get(name).ok_or_else(|| {
                ApiError::of_shape(
                    "NoSuchEntityException",
                    format!("The role policy with name {name} cannot be found."),
                )
            })?;
            json!({"RoleName": r.name, "PolicyName": name, "PolicyDocument": url_encoded(doc)})
        }
        "ListRolePolicies" => {
            let r = iam.role(account, required(&input, "RoleName")?).await?;
            paged(r.policies.keys().map(|k| json!(k)).collect(), "PolicyNames", &input)?
        }
        other if other.contains("Group") => return group_op(&iam, account, other, &input).await,
        other => return managed_policy_op(&iam, account, other, &input).await,
    })
}

fn policy_out(p: &ManagedPolicy, attachments: usize) -> Value {
    let mut out = json!({
        "PolicyName": p.name, "PolicyId": p.id, "Arn": p.arn, "Path": p.path, "DefaultVersionId": p.default_version,
        "AttachmentCount": attachments, "PermissionsBoundaryUsageCount": 0, "IsAttachable": true,
        "CreateDate": p.created, "UpdateDate": p.updated,
    });
    if let Some(d) = &p.description {
        out["Description"] = json!(d);
    }
    if !p.tags.is_empty() {
        out["Tags"] = json!(p
            .tags
            .iter()
            .map(|t| json!({"Key": t.key, "Value": t.value}))
            .collect::<Vec<_>>());
    }
    out
}

fn version_out(p: &ManagedPolicy, v: &PolicyVersion, with_document: bool) -> Value {
    let mut out = json!({"VersionId": v.id, "IsDefaultVersion": v.id == p.default_version, "CreateDate": v.created});
    if with_document {
        out["Document"] = json!(url_encoded(&v.document));
    }
    out
}

fn group_out(g: &Group) -> Value {
    json!({"Path": g.path, "GroupName": g.name, "GroupId": g.id, "Arn": g.arn, "CreateDate": g.created})
}

/// Groups: their members, inline policies and attached managed policies.
async fn group_op(iam: &Iam, account: &str, op: &str, input: &Value) -> Result<Value, ApiError> {
    let group = || required(input, "GroupName");
    Ok(match op {
        "CreateGroup" => json!({"Group": group_out(&iam.create_group(account, group()?, text(input, "Path")).await?)}),
        "GetGroup" => {
            let g = iam.group(account, group()?).await?;
            let users = iam.group_members(account, &g.name).await?;
            let mut out = paged(users.iter().map(user_out).collect(), "Users", input)?;
            out["Group"] = group_out(&g);
            out
        }
        "ListGroups" => {
            let groups = iam.groups(account, text(input, "PathPrefix")).await?;
            paged(groups.iter().map(group_out).collect(), "Groups", input)?
        }
        "DeleteGroup" => {
            iam.delete_group(account, group()?).await?;
            json!({})
        }
        "AddUserToGroup" | "RemoveUserFromGroup" => {
            let user = required(input, "UserName")?;
            iam.change_membership(account, group()?, user, op == "AddUserToGroup")
                .await?;
            json!({})
        }
        "ListGroupsForUser" => {
            let u = iam.user(account, required(input, "UserName")?).await?;
            let mut groups = Vec::new();
            for name in &u.groups {
                groups.push(group_out(&iam.group(account, name).await?));
            }
            paged(groups, "Groups", input)?
        }
        "PutGroupPolicy" | "DeleteGroupPolicy" => {
            let doc = (op == "PutGroupPolicy")
                .then(|| required(input, "PolicyDocument"))
                .transpose()?;
            iam.put_group_policy(account, group()?, required(input, "PolicyName")?, doc)
                .await?;
            json!({})
        }
        "GetGroupPolicy" => {
            let g = iam.group(account, group()?).await?;
            let name = required(input, "PolicyName")?;
            let doc = g.policies.get(name).ok_or_else(|| {
                ApiError::of_shape(
                    "NoSuchEntityException",
                    format!("The group policy with name {name} cannot be found."),
                )
            })?;
            json!({"GroupName": g.name, "PolicyName": name, "PolicyDocument": url_encoded(doc)})
        }
        "ListGroupPolicies" => {
            let g = iam.group(account, group()?).await?;
            paged(g.policies.keys().map(|k| json!(k)).collect(), "PolicyNames", input)?
        }
        "AttachGroupPolicy" | "DetachGroupPolicy" => {
            let arn = required(input, "PolicyArn")?;
            iam.attach(account, Principal::Group(group()?), arn, op.starts_with("Detach"))
                .await?;
            json!({})
        }
        "ListAttachedGroupPolicies" => {
            let g = iam.group(account, group()?).await?;
            paged(attached_out(&g.managed.attached), "AttachedPolicies", input)?
        }
        other => return managed_policy_op(iam, account, other, input).await,
    })
}

fn attached_out(attached: &[String]) -> Vec<Value> {
    attached
        .iter()
        .map(|arn| json!({"PolicyArn": arn, "PolicyName": arn.rsplit('/').next().unwrap_or(arn)}))
        .collect()
}

/// Managed policies: create, read, version, attach to users and roles.
async fn managed_policy_op(iam: &Iam, account: &str, op: &str, input: &Value) -> Result<Value, ApiError> {
    let arn = || required(input, "PolicyArn");
    Ok(match op {
        "CreatePolicy" => {
            let tags: Vec<Tag> = serde_json::from_value(input.get("Tags").cloned().unwrap_or(json!([])))
                .map_err(|e| ApiError::client("InvalidInputException", format!("Tags: {e}")))?;
            let p = iam
                .create_policy(
                    account,
                    required(input, "PolicyName")?,
                    text(input, "Path"),
                    required(input, "PolicyDocument")?,
                    text(input, "Description"),
                    tags,
                )
                .await?;
            json!({"Policy": policy_out(&p, 0)})
        }
        "GetPolicy" => {
            let p = iam.policy(account, arn()?).await?;
            json!({"Policy": policy_out(&p, iam.attachment_count(account, &p.arn).await?)})
        }
        "DeletePolicy" => {
            iam.delete_policy(account, arn()?).await?;
            json!({})
        }
        "ListPolicies" => {
            let scope = match text(input, "Scope").unwrap_or("All") {
                "AWS" => PolicyScope::Aws,
                "Local" => PolicyScope::Local,
                _ => PolicyScope::All,
            };
            let prefix = text(input, "PathPrefix").unwrap_or("/");
            let only_attached = input["OnlyAttached"].as_bool().unwrap_or(false);
            let mut out = vec![];
            for p in iam.policies(account, scope).await?.iter().filter(|p| p.path.starts_with(prefix)) {
                let n = iam.attachment_count(account, &p.arn).await?;
                if !only_attached || n > 0 {
                    out.push(policy_out(p, n));
                }
            }
            paged(out, "Policies", input)?
        }
        "CreatePolicyVersion" => {
            let set_default = input["SetAsDefault"].as_bool().unwrap_or(false);
            let v = iam
                .create_policy_version(account, arn()?, required(input, "PolicyDocument")?, set_default)
                .await?;
            json!({"PolicyVersion": {"VersionId": v.id, "IsDefaultVersion": set_default, "CreateDate": v.created}})
        }
        "GetPolicyVersion" => {
            let p = iam.policy(account, arn()?).await?;
            let id = required(input, "VersionId")?;
            let v = p.versions.iter().find(|v| v.id == id).ok_or_else(|| {
                ApiError::of_shape(
                    "NoSuchEntityException",
                    format!("Policy {} version {id} does not exist or is not attachable.", p.arn),
                )
            })?;
            json!({"PolicyVersion": version_out(&p, v, true)})
        }
        "ListPolicyVersions" => {
            let p = iam.policy(account, arn()?).await?;
            let versions = p.versions.iter().rev().map(|v| version_out(&p, v, false)).collect();
            paged(versions, "Versions", input)?
        }
        "DeletePolicyVersion" => {
            iam.delete_policy_version(account, arn()?, required(input, "VersionId")?).await?;
            json!({})
        }
        "SetDefaultPolicyVersion" => {
            iam.set_default_version(account, arn()?, required(input, "VersionId")?).await?;
            json!({})
        }
        "AttachUserPolicy" | "DetachUserPolicy" => {
            let who = Principal::User(required(input, "UserName")?);
            iam.attach(account, who, arn()?, op.starts_with("Detach")).await?;
            json!({})
        }
        "AttachRolePolicy" | "DetachRolePolicy" => {
            let who = Principal::Role(required(input, "RoleName")?);
            iam.attach(account, who, arn()?, op.starts_with("Detach")).await?;
            json!({})
        }
        "ListAttachedUserPolicies" => {
            let u = iam.user(account, required(input, "UserName")?).await?;
            paged(attached_out(&u.managed.attached), "AttachedPolicies", input)?
        }
        "ListAttachedRolePolicies" => {
            let r = iam.role(account, required(input, "RoleName")?).await?;
            paged(attached_out(&r.managed.attached), "AttachedPolicies", input)?
        }
        other => {
            return Err(ApiError::client(
                "UnknownOperationException",
                format!("Gantry's IAM serves users, groups, roles, access keys, inline and managed policies; {other} is not implemented yet."),
            ))
        }
    })
}

/// A policy document as IAM returns it: URL-encoded (the SDKs decode it).
fn url_encoded(doc: &str) -> String {
    let encoded: String = form_urlencoded::byte_serialize(doc.as_bytes()).collect();
    encoded.replace('+', "%20")
}

fn role_out(r: &Role) -> Value {
    let mut out = json!({
        "Path": r.path, "RoleName": r.name, "RoleId": r.id, "Arn": r.arn, "CreateDate": r.created,
        "AssumeRolePolicyDocument": url_encoded(&r.trust), "MaxSessionDuration": r.max_session,
    });
    if let Some(d) = &r.description {
        out["Description"] = json!(d);
    }
    if !r.tags.is_empty() {
        out["Tags"] = json!(tags_out(&r.tags));
    }
    out
}

/// The registry's entry point for STS.
pub fn sts_handler<'a>(api: &'a Api, scope: &'a Scope, op: &'a str, input: Value) -> Reply<'a> {
    Box::pin(async move {
        match op {
            "GetCallerIdentity" => {
                let who = caller(&scope.account);
                Ok(json!({"UserId": who.id(), "Account": who.account(), "Arn": who.arn()}))
            }
            "AssumeRole" => assume_role(api, scope, &input).await,
            other => Err(ApiError::client(
                "UnknownOperationException",
                format!("Gantry's STS serves GetCallerIdentity; {other} is not implemented yet."),
            )),
        }
    })
}

async fn assume_role(api: &Api, scope: &Scope, input: &Value) -> Result<Value, ApiError> {
    for unsupported in ["SerialNumber", "TokenCode", "ProvidedContexts"] {
        if input.get(unsupported).is_some() {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!("{unsupported} is not supported by Gantry's AssumeRole yet."),
            ));
        }
    }
    let who = caller(&scope.account);
    let mut ctx = gantry_policy::Context::new();
    ctx.set("aws:PrincipalArn", who.principal_arn())
        .set("aws:PrincipalAccount", who.account());
    if let Some(id) = text(input, "ExternalId") {
        ctx.set("sts:ExternalId", id);
    }
    if let Some(s) = text(input, "SourceIdentity") {
        ctx.set("sts:SourceIdentity", s);
    }
    let transitive_keys = input
        .get("TransitiveTagKeys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    let asked = SessionAsked {
        tags: tags_in(input)?,
        transitive_keys: transitive_keys.filter_map(|k| k.as_str().map(String::from)).collect(),
        policies: session_policies(input)?,
        source_identity: text(input, "SourceIdentity").map(String::from),
    };
    let (id, key, role) = api
        .control
        .iam()
        .assume_role(
            &who,
            required(input, "RoleArn")?,
            required(input, "RoleSessionName")?,
            input["DurationSeconds"].as_i64(),
            &ctx,
            &asked,
        )
        .await?;
    let session = key.role.as_ref().expect("a session key has its role");
    let mut out = json!({
        "Credentials": {
            "AccessKeyId": id, "SecretAccessKey": key.secret_access_key,
            "SessionToken": key.session_token, "Expiration": session.expires,
        },
        "AssumedRoleUser": {
            "AssumedRoleId": format!("{}:{}", role.id, session.session),
            "Arn": format!("arn:aws:sts::{}:assumed-role/{}/{}", key.account_id, role.name, session.session),
        },
    });
    if !asked.policies.is_empty() || !session.tags.is_empty() {
        out["PackedPolicySize"] = json!(packed_percent(&asked.policies, &session.tags));
    }
    if let Some(s) = &session.source_identity {
        out["SourceIdentity"] = json!(s);
    }
    Ok(out)
}

/// How close the session policies and tags come to AssumeRole's limit, in percent (AWS's
/// PackedPolicySize): Gantry measures their plaintext against the 2,048 characters allowed.
fn packed_percent(policies: &SessionPolicies, tags: &[Tag]) -> usize {
    let inline = policies
        .inline
        .as_deref()
        .map_or(0, |d| d.chars().filter(|c| !c.is_whitespace()).count());
    let arns: usize = policies.arns.iter().map(String::len).sum();
    let tags: usize = tags.iter().map(|t| t.key.len() + t.value.len()).sum();
    (inline + arns + tags) * 100 / gantry_control::iam::MAX_SESSION_POLICY_CHARS
}

/// AssumeRole's Policy and PolicyArns.
fn session_policies(input: &Value) -> Result<SessionPolicies, ApiError> {
    let arns = input.get("PolicyArns").and_then(Value::as_array).into_iter().flatten();
    let arns = arns
        .map(|d| {
            d.get("arn")
                .and_then(Value::as_str)
                .map(String::from)
                .ok_or_else(|| ApiError::client("ValidationError", "Each of PolicyArns must have an arn."))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SessionPolicies {
        inline: text(input, "Policy").map(String::from),
        arns,
    })
}
