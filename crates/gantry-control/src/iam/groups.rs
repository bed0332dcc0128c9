//! Groups: named sets of users with inline and attached policies of their own, which apply to
//! every member. A group lives at `/iam/groups/<account>/<lowercased name>`; a user record
//! holds the names of its groups, so authorising a request reads only the caller's own
//! groups (IAM allows a user ten).

use super::{check_identity_policy, check_name, check_path, iam_id, Attached, Iam, IamError, User};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const GROUPS: &str = "/iam/groups/";
/// Groups one user may be in.
pub const MAX_GROUPS_PER_USER: usize = 10;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Group {
    pub name: String,
    pub path: String,
    pub id: String,
    pub arn: String,
    pub created: f64,
    /// Inline policies by name (the documents as given).
    #[serde(default)]
    pub policies: BTreeMap<String, String>,
    #[serde(flatten)]
    pub managed: Attached,
}

fn same(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

impl Iam {
    pub(super) fn group_key(account: &str, name: &str) -> String {
        format!("{GROUPS}{account}/{}", name.to_lowercase())
    }

    pub async fn create_group(&self, account: &str, name: &str, path: Option<&str>) -> Result<Group, IamError> {
        check_name("groupName", name, 128)?;
        let path = path.unwrap_or("/");
        check_path(path)?;
        let group = Group {
            name: name.to_string(),
            path: path.to_string(),
            id: iam_id("AGPA"),
            arn: format!("arn:aws:iam::{account}:group{path}{name}"),
            created: self.now(),
            policies: BTreeMap::new(),
            managed: Attached::default(),
        };
        if !self.records.create(&Self::group_key(account, name), &group).await? {
            return Err(IamError::new(
                "EntityAlreadyExistsException",
                format!("Group with name {name} already exists."),
            ));
        }
        Ok(group)
    }

    pub async fn group(&self, account: &str, name: &str) -> Result<Group, IamError> {
        check_name("groupName", name, 128).map_err(|_| IamError::no_group(name))?;
        self.records
            .load::<Group>(&Self::group_key(account, name))
            .await?
            .map(|(g, _)| g)
            .ok_or_else(|| IamError::no_group(name))
    }

    pub async fn groups(&self, account: &str, path_prefix: Option<&str>) -> Result<Vec<Group>, IamError> {
        let mut all: Vec<Group> = self.records.list(&format!("{GROUPS}{account}/")).await?;
        all.retain(|g| g.path.starts_with(path_prefix.unwrap_or("/")));
        all.sort_by_key(|g| g.name.to_lowercase());
        Ok(all)
    }

    /// The users in group `name`.
    pub async fn group_members(&self, account: &str, name: &str) -> Result<Vec<User>, IamError> {
        let g = self.group(account, name).await?;
        let mut users = self.users(account, None).await?;
        users.retain(|u| u.groups.iter().any(|x| same(x, &g.name)));
        Ok(users)
    }

    /// Deletes an empty group without policies (IAM's DeleteConflict otherwise).
    pub async fn delete_group(&self, account: &str, name: &str) -> Result<(), IamError> {
        let g = self.group(account, name).await?;
        if !self.group_members(account, name).await?.is_empty() {
            return Err(IamError::new(
                "DeleteConflictException",
                "Cannot delete entity, must remove users from group first.",
            ));
        }
        super::no_policies(&g.policies, &g.managed)?;
        self.records.delete(&Self::group_key(account, name)).await?;
        Ok(())
    }

    /// AddUserToGroup (`add`) or RemoveUserFromGroup.
    pub async fn change_membership(&self, account: &str, group: &str, user: &str, add: bool) -> Result<(), IamError> {
        let g = self.group(account, group).await?;
        self.user(account, user).await?;
        self.records
            .update(&Self::user_key(account, user), |cur: Option<User>| {
                let mut u = cur.ok_or_else(|| IamError::no_user(user))?;
                let member = u.groups.iter().any(|x| same(x, &g.name));
                match (add, member) {
                    (true, false) if u.groups.len() >= MAX_GROUPS_PER_USER => {
                        return Err(IamError::new(
                            "LimitExceededException",
                            format!("Cannot exceed quota for GroupsPerUser: {MAX_GROUPS_PER_USER}"),
                        ))
                    }
                    (true, false) => u.groups.push(g.name.clone()),
                    (false, true) => u.groups.retain(|x| !same(x, &g.name)),
                    (false, false) => {
                        return Err(IamError::new(
                            "NoSuchEntityException",
                            format!("The user with name {user} cannot be found in group {}.", g.name),
                        ))
                    }
                    (true, true) => {}
                }
                Ok((Some(u), ()))
            })
            .await
    }

    /// Sets (Some) or deletes (None) an inline policy of a group.
    pub async fn put_group_policy(
        &self,
        account: &str,
        group: &str,
        name: &str,
        doc: Option<&str>,
    ) -> Result<(), IamError> {
        check_name("policyName", name, 128)?;
        if let Some(d) = doc {
            check_identity_policy(d)?;
        }
        self.group(account, group).await?;
        self.records
            .update(&Self::group_key(account, group), |cur: Option<Group>| {
                let mut g = cur.ok_or_else(|| IamError::no_group(group))?;
                super::set_inline(&mut g.policies, "group", name, doc)?;
                Ok((Some(g), ()))
            })
            .await
    }

    /// The policy documents `user`'s groups give it: their inline policies and the default
    /// versions of their attached ones. A group deleted meanwhile gives nothing.
    pub(super) async fn group_documents(&self, account: &str, user: &User) -> Result<Vec<String>, IamError> {
        let mut docs = Vec::new();
        for name in &user.groups {
            let Some((g, _)) = self.records.load::<Group>(&Self::group_key(account, name)).await? else {
                continue;
            };
            docs.extend(g.policies.into_values());
            docs.extend(self.documents(&g.managed.attached).await?);
        }
        Ok(docs)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{authorize, Caller};
    use super::*;
    use gantry_store::Store;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_groups_policies_apply_to_its_members_and_groups_go_only_when_empty() {
        let store: Arc<dyn Store> = Arc::new(gantry_store::SqliteStore::in_memory().unwrap());
        let iam = Iam::new(store, Arc::new(crate::SystemClock));
        let account = "123456789012";
        iam.create_user(account, "ann", None, vec![]).await.unwrap();
        iam.create_group(account, "Ops", None).await.unwrap();
        let e = iam.create_group(account, "ops", None).await.unwrap_err();
        assert_eq!(
            e.shape, "EntityAlreadyExistsException",
            "names are unique regardless of case"
        );
        let allow = r#"{"Statement": {"Effect": "Allow", "Action": "ecs:RunTask", "Resource": "*"}}"#;
        iam.put_group_policy(account, "Ops", "run", Some(allow)).await.unwrap();
        let ctx = gantry_policy::Context::new();
        let may_run = |c: &Caller| authorize(c, "ecs:RunTask", "*", &ctx).is_ok();
        let key = |user: &str| super::super::StoredKey {
            secret_access_key: String::new(),
            account_id: account.into(),
            session_token: None,
            user: Some(user.into()),
            status: "Active".into(),
            created: 0.0,
            role: None,
        };
        assert!(!may_run(&iam.caller(&key("ann")).await.unwrap()));
        iam.change_membership(account, "ops", "ann", true).await.unwrap();
        assert!(may_run(&iam.caller(&key("ann")).await.unwrap()));
        // Neither the group nor the user goes while the other holds it.
        assert_eq!(
            iam.delete_group(account, "Ops").await.unwrap_err().shape,
            "DeleteConflictException"
        );
        assert_eq!(
            iam.delete_user(account, "ann").await.unwrap_err().shape,
            "DeleteConflictException"
        );
        iam.change_membership(account, "Ops", "ann", false).await.unwrap();
        assert!(!may_run(&iam.caller(&key("ann")).await.unwrap()));
        let e = iam.change_membership(account, "Ops", "ann", false).await.unwrap_err();
        assert_eq!(e.shape, "NoSuchEntityException");
        assert_eq!(
            iam.delete_group(account, "Ops").await.unwrap_err().shape,
            "DeleteConflictException"
        );
        iam.put_group_policy(account, "Ops", "run", None).await.unwrap();
        iam.delete_group(account, "Ops").await.unwrap();
        assert_eq!(
            iam.group(account, "Ops").await.unwrap_err().shape,
            "NoSuchEntityException"
        );
    }
}
