//! A small SigV4-signing client for Gantry's own API, used by `gantry run|ps|logs|stop`.
//! Credentials and endpoint come from the environment or the `gantry` AWS profile that
//! `gantry dev` writes.

use anyhow::{bail, Context, Result};
use gantry_aws::sigv4::{signature, SignedRequest};
use serde_json::Value;
use std::collections::HashMap;

pub struct Client {
    endpoint: String,
    region: String,
    key: String,
    secret: String,
    agent: ureq::Agent,
}

fn ini_section(path: &std::path::Path, section: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let Ok(text) = std::fs::read_to_string(path) else {
        return out;
    };
    let mut inside = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            inside = &t[1..t.len() - 1] == section;
        } else if inside {
            if let Some((k, v)) = t.split_once('=') {
                out.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
    }
    out
}

/// An AWS config file: `$ENV` if set, else `~/.aws/NAME` (as the AWS CLI looks for it).
pub(crate) fn aws_file(env: &str, name: &str) -> std::path::PathBuf {
    std::env::var_os(env).map(Into::into).unwrap_or_else(|| {
        std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".aws")
            .join(name)
    })
}

impl Client {
    pub fn from_env() -> Result<Client> {
        let creds = ini_section(&aws_file("AWS_SHARED_CREDENTIALS_FILE", "credentials"), "gantry");
        let conf = ini_section(&aws_file("AWS_CONFIG_FILE", "config"), "profile gantry");
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let endpoint = env("GANTRY_ENDPOINT")
            .or_else(|| conf.get("endpoint_url").cloned())
            .context(
                "no Gantry endpoint: start `gantry dev` (it writes the `gantry` AWS profile) or set GANTRY_ENDPOINT",
            )?;
        let key = env("AWS_ACCESS_KEY_ID")
            .or_else(|| creds.get("aws_access_key_id").cloned())
            .context("no access key: set AWS_ACCESS_KEY_ID or use the gantry profile")?;
        let secret = env("AWS_SECRET_ACCESS_KEY")
            .or_else(|| creds.get("aws_secret_access_key").cloned())
            .context("no secret key")?;
        let region = env("AWS_REGION")
            .or_else(|| conf.get("region").cloned())
            .unwrap_or_else(|| "us-east-1".into());
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        Ok(Client {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region,
            key,
            secret,
            agent,
        })
    }

    /// Calls one AWS JSON 1.1 operation; AWS errors become `Err` with their type and message.
    pub fn call(&self, service: &str, target: &str, body: &Value) -> Result<Value> {
        let data = serde_json::to_vec(body)?;
        let content = ("application/x-amz-json-1.1", Some(target));
        let (status, text) = self.post(service, content, &data)?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status != 200 {
            bail!(
                "{}: {}",
                v["__type"].as_str().unwrap_or("error"),
                v["message"].as_str().unwrap_or(&text)
            );
        }
        Ok(v)
    }

    /// The ids of the default VPC's subnets (EC2's DescribeSubnets, a Query call answered in
    /// XML: the ids are read from its `subnetId` elements).
    pub fn subnet_ids(&self) -> Result<Vec<String>> {
        let form = b"Action=DescribeSubnets&Version=2016-11-15";
        let content = ("application/x-www-form-urlencoded; charset=utf-8", None);
        let (status, text) = self.post("ec2", content, form)?;
        if status != 200 {
            bail!("DescribeSubnets failed ({status}): {text}");
        }
        Ok(text
            .split("<subnetId>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</subnetId>").map(|(id, _)| id.to_string()))
            .collect())
    }

    /// Signs and posts one request: (content type, X-Amz-Target if any), body. Returns the
    /// status and the body.
    fn post(&self, service: &str, (content_type, target): (&str, Option<&str>), data: &[u8]) -> Result<(u16, String)> {
        let host = self
            .endpoint
            .split("://")
            .nth(1)
            .unwrap_or(&self.endpoint)
            .split('/')
            .next()
            .unwrap_or("")
            .to_string();
        let amz_date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let mut headers = vec![
            ("content-type".to_string(), content_type.to_string()),
            ("host".to_string(), host),
            ("x-amz-date".to_string(), amz_date.clone()),
        ];
        if let Some(t) = target {
            headers.push(("x-amz-target".to_string(), t.to_string()));
        }
        let signed: Vec<String> = headers.iter().map(|(k, _)| k.clone()).collect();
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: data,
        };
        let sig = signature(&self.secret, &req, &signed, &amz_date, &self.region, service);
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/{}/{}/{service}/aws4_request, SignedHeaders={}, Signature={sig}",
            self.key,
            &amz_date[..8],
            self.region,
            signed.join(";")
        );
        let mut r = self.agent.post(&format!("{}/", self.endpoint));
        for (k, v) in &headers {
            if k != "host" {
                r = r.header(k, v);
            }
        }
        let mut resp = r
            .header("authorization", &auth)
            .send(data)
            .with_context(|| format!("calling {}", self.endpoint))?;
        let status = resp.status().as_u16();
        Ok((status, resp.body_mut().read_to_string()?))
    }

    /// The endpoint requests go to (`http://host:port`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn ecs(&self, op: &str, body: Value) -> Result<Value> {
        self.call("ecs", &format!("AmazonEC2ContainerServiceV20141113.{op}"), &body)
    }

    pub fn cloudwatch(&self, op: &str, body: Value) -> Result<Value> {
        self.call("monitoring", &format!("GraniteServiceVersion20100801.{op}"), &body)
    }

    pub fn logs(&self, op: &str, body: Value) -> Result<Value> {
        self.call("logs", &format!("Logs_20140328.{op}"), &body)
    }
}
