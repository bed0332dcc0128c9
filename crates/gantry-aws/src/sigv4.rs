//! AWS Signature Version 4 verification (header form). The server hashes the body itself:
//! boto3 does not send x-amz-content-sha256 for JSON services. Errors carry the type names AWS
//! returns for each failure.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Requests whose x-amz-date is further than this from the server clock are refused.
pub const MAX_SKEW_SECS: i64 = 15 * 60;

/// What a verifier needs to know about a key.
#[derive(Debug, Clone)]
pub struct SecretKey {
    pub secret: String,
    /// Temporary credentials come with a token that must be sent (and signed).
    pub session_token: Option<String>,
    pub account_id: String,
}

pub trait KeyLookup {
    fn lookup(&self, access_key_id: &str) -> Option<SecretKey>;
}

/// A request as received, before any decoding.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub access_key_id: String,
    pub account_id: String,
    pub region: String,
    pub service: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("Missing Authentication Token")]
    Missing,
    #[error(
        "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters with AWS4-HMAC-SHA256"
    )]
    Malformed,
    #[error("The security token included in the request is invalid.")]
    UnknownKey,
    #[error(
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
    )]
    BadSignature,
    #[error("Signature expired: {request_time} is now earlier than {earliest} ({now} - 15 min.)")]
    Expired {
        request_time: String,
        earliest: String,
        now: String,
    },
    #[error("Signature not yet current: {request_time} is still later than {latest} ({now} + 15 min.)")]
    NotYetCurrent {
        request_time: String,
        latest: String,
        now: String,
    },
    #[error("The security token included in the request is invalid.")]
    BadToken,
}

impl AuthError {
    /// The `__type` AWS JSON services answer with.
    pub fn aws_type(&self) -> &'static str {
        match self {
            AuthError::Missing => "MissingAuthenticationTokenException",
            AuthError::Malformed => "IncompleteSignatureException",
            AuthError::UnknownKey | AuthError::BadToken => "UnrecognizedClientException",
            AuthError::BadSignature | AuthError::Expired { .. } | AuthError::NotYetCurrent { .. } => {
                "InvalidSignatureException"
            }
        }
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// RFC 3986 encoding as SigV4 wants it: unreserved characters stay, everything else %XX.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // Two hex digits, read as bytes: slicing the str could split a multi-byte character,
        // and from_str_radix would take a sign ("%+1").
        if let (b'%', Some(&[h, l])) = (bytes[i], bytes.get(i + 1..i + 3)) {
            if let (Some(h), Some(l)) = ((h as char).to_digit(16), (l as char).to_digit(16)) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn canonical_query(q: &str) -> String {
    let mut pairs: Vec<(String, String)> = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), false),
                uri_encode(&percent_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

struct AuthHeader {
    access_key: String,
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
}

fn parse_authorization(v: &str) -> Result<AuthHeader, AuthError> {
    let rest = v.strip_prefix("AWS4-HMAC-SHA256").ok_or(AuthError::Malformed)?.trim();
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or(AuthError::Malformed)?;
        match k {
            "Credential" => cred = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => sig = Some(v),
            _ => {}
        }
    }
    let (cred, signed, sig) = (
        cred.ok_or(AuthError::Malformed)?,
        signed.ok_or(AuthError::Malformed)?,
        sig.ok_or(AuthError::Malformed)?,
    );
    let parts: Vec<&str> = cred.split('/').collect();
    if parts.len() != 5 || parts[4] != "aws4_request" {
        return Err(AuthError::Malformed);
    }
    Ok(AuthHeader {
        access_key: parts[0].into(),
        date: parts[1].into(),
        region: parts[2].into(),
        service: parts[3].into(),
        signed_headers: signed.split(';').map(str::to_string).collect(),
        signature: sig.to_ascii_lowercase(),
    })
}

/// The signature for a request, given the pieces (also used by Gantry's own client).
pub fn signature(
    secret: &str,
    req: &SignedRequest,
    signed_headers: &[String],
    amz_date: &str,
    region: &str,
    service: &str,
) -> String {
    let canonical_headers: String = signed_headers
        .iter()
        .map(|h| {
            let vals: Vec<String> = req
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(h))
                .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            format!("{h}:{}\n", vals.join(","))
        })
        .collect();
    let payload_hash = sha256_hex(req.body);
    let path = if req.path.is_empty() { "/" } else { req.path };
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        uri_encode(&percent_decode(path), true),
        canonical_query(req.query),
        canonical_headers,
        signed_headers.join(";"),
        payload_hash
    );
    let date = &amz_date[..8.min(amz_date.len())];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    let k = hmac(&k, b"aws4_request");
    hex::encode(hmac(&k, string_to_sign.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Verifies a request at time `now` against the keys `keys` knows.
pub fn verify(
    req: &SignedRequest,
    keys: &impl KeyLookup,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Verified, AuthError> {
    let auth = header(req.headers, "authorization").ok_or(AuthError::Missing)?;
    let a = parse_authorization(auth)?;
    if !a.signed_headers.iter().any(|h| h == "host") {
        return Err(AuthError::Malformed);
    }
    let amz_date = header(req.headers, "x-amz-date").ok_or(AuthError::Malformed)?;
    let t = chrono::NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|_| AuthError::Malformed)?
        .and_utc();
    if !amz_date.starts_with(&a.date) {
        return Err(AuthError::BadSignature);
    }
    let key = keys.lookup(&a.access_key).ok_or(AuthError::UnknownKey)?;
    let fmt = |d: chrono::DateTime<chrono::Utc>| d.format("%Y%m%dT%H%M%SZ").to_string();
    let skew = chrono::Duration::seconds(MAX_SKEW_SECS);
    if t < now - skew {
        return Err(AuthError::Expired {
            request_time: amz_date.into(),
            earliest: fmt(now - skew),
            now: fmt(now),
        });
    }
    if t > now + skew {
        return Err(AuthError::NotYetCurrent {
            request_time: amz_date.into(),
            latest: fmt(now + skew),
            now: fmt(now),
        });
    }
    let expected = signature(&key.secret, req, &a.signed_headers, amz_date, &a.region, &a.service);
    if !constant_time_eq(expected.as_bytes(), a.signature.as_bytes()) {
        return Err(AuthError::BadSignature);
    }
    // A session token must be present, signed, and the right one.
    match (&key.session_token, header(req.headers, "x-amz-security-token")) {
        (None, None) => {}
        (Some(expected), Some(got))
            if got == expected && a.signed_headers.iter().any(|h| h == "x-amz-security-token") => {}
        _ => return Err(AuthError::BadToken),
    }
    Ok(Verified {
        access_key_id: a.access_key,
        account_id: key.account_id,
        region: a.region,
        service: a.service,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_takes_two_hex_digits_and_never_splits_a_character() {
        assert_eq!(percent_decode("a%2Fb%2fc+d"), "a/b/c d");
        // A multi-byte character right after '%' (a fuzzer's find: it used to panic).
        assert_eq!(percent_decode("%\u{e9}x"), "%\u{e9}x");
        assert_eq!(percent_decode("x%\u{e9}"), "x%\u{e9}");
        assert_eq!(percent_decode("%a\u{e9}"), "%a\u{e9}");
        // A sign is not a hex digit; a short escape at the end stays as it is.
        assert_eq!(percent_decode("%+1%-1%4"), "% 1%-1%4");
    }

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    struct Keys(Option<String>);
    impl KeyLookup for Keys {
        fn lookup(&self, id: &str) -> Option<SecretKey> {
            (id == "AKIDEXAMPLE").then(|| SecretKey {
                secret: SECRET.into(),
                session_token: self.0.clone(),
                account_id: "123456789012".into(),
            })
        }
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ")
            .unwrap()
            .and_utc()
    }

    // Known answers: AWS's SigV4 test suite (get-vanilla) and botocore 1.x for the others.
    #[test]
    fn known_answers() {
        let headers = h(&[("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z")]);
        let signed = vec!["host".to_string(), "x-amz-date".to_string()];
        let req = SignedRequest {
            method: "GET",
            path: "/",
            query: "",
            headers: &headers,
            body: b"",
        };
        assert_eq!(
            signature(SECRET, &req, &signed, "20150830T123600Z", "us-east-1", "service"),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        let req = SignedRequest {
            method: "GET",
            path: "/",
            query: "Param2=value2&Param1=value1",
            headers: &headers,
            body: b"",
        };
        assert_eq!(
            signature(SECRET, &req, &signed, "20150830T123600Z", "us-east-1", "service"),
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        );
        let headers = h(&[
            ("Host", "127.0.0.1:4566"),
            ("X-Amz-Date", "20150830T123600Z"),
            ("X-Amz-Target", "AmazonEC2ContainerServiceV20141113.CreateCluster"),
            ("Content-Type", "application/x-amz-json-1.1"),
        ]);
        let signed: Vec<String> = ["content-type", "host", "x-amz-date", "x-amz-target"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: br#"{"clusterName":"demo"}"#,
        };
        assert_eq!(
            signature(SECRET, &req, &signed, "20150830T123600Z", "us-east-1", "ecs"),
            "e47a585ee14bf4c05879c2bd6a00241dae47d2b5d23ce74436e18832e60b4533"
        );
    }

    fn signed_request(body: &[u8], sig: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v = h(&[
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
            ("Authorization", &format!("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={sig}")),
        ]);
        v.extend(h(extra));
        let _ = body;
        v
    }

    #[test]
    fn verify_accepts_good_and_refuses_bad() {
        let good = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        let now = at("20150830T124000Z");
        let headers = signed_request(b"", good, &[]);
        let req = SignedRequest {
            method: "GET",
            path: "/",
            query: "",
            headers: &headers,
            body: b"",
        };
        let v = verify(&req, &Keys(None), now).unwrap();
        assert_eq!(
            (v.region.as_str(), v.service.as_str(), v.account_id.as_str()),
            ("us-east-1", "service", "123456789012")
        );

        // Tampered body, wrong signature, unknown key, skew, missing header, session token.
        let req = SignedRequest {
            method: "GET",
            path: "/",
            query: "",
            headers: &headers,
            body: b"x",
        };
        assert_eq!(verify(&req, &Keys(None), now), Err(AuthError::BadSignature));
        let bad = signed_request(b"", &"0".repeat(64), &[]);
        let req = SignedRequest {
            method: "GET",
            path: "/",
            query: "",
            headers: &bad,
            body: b"",
        };
        assert_eq!(verify(&req, &Keys(None), now), Err(AuthError::BadSignature));
        let req = SignedRequest {
            method: "GET",
            path: "/",
            query: "",
            headers: &headers,
            body: b"",
        };
        assert!(matches!(
            verify(&req, &Keys(None), at("20150830T130000Z")),
            Err(AuthError::Expired { .. })
        ));
        assert!(matches!(
            verify(&req, &Keys(None), at("20150830T120000Z")),
            Err(AuthError::NotYetCurrent { .. })
        ));
        assert_eq!(verify(&req, &Keys(Some("tok".into())), now), Err(AuthError::BadToken));
        let unknown: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.clone(), v.replace("AKIDEXAMPLE", "AKIDOTHER")))
            .collect();
        let req = SignedRequest {
            method: "GET",
            path: "/",
            query: "",
            headers: &unknown,
            body: b"",
        };
        assert_eq!(verify(&req, &Keys(None), now), Err(AuthError::UnknownKey));
        let none = h(&[("Host", "example.amazonaws.com")]);
        let req = SignedRequest {
            method: "GET",
            path: "/",
            query: "",
            headers: &none,
            body: b"",
        };
        assert_eq!(verify(&req, &Keys(None), now), Err(AuthError::Missing));
        assert_eq!(AuthError::Missing.aws_type(), "MissingAuthenticationTokenException");
    }
}
