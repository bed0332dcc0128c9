//! The cluster's PKI: one CA (created by the first server, kept in the store so every server
//! signs with it), server certificates, node certificates issued against a CSR (the node's key
//! never leaves the node), and join tokens. A token is `GANTRY1-<CA SHA-256>-<id>.<secret>`, as
//! Docker Swarm's: the CA digest lets a joining agent trust the server before it has the CA;
//! the store keeps only the secret's hash and an expiry.

use anyhow::{anyhow, bail, Context, Result};
use gantry_store::{Store, StoreError};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

const CA_KEY: &str = "/cluster/ca";
const TOKENS_PREFIX: &str = "/cluster/join-tokens/";
/// The Organization of node certificates: what makes a certificate a node's.
pub const NODE_ORG: &str = "gantry:nodes";
const SERVER_ORG: &str = "gantry:servers";
/// How long a node certificate lasts.
pub const NODE_CERT_DAYS: i64 = 365;

#[derive(Clone, Serialize, Deserialize)]
pub struct Ca {
    pub cert_pem: String,
    key_pem: String,
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn dn(cn: &str, org: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    d.push(DnType::OrganizationName, org);
    d
}

/// The SHA-256 of a PEM certificate's DER, in hex.
pub fn fingerprint(cert_pem: &str) -> Result<String> {
    Ok(der_fingerprint(&first_der(cert_pem)?))
}

/// The SHA-256 of a DER certificate, in hex.
pub fn der_fingerprint(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The DER of the first certificate in a PEM text.
pub fn first_der(pem: &str) -> Result<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| anyhow!("not a PEM certificate: {e}"))?;
    Ok(p.contents)
}

impl Ca {
    /// The cluster's CA: loaded from the store, or created there by whichever server is first.
    pub async fn load_or_create(store: &dyn Store) -> Result<Ca> {
        if let Some(kv) = store.get(CA_KEY).await? {
            return Ok(serde_json::from_slice(&kv.value)?);
        }
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn("Gantry cluster CA", "gantry");
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = now() - Duration::from_secs(3600);
        p.not_after = now() + Duration::from_secs(10 * 365 * 86400);
        let ca = Ca {
            cert_pem: p.self_signed(&key)?.pem(),
            key_pem: key.serialize_pem(),
        };
        match store.create(CA_KEY, &serde_json::to_vec(&ca)?).await {
            Ok(_) => Ok(ca),
            // Another server was first: use its CA.
            Err(StoreError::AlreadyExists { .. }) => Box::pin(Ca::load_or_create(store)).await,
            Err(e) => Err(e.into()),
        }
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, key)?)
    }

    /// A serving certificate for a server, valid for these DNS names and IP addresses.
    /// Returns (certificate chain PEM: leaf then CA, key PEM).
    pub fn server_cert(&self, names: &[String]) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn("gantry server", SERVER_ORG);
        p.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.as_str().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        // Client too: a server presents it to another when it fetches a copy to re-seed from.
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = now() - Duration::from_secs(3600);
        p.not_after = now() + Duration::from_secs(365 * 86400);
        let cert = p.signed_by(&key, &self.issuer()?)?;
        Ok((format!("{}{}", cert.pem(), self.cert_pem), key.serialize_pem()))
    }

    /// Signs a node's CSR for `node`. Whatever names the CSR asks for are ignored: the
    /// certificate names the node the token was presented for, and nothing else.
    pub fn sign_node(&self, csr_pem: &str, node: &str, days: i64) -> Result<String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).context("reading the CSR")?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(node, NODE_ORG);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = now() - Duration::from_secs(300);
        p.not_after = now() + time::Duration::days(days);
        csr.params = p;
        Ok(csr.signed_by(&self.issuer()?)?.pem())
    }
}

/// A node's key and CSR (the key stays on the node).
pub fn node_csr(node: &str) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(node, NODE_ORG);
    let csr = p.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// Whether a certificate is due for renewal at `now_unix` (seconds): when less than a third of
/// its lifetime is left, as kubelet's certificate manager judges (it picks 70-90%).
pub fn renewal_due(cert_pem: &str, now_unix: i64) -> Result<bool> {
    let der = first_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| anyhow!("reading the certificate: {e}"))?;
    let (from, to) = (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    );
    Ok(now_unix >= to - (to - from) / 3)
}

/// The node a verified client certificate speaks for: its Common Name, if the certificate is
/// a node certificate (Organization gantry:nodes), else None.
pub fn node_of_cert(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let org = subject.iter_organization().next()?.as_str().ok()?.to_string();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    (org == NODE_ORG).then_some(cn)
}

/// Whether a verified client certificate is a server's (Organization gantry:servers).
pub fn is_server_cert(der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let org = cert.subject().iter_organization().next().and_then(|o| o.as_str().ok());
    org == Some(SERVER_ORG)
}

#[derive(Serialize, Deserialize)]
struct TokenRecord {
    secret_sha256: String,
    expires_ms: i64,
}

/// A parsed join token.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub ca_fingerprint: String,
    pub id: String,
    pub secret: String,
}

impl Token {
    pub fn parse(s: &str) -> Result<Token> {
        let bad = || anyhow!("malformed join token: expected GANTRY1-<CA SHA-256>-<id>.<secret>");
        let rest = s.trim().strip_prefix("GANTRY1-").ok_or_else(bad)?;
        let (fp, idsecret) = rest.split_once('-').ok_or_else(bad)?;
        let (id, secret) = idsecret.split_once('.').ok_or_else(bad)?;
        let is_hex = |v: &str, n: usize| v.len() == n && v.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_hex(fp, 64) || !is_hex(id, 16) || !is_hex(secret, 32) {
            bail!(bad());
        }
        Ok(Token {
            ca_fingerprint: fp.to_ascii_lowercase(),
            id: id.to_ascii_lowercase(),
            secret: secret.to_ascii_lowercase(),
        })
    }
}

/// Creates a join token valid for `ttl`.
pub async fn create_token(store: &dyn Store, ca: &Ca, ttl: Duration, now_ms: i64) -> Result<String> {
    let id = gantry_control::random_hex(8);
    let secret = gantry_control::random_hex(16);
    let rec = TokenRecord {
        secret_sha256: hex(&Sha256::digest(secret.as_bytes())),
        expires_ms: now_ms + ttl.as_millis() as i64,
    };
    store
        .create(&format!("{TOKENS_PREFIX}{id}"), &serde_json::to_vec(&rec)?)
        .await?;
    Ok(format!("GANTRY1-{}-{id}.{secret}", fingerprint(&ca.cert_pem)?))
}

/// Checks a presented token: it must be for this CA, known, unexpired, with the right secret.
pub async fn check_token(store: &dyn Store, ca: &Ca, presented: &str, now_ms: i64) -> Result<(), String> {
    let t = Token::parse(presented).map_err(|e| e.to_string())?;
    let fp = fingerprint(&ca.cert_pem).map_err(|e| e.to_string())?;
    if t.ca_fingerprint != fp {
        return Err("the join token is for another cluster".into());
    }
    let kv = store
        .get(&format!("{TOKENS_PREFIX}{}", t.id))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("unknown join token")?;
    let rec: TokenRecord = serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
    let presented_hash = hex(&Sha256::digest(t.secret.as_bytes()));
    // Compare without an early exit, so timing says nothing about the secret.
    let same = presented_hash.len() == rec.secret_sha256.len()
        && presented_hash
            .bytes()
            .zip(rec.secret_sha256.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err("wrong join token secret".into());
    }
    if now_ms > rec.expires_ms {
        return Err("the join token has expired".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_store::SqliteStore;

    #[tokio::test]
    async fn tokens_are_checked_for_cluster_secret_and_expiry() {
        let store = SqliteStore::in_memory().unwrap();
        let ca = Ca::load_or_create(&store).await.unwrap();
        let again = Ca::load_or_create(&store).await.unwrap();
        assert_eq!(ca.cert_pem, again.cert_pem, "every server signs with the same CA");
        let t = create_token(&store, &ca, Duration::from_secs(60), 1_000).await.unwrap();
        assert_eq!(check_token(&store, &ca, &t, 2_000).await, Ok(()));
        assert_eq!(
            check_token(&store, &ca, &t, 62_000).await.unwrap_err(),
            "the join token has expired"
        );
        let mut wrong = t.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == '0' { '1' } else { '0' });
        assert_eq!(
            check_token(&store, &ca, &wrong, 2_000).await.unwrap_err(),
            "wrong join token secret"
        );
        let other = SqliteStore::in_memory().unwrap();
        let other_ca = Ca::load_or_create(&other).await.unwrap();
        assert!(check_token(&other, &other_ca, &t, 2_000)
            .await
            .unwrap_err()
            .contains("another cluster"));
        for bad in ["", "GANTRY1-", "GANTRY1-zz-aa.bb", &t.replace('.', "-")] {
            assert!(
                check_token(&store, &ca, bad, 2_000)
                    .await
                    .unwrap_err()
                    .contains("malformed"),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_node_certificate_names_the_node_whatever_the_csr_asks() {
        let store = SqliteStore::in_memory().unwrap();
        let ca = Ca::load_or_create(&store).await.unwrap();
        let (_, csr) = node_csr("n2").unwrap();
        let cert = ca.sign_node(&csr, "n1", 30).unwrap();
        assert_eq!(node_of_cert(&first_der(&cert).unwrap()).as_deref(), Some("n1"));
        let (server, _) = ca.server_cert(&["127.0.0.1".into(), "localhost".into()]).unwrap();
        assert_eq!(
            node_of_cert(&first_der(&server).unwrap()),
            None,
            "a server certificate is no node's"
        );
        assert!(ca.sign_node("not a csr", "n1", 30).is_err());
    }
}
