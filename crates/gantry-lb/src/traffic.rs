//! What the load balancers count, and where it goes. Each load balancer and target group has
//! atomic counters (no lock on the request path); every interval the flusher takes what was
//! counted since the last flush and publishes it as CloudWatch's AWS/ApplicationELB metrics
//! (RequestCount, TargetResponseTime, HTTPCode_Target_*, HTTPCode_ELB_*, RequestCountPerTarget,
//! HealthyHostCount, UnHealthyHostCount) and as Prometheus counters and a histogram.

use gantry_control::metrics::stats::Agg;
use gantry_control::metrics::{MetricKey, Metrics, Published};
use gantry_prom::{Metric, SECONDS};
use gantry_types::arn::Scope;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

static LB_REQUESTS: Metric = Metric::counter(
    "gantry_lb_requests_total",
    "Requests answered by the load balancers, by load balancer and status class (target: the target's answer, elb: the load balancer's own).",
    &["load_balancer", "source", "code"],
);

static LB_RESPONSE: Metric = Metric::histogram(
    "gantry_lb_target_response_seconds",
    "Time from the load balancer sending a request to a target to the response's headers.",
    &["load_balancer"],
    SECONDS,
);

/// Response-time buckets: 100 µs growing by a quarter each, to about a minute.
fn bounds() -> &'static [f64] {
    static B: OnceLock<Vec<f64>> = OnceLock::new();
    B.get_or_init(|| {
        let mut v = vec![0.0001];
        while *v.last().expect("non-empty") < 60.0 {
            let next = v.last().expect("non-empty") * 1.25;
            v.push(next);
        }
        v
    })
}

/// A target's answer as the counters record it: its status, and how long its headers took
/// (microseconds and histogram bucket).
#[derive(Clone, Copy)]
pub struct Answer {
    status: u16,
    micros: u64,
    bucket: usize,
}

impl Answer {
    pub fn of(status: u16, took: Duration) -> Answer {
        let secs = took.as_secs_f64();
        Answer {
            status,
            micros: took.as_micros() as u64,
            bucket: bounds().partition_point(|b| *b < secs).min(bounds().len() - 1),
        }
    }
}

/// Counts of one load balancer or target group since the last flush, a shard per worker
/// thread: a request adds to its own thread's shard, so the worker threads never write the
/// same cache line; a flush sums the shards.
pub struct Counters {
    shards: Box<[Shard]>,
}

/// One thread's counts (aligned to its own cache lines).
#[repr(align(128))]
struct Shard {
    requests: AtomicU64,
    /// Target answers by class: 2XX, 3XX, 4XX, 5XX.
    target: [AtomicU64; 4],
    /// The load balancer's own answers by class: 3XX (redirects), 4XX, 5XX.
    elb: [AtomicU64; 3],
    buckets: Vec<AtomicU64>,
    sum_us: AtomicU64,
    min_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            requests: AtomicU64::new(0),
            target: Default::default(),
            elb: Default::default(),
            buckets: bounds().iter().map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            min_us: AtomicU64::new(u64::MAX),
            max_us: AtomicU64::new(0),
        }
    }
}

impl Default for Counters {
    fn default() -> Self {
        // One per worker, and one for every other thread.
        let n = crate::workers::count() + 1;
        Counters {
            shards: (0..n).map(|_| Shard::default()).collect(),
        }
    }
}

impl Counters {
    fn shard(&self) -> &Shard {
        &self.shards[crate::workers::current().map_or(0, |i| i + 1) % self.shards.len()]
    }

    /// A request the load balancer chose a target for.
    pub fn chosen(&self) {
        self.shard().requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A target's answer (`Answer::of`, worked out once for the load balancer's and the
    /// group's counters).
    pub fn answered(&self, a: Answer) {
        let s = self.shard();
        if let Some(c) = (a.status / 100).checked_sub(2).and_then(|i| s.target.get(i as usize)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        s.buckets[a.bucket].fetch_add(1, Ordering::Relaxed);
        let us = a.micros;
        s.sum_us.fetch_add(us, Ordering::Relaxed);
        s.min_us.fetch_min(us, Ordering::Relaxed);
        s.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// An answer of the load balancer's own (an error page, a fixed response, a redirect).
    pub fn own(&self, status: u16) {
        let s = self.shard();
        if let Some(c) = (status / 100).checked_sub(3).and_then(|i| s.elb.get(i as usize)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What was counted since the last take, resetting the counts.
    fn take(&self) -> Taken {
        let mut t = Taken {
            requests: 0,
            target: [0; 4],
            elb: [0; 3],
            buckets: vec![0; bounds().len()],
            sum_us: 0,
            min_us: u64::MAX,
            max_us: 0,
        };
        let take = |a: &AtomicU64| a.swap(0, Ordering::Relaxed);
        for s in self.shards.iter() {
            t.requests += take(&s.requests);
            t.target.iter_mut().zip(&s.target).for_each(|(t, c)| *t += take(c));
            t.elb.iter_mut().zip(&s.elb).for_each(|(t, c)| *t += take(c));
            t.buckets.iter_mut().zip(&s.buckets).for_each(|(t, c)| *t += take(c));
            t.sum_us += take(&s.sum_us);
            t.min_us = t.min_us.min(s.min_us.swap(u64::MAX, Ordering::Relaxed));
            t.max_us = t.max_us.max(take(&s.max_us));
        }
        t
    }
}

struct Taken {
    requests: u64,
    target: [u64; 4],
    elb: [u64; 3],
    buckets: Vec<u64>,
    sum_us: u64,
    min_us: u64,
    max_us: u64,
}

impl Taken {
    fn responses(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// TargetResponseTime as values with counts (each bucket's upper bound), so CloudWatch's
    /// percentiles work on it, with the exact sum, minimum and maximum.
    fn response_time(&self) -> Option<Agg> {
        let n = self.responses();
        if n == 0 {
            return None;
        }
        let values: Vec<(f64, f64)> = bounds()
            .iter()
            .zip(&self.buckets)
            .filter(|(_, c)| **c > 0)
            .map(|(b, c)| (*b, *c as f64))
            .collect();
        Some(Agg {
            count: n as f64,
            sum: self.sum_us as f64 / 1e6,
            min: self.min_us as f64 / 1e6,
            max: self.max_us as f64 / 1e6,
            values: Some(values),
        })
    }
}

/// Every load balancer's and target group's counters, by ARN.
#[derive(Default)]
pub struct Traffic {
    by_arn: Mutex<HashMap<String, Arc<Counters>>>,
}

impl Traffic {
    /// The counters of a load balancer or target group (made on first use, kept across
    /// configuration reloads).
    pub fn of(&self, arn: &str) -> Arc<Counters> {
        let mut m = self.by_arn.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(arn.to_string()).or_default().clone()
    }

    fn take_all(&self) -> Vec<(String, Taken)> {
        let m = self.by_arn.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(arn, c)| (arn.clone(), c.take())).collect()
    }
}

/// A load balancer's CloudWatch dimension value ("app/NAME/ID") from its ARN.
pub fn lb_dimension(arn: &str) -> Option<&str> {
    arn.split_once(":loadbalancer/").map(|(_, d)| d)
}

/// A target group's ("targetgroup/NAME/ID").
pub fn tg_dimension(arn: &str) -> Option<&str> {
    arn.rsplit_once(':')
        .map(|(_, d)| d)
        .filter(|d| d.starts_with("targetgroup/"))
}

/// The scope an ELBv2 ARN lives in.
fn scope_of(arn: &str) -> Option<Scope> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    (parts.len() == 6).then(|| Scope {
        account: parts[4].to_string(),
        region: parts[3].to_string(),
    })
}

/// A target group's health for the flush: its load balancer and healthy/unhealthy counts.
pub struct GroupHealth {
    pub load_balancer: Option<String>,
    pub healthy: usize,
    pub unhealthy: usize,
}

fn point(name: &str, dims: Vec<(String, String)>, ts_ms: i64, unit: &str, agg: Agg) -> Published {
    Published {
        key: MetricKey {
            namespace: "AWS/ApplicationELB".into(),
            name: name.into(),
            dims,
        },
        ts_ms,
        unit: unit.into(),
        resolution: 1,
        agg,
    }
}

fn count(n: u64) -> Agg {
    Agg::set(1.0, n as f64, n as f64, n as f64)
}

/// The datapoints one flush publishes, by scope: `taken` per ARN, stamped `ts_ms` (the start
/// of the interval they count), with the groups' health.
fn datapoints(taken: &[(String, Taken)], health: &HashMap<String, GroupHealth>, ts_ms: i64) -> Vec<(Scope, Published)> {
    let mut out = Vec::new();
    for (arn, t) in taken {
        let Some(scope) = scope_of(arn) else { continue };
        let (dims, lb_of_group) = if let Some(lb) = lb_dimension(arn) {
            (vec![("LoadBalancer".to_string(), lb.to_string())], None)
        } else if let Some(tg) = tg_dimension(arn) {
            let lb = health
                .get(arn)
                .and_then(|h| h.load_balancer.as_deref())
                .and_then(lb_dimension);
            let mut d = vec![("TargetGroup".to_string(), tg.to_string())];
            if let Some(lb) = lb {
                d.insert(0, ("LoadBalancer".to_string(), lb.to_string()));
            }
            (d, Some(health.get(arn)))
        } else {
            continue;
        };
        let mut push =
            |name: &str, unit: &str, agg: Agg| out.push((scope.clone(), point(name, dims.clone(), ts_ms, unit, agg)));
        if t.requests > 0 {
            push("RequestCount", "Count", count(t.requests));
        }
        for (i, n) in t.target.iter().enumerate().filter(|(_, n)| **n > 0) {
            push(&format!("HTTPCode_Target_{}XX_Count", i + 2), "Count", count(*n));
        }
        if lb_of_group.is_none() {
            for (i, n) in t.elb.iter().enumerate().filter(|(_, n)| **n > 0) {
                push(&format!("HTTPCode_ELB_{}XX_Count", i + 3), "Count", count(*n));
            }
        }
        if let Some(agg) = t.response_time() {
            push("TargetResponseTime", "Seconds", agg);
        }
        if let Some(Some(h)) = lb_of_group {
            push("HealthyHostCount", "Count", count(h.healthy as u64));
            push("UnHealthyHostCount", "Count", count(h.unhealthy as u64));
            if h.healthy > 0 {
                let per = t.requests as f64 / h.healthy as f64;
                // RequestCountPerTarget is the group's alone: {TargetGroup}.
                let tg_only = vec![(
                    "TargetGroup".to_string(),
                    tg_dimension(arn).unwrap_or_default().to_string(),
                )];
                out.push((
                    scope.clone(),
                    point(
                        "RequestCountPerTarget",
                        tg_only,
                        ts_ms,
                        "None",
                        Agg::set(1.0, per, per, per),
                    ),
                ));
            }
        }
    }
    out
}

/// Adds a flush's counts to the Prometheus series (load balancers only: groups' counts are in
/// their load balancer's).
fn to_prometheus(taken: &[(String, Taken)]) {
    for (arn, t) in taken {
        let Some(lb) = lb_dimension(arn) else { continue };
        for (i, n) in t.target.iter().enumerate().filter(|(_, n)| **n > 0) {
            LB_REQUESTS.add(&[lb, "target", &format!("{}xx", i + 2)], *n as f64);
        }
        for (i, n) in t.elb.iter().enumerate().filter(|(_, n)| **n > 0) {
            LB_REQUESTS.add(&[lb, "elb", &format!("{}xx", i + 3)], *n as f64);
        }
        if t.responses() > 0 {
            let coarse: Vec<u64> = SECONDS
                .iter()
                .map(|le| {
                    bounds()
                        .iter()
                        .zip(&t.buckets)
                        .filter(|(b, _)| *b <= le)
                        .map(|(_, c)| c)
                        .sum()
                })
                .collect();
            LB_RESPONSE.observe_bulk(&[lb], &coarse, t.sum_us as f64 / 1e6, t.responses());
        }
    }
}

/// Flushes every `every` until `stop`: CloudWatch through `metrics` (when given) and
/// Prometheus. `health` reads the groups' health at flush time.
pub async fn flush(
    traffic: Arc<Traffic>,
    metrics: Option<Metrics>,
    health: impl Fn() -> HashMap<String, GroupHealth>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    };
    let mut since = now_ms();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let taken = traffic.take_all();
        to_prometheus(&taken);
        let now = now_ms();
        let stamp = since.div_euclid(1000) * 1000;
        since = now;
        let Some(m) = &metrics else { continue };
        let mut by_scope: HashMap<Scope, Vec<Published>> = HashMap::new();
        for (scope, p) in datapoints(&taken, &health(), stamp) {
            by_scope.entry(scope).or_default().push(p);
        }
        for (scope, data) in by_scope {
            if let Err(e) = m.publish(&scope, data).await {
                tracing::warn!(error = %e, "publishing load balancer metrics");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LB: &str = "arn:aws:elasticloadbalancing:us-east-1:1:loadbalancer/app/web/abc";
    const TG: &str = "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/web-tg/def";

    #[test]
    fn dimensions_from_arns() {
        assert_eq!(lb_dimension(LB), Some("app/web/abc"));
        assert_eq!(tg_dimension(TG), Some("targetgroup/web-tg/def"));
        assert_eq!(tg_dimension(LB), None);
    }

    #[test]
    fn counts_from_every_thread_are_summed() {
        let traffic = Traffic::default();
        let c = traffic.of(LB);
        c.answered(Answer::of(200, Duration::from_secs(60)));
        let workers: Vec<_> = (0..crate::workers::count() + 2)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || {
                    crate::workers::WORKER.with(|w| w.set(Some(i)));
                    c.chosen();
                    c.answered(Answer::of(503, Duration::from_millis(1 + i as u64)));
                })
            })
            .collect();
        let n = workers.len() as u64;
        workers.into_iter().for_each(|w| w.join().unwrap());
        let taken = c.take();
        assert_eq!((taken.requests, taken.target[0], taken.target[3]), (n, 1, n));
        assert_eq!((taken.min_us, taken.max_us), (1_000, 60_000_000));
        assert_eq!(taken.responses(), n + 1);
    }

    #[test]
    fn a_flush_publishes_what_was_counted_and_resets() {
        let traffic = Traffic::default();
        let (lb, tg) = (traffic.of(LB), traffic.of(TG));
        for (status, ms) in [(200, 2), (200, 4), (503, 40)] {
            for c in [&lb, &tg] {
                c.chosen();
                c.answered(Answer::of(status, Duration::from_millis(ms)));
            }
        }
        lb.own(502);
        let health = HashMap::from([(
            TG.to_string(),
            GroupHealth {
                load_balancer: Some(LB.into()),
                healthy: 2,
                unhealthy: 1,
            },
        )]);
        let taken = traffic.take_all();
        let points = datapoints(&taken, &health, 1_000);
        let find = |name: &str, dims: usize| {
            points
                .iter()
                .find(|(_, p)| p.key.name == name && p.key.dims.len() == dims)
                .map(|(_, p)| p.agg.clone())
                .unwrap_or_else(|| panic!("no {name} with {dims} dimensions"))
        };
        assert_eq!(find("RequestCount", 1).sum, 3.0);
        assert_eq!(find("HTTPCode_Target_2XX_Count", 1).sum, 2.0);
        assert_eq!(find("HTTPCode_Target_5XX_Count", 1).sum, 1.0);
        assert_eq!(find("HTTPCode_ELB_5XX_Count", 1).sum, 1.0);
        let rt = find("TargetResponseTime", 1);
        assert_eq!((rt.count, rt.min, rt.max), (3.0, 0.002, 0.04));
        assert!((rt.sum - 0.046).abs() < 1e-9);
        assert_eq!(find("HealthyHostCount", 2).sum, 2.0);
        assert_eq!(find("RequestCountPerTarget", 1).sum, 1.5);
        let p95 = rt.percentile(95.0).unwrap();
        assert!((0.04..0.05).contains(&p95), "{p95}");
        // Taken: the next flush starts from zero.
        assert!(traffic
            .take_all()
            .iter()
            .all(|(_, t)| t.requests == 0 && t.responses() == 0));
    }
}
