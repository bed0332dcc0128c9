//! The signing keys as the API front checks requests against them: read once and kept
//! current from the store's watch, so a request's key costs a map lookup, not a store read
//! (on etcd, a network round trip on every API call).
//!
//! A key is answered from the cache only while the watch is followed; one the cache does not
//! hold (not there, or just created and not seen yet) is read from the store. A revoked key
//! stays usable only until the watch delivers its change (milliseconds; IAM itself is
//! eventually consistent). Changes made through this server are waited for before the API
//! answers (`settled`), so a client that deletes a key and uses it at once is refused. A
//! watch that fails is re-read a second later (store reads meanwhile); one that stays quiet
//! is re-read every `RELIST` anyway, which bounds what a watch that hangs without an error
//! could keep alive.

use super::StoredKey;
use gantry_store::{EventKind, Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

const PREFIX: &str = "/iam/keys/";

/// How often the keys are read again in full, even while the watch looks healthy.
pub const RELIST: Duration = Duration::from_secs(60);

/// How long `settled` waits for the watch to show a change before giving up on the cache.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct SigningKeys {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    state: Mutex<Cache>,
    /// Bumped on every change of `state`.
    changed: tokio::sync::watch::Sender<u64>,
    /// Tells the follower to read everything again (a change did not arrive in time).
    relist: tokio::sync::Notify,
    started: OnceLock<()>,
}

#[derive(Default)]
struct Cache {
    /// Whether `keys` is the listing plus every event since (false before the first listing
    /// and after a watch failed).
    following: bool,
    keys: HashMap<String, StoredKey>,
}

impl SigningKeys {
    pub fn new(store: Arc<dyn Store>) -> SigningKeys {
        SigningKeys {
            inner: Arc::new(Inner {
                store,
                state: Mutex::new(Cache::default()),
                changed: tokio::sync::watch::channel(0).0,
                relist: tokio::sync::Notify::new(),
                started: OnceLock::new(),
            }),
        }
    }

    /// The key `akid`, None when there is none; an error only when the store had to be read
    /// and could not be.
    pub async fn get(&self, akid: &str) -> Result<Option<StoredKey>, StoreError> {
        self.start();
        if let Some(k) = self.cached(akid) {
            return Ok(Some(k));
        }
        let kv = self.inner.store.get(&super::key_path(akid)).await?;
        Ok(kv.and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }

    /// The cached key, only while the cache follows the store.
    fn cached(&self, akid: &str) -> Option<StoredKey> {
        let s = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        s.following.then(|| s.keys.get(akid).cloned()).flatten()
    }

    /// Waits until the cache shows `akid` as `wanted` says (a change this server just wrote).
    /// If the watch does not deliver it within `SETTLE`, the cache is set aside (the store is
    /// read) until it has been read again in full: never an answer from before the change.
    pub async fn settled(&self, akid: &str, wanted: impl Fn(Option<&StoredKey>) -> bool) {
        self.start();
        let mut changes = self.inner.changed.subscribe();
        let wait = async {
            loop {
                changes.borrow_and_update();
                {
                    let s = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
                    if !s.following || wanted(s.keys.get(akid)) {
                        return;
                    }
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(SETTLE, wait).await.is_err() {
            tracing::warn!(
                akid,
                "the signing keys' watch did not show a change in time; reading them again"
            );
            let mut s = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
            s.following = false;
            drop(s);
            self.inner.relist.notify_one();
        }
    }

    fn start(&self) {
        self.inner.started.get_or_init(|| {
            tokio::spawn(maintain(Arc::downgrade(&self.inner)));
        });
    }
}

/// Lists and follows the keys while the cache exists; after a failure, a second later again.
async fn maintain(inner: Weak<Inner>) {
    loop {
        let Some(store) = inner.upgrade().map(|i| i.store.clone()) else {
            return;
        };
        match follow(store.as_ref(), &inner).await {
            Ok(true) => continue,
            Ok(false) => return,
            Err(e) => tracing::warn!(error = %e, "following the signing keys; reading them from the store meanwhile"),
        }
        if !apply(&inner, |c| c.following = false) {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One listing, then its watch until `RELIST` has passed (Ok(true): list again), the cache
/// is dropped (Ok(false)) or the watch fails (Err).
async fn follow(store: &dyn Store, inner: &Weak<Inner>) -> Result<bool, StoreError> {
    let (kvs, rev) = store.list(PREFIX).await?;
    let mut watch = store.watch(PREFIX, rev).await?;
    let keys = kvs
        .into_iter()
        .filter_map(|kv| Some((id_of(&kv.key)?, serde_json::from_slice(&kv.value).ok()?)))
        .collect();
    if !apply(inner, |c| *c = Cache { following: true, keys }) {
        return Ok(false);
    }
    let relist = tokio::time::sleep(RELIST);
    tokio::pin!(relist);
    loop {
        let Some(i) = inner.upgrade() else { return Ok(false) };
        let event = tokio::select! {
            _ = &mut relist => return Ok(true),
            _ = i.relist.notified() => return Ok(true),
            e = watch.events.recv() => e,
        };
        drop(i);
        let e = event.ok_or_else(|| StoreError::Backend("the signing keys' watch ended".into()))??;
        let Some(id) = id_of(&e.kv.key) else { continue };
        let parsed = match e.kind {
            EventKind::Put => serde_json::from_slice::<StoredKey>(&e.kv.value).ok(),
            EventKind::Delete => None,
        };
        let applied = apply(inner, |c| match parsed {
            Some(k) => drop(c.keys.insert(id, k)),
            None => drop(c.keys.remove(&id)),
        });
        if !applied {
            return Ok(false);
        }
    }
}

fn id_of(key: &str) -> Option<String> {
    key.strip_prefix(PREFIX).map(str::to_string)
}

/// Changes the cache and tells its waiters; false once the cache is gone.
fn apply(inner: &Weak<Inner>, f: impl FnOnce(&mut Cache)) -> bool {
    let Some(i) = inner.upgrade() else { return false };
    f(&mut i.state.lock().unwrap_or_else(|p| p.into_inner()));
    i.changed.send_modify(|v| *v += 1);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_store::instrumented::{Instrumented, Watches};

    fn key(status: &str) -> StoredKey {
        StoredKey {
            secret_access_key: "s".into(),
            account_id: "000000000000".into(),
            session_token: None,
            user: None,
            status: status.into(),
            created: 0.0,
            role: None,
        }
    }

    async fn setup(watch_fails: bool) -> (Arc<Instrumented>, SigningKeys) {
        let watches = if watch_fails { Watches::Fail } else { Watches::Follow };
        let store = Arc::new(Instrumented::new().with_watches(watches));
        let v = serde_json::to_vec(&key("Active")).unwrap();
        store.create(&crate::iam::key_path("AKIAONE"), &v).await.unwrap();
        (store.clone(), SigningKeys::new(store))
    }

    /// Gets `akid` until `done` says the answer is the one wanted (the watch has caught up).
    async fn eventually(keys: &SigningKeys, akid: &str, done: impl Fn(&Option<StoredKey>) -> bool) {
        for _ in 0..500 {
            if done(&keys.get(akid).await.unwrap()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("the cache never showed the change to {akid}");
    }

    #[tokio::test]
    async fn followed_keys_are_answered_without_a_store_read() {
        let (store, keys) = setup(false).await;
        // Once listed, no store reads for a key the cache holds.
        eventually(&keys, "AKIAONE", |_| keys.cached("AKIAONE").is_some()).await;
        let before = store.gets();
        for _ in 0..10 {
            assert_eq!(keys.get("AKIAONE").await.unwrap().unwrap().status, "Active");
        }
        assert_eq!(store.gets(), before);
        // A key the cache has not seen (unknown, or newer than the watch) is read from the store.
        assert!(keys.get("AKIANONE").await.unwrap().is_none());
        assert_eq!(store.gets(), before + 1);
    }

    #[tokio::test]
    async fn a_change_is_shown_once_settled() {
        let (store, keys) = setup(false).await;
        eventually(&keys, "AKIAONE", |_| keys.cached("AKIAONE").is_some()).await;
        let path = crate::iam::key_path("AKIAONE");
        let rev = store.get(&path).await.unwrap().unwrap().mod_revision;
        let v = serde_json::to_vec(&key("Inactive")).unwrap();
        store.update(&path, &v, rev).await.unwrap();
        keys.settled("AKIAONE", |k| k.is_some_and(|k| k.status == "Inactive"))
            .await;
        assert_eq!(keys.get("AKIAONE").await.unwrap().unwrap().status, "Inactive");
        store.delete(&path, None).await.unwrap();
        keys.settled("AKIAONE", |k| k.is_none()).await;
        assert!(keys.get("AKIAONE").await.unwrap().is_none());
        // New keys appear without a settle: read from the store until the watch shows them.
        store.create(&crate::iam::key_path("AKIATWO"), &v).await.unwrap();
        assert!(keys.get("AKIATWO").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn without_a_watch_every_key_is_read_from_the_store() {
        let (store, keys) = setup(true).await;
        for _ in 0..3 {
            assert!(keys.get("AKIAONE").await.unwrap().is_some());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(keys.cached("AKIAONE").is_none());
        store.delete(&crate::iam::key_path("AKIAONE"), None).await.unwrap();
        // Settling does not wait for a watch that is not there.
        tokio::time::timeout(Duration::from_millis(500), keys.settled("AKIAONE", |k| k.is_none()))
            .await
            .expect("settled at once");
        assert!(keys.get("AKIAONE").await.unwrap().is_none());
        assert_eq!(store.gets(), 4);
    }
}
