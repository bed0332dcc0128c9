//! Clusters: create (idempotent, as in ECS), describe with statistics and tags, list, update
//! settings, delete (refused while tasks are active). The `default` cluster exists on demand.

use crate::{prefix, store_err, Control};
use gantry_store::StoreError;
use gantry_types::arn::{cluster_name, Scope};
use gantry_types::model::{Cluster, ClusterConfiguration, ClusterSetting, Failure, Tag};
use gantry_types::taskdef::KeyValuePair;
use gantry_types::EcsError;

/// What CreateCluster may say beyond the name, tags and settings.
#[derive(Debug, Default)]
pub struct ClusterOptions {
    /// Default: Fargate's two.
    pub providers: Option<Vec<String>>,
    pub strategy: Vec<serde_json::Value>,
    pub configuration: Option<ClusterConfiguration>,
}

/// A cluster's configuration as ECS validates it, less what needs services Gantry does not
/// offer (KMS keys, S3 buckets), which is refused rather than ignored.
pub fn validate_cluster_configuration(c: &ClusterConfiguration) -> Result<(), EcsError> {
    if c.managed_storage_configuration.is_some() {
        return Err(EcsError::invalid(
            "managedStorageConfiguration names AWS KMS keys, and Gantry does not offer KMS.",
        ));
    }
    let Some(exec) = &c.execute_command_configuration else {
        return Ok(());
    };
    if exec.kms_key_id.is_some() {
        return Err(EcsError::invalid(
            "executeCommandConfiguration.kmsKeyId names an AWS KMS key, and Gantry does not offer KMS.",
        ));
    }
    let logging = exec.logging.as_deref().unwrap_or("DEFAULT");
    match (logging, &exec.log_configuration) {
        ("NONE" | "DEFAULT", None) => Ok(()),
        ("NONE" | "DEFAULT", Some(_)) => Err(EcsError::invalid(
            "logConfiguration can be specified only when logging is OVERRIDE.",
        )),
        ("OVERRIDE", None) => Err(EcsError::invalid(
            "When logging is OVERRIDE, logConfiguration must be specified.",
        )),
        ("OVERRIDE", Some(l)) => {
            if l.s3_bucket_name.is_some() || l.s3_key_prefix.is_some() || l.s3_encryption_enabled == Some(true) {
                return Err(EcsError::invalid(
                    "Gantry does not offer S3: exec sessions can be logged to CloudWatch Logs only.",
                ));
            }
            if l.cloud_watch_encryption_enabled == Some(true) {
                return Err(EcsError::invalid(
                    "cloudWatchEncryptionEnabled needs a log group encrypted with an AWS KMS key, and Gantry does not offer KMS.",
                ));
            }
            let group = l.cloud_watch_log_group_name.as_deref().ok_or_else(|| {
                EcsError::invalid("logConfiguration must name a cloudWatchLogGroupName (S3 is not offered).")
            })?;
            crate::logstore::LogStore::validate_group_name(group)
                .map_err(|e| EcsError::invalid(format!("cloudWatchLogGroupName: {e}")))
        }
        (other, _) => Err(EcsError::invalid(format!(
            "Invalid logging value {other}: valid values are NONE, DEFAULT and OVERRIDE."
        ))),
    }
}

fn valid_cluster_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 255 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Control {
    fn cluster_key(scope: &Scope, name: &str) -> String {
        format!("{}clusters/{name}", prefix(scope))
    }

    pub async fn create_cluster(
        &self,
        scope: &Scope,
        name: Option<&str>,
        tags: Option<Vec<Tag>>,
        settings: Option<Vec<ClusterSetting>>,
    ) -> Result<Cluster, EcsError> {
        self.create_cluster_with(scope, name, tags, settings, ClusterOptions::default())
            .await
    }

    /// CreateCluster with the capacity providers it uses (default: Fargate's two) and the
    /// default strategy.
    pub async fn create_cluster_with(
        &self,
        scope: &Scope,
        name: Option<&str>,
        tags: Option<Vec<Tag>>,
        settings: Option<Vec<ClusterSetting>>,
        opts: ClusterOptions,
    ) -> Result<Cluster, EcsError> {
        let ClusterOptions {
            providers,
            strategy,
            configuration,
        } = opts;
        let providers = providers.unwrap_or_else(|| vec!["FARGATE".into(), "FARGATE_SPOT".into()]);
        self.validate_cluster_providers(scope, &providers, &strategy).await?;
        if let Some(c) = &configuration {
            validate_cluster_configuration(c)?;
        }
        let name = name.unwrap_or("default");
        if !valid_cluster_name(name) {
            return Err(EcsError::invalid(
                "Cluster name must be 1-255 characters: letters (uppercase and lowercase), numbers, underscores and hyphens.",
            ));
        }
        let key = Self::cluster_key(scope, name);
        if let Some((existing, rev)) = self.get_json::<Cluster>(&key).await? {
            if existing.status == "ACTIVE" {
                return Ok(existing);
            }
            // An INACTIVE cluster of the same name is replaced by a new one.
            self.store.delete(&key, Some(rev)).await.map_err(store_err)?;
        }
        let cluster = Cluster {
            cluster_arn: scope.cluster_arn(name),
            cluster_name: name.to_string(),
            status: "ACTIVE".into(),
            tags: Some(tags.unwrap_or_default()),
            settings: Some(settings.unwrap_or_else(|| {
                vec![ClusterSetting {
                    name: "containerInsights".into(),
                    value: "disabled".into(),
                }]
            })),
            capacity_providers: providers,
            default_capacity_provider_strategy: strategy,
            configuration,
            ..Default::default()
        };
        match self
            .store
            .create(&key, &serde_json::to_vec(&cluster).expect("serialises"))
            .await
        {
            Ok(_) => Ok(cluster),
            Err(StoreError::AlreadyExists { .. }) => {
                Ok(self.get_json::<Cluster>(&key).await?.map(|c| c.0).unwrap_or(cluster))
            }
            Err(e) => Err(store_err(e)),
        }
    }

    /// The named ACTIVE cluster; the `default` cluster is created on first use, as ECS does.
    pub async fn active_cluster(&self, scope: &Scope, name_or_arn: Option<&str>) -> Result<Cluster, EcsError> {
        let name = cluster_name(name_or_arn.unwrap_or("default"));
        match self.get_json::<Cluster>(&Self::cluster_key(scope, name)).await? {
            Some((c, _)) if c.status == "ACTIVE" => Ok(c),
            _ if name == "default" => self.create_cluster(scope, Some("default"), None, None).await,
            _ => Err(EcsError::ClusterNotFound("Cluster not found.".into())),
        }
    }

    /// The cluster with its live counts, and the optional parts only when `include` asks for
    /// them (as ECS: STATISTICS, TAGS, SETTINGS, CONFIGURATIONS, ATTACHMENTS).
    async fn with_counts(&self, scope: &Scope, mut c: Cluster, include: &[String]) -> Result<Cluster, EcsError> {
        let tasks = self.list_task_records(scope, &c.cluster_name).await?;
        let services = self.cluster_services(scope, &c.cluster_name).await?;
        let count = |launch: Option<&str>, running: bool| {
            tasks
                .iter()
                .filter(|t| launch.is_none_or(|l| t.task.launch_type == l))
                .filter(|t| match running {
                    true => t.task.last_status == "RUNNING",
                    false => t.task.last_status != "RUNNING" && t.task.last_status != "STOPPED",
                })
                .count() as i64
        };
        c.running_tasks_count = count(None, true);
        c.pending_tasks_count = count(None, false);
        c.active_services_count = services.iter().filter(|s| s.status == "ACTIVE").count() as i64;
        c.registered_container_instances_count = self.registered_instances(scope, &c.cluster_name).await?;
        if include.iter().any(|i| i == "STATISTICS") {
            let stat = |n: &str, v: i64| KeyValuePair {
                name: Some(n.into()),
                value: Some(v.to_string()),
            };
            let svc = |launch: &str, status: &str| {
                services
                    .iter()
                    .filter(|s| {
                        s.status == status
                            && (s.launch_type == launch || (launch == "FARGATE" && s.launch_type.is_empty()))
                    })
                    .count() as i64
            };
            c.statistics = Some(vec![
                stat("runningEC2TasksCount", count(Some("EC2"), true)),
                stat("runningFargateTasksCount", count(Some("FARGATE"), true)),
                stat("pendingEC2TasksCount", count(Some("EC2"), false)),
                stat("pendingFargateTasksCount", count(Some("FARGATE"), false)),
                stat("runningExternalTasksCount", count(Some("EXTERNAL"), true)),
                stat("pendingExternalTasksCount", count(Some("EXTERNAL"), false)),
                stat("activeEC2ServiceCount", svc("EC2", "ACTIVE")),
                stat("activeFargateServiceCount", svc("FARGATE", "ACTIVE")),
                stat("drainingEC2ServiceCount", svc("EC2", "DRAINING")),
                stat("drainingFargateServiceCount", svc("FARGATE", "DRAINING")),
                stat("activeExternalServiceCount", svc("EXTERNAL", "ACTIVE")),
                stat("drainingExternalServiceCount", svc("EXTERNAL", "DRAINING")),
            ]);
        }
        if !include.iter().any(|i| i == "TAGS") {
            c.tags = None;
        }
        if !include.iter().any(|i| i == "SETTINGS") {
            c.settings = None;
        }
        if !include.iter().any(|i| i == "CONFIGURATIONS") {
            c.configuration = None;
        }
        Ok(c)
    }

    pub async fn describe_clusters(
        &self,
        scope: &Scope,
        names: Option<Vec<String>>,
        include: &[String],
    ) -> Result<(Vec<Cluster>, Vec<Failure>), EcsError> {
        let names = names.unwrap_or_else(|| vec!["default".into()]);
        if names.len() > 100 {
            return Err(EcsError::invalid("Clusters cannot have more than 100 elements."));
        }
        let (mut found, mut failures) = (Vec::new(), Vec::new());
        for n in names {
            let name = cluster_name(&n);
            match self.get_json::<Cluster>(&Self::cluster_key(scope, name)).await? {
                Some((c, _)) => found.push(self.with_counts(scope, c, include).await?),
                None => failures.push(Failure {
                    arn: Some(scope.cluster_arn(name)),
                    reason: Some("MISSING".into()),
                    detail: None,
                }),
            }
        }
        Ok((found, failures))
    }

    pub async fn list_clusters(
        &self,
        scope: &Scope,
        next_token: Option<&str>,
        max: Option<i64>,
    ) -> Result<(Vec<String>, Option<String>), EcsError> {
        let size = crate::page_size(max, 100)?;
        let after = next_token.map(crate::decode_token).transpose()?;
        let all = self
            .list_json::<Cluster>(&format!("{}clusters/", prefix(scope)))
            .await?;
        let active: Vec<_> = all
            .into_iter()
            .filter(|(k, c, _)| c.status == "ACTIVE" && after.as_ref().is_none_or(|a| k > a))
            .collect();
        let token = (active.len() > size).then(|| crate::encode_token(&active[size - 1].0));
        Ok((
            active.into_iter().take(size).map(|(_, c, _)| c.cluster_arn).collect(),
            token,
        ))
    }

    pub async fn update_cluster_settings(
        &self,
        scope: &Scope,
        name: &str,
        settings: Vec<ClusterSetting>,
    ) -> Result<Cluster, EcsError> {
        self.update_cluster(scope, name, settings, None).await
    }

    /// UpdateCluster: settings merged by name; a configuration replaces the cluster's.
    pub async fn update_cluster(
        &self,
        scope: &Scope,
        name: &str,
        settings: Vec<ClusterSetting>,
        configuration: Option<ClusterConfiguration>,
    ) -> Result<Cluster, EcsError> {
        if let Some(c) = &configuration {
            validate_cluster_configuration(c)?;
        }
        let key = Self::cluster_key(scope, cluster_name(name));
        let not_found = || EcsError::ClusterNotFound("Cluster not found.".into());
        let c = self
            .update_json(&key, |c: &mut Cluster| {
                if c.status != "ACTIVE" {
                    return Err(not_found());
                }
                for s in &settings {
                    if s.name != "containerInsights" || !["enabled", "disabled", "enhanced"].contains(&s.value.as_str()) {
                        return Err(EcsError::invalid(format!(
                            "Invalid cluster setting {}={}: only containerInsights (enabled, disabled, enhanced) is supported.",
                            s.name, s.value
                        )));
                    }
                    let all = c.settings.get_or_insert_with(Vec::new);
                    all.retain(|x| x.name != s.name);
                    all.push(s.clone());
                }
                if configuration.is_some() {
                    c.configuration = configuration.clone();
                }
                Ok(true)
            })
            .await?
            .ok_or_else(not_found)?;
        self.with_counts(scope, c, &["SETTINGS".into(), "CONFIGURATIONS".into()])
            .await
    }

    pub(crate) async fn set_cluster_providers(
        &self,
        scope: &Scope,
        name: &str,
        providers: Vec<String>,
        strategy: Vec<serde_json::Value>,
    ) -> Result<Cluster, EcsError> {
        let not_found = || EcsError::ClusterNotFound("Cluster not found.".into());
        let c = self
            .update_json(&Self::cluster_key(scope, name), |c: &mut Cluster| {
                if c.status != "ACTIVE" {
                    return Err(not_found());
                }
                c.capacity_providers = providers.clone();
                c.default_capacity_provider_strategy = strategy.clone();
                Ok(true)
            })
            .await?
            .ok_or_else(not_found)?;
        self.with_counts(scope, c, &["SETTINGS".into()]).await
    }

    pub async fn delete_cluster(&self, scope: &Scope, name: &str) -> Result<Cluster, EcsError> {
        let name = cluster_name(name);
        let key = Self::cluster_key(scope, name);
        let Some((mut c, rev)) = self
            .get_json::<Cluster>(&key)
            .await?
            .filter(|(c, _)| c.status == "ACTIVE")
        else {
            return Err(EcsError::ClusterNotFound("Cluster not found.".into()));
        };
        let services = self
            .list_json::<crate::services::ServiceRecord>(&format!(
                "{}{}/{}/{name}/",
                crate::services::SERVICES_PREFIX,
                scope.account,
                scope.region
            ))
            .await?
            .into_iter()
            .filter(|(_, s, _)| s.service.status != "INACTIVE")
            .count();
        if services > 0 {
            return Err(EcsError::ClusterContainsServices(format!(
                "The Cluster cannot be deleted while Services are active ({services} active)."
            )));
        }
        let active = self
            .list_task_records(scope, name)
            .await?
            .into_iter()
            .filter(|t| t.task.last_status != "STOPPED")
            .count();
        if active > 0 {
            return Err(EcsError::ClusterContainsTasks(format!(
                "The Cluster cannot be deleted while Tasks are active ({active} active)."
            )));
        }
        c.status = "INACTIVE".into();
        self.store
            .update(&key, &serde_json::to_vec(&c).expect("serialises"), rev)
            .await
            .map_err(store_err)?;
        Ok(c)
    }

    pub async fn set_cluster_tags(&self, scope: &Scope, name: &str, f: impl Fn(&mut Vec<Tag>)) -> Result<(), EcsError> {
        self.update_json(&Self::cluster_key(scope, name), |c: &mut Cluster| {
            let mut tags = c.tags.take().unwrap_or_default();
            f(&mut tags);
            c.tags = Some(tags);
            Ok(true)
        })
        .await?
        .map(|_| ())
        .ok_or_else(|| EcsError::ResourceNotFound("The specified cluster is not found.".into()))
    }

    pub async fn cluster_tags(&self, scope: &Scope, name: &str) -> Result<Vec<Tag>, EcsError> {
        match self.get_json::<Cluster>(&Self::cluster_key(scope, name)).await? {
            Some((c, _)) => Ok(c.tags.unwrap_or_default()),
            None => Err(EcsError::ResourceNotFound("The specified cluster is not found.".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_types::model::{ExecuteCommandConfiguration, ExecuteCommandLogConfiguration};

    fn exec(logging: Option<&str>, log: Option<ExecuteCommandLogConfiguration>) -> ClusterConfiguration {
        ClusterConfiguration {
            execute_command_configuration: Some(ExecuteCommandConfiguration {
                kms_key_id: None,
                logging: logging.map(String::from),
                log_configuration: log,
            }),
            managed_storage_configuration: None,
        }
    }

    fn group(name: &str) -> ExecuteCommandLogConfiguration {
        ExecuteCommandLogConfiguration {
            cloud_watch_log_group_name: Some(name.into()),
            ..Default::default()
        }
    }

    #[test]
    fn exec_configurations_are_validated_as_ecs_does_and_kms_and_s3_refused() {
        for ok in [
            exec(None, None),
            exec(Some("NONE"), None),
            exec(Some("DEFAULT"), None),
            exec(Some("OVERRIDE"), Some(group("/ecs/exec"))),
        ] {
            assert!(validate_cluster_configuration(&ok).is_ok(), "{ok:?}");
        }
        let refused = |c: ClusterConfiguration, says: &str| {
            let m = validate_cluster_configuration(&c).unwrap_err().to_string();
            assert!(m.contains(says), "{m}");
        };
        refused(exec(Some("OVERRIDE"), None), "logConfiguration must be specified");
        refused(exec(Some("NONE"), Some(group("g"))), "only when logging is OVERRIDE");
        refused(exec(Some("LOUD"), None), "valid values are NONE, DEFAULT and OVERRIDE");
        refused(
            exec(Some("OVERRIDE"), Some(ExecuteCommandLogConfiguration::default())),
            "cloudWatchLogGroupName",
        );
        refused(
            exec(Some("OVERRIDE"), Some(group("bad group!"))),
            "cloudWatchLogGroupName",
        );
        let mut s3 = group("g");
        s3.s3_bucket_name = Some("b".into());
        refused(exec(Some("OVERRIDE"), Some(s3)), "does not offer S3");
        let mut encrypted = group("g");
        encrypted.cloud_watch_encryption_enabled = Some(true);
        refused(exec(Some("OVERRIDE"), Some(encrypted)), "does not offer KMS");
        let mut kms = exec(None, None);
        kms.execute_command_configuration.as_mut().unwrap().kms_key_id = Some("k".into());
        refused(kms, "does not offer KMS");
        refused(
            ClusterConfiguration {
                managed_storage_configuration: Some(serde_json::json!({"kmsKeyId": "k"})),
                ..Default::default()
            },
            "does not offer KMS",
        );
    }
}
