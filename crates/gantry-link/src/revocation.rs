//! Which of a node's certificates the servers accept: the one last issued to it (by a join or
//! a renewal), and for ten minutes after a renewal also the one before, so the node can
//! switch over; none once the node is revoked (`gantry node revoke`), until it joins again
//! with a token. A certificate the CA signed but never issued through a join or a renewal is
//! refused too. Kept in the store (`/cluster/node-certs/<node>`), so every server agrees; a
//! server admits from what it read of a node's entry for a second, so a revocation holds
//! within a second, and reads it again before refusing anything.

use gantry_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PREFIX: &str = "/cluster/node-certs/";
/// How long the certificate a renewal replaced stays good.
pub const RENEWAL_GRACE_MS: i64 = 10 * 60 * 1000;
/// How long a server trusts what it read of a node's certificates.
const FRESH: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeCerts {
    /// SHA-256 fingerprints (hex) of the current certificate and of the one it replaced.
    pub current: Option<String>,
    pub previous: Option<String>,
    pub previous_until_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

impl NodeCerts {
    /// Whether a certificate with fingerprint `fp` is good at `now_ms`; why not otherwise.
    pub fn admits(&self, fp: &str, now_ms: i64) -> Result<(), String> {
        if self.revoked_at_ms.is_some() {
            return Err("the node's certificates were revoked; it must join again with a token".into());
        }
        if self.current.as_deref() == Some(fp) {
            return Ok(());
        }
        if self.previous.as_deref() == Some(fp) && now_ms < self.previous_until_ms {
            return Ok(());
        }
        Err("the certificate was replaced by a renewal or never issued to this node".into())
    }
}

fn key(node: &str) -> String {
    format!("{PREFIX}{node}")
}

/// Reads a node's entry with its revision.
async fn load(store: &dyn Store, node: &str) -> Result<Option<(NodeCerts, i64)>, StoreError> {
    Ok(match store.get(&key(node)).await? {
        Some(kv) => Some((serde_json::from_slice(&kv.value).unwrap_or_default(), kv.mod_revision)),
        None => None,
    })
}

/// Changes a node's entry with `f` (created when absent), retrying on a concurrent write.
async fn change(store: &dyn Store, node: &str, f: impl Fn(&mut NodeCerts)) -> Result<(), StoreError> {
    loop {
        let cur = load(store, node).await?;
        let mut next = cur.as_ref().map(|(c, _)| c.clone()).unwrap_or_default();
        f(&mut next);
        let data = serde_json::to_vec(&next).expect("serialises");
        let written = match cur {
            Some((_, rev)) => store.update(&key(node), &data, rev).await,
            None => store.create(&key(node), &data).await,
        };
        match written {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) | Err(StoreError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Records a certificate issued to `node`: a join's replaces everything (and lifts a
/// revocation); a renewal's keeps the replaced one good for the grace period.
pub async fn issued(store: &dyn Store, node: &str, fp: &str, now_ms: i64, renewal: bool) -> Result<(), StoreError> {
    change(store, node, |c| {
        if renewal {
            c.previous = c.current.take();
            c.previous_until_ms = now_ms + RENEWAL_GRACE_MS;
        } else {
            *c = NodeCerts::default();
        }
        c.current = Some(fp.to_string());
    })
    .await
}

/// Revokes every certificate of `node`. False if no certificate was ever issued to it.
pub async fn revoke(store: &dyn Store, node: &str, now_ms: i64) -> Result<bool, StoreError> {
    if load(store, node).await?.is_none() {
        return Ok(false);
    }
    change(store, node, |c| {
        *c = NodeCerts {
            revoked_at_ms: Some(now_ms),
            ..NodeCerts::default()
        }
    })
    .await?;
    Ok(true)
}

/// A server's check of the certificate a request came with, from a cache of what it read.
pub struct Admission {
    store: Arc<dyn Store>,
    seen: Mutex<HashMap<String, (Option<NodeCerts>, Instant)>>,
}

impl Admission {
    pub fn new(store: Arc<dyn Store>) -> Admission {
        Admission {
            store,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Admits `fp` for `node`. What was read less than a second ago may admit; a refusal is
    /// always decided on a fresh read (a renewal or a join may have just issued `fp`).
    pub async fn check(&self, node: &str, fp: &str, now_ms: i64) -> Result<(), String> {
        let cached = self
            .seen
            .lock()
            .expect("lock")
            .get(node)
            .filter(|(_, at)| at.elapsed() < FRESH)
            .map(|(c, _)| c.clone());
        if let Some(Some(c)) = cached {
            if c.admits(fp, now_ms).is_ok() {
                return Ok(());
            }
        }
        let read = load(self.store.as_ref(), node)
            .await
            .map_err(|e| format!("reading the node's certificates: {e}"))?
            .map(|(c, _)| c);
        self.seen
            .lock()
            .expect("lock")
            .insert(node.to_string(), (read.clone(), Instant::now()));
        read.ok_or_else(|| "no certificate was issued to this node".to_string())?
            .admits(fp, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_issued_certificates_are_good_a_renewed_one_briefly_and_none_once_revoked() {
        let store: Arc<dyn Store> = Arc::new(gantry_store::SqliteStore::in_memory().unwrap());
        let s = store.as_ref();
        let certs = |node: &'static str| async move { load(s, node).await.unwrap().unwrap().0 };
        issued(s, "n1", "aa", 0, false).await.unwrap();
        assert_eq!(certs("n1").await.admits("aa", 0), Ok(()));
        assert!(certs("n1").await.admits("bb", 0).unwrap_err().contains("never issued"));
        // A renewal: the new one is good, the old one for the grace period only.
        issued(s, "n1", "bb", 1_000, true).await.unwrap();
        let c = certs("n1").await;
        assert_eq!((c.admits("bb", 1_000), c.admits("aa", 1_000)), (Ok(()), Ok(())));
        assert!(c.admits("aa", 1_000 + RENEWAL_GRACE_MS).is_err());
        // Revoked: nothing, until a join issues a new one.
        assert!(revoke(s, "n1", 2_000).await.unwrap());
        assert!(certs("n1").await.admits("bb", 2_000).unwrap_err().contains("revoked"));
        assert!(!revoke(s, "never-joined", 2_000).await.unwrap());
        issued(s, "n1", "cc", 3_000, false).await.unwrap();
        let c = certs("n1").await;
        assert_eq!(
            (c.admits("cc", 3_000).is_ok(), c.admits("bb", 3_000).is_ok()),
            (true, false)
        );
        // The server's check, with nothing issued to a node.
        let admission = Admission::new(store.clone());
        assert!(admission
            .check("n9", "aa", 0)
            .await
            .unwrap_err()
            .contains("no certificate"));
        assert_eq!(admission.check("n1", "cc", 3_000).await, Ok(()));
    }
}
