//! AWS Certificate Manager, the part load balancers need: certificates imported with their
//! private keys (ImportCertificate, re-import in place), described, listed, fetched, tagged
//! and deleted (not while a listener uses one). Gantry issues no public certificates: that
//! needs a public CA validating domains, so RequestCertificate is not served.
//!
//! Store layout: `/acm/<account>/<region>/certificates/<id>`, one record each. The private
//! key is kept in the record, readable by the load balancer data plane; it is not yet
//! encrypted at rest (that arrives with the secrets work, and covers these keys too).

use crate::records::{RecordError, Records};
use crate::{random_hex, Clock};
use gantry_store::Store;
use gantry_types::arn::Scope;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use x509_parser::prelude::*;

pub const PREFIX: &str = "/acm/";
const MAX_CERT_BYTES: usize = 32_768;
const MAX_KEY_BYTES: usize = 8_192;
const MAX_CHAIN_BYTES: usize = 2_097_152;
const MAX_TAGS: usize = 50;

/// An ACM error: the model's error shape and the message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct AcmError {
    pub shape: &'static str,
    pub message: String,
}

impl AcmError {
    fn new(shape: &'static str, message: impl Into<String>) -> AcmError {
        AcmError {
            shape,
            message: message.into(),
        }
    }
    fn validation(message: impl Into<String>) -> AcmError {
        AcmError::new("ValidationException", message)
    }
    fn not_found(arn: &str) -> AcmError {
        AcmError::new(
            "ResourceNotFoundException",
            format!("Could not find certificate {arn}."),
        )
    }
}

impl From<RecordError> for AcmError {
    fn from(e: RecordError) -> AcmError {
        AcmError::new("InternalServerException", e.to_string())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// What a certificate says about itself, read once at import.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CertInfo {
    pub domain_name: String,
    pub sans: Vec<String>,
    pub serial: String,
    pub subject: String,
    pub issuer: String,
    pub not_before: f64,
    pub not_after: f64,
    pub key_algorithm: String,
    pub signature_algorithm: String,
}

/// An imported certificate: PEM texts as given, and what they say.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Certificate {
    pub arn: String,
    pub cert_pem: String,
    #[serde(default)]
    pub chain_pem: String,
    pub key_pem: String,
    pub info: CertInfo,
    pub imported_at: f64,
    #[serde(default)]
    pub created_at: f64,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

impl Certificate {
    /// The names a TLS client may reach it by (the subject's CN and its DNS SANs).
    pub fn names(&self) -> Vec<String> {
        let mut n = self.info.sans.clone();
        if !n.contains(&self.info.domain_name) {
            n.insert(0, self.info.domain_name.clone());
        }
        n
    }
}

/// Parses and checks a certificate, its private key and chain: PEM, an X.509 certificate, a
/// key of a kind TLS can sign with, the key belonging to the certificate.
pub fn inspect(cert_pem: &str, key_pem: &str, chain_pem: &str) -> Result<CertInfo, AcmError> {
    if cert_pem.len() > MAX_CERT_BYTES || key_pem.len() > MAX_KEY_BYTES || chain_pem.len() > MAX_CHAIN_BYTES {
        return Err(AcmError::validation(
            "The certificate, private key or chain is larger than ACM accepts.",
        ));
    }
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|_| AcmError::validation("The certificate field contains more than one certificate or is not PEM."))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| AcmError::validation("The private key is not a PEM-encoded RSA or EC key."))?;
    for c in CertificateDer::pem_slice_iter(chain_pem.as_bytes()) {
        let c = c.map_err(|_| AcmError::validation("The certificate chain is not PEM."))?;
        X509Certificate::from_der(&c)
            .map_err(|_| AcmError::validation("The certificate chain holds a certificate that does not parse."))?;
    }
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(vec![der.clone()], key, &provider).map_err(|e| {
        AcmError::validation(format!(
            "The private key does not match the certificate or cannot sign: {e}."
        ))
    })?;
    let (_, x) = X509Certificate::from_der(&der).map_err(|_| {
        AcmError::validation("Unable to parse certificate. Please ensure the certificate is in PEM format.")
    })?;
    let cn = x
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let sans: Vec<String> = x
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let domain_name = if cn.is_empty() {
        sans.first().cloned().unwrap_or_default()
    } else {
        cn
    };
    Ok(CertInfo {
        domain_name,
        sans,
        serial: x.raw_serial_as_string(),
        subject: x.subject().to_string(),
        issuer: x.issuer().to_string(),
        not_before: x.validity().not_before.timestamp() as f64,
        not_after: x.validity().not_after.timestamp() as f64,
        key_algorithm: key_algorithm(&x),
        signature_algorithm: signature_algorithm(&x),
    })
}

fn key_algorithm(x: &X509Certificate) -> String {
    match x.public_key().parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(r)) => format!("RSA_{}", r.key_size()),
        Ok(x509_parser::public_key::PublicKey::EC(e)) => match e.key_size() {
            256 => "EC_prime256v1".into(),
            384 => "EC_secp384r1".into(),
            _ => "EC_secp521r1".into(),
        },
        _ => "UNKNOWN".into(),
    }
}

fn signature_algorithm(x: &X509Certificate) -> String {
    let oid = x.signature_algorithm.algorithm.to_id_string();
    match oid.as_str() {
        "1.2.840.113549.1.1.11" => "SHA256WITHRSA",
        "1.2.840.113549.1.1.12" => "SHA384WITHRSA",
        "1.2.840.113549.1.1.13" => "SHA512WITHRSA",
        "1.2.840.10045.4.3.2" => "SHA256WITHECDSA",
        "1.2.840.10045.4.3.3" => "SHA384WITHECDSA",
        "1.2.840.10045.4.3.4" => "SHA512WITHECDSA",
        _ => "UNKNOWN",
    }
    .to_string()
}

#[derive(Clone)]
pub struct Acm {
    records: Records,
    clock: Arc<dyn Clock>,
}

fn arn_prefix(scope: &Scope) -> String {
    format!("arn:aws:acm:{}:{}:certificate/", scope.region, scope.account)
}

impl Acm {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Acm {
        Acm {
            records: Records::new(store),
            clock,
        }
    }

    fn key(scope: &Scope, id: &str) -> String {
        format!("{PREFIX}{}/{}/certificates/{id}", scope.account, scope.region)
    }

    /// The store key of the certificate an ARN of this account and region names.
    fn key_of(scope: &Scope, arn: &str) -> Result<String, AcmError> {
        let id = arn
            .strip_prefix(&arn_prefix(scope))
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            .ok_or_else(|| AcmError::new("InvalidArnException", format!("Certificate ARN {arn} is not valid.")))?;
        Ok(Self::key(scope, id))
    }

    /// The certificate an ARN names.
    pub async fn get(&self, scope: &Scope, arn: &str) -> Result<Certificate, AcmError> {
        let key = Self::key_of(scope, arn)?;
        Ok(self
            .records
            .load::<Certificate>(&key)
            .await?
            .ok_or_else(|| AcmError::not_found(arn))?
            .0)
    }

    /// ImportCertificate: a new certificate, or a re-import over an existing ARN (its tags
    /// stay, as in ACM). PEM texts arrive decoded from the request's blobs.
    pub async fn import(
        &self,
        scope: &Scope,
        arn: Option<&str>,
        cert_pem: &str,
        key_pem: &str,
        chain_pem: &str,
        tags: Vec<Tag>,
    ) -> Result<Value, AcmError> {
        let info = inspect(cert_pem, key_pem, chain_pem)?;
        validate_tags(&tags)?;
        let now = self.clock.now_ms() as f64 / 1000.0;
        let (key, arn, reimport) = match arn {
            Some(a) => {
                if !tags.is_empty() {
                    return Err(AcmError::validation(
                        "You cannot add tags when re-importing a certificate.",
                    ));
                }
                (Self::key_of(scope, a)?, a.to_string(), true)
            }
            None => {
                let id = format!(
                    "{}-{}-{}-{}-{}",
                    random_hex(4),
                    random_hex(2),
                    random_hex(2),
                    random_hex(2),
                    random_hex(6)
                );
                (Self::key(scope, &id), format!("{}{id}", arn_prefix(scope)), false)
            }
        };
        let (cert, key_pem, chain) = (cert_pem.to_string(), key_pem.to_string(), chain_pem.to_string());
        self.records
            .update::<Certificate, (), AcmError>(&key, |cur| {
                let (created_at, tags) = match (cur, reimport) {
                    (Some(c), true) => (c.created_at, c.tags),
                    (None, true) => return Err(AcmError::not_found(&arn)),
                    (_, false) => (now, tags.clone()),
                };
                let rec = Certificate {
                    arn: arn.clone(),
                    cert_pem: cert.clone(),
                    chain_pem: chain.clone(),
                    key_pem: key_pem.clone(),
                    info: info.clone(),
                    imported_at: now,
                    created_at,
                    tags,
                };
                Ok((Some(rec), ()))
            })
            .await?;
        Ok(json!({ "CertificateArn": arn }))
    }

    fn status(&self, c: &Certificate) -> &'static str {
        if c.info.not_after * 1000.0 < self.clock.now_ms() as f64 {
            "EXPIRED"
        } else {
            "ISSUED"
        }
    }

    /// DescribeCertificate's detail; `in_use_by` are the listeners serving it.
    pub fn detail(&self, c: &Certificate, in_use_by: &[String]) -> Value {
        json!({
            "CertificateArn": c.arn, "DomainName": c.info.domain_name,
            "SubjectAlternativeNames": c.names(), "Serial": c.info.serial, "Subject": c.info.subject,
            "Issuer": c.info.issuer, "ImportedAt": c.imported_at, "CreatedAt": c.created_at,
            "Status": self.status(c), "NotBefore": c.info.not_before, "NotAfter": c.info.not_after,
            "KeyAlgorithm": c.info.key_algorithm, "SignatureAlgorithm": c.info.signature_algorithm,
            "InUseBy": in_use_by, "Type": "IMPORTED", "RenewalEligibility": "INELIGIBLE",
        })
    }

    pub fn summary(&self, c: &Certificate, in_use: bool) -> Value {
        json!({
            "CertificateArn": c.arn, "DomainName": c.info.domain_name,
            "SubjectAlternativeNameSummaries": c.names(), "Type": "IMPORTED", "Status": self.status(c),
            "KeyAlgorithm": c.info.key_algorithm, "InUse": in_use, "NotBefore": c.info.not_before,
            "NotAfter": c.info.not_after, "ImportedAt": c.imported_at, "CreatedAt": c.created_at,
            "RenewalEligibility": "INELIGIBLE",
        })
    }

    /// Every certificate of the account and region, in ARN order.
    pub async fn all(&self, scope: &Scope) -> Result<Vec<Certificate>, AcmError> {
        let prefix = format!("{PREFIX}{}/{}/certificates/", scope.account, scope.region);
        Ok(self.records.list(&prefix).await?)
    }

    /// ListCertificates' filters: statuses and key types (ACM lists RSA_2048 and the EC
    /// P-256/P-384 kinds unless Includes names others).
    pub fn listed(&self, c: &Certificate, statuses: &[String], key_types: Option<&[String]>) -> bool {
        let status_ok = statuses.is_empty() || statuses.iter().any(|s| s == self.status(c));
        let default_kinds = ["RSA_1024", "RSA_2048", "EC_prime256v1", "EC_secp384r1"];
        let kind_ok = match key_types {
            Some(k) => k.contains(&c.info.key_algorithm),
            None => default_kinds.contains(&c.info.key_algorithm.as_str()),
        };
        status_ok && kind_ok
    }

    pub async fn delete(&self, scope: &Scope, arn: &str, in_use_by: &[String]) -> Result<(), AcmError> {
        self.get(scope, arn).await?;
        if !in_use_by.is_empty() {
            return Err(AcmError::new(
                "ResourceInUseException",
                format!("Certificate {arn} in account is in use by {}.", in_use_by.join(", ")),
            ));
        }
        Ok(self.records.delete(&Self::key_of(scope, arn)?).await?)
    }

    /// Adds (`add`) or removes tags; removal by key, or by key and value when one is given.
    pub async fn edit_tags(&self, scope: &Scope, arn: &str, tags: &[Tag], add: bool) -> Result<(), AcmError> {
        if add {
            validate_tags(tags)?;
        }
        let key = Self::key_of(scope, arn)?;
        self.records
            .update::<Certificate, (), AcmError>(&key, |cur| {
                let mut c = cur.ok_or_else(|| AcmError::not_found(arn))?;
                if add {
                    c.tags.retain(|t| !tags.iter().any(|n| n.key == t.key));
                    c.tags.extend(tags.iter().cloned());
                    if c.tags.len() > MAX_TAGS {
                        return Err(AcmError::new(
                            "TooManyTagsException",
                            "A certificate can have at most 50 tags.",
                        ));
                    }
                    c.tags.sort();
                } else {
                    c.tags.retain(|t| {
                        !tags
                            .iter()
                            .any(|r| r.key == t.key && (r.value.is_none() || r.value == t.value))
                    });
                }
                Ok((Some(c), ()))
            })
            .await
    }
}

fn validate_tags(tags: &[Tag]) -> Result<(), AcmError> {
    for t in tags {
        if t.key.is_empty() || t.key.chars().count() > 128 || t.value.as_deref().unwrap_or("").chars().count() > 256 {
            return Err(AcmError::new(
                "InvalidTagException",
                "Tag keys must be 1-128 characters and values at most 256.",
            ));
        }
        if t.key.to_ascii_lowercase().starts_with("aws:") {
            return Err(AcmError::new(
                "InvalidTagException",
                "Tag keys cannot start with 'aws:'.",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::inspect;

    fn cert(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn a_certificate_is_read_and_its_key_must_match() {
        let (pem, key) = cert(&["shop.example", "www.shop.example"]);
        let info = inspect(&pem, &key, "").unwrap();
        assert_eq!(info.sans, ["shop.example", "www.shop.example"]);
        assert_eq!(info.domain_name, "shop.example", "without a CN, the first SAN");
        assert_eq!(info.key_algorithm, "EC_prime256v1");
        assert_eq!(info.signature_algorithm, "SHA256WITHECDSA");
        assert!(info.not_after > info.not_before);

        let (_, other_key) = cert(&["other.example"]);
        let e = inspect(&pem, &other_key, "").unwrap_err();
        assert!(e.message.contains("does not match"), "{e}");
        for (c, k, chain) in [
            ("garbage", key.as_str(), ""),
            (pem.as_str(), "garbage", ""),
            (
                pem.as_str(),
                key.as_str(),
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            ),
        ] {
            assert_eq!(inspect(c, k, chain).unwrap_err().shape, "ValidationException");
        }
        let huge = "A".repeat(40_000);
        assert!(inspect(&huge, &key, "").unwrap_err().message.contains("larger"));
    }
}
