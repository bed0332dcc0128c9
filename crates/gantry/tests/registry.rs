//! Pulling from a real registry: OCI and Docker manifests, gzip and zstd layers, indexes,
//! digests, anonymous and basic auth, verification, concurrent pulls; then running the image.

mod common;

use common::registry::{Auth, Registry};
use common::*;
use gantry_runtime::bundle::ContainerSpec;
use gantry_runtime::image::registry::{Credentials, RegistryConfig};
use gantry_runtime::image::{ImageError, ImageStore, ImageStoreConfig, UnpackLimits};
use std::collections::HashMap;

fn store(dir: &std::path::Path, creds: Option<(&str, &str, &str)>) -> ImageStore {
    let mut credentials = HashMap::new();
    if let Some((host, u, p)) = creds {
        credentials.insert(
            host.to_string(),
            Credentials {
                username: u.into(),
                password: p.into(),
            },
        );
    }
    ImageStore::open(ImageStoreConfig {
        root: dir.to_path_buf(),
        limits: UnpackLimits::default(),
        registry: RegistryConfig {
            insecure: vec![],
            credentials,
            stall_timeout: None,
        },
    })
    .unwrap()
}

fn hello(t: &TestNode, image: &gantry_runtime::image::ImageRecord) -> String {
    let (e, out, err) = t.run(
        image,
        ContainerSpec {
            hostname: "r".into(),
            ..Default::default()
        },
    );
    assert_eq!(e.exit_code, 0, "{err}");
    out
}

#[test]
fn anonymous_pulls_of_every_manifest_and_layer_format_run() {
    let t = TestNode::new();
    let reg = Registry::start(None);
    let layout = build_image(&t.dir.path().join("src"), &[]);
    let indexed = build_image(&t.dir.path().join("src-index"), &["--index"]);
    reg.push(&layout, "team/oci:gzip", &["--format", "oci"]);
    reg.push(&layout, "team/docker:v2s2", &["--format", "v2s2"]);
    reg.push(
        &layout,
        "team/oci:zstd",
        &["--format", "oci", "--dest-compress-format", "zstd"],
    );
    reg.push(&indexed, "team/multi:latest", &["--all"]);
    for tag in [
        "team/oci:gzip",
        "team/docker:v2s2",
        "team/oci:zstd",
        "team/multi:latest",
    ] {
        let name = format!("{}/{tag}", reg.addr);
        let rec = t
            .node
            .images()
            .pull(&name, false)
            .unwrap_or_else(|e| panic!("pull {name}: {e}"));
        assert_eq!(rec.name, name);
        assert_eq!(
            hello(&t, &rec),
            "hello from busybox\n",
            "{tag}: the linux/amd64 image runs"
        );
    }
    // By digest.
    let rec = t.node.images().get(&format!("{}/team/oci:gzip", reg.addr)).unwrap();
    let by_digest = format!("{}/team/oci@{}", reg.addr, rec.manifest);
    let pulled = t.node.images().pull(&by_digest, false).unwrap();
    assert_eq!(pulled.manifest, rec.manifest);
    // Unknown tags are a clear error.
    let err = t
        .node
        .images()
        .pull(&format!("{}/team/oci:nope", reg.addr), false)
        .unwrap_err();
    assert!(err.to_string().contains("manifest unknown"), "{err}");
}

#[test]
fn basic_auth_is_driven_by_the_challenge() {
    let t = TestNode::new();
    let reg = Registry::start(Some(("alice", "s3cret")));
    let layout = build_image(&t.dir.path().join("src"), &[]);
    reg.push(&layout, "private/app:v1", &[]);
    let name = format!("{}/private/app:v1", reg.addr);

    let anon = store(&t.dir.path().join("anon"), None);
    let err = anon.pull(&name, false).unwrap_err();
    assert!(err.to_string().contains("none are configured"), "{err}");
    let wrong = store(&t.dir.path().join("wrong"), Some((&reg.addr, "alice", "nope")));
    let err = wrong.pull(&name, false).unwrap_err();
    assert!(err.to_string().contains("credentials were refused"), "{err}");
    assert!(wrong.list().unwrap().is_empty());

    let rec = t.node.images().pull(&name, false).err();
    assert!(rec.is_some(), "the test node has no credentials");
    let good = store(&t.dir.path().join("good"), Some((&reg.addr, "alice", "s3cret")));
    let rec = good.pull(&name, false).unwrap();
    assert_eq!(rec.layers.len(), 2);

    // The CLI takes credentials too.
    let data = t.dir.path().join("cli");
    let out = std::process::Command::new(gantry_binary())
        .arg("--data-dir")
        .arg(&data)
        .arg("--registry-auth")
        .arg(format!("{}=alice:s3cret", reg.addr))
        .args(["image", "pull", &name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&name));
}

#[test]
fn tampered_blobs_are_rejected_and_not_stored() {
    let t = TestNode::new();
    let reg = Registry::start(None);
    let layout = build_image(&t.dir.path().join("src"), &[]);
    reg.push(&layout, "team/app:v1", &["--format", "oci"]);
    // Find the top layer's digest from the layout's manifest and corrupt it in the registry.
    let probe = store(&t.dir.path().join("probe"), None);
    let rec = probe.pull(&format!("{}/team/app:v1", reg.addr), false).unwrap();
    let top = rec.layers.last().unwrap();
    let data = reg.blob_data_path(top.hex());
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let fresh = store(&t.dir.path().join("fresh"), None);
    let err = fresh.pull(&format!("{}/team/app:v1", reg.addr), false).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("failed verification"), "{err}");
    assert!(!fresh.has_blob(top), "a corrupt blob is never stored");
    assert!(fresh.list().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(fresh.root().join("tmp")).unwrap().count(),
        0,
        "partial download removed"
    );
}

#[test]
fn concurrent_pulls_of_one_image_all_succeed_and_store_each_blob_once() {
    let t = TestNode::new();
    let reg = Registry::start(None);
    let layout = build_image(&t.dir.path().join("src"), &[]);
    reg.push(&layout, "team/app:v1", &["--format", "oci"]);
    let name = format!("{}/team/app:v1", reg.addr);
    let s = store(&t.dir.path().join("shared"), None);
    let records: Vec<_> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4).map(|_| sc.spawn(|| s.pull(&name, false).unwrap())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(records.windows(2).all(|w| w[0].manifest == w[1].manifest));
    let blobs = std::fs::read_dir(s.root().join("blobs/sha256")).unwrap().count();
    assert_eq!(blobs, 4, "manifest, config and two layers, each once");
    assert_eq!(std::fs::read_dir(s.root().join("layers")).unwrap().count(), 2);
}

#[test]
fn bearer_token_auth_gets_a_token_from_the_realm() {
    let t = TestNode::new();
    let reg = Registry::start_with(Auth::Token("bob", "hunter2"));
    let layout = build_image(&t.dir.path().join("src"), &[]);
    reg.push(&layout, "private/tok:v1", &[]);
    let name = format!("{}/private/tok:v1", reg.addr);

    let anon = store(&t.dir.path().join("anon"), None);
    let err = anon.pull(&name, false).unwrap_err();
    assert!(err.to_string().contains("token service refused"), "{err}");
    let good = store(&t.dir.path().join("good"), Some((&reg.addr, "bob", "hunter2")));
    let rec = good.pull(&name, false).unwrap();
    assert_eq!(rec.layers.len(), 2);
}

#[test]
fn a_stalled_registry_fails_the_pull_instead_of_hanging() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            h.lock().unwrap().push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let s = ImageStore::open(ImageStoreConfig {
        root: dir.path().to_path_buf(),
        limits: UnpackLimits::default(),
        registry: RegistryConfig {
            stall_timeout: Some(std::time::Duration::from_secs(1)),
            ..Default::default()
        },
    })
    .unwrap();
    let t0 = std::time::Instant::now();
    let err = s.pull(&format!("{addr}/stalled/app:1"), false).unwrap_err();
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    assert!(
        err.to_string().to_lowercase().contains("timeout") || err.to_string().to_lowercase().contains("timed out"),
        "{err}"
    );
}
