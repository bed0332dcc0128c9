//! The task records this process wrote or saw on its watch most recently, by key and
//! revision. A node's write of its task is checked against the record it replaces (the node
//! may change only its own fields), and the node names that record's revision: a record at a
//! revision never changes, so one held here at that revision is the record, without a store
//! read (on etcd a round trip on every start's RUNNING). The write itself still compares the
//! revision, so a record changed since is refused as before.
//!
//! Bounded: two generations of at most `HELD` keys each; a key not held is read from the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Keys per generation: the records of tasks starting or changing now, not of every task.
const HELD: usize = 4096;

type Held = HashMap<String, (i64, Arc<[u8]>)>;

#[derive(Default)]
struct Generations {
    current: Held,
    previous: Held,
}

#[derive(Clone, Default)]
pub struct RecentTasks {
    inner: Arc<Mutex<Generations>>,
}

impl RecentTasks {
    /// The record `key` held at revision `rev`, if this is the revision held for it.
    pub fn at(&self, key: &str, rev: i64) -> Option<Arc<[u8]>> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (held, value) = g.current.get(key).or_else(|| g.previous.get(key))?;
        (*held == rev).then(|| value.clone())
    }

    /// `key` was written at `rev` with `value` (an older revision than the one held is ignored:
    /// a watch may bring a write after this process's own report of a later one).
    pub fn remember(&self, key: &str, rev: i64, value: &[u8]) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let newer = g
            .current
            .get(key)
            .or_else(|| g.previous.get(key))
            .is_none_or(|(held, _)| *held < rev);
        if !newer {
            return;
        }
        if g.current.len() >= HELD && !g.current.contains_key(key) {
            g.previous = std::mem::take(&mut g.current);
        }
        g.previous.remove(key);
        g.current.insert(key.to_string(), (rev, value.into()));
    }

    /// `key` was deleted.
    pub fn forget(&self, key: &str) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.current.remove(key);
        g.previous.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_held_at_its_latest_revision_only() {
        let r = RecentTasks::default();
        assert!(r.at("/tasks/a", 5).is_none());
        r.remember("/tasks/a", 5, b"five");
        assert_eq!(r.at("/tasks/a", 5).as_deref(), Some(&b"five"[..]));
        r.remember("/tasks/a", 7, b"seven");
        assert!(
            r.at("/tasks/a", 5).is_none(),
            "a revision since replaced is not the record"
        );
        // The watch's report of the older write, arriving after this process's own write.
        r.remember("/tasks/a", 5, b"five");
        assert_eq!(r.at("/tasks/a", 7).as_deref(), Some(&b"seven"[..]));
        r.forget("/tasks/a");
        assert!(r.at("/tasks/a", 7).is_none());
    }

    #[test]
    fn only_two_generations_are_held() {
        let r = RecentTasks::default();
        for i in 0..(2 * HELD + 1) {
            r.remember(&format!("/tasks/{i}"), 1, b"x");
        }
        // The first generation was dropped; the last two are held.
        assert!(r.at("/tasks/0", 1).is_none());
        assert!(r.at(&format!("/tasks/{}", HELD), 1).is_some());
        assert!(r.at(&format!("/tasks/{}", 2 * HELD), 1).is_some());
        let g = r.inner.lock().unwrap();
        assert!(g.current.len() + g.previous.len() <= 2 * HELD);
    }
}
