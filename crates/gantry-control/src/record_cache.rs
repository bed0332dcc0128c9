//! Every task (or service) record, as the leader's controllers read them (the service
//! controller four times a second while services exist, Container Insights, housekeeping and
//! cost metering on their timers) and as placement counts a cluster's tasks. The first
//! reading lists the records whole; each later one lists the keys and revisions only; a
//! record already decoded at that revision is reused, and only the others are read (from the
//! records held in memory, else the store, all in one round trip) and decoded. The listing is
//! the store's own, so what a reader sees is as current as a full listing (its own writes
//! included); an unchanged record costs its key and revision, not its value (a task's is
//! about 7 KB, a service's more, with its events) read and decoded again.

use crate::recent_tasks::RecentTasks;
use crate::store_err;
use gantry_store::{KeyValue, Store};
use gantry_types::EcsError;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Records read one by one at most; with more to read, one listing reads them all (a
/// node's re-list goes by the same bound).
pub const READ_ONE_BY_ONE: usize = 64;

type Held<T> = HashMap<String, (i64, Arc<T>)>;

pub struct RecordCache<T> {
    prefix: &'static str,
    held: Arc<Mutex<Held<T>>>,
}

impl<T> Clone for RecordCache<T> {
    fn clone(&self) -> Self {
        RecordCache {
            prefix: self.prefix,
            held: self.held.clone(),
        }
    }
}

impl<T: DeserializeOwned + Clone> RecordCache<T> {
    /// For the records under `prefix`.
    pub fn new(prefix: &'static str) -> RecordCache<T> {
        RecordCache {
            prefix,
            held: Default::default(),
        }
    }

    /// Every record with its key and revision, in key order. `recent`: records held in
    /// memory by key and revision, read before the store.
    pub async fn all(
        &self,
        store: &dyn Store,
        recent: Option<&RecentTasks>,
    ) -> Result<Vec<(String, T, i64)>, EcsError> {
        let shared = self.all_shared(store, recent).await?;
        Ok(shared
            .into_iter()
            .map(|(k, rec, rev)| (k, T::clone(&rec), rev))
            .collect())
    }

    /// As `all`, the records shared with the cache rather than copied: for a reader that
    /// looks at a few fields of many records (placement counting a group's tasks).
    pub async fn all_shared(
        &self,
        store: &dyn Store,
        recent: Option<&RecentTasks>,
    ) -> Result<Vec<(String, Arc<T>, i64)>, EcsError> {
        if self.held.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
            // Nothing to reuse (the first reading): one listing, not keys then values.
            let (kvs, _) = store.list(self.prefix).await.map_err(store_err)?;
            return self.decode_all(kvs);
        }
        let (keys, _) = store.list_keys(self.prefix).await.map_err(store_err)?;
        let mut fresh = self.reuse(&keys);
        let missing: Vec<&KeyValue> = keys.iter().filter(|k| !fresh.contains_key(&k.key)).collect();
        if missing.len() > READ_ONE_BY_ONE {
            let (kvs, _) = store.list(self.prefix).await.map_err(store_err)?;
            return self.decode_all(kvs);
        }
        // Those not held in memory are read at once: one round trip, not one each.
        let mut values: Vec<(String, i64, Vec<u8>)> = Vec::new();
        let mut to_read = Vec::new();
        for k in missing {
            match recent.and_then(|r| r.at(&k.key, k.mod_revision)) {
                Some(v) => values.push((k.key.clone(), k.mod_revision, v.to_vec())),
                None => to_read.push(k.key.as_str()),
            }
        }
        // Changed or deleted since the listing: what the store holds now.
        let read = futures_util::future::try_join_all(to_read.into_iter().map(|k| store.get(k)))
            .await
            .map_err(store_err)?;
        values.extend(read.into_iter().flatten().map(|kv| (kv.key, kv.mod_revision, kv.value)));
        for (key, rev, value) in values {
            let rec = serde_json::from_slice(&value).map_err(|e| corrupt(&key, e))?;
            fresh.insert(key, (rev, Arc::new(rec)));
        }
        let out = keys
            .iter()
            .filter_map(|k| fresh.get(&k.key).map(|(rev, rec)| (k.key.clone(), rec.clone(), *rev)))
            .collect();
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(out)
    }

    /// The records held at the revisions listed.
    fn reuse(&self, keys: &[KeyValue]) -> Held<T> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter()
            .filter_map(|k| {
                let (rev, rec) = held.get(&k.key)?;
                (*rev == k.mod_revision).then(|| (k.key.clone(), (*rev, rec.clone())))
            })
            .collect()
    }

    /// A whole listing, decoded and held.
    fn decode_all(&self, kvs: Vec<KeyValue>) -> Result<Vec<(String, Arc<T>, i64)>, EcsError> {
        let mut fresh = Held::new();
        let mut out = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let rec: Arc<T> = Arc::new(serde_json::from_slice(&kv.value).map_err(|e| corrupt(&kv.key, e))?);
            fresh.insert(kv.key.clone(), (kv.mod_revision, rec.clone()));
            out.push((kv.key, rec, kv.mod_revision));
        }
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(out)
    }
}

fn corrupt(key: &str, e: serde_json::Error) -> EcsError {
    EcsError::Server(format!("corrupt record {key}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TaskRecord, TASKS_PREFIX};
    use gantry_store::instrumented::Instrumented;

    fn rec(id: &str, status: &str) -> Vec<u8> {
        let mut r = crate::tasks::test_record(id);
        r.task.last_status = status.into();
        serde_json::to_vec(&r).unwrap()
    }

    #[tokio::test]
    async fn only_records_at_a_new_revision_are_read_again() {
        let store = Instrumented::new();
        let (cache, recent) = (RecordCache::<TaskRecord>::new(TASKS_PREFIX), RecentTasks::default());
        let key = |i: u32| format!("{TASKS_PREFIX}a/r/c/{i}");
        for i in 0..3 {
            store.create(&key(i), &rec(&i.to_string(), "RUNNING")).await.unwrap();
        }
        let statuses = |all: &[(String, TaskRecord, i64)]| {
            all.iter()
                .map(|(k, r, _)| (k.clone(), r.task.last_status.clone()))
                .collect::<Vec<_>>()
        };
        let first = cache.all(&store, Some(&recent)).await.unwrap();
        assert_eq!(first.len(), 3);
        let reads = (store.gets(), store.lists());
        // Nothing changed: keys only.
        assert_eq!(cache.all(&store, Some(&recent)).await.unwrap(), first);
        assert_eq!((store.gets(), store.lists()), reads);
        // One changed, one deleted, one new: two records read.
        let rev = first[1].2;
        store.update(&key(1), &rec("1", "STOPPED"), rev).await.unwrap();
        store.delete(&key(0), None).await.unwrap();
        store.create(&key(3), &rec("3", "PENDING")).await.unwrap();
        let now = cache.all(&store, Some(&recent)).await.unwrap();
        assert_eq!(
            statuses(&now),
            [
                (key(1), "STOPPED".into()),
                (key(2), "RUNNING".into()),
                (key(3), "PENDING".into())
            ]
        );
        assert_eq!((store.gets(), store.lists()), (reads.0 + 2, reads.1));
        // A record held in memory at the listed revision is not read either.
        let rev3 = now[2].2;
        let changed = rec("3", "RUNNING");
        let rev3 = store.update(&key(3), &changed, rev3).await.unwrap();
        recent.remember(&key(3), rev3, &changed);
        let now = cache.all(&store, Some(&recent)).await.unwrap();
        assert_eq!(now[2].1.task.last_status, "RUNNING");
        assert_eq!((store.gets(), store.lists()), (reads.0 + 2, reads.1));
    }

    /// The changed records are read in one round trip, not one after another.
    #[tokio::test(start_paused = true)]
    async fn changed_records_are_read_at_once() {
        let trip = std::time::Duration::from_millis(10);
        let store = Instrumented::new().with_round_trip(trip);
        let cache = RecordCache::<TaskRecord>::new(TASKS_PREFIX);
        let key = |i: u32| format!("{TASKS_PREFIX}a/r/c/{i}");
        for i in 0..5 {
            store.create(&key(i), &rec(&i.to_string(), "PENDING")).await.unwrap();
        }
        let first = cache.all(&store, None).await.unwrap();
        for (k, _, rev) in &first[..4] {
            store.update(k, &rec("x", "RUNNING"), *rev).await.unwrap();
        }
        let began = tokio::time::Instant::now();
        let now = cache.all(&store, None).await.unwrap();
        assert_eq!(
            now.iter().filter(|(_, r, _)| r.task.last_status == "RUNNING").count(),
            4
        );
        assert_eq!(began.elapsed(), 2 * trip, "keys, then the four changed records at once");
    }

    #[tokio::test]
    async fn many_new_records_are_read_in_one_listing_and_a_corrupt_one_is_an_error() {
        let store = Instrumented::new();
        let cache = RecordCache::<TaskRecord>::new(TASKS_PREFIX);
        for i in 0..(READ_ONE_BY_ONE as u32 + 1) {
            let k = format!("{TASKS_PREFIX}a/r/c/{i}");
            store.create(&k, &rec(&i.to_string(), "RUNNING")).await.unwrap();
        }
        let all = cache.all(&store, None).await.unwrap();
        assert_eq!(all.len(), READ_ONE_BY_ONE + 1);
        assert_eq!((store.gets(), store.lists()), (0, 1));
        store.create(&format!("{TASKS_PREFIX}a/r/c/bad"), b"{").await.unwrap();
        let e = cache.all(&store, None).await.unwrap_err();
        assert!(e.to_string().contains("corrupt record /tasks/a/r/c/bad"), "{e}");
    }
}
