//! AWS Systems Manager Parameter Store: String, StringList and SecureString parameters in a
//! '/' hierarchy, with versions (up to 100), labels, allowed patterns and tags. Every value is
//! sealed at rest with the secrets key (SecureString or not: the store never holds a value in
//! plaintext), bound to the parameter's ARN and version.
//!
//! Store layout: `/ssm/<account>/<region>/<hex of the name>`, one record per parameter.

use crate::records::{RecordError, Records};
use crate::secrets::seal::{Sealed, Sealer};
use crate::Clock;
use gantry_store::Store;
use gantry_types::arn::Scope;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub const PREFIX: &str = "/ssm/";
const MAX_VERSIONS: usize = 100;
const MAX_LABELS: usize = 10;
const MAX_DEPTH: usize = 15;
const MAX_TAGS: usize = 50;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ParameterError {
    pub shape: &'static str,
    pub message: String,
}

impl ParameterError {
    pub fn new(shape: &'static str, message: impl Into<String>) -> ParameterError {
        ParameterError {
            shape,
            message: message.into(),
        }
    }
    pub fn validation(message: impl Into<String>) -> ParameterError {
        ParameterError::new("ValidationException", message)
    }
    fn not_found(name: &str) -> ParameterError {
        ParameterError::new("ParameterNotFound", format!("Parameter {name} not found."))
    }
}

impl From<RecordError> for ParameterError {
    fn from(e: RecordError) -> ParameterError {
        ParameterError::new("InternalServerError", e.to_string())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// One version of a parameter, as PutParameter left it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PVersion {
    pub version: i64,
    pub kind: String,
    pub sealed: Sealed,
    pub modified: f64,
    pub user: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub allowed_pattern: Option<String>,
    #[serde(default)]
    pub key_id: Option<String>,
    pub tier: String,
    pub data_type: String,
    #[serde(default)]
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Parameter {
    pub name: String,
    pub arn: String,
    pub versions: Vec<PVersion>,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

impl Parameter {
    pub fn current(&self) -> &PVersion {
        self.versions.last().expect("a parameter has a version")
    }

    /// The version a selector names: `name:3` (a version) or `name:label`.
    pub fn select(&self, selector: Option<&str>) -> Option<&PVersion> {
        match selector {
            None => Some(self.current()),
            Some(s) => match s.parse::<i64>() {
                Ok(n) => self.versions.iter().find(|v| v.version == n),
                Err(_) => self.versions.iter().find(|v| v.labels.iter().any(|l| l == s)),
            },
        }
    }
}

/// What PutParameter asks for.
#[derive(Debug, Clone, Default)]
pub struct Put {
    pub name: String,
    pub value: String,
    pub kind: Option<String>,
    pub description: Option<String>,
    pub key_id: Option<String>,
    pub overwrite: bool,
    pub allowed_pattern: Option<String>,
    pub tags: Vec<Tag>,
    pub tier: Option<String>,
    pub data_type: Option<String>,
}

/// A name as Parameter Store allows it: letters, digits, `.-_/`; with '/', a leading one and
/// at most 15 levels; not starting with aws or ssm.
pub fn check_name(name: &str) -> Result<(), ParameterError> {
    let chars = name.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
    if name.is_empty() || name.len() > 1011 || !chars {
        return Err(ParameterError::validation(format!(
            "Parameter name: can't be prefixed with \"aws\" or \"ssm\" (case-insensitive), and must contain only letters, numbers and the symbols .-_/ ({name:?})."
        )));
    }
    let first = name
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_lowercase();
    if first.starts_with("aws") || first.starts_with("ssm") {
        return Err(ParameterError::validation(
            "Parameter name: can't be prefixed with \"aws\" or \"ssm\" (case-insensitive).",
        ));
    }
    if name.contains('/') && !name.starts_with('/') {
        return Err(ParameterError::validation(
            "Parameter name must be a fully qualified name: a name with '/' begins with '/'.",
        ));
    }
    if name.split('/').filter(|s| !s.is_empty()).count() > MAX_DEPTH {
        return Err(ParameterError::new(
            "HierarchyLevelLimitExceededException",
            format!("A parameter name can have at most {MAX_DEPTH} levels."),
        ));
    }
    if name.ends_with('/') || name.contains("//") {
        return Err(ParameterError::validation(format!(
            "Parameter name {name:?} has an empty level."
        )));
    }
    Ok(())
}

/// A name or ARN with an optional `:selector`, split.
pub fn split_selector(id: &str) -> (&str, Option<&str>) {
    let tail = id.rsplit_once('/').map(|(_, t)| t).unwrap_or(id);
    match tail.rsplit_once(':') {
        Some((_, sel)) => (&id[..id.len() - sel.len() - 1], Some(sel)),
        None => (id, None),
    }
}

#[derive(Clone)]
pub struct ParameterStore {
    records: Records,
    clock: Arc<dyn Clock>,
    sealer: Arc<Sealer>,
}

impl ParameterStore {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, sealer: Arc<Sealer>) -> ParameterStore {
        ParameterStore {
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

    pub fn arn(scope: &Scope, name: &str) -> String {
        format!(
            "arn:aws:ssm:{}:{}:parameter/{}",
            scope.region,
            scope.account,
            name.trim_start_matches('/')
        )
    }

    /// The plain name a name or ARN gives (an ARN of another account or region is not found).
    pub fn name_of(scope: &Scope, id: &str) -> Result<String, ParameterError> {
        let Some(rest) = id.strip_prefix("arn:") else {
            return Ok(id.to_string());
        };
        let prefix = format!("aws:ssm:{}:{}:parameter", scope.region, scope.account);
        let path = rest
            .strip_prefix(&prefix)
            .ok_or_else(|| ParameterError::not_found(id))?;
        // parameter/a/b is "/a/b" when a hierarchy, "a" alone otherwise.
        let bare = path.trim_start_matches('/');
        Ok(if bare.contains('/') {
            format!("/{bare}")
        } else {
            bare.to_string()
        })
    }

    pub async fn all(&self, scope: &Scope) -> Result<Vec<Parameter>, ParameterError> {
        Ok(self.records.list(&Self::prefix(scope)).await?)
    }

    pub async fn find(&self, scope: &Scope, name: &str) -> Result<Parameter, ParameterError> {
        if check_name(name).is_err() {
            return Err(ParameterError::not_found(name));
        }
        match self.records.load::<Parameter>(&Self::key(scope, name)).await? {
            Some((p, _)) => Ok(p),
            None => Err(ParameterError::not_found(name)),
        }
    }

    /// The parameter a name or ARN names. An ARN of a one-level name (`parameter/x`) is the
    /// parameter `x`, or `/x` when only that exists.
    pub async fn locate(&self, scope: &Scope, id: &str) -> Result<Parameter, ParameterError> {
        let name = Self::name_of(scope, id)?;
        match self.find(scope, &name).await {
            Err(e) if id.starts_with("arn:") && !name.contains('/') => {
                self.find(scope, &format!("/{name}")).await.map_err(|_| e)
            }
            r => r,
        }
    }

    /// A version's value, opened.
    pub fn open(&self, p: &Parameter, v: &PVersion) -> Result<String, ParameterError> {
        let plain = self
            .sealer
            .open(&v.sealed, &format!("{}\n{}", p.arn, v.version))
            .map_err(|e| ParameterError::new("InternalServerError", e.to_string()))?;
        String::from_utf8(plain).map_err(|_| ParameterError::new("InternalServerError", "a value is not text"))
    }

    /// The stored form of a SecureString read without decryption: its ciphertext.
    pub fn ciphertext(v: &PVersion) -> String {
        v.sealed.ciphertext.clone()
    }

    /// PutParameter: a new parameter, or (with Overwrite) a new version of one.
    pub async fn put(&self, scope: &Scope, user: &str, req: Put) -> Result<(i64, String), ParameterError> {
        check_name(&req.name)?;
        check(&req)?;
        let now = self.now();
        let arn = Self::arn(scope, &req.name);
        let name = req.name.clone();
        self.records
            .update(&Self::key(scope, &name), |cur: Option<Parameter>| {
                let mut p = match cur {
                    Some(_) if !req.overwrite => {
                        return Err(ParameterError::new(
                            "ParameterAlreadyExists",
                            "The parameter already exists. To overwrite this value, set the overwrite option in the request to true.",
                        ))
                    }
                    Some(p) => {
                        if !req.tags.is_empty() {
                            return Err(ParameterError::validation(
                                "Tags can't be specified with Overwrite; use AddTagsToResource.",
                            ));
                        }
                        p
                    }
                    None => Parameter {
                        name: name.clone(),
                        arn: arn.clone(),
                        versions: vec![],
                        tags: req.tags.clone(),
                    },
                };
                let last = p.versions.last().cloned();
                let kind = match (&req.kind, &last) {
                    (Some(k), _) => k.clone(),
                    (None, Some(l)) => l.kind.clone(),
                    (None, None) => {
                        return Err(ParameterError::validation(
                            "A parameter type is required when you create a parameter.",
                        ))
                    }
                };
                let pattern = req
                    .allowed_pattern
                    .clone()
                    .or_else(|| last.as_ref().and_then(|l| l.allowed_pattern.clone()));
                if let Some(pat) = &pattern {
                    let re = regex::Regex::new(pat).map_err(|e| {
                        ParameterError::new("InvalidAllowedPatternException", format!("The allowed pattern is not valid: {e}."))
                    })?;
                    if !re.is_match(&req.value) {
                        return Err(ParameterError::new(
                            "ParameterPatternMismatchException",
                            format!("Parameter value, cannot be validated against allowedPattern: {pat}"),
                        ));
                    }
                }
                if p.versions.len() >= MAX_VERSIONS {
                    if !p.versions[0].labels.is_empty() {
                        return Err(ParameterError::new(
                            "ParameterMaxVersionLimitExceeded",
                            format!("You attempted to create a new version of {name} by calling the PutParameter API with the overwrite flag. Version {}, the oldest version, can't be deleted because it has a label associated with it. Move the label to another version of the parameter, and try again.", p.versions[0].version),
                        ));
                    }
                    p.versions.remove(0);
                }
                let version = last.as_ref().map(|l| l.version).unwrap_or(0) + 1;
                let sealed = self.sealer.seal(req.value.as_bytes(), &format!("{arn}\n{version}"));
                p.versions.push(PVersion {
                    version,
                    kind,
                    sealed,
                    modified: now,
                    user: user.to_string(),
                    description: req.description.clone().or_else(|| last.as_ref().and_then(|l| l.description.clone())),
                    allowed_pattern: pattern,
                    key_id: req.key_id.clone(),
                    tier: req.tier.clone().unwrap_or_else(|| tier_for(&req.value)),
                    data_type: req.data_type.clone().unwrap_or_else(|| "text".into()),
                    labels: vec![],
                });
                let tier = p.current().tier.clone();
                Ok((Some(p), (version, tier)))
            })
            .await
    }

    pub async fn delete(&self, scope: &Scope, id: &str) -> Result<(), ParameterError> {
        let p = self.locate(scope, id).await?;
        self.records.delete(&Self::key(scope, &p.name)).await?;
        Ok(())
    }

    /// Label (or unlabel) a version: returns (labels refused, version).
    pub async fn label(
        &self,
        scope: &Scope,
        name: &str,
        version: Option<i64>,
        labels: &[String],
        remove: bool,
    ) -> Result<(Vec<String>, i64), ParameterError> {
        let name = &self.locate(scope, name).await?.name;
        self.records
            .update(&Self::key(scope, name), |cur: Option<Parameter>| {
                let mut p = cur.ok_or_else(|| ParameterError::not_found(name))?;
                let target = version.unwrap_or(p.current().version);
                let idx = p.versions.iter().position(|v| v.version == target).ok_or_else(|| {
                    ParameterError::new(
                        "ParameterVersionNotFound",
                        format!("Systems Manager could not find version {target} of {name}."),
                    )
                })?;
                let mut invalid = Vec::new();
                for l in labels {
                    let bad = l.is_empty()
                        || l.len() > 100
                        || l.parse::<i64>().is_ok()
                        || l.to_lowercase().starts_with("aws")
                        || l.to_lowercase().starts_with("ssm")
                        || !l.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
                    if bad {
                        invalid.push(l.clone());
                        continue;
                    }
                    if remove {
                        if p.versions[idx].labels.contains(l) {
                            p.versions[idx].labels.retain(|x| x != l);
                        } else {
                            invalid.push(l.clone());
                        }
                    } else {
                        // A label names one version: it moves here from wherever it was.
                        for v in p.versions.iter_mut() {
                            v.labels.retain(|x| x != l);
                        }
                        p.versions[idx].labels.push(l.clone());
                    }
                }
                if p.versions[idx].labels.len() > MAX_LABELS {
                    return Err(ParameterError::new(
                        "ParameterVersionLabelLimitExceeded",
                        format!("A parameter version can have at most {MAX_LABELS} labels."),
                    ));
                }
                Ok((Some(p), (invalid, target)))
            })
            .await
    }

    pub async fn tag(&self, scope: &Scope, name: &str, tags: &[Tag], remove: &[String]) -> Result<(), ParameterError> {
        let name = &self.locate(scope, name).await?.name;
        self.records
            .update(&Self::key(scope, name), |cur: Option<Parameter>| {
                let mut p = cur.ok_or_else(|| ParameterError::not_found(name))?;
                p.tags.retain(|t| !remove.contains(&t.key));
                for t in tags {
                    p.tags.retain(|x| x.key != t.key);
                    p.tags.push(t.clone());
                }
                if p.tags.len() > MAX_TAGS {
                    return Err(ParameterError::new(
                        "TooManyTagsError",
                        format!("A parameter can have at most {MAX_TAGS} tags."),
                    ));
                }
                Ok((Some(p), ()))
            })
            .await
    }
}

/// The tier a value needs when none is asked for: Standard holds 4 KB, Advanced 8 KB.
fn tier_for(value: &str) -> String {
    if value.len() > 4096 { "Advanced" } else { "Standard" }.into()
}

fn check(req: &Put) -> Result<(), ParameterError> {
    if let Some(k) = &req.kind {
        if !["String", "StringList", "SecureString"].contains(&k.as_str()) {
            return Err(ParameterError::new(
                "UnsupportedParameterType",
                format!("{k} is not a parameter type (String, StringList, SecureString)."),
            ));
        }
    }
    if req.key_id.is_some() && req.kind.as_deref() != Some("SecureString") {
        return Err(ParameterError::validation("KeyId is for SecureString parameters only."));
    }
    let tier = req.tier.as_deref().unwrap_or("Standard");
    let limit = if tier == "Standard" { 4096 } else { 8192 };
    if req.value.is_empty() || req.value.len() > limit {
        return Err(ParameterError::validation(format!(
            "Parameter value must be 1 to {limit} characters in the {tier} tier."
        )));
    }
    if let Some(dt) = &req.data_type {
        if dt != "text" {
            return Err(ParameterError::validation(format!(
                "The data type {dt:?} is not supported by Gantry (text is)."
            )));
        }
    }
    if req.tags.len() > MAX_TAGS {
        return Err(ParameterError::new(
            "TooManyTagsError",
            format!("A parameter can have at most {MAX_TAGS} tags."),
        ));
    }
    Ok(())
}

/// Whether `name` lies under `path` ("/a" holds "/a/b"; only one level down unless
/// `recursive`).
pub fn under(name: &str, path: &str, recursive: bool) -> bool {
    let base = path.trim_end_matches('/');
    let Some(rest) = name.strip_prefix(base).and_then(|r| r.strip_prefix('/')) else {
        return false;
    };
    !rest.is_empty() && (recursive || !rest.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_paths_and_selectors() {
        for ok in ["plain", "/app/db/password", "a.b-c_d"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "aws-thing", "/ssm/x", "a/b", "/a//b", "/a/", "sp ace", "/Aws/x"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let deep = "/a".repeat(16);
        assert_eq!(
            check_name(&deep).unwrap_err().shape,
            "HierarchyLevelLimitExceededException"
        );
        assert_eq!(split_selector("/app/db:3"), ("/app/db", Some("3")));
        assert_eq!(split_selector("/app/db:prod"), ("/app/db", Some("prod")));
        assert_eq!(split_selector("/app/db"), ("/app/db", None));
        let arn = "arn:aws:ssm:us-east-1:1:parameter/app/db";
        assert_eq!(split_selector(arn), (arn, None));
        assert_eq!(split_selector(&format!("{arn}:2")), (arn, Some("2")));
        assert!(under("/a/b", "/a", false) && under("/a/b/c", "/a/", true));
        assert!(!under("/a/b/c", "/a", false) && !under("/ab", "/a", true) && !under("/a", "/a", true));
    }

    #[test]
    fn arns_map_back_to_names() {
        let scope = Scope {
            account: "1".into(),
            region: "us-east-1".into(),
        };
        assert_eq!(
            ParameterStore::arn(&scope, "/app/db"),
            "arn:aws:ssm:us-east-1:1:parameter/app/db"
        );
        assert_eq!(
            ParameterStore::name_of(&scope, "arn:aws:ssm:us-east-1:1:parameter/app/db").unwrap(),
            "/app/db"
        );
        assert_eq!(
            ParameterStore::name_of(&scope, "arn:aws:ssm:us-east-1:1:parameter/plain").unwrap(),
            "plain"
        );
        assert!(ParameterStore::name_of(&scope, "arn:aws:ssm:eu-west-1:1:parameter/x").is_err());
    }
}
