//! The server end of the agent protocol: JSON over HTTP/2 (or HTTP/1.1) with TLS. A client
//! certificate is optional at the handshake (a joining agent has none yet) and required by
//! every route but `/v1/join`: the node a request speaks for is the certificate's, never a
//! name in the request. Refusals are logged with the peer address.

use crate::pki::{self, Ca};
use crate::revocation::{self, Admission};
use crate::wire::*;
use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gantry_agent::link::{self as ops, LinkError, Written};
use gantry_control::logfeed::Logs;
use gantry_control::logstore::{LogOp, LogWrite};
use gantry_control::nodes::validate_node_name;
use gantry_control::Control;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Clone)]
pub struct LinkServer {
    pub control: Control,
    pub logs: Arc<Logs>,
    pub metrics: gantry_control::metrics::Metrics,
    pub ca: Ca,
    /// Where container secrets are read from (None: tasks with secrets fail to start).
    pub secrets: Option<Arc<gantry_agent::link::SecretStores>>,
    /// Exec sessions of this server's API waiting for their agents to dial back.
    pub exec: Arc<crate::exec::Rendezvous>,
}

/// Who is calling: the node of a verified certificate (and the certificate's fingerprint),
/// if any.
#[derive(Clone)]
struct Peer {
    node: Option<String>,
    /// Whether the certificate is a server's (another server fetching a copy).
    server: bool,
    fingerprint: Option<String>,
    addr: SocketAddr,
}

/// What the admission check needs: the certificates issued, and the time.
#[derive(Clone)]
struct Gate {
    admission: Arc<Admission>,
    clock: Arc<dyn gantry_control::Clock>,
}

/// Refuses a request whose node certificate is not (or no longer) one issued to its node:
/// replaced by a renewal past its grace, revoked, or never issued (see `revocation`).
async fn admit(
    State(g): State<Gate>,
    Extension(peer): Extension<Peer>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, Refusal> {
    if let (Some(node), Some(fp)) = (&peer.node, &peer.fingerprint) {
        g.admission
            .check(node, fp, g.clock.now_ms())
            .await
            .map_err(|why| refuse(&peer, StatusCode::UNAUTHORIZED, format!("node {node}: {why}")))?;
    }
    Ok(next.run(req).await)
}

type Refusal = (StatusCode, String);

fn refuse(peer: &Peer, status: StatusCode, why: String) -> Refusal {
    tracing::warn!(peer = %peer.addr, node = ?peer.node, "agent request refused: {why}");
    (status, why)
}

/// The calling node, or 401.
fn node(peer: &Peer) -> Result<&str, Refusal> {
    peer.node
        .as_deref()
        .ok_or_else(|| refuse(peer, StatusCode::UNAUTHORIZED, "a node certificate is required".into()))
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// A link operation's error as an HTTP answer: the client maps the status back to the kind.
fn op_err(peer: &Peer, e: LinkError) -> Refusal {
    match e {
        LinkError::Fenced(m) => (StatusCode::CONFLICT, m),
        LinkError::Forbidden(m) => refuse(peer, StatusCode::FORBIDDEN, m),
        LinkError::Unavailable(m) => internal(m),
    }
}

/// An agent's log write to its target's group. A failure of the store or of this server's
/// copy is worth retrying (503); a refused request is not (400).
async fn write_log(s: &LinkServer, t: &gantry_agent::link::LogTarget, op: LogOp) -> Result<(), Refusal> {
    let w = LogWrite::new((&t.account, &t.region), &t.group, s.control.clock.now_ms(), op);
    s.logs.write(w).await.map_err(|e| match e {
        gantry_control::logstore::LogsError::Backend(m) => internal(m),
        e => (StatusCode::BAD_REQUEST, e.to_string()),
    })
}

impl LinkServer {
    pub fn router(self) -> Router {
        let gate = Gate {
            admission: Arc::new(Admission::new(self.control.store.clone())),
            clock: self.control.clock.clone(),
        };
        Router::new()
            .route("/v1/join", post(join))
            .route("/v1/renew", post(renew))
            .route("/v1/register", post(register))
            .route("/v1/heartbeat", post(heartbeat))
            .route("/v1/tasks", get(list_all).post(list))
            .route("/v1/watch", get(watch))
            .route("/v1/task", get(get_task).put(put_task))
            .route("/v1/logs/stream", post(ensure_stream))
            .route("/v1/logs/events", post(put_events))
            .route("/v1/dns", get(dns))
            .route("/v1/usage", post(put_usage))
            .route("/v1/secrets", get(task_secrets))
            .route("/v1/registry-credentials", get(registry_credentials))
            .route("/v1/credentials", get(task_credentials))
            .route("/v1/security", get(security_view))
            .route("/v1/exec-requests", get(exec_requests))
            .route("/v1/exec/{session}", post(exec_stream))
            .route("/v1/seed/{copy}", get(seed))
            .layer(axum::middleware::from_fn_with_state(gate, admit))
            .with_state(Arc::new(self))
    }

    /// TLS with this serving certificate chain; client certificates from the cluster CA are
    /// verified when presented.
    pub fn tls_config(&self, chain_pem: &str, key_pem: &str) -> anyhow::Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(pki::first_der(&self.ca.cert_pem)?))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()?;
        let chain = pem_chain(chain_pem)?;
        let key = PrivateKeyDer::try_from(pem_key(key_pem)?).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }

    /// Serves until the listener fails.
    pub async fn serve(self, listener: tokio::net::TcpListener, tls: rustls::ServerConfig) -> anyhow::Result<()> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let app = self.router();
        loop {
            let (tcp, addr) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(peer = %addr, "agent TLS handshake refused: {e}");
                        return;
                    }
                };
                let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                let node = cert.and_then(|c| pki::node_of_cert(c));
                let fingerprint = cert.map(|c| pki::der_fingerprint(c));
                let peer = Peer {
                    node,
                    server: cert.is_some_and(|c| pki::is_server_cert(c)),
                    fingerprint,
                    addr,
                };
                let svc = TowerToHyperService::new(app.layer(Extension(peer)));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    }
}

pub fn pem_chain(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let mut out = Vec::new();
    for p in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        out.push(CertificateDer::from(p?.contents));
    }
    anyhow::ensure!(!out.is_empty(), "no certificate in PEM");
    Ok(out)
}

pub fn pem_key(pem: &str) -> anyhow::Result<Vec<u8>> {
    let p = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .next()
        .ok_or_else(|| anyhow::anyhow!("no key in PEM"))??;
    Ok(p.contents)
}

type S = State<Arc<LinkServer>>;

/// A whole copy of this server's logs or metrics, for another server re-seeding its own
/// (`crate::seed`): only a server's certificate may ask.
async fn seed(
    State(s): S,
    Extension(peer): Extension<Peer>,
    axum::extract::Path(copy): axum::extract::Path<String>,
) -> Result<Response, Refusal> {
    match (&peer.node, peer.server) {
        (_, true) => {}
        (None, false) => {
            return Err(refuse(
                &peer,
                StatusCode::UNAUTHORIZED,
                "a server certificate is required".into(),
            ))
        }
        (Some(n), false) => {
            return Err(refuse(
                &peer,
                StatusCode::FORBIDDEN,
                format!("node {n} may not fetch a server's copy"),
            ))
        }
    }
    let file = match copy.as_str() {
        "logs" => s.logs.snapshot().await.map_err(internal)?,
        "metrics" => s.metrics.data().snapshot().await.map_err(internal)?,
        _ => return Err(refuse(&peer, StatusCode::NOT_FOUND, format!("no copy named {copy}"))),
    };
    Ok(Response::new(crate::seed::file_body(file)))
}

async fn join(
    State(s): S,
    Extension(peer): Extension<Peer>,
    Json(q): Json<JoinRequest>,
) -> Result<Json<JoinResponse>, Refusal> {
    validate_node_name(&q.node).map_err(|e| refuse(&peer, StatusCode::BAD_REQUEST, e))?;
    let now = s.control.clock.now_ms();
    pki::check_token(s.control.store.as_ref(), &s.ca, &q.token, now)
        .await
        .map_err(|e| refuse(&peer, StatusCode::FORBIDDEN, e))?;
    // A live node's name is taken: joining as it would be impersonating it.
    if s.control
        .node(&q.node)
        .await
        .map_err(internal)?
        .is_some_and(|n| n.live())
    {
        return Err(refuse(
            &peer,
            StatusCode::CONFLICT,
            format!(
                "node {} is registered and alive: a node cannot join under another's name",
                q.node
            ),
        ));
    }
    let cert_pem =
        s.ca.sign_node(&q.csr_pem, &q.node, pki::NODE_CERT_DAYS)
            .map_err(|e| refuse(&peer, StatusCode::BAD_REQUEST, format!("{e:#}")))?;
    record_issued(&s, &q.node, &cert_pem, false).await?;
    tracing::info!(node = %q.node, peer = %peer.addr, "node joined");
    Ok(Json(JoinResponse {
        cert_pem,
        ca_pem: s.ca.cert_pem.clone(),
    }))
}

/// A new certificate for the node presenting its current, valid one (same name, new key).
async fn renew(
    State(s): S,
    Extension(peer): Extension<Peer>,
    Json(q): Json<RenewRequest>,
) -> Result<Json<JoinResponse>, Refusal> {
    let me = node(&peer)?.to_string();
    let cert_pem =
        s.ca.sign_node(&q.csr_pem, &me, pki::NODE_CERT_DAYS)
            .map_err(|e| refuse(&peer, StatusCode::BAD_REQUEST, format!("{e:#}")))?;
    record_issued(&s, &me, &cert_pem, true).await?;
    tracing::info!(node = %me, peer = %peer.addr, "node certificate renewed");
    Ok(Json(JoinResponse {
        cert_pem,
        ca_pem: s.ca.cert_pem.clone(),
    }))
}

/// Records a certificate as the node's (before it is handed out: a store failure fails the
/// join or renewal, never leaves the node with a certificate no server accepts).
async fn record_issued(s: &LinkServer, node: &str, cert_pem: &str, renewal: bool) -> Result<(), Refusal> {
    let fp = pki::fingerprint(cert_pem).map_err(internal)?;
    revocation::issued(s.control.store.as_ref(), node, &fp, s.control.clock.now_ms(), renewal)
        .await
        .map_err(internal)
}

async fn register(
    State(s): S,
    Extension(peer): Extension<Peer>,
    Json(spec): Json<gantry_control::nodes::NodeSpec>,
) -> Result<Response, Refusal> {
    let me = node(&peer)?;
    if spec.name != me {
        return Err(refuse(
            &peer,
            StatusCode::FORBIDDEN,
            format!("node {me} cannot register as {}", spec.name),
        ));
    }
    let rec = s
        .control
        .register_node(spec)
        .await
        .map_err(|e| internal(e.to_string()))?;
    Ok(Json(rec).into_response())
}

async fn heartbeat(State(s): S, Extension(peer): Extension<Peer>, Json(q): Json<Epoch>) -> Result<StatusCode, Refusal> {
    let me = node(&peer)?;
    s.control
        .heartbeat(me, q.epoch)
        .await
        .map_err(|e| op_err(&peer, LinkError::from_control(e)))?;
    Ok(StatusCode::NO_CONTENT)
}

/// A node's re-list, given the records it knows (key to revision).
async fn list(
    State(s): S,
    Extension(peer): Extension<Peer>,
    Json(known): Json<HashMap<String, i64>>,
) -> Result<Json<ops::Assigned>, Refusal> {
    let me = node(&peer)?;
    Ok(Json(
        ops::assigned(&s.control, me, &known)
            .await
            .map_err(|e| op_err(&peer, e))?,
    ))
}

/// A node's re-list knowing no record.
async fn list_all(state: S, peer: Extension<Peer>) -> Result<Json<ops::Assigned>, Refusal> {
    list(state, peer, Json(HashMap::new())).await
}

/// Watch events as JSON lines, and an empty line every few seconds so a dead connection is
/// noticed by the agent.
async fn watch(State(s): S, Extension(peer): Extension<Peer>) -> Result<Response, Refusal> {
    let me = node(&peer)?.to_string();
    let mut w = ops::watch_assigned(&s.control, &me)
        .await
        .map_err(|e| op_err(&peer, e))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(64);
    tokio::spawn(async move {
        // Say the watch is live before the first event.
        if tx.send(Ok(b"\n".to_vec())).await.is_err() {
            return;
        }
        loop {
            let line = tokio::select! {
                ev = w.events.recv() => match ev {
                    Some(Ok(e)) => WatchLine::from_event(&e),
                    _ => return, // the store watch ended: the agent re-lists and watches again
                },
                _ = tokio::time::sleep(KEEPALIVE) => None,
            };
            let mut bytes = line
                .map(|l| serde_json::to_vec(&l).expect("serialises"))
                .unwrap_or_default();
            bytes.push(b'\n');
            if tx.send(Ok(bytes)).await.is_err() {
                return;
            }
        }
    });
    let body = axum::body::Body::from_stream(tokio_stream_from(rx));
    Ok(Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(body)
        .expect("valid response"))
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn get_task(
    State(s): S,
    Extension(peer): Extension<Peer>,
    Query(q): Query<KeyQuery>,
) -> Result<Json<Option<(gantry_control::TaskRecord, i64)>>, Refusal> {
    let me = node(&peer)?;
    Ok(Json(
        ops::get_assigned(&s.control, me, &q.key)
            .await
            .map_err(|e| op_err(&peer, e))?,
    ))
}

async fn put_task(
    State(s): S,
    Extension(peer): Extension<Peer>,
    Json(q): Json<PutTask>,
) -> Result<Json<Written>, Refusal> {
    let me = node(&peer)?;
    // Fencing: a node declared lost writes nothing until it has registered again.
    s.control
        .check_epoch(me, q.epoch)
        .await
        .map_err(|e| op_err(&peer, LinkError::from_control(e)))?;
    Ok(Json(
        ops::put_assigned(&s.control, me, &q.key, &q.record, q.rev)
            .await
            .map_err(|e| op_err(&peer, e))?,
    ))
}

async fn ensure_stream(
    State(s): S,
    Extension(peer): Extension<Peer>,
    Json(q): Json<EnsureStream>,
) -> Result<StatusCode, Refusal> {
    let me = node(&peer)?;
    ops::check_log_target(&s.control, me, &q.target, Some(q.create_group))
        .await
        .map_err(|e| op_err(&peer, e))?;
    let op = LogOp::EnsureStream {
        stream: q.target.stream.clone(),
        create_group: q.create_group,
    };
    write_log(&s, &q.target, op).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn put_events(
    State(s): S,
    Extension(peer): Extension<Peer>,
    Json(q): Json<PutEvents>,
) -> Result<StatusCode, Refusal> {
    let me = node(&peer)?;
    if q.events.len() > 10_000 {
        return Err(refuse(
            &peer,
            StatusCode::PAYLOAD_TOO_LARGE,
            "at most 10000 events per batch".into(),
        ));
    }
    ops::check_log_target(&s.control, me, &q.target, None)
        .await
        .map_err(|e| op_err(&peer, e))?;
    let op = LogOp::Put {
        stream: q.target.stream.clone(),
        events: q.events,
    };
    write_log(&s, &q.target, op).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A usage report of the node's running tasks, published as AWS/ECS metrics.
async fn put_usage(
    State(s): S,
    Extension(peer): Extension<Peer>,
    Json(q): Json<Vec<gantry_agent::link::TaskUsage>>,
) -> Result<StatusCode, Refusal> {
    let node = node(&peer)?;
    ops::publish_usage(&s.control, &s.metrics, node, &q)
        .await
        .map_err(|e| op_err(&peer, e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// A task's container secrets, for the node it is placed on only (mutual TLS names the node).
async fn task_secrets(
    State(s): S,
    Extension(peer): Extension<Peer>,
    Query(q): Query<KeyQuery>,
) -> Result<Json<gantry_agent::link::TaskSecrets>, Refusal> {
    let me = node(&peer)?;
    Ok(Json(
        ops::resolve_task_secrets(&s.control, s.secrets.as_deref(), me, &q.key)
            .await
            .map_err(|e| op_err(&peer, e))?,
    ))
}

/// A task's registry credentials, for the node it is placed on only.
async fn registry_credentials(
    State(s): S,
    Extension(peer): Extension<Peer>,
    Query(q): Query<KeyQuery>,
) -> Result<Json<gantry_agent::link::TaskSecrets>, Refusal> {
    let me = node(&peer)?;
    Ok(Json(
        ops::resolve_registry_credentials(&s.control, s.secrets.as_deref(), me, &q.key)
            .await
            .map_err(|e| op_err(&peer, e))?,
    ))
}

/// A task's role credentials, for the node it is placed on only.
async fn task_credentials(
    State(s): S,
    Extension(peer): Extension<Peer>,
    Query(q): Query<KeyQuery>,
) -> Result<Json<gantry_agent::link::TaskCredentials>, Refusal> {
    let me = node(&peer)?;
    Ok(Json(
        ops::resolve_task_credentials(&s.control, me, &q.key)
            .await
            .map_err(|e| op_err(&peer, e))?,
    ))
}

#[derive(serde::Deserialize)]
struct KnownQuery {
    #[serde(default)]
    known: String,
}

/// The security groups and members the node enforces, long-polled (see
/// `ControlLink::security_view`).
async fn security_view(
    State(s): S,
    Extension(peer): Extension<Peer>,
    Query(q): Query<KnownQuery>,
) -> Result<Json<gantry_agent::link::SecurityView>, Refusal> {
    let name = node(&peer)?;
    Ok(Json(
        ops::security_view(&s.control, name, &q.known)
            .await
            .map_err(|e| op_err(&peer, e))?,
    ))
}

/// The Cloud Map records for the node's resolver, long-polled (see `ControlLink::dns_records`).
async fn dns(
    State(s): S,
    Extension(peer): Extension<Peer>,
    axum::extract::Query(q): axum::extract::Query<After>,
) -> Result<Json<DnsRecords>, Refusal> {
    node(&peer)?;
    let (kvs, revision) = ops::dns_records(&s.control, q.after)
        .await
        .map_err(|e| op_err(&peer, e))?;
    let records = kvs
        .into_iter()
        .map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).into_owned()))
        .collect();
    Ok(Json(DnsRecords { records, revision }))
}

/// The node's exec requests: at once when some are new to it, else when one appears (a
/// watch on its prefix), else after 20 s.
async fn exec_requests(
    State(s): S,
    Extension(peer): Extension<Peer>,
    Query(q): Query<KnownQuery>,
) -> Result<Json<Vec<crate::exec::ExecRequest>>, Refusal> {
    let me = node(&peer)?.to_string();
    let known: Vec<&str> = q.known.split(',').filter(|k| !k.is_empty()).collect();
    let prefix = format!("{}{me}/", crate::exec::REQUESTS);
    let store = s.control.store.clone();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (kvs, rev) = store.list(&prefix).await.map_err(internal)?;
        let reqs: Vec<crate::exec::ExecRequest> = kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect();
        if reqs.iter().any(|r| !known.contains(&r.session.id.as_str())) {
            return Ok(Json(reqs));
        }
        let mut w = store.watch(&prefix, rev).await.map_err(internal)?;
        match tokio::time::timeout_at(deadline, w.events.recv()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(_) => return Err(internal("the store's watch ended")),
            Err(_) => return Ok(Json(reqs)),
        }
    }
}

/// An agent dialing back for an exec session: its request body brings the command's frames,
/// the response body carries the client's.
async fn exec_stream(
    State(s): S,
    Extension(peer): Extension<Peer>,
    axum::extract::Path(session): axum::extract::Path<String>,
    body: axum::body::Body,
) -> Result<Response, Refusal> {
    use futures_util::StreamExt;
    let me = node(&peer)?;
    let waiter = s
        .exec
        .take(&session, me)
        .map_err(|e| refuse(&peer, StatusCode::FORBIDDEN, e))?;
    let (to_agent, to_agent_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let (from_agent_tx, from_agent) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut frames = crate::exec::Frames::default();
        let mut data = body.into_data_stream();
        while let Some(Ok(chunk)) = data.next().await {
            let Ok(got) = frames.push(&chunk) else { return };
            for f in got {
                if from_agent_tx.send(f).await.is_err() {
                    return;
                }
            }
        }
    });
    if waiter.send(crate::exec::Bridge { to_agent, from_agent }).is_err() {
        return Err(internal("the exec session's client went away"));
    }
    let out = futures_util::stream::unfold(to_agent_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|f| (Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(f)), rx))
    });
    Ok(Response::new(axum::body::Body::from_stream(out)))
}
