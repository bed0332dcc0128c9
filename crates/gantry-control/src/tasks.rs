//! Tasks: RunTask creates PROVISIONING records placed on the node; the agent moves them
//! through the lifecycle; StopTask sets desiredStatus STOPPED. Every change bumps `version`.

use crate::{store_err, Control};
use gantry_types::arn::{task_id, Scope};
use gantry_types::model::{stop_code, Failure, Tag, Task};
use gantry_types::taskdef::{ContainerDefinition, NetworkMode};
use gantry_types::EcsError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A container as the agent runs it: its definition with RunTask's overrides applied.
pub type TaskSpecContainer = ContainerDefinition;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskRecord {
    pub task: Task,
    pub cluster: String,
    pub node: String,
    pub containers: Vec<TaskSpecContainer>,
    pub cpu_units: i64,
    pub memory_mib: i64,
    #[serde(default)]
    pub account: String,
    #[serde(default)]
    pub region: String,
    /// Scale-in protection until this time (epoch seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected_until: Option<f64>,
    /// How the agent networks the task (records from before network modes were awsvpc).
    #[serde(default = "awsvpc")]
    pub network_mode: NetworkMode,
    /// Whether `memory_mib` is a hard limit for the task (a task-level size), or only the sum
    /// of its containers' (EC2 definitions without one).
    #[serde(default = "yes")]
    pub task_memory_limit: bool,
    /// The task's IAM roles: its definition's, or RunTask's overrides.
    #[serde(default, skip_serializing_if = "TaskRoles::is_empty")]
    pub roles: TaskRoles,
    /// The security groups of an awsvpc task (its network configuration's, else the VPC's
    /// default group).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
}

/// The roles a task runs with, by ARN.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskRoles {
    /// The role its containers' credentials endpoint vends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The role the node acts as for the task: secrets, registry auth, logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<String>,
}

impl TaskRoles {
    pub fn is_empty(&self) -> bool {
        self.task.is_none() && self.execution.is_none()
    }
}

fn yes() -> bool {
    true
}

fn awsvpc() -> NetworkMode {
    NetworkMode::Awsvpc
}

impl TaskRecord {
    pub fn protected_at(&self, now: f64) -> bool {
        self.protected_until.is_some_and(|t| t > now)
    }

    pub fn id(&self) -> &str {
        task_id(&self.task.task_arn)
    }
    pub fn scope(&self) -> Scope {
        Scope {
            account: self.account.clone(),
            region: self.region.clone(),
        }
    }
}

/// ListTasks' filters.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ListTasks {
    pub cluster: Option<String>,
    pub container_instance: Option<String>,
    pub family: Option<String>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
    pub started_by: Option<String>,
    pub service_name: Option<String>,
    pub desired_status: Option<String>,
    pub launch_type: Option<String>,
    pub daemon_name: Option<String>,
}

impl ListTasks {
    fn matches(&self, r: &TaskRecord, desired: &str) -> bool {
        let t = &r.task;
        let status_ok = match desired {
            "STOPPED" => t.desired_status == "STOPPED",
            "PENDING" => t.desired_status == "RUNNING" && t.last_status != "RUNNING",
            _ => t.desired_status == "RUNNING",
        };
        let family_ok = self.family.as_deref().is_none_or(|f| {
            t.task_definition_arn
                .rsplit_once("task-definition/")
                .and_then(|(_, fr)| fr.rsplit_once(':'))
                .is_some_and(|(fam, _)| fam == f)
        });
        let service_ok = self.service_name.as_deref().is_none_or(|s| {
            let name = s.rsplit('/').next().unwrap_or(s);
            t.group.as_deref() == Some(&format!("service:{name}"))
        });
        let instance_ok = self.container_instance.as_deref().is_none_or(|ci| {
            let id = ci.rsplit('/').next().unwrap_or(ci);
            t.container_instance_arn
                .as_deref()
                .is_some_and(|a| a.rsplit('/').next() == Some(id))
        });
        // Daemons do not exist in Gantry: no task belongs to one.
        let daemon_ok = self.daemon_name.is_none();
        let launch_ok = self.launch_type.as_deref().is_none_or(|l| t.launch_type == l);
        let by_ok = self
            .started_by
            .as_deref()
            .is_none_or(|s| t.started_by.as_deref() == Some(s));
        status_ok && family_ok && service_ok && instance_ok && daemon_ok && launch_ok && by_ok
    }
}

/// Key prefix of every task record.
pub const TASKS_PREFIX: &str = "/tasks/";

/// The fields routing a task record to its node need (decoding it whole would be waste).
#[derive(Deserialize)]
pub(crate) struct Placed<'a> {
    #[serde(borrow)]
    pub node: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    task: PlacedTask<'a>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PlacedTask<'a> {
    #[serde(default, borrow)]
    last_status: std::borrow::Cow<'a, str>,
}

impl Placed<'_> {
    pub fn stopped(&self) -> bool {
        self.task.last_status == "STOPPED"
    }
}

impl Control {
    /// Tasks live under their own top-level prefix so the agent can list and watch them all.
    pub(crate) fn task_key(scope: &Scope, cluster: &str, id: &str) -> String {
        format!("{TASKS_PREFIX}{}/{}/{cluster}/{id}", scope.account, scope.region)
    }

    pub(crate) async fn list_task_records(&self, scope: &Scope, cluster: &str) -> Result<Vec<TaskRecord>, EcsError> {
        Ok(self
            .list_json::<TaskRecord>(&format!("{TASKS_PREFIX}{}/{}/{cluster}/", scope.account, scope.region))
            .await?
            .into_iter()
            .map(|(_, r, _)| r)
            .collect())
    }

    /// The cluster of a task or service named by a short-format ARN (which has none).
    pub async fn cluster_of(&self, scope: &Scope, kind: &str, id: &str) -> Result<Option<String>, EcsError> {
        let base = match kind {
            "task" => TASKS_PREFIX,
            _ => crate::services::SERVICES_PREFIX,
        };
        let (kvs, _) = self
            .store
            .list(&format!("{base}{}/{}/", scope.account, scope.region))
            .await
            .map_err(store_err)?;
        Ok(kvs.iter().find_map(|kv| {
            let (cluster_path, last) = kv.key.rsplit_once('/')?;
            (last == id).then(|| cluster_path.rsplit('/').next().unwrap_or("").to_string())
        }))
    }

    /// Every task record in the store with its key and revision, in key order (records
    /// unchanged since the last call are not read or decoded again).
    pub async fn all_tasks(&self) -> Result<Vec<(String, TaskRecord, i64)>, EcsError> {
        self.task_cache.all(self.store.as_ref(), Some(&self.recent_tasks)).await
    }

    /// The task records of one cluster, shared with the task cache (not copied), for readers
    /// of a few fields: an unchanged record costs its key and revision, not a decode.
    pub(crate) async fn cluster_tasks_shared(
        &self,
        scope: &Scope,
        cluster: &str,
    ) -> Result<Vec<std::sync::Arc<TaskRecord>>, EcsError> {
        let prefix = format!("{TASKS_PREFIX}{}/{}/{cluster}/", scope.account, scope.region);
        let all = self
            .task_cache
            .all_shared(self.store.as_ref(), Some(&self.recent_tasks))
            .await?;
        Ok(all
            .into_iter()
            .filter(|(k, _, _)| k.starts_with(&prefix))
            .map(|(_, r, _)| r)
            .collect())
    }

    /// The task records placed on `node`, with their keys and revisions. Records are keyed by
    /// cluster, not node, so every one is listed; only the node's are decoded whole.
    pub async fn node_tasks(&self, node: &str) -> Result<Vec<(String, TaskRecord, i64)>, EcsError> {
        let (kvs, _) = self.store.list(TASKS_PREFIX).await.map_err(store_err)?;
        let corrupt = |key: &str, e: serde_json::Error| EcsError::Server(format!("corrupt record {key}: {e}"));
        let mut mine = vec![];
        for kv in kvs {
            let placed: Placed = serde_json::from_slice(&kv.value).map_err(|e| corrupt(&kv.key, e))?;
            if placed.node == node {
                let rec = serde_json::from_slice(&kv.value).map_err(|e| corrupt(&kv.key, e))?;
                mine.push((kv.key, rec, kv.mod_revision));
            }
        }
        Ok(mine)
    }

    /// Whether a task not yet stopped is in the security group `id` (DeleteSecurityGroup's
    /// dependency check).
    pub async fn tasks_in_group(&self, scope: &Scope, id: &str) -> Result<bool, EcsError> {
        let prefix = format!("{TASKS_PREFIX}{}/{}/", scope.account, scope.region);
        let tasks = self.list_json::<TaskRecord>(&prefix).await?;
        Ok(tasks
            .iter()
            .any(|(_, r, _)| r.task.last_status != "STOPPED" && r.security_groups.iter().any(|g| g == id)))
    }

    pub fn key_of(rec: &TaskRecord) -> String {
        Self::task_key(&rec.scope(), &rec.cluster, rec.id())
    }

    /// Read-modify-write of a task record; `f` returns false to leave it unchanged. Bumps
    /// `version` on every change. Returns the record as stored.
    pub async fn update_task(
        &self,
        key: &str,
        mut f: impl FnMut(&mut TaskRecord) -> bool,
    ) -> Result<Option<TaskRecord>, EcsError> {
        self.update_json(key, |r: &mut TaskRecord| {
            let before = r.clone();
            if !f(r) || *r == before {
                return Ok(false);
            }
            r.task.version += 1;
            Ok(true)
        })
        .await
    }

    /// Asks a task to stop (desiredStatus STOPPED, with ECS's stop code and reason); its node's
    /// agent does the stopping. A task already asked keeps the first code and reason. The
    /// record as it is now, None if there is none.
    pub(crate) async fn request_stop(
        &self,
        key: &str,
        code: &str,
        reason: &str,
    ) -> Result<Option<TaskRecord>, EcsError> {
        let now = self.now();
        self.update_task(key, |r| {
            if r.task.desired_status == "STOPPED" {
                return false;
            }
            r.task.desired_status = "STOPPED".into();
            r.task.stopping_at.get_or_insert(now);
            r.task.stop_code = Some(code.into());
            r.task.stopped_reason = Some(reason.into());
            true
        })
        .await
    }

    pub async fn describe_tasks(
        &self,
        scope: &Scope,
        cluster: Option<&str>,
        ids: &[String],
        include: &[String],
    ) -> Result<(Vec<Task>, Vec<Failure>), EcsError> {
        // The cluster and its tasks read at once (one round trip to the store, not one per
        // task); ECS still answers for the cluster first.
        let valid = !ids.is_empty() && ids.len() <= 100;
        let name = gantry_types::arn::cluster_name(cluster.unwrap_or("default"));
        let reads = ids.iter().take(if valid { 100 } else { 0 }).map(|i| async move {
            let key = Self::task_key(scope, name, task_id(i));
            self.get_json::<TaskRecord>(&key).await
        });
        let (cluster, records) = tokio::join!(
            self.active_cluster(scope, cluster),
            futures_util::future::join_all(reads)
        );
        let cluster = cluster?;
        if !valid {
            return Err(EcsError::invalid(
                "Tasks cannot be empty and can have at most 100 items.",
            ));
        }
        let (mut found, mut failures) = (Vec::new(), Vec::new());
        for (i, record) in ids.iter().zip(records) {
            let id = task_id(i);
            match record? {
                Some((mut rec, _)) => {
                    if !include.iter().any(|x| x == "TAGS") {
                        rec.task.tags = None;
                    }
                    found.push(rec.task)
                }
                None => failures.push(Failure {
                    arn: Some(if i.starts_with("arn:") {
                        i.clone()
                    } else {
                        scope.task_arn(&cluster.cluster_name, id)
                    }),
                    reason: Some("MISSING".into()),
                    detail: None,
                }),
            }
        }
        Ok((found, failures))
    }

    pub async fn list_tasks(&self, scope: &Scope, q: ListTasks) -> Result<(Vec<String>, Option<String>), EcsError> {
        let cluster = self.active_cluster(scope, q.cluster.as_deref()).await?;
        let desired = q.desired_status.as_deref().unwrap_or("RUNNING");
        if !["RUNNING", "PENDING", "STOPPED"].contains(&desired) {
            return Err(EcsError::invalid("desiredStatus must be RUNNING, PENDING or STOPPED."));
        }
        let others = q.family.is_some()
            || q.service_name.is_some()
            || q.container_instance.is_some()
            || q.launch_type.is_some()
            || q.desired_status.is_some();
        if q.started_by.is_some() && others {
            return Err(EcsError::invalid(
                "When you specify startedBy as the filter, it must be the only filter that you use.",
            ));
        }
        if let Some(lt) = q.launch_type.as_deref() {
            if !["EC2", "FARGATE", "EXTERNAL"].contains(&lt) {
                return Err(EcsError::invalid(format!(
                    "launchType {lt} is not valid: EC2, FARGATE or EXTERNAL."
                )));
            }
        }
        let size = crate::page_size(q.max_results, 100)?;
        let after = q.next_token.as_deref().map(crate::decode_token).transpose()?;
        let mut all = self
            .list_json::<TaskRecord>(&format!(
                "{TASKS_PREFIX}{}/{}/{}/",
                scope.account, scope.region, cluster.cluster_name
            ))
            .await?;
        all.retain(|(k, r, _)| q.matches(r, desired) && after.as_ref().is_none_or(|a| k > a));
        let token = (all.len() > size).then(|| crate::encode_token(&all[size - 1].0));
        Ok((
            all.into_iter().take(size).map(|(_, r, _)| r.task.task_arn).collect(),
            token,
        ))
    }

    pub async fn stop_task(
        &self,
        scope: &Scope,
        cluster: Option<&str>,
        task: &str,
        reason: Option<&str>,
    ) -> Result<Task, EcsError> {
        let cluster = self.active_cluster(scope, cluster).await?;
        if reason.is_some_and(|r| r.len() > 255) {
            return Err(EcsError::invalid("reason can be up to 255 characters."));
        }
        let key = Self::task_key(scope, &cluster.cluster_name, task_id(task));
        let reason = reason.unwrap_or("Task stopped by user");
        let rec = self
            .request_stop(&key, stop_code::USER_INITIATED, reason)
            .await?
            .ok_or_else(|| EcsError::invalid("The referenced task was not found."))?;
        let mut t = rec.task;
        t.tags = None;
        Ok(t)
    }

    pub async fn set_task_tags(
        &self,
        scope: &Scope,
        cluster: &str,
        id: &str,
        f: impl Fn(&mut Vec<Tag>),
    ) -> Result<(), EcsError> {
        let key = Self::task_key(scope, cluster, id);
        let r = self
            .update_task(&key, |r| {
                let mut tags = r.task.tags.take().unwrap_or_default();
                f(&mut tags);
                r.task.tags = Some(tags);
                true
            })
            .await?;
        r.map(|_| ())
            .ok_or_else(|| EcsError::ResourceNotFound("The specified task is not found.".into()))
    }

    pub async fn task_tags(&self, scope: &Scope, cluster: &str, id: &str) -> Result<Vec<Tag>, EcsError> {
        match self.get_json::<TaskRecord>(&Self::task_key(scope, cluster, id)).await? {
            Some((r, _)) => Ok(r.task.tags.unwrap_or_default()),
            None => Err(EcsError::ResourceNotFound("The specified task is not found.".into())),
        }
    }

    /// GetTaskProtection / UpdateTaskProtection: `enable` None reads, Some(on) writes.
    pub async fn task_protection(
        &self,
        scope: &Scope,
        cluster: Option<&str>,
        tasks: &[String],
        enable: Option<bool>,
        expires_in_minutes: Option<i64>,
    ) -> Result<(Vec<Value>, Vec<Failure>), EcsError> {
        let cluster = self.active_cluster(scope, cluster).await?;
        if tasks.is_empty() || tasks.len() > 10 {
            return Err(EcsError::invalid("tasks must list 1 to 10 tasks."));
        }
        let minutes = expires_in_minutes.unwrap_or(120);
        if !(1..=2880).contains(&minutes) {
            return Err(EcsError::invalid("expiresInMinutes must be between 1 and 2880."));
        }
        let now = self.now();
        let (mut out, mut failures) = (Vec::new(), Vec::new());
        for t in tasks {
            let key = Self::task_key(scope, &cluster.cluster_name, task_id(t));
            let rec = match enable {
                None => self.get_json::<TaskRecord>(&key).await?.map(|(r, _)| r),
                Some(on) => {
                    self.update_task(&key, |r| {
                        if r.task.last_status == "STOPPED" {
                            return false;
                        }
                        r.protected_until = on.then_some(now + minutes as f64 * 60.0);
                        true
                    })
                    .await?
                }
            };
            match rec {
                Some(r) if r.task.last_status != "STOPPED" => {
                    let on = r.protected_at(now);
                    let mut v = serde_json::json!({"taskArn": r.task.task_arn, "protectionEnabled": on});
                    if on {
                        v["expirationDate"] = serde_json::json!(r.protected_until);
                    }
                    out.push(v);
                }
                Some(r) => failures.push(Failure {
                    arn: Some(r.task.task_arn),
                    reason: Some("TASK_NOT_VALID".into()),
                    detail: Some("The task is stopped.".into()),
                }),
                None => failures.push(Failure {
                    arn: Some(t.clone()),
                    reason: Some("MISSING".into()),
                    detail: None,
                }),
            }
        }
        Ok((out, failures))
    }

    /// Deletes STOPPED tasks older than `keep_secs` (ECS keeps them visible about an hour).
    /// `tasks` is a listing from `all_tasks` the caller already has.
    pub async fn expire_stopped_tasks(
        &self,
        tasks: &[(String, TaskRecord, i64)],
        keep_secs: f64,
    ) -> Result<usize, EcsError> {
        let now = self.now();
        let mut n = 0;
        for (key, rec, rev) in tasks {
            let expired = rec.task.last_status == "STOPPED" && rec.task.stopped_at.is_some_and(|t| now - t > keep_secs);
            if expired && self.store.delete(key, Some(*rev)).await.is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// What a node may change in one of its task records: the status it observes (lastStatus,
/// timestamps, containers' state, attachments, health, why it stopped) and desiredStatus only
/// towards STOPPED. What the control plane decided (where, what, how big, who started it) is
/// not the node's to change, and a record already STOPPED is final: a node that was declared
/// lost cannot bring its tasks back.
pub fn agent_may_write(current: &TaskRecord, new: &TaskRecord) -> Result<(), String> {
    if current.task.last_status == "STOPPED" {
        return Err(format!("task {} is already STOPPED", current.id()));
    }
    let (c, n) = (&current.task, &new.task);
    let same_spec = current.node == new.node
        && current.cluster == new.cluster
        && current.containers == new.containers
        && current.cpu_units == new.cpu_units
        && current.memory_mib == new.memory_mib
        && current.account == new.account
        && current.region == new.region
        && current.protected_until == new.protected_until
        && current.network_mode == new.network_mode
        && current.task_memory_limit == new.task_memory_limit
        && current.roles == new.roles
        && current.security_groups == new.security_groups
        && c.task_arn == n.task_arn
        && c.cluster_arn == n.cluster_arn
        && c.task_definition_arn == n.task_definition_arn
        && c.container_instance_arn == n.container_instance_arn
        && c.cpu == n.cpu
        && c.memory == n.memory
        && c.launch_type == n.launch_type
        && c.capacity_provider_name == n.capacity_provider_name
        && c.started_by == n.started_by
        && c.group == n.group
        && c.tags == n.tags
        && c.overrides == n.overrides
        && c.created_at == n.created_at
        && c.containers.len() == n.containers.len()
        && c.containers
            .iter()
            .zip(&n.containers)
            .all(|(a, b)| a.container_arn == b.container_arn && a.name == b.name && a.image == b.image);
    if !same_spec {
        return Err(format!(
            "task {}: a node may change only the task's status",
            current.id()
        ));
    }
    if c.desired_status != n.desired_status && n.desired_status != "STOPPED" {
        return Err(format!(
            "task {}: a node may only set desiredStatus to STOPPED",
            current.id()
        ));
    }
    Ok(())
}

/// A task record for tests: task `id` of cluster "c" on node "n1", 256 CPU units and 512 MiB,
/// PENDING, awsvpc.
#[cfg(test)]
pub(crate) fn test_record(id: &str) -> TaskRecord {
    TaskRecord {
        task: Task {
            task_arn: format!("arn:aws:ecs:us-east-1:123456789012:task/c/{id}"),
            last_status: "PENDING".into(),
            ..Default::default()
        },
        cluster: "c".into(),
        node: "n1".into(),
        containers: vec![],
        cpu_units: 256,
        memory_mib: 512,
        account: "123456789012".into(),
        region: "us-east-1".into(),
        protected_until: None,
        network_mode: NetworkMode::Awsvpc,
        task_memory_limit: true,
        roles: Default::default(),
        security_groups: vec![],
    }
}

#[cfg(test)]
mod agent_write_tests {
    use super::*;

    fn rec() -> TaskRecord {
        let mut r = test_record("abc");
        r.task.desired_status = "RUNNING".into();
        r
    }

    #[test]
    fn a_node_writes_status_only() {
        let cur = rec();
        let mut ok = cur.clone();
        ok.task.last_status = "RUNNING".into();
        ok.task.started_at = Some(1.0);
        ok.task.desired_status = "STOPPED".into();
        assert_eq!(agent_may_write(&cur, &ok), Ok(()));

        let mut moved = cur.clone();
        moved.node = "n2".into();
        assert!(
            agent_may_write(&cur, &moved).is_err(),
            "a node cannot hand a task to another"
        );
        let mut bigger = cur.clone();
        bigger.memory_mib = 4096;
        assert!(agent_may_write(&cur, &bigger).is_err());
        let mut escalated = cur.clone();
        escalated.roles.task = Some("arn:aws:iam::123456789012:role/admin".into());
        assert!(
            agent_may_write(&cur, &escalated).is_err(),
            "a node cannot give a task another role"
        );
        let mut revived = cur.clone();
        revived.task.desired_status = "STOPPED".into();
        let mut back = revived.clone();
        back.task.desired_status = "RUNNING".into();
        assert!(
            agent_may_write(&revived, &back).is_err(),
            "desiredStatus goes only towards STOPPED"
        );
    }

    #[test]
    fn a_stopped_record_is_final() {
        let mut cur = rec();
        cur.task.last_status = "STOPPED".into();
        let mut again = cur.clone();
        again.task.last_status = "RUNNING".into();
        assert!(agent_may_write(&cur, &again).unwrap_err().contains("already STOPPED"));
    }
}
