//! Wildcard matching as IAM does it: `*` any run of characters, `?` any one.

/// Whether `text` matches `pattern` (`*` and `?`), comparing items with `eq`.
fn wild<T: Copy>(pattern: &[T], text: &[T], is: impl Fn(T, char) -> bool, eq: impl Fn(T, T) -> bool) -> bool {
    // Iterative matching with one backtrack point: linear in practice, no recursion.
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && (is(pattern[p], '?') || (!is(pattern[p], '*') && eq(pattern[p], text[t]))) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && is(pattern[p], '*') {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| is(*c, '*'))
}

/// Matches bytes when both are ASCII (no allocation, the common case), characters otherwise.
fn matches(pattern: &str, text: &str, ignore_case: bool) -> bool {
    if pattern.is_ascii() && text.is_ascii() {
        let is = |b: u8, c: char| b == c as u8;
        return if ignore_case {
            wild(pattern.as_bytes(), text.as_bytes(), is, |a: u8, b: u8| {
                a.eq_ignore_ascii_case(&b)
            })
        } else {
            wild(pattern.as_bytes(), text.as_bytes(), is, |a: u8, b: u8| a == b)
        };
    }
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let is = |a: char, c: char| a == c;
    if ignore_case {
        wild(&p, &t, is, |a: char, b: char| a.to_lowercase().eq(b.to_lowercase()))
    } else {
        wild(&p, &t, is, |a: char, b: char| a == b)
    }
}

pub fn like(pattern: &str, text: &str) -> bool {
    matches(pattern, text, false)
}

/// Actions: `service:Action`, case-insensitive.
pub fn action(pattern: &str, action: &str) -> bool {
    matches(pattern, action, true)
}

/// ARNs: matched segment by segment (partition, service, region, account), the resource part
/// as a whole (its `*` crosses `/` and `:`); "*" matches everything.
pub fn arn(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let (p, v): (Vec<&str>, Vec<&str>) = (pattern.splitn(6, ':').collect(), value.splitn(6, ':').collect());
    match (p.len(), v.len()) {
        (6, 6) => {}
        // Neither is an ARN (a name, "*" handled above): plain wildcard matching.
        (a, b) if a < 6 && b < 6 => return like(pattern, value),
        // An ARN pattern with the wrong number of segments matches no ARN.
        _ => return false,
    }
    p.iter().zip(v.iter()).all(|(p, v)| like(p, v))
}

/// Principals: an ARN pattern, or an account id standing for every principal of it.
pub fn principal(pattern: &str, principal_arn: &str) -> bool {
    // An account id, or the account's root ARN, names every principal of the account.
    let account = pattern
        .strip_prefix("arn:aws:iam::")
        .and_then(|rest| rest.strip_suffix(":root"))
        .unwrap_or(pattern);
    if account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) {
        return principal_arn.split(':').nth(4) == Some(account);
    }
    arn(pattern, principal_arn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(like("*", ""));
        assert!(like("a*c", "abbbc") && like("a?c", "abc") && !like("a?c", "ac"));
        assert!(like("*x*y*", "axbyc") && !like("*x*y", "axbyc"));
        assert!(like("ü?*", "üxyz") && !like("ü?", "ü") && action("ÉCS:*", "écs:Run"));
        assert!(action("ecs:Describe*", "ecs:DescribeTasks") && action("ECS:describe*", "ecs:DescribeTasks"));
        assert!(!action("ecs:Describe*", "ecs:RunTask"));
    }

    #[test]
    fn arns_match_by_segment() {
        let task = "arn:aws:ecs:us-east-1:123456789012:task/prod/abc";
        assert!(arn("*", task));
        assert!(arn("arn:aws:ecs:*:123456789012:task/*", task));
        assert!(arn("arn:aws:ecs:us-east-1:*:task/prod/*", task));
        assert!(!arn("arn:aws:ecs:*:999999999999:*", task));
        // A `*` in the region segment does not swallow the account.
        assert!(!arn("arn:aws:ecs:*:task/prod/abc", task));
        assert!(principal("123456789012", "arn:aws:iam::123456789012:user/ann"));
        assert!(!principal("123456789012", "arn:aws:iam::999999999999:user/ann"));
        assert!(principal(
            "arn:aws:iam::123456789012:role/*",
            "arn:aws:iam::123456789012:role/app"
        ));
    }
}
