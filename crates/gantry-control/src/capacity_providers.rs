//! Capacity providers: Fargate's two (FARGATE, FARGATE_SPOT) always exist; Auto Scaling group
//! providers are stored and described (in Gantry they stand for a pool of nodes, which the
//! cluster work gives them), and a cluster lists the providers it uses with a default strategy
//! that RunTask and CreateService follow when given neither a launch type nor a strategy.

use crate::run_task::Launch;
use crate::{prefix, store_err, Control};
use gantry_store::StoreError;
use gantry_types::arn::Scope;
use gantry_types::model::{Cluster, Failure, Tag};
use gantry_types::EcsError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const FARGATE_PROVIDERS: [&str; 2] = ["FARGATE", "FARGATE_SPOT"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProviderRecord {
    pub name: String,
    pub arn: String,
    pub status: String,
    pub update_status: String,
    pub auto_scaling_group_provider: Value,
    pub tags: Vec<Tag>,
}

impl ProviderRecord {
    fn to_json(&self, with_tags: bool) -> Value {
        let mut v = json!({
            "capacityProviderArn": self.arn, "name": self.name, "status": self.status,
            "updateStatus": self.update_status, "autoScalingGroupProvider": self.auto_scaling_group_provider,
            "type": "EC2_AUTOSCALING",
        });
        if with_tags {
            v["tags"] = json!(self.tags);
        }
        v
    }
}

fn fargate_json(scope: &Scope, name: &str, with_tags: bool) -> Value {
    let mut v = json!({"capacityProviderArn": scope.capacity_provider_arn(name), "name": name, "status": "ACTIVE", "type": "FARGATE"});
    if with_tags {
        v["tags"] = json!([]);
    }
    v
}

/// ECS's checks on an Auto Scaling group provider's settings.
fn validate_asg(p: &Value, creating: bool) -> Result<(), EcsError> {
    if creating {
        let arn = p["autoScalingGroupArn"].as_str().unwrap_or("");
        if !arn.starts_with("arn:aws:autoscaling:") && (arn.is_empty() || arn.contains(':')) {
            return Err(EcsError::invalid(
                "autoScalingGroupProvider.autoScalingGroupArn must be an Auto Scaling group ARN or name.",
            ));
        }
    }
    let m = &p["managedScaling"];
    let check = |k: &str, lo: i64, hi: i64| match m.get(k).and_then(Value::as_i64) {
        Some(v) if !(lo..=hi).contains(&v) => Err(EcsError::invalid(format!(
            "managedScaling.{k} must be between {lo} and {hi}."
        ))),
        _ => Ok(()),
    };
    check("targetCapacity", 1, 100)?;
    check("minimumScalingStepSize", 1, 10000)?;
    check("maximumScalingStepSize", 1, 10000)?;
    check("instanceWarmupPeriod", 0, 10000)?;
    for (k, allowed) in [
        ("managedTerminationProtection", ["ENABLED", "DISABLED"]),
        ("managedDraining", ["ENABLED", "DISABLED"]),
    ] {
        if let Some(v) = p.get(k).and_then(Value::as_str) {
            if !allowed.contains(&v) {
                return Err(EcsError::invalid(format!("{k} must be ENABLED or DISABLED.")));
            }
        }
    }
    if let Some(v) = m.get("status").and_then(Value::as_str) {
        if !["ENABLED", "DISABLED"].contains(&v) {
            return Err(EcsError::invalid("managedScaling.status must be ENABLED or DISABLED."));
        }
    }
    Ok(())
}

/// The launch a strategy means: Fargate's providers launch on FARGATE, Auto Scaling group
/// providers on EC2 (the cluster's container instances). Every provider must be associated
/// with the cluster, and the two kinds do not mix (as ECS).
pub fn launch_for_strategy(s: &[Value], cluster_providers: &[String]) -> Result<Launch, EcsError> {
    let mut first = None;
    let (mut fargate, mut asg) = (false, false);
    for cp in s {
        let name = cp["capacityProvider"].as_str().unwrap_or("");
        if !cluster_providers.iter().any(|p| p == name) {
            return Err(EcsError::invalid(format!(
                "The specified capacity provider strategy cannot contain a capacity provider that is not associated with the cluster: {name}."
            )));
        }
        let weight = cp["weight"].as_i64().unwrap_or(0);
        let base = cp["base"].as_i64().unwrap_or(0);
        if !(0..=1000).contains(&weight) || !(0..=100000).contains(&base) {
            return Err(EcsError::invalid(
                "capacity provider weight must be 0-1000 and base 0-100000.",
            ));
        }
        if FARGATE_PROVIDERS.contains(&name) {
            fargate = true;
        } else {
            asg = true;
        }
        if first.is_none() && (weight > 0 || base > 0) {
            first = Some(name.to_string());
        }
    }
    if fargate && asg {
        return Err(EcsError::invalid(
            "The specified capacity provider strategy cannot contain a mix of capacity providers using Auto Scaling groups and Fargate providers. Specify one or the other and try again.",
        ));
    }
    let name = first.ok_or_else(|| {
        EcsError::invalid(
            "The capacity provider strategy must contain at least one provider with a weight greater than zero.",
        )
    })?;
    Ok(Launch {
        launch_type: if fargate { "FARGATE" } else { "EC2" }.into(),
        capacity_provider: Some(name),
    })
}

impl Control {
    fn provider_key(scope: &Scope, name: &str) -> String {
        format!("{}capacity-providers/{name}", prefix(scope))
    }

    async fn provider(&self, scope: &Scope, name: &str) -> Result<Option<(ProviderRecord, i64)>, EcsError> {
        let name = name.rsplit('/').next().unwrap_or(name);
        self.get_json::<ProviderRecord>(&Self::provider_key(scope, name)).await
    }

    pub async fn create_capacity_provider(
        &self,
        scope: &Scope,
        name: &str,
        asg: Option<&Value>,
        tags: Vec<Tag>,
    ) -> Result<Value, EcsError> {
        let lower = name.to_ascii_lowercase();
        if name.is_empty()
            || name.len() > 255
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            || ["aws", "ecs", "fargate"].iter().any(|p| lower.starts_with(p))
        {
            return Err(EcsError::invalid(
                "Capacity provider names are 1-255 letters, numbers, hyphens and underscores, and cannot start with aws, ecs or fargate.",
            ));
        }
        let asg = asg.ok_or_else(|| {
            EcsError::invalid("autoScalingGroupProvider is required: Gantry offers Auto Scaling group capacity providers (managed instances are not offered).")
        })?;
        validate_asg(asg, true)?;
        let rec = ProviderRecord {
            name: name.to_string(),
            arn: scope.capacity_provider_arn(name),
            status: "ACTIVE".into(),
            update_status: "CREATE_COMPLETE".into(),
            auto_scaling_group_provider: asg.clone(),
            tags,
        };
        let key = Self::provider_key(scope, name);
        if let Some((old, rev)) = self.get_json::<ProviderRecord>(&key).await? {
            if old.status == "ACTIVE" {
                return Err(EcsError::invalid(format!(
                    "The capacity provider {name} already exists."
                )));
            }
            self.store.delete(&key, Some(rev)).await.map_err(store_err)?;
        }
        match self
            .store
            .create(&key, &serde_json::to_vec(&rec).expect("serialises"))
            .await
        {
            Ok(_) => Ok(rec.to_json(false)),
            Err(StoreError::AlreadyExists { .. }) => Err(EcsError::invalid(format!(
                "The capacity provider {name} already exists."
            ))),
            Err(e) => Err(store_err(e)),
        }
    }

    pub async fn update_capacity_provider(&self, scope: &Scope, name: &str, update: &Value) -> Result<Value, EcsError> {
        validate_asg(update, false)?;
        let key = Self::provider_key(scope, name.rsplit('/').next().unwrap_or(name));
        let rec = self
            .update_json(&key, |r: &mut ProviderRecord| {
                if r.status != "ACTIVE" {
                    return Err(EcsError::client("The specified capacity provider does not exist."));
                }
                for k in ["managedScaling", "managedTerminationProtection", "managedDraining"] {
                    if let Some(v) = update.get(k) {
                        r.auto_scaling_group_provider[k] = v.clone();
                    }
                }
                r.update_status = "UPDATE_COMPLETE".into();
                Ok(true)
            })
            .await?
            .ok_or_else(|| EcsError::client("The specified capacity provider does not exist."))?;
        Ok(rec.to_json(false))
    }

    pub async fn delete_capacity_provider(&self, scope: &Scope, name: &str) -> Result<Value, EcsError> {
        let short = name.rsplit('/').next().unwrap_or(name);
        if FARGATE_PROVIDERS.contains(&short) {
            return Err(EcsError::client(
                "The FARGATE and FARGATE_SPOT capacity providers cannot be deleted.",
            ));
        }
        let clusters = self
            .list_json::<Cluster>(&format!("{}clusters/", prefix(scope)))
            .await?;
        if let Some((_, c, _)) = clusters
            .iter()
            .find(|(_, c, _)| c.status == "ACTIVE" && c.capacity_providers.iter().any(|p| p == short))
        {
            return Err(EcsError::client(format!(
                "The specified capacity provider is in use and cannot be removed: cluster {} lists it.",
                c.cluster_name
            )));
        }
        let rec = self
            .update_json(&Self::provider_key(scope, short), |r: &mut ProviderRecord| {
                if r.status != "ACTIVE" {
                    return Err(EcsError::client("The specified capacity provider does not exist."));
                }
                r.status = "INACTIVE".into();
                r.update_status = "DELETE_COMPLETE".into();
                Ok(true)
            })
            .await?
            .ok_or_else(|| EcsError::client("The specified capacity provider does not exist."))?;
        Ok(rec.to_json(false))
    }

    /// Fargate's providers, then the account's own, ACTIVE ones unless named.
    pub async fn describe_capacity_providers(
        &self,
        scope: &Scope,
        names: Option<&[String]>,
        include: &[String],
        max: Option<i64>,
        next_token: Option<&str>,
    ) -> Result<(Vec<Value>, Vec<Failure>, Option<String>), EcsError> {
        let tags = include.iter().any(|i| i == "TAGS");
        let custom = self
            .list_json::<ProviderRecord>(&format!("{}capacity-providers/", prefix(scope)))
            .await?;
        let mut all: Vec<(String, Value)> = FARGATE_PROVIDERS
            .iter()
            .map(|n| (n.to_string(), fargate_json(scope, n, tags)))
            .collect();
        all.extend(custom.iter().map(|(_, r, _)| (r.name.clone(), r.to_json(tags))));
        let mut failures = Vec::new();
        let mut out: Vec<(String, Value)> = match names {
            Some(ns) => ns
                .iter()
                .filter_map(|n| {
                    let short = n.rsplit('/').next().unwrap_or(n);
                    let found = all.iter().find(|(name, _)| name == short).cloned();
                    if found.is_none() {
                        failures.push(Failure {
                            arn: Some(n.clone()),
                            reason: Some("MISSING".into()),
                            detail: None,
                        });
                    }
                    found
                })
                .collect(),
            None => all.into_iter().filter(|(_, v)| v["status"] == "ACTIVE").collect(),
        };
        let size = match max {
            None => 10,
            Some(n) if (1..=10).contains(&n) => n as usize,
            Some(_) => return Err(EcsError::invalid("maxResults must be between 1 and 10.")),
        };
        if let Some(t) = next_token {
            let after = crate::decode_token(t)?;
            let pos = out
                .iter()
                .position(|(n, _)| *n == after)
                .ok_or_else(|| EcsError::invalid("Invalid nextToken."))?;
            out.drain(..=pos);
        }
        let token = (out.len() > size).then(|| crate::encode_token(&out[size - 1].0));
        Ok((out.into_iter().take(size).map(|(_, v)| v).collect(), failures, token))
    }

    /// Checks a cluster's provider list and default strategy.
    pub(crate) async fn validate_cluster_providers(
        &self,
        scope: &Scope,
        providers: &[String],
        strategy: &[Value],
    ) -> Result<(), EcsError> {
        for p in providers {
            let ok = FARGATE_PROVIDERS.contains(&p.as_str())
                || self
                    .provider(scope, p)
                    .await?
                    .is_some_and(|(r, _)| r.status == "ACTIVE");
            if !ok {
                return Err(EcsError::invalid(format!(
                    "The specified capacity provider {p} does not exist."
                )));
            }
        }
        if !strategy.is_empty() {
            launch_for_strategy(strategy, providers)?;
        }
        Ok(())
    }

    pub async fn put_cluster_capacity_providers(
        &self,
        scope: &Scope,
        cluster: &str,
        providers: Vec<String>,
        strategy: Vec<Value>,
    ) -> Result<Cluster, EcsError> {
        let c = self.active_cluster(scope, Some(cluster)).await?;
        self.validate_cluster_providers(scope, &providers, &strategy).await?;
        // A provider a service's strategy uses cannot be taken away from the cluster.
        for s in self.cluster_services(scope, &c.cluster_name).await? {
            if s.status == "INACTIVE" {
                continue;
            }
            if let Some(p) = s
                .capacity_provider_strategy
                .iter()
                .filter_map(|i| i["capacityProvider"].as_str())
                .find(|p| !providers.iter().any(|x| x == p))
            {
                return Err(EcsError::ResourceInUse(format!(
                    "The specified capacity provider {p} is in use by service {} and cannot be removed.",
                    s.service_name
                )));
            }
        }
        self.set_cluster_providers(scope, &c.cluster_name, providers, strategy)
            .await
    }
}
