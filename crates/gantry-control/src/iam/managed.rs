//! Managed policies: customer policies with up to five versions (one the default), stored
//! under `/iam/policies/<account>/<lowercased name>`, and a few of AWS's own
//! (`arn:aws:iam::aws:policy/...`), built in. Users and roles hold the ARNs attached to them;
//! a request's caller is read with the default versions' documents.

use super::groups::Group;
use super::{check_identity_policy, check_name, check_path, iam_id, Iam, IamError, Role, Tag, User};
use serde::{Deserialize, Serialize};

const POLICIES: &str = "/iam/policies/";
/// Versions a managed policy may keep, and policies a user or role may have attached.
pub const MAX_VERSIONS: usize = 5;
pub const MAX_ATTACHED: usize = 10;

/// AWS managed policies Gantry knows, by name: what ECS users attach most.
const AWS_POLICIES: &[(&str, &str, &str)] = &[
    (
        "AdministratorAccess",
        "Provides full access to AWS services and resources.",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
    ),
    (
        "ReadOnlyAccess",
        "Provides read-only access to AWS services and resources.",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["*:Describe*","*:Get*","*:List*","*:BatchGet*","*:Filter*"],"Resource":"*"}]}"#,
    ),
    (
        "AmazonECSTaskExecutionRolePolicy",
        "Provides access to other AWS service resources that are required to run Amazon ECS tasks",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["ecr:GetAuthorizationToken","ecr:BatchCheckLayerAvailability","ecr:GetDownloadUrlForLayer","ecr:BatchGetImage","logs:CreateLogStream","logs:PutLogEvents"],"Resource":"*"}]}"#,
    ),
    (
        "AmazonECS_FullAccess",
        "Provides administrative access to Amazon ECS resources.",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["ecs:*","elasticloadbalancing:*","application-autoscaling:*","cloudwatch:*","logs:*","servicediscovery:*","ec2:Describe*"],"Resource":"*"}]}"#,
    ),
    (
        "SecretsManagerReadWrite",
        "Provides read/write access to AWS Secrets Manager.",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"secretsmanager:*","Resource":"*"}]}"#,
    ),
    (
        "AmazonSSMReadOnlyAccess",
        "Provides read only access to Amazon SSM.",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["ssm:Describe*","ssm:Get*","ssm:List*"],"Resource":"*"}]}"#,
    ),
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyVersion {
    pub id: String,
    pub document: String,
    pub created: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManagedPolicy {
    pub name: String,
    pub path: String,
    pub id: String,
    pub arn: String,
    pub created: f64,
    pub updated: f64,
    #[serde(default)]
    pub description: Option<String>,
    pub default_version: String,
    pub versions: Vec<PolicyVersion>,
    /// The next version's number (v1, v2, ...; never reused).
    pub next_version: u32,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

impl ManagedPolicy {
    pub fn default_document(&self) -> &str {
        self.versions
            .iter()
            .find(|v| v.id == self.default_version)
            .map(|v| v.document.as_str())
            .unwrap_or_default()
    }
    pub fn is_aws(&self) -> bool {
        self.arn.starts_with("arn:aws:iam::aws:")
    }
}

/// ListPolicies' Scope.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PolicyScope {
    All,
    Aws,
    Local,
}

/// A stable id for one of AWS's policies: ANPA and 17 characters of a digest of its name.
fn aws_policy_id(name: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    format!("ANPA{}", &hex[..17])
}

fn aws_policy(name: &str, description: &str, document: &str) -> ManagedPolicy {
    ManagedPolicy {
        name: name.into(),
        path: "/".into(),
        id: aws_policy_id(name),
        arn: format!("arn:aws:iam::aws:policy/{name}"),
        created: 1_420_070_400.0,
        updated: 1_420_070_400.0,
        description: Some(description.into()),
        default_version: "v1".into(),
        versions: vec![PolicyVersion {
            id: "v1".into(),
            document: document.into(),
            created: 1_420_070_400.0,
        }],
        next_version: 2,
        tags: vec![],
    }
}

fn no_policy(arn: &str) -> IamError {
    IamError::new(
        "NoSuchEntityException",
        format!("Policy {arn} does not exist or is not attachable."),
    )
}

/// What an attachment changes: a user's, a role's or a group's list.
pub enum Principal<'a> {
    User(&'a str),
    Role(&'a str),
    Group(&'a str),
}

impl Iam {
    fn policy_key(account: &str, name: &str) -> String {
        format!("{POLICIES}{account}/{}", name.to_lowercase())
    }

    /// The managed policy `arn`: one of AWS's, or one of `account`'s.
    pub async fn policy(&self, account: &str, arn: &str) -> Result<ManagedPolicy, IamError> {
        if let Some(name) = arn.strip_prefix("arn:aws:iam::aws:policy/") {
            let name = name.rsplit('/').next().unwrap_or(name);
            return AWS_POLICIES
                .iter()
                .find(|(n, _, _)| *n == name)
                .map(|(n, d, doc)| aws_policy(n, d, doc))
                .ok_or_else(|| no_policy(arn));
        }
        let name = arn
            .strip_prefix(&format!("arn:aws:iam::{account}:policy/"))
            .and_then(|rest| rest.rsplit('/').next())
            .ok_or_else(|| no_policy(arn))?;
        match self
            .records
            .load::<ManagedPolicy>(&Self::policy_key(account, name))
            .await?
        {
            Some((p, _)) if p.arn == arn => Ok(p),
            _ => Err(no_policy(arn)),
        }
    }

    /// The default versions' documents of these attached policies (one gone since is skipped:
    /// it allows nothing).
    pub(super) async fn documents(&self, attached: &[String]) -> Result<Vec<String>, IamError> {
        let mut docs = Vec::with_capacity(attached.len());
        for arn in attached {
            let account = arn.split(':').nth(4).unwrap_or_default();
            match self.policy(account, arn).await {
                Ok(p) => docs.push(p.default_document().to_string()),
                Err(e) if e.shape == "NoSuchEntityException" => {}
                Err(e) => return Err(e),
            }
        }
        Ok(docs)
    }

    pub async fn create_policy(
        &self,
        account: &str,
        name: &str,
        path: Option<&str>,
        document: &str,
        description: Option<&str>,
        tags: Vec<Tag>,
    ) -> Result<ManagedPolicy, IamError> {
        check_name("policyName", name, 128)?;
        let path = path.unwrap_or("/");
        check_path(path)?;
        check_identity_policy(document)?;
        let now = self.now();
        let p = ManagedPolicy {
            name: name.into(),
            path: path.into(),
            id: iam_id("ANPA"),
            arn: format!("arn:aws:iam::{account}:policy{path}{name}"),
            created: now,
            updated: now,
            description: description.map(String::from),
            default_version: "v1".into(),
            versions: vec![PolicyVersion {
                id: "v1".into(),
                document: document.into(),
                created: now,
            }],
            next_version: 2,
            tags,
        };
        if !self.records.create(&Self::policy_key(account, name), &p).await? {
            return Err(IamError::new(
                "EntityAlreadyExistsException",
                format!("A policy called {name} already exists. Duplicate names are not allowed."),
            ));
        }
        Ok(p)
    }

    /// AWS's policies and the account's, as ListPolicies' Scope says.
    pub async fn policies(&self, account: &str, scope: PolicyScope) -> Result<Vec<ManagedPolicy>, IamError> {
        let mut out = vec![];
        if scope != PolicyScope::Local {
            out.extend(AWS_POLICIES.iter().map(|(n, d, doc)| aws_policy(n, d, doc)));
        }
        if scope != PolicyScope::Aws {
            out.extend(
                self.records
                    .list::<ManagedPolicy>(&format!("{POLICIES}{account}/"))
                    .await?,
            );
        }
        Ok(out)
    }

    /// How many users, roles and groups have `arn` attached.
    pub async fn attachment_count(&self, account: &str, arn: &str) -> Result<usize, IamError> {
        let users = self.users(account, None).await?;
        let roles = self.roles(account, None).await?;
        let n = users
            .iter()
            .filter(|u| u.managed.attached.iter().any(|a| a == arn))
            .count()
            + roles
                .iter()
                .filter(|r| r.managed.attached.iter().any(|a| a == arn))
                .count()
            + self
                .groups(account, None)
                .await?
                .iter()
                .filter(|g| g.managed.attached.iter().any(|a| a == arn))
                .count();
        Ok(n)
    }

    /// Changes one of the account's own policies (AWS's cannot be changed).
    async fn change_policy<R>(
        &self,
        account: &str,
        arn: &str,
        mut f: impl FnMut(&mut ManagedPolicy) -> Result<R, IamError>,
    ) -> Result<R, IamError> {
        let p = self.policy(account, arn).await?;
        if p.is_aws() {
            return Err(IamError::new(
                "InvalidInputException",
                format!("Policy {arn} is an AWS managed policy: it cannot be changed."),
            ));
        }
        self.records
            .update(&Self::policy_key(account, &p.name), |cur: Option<ManagedPolicy>| {
                let mut p = cur.ok_or_else(|| no_policy(arn))?;
                let out = f(&mut p)?;
                Ok((Some(p), out))
            })
            .await
    }

    pub async fn delete_policy(&self, account: &str, arn: &str) -> Result<(), IamError> {
        let p = self.policy(account, arn).await?;
        if self.attachment_count(account, arn).await? > 0 {
            return Err(IamError::new(
                "DeleteConflictException",
                "Cannot delete a policy attached to entities.",
            ));
        }
        if p.versions.len() > 1 {
            return Err(IamError::new(
                "DeleteConflictException",
                "This policy has more than one version. Before you delete a policy, you must delete the policy's versions. The default version is deleted with the policy.",
            ));
        }
        self.change_policy(account, arn, |_| Ok(())).await?;
        self.records.delete(&Self::policy_key(account, &p.name)).await?;
        Ok(())
    }

    pub async fn create_policy_version(
        &self,
        account: &str,
        arn: &str,
        document: &str,
        set_default: bool,
    ) -> Result<PolicyVersion, IamError> {
        check_identity_policy(document)?;
        let now = self.now();
        self.change_policy(account, arn, |p| {
            if p.versions.len() >= MAX_VERSIONS {
                return Err(IamError::new(
                    "LimitExceededException",
                    format!("A managed policy can have up to {MAX_VERSIONS} versions. Before you create a new version, you must delete an existing version."),
                ));
            }
            let v = PolicyVersion {
                id: format!("v{}", p.next_version),
                document: document.into(),
                created: now,
            };
            p.next_version += 1;
            p.versions.push(v.clone());
            if set_default {
                p.default_version = v.id.clone();
            }
            p.updated = now;
            Ok(v)
        })
        .await
    }

    pub async fn delete_policy_version(&self, account: &str, arn: &str, version: &str) -> Result<(), IamError> {
        self.change_policy(account, arn, |p| {
            if p.default_version == version {
                return Err(IamError::new(
                    "DeleteConflictException",
                    "Cannot delete the default version of a policy.",
                ));
            }
            let before = p.versions.len();
            p.versions.retain(|v| v.id != version);
            if p.versions.len() == before {
                return Err(no_version(arn, version));
            }
            Ok(())
        })
        .await
    }

    pub async fn set_default_version(&self, account: &str, arn: &str, version: &str) -> Result<(), IamError> {
        let now = self.now();
        self.change_policy(account, arn, |p| {
            if !p.versions.iter().any(|v| v.id == version) {
                return Err(no_version(arn, version));
            }
            p.default_version = version.to_string();
            p.updated = now;
            Ok(())
        })
        .await
    }

    /// Attaches (or with `detach`, detaches) a managed policy to a user or role.
    pub async fn attach(&self, account: &str, who: Principal<'_>, arn: &str, detach: bool) -> Result<(), IamError> {
        if !detach {
            self.policy(account, arn).await?;
        }
        let change = |attached: &mut Vec<String>, name: &str, kind: &str| -> Result<(), IamError> {
            if detach {
                if !attached.iter().any(|a| a == arn) {
                    return Err(IamError::new(
                        "NoSuchEntityException",
                        format!("Policy {arn} was not found attached to {kind} {name}."),
                    ));
                }
                attached.retain(|a| a != arn);
            } else if !attached.iter().any(|a| a == arn) {
                if attached.len() >= MAX_ATTACHED {
                    return Err(IamError::new(
                        "LimitExceededException",
                        format!("Cannot exceed quota for PoliciesPer{kind}: {MAX_ATTACHED}"),
                    ));
                }
                attached.push(arn.to_string());
            }
            Ok(())
        };
        match who {
            Principal::User(name) => {
                self.user(account, name).await?;
                self.records
                    .update(&Self::user_key(account, name), |cur: Option<User>| {
                        let mut u = cur.ok_or_else(|| IamError::no_user(name))?;
                        change(&mut u.managed.attached, name, "User")?;
                        Ok((Some(u), ()))
                    })
                    .await
            }
            Principal::Role(name) => {
                self.role(account, name).await?;
                self.records
                    .update(&Self::role_key(account, name), |cur: Option<Role>| {
                        let mut r = cur.ok_or_else(|| IamError::no_role(name))?;
                        change(&mut r.managed.attached, name, "Role")?;
                        Ok((Some(r), ()))
                    })
                    .await
            }
            Principal::Group(name) => {
                let g = self.group(account, name).await?;
                self.records
                    .update(&Self::group_key(account, name), |cur: Option<Group>| {
                        let mut g = cur.ok_or_else(|| IamError::no_group(&g.name))?;
                        change(&mut g.managed.attached, name, "Group")?;
                        Ok((Some(g), ()))
                    })
                    .await
            }
        }
    }
}

fn no_version(arn: &str, version: &str) -> IamError {
    IamError::new(
        "NoSuchEntityException",
        format!("Policy {arn} version {version} does not exist or is not attachable."),
    )
}

#[cfg(test)]
mod tests {
    use super::super::{authorize, Caller, NewRole};
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn attached_policies_decide_with_their_default_version() {
        let store: Arc<dyn gantry_store::Store> = Arc::new(gantry_store::SqliteStore::in_memory().unwrap());
        let iam = Iam::new(store, Arc::new(crate::SystemClock));
        let account = "123456789012";
        iam.create_user(account, "ann", None, vec![]).await.unwrap();
        let read = r#"{"Statement": {"Effect": "Allow", "Action": "ecs:List*", "Resource": "*"}}"#;
        let write = r#"{"Statement": {"Effect": "Allow", "Action": "ecs:*", "Resource": "*"}}"#;
        let p = iam
            .create_policy(account, "ecs", None, read, None, vec![])
            .await
            .unwrap();
        assert_eq!(p.arn, "arn:aws:iam::123456789012:policy/ecs");
        iam.attach(account, Principal::User("ann"), &p.arn, false)
            .await
            .unwrap();
        let ctx = gantry_policy::Context::new();
        let caller = |iam: Iam| async move {
            let key = super::super::StoredKey {
                secret_access_key: String::new(),
                account_id: account.into(),
                session_token: None,
                user: Some("ann".into()),
                status: "Active".into(),
                created: 0.0,
                role: None,
            };
            iam.caller(&key).await.unwrap()
        };
        let ann: Caller = caller(iam.clone()).await;
        assert!(authorize(&ann, "ecs:ListTasks", "*", &ctx).is_ok());
        assert!(authorize(&ann, "ecs:RunTask", "*", &ctx).is_err());
        // A new default version changes what ann may do; the old one can then go.
        let v2 = iam.create_policy_version(account, &p.arn, write, true).await.unwrap();
        assert_eq!(v2.id, "v2");
        assert!(authorize(&caller(iam.clone()).await, "ecs:RunTask", "*", &ctx).is_ok());
        assert_eq!(
            iam.delete_policy_version(account, &p.arn, "v2")
                .await
                .unwrap_err()
                .shape,
            "DeleteConflictException"
        );
        iam.set_default_version(account, &p.arn, "v1").await.unwrap();
        assert!(authorize(&caller(iam.clone()).await, "ecs:RunTask", "*", &ctx).is_err());
        iam.delete_policy_version(account, &p.arn, "v2").await.unwrap();
        // Attached: cannot be deleted. AWS's own can be attached, not changed.
        assert_eq!(
            iam.delete_policy(account, &p.arn).await.unwrap_err().shape,
            "DeleteConflictException"
        );
        let admin = "arn:aws:iam::aws:policy/AdministratorAccess";
        iam.attach(account, Principal::User("ann"), admin, false).await.unwrap();
        assert!(authorize(&caller(iam.clone()).await, "iam:CreateUser", "*", &ctx).is_ok());
        assert_eq!(
            iam.create_policy_version(account, admin, write, true)
                .await
                .unwrap_err()
                .shape,
            "InvalidInputException"
        );
        iam.attach(account, Principal::User("ann"), admin, true).await.unwrap();
        iam.attach(account, Principal::User("ann"), &p.arn, true).await.unwrap();
        assert_eq!(
            iam.attach(account, Principal::User("ann"), &p.arn, true)
                .await
                .unwrap_err()
                .shape,
            "NoSuchEntityException"
        );
        iam.delete_policy(account, &p.arn).await.unwrap();
        assert_eq!(
            iam.policy(account, &p.arn).await.unwrap_err().shape,
            "NoSuchEntityException"
        );
        // Roles take them too; the execution role's resolution includes them.
        let trust = r#"{"Statement": {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}}"#;
        let new = NewRole {
            name: "exec".into(),
            path: None,
            trust: trust.into(),
            description: None,
            max_session: None,
            tags: vec![],
        };
        let role = iam.create_role(account, new).await.unwrap();
        let exec = "arn:aws:iam::aws:policy/AmazonECSTaskExecutionRolePolicy";
        iam.attach(account, Principal::Role("exec"), exec, false).await.unwrap();
        let resolved = iam
            .task_role(account, &role.arn, "arn:aws:ecs:us-east-1:1:cluster/c")
            .await
            .unwrap();
        assert_eq!(resolved.managed.documents.len(), 1);
    }
}
