//! IAM users, their access keys and inline policies. The account's bootstrap key (the one
//! `gantry dev` and `gantry server` make) is the root user's: it may do everything. A user's
//! key may do what the user's policies allow (`gantry_policy`), checked on every request.
//!
//! Store layout: `/iam/keys/<access key id>` (the signing keys, root's and users'), and
//! `/iam/users/<account>/<user name>`.

use crate::records::{RecordError, Records};
use crate::{random_hex, Clock};
use gantry_store::Store;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

const USERS: &str = "/iam/users/";
/// IAM's quota of access keys per user.
pub const MAX_KEYS_PER_USER: usize = 2;
const MAX_INLINE_BYTES: usize = 2048 * 5;

/// Keys live in the store under /iam/keys/<access key id>.
pub fn key_path(access_key_id: &str) -> String {
    format!("/iam/keys/{access_key_id}")
}

/// A signing key: its secret, account, and whose it is (None: the account's root).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredKey {
    pub secret_access_key: String,
    pub account_id: String,
    #[serde(default)]
    pub session_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default = "active", skip_serializing_if = "is_active")]
    pub status: String,
    #[serde(default)]
    pub created: f64,
}

fn active() -> String {
    "Active".into()
}

fn is_active(s: &String) -> bool {
    s == "Active"
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct IamError {
    pub shape: &'static str,
    pub message: String,
}

impl IamError {
    pub fn new(shape: &'static str, message: impl Into<String>) -> IamError {
        IamError {
            shape,
            message: message.into(),
        }
    }
    fn no_user(name: &str) -> IamError {
        IamError::new(
            "NoSuchEntityException",
            format!("The user with name {name} cannot be found."),
        )
    }
    fn invalid(message: impl Into<String>) -> IamError {
        IamError::new("InvalidInputException", message)
    }
}

impl From<RecordError> for IamError {
    fn from(e: RecordError) -> IamError {
        IamError::new("ServiceFailureException", e.to_string())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub name: String,
    pub path: String,
    pub id: String,
    pub arn: String,
    pub created: f64,
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// Inline policies by name (the documents as given).
    #[serde(default)]
    pub policies: BTreeMap<String, String>,
}

/// Who signed a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    Root { account: String },
    User { account: String, user: User },
}

impl Caller {
    pub fn arn(&self) -> String {
        match self {
            Caller::Root { account } => format!("arn:aws:iam::{account}:root"),
            Caller::User { user, .. } => user.arn.clone(),
        }
    }
    pub fn id(&self) -> String {
        match self {
            Caller::Root { account } => account.clone(),
            Caller::User { user, .. } => user.id.clone(),
        }
    }
    pub fn account(&self) -> &str {
        match self {
            Caller::Root { account } | Caller::User { account, .. } => account,
        }
    }
}

/// A user or policy name as IAM allows it: 1 to 64 (128 for policies) of `\w+=,.@-`.
fn check_name(kind: &str, name: &str, max: usize) -> Result<(), IamError> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(IamError::new(
            "ValidationError",
            format!("The specified value for {kind} is invalid. It must contain only alphanumeric characters and/or the following: +=,.@_-"),
        ))
    }
}

fn check_path(path: &str) -> Result<(), IamError> {
    let ok = path.starts_with('/')
        && path.ends_with('/')
        && path.len() <= 512
        && path.chars().all(|c| ('!'..='~').contains(&c));
    if ok {
        Ok(())
    } else {
        Err(IamError::new(
            "ValidationError",
            "The specified value for path is invalid. It must begin and end with / and contain only alphanumeric characters and/or / characters.",
        ))
    }
}

/// A random IAM-style id: a 4-letter prefix and 17 uppercase letters and digits.
fn iam_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hex = random_hex(17);
    let body: String = (0..17)
        .map(|i| {
            let b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
            char::from(ALPHABET[b as usize % ALPHABET.len()])
        })
        .collect();
    format!("{prefix}{body}")
}

fn secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let hex = random_hex(40);
    (0..40)
        .map(|i| {
            let b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
            char::from(ALPHABET[b as usize % ALPHABET.len()])
        })
        .collect()
}

#[derive(Clone)]
pub struct Iam {
    records: Records,
    clock: Arc<dyn Clock>,
}

impl Iam {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Iam {
        Iam {
            records: Records::new(store),
            clock,
        }
    }

    fn now(&self) -> f64 {
        self.clock.now_ms() as f64 / 1000.0
    }

    fn user_key(account: &str, name: &str) -> String {
        format!("{USERS}{account}/{}", name.to_lowercase())
    }

    /// The user `name` of `account` (names are unique regardless of case, as in IAM).
    pub async fn user(&self, account: &str, name: &str) -> Result<User, IamError> {
        check_name("userName", name, 64).map_err(|_| IamError::no_user(name))?;
        match self.records.load::<User>(&Self::user_key(account, name)).await? {
            Some((u, _)) => Ok(u),
            None => Err(IamError::no_user(name)),
        }
    }

    /// Who a signing key belongs to.
    pub async fn caller(&self, key: &StoredKey) -> Result<Caller, IamError> {
        match &key.user {
            None => Ok(Caller::Root {
                account: key.account_id.clone(),
            }),
            Some(name) => Ok(Caller::User {
                account: key.account_id.clone(),
                user: self.user(&key.account_id, name).await?,
            }),
        }
    }

    pub async fn create_user(
        &self,
        account: &str,
        name: &str,
        path: Option<&str>,
        tags: Vec<Tag>,
    ) -> Result<User, IamError> {
        check_name("userName", name, 64)?;
        let path = path.unwrap_or("/");
        check_path(path)?;
        if tags.len() > 50 {
            return Err(IamError::new(
                "LimitExceededException",
                "A user can have at most 50 tags.",
            ));
        }
        let user = User {
            name: name.to_string(),
            path: path.to_string(),
            id: iam_id("AIDA"),
            arn: format!("arn:aws:iam::{account}:user{path}{name}"),
            created: self.now(),
            tags,
            policies: BTreeMap::new(),
        };
        if !self.records.create(&Self::user_key(account, name), &user).await? {
            return Err(IamError::new(
                "EntityAlreadyExistsException",
                format!("User with name {name} already exists."),
            ));
        }
        Ok(user)
    }

    pub async fn users(&self, account: &str, path_prefix: Option<&str>) -> Result<Vec<User>, IamError> {
        let mut all: Vec<User> = self.records.list(&format!("{USERS}{account}/")).await?;
        all.retain(|u| path_prefix.is_none_or(|p| u.path.starts_with(p)));
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// The access keys of `user` (None: root's), with their ids.
    pub async fn keys(&self, account: &str, user: Option<&str>) -> Result<Vec<(String, StoredKey)>, IamError> {
        let (kvs, _) = self
            .records
            .store
            .list("/iam/keys/")
            .await
            .map_err(RecordError::Store)?;
        let mut out = Vec::new();
        for kv in kvs {
            let Ok(k) = serde_json::from_slice::<StoredKey>(&kv.value) else {
                continue;
            };
            let mine = k.account_id == account
                && k.session_token.is_none()
                && k.user.as_deref().map(str::to_lowercase) == user.map(str::to_lowercase);
            if mine {
                out.push((kv.key.trim_start_matches("/iam/keys/").to_string(), k));
            }
        }
        Ok(out)
    }

    pub async fn delete_user(&self, account: &str, name: &str) -> Result<(), IamError> {
        let u = self.user(account, name).await?;
        if !u.policies.is_empty() {
            return Err(IamError::new(
                "DeleteConflictException",
                "Cannot delete entity, must delete policies first.",
            ));
        }
        if !self.keys(account, Some(&u.name)).await?.is_empty() {
            return Err(IamError::new(
                "DeleteConflictException",
                "Cannot delete entity, must delete access keys first.",
            ));
        }
        self.records.delete(&Self::user_key(account, name)).await?;
        Ok(())
    }

    /// A new access key for `user` (None: root), at most two per user.
    pub async fn create_key(&self, account: &str, user: Option<&str>) -> Result<(String, StoredKey), IamError> {
        let name = match user {
            Some(n) => Some(self.user(account, n).await?.name),
            None => None,
        };
        if self.keys(account, name.as_deref()).await?.len() >= MAX_KEYS_PER_USER {
            return Err(IamError::new(
                "LimitExceededException",
                format!("Cannot exceed quota for AccessKeysPerUser: {MAX_KEYS_PER_USER}"),
            ));
        }
        let id = iam_id("AKIA");
        let key = StoredKey {
            secret_access_key: secret(),
            account_id: account.to_string(),
            session_token: None,
            user: name,
            status: active(),
            created: self.now(),
        };
        if !self.records.create(&key_path(&id), &key).await? {
            return Err(IamError::new(
                "ServiceFailureException",
                "An access key id collided; try again.",
            ));
        }
        Ok((id, key))
    }

    /// Changes (Some(status)) or deletes (None) one of `user`'s keys.
    pub async fn change_key(
        &self,
        account: &str,
        user: Option<&str>,
        id: &str,
        status: Option<&str>,
    ) -> Result<(), IamError> {
        if let Some(s) = status {
            if s != "Active" && s != "Inactive" {
                return Err(IamError::invalid(format!("Status {s} is not Active or Inactive.")));
            }
        }
        let owned = self.keys(account, user).await?.into_iter().any(|(k, _)| k == id);
        if !owned {
            return Err(IamError::new(
                "NoSuchEntityException",
                format!("The Access Key with id {id} cannot be found."),
            ));
        }
        match status {
            None => self.records.delete(&key_path(id)).await?,
            Some(s) => {
                self.records
                    .update(&key_path(id), |cur: Option<StoredKey>| {
                        let mut k =
                            cur.ok_or_else(|| IamError::new("NoSuchEntityException", "The access key is gone."))?;
                        k.status = s.to_string();
                        Ok::<_, IamError>((Some(k), ()))
                    })
                    .await?
            }
        }
        Ok(())
    }

    /// Sets (Some) or deletes (None) an inline policy of a user.
    pub async fn put_policy(&self, account: &str, user: &str, name: &str, doc: Option<&str>) -> Result<(), IamError> {
        check_name("policyName", name, 128)?;
        if let Some(d) = doc {
            if d.len() > MAX_INLINE_BYTES {
                return Err(IamError::new(
                    "LimitExceededException",
                    format!("Cannot exceed quota for PolicySize: {MAX_INLINE_BYTES}"),
                ));
            }
            let p =
                gantry_policy::Policy::parse(d).map_err(|e| IamError::new("MalformedPolicyDocumentException", e.0))?;
            if !p.every_statement_has_resource() {
                return Err(IamError::new(
                    "MalformedPolicyDocumentException",
                    "Policy statement must contain resources.",
                ));
            }
        }
        let key = Self::user_key(account, user);
        self.user(account, user).await?;
        self.records
            .update(&key, |cur: Option<User>| {
                let mut u = cur.ok_or_else(|| IamError::no_user(user))?;
                match doc {
                    Some(d) => {
                        u.policies.insert(name.to_string(), d.to_string());
                    }
                    None => {
                        if u.policies.remove(name).is_none() {
                            return Err(IamError::new(
                                "NoSuchEntityException",
                                format!("The user policy with name {name} cannot be found."),
                            ));
                        }
                    }
                }
                Ok((Some(u), ()))
            })
            .await
    }
}

/// The IAM action prefix of a service, by its signing name.
pub fn action_prefix(signing_name: &str) -> &str {
    match signing_name {
        "monitoring" => "cloudwatch",
        other => other,
    }
}

/// A policy document, parsed once: every request evaluates its caller's policies, and
/// parsing JSON costs more than evaluating. Documents were checked when stored; one that no
/// longer parses allows nothing.
fn parsed(doc: &str) -> Option<Arc<gantry_policy::Policy>> {
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<std::collections::HashMap<String, Arc<gantry_policy::Policy>>>> = OnceLock::new();
    const MAX_CACHED: usize = 10_000;
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().expect("lock").get(doc) {
        return Some(p.clone());
    }
    let p = Arc::new(gantry_policy::Policy::parse(doc).ok()?);
    let mut c = cache.lock().expect("lock");
    if c.len() >= MAX_CACHED {
        c.clear();
    }
    c.insert(doc.to_string(), p.clone());
    Some(p)
}

/// Whether `caller` may perform `action` on `resource`: root may do everything; a user what
/// its inline policies allow. Returns the denial message in IAM's words otherwise.
pub fn authorize(
    caller: &Caller,
    action: &str,
    resource: &str,
    context: &gantry_policy::Context,
) -> Result<(), String> {
    let Caller::User { user, .. } = caller else {
        return Ok(());
    };
    let policies: Vec<Arc<gantry_policy::Policy>> = user.policies.values().filter_map(|d| parsed(d)).collect();
    let refs: Vec<&gantry_policy::Policy> = policies.iter().map(|p| p.as_ref()).collect();
    let req = gantry_policy::Request {
        action,
        resource,
        principal: Some(&user.arn),
        context,
    };
    let why = match gantry_policy::evaluate(&refs, &req) {
        gantry_policy::Decision::Allow => return Ok(()),
        gantry_policy::Decision::ExplicitDeny => "with an explicit deny in an identity-based policy".to_string(),
        gantry_policy::Decision::ImplicitDeny => format!("because no identity-based policy allows the {action} action"),
    };
    Err(format!(
        "User: {} is not authorized to perform: {action} on resource: {resource} {why}",
        user.arn
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(policies: &[(&str, &str)]) -> Caller {
        Caller::User {
            account: "123456789012".into(),
            user: User {
                name: "ann".into(),
                path: "/".into(),
                id: "AIDAEXAMPLE".into(),
                arn: "arn:aws:iam::123456789012:user/ann".into(),
                created: 0.0,
                tags: vec![],
                policies: policies.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            },
        }
    }

    #[test]
    fn root_may_do_everything_and_users_what_their_policies_allow() {
        let ctx = gantry_policy::Context::new();
        let root = Caller::Root {
            account: "123456789012".into(),
        };
        assert!(authorize(&root, "iam:CreateUser", "*", &ctx).is_ok());
        let nobody = user(&[]);
        assert_eq!(
            authorize(&nobody, "ecs:RunTask", "*", &ctx).unwrap_err(),
            "User: arn:aws:iam::123456789012:user/ann is not authorized to perform: ecs:RunTask on resource: * because no identity-based policy allows the ecs:RunTask action"
        );
        let allow = r#"{"Statement": {"Effect": "Allow", "Action": "ecs:*", "Resource": "*"}}"#;
        let deny = r#"{"Statement": {"Effect": "Deny", "Action": "ecs:StopTask", "Resource": "*"}}"#;
        let ann = user(&[("a", allow), ("d", deny)]);
        assert!(authorize(&ann, "ecs:RunTask", "*", &ctx).is_ok());
        assert!(authorize(&ann, "ecs:StopTask", "*", &ctx)
            .unwrap_err()
            .ends_with("with an explicit deny in an identity-based policy"));
        assert_eq!(action_prefix("monitoring"), "cloudwatch");
        assert_eq!(action_prefix("ecs"), "ecs");
    }

    #[test]
    fn names_and_ids() {
        assert!(check_name("userName", "ann.b+c=d,e@f_g-h", 64).is_ok());
        assert!(check_name("userName", "bad name", 64).is_err());
        assert!(check_name("userName", &"a".repeat(65), 64).is_err());
        assert!(check_path("/team/").is_ok() && check_path("team").is_err());
        let id = iam_id("AKIA");
        assert!(
            id.len() == 21
                && id.starts_with("AKIA")
                && id[4..].bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        );
        assert_eq!(secret().len(), 40);
    }
}
