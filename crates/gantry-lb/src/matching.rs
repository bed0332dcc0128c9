//! Which rule a request matches, as ALB evaluates them: rules in priority order, the first
//! whose conditions all match wins (values within one condition are alternatives), else the
//! listener's default actions. Host, header and query matches ignore case; paths do not.

use gantry_control::elb::{parse_cidr, ListenerView};
use gantry_types::elbv2::{Action, RuleCondition};
use std::net::IpAddr;

/// What rules look at in a request.
pub struct Facts<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub method: &'a str,
    pub query: &'a str,
    pub headers: &'a hyper::HeaderMap,
    pub source: IpAddr,
}

/// The actions for a request.
pub fn route<'v>(listener: &'v ListenerView, f: &Facts) -> &'v [Action] {
    for rule in &listener.rules {
        if rule.conditions.iter().all(|c| condition_matches(c, f)) {
            return &rule.actions;
        }
    }
    listener.default_actions()
}

fn values(c: &Option<gantry_types::elbv2::Values>) -> &[String] {
    c.as_ref().map(|v| v.values.as_slice()).unwrap_or(&[])
}

fn condition_matches(c: &RuleCondition, f: &Facts) -> bool {
    match c.field.as_deref() {
        Some("host-header") => {
            let host = f.host.rsplit_once(':').map(|(h, _)| h).unwrap_or(f.host);
            values(&c.host_header_config).iter().any(|p| wildcard(p, host, true))
        }
        Some("path-pattern") => values(&c.path_pattern_config)
            .iter()
            .any(|p| wildcard(p, f.path, false)),
        Some("http-request-method") => values(&c.http_request_method_config).iter().any(|m| m == f.method),
        Some("source-ip") => values(&c.source_ip_config).iter().any(|cidr| in_cidr(cidr, f.source)),
        Some("http-header") => c.http_header_config.as_ref().is_some_and(|h| {
            f.headers
                .get_all(h.http_header_name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| h.values.iter().any(|p| wildcard(p, v, true)))
        }),
        Some("query-string") => c.query_string_config.as_ref().is_some_and(|q| {
            let pairs = query_pairs(f.query);
            q.values.iter().any(|kv| {
                pairs.iter().any(|(k, v)| {
                    kv.key.as_deref().is_none_or(|want| wildcard(want, k, true)) && wildcard(&kv.value, v, true)
                })
            })
        }),
        _ => false,
    }
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn in_cidr(cidr: &str, ip: IpAddr) -> bool {
    let Some((net, len)) = parse_cidr(cidr) else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// `*` matches any run of characters, `?` exactly one.
pub fn wildcard(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let norm = |s: &str| -> Vec<char> {
        if ignore_case {
            s.to_lowercase().chars().collect()
        } else {
            s.chars().collect()
        }
    };
    let (p, t) = (norm(pattern), norm(text));
    // Iterative matching with one backtrack point: linear in practice, never exponential.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_alb_documents() {
        assert!(wildcard("/api/*", "/api/v1/users", false));
        assert!(!wildcard("/api/*", "/API/v1", false));
        assert!(wildcard("*.example.com", "WWW.Example.com", true));
        assert!(wildcard("/img/?.png", "/img/a.png", false));
        assert!(!wildcard("/img/?.png", "/img/ab.png", false));
        assert!(wildcard("*", "", false));
        assert!(!wildcard("a*b*c", "aXXbYY", false));
        // Pathological patterns stay linear-ish rather than exponential.
        let long = "a".repeat(5000);
        assert!(!wildcard("*a*a*a*a*a*a*b", &long, false));
    }

    #[test]
    fn cidrs_and_queries() {
        assert!(in_cidr("10.0.0.0/8", "10.1.2.3".parse().unwrap()));
        assert!(!in_cidr("10.0.0.0/8", "11.1.2.3".parse().unwrap()));
        assert!(in_cidr("0.0.0.0/0", "8.8.8.8".parse().unwrap()));
        assert!(!in_cidr("::/0", "8.8.8.8".parse().unwrap()));
        assert_eq!(
            query_pairs("a=1&b=x%20y&c"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "".into())
            ]
        );
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
