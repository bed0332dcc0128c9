//! A real registry (Debian's docker-registry) on a loopback port, optionally with htpasswd
//! basic auth, and skopeo to push into it. Killed on drop.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Registry {
    pub addr: String,
    child: Child,
    pub dir: tempfile::TempDir,
    pub creds: Option<(String, String)>,
}

impl Registry {
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        for bin in ["docker-registry", "skopeo", "htpasswd"] {
            assert!(
                gantry_runtime::oci::find_in_path(bin).is_some(),
                "{bin} is not installed: run scripts/install-deps.sh"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("storage").display()
        );
        if let Some((u, p)) = auth {
            let out = Command::new("htpasswd").args(["-Bbn", u, p]).output().unwrap();
            assert!(out.status.success());
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: gantry-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
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
            child,
            dir,
            creds: auth.map(|(u, p)| (u.into(), p.into())),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(&r.addr).is_err() {
            assert!(Instant::now() < deadline, "registry did not come up on {}", r.addr);
            std::thread::sleep(Duration::from_millis(50));
        }
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

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
