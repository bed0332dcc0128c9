//! An AWS service model (botocore's service-2.json, vendored under `models/`): the operations,
//! their input and output shapes, and the errors, as the codecs need them.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
pub struct Model {
    pub metadata: Metadata,
    pub operations: BTreeMap<String, Operation>,
    pub shapes: BTreeMap<String, Shape>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub api_version: String,
    pub endpoint_prefix: String,
    pub protocol: String,
    /// Every protocol the service offers (CloudWatch: CBOR, JSON 1.0 and Query).
    #[serde(default)]
    pub protocols: Vec<String>,
    /// Present when the service moved from Query to JSON: its JSON errors also carry the
    /// Query code (the x-amzn-query-error header), which clients report.
    #[serde(default)]
    pub aws_query_compatible: Option<serde_json::Value>,
    #[serde(default)]
    pub signing_name: Option<String>,
    #[serde(default)]
    pub target_prefix: Option<String>,
    #[serde(default)]
    pub json_version: Option<String>,
    #[serde(default)]
    pub xml_namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Operation {
    pub name: String,
    #[serde(default)]
    pub input: Option<ShapeRef>,
    #[serde(default)]
    pub output: Option<ShapeRef>,
}

/// A reference to a shape, with the serialisation hints a member or list element carries.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShapeRef {
    pub shape: String,
    #[serde(default)]
    pub location_name: Option<String>,
    /// EC2's name for a request member, where it differs from the capitalised locationName.
    #[serde(default)]
    pub query_name: Option<String>,
    #[serde(default)]
    pub result_wrapper: Option<String>,
    #[serde(default)]
    pub flattened: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Shape {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub members: BTreeMap<String, ShapeRef>,
    #[serde(default)]
    pub required: Vec<String>,
    /// A list's element.
    #[serde(default)]
    pub member: Option<Box<ShapeRef>>,
    #[serde(default)]
    pub key: Option<Box<ShapeRef>>,
    #[serde(default)]
    pub value: Option<Box<ShapeRef>>,
    #[serde(default)]
    pub flattened: bool,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default, rename = "enum")]
    pub allowed: Option<Vec<String>>,
    #[serde(default)]
    pub error: Option<ErrorTrait>,
    #[serde(default)]
    pub exception: bool,
}

/// How an error shape goes on the wire: its code (the shape name when absent) and status.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorTrait {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub http_status_code: Option<u16>,
    #[serde(default)]
    pub sender_fault: bool,
}

impl Model {
    /// Parses a vendored model; they are checked in, so a bad one is a build defect.
    pub fn parse(json: &str) -> Model {
        serde_json::from_str(json).expect("vendored service model parses")
    }

    pub fn shape(&self, name: &str) -> &Shape {
        self.shapes
            .get(name)
            .unwrap_or_else(|| panic!("shape {name} is referenced but not defined"))
    }

    /// Whether the service offers `protocol` ("json", "query").
    pub fn speaks(&self, protocol: &str) -> bool {
        self.metadata.protocol == protocol || self.metadata.protocols.iter().any(|p| p == protocol)
    }

    /// EC2's dialect of Query: flattened lists, capitalised member names, no result wrapper.
    pub fn is_ec2(&self) -> bool {
        self.metadata.protocol == "ec2"
    }

    /// The name SigV4 scopes credentials to.
    pub fn signing_name(&self) -> &str {
        self.metadata
            .signing_name
            .as_deref()
            .unwrap_or(&self.metadata.endpoint_prefix)
    }

    /// The wire code and HTTP status of an error shape, if the model defines one by that name.
    pub fn error_code(&self, shape: &str) -> Option<(String, Option<u16>)> {
        let s = self.shapes.get(shape).filter(|s| s.exception)?;
        let e = s.error.as_ref();
        let code = e.and_then(|e| e.code.clone()).unwrap_or_else(|| shape.to_string());
        Some((code, e.and_then(|e| e.http_status_code)))
    }
}
