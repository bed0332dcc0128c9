//! IAM policy documents, parsed and evaluated as AWS defines it: an explicit Deny in any
//! applicable statement wins, then an Allow, else the request is implicitly denied. A pure
//! function of the policies and the request (action, resource, condition context), so it is
//! tested without a server and benchmarked on its own.
//!
//! Supported: Version 2012-10-17 (and 2008-10-17), Statement as one object or a list, Effect,
//! Action / NotAction, Resource / NotResource, Principal / NotPrincipal (for resource and
//! trust policies), Condition with the String*, Numeric*, Date*, Bool, IpAddress /
//! NotIpAddress, Arn* and Null operators, the IfExists suffix and the ForAnyValue: /
//! ForAllValues: qualifiers, and `${aws:...}` policy variables in resources and condition
//! values.

mod condition;
pub mod glob;

pub use condition::Context;
use serde_json::Value;

/// Why a document is not a policy, in IAM's MalformedPolicyDocument words.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyError(pub String);

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PolicyError {}

fn malformed(m: impl Into<String>) -> PolicyError {
    PolicyError(m.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// A list of patterns, or everything but them (NotAction, NotResource, NotPrincipal).
#[derive(Debug, Clone, PartialEq)]
enum Matcher {
    Any(Vec<String>),
    AllBut(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
struct Statement {
    effect: Effect,
    actions: Matcher,
    resources: Option<Matcher>,
    principals: Option<(bool, Vec<String>)>,
    conditions: Vec<condition::Condition>,
}

/// A parsed policy document.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    statements: Vec<Statement>,
}

/// The outcome of evaluating a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    ExplicitDeny,
    ImplicitDeny,
}

/// What is asked: `service:Action`, the resource's ARN (or "*"), the caller (for resource
/// and trust policies: its ARN and account), and the condition keys.
pub struct Request<'a> {
    pub action: &'a str,
    pub resource: &'a str,
    pub principal: Option<&'a str>,
    pub context: &'a Context,
}

/// Most bytes of a policy document (IAM's managed-policy limit).
pub const MAX_POLICY_BYTES: usize = 6144 * 4;

fn strings(v: &Value, what: &str) -> Result<Vec<String>, PolicyError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| malformed(format!("{what} must be a string or a list of strings")))
            })
            .collect(),
        _ => Err(malformed(format!(
            "{what} must be a string or a non-empty list of strings"
        ))),
    }
}

fn matcher(st: &serde_json::Map<String, Value>, yes: &str, no: &str) -> Result<Option<Matcher>, PolicyError> {
    match (st.get(yes), st.get(no)) {
        (Some(_), Some(_)) => Err(malformed(format!("A statement cannot have both {yes} and {no}."))),
        (Some(v), None) => Ok(Some(Matcher::Any(strings(v, yes)?))),
        (None, Some(v)) => Ok(Some(Matcher::AllBut(strings(v, no)?))),
        (None, None) => Ok(None),
    }
}

/// Principal: "*", {"AWS": [...]}, {"Service": ...}: kept as ARNs or names to match.
fn principals(v: &Value) -> Result<Vec<String>, PolicyError> {
    match v {
        Value::String(s) if s == "*" => Ok(vec!["*".into()]),
        Value::Object(m) => {
            let mut out = Vec::new();
            for (kind, v) in m {
                if !["AWS", "Service", "Federated", "CanonicalUser"].contains(&kind.as_str()) {
                    return Err(malformed(format!("Invalid principal type {kind}.")));
                }
                out.extend(strings(v, "Principal")?);
            }
            Ok(out)
        }
        _ => Err(malformed("Principal must be \"*\" or an object of principal types.")),
    }
}

impl Policy {
    /// Parses a policy document, refusing what IAM refuses.
    pub fn parse(doc: &str) -> Result<Policy, PolicyError> {
        if doc.len() > MAX_POLICY_BYTES {
            return Err(malformed(format!(
                "The policy is larger than {MAX_POLICY_BYTES} bytes."
            )));
        }
        let v: Value = serde_json::from_str(doc).map_err(|e| malformed(format!("Syntax errors in policy: {e}.")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| malformed("The policy must be a JSON object."))?;
        if let Some(version) = obj.get("Version") {
            if version != "2012-10-17" && version != "2008-10-17" {
                return Err(malformed("The policy's Version must be 2012-10-17 or 2008-10-17."));
            }
        }
        let raw = match obj.get("Statement") {
            Some(Value::Array(a)) if !a.is_empty() => a.clone(),
            Some(s @ Value::Object(_)) => vec![s.clone()],
            _ => return Err(malformed("Policy document should have a Statement.")),
        };
        let statements = raw.iter().map(Self::statement).collect::<Result<_, _>>()?;
        Ok(Policy { statements })
    }

    fn statement(v: &Value) -> Result<Statement, PolicyError> {
        let st = v
            .as_object()
            .ok_or_else(|| malformed("A Statement must be an object."))?;
        let effect = match st.get("Effect").and_then(Value::as_str) {
            Some("Allow") => Effect::Allow,
            Some("Deny") => Effect::Deny,
            _ => return Err(malformed("A statement's Effect must be Allow or Deny.")),
        };
        let actions =
            matcher(st, "Action", "NotAction")?.ok_or_else(|| malformed("Policy statement must contain actions."))?;
        for a in match &actions {
            Matcher::Any(a) | Matcher::AllBut(a) => a,
        } {
            if a != "*" && !a.contains(':') {
                return Err(malformed(format!(
                    "Actions/Condition can contain only one colon: {a} has none."
                )));
            }
        }
        let principals = match (st.get("Principal"), st.get("NotPrincipal")) {
            (Some(_), Some(_)) => return Err(malformed("A statement cannot have both Principal and NotPrincipal.")),
            (Some(p), None) => Some((false, principals(p)?)),
            (None, Some(p)) => Some((true, principals(p)?)),
            (None, None) => None,
        };
        let conditions = match st.get("Condition") {
            None => vec![],
            Some(c) => condition::parse(c)?,
        };
        for k in st.keys() {
            let known = [
                "Sid",
                "Effect",
                "Action",
                "NotAction",
                "Resource",
                "NotResource",
                "Principal",
                "NotPrincipal",
                "Condition",
            ];
            if !known.contains(&k.as_str()) {
                return Err(malformed(format!("Statement contains an unknown element {k}.")));
            }
        }
        Ok(Statement {
            effect,
            actions,
            resources: matcher(st, "Resource", "NotResource")?,
            principals,
            conditions,
        })
    }

    /// Whether the document has a statement needing a Resource (identity policies do).
    pub fn every_statement_has_resource(&self) -> bool {
        self.statements.iter().all(|s| s.resources.is_some())
    }

    /// Whether every statement names its principals (trust and resource policies must).
    pub fn every_statement_has_principal(&self) -> bool {
        self.statements.iter().all(|s| s.principals.is_some())
    }
}

fn any_matches(patterns: &[String], value: &str, matches: impl Fn(&str, &str) -> bool) -> bool {
    patterns.iter().any(|p| matches(p, value))
}

fn applies(m: &Matcher, value: &str, matches: impl Fn(&str, &str) -> bool + Copy) -> bool {
    match m {
        Matcher::Any(p) => any_matches(p, value, matches),
        Matcher::AllBut(p) => !any_matches(p, value, matches),
    }
}

impl Statement {
    fn applies(&self, req: &Request) -> bool {
        if !applies(&self.actions, req.action, glob::action) {
            return false;
        }
        if let Some(r) = &self.resources {
            let resolved = |p: &str, v: &str| glob::arn(&req.context.substitute(p), v);
            if !applies(r, req.resource, resolved) {
                return false;
            }
        }
        if let Some((negated, who)) = &self.principals {
            let named = req
                .principal
                .is_some_and(|p| who.iter().any(|w| w == "*" || glob::principal(w, p)));
            if named == *negated {
                return false;
            }
        }
        self.conditions.iter().all(|c| c.holds(req.context))
    }
}

impl Statement {
    /// Whether the statement names the request's principal itself (or everyone), not only
    /// through its account (the account id, or the account's root ARN).
    fn names_principal_directly(&self, req: &Request) -> bool {
        let Some((false, who)) = &self.principals else {
            return false;
        };
        let Some(p) = req.principal else { return false };
        who.iter().any(|w| {
            let account_wide = (w.len() == 12 && w.bytes().all(|b| b.is_ascii_digit())) || w.ends_with(":root");
            w == "*" || (!account_wide && glob::arn(w, p))
        })
    }
}

/// A resource-based policy's decision for a principal of the resource's own account. An
/// Allow that names the principal only through its account allows nothing by itself: it hands
/// the decision to the principal's identity policies, as AWS does. A Deny applies however it
/// names the principal.
pub fn evaluate_resource_policy(policy: &Policy, req: &Request) -> Decision {
    let mut allowed = false;
    for s in policy.statements.iter().filter(|s| s.applies(req)) {
        match s.effect {
            Effect::Deny => return Decision::ExplicitDeny,
            Effect::Allow => allowed |= s.names_principal_directly(req),
        }
    }
    if allowed {
        Decision::Allow
    } else {
        Decision::ImplicitDeny
    }
}

/// Evaluates `req` against every policy that applies to it (identity and resource policies
/// alike): any matching Deny denies, else any matching Allow allows, else implicit deny.
pub fn evaluate(policies: &[&Policy], req: &Request) -> Decision {
    let mut allowed = false;
    for p in policies {
        for s in p.statements.iter().filter(|s| s.applies(req)) {
            match s.effect {
                Effect::Deny => return Decision::ExplicitDeny,
                Effect::Allow => allowed = true,
            }
        }
    }
    if allowed {
        Decision::Allow
    } else {
        Decision::ImplicitDeny
    }
}

#[cfg(test)]
mod tests;
