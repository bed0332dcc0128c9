//! Task definitions: revisions per family, stored as the ECS shape with the fields ECS fills
//! in (ARN, revision, status, compatibilities, normalised cpu/memory, container defaults).

use crate::{prefix, store_err, Control};
use gantry_store::StoreError;
use gantry_types::arn::{task_definition_ref, Scope};
use gantry_types::model::{Failure, Tag};
use gantry_types::taskdef::{validate_json, ValidTaskDefinition};
use gantry_types::EcsError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskDefRecord {
    #[serde(rename = "taskDefinition")]
    pub definition: Value,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

impl TaskDefRecord {
    pub fn status(&self) -> &str {
        self.definition["status"].as_str().unwrap_or("")
    }
}

impl Control {
    fn taskdef_key(scope: &Scope, family: &str, rev: i64) -> String {
        format!("{}taskdefs/{family}/{rev:010}", prefix(scope))
    }

    fn family_key(scope: &Scope, family: &str) -> String {
        format!("{}taskdef-latest/{family}", prefix(scope))
    }

    /// Allocates the family's next revision (CAS on a per-family counter).
    async fn next_revision(&self, scope: &Scope, family: &str) -> Result<i64, EcsError> {
        let key = Self::family_key(scope, family);
        loop {
            match self.get_json::<i64>(&key).await? {
                None => match self.store.create(&key, b"1").await {
                    Ok(_) => return Ok(1),
                    Err(StoreError::AlreadyExists { .. }) => continue,
                    Err(e) => return Err(store_err(e)),
                },
                Some((n, rev)) => match self.store.update(&key, (n + 1).to_string().as_bytes(), rev).await {
                    Ok(_) => return Ok(n + 1),
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(store_err(e)),
                },
            }
        }
    }

    pub async fn register_task_definition(&self, scope: &Scope, raw: Value) -> Result<TaskDefRecord, EcsError> {
        let valid: ValidTaskDefinition = validate_json(&raw)?;
        for c in raw["placementConstraints"].as_array().into_iter().flatten() {
            match (c["type"].as_str(), c["expression"].as_str()) {
                (Some("memberOf"), Some(e)) => crate::placement::validate_expression(e).map_err(EcsError::client)?,
                _ => {
                    return Err(EcsError::client(format!(
                        "Invalid placement constraint {c}: a task definition takes memberOf constraints with an expression."
                    )))
                }
            }
        }
        let tags: Vec<Tag> = match raw.get("tags") {
            Some(t) => {
                serde_json::from_value(t.clone()).map_err(|e| EcsError::invalid(format!("Invalid tags: {e}")))?
            }
            None => vec![],
        };
        let revision = self.next_revision(scope, &valid.family).await?;
        let mut def = raw;
        let obj = def
            .as_object_mut()
            .ok_or_else(|| EcsError::client("Task definition must be an object."))?;
        obj.remove("tags");
        obj.insert(
            "taskDefinitionArn".into(),
            json!(scope.task_definition_arn(&valid.family, revision)),
        );
        obj.insert("revision".into(), json!(revision));
        obj.insert("status".into(), json!("ACTIVE"));
        if let Some(cpu) = valid.cpu {
            obj.insert("cpu".into(), json!(cpu.to_string()));
        }
        if let Some(memory) = valid.memory {
            obj.insert("memory".into(), json!(memory.to_string()));
        }
        obj.insert("compatibilities".into(), json!(valid.compatibilities));
        obj.insert("requiresAttributes".into(), json!([]));
        obj.insert(
            "placementConstraints".into(),
            obj.get("placementConstraints").cloned().unwrap_or(json!([])),
        );
        obj.insert("volumes".into(), obj.get("volumes").cloned().unwrap_or(json!([])));
        obj.insert("registeredAt".into(), json!(self.now()));
        obj.insert(
            "registeredBy".into(),
            json!(format!("arn:aws:iam::{}:root", scope.account)),
        );
        if let Some(Value::Array(cs)) = obj.get_mut("containerDefinitions") {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                c.entry("cpu").or_insert(json!(0));
                c.entry("essential").or_insert(json!(true));
                for k in ["portMappings", "environment", "mountPoints", "volumesFrom"] {
                    c.entry(k).or_insert(json!([]));
                }
            }
        }
        let record = TaskDefRecord { definition: def, tags };
        let key = Self::taskdef_key(scope, &valid.family, revision);
        self.store
            .create(&key, &serde_json::to_vec(&record).expect("serialises"))
            .await
            .map_err(store_err)?;
        Ok(record)
    }

    /// `family` (latest ACTIVE), `family:revision` or an ARN.
    pub async fn task_definition(
        &self,
        scope: &Scope,
        reference: &str,
    ) -> Result<(TaskDefRecord, String, i64), EcsError> {
        let not_found = || EcsError::client("Unable to describe task definition.");
        let (family, rev) = task_definition_ref(reference).ok_or_else(not_found)?;
        let rec = match rev {
            Some(rev) => {
                let key = Self::taskdef_key(scope, &family, rev);
                self.get_json::<TaskDefRecord>(&key).await?.ok_or_else(not_found)?.0
            }
            // The family's latest ACTIVE revision, from the one listing of the family.
            None => self
                .list_json::<TaskDefRecord>(&format!("{}taskdefs/{family}/", prefix(scope)))
                .await?
                .into_iter()
                .rev()
                .map(|(_, r, _)| r)
                .find(|r| r.status() == "ACTIVE")
                .ok_or_else(not_found)?,
        };
        if rec.status() == "DELETE_IN_PROGRESS" {
            return Err(not_found());
        }
        let rev = rec.definition["revision"].as_i64().ok_or_else(not_found)?;
        Ok((rec, family, rev))
    }

    pub async fn list_task_definitions(
        &self,
        scope: &Scope,
        family_prefix: Option<&str>,
        status: Option<&str>,
        sort: Option<&str>,
        next_token: Option<&str>,
        max: Option<i64>,
    ) -> Result<(Vec<String>, Option<String>), EcsError> {
        let status = status.unwrap_or("ACTIVE");
        if !["ACTIVE", "INACTIVE", "DELETE_IN_PROGRESS"].contains(&status) {
            return Err(EcsError::invalid(
                "status must be ACTIVE, INACTIVE or DELETE_IN_PROGRESS.",
            ));
        }
        let desc = match sort.unwrap_or("ASC") {
            "ASC" => false,
            "DESC" => true,
            _ => return Err(EcsError::invalid("sort must be ASC or DESC.")),
        };
        let size = crate::page_size(max, 100)?;
        let start = match family_prefix {
            // Families are exact when a prefix is given to ListTaskDefinitions (ECS semantics).
            Some(f) => format!("{}taskdefs/{f}/", prefix(scope)),
            None => format!("{}taskdefs/", prefix(scope)),
        };
        let mut all = self.list_json::<TaskDefRecord>(&start).await?;
        all.retain(|(_, r, _)| r.status() == status);
        if desc {
            all.reverse();
        }
        if let Some(t) = next_token {
            let after = crate::decode_token(t)?;
            all.retain(|(k, _, _)| if desc { *k < after } else { *k > after });
        }
        let token = (all.len() > size).then(|| crate::encode_token(&all[size - 1].0));
        let arns = all
            .into_iter()
            .take(size)
            .filter_map(|(_, r, _)| r.definition["taskDefinitionArn"].as_str().map(str::to_string))
            .collect();
        Ok((arns, token))
    }

    pub async fn list_task_definition_families(
        &self,
        scope: &Scope,
        family_prefix: Option<&str>,
        status: Option<&str>,
        next_token: Option<&str>,
        max: Option<i64>,
    ) -> Result<(Vec<String>, Option<String>), EcsError> {
        let status = status.unwrap_or("ACTIVE");
        if !["ACTIVE", "INACTIVE", "ALL"].contains(&status) {
            return Err(EcsError::invalid("status must be ACTIVE, INACTIVE or ALL."));
        }
        let size = crate::page_size(max, 100)?;
        let all = self
            .list_json::<TaskDefRecord>(&format!("{}taskdefs/{}", prefix(scope), family_prefix.unwrap_or("")))
            .await?;
        let mut families: Vec<(String, bool)> = Vec::new();
        for (_, r, _) in &all {
            let fam = r.definition["family"].as_str().unwrap_or("").to_string();
            let active = r.status() == "ACTIVE";
            match families.iter_mut().find(|(f, _)| *f == fam) {
                Some(e) => e.1 |= active,
                None => families.push((fam, active)),
            }
        }
        families.retain(|(_, active)| match status {
            "ACTIVE" => *active,
            "INACTIVE" => !*active,
            _ => true,
        });
        if let Some(t) = next_token {
            let after = crate::decode_token(t)?;
            families.retain(|(f, _)| *f > after);
        }
        let token = (families.len() > size).then(|| crate::encode_token(&families[size - 1].0));
        Ok((families.into_iter().take(size).map(|(f, _)| f).collect(), token))
    }

    async fn set_taskdef_status(
        &self,
        scope: &Scope,
        reference: &str,
        status: &str,
        at_field: &str,
    ) -> Result<TaskDefRecord, EcsError> {
        let (family, rev) =
            task_definition_ref(reference).ok_or_else(|| EcsError::client("Unable to describe task definition."))?;
        let rev =
            rev.ok_or_else(|| EcsError::client("A revision is required: use family:revision or the full ARN."))?;
        let now = self.now();
        self.update_json(&Self::taskdef_key(scope, &family, rev), |rec: &mut TaskDefRecord| {
            if status == "DELETE_IN_PROGRESS" && rec.status() == "ACTIVE" {
                return Err(EcsError::client("The specified task definition is still in ACTIVE status. Please deregister the target and try again."));
            }
            rec.definition["status"] = json!(status);
            rec.definition[at_field] = json!(now);
            Ok(true)
        })
        .await?
        .ok_or_else(|| EcsError::client("Unable to describe task definition."))
    }

    pub async fn deregister_task_definition(&self, scope: &Scope, reference: &str) -> Result<TaskDefRecord, EcsError> {
        self.set_taskdef_status(scope, reference, "INACTIVE", "deregisteredAt")
            .await
    }

    pub async fn delete_task_definitions(
        &self,
        scope: &Scope,
        refs: &[String],
    ) -> Result<(Vec<TaskDefRecord>, Vec<Failure>), EcsError> {
        if refs.is_empty() || refs.len() > 10 {
            return Err(EcsError::invalid("taskDefinitions must list 1 to 10 task definitions."));
        }
        let (mut ok, mut failures) = (Vec::new(), Vec::new());
        for r in refs {
            match self
                .set_taskdef_status(scope, r, "DELETE_IN_PROGRESS", "deleteRequestedAt")
                .await
            {
                Ok(rec) => ok.push(rec),
                Err(EcsError::Server(m)) => return Err(EcsError::Server(m)),
                Err(e) => failures.push(Failure {
                    arn: Some(r.clone()),
                    reason: Some(e.to_string()),
                    detail: None,
                }),
            }
        }
        Ok((ok, failures))
    }

    pub async fn set_taskdef_tags(
        &self,
        scope: &Scope,
        reference: &str,
        f: impl Fn(&mut Vec<Tag>),
    ) -> Result<(), EcsError> {
        let (_, family, rev) = self.task_definition(scope, reference).await?;
        self.update_json(&Self::taskdef_key(scope, &family, rev), |rec: &mut TaskDefRecord| {
            f(&mut rec.tags);
            Ok(true)
        })
        .await?
        .map(|_| ())
        .ok_or_else(|| EcsError::ResourceNotFound("The specified task definition is not found.".into()))
    }
}
