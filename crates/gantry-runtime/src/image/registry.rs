//! OCI distribution (registry v2) client: manifests, indexes, blobs, and the auth dance driven
//! by `WWW-Authenticate` (anonymous, Basic, Bearer token).

use super::*;
use base64::Engine as _;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Registries (host[:port]) spoken to over plain HTTP / without TLS verification. Loopback
    /// registries always are.
    pub insecure: Vec<String>,
    /// Credentials by registry host[:port].
    pub credentials: HashMap<String, Credentials>,
    /// How long a registry may stay silent (connect, response, any read) before the pull
    /// fails: a stalled registry must not hang a task start. Default 60 s.
    pub stall_timeout: Option<Duration>,
}

#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{url}: {source}")]
    Transport { url: String, source: Box<ureq::Error> },
    #[error("{url}: registry answered {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("{url}: access denied (HTTP {status}){hint}")]
    Unauthorized {
        url: String,
        status: u16,
        hint: &'static str,
    },
    #[error("{url}: manifest unknown (HTTP 404): the image or tag does not exist")]
    ManifestUnknown { url: String },
    #[error("{url}: unsupported authentication challenge {challenge:?}")]
    Challenge { url: String, challenge: String },
}

struct Client {
    agent: ureq::Agent,
    base: String,
    repository: String,
    creds: Option<Credentials>,
    /// The Authorization header value that worked last (Basic or Bearer).
    auth: Mutex<Option<String>>,
}

/// Parses `Bearer realm="...",service="...",scope="..."` (or `Basic realm=...`).
fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else { break };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(i) => (&q[..i], &q[i + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            }
        };
        params.insert(k, v.to_string());
        rest = next.trim_start_matches(',').trim();
    }
    (scheme.to_ascii_lowercase(), params)
}

impl Client {
    fn new(r: &Reference, cfg: &RegistryConfig) -> Client {
        let insecure = r.is_loopback_registry() || cfg.insecure.iter().any(|h| h == &r.registry);
        let tls = ureq::tls::TlsConfig::builder().disable_verification(insecure).build();
        let stall = cfg.stall_timeout.unwrap_or(Duration::from_secs(60));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(stall.min(Duration::from_secs(15))))
            .timeout_recv_response(Some(stall))
            .timeout_per_read(Some(stall))
            .timeout_global(Some(Duration::from_secs(30 * 60)))
            .tls_config(tls)
            .build()
            .into();
        let host = if r.registry == reference::DEFAULT_REGISTRY {
            "registry-1.docker.io"
        } else {
            &r.registry
        };
        let scheme = if insecure { "http" } else { "https" };
        Client {
            agent,
            base: format!("{scheme}://{host}/v2/{}", r.repository),
            repository: r.repository.clone(),
            creds: cfg.credentials.get(&r.registry).cloned(),
            auth: Mutex::new(None),
        }
    }

    fn basic(&self) -> Option<String> {
        self.creds.as_ref().map(|c| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password))
            )
        })
    }

    fn send(
        &self,
        url: &str,
        accept: &str,
        auth: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, RegistryError> {
        let mut req = self.agent.get(url).header("Accept", accept);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        req.call().map_err(|e| RegistryError::Transport {
            url: url.to_string(),
            source: Box::new(e),
        })
    }

    /// GET with authentication: try what worked before, answer one challenge, try again.
    fn get(&self, url: &str, accept: &str) -> Result<ureq::http::Response<ureq::Body>, RegistryError> {
        let cached = self.auth.lock().expect("auth lock").clone();
        let resp = self.send(url, accept, cached.as_deref())?;
        if resp.status() != 401 {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let (scheme, params) = parse_challenge(&challenge);
        let header = match scheme.as_str() {
            "basic" => self.basic().ok_or(RegistryError::Unauthorized {
                url: url.into(),
                status: 401,
                hint: ": the registry wants credentials and none are configured for it",
            })?,
            "bearer" => format!("Bearer {}", self.token(url, &params)?),
            _ => {
                return Err(RegistryError::Challenge {
                    url: url.into(),
                    challenge,
                })
            }
        };
        let resp = self.send(url, accept, Some(&header))?;
        if resp.status() == 401 || resp.status() == 403 {
            return Err(RegistryError::Unauthorized {
                url: url.into(),
                status: resp.status().as_u16(),
                hint: ": credentials were refused",
            });
        }
        *self.auth.lock().expect("auth lock") = Some(header);
        Ok(resp)
    }

    fn token(&self, url: &str, params: &HashMap<String, String>) -> Result<String, RegistryError> {
        let realm = params.get("realm").ok_or_else(|| RegistryError::Challenge {
            url: url.into(),
            challenge: "Bearer without realm".into(),
        })?;
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let mut req = self.agent.get(realm).query("scope", &scope);
        if let Some(s) = params.get("service") {
            req = req.query("service", s);
        }
        if let Some(b) = self.basic() {
            req = req.header("Authorization", &b);
        }
        let mut resp = req.call().map_err(|e| RegistryError::Transport {
            url: realm.clone(),
            source: Box::new(e),
        })?;
        if !resp.status().is_success() {
            return Err(RegistryError::Unauthorized {
                url: realm.clone(),
                status: resp.status().as_u16(),
                hint: ": the token service refused",
            });
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| RegistryError::Transport {
                url: realm.clone(),
                source: Box::new(e),
            })?;
        let t: Token = serde_json::from_slice(&body).map_err(|e| RegistryError::Status {
            url: realm.clone(),
            status: 200,
            body: format!("bad token response: {e}"),
        })?;
        t.token.or(t.access_token).ok_or_else(|| RegistryError::Status {
            url: realm.clone(),
            status: 200,
            body: "token response has no token".into(),
        })
    }

    fn check(url: &str, resp: &mut ureq::http::Response<ureq::Body>) -> Result<(), RegistryError> {
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(4096)
            .read_to_string()
            .unwrap_or_default();
        if status == 404 && url.contains("/manifests/") {
            return Err(RegistryError::ManifestUnknown { url: url.into() });
        }
        if status == 401 || status == 403 {
            return Err(RegistryError::Unauthorized {
                url: url.into(),
                status,
                hint: "",
            });
        }
        Err(RegistryError::Status {
            url: url.into(),
            status,
            body: body.chars().take(300).collect(),
        })
    }

    /// Fetches a manifest or index; returns (bytes, media type).
    fn manifest(&self, reference: &str) -> Result<(Vec<u8>, String), ImageError> {
        let url = format!("{}/manifests/{reference}", self.base);
        let mut resp = self.get(&url, MANIFEST_ACCEPT)?;
        Self::check(&url, &mut resp)?;
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST_BYTES)
            .read_to_vec()
            .map_err(|e| RegistryError::Transport {
                url: url.clone(),
                source: Box::new(e),
            })?;
        Ok((body, ct))
    }

    fn blob_reader(&self, d: &Digest, size: u64) -> Result<impl Read + use<>, ImageError> {
        let url = format!("{}/blobs/{d}", self.base);
        let mut resp = self.get(&url, "*/*")?;
        Self::check(&url, &mut resp)?;
        Ok(resp
            .into_body()
            .into_with_config()
            .limit(size.saturating_add(1))
            .reader())
    }
}

/// Reads through to a progress bar.
struct ProgressReader<R> {
    inner: R,
    bar: Option<indicatif::ProgressBar>,
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(b) = &self.bar {
            b.inc(n as u64);
        }
        Ok(n)
    }
}

impl ImageStore {
    /// Pulls an image from its registry into the store and names it.
    pub fn pull(&self, name: &str, progress: bool) -> Result<ImageRecord, ImageError> {
        self.pull_as(name, progress, None)
    }

    /// Pulls with these credentials for the image's registry (a task's repositoryCredentials)
    /// instead of the node's.
    pub fn pull_as(&self, name: &str, progress: bool, creds: Option<Credentials>) -> Result<ImageRecord, ImageError> {
        let r = Reference::parse(name)?;
        let mut client = Client::new(&r, &self.registry);
        if creds.is_some() {
            client.creds = creds;
        }
        let (mut bytes, mut ct) = client.manifest(&r.reference_for_pull())?;
        let mut mdigest = Digest::of_bytes(&bytes);
        if let Some(want) = &r.digest {
            if *want != mdigest {
                return Err(ImageError::DigestMismatch {
                    digest: want.clone(),
                    actual: mdigest,
                });
            }
        }
        let media = |bytes: &[u8], ct: &str| -> String {
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct M {
                media_type: Option<String>,
                manifests: Option<serde_json::Value>,
            }
            let m: Option<M> = serde_json::from_slice(bytes).ok();
            match m {
                Some(M {
                    media_type: Some(t), ..
                }) => t,
                Some(M { manifests: Some(_), .. }) => MEDIA_OCI_INDEX.into(),
                _ => ct.split(';').next().unwrap_or("").trim().to_string(),
            }
        };
        let t = media(&bytes, &ct);
        if t == MEDIA_OCI_INDEX || t == MEDIA_DOCKER_LIST {
            let index: Index = serde_json::from_slice(&bytes).map_err(|e| ImageError::Malformed {
                what: format!("index of {r}"),
                reason: e.to_string(),
            })?;
            let chosen = index.select_linux_amd64().ok_or_else(|| ImageError::Malformed {
                what: format!("index of {r}"),
                reason: "no linux/amd64 image in the index".into(),
            })?;
            let want = chosen.digest.clone();
            self.put_blob_bytes(&bytes)?;
            (bytes, ct) = client.manifest(want.as_str())?;
            mdigest = Digest::of_bytes(&bytes);
            if mdigest != want {
                return Err(ImageError::DigestMismatch {
                    digest: want,
                    actual: mdigest,
                });
            }
        }
        let t = media(&bytes, &ct);
        if t != MEDIA_OCI_MANIFEST && t != MEDIA_DOCKER_MANIFEST {
            return Err(ImageError::Malformed {
                what: format!("manifest of {r}"),
                reason: format!("unsupported media type {t:?}"),
            });
        }
        let manifest = parse_manifest(&bytes, &format!("manifest of {r}"))?;
        self.put_blob_bytes(&bytes)?;

        let multi =
            (progress && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(indicatif::MultiProgress::new);
        let mut wanted = vec![&manifest.config];
        wanted.extend(manifest.layers.iter());
        let results: Vec<Result<(), ImageError>> = std::thread::scope(|s| {
            let handles: Vec<_> = wanted
                .iter()
                .map(|desc| {
                    let bar = multi.as_ref().map(|m| {
                        let b = m.add(indicatif::ProgressBar::new(desc.size));
                        b.set_style(
                            indicatif::ProgressStyle::with_template("{msg:>19} {bar:30} {bytes}/{total_bytes}")
                                .expect("static template"),
                        );
                        b.set_message(desc.digest.hex()[..12].to_string());
                        b
                    });
                    let client = &client;
                    s.spawn(move || self.fetch_blob(client, desc, bar))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("pull thread panicked"))
                .collect()
        });
        for res in results {
            res?;
        }
        self.commit_image(&r.to_string(), &mdigest, &manifest)
    }

    /// Downloads one blob unless it is stored; a per-blob lock makes concurrent pulls of the
    /// same blob (in this process or another) wait for one download instead of racing.
    fn fetch_blob(
        &self,
        client: &Client,
        desc: &Descriptor,
        bar: Option<indicatif::ProgressBar>,
    ) -> Result<(), ImageError> {
        if self.has_blob(&desc.digest) {
            if let Some(b) = bar {
                b.finish_with_message("exists");
            }
            return Ok(());
        }
        let _lock = self.lock(&format!("blob-{}", desc.digest.hex()))?;
        if !self.has_blob(&desc.digest) {
            let reader = client.blob_reader(&desc.digest, desc.size)?;
            let reader = ProgressReader {
                inner: reader,
                bar: bar.clone(),
            };
            self.put_blob(reader, Some(&desc.digest), Some(desc.size))?;
        }
        if let Some(b) = bar {
            b.finish();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!((s.as_str(), p["realm"].as_str()), ("basic", "Registry Realm"));
    }
}
