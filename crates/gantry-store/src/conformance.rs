//! The behaviour every backend must have. Backends call `run` from their tests with a factory
//! that makes a fresh, empty store.

use crate::{EventKind, KeyValue, Store, StoreError};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

async fn next(w: &mut crate::Watch) -> crate::Event {
    tokio::time::timeout(Duration::from_secs(5), w.events.recv())
        .await
        .expect("watch event within 5s")
        .expect("watch open")
        .expect("watch event ok")
}

pub async fn run<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    create_get_update_delete(make().await).await;
    list_by_prefix(make().await).await;
    revisions_only_move_on_success(make().await).await;
    watch_replays_then_follows(make().await).await;
    compaction(make().await).await;
    compare_and_swap_loses_no_update(make().await).await;
    concurrent_writers_lose_no_watch_event(make().await).await;
}

/// Writers racing each other: a watcher still sees every write, in revision order.
async fn concurrent_writers_lose_no_watch_event(s: Arc<dyn Store>) {
    let mut w = s.watch("/race/", s.revision().await.unwrap()).await.unwrap();
    let mut handles = Vec::new();
    for t in 0..8 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..50 {
                s.create(&format!("/race/{t}/{i}"), b"v").await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let mut last = 0;
    for n in 0..400 {
        let e = tokio::time::timeout(Duration::from_secs(5), w.events.recv())
            .await
            .unwrap_or_else(|_| panic!("only {n} of 400 events arrived"))
            .expect("watch open")
            .expect("watch event ok");
        assert!(
            e.kv.mod_revision > last,
            "out of order: {} after {last}",
            e.kv.mod_revision
        );
        last = e.kv.mod_revision;
    }
}

async fn create_get_update_delete(s: Arc<dyn Store>) {
    assert_eq!(s.get("/k").await.unwrap(), None);
    let r1 = s.create("/k", b"v1").await.unwrap();
    let kv = s.get("/k").await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision, kv.version),
        (&b"v1"[..], r1, r1, 1)
    );
    assert_eq!(
        s.create("/k", b"again").await,
        Err(StoreError::AlreadyExists { key: "/k".into() })
    );
    let r2 = s.update("/k", b"v2", r1).await.unwrap();
    assert!(r2 > r1);
    assert_eq!(
        s.update("/k", b"v3", r1).await,
        Err(StoreError::Conflict {
            key: "/k".into(),
            expected: r1,
            actual: r2
        })
    );
    let kv = s.get("/k").await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision, kv.version),
        (&b"v2"[..], r1, r2, 2)
    );
    assert_eq!(
        s.update("/missing", b"x", 1).await,
        Err(StoreError::NotFound { key: "/missing".into() })
    );
    assert_eq!(
        s.delete("/k", Some(r1)).await,
        Err(StoreError::Conflict {
            key: "/k".into(),
            expected: r1,
            actual: r2
        })
    );
    let r3 = s.delete("/k", Some(r2)).await.unwrap();
    assert!(r3 > r2);
    assert_eq!(s.get("/k").await.unwrap(), None);
    assert_eq!(
        s.delete("/k", None).await,
        Err(StoreError::NotFound { key: "/k".into() })
    );
    let r4 = s.create("/k", b"new").await.unwrap();
    let kv = s.get("/k").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.version), (r4, 1), "a recreated key starts over");
    s.delete("/k", None).await.unwrap();
}

async fn list_by_prefix(s: Arc<dyn Store>) {
    for k in ["/a/2", "/a/1", "/ab", "/a", "/b/1", "/a/3/x"] {
        s.create(k, k.as_bytes()).await.unwrap();
    }
    let (kvs, rev) = s.list("/a/").await.unwrap();
    let keys: Vec<&str> = kvs.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["/a/1", "/a/2", "/a/3/x"]);
    assert_eq!(rev, s.revision().await.unwrap());
    assert_eq!(s.list("/zzz").await.unwrap().0.len(), 0);
    assert_eq!(s.list("").await.unwrap().0.len(), 6);
    let (keys_only, rev2) = s.list_keys("/a/").await.unwrap();
    let revs = |v: &[KeyValue]| v.iter().map(|k| (k.key.clone(), k.mod_revision)).collect::<Vec<_>>();
    assert_eq!((revs(&keys_only), rev2), (revs(&kvs), rev));
    assert!(
        keys_only.iter().all(|k| k.value.is_empty()),
        "list_keys leaves the values out"
    );
}

async fn revisions_only_move_on_success(s: Arc<dyn Store>) {
    let r0 = s.revision().await.unwrap();
    let r1 = s.create("/x", b"1").await.unwrap();
    assert_eq!(r1, r0 + 1);
    let _ = s.create("/x", b"dup").await;
    let _ = s.update("/x", b"stale", r1 + 100).await;
    let _ = s.delete("/nope", None).await;
    assert_eq!(
        s.revision().await.unwrap(),
        r1,
        "failed writes leave the revision alone"
    );
    let r2 = s.create("/y", b"2").await.unwrap();
    assert_eq!(r2, r1 + 1);
}

async fn watch_replays_then_follows(s: Arc<dyn Store>) {
    let r1 = s.create("/w/a", b"1").await.unwrap();
    let r2 = s.update("/w/a", b"2", r1).await.unwrap();
    s.create("/other", b"x").await.unwrap();
    let r3 = s.delete("/w/a", None).await.unwrap();

    let mut w = s.watch("/w/", 0).await.unwrap();
    let e = next(&mut w).await;
    assert_eq!(
        (e.kind, e.kv.mod_revision, e.kv.value.as_slice()),
        (EventKind::Put, r1, &b"1"[..])
    );
    let e = next(&mut w).await;
    assert_eq!((e.kind, e.kv.mod_revision, e.kv.version), (EventKind::Put, r2, 2));
    let e = next(&mut w).await;
    assert_eq!(
        (e.kind, e.kv.mod_revision, e.kv.key.as_str()),
        (EventKind::Delete, r3, "/w/a")
    );
    // Live events, filtered by prefix.
    s.create("/other2", b"x").await.unwrap();
    let r4 = s.create("/w/b", b"live").await.unwrap();
    let e = next(&mut w).await;
    assert_eq!(
        (e.kind, e.kv.mod_revision, e.kv.key.as_str()),
        (EventKind::Put, r4, "/w/b")
    );

    // From the middle of history.
    let mut w2 = s.watch("/w/", r2).await.unwrap();
    assert_eq!(next(&mut w2).await.kv.mod_revision, r3);
    assert_eq!(next(&mut w2).await.kv.mod_revision, r4);

    // Many live writes arrive complete and in order.
    let mut last = r4;
    for i in 0..500 {
        s.create(&format!("/w/n{i:04}"), b"v").await.unwrap();
    }
    for _ in 0..500 {
        let e = next(&mut w).await;
        assert!(e.kv.mod_revision > last);
        last = e.kv.mod_revision;
    }
}

async fn compaction(s: Arc<dyn Store>) {
    let r1 = s.create("/c/a", b"1").await.unwrap();
    let r2 = s.update("/c/a", b"2", r1).await.unwrap();
    let r3 = s.create("/c/b", b"3").await.unwrap();
    s.compact(r2).await.unwrap();
    assert!(matches!(s.watch("/c/", r1).await, Err(StoreError::Compacted { .. })));
    let mut w = s.watch("/c/", r2).await.unwrap();
    assert_eq!(next(&mut w).await.kv.mod_revision, r3);
    assert_eq!(
        s.get("/c/a").await.unwrap().unwrap().value,
        b"2",
        "values survive compaction"
    );
    assert_eq!(s.list("/c/").await.unwrap().0.len(), 2);
}

async fn compare_and_swap_loses_no_update(s: Arc<dyn Store>) {
    s.create("/counter", b"0").await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..25 {
                loop {
                    let kv = s.get("/counter").await.unwrap().unwrap();
                    let n: u64 = String::from_utf8(kv.value).unwrap().parse().unwrap();
                    match s
                        .update("/counter", (n + 1).to_string().as_bytes(), kv.mod_revision)
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(s.get("/counter").await.unwrap().unwrap().value, b"200");
}
