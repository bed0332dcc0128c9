//! Service quotas as AWS applies them, with the operator's values: tasks launched per
//! second per account (a token bucket: a burst of 100, then 20 a second, as Fargate's
//! launch rate), services per cluster and tasks per service (5,000 each). Also the token
//! buckets the API front uses for request rates per access key. Buckets live in the
//! process: each server of a cluster keeps its own (documented in ARCHITECTURE.md).

use std::collections::HashMap;
use std::sync::Mutex;

/// A token bucket's shape: `burst` at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: f64,
}

/// Buckets kept before the full ones (idle keys) are dropped.
const PRUNE_ABOVE: usize = 10_000;

/// One token bucket per key (an access key, an account); none at all when unlimited.
pub struct TokenBuckets {
    rate: Option<Rate>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl TokenBuckets {
    /// `None`: no limit.
    pub fn new(rate: Option<Rate>) -> TokenBuckets {
        TokenBuckets {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn rate(&self) -> Option<Rate> {
        self.rate
    }

    /// Whether `key` may spend `cost` tokens at `now` (seconds); spends them if so, else
    /// spends nothing.
    pub fn admit(&self, key: &str, cost: f64, now: f64) -> bool {
        let Some(rate) = self.rate else { return true };
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|_, b| refilled(b, rate, now) < rate.burst);
        }
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        b.tokens = refilled(b, rate, now);
        b.at = b.at.max(now);
        if b.tokens < cost {
            return false;
        }
        b.tokens -= cost;
        true
    }
}

fn refilled(b: &Bucket, rate: Rate, now: f64) -> f64 {
    (b.tokens + (now - b.at).max(0.0) * rate.per_second).min(rate.burst)
}

/// The control plane's quotas.
pub struct Quotas {
    /// Tasks launched (RunTask, StartTask, services) per account.
    pub launches: TokenBuckets,
    pub services_per_cluster: usize,
    pub tasks_per_service: i64,
}

impl Default for Quotas {
    fn default() -> Quotas {
        Quotas {
            launches: TokenBuckets::new(Some(Rate {
                per_second: 20.0,
                burst: 100.0,
            })),
            services_per_cluster: 5_000,
            tasks_per_service: 5_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate_per_key() {
        let t = TokenBuckets::new(Some(Rate {
            per_second: 20.0,
            burst: 100.0,
        }));
        assert!((0..100).all(|_| t.admit("a", 1.0, 0.0)));
        assert!(!t.admit("a", 1.0, 0.0));
        // Another key has its own bucket.
        assert!(t.admit("b", 1.0, 0.0));
        // A second later, 20 more; never more than the burst however long it waits.
        assert_eq!((0..30).filter(|_| t.admit("a", 1.0, 1.0)).count(), 20);
        assert_eq!((0..150).filter(|_| t.admit("a", 1.0, 3600.0)).count(), 100);
        // A call costing more than is left is refused whole and spends nothing.
        assert!(!t.admit("a", 6.0, 3600.25));
        assert!(t.admit("a", 5.0, 3600.25));
        // A clock that steps back refills nothing.
        assert!(!t.admit("a", 1.0, 10.0));
        assert!(TokenBuckets::new(None).admit("a", 1e9, 0.0));
    }
}
