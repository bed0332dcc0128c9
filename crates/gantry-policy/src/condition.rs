//! The Condition element: operators, the IfExists suffix, the ForAnyValue: and ForAllValues:
//! qualifiers, and the request context they are decided against.

use crate::glob;
use crate::{malformed, PolicyError};
use serde_json::Value;
use std::collections::HashMap;
use std::net::IpAddr;

/// The condition keys of a request (aws:SourceIp, aws:PrincipalArn, ecs:cluster, ...), each
/// with one or more values. Key names are case-insensitive.
#[derive(Debug, Clone, Default)]
pub struct Context {
    keys: HashMap<String, Vec<String>>,
}

impl Context {
    pub fn new() -> Context {
        Context::default()
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Context {
        self.keys.insert(key.to_ascii_lowercase(), vec![value.into()]);
        self
    }

    pub fn set_many(&mut self, key: &str, values: Vec<String>) -> &mut Context {
        self.keys.insert(key.to_ascii_lowercase(), values);
        self
    }

    pub fn get(&self, key: &str) -> Option<&[String]> {
        self.keys.get(&key.to_ascii_lowercase()).map(Vec::as_slice)
    }

    /// `${aws:username}`-style variables replaced by their values (a variable with no value
    /// becomes something no string equals); `${*}`, `${?}` and `${$}` are the literal
    /// characters.
    pub fn substitute<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if !text.contains("${") {
            return std::borrow::Cow::Borrowed(text);
        }
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let Some(end) = rest[i..].find('}') else {
                out.push_str(&rest[i..]);
                return out.into();
            };
            let var = &rest[i + 2..i + end];
            match var {
                "*" | "?" | "$" => out.push_str(var),
                _ => match self.get(var).and_then(|v| v.first()) {
                    Some(v) => out.push_str(v),
                    None => out.push('\u{0}'),
                },
            }
            rest = &rest[i + end + 1..];
        }
        out.push_str(rest);
        out.into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    StringEquals,
    StringEqualsIgnoreCase,
    StringLike,
    Numeric(std::cmp::Ordering, bool),
    Date(std::cmp::Ordering, bool),
    Bool,
    IpAddress,
    ArnLike,
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Qualifier {
    None,
    AnyValue,
    AllValues,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    op: Op,
    negated: bool,
    if_exists: bool,
    qualifier: Qualifier,
    key: String,
    values: Vec<String>,
}

/// The operator a name means, and whether it is negated.
fn operator(name: &str) -> Option<(Op, bool)> {
    use std::cmp::Ordering::*;
    Some(match name {
        "StringEquals" => (Op::StringEquals, false),
        "StringNotEquals" => (Op::StringEquals, true),
        "StringEqualsIgnoreCase" => (Op::StringEqualsIgnoreCase, false),
        "StringNotEqualsIgnoreCase" => (Op::StringEqualsIgnoreCase, true),
        "StringLike" => (Op::StringLike, false),
        "StringNotLike" => (Op::StringLike, true),
        "NumericEquals" => (Op::Numeric(Equal, true), false),
        "NumericNotEquals" => (Op::Numeric(Equal, true), true),
        "NumericLessThan" => (Op::Numeric(Less, false), false),
        "NumericLessThanEquals" => (Op::Numeric(Less, true), false),
        "NumericGreaterThan" => (Op::Numeric(Greater, false), false),
        "NumericGreaterThanEquals" => (Op::Numeric(Greater, true), false),
        "DateEquals" => (Op::Date(Equal, true), false),
        "DateNotEquals" => (Op::Date(Equal, true), true),
        "DateLessThan" => (Op::Date(Less, false), false),
        "DateLessThanEquals" => (Op::Date(Less, true), false),
        "DateGreaterThan" => (Op::Date(Greater, false), false),
        "DateGreaterThanEquals" => (Op::Date(Greater, true), false),
        "Bool" => (Op::Bool, false),
        "BinaryEquals" => (Op::StringEquals, false),
        "IpAddress" => (Op::IpAddress, false),
        "NotIpAddress" => (Op::IpAddress, true),
        "ArnEquals" | "ArnLike" => (Op::ArnLike, false),
        "ArnNotEquals" | "ArnNotLike" => (Op::ArnLike, true),
        "Null" => (Op::Null, false),
        _ => return None,
    })
}

fn values(v: &Value) -> Option<Vec<String>> {
    let one = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match v {
        Value::Array(items) => items.iter().map(one).collect(),
        other => one(other).map(|s| vec![s]),
    }
}

/// Parses a Condition element: `{"Operator": {"key": value-or-values, ...}, ...}`.
pub fn parse(v: &Value) -> Result<Vec<Condition>, PolicyError> {
    let blocks = v.as_object().ok_or_else(|| malformed("Condition must be an object."))?;
    let mut out = Vec::new();
    for (name, keys) in blocks {
        let (qualifier, rest) = if let Some(r) = name.strip_prefix("ForAnyValue:") {
            (Qualifier::AnyValue, r)
        } else if let Some(r) = name.strip_prefix("ForAllValues:") {
            (Qualifier::AllValues, r)
        } else {
            (Qualifier::None, name.as_str())
        };
        let (base, if_exists) = match rest.strip_suffix("IfExists") {
            Some(b) => (b, true),
            None => (rest, false),
        };
        let (op, negated) = operator(base).ok_or_else(|| malformed(format!("Invalid Condition type : {name}.")))?;
        let keys = keys
            .as_object()
            .ok_or_else(|| malformed(format!("Condition {name} must map keys to values.")))?;
        for (key, v) in keys {
            let values = values(v)
                .ok_or_else(|| malformed(format!("Condition {name}: {key} has a value that is not a string.")))?;
            check_values(op, &values).map_err(|m| malformed(format!("Condition {name}: {key}: {m}")))?;
            out.push(Condition {
                op,
                negated,
                if_exists,
                qualifier,
                key: key.clone(),
                values,
            });
        }
    }
    Ok(out)
}

fn check_values(op: Op, values: &[String]) -> Result<(), String> {
    for v in values {
        let ok = match op {
            Op::Numeric(..) => v.parse::<f64>().is_ok(),
            Op::Date(..) => date(v).is_some(),
            Op::Bool | Op::Null => v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false"),
            Op::IpAddress => cidr(v).is_some(),
            _ => true,
        };
        if !ok {
            return Err(format!("{v:?} is not a valid value for this operator"));
        }
    }
    Ok(())
}

/// ISO 8601 or epoch seconds.
fn date(v: &str) -> Option<i64> {
    if let Ok(n) = v.parse::<i64>() {
        return Some(n);
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|d| d.timestamp())
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|d| d.and_utc().timestamp())
        })
}

/// An address and prefix length (a bare address is a /32 or /128).
fn cidr(v: &str) -> Option<(IpAddr, u32)> {
    let (addr, bits) = match v.split_once('/') {
        Some((a, b)) => (a.parse::<IpAddr>().ok()?, b.parse::<u32>().ok()?),
        None => {
            let a = v.parse::<IpAddr>().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((addr, bits))
}

fn in_cidr(ip: &str, range: &str) -> bool {
    let (Ok(ip), Some((net, bits))) = (ip.parse::<IpAddr>(), cidr(range)) else {
        return false;
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl Condition {
    /// Whether the context value `v` matches the policy value `p` (before negation).
    fn matches(&self, p: &str, v: &str, ctx: &Context) -> bool {
        let p = ctx.substitute(p);
        match self.op {
            Op::StringEquals => p == v,
            Op::StringEqualsIgnoreCase => p.eq_ignore_ascii_case(v),
            Op::StringLike => glob::like(&p, v),
            Op::Numeric(ord, or_equal) => match (v.parse::<f64>(), p.parse::<f64>()) {
                (Ok(a), Ok(b)) => a.partial_cmp(&b).is_some_and(|o| o == ord || (or_equal && o.is_eq())),
                _ => false,
            },
            Op::Date(ord, or_equal) => match (date(v), date(&p)) {
                (Some(a), Some(b)) => {
                    let o = a.cmp(&b);
                    o == ord || (or_equal && o.is_eq())
                }
                _ => false,
            },
            Op::Bool => p.eq_ignore_ascii_case(v),
            Op::IpAddress => in_cidr(v, &p),
            Op::ArnLike => glob::arn(&p, v),
            Op::Null => false,
        }
    }

    /// One context value against the policy values: any matches (OR); negated, none (NOR).
    fn one(&self, v: &str, ctx: &Context) -> bool {
        let any = self.values.iter().any(|p| self.matches(p, v, ctx));
        any != self.negated
    }

    pub fn holds(&self, ctx: &Context) -> bool {
        let present = ctx.get(&self.key).filter(|v| !v.is_empty());
        if self.op == Op::Null {
            let want_absent = self.values.iter().any(|v| v.eq_ignore_ascii_case("true"));
            return present.is_none() == want_absent;
        }
        let Some(vals) = present else {
            return match self.qualifier {
                Qualifier::AllValues => true,
                Qualifier::AnyValue => false,
                Qualifier::None => self.if_exists || self.negated,
            };
        };
        match self.qualifier {
            Qualifier::AllValues => vals.iter().all(|v| self.one(v, ctx)),
            Qualifier::AnyValue => vals.iter().any(|v| self.one(v, ctx)),
            Qualifier::None if self.negated => vals.iter().all(|v| self.one(v, ctx)),
            Qualifier::None => vals.iter().any(|v| self.one(v, ctx)),
        }
    }
}
