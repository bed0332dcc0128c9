//! An application load balancer listener: HTTP/1.1 and HTTP/2 (h2c) from clients on hyper,
//! rules evaluated per request, then a fixed response, a redirect, or the request forwarded
//! over HTTP/1.1 to a target with X-Forwarded-For/Proto/Port, as ALB does.

use crate::balance::{cookie_target, cookie_token, Sticky};
use crate::matching::{route, Facts};
use crate::settings::{Served, Xff};
use crate::{Shared, Snapshot};
use bytes::Bytes;
use gantry_types::elbv2::{Action, FixedResponseConfig, RedirectConfig};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue, HOST, LOCATION};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub type Body = BoxBody<Bytes, hyper::Error>;

/// Largest request head (request line and headers) accepted from a client.
const MAX_HEAD: usize = 64 * 1024;

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).map_err(|never| match never {}).boxed()
}

/// ALB's own error pages.
fn error_page(status: StatusCode) -> Response<Body> {
    let reason = match status {
        StatusCode::SERVICE_UNAVAILABLE => "Service Temporarily Unavailable",
        s => s.canonical_reason().unwrap_or(""),
    };
    let title = format!("{} {reason}", status.as_u16());
    let html = format!("<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n</body>\r\n</html>\r\n");
    let mut r = Response::new(full(html));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/html"));
    r.headers_mut().insert("server", HeaderValue::from_static("awselb/2.0"));
    r
}

/// Serves one listener's socket until `stop` says so; open connections finish their requests.
/// HTTPS listeners decrypt first (the handshake bounded by the idle timeout).
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(local) = listener.local_addr() else { return };
    while let Some((stream, peer)) = crate::next_connection(&listener, &mut stop).await {
        let shared = shared.clone();
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Some(served) = shared.listener(local) else { return };
            if !shared.client_admitted(&served, peer) {
                return tracing::debug!(%peer, "refused by the load balancer's security groups");
            }
            if !served.is_secure() {
                return serve_connection(shared, served, stream, local, peer).await;
            }
            let Some(acceptor) = served.tls.clone() else { return };
            match tokio::time::timeout(served.settings.idle_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_connection(shared, served, tls, local, peer).await,
                _ => tracing::debug!(%peer, "TLS handshake failed or timed out"),
            }
        });
    }
}

/// A client connection's address, and the X-Forwarded-For entries it adds (its address, or
/// address and port), made once per connection rather than formatted per request.
struct Client {
    addr: SocketAddr,
    xff_ip: HeaderValue,
    xff_ip_port: HeaderValue,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        let value = |s: String| HeaderValue::from_str(&s).expect("an address is a valid header value");
        Client {
            addr,
            xff_ip: value(addr.ip().to_string()),
            xff_ip_port: value(addr.to_string()),
        }
    }
}

/// HTTP/1.1 or HTTP/2 on one client connection, plain or decrypted.
async fn serve_connection<S>(shared: Arc<Shared>, served: Arc<Served>, stream: S, local: SocketAddr, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let s = &served.settings;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Bounded request heads (ALB allows 64 KB of headers) and a bounded wait for them,
    // so slow or oversized clients cost a fixed amount.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(s.idle_timeout)
        .max_buf_size(MAX_HEAD);
    builder.http2().max_header_list_size(MAX_HEAD as u32);
    if !s.http2 {
        builder = builder.http1_only();
    }
    let keep_alive = s.client_keep_alive;
    let client = Arc::new(Client::new(peer));
    let svc = hyper::service::service_fn(move |req| {
        let (shared, client) = (shared.clone(), client.clone());
        async move { Ok::<_, std::convert::Infallible>(handle(&shared, local, &client, req).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        // Client keep-alive: the connection is closed (gracefully) after this long.
        _ = tokio::time::sleep(keep_alive) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Who answered a request: a target, or the load balancer itself (counted as its own).
enum Answer {
    Target(Response<Body>),
    Own(Response<Body>),
}

impl From<Response<Body>> for Answer {
    fn from(r: Response<Body>) -> Answer {
        Answer::Own(r)
    }
}

async fn handle(shared: &Shared, local: SocketAddr, client: &Client, req: Request<Incoming>) -> Response<Body> {
    // One look at the configuration per request: the listener and its groups come from it.
    let snap = shared.current();
    let Some(served) = snap.listeners.get(&local) else {
        return error_page(StatusCode::SERVICE_UNAVAILABLE);
    };
    match answer(shared, &snap, served, local, client, req).await {
        Answer::Target(resp) => resp,
        Answer::Own(resp) => {
            served.counters.own(resp.status().as_u16());
            resp
        }
    }
}

async fn answer(
    shared: &Shared,
    snap: &Snapshot,
    served: &Served,
    local: SocketAddr,
    client: &Client,
    req: Request<Incoming>,
) -> Answer {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let facts = Facts {
        host: &host,
        path: req.uri().path(),
        method: req.method().as_str(),
        query: req.uri().query().unwrap_or(""),
        headers: req.headers(),
        source: client.addr.ip(),
    };
    // Borrowed from the listener's configuration, which this request holds: no copy per request.
    let Some(action) = route(&served.view, &facts).first() else {
        return error_page(StatusCode::SERVICE_UNAVAILABLE).into();
    };
    match action.kind.as_str() {
        "fixed-response" => fixed(action.fixed_response_config.as_ref()).into(),
        "redirect" => redirect(action.redirect_config.as_ref(), &host, local.port(), req.uri()).into(),
        "forward" => forward(shared, snap, served, action, client, host, req).await,
        _ => error_page(StatusCode::INTERNAL_SERVER_ERROR).into(),
    }
}

fn fixed(c: Option<&FixedResponseConfig>) -> Response<Body> {
    let Some(c) = c else {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let mut r = Response::new(full(c.message_body.clone().unwrap_or_default()));
    *r.status_mut() = c.status_code.parse().unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let ct = c.content_type.as_deref().unwrap_or("text/plain; charset=utf-8");
    if let Ok(v) = HeaderValue::from_str(ct) {
        r.headers_mut().insert("content-type", v);
    }
    r.headers_mut().insert("server", HeaderValue::from_static("awselb/2.0"));
    r
}

/// The Location of a redirect: each part either given or `#{part}` from the request.
pub fn redirect_location(
    c: &RedirectConfig,
    host: &str,
    listener_port: u16,
    path: &str,
    query: Option<&str>,
) -> String {
    let host_only = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    let sub = |s: &str| {
        s.replace("#{protocol}", "http")
            .replace("#{host}", host_only)
            .replace("#{port}", &listener_port.to_string())
            .replace("#{path}", path.trim_start_matches('/'))
            .replace("#{query}", query.unwrap_or(""))
    };
    let protocol = sub(c.protocol.as_deref().unwrap_or("#{protocol}")).to_lowercase();
    let port = sub(c.port.as_deref().unwrap_or("#{port}"));
    let default_port = (protocol == "http" && port == "80") || (protocol == "https" && port == "443");
    let mut out = format!("{protocol}://{}", sub(c.host.as_deref().unwrap_or("#{host}")));
    if !default_port {
        out.push(':');
        out.push_str(&port);
    }
    out.push_str(&sub(c.path.as_deref().unwrap_or("/#{path}")));
    let q = sub(c.query.as_deref().unwrap_or("#{query}"));
    if !q.is_empty() {
        out.push('?');
        out.push_str(&q);
    }
    out
}

fn redirect(c: Option<&RedirectConfig>, host: &str, port: u16, uri: &hyper::Uri) -> Response<Body> {
    let Some(c) = c else {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let location = redirect_location(c, host, port, uri.path(), uri.query());
    let status = if c.status_code == "HTTP_301" {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::FOUND
    };
    let mut r = error_page(status);
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

/// A cookie's value in a request (AWSALB: the target; AWSALBTG: the target group).
fn cookie(h: &hyper::HeaderMap, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    h.get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(prefix.as_str()))
        .map(str::to_string)
        .next()
}

/// A stickiness cookie (ALB's AWSALB or AWSALBTG) with its expiry.
fn stickiness_cookie(name: &str, token: &str, ttl: Duration) -> String {
    let expires = std::time::SystemTime::now() + ttl;
    format!("{name}={token}; Expires={}; Path=/", httpdate(expires))
}

/// The group a forward action sends a request to: the one its AWSALBTG cookie names while
/// the action still forwards there (group-level stickiness), else one chosen by weight; and
/// the cookie to set when the action is sticky.
fn choose_group<'a>(shared: &Shared, action: &'a Action, h: &hyper::HeaderMap) -> Option<(&'a str, Option<String>)> {
    let fc = action.forward_config.as_ref()?;
    let sticky = fc
        .target_group_stickiness_config
        .as_ref()
        .filter(|s| s.enabled == Some(true));
    let Some(stick) = sticky else {
        return shared.balancer.choose_group(action).map(|g| (g, None));
    };
    let token = |arn: &str| crate::balance::group_token(shared.cookie_key, arn);
    let remembered = cookie(h, "AWSALBTG").and_then(|t| {
        fc.target_groups
            .iter()
            .filter(|g| g.weight.unwrap_or(1) > 0)
            .find(|g| token(&g.target_group_arn) == t)
    });
    let group = match remembered {
        Some(g) => g.target_group_arn.as_str(),
        None => shared.balancer.choose_group(action)?,
    };
    let ttl = Duration::from_secs(stick.duration_seconds.unwrap_or(3600).max(1) as u64);
    Some((group, Some(stickiness_cookie("AWSALBTG", &token(group), ttl))))
}

/// An HTTP date (RFC 7231 IMF-fixdate).
fn httpdate(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let names = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        names[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Headers that belong to one connection, never forwarded. Named, not spelled: a name given
/// as a string is parsed again on every use.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

fn strip_hop_by_hop(h: &mut hyper::HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
}

/// X-Forwarded-* and the Host header as the load balancer's attributes say.
fn forwarded_headers(served: &Served, h: &mut hyper::HeaderMap, client: &Client, host: &str, port: u16) {
    let s = &served.settings;
    let proto = if served.is_secure() { "https" } else { "http" };
    let entry = if s.xff_client_port {
        &client.xff_ip_port
    } else {
        &client.xff_ip
    };
    match s.xff {
        Xff::Remove => {
            h.remove(X_FORWARDED_FOR);
        }
        Xff::Preserve => {}
        Xff::Append => match h.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) => {
                let entry = entry.to_str().expect("made from an address");
                if let Ok(v) = HeaderValue::from_str(&format!("{prev}, {entry}")) {
                    h.insert(X_FORWARDED_FOR, v);
                }
            }
            None => {
                h.insert(X_FORWARDED_FOR, entry.clone());
            }
        },
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    h.insert(X_FORWARDED_PORT, HeaderValue::from(port));
    if !s.preserve_host {
        // Without preservation, the Host header's port is the listener's.
        if let Some((name, p)) = host.rsplit_once(':') {
            if p.parse::<u16>().is_ok_and(|p| p != port) {
                if let Ok(v) = HeaderValue::from_str(&format!("{name}:{port}")) {
                    h.insert(HOST, v);
                }
            }
        }
    }
    if s.drop_invalid_headers {
        let invalid: Vec<HeaderName> = h
            .keys()
            .filter(|k| !k.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            .cloned()
            .collect();
        for k in invalid {
            h.remove(k);
        }
    }
}

/// The request's URI as sent to a target: its path and query (reused, not parsed again) in
/// origin form, as an HTTP/1.1 request to a server carries it.
fn target_uri(uri: &hyper::Uri) -> Option<hyper::Uri> {
    let path = match uri.path_and_query() {
        Some(p) if p.as_str().starts_with('/') => p.clone(),
        // `OPTIONS *` and the like have no path a target could be asked for.
        Some(_) => return None,
        None => hyper::http::uri::PathAndQuery::from_static("/"),
    };
    Some(hyper::Uri::from(path))
}

async fn forward(
    shared: &Shared,
    snap: &Snapshot,
    served: &Served,
    action: &Action,
    client: &Client,
    host: String,
    req: Request<Incoming>,
) -> Answer {
    let Some((arn, group_cookie)) = choose_group(shared, action, req.headers()) else {
        return error_page(StatusCode::SERVICE_UNAVAILABLE).into();
    };
    let Some(group) = snap.groups.get(arn) else {
        return error_page(StatusCode::SERVICE_UNAVAILABLE).into();
    };
    let sticky = match group.sticky {
        Sticky::Cookie(_) => cookie(req.headers(), "AWSALB").and_then(|t| cookie_target(shared.cookie_key, group, &t)),
        _ => None,
    };
    let Some(pick) = shared.balancer.choose_target(group, sticky) else {
        return error_page(StatusCode::SERVICE_UNAVAILABLE).into();
    };
    served.counters.chosen();
    group.counters.chosen();
    if group.shut_out.contains(&pick.addr) {
        // The groups would drop the connection: ALB's answer once its connect times out.
        return error_page(StatusCode::GATEWAY_TIMEOUT).into();
    }
    let set_cookie = match group.sticky {
        Sticky::Cookie(ttl) => Some(stickiness_cookie(
            "AWSALB",
            &cookie_token(shared.cookie_key, &group.view.group.target_group_arn, pick.addr),
            ttl,
        )),
        _ => None,
    };
    let (mut parts, body) = req.into_parts();
    let Some(uri) = target_uri(&parts.uri) else {
        return error_page(StatusCode::BAD_REQUEST).into();
    };
    parts.uri = uri;
    parts.version = hyper::Version::HTTP_11;
    if !parts.headers.contains_key(HOST) {
        if let Ok(v) = HeaderValue::from_str(&host) {
            parts.headers.insert(HOST, v);
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    forwarded_headers(
        served,
        &mut parts.headers,
        client,
        &host,
        served.view.listener.port as u16,
    );
    let idle = served.settings.idle_timeout;
    let asked = std::time::Instant::now();
    let sent = tokio::time::timeout(
        idle,
        crate::upstream::request(pick.addr, Request::from_parts(parts, body)),
    )
    .await;
    let resp = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(target = %pick.addr, error = %e, "target failed");
            return error_page(StatusCode::BAD_GATEWAY).into();
        }
        Err(_) => return error_page(StatusCode::GATEWAY_TIMEOUT).into(),
    };
    let answer = crate::traffic::Answer::of(resp.status().as_u16(), asked.elapsed());
    served.counters.answered(answer);
    group.counters.answered(answer);
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    for c in [set_cookie, group_cookie].into_iter().flatten() {
        if let Ok(v) = HeaderValue::from_str(&c) {
            parts.headers.append(hyper::header::SET_COOKIE, v);
        }
    }
    // The target counts as outstanding until its response body has been sent on.
    let body = body.map_frame(move |f| {
        let _held = &pick;
        f
    });
    Answer::Target(Response::from_parts(parts, body.boxed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(protocol: Option<&str>, host: Option<&str>, port: Option<&str>, path: Option<&str>) -> RedirectConfig {
        RedirectConfig {
            protocol: protocol.map(Into::into),
            port: port.map(Into::into),
            host: host.map(Into::into),
            path: path.map(Into::into),
            query: None,
            status_code: "HTTP_301".into(),
        }
    }

    #[test]
    fn http_dates_and_sticky_cookies() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(httpdate(t), "Tue, 14 Nov 2023 22:13:20 GMT");
        let mut h = hyper::HeaderMap::new();
        h.insert(hyper::header::COOKIE, HeaderValue::from_static("a=1; AWSALB=abc; b=2"));
        assert_eq!(cookie(&h, "AWSALB").as_deref(), Some("abc"));
        h.insert(
            hyper::header::COOKIE,
            HeaderValue::from_static("AWSALBTG=g1; AWSALB=t1"),
        );
        assert_eq!(cookie(&h, "AWSALB").as_deref(), Some("t1"));
        assert_eq!(cookie(&h, "AWSALBTG").as_deref(), Some("g1"));
    }

    #[test]
    fn target_uris_keep_the_path_and_query() {
        let at = |u: &str| target_uri(&u.parse().unwrap()).map(|u| u.to_string());
        assert_eq!(at("/a/b?x=1&y").as_deref(), Some("/a/b?x=1&y"));
        // Absolute form (a proxy request, or HTTP/2's :authority): origin form to the target.
        assert_eq!(at("http://shop.example/cart?id=9").as_deref(), Some("/cart?id=9"));
        assert_eq!(at("http://shop.example").as_deref(), Some("/"));
        assert_eq!(at("*"), None);
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut h = hyper::HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-kept", "2"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn redirect_locations_substitute_request_parts() {
        let c = cfg(Some("HTTPS"), None, Some("443"), None);
        assert_eq!(
            redirect_location(&c, "shop.example:80", 80, "/a/b", Some("x=1")),
            "https://shop.example/a/b?x=1"
        );
        let c = cfg(None, Some("new.example"), None, Some("/v2/#{path}"));
        assert_eq!(
            redirect_location(&c, "old.example", 8080, "/items", None),
            "http://new.example:8080/v2/items"
        );
    }
}
