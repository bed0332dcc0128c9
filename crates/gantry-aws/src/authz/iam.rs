//! What an IAM request names, as IAM's service authorisation reference defines it: the user,
//! role, group or managed policy an operation acts on (with its path, as its ARN carries it),
//! the caller's own user when a user operation omits UserName, and the condition keys
//! iam:PolicyARN, aws:RequestTag/KEY and aws:TagKeys. The List operations over a kind
//! (ListUsers, ListRoles, ...) name no resource.

use super::{request_tags, Named};
use crate::api::Api;
use gantry_control::iam::Caller;
use serde_json::Value;

/// The kind of IAM entity an operation acts on.
#[derive(Debug, PartialEq)]
enum Entity {
    User,
    Role,
    Group,
    Policy,
}

/// Which entity `operation` acts on, by IAM's naming: AddUserToGroup acts on the group,
/// ListGroupsForUser and the access-key operations on the user, Attach/DetachRolePolicy on
/// the role.
fn entity(operation: &str) -> Option<Entity> {
    match operation {
        "ListUsers" | "ListRoles" | "ListGroups" | "ListPolicies" => None,
        "ListGroupsForUser" => Some(Entity::User),
        o if o.contains("Group") => Some(Entity::Group),
        o if o.contains("Role") => Some(Entity::Role),
        o if o.contains("User") || o.contains("AccessKey") => Some(Entity::User),
        o if o.contains("Polic") => Some(Entity::Policy),
        _ => None,
    }
}

fn text<'a>(input: &'a Value, key: &str) -> Option<&'a str> {
    input.get(key).and_then(Value::as_str)
}

/// An entity's ARN: `arn:aws:iam::ACCOUNT:KIND/PATH/NAME` (the path begins and ends with /).
fn iam_arn(account: &str, kind: &str, path: &str, name: &str) -> String {
    format!("arn:aws:iam::{account}:{kind}{path}{name}")
}

/// What an IAM operation names, for `caller`.
pub async fn named(api: &Api, caller: &Caller, operation: &str, input: &Value) -> Named {
    let resource = match entity(operation) {
        Some(kind) => resource(api, caller, operation, kind, input).await,
        None => None,
    };
    let mut context = request_tags(input, "Tags", "Key", "Value");
    if let Some(policy) =
        text(input, "PolicyArn").filter(|_| operation.starts_with("Attach") || operation.starts_with("Detach"))
    {
        context.push(("iam:PolicyARN".into(), vec![policy.to_string()]));
    }
    (resource.into_iter().collect(), context)
}

/// The ARN of the entity `operation` acts on: a new one's from the request's path, an
/// existing one's from its record (a missing one's with the root path).
async fn resource(api: &Api, caller: &Caller, operation: &str, kind: Entity, input: &Value) -> Option<String> {
    let account = caller.account();
    let creates = matches!(operation, "CreateUser" | "CreateRole" | "CreateGroup" | "CreatePolicy");
    let new = creates.then(|| text(input, "Path").unwrap_or("/").to_string());
    let (noun, name_key) = match kind {
        Entity::User => ("user", "UserName"),
        Entity::Role => ("role", "RoleName"),
        Entity::Group => ("group", "GroupName"),
        Entity::Policy => {
            return match (text(input, "PolicyArn"), new) {
                (Some(arn), _) => Some(arn.to_string()),
                (None, Some(p)) => Some(iam_arn(account, "policy", &p, text(input, "PolicyName")?)),
                (None, None) => None,
            };
        }
    };
    let Some(name) = text(input, name_key) else {
        // Without UserName a user acts on itself.
        return match (kind, caller) {
            (Entity::User, Caller::User { user, .. }) => Some(user.arn.clone()),
            _ => None,
        };
    };
    let path = match new {
        Some(p) => p,
        None => existing_path(api, account, &kind, name)
            .await
            .unwrap_or_else(|| "/".into()),
    };
    Some(iam_arn(account, noun, &path, name))
}

/// The path of an existing user, role or group.
async fn existing_path(api: &Api, account: &str, kind: &Entity, name: &str) -> Option<String> {
    let iam = api.control.iam();
    match kind {
        Entity::User => iam.user(account, name).await.ok().map(|u| u.path),
        Entity::Role => iam.role(account, name).await.ok().map(|r| r.path),
        Entity::Group => iam.group(account, name).await.ok().map(|g| g.path),
        Entity::Policy => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_act_on_the_entity_iam_names() {
        for (op, kind) in [
            ("CreateUser", Some(Entity::User)),
            ("CreateAccessKey", Some(Entity::User)),
            ("ListGroupsForUser", Some(Entity::User)),
            ("AttachUserPolicy", Some(Entity::User)),
            ("AddUserToGroup", Some(Entity::Group)),
            ("PutGroupPolicy", Some(Entity::Group)),
            ("UpdateAssumeRolePolicy", Some(Entity::Role)),
            ("ListAttachedRolePolicies", Some(Entity::Role)),
            ("TagRole", Some(Entity::Role)),
            ("SetDefaultPolicyVersion", Some(Entity::Policy)),
            ("CreatePolicy", Some(Entity::Policy)),
            ("ListUsers", None),
            ("ListPolicies", None),
            ("ListGroups", None),
        ] {
            assert_eq!(entity(op), kind, "{op}");
        }
    }
}
