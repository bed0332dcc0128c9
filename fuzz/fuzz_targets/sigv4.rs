//! SigV4 verification of arbitrary requests: the Authorization header's parser, the
//! canonical request (path, query, headers), the date checks. Lines of the input are the
//! method, path, query, then `name: value` headers; after a blank line, the body. Must never
//! panic; a request can verify only with the key's secret.
#![no_main]

use gantry_aws::sigv4::{verify, KeyLookup, SecretKey};
use libfuzzer_sys::fuzz_target;

struct AnyKey;

impl KeyLookup for AnyKey {
    fn lookup(&self, _: &str) -> Option<SecretKey> {
        Some(SecretKey {
            secret: "fuzz-secret".into(),
            session_token: None,
            account_id: "123456789012".into(),
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let method = lines.next().unwrap_or("POST");
    let path = lines.next().unwrap_or("/");
    let query = lines.next().unwrap_or("");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let req = gantry_aws::sigv4::SignedRequest {
        method,
        path,
        query,
        headers: &headers,
        body: body.as_bytes(),
    };
    let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("a valid time");
    let _ = verify(&req, &AnyKey, now);
});
