//! AWS Cloud Map (service discovery) resources as Gantry stores and serves them: shapes named
//! and spelled as botocore's servicediscovery model has them (PascalCase), and its errors.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A Cloud Map error: the model's error shape (`NamespaceNotFound`, `InvalidInput`, ...) and
/// the message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct MapError {
    pub shape: &'static str,
    pub message: String,
}

impl MapError {
    pub fn new(shape: &'static str, message: impl Into<String>) -> MapError {
        MapError {
            shape,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> MapError {
        MapError::new("InvalidInput", message)
    }
    pub fn server(message: impl Into<String>) -> MapError {
        MapError::new("InternalFailure", message)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// DNS_PRIVATE, DNS_PUBLIC or HTTP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Namespace {
    pub id: String,
    pub arn: String,
    pub resource_owner: String,
    pub name: String,
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub properties: NamespaceProperties,
    pub create_date: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator_request_id: Option<String>,
}

impl Namespace {
    pub fn is_dns(&self) -> bool {
        self.kind.starts_with("DNS_")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "PascalCase")]
pub struct NamespaceProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_properties: Option<DnsProperties>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_properties: Option<HttpProperties>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct DnsProperties {
    pub hosted_zone_id: String,
    #[serde(rename = "SOA")]
    pub soa: Soa,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Soa {
    #[serde(rename = "TTL")]
    pub ttl: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct HttpProperties {
    pub http_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DnsRecord {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "TTL")]
    pub ttl: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DnsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_policy: Option<String>,
    pub dns_records: Vec<DnsRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct HealthCheckCustomConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    pub id: String,
    pub arn: String,
    pub resource_owner: String,
    pub name: String,
    pub namespace_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// DNS_HTTP, HTTP or DNS.
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<DnsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_custom_config: Option<HealthCheckCustomConfig>,
    pub create_date: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator_request_id: Option<String>,
    pub created_by_account: String,
}

/// A registered instance and, for services with custom health checks, its status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Instance {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator_request_id: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub created_by_account: String,
    /// HEALTHY, UNHEALTHY, or UNKNOWN when the service has no health check.
    #[serde(default = "unknown")]
    pub health: String,
}

fn unknown() -> String {
    "UNKNOWN".into()
}

impl Instance {
    /// Whether DNS and DiscoverInstances' HEALTHY filter include it: an instance without a
    /// health check counts as healthy (as Route 53 treats records without one).
    pub fn is_healthy(&self) -> bool {
        self.health != "UNHEALTHY"
    }
}

/// An asynchronous operation's outcome. Gantry's complete before the call returns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Operation {
    pub id: String,
    pub owner_account: String,
    #[serde(rename = "Type")]
    pub kind: String,
    pub status: String,
    pub create_date: f64,
    pub update_date: f64,
    pub targets: BTreeMap<String, String>,
}
