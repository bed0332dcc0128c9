//! Image references: `[registry[:port]/]repository[:tag][@sha256:...]`, normalised the way
//! Docker does (no registry means docker.io, single-component names live under `library/`).

use crate::digest::Digest;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {value:?}: {reason}")]
pub struct ReferenceError {
    pub value: String,
    pub reason: &'static str,
}

pub const DEFAULT_REGISTRY: &str = "docker.io";

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let err = |reason| ReferenceError {
            value: s.to_string(),
            reason,
        };
        if s.is_empty() || s.len() > 512 {
            return Err(err("must be 1-512 characters"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(d.parse::<Digest>().map_err(|_| err("digest must be sha256:<64 hex>"))?),
            ),
            None => (s, None),
        };
        // The first component is a registry if it looks like a host: has '.', ':' or is localhost.
        let (registry, path) = match rest.split_once('/') {
            Some((first, path)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), path)
            }
            _ => (DEFAULT_REGISTRY.to_string(), rest),
        };
        let host_ok = registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
            && (registry.as_bytes()[0].is_ascii_alphanumeric() || registry.starts_with('['));
        let port_ok = match registry.rsplit_once(':') {
            Some((h, _)) if !h.ends_with(']') && h.contains(':') => false,
            Some((_, p)) => !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()),
            None => true,
        };
        if !host_ok || !port_ok {
            return Err(err("registry must be a host name or address with an optional port"));
        }
        let (repository, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
            _ => (path, None),
        };
        if repository.is_empty() {
            return Err(err("repository name is empty"));
        }
        for comp in repository.split('/') {
            let valid = !comp.is_empty()
                && comp
                    .bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
                && comp.as_bytes()[0].is_ascii_alphanumeric();
            if !valid {
                return Err(err(
                    "repository components must be lowercase alphanumerics separated by '.', '_' or '-'",
                ));
            }
        }
        if let Some(t) = &tag {
            let valid = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_');
            if !valid {
                return Err(err("tag must be up to 128 characters of [A-Za-z0-9_.-]"));
            }
        }
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What to ask the registry for: the digest if pinned, else the tag.
    pub fn reference_for_pull(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// Registries on loopback are spoken to over plain HTTP, as Docker does.
    pub fn is_loopback_registry(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => &self.registry,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let r = Reference::parse("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/app", Some("v1"))
        );
        assert!(r.is_loopback_registry());
        let d = format!("sha256:{}", "b".repeat(64));
        let r = Reference::parse(&format!("localhost/app@{d}")).unwrap();
        assert_eq!(r.reference_for_pull(), d);
        assert!(!Reference::parse("registry.example.com/app")
            .unwrap()
            .is_loopback_registry());
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "UPPER",
            "a//b",
            "app:bad/tag",
            "app@sha256:zz",
            "../etc",
            "app:",
            ":tag",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}
