//! The agent end: joining with a token, and `RemoteLink`, the ControlLink over mutual TLS to
//! any of the servers (the next one is tried when one cannot be reached).

use crate::pki::{self, Token};
use crate::server::{pem_chain, pem_key};
use crate::wire::*;
use anyhow::{anyhow, Context, Result};
use async_trait::async_trait;
use futures_util::StreamExt;
use gantry_agent::link::{Assigned, ControlLink, LinkError, LinkResult, LogTarget, Written};
use gantry_control::nodes::{NodeRecord, NodeSpec};
use gantry_control::TaskRecord;
use gantry_store::Watch;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a node keeps after joining (in its data dir): the CA, its certificate and its key.
pub struct Identity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Identity {
    const FILES: [&'static str; 3] = ["ca.pem", "node.pem", "node-key.pem"];

    pub fn load(dir: &Path) -> Result<Option<Identity>> {
        if !dir.join(Self::FILES[1]).exists() {
            return Ok(None);
        }
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).with_context(|| format!("reading {f}"));
        Ok(Some(Identity {
            ca_pem: read(Self::FILES[0])?,
            cert_pem: read(Self::FILES[1])?,
            key_pem: read(Self::FILES[2])?,
        }))
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir)?;
        for (f, v) in Self::FILES.iter().zip([&self.ca_pem, &self.cert_pem, &self.key_pem]) {
            let tmp = dir.join(format!("{f}.tmp"));
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create(true).truncate(true).mode(0o600);
            std::io::Write::write_all(&mut o.open(&tmp)?, v.as_bytes())?;
            std::fs::rename(&tmp, dir.join(f))?;
        }
        Ok(())
    }

    /// The node the certificate names.
    pub fn node(&self) -> Result<String> {
        pki::node_of_cert(&pki::first_der(&self.cert_pem)?).ok_or_else(|| anyhow!("not a node certificate"))
    }
}

/// Trusts a server whose chain contains the CA with this fingerprint (the token's), and is
/// valid under it: what a joining agent can check before it has the CA.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use sha2::Digest;
        let ca = intermediates
            .iter()
            .find(|c| {
                let d = sha2::Sha256::digest(c.as_ref());
                d.iter().map(|b| format!("{b:02x}")).collect::<String>() == self.fingerprint
            })
            .ok_or_else(|| rustls::Error::General("the server's CA is not the one the join token names".into()))?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

/// An error with its causes (a TLS refusal is several levels down a request error).
fn causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn http(tls: rustls::ClientConfig) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .build()?)
}

/// Joins the cluster as `node` with a token: sends a CSR, gets the node's certificate.
pub async fn join(servers: &[String], token: &str, node: &str) -> Result<Identity> {
    let t = Token::parse(token)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            fingerprint: t.ca_fingerprint.clone(),
        }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let client = http(tls)?;
    let (key_pem, csr_pem) = pki::node_csr(node)?;
    let req = JoinRequest {
        token: token.trim().to_string(),
        node: node.to_string(),
        csr_pem,
    };
    let mut last = anyhow!("no server given");
    for s in servers {
        match client.post(format!("{s}/v1/join")).json(&req).send().await {
            Ok(r) if r.status().is_success() => {
                let j: JoinResponse = r.json().await?;
                anyhow::ensure!(
                    pki::fingerprint(&j.ca_pem)? == t.ca_fingerprint,
                    "the server answered with another CA than the join token names"
                );
                return Ok(Identity {
                    ca_pem: j.ca_pem,
                    cert_pem: j.cert_pem,
                    key_pem,
                });
            }
            Ok(r) => {
                let status = r.status();
                return Err(anyhow!(
                    "{s} refused the join ({status}): {}",
                    r.text().await.unwrap_or_default()
                ));
            }
            Err(e) => last = anyhow!("{s}: {}", causes(&e)),
        }
    }
    Err(last)
}

/// The ControlLink over the network.
pub struct RemoteLink {
    servers: Vec<String>,
    current: AtomicUsize,
    /// HTTP/2 with this node's certificate; replaced when the certificate is renewed.
    client: std::sync::RwLock<reqwest::Client>,
    node: String,
    epoch: AtomicU64,
}

impl RemoteLink {
    pub fn new(servers: Vec<String>, id: &Identity) -> Result<RemoteLink> {
        anyhow::ensure!(!servers.is_empty(), "at least one server is needed");
        Ok(RemoteLink {
            servers,
            current: AtomicUsize::new(0),
            client: std::sync::RwLock::new(Self::client_for(id)?),
            node: id.node()?,
            epoch: AtomicU64::new(0),
        })
    }

    /// An HTTP client that trusts the cluster CA and presents the node's certificate.
    pub(crate) fn client_for(id: &Identity) -> Result<reqwest::Client> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(pki::first_der(&id.ca_pem)?))?;
        let key = PrivateKeyDer::try_from(pem_key(&id.key_pem)?).map_err(|e| anyhow!("{e}"))?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(pem_chain(&id.cert_pem)?, key)?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        http(tls)
    }

    fn client(&self) -> reqwest::Client {
        self.client.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// This node's exec requests (see `exec`): answers at once when there are some it does
    /// not know (`known`: the session ids it already serves), else within about 20 s.
    pub async fn exec_requests(&self, known: &[String]) -> LinkResult<Vec<crate::exec::ExecRequest>> {
        let known = known.join(",");
        let r = self
            .send(|s| {
                self.client()
                    .get(format!("{s}/v1/exec-requests"))
                    .query(&[("known", known.as_str())])
                    .timeout(Duration::from_secs(40))
            })
            .await?;
        r.json().await.map_err(LinkError::unavailable)
    }

    /// Dials `server` back for exec session `session`: `out` (frames of the command's output
    /// and exit) is the request's body; the response's body brings the client's frames.
    pub async fn exec_stream(
        &self,
        server: &str,
        session: &str,
        out: tokio::sync::mpsc::Receiver<Vec<u8>>,
    ) -> LinkResult<impl futures_util::Stream<Item = reqwest::Result<axum::body::Bytes>>> {
        let body = futures_util::stream::unfold(out, |mut rx| async move {
            rx.recv().await.map(|f| (Ok::<_, std::io::Error>(f), rx))
        });
        let r = self
            .client()
            .post(format!("{}/v1/exec/{session}", server.trim_end_matches('/')))
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(|e| LinkError::unavailable(format!("{server}: {}", causes(&e))))?;
        if !r.status().is_success() {
            let status = r.status();
            return Err(LinkError::Forbidden(format!(
                "{status}: {}",
                r.text().await.unwrap_or_default()
            )));
        }
        Ok(r.bytes_stream())
    }

    /// Renews the node's certificate with a new key, saves the identity in `dir` and uses it
    /// from now on. The old certificate stays valid until it expires.
    pub async fn renew(&self, dir: &Path) -> Result<Identity> {
        let (key_pem, csr_pem) = pki::node_csr(&self.node)?;
        let r = self
            .send(|s| {
                self.client()
                    .post(format!("{s}/v1/renew"))
                    .timeout(REQUEST_TIMEOUT)
                    .json(&RenewRequest {
                        csr_pem: csr_pem.clone(),
                    })
            })
            .await
            .map_err(|e| anyhow!("renewing the node certificate: {e}"))?;
        let j: JoinResponse = r.json().await?;
        let id = Identity {
            ca_pem: j.ca_pem,
            cert_pem: j.cert_pem,
            key_pem,
        };
        anyhow::ensure!(id.node()? == self.node, "the renewed certificate names another node");
        let client = Self::client_for(&id)?;
        id.save(dir)?;
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = client;
        Ok(id)
    }

    /// Sends to the current server, moving on to the next ones while a server cannot be
    /// reached. Non-2xx answers are errors carrying the server's message.
    async fn send(&self, build: impl Fn(&str) -> reqwest::RequestBuilder) -> LinkResult<reqwest::Response> {
        let n = self.servers.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..n {
            let idx = (start + i) % n;
            match build(&self.servers[idx]).send().await {
                Ok(r) => {
                    self.current.store(idx, Ordering::Relaxed);
                    if r.status().is_success() {
                        return Ok(r);
                    }
                    let status = r.status();
                    let m = format!("{status}: {}", r.text().await.unwrap_or_default());
                    // The server's kinds (see server::op_err), back from their statuses.
                    return Err(match status.as_u16() {
                        409 => LinkError::Fenced(m),
                        401 | 403 => LinkError::Forbidden(m),
                        _ => LinkError::Unavailable(m),
                    });
                }
                Err(e) if e.is_connect() || e.is_timeout() => last = format!("{}: {}", self.servers[idx], causes(&e)),
                Err(e) => return Err(LinkError::unavailable(format!("{}: {}", self.servers[idx], causes(&e)))),
            }
        }
        Err(LinkError::Unavailable(format!("no server reachable ({last})")))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &impl Serialize,
    ) -> LinkResult<T> {
        let r = self
            .send(|s| {
                self.client()
                    .request(method.clone(), format!("{s}{path}"))
                    .timeout(REQUEST_TIMEOUT)
                    .json(body)
            })
            .await?;
        r.json().await.map_err(LinkError::unavailable)
    }

    async fn call_empty(&self, path: &str, body: &impl Serialize) -> LinkResult<()> {
        self.send(|s| {
            self.client()
                .post(format!("{s}{path}"))
                .timeout(REQUEST_TIMEOUT)
                .json(body)
        })
        .await
        .map(|_| ())
    }
}

#[async_trait]
impl ControlLink for RemoteLink {
    fn node(&self) -> &str {
        &self.node
    }

    async fn register(&self, spec: &NodeSpec) -> LinkResult<NodeRecord> {
        let rec: NodeRecord = self.call(reqwest::Method::POST, "/v1/register", spec).await?;
        self.epoch.store(rec.epoch, Ordering::SeqCst);
        Ok(rec)
    }

    async fn heartbeat(&self) -> LinkResult<()> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        self.call_empty("/v1/heartbeat", &Epoch { epoch }).await
    }

    async fn list_assigned(&self, known: &HashMap<String, i64>) -> LinkResult<Assigned> {
        let r = self
            .send(|s| {
                let url = format!("{s}/v1/tasks");
                self.client().post(url).json(known).timeout(REQUEST_TIMEOUT)
            })
            .await?;
        r.json().await.map_err(LinkError::unavailable)
    }

    async fn dns_records(&self, after: i64) -> LinkResult<(Vec<gantry_store::KeyValue>, i64)> {
        let wait = gantry_agent::link::DNS_POLL + REQUEST_TIMEOUT;
        let r = self
            .send(|s| {
                self.client()
                    .get(format!("{s}/v1/dns"))
                    .query(&[("after", after)])
                    .timeout(wait)
            })
            .await?;
        let d: DnsRecords = r.json().await.map_err(LinkError::unavailable)?;
        let kvs = d
            .records
            .into_iter()
            .map(|(key, value)| gantry_store::KeyValue {
                key,
                value: value.into_bytes(),
                create_revision: 0,
                mod_revision: d.revision,
                version: 0,
            })
            .collect();
        Ok((kvs, d.revision))
    }

    async fn watch_assigned(&self) -> LinkResult<Watch> {
        let r = self.send(|s| self.client().get(format!("{s}/v1/watch"))).await?;
        let mut body = r.bytes_stream();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::new();
            loop {
                let chunk = match tokio::time::timeout(KEEPALIVE * 3, body.next()).await {
                    Ok(Some(Ok(c))) => c,
                    _ => return, // ended, failed or silent: the agent re-lists and watches again
                };
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    if line.len() <= 1 {
                        continue; // keepalive
                    }
                    let Ok(w) = serde_json::from_slice::<WatchLine>(&line) else {
                        return;
                    };
                    if tx.send(Ok(w.into_event())).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Watch { events: rx })
    }

    async fn get_task(&self, key: &str) -> LinkResult<Option<(TaskRecord, i64)>> {
        let r = self
            .send(|s| {
                self.client()
                    .get(format!("{s}/v1/task"))
                    .query(&[("key", key)])
                    .timeout(REQUEST_TIMEOUT)
            })
            .await?;
        r.json().await.map_err(LinkError::unavailable)
    }

    async fn put_task(&self, key: &str, rec: &TaskRecord, rev: i64) -> LinkResult<Written> {
        let body = PutTask {
            key: key.to_string(),
            record: rec.clone(),
            rev,
            epoch: self.epoch.load(Ordering::SeqCst),
        };
        self.call(reqwest::Method::PUT, "/v1/task", &body).await
    }

    async fn ensure_log_stream(&self, target: &LogTarget, create_group: bool) -> LinkResult<()> {
        let body = EnsureStream {
            target: target.clone(),
            create_group,
        };
        self.call_empty("/v1/logs/stream", &body).await
    }

    async fn put_usage(&self, usage: &[gantry_agent::link::TaskUsage]) -> LinkResult<()> {
        self.call_empty("/v1/usage", &usage).await
    }

    async fn task_secrets(&self, key: &str) -> LinkResult<gantry_agent::link::TaskSecrets> {
        let r = self
            .send(|s| {
                self.client()
                    .get(format!("{s}/v1/secrets"))
                    .query(&[("key", key)])
                    .timeout(REQUEST_TIMEOUT)
            })
            .await?;
        r.json().await.map_err(LinkError::unavailable)
    }

    async fn registry_credentials(&self, key: &str) -> LinkResult<gantry_agent::link::TaskSecrets> {
        let r = self
            .send(|s| {
                self.client()
                    .get(format!("{s}/v1/registry-credentials"))
                    .query(&[("key", key)])
                    .timeout(REQUEST_TIMEOUT)
            })
            .await?;
        r.json().await.map_err(LinkError::unavailable)
    }

    async fn security_view(&self, known: &str) -> LinkResult<gantry_agent::link::SecurityView> {
        let r = self
            .send(|s| {
                self.client()
                    .get(format!("{s}/v1/security"))
                    .query(&[("known", known)])
                    .timeout(gantry_agent::link::DNS_POLL + REQUEST_TIMEOUT)
            })
            .await?;
        r.json().await.map_err(LinkError::unavailable)
    }

    async fn task_credentials(&self, key: &str) -> LinkResult<gantry_agent::link::TaskCredentials> {
        let r = self
            .send(|s| {
                self.client()
                    .get(format!("{s}/v1/credentials"))
                    .query(&[("key", key)])
                    .timeout(REQUEST_TIMEOUT)
            })
            .await?;
        r.json().await.map_err(LinkError::unavailable)
    }

    async fn put_log_events(&self, target: &LogTarget, events: &[(i64, String)]) -> LinkResult<()> {
        let body = PutEvents {
            target: target.clone(),
            events: events.to_vec(),
        };
        self.call_empty("/v1/logs/events", &body).await
    }
}
