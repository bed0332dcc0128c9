//! Alarm evaluation as CloudWatch defines it, as a pure function: the last EvaluationPeriods
//! periods' values, each breaching or not against the threshold; DatapointsToAlarm of them
//! breaching puts the alarm in ALARM. Missing periods count as TreatMissingData says:
//! `breaching` and `notBreaching` fill them in; `ignore` keeps the current state unless the
//! present datapoints decide; `missing` (the default) does too, but with no datapoint at all
//! the alarm has INSUFFICIENT_DATA.

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub threshold: f64,
    pub comparison: String,
    pub evaluation_periods: usize,
    pub datapoints_to_alarm: usize,
    pub treat_missing: String,
    /// The statistic's name for reasons ("Average", "p90", or "expression").
    pub statistic: String,
    pub period_s: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub state: &'static str,
    pub reason: String,
    pub reason_data: Value,
}

fn breaches(rule: &Rule, v: f64) -> bool {
    match rule.comparison.as_str() {
        "GreaterThanOrEqualToThreshold" => v >= rule.threshold,
        "GreaterThanThreshold" => v > rule.threshold,
        "LessThanThreshold" => v < rule.threshold,
        "LessThanOrEqualToThreshold" => v <= rule.threshold,
        _ => false,
    }
}

fn comparison_words(c: &str) -> &'static str {
    match c {
        "GreaterThanOrEqualToThreshold" => "greater than or equal to",
        "GreaterThanThreshold" => "greater than",
        "LessThanThreshold" => "less than",
        _ => "less than or equal to",
    }
}

fn stamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%d/%m/%y %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string())
        .unwrap_or_default()
}

/// Evaluates `periods` (oldest first: each period's start and value, None when missing),
/// the alarm being in `current`, at `now_ms`.
pub fn evaluate(rule: &Rule, current: &str, periods: &[(i64, Option<f64>)], now_ms: i64) -> Evaluation {
    let filled: Vec<(i64, Option<bool>)> = periods
        .iter()
        .map(|(t, v)| {
            let verdict = match (v, rule.treat_missing.as_str()) {
                (Some(v), _) => Some(breaches(rule, *v)),
                (None, "breaching") => Some(true),
                (None, "notBreaching") => Some(false),
                (None, _) => None,
            };
            (*t, verdict)
        })
        .collect();
    let breaching = filled.iter().filter(|(_, b)| *b == Some(true)).count();
    let fine = filled.iter().filter(|(_, b)| *b == Some(false)).count();
    let (n, m) = (rule.evaluation_periods, rule.datapoints_to_alarm);
    let state = if breaching >= m {
        "ALARM"
    } else if fine > n.saturating_sub(m) {
        // No way to reach M breaching datapoints in this range.
        "OK"
    } else if breaching == 0 && fine == 0 && rule.treat_missing == "missing" {
        "INSUFFICIENT_DATA"
    } else {
        // Undecided: the alarm stays as it is.
        match current {
            "ALARM" => "ALARM",
            "OK" => "OK",
            _ => "INSUFFICIENT_DATA",
        }
    };
    let present: Vec<(i64, f64)> = periods.iter().filter_map(|(t, v)| Some((*t, (*v)?))).collect();
    let reason = reason(rule, state, current, &present, breaching, periods.len());
    let start = periods.first().map(|p| p.0).unwrap_or(now_ms);
    let reason_data = json!({
        "version": "1.0",
        "queryDate": iso(now_ms),
        "startDate": iso(start),
        "statistic": rule.statistic,
        "period": rule.period_s,
        "recentDatapoints": present.iter().map(|p| p.1).collect::<Vec<_>>(),
        "threshold": rule.threshold,
        "evaluatedDatapoints": present.iter().rev().map(|(t, v)| json!({"timestamp": iso(*t), "value": v})).collect::<Vec<_>>(),
    });
    Evaluation {
        state,
        reason,
        reason_data,
    }
}

fn reason(rule: &Rule, state: &str, current: &str, present: &[(i64, f64)], breaching: usize, n: usize) -> String {
    if state == "INSUFFICIENT_DATA" && present.is_empty() {
        return format!(
            "Insufficient Data: {n} datapoint{} {} unknown.",
            plural(n),
            if n == 1 { "was" } else { "were" }
        );
    }
    let listed = present
        .iter()
        .rev()
        .map(|(t, v)| format!("{} ({})", number(*v), stamp(*t)))
        .collect::<Vec<_>>()
        .join(", ");
    let count = if state == "ALARM" {
        breaching
    } else {
        present.len() - breaching
    };
    let verb = match (count == 1, state == "ALARM") {
        (true, true) => "was",
        (false, true) => "were",
        (true, false) => "was not",
        (false, false) => "were not",
    };
    let minimum = if state == "ALARM" { rule.datapoints_to_alarm } else { 1 };
    format!(
        "Threshold Crossed: {count} out of the last {n} datapoints [{listed}] {verb} {} the threshold ({}) \
         (minimum {minimum} datapoint{} for {current} -> {state} transition).",
        comparison_words(&rule.comparison),
        number(rule.threshold),
        plural(minimum),
    )
}

/// A number as CloudWatch writes it in reasons (Java's doubles: 70.0, 85.5).
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        v.to_string()
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(n: usize, m: usize, missing: &str) -> Rule {
        Rule {
            threshold: 70.0,
            comparison: "GreaterThanThreshold".into(),
            evaluation_periods: n,
            datapoints_to_alarm: m,
            treat_missing: missing.into(),
            statistic: "Average".into(),
            period_s: 60,
        }
    }

    fn periods(values: &[Option<f64>]) -> Vec<(i64, Option<f64>)> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| (i as i64 * 60_000, *v))
            .collect()
    }

    fn state(r: &Rule, current: &str, values: &[Option<f64>]) -> &'static str {
        evaluate(r, current, &periods(values), 1_000_000).state
    }

    #[test]
    fn m_out_of_n() {
        let r = rule(3, 2, "missing");
        assert_eq!(state(&r, "OK", &[Some(80.0), Some(10.0), Some(90.0)]), "ALARM");
        assert_eq!(state(&r, "ALARM", &[Some(80.0), Some(10.0), Some(10.0)]), "OK");
        assert_eq!(
            state(&r, "INSUFFICIENT_DATA", &[Some(10.0), Some(10.0), Some(10.0)]),
            "OK"
        );
        // The threshold itself does not breach GreaterThanThreshold.
        assert_eq!(state(&r, "OK", &[Some(70.0), Some(70.0), Some(70.0)]), "OK");
    }

    #[test]
    fn missing_data_as_configured() {
        let none = [None, None, None];
        assert_eq!(state(&rule(3, 3, "missing"), "OK", &none), "INSUFFICIENT_DATA");
        assert_eq!(state(&rule(3, 3, "ignore"), "ALARM", &none), "ALARM");
        assert_eq!(state(&rule(3, 3, "breaching"), "OK", &none), "ALARM");
        assert_eq!(state(&rule(3, 3, "notBreaching"), "ALARM", &none), "OK");
        // Two breaching and one missing out of 3-of-3: undecided, the state stays.
        let partial = [Some(80.0), None, Some(90.0)];
        assert_eq!(state(&rule(3, 3, "missing"), "OK", &partial), "OK");
        assert_eq!(state(&rule(3, 3, "missing"), "ALARM", &partial), "ALARM");
        assert_eq!(state(&rule(3, 3, "breaching"), "OK", &partial), "ALARM");
    }

    #[test]
    fn reasons_in_cloudwatch_words() {
        let r = rule(1, 1, "missing");
        let e = evaluate(&r, "OK", &periods(&[Some(85.0)]), 60_000);
        assert_eq!(e.state, "ALARM");
        assert!(
            e.reason
                .starts_with("Threshold Crossed: 1 out of the last 1 datapoints [85.0 ("),
            "{}",
            e.reason
        );
        assert!(e
            .reason
            .ends_with("was greater than the threshold (70.0) (minimum 1 datapoint for OK -> ALARM transition)."));
        assert_eq!(e.reason_data["recentDatapoints"], json!([85.0]));
        let e = evaluate(&rule(2, 2, "missing"), "OK", &periods(&[None, None]), 60_000);
        assert_eq!(e.reason, "Insufficient Data: 2 datapoints were unknown.");
    }
}
