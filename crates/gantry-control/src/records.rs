//! JSON records in the store, read and written the way every API module does it: typed loads
//! and listings, atomic creates, and read-modify-write with compare-and-swap retried on
//! conflict. Each module maps `RecordError` into its service's error shape.

use gantry_store::{Store, StoreError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("state store: {0}")]
    Store(StoreError),
    #[error("corrupt record {key}: {message}")]
    Corrupt { key: String, message: String },
}

impl RecordError {
    /// True when the store could not be reached (a retryable, service-unavailable answer).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, RecordError::Store(StoreError::Backend(_)))
    }
}

/// A name as one store key segment: hex, since names may hold '/' (Secrets Manager and
/// Parameter Store names are paths).
pub fn hex_key(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone)]
pub struct Records {
    pub store: Arc<dyn Store>,
}

fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, RecordError> {
    serde_json::from_slice(value).map_err(|e| RecordError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

impl Records {
    pub fn new(store: Arc<dyn Store>) -> Records {
        Records { store }
    }

    /// The record at `key` and its revision.
    pub async fn load<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, i64)>, RecordError> {
        match self.store.get(key).await.map_err(RecordError::Store)? {
            Some(kv) => Ok(Some((decode(key, &kv.value)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    /// Every record under `prefix`, in key order.
    pub async fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, RecordError> {
        let (kvs, _) = self.store.list(prefix).await.map_err(RecordError::Store)?;
        kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
    }

    /// Creates `key`; `Ok(false)` when it already exists.
    pub async fn create<T: Serialize>(&self, key: &str, v: &T) -> Result<bool, RecordError> {
        match self
            .store
            .create(key, &serde_json::to_vec(v).expect("serialises"))
            .await
        {
            Ok(_) => Ok(true),
            Err(StoreError::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(RecordError::Store(e)),
        }
    }

    /// Deletes `key` (absent is fine).
    pub async fn delete(&self, key: &str) -> Result<(), RecordError> {
        match self.store.delete(key, None).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(RecordError::Store(e)),
        }
    }

    /// Read-modify-write of one record with compare-and-swap, retried on conflict. `f` sees
    /// the current value (None when absent) and returns the new one (None deletes) and a
    /// result; nothing is written when the value does not change.
    pub async fn update<T, R, E>(
        &self,
        key: &str,
        mut f: impl FnMut(Option<T>) -> Result<(Option<T>, R), E>,
    ) -> Result<R, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<RecordError>,
    {
        loop {
            let current = self.load::<T>(key).await?;
            let rev = current.as_ref().map(|c| c.1);
            let before = current.as_ref().map(|c| serde_json::to_vec(&c.0).expect("json"));
            let (next, out) = f(current.map(|c| c.0))?;
            let after = next.as_ref().map(|n| serde_json::to_vec(n).expect("json"));
            if after == before {
                return Ok(out);
            }
            let written = match (after, rev) {
                (Some(v), Some(rev)) => self.store.update(key, &v, rev).await.map(drop),
                (Some(v), None) => self.store.create(key, &v).await.map(drop),
                (None, Some(rev)) => self.store.delete(key, Some(rev)).await.map(drop),
                (None, None) => Ok(()),
            };
            match written {
                Ok(()) => return Ok(out),
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. } | StoreError::NotFound { .. }) => {
                    continue
                }
                Err(e) => return Err(RecordError::Store(e).into()),
            }
        }
    }
}
