//! What a role session carries into the sessions it assumes (role chaining), as STS does:
//! its transitive session tags (AssumeRole's TransitiveTagKeys), which the next session
//! inherits and may not override, and its source identity (SourceIdentity), set once and
//! never changed down the chain.

use super::{tags, Caller, IamError, Tag};

/// What AssumeRole asks of the session beyond its name and duration.
#[derive(Debug, Clone, Default)]
pub struct SessionAsked {
    pub tags: Vec<Tag>,
    /// Keys of `tags` the session passes on to the sessions it assumes.
    pub transitive_keys: Vec<String>,
    pub policies: super::SessionPolicies,
    pub source_identity: Option<String>,
}

/// The tags and source identity a new session gets from its caller and its request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Carried {
    /// Inherited transitive tags first, then the request's.
    pub tags: Vec<Tag>,
    /// Keys of `tags` that are transitive (the inherited ones stay so).
    pub transitive: Vec<String>,
    pub source_identity: Option<String>,
}

fn same(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// What the session `caller` asks for carries: refused when a tag overrides an inherited
/// transitive one, a transitive key is not among the tags, or the source identity would
/// change or is malformed.
pub fn carried(caller: &Caller, asked: &SessionAsked) -> Result<Carried, IamError> {
    let (inherited, inherited_identity) = match caller {
        Caller::Role {
            transitive,
            source_identity,
            ..
        } => (transitive.as_slice(), source_identity.as_deref()),
        _ => (&[][..], None),
    };
    if let Some(t) = asked
        .tags
        .iter()
        .find(|t| inherited.iter().any(|i| same(&i.key, &t.key)))
    {
        return Err(IamError::new(
            "InvalidParameterValue",
            format!(
                "The session tag {} cannot override the transitive tag its caller's session passed on.",
                t.key
            ),
        ));
    }
    if let Some(k) = asked
        .transitive_keys
        .iter()
        .find(|k| !asked.tags.iter().any(|t| same(&t.key, k)))
    {
        return Err(IamError::new(
            "InvalidParameterValue",
            format!("The transitive tag key {k} is not the key of a session tag of this request."),
        ));
    }
    let mut all: Vec<Tag> = inherited.to_vec();
    all.extend(asked.tags.iter().cloned());
    if all.len() > tags::MAX_TAGS {
        return Err(IamError::new(
            "ValidationError",
            "A session can have at most 50 session tags, the transitive ones it inherits included.",
        ));
    }
    let mut transitive: Vec<String> = inherited.iter().map(|t| t.key.clone()).collect();
    transitive.extend(asked.transitive_keys.iter().cloned());
    let source_identity = match (inherited_identity, asked.source_identity.as_deref()) {
        (Some(had), Some(new)) if had != new => {
            return Err(IamError::new(
                "AccessDenied",
                format!(
                    "User: {} is not authorized to change the source identity {had} of its session.",
                    caller.arn()
                ),
            ))
        }
        (had, new) => had.or(new).map(String::from),
    };
    if let Some(s) = asked.source_identity.as_deref() {
        check_source_identity(s)?;
    }
    Ok(Carried {
        tags: all,
        transitive,
        source_identity,
    })
}

/// 2 to 64 of `[\w+=,.@-]`, not beginning with `aws:`.
fn check_source_identity(s: &str) -> Result<(), IamError> {
    let ok = (2..=64).contains(&s.len())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
        && !s.to_ascii_lowercase().starts_with("aws:");
    if ok {
        Ok(())
    } else {
        Err(IamError::new(
            "ValidationError",
            format!("SourceIdentity {s:?} must be 2 to 64 letters, digits or _+=,.@- and may not begin with aws:."),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(k: &str, v: &str) -> Tag {
        Tag {
            key: k.into(),
            value: v.into(),
        }
    }

    fn session(transitive: Vec<Tag>, source_identity: Option<&str>) -> Caller {
        let role: super::super::Role = serde_json::from_value(serde_json::json!({
            "name": "r", "path": "/", "id": "AROA", "arn": "arn:aws:iam::1:role/r", "created": 0.0,
            "trust": "{}", "max_session": 3600
        }))
        .unwrap();
        Caller::Role {
            account: "1".into(),
            role,
            session: "s".into(),
            limits: None,
            transitive,
            source_identity: source_identity.map(String::from),
        }
    }

    #[test]
    fn transitive_tags_and_the_source_identity_go_down_the_chain() {
        let first = SessionAsked {
            tags: vec![tag("team", "web"), tag("env", "dev")],
            transitive_keys: vec!["team".into()],
            source_identity: Some("ann@example.com".into()),
            ..Default::default()
        };
        let root = Caller::Root { account: "1".into() };
        let c = carried(&root, &first).unwrap();
        assert_eq!(
            (c.transitive.as_slice(), c.source_identity.as_deref()),
            (&["team".to_string()][..], Some("ann@example.com"))
        );
        // The next session inherits team (not env) and the source identity.
        let chained = session(vec![tag("team", "web")], Some("ann@example.com"));
        let next = SessionAsked {
            tags: vec![tag("project", "x")],
            ..Default::default()
        };
        let c = carried(&chained, &next).unwrap();
        assert_eq!(c.tags, [tag("team", "web"), tag("project", "x")]);
        assert_eq!(
            (c.transitive.as_slice(), c.source_identity.as_deref()),
            (&["team".to_string()][..], Some("ann@example.com"))
        );
        // It may not override team, nor change the source identity; the same one is fine.
        let over = SessionAsked {
            tags: vec![tag("TEAM", "ops")],
            ..Default::default()
        };
        assert_eq!(carried(&chained, &over).unwrap_err().shape, "InvalidParameterValue");
        let other = SessionAsked {
            source_identity: Some("eve".into()),
            ..Default::default()
        };
        assert_eq!(carried(&chained, &other).unwrap_err().shape, "AccessDenied");
        let same = SessionAsked {
            source_identity: Some("ann@example.com".into()),
            ..Default::default()
        };
        assert!(carried(&chained, &same).is_ok());
        // A transitive key must be a tag of the request; the identity is checked.
        let stray = SessionAsked {
            transitive_keys: vec!["nope".into()],
            ..Default::default()
        };
        assert_eq!(carried(&root, &stray).unwrap_err().shape, "InvalidParameterValue");
        for bad in ["a", "aws:x", "has space", &"x".repeat(65)] {
            let asked = SessionAsked {
                source_identity: Some(bad.into()),
                ..Default::default()
            };
            assert_eq!(carried(&root, &asked).unwrap_err().shape, "ValidationError", "{bad}");
        }
    }
}
