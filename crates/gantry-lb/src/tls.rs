//! TLS termination for HTTPS and TLS listeners (rustls): the listener's ACM certificates and
//! keys (the one whose names match the client's SNI, else the default), the protocol versions
//! its security policy allows (TLS 1.2 and 1.3; 1.3 only for the TLS13-1-3 policies), and ALPN
//! (h2 and http/1.1 for HTTPS as `routing.http2.enabled` says; the ALPN policy for TLS
//! listeners).

use gantry_control::elb::ListenerView;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// The server configuration a listener's view describes, or None for plain listeners (and
/// for a secure one whose default certificate is gone or unreadable: it then refuses
/// handshakes).
pub fn server_config(v: &ListenerView, http2: bool) -> Option<Arc<rustls::ServerConfig>> {
    let secure = matches!(v.listener.protocol.as_str(), "HTTPS" | "TLS");
    if !secure {
        return None;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let load = |c: &gantry_control::acm::Certificate| {
        let key = certified(c, &provider)
            .map_err(|e| tracing::warn!(error = %e, certificate = %c.arn, "unusable certificate"))
            .ok()?;
        Some((
            c.names().iter().map(|n| n.to_ascii_lowercase()).collect::<Vec<_>>(),
            key,
        ))
    };
    // The default must load: it answers clients whose SNI no certificate covers.
    let mut listed = v.certificates.iter();
    let mut certs = vec![load(listed.next()?)?];
    certs.extend(listed.filter_map(load));
    let resolver = Sni { certs };
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
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = alpn(v, http2);
    Some(Arc::new(config))
}

fn certified(
    c: &gantry_control::acm::Certificate,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<CertifiedKey>, rustls::Error> {
    let bad = |what: &str| rustls::Error::General(format!("{what} does not parse"));
    let mut chain = vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).map_err(|_| bad("certificate"))?];
    chain.extend(CertificateDer::pem_slice_iter(c.chain_pem.as_bytes()).filter_map(Result::ok));
    let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).map_err(|_| bad("private key"))?;
    Ok(Arc::new(CertifiedKey::from_der(chain, key, provider)?))
}

/// Picks the certificate by the client's SNI: the first (default first) with a name covering
/// the host, else the default.
#[derive(Debug)]
struct Sni {
    /// Names and keys, the default first.
    certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for Sni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = hello.server_name().map(str::to_ascii_lowercase).unwrap_or_default();
        let found = self
            .certs
            .iter()
            .find(|(names, _)| names.iter().any(|n| name_matches(n, &host)));
        found.or(self.certs.first()).map(|(_, k)| k.clone())
    }
}

/// A certificate name covers a host: equal, or a `*.` wildcard for exactly one more label.
pub fn name_matches(name: &str, host: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => name == host,
    }
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

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn certificate_names_cover_hosts() {
        assert!(name_matches("shop.example", "shop.example"));
        assert!(name_matches("*.shop.example", "www.shop.example"));
        assert!(!name_matches("*.shop.example", "shop.example"));
        assert!(!name_matches("*.shop.example", "a.b.shop.example"));
        assert!(!name_matches("shop.example", "www.shop.example"));
    }
}
