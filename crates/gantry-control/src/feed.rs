//! State machine replication of a server-local SQLite copy over the shared store: every
//! server keeps a whole copy (the CloudWatch logs, the metrics), and the copies stay identical
//! because every server applies the same writes in the same order. A write is an entry in the
//! shared store's feed (`<prefix>feed/`), and each server's follower applies the entries in
//! revision order (etcd's log orders them). Reads are local and need no other server; a lost
//! node loses nothing it shipped; a lost server loses nothing the others hold.
//!
//! The feed is short: the leader trims entries every copy has applied (each copy reports its
//! position under `<prefix>replicas/`), and entries older than a window whatever the copies
//! say, so a server that is away for long cannot hold etcd's size hostage. A copy that missed
//! trimmed entries knows it (the trim mark is listed with the feed, in the same snapshot),
//! refuses reads, and re-seeds itself: it fetches a whole copy from another server (a
//! `Seeder`), puts it in place of its own, and follows the feed on from that copy's position.

use gantry_store::{EventKind, KeyValue, Store, StoreError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// etcd refuses requests over 1.5 MiB; JSON escaping can grow a 1 MiB batch, so bigger
/// entries are split.
const MAX_ENTRY_BYTES: usize = 1_200_000;
/// A submitter waits this long for its own copy to apply the write.
const APPLY_WAIT: Duration = Duration::from_secs(10);
/// How often a copy reports its position (trimming lags by about this much).
const REPORT_EVERY: Duration = Duration::from_secs(2);
/// How long a copy with a gap waits before it tries to re-seed again.
const RESEED_RETRY: Duration = Duration::from_secs(15);

/// A server-local copy the feed keeps.
pub trait FeedCopy: Send + Sync + 'static {
    type Write: Serialize + DeserializeOwned + Send + Sync + 'static;
    type Error: Send + 'static;
    /// The feed's keys: `<PREFIX>feed/` entries, `<PREFIX>replicas/` positions.
    const PREFIX: &'static str;
    /// What the copy holds and its file, for messages ("logs", "logs.db").
    const WHAT: (&'static str, &'static str);
    /// Applies one write; `revision` is the feed entry's (None when written directly).
    fn apply(&self, w: &Self::Write, revision: Option<i64>) -> Result<(), Self::Error>;
    fn applied_revision(&self) -> Result<i64, Self::Error>;
    fn set_applied_revision(&self, rev: i64) -> Result<(), Self::Error>;
    /// The copy's error for a failure of its own or of the feed.
    fn backend(message: String) -> Self::Error;
    /// Whether an error means the copy could not write (it stops and lists again) rather
    /// than a refusal of the write, which every copy gives alike.
    fn is_backend(e: &Self::Error) -> bool;
    fn describe(e: &Self::Error) -> String;
    /// A write too big for one entry, in two halves applied in order (None: indivisible).
    fn split(w: &Self::Write) -> Option<(Self::Write, Self::Write)>;
    /// Writes the whole copy, its position included, to `dest` (a new file) as of one moment.
    fn snapshot(&self, dest: &Path) -> Result<(), Self::Error>;
    /// Replaces the whole copy, its position included, with the snapshot in `src`.
    fn restore(&self, src: &Path) -> Result<(), Self::Error>;
    /// The copy's file (None: in memory); snapshots and seeds are written next to it.
    fn file(&self) -> Option<&Path>;
}

/// Where a copy with a gap gets a whole copy from: another server's snapshot.
#[async_trait::async_trait]
pub trait Seeder: Send + Sync + 'static {
    /// Writes another server's snapshot of its copy of `what` ("logs", "metrics") to `dest`,
    /// a new file; returns which server gave it.
    async fn fetch(&self, what: &str, dest: &Path) -> Result<String, String>;
}

/// A scratch file next to the copy's (or in the temporary directory for one in memory).
fn scratch<C: FeedCopy>(local: &C, kind: &str) -> PathBuf {
    let name = format!("{}.{kind}-{}", C::WHAT.1, crate::random_uuid());
    match local.file().and_then(Path::parent) {
        Some(dir) => dir.join(name),
        None => std::env::temp_dir().join(name),
    }
}

/// The key under the feed's prefix holding the highest revision trimmed. Sorted after every
/// entry, so one listing shows the entries and the mark at the same revision.
fn mark_key<C: FeedCopy>() -> String {
    format!("{}feed/~trimmed", C::PREFIX)
}

/// A server's copy: written directly (one server) or through the feed.
pub struct Replica<C: FeedCopy> {
    local: Arc<C>,
    feed: Option<Arc<Feed<C>>>,
}

/// Submitters waiting for their write's result, by feed key.
type Waiters<E> = Mutex<HashMap<String, oneshot::Sender<Result<(), E>>>>;

struct Feed<C: FeedCopy> {
    store: Arc<dyn Store>,
    local: Arc<C>,
    replica: String,
    /// Writes this server submitted, by feed key, waiting for their result on this copy.
    waiting: Waiters<C::Error>,
    /// The trim mark, when it passed entries this copy never applied (0: no gap).
    gap: AtomicI64,
    /// Where a copy with a gap is re-seeded from (None: by hand).
    seeder: Option<Arc<dyn Seeder>>,
}

impl<C: FeedCopy> Replica<C> {
    /// One server: writes go straight to the local copy.
    pub fn local(local: Arc<C>) -> Replica<C> {
        Replica { local, feed: None }
    }

    /// A cluster's server (`replica` names its copy, stable across restarts): writes go
    /// through the feed, and `follow` must run for them to land. A gap is re-seeded from
    /// `seeder`.
    pub fn replicated(
        local: Arc<C>,
        store: Arc<dyn Store>,
        replica: &str,
        seeder: Option<Arc<dyn Seeder>>,
    ) -> Replica<C> {
        let feed = Feed {
            store,
            local: local.clone(),
            replica: replica.to_string(),
            waiting: Mutex::new(HashMap::new()),
            gap: AtomicI64::new(0),
            seeder,
        };
        Replica {
            local,
            feed: Some(Arc::new(feed)),
        }
    }

    /// Applies a write; through the feed, once this server's copy has applied it (so a
    /// client reads its own writes on the server it wrote to).
    pub async fn write(&self, w: C::Write) -> Result<(), C::Error> {
        match &self.feed {
            None => self.local.apply(&w, None),
            Some(f) => f.submit(w).await,
        }
    }

    /// The local copy to read from, unless it has a gap.
    pub fn read(&self) -> Result<&C, C::Error> {
        let (what, file) = C::WHAT;
        let Some(feed) = &self.feed else {
            return Ok(&self.local);
        };
        let remedy = match feed.seeder {
            Some(_) => "it is being re-seeded from another server's copy".to_string(),
            None => format!("copy {file} from another server to re-seed it"),
        };
        match feed.gap.load(Ordering::Relaxed) {
            0 => Ok(&self.local),
            mark => Err(C::backend(format!(
                "this server's copy of the {what} misses feed entries trimmed up to revision {mark} (the server was \
                 away longer than the feed keeps them); {remedy}"
            ))),
        }
    }

    /// A snapshot of the whole local copy for another server to re-seed from, as an open
    /// file already unlinked (it goes when closed). Refused while this copy has a gap.
    pub async fn snapshot(&self) -> Result<std::fs::File, C::Error> {
        self.read()?;
        let local = self.local.clone();
        let made = tokio::task::spawn_blocking(move || {
            let path = scratch(local.as_ref(), "snapshot");
            let opened = local.snapshot(&path).and_then(|()| {
                std::fs::File::open(&path).map_err(|e| C::backend(format!("opening the snapshot: {e}")))
            });
            let _ = std::fs::remove_file(&path);
            opened
        });
        made.await.map_err(|e| C::backend(e.to_string()))?
    }

    /// The local copy, for the retention sweep each copy does on its own.
    pub fn local_copy(&self) -> &C {
        &self.local
    }

    /// Applies the feed to the local copy until `stop`: lists what is new, then watches; a
    /// watch that ends or falls behind compaction lists again.
    pub async fn follow(&self, mut stop: watch::Receiver<bool>) {
        let Some(feed) = self.feed.clone() else { return };
        loop {
            tokio::select! {
                r = feed.clone().follow_once() => if let Err(e) = r {
                    tracing::warn!(error = %e, feed = C::PREFIX, "following the feed; listing again");
                },
                _ = stop.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

fn copy_err<C: FeedCopy>(e: C::Error) -> StoreError {
    StoreError::Backend(format!("{} copy: {}", C::WHAT.0, C::describe(&e)))
}

fn mark_of(kv: &KeyValue) -> i64 {
    String::from_utf8_lossy(&kv.value).parse().unwrap_or(0)
}

impl<C: FeedCopy> Feed<C> {
    /// Puts the write in the feed (a write too big for one entry as several, each applied in
    /// order) and returns this copy's result.
    async fn submit(&self, w: C::Write) -> Result<(), C::Error> {
        let value = serde_json::to_vec(&w).map_err(|e| C::backend(e.to_string()))?;
        if value.len() > MAX_ENTRY_BYTES {
            if let Some((a, b)) = C::split(&w) {
                Box::pin(self.submit(a)).await?;
                return Box::pin(self.submit(b)).await;
            }
        }
        self.submit_entry(value).await
    }

    async fn submit_entry(&self, value: Vec<u8>) -> Result<(), C::Error> {
        let key = format!("{}feed/{}", C::PREFIX, crate::random_uuid());
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(key.clone(), tx);
        if let Err(e) = self.store.create(&key, &value).await {
            self.waiting.lock().unwrap().remove(&key);
            return Err(C::backend(format!("state store: {e}")));
        }
        match tokio::time::timeout(APPLY_WAIT, rx).await {
            Ok(Ok(result)) => result,
            _ => {
                self.waiting.lock().unwrap().remove(&key);
                Err(C::backend(
                    "the write is stored but this server has not applied it yet".into(),
                ))
            }
        }
    }

    /// One list-then-watch pass; returns on the watch's end or error.
    async fn follow_once(self: Arc<Self>) -> Result<(), StoreError> {
        let feed = format!("{}feed/", C::PREFIX);
        let mark_key = mark_key::<C>();
        let (mut listed, listed_at) = self.store.list(&feed).await?;
        let applied = self.local.applied_revision().map_err(copy_err::<C>)?;
        let mark = listed.iter().find(|kv| kv.key == mark_key).map(mark_of).unwrap_or(0);
        // Entries at or below the mark may be gone; above it all are listed.
        if mark > applied {
            if self.gap.swap(mark, Ordering::Relaxed) == 0 {
                tracing::error!(
                    applied,
                    mark,
                    what = C::WHAT.0,
                    "this server's copy misses trimmed feed entries; its reads are refused until it is re-seeded"
                );
            }
            if let Some(seeder) = &self.seeder {
                match self.reseed(seeder.as_ref(), mark).await {
                    // Listed again from the seed's position.
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        tracing::warn!(error = %e, what = C::WHAT.0, "re-seeding this server's copy; trying again later")
                    }
                }
            }
        }
        listed.sort_by_key(|kv| kv.mod_revision);
        for kv in listed.iter().filter(|kv| kv.key != mark_key) {
            self.apply(kv)?;
        }
        self.local.set_applied_revision(listed_at).map_err(copy_err::<C>)?;
        self.report(listed_at).await?;
        let mut w = self.store.watch(&feed, listed_at).await?;
        let mut reported = Instant::now();
        // A copy with a gap lists again now and then, to try re-seeding again.
        let reseed = self.seeder.is_some() && self.gap.load(Ordering::Relaxed) > 0;
        let retry = tokio::time::sleep(RESEED_RETRY);
        tokio::pin!(retry);
        loop {
            let ev = tokio::select! {
                ev = w.events.recv() => ev,
                _ = tokio::time::sleep(REPORT_EVERY) => {
                    self.report(self.local.applied_revision().map_err(copy_err::<C>)?).await?;
                    reported = Instant::now();
                    continue;
                }
                _ = &mut retry, if reseed => return Ok(()),
            };
            let Some(ev) = ev else { return Ok(()) };
            let ev = ev?;
            // Watched in revision order: every entry below a new mark was applied already.
            if ev.kind == EventKind::Put && ev.kv.key != mark_key {
                self.apply(&ev.kv)?;
            }
            if reported.elapsed() >= REPORT_EVERY {
                self.report(self.local.applied_revision().map_err(copy_err::<C>)?)
                    .await?;
                reported = Instant::now();
            }
        }
    }

    /// Puts another server's whole copy in place of this one's. The seed must have applied
    /// up to the trim mark (a server that was away too may have a gap of its own).
    async fn reseed(&self, seeder: &dyn Seeder, mark: i64) -> Result<(), String> {
        let what = C::WHAT.0;
        let path = scratch(self.local.as_ref(), "seed");
        let fetched = seeder.fetch(what, &path).await;
        let local = self.local.clone();
        let seed = path.clone();
        let restored = match &fetched {
            Ok(_) => tokio::task::spawn_blocking(move || local.restore(&seed).and_then(|()| local.applied_revision()))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| C::describe(&e))),
            Err(e) => Err(e.clone()),
        };
        let _ = std::fs::remove_file(&path);
        let from = fetched.unwrap_or_default();
        let restored = restored?;
        if restored < mark {
            return Err(format!(
                "the copy from {from} has applied up to revision {restored}, below the trim mark {mark}"
            ));
        }
        self.gap.store(0, Ordering::Relaxed);
        tracing::warn!(from = %from, revision = restored, what, "re-seeded this server's copy from another server's");
        Ok(())
    }

    /// Applies one entry unless this copy has it, and hands the result to this server's
    /// waiting submitter.
    fn apply(&self, kv: &KeyValue) -> Result<(), StoreError> {
        if kv.mod_revision <= self.local.applied_revision().map_err(copy_err::<C>)? {
            return Ok(());
        }
        let result = match serde_json::from_slice::<C::Write>(&kv.value) {
            Ok(w) => self.local.apply(&w, Some(kv.mod_revision)),
            Err(e) => {
                // Written by a server of another version, say: skipped on every copy alike.
                tracing::error!(key = %kv.key, error = %e, "unreadable feed entry skipped");
                Ok(())
            }
        };
        // A write refused here is refused on every copy alike (the client's answer); a copy
        // that cannot write stops and lists again rather than skip the entry.
        if let Err(e) = &result {
            if C::is_backend(e) {
                return Err(StoreError::Backend(format!("applying {}: {}", kv.key, C::describe(e))));
            }
        }
        self.local
            .set_applied_revision(kv.mod_revision)
            .map_err(copy_err::<C>)?;
        if let Some(tx) = self.waiting.lock().unwrap().remove(&kv.key) {
            let _ = tx.send(result);
        }
        Ok(())
    }

    /// Records how far this copy has applied, for trimming.
    async fn report(&self, applied: i64) -> Result<(), StoreError> {
        let key = format!("{}replicas/{}", C::PREFIX, self.replica);
        let value = applied.to_string();
        match self.store.get(&key).await? {
            Some(kv) if kv.value == value.as_bytes() => Ok(()),
            Some(kv) => self
                .store
                .update(&key, value.as_bytes(), kv.mod_revision)
                .await
                .map(|_| ()),
            None => self.store.create(&key, value.as_bytes()).await.map(|_| ()),
        }
    }
}

/// What `trim` removes: entries every copy without a gap has applied, and entries older than
/// the window (in store revisions: `oldest_kept`) whatever the copies say.
pub fn trimmable<'a>(
    entries: &'a [KeyValue],
    mark_key: &str,
    mark: i64,
    replicas: &[i64],
    oldest_kept: i64,
) -> Vec<&'a KeyValue> {
    // Copies with a gap already need re-seeding: they do not hold trimming back.
    let floor = replicas.iter().copied().filter(|&a| a >= mark).min().unwrap_or(0);
    entries
        .iter()
        .filter(|kv| kv.key != mark_key && (kv.mod_revision <= floor || kv.mod_revision < oldest_kept))
        .collect()
}

/// Trims the feed (the leader's housekeeping). `oldest_kept` is the first store revision of
/// the window kept for copies that are away. Returns how many entries went.
pub async fn trim<C: FeedCopy>(store: &dyn Store, oldest_kept: i64) -> Result<usize, StoreError> {
    let mark_key = mark_key::<C>();
    let (entries, _) = store.list_keys(&format!("{}feed/", C::PREFIX)).await?;
    let mark_kv = store.get(&mark_key).await?;
    let mark = mark_kv.as_ref().map(mark_of).unwrap_or(0);
    let (replicas, _) = store.list(&format!("{}replicas/", C::PREFIX)).await?;
    let positions: Vec<i64> = replicas.iter().map(mark_of).collect();
    let gone = trimmable(&entries, &mark_key, mark, &positions, oldest_kept);
    let Some(top) = gone.iter().map(|kv| kv.mod_revision).max() else {
        return Ok(0);
    };
    // The mark moves first: a copy that lists after an entry is gone sees why.
    let value = top.max(mark).to_string();
    match mark_kv {
        Some(kv) => store.update(&mark_key, value.as_bytes(), kv.mod_revision).await?,
        None => store.create(&mark_key, value.as_bytes()).await?,
    };
    for kv in &gone {
        store.delete(&kv.key, Some(kv.mod_revision)).await?;
    }
    Ok(gone.len())
}

/// Where a SQLite copy (logs.db, metrics.db) records the last feed revision it applied (a
/// `replica` table its schema creates), and the whole copy's snapshots for re-seeding.
pub mod position {
    use rusqlite::{params, Connection, OptionalExtension};
    use std::path::Path;

    /// The table, for the copy's schema.
    pub const TABLE: &str = "CREATE TABLE IF NOT EXISTS replica (k TEXT PRIMARY KEY, v INTEGER);";

    /// The last revision applied (0: none).
    pub fn read(c: &Connection) -> rusqlite::Result<i64> {
        c.query_row("SELECT v FROM replica WHERE k = 'applied'", [], |r| r.get(0))
            .optional()
            .map(|v| v.unwrap_or(0))
    }

    /// Records `rev` as applied (never moving backwards); inside the write's own transaction
    /// when given one.
    pub fn advance(c: &Connection, rev: i64) -> rusqlite::Result<()> {
        c.execute(
            "INSERT INTO replica (k, v) VALUES ('applied', ?1) ON CONFLICT (k) DO UPDATE SET v = MAX(v, ?1)",
            params![rev],
        )
        .map(|_| ())
    }

    /// Writes the database `c` reads, as of one moment, to `dest` (a new file). Given a
    /// connection of its own to the file, the copy's writer goes on meanwhile (in WAL mode a
    /// reader does not block it).
    pub fn snapshot(c: &Connection, dest: &Path) -> rusqlite::Result<()> {
        let dest = dest.to_str().ok_or(rusqlite::Error::InvalidPath(dest.to_path_buf()))?;
        c.execute("VACUUM INTO ?1", [dest]).map(|_| ())
    }

    /// Replaces the whole database with the snapshot in `src`, in one transaction.
    pub fn restore(c: &mut Connection, src: &Path) -> rusqlite::Result<()> {
        c.restore("main", src, None::<fn(rusqlite::backup::Progress)>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARK: &str = "/logs/feed/~trimmed";

    fn kv(key: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: vec![],
            create_revision: rev,
            mod_revision: rev,
            version: 1,
        }
    }

    fn revs(v: Vec<&KeyValue>) -> Vec<i64> {
        v.iter().map(|k| k.mod_revision).collect()
    }

    #[test]
    fn trims_what_every_copy_applied_and_what_is_too_old() {
        let feed = [
            kv("/logs/feed/a", 10),
            kv("/logs/feed/b", 20),
            kv("/logs/feed/c", 30),
            kv(MARK, 5),
        ];
        // Two copies at 20 and 30: up to 20 goes; the mark itself never does.
        assert_eq!(revs(trimmable(&feed, MARK, 5, &[20, 30], 0)), [10, 20]);
        // A copy far behind holds entries back, but only within the window.
        assert_eq!(revs(trimmable(&feed, MARK, 5, &[5, 30], 0)), Vec::<i64>::new());
        assert_eq!(revs(trimmable(&feed, MARK, 5, &[5, 30], 25)), [10, 20]);
        // A copy below the mark has a gap already: it does not hold trimming back.
        assert_eq!(revs(trimmable(&feed, MARK, 15, &[12, 30], 0)), [10, 20, 30]);
        // No copy has reported: nothing is known applied.
        assert_eq!(revs(trimmable(&feed, MARK, 0, &[], 0)), Vec::<i64>::new());
    }
}
