//! The HTTP front: SigV4 first, then dispatch by X-Amz-Target to a service's handler, then the
//! AWS JSON 1.1 response or error shape.

use crate::sigv4::{self, AuthError, KeyLookup, SecretKey, SignedRequest};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use gantry_control::Control;
use gantry_types::arn::Scope;
use gantry_types::EcsError;
use serde_json::{json, Value};
use std::sync::Arc;

/// Largest request body accepted, answered with an AWS-shaped error above it (ECS's own
/// limits are lower for most calls).
pub const MAX_BODY: usize = 1 << 20;
/// Bodies beyond this are cut off by the HTTP layer before they are read at all.
const HARD_BODY_LIMIT: usize = 16 << 20;

#[derive(Clone)]
pub struct Api {
    pub control: Control,
    pub logs: Arc<gantry_control::logfeed::Logs>,
}

/// An error in a service's terms: type name, message, whether it is the server's fault.
#[derive(Debug)]
pub struct ApiError {
    pub kind: String,
    pub message: String,
    pub status: StatusCode,
}

impl ApiError {
    pub fn new(kind: &str, message: impl Into<String>, status: StatusCode) -> ApiError {
        ApiError {
            kind: kind.into(),
            message: message.into(),
            status,
        }
    }
    pub fn client(kind: &str, message: impl Into<String>) -> ApiError {
        Self::new(kind, message, StatusCode::BAD_REQUEST)
    }
}

impl From<EcsError> for ApiError {
    fn from(e: EcsError) -> ApiError {
        let status = if e.is_server_fault() {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(e.aws_type(), e.to_string(), status)
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        let status = if matches!(e, AuthError::Missing) {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(e.aws_type(), e.to_string(), status)
    }
}

fn request_id() -> String {
    gantry_control::random_uuid()
}

fn json_response(status: StatusCode, mut body: Value) -> Response {
    // Absent optional members are omitted, not sent as null.
    if let Value::Object(m) = &mut body {
        m.retain(|_, v| !v.is_null());
    }
    let mut r = (status, body.to_string()).into_response();
    let h = r.headers_mut();
    h.insert("content-type", "application/x-amz-json-1.1".parse().expect("static"));
    h.insert("x-amzn-requestid", request_id().parse().expect("hex"));
    r
}

pub fn error_response(e: ApiError) -> Response {
    json_response(e.status, json!({"__type": e.kind, "message": e.message}))
}

struct OneKey(Option<SecretKey>);

impl KeyLookup for OneKey {
    fn lookup(&self, _: &str) -> Option<SecretKey> {
        self.0.clone()
    }
}

/// Keys live in the store under /iam/keys/<access key id>.
pub fn key_path(access_key_id: &str) -> String {
    format!("/iam/keys/{access_key_id}")
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct StoredKey {
    pub secret_access_key: String,
    pub account_id: String,
    #[serde(default)]
    pub session_token: Option<String>,
}

/// The signing key the request names. `Ok(None)` when there is no such key (the verifier then
/// answers as AWS does); an error when the store cannot say, so an outage is a server error,
/// never "the security token is invalid".
async fn find_key(api: &Api, headers: &[(String, String)]) -> Result<Option<SecretKey>, ApiError> {
    let Some(akid) = access_key_id(headers) else {
        return Ok(None);
    };
    let kv = api.control.store.get(&key_path(akid)).await.map_err(|e| {
        ApiError::new(
            "ServiceUnavailableException",
            format!("The service is unavailable: {e}. Retry the request."),
            StatusCode::SERVICE_UNAVAILABLE,
        )
    })?;
    let Some(kv) = kv else { return Ok(None) };
    let Ok(k) = serde_json::from_slice::<StoredKey>(&kv.value) else {
        return Ok(None);
    };
    Ok(Some(SecretKey {
        secret: k.secret_access_key,
        session_token: k.session_token,
        account_id: k.account_id,
    }))
}

fn access_key_id(headers: &[(String, String)]) -> Option<&str> {
    let auth = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))?
        .1
        .as_str();
    let akid = auth.split("Credential=").nth(1)?.split('/').next()?;
    let valid = !akid.is_empty() && akid.len() <= 128 && akid.bytes().all(|b| b.is_ascii_alphanumeric());
    valid.then_some(akid)
}

pub async fn handle(State(api): State<Api>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let hdrs: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if body.len() > MAX_BODY {
        return error_response(ApiError::new(
            "RequestEntityTooLargeException",
            format!("Request of {} bytes exceeds the limit of {MAX_BODY} bytes.", body.len()),
            StatusCode::PAYLOAD_TOO_LARGE,
        ));
    }
    let key = match find_key(&api, &hdrs).await {
        Ok(k) => k,
        Err(e) => return error_response(e),
    };
    let req = SignedRequest {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers: &hdrs,
        body: &body,
    };
    let verified = match sigv4::verify(&req, &OneKey(key), chrono::Utc::now()) {
        Ok(v) => v,
        Err(e) => return error_response(e.into()),
    };
    let scope = Scope {
        account: verified.account_id.clone(),
        region: verified.region.clone(),
    };
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("");
    let input: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return error_response(ApiError::client(
                    "SerializationException",
                    "Request body is not a JSON object.",
                ))
            }
        }
    };
    let result = match target.split_once('.') {
        Some(("AmazonEC2ContainerServiceV20141113", op)) => crate::ecs::dispatch(&api, &scope, op, input).await,
        Some(("Logs_20140328", op)) => crate::logs::dispatch(&api, &scope, op, input).await,
        _ => Err(ApiError::client(
            "UnknownOperationException",
            format!("Unknown operation {target:?}"),
        )),
    };
    match result {
        Ok(v) => json_response(StatusCode::OK, v),
        Err(e) => {
            if e.status.is_server_error() {
                tracing::error!(target, error = %e.message, "request failed");
            }
            error_response(e)
        }
    }
}

pub fn router(api: Api) -> axum::Router {
    axum::Router::new()
        .fallback(handle)
        .layer(axum::extract::DefaultBodyLimit::max(HARD_BODY_LIMIT))
        .with_state(api)
}
