//! Scheduled actions' schedules, as pure functions: `at(yyyy-mm-ddThh:mm:ss)`,
//! `rate(N minutes|hours|days)` and `cron(minutes hours day-of-month month day-of-week year)`
//! (AWS's six fields: `*`, `?`, lists, ranges, steps, month and day names; day-of-week 1-7 is
//! SUN-SAT), in a time zone. `next_after` says when one fires next.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    At(NaiveDateTime),
    Rate(i64),
    Cron(Cron),
}

/// Each field as the set of values it allows.
#[derive(Debug, Clone, PartialEq)]
pub struct Cron {
    minutes: Vec<u32>,
    hours: Vec<u32>,
    days: Option<Vec<u32>>,
    months: Vec<u32>,
    weekdays: Option<Vec<u32>>,
    years: Vec<i32>,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

pub fn parse(s: &str) -> Result<Schedule, String> {
    let inner = |prefix: &str| s.strip_prefix(prefix).and_then(|r| r.strip_suffix(')'));
    if let Some(t) = inner("at(") {
        return NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S")
            .map(Schedule::At)
            .map_err(|_| format!("at({t}) is not a time of the form yyyy-mm-ddThh:mm:ss"));
    }
    if let Some(r) = inner("rate(") {
        let (n, unit) = r
            .split_once(' ')
            .ok_or_else(|| format!("rate({r}) needs a value and a unit"))?;
        let n: i64 = n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("rate({r}): the value must be a positive whole number"))?;
        let secs = match (unit, n == 1) {
            ("minute", true) | ("minutes", false) => 60,
            ("hour", true) | ("hours", false) => 3600,
            ("day", true) | ("days", false) => 86_400,
            _ => {
                return Err(format!(
                    "rate({r}): the unit is minute(s), hour(s) or day(s), agreeing with the value"
                ))
            }
        };
        return Ok(Schedule::Rate(n * secs));
    }
    if let Some(c) = inner("cron(") {
        return parse_cron(c).map(Schedule::Cron);
    }
    Err(format!("{s} is not at(...), rate(...) or cron(...)"))
}

fn parse_cron(c: &str) -> Result<Cron, String> {
    let f: Vec<&str> = c.split_whitespace().collect();
    if f.len() != 6 {
        return Err(format!(
            "cron({c}) needs six fields: minutes hours day-of-month month day-of-week year"
        ));
    }
    let days = (f[2] != "?").then(|| field(f[2], 1, 31, &[])).transpose()?;
    let weekdays = (f[4] != "?").then(|| field(f[4], 1, 7, &DAYS)).transpose()?;
    if days.is_some() == weekdays.is_some() {
        return Err(format!("cron({c}): one of day-of-month and day-of-week must be '?'"));
    }
    Ok(Cron {
        minutes: field(f[0], 0, 59, &[])?,
        hours: field(f[1], 0, 23, &[])?,
        days,
        months: field(f[3], 1, 12, &MONTHS)?,
        weekdays,
        years: field(f[5], 1970, 2199, &[])?.into_iter().map(|y| y as i32).collect(),
    })
}

/// One field's allowed values: `*`, `a`, `a-b`, `a/step`, `a-b/step`, `*/step`, comma lists.
fn field(s: &str, lo: u32, hi: u32, names: &[&str]) -> Result<Vec<u32>, String> {
    let value = |v: &str| -> Result<u32, String> {
        let upper = v.to_ascii_uppercase();
        if let Some(i) = names.iter().position(|n| *n == upper) {
            return Ok(i as u32 + lo);
        }
        v.parse::<u32>()
            .ok()
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(|| format!("{v} is not a value between {lo} and {hi} (L, W and # are not supported)"))
    };
    let mut out = Vec::new();
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => (
                r,
                st.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or(format!("bad step in {part}"))?,
            ),
            None => (part, 1),
        };
        let (a, b) = match range {
            "*" => (lo, hi),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if step > 1 => (value(r)?, hi),
                None => (value(r)?, value(r)?),
            },
        };
        if a > b {
            return Err(format!("{part}: the range runs backwards"));
        }
        out.extend((a..=b).step_by(step as usize));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

impl Cron {
    fn day_matches(&self, d: NaiveDate) -> bool {
        let dom = self.days.as_ref().is_none_or(|v| v.contains(&d.day()));
        let dow = self
            .weekdays
            .as_ref()
            .is_none_or(|v| v.contains(&(d.weekday().num_days_from_sunday() + 1)));
        dom && dow && self.months.contains(&d.month()) && self.years.contains(&d.year())
    }

    /// The first matching local minute after `after`, within five years.
    fn next_local(&self, after: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut day = after.date();
        for _ in 0..(5 * 366) {
            if self.day_matches(day) {
                for &h in &self.hours {
                    for &m in &self.minutes {
                        let t = day.and_hms_opt(h, m, 0)?;
                        if t > after {
                            return Some(t);
                        }
                    }
                }
            }
            day = day.succ_opt()?;
        }
        None
    }
}

/// A local time in `tz` as UTC (the earlier of an ambiguous time; a skipped time moves on an
/// hour, as clocks do).
fn to_utc(tz: Tz, t: NaiveDateTime) -> Option<DateTime<Utc>> {
    tz.from_local_datetime(&t)
        .earliest()
        .or_else(|| tz.from_local_datetime(&(t + chrono::Duration::hours(1))).earliest())
        .map(|t| t.with_timezone(&Utc))
}

/// When the schedule fires next after `after`; `anchor` is where a rate counts from.
pub fn next_after(s: &Schedule, tz: Tz, anchor: DateTime<Utc>, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match s {
        Schedule::At(t) => to_utc(tz, *t).filter(|t| *t > after),
        Schedule::Rate(secs) => {
            let elapsed = (after - anchor).num_seconds();
            let k = if elapsed < 0 { 0 } else { elapsed / secs + 1 };
            Some(anchor + chrono::Duration::seconds(k * secs))
        }
        Schedule::Cron(c) => {
            let local = after.with_timezone(&tz).naive_local().with_second(0)?;
            let mut from = local;
            // A local time may map before `after` across a clock change: look further.
            for _ in 0..3 {
                let next = c.next_local(from)?;
                match to_utc(tz, next) {
                    Some(t) if t > after => return Some(t),
                    _ => from = next,
                }
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(s: &str, tz: &str, after: &str) -> Option<String> {
        let tz: Tz = tz.parse().unwrap();
        let anchor = utc("2026-01-01T00:00:00Z");
        next_after(&parse(s).unwrap(), tz, anchor, utc(after)).map(|t| t.to_rfc3339())
    }

    #[test]
    fn at_rate_and_cron() {
        assert_eq!(
            next("at(2026-06-01T12:00:00)", "UTC", "2026-05-01T00:00:00Z").unwrap(),
            "2026-06-01T12:00:00+00:00"
        );
        assert_eq!(next("at(2026-06-01T12:00:00)", "UTC", "2026-07-01T00:00:00Z"), None);
        // In New York summer time, noon is 16:00 UTC.
        assert_eq!(
            next("at(2026-06-01T12:00:00)", "America/New_York", "2026-05-01T00:00:00Z").unwrap(),
            "2026-06-01T16:00:00+00:00"
        );
        assert_eq!(
            next("rate(5 minutes)", "UTC", "2026-01-01T00:07:00Z").unwrap(),
            "2026-01-01T00:10:00+00:00"
        );
        assert_eq!(
            next("rate(1 hour)", "UTC", "2026-01-01T01:00:00Z").unwrap(),
            "2026-01-01T02:00:00+00:00"
        );
        // Weekdays at 08:30: from Friday evening, Monday.
        assert_eq!(
            next("cron(30 8 ? * MON-FRI *)", "UTC", "2026-01-02T18:00:00Z").unwrap(),
            "2026-01-05T08:30:00+00:00"
        );
        assert_eq!(
            next("cron(0/15 * * * ? *)", "UTC", "2026-01-01T00:16:00Z").unwrap(),
            "2026-01-01T00:30:00+00:00"
        );
        assert_eq!(
            next("cron(0 0 1 JAN ? 2027)", "UTC", "2026-03-01T00:00:00Z").unwrap(),
            "2027-01-01T00:00:00+00:00"
        );
        assert_eq!(
            next("cron(0 9 * * ? *)", "Europe/Paris", "2026-01-01T00:00:00Z").unwrap(),
            "2026-01-01T08:00:00+00:00"
        );
    }

    #[test]
    fn malformed_schedules() {
        for bad in [
            "at(2026-13-01T00:00:00)",
            "rate(0 minutes)",
            "rate(5 minute)",
            "rate(1 weeks)",
            "cron(0 0 * * * *)",
            "cron(0 0 ? * ? *)",
            "cron(61 0 * * ? *)",
            "cron(0 0 L * ? *)",
            "cron(0 0 * *)",
            "every(5)",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
