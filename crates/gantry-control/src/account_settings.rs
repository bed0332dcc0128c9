//! ECS account settings: explicit settings per principal (a user, a role, or the root user,
//! whose settings are the account's defaults), resolved as ECS does: the principal's own
//! setting, else the root user's, else the built-in default.

use crate::{prefix, store_err, Control};
use gantry_store::StoreError;
use gantry_types::arn::Scope;
use gantry_types::EcsError;
use serde::{Deserialize, Serialize};

/// Every setting ECS knows, its built-in default, and the values it accepts.
pub const SETTINGS: &[(&str, &str, &[&str])] = &[
    ("serviceLongArnFormat", "enabled", &["enabled", "disabled"]),
    ("taskLongArnFormat", "enabled", &["enabled", "disabled"]),
    ("containerInstanceLongArnFormat", "enabled", &["enabled", "disabled"]),
    ("awsvpcTrunking", "disabled", &["enabled", "disabled"]),
    ("containerInsights", "disabled", &["enabled", "disabled", "enhanced"]),
    ("fargateFIPSMode", "disabled", &["enabled", "disabled"]),
    ("tagResourceAuthorization", "on", &["on", "off"]),
    ("fargateTaskRetirementWaitPeriod", "7", &["0", "7", "14"]),
    ("guardDutyActivate", "off", &["on", "off"]),
    ("defaultLogDriverMode", "non-blocking", &["blocking", "non-blocking"]),
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Setting {
    pub name: String,
    pub value: String,
    pub principal_arn: String,
    #[serde(rename = "type")]
    pub kind: String,
}

pub fn root_arn(scope: &Scope) -> String {
    format!("arn:aws:iam::{}:root", scope.account)
}

fn known(name: &str) -> Result<&'static (&'static str, &'static str, &'static [&'static str]), EcsError> {
    SETTINGS.iter().find(|(n, _, _)| *n == name).ok_or_else(|| {
        EcsError::invalid(format!(
            "Invalid account setting name {name}: valid names are {}.",
            SETTINGS.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
        ))
    })
}

/// The principal a request is about: the one named (same account: root, user or role), else
/// the caller (today always the account's root user).
fn principal(scope: &Scope, named: Option<&str>) -> Result<String, EcsError> {
    let Some(p) = named else {
        return Ok(root_arn(scope));
    };
    let ours = format!("arn:aws:iam::{}:", scope.account);
    let ok = p.strip_prefix(&ours).is_some_and(|rest| {
        rest == "root"
            || rest
                .strip_prefix("user/")
                .or(rest.strip_prefix("role/"))
                .is_some_and(|n| !n.is_empty())
    });
    if !ok {
        return Err(EcsError::invalid(format!(
            "principalArn {p} is not a root user, IAM user or IAM role ARN of account {}.",
            scope.account
        )));
    }
    Ok(p.to_string())
}

impl Control {
    fn setting_key(scope: &Scope, principal: &str, name: &str) -> String {
        format!(
            "{}account-settings/{}/{name}",
            prefix(scope),
            crate::encode_token(principal)
        )
    }

    async fn explicit_setting(&self, scope: &Scope, principal: &str, name: &str) -> Result<Option<Setting>, EcsError> {
        Ok(self
            .get_json::<Setting>(&Self::setting_key(scope, principal, name))
            .await?
            .map(|(s, _)| s))
    }

    /// PutAccountSetting (`default` false) and PutAccountSettingDefault (true: the root user's).
    pub async fn put_account_setting(
        &self,
        scope: &Scope,
        name: &str,
        value: &str,
        principal_arn: Option<&str>,
        default: bool,
    ) -> Result<Setting, EcsError> {
        let (_, _, values) = known(name)?;
        if !values.contains(&value) {
            return Err(EcsError::invalid(format!(
                "Invalid value {value} for account setting {name}: valid values are {}.",
                values.join(", ")
            )));
        }
        let principal = if default {
            root_arn(scope)
        } else {
            principal(scope, principal_arn)?
        };
        if name == "fargateTaskRetirementWaitPeriod" && principal != root_arn(scope) {
            return Err(EcsError::invalid(
                "fargateTaskRetirementWaitPeriod can only be set for the root user (use PutAccountSettingDefault).",
            ));
        }
        if name == "guardDutyActivate" {
            return Err(EcsError::invalid(
                "guardDutyActivate is read-only: it follows the account's GuardDuty Runtime Monitoring.",
            ));
        }
        let setting = Setting {
            name: name.into(),
            value: value.into(),
            principal_arn: principal.clone(),
            kind: "user".into(),
        };
        let key = Self::setting_key(scope, &principal, name);
        let data = serde_json::to_vec(&setting).expect("serialises");
        // Create-or-update, compare-and-swap, retried when another writer got there first.
        loop {
            let r = match self.store.get(&key).await.map_err(store_err)? {
                Some(kv) => self.store.update(&key, &data, kv.mod_revision).await,
                None => self.store.create(&key, &data).await,
            };
            match r {
                Ok(_) => return Ok(setting),
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. } | StoreError::NotFound { .. }) => {
                    continue
                }
                Err(e) => return Err(store_err(e)),
            }
        }
    }

    pub async fn delete_account_setting(
        &self,
        scope: &Scope,
        name: &str,
        principal_arn: Option<&str>,
    ) -> Result<Setting, EcsError> {
        known(name)?;
        let principal = principal(scope, principal_arn)?;
        let key = Self::setting_key(scope, &principal, name);
        let Some(kv) = self.store.get(&key).await.map_err(store_err)? else {
            return Err(EcsError::invalid(format!(
                "The account setting {name} is not set for {principal}."
            )));
        };
        let setting: Setting =
            serde_json::from_slice(&kv.value).map_err(|e| EcsError::Server(format!("corrupt record {key}: {e}")))?;
        match self.store.delete(&key, None).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(setting),
            Err(e) => Err(store_err(e)),
        }
    }

    /// The value in effect for a principal: its own, else the root user's, else the default.
    pub async fn effective_setting(&self, scope: &Scope, principal: &str, name: &str) -> Result<Setting, EcsError> {
        let (_, default, _) = known(name)?;
        let root = root_arn(scope);
        // The principal's own setting, else the account's: read at once (the same read for
        // the root).
        let (own, account) = tokio::join!(self.explicit_setting(scope, principal, name), async {
            match principal == root {
                true => Ok(None),
                false => self.explicit_setting(scope, &root, name).await,
            }
        });
        if let Some(s) = own? {
            return Ok(s);
        }
        if let Some(s) = account? {
            return Ok(Setting {
                principal_arn: principal.to_string(),
                ..s
            });
        }
        Ok(Setting {
            name: name.into(),
            value: default.to_string(),
            principal_arn: principal.to_string(),
            kind: "aws_managed".into(),
        })
    }

    pub async fn list_account_settings(
        &self,
        scope: &Scope,
        q: ListAccountSettings,
    ) -> Result<(Vec<Setting>, Option<String>), EcsError> {
        if q.value.is_some() && q.name.is_none() {
            return Err(EcsError::invalid("value can only be used together with name."));
        }
        if let Some(n) = &q.name {
            known(n)?;
        }
        let size = match q.max_results {
            None => 10,
            Some(n) if (1..=10).contains(&n) => n as usize,
            Some(_) => return Err(EcsError::invalid("maxResults must be between 1 and 10.")),
        };
        let principal = principal(scope, q.principal_arn.as_deref())?;
        let mut out = Vec::new();
        for (name, _, _) in SETTINGS {
            if q.name.as_deref().is_some_and(|n| n != *name) {
                continue;
            }
            let s = if q.effective_settings {
                Some(self.effective_setting(scope, &principal, name).await?)
            } else {
                self.explicit_setting(scope, &principal, name).await?
            };
            out.extend(s.filter(|s| q.value.as_deref().is_none_or(|v| v == s.value)));
        }
        if let Some(t) = &q.next_token {
            let after = crate::decode_token(t)?;
            let pos = out
                .iter()
                .position(|s| s.name == after)
                .ok_or_else(|| EcsError::invalid("Invalid nextToken."))?;
            out.drain(..=pos);
        }
        let token = (out.len() > size).then(|| crate::encode_token(&out[size - 1].name));
        out.truncate(size);
        Ok((out, token))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListAccountSettings {
    pub name: Option<String>,
    pub value: Option<String>,
    pub principal_arn: Option<String>,
    #[serde(default)]
    pub effective_settings: bool,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
}

impl Control {
    /// Whether the caller's ARNs of this kind use ECS's long format (with the cluster):
    /// `serviceLongArnFormat`, `taskLongArnFormat` or `containerInstanceLongArnFormat`.
    pub async fn long_arns(&self, scope: &Scope, setting: &str) -> Result<bool, EcsError> {
        Ok(self.effective_setting(scope, &root_arn(scope), setting).await?.value == "enabled")
    }
}
