//! The web console, served on the API's listener under `/console`: a static single-page app
//! (no build step, no third-party code), a sign-in with an access key that yields a session
//! cookie (`session.rs`), read-only calls into the same handlers the AWS APIs use (so what the
//! console shows is what the API answers), and the dashboards' aggregates (`dashboards.rs`).
//!
//! Cross-site requests are refused twice over: the cookie is SameSite=Strict, and every call
//! must carry the `X-Gantry-Console` header, which a form or an image cannot send.

pub mod dashboards;
pub mod session;

use crate::api::{Api, ApiError};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gantry_types::arn::Scope;
use serde_json::{json, Value};
use session::Session;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const CSRF_HEADER: &str = "x-gantry-console";
/// Largest console request body (a sign-in, or one read-only call's input).
const MAX_CALL_BODY: usize = 256 << 10;

pub fn routes() -> axum::Router<Api> {
    axum::Router::new()
        .route("/console", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/console/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/console/app.js", get(|| async { asset("text/javascript", APP_JS) }))
        .route("/console/app.css", get(|| async { asset("text/css", APP_CSS) }))
        .route("/console/login", post(login))
        .route("/console/logout", post(logout))
        .route("/console/api/session", get(whoami))
        .route("/console/api/call/{service}/{operation}", post(call))
        .route("/console/api/dashboard/{name}", get(dashboard))
}

fn hardened(mut r: Response) -> Response {
    let h = r.headers_mut();
    let csp = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'";
    h.insert("content-security-policy", HeaderValue::from_static(csp));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    hardened(r)
}

fn error(e: ApiError) -> Response {
    let body = json!({"__type": e.kind, "message": e.message});
    hardened((e.status, axum::Json(body)).into_response())
}

fn ok(v: Value) -> Response {
    hardened((StatusCode::OK, axum::Json(v)).into_response())
}

fn unauthenticated(message: &str) -> ApiError {
    ApiError::new("UnrecognizedClientException", message, StatusCode::UNAUTHORIZED)
}

/// Refuses a request that did not come from the console's own script.
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()) {
        Some("1") => Ok(()),
        _ => Err(ApiError::new(
            "AccessDeniedException",
            "Console requests must carry the X-Gantry-Console header.",
            StatusCode::FORBIDDEN,
        )),
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The signed-in session and the scope it acts in, or why there is none.
async fn signed_in(api: &Api, headers: &HeaderMap) -> Result<(Session, Scope, gantry_control::iam::Caller), ApiError> {
    same_origin(headers)?;
    let cookie = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| session::cookie_value(h, session::COOKIE))
        .ok_or_else(|| unauthenticated("Sign in to use the console."))?;
    let claims = session::parse(cookie).ok_or_else(|| unauthenticated("The session is not valid: sign in again."))?;
    let key = crate::server::load_key(api, &claims.0)
        .await?
        .ok_or_else(|| unauthenticated("The session's access key no longer exists: sign in again."))?;
    if key.status != "Active" {
        return Err(unauthenticated("The session's access key is inactive: sign in again."));
    }
    let s = session::verify(&claims, &key.secret_access_key, key.session_token.as_deref(), now())
        .ok_or_else(|| unauthenticated("The session expired or is not valid: sign in again."))?;
    let caller = api
        .control
        .iam()
        .caller(&key)
        .await
        .map_err(|_| unauthenticated("The session's user no longer exists: sign in again."))?;
    let scope = Scope {
        account: key.account_id,
        region: s.region.clone(),
    };
    Ok((s, scope, caller))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Login {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    session_token: Option<String>,
    #[serde(default = "default_region")]
    region: String,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn session_cookie(value: &str, max_age: i64) -> HeaderValue {
    let c = format!(
        "{}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}",
        session::COOKIE
    );
    HeaderValue::from_str(&c).expect("cookie values are ASCII")
}

async fn login(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    match sign_in(&api, &headers, &body).await {
        Ok((cookie, who)) => {
            let mut r = ok(who);
            r.headers_mut().insert(header::SET_COOKIE, cookie);
            r
        }
        Err(e) => {
            if e.status == StatusCode::UNAUTHORIZED {
                tracing::warn!(error = %e.message, "console sign-in refused");
            }
            error(e)
        }
    }
}

async fn sign_in(api: &Api, headers: &HeaderMap, body: &[u8]) -> Result<(HeaderValue, Value), ApiError> {
    same_origin(headers)?;
    if body.len() > MAX_CALL_BODY {
        return Err(ApiError::client(
            "ValidationException",
            "The sign-in request is too large.",
        ));
    }
    let l: Login = serde_json::from_slice(body).map_err(|e| {
        ApiError::client(
            "ValidationException",
            format!("Expected accessKeyId, secretAccessKey and optionally sessionToken and region: {e}."),
        )
    })?;
    if !session::valid_region(&l.region) {
        return Err(ApiError::client(
            "ValidationException",
            format!("{:?} is not a region name.", l.region),
        ));
    }
    let refused = || unauthenticated("The access key ID or secret access key is not valid.");
    let akid_ok = !l.access_key_id.is_empty()
        && l.access_key_id.len() <= 128
        && l.access_key_id.bytes().all(|b| b.is_ascii_alphanumeric());
    if !akid_ok {
        return Err(refused());
    }
    let key = crate::server::load_key(api, &l.access_key_id)
        .await?
        .filter(|k| k.status == "Active")
        .ok_or_else(refused)?;
    let token_ok = key.session_token.as_deref() == l.session_token.as_deref().filter(|t| !t.is_empty());
    if !session::same_secret(&l.secret_access_key, &key.secret_access_key) || !token_ok {
        return Err(refused());
    }
    let expires = now() + session::SESSION_SECS;
    let value = session::issue(
        &l.access_key_id,
        &l.region,
        expires,
        &key.secret_access_key,
        key.session_token.as_deref(),
    );
    let who =
        json!({"accessKeyId": l.access_key_id, "account": key.account_id, "region": l.region, "expires": expires});
    Ok((session_cookie(&value, session::SESSION_SECS), who))
}

async fn logout(headers: HeaderMap) -> Response {
    if let Err(e) = same_origin(&headers) {
        return error(e);
    }
    let mut r = ok(json!({}));
    r.headers_mut().insert(header::SET_COOKIE, session_cookie("", 0));
    r
}

async fn whoami(State(api): State<Api>, headers: HeaderMap) -> Response {
    match signed_in(&api, &headers).await {
        Ok((s, scope, _)) => ok(json!({
            "accessKeyId": s.access_key_id, "account": scope.account, "region": scope.region, "expires": s.expires
        })),
        Err(e) => error(e),
    }
}

/// Operations the console may call: reads only. (With IAM, the session's principal's
/// policies will also apply, as to any request.)
pub fn read_only(operation: &str) -> bool {
    ["Describe", "List", "Get", "Filter"]
        .iter()
        .any(|p| operation.starts_with(p))
}

/// Calls one read-only operation through the service's own handler, as `scope`.
pub async fn dispatch(
    api: &Api,
    scope: &Scope,
    service: &str,
    operation: &str,
    input: Value,
) -> Result<Value, ApiError> {
    if !read_only(operation) {
        return Err(ApiError::new(
            "AccessDeniedException",
            format!("The console only reads: {service}:{operation} is not a read operation."),
            StatusCode::FORBIDDEN,
        ));
    }
    let c = crate::protocol::resolve_named(service, operation, input)?;
    // The signed-in user's policies apply as to any request.
    let caller = crate::api::caller(&scope.account);
    let asked = crate::authz::Asked::new(api, scope, (service, operation), &c.input, false, &caller).await;
    crate::authz::permit(&caller, &asked)?;
    (c.service.handler)(api, scope, &c.op.name, c.input).await
}

async fn call(
    State(api): State<Api>,
    Path((service, operation)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = async {
        let (_, scope, caller) = signed_in(&api, &headers).await?;
        if body.len() > MAX_CALL_BODY {
            return Err(ApiError::client("ValidationException", "The request is too large."));
        }
        let input: Value = if body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(&body)
                .map_err(|_| ApiError::client("SerializationException", "Request body is not a JSON object."))?
        };
        crate::api::CALLER
            .scope(caller, dispatch(&api, &scope, &service, &operation, input))
            .await
    };
    match answer.await {
        Ok(v) => ok(v),
        Err(e) => error(e),
    }
}

#[derive(serde::Deserialize)]
struct DashboardQuery {
    #[serde(default)]
    window: Option<String>,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    service: Option<String>,
}

async fn dashboard(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Query<DashboardQuery>,
    headers: HeaderMap,
) -> Response {
    let answer = async {
        let (_, scope, caller) = signed_in(&api, &headers).await?;
        let window = dashboards::window_secs(q.window.as_deref().unwrap_or("24h"))?;
        let board = async move {
            match name.as_str() {
                "executive" => dashboards::executive(&api, &scope, window).await,
                "oncall" => dashboards::oncall(&api, &scope).await,
                "service" => {
                    let (Some(cluster), Some(service)) = (q.cluster.as_deref(), q.service.as_deref()) else {
                        return Err(ApiError::client(
                            "ValidationException",
                            "cluster and service are required.",
                        ));
                    };
                    dashboards::service(&api, &scope, cluster, service, window).await
                }
                _ => Err(ApiError::new(
                    "ResourceNotFoundException",
                    format!("There is no dashboard {name:?} (executive, oncall, service)."),
                    StatusCode::NOT_FOUND,
                )),
            }
        };
        crate::api::CALLER.scope(caller, board).await
    };
    match answer.await {
        Ok(v) => ok(v),
        Err(e) => error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_are_allowed() {
        for op in [
            "DescribeServices",
            "ListTasks",
            "GetMetricData",
            "FilterLogEvents",
            "GetLogEvents",
        ] {
            assert!(read_only(op), "{op}");
        }
        for op in [
            "CreateService",
            "UpdateService",
            "StopTask",
            "PutMetricData",
            "DeleteAlarms",
            "RunTask",
        ] {
            assert!(!read_only(op), "{op}");
        }
    }
}
