//! AWS Certificate Manager (AWS JSON 1.1, target prefix CertificateManager): importing the
//! certificates HTTPS and TLS listeners serve, over `gantry_control::acm`. Blobs (certificate,
//! chain, key) arrive base64-encoded, as the JSON protocol carries them.

use crate::api::{Api, ApiError};
use crate::protocol::Reply;
use base64::Engine as _;
use gantry_control::acm::{AcmError, Tag};
use gantry_types::arn::Scope;
use serde::Deserialize;
use serde_json::{json, Value};

impl From<AcmError> for ApiError {
    fn from(e: AcmError) -> ApiError {
        ApiError::of_shape(e.shape, e.message)
    }
}

fn invalid(m: impl Into<String>) -> ApiError {
    ApiError::client("ValidationException", m)
}

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| invalid(format!("Invalid request: {e}")))
}

/// A blob member as text (PEM); absent is empty.
fn pem(input: &Value, name: &str) -> Result<String, ApiError> {
    let Some(b64) = input.get(name).and_then(Value::as_str) else {
        return Ok(String::new());
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| ApiError::client("SerializationException", format!("{name} is not valid base64.")))?;
    String::from_utf8(bytes).map_err(|_| invalid(format!("{name} is not PEM text.")))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct ArnInput {
    certificate_arn: String,
}

/// The registry's entry point.
pub fn handler<'a>(api: &'a Api, scope: &'a Scope, op: &'a str, input: Value) -> Reply<'a> {
    Box::pin(dispatch(api, scope, op, input))
}

async fn dispatch(api: &Api, scope: &Scope, op: &str, input: Value) -> Result<Value, ApiError> {
    let acm = api.control.acm();
    let in_use = |arn: String| async move { api.elb.listeners_using_certificate(scope, &arn).await };
    Ok(match op {
        "ImportCertificate" => {
            let arn = input.get("CertificateArn").and_then(Value::as_str).map(str::to_string);
            let tags: Vec<Tag> = match input.get("Tags") {
                Some(t) => parse(t.clone())?,
                None => vec![],
            };
            let (cert, key, chain) = (pem(&input, "Certificate")?, pem(&input, "PrivateKey")?, pem(&input, "CertificateChain")?);
            acm.import(scope, arn.as_deref(), &cert, &key, &chain, tags).await?
        }
        "DescribeCertificate" => {
            let i: ArnInput = parse(input)?;
            let c = acm.get(scope, &i.certificate_arn).await?;
            let used = in_use(c.arn.clone()).await?;
            json!({ "Certificate": acm.detail(&c, &used) })
        }
        "GetCertificate" => {
            let i: ArnInput = parse(input)?;
            let c = acm.get(scope, &i.certificate_arn).await?;
            let mut out = json!({ "Certificate": c.cert_pem });
            if !c.chain_pem.is_empty() {
                out["CertificateChain"] = json!(c.chain_pem);
            }
            out
        }
        "ListCertificates" => list(api, scope, input).await?,
        "DeleteCertificate" => {
            let i: ArnInput = parse(input)?;
            let used = in_use(i.certificate_arn.clone()).await?;
            acm.delete(scope, &i.certificate_arn, &used).await?;
            json!({})
        }
        "AddTagsToCertificate" | "RemoveTagsFromCertificate" => {
            #[derive(Deserialize)]
            #[serde(rename_all = "PascalCase", deny_unknown_fields)]
            struct Input {
                certificate_arn: String,
                tags: Vec<Tag>,
            }
            let i: Input = parse(input)?;
            acm.edit_tags(scope, &i.certificate_arn, &i.tags, op == "AddTagsToCertificate").await?;
            json!({})
        }
        "ListTagsForCertificate" => {
            let i: ArnInput = parse(input)?;
            json!({ "Tags": acm.get(scope, &i.certificate_arn).await?.tags })
        }
        "RequestCertificate" => {
            return Err(ApiError::client(
                "UnknownOperationException",
                "Gantry does not issue certificates (that needs a public CA validating your domains): import one with ImportCertificate.",
            ))
        }
        other => {
            return Err(ApiError::client(
                "UnknownOperationException",
                format!("Gantry does not implement the ACM operation {other} yet."),
            ))
        }
    })
}

async fn list(api: &Api, scope: &Scope, input: Value) -> Result<Value, ApiError> {
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "PascalCase", deny_unknown_fields)]
    struct Input {
        #[serde(default)]
        certificate_statuses: Vec<String>,
        #[serde(default)]
        includes: Option<Includes>,
        #[serde(default)]
        next_token: Option<String>,
        #[serde(default)]
        max_items: Option<i64>,
    }
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Includes {
        #[serde(default)]
        key_types: Option<Vec<String>>,
    }
    let i: Input = parse(input)?;
    let acm = api.control.acm();
    let key_types = i.includes.as_ref().and_then(|x| x.key_types.as_deref());
    let size = i.max_items.unwrap_or(1000).clamp(1, 1000) as usize;
    let mut out = vec![];
    for c in acm.all(scope).await? {
        if !acm.listed(&c, &i.certificate_statuses, key_types) {
            continue;
        }
        if i.next_token.as_ref().is_some_and(|t| c.arn.as_str() < t.as_str()) {
            continue;
        }
        let used = !api.elb.listeners_using_certificate(scope, &c.arn).await?.is_empty();
        out.push((c.arn.clone(), acm.summary(&c, used)));
    }
    let next = (out.len() > size).then(|| out[size].0.clone());
    out.truncate(size);
    let mut reply = json!({ "CertificateSummaryList": out.into_iter().map(|(_, v)| v).collect::<Vec<_>>() });
    if let Some(t) = next {
        reply["NextToken"] = json!(t);
    }
    Ok(reply)
}
