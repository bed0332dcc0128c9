//! PutMetricData: a request's datapoints, checked as CloudWatch checks them.

use super::stats::Agg;
use super::store::{MetricKey, Published};
use super::MetricsError;
use serde::Deserialize;

/// Values must lie within -2^360..2^360 (CloudWatch's range; NaN and infinities are refused).
const VALUE_LIMIT: f64 = 2.348_542_582_773_833_3e108;
const TWO_WEEKS_MS: i64 = 14 * 86_400_000;
const TWO_HOURS_MS: i64 = 2 * 3_600_000;
const MAX_VALUES: usize = 150;
const MAX_DIMENSIONS: usize = 30;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub(super) struct PutInput {
    namespace: Option<String>,
    #[serde(default)]
    metric_data: Vec<Datum>,
    #[serde(default)]
    entity_metric_data: Vec<serde_json::Value>,
    #[serde(default)]
    strict_entity_validation: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Datum {
    metric_name: String,
    #[serde(default)]
    dimensions: Vec<Dimension>,
    timestamp: Option<f64>,
    value: Option<f64>,
    statistic_values: Option<StatisticSet>,
    values: Option<Vec<f64>>,
    counts: Option<Vec<f64>>,
    unit: Option<String>,
    storage_resolution: Option<i64>,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub(super) struct Dimension {
    pub name: String,
    pub value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct StatisticSet {
    sample_count: f64,
    sum: f64,
    minimum: f64,
    maximum: f64,
}

/// A metric's identity from its request form, dimensions sorted; a name given twice is refused.
pub(super) fn metric_key(
    namespace: &str,
    name: &str,
    dims: &[Dimension],
    path: &str,
) -> Result<MetricKey, MetricsError> {
    if dims.len() > MAX_DIMENSIONS {
        return Err(MetricsError::invalid(format!(
            "The collection {path}.Dimensions must not have more than {MAX_DIMENSIONS} members."
        )));
    }
    let mut dims: Vec<(String, String)> = dims.iter().map(|d| (d.name.clone(), d.value.clone())).collect();
    dims.sort();
    if let Some(w) = dims.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(MetricsError::invalid(format!(
            "The dimension name {} is given more than once in {path}.Dimensions.",
            w[0].0
        )));
    }
    Ok(MetricKey {
        namespace: namespace.to_string(),
        name: name.to_string(),
        dims,
    })
}

fn check_value(v: f64, path: &str) -> Result<f64, MetricsError> {
    if !v.is_finite() || v.abs() > VALUE_LIMIT {
        return Err(MetricsError::invalid(format!(
            "The value {v} for parameter {path} is out of range: values must lie within -2^360 and 2^360."
        )));
    }
    Ok(v)
}

/// The datapoints of a PutMetricData request, stamped `now_ms` where they carry no time.
pub(super) fn datapoints(input: PutInput, now_ms: i64) -> Result<Vec<Published>, MetricsError> {
    if !input.entity_metric_data.is_empty() || input.strict_entity_validation.is_some() {
        return Err(MetricsError::invalid(
            "EntityMetricData is not supported by Gantry: publish the datapoints in MetricData.",
        ));
    }
    let namespace = input
        .namespace
        .ok_or_else(|| MetricsError::missing("The parameter Namespace is required."))?;
    if namespace.starts_with("AWS/") || namespace == crate::cost::NAMESPACE {
        return Err(MetricsError::invalid(format!(
            "The value {namespace} for parameter Namespace is invalid: namespaces beginning with AWS/, and {}, \
             are reserved for the metrics Gantry publishes.",
            crate::cost::NAMESPACE
        )));
    }
    if input.metric_data.is_empty() {
        return Err(MetricsError::missing("The parameter MetricData is required."));
    }
    input
        .metric_data
        .iter()
        .enumerate()
        .map(|(i, d)| datapoint(&namespace, d, &format!("MetricData.member.{}", i + 1), now_ms))
        .collect()
}

fn datapoint(namespace: &str, d: &Datum, path: &str, now_ms: i64) -> Result<Published, MetricsError> {
    let key = metric_key(namespace, &d.metric_name, &d.dimensions, path)?;
    let resolution = d.storage_resolution.unwrap_or(60);
    if resolution != 1 && resolution != 60 {
        return Err(MetricsError::invalid(format!(
            "The value {resolution} for parameter {path}.StorageResolution is invalid: it must be 1 or 60."
        )));
    }
    let ts_ms = match d.timestamp {
        Some(t) => (t * 1000.0).round() as i64,
        None => now_ms,
    };
    if ts_ms < now_ms - TWO_WEEKS_MS {
        return Err(MetricsError::invalid(format!(
            "The parameter {path}.Timestamp must specify a time no more than two weeks in the past."
        )));
    }
    if ts_ms > now_ms + TWO_HOURS_MS {
        return Err(MetricsError::invalid(format!(
            "The parameter {path}.Timestamp must specify a time no more than two hours in the future."
        )));
    }
    // Standard-resolution data is stored per minute, high-resolution data per second.
    let grain = resolution * 1000;
    Ok(Published {
        key,
        ts_ms: ts_ms.div_euclid(grain) * grain,
        unit: d.unit.clone().unwrap_or_else(|| "None".into()),
        resolution,
        agg: aggregate(d, path)?,
    })
}

/// What the datum says, from exactly one of Value, StatisticValues and Values (+ Counts).
fn aggregate(d: &Datum, path: &str) -> Result<Agg, MetricsError> {
    let given: Vec<&str> = [
        d.value.map(|_| "Value"),
        d.statistic_values.as_ref().map(|_| "StatisticValues"),
        d.values.as_ref().map(|_| "Values"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.len() > 1 {
        return Err(MetricsError::combination(format!(
            "The parameters {path}.{} and {path}.{} are mutually exclusive and you have specified both.",
            given[0], given[1]
        )));
    }
    if d.counts.is_some() && d.values.is_none() {
        return Err(MetricsError::combination(format!(
            "The parameter {path}.Counts requires {path}.Values."
        )));
    }
    if let Some(v) = d.value {
        return Ok(Agg::single(check_value(v, &format!("{path}.Value"))?, 1.0));
    }
    if let Some(s) = &d.statistic_values {
        return statistic_set(s, path);
    }
    let Some(values) = &d.values else {
        return Err(MetricsError::missing(format!(
            "One of the parameters {path}.Value, {path}.StatisticValues or {path}.Values must be specified."
        )));
    };
    values_and_counts(values, d.counts.as_deref(), path)
}

fn statistic_set(s: &StatisticSet, path: &str) -> Result<Agg, MetricsError> {
    let p = format!("{path}.StatisticValues");
    for (v, name) in [
        (s.sample_count, "SampleCount"),
        (s.sum, "Sum"),
        (s.minimum, "Minimum"),
        (s.maximum, "Maximum"),
    ] {
        check_value(v, &format!("{p}.{name}"))?;
    }
    if s.sample_count <= 0.0 {
        return Err(MetricsError::invalid(format!(
            "The value {} for parameter {p}.SampleCount is invalid: it must be greater than 0.",
            s.sample_count
        )));
    }
    if s.minimum > s.maximum {
        return Err(MetricsError::invalid(format!(
            "The parameter {p}.Minimum must be less than or equal to {p}.Maximum."
        )));
    }
    Ok(Agg::set(s.sample_count, s.sum, s.minimum, s.maximum))
}

fn values_and_counts(values: &[f64], counts: Option<&[f64]>, path: &str) -> Result<Agg, MetricsError> {
    if values.is_empty() || values.len() > MAX_VALUES {
        return Err(MetricsError::invalid(format!(
            "The collection {path}.Values must have between 1 and {MAX_VALUES} members."
        )));
    }
    if counts.is_some_and(|c| c.len() != values.len()) {
        return Err(MetricsError::invalid(format!(
            "The parameters {path}.Values and {path}.Counts must be of the same size."
        )));
    }
    let mut agg: Option<Agg> = None;
    for (i, v) in values.iter().enumerate() {
        let v = check_value(*v, &format!("{path}.Values.member.{}", i + 1))?;
        let c = counts.map_or(1.0, |c| c[i]);
        if !(c.is_finite() && c >= 0.0) {
            return Err(MetricsError::invalid(format!(
                "The value {c} for parameter {path}.Counts.member.{} is invalid: counts must not be negative.",
                i + 1
            )));
        }
        if c == 0.0 {
            continue;
        }
        let one = Agg::single(v, c);
        match &mut agg {
            Some(a) => a.merge(&one),
            None => agg = Some(one),
        }
    }
    agg.ok_or_else(|| MetricsError::invalid(format!("The parameter {path}.Counts counts no value.")))
}
