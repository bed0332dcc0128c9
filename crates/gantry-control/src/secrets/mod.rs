//! AWS Secrets Manager: secrets with versions and staging labels (AWSCURRENT, AWSPREVIOUS,
//! AWSPENDING, your own), values sealed at rest (`seal.rs`), scheduled deletion with a
//! recovery window, restore, tags and resource policies.
//!
//! Store layout: `/secretsmanager/<account>/<region>/<hex of the name>`, one record per secret
//! holding its versions. Values never appear in a record in plaintext.

pub mod seal;

use crate::records::{RecordError, Records};
use crate::{random_hex, Clock};
use base64::Engine as _;
use gantry_store::Store;
use gantry_types::arn::Scope;
use seal::{Sealed, Sealer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

pub const PREFIX: &str = "/secretsmanager/";
pub const CURRENT: &str = "AWSCURRENT";
pub const PREVIOUS: &str = "AWSPREVIOUS";
const MAX_VALUE: usize = 65_536;
const MAX_VERSIONS: usize = 100;
const MAX_STAGES: usize = 20;
const MAX_TAGS: usize = 50;
const DAY: f64 = 86_400.0;

/// A Secrets Manager error: the model's error shape and the message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SecretsError {
    pub shape: &'static str,
    pub message: String,
}

impl SecretsError {
    pub fn new(shape: &'static str, message: impl Into<String>) -> SecretsError {
        SecretsError {
            shape,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> SecretsError {
        SecretsError::new("InvalidParameterException", message)
    }
    fn request(message: impl Into<String>) -> SecretsError {
        SecretsError::new("InvalidRequestException", message)
    }
    fn not_found() -> SecretsError {
        SecretsError::new(
            "ResourceNotFoundException",
            "Secrets Manager can't find the specified secret.",
        )
    }
    fn not_found_version() -> SecretsError {
        SecretsError::new(
            "ResourceNotFoundException",
            "Secrets Manager can't find the specified secret value for the version or staging label.",
        )
    }
}

impl From<RecordError> for SecretsError {
    fn from(e: RecordError) -> SecretsError {
        SecretsError::new("InternalServiceError", e.to_string())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// A value as given: text or bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Binary(Vec<u8>),
}

impl Value {
    fn bytes(&self) -> &[u8] {
        match self {
            Value::Text(s) => s.as_bytes(),
            Value::Binary(b) => b,
        }
    }
}

/// One version: its labels and its sealed value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Version {
    pub created: f64,
    #[serde(default)]
    pub stages: Vec<String>,
    pub binary: bool,
    pub sealed: Sealed,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_accessed: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Secret {
    pub arn: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub kms_key_id: Option<String>,
    pub created: f64,
    pub last_changed: f64,
    #[serde(default)]
    pub last_accessed: Option<f64>,
    /// When a scheduled deletion happens.
    #[serde(default)]
    pub deletion_date: Option<f64>,
    #[serde(default)]
    pub versions: BTreeMap<String, Version>,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(default)]
    pub resource_policy: Option<String>,
}

impl Secret {
    /// The version holding `stage`.
    pub fn staged(&self, stage: &str) -> Option<(&String, &Version)> {
        self.versions.iter().find(|(_, v)| v.stages.iter().any(|s| s == stage))
    }

    pub fn version_stages(&self) -> BTreeMap<String, Vec<String>> {
        self.versions
            .iter()
            .filter(|(_, v)| !v.stages.is_empty())
            .map(|(id, v)| (id.clone(), v.stages.clone()))
            .collect()
    }

    /// Moves `stage` to `to` (from wherever it was); AWSCURRENT moving leaves AWSPREVIOUS on
    /// the version it left.
    fn move_stage(&mut self, stage: &str, to: &str) {
        let from = self.staged(stage).map(|(id, _)| id.clone());
        if from.as_deref() == Some(to) {
            return;
        }
        for v in self.versions.values_mut() {
            v.stages.retain(|s| s != stage);
        }
        if stage == CURRENT {
            if let Some(from) = from {
                for v in self.versions.values_mut() {
                    v.stages.retain(|s| s != PREVIOUS);
                }
                if let Some(v) = self.versions.get_mut(&from) {
                    v.stages.push(PREVIOUS.into());
                }
            }
        }
        if let Some(v) = self.versions.get_mut(to) {
            v.stages.push(stage.into());
        }
    }

    /// Drops the oldest versions without a label beyond MAX_VERSIONS.
    fn prune(&mut self) {
        while self.versions.len() > MAX_VERSIONS {
            let oldest = self
                .versions
                .iter()
                .filter(|(_, v)| v.stages.is_empty())
                .min_by(|a, b| a.1.created.total_cmp(&b.1.created))
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => self.versions.remove(&id),
                None => return,
            };
        }
    }
}

/// A secret's name as Secrets Manager allows it.
pub fn check_name(name: &str) -> Result<(), SecretsError> {
    let ok = !name.is_empty()
        && name.len() <= 512
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(SecretsError::invalid(format!(
            "Invalid name. Must be a valid name containing alphanumeric characters, or any of the following: -/_+=.@! ({name:?})"
        )))
    }
}

fn check_value(v: &Value) -> Result<(), SecretsError> {
    if v.bytes().len() > MAX_VALUE {
        return Err(SecretsError::invalid(format!(
            "The secret value is larger than the {MAX_VALUE} bytes Secrets Manager stores."
        )));
    }
    Ok(())
}

fn check_stage(s: &str) -> Result<(), SecretsError> {
    if s.is_empty() || s.len() > 256 {
        return Err(SecretsError::invalid(format!("Invalid staging label {s:?}.")));
    }
    Ok(())
}

fn check_token(t: &str) -> Result<(), SecretsError> {
    if !(32..=64).contains(&t.len()) {
        return Err(SecretsError::invalid(
            "ClientRequestToken must be 32 to 64 characters long.",
        ));
    }
    Ok(())
}

fn check_tags(tags: &[Tag]) -> Result<(), SecretsError> {
    if tags.len() > MAX_TAGS {
        return Err(SecretsError::new(
            "LimitExceededException",
            format!("A secret can have at most {MAX_TAGS} tags."),
        ));
    }
    for t in tags {
        if t.key.is_empty() || t.key.len() > 128 || t.value.len() > 256 || t.key.starts_with("aws:") {
            return Err(SecretsError::invalid(format!("Invalid tag key or value: {:?}.", t.key)));
        }
    }
    Ok(())
}

/// A new version id: a UUID, as Secrets Manager makes them.
fn version_id(token: Option<&str>) -> String {
    token.map(str::to_string).unwrap_or_else(crate::random_uuid)
}

/// The six random letters Secrets Manager appends to a secret's ARN.
fn arn_suffix() -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let hex = random_hex(6);
    (0..6)
        .map(|i| {
            let byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
            char::from(LETTERS[byte as usize % LETTERS.len()])
        })
        .collect()
}

/// How a request names a secret: its name, its ARN, or its ARN without the random suffix.
pub fn matches(secret: &Secret, id: &str) -> bool {
    if !id.starts_with("arn:") {
        return secret.name == id;
    }
    id == secret.arn || secret.arn.rsplit_once('-').map(|(partial, _)| partial) == Some(id)
}

#[derive(Clone)]
pub struct SecretsManager {
    records: Records,
    clock: Arc<dyn Clock>,
    sealer: Arc<Sealer>,
}

/// What a new value comes with: the version's id token and its labels.
pub struct NewValue {
    pub value: Value,
    pub token: Option<String>,
    pub stages: Option<Vec<String>>,
}

impl SecretsManager {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, sealer: Arc<Sealer>) -> SecretsManager {
        SecretsManager {
            records: Records::new(store),
            clock,
            sealer,
        }
    }

    fn now(&self) -> f64 {
        self.clock.now_ms() as f64 / 1000.0
    }

    fn prefix(scope: &Scope) -> String {
        format!("{PREFIX}{}/{}/", scope.account, scope.region)
    }

    fn key(scope: &Scope, name: &str) -> String {
        format!("{}{}", Self::prefix(scope), crate::records::hex_key(name))
    }

    /// Every secret of the scope, scheduled deletions past their date left out.
    pub async fn all(&self, scope: &Scope) -> Result<Vec<Secret>, SecretsError> {
        let now = self.now();
        let mut all: Vec<Secret> = self.records.list(&Self::prefix(scope)).await?;
        all.retain(|s| s.deletion_date.is_none_or(|d| d > now));
        Ok(all)
    }

    /// The secret `id` names (name, ARN or partial ARN).
    pub async fn find(&self, scope: &Scope, id: &str) -> Result<Secret, SecretsError> {
        if !id.starts_with("arn:") {
            check_name(id).map_err(|_| SecretsError::not_found())?;
            let now = self.now();
            return match self.records.load::<Secret>(&Self::key(scope, id)).await? {
                Some((s, _)) if s.deletion_date.is_none_or(|d| d > now) => Ok(s),
                _ => Err(SecretsError::not_found()),
            };
        }
        self.all(scope)
            .await?
            .into_iter()
            .find(|s| matches(s, id))
            .ok_or_else(SecretsError::not_found)
    }

    /// Read-modify-write of the secret `id` names.
    async fn change<R>(
        &self,
        scope: &Scope,
        id: &str,
        mut f: impl FnMut(&mut Secret) -> Result<R, SecretsError>,
    ) -> Result<(Secret, R), SecretsError> {
        let name = self.find(scope, id).await?.name;
        self.records
            .update(&Self::key(scope, &name), |cur: Option<Secret>| {
                let mut s = cur.ok_or_else(SecretsError::not_found)?;
                let out = f(&mut s)?;
                Ok((Some(s.clone()), (s, out)))
            })
            .await
    }

    fn seal(&self, arn: &str, version: &str, v: &Value) -> Sealed {
        self.sealer.seal(v.bytes(), &format!("{arn}\n{version}"))
    }

    /// A version's value, opened.
    pub fn open(&self, s: &Secret, version: &str) -> Result<Value, SecretsError> {
        let v = s.versions.get(version).ok_or_else(SecretsError::not_found_version)?;
        let plain = self
            .sealer
            .open(&v.sealed, &format!("{}\n{version}", s.arn))
            .map_err(|e| SecretsError::new("DecryptionFailure", e.to_string()))?;
        Ok(if v.binary {
            Value::Binary(plain)
        } else {
            Value::Text(String::from_utf8(plain).map_err(|_| SecretsError::new("DecryptionFailure", "not text"))?)
        })
    }

    pub async fn create(
        &self,
        scope: &Scope,
        name: &str,
        description: Option<String>,
        kms_key_id: Option<String>,
        value: Option<NewValue>,
        tags: Vec<Tag>,
    ) -> Result<(Secret, Option<String>), SecretsError> {
        check_name(name)?;
        check_tags(&tags)?;
        if let Some(v) = &value {
            check_value(&v.value)?;
            if let Some(t) = &v.token {
                check_token(t)?;
            }
        }
        let now = self.now();
        let arn = format!(
            "arn:aws:secretsmanager:{}:{}:secret:{name}-{}",
            scope.region,
            scope.account,
            arn_suffix()
        );
        let mut secret = Secret {
            arn,
            name: name.into(),
            description,
            kms_key_id,
            created: now,
            last_changed: now,
            last_accessed: None,
            deletion_date: None,
            versions: BTreeMap::new(),
            tags,
            resource_policy: None,
        };
        let version = value.map(|v| {
            let id = version_id(v.token.as_deref());
            let sealed = self.seal(&secret.arn, &id, &v.value);
            let binary = matches!(v.value, Value::Binary(_));
            secret.versions.insert(
                id.clone(),
                Version {
                    created: now,
                    stages: vec![CURRENT.into()],
                    binary,
                    sealed,
                    last_accessed: None,
                },
            );
            id
        });
        let key = Self::key(scope, name);
        let created = self
            .records
            .update(&key, |cur: Option<Secret>| match cur {
                // A secret past its deletion date is gone: the name is free again.
                Some(old) if old.deletion_date.is_none_or(|d| d > now) => Err(SecretsError::new(
                    "ResourceExistsException",
                    if old.deletion_date.is_some() {
                        format!("You can't create this secret because a secret with this name is already scheduled for deletion. ({name})")
                    } else {
                        format!("The operation failed because the secret {name} already exists.")
                    },
                )),
                _ => Ok((Some(secret.clone()), ())),
            })
            .await;
        created?;
        Ok((secret, version))
    }

    /// A new version (PutSecretValue, UpdateSecret with a value). Idempotent on its token:
    /// the same token and value again changes nothing; the same token with another value is
    /// refused.
    pub async fn put_value(&self, scope: &Scope, id: &str, v: NewValue) -> Result<(Secret, String), SecretsError> {
        check_value(&v.value)?;
        if let Some(t) = &v.token {
            check_token(t)?;
        }
        let stages = v.stages.clone().unwrap_or_else(|| vec![CURRENT.into()]);
        if stages.len() > MAX_STAGES {
            return Err(SecretsError::new(
                "LimitExceededException",
                format!("A version can have at most {MAX_STAGES} staging labels."),
            ));
        }
        stages.iter().try_for_each(|s| check_stage(s))?;
        let vid = version_id(v.token.as_deref());
        let now = self.now();
        let current = self.find(scope, id).await?;
        if current.deletion_date.is_some() {
            return Err(marked_for_deletion());
        }
        let sealed = self.seal(&current.arn, &vid, &v.value);
        let (s, ()) = self
            .change(scope, id, |s| {
                if s.deletion_date.is_some() {
                    return Err(marked_for_deletion());
                }
                if s.versions.contains_key(&vid) {
                    let same = self.open(s, &vid).is_ok_and(|old| old == v.value);
                    return if same {
                        Ok(())
                    } else {
                        Err(SecretsError::new(
                            "ResourceExistsException",
                            format!("A version with this ClientRequestToken already exists with another value: {vid}."),
                        ))
                    };
                }
                s.versions.insert(
                    vid.clone(),
                    Version {
                        created: now,
                        stages: vec![],
                        binary: matches!(v.value, Value::Binary(_)),
                        sealed: sealed.clone(),
                        last_accessed: None,
                    },
                );
                for stage in &stages {
                    s.move_stage(stage, &vid);
                }
                s.last_changed = now;
                s.prune();
                Ok(())
            })
            .await?;
        Ok((s, vid))
    }

    /// GetSecretValue: the version by id or by label (AWSCURRENT by default), recording the
    /// day it was last read.
    pub async fn get_value(
        &self,
        scope: &Scope,
        id: &str,
        version_id: Option<&str>,
        stage: Option<&str>,
    ) -> Result<(Secret, String, Value), SecretsError> {
        let s = self.find(scope, id).await?;
        if s.deletion_date.is_some() {
            return Err(marked_for_deletion());
        }
        let vid = match (version_id, stage) {
            (Some(v), Some(st)) => {
                let ok = s.versions.get(v).is_some_and(|x| x.stages.iter().any(|l| l == st));
                if !ok {
                    return Err(SecretsError::not_found_version());
                }
                v.to_string()
            }
            (Some(v), None) => v.to_string(),
            (None, st) => s
                .staged(st.unwrap_or(CURRENT))
                .map(|(id, _)| id.clone())
                .ok_or_else(SecretsError::not_found_version)?,
        };
        let value = self.open(&s, &vid)?;
        let today = (self.now() / DAY).floor() * DAY;
        if s.last_accessed != Some(today) {
            let (s, ()) = self
                .change(scope, &s.arn, |s| {
                    s.last_accessed = Some(today);
                    if let Some(v) = s.versions.get_mut(&vid) {
                        v.last_accessed = Some(today);
                    }
                    Ok(())
                })
                .await?;
            return Ok((s, vid, value));
        }
        Ok((s, vid, value))
    }

    pub async fn update_meta(
        &self,
        scope: &Scope,
        id: &str,
        description: Option<String>,
        kms_key_id: Option<String>,
    ) -> Result<Secret, SecretsError> {
        let now = self.now();
        let (s, ()) = self
            .change(scope, id, |s| {
                if s.deletion_date.is_some() {
                    return Err(marked_for_deletion());
                }
                if let Some(d) = &description {
                    s.description = Some(d.clone());
                }
                if let Some(k) = &kms_key_id {
                    s.kms_key_id = Some(k.clone());
                }
                s.last_changed = now;
                Ok(())
            })
            .await?;
        Ok(s)
    }

    /// DeleteSecret: scheduled after a recovery window of 7 to 30 days (30 by default), or at
    /// once when forced.
    pub async fn delete(
        &self,
        scope: &Scope,
        id: &str,
        window_days: Option<i64>,
        force: bool,
    ) -> Result<(Secret, f64), SecretsError> {
        if force && window_days.is_some() {
            return Err(SecretsError::invalid(
                "You can't use ForceDeleteWithoutRecovery in conjunction with RecoveryWindowInDays.",
            ));
        }
        let days = window_days.unwrap_or(30);
        if !(7..=30).contains(&days) {
            return Err(SecretsError::invalid(
                "The RecoveryWindowInDays value must be between 7 and 30 days (inclusive).",
            ));
        }
        let now = self.now();
        let s = self.find(scope, id).await?;
        if force {
            self.records.delete(&Self::key(scope, &s.name)).await?;
            return Ok((s, now));
        }
        if s.deletion_date.is_some() {
            return Err(marked_for_deletion());
        }
        let when = now + days as f64 * DAY;
        let (s, ()) = self
            .change(scope, id, |s| {
                s.deletion_date = Some(when);
                Ok(())
            })
            .await?;
        Ok((s, when))
    }

    pub async fn restore(&self, scope: &Scope, id: &str) -> Result<Secret, SecretsError> {
        let (s, ()) = self
            .change(scope, id, |s| {
                s.deletion_date = None;
                Ok(())
            })
            .await?;
        Ok(s)
    }

    /// UpdateSecretVersionStage: moves (or removes) one label.
    pub async fn move_stage(
        &self,
        scope: &Scope,
        id: &str,
        stage: &str,
        remove_from: Option<&str>,
        move_to: Option<&str>,
    ) -> Result<Secret, SecretsError> {
        check_stage(stage)?;
        let now = self.now();
        let (s, ()) = self
            .change(scope, id, |s| {
                let holder = s.staged(stage).map(|(id, _)| id.clone());
                if holder.is_some() && holder.as_deref() != remove_from && holder.as_deref() != move_to {
                    return Err(SecretsError::invalid(format!(
                        "The staging label {stage} is currently attached to version {}, so you must explicitly reference that version in RemoveFromVersionId.",
                        holder.unwrap_or_default()
                    )));
                }
                match move_to {
                    Some(to) => {
                        if !s.versions.contains_key(to) {
                            return Err(SecretsError::not_found_version());
                        }
                        s.move_stage(stage, to);
                    }
                    None => {
                        if stage == CURRENT {
                            return Err(SecretsError::invalid("You can't remove AWSCURRENT from a version without moving it to another."));
                        }
                        for v in s.versions.values_mut() {
                            v.stages.retain(|l| l != stage);
                        }
                    }
                }
                s.last_changed = now;
                Ok(())
            })
            .await?;
        Ok(s)
    }

    pub async fn tag(&self, scope: &Scope, id: &str, tags: Vec<Tag>) -> Result<(), SecretsError> {
        self.change(scope, id, |s| {
            for t in &tags {
                s.tags.retain(|x| x.key != t.key);
                s.tags.push(t.clone());
            }
            check_tags(&s.tags)
        })
        .await
        .map(drop)
    }

    pub async fn untag(&self, scope: &Scope, id: &str, keys: &[String]) -> Result<(), SecretsError> {
        self.change(scope, id, |s| {
            s.tags.retain(|t| !keys.contains(&t.key));
            Ok(())
        })
        .await
        .map(drop)
    }

    /// A secret's resource policy (None: removed), evaluated with the caller's own policies
    /// on every request for the secret (`iam::authorize_with`). With `block_public`, a policy
    /// that allows everyone (`"*"` as principal) is refused, as Secrets Manager's
    /// BlockPublicPolicy refuses it.
    pub async fn set_policy(
        &self,
        scope: &Scope,
        id: &str,
        policy: Option<String>,
        block_public: bool,
    ) -> Result<Secret, SecretsError> {
        if let Some(p) = &policy {
            check_resource_policy(p, block_public)?;
        }
        let (s, ()) = self
            .change(scope, id, |s| {
                s.resource_policy = policy.clone();
                Ok(())
            })
            .await?;
        Ok(s)
    }
}

/// Removes secrets whose recovery window has passed, in every account (the leader's
/// housekeeping; no key needed). Until then reads treat them as gone already.
pub async fn purge_deleted(store: Arc<dyn Store>, now_ms: i64) -> Result<usize, SecretsError> {
    let records = Records::new(store);
    let now = now_ms as f64 / 1000.0;
    let all: Vec<Secret> = records.list(PREFIX).await?;
    let mut n = 0;
    for s in all.iter().filter(|s| s.deletion_date.is_some_and(|d| d <= now)) {
        let Some(scope) = scope_of(&s.arn) else { continue };
        records.delete(&SecretsManager::key(&scope, &s.name)).await?;
        n += 1;
    }
    Ok(n)
}

fn marked_for_deletion() -> SecretsError {
    SecretsError::request("You can't perform this operation on the secret because it was marked for deletion.")
}

/// The account and region of a secret's ARN.
pub fn scope_of(arn: &str) -> Option<Scope> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    (parts.len() == 6).then(|| Scope {
        region: parts[3].to_string(),
        account: parts[4].to_string(),
    })
}

/// Decodes a SecretBinary member (base64 on the JSON wire).
pub fn binary(b64: &str) -> Result<Vec<u8>, SecretsError> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| SecretsError::invalid("SecretBinary is not valid base64."))
}

/// Why a task's secrets could not be read, in ECS's words (the task stops with
/// TaskFailedToStart and this reason).
fn retrieval_failed(detail: String) -> String {
    format!("ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval failed: {detail}")
}

/// Whether the reader may do `action` on the resource ARN `arn` (IAM's denial otherwise).
/// Whether the reader may do an action on a resource (its ARN), given the resource's own
/// policy, if it has one.
pub type Authorize<'a> = &'a (dyn Fn(&str, &str, Option<&str>) -> Result<(), String> + Send + Sync);

/// The value a container secret's `valueFrom` names, read as the task's account (`scope`)
/// and with the permissions `authorize` checks (the task's execution role's): a secret
/// (AWSCURRENT unless a stage or version is given; one key of its JSON when asked) or a
/// parameter (decrypted).
pub async fn resolve(
    sm: &SecretsManager,
    ps: &crate::parameters::ParameterStore,
    scope: &Scope,
    value_from: &str,
    authorize: Authorize<'_>,
) -> Result<String, String> {
    use gantry_types::taskdef::SecretSource;
    match SecretSource::parse(value_from).map_err(retrieval_failed)? {
        SecretSource::SecretsManager {
            secret_arn,
            json_key,
            version_stage,
            version_id,
        } => {
            let fail = |e: String| {
                retrieval_failed(format!(
                    "unable to retrieve secret from asm: service call has been retried 1 time(s): failed to fetch secret {secret_arn} from secrets manager: {e}"
                ))
            };
            // Only the task's own account and region (no cross-account resource policies).
            let owner = scope_of(&secret_arn);
            if owner.as_ref() != Some(scope) {
                return Err(fail(
                    "ResourceNotFoundException: Secrets Manager can't find the specified secret.".into(),
                ));
            }
            let secret = sm
                .find(scope, &secret_arn)
                .await
                .map_err(|e| fail(format!("{}: {}", e.shape, e.message)))?;
            authorize(
                "secretsmanager:GetSecretValue",
                &secret.arn,
                secret.resource_policy.as_deref(),
            )
            .map_err(|m| fail(format!("AccessDeniedException: {m}")))?;
            let (_, _, value) = sm
                .get_value(scope, &secret_arn, version_id.as_deref(), version_stage.as_deref())
                .await
                .map_err(|e| fail(format!("{}: {}", e.shape, e.message)))?;
            let text = match value {
                Value::Text(t) => t,
                Value::Binary(_) => return Err(fail("the secret is binary; container secrets take text".into())),
            };
            match json_key {
                None => Ok(text),
                Some(key) => {
                    let doc: serde_json::Value = serde_json::from_str(&text)
                        .map_err(|_| fail(format!("the secret is not a JSON object, so it has no key {key}")))?;
                    match doc.get(&key) {
                        Some(serde_json::Value::String(s)) => Ok(s.clone()),
                        Some(other) => Ok(other.to_string()),
                        None => Err(fail(format!(
                            "retrieved secret from Secrets Manager did not contain json key {key}"
                        ))),
                    }
                }
            }
        }
        SecretSource::Parameter(name) => {
            let fail = || {
                retrieval_failed(format!(
                    "unable to retrieve secrets from ssm: service call has been retried 1 time(s): invalid ssm parameters: {name}"
                ))
            };
            let bare = crate::parameters::ParameterStore::name_of(scope, &name).map_err(|_| fail())?;
            let arn = crate::parameters::ParameterStore::arn(scope, &bare);
            authorize("ssm:GetParameters", &arn, None).map_err(|m| {
                retrieval_failed(format!(
                    "unable to retrieve secrets from ssm: service call has been retried 1 time(s): AccessDeniedException: {m}"
                ))
            })?;
            let p = ps.locate(scope, &name).await.map_err(|_| fail())?;
            ps.open(&p, p.current()).map_err(|_| fail())
        }
    }
}

/// A resource policy as Secrets Manager takes it: a policy document of at most 20,480
/// characters whose every statement names its principals.
fn check_resource_policy(p: &str, block_public: bool) -> Result<(), SecretsError> {
    let malformed = |m: String| SecretsError::new("MalformedPolicyDocumentException", m);
    if p.len() > 20_480 {
        return Err(malformed(
            "A resource policy may have at most 20,480 characters.".into(),
        ));
    }
    let parsed = gantry_policy::Policy::parse(p).map_err(|e| malformed(e.0))?;
    if !parsed.every_statement_has_principal() {
        return Err(malformed(
            "Every statement of a resource policy must name its Principal.".into(),
        ));
    }
    let doc: serde_json::Value = serde_json::from_str(p).map_err(|e| malformed(e.to_string()))?;
    let statements = match &doc["Statement"] {
        serde_json::Value::Array(a) => a.clone(),
        one => vec![one.clone()],
    };
    let public = statements.iter().any(|s| {
        s["Effect"] == "Allow"
            && (s["Principal"] == "*"
                || s["Principal"]["AWS"] == "*"
                || s["Principal"]["AWS"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == "*")))
    });
    if block_public && public {
        return Err(SecretsError::new(
            "PublicPolicyException",
            "The BlockPublicPolicy parameter is set to true, and the resource policy did not prevent broad access to the secret.",
        ));
    }
    Ok(())
}
