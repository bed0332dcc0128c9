//! CloudWatch's statistics as pure functions: datapoints merge into per-period aggregates, and
//! an aggregate answers SampleCount, Sum, Average, Minimum, Maximum and percentiles.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What one or more published datapoints add up to. `values` holds the distinct values and
/// their counts while every datapoint merged was published as raw values (percentiles need
/// them); a statistic set without them makes percentiles unavailable, as in CloudWatch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agg {
    pub count: f64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<(f64, f64)>>,
}

/// Most distinct values an aggregate keeps for percentiles; beyond it, neighbouring values
/// merge (to their count-weighted mean), which bounds storage and keeps percentiles close.
pub const MAX_DISTINCT: usize = 1024;

impl Agg {
    /// One value published `count` times.
    pub fn single(value: f64, count: f64) -> Agg {
        Agg {
            count,
            sum: value * count,
            min: value,
            max: value,
            values: Some(vec![(value, count)]),
        }
    }

    /// A statistic set. One sample, or min equal to max, is as good as raw values.
    pub fn set(count: f64, sum: f64, min: f64, max: f64) -> Agg {
        let values = (count == 1.0 || min == max).then(|| vec![(min, count)]);
        Agg {
            count,
            sum,
            min,
            max,
            values,
        }
    }

    pub fn merge(&mut self, o: &Agg) {
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.values = match (self.values.take(), &o.values) {
            (Some(mut a), Some(b)) => {
                a.extend_from_slice(b);
                Some(compact(a))
            }
            _ => None,
        };
    }

    pub fn average(&self) -> f64 {
        if self.count == 0.0 {
            0.0
        } else {
            self.sum / self.count
        }
    }

    /// The p-th percentile (0 < p <= 100) by nearest rank, when the values are known and none
    /// is negative (CloudWatch offers no percentiles over negative values).
    pub fn percentile(&self, p: f64) -> Option<f64> {
        let values = self.values.as_ref()?;
        if values.iter().any(|(v, _)| *v < 0.0) || self.count <= 0.0 {
            return None;
        }
        let rank = (p / 100.0 * self.count).ceil().max(1.0);
        let mut seen = 0.0;
        for (v, c) in values {
            seen += c;
            if seen >= rank {
                return Some(*v);
            }
        }
        values.last().map(|(v, _)| *v)
    }

    /// A statistic by CloudWatch's name: SampleCount, Sum, Average, Minimum, Maximum, pNN.
    pub fn statistic(&self, s: &Statistic) -> Option<f64> {
        match s {
            Statistic::SampleCount => Some(self.count),
            Statistic::Sum => Some(self.sum),
            Statistic::Average => Some(self.average()),
            Statistic::Minimum => Some(self.min),
            Statistic::Maximum => Some(self.max),
            Statistic::Percentile(p) => self.percentile(*p),
        }
    }
}

/// Sorts values, sums equal ones, and merges neighbours down to `MAX_DISTINCT`.
fn compact(mut v: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(v.len());
    for (value, count) in v {
        match out.last_mut() {
            Some(last) if last.0 == value => last.1 += count,
            _ => out.push((value, count)),
        }
    }
    while out.len() > MAX_DISTINCT {
        let mut merged = Vec::with_capacity(out.len() / 2 + 1);
        for pair in out.chunks(2) {
            let count: f64 = pair.iter().map(|p| p.1).sum();
            let mean = pair.iter().map(|p| p.0 * p.1).sum::<f64>() / count;
            merged.push((mean, count));
        }
        out = merged;
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
pub enum Statistic {
    SampleCount,
    Sum,
    Average,
    Minimum,
    Maximum,
    Percentile(f64),
}

impl Statistic {
    /// Parses a statistic name; `None` for what CloudWatch does not define (or Gantry does
    /// not compute: trimmed means and the like).
    pub fn parse(s: &str) -> Option<Statistic> {
        Some(match s {
            "SampleCount" => Statistic::SampleCount,
            "Sum" => Statistic::Sum,
            "Average" => Statistic::Average,
            "Minimum" => Statistic::Minimum,
            "Maximum" => Statistic::Maximum,
            _ => {
                let p: f64 = s.strip_prefix('p')?.parse().ok()?;
                let digits_ok = s[1..].split('.').nth(1).is_none_or(|d| d.len() <= 2);
                if !(p > 0.0 && p <= 100.0 && digits_ok) {
                    return None;
                }
                Statistic::Percentile(p)
            }
        })
    }
}

/// Datapoints grouped into periods: each point goes to the period starting at
/// `start + k * period` that holds its timestamp; points outside [start, end) are left out.
pub fn by_period<'a>(
    points: impl IntoIterator<Item = (i64, &'a Agg)>,
    start_ms: i64,
    end_ms: i64,
    period_ms: i64,
) -> BTreeMap<i64, Agg> {
    let mut out: BTreeMap<i64, Agg> = BTreeMap::new();
    for (ts, agg) in points {
        if ts < start_ms || ts >= end_ms {
            continue;
        }
        let bucket = start_ms + (ts - start_ms) / period_ms * period_ms;
        match out.get_mut(&bucket) {
            Some(a) => a.merge(agg),
            None => {
                out.insert(bucket, agg.clone());
            }
        }
    }
    out
}
