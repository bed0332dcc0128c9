//! GetMetricStatistics, GetMetricData and ListMetrics over the metric store.

use super::math::{self, Env, Series, Val};
use super::put::{metric_key, Dimension};
use super::stats::{by_period, Agg, Statistic};
use super::store::{MetricKey, MetricStore};
use super::MetricsError;
use gantry_types::arn::Scope;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};

const MAX_STATISTICS_POINTS: i64 = 1440;
const DEFAULT_MAX_DATAPOINTS: usize = 100_800;
const MAX_QUERIES: usize = 500;
const LIST_PAGE: usize = 500;
const THREE_HOURS_MS: i64 = 3 * 3_600_000;
const TWO_WEEKS_MS: i64 = 14 * 86_400_000;

fn ms(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}

/// 2880 -> "2,880", as CloudWatch writes counts in messages.
fn thousands(n: i64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// Periods CloudWatch accepts: 1, 5, 10, 20, 30, or a multiple of 60 seconds.
fn check_period(period: i64, path: &str) -> Result<i64, MetricsError> {
    if [1, 5, 10, 20, 30].contains(&period) || (period > 0 && period % 60 == 0) {
        return Ok(period * 1000);
    }
    Err(MetricsError::invalid(format!(
        "The parameter {path} must be 1, 5, 10, 20, 30, 60, or any multiple of 60."
    )))
}

/// The query window: start rounded down to the whole second (whole minute for periods of a
/// minute or more, as CloudWatch rounds recent start times), before the end.
fn window(start: f64, end: f64, period_ms: i64) -> Result<(i64, i64), MetricsError> {
    let grain = if period_ms >= 60_000 { 60_000 } else { 1000 };
    let (start, end) = (ms(start).div_euclid(grain) * grain, ms(end));
    if start >= end {
        return Err(MetricsError::invalid(
            "The parameter StartTime must be less than the parameter EndTime.",
        ));
    }
    Ok((start, end))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub(super) struct StatisticsInput {
    namespace: String,
    metric_name: String,
    #[serde(default)]
    dimensions: Vec<Dimension>,
    start_time: f64,
    end_time: f64,
    period: i64,
    statistics: Option<Vec<String>>,
    extended_statistics: Option<Vec<String>>,
    unit: Option<String>,
}

pub(super) fn statistics(
    store: &MetricStore,
    scope: &Scope,
    input: StatisticsInput,
    _now_ms: i64,
) -> Result<Value, MetricsError> {
    let (plain, extended) = match (&input.statistics, &input.extended_statistics) {
        (Some(_), Some(_)) => {
            return Err(MetricsError::combination(
                "Must specify either Statistics or ExtendedStatistics, but not both.",
            ))
        }
        (None, None) => {
            return Err(MetricsError::missing(
                "Must specify either Statistics or ExtendedStatistics.",
            ))
        }
        (s, e) => (s.clone().unwrap_or_default(), e.clone().unwrap_or_default()),
    };
    let percentiles = extended
        .iter()
        .map(|p| match Statistic::parse(p) {
            Some(s @ Statistic::Percentile(_)) => Ok((p.clone(), s)),
            _ => Err(MetricsError::invalid(format!(
                "The value {p} for parameter ExtendedStatistics is not a valid percentile (p0.0 to p100, at most two decimals)."
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let period = check_period(input.period, "Period")?;
    let (start, end) = window(input.start_time, input.end_time, period)?;
    let wanted = (end - start + period - 1) / period;
    if wanted > MAX_STATISTICS_POINTS {
        return Err(MetricsError::invalid(format!(
            "You have requested up to {} datapoints, which exceeds the limit of {}. You may reduce the \
             datapoints requested by increasing Period, or decreasing the time range.",
            thousands(wanted),
            thousands(MAX_STATISTICS_POINTS)
        )));
    }
    let key = metric_key(&input.namespace, &input.metric_name, &input.dimensions, "")?;
    let points = store.points((&scope.account, &scope.region), &key, start, end)?;
    // Each unit is aggregated on its own, as CloudWatch reports datapoints per unit.
    let mut by_unit: BTreeMap<&str, Vec<(i64, &Agg)>> = BTreeMap::new();
    for p in &points {
        if input.unit.as_deref().is_none_or(|u| u == p.unit) {
            by_unit.entry(&p.unit).or_default().push((p.ts_ms, &p.agg));
        }
    }
    let mut datapoints = Vec::new();
    for (unit, pts) in by_unit {
        for (t, agg) in by_period(pts, start, end, period) {
            let mut d = Map::new();
            d.insert("Timestamp".into(), json!(seconds(t)));
            for s in &plain {
                if let Some(stat) = Statistic::parse(s).filter(|s| !matches!(s, Statistic::Percentile(_))) {
                    d.insert(s.clone(), json!(agg.statistic(&stat)));
                }
            }
            let ext: Map<String, Value> = percentiles
                .iter()
                .filter_map(|(name, s)| Some((name.clone(), json!(agg.statistic(s)?))))
                .collect();
            if !percentiles.is_empty() {
                d.insert("ExtendedStatistics".into(), Value::Object(ext));
            }
            d.insert("Unit".into(), json!(unit));
            datapoints.push(Value::Object(d));
        }
    }
    Ok(json!({"Label": input.metric_name, "Datapoints": datapoints}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub(super) struct DataInput {
    metric_data_queries: Vec<DataQuery>,
    start_time: f64,
    end_time: f64,
    next_token: Option<String>,
    scan_by: Option<String>,
    max_datapoints: Option<i64>,
    label_options: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct DataQuery {
    id: String,
    metric_stat: Option<MetricStat>,
    expression: Option<String>,
    label: Option<String>,
    return_data: Option<bool>,
    period: Option<i64>,
    account_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct MetricStat {
    metric: MetricRef,
    period: i64,
    stat: String,
    unit: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub(super) struct MetricRef {
    namespace: String,
    metric_name: String,
    #[serde(default)]
    dimensions: Vec<Dimension>,
}

/// One query, checked: a metric's statistic per period, or an expression over the others.
enum Checked {
    Stat {
        key: MetricKey,
        stat: Statistic,
        unit: Option<String>,
        period_ms: i64,
    },
    Expression(String),
}

fn check_query(q: &DataQuery, path: &str, scope: &Scope) -> Result<Checked, MetricsError> {
    let id_ok = q.id.starts_with(|c: char| c.is_ascii_lowercase())
        && q.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !id_ok {
        return Err(MetricsError::invalid(format!(
            "The value {} for parameter {path}.Id is invalid: it must start with a lowercase letter and hold only \
             letters, numbers and underscores.",
            q.id
        )));
    }
    if q.account_id.as_ref().is_some_and(|a| a != &scope.account) {
        return Err(MetricsError::invalid(format!(
            "{path}.AccountId names another account; cross-account observability is not supported by Gantry."
        )));
    }
    match (&q.metric_stat, &q.expression) {
        (Some(m), None) => {
            let stat = Statistic::parse(&m.stat).ok_or_else(|| {
                MetricsError::invalid(format!(
                    "The value {} for parameter {path}.MetricStat.Stat is not a statistic Gantry computes \
                     (SampleCount, Sum, Average, Minimum, Maximum, pNN).",
                    m.stat
                ))
            })?;
            let r = &m.metric;
            Ok(Checked::Stat {
                key: metric_key(
                    &r.namespace,
                    &r.metric_name,
                    &r.dimensions,
                    &format!("{path}.MetricStat.Metric"),
                )?,
                stat,
                unit: m.unit.clone(),
                period_ms: check_period(m.period, &format!("{path}.MetricStat.Period"))?,
            })
        }
        (None, Some(e)) if e.trim_start().to_ascii_uppercase().starts_with("SELECT") => Err(MetricsError::invalid(
            format!("{path}.Expression is a Metrics Insights query; Gantry supports metric math expressions only."),
        )),
        (None, Some(e)) => Ok(Checked::Expression(e.clone())),
        _ => Err(MetricsError::invalid(format!(
            "The parameter {path} must specify exactly one of Expression or MetricStat."
        ))),
    }
}

/// One query's answer: its label and its values by period start.
struct Answer {
    id: String,
    label: String,
    values: Series,
    returned: bool,
}

pub(super) fn metric_data(
    store: &MetricStore,
    scope: &Scope,
    input: DataInput,
    _now_ms: i64,
) -> Result<Value, MetricsError> {
    let n = input.metric_data_queries.len();
    if n == 0 || n > MAX_QUERIES {
        return Err(MetricsError::invalid(format!(
            "The collection MetricDataQueries must have between 1 and {MAX_QUERIES} members."
        )));
    }
    if input.label_options.is_some() {
        return Err(MetricsError::invalid("LabelOptions is not supported by Gantry."));
    }
    let descending = match input.scan_by.as_deref() {
        None | Some("TimestampDescending") => true,
        Some("TimestampAscending") => false,
        Some(other) => {
            return Err(MetricsError::invalid(format!(
                "The value {other} for parameter ScanBy is invalid."
            )))
        }
    };
    let mut checked = Vec::with_capacity(n);
    let mut ids = std::collections::HashSet::new();
    for (i, q) in input.metric_data_queries.iter().enumerate() {
        let path = format!("MetricDataQueries.member.{}", i + 1);
        if !ids.insert(q.id.as_str()) {
            return Err(MetricsError::invalid(format!(
                "The value {} for parameter {path}.Id is duplicated.",
                q.id
            )));
        }
        checked.push(check_query(q, &path, scope)?);
    }
    if input.metric_data_queries.iter().all(|q| q.return_data == Some(false)) {
        return Err(MetricsError::invalid(
            "At least one of the queries must return data (ReturnData).",
        ));
    }
    let period_ms = checked
        .iter()
        .find_map(|c| match c {
            Checked::Stat { period_ms, .. } => Some(*period_ms),
            _ => None,
        })
        .or_else(|| {
            input
                .metric_data_queries
                .iter()
                .find_map(|q| q.period.map(|p| p * 1000))
        })
        .unwrap_or(60_000);
    let (start, end) = window(input.start_time, input.end_time, period_ms)?;
    let answers = answer_all(
        store,
        scope,
        &input.metric_data_queries,
        &checked,
        (start, end, period_ms),
    )?;
    page(answers, descending, input.max_datapoints, input.next_token.as_deref())
}

/// Checks alarm queries (PutMetricAlarm's Metrics: MetricDataQuery members) as GetMetricData
/// checks them; exactly one of them is the alarm's series (ReturnData true). Returns the
/// queries and the period they are evaluated at.
pub(super) fn check_alarm_queries(queries: Value, scope: &Scope) -> Result<(Vec<Value>, i64), MetricsError> {
    let raw: Vec<Value> = super::parse(queries.clone())?;
    let parsed: Vec<DataQuery> = super::parse(queries)?;
    if parsed.is_empty() || parsed.len() > 20 {
        return Err(MetricsError::invalid(
            "The collection Metrics must have between 1 and 20 members.",
        ));
    }
    let mut checked = Vec::new();
    for (i, q) in parsed.iter().enumerate() {
        checked.push(check_query(q, &format!("Metrics.member.{}", i + 1), scope)?);
    }
    if parsed.iter().filter(|q| q.return_data != Some(false)).count() != 1 {
        return Err(MetricsError::invalid(
            "Exactly one element of the Metrics array must have ReturnData set to true.",
        ));
    }
    let period_ms = alarm_period(&parsed, &checked);
    Ok((raw, period_ms / 1000))
}

fn alarm_period(parsed: &[DataQuery], checked: &[Checked]) -> i64 {
    checked
        .iter()
        .find_map(|c| match c {
            Checked::Stat { period_ms, .. } => Some(*period_ms),
            _ => None,
        })
        .or_else(|| parsed.iter().find_map(|q| q.period.map(|p| p * 1000)))
        .unwrap_or(60_000)
}

/// The alarm's series (the query returning data) per period over [start, end).
pub(super) fn alarm_series(
    store: &MetricStore,
    scope: &Scope,
    queries: Vec<Value>,
    start: i64,
    end: i64,
) -> Result<Series, MetricsError> {
    let parsed: Vec<DataQuery> = super::parse(Value::Array(queries))?;
    let checked = parsed
        .iter()
        .enumerate()
        .map(|(i, q)| check_query(q, &format!("Metrics.member.{}", i + 1), scope))
        .collect::<Result<Vec<_>, _>>()?;
    let period_ms = alarm_period(&parsed, &checked);
    let answers = answer_all(store, scope, &parsed, &checked, (start, end, period_ms))?;
    Ok(answers
        .into_iter()
        .find(|a| a.returned)
        .map(|a| a.values)
        .unwrap_or_default())
}

/// Answers metric queries first, then expressions (which may name metrics and earlier
/// expressions).
fn answer_all(
    store: &MetricStore,
    scope: &Scope,
    queries: &[DataQuery],
    checked: &[Checked],
    (start, end, period_ms): (i64, i64, i64),
) -> Result<Vec<Answer>, MetricsError> {
    let mut series: HashMap<String, Series> = HashMap::new();
    for (q, c) in queries.iter().zip(checked) {
        if let Checked::Stat {
            key,
            stat,
            unit,
            period_ms,
        } = c
        {
            let points = store.points((&scope.account, &scope.region), key, start, end)?;
            let pts = points
                .iter()
                .filter(|p| unit.as_deref().is_none_or(|u| u == p.unit))
                .map(|p| (p.ts_ms, &p.agg));
            let values = by_period(pts, start, end, *period_ms)
                .into_iter()
                .filter_map(|(t, a)| Some((t, a.statistic(stat)?)))
                .collect();
            series.insert(q.id.clone(), values);
        }
    }
    let grid: Vec<i64> = (start..end).step_by(period_ms as usize).collect();
    for (i, (q, c)) in queries.iter().zip(checked).enumerate() {
        if let Checked::Expression(e) = c {
            let lookup = |id: &str| series.get(id).cloned();
            let env = Env {
                series: &lookup,
                grid: &grid,
            };
            let v = math::evaluate(e, &env).map_err(|m| {
                MetricsError::invalid(format!(
                    "Error in expression {} (MetricDataQueries.member.{}): {m}",
                    q.id,
                    i + 1
                ))
            })?;
            let values = match v {
                Val::Series(s) => s,
                Val::Scalar(x) => grid.iter().map(|t| (*t, x)).collect(),
                Val::List(_) => {
                    return Err(MetricsError::invalid(format!(
                        "Error in expression {}: it yields several time series; Gantry returns one per query.",
                        q.id
                    )))
                }
            };
            series.insert(q.id.clone(), values);
        }
    }
    Ok(queries
        .iter()
        .map(|q| Answer {
            id: q.id.clone(),
            label: q.label.clone().unwrap_or_else(|| match &q.metric_stat {
                Some(m) => m.metric.metric_name.clone(),
                None => q.id.clone(),
            }),
            values: series.remove(&q.id).unwrap_or_default(),
            returned: q.return_data != Some(false),
        })
        .collect())
}

/// Pages the returned answers' datapoints: `MaxDatapoints` at a time, the token the number
/// already handed out.
fn page(answers: Vec<Answer>, descending: bool, max: Option<i64>, token: Option<&str>) -> Result<Value, MetricsError> {
    let max = match max {
        Some(m) if m <= 0 => return Err(MetricsError::invalid("The parameter MaxDatapoints must be positive.")),
        Some(m) => m as usize,
        None => DEFAULT_MAX_DATAPOINTS,
    };
    let mut skip: usize = match token {
        None => 0,
        Some(t) => t
            .parse()
            .map_err(|_| MetricsError::invalid_token(format!("The NextToken {t} is invalid.")))?,
    };
    let mut budget = max;
    let mut results = Vec::new();
    let mut more = false;
    for a in answers.into_iter().filter(|a| a.returned) {
        let mut pts: Vec<(i64, f64)> = a.values.into_iter().collect();
        if descending {
            pts.reverse();
        }
        let from = skip.min(pts.len());
        skip -= from;
        let take = (pts.len() - from).min(budget);
        budget -= take;
        let complete = from + take == pts.len();
        more |= !complete;
        let shown = &pts[from..from + take];
        results.push(json!({
            "Id": a.id,
            "Label": a.label,
            "Timestamps": shown.iter().map(|(t, _)| seconds(*t)).collect::<Vec<_>>(),
            "Values": shown.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            "StatusCode": if complete { "Complete" } else { "PartialData" },
        }));
    }
    let handed: usize = token.and_then(|t| t.parse().ok()).unwrap_or(0) + (max - budget);
    let mut out = json!({"MetricDataResults": results, "Messages": []});
    if more {
        out["NextToken"] = json!(handed.to_string());
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub(super) struct ListInput {
    namespace: Option<String>,
    metric_name: Option<String>,
    #[serde(default)]
    dimensions: Vec<DimensionFilter>,
    next_token: Option<String>,
    recently_active: Option<String>,
    include_linked_accounts: Option<bool>,
    owning_account: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct DimensionFilter {
    name: String,
    value: Option<String>,
}

pub(super) fn list(store: &MetricStore, scope: &Scope, input: ListInput, now_ms: i64) -> Result<Value, MetricsError> {
    if input.include_linked_accounts == Some(true) || input.owning_account.is_some() {
        return Err(MetricsError::invalid(
            "Cross-account observability (IncludeLinkedAccounts, OwningAccount) is not supported by Gantry.",
        ));
    }
    let active_since = match input.recently_active.as_deref() {
        None => now_ms - TWO_WEEKS_MS,
        Some("PT3H") => now_ms - THREE_HOURS_MS,
        Some(other) => {
            return Err(MetricsError::invalid(format!(
                "The value {other} for parameter RecentlyActive is invalid: PT3H is the only valid value."
            )))
        }
    };
    // ListMetrics declares no InvalidNextToken: a bad token is a bad parameter value.
    let mut after: i64 = match &input.next_token {
        None => 0,
        Some(t) => t
            .parse()
            .map_err(|_| MetricsError::invalid(format!("The value {t} for parameter NextToken is invalid.")))?,
    };
    let matches = |k: &MetricKey, last_ms: i64| {
        last_ms >= active_since
            && input.namespace.as_ref().is_none_or(|n| n == &k.namespace)
            && input.metric_name.as_ref().is_none_or(|n| n == &k.name)
            && input.dimensions.iter().all(|f| {
                k.dims
                    .iter()
                    .any(|(n, v)| n == &f.name && f.value.as_ref().is_none_or(|fv| fv == v))
            })
    };
    let mut metrics = Vec::new();
    loop {
        let batch = store.series((&scope.account, &scope.region), after, 1000)?;
        let exhausted = batch.len() < 1000;
        for (id, key, last_ms) in batch {
            after = id;
            if matches(&key, last_ms) {
                metrics.push(metric_json(&key));
                if metrics.len() == LIST_PAGE {
                    return Ok(json!({"Metrics": metrics, "NextToken": id.to_string()}));
                }
            }
        }
        if exhausted {
            return Ok(json!({"Metrics": metrics}));
        }
    }
}

/// A metric as the API describes it.
pub fn metric_json(k: &MetricKey) -> Value {
    json!({
        "Namespace": k.namespace,
        "MetricName": k.name,
        "Dimensions": k.dims.iter().map(|(n, v)| json!({"Name": n, "Value": v})).collect::<Vec<_>>(),
    })
}
