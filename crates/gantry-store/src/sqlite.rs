//! SQLite backend (WAL). Two tables: `kv` holds current values, `log` every write in revision
//! order (the history watches replay from, trimmed by compaction). Each write is one
//! transaction touching both, so the revision sequence and the values never disagree.

use crate::{Event, EventKind, KeyValue, Result, Store, StoreError, Watch};
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc};

pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    events: broadcast::Sender<Event>,
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The smallest string greater than every string with this prefix (for range scans).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut b = prefix.as_bytes().to_vec();
    while let Some(last) = b.pop() {
        if last < 0x7f {
            b.push(last + 1);
            return String::from_utf8(b).ok();
        }
    }
    None
}

fn row_kv(r: &rusqlite::Row) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: r.get(0)?,
        value: r.get(1)?,
        create_revision: r.get(2)?,
        mod_revision: r.get(3)?,
        version: r.get(4)?,
    })
}

impl SqliteStore {
    /// The keys under `prefix` in one read transaction (the revision matches the rows), with
    /// their values or without.
    fn listing(&self, prefix: &str, values: bool) -> Result<(Vec<KeyValue>, i64)> {
        let mut c = self.inner.conn();
        let tx = c.transaction().map_err(backend)?;
        let end = prefix_end(prefix).unwrap_or_else(|| "\u{7f}".repeat(8));
        let kvs = {
            let mut stmt = tx
                .prepare(
                    "SELECT key, CASE WHEN ?3 THEN value ELSE X'' END, create_rev, mod_rev, version FROM kv \
                     WHERE key >= ?1 AND key < ?2 ORDER BY key",
                )
                .map_err(backend)?;
            let rows = stmt.query_map(params![prefix, end, values], row_kv).map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)?
        };
        let rev = Inner::revision(&tx)?;
        tx.commit().map_err(backend)?;
        Ok((kvs, rev))
    }

    pub fn open(path: &Path) -> Result<SqliteStore> {
        let conn = Connection::open(path).map_err(backend)?;
        Self::init(conn)
    }

    pub fn in_memory() -> Result<SqliteStore> {
        Self::init(Connection::open_in_memory().map_err(backend)?)
    }

    fn init(conn: Connection) -> Result<SqliteStore> {
        // WAL + synchronous=NORMAL: a committed write survives a crash of the process (kill -9);
        // FULL would also survive power loss at an fsync per commit.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL, version INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS log (rev INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, value BLOB NOT NULL, deleted INTEGER NOT NULL, create_rev INTEGER NOT NULL, version INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS log_key ON log(key, rev);
             CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        )
        .map_err(backend)?;
        let (events, _) = broadcast::channel(4096);
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                events,
            }),
        })
    }
}

impl Inner {
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current(c: &Connection, key: &str) -> Result<Option<KeyValue>> {
        c.query_row(
            "SELECT key, value, create_rev, mod_rev, version FROM kv WHERE key = ?1",
            params![key],
            row_kv,
        )
        .optional()
        .map_err(backend)
    }

    fn revision(c: &Connection) -> Result<i64> {
        c.query_row(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'log'), 0)",
            [],
            |r| r.get(0),
        )
        .map_err(backend)
    }

    fn compacted(c: &Connection) -> Result<i64> {
        c.query_row(
            "SELECT COALESCE((SELECT value FROM meta WHERE name = 'compacted'), 0)",
            [],
            |r| r.get(0),
        )
        .map_err(backend)
    }

    /// Appends to the log and applies to kv in one transaction; publishes the event after commit,
    /// still holding the lock.
    fn write(
        &self,
        key: &str,
        check: impl FnOnce(Option<&KeyValue>) -> Result<()>,
        value: Option<&[u8]>,
    ) -> Result<i64> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(backend)?;
        let cur = Self::current(&tx, key)?;
        check(cur.as_ref())?;
        let (create_rev, version) = match (&cur, value) {
            (Some(kv), Some(_)) => (kv.create_revision, kv.version + 1),
            (Some(kv), None) => (kv.create_revision, kv.version),
            (None, _) => (0, 1),
        };
        tx.execute(
            "INSERT INTO log (key, value, deleted, create_rev, version) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![key, value.unwrap_or(&[]), value.is_none() as i64, create_rev, version],
        )
        .map_err(backend)?;
        let rev = tx.last_insert_rowid();
        let create_rev = if create_rev == 0 { rev } else { create_rev };
        let event = match value {
            Some(v) => {
                if cur.is_none() {
                    tx.execute("UPDATE log SET create_rev = ?1 WHERE rev = ?1", params![rev])
                        .map_err(backend)?;
                }
                tx.execute(
                    "INSERT INTO kv (key, value, create_rev, mod_rev, version) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value, mod_rev = excluded.mod_rev, version = excluded.version",
                    params![key, v, create_rev, rev, version],
                )
                .map_err(backend)?;
                Event {
                    kind: EventKind::Put,
                    kv: KeyValue {
                        key: key.into(),
                        value: v.to_vec(),
                        create_revision: create_rev,
                        mod_revision: rev,
                        version,
                    },
                }
            }
            None => {
                tx.execute("DELETE FROM kv WHERE key = ?1", params![key])
                    .map_err(backend)?;
                Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: key.into(),
                        value: vec![],
                        create_revision: create_rev,
                        mod_revision: rev,
                        version,
                    },
                }
            }
        };
        tx.commit().map_err(backend)?;
        // Published under the connection lock, so events leave in revision order: a watcher
        // drops anything older than what it has seen, and two writers publishing out of order
        // would lose one of them.
        let _ = self.events.send(event);
        drop(c);
        Ok(rev)
    }

    fn history(&self, prefix: &str, after: i64) -> Result<Vec<Event>> {
        let c = self.conn();
        let compacted = Self::compacted(&c)?;
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        let end = prefix_end(prefix).unwrap_or_else(|| "\u{7f}".repeat(8));
        let mut stmt = c
            .prepare("SELECT key, value, create_rev, rev, version, deleted FROM log WHERE rev > ?1 AND key >= ?2 AND key < ?3 ORDER BY rev")
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![after, prefix, end], |r| {
                let kv = row_kv(r)?;
                let deleted: i64 = r.get(5)?;
                Ok(Event {
                    kind: if deleted != 0 {
                        EventKind::Delete
                    } else {
                        EventKind::Put
                    },
                    kv,
                })
            })
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Inner::current(&self.inner.conn(), key)
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        self.listing(prefix, true)
    }

    async fn list_keys(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        self.listing(prefix, false)
    }

    async fn create(&self, key: &str, value: &[u8]) -> Result<i64> {
        self.inner.write(
            key,
            |cur| match cur {
                Some(_) => Err(StoreError::AlreadyExists { key: key.into() }),
                None => Ok(()),
            },
            Some(value),
        )
    }

    async fn update(&self, key: &str, value: &[u8], expected: i64) -> Result<i64> {
        self.inner.write(
            key,
            |cur| match cur {
                None => Err(StoreError::NotFound { key: key.into() }),
                Some(kv) if kv.mod_revision != expected => Err(StoreError::Conflict {
                    key: key.into(),
                    expected,
                    actual: kv.mod_revision,
                }),
                Some(_) => Ok(()),
            },
            Some(value),
        )
    }

    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<i64> {
        self.inner.write(
            key,
            |cur| match (cur, expected) {
                (None, _) => Err(StoreError::NotFound { key: key.into() }),
                (Some(kv), Some(e)) if kv.mod_revision != e => Err(StoreError::Conflict {
                    key: key.into(),
                    expected: e,
                    actual: kv.mod_revision,
                }),
                _ => Ok(()),
            },
            None,
        )
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<Watch> {
        // Subscribe before reading history so nothing falls between the two.
        let mut live = self.inner.events.subscribe();
        let replay = self.inner.history(prefix, after)?;
        let (tx, rx) = mpsc::channel(1024);
        let inner = self.inner.clone();
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            let mut last = after;
            for e in replay {
                last = e.kv.mod_revision;
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            loop {
                let received = tokio::select! {
                    r = live.recv() => r,
                    // The watcher is gone. Without this, a watch of a quiet prefix would live
                    // (copying every event of the store) until its prefix next changed.
                    _ = tx.closed() => return,
                };
                match received {
                    Ok(e) => {
                        if e.kv.mod_revision > last && e.kv.key.starts_with(&prefix) {
                            last = e.kv.mod_revision;
                            if tx.send(Ok(e)).await.is_err() {
                                return;
                            }
                        }
                    }
                    // Fell behind the broadcast buffer: catch up from the log.
                    Err(broadcast::error::RecvError::Lagged(_)) => match inner.history(&prefix, last) {
                        Ok(events) => {
                            for e in events {
                                last = e.kv.mod_revision;
                                if tx.send(Ok(e)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(err) => {
                            let _ = tx.send(Err(err)).await;
                            return;
                        }
                    },
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Watch { events: rx })
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        let mut c = self.inner.conn();
        let tx = c.transaction().map_err(backend)?;
        // Keep each live key's latest log entry: it is its current value's history.
        tx.execute("DELETE FROM log WHERE rev <= ?1", params![revision])
            .map_err(backend)?;
        tx.execute(
            "INSERT INTO meta (name, value) VALUES ('compacted', ?1) ON CONFLICT(name) DO UPDATE SET value = MAX(value, excluded.value)",
            params![revision],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    async fn revision(&self) -> Result<i64> {
        Inner::revision(&self.inner.conn())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("a/"), Some("a0".into()));
        assert_eq!(prefix_end(""), None);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn sqlite_in_memory_passes_conformance() {
        crate::conformance::run(|| async { Arc::new(SqliteStore::in_memory().unwrap()) as Arc<dyn Store> }).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn sqlite_file_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let rev = {
            let s = SqliteStore::open(&path).unwrap();
            s.create("/a", b"1").await.unwrap();
            s.update("/a", b"2", 1).await.unwrap()
        };
        let s = SqliteStore::open(&path).unwrap();
        let kv = s.get("/a").await.unwrap().unwrap();
        assert_eq!(
            (kv.value.as_slice(), kv.mod_revision, kv.version, kv.create_revision),
            (&b"2"[..], rev, 2, 1)
        );
        assert_eq!(s.revision().await.unwrap(), 2);
        assert_eq!(
            s.create("/b", b"x").await.unwrap(),
            3,
            "revisions continue after reopen"
        );
    }

    /// A watch dropped by its watcher ends even when its prefix never changes again (a load
    /// balancer re-watches its quiet prefixes on every security group change: each such watch
    /// used to stay, copying every later event of the store).
    #[tokio::test(flavor = "multi_thread")]
    async fn a_dropped_watch_of_a_quiet_prefix_ends() {
        let s = SqliteStore::in_memory().unwrap();
        let followers = || s.inner.events.receiver_count();
        let before = followers();
        for _ in 0..20 {
            drop(s.watch("/quiet/", 0).await.unwrap());
        }
        s.create("/busy/a", b"x").await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while followers() > before && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(followers(), before, "every dropped watch ended");
        let mut kept = s.watch("/busy/", 0).await.unwrap();
        assert_eq!(
            kept.events.recv().await.unwrap().unwrap().kv.key,
            "/busy/a",
            "a kept watch follows"
        );
    }

    /// A long churn with compaction on a schedule: the database file stops growing (freed
    /// pages are reused), and watchers that fell behind are told to re-list.
    #[tokio::test(flavor = "multi_thread")]
    async fn churn_with_compaction_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let s = SqliteStore::open(&path).unwrap();
        let value = vec![b'x'; 2048];
        let size = || {
            let db = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let wal = std::fs::metadata(path.with_extension("db-wal"))
                .map(|m| m.len())
                .unwrap_or(0);
            db + wal
        };
        let churn = |rounds: usize| {
            let s = &s;
            let value = &value;
            async move {
                for i in 0..rounds {
                    let key = format!("/tasks/{}", i % 50);
                    match s.get(&key).await.unwrap() {
                        None => s.create(&key, value).await.unwrap(),
                        Some(kv) if i % 7 == 0 => s.delete(&key, Some(kv.mod_revision)).await.unwrap(),
                        Some(kv) => s.update(&key, value, kv.mod_revision).await.unwrap(),
                    };
                    if i % 500 == 0 {
                        crate::compact_history(s, 1000).await.unwrap();
                    }
                }
            }
        };
        churn(6000).await;
        let early = size();
        churn(24000).await;
        let late = size();
        assert!(
            late < early + early / 4,
            "state grew from {early} to {late} bytes under compaction"
        );
        let (count,): (i64,) = {
            let c = s.inner.conn();
            c.query_row("SELECT COUNT(*) FROM log", [], |r| Ok((r.get(0)?,)))
                .unwrap()
        };
        assert!(count <= 1500, "history kept {count} revisions, expected about 1000");
        let err = s.watch("/tasks/", 1).await.err();
        assert!(matches!(err, Some(StoreError::Compacted { .. })), "{err:?}");
    }
}
