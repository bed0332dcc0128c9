//! An in-memory SQLite store for the tests of what sits on a store: it counts the single-key
//! reads, the listings and the watches asked of it, can make every call first wait a round
//! trip (on tokio's clock, so a paused clock measures round trips one after another), and can
//! make its watches end at once (as one cut off by a compaction does) or fail.

use crate::{KeyValue, Result, SqliteStore, Store, StoreError, Watch};
use async_trait::async_trait;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// What the store's watches do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watches {
    /// Follow the store, as SQLite's do.
    Follow,
    /// End at once, with no event.
    End,
    /// Fail to start.
    Fail,
}

pub struct Instrumented {
    inner: SqliteStore,
    gets: AtomicUsize,
    lists: AtomicUsize,
    key_listings: AtomicUsize,
    watches_asked: AtomicUsize,
    round_trip: Option<Duration>,
    watches: Watches,
}

impl Instrumented {
    /// Following watches, no round trip.
    pub fn new() -> Instrumented {
        Instrumented {
            inner: SqliteStore::in_memory().expect("an in-memory SQLite opens"),
            gets: AtomicUsize::new(0),
            lists: AtomicUsize::new(0),
            key_listings: AtomicUsize::new(0),
            watches_asked: AtomicUsize::new(0),
            round_trip: None,
            watches: Watches::Follow,
        }
    }

    /// Every call (a watch's events aside) first waits `d`.
    pub fn with_round_trip(mut self, d: Duration) -> Instrumented {
        self.round_trip = Some(d);
        self
    }

    pub fn with_watches(mut self, w: Watches) -> Instrumented {
        self.watches = w;
        self
    }

    /// Single-key reads so far.
    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    /// Listings so far.
    pub fn lists(&self) -> usize {
        self.lists.load(Ordering::SeqCst)
    }

    /// Listings of keys without their values so far.
    pub fn key_listings(&self) -> usize {
        self.key_listings.load(Ordering::SeqCst)
    }

    /// Watches asked for so far.
    pub fn watches(&self) -> usize {
        self.watches_asked.load(Ordering::SeqCst)
    }

    async fn trip(&self) {
        if let Some(d) = self.round_trip {
            tokio::time::sleep(d).await;
        }
    }
}

impl Default for Instrumented {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Store for Instrumented {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.trip().await;
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        self.trip().await;
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(prefix).await
    }
    async fn list_keys(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        self.trip().await;
        self.key_listings.fetch_add(1, Ordering::SeqCst);
        self.inner.list_keys(prefix).await
    }
    async fn create(&self, key: &str, value: &[u8]) -> Result<i64> {
        self.trip().await;
        self.inner.create(key, value).await
    }
    async fn update(&self, key: &str, value: &[u8], expected: i64) -> Result<i64> {
        self.trip().await;
        self.inner.update(key, value, expected).await
    }
    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<i64> {
        self.trip().await;
        self.inner.delete(key, expected).await
    }
    async fn watch(&self, prefix: &str, after: i64) -> Result<Watch> {
        self.trip().await;
        self.watches_asked.fetch_add(1, Ordering::SeqCst);
        match self.watches {
            Watches::Follow => self.inner.watch(prefix, after).await,
            Watches::End => Ok(Watch {
                events: tokio::sync::mpsc::channel(1).1,
            }),
            Watches::Fail => Err(StoreError::Backend("no watch today".into())),
        }
    }
    async fn compact(&self, revision: i64) -> Result<()> {
        self.trip().await;
        self.inner.compact(revision).await
    }
    async fn revision(&self) -> Result<i64> {
        self.trip().await;
        self.inner.revision().await
    }
}
