//! The protocol layer: one registry of the services Gantry serves, each a vendored botocore
//! model plus a handler over JSON values. A request is routed by its SigV4 credential scope's
//! service and then by X-Amz-Target (JSON protocols) or Action and Version (Query); inputs
//! are decoded and outputs and errors encoded from the model, so adding a service is adding
//! its model and one handler module.

pub mod model;
pub mod query;
pub mod validate;
mod xml;

use crate::api::{Api, ApiError};
use axum::http::StatusCode;
use gantry_types::arn::Scope;
use model::{Model, Operation};
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;

pub type Reply<'a> = Pin<Box<dyn Future<Output = Result<Value, ApiError>> + Send + 'a>>;
/// A service's operations: (state, caller's scope, operation name, decoded input) -> output.
pub type Handler = for<'a> fn(&'a Api, &'a Scope, &'a str, Value) -> Reply<'a>;

pub struct Service {
    pub model: Model,
    pub handler: Handler,
    /// The error shape a request breaking the model's constraints gets, when JSON inputs are
    /// checked against the model before the handler sees them (the first services check
    /// their inputs by hand, in their own words). Query inputs are always checked.
    pub checks_json: Option<&'static str>,
}

impl Service {
    fn new(model_json: &str, handler: Handler) -> Service {
        Service {
            model: Model::parse(model_json),
            handler,
            checks_json: None,
        }
    }

    /// JSON inputs are checked against the model; violations answer with `error` (the
    /// service's own validation error shape).
    fn checking_json(mut self, error: &'static str) -> Service {
        self.checks_json = Some(error);
        self
    }
}

/// Every service Gantry answers, built once.
pub fn services() -> &'static [Service] {
    static SERVICES: OnceLock<Vec<Service>> = OnceLock::new();
    SERVICES.get_or_init(|| {
        vec![
            Service::new(include_str!("../../models/ecs.json"), crate::ecs::handler),
            Service::new(include_str!("../../models/logs.json"), crate::logs::handler),
            Service::new(include_str!("../../models/elbv2.json"), crate::elbv2::handler),
            Service::new(
                include_str!("../../models/servicediscovery.json"),
                crate::servicediscovery::handler,
            )
            .checking_json("InvalidInput"),
            Service::new(include_str!("../../models/acm.json"), crate::acm::handler),
            Service::new(include_str!("../../models/cloudwatch.json"), crate::cloudwatch::handler)
                .checking_json("InvalidParameterValueException"),
            Service::new(
                include_str!("../../models/application-autoscaling.json"),
                crate::autoscaling::handler,
            )
            .checking_json("ValidationException"),
            Service::new(
                include_str!("../../models/secretsmanager.json"),
                crate::secretsmanager::handler,
            )
            .checking_json("InvalidParameterException"),
            Service::new(include_str!("../../models/ssm.json"), crate::ssm::handler)
                .checking_json("ValidationException"),
            Service::new(include_str!("../../models/iam.json"), crate::iam::handler),
            Service::new(include_str!("../../models/sts.json"), crate::iam::sts_handler),
            Service::new(include_str!("../../models/ec2.json"), crate::ec2::handler),
        ]
    })
}

/// The signing names served, for the error a request scoped to another service gets.
pub fn signing_names() -> Vec<&'static str> {
    let mut names: Vec<&str> = services().iter().map(|s| s.model.signing_name()).collect();
    names.dedup();
    names
}

/// How a request is framed, which is how its answer and errors are framed.
#[derive(Debug, Clone, PartialEq)]
pub enum Wire {
    /// AWS JSON 1.0 or 1.1: the operation in X-Amz-Target.
    Json { version: String },
    /// AWS Query: form parameters, XML answers in the service's namespace.
    Query,
}

impl Wire {
    /// JSON when the request names a target, Query when it carries form parameters or an
    /// Action; JSON 1.1 otherwise (what the first services spoke).
    pub fn of(target: Option<&str>, content_type: &str, query_string: &str) -> Wire {
        let form = content_type.starts_with("application/x-www-form-urlencoded");
        let action = query_string.split('&').any(|p| p.starts_with("Action="));
        if target.is_none() && (form || action) {
            return Wire::Query;
        }
        let version = match content_type {
            "application/x-amz-json-1.0" => "1.0",
            _ => "1.1",
        };
        Wire::Json {
            version: version.into(),
        }
    }
}

/// A request resolved to a service and one of its operations, input decoded.
pub struct Call {
    pub service: &'static Service,
    pub op: &'static Operation,
    pub input: Value,
}

/// Finds the service and operation a verified request names and decodes its input.
pub fn resolve(
    signing_name: &str,
    wire: &Wire,
    target: &str,
    body: &[u8],
    query_string: &str,
) -> Result<Call, ApiError> {
    let candidates: Vec<&'static Service> = services()
        .iter()
        .filter(|s| s.model.signing_name() == signing_name)
        .collect();
    if candidates.is_empty() {
        return Err(ApiError::new(
            "InvalidSignatureException",
            format!(
                "Credential should be scoped to a service Gantry serves ({}), not '{signing_name}'.",
                signing_names().join(", ")
            ),
            StatusCode::FORBIDDEN,
        ));
    }
    match wire {
        Wire::Json { .. } => resolve_json(&candidates, target, body),
        Wire::Query => resolve_query(&candidates, body, query_string),
    }
}

fn resolve_json(candidates: &[&'static Service], target: &str, body: &[u8]) -> Result<Call, ApiError> {
    let unknown = || ApiError::client("UnknownOperationException", format!("Unknown operation {target:?}"));
    let (prefix, name) = target.split_once('.').ok_or_else(unknown)?;
    let service = candidates
        .iter()
        .find(|s| s.model.speaks("json") && s.model.metadata.target_prefix.as_deref() == Some(prefix))
        .ok_or_else(unknown)?;
    let op = service.model.operations.get(name).ok_or_else(unknown)?;
    let input = if body.is_empty() {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    };
    json_call(service, op, input)
}

/// A call with a JSON input: refused unless an object, and checked against the model where
/// the service checks its JSON inputs.
fn json_call(service: &'static Service, op: &'static Operation, input: Value) -> Result<Call, ApiError> {
    if !input.is_object() {
        return Err(ApiError::client(
            "SerializationException",
            "Request body is not a JSON object.",
        ));
    }
    if let Some(error) = service.checks_json {
        validate::json_input(&service.model, op, &input).map_err(|p| ApiError::client(error, p.message()))?;
    }
    Ok(Call { service, op, input })
}

/// The operation `op` of the service signing as `signing_name`, its JSON input checked as
/// that service checks it: for callers inside Gantry (the console) that name both outright.
pub fn resolve_named(signing_name: &str, op: &str, input: Value) -> Result<Call, ApiError> {
    let unknown = || {
        ApiError::client(
            "UnknownOperationException",
            format!("Unknown operation {signing_name}:{op}"),
        )
    };
    let (service, op) = services()
        .iter()
        .filter(|s| s.model.signing_name() == signing_name)
        .find_map(|s| s.model.operations.get(op).map(|o| (s, o)))
        .ok_or_else(unknown)?;
    json_call(service, op, input)
}

/// Form parameters from the body and the URL (GET requests carry them there). A name given
/// twice is refused rather than one of the values picked.
pub fn form_params(body: &[u8], query_string: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    let pairs = form_urlencoded::parse(query_string.as_bytes()).chain(form_urlencoded::parse(body));
    for (k, v) in pairs {
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(ApiError::client(
                "MalformedQueryString",
                format!("The parameter {k} is given more than once."),
            ));
        }
    }
    Ok(out)
}

fn resolve_query(candidates: &[&'static Service], body: &[u8], query_string: &str) -> Result<Call, ApiError> {
    let params = form_params(body, query_string)?;
    let action = params.get("Action").map(String::as_str).unwrap_or("");
    let version = params.get("Version").map(String::as_str).unwrap_or("");
    let service = candidates
        .iter()
        .find(|s| (s.model.speaks("query") || s.model.is_ec2()) && s.model.metadata.api_version == version)
        .ok_or_else(|| {
            ApiError::client(
                "NoSuchVersion",
                format!(
                    "The requested version ({version}) of service {} does not exist.",
                    candidates[0].model.metadata.endpoint_prefix
                ),
            )
        })?;
    let op = service.model.operations.get(action).ok_or_else(|| {
        ApiError::client(
            "InvalidAction",
            format!("The action {action} is not valid for this web service."),
        )
    })?;
    let error = service.checks_json.unwrap_or("ValidationError");
    let input = query::decode(&service.model, op, &params).map_err(|p| ApiError::client(error, p.message()))?;
    Ok(Call { service, op, input })
}

/// The Query code for an error: the model's code for one of its error shapes, else the
/// common AWS code for the generic JSON-named errors.
pub fn query_code(model: Option<&Model>, kind: &str) -> (String, Option<u16>) {
    if let Some(found) = model.and_then(|m| m.error_code(kind)) {
        return found;
    }
    let code = match kind {
        "MissingAuthenticationTokenException" => "MissingAuthenticationToken",
        "IncompleteSignatureException" => "IncompleteSignature",
        "UnrecognizedClientException" => "InvalidClientTokenId",
        "InvalidSignatureException" => "SignatureDoesNotMatch",
        "ServiceUnavailableException" => "ServiceUnavailable",
        "RequestEntityTooLargeException" => "RequestEntityTooLarge",
        "ExpiredTokenException" => "ExpiredToken",
        "ThrottlingException" => "Throttling",
        "RequestTimeoutException" => "RequestTimeout",
        other => other,
    };
    (code.to_string(), None)
}

/// The service the credential scope names, for framing errors raised before routing.
pub fn namespace_model(signing_name: Option<&str>) -> Option<&'static Model> {
    let name = signing_name?;
    services()
        .iter()
        .find(|s| (s.model.speaks("query") || s.model.is_ec2()) && s.model.signing_name() == name)
        .map(|s| &s.model)
}
