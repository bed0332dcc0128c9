//! The HTTP front: SigV4 first, then the protocol layer routes the request to a service's
//! handler and frames the answer or error as the request's protocol wants.

use crate::api::{Api, ApiError};
use crate::protocol::{self, query, Call, Wire};
use crate::sigv4::{self, KeyLookup, SecretKey, SignedRequest};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use gantry_types::arn::Scope;
use serde_json::{json, Value};

/// Largest request body accepted, answered with an AWS-shaped error above it (ECS's own
/// limits are lower for most calls).
pub const MAX_BODY: usize = 1 << 20;
/// Bodies beyond this are cut off by the HTTP layer before they are read at all.
const HARD_BODY_LIMIT: usize = 16 << 20;
/// How long a client may take to send a request's body.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn request_id() -> String {
    gantry_control::random_uuid()
}

/// How one request is answered: its protocol and, for Query, the service's namespace.
struct Framing {
    wire: Wire,
    model: Option<&'static protocol::model::Model>,
}

impl Framing {
    fn ok(&self, call: &Call, body: Value) -> Response {
        match &self.wire {
            Wire::Json { version } => json_response(version, StatusCode::OK, body),
            Wire::Query => {
                let id = request_id();
                xml_response(
                    StatusCode::OK,
                    query::encode(&call.service.model, call.op, &body, &id),
                    &id,
                )
            }
        }
    }

    fn error(&self, e: ApiError) -> Response {
        match &self.wire {
            Wire::Json { version } => {
                let mut r = json_response(version, e.status, json!({"__type": e.kind, "message": e.message}));
                if let Some(header) = self.query_error(&e) {
                    r.headers_mut().insert("x-amzn-query-error", header);
                }
                r
            }
            Wire::Query => {
                let (code, status) = protocol::query_code(self.model, &e.kind);
                let status = status.and_then(|s| StatusCode::from_u16(s).ok()).unwrap_or(e.status);
                let id = request_id();
                let sender = status.is_client_error();
                let namespace = self.model.and_then(|m| m.metadata.xml_namespace.as_deref());
                let body = if self.model.is_some_and(|m| m.is_ec2()) {
                    query::encode_ec2_error(&code, &e.message, &id)
                } else {
                    query::encode_error(namespace, &code, &e.message, sender, &id)
                };
                xml_response(status, body, &id)
            }
        }
    }
}

impl Framing {
    /// For a service that moved from Query to JSON: the error's Query code and fault, which
    /// clients report as the error's code.
    fn query_error(&self, e: &ApiError) -> Option<axum::http::HeaderValue> {
        let model = self.model.filter(|m| m.metadata.aws_query_compatible.is_some())?;
        let (code, _) = protocol::query_code(Some(model), &e.kind);
        let fault = if e.status.is_client_error() {
            "Sender"
        } else {
            "Receiver"
        };
        format!("{code};{fault}").parse().ok()
    }
}

fn json_response(version: &str, status: StatusCode, mut body: Value) -> Response {
    // Absent optional members are omitted, not sent as null.
    if let Value::Object(m) = &mut body {
        m.retain(|_, v| !v.is_null());
    }
    let mut r = (status, body.to_string()).into_response();
    let h = r.headers_mut();
    let ct = format!("application/x-amz-json-{version}");
    h.insert("content-type", ct.parse().expect("static"));
    h.insert("x-amzn-requestid", request_id().parse().expect("hex"));
    r
}

fn xml_response(status: StatusCode, body: String, id: &str) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert("content-type", "text/xml".parse().expect("static"));
    h.insert("x-amzn-requestid", id.parse().expect("hex"));
    r
}

struct OneKey(Option<SecretKey>);

impl KeyLookup for OneKey {
    fn lookup(&self, _: &str) -> Option<SecretKey> {
        self.0.clone()
    }
}

pub use gantry_control::iam::{key_path, StoredKey};

/// The signing key the request names, if active. `Ok(None)` when there is no such key (the
/// verifier then answers as AWS does); an error when the store cannot say, so an outage is a
/// server error, never "the security token is invalid".
async fn find_key(api: &Api, headers: &[(String, String)]) -> Result<Option<StoredKey>, ApiError> {
    let Some(akid) = access_key_id(headers) else {
        return Ok(None);
    };
    let key = load_key(api, akid).await?.filter(|k| k.status == "Active");
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    if key
        .as_ref()
        .and_then(|k| k.role.as_ref())
        .is_some_and(|r| r.expires <= now)
    {
        return Err(ApiError::new(
            "ExpiredTokenException",
            "The security token included in the request is expired",
            StatusCode::FORBIDDEN,
        ));
    }
    Ok(key)
}

fn secret_key(k: &StoredKey) -> SecretKey {
    SecretKey {
        secret: k.secret_access_key.clone(),
        session_token: k.session_token.clone(),
        account_id: k.account_id.clone(),
    }
}

/// The stored key `akid`, None when there is none; an error when the store cannot say.
pub async fn load_key(api: &Api, akid: &str) -> Result<Option<StoredKey>, ApiError> {
    api.control.signing_keys.get(akid).await.map_err(|e| {
        ApiError::new(
            "ServiceUnavailableException",
            format!("The service is unavailable: {e}. Retry the request."),
            StatusCode::SERVICE_UNAVAILABLE,
        )
    })
}

/// The Authorization header's credential scope, split: access key id, date, region,
/// service, "aws4_request".
fn credential(headers: &[(String, String)]) -> Option<Vec<&str>> {
    let auth = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))?
        .1
        .as_str();
    Some(
        auth.split("Credential=")
            .nth(1)?
            .split(',')
            .next()?
            .split('/')
            .collect(),
    )
}

fn access_key_id(headers: &[(String, String)]) -> Option<&str> {
    let akid = *credential(headers)?.first()?;
    let valid = !akid.is_empty() && akid.len() <= 128 && akid.bytes().all(|b| b.is_ascii_alphanumeric());
    valid.then_some(akid)
}

pub async fn handle(
    State(api): State<Api>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let body = match read_body(&headers, &uri, body, BODY_TIMEOUT).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let began = std::time::Instant::now();
    let began_ns = gantry_otlp::now_ns();
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(gantry_otlp::parse_traceparent);
    let mut named = ("unknown".to_string(), "unknown".to_string());
    let r = answer(api, method, uri, headers, body, &mut named).await;
    let status = r.status().as_u16();
    crate::prometheus::record(&named.0, &named.1, status, began.elapsed().as_secs_f64());
    trace_request(&named, status, began_ns, traceparent);
    r
}

/// A request's body, read within `timeout` and `HARD_BODY_LIMIT`; otherwise the error in
/// the request's protocol (RequestTimeoutException, as AWS answers a stalled body).
async fn read_body(
    headers: &HeaderMap,
    uri: &Uri,
    body: axum::body::Body,
    timeout: std::time::Duration,
) -> Result<Bytes, Response> {
    let refused = |kind: &str, message: String, status: StatusCode| {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let framing = Framing {
            wire: Wire::of(
                header("x-amz-target"),
                header("content-type").unwrap_or(""),
                uri.query().unwrap_or(""),
            ),
            model: None,
        };
        framing.error(ApiError::new(kind, message, status))
    };
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, HARD_BODY_LIMIT)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => Err(refused(
            "RequestEntityTooLargeException",
            format!("The request body could not be read: {e}"),
            StatusCode::PAYLOAD_TOO_LARGE,
        )),
        Err(_) => Err(refused(
            "RequestTimeoutException",
            format!("The request body was not sent within {} seconds.", timeout.as_secs()),
            StatusCode::REQUEST_TIMEOUT,
        )),
    }
}

/// Exports the request as a server span (in the caller's trace when it sent a W3C
/// traceparent), named as OpenTelemetry names AWS API calls: `Service.Operation`.
fn trace_request(named: &(String, String), status: u16, began_ns: u64, parent: Option<([u8; 16], [u8; 8])>) {
    if !gantry_otlp::enabled() {
        return;
    }
    use gantry_otlp::{from_hex, Attr, Span};
    let ids = gantry_control::random_hex(24);
    let trace_id = parent.map(|p| p.0).or_else(|| from_hex::<16>(&ids[..32]));
    let (Some(trace_id), Some(span_id)) = (trace_id, from_hex::<8>(&ids[32..48])) else {
        return;
    };
    let (service, operation) = named;
    gantry_otlp::record(Span {
        trace_id,
        span_id,
        parent: parent.map(|p| p.1),
        name: format!("{service}.{operation}"),
        kind: gantry_otlp::SERVER,
        start_ns: began_ns,
        end_ns: gantry_otlp::now_ns(),
        attributes: vec![
            ("rpc.system".into(), Attr::Str("aws-api".into())),
            ("rpc.service".into(), Attr::Str(service.clone())),
            ("rpc.method".into(), Attr::Str(operation.clone())),
            ("http.response.status_code".into(), Attr::Int(status as i64)),
        ],
        error: (status >= 500).then(|| format!("HTTP {status}")),
    });
}

/// Answers one request; `named` learns its service and operation once they are known.
async fn answer(
    api: Api,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    named: &mut (String, String),
) -> Response {
    let hdrs: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let target = header("x-amz-target");
    let query_string = uri.query().unwrap_or("");
    let framing = Framing {
        wire: Wire::of(target, header("content-type").unwrap_or(""), query_string),
        model: protocol::namespace_model(credential_service(&hdrs)),
    };
    if body.len() > MAX_BODY {
        return framing.error(ApiError::new(
            "RequestEntityTooLargeException",
            format!("Request of {} bytes exceeds the limit of {MAX_BODY} bytes.", body.len()),
            StatusCode::PAYLOAD_TOO_LARGE,
        ));
    }
    let stored = match find_key(&api, &hdrs).await {
        Ok(k) => k,
        Err(e) => return framing.error(e),
    };
    let key = stored.as_ref().map(secret_key);
    let req = SignedRequest {
        method: method.as_str(),
        path: uri.path(),
        query: query_string,
        headers: &hdrs,
        body: &body,
    };
    let verified = match sigv4::verify(&req, &OneKey(key), chrono::Utc::now()) {
        Ok(v) => v,
        Err(e) => return framing.error(e.into()),
    };
    let now = api.control.clock.now_ms() as f64 / 1000.0;
    if !api.throttle.admit(&verified.access_key_id, 1.0, now) {
        return framing.error(ApiError::client("ThrottlingException", "Rate exceeded"));
    }
    // The signature covers the body as sent; a gzip body (botocore compresses large
    // PutMetricData requests) is read once verified.
    let body = match decoded_body(header("content-encoding"), body) {
        Ok(b) => b,
        Err(e) => return framing.error(e),
    };
    let call = match protocol::resolve(
        &verified.service,
        &framing.wire,
        target.unwrap_or(""),
        &body,
        query_string,
    ) {
        Ok(c) => c,
        Err(e) => return framing.error(e),
    };
    *named = (verified.service.clone(), call.op.name.clone());
    let scope = Scope {
        account: verified.account_id.clone(),
        region: verified.region.clone(),
    };
    let Some(stored) = stored else {
        return framing.error(ApiError::new(
            "UnrecognizedClientException",
            "The key vanished.",
            StatusCode::FORBIDDEN,
        ));
    };
    let query_wire = framing.wire == Wire::Query;
    let caller = match crate::authz::caller(&api, &stored).await {
        Ok(c) => c,
        Err(e) => return framing.error(e),
    };
    let asked = crate::authz::Asked::new(
        &api,
        &scope,
        (&verified.service, &call.op.name),
        &call.input,
        query_wire,
        &caller,
    )
    .await;
    if let Err(e) = crate::authz::authorize(&api, &caller, &asked).await {
        return framing.error(e);
    }
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let handled = crate::api::CALLER.scope(
        caller,
        crate::api::HOST.scope(
            host,
            (call.service.handler)(&api, &scope, &call.op.name, call.input.clone()),
        ),
    );
    match handled.await {
        Ok(v) => framing.ok(&call, v),
        Err(e) => {
            if e.status.is_server_error() {
                tracing::error!(operation = %call.op.name, error = %e.message, "request failed");
            }
            framing.error(e)
        }
    }
}

/// Most bytes a compressed request body may expand to.
const MAX_DECODED_BODY: usize = 4 << 20;

/// The request body, gunzipped when its Content-Encoding says gzip; expansion is capped, so a
/// compression bomb is refused rather than inflated.
fn decoded_body(encoding: Option<&str>, body: Bytes) -> Result<Bytes, ApiError> {
    match encoding.map(|e| e.trim().to_ascii_lowercase()) {
        None => Ok(body),
        Some(e) if e.is_empty() || e == "identity" => Ok(body),
        Some(e) if e == "gzip" => {
            use std::io::Read;
            let mut out = Vec::new();
            let mut reader = flate2::read::GzDecoder::new(&body[..]).take(MAX_DECODED_BODY as u64 + 1);
            reader.read_to_end(&mut out).map_err(|err| {
                ApiError::client(
                    "SerializationException",
                    format!("The gzip request body is malformed: {err}."),
                )
            })?;
            if out.len() > MAX_DECODED_BODY {
                return Err(ApiError::new(
                    "RequestEntityTooLargeException",
                    format!("The request body expands to more than {MAX_DECODED_BODY} bytes."),
                    StatusCode::PAYLOAD_TOO_LARGE,
                ));
            }
            Ok(Bytes::from(out))
        }
        Some(other) => Err(ApiError::client(
            "SerializationException",
            format!("Content-Encoding {other} is not supported (gzip is)."),
        )),
    }
}

/// The service named in the Authorization header's credential scope, before verification
/// (only to frame errors in that service's terms).
fn credential_service(headers: &[(String, String)]) -> Option<&str> {
    credential(headers)?.get(3).copied()
}

pub fn router(api: Api) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(crate::prometheus::scrape))
        .merge(crate::console::routes())
        .merge(crate::exec::routes())
        .fallback(handle)
        .layer(axum::extract::DefaultBodyLimit::max(HARD_BODY_LIMIT))
        .with_state(api)
}

#[cfg(test)]
mod body_tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    /// A body whose client never sends the rest.
    struct Stalled;

    impl axum::body::HttpBody for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_stalled_body_is_answered_request_timeout_in_the_requests_protocol() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amz-target",
            "AmazonEC2ContainerServiceV20141113.ListClusters".parse().unwrap(),
        );
        headers.insert("content-type", "application/x-amz-json-1.1".parse().unwrap());
        let uri: Uri = "/".parse().unwrap();
        let wait = std::time::Duration::from_millis(50);
        let r = read_body(&headers, &uri, axum::body::Body::new(Stalled), wait)
            .await
            .unwrap_err();
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains("RequestTimeoutException"));
        let whole = axum::body::Body::from("{}");
        assert_eq!(
            read_body(&headers, &uri, whole, wait).await.unwrap(),
            Bytes::from_static(b"{}")
        );
    }

    #[test]
    fn gzip_bodies_are_read_within_a_cap() {
        let plain = Bytes::from_static(br#"{"Namespace": "x"}"#);
        assert_eq!(decoded_body(None, plain.clone()).unwrap(), plain);
        assert_eq!(decoded_body(Some("gzip"), gzip(&plain)).unwrap(), plain);
        // A bomb: 64 MiB of zeros compress to about 64 KiB.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < MAX_BODY);
        let e = decoded_body(Some("gzip"), bomb).unwrap_err();
        assert_eq!(
            (e.kind.as_str(), e.status),
            ("RequestEntityTooLargeException", StatusCode::PAYLOAD_TOO_LARGE)
        );
        let e = decoded_body(Some("gzip"), Bytes::from_static(b"not gzip")).unwrap_err();
        assert_eq!(e.kind, "SerializationException");
        let e = decoded_body(Some("br"), plain).unwrap_err();
        assert!(e.message.contains("br is not supported"));
    }
}
