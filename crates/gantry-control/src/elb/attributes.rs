//! Load balancer and target group attributes: the keys ELBv2 knows, their defaults, and what
//! values Gantry accepts. A key whose non-default values Gantry cannot honour (S3 access logs,
//! proxy protocol, ...) accepts only its default and says so for anything else.

use gantry_types::elbv2::ElbError;
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[derive(Clone, Copy)]
enum Accepts {
    Bool,
    Int(i64, i64),
    /// 0 (off), or an integer in the range.
    ZeroOr(i64, i64),
    OneOf(&'static [&'static str]),
    /// Only the default: the feature behind other values is not offered.
    DefaultOnly(&'static str),
}

pub struct Attribute {
    default: &'static str,
    accepts: Accepts,
}

type Table = BTreeMap<&'static str, Attribute>;

fn table(rows: &[(&'static str, &'static str, Accepts)]) -> Table {
    rows.iter()
        .map(|(k, d, a)| {
            (
                *k,
                Attribute {
                    default: d,
                    accepts: *a,
                },
            )
        })
        .collect()
}

pub fn lb_attribute_defaults(kind: &str) -> Table {
    use Accepts::*;
    let mut rows = vec![
        ("deletion_protection.enabled", "false", Bool),
        (
            "access_logs.s3.enabled",
            "false",
            DefaultOnly("S3 access logs are not offered"),
        ),
        (
            "access_logs.s3.bucket",
            "",
            DefaultOnly("S3 access logs are not offered"),
        ),
        (
            "access_logs.s3.prefix",
            "",
            DefaultOnly("S3 access logs are not offered"),
        ),
        (
            "zonal_shift.config.enabled",
            "false",
            DefaultOnly("zonal shift is not offered"),
        ),
    ];
    if kind == "network" {
        rows.extend([
            ("load_balancing.cross_zone.enabled", "false", Bool),
            (
                "dns_record.client_routing_policy",
                "any_availability_zone",
                DefaultOnly("DNS routing policies are not offered"),
            ),
        ]);
    } else {
        rows.extend([
            (
                "load_balancing.cross_zone.enabled",
                "true",
                DefaultOnly("cross-zone load balancing is always on for application load balancers"),
            ),
            ("idle_timeout.timeout_seconds", "60", Int(1, 4000)),
            ("client_keep_alive.seconds", "3600", Int(60, 604800)),
            ("routing.http2.enabled", "true", Bool),
            ("routing.http.drop_invalid_header_fields.enabled", "false", Bool),
            ("routing.http.preserve_host_header.enabled", "false", Bool),
            ("routing.http.xff_client_port.enabled", "false", Bool),
            (
                "routing.http.xff_header_processing.mode",
                "append",
                OneOf(&["append", "preserve", "remove"]),
            ),
            (
                "routing.http.x_amzn_tls_version_and_cipher_suite.enabled",
                "false",
                DefaultOnly("TLS headers are not offered"),
            ),
            (
                "routing.http.desync_mitigation_mode",
                "defensive",
                DefaultOnly("desync mitigation modes are not offered"),
            ),
            ("waf.fail_open.enabled", "false", DefaultOnly("AWS WAF is not offered")),
        ]);
    }
    table(&rows)
}

pub fn tg_attribute_defaults(protocol: &str) -> Table {
    use Accepts::*;
    let mut rows = vec![
        ("deregistration_delay.timeout_seconds", "300", Int(0, 3600)),
        ("stickiness.enabled", "false", Bool),
        (
            "load_balancing.cross_zone.enabled",
            "use_load_balancer_configuration",
            DefaultOnly("per-group cross-zone settings are not offered"),
        ),
    ];
    if matches!(protocol, "TCP" | "TLS" | "UDP" | "TCP_UDP") {
        rows.extend([
            ("stickiness.type", "source_ip", OneOf(&["source_ip"])),
            ("deregistration_delay.connection_termination.enabled", "false", Bool),
            (
                "preserve_client_ip.enabled",
                "false",
                DefaultOnly("client IP preservation is not offered"),
            ),
            ("proxy_protocol_v2.enabled", "false", Bool),
        ]);
    } else {
        rows.extend([
            ("stickiness.type", "lb_cookie", OneOf(&["lb_cookie"])),
            ("stickiness.lb_cookie.duration_seconds", "86400", Int(1, 604800)),
            ("slow_start.duration_seconds", "0", ZeroOr(30, 900)),
            (
                "load_balancing.algorithm.type",
                "round_robin",
                OneOf(&["round_robin", "least_outstanding_requests"]),
            ),
        ]);
    }
    table(&rows)
}

/// The Attributes member of a Modify*Attributes request as (key, value) pairs.
pub fn parse_changes(input: &Value) -> Result<Vec<(String, String)>, ElbError> {
    let list = input
        .get("Attributes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if list.is_empty() {
        return Err(ElbError::validation("At least one attribute must be specified."));
    }
    list.iter()
        .map(|a| {
            let key = a.get("Key").and_then(Value::as_str).unwrap_or("");
            let value = a.get("Value").and_then(Value::as_str).unwrap_or("");
            if key.is_empty() {
                return Err(ElbError::validation("Attribute keys cannot be empty."));
            }
            Ok((key.to_string(), value.to_string()))
        })
        .collect()
}

fn check(table: &Table, what: &str, key: &str, value: &str) -> Result<(), ElbError> {
    let Some(attr) = table.get(key) else {
        return Err(ElbError::invalid_config(format!(
            "{what} attribute key '{key}' is not recognized"
        )));
    };
    let bad = |why: String| Err(ElbError::invalid_config(format!("{what} attribute '{key}' {why}")));
    let int = value.parse::<i64>();
    match attr.accepts {
        Accepts::Bool if !matches!(value, "true" | "false") => bad("must be 'true' or 'false'".into()),
        Accepts::Int(lo, hi) if !matches!(int, Ok(n) if (lo..=hi).contains(&n)) => {
            bad(format!("must be an integer between {lo} and {hi}"))
        }
        Accepts::ZeroOr(lo, hi) if !matches!(int, Ok(n) if n == 0 || (lo..=hi).contains(&n)) => {
            bad(format!("must be 0 or an integer between {lo} and {hi}"))
        }
        Accepts::OneOf(allowed) if !allowed.contains(&value) => bad(format!("must be one of: {}", allowed.join(", "))),
        Accepts::DefaultOnly(why) if value != attr.default => bad(format!("cannot be '{value}' in Gantry: {why}")),
        _ => Ok(()),
    }
}

pub fn check_lb(table: &Table, key: &str, value: &str) -> Result<(), ElbError> {
    check(table, "Load balancer", key, value)
}

pub fn check_tg(table: &Table, key: &str, value: &str) -> Result<(), ElbError> {
    check(table, "Target group", key, value)
}

/// Target group attributes that cannot go together (checked on the values after a change):
/// ALB ramps slow-starting targets' share of a round robin, which least outstanding requests
/// has none of.
pub fn check_tg_combination(table: &Table, stored: &BTreeMap<String, String>) -> Result<(), ElbError> {
    let slow = value_of(table, stored, "slow_start.duration_seconds");
    let lor = value_of(table, stored, "load_balancing.algorithm.type") == "least_outstanding_requests";
    if lor && !slow.is_empty() && slow != "0" {
        return Err(ElbError::invalid_config(
            "Slow start mode cannot be enabled with the least outstanding requests algorithm",
        ));
    }
    Ok(())
}

/// Records changes, keeping only values that differ from the defaults.
pub fn apply(table: &Table, stored: &mut BTreeMap<String, String>, changes: &[(String, String)]) {
    for (k, v) in changes {
        if table.get(k.as_str()).is_some_and(|a| a.default == v) {
            stored.remove(k);
        } else {
            stored.insert(k.clone(), v.clone());
        }
    }
}

/// Every attribute with its value, as Describe*Attributes answers.
pub fn described(table: &Table, stored: &BTreeMap<String, String>) -> Value {
    let items: Vec<Value> = table
        .iter()
        .map(|(k, a)| json!({"Key": k, "Value": stored.get(*k).map(String::as_str).unwrap_or(a.default)}))
        .collect();
    Value::Array(items)
}

/// One attribute's effective value.
pub fn value_of<'a>(table: &'a Table, stored: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    stored
        .get(key)
        .map(String::as_str)
        .or_else(|| table.get(key).map(|a| a.default))
        .unwrap_or("")
}
