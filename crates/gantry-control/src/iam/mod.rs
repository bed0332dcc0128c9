//! IAM users, their access keys and inline policies. The account's bootstrap key (the one
//! `gantry dev` and `gantry server` make) is the root user's: it may do everything. A user's
//! key may do what the user's policies allow (`gantry_policy`), checked on every request.
//!
//! Store layout: `/iam/keys/<access key id>` (the signing keys, root's and users'), and
//! `/iam/users/<account>/<user name>`.

use crate::records::{RecordError, Records};
pub mod chaining;
pub mod groups;
pub mod managed;
pub mod signing_keys;
pub mod tags;

pub use managed::{ManagedPolicy, PolicyScope, PolicyVersion};
pub use signing_keys::SigningKeys;

use crate::{random_hex, Clock};
use gantry_store::Store;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

const USERS: &str = "/iam/users/";
const ROLES: &str = "/iam/roles/";
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
    /// Temporary keys (AssumeRole): the role and session they act as, and when they expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<RoleSession>,
}

/// What a temporary key acts as.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoleSession {
    pub role: String,
    pub session: String,
    pub expires: f64,
    /// The task whose role this is (ECS vended it): the key dies with the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Session tags (AssumeRole's Tags): over the role's own as `aws:PrincipalTag/<key>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    /// Session policies (AssumeRole's Policy and PolicyArns): the session may do only what
    /// they and the role's policies both allow.
    #[serde(default, skip_serializing_if = "SessionPolicies::is_empty")]
    pub policies: SessionPolicies,
    /// Keys of `tags` the session passes on to the sessions it assumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transitive: Vec<String>,
    /// Who started the chain of sessions (AssumeRole's SourceIdentity): `aws:SourceIdentity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_identity: Option<String>,
}

/// AssumeRole's session policies: an inline document and managed policies by ARN.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SessionPolicies {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arns: Vec<String>,
}

impl SessionPolicies {
    pub fn is_empty(&self) -> bool {
        self.inline.is_none() && self.arns.is_empty()
    }
}

/// The plaintext AssumeRole accepts for session policies (inline document and ARNs).
pub const MAX_SESSION_POLICY_CHARS: usize = 2048;
/// Managed session policies one AssumeRole may name.
pub const MAX_SESSION_POLICY_ARNS: usize = 10;

/// The service principal ECS tasks assume their task and execution roles as.
pub const ECS_TASKS: &str = "ecs-tasks.amazonaws.com";

/// How long a task's role credentials last; the node fetches new ones well before.
pub const TASK_SESSION_SECONDS: i64 = 6 * 3600;

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
    fn no_group(name: &str) -> IamError {
        IamError::new(
            "NoSuchEntityException",
            format!("The group with name {name} cannot be found."),
        )
    }

    fn no_role(name: &str) -> IamError {
        IamError::new(
            "NoSuchEntityException",
            format!("The role with name {name} cannot be found."),
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
    #[serde(flatten)]
    pub managed: Attached,
    /// The groups it is in, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Its groups' policy documents, as read for the request at hand (never stored).
    #[serde(skip)]
    pub group_documents: Vec<String>,
}

/// The managed policies attached to a user or role (ARNs), and their default versions'
/// documents as read for the request at hand (never stored).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Attached {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attached: Vec<String>,
    #[serde(skip)]
    pub documents: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Role {
    pub name: String,
    pub path: String,
    pub id: String,
    pub arn: String,
    pub created: f64,
    /// The trust policy: who may assume the role.
    pub trust: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Longest session, seconds (3,600 to 43,200).
    pub max_session: i64,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(default)]
    pub policies: BTreeMap<String, String>,
    #[serde(flatten)]
    pub managed: Attached,
}

/// Who signed a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    Root {
        account: String,
    },
    User {
        account: String,
        user: User,
    },
    /// A role session (temporary credentials from AssumeRole).
    Role {
        account: String,
        role: Role,
        session: String,
        /// The session policies' documents, if AssumeRole gave any: they bound what the
        /// role's policies allow.
        limits: Option<Vec<String>>,
        /// The session tags it passes on when it assumes another role.
        transitive: Vec<Tag>,
        source_identity: Option<String>,
    },
}

impl Caller {
    pub fn arn(&self) -> String {
        match self {
            Caller::Root { account } => format!("arn:aws:iam::{account}:root"),
            Caller::User { user, .. } => user.arn.clone(),
            Caller::Role {
                account, role, session, ..
            } => {
                format!("arn:aws:sts::{account}:assumed-role/{}/{session}", role.name)
            }
        }
    }
    pub fn id(&self) -> String {
        match self {
            Caller::Root { account } => account.clone(),
            Caller::User { user, .. } => user.id.clone(),
            Caller::Role { role, session, .. } => format!("{}:{session}", role.id),
        }
    }
    pub fn account(&self) -> &str {
        match self {
            Caller::Root { account } | Caller::User { account, .. } | Caller::Role { account, .. } => account,
        }
    }
    /// The identity's own ARN (a session's is its role's), for trust policies' principals.
    pub fn principal_arn(&self) -> String {
        match self {
            Caller::Role { role, .. } => role.arn.clone(),
            other => other.arn(),
        }
    }
    /// The inline policies that decide what it may do (none for the root, which may do all).
    /// Whether any of its policies mentions `text` (a condition key, say).
    pub fn mentions(&self, text: &str) -> bool {
        let limits = match self {
            Caller::Role { limits: Some(l), .. } => l.as_slice(),
            _ => &[],
        };
        self.policies()
            .is_some_and(|docs| docs.iter().any(|d| d.contains(text)))
            || limits.iter().any(|d| d.contains(text))
    }

    /// The policy documents that decide what it may do: inline and attached managed ones
    /// (none for the root, which may do all).
    fn policies(&self) -> Option<Vec<&str>> {
        let (inline, managed) = match self {
            Caller::Root { .. } => return None,
            Caller::User { user, .. } => (&user.policies, &user.managed),
            Caller::Role { role, .. } => (&role.policies, &role.managed),
        };
        let groups = match self {
            Caller::User { user, .. } => user.group_documents.as_slice(),
            _ => &[],
        };
        let docs = inline.values().chain(&managed.documents).chain(groups);
        Some(docs.map(String::as_str).collect())
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
        let account = key.account_id.clone();
        match (&key.user, &key.role) {
            (_, Some(r)) => {
                let mut role = self.role(&account, &r.role).await?;
                role.managed.documents = self.documents(&role.managed.attached).await?;
                // A session tag overrides the role's tag of the same key.
                role.tags = tags::without(&role.tags, &r.tags.iter().map(|t| t.key.clone()).collect::<Vec<_>>());
                role.tags.extend(r.tags.iter().cloned());
                let limits = match r.policies.is_empty() {
                    true => None,
                    false => {
                        let mut docs = self.documents(&r.policies.arns).await?;
                        docs.extend(r.policies.inline.iter().cloned());
                        Some(docs)
                    }
                };
                let transitive = r
                    .tags
                    .iter()
                    .filter(|t| r.transitive.iter().any(|k| k.eq_ignore_ascii_case(&t.key)))
                    .cloned()
                    .collect();
                Ok(Caller::Role {
                    role,
                    session: r.session.clone(),
                    account,
                    limits,
                    transitive,
                    source_identity: r.source_identity.clone(),
                })
            }
            (Some(name), None) => {
                let mut user = self.user(&account, name).await?;
                user.managed.documents = self.documents(&user.managed.attached).await?;
                user.group_documents = self.group_documents(&account, &user).await?;
                Ok(Caller::User { user, account })
            }
            (None, None) => Ok(Caller::Root { account }),
        }
    }

    fn role_key(account: &str, name: &str) -> String {
        format!("{ROLES}{account}/{}", name.to_lowercase())
    }

    pub async fn role(&self, account: &str, name: &str) -> Result<Role, IamError> {
        check_name("roleName", name, 64).map_err(|_| IamError::no_role(name))?;
        match self.records.load::<Role>(&Self::role_key(account, name)).await? {
            Some((r, _)) => Ok(r),
            None => Err(IamError::no_role(name)),
        }
    }

    /// CreateRole: a role with its trust policy and longest session (3,600 s by default).
    pub async fn create_role(&self, account: &str, req: NewRole) -> Result<Role, IamError> {
        check_name("roleName", &req.name, 64)?;
        let path = req.path.unwrap_or_else(|| "/".into());
        check_path(&path)?;
        check_trust(&req.trust)?;
        tags::check_tags(&req.tags)?;
        if req.tags.len() > tags::MAX_TAGS {
            return Err(IamError::new(
                "LimitExceededException",
                "A role can have at most 50 tags.",
            ));
        }
        let max_session = req.max_session.unwrap_or(3600);
        if !(3600..=43200).contains(&max_session) {
            return Err(IamError::new(
                "ValidationError",
                "The MaxSessionDuration must be between 3600 and 43200 seconds.",
            ));
        }
        let role = Role {
            arn: format!("arn:aws:iam::{account}:role{path}{}", req.name),
            name: req.name,
            path,
            id: iam_id("AROA"),
            created: self.now(),
            trust: req.trust,
            description: req.description,
            max_session,
            tags: req.tags,
            policies: BTreeMap::new(),
            managed: Attached::default(),
        };
        if !self.records.create(&Self::role_key(account, &role.name), &role).await? {
            return Err(IamError::new(
                "EntityAlreadyExistsException",
                format!("Role with name {} already exists.", role.name),
            ));
        }
        Ok(role)
    }

    pub async fn roles(&self, account: &str, path_prefix: Option<&str>) -> Result<Vec<Role>, IamError> {
        let mut all: Vec<Role> = self.records.list(&format!("{ROLES}{account}/")).await?;
        all.retain(|r| path_prefix.is_none_or(|p| r.path.starts_with(p)));
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    pub async fn delete_role(&self, account: &str, name: &str) -> Result<(), IamError> {
        let r = self.role(account, name).await?;
        no_policies(&r.policies, &r.managed)?;
        self.records.delete(&Self::role_key(account, name)).await?;
        Ok(())
    }

    /// Changes a role's trust policy (Some(trust)) and/or one inline policy (name, Some(doc)
    /// to set, None to delete).
    pub async fn change_role(
        &self,
        account: &str,
        name: &str,
        trust: Option<&str>,
        policy: Option<(&str, Option<&str>)>,
    ) -> Result<(), IamError> {
        if let Some(t) = trust {
            check_trust(t)?;
        }
        if let Some((pname, doc)) = policy {
            check_name("policyName", pname, 128)?;
            if let Some(d) = doc {
                check_identity_policy(d)?;
            }
        }
        self.role(account, name).await?;
        self.records
            .update(&Self::role_key(account, name), |cur: Option<Role>| {
                let mut r = cur.ok_or_else(|| IamError::no_role(name))?;
                if let Some(t) = trust {
                    r.trust = t.to_string();
                }
                if let Some((pname, doc)) = policy {
                    set_inline(&mut r.policies, "role", pname, doc)?;
                }
                Ok((Some(r), ()))
            })
            .await
    }

    /// AssumeRole: `caller` asks for a session of the role `role_arn` (its own account's).
    /// The role's trust policy must allow the caller sts:AssumeRole, and so must a user's or
    /// role's own policies. The session's temporary key is stored until it expires.
    pub async fn assume_role(
        &self,
        caller: &Caller,
        role_arn: &str,
        session: &str,
        duration: Option<i64>,
        context: &gantry_policy::Context,
        asked: &chaining::SessionAsked,
    ) -> Result<(String, StoredKey, Role), IamError> {
        check_session_name(session)?;
        check_session_policies(&asked.policies)?;
        tags::check_tags(&asked.tags)?;
        let carried = chaining::carried(caller, asked)?;
        let account = caller.account().to_string();
        let name = role_arn
            .strip_prefix(&format!("arn:aws:iam::{account}:role/"))
            .and_then(|rest| rest.rsplit('/').next())
            .ok_or_else(|| denied_assume(caller, role_arn))?;
        let role = self
            .role(&account, name)
            .await
            .map_err(|_| denied_assume(caller, role_arn))?;
        if role.arn != role_arn {
            return Err(denied_assume(caller, role_arn));
        }
        let duration = duration.unwrap_or(3600);
        if duration < 900 || duration > role.max_session {
            return Err(IamError::new(
                "ValidationError",
                format!("The requested DurationSeconds ({duration}) is under 900 or exceeds the MaxSessionDuration set for this role."),
            ));
        }
        let trust = gantry_policy::Policy::parse(&role.trust)
            .map_err(|e| IamError::new("MalformedPolicyDocumentException", e.0))?;
        let principal = caller.principal_arn();
        let req = gantry_policy::Request {
            action: "sts:AssumeRole",
            resource: &role.arn,
            principal: Some(&principal),
            context,
        };
        let trusted = gantry_policy::evaluate(&[&trust], &req) == gantry_policy::Decision::Allow;
        if !trusted || authorize(caller, "sts:AssumeRole", &role.arn, context).is_err() {
            return Err(denied_assume(caller, role_arn));
        }
        if !carried.tags.is_empty() {
            may_tag_session(caller, &role, &trust, context, &carried.tags)?;
        }
        if let Some(identity) = &carried.source_identity {
            let mut ctx = context.clone();
            ctx.set("sts:SourceIdentity", identity.clone());
            may_also(caller, &role, &trust, "sts:SetSourceIdentity", &ctx)?;
        }
        for arn in &asked.policies.arns {
            self.policy(arn.split(':').nth(4).unwrap_or_default(), arn)
                .await
                .map_err(|_| {
                    IamError::new(
                        "InvalidParameterValue",
                        format!("The policy {arn} does not exist or is not attachable."),
                    )
                })?;
        }
        let (id, key) = self
            .mint(&role, &account, session, duration, (None, &carried, &asked.policies))
            .await?;
        Ok((id, key, role))
    }

    /// A stored temporary key acting as `role` for `duration` seconds.
    async fn mint(
        &self,
        role: &Role,
        account: &str,
        session: &str,
        duration: i64,
        (task, carried, policies): (Option<&str>, &chaining::Carried, &SessionPolicies),
    ) -> Result<(String, StoredKey), IamError> {
        let now = self.now();
        let id = iam_id("ASIA");
        let key = StoredKey {
            secret_access_key: secret(),
            account_id: account.to_string(),
            session_token: Some(format!("{}{}", random_hex(32), random_hex(32))),
            user: None,
            status: active(),
            created: now,
            role: Some(RoleSession {
                role: role.name.clone(),
                session: session.to_string(),
                expires: now + duration as f64,
                task: task.map(String::from),
                tags: carried.tags.clone(),
                policies: policies.clone(),
                transitive: carried.transitive.clone(),
                source_identity: carried.source_identity.clone(),
            }),
        };
        if !self.records.create(&key_path(&id), &key).await? {
            return Err(IamError::new(
                "ServiceFailureException",
                "An access key id collided; try again.",
            ));
        }
        Ok((id, key))
    }

    /// The caller a task acts as with one of its roles (`role_arn`): a session named by the
    /// task's id, as the role's credentials inside the task are.
    pub async fn task_caller(&self, rec: &crate::TaskRecord, role_arn: &str) -> Result<Caller, String> {
        let role = self.task_role(&rec.account, role_arn, &rec.task.task_arn).await?;
        Ok(Caller::Role {
            account: rec.account.clone(),
            role,
            session: rec.id().to_string(),
            limits: None,
            transitive: vec![],
            source_identity: None,
        })
    }

    /// The role `role_arn` of `account` if its trust policy lets ECS tasks assume it (for
    /// a task of `source_arn`); ECS's InvalidParameterException wording otherwise.
    pub async fn task_role(&self, account: &str, role_arn: &str, source_arn: &str) -> Result<Role, String> {
        let refused = || {
            format!(
                "ECS was unable to assume the role '{role_arn}' that was provided for this task. Please verify that the role being passed has the proper trust relationship and permissions and that your IAM user has permissions to pass this role."
            )
        };
        let name = role_arn
            .strip_prefix(&format!("arn:aws:iam::{account}:role/"))
            .and_then(|rest| rest.rsplit('/').next())
            .ok_or_else(refused)?;
        let role = match self.role(account, name).await {
            Ok(r) if r.arn == role_arn => r,
            Ok(_) => return Err(refused()),
            Err(e) if e.shape == "NoSuchEntityException" || e.shape == "ValidationError" => return Err(refused()),
            Err(e) => return Err(e.message),
        };
        let trust = gantry_policy::Policy::parse(&role.trust).map_err(|_| refused())?;
        let mut ctx = gantry_policy::Context::new();
        ctx.set("aws:SourceAccount", account).set("aws:SourceArn", source_arn);
        let req = gantry_policy::Request {
            action: "sts:AssumeRole",
            resource: &role.arn,
            principal: Some(ECS_TASKS),
            context: &ctx,
        };
        match gantry_policy::evaluate(&[&trust], &req) {
            gantry_policy::Decision::Allow => {
                let mut role = role;
                role.managed.documents = self.documents(&role.managed.attached).await.map_err(|e| e.message)?;
                Ok(role)
            }
            _ => Err(refused()),
        }
    }

    /// Temporary credentials of a task's role, as ECS vends them to the task: session named
    /// by the task id, lasting `TASK_SESSION_SECONDS`, removed once the task stops.
    pub async fn task_session(
        &self,
        account: &str,
        role_arn: &str,
        task_arn: &str,
    ) -> Result<(String, StoredKey), String> {
        let role = self.task_role(account, role_arn, task_arn).await?;
        let session = task_arn.rsplit('/').next().unwrap_or(task_arn);
        self.mint(
            &role,
            account,
            session,
            TASK_SESSION_SECONDS,
            (
                Some(task_arn),
                &chaining::Carried::default(),
                &SessionPolicies::default(),
            ),
        )
        .await
        .map_err(|e| e.message)
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
        tags::check_tags(&tags)?;
        if tags.len() > tags::MAX_TAGS {
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
            managed: Attached::default(),
            groups: vec![],
            group_documents: vec![],
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
                && k.role.is_none()
                && k.user.as_deref().map(str::to_lowercase) == user.map(str::to_lowercase);
            if mine {
                out.push((kv.key.trim_start_matches("/iam/keys/").to_string(), k));
            }
        }
        Ok(out)
    }

    pub async fn delete_user(&self, account: &str, name: &str) -> Result<(), IamError> {
        let u = self.user(account, name).await?;
        no_policies(&u.policies, &u.managed)?;
        if !u.groups.is_empty() {
            return Err(IamError::new(
                "DeleteConflictException",
                "Cannot delete entity, must remove user from all groups first.",
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
            role: None,
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
            check_identity_policy(d)?;
        }
        let key = Self::user_key(account, user);
        self.user(account, user).await?;
        self.records
            .update(&key, |cur: Option<User>| {
                let mut u = cur.ok_or_else(|| IamError::no_user(user))?;
                set_inline(&mut u.policies, "user", name, doc)?;
                Ok((Some(u), ()))
            })
            .await
    }
}

/// Sets (Some) or deletes (None) the inline policy `name` of a user, role or group (`kind`).
fn set_inline(
    policies: &mut BTreeMap<String, String>,
    kind: &str,
    name: &str,
    doc: Option<&str>,
) -> Result<(), IamError> {
    match doc {
        Some(d) => {
            policies.insert(name.to_string(), d.to_string());
            Ok(())
        }
        None => policies.remove(name).map(drop).ok_or_else(|| {
            IamError::new(
                "NoSuchEntityException",
                format!("The {kind} policy with name {name} cannot be found."),
            )
        }),
    }
}

/// A user or role may go only without policies, inline or attached (IAM's DeleteConflict).
fn no_policies(inline: &BTreeMap<String, String>, managed: &Attached) -> Result<(), IamError> {
    let why = if !inline.is_empty() {
        "Cannot delete entity, must delete policies first."
    } else if !managed.attached.is_empty() {
        "Cannot delete entity, must detach all policies first."
    } else {
        return Ok(());
    };
    Err(IamError::new("DeleteConflictException", why))
}

/// What CreateRole asks for.
pub struct NewRole {
    pub name: String,
    pub path: Option<String>,
    pub trust: String,
    pub description: Option<String>,
    pub max_session: Option<i64>,
    pub tags: Vec<Tag>,
}

/// An identity policy as IAM accepts it: within the size quota, parsed, every statement
/// naming resources.
fn check_identity_policy(doc: &str) -> Result<(), IamError> {
    if doc.len() > MAX_INLINE_BYTES {
        return Err(IamError::new(
            "LimitExceededException",
            format!("Cannot exceed quota for PolicySize: {MAX_INLINE_BYTES}"),
        ));
    }
    let p = gantry_policy::Policy::parse(doc).map_err(|e| IamError::new("MalformedPolicyDocumentException", e.0))?;
    if !p.every_statement_has_resource() {
        return Err(IamError::new(
            "MalformedPolicyDocumentException",
            "Policy statement must contain resources.",
        ));
    }
    Ok(())
}

/// A trust policy: parsed, every statement naming a principal.
fn check_trust(doc: &str) -> Result<(), IamError> {
    let p = gantry_policy::Policy::parse(doc).map_err(|e| IamError::new("MalformedPolicyDocumentException", e.0))?;
    if !p.every_statement_has_principal() {
        return Err(IamError::new(
            "MalformedPolicyDocumentException",
            "AssumeRolepolicy contained an invalid principal element.",
        ));
    }
    Ok(())
}

/// AssumeRole's session policies: an identity policy of at most 2,048 characters with the
/// ARNs, and at most ten ARNs.
fn check_session_policies(p: &SessionPolicies) -> Result<(), IamError> {
    if p.arns.len() > MAX_SESSION_POLICY_ARNS {
        return Err(IamError::new("ValidationError", format!(
            "1 validation error detected: Value at 'policyArns' failed to satisfy constraint: Member must have length less than or equal to {MAX_SESSION_POLICY_ARNS}"
        )));
    }
    let chars = p.inline.as_ref().map_or(0, |d| d.chars().count()) + p.arns.iter().map(String::len).sum::<usize>();
    if chars > MAX_SESSION_POLICY_CHARS {
        return Err(IamError::new(
            "PackedPolicyTooLargeException",
            format!("The session policies' plaintext is {chars} characters; AssumeRole accepts at most {MAX_SESSION_POLICY_CHARS}."),
        ));
    }
    if let Some(doc) = &p.inline {
        check_identity_policy(doc)?;
    }
    Ok(())
}

fn check_session_name(s: &str) -> Result<(), IamError> {
    let ok = (2..=64).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || "_=,.@-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(IamError::new(
            "ValidationError",
            format!("1 validation error detected: Value '{s}' at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*"),
        ))
    }
}

/// Session tags need sts:TagSession from both the role's trust policy and the caller's own
/// policies, evaluated with the tags as `aws:RequestTag/<key>` and `aws:TagKeys`.
fn may_tag_session(
    caller: &Caller,
    role: &Role,
    trust: &gantry_policy::Policy,
    context: &gantry_policy::Context,
    session_tags: &[Tag],
) -> Result<(), IamError> {
    let mut ctx = context.clone();
    for t in session_tags {
        ctx.set(&format!("aws:RequestTag/{}", t.key), t.value.clone());
    }
    ctx.set_many("aws:TagKeys", session_tags.iter().map(|t| t.key.clone()).collect());
    may_also(caller, role, trust, "sts:TagSession", &ctx)
}

/// Whether both the role's trust policy and the caller's own policies allow `action` (an
/// AssumeRole extra: sts:TagSession, sts:SetSourceIdentity) with `ctx`.
fn may_also(
    caller: &Caller,
    role: &Role,
    trust: &gantry_policy::Policy,
    action: &str,
    ctx: &gantry_policy::Context,
) -> Result<(), IamError> {
    let principal = caller.principal_arn();
    let req = gantry_policy::Request {
        action,
        resource: &role.arn,
        principal: Some(&principal),
        context: ctx,
    };
    let trusted = gantry_policy::evaluate(&[trust], &req) == gantry_policy::Decision::Allow;
    if trusted && authorize(caller, action, &role.arn, ctx).is_ok() {
        return Ok(());
    }
    Err(IamError::new(
        "AccessDenied",
        format!(
            "User: {} is not authorized to perform: {action} on resource: {}",
            caller.arn(),
            role.arn
        ),
    ))
}

fn denied_assume(caller: &Caller, role_arn: &str) -> IamError {
    IamError::new(
        "AccessDenied",
        format!(
            "User: {} is not authorized to perform: sts:AssumeRole on resource: {role_arn}",
            caller.arn()
        ),
    )
}

/// How old a task's key must be before a missing task removes it: the task listing the
/// purge is given was read before it, and a key minted since may be for a newer task.
const TASK_KEY_GRACE_SECS: f64 = 60.0;

/// Removes temporary keys past their expiry, and task role keys whose task is not among
/// `live_tasks` (ARNs of tasks not STOPPED, when known): the leader's housekeeping. Until
/// then the front refuses expired keys itself.
pub async fn purge_expired_keys(
    store: Arc<dyn Store>,
    now_ms: i64,
    live_tasks: Option<&std::collections::HashSet<String>>,
) -> Result<usize, IamError> {
    let (kvs, _) = store.list("/iam/keys/").await.map_err(RecordError::Store)?;
    let now = now_ms as f64 / 1000.0;
    let mut n = 0;
    for kv in kvs {
        let Ok(k) = serde_json::from_slice::<StoredKey>(&kv.value) else {
            continue;
        };
        let task_gone = |r: &RoleSession| {
            let live = |t: &String| live_tasks.is_none_or(|l| l.contains(t));
            r.task.as_ref().is_some_and(|t| !live(t)) && k.created + TASK_KEY_GRACE_SECS < now
        };
        if k.role.as_ref().is_some_and(|r| r.expires <= now || task_gone(r)) {
            let _ = store.delete(&kv.key, Some(kv.mod_revision)).await;
            n += 1;
        }
    }
    Ok(n)
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

/// The global condition keys that describe the caller (aws:PrincipalArn, aws:userid, ...).
pub fn principal_context(caller: &Caller) -> gantry_policy::Context {
    let mut ctx = gantry_policy::Context::new();
    ctx.set("aws:PrincipalArn", caller.arn())
        .set("aws:PrincipalAccount", caller.account())
        .set("aws:userid", caller.id());
    match caller {
        Caller::User { user, .. } => {
            ctx.set("aws:username", user.name.clone())
                .set("aws:PrincipalType", "User");
            principal_tags(&mut ctx, &user.tags);
        }
        Caller::Role {
            role, source_identity, ..
        } => {
            ctx.set("aws:PrincipalType", "AssumedRole");
            principal_tags(&mut ctx, &role.tags);
            if let Some(s) = source_identity {
                ctx.set("aws:SourceIdentity", s.clone());
            }
        }
        Caller::Root { .. } => {
            ctx.set("aws:PrincipalType", "Account");
        }
    }
    ctx
}

/// `aws:PrincipalTag/<key>` for each of the principal's tags (condition keys compare their
/// names without regard to case).
fn principal_tags(ctx: &mut gantry_policy::Context, tags: &[Tag]) {
    for t in tags {
        ctx.set(&format!("aws:PrincipalTag/{}", t.key), t.value.clone());
    }
}

/// Whether `caller` may perform `action` on `resource`: root may do everything; a user what
/// its inline policies allow. Returns the denial message in IAM's words otherwise.
pub fn authorize(
    caller: &Caller,
    action: &str,
    resource: &str,
    context: &gantry_policy::Context,
) -> Result<(), String> {
    authorize_with(caller, (action, resource), context, None)
}

/// The decision of a set of identity (or session) policy documents, parsed once each.
fn evaluate_documents<'a>(
    docs: impl IntoIterator<Item = &'a str>,
    req: &gantry_policy::Request,
) -> gantry_policy::Decision {
    let policies: Vec<Arc<gantry_policy::Policy>> = docs.into_iter().filter_map(parsed).collect();
    let refs: Vec<&gantry_policy::Policy> = policies.iter().map(|p| p.as_ref()).collect();
    gantry_policy::evaluate(&refs, req)
}

/// `authorize` where the resource has a resource-based policy (a secret's): within one
/// account either kind of policy may allow, and an explicit deny in either refuses, the
/// root's requests included. The resource policy's principals are matched against the
/// caller's identity (a session's role).
pub fn authorize_with(
    caller: &Caller,
    (action, resource): (&str, &str),
    context: &gantry_policy::Context,
    resource_policy: Option<&str>,
) -> Result<(), String> {
    use gantry_policy::Decision;
    let who = caller.arn();
    let req = gantry_policy::Request {
        action,
        resource,
        principal: Some(&who),
        context,
    };
    let identity = match caller.policies() {
        None => Decision::Allow,
        Some(docs) => evaluate_documents(docs, &req),
    };
    let principal = caller.principal_arn();
    let on_resource = match resource_policy.and_then(parsed) {
        None => Decision::ImplicitDeny,
        Some(p) => {
            let req = gantry_policy::Request {
                action,
                resource,
                principal: Some(&principal),
                context,
            };
            gantry_policy::evaluate_resource_policy(&p, &req)
        }
    };
    // Session policies bound a session's grants, from its role's and from resource
    // policies alike (Gantry's resource policies name roles, never sessions).
    let session = match caller {
        Caller::Role { limits: Some(docs), .. } => evaluate_documents(docs.iter().map(String::as_str), &req),
        _ => Decision::Allow,
    };
    let why = match (identity, on_resource, session) {
        (Decision::ExplicitDeny, _, _) => "with an explicit deny in an identity-based policy".to_string(),
        (_, Decision::ExplicitDeny, _) => "with an explicit deny in a resource-based policy".to_string(),
        (_, _, Decision::ExplicitDeny) => "with an explicit deny in a session policy".to_string(),
        (Decision::Allow, _, Decision::Allow) | (_, Decision::Allow, Decision::Allow) => return Ok(()),
        (Decision::Allow, _, _) | (_, Decision::Allow, _) => {
            format!("because no session policy allows the {action} action")
        }
        _ => format!("because no identity-based policy allows the {action} action"),
    };
    Err(format!(
        "User: {who} is not authorized to perform: {action} on resource: {resource} {why}"
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
                managed: Attached::default(),
                groups: vec![],
                group_documents: vec![],
            },
        }
    }

    /// A session of a role allowed `ecs:*` and secret reads, bounded by `limits`.
    fn session(limits: Option<Vec<&str>>) -> Caller {
        let allow = r#"{"Statement": {"Effect": "Allow", "Action": ["ecs:*", "secretsmanager:GetSecretValue"], "Resource": "*"}}"#;
        Caller::Role {
            account: "123456789012".into(),
            role: Role {
                name: "app".into(),
                path: "/".into(),
                id: "AROAEXAMPLE".into(),
                arn: "arn:aws:iam::123456789012:role/app".into(),
                created: 0.0,
                trust: "{}".into(),
                description: None,
                max_session: 3600,
                tags: vec![],
                policies: [("p".to_string(), allow.to_string())].into(),
                managed: Attached::default(),
            },
            session: "s".into(),
            limits: limits.map(|l| l.into_iter().map(String::from).collect()),
            transitive: vec![],
            source_identity: None,
        }
    }

    #[test]
    fn session_policies_bound_the_roles_grants_and_resource_policies_alike() {
        let ctx = gantry_policy::Context::new();
        assert!(authorize(&session(None), "ecs:RunTask", "*", &ctx).is_ok());
        let reads = r#"{"Statement": [{"Effect": "Allow", "Action": ["ecs:Describe*", "s3:*"], "Resource": "*"}, {"Effect": "Deny", "Action": "ecs:DescribeServices", "Resource": "*"}]}"#;
        let bounded = session(Some(vec![reads]));
        assert!(authorize(&bounded, "ecs:DescribeTasks", "*", &ctx).is_ok());
        let e = authorize(&bounded, "ecs:RunTask", "*", &ctx).unwrap_err();
        assert!(
            e.ends_with("because no session policy allows the ecs:RunTask action"),
            "{e}"
        );
        let e = authorize(&bounded, "ecs:DescribeServices", "*", &ctx).unwrap_err();
        assert!(e.ends_with("with an explicit deny in a session policy"), "{e}");
        // The session policy grants nothing the role does not.
        let e = authorize(&bounded, "s3:GetObject", "*", &ctx).unwrap_err();
        assert!(
            e.ends_with("because no identity-based policy allows the s3:GetObject action"),
            "{e}"
        );
        // A resource policy's grant to the role is bounded too; with an empty session
        // policy set (Some(vec![])) nothing is allowed.
        let grant = r#"{"Statement": {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:role/app"}, "Action": "secretsmanager:GetSecretValue", "Resource": "*"}}"#;
        let secret = (
            "secretsmanager:GetSecretValue",
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:x",
        );
        assert!(authorize_with(&session(None), secret, &ctx, Some(grant)).is_ok());
        assert!(authorize_with(&bounded, secret, &ctx, Some(grant)).is_err());
        assert!(authorize_with(&session(Some(vec![])), ("ecs:RunTask", "*"), &ctx, None).is_err());
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

    struct Fixed(std::sync::atomic::AtomicI64);

    impl Clock for Fixed {
        fn now_ms(&self) -> i64 {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    #[tokio::test]
    async fn roles_are_assumed_as_trust_and_identity_policies_allow_and_sessions_expire() {
        let store: Arc<dyn Store> = Arc::new(gantry_store::SqliteStore::in_memory().unwrap());
        let clock = Arc::new(Fixed(std::sync::atomic::AtomicI64::new(1_800_000_000_000)));
        let iam = Iam::new(store.clone(), clock.clone());
        let account = "123456789012";
        let trust =
            r#"{"Statement": {"Effect": "Allow", "Principal": {"AWS": "123456789012"}, "Action": "sts:AssumeRole"}}"#;
        let req = |name: &str, trust: &str| NewRole {
            name: name.into(),
            path: None,
            trust: trust.into(),
            description: None,
            max_session: None,
            tags: vec![],
        };
        let role = iam.create_role(account, req("app", trust)).await.unwrap();
        let ctx = gantry_policy::Context::new();
        let root = Caller::Root {
            account: account.into(),
        };
        let (id, key, _) = iam
            .assume_role(
                &root,
                &role.arn,
                "s1",
                Some(900),
                &ctx,
                &chaining::SessionAsked::default(),
            )
            .await
            .unwrap();
        assert!(id.starts_with("ASIA") && key.session_token.is_some());
        match iam.caller(&key).await.unwrap() {
            c @ Caller::Role { .. } => assert_eq!(c.arn(), "arn:aws:sts::123456789012:assumed-role/app/s1"),
            other => panic!("{other:?}"),
        }
        // A user needs its own Allow as well as the trust.
        let ann = user(&[]);
        let e = iam
            .assume_role(&ann, &role.arn, "s2", None, &ctx, &chaining::SessionAsked::default())
            .await
            .unwrap_err();
        assert_eq!(e.shape, "AccessDenied");
        // Longer than the role allows, or too short.
        let none = chaining::SessionAsked::default();
        for secs in [7200, 60] {
            let e = iam.assume_role(&root, &role.arn, "s3", Some(secs), &ctx, &none);
            assert_eq!(e.await.unwrap_err().shape, "ValidationError");
        }
        // A trust policy without principals is refused at creation.
        let no_principal = r#"{"Statement": {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}}"#;
        let e = iam.create_role(account, req("bad", no_principal)).await.unwrap_err();
        assert_eq!(e.shape, "MalformedPolicyDocumentException");
        // Sessions go once expired.
        assert_eq!(
            purge_expired_keys(store.clone(), 1_800_000_000_000, None)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            purge_expired_keys(store.clone(), 1_800_000_901_000, None)
                .await
                .unwrap(),
            1
        );
        assert!(store.get(&key_path(&id)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn session_tags_need_tag_session_and_become_principal_tags() {
        let store: Arc<dyn Store> = Arc::new(gantry_store::SqliteStore::in_memory().unwrap());
        let clock = Arc::new(Fixed(std::sync::atomic::AtomicI64::new(1_800_000_000_000)));
        let iam = Iam::new(store, clock);
        let account = "123456789012";
        let role = |name: &str, actions: &str| NewRole {
            name: name.into(),
            path: None,
            trust: format!(
                r#"{{"Statement": {{"Effect": "Allow", "Principal": {{"AWS": "{account}"}}, "Action": {actions}}}}}"#
            ),
            description: None,
            max_session: None,
            tags: vec![
                Tag {
                    key: "team".into(),
                    value: "web".into(),
                },
                Tag {
                    key: "env".into(),
                    value: "prod".into(),
                },
            ],
        };
        let root = Caller::Root {
            account: account.into(),
        };
        let ctx = gantry_policy::Context::new();
        let with_tag = |k: &str, v: &str| chaining::SessionAsked {
            tags: vec![Tag {
                key: k.into(),
                value: v.into(),
            }],
            ..Default::default()
        };
        // Without sts:TagSession in the trust policy, tags are refused.
        let plain = iam
            .create_role(account, role("plain", r#""sts:AssumeRole""#))
            .await
            .unwrap();
        let e = iam
            .assume_role(
                &root,
                &plain.arn,
                "tagged-session",
                None,
                &ctx,
                &with_tag("team", "api"),
            )
            .await
            .unwrap_err();
        assert!(e.message.contains("sts:TagSession"), "{}", e.message);
        // With it, a session tag overrides the role's tag of the same key.
        let tagged = iam
            .create_role(account, role("tagged", r#"["sts:AssumeRole", "sts:TagSession"]"#))
            .await
            .unwrap();
        let (_, key, _) = iam
            .assume_role(
                &root,
                &tagged.arn,
                "tagged-session",
                None,
                &ctx,
                &with_tag("team", "api"),
            )
            .await
            .unwrap();
        let who = iam.caller(&key).await.unwrap();
        let p = principal_context(&who);
        assert_eq!(p.get("aws:PrincipalTag/team"), Some(&["api".to_string()][..]));
        assert_eq!(p.get("aws:principaltag/ENV"), Some(&["prod".to_string()][..]));
        // Malformed session tags are refused as IAM refuses them.
        let e = iam
            .assume_role(&root, &tagged.arn, "tagged-session", None, &ctx, &with_tag("a*", "x"))
            .await
            .unwrap_err();
        assert_eq!(e.shape, "InvalidInputException");
    }

    #[tokio::test]
    async fn task_sessions_need_ecs_tasks_in_the_trust_and_die_with_the_task() {
        let store: Arc<dyn Store> = Arc::new(gantry_store::SqliteStore::in_memory().unwrap());
        let clock = Arc::new(Fixed(std::sync::atomic::AtomicI64::new(1_800_000_000_000)));
        let iam = Iam::new(store.clone(), clock);
        let account = "123456789012";
        let req = |name: &str, trust: &str| NewRole {
            name: name.into(),
            path: None,
            trust: trust.into(),
            description: None,
            max_session: None,
            tags: vec![],
        };
        let trust_for = |principal: &str| {
            format!(
                r#"{{"Statement": {{"Effect": "Allow", "Principal": {{"Service": "{principal}"}}, "Action": "sts:AssumeRole"}}}}"#
            )
        };
        let app = iam
            .create_role(account, req("app", &trust_for(ECS_TASKS)))
            .await
            .unwrap();
        let ec2 = iam
            .create_role(account, req("ec2", &trust_for("ec2.amazonaws.com")))
            .await
            .unwrap();
        let task = "arn:aws:ecs:us-east-1:123456789012:task/c/0123456789abcdef0123456789abcdef";
        let (id, key) = iam.task_session(account, &app.arn, task).await.unwrap();
        let session = key.role.as_ref().unwrap();
        assert_eq!(session.session, "0123456789abcdef0123456789abcdef");
        assert_eq!(session.task.as_deref(), Some(task));
        assert_eq!(session.expires, 1_800_000_000.0 + TASK_SESSION_SECONDS as f64);
        // A role ECS may not assume, one that does not exist, another account's: ECS's words.
        for arn in [
            ec2.arn.clone(),
            format!("arn:aws:iam::{account}:role/missing"),
            "arn:aws:iam::999999999999:role/app".to_string(),
            "not-an-arn".to_string(),
        ] {
            let e = iam.task_session(account, &arn, task).await.unwrap_err();
            assert!(
                e.starts_with(&format!("ECS was unable to assume the role '{arn}'")),
                "{e}"
            );
        }
        // The task still runs: the key stays. Stopped (not live) but just minted: it stays
        // (the listing may predate it). Stopped a minute on: it goes.
        let live: std::collections::HashSet<String> = [task.to_string()].into();
        let none = std::collections::HashSet::new();
        let later = 1_800_000_000_000 + 61_000;
        assert_eq!(purge_expired_keys(store.clone(), later, Some(&live)).await.unwrap(), 0);
        assert_eq!(
            purge_expired_keys(store.clone(), 1_800_000_001_000, Some(&none))
                .await
                .unwrap(),
            0
        );
        assert_eq!(purge_expired_keys(store.clone(), later, Some(&none)).await.unwrap(), 1);
        assert!(store.get(&key_path(&id)).await.unwrap().is_none());
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
