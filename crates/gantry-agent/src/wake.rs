//! What wakes the agent: a store watch on the task records, and a periodic resync. A watch
//! that ends (an etcd watch ends routinely; a watcher that fell behind a compaction is cut off)
//! is re-established with backoff; meanwhile the resync keeps the agent level-triggered, and
//! nothing spins.

use gantry_store::{Store, Watch};
use std::time::Duration;
use tokio::time::Instant;

const RESYNC: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

pub struct Wake {
    prefix: String,
    watch: Option<Watch>,
    retry_at: Instant,
    backoff: Duration,
}

impl Wake {
    pub fn new(prefix: &str) -> Wake {
        Wake {
            prefix: prefix.to_string(),
            watch: None,
            retry_at: Instant::now(),
            backoff: BACKOFF_MIN,
        }
    }

    /// Returns on a change under the prefix or after the resync period, whichever is first.
    pub async fn wait(&mut self, store: &dyn Store) {
        if self.watch.is_none() && Instant::now() >= self.retry_at {
            self.subscribe(store).await;
        }
        let resync = tokio::time::sleep(RESYNC);
        let Some(w) = &mut self.watch else {
            return resync.await;
        };
        tokio::select! {
            ev = w.events.recv() => match ev {
                Some(Ok(_)) => self.backoff = BACKOFF_MIN,
                ended => {
                    tracing::warn!(prefix = %self.prefix, error = ?ended.and_then(|e| e.err()), "store watch ended; re-watching after {:?}", self.backoff);
                    self.lost();
                }
            },
            _ = resync => {}
        }
    }

    /// From the current revision: the caller re-lists on every wake anyway.
    async fn subscribe(&mut self, store: &dyn Store) {
        let w = match store.revision().await {
            Ok(rev) => store.watch(&self.prefix, rev).await,
            Err(e) => Err(e),
        };
        match w {
            Ok(w) => self.watch = Some(w),
            Err(e) => {
                tracing::warn!(prefix = %self.prefix, error = %e, "store watch failed; retrying after {:?}", self.backoff);
                self.lost();
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
    use async_trait::async_trait;
    use gantry_store::{KeyValue, Result, SqliteStore};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A store whose watches end at once, counting how often it is asked for one.
    struct EndingWatches {
        inner: SqliteStore,
        watches: AtomicUsize,
    }

    #[async_trait]
    impl Store for EndingWatches {
        async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
            self.inner.get(key).await
        }
        async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
            self.inner.list(prefix).await
        }
        async fn create(&self, key: &str, value: &[u8]) -> Result<i64> {
            self.inner.create(key, value).await
        }
        async fn update(&self, key: &str, value: &[u8], expected: i64) -> Result<i64> {
            self.inner.update(key, value, expected).await
        }
        async fn delete(&self, key: &str, expected: Option<i64>) -> Result<i64> {
            self.inner.delete(key, expected).await
        }
        async fn watch(&self, _: &str, _: i64) -> Result<Watch> {
            self.watches.fetch_add(1, Ordering::SeqCst);
            let (_, rx) = tokio::sync::mpsc::channel(1);
            Ok(Watch { events: rx })
        }
        async fn compact(&self, revision: i64) -> Result<()> {
            self.inner.compact(revision).await
        }
        async fn revision(&self) -> Result<i64> {
            self.inner.revision().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_ending_watch_backs_off_instead_of_spinning() {
        let store = Arc::new(EndingWatches {
            inner: SqliteStore::in_memory().unwrap(),
            watches: AtomicUsize::new(0),
        });
        let mut wake = Wake::new("/tasks/");
        let start = Instant::now();
        let mut wakes = 0;
        while start.elapsed() < Duration::from_secs(60) {
            wake.wait(store.as_ref()).await;
            wakes += 1;
        }
        // Resync once a second plus one early wake per re-watch; re-watches double their delay.
        let watches = store.watches.load(Ordering::SeqCst);
        assert!(wakes <= 60 + watches + 1, "{wakes} wakes in 60 s");
        assert!((4..=9).contains(&watches), "{watches} re-watches in 60 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_watch_wakes_on_changes() {
        let store = SqliteStore::in_memory().unwrap();
        let mut wake = Wake::new("/tasks/");
        wake.wait(&store).await; // subscribes, then resyncs after a second
        let t = Instant::now();
        store.create("/tasks/a", b"1").await.unwrap();
        wake.wait(&store).await;
        assert!(t.elapsed() < Duration::from_millis(100), "woke after {:?}", t.elapsed());
    }
}
