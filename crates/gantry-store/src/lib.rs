//! The state store: a revisioned key-value store with watch, shaped like etcd's API and kept
//! small (get, list by prefix, create, update-if-revision, delete-if-revision, watch from a
//! revision, compact), as k3s's kine does. Backends: SQLite (embedded, `gantry dev`) and etcd
//! (clusters); both pass the `conformance` suite.

pub mod conformance;
pub mod election;
mod etcd;
pub mod instrumented;
mod sqlite;

pub use etcd::EtcdStore;
pub use sqlite::SqliteStore;

use async_trait::async_trait;

/// One key's current value and its revisions (etcd's mvccpb.KeyValue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: i64,
    /// Revision of the last write to the key.
    pub mod_revision: i64,
    /// Number of writes since creation (1 after create).
    pub version: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// A change, as a watch delivers it. For deletes, `kv.value` is empty and `kv.mod_revision`
/// is the deletion's revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    #[error("key {key} not found")]
    NotFound { key: String },
    #[error("key {key} was modified: expected revision {expected}, found {actual}")]
    Conflict { key: String, expected: i64, actual: i64 },
    #[error("revision {requested} has been compacted (oldest available is {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    #[error("store backend: {0}")]
    Backend(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A stream of events for keys under a prefix, in revision order.
pub struct Watch {
    pub events: tokio::sync::mpsc::Receiver<Result<Event>>,
}

#[async_trait]
pub trait Store: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// All keys starting with `prefix`, sorted by key, and the store revision they were read at.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)>;
    /// `list` without the values (keys and revisions; `value` is empty): for sweeps over
    /// large values.
    async fn list_keys(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let (mut kvs, rev) = self.list(prefix).await?;
        for kv in &mut kvs {
            kv.value = Vec::new();
        }
        Ok((kvs, rev))
    }
    /// Creates a key that must not exist. Returns the new revision.
    async fn create(&self, key: &str, value: &[u8]) -> Result<i64>;
    /// Replaces a key's value if its mod_revision is still `expected`. Returns the new revision.
    async fn update(&self, key: &str, value: &[u8], expected: i64) -> Result<i64>;
    /// Deletes a key, if `expected` is given only at that mod_revision. Returns the new revision.
    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<i64>;
    /// Events for keys under `prefix` with revision greater than `after`, then live ones.
    /// Dropping the `Watch` ends it at once, however quiet its prefix.
    async fn watch(&self, prefix: &str, after: i64) -> Result<Watch>;
    /// Forgets history at or below `revision` (watches from before it fail with Compacted).
    async fn compact(&self, revision: i64) -> Result<()>;
    /// The latest revision.
    async fn revision(&self) -> Result<i64>;
}

/// Revisions of history kept by `compact_history`: enough for any watcher that is a little
/// behind to catch up; one further behind gets `Compacted` and re-lists.
pub const HISTORY_KEPT: i64 = 10_000;

/// Compacts everything older than the newest `keep` revisions. Returns the revision compacted
/// to, or None when there was nothing to compact. Call it on a schedule (etcd's periodic
/// auto-compaction does the same).
pub async fn compact_history(store: &dyn Store, keep: i64) -> Result<Option<i64>> {
    let to = store.revision().await? - keep;
    if to <= 0 {
        return Ok(None);
    }
    store.compact(to).await?;
    Ok(Some(to))
}
