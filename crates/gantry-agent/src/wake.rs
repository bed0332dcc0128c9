//! What wakes the agent: a watch on the node's task records, and a periodic resync. A watch
//! that ends (an etcd watch ends routinely; a watcher that fell behind a compaction is cut off;
//! a remote link breaks) is re-established with backoff; meanwhile the resync keeps the agent
//! level-triggered, and nothing spins. With a live watch the full resync is rare: the events
//! say what changed.

use crate::link::ControlLink;
use async_trait::async_trait;
use gantry_store::{Event, Watch};
use std::time::Duration;
use tokio::time::Instant;

/// Full re-list while the watch is down, and as a safety net while it is up.
const RESYNC: Duration = Duration::from_secs(1);
const RESYNC_WATCHED: Duration = Duration::from_secs(10);
/// Events taken at once after the first (a burst of writes wakes the agent once).
const BATCH: usize = 512;

/// Why the agent woke.
#[derive(Debug)]
pub enum Woke {
    /// These records changed (puts carry the new value).
    Changed(Vec<Event>),
    /// Time for a full re-list (the resync, or a watch that was just (re)established).
    Resync,
}
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where watches come from (the link; a store in tests).
#[async_trait]
pub trait WatchSource: Send + Sync {
    async fn watch(&self) -> Result<Watch, String>;
}

#[async_trait]
impl<T: ControlLink + ?Sized> WatchSource for T {
    async fn watch(&self) -> Result<Watch, String> {
        self.watch_assigned().await.map_err(|e| e.to_string())
    }
}

pub struct Wake {
    watch: Option<Watch>,
    retry_at: Instant,
    backoff: Duration,
}

impl Wake {
    pub fn new() -> Wake {
        Wake {
            watch: None,
            retry_at: Instant::now(),
            backoff: BACKOFF_MIN,
        }
    }

    /// Returns on changes or when a full re-list is due, whichever is first.
    pub async fn wait<S: WatchSource + ?Sized>(&mut self, source: &S) -> Woke {
        if self.watch.is_none() && Instant::now() >= self.retry_at {
            // Whatever happened while there was no watch, only a re-list can tell.
            if self.subscribe(source).await {
                return Woke::Resync;
            }
        }
        let period = if self.watch.is_some() { RESYNC_WATCHED } else { RESYNC };
        let resync = tokio::time::sleep(period);
        let Some(w) = &mut self.watch else {
            resync.await;
            return Woke::Resync;
        };
        tokio::select! {
            ev = w.events.recv() => match ev {
                Some(Ok(first)) => {
                    self.backoff = BACKOFF_MIN;
                    let mut events = vec![first];
                    while events.len() < BATCH {
                        match w.events.try_recv() {
                            Ok(Ok(e)) => events.push(e),
                            _ => break,
                        }
                    }
                    Woke::Changed(events)
                }
                ended => {
                    tracing::warn!(error = ?ended.and_then(|e| e.err()), "store watch ended; re-watching after {:?}", self.backoff);
                    self.lost();
                    Woke::Resync
                }
            },
            _ = resync => Woke::Resync,
        }
    }

    /// From now on (the caller re-lists right after). True if it worked.
    async fn subscribe<S: WatchSource + ?Sized>(&mut self, source: &S) -> bool {
        match source.watch().await {
            Ok(w) => {
                self.watch = Some(w);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "watch failed; retrying after {:?}", self.backoff);
                self.lost();
                false
            }
        }
    }

    fn lost(&mut self) {
        self.watch = None;
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_store::instrumented::{Instrumented, Watches};
    use gantry_store::{SqliteStore, Store};
    use std::sync::Arc;

    /// Watches on a store's task records.
    struct Source<S>(Arc<S>);

    #[async_trait]
    impl<S: Store> WatchSource for Source<S> {
        async fn watch(&self) -> std::result::Result<Watch, String> {
            let rev = self.0.revision().await.map_err(|e| e.to_string())?;
            self.0.watch("/tasks/", rev).await.map_err(|e| e.to_string())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_ending_watch_backs_off_instead_of_spinning() {
        let store = Source(Arc::new(Instrumented::new().with_watches(Watches::End)));
        let mut wake = Wake::new();
        let start = Instant::now();
        let mut wakes = 0;
        while start.elapsed() < Duration::from_secs(60) {
            wake.wait(&store).await;
            wakes += 1;
        }
        // Resync once a second plus two wakes per re-watch (the re-list, the end); re-watches
        // double their delay.
        let watches = store.0.watches();
        assert!(wakes <= 60 + 2 * watches + 1, "{wakes} wakes in 60 s");
        assert!((4..=9).contains(&watches), "{watches} re-watches in 60 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_watch_wakes_on_changes() {
        let source = Source(Arc::new(SqliteStore::in_memory().unwrap()));
        let store = source.0.clone();
        let mut wake = Wake::new();
        assert!(
            matches!(wake.wait(&source).await, Woke::Resync),
            "a new watch starts with a re-list"
        );
        let t = Instant::now();
        store.create("/tasks/a", b"1").await.unwrap();
        store.create("/tasks/b", b"2").await.unwrap();
        tokio::task::yield_now().await;
        match wake.wait(&source).await {
            Woke::Changed(events) => {
                let keys: Vec<&str> = events.iter().map(|e| e.kv.key.as_str()).collect();
                assert!(keys == ["/tasks/a", "/tasks/b"] || keys == ["/tasks/a"], "{keys:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() < Duration::from_millis(100), "woke after {:?}", t.elapsed());
        // With a live watch, the full re-list is the rare safety net.
        let t = Instant::now();
        while !matches!(wake.wait(&source).await, Woke::Resync) {}
        assert!(t.elapsed() >= RESYNC_WATCHED, "re-listed after {:?}", t.elapsed());
    }
}
