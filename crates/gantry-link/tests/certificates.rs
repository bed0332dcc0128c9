//! The agent protocol's certificates against a real server on loopback (in-process, SQLite
//! store): a joined node works; a certificate from the cluster CA that has expired is refused
//! at the handshake; a node renews its certificate with a new key and keeps working; a
//! renewal needs a node certificate.

use gantry_agent::link::ControlLink;
use gantry_control::logfeed::Logs;
use gantry_control::logstore::LogStore;
use gantry_control::nodes::NodeSpec;
use gantry_control::{Control, SystemClock};
use gantry_link::client::{join, Identity, RemoteLink};
use gantry_link::pki::{self, Ca};
use gantry_link::server::LinkServer;
use gantry_store::SqliteStore;
use std::sync::Arc;
use std::time::Duration;

async fn server() -> (String, Ca, Arc<dyn gantry_store::Store>) {
    let store: Arc<dyn gantry_store::Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let ca = Ca::load_or_create(store.as_ref()).await.unwrap();
    let link = LinkServer {
        control: Control::new(store.clone(), Arc::new(SystemClock)),
        logs: Arc::new(Logs::local(Arc::new(LogStore::in_memory().unwrap()))),
        metrics: gantry_control::metrics::Metrics::new(
            Arc::new(gantry_control::metrics::MetricData::local(Arc::new(
                gantry_control::metrics::MetricStore::in_memory().unwrap(),
            ))),
            Arc::new(SystemClock),
        ),
        ca: ca.clone(),
        secrets: None,
        exec: Default::default(),
    };
    let (chain, key) = ca.server_cert(&["127.0.0.1".into(), "localhost".into()]).unwrap();
    let tls = link.tls_config(&chain, &key).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(link.serve(listener, tls));
    (url, ca, store)
}

fn spec(name: &str) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        zone: None,
        capacity_provider: None,
        cpu: 1024,
        memory: 2048,
        address: None,
        subnet: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_certificates_are_refused_and_nodes_renew_theirs() {
    let (url, ca, store) = server().await;
    let now = chrono_now_ms();
    let token = pki::create_token(store.as_ref(), &ca, Duration::from_secs(600), now)
        .await
        .unwrap();
    let id = join(std::slice::from_ref(&url), &token, "n1").await.unwrap();
    let link = RemoteLink::new(vec![url.clone()], &id).unwrap();
    link.register(&spec("n1")).await.unwrap();
    assert!(
        !pki::renewal_due(&id.cert_pem, now / 1000).unwrap(),
        "a fresh certificate"
    );
    assert!(
        pki::renewal_due(&id.cert_pem, now / 1000 + 250 * 86_400).unwrap(),
        "two thirds through a year"
    );

    // Signed by the cluster CA for a node, but expired: the handshake refuses it, where the
    // same certificate still valid reaches the server (which answers that n2 is unknown).
    let signed = |days: i64| {
        let (key_pem, csr_pem) = pki::node_csr("n2").unwrap();
        let id = Identity {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: ca.sign_node(&csr_pem, "n2", days).unwrap(),
            key_pem,
        };
        (RemoteLink::new(vec![url.clone()], &id).unwrap(), csr_pem)
    };
    // A certificate the CA signed but never issued through a join or renewal reaches the
    // server, which refuses it.
    let (valid, _) = signed(1);
    let answered = valid.heartbeat().await.unwrap_err().to_string();
    assert!(
        answered.contains("no certificate was issued to this node"),
        "{answered}"
    );
    let (expired, csr_pem) = signed(-1);
    let refused = expired.heartbeat().await.unwrap_err().to_string();
    // No HTTP answer at all: the connection fails (the client sees the server's alert, or
    // only the closed connection when the alert loses the race with the close).
    assert!(
        refused.contains("error sending request") && !refused.contains("not registered"),
        "the handshake refuses an expired certificate: {refused}"
    );

    // Renewal: a new key and certificate, saved, and used from then on.
    let dir = tempfile::tempdir().unwrap();
    let renewed = link.renew(dir.path()).await.unwrap();
    assert_ne!(renewed.key_pem, id.key_pem);
    assert_eq!(renewed.node().unwrap(), "n1");
    let saved = Identity::load(dir.path()).unwrap().unwrap();
    assert_eq!(saved.cert_pem, renewed.cert_pem);
    link.heartbeat().await.unwrap();
    let again = RemoteLink::new(vec![url.clone()], &saved).unwrap();
    again.register(&spec("n1")).await.unwrap();
    // The certificate the renewal replaced stays good for a grace period only.
    let old = RemoteLink::new(vec![url.clone()], &id).unwrap();
    old.register(&spec("n1")).await.unwrap();

    // Revoked: neither certificate is accepted, within a second; a join with a token (once
    // the node is no longer alive) issues a new one.
    assert!(gantry_link::revocation::revoke(store.as_ref(), "n1", chrono_now_ms())
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for l in [&again, &old] {
        let refused = l.heartbeat().await.unwrap_err().to_string();
        assert!(refused.contains("revoked"), "{refused}");
    }

    // Without a node certificate there is nothing to renew.
    let anonymous = without_certificate(&ca);
    let r = anonymous
        .post(format!("{url}/v1/renew"))
        .json(&serde_json::json!({"csr_pem": csr_pem}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A client that trusts the cluster CA and presents no certificate.
fn without_certificate(ca: &Ca) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            pki::first_der(&ca.cert_pem).unwrap(),
        ))
        .unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder().use_preconfigured_tls(tls).build().unwrap()
}
