//! Console sessions, derived from the user's access key as SigV4 derives its signing key: a
//! session cookie is `v1.<access key id>.<region>.<expiry>.<mac>`, the MAC an HMAC-SHA256
//! keyed by the key's secret (and session token). Nothing is kept on the server: any server
//! of a cluster checks a cookie by looking the key up, and deleting or rotating the key ends
//! its sessions.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// How long a sign-in lasts.
pub const SESSION_SECS: i64 = 12 * 3600;
pub const COOKIE: &str = "gantry_console";

/// A checked session: who, and in which region the console acts.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub access_key_id: String,
    pub region: String,
    pub expires: i64,
}

fn mac(secret: &str, session_token: Option<&str>) -> Hmac<Sha256> {
    let key = format!("GANTRY-CONSOLE1{secret}\n{}", session_token.unwrap_or(""));
    Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length")
}

fn message(akid: &str, region: &str, expires: i64) -> String {
    format!("{akid}\n{region}\n{expires}")
}

/// A region name as AWS spells them (us-east-1): lowercase letters, digits, dashes.
pub fn valid_region(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 32
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The cookie value for a session of `akid` (whose secret is `secret`) until `expires`.
pub fn issue(akid: &str, region: &str, expires: i64, secret: &str, session_token: Option<&str>) -> String {
    let mut m = mac(secret, session_token);
    m.update(message(akid, region, expires).as_bytes());
    format!(
        "v1.{akid}.{region}.{expires}.{}",
        hex::encode(m.finalize().into_bytes())
    )
}

/// The cookie's claims, unverified: (access key id, region, expiry, mac).
pub fn parse(cookie: &str) -> Option<(String, String, i64, Vec<u8>)> {
    let mut parts = cookie.split('.');
    if parts.next()? != "v1" {
        return None;
    }
    let akid = parts.next()?;
    let region = parts.next()?;
    let expires = parts.next()?.parse().ok()?;
    let mac = hex::decode(parts.next()?).ok()?;
    let akid_ok = !akid.is_empty() && akid.len() <= 128 && akid.bytes().all(|b| b.is_ascii_alphanumeric());
    if parts.next().is_some() || !akid_ok || !valid_region(region) {
        return None;
    }
    Some((akid.into(), region.into(), expires, mac))
}

/// Checks a parsed cookie against the key's secret at `now`: the MAC (in constant time) and
/// the expiry, which must also not lie further ahead than a session lasts.
pub fn verify(
    claims: &(String, String, i64, Vec<u8>),
    secret: &str,
    session_token: Option<&str>,
    now: i64,
) -> Option<Session> {
    let (akid, region, expires, tag) = claims;
    if *expires <= now || *expires > now + SESSION_SECS {
        return None;
    }
    let mut m = mac(secret, session_token);
    m.update(message(akid, region, *expires).as_bytes());
    m.verify_slice(tag).ok()?;
    Some(Session {
        access_key_id: akid.clone(),
        region: region.clone(),
        expires: *expires,
    })
}

/// Whether a secret typed at sign-in is the key's: compared as digests, so the comparison's
/// timing says nothing about the secret.
pub fn same_secret(given: &str, stored: &str) -> bool {
    Sha256::digest(given.as_bytes()) == Sha256::digest(stored.as_bytes())
}

/// The value of cookie `name` in a Cookie header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_cookie_verifies_only_with_its_secret_and_before_expiry() {
        let c = issue("AKIDEXAMPLE", "us-east-1", NOW + 60, "s3cret", None);
        let claims = parse(&c).unwrap();
        let s = verify(&claims, "s3cret", None, NOW).unwrap();
        assert_eq!(
            (s.access_key_id.as_str(), s.region.as_str()),
            ("AKIDEXAMPLE", "us-east-1")
        );
        // Another secret (a rotated key), a session token it was not made with, expiry.
        assert!(verify(&claims, "other", None, NOW).is_none());
        assert!(verify(&claims, "s3cret", Some("token"), NOW).is_none());
        assert!(verify(&claims, "s3cret", None, NOW + 60).is_none());
    }

    #[test]
    fn tampered_or_forged_cookies_are_refused() {
        let c = issue("AKIDEXAMPLE", "us-east-1", NOW + 60, "s3cret", None);
        // A longer expiry or another region under the same MAC.
        let longer = c.replace(&format!("{}", NOW + 60), &format!("{}", NOW + 600));
        assert!(verify(&parse(&longer).unwrap(), "s3cret", None, NOW).is_none());
        let moved = c.replace("us-east-1", "eu-west-1");
        assert!(verify(&parse(&moved).unwrap(), "s3cret", None, NOW).is_none());
        // A cookie made for ten years: refused even with the right MAC.
        let forever = issue("AKIDEXAMPLE", "us-east-1", NOW + 10 * 365 * 86400, "s3cret", None);
        assert!(verify(&parse(&forever).unwrap(), "s3cret", None, NOW).is_none());
        for bad in [
            "",
            "v1",
            "v2.AKID.us-east-1.1.00",
            "v1.AKID.us-east-1.notanumber.00",
            "v1.AKID.us-east-1.1.zz",
            "v1.AK/ID.us-east-1.1.00",
            "v1.AKID.US_EAST.1.00",
            "v1.AKID.us-east-1.1.00.extra",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn cookies_are_found_by_name() {
        let h = "a=1; gantry_console=v1.x; b=2";
        assert_eq!(cookie_value(h, COOKIE), Some("v1.x"));
        assert_eq!(cookie_value("gantry_console_other=1", COOKIE), None);
        assert!(same_secret("x", "x") && !same_secret("x", "y"));
    }
}
