//! Replica logs: copies that follow one feed hold the same groups, streams and events with
//! the same ids (so paging tokens work on any server); trimming keeps the feed short; a copy
//! that missed trimmed entries refuses reads instead of answering from a partial copy, and
//! re-seeds itself from another copy's snapshot.

use gantry_control::feed::Seeder;
use gantry_control::logfeed::{self, Logs};
use gantry_control::logstore::{LogOp, LogStore, LogWrite, LogsError};
use gantry_store::{SqliteStore, Store};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const S: (&str, &str) = ("123456789012", "us-east-1");

fn copy(store: &Arc<dyn Store>, id: &str, stop: &watch::Receiver<bool>) -> Arc<Logs> {
    seeded_copy(store, id, stop, None)
}

fn seeded_copy(
    store: &Arc<dyn Store>,
    id: &str,
    stop: &watch::Receiver<bool>,
    seeder: Option<Arc<dyn Seeder>>,
) -> Arc<Logs> {
    let logs = Arc::new(Logs::replicated(
        Arc::new(LogStore::in_memory().unwrap()),
        store.clone(),
        id,
        seeder,
    ));
    let (l, stop) = (logs.clone(), stop.clone());
    tokio::spawn(async move { l.follow(stop).await });
    logs
}

fn w(group: &str, op: LogOp) -> LogWrite {
    LogWrite::new(S, group, 1_000, op)
}

fn put(stream: &str, messages: &[&str]) -> LogOp {
    LogOp::Put {
        stream: stream.into(),
        events: messages
            .iter()
            .enumerate()
            .map(|(i, m)| (i as i64, m.to_string()))
            .collect(),
    }
}

fn events(l: &Logs) -> Vec<(i64, String)> {
    try_events(l).unwrap()
}

/// The stream's events, or why the copy cannot say.
fn try_events(l: &Logs) -> Result<Vec<(i64, String)>, LogsError> {
    let events = l.read()?.stream_events(S, "/app", "s", None, None, true, None, 100)?;
    Ok(events.into_iter().map(|e| (e.id, e.message)).collect())
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn copies_agree_and_a_copy_with_a_gap_refuses_reads() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let (_stop_tx, stop) = watch::channel(false);
    let (a, b) = (copy(&store, "a", &stop), copy(&store, "b", &stop));

    a.write(w("/app", LogOp::CreateGroup)).await.unwrap();
    // Refusals come back to the writer, from its own copy, as on one server.
    assert_eq!(
        b.write(w("/app", LogOp::CreateGroup)).await,
        Err(LogsError::GroupExists)
    );
    b.write(w("/app", LogOp::CreateStream { stream: "s".into() }))
        .await
        .unwrap();
    a.write(w("/app", put("s", &["one", "two"]))).await.unwrap();
    b.write(w("/app", put("s", &["three"]))).await.unwrap();
    assert_eq!(a.write(w("/none", put("s", &["x"]))).await, Err(LogsError::NoGroup));

    until("both copies to hold the three events", || {
        events(&a).len() == 3 && events(&b).len() == 3
    })
    .await;
    assert_eq!(
        events(&a),
        events(&b),
        "the same events with the same ids on both copies"
    );

    // Once both copies have applied everything (and reported it), trimming empties the feed.
    let feed_len = || async { store.list("/logs/feed/").await.unwrap().0.len() };
    assert!(feed_len().await >= 5);
    let applied = store.revision().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reported(&store, 2, applied).await {
        assert!(Instant::now() < deadline, "timed out waiting for both copies to report");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let trimmed = logfeed::trim(store.as_ref(), 0).await.unwrap();
    assert!(trimmed >= 5, "trimmed {trimmed}");
    assert_eq!(feed_len().await, 1, "only the trim mark is left");

    // A new copy now starts behind the mark: it has a gap and says so.
    let late = copy(&store, "late", &stop);
    until("the late copy to see the gap", || late.read().is_err()).await;
    assert!(matches!(late.read(), Err(LogsError::Backend(m)) if m.contains("re-seed")));
    // The others are whole and keep serving and applying.
    a.write(w("/app", put("s", &["four"]))).await.unwrap();
    until("b to apply the write after the trim", || events(&b).len() == 4).await;

    // A copy with a gap gives no snapshot to re-seed from.
    assert!(matches!(late.snapshot().await, Err(LogsError::Backend(m)) if m.contains("misses feed entries")));
    // One that can fetch a whole copy re-seeds itself and follows the feed on from there.
    let seeded = seeded_copy(&store, "seeded", &stop, Some(Arc::new(FromCopy(a.clone()))));
    until("the seeded copy to serve the events", || try_events(&seeded).is_ok()).await;
    assert_eq!(events(&seeded), events(&a), "the same events with the same ids");
    a.write(w("/app", put("s", &["five"]))).await.unwrap();
    until("the seeded copy to apply a later write", || events(&seeded).len() == 5).await;
    assert_eq!(events(&seeded), events(&a));
}

/// Seeds from another copy in this process, as a server's seeder does over the network.
struct FromCopy(Arc<Logs>);

#[async_trait::async_trait]
impl Seeder for FromCopy {
    async fn fetch(&self, what: &str, dest: &Path) -> Result<String, String> {
        assert_eq!(what, "logs");
        let mut snapshot = self.0.snapshot().await.map_err(|e| e.to_string())?;
        let mut out = std::fs::File::create(dest).map_err(|e| e.to_string())?;
        std::io::copy(&mut snapshot, &mut out).map_err(|e| e.to_string())?;
        Ok("copy a".into())
    }
}

/// Whether `copies` copies have reported positions of at least `rev`.
async fn reported(store: &Arc<dyn Store>, copies: usize, rev: i64) -> bool {
    let (replicas, _) = store.list("/logs/replicas/").await.unwrap();
    let position = |v: &[u8]| String::from_utf8_lossy(v).parse::<i64>().unwrap_or(0);
    replicas.len() == copies && replicas.iter().all(|kv| position(&kv.value) >= rev)
}

#[tokio::test]
async fn a_copy_far_behind_is_left_behind_after_the_window() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let (_stop_tx, stop) = watch::channel(false);
    let a = copy(&store, "a", &stop);
    a.write(w("/app", LogOp::CreateGroup)).await.unwrap();
    // A copy that reported long ago and never again holds the feed only within the window.
    store.create("/logs/replicas/gone", b"0").await.unwrap();
    let before = store.list("/logs/feed/").await.unwrap().0.len();
    assert_eq!(
        logfeed::trim(store.as_ref(), 0).await.unwrap(),
        0,
        "held back by the absent copy"
    );
    let oldest_kept = store.revision().await.unwrap() + 1;
    assert_eq!(logfeed::trim(store.as_ref(), oldest_kept).await.unwrap(), before);
}

#[tokio::test]
async fn a_batch_too_big_for_one_entry_is_split_and_kept_in_order() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let (_stop_tx, stop) = watch::channel(false);
    let (a, b) = (copy(&store, "a", &stop), copy(&store, "b", &stop));
    a.write(w("/app", LogOp::CreateGroup)).await.unwrap();
    a.write(w("/app", LogOp::CreateStream { stream: "s".into() }))
        .await
        .unwrap();
    // Control characters are escaped as \u0001 in JSON: 6 bytes each, 30 KiB events.
    let messages: Vec<String> = (0..40).map(|i| format!("{i:02}{}", "\u{1}".repeat(30_000))).collect();
    let refs: Vec<&str> = messages.iter().map(String::as_str).collect();
    let entries_before = store.list("/logs/feed/").await.unwrap().0.len();
    a.write(w("/app", put("s", &refs))).await.unwrap();
    let entries = store.list("/logs/feed/").await.unwrap().0;
    assert!(entries.len() - entries_before > 1, "split into several entries");
    assert!(entries.iter().all(|kv| kv.value.len() <= 1_200_000));
    until("b to hold the 40 events", || events(&b).len() == 40).await;
    let got: Vec<String> = events(&b).into_iter().map(|(_, m)| m[..2].to_string()).collect();
    let want: Vec<String> = (0..40).map(|i| format!("{i:02}")).collect();
    assert_eq!(got, want, "in order");
    assert_eq!(events(&a), events(&b));
}

#[test]
fn a_file_copy_snapshots_and_restores_whole() {
    let dir = tempfile::tempdir().unwrap();
    let source = LogStore::open(&dir.path().join("logs.db")).unwrap();
    for op in [
        LogOp::CreateGroup,
        LogOp::CreateStream { stream: "s".into() },
        put("s", &["one", "two"]),
    ] {
        source.apply(&w("/app", op), Some(16_384)).unwrap();
    }
    source.set_applied_revision(7).unwrap();
    // A file copy is read through a connection of its own.
    let snapshot = dir.path().join("snapshot");
    source.snapshot(&snapshot).unwrap();
    let target = LogStore::open(&dir.path().join("other.db")).unwrap();
    target.apply(&w("/old", LogOp::CreateGroup), None).unwrap();
    target.restore(&snapshot).unwrap();
    assert_eq!(target.applied_revision().unwrap(), 7);
    let messages = |l: &LogStore| {
        let e = l.stream_events(S, "/app", "s", None, None, true, None, 10).unwrap();
        e.into_iter().map(|e| (e.id, e.message)).collect::<Vec<_>>()
    };
    assert_eq!(messages(&target), messages(&source));
    assert_eq!(
        target.apply(&w("/old", LogOp::CreateStream { stream: "x".into() }), None),
        Err(LogsError::NoGroup),
        "what the copy held before is gone"
    );
}
