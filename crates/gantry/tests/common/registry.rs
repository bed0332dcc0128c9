//! A real registry (Debian's docker-registry) on a loopback port, optionally with htpasswd
//! basic auth, and skopeo to push into it. Killed on drop.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub enum Auth<'a> {
    None,
    /// htpasswd basic auth.
    Basic(&'a str, &'a str),
    /// Bearer tokens from a token service (tests/fixtures/token_server.py) that checks these
    /// basic credentials.
    Token(&'a str, &'a str),
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(addr: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not come up on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed when dropped, so a failing test never leaves it running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Registry {
    pub addr: String,
    _child: KillOnDrop,
    _token_server: Option<KillOnDrop>,
    pub dir: tempfile::TempDir,
    pub creds: Option<(String, String)>,
}

impl Registry {
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        match auth {
            Some((u, p)) => Self::start_with(Auth::Basic(u, p)),
            None => Self::start_with(Auth::None),
        }
    }

    pub fn start_with(auth: Auth) -> Registry {
        for bin in ["docker-registry", "skopeo", "htpasswd", "openssl", "python3"] {
            assert!(
                gantry_runtime::oci::find_in_path(bin).is_some(),
                "{bin} is not installed: run scripts/install-deps.sh"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("storage").display()
        );
        let mut token_server = None;
        let mut creds = None;
        match auth {
            Auth::None => {}
            Auth::Basic(u, p) => {
                let out = Command::new("htpasswd").args(["-Bbn", u, p]).output().unwrap();
                assert!(out.status.success());
                std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
                cfg.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: gantry-test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                ));
                creds = Some((u.to_string(), p.to_string()));
            }
            Auth::Token(u, p) => {
                let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
                let st = Command::new("openssl")
                    .args([
                        "req",
                        "-x509",
                        "-newkey",
                        "rsa:2048",
                        "-nodes",
                        "-days",
                        "1",
                        "-subj",
                        "/CN=gantry-test-token",
                    ])
                    .arg("-keyout")
                    .arg(&key)
                    .arg("-out")
                    .arg(&cert)
                    .stderr(Stdio::null())
                    .status()
                    .unwrap();
                assert!(st.success(), "openssl req failed");
                let tport = free_port();
                let child = Command::new("python3")
                    .arg(crate::common::repo_root().join("tests/fixtures/token_server.py"))
                    .args([
                        "--port",
                        &tport.to_string(),
                        "--user",
                        u,
                        "--password",
                        p,
                        "--issuer",
                        "gantry-test-issuer",
                    ])
                    .arg("--key")
                    .arg(&key)
                    .arg("--cert")
                    .arg(&cert)
                    .spawn()
                    .expect("starting the token server");
                token_server = Some(KillOnDrop(child));
                wait_listening(&format!("127.0.0.1:{tport}"), "token server");
                cfg.push_str(&format!(
                    "auth:\n  token:\n    realm: http://127.0.0.1:{tport}/token\n    service: gantry-test-registry\n    issuer: gantry-test-issuer\n    rootcertbundle: {}\n",
                    cert.display()
                ));
                creds = Some((u.to_string(), p.to_string()));
            }
        }
        std::fs::write(dir.path().join("config.yml"), cfg).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting docker-registry");
        let r = Registry {
            addr,
            _child: KillOnDrop(child),
            _token_server: token_server,
            dir,
            creds,
        };
        wait_listening(&r.addr, "registry");
        r
    }

    /// Pushes an OCI layout to `repo:tag` with skopeo; extra args select format/compression.
    pub fn push(&self, layout: &Path, repo_tag: &str, extra: &[&str]) {
        let mut c = Command::new("skopeo");
        c.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some((u, p)) = &self.creds {
            c.arg(format!("--dest-creds={u}:{p}"));
        }
        c.args(extra)
            .arg(format!("oci:{}", layout.display()))
            .arg(format!("docker://{}/{repo_tag}", self.addr));
        let out = c.output().expect("running skopeo");
        assert!(
            out.status.success(),
            "skopeo push failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Files of blobs stored by the registry, to tamper with.
    pub fn blob_data_path(&self, digest_hex: &str) -> std::path::PathBuf {
        self.dir.path().join(format!(
            "storage/docker/registry/v2/blobs/sha256/{}/{digest_hex}/data",
            &digest_hex[..2]
        ))
    }
}
