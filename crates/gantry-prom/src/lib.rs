//! Prometheus exposition for a Gantry process: labelled counters, gauges and histograms kept
//! in one process-wide registry, and the text format (0.0.4) they are scraped in. Values that
//! are read from state at scrape time (task counts, service sizes) are appended by the caller
//! as `Sample`s, in the same format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};

/// Label values in the order of the metric's label names.
pub type Labels = Vec<String>;

/// Latency buckets in seconds: 1 ms to about 33 s, doubling.
pub const SECONDS: &[f64] = &[
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384, 32.768,
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

struct Family {
    help: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    buckets: &'static [f64],
    values: BTreeMap<Labels, f64>,
    histograms: BTreeMap<Labels, Histogram>,
}

impl Family {
    /// A series' labels as (name, value) pairs.
    fn pairs<'a>(&'a self, values: &'a Labels) -> Vec<(&'a str, &'a str)> {
        self.labels
            .iter()
            .copied()
            .zip(values.iter().map(String::as_str))
            .collect()
    }

    /// A labelled histogram, made empty on first use.
    fn histogram(&mut self, k: Labels) -> &mut Histogram {
        let n = self.buckets.len();
        self.histograms.entry(k).or_insert_with(|| Histogram {
            counts: vec![0; n],
            ..Default::default()
        })
    }
}

fn registry() -> &'static Mutex<BTreeMap<&'static str, Family>> {
    static R: OnceLock<Mutex<BTreeMap<&'static str, Family>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// A metric family, declared once as a static and used from anywhere in the process.
pub struct Metric {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: &'static [&'static str],
    kind: Kind,
    buckets: &'static [f64],
}

impl Metric {
    pub const fn counter(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Metric {
        Metric {
            name,
            help,
            labels,
            kind: Kind::Counter,
            buckets: &[],
        }
    }

    pub const fn gauge(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Metric {
        Metric {
            name,
            help,
            labels,
            kind: Kind::Gauge,
            buckets: &[],
        }
    }

    pub const fn histogram(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Metric {
        Metric {
            name,
            help,
            labels,
            kind: Kind::Histogram,
            buckets,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Family) -> R) -> R {
        let mut r = registry().lock().unwrap_or_else(|p| p.into_inner());
        let fam = r.entry(self.name).or_insert_with(|| Family {
            help: self.help,
            kind: self.kind,
            labels: self.labels,
            buckets: self.buckets,
            values: BTreeMap::new(),
            histograms: BTreeMap::new(),
        });
        f(fam)
    }

    fn key(&self, values: &[&str]) -> Labels {
        debug_assert_eq!(values.len(), self.labels.len(), "{}: label values", self.name);
        values.iter().map(|v| v.to_string()).collect()
    }

    /// Adds to a counter (or a gauge).
    pub fn add(&self, labels: &[&str], v: f64) {
        let k = self.key(labels);
        self.with(|f| *f.values.entry(k).or_insert(0.0) += v);
    }

    pub fn inc(&self, labels: &[&str]) {
        self.add(labels, 1.0);
    }

    /// Sets a gauge.
    pub fn set(&self, labels: &[&str], v: f64) {
        let k = self.key(labels);
        self.with(|f| {
            f.values.insert(k, v);
        });
    }

    /// Removes one labelled series of a gauge (a task or service that is gone).
    pub fn remove(&self, labels: &[&str]) {
        let k = self.key(labels);
        self.with(|f| {
            f.values.remove(&k);
        });
    }

    /// Records an observation in a histogram.
    pub fn observe(&self, labels: &[&str], v: f64) {
        let k = self.key(labels);
        self.with(|f| {
            let buckets = f.buckets;
            let h = f.histogram(k);
            for (i, b) in buckets.iter().enumerate() {
                if v <= *b {
                    h.counts[i] += 1;
                }
            }
            h.sum += v;
            h.count += 1;
        });
    }

    /// Adds many observations at once: `cumulative[i]` of them at most the i-th bucket's
    /// bound, `count` in all, summing to `sum`.
    pub fn observe_bulk(&self, labels: &[&str], cumulative: &[u64], sum: f64, count: u64) {
        let k = self.key(labels);
        self.with(|f| {
            let h = f.histogram(k);
            for (c, add) in h.counts.iter_mut().zip(cumulative) {
                *c += add;
            }
            h.sum += sum;
            h.count += count;
        });
    }

    /// A counter's current value (tests).
    pub fn value(&self, labels: &[&str]) -> f64 {
        let k = self.key(labels);
        self.with(|f| f.values.get(&k).copied().unwrap_or(0.0))
    }
}

/// A value read from state at scrape time.
pub struct Sample {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn label_text(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    format!("{{{}}}", inner.join(","))
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

/// The registry and `extra` (gauges read from state, as gauges) in the text format.
pub fn render(extra: &[Sample]) -> String {
    let mut out = String::new();
    let r = registry().lock().unwrap_or_else(|p| p.into_inner());
    for (name, f) in r.iter() {
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", f.help);
        for (labels, v) in &f.values {
            let pairs = f.pairs(labels);
            let _ = writeln!(out, "{name}{} {}", label_text(&pairs), number(*v));
        }
        for (labels, h) in &f.histograms {
            let pairs = f.pairs(labels);
            for (b, c) in f.buckets.iter().zip(&h.counts) {
                let le = number(*b);
                let mut with_le = pairs.clone();
                with_le.push(("le", &le));
                let _ = writeln!(out, "{name}_bucket{} {c}", label_text(&with_le));
            }
            let mut inf = pairs.clone();
            inf.push(("le", "+Inf"));
            let _ = writeln!(out, "{name}_bucket{} {}", label_text(&inf), h.count);
            let _ = writeln!(out, "{name}_sum{} {}", label_text(&pairs), number(h.sum));
            let _ = writeln!(out, "{name}_count{} {}", label_text(&pairs), h.count);
        }
    }
    drop(r);
    let mut last = "";
    for s in extra {
        if s.name != last {
            let _ = writeln!(out, "# HELP {} {}\n# TYPE {} gauge", s.name, s.help, s.name);
            last = s.name;
        }
        let pairs: Vec<(&str, &str)> = s.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let _ = writeln!(out, "{}{} {}", s.name, label_text(&pairs), number(s.value));
    }
    out
}

/// The content type of `render`'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    static REQUESTS: Metric = Metric::counter("test_requests_total", "Requests.", &["code"]);
    static LATENCY: Metric = Metric::histogram("test_latency_seconds", "Latency.", &["op"], &[0.1, 1.0]);

    #[test]
    fn text_format() {
        REQUESTS.inc(&["200"]);
        REQUESTS.add(&["500"], 2.0);
        LATENCY.observe(&["Get"], 0.05);
        LATENCY.observe(&["Get"], 0.5);
        LATENCY.observe(&["Get"], 5.0);
        let extra = [Sample {
            name: "test_tasks",
            help: "Tasks.",
            labels: vec![("cluster", "a \"b\"".into())],
            value: 3.0,
        }];
        let text = render(&extra);
        for line in [
            "# TYPE test_requests_total counter",
            "test_requests_total{code=\"200\"} 1",
            "test_requests_total{code=\"500\"} 2",
            "# TYPE test_latency_seconds histogram",
            "test_latency_seconds_bucket{op=\"Get\",le=\"0.1\"} 1",
            "test_latency_seconds_bucket{op=\"Get\",le=\"1\"} 2",
            "test_latency_seconds_bucket{op=\"Get\",le=\"+Inf\"} 3",
            "test_latency_seconds_sum{op=\"Get\"} 5.55",
            "test_latency_seconds_count{op=\"Get\"} 3",
            "# TYPE test_tasks gauge",
            "test_tasks{cluster=\"a \\\"b\\\"\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert_eq!(REQUESTS.value(&["500"]), 2.0);
    }
}
