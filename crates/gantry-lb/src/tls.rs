//! TLS termination for HTTPS and TLS listeners (rustls): the listener's ACM certificate and
//! key, the protocol versions its security policy allows (TLS 1.2 and 1.3; 1.3 only for the
//! TLS13-1-3 policies), and ALPN (h2 and http/1.1 for HTTPS as `routing.http2.enabled` says;
//! the ALPN policy for TLS listeners).

use gantry_control::elb::ListenerView;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// The server configuration a listener's view describes, or None for plain listeners (and
/// for a secure one whose certificate is gone or unreadable: it then refuses handshakes).
pub fn server_config(v: &ListenerView, http2: bool) -> Option<Arc<rustls::ServerConfig>> {
    let secure = matches!(v.listener.protocol.as_str(), "HTTPS" | "TLS");
    let cert = v.certificates.first().filter(|_| secure)?;
    let mut chain = vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).ok()?];
    chain.extend(CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes()).filter_map(Result::ok));
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).ok()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls13_only = v
        .listener
        .ssl_policy
        .as_deref()
        .is_some_and(|p| p.contains("TLS13-1-3"));
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .ok()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| tracing::warn!(error = %e, listener = %v.listener.listener_arn, "unusable certificate"))
        .ok()?;
    config.alpn_protocols = alpn(v, http2);
    Some(Arc::new(config))
}

fn alpn(v: &ListenerView, http2: bool) -> Vec<Vec<u8>> {
    let (h2, h1) = (b"h2".to_vec(), b"http/1.1".to_vec());
    if v.listener.protocol == "HTTPS" {
        return if http2 { vec![h2, h1] } else { vec![h1] };
    }
    match v.listener.alpn_policy.first().map(String::as_str) {
        Some("HTTP1Only") => vec![h1],
        Some("HTTP2Only") => vec![h2],
        Some("HTTP2Optional") => vec![h1, h2],
        Some("HTTP2Preferred") => vec![h2, h1],
        _ => vec![],
    }
}
